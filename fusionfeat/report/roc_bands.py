"""Pooled out-of-fold ROC curves of a run with a pointwise bootstrap band, for the summary figure.

Per repeat, the ROC of all out-of-fold predictions (every evaluation row scored once, by the model that did
not train on it), read at a grid of false positive rates and averaged over repeats (the curve whose area is
the report's pooled OOF ROC AUC, averaged over repeats). The band is the pointwise 2.5–97.5 percentile of
that curve over bootstrap resamples of the same clusters the report's intervals resample (subjects when
known), with the models held fixed. Presentation only: no reported number comes from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusionfeat.evaluation.cv import CVResult
from fusionfeat.evaluation.evidence import bootstrap_groups, positives

GRID = np.linspace(0.0, 1.0, 201)
N_BOOT = 200


@dataclass(frozen=True)
class RocBand:
    """A pooled ROC read at ``GRID`` (mean over repeats) and its pointwise bootstrap band."""

    fpr: np.ndarray
    tpr: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    n_boot: int
    unit: str


def curve_at_grid(y: np.ndarray, p: np.ndarray) -> np.ndarray | None:
    """TPR at ``GRID`` of one set of scores (the upper point where the ROC is vertical); None without both
    classes."""
    fpr, tpr = roc_points(y, p)
    if fpr is None:
        return None
    return tpr[np.searchsorted(fpr, GRID, side="right") - 1]


def roc_points(y: np.ndarray, p: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Every ROC point of the finite scores, one per distinct threshold from the highest, starting at (0, 0)
    (scikit-learn's ``roc_curve(..., drop_intermediate=False)``); (None, None) without both classes."""
    keep = np.isfinite(p)
    y, p = np.asarray(y)[keep].astype(np.int64), np.asarray(p)[keep]
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return None, None
    order = np.argsort(-p, kind="mergesort")
    last = np.r_[np.flatnonzero(np.diff(p[order])), len(p) - 1]  # the last row of each distinct score
    tps = np.cumsum(y[order])[last]
    fps = last + 1 - tps
    return np.r_[0.0, fps / (len(y) - n_pos)], np.r_[0.0, tps / n_pos]


def mean_curve(y: np.ndarray, p: np.ndarray) -> np.ndarray | None:
    """The grid curve of each repeat's row of ``p`` ``(repeats, n)``, averaged over repeats."""
    curves = [c for c in (curve_at_grid(y, row) for row in p) if c is not None]
    return np.mean(curves, axis=0) if curves else None


def roc_band(y: np.ndarray, p: np.ndarray, groups: np.ndarray | None, n_boot: int = N_BOOT,
             seed: int = 0, unit: str = "images") -> RocBand | None:
    """The pooled ROC of ``p`` ``(repeats, n)`` against 0/1 ``y`` with a percentile band over ``n_boot``
    resamples of ``groups`` (rows when None); None when the rows lack a class."""
    p = np.atleast_2d(np.asarray(p, dtype=float))
    y = np.asarray(y).astype(int)
    curve = mean_curve(y, p)
    if curve is None:
        return None
    resample = _resampler(len(y), groups, np.random.default_rng(seed))
    boot = []
    for _ in range(n_boot):
        rows = resample()
        c = mean_curve(y[rows], p[:, rows])
        if c is not None:
            boot.append(c)
    if not boot:
        return RocBand(GRID, curve, curve, curve, 0, unit)
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return RocBand(GRID, curve, lo, hi, len(boot), unit)


def _resampler(n: int, groups: np.ndarray | None, rng: np.random.Generator):
    """A function drawing one bootstrap resample's row indices: rows, or whole clusters of ``groups``."""
    if groups is None:
        return lambda: rng.integers(0, n, n)
    _, cluster = np.unique(np.asarray(groups).astype(str), return_inverse=True)
    order = np.argsort(cluster, kind="stable")
    sizes = np.bincount(cluster)
    starts = np.cumsum(sizes) - sizes

    def draw() -> np.ndarray:
        picked = rng.integers(0, len(sizes), len(sizes))
        size = sizes[picked]
        within = np.arange(int(size.sum())) - np.repeat(np.cumsum(size) - size, size)
        return order[np.repeat(starts[picked], size) + within]

    return draw


def run_bands(result: CVResult, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, RocBand]:
    """head -> its pooled ROC band, resampling the clusters the report's bootstrap intervals resample."""
    y = positives(result)
    groups, unit = bootstrap_groups(result)
    out = {}
    for head in result.heads:
        band = roc_band(y, result.oof[head], groups, n_boot, seed, unit)
        if band is not None:
            out[head] = band
    return out
