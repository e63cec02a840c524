"""Subject (cluster) and image bootstrap intervals of pooled metrics, and the paired bootstrap of two heads."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats as st

from fusionfeat.errors import FusionfeatError
from fusionfeat.stats.inputs import binary_labels, mean_over_repeats, score_rows
from fusionfeat.stats.pooled import as_metric, resampled_statistic
from fusionfeat.stats.results import BootstrapResult, Metric


class _Clusters:
    """Rows grouped by subject (first-appearance order), so one resample is a vector of row indices."""

    def __init__(self, n: int, groups: Any):
        g = None if groups is None else np.asarray(groups).astype(str).reshape(-1)
        if g is not None and len(g) != n:
            raise FusionfeatError(f"groups has {len(g)} entries for {n} rows")
        if g is None or not np.any(g != ""):
            self.unit = "image"
            self.order = np.arange(n)
            self.starts = np.arange(n)
            self.sizes = np.ones(n, dtype=np.int64)
            return
        self.unit = "subject"
        keys = np.where(g == "", np.char.add("\0row-", np.arange(n).astype(str)), g)
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        cluster = rank[inverse]  # cluster id in order of first appearance
        self.order = np.argsort(cluster, kind="stable")
        self.sizes = np.bincount(cluster)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])

    def __len__(self) -> int:
        return len(self.sizes)

    def rows(self, picked: np.ndarray) -> np.ndarray:
        """Row indices of the picked clusters, with repetition."""
        sizes = self.sizes[picked]
        offsets = np.repeat(np.cumsum(sizes) - sizes, sizes)
        within = np.arange(int(sizes.sum())) - offsets
        return self.order[np.repeat(self.starts[picked], sizes) + within]

    def without(self, c: int) -> np.ndarray:
        """Row indices of every cluster but ``c`` (for the jackknife)."""
        keep = np.ones(len(self), dtype=bool)
        keep[c] = False
        return self.rows(np.flatnonzero(keep))


Clusters = _Clusters  # the public name, for resampling statistics in other modules (``recalibration``)


def _quantiles(boot: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _bca(boot: np.ndarray, estimate: float, jack: np.ndarray, level: float) -> tuple[float, float]:
    """Efron's bias-corrected and accelerated percentile bounds."""
    jack = jack[np.isfinite(jack)]
    prop = (np.sum(boot < estimate) + 0.5 * np.sum(boot == estimate)) / len(boot)
    if prop <= 0 or prop >= 1 or len(jack) < 3:
        return math.nan, math.nan
    z0 = st.norm.ppf(prop)
    d = jack.mean() - jack
    den = 6 * float(np.sum(d**2)) ** 1.5
    a = float(np.sum(d**3)) / den if den else 0.0
    out = []
    for q in ((1 - level) / 2, (1 + level) / 2):
        z = st.norm.ppf(q)
        out.append(float(np.quantile(boot, st.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))))))
    return out[0], out[1]


def _boot_stats(
    n: int, groups: Any, stat: Callable[[np.ndarray], float], n_boot: int, seed: int
) -> tuple[_Clusters, np.ndarray]:
    clusters = _Clusters(n, groups)
    if n_boot < 1:
        raise FusionfeatError(f"n_boot must be 1 or more, got {n_boot}")
    rng = np.random.default_rng(seed)
    k = len(clusters)
    boot = np.array([stat(clusters.rows(rng.integers(0, k, k))) for _ in range(n_boot)], dtype=float)
    return clusters, boot


def cluster_bootstrap(
    y: Any,
    p: Any,
    groups: Any,
    metric: str | Metric,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    method: str = "percentile",
) -> BootstrapResult:
    """Bootstrap interval of a pooled metric, resampling subjects (clusters) when any subject id is known.

    Each resample draws as many subjects as there are, with replacement, and keeps all their images
    (Field & Welsh 2007); with no subject ids (``groups`` None or all ``""``) images are resampled instead
    (Efron & Tibshirani 1993), and with one image per subject the two coincide draw for draw. ``metric`` is
    a name (see ``pooled_metric``) or a callable ``(y, p) -> float``. ``p`` may be 2-D ``(repeats, n)``
    (``CVResult.oof[head]``): the statistic is then the mean over repeats of the pooled metric, each
    resample drawing the same subjects for every repeat. Resamples where the metric is
    undefined (NaN, e.g. AUC of a single class) are skipped and counted in ``n_skipped``. ``method`` is
    ``"percentile"`` or ``"bca"`` (bias-corrected and accelerated, jackknife over the same units).
    """
    y = binary_labels(y)
    p = score_rows(p, len(y))
    fn = as_metric(metric)
    if method not in ("percentile", "bca"):
        raise FusionfeatError(f"bootstrap method must be 'percentile' or 'bca', got {method!r}")
    estimate = mean_over_repeats(fn, y, p)
    stat = resampled_statistic(metric, y, p)
    clusters, boot = _boot_stats(len(y), groups, stat, n_boot, seed)
    ok = boot[np.isfinite(boot)]
    skipped = n_boot - len(ok)
    if len(ok) < 2:
        return BootstrapResult(estimate, math.nan, math.nan, math.nan, level, method, clusters.unit,
                               len(clusters), n_boot, skipped)
    if method == "bca":
        jack = np.array([stat(idx) for idx in map(clusters.without, range(len(clusters)))])
        lo, hi = _bca(ok, estimate, jack, level)
    else:
        lo, hi = _quantiles(ok, level)
    return BootstrapResult(estimate, lo, hi, float(ok.std(ddof=1)), level, method, clusters.unit,
                           len(clusters), n_boot, skipped)


def paired_cluster_bootstrap(
    y: Any,
    p_a: Any,
    p_b: Any,
    groups: Any,
    metric: str | Metric,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapResult:
    """Paired bootstrap of ``metric(a) - metric(b)`` on the same resampled subjects (or images).

    Both heads are scored on every resample, so their correlation is kept; ``p_a``/``p_b`` may be 2-D
    ``(repeats, n)`` as in ``cluster_bootstrap``. The interval is the percentile
    interval of the differences. The two-sided p-value is proportion-based:
    ``p = min(1, 2 · min(#{d* <= 0} + 1, #{d* >= 0} + 1) / (B + 1))`` over the B valid resamples, i.e. about
    the smallest 1 − level at which the percentile interval excludes 0 (never exactly 0, so at best
    ``2 / (B + 1)``: use enough resamples for the p you need to resolve).
    """
    y = binary_labels(y)
    p_a = score_rows(p_a, len(y), "p_a")
    p_b = score_rows(p_b, len(y), "p_b")
    fn = as_metric(metric)
    estimate = mean_over_repeats(fn, y, p_a) - mean_over_repeats(fn, y, p_b)
    stat_a, stat_b = resampled_statistic(metric, y, p_a), resampled_statistic(metric, y, p_b)
    clusters, boot = _boot_stats(len(y), groups, lambda idx: stat_a(idx) - stat_b(idx), n_boot, seed)
    ok = boot[np.isfinite(boot)]
    skipped = n_boot - len(ok)
    if len(ok) < 2:
        return BootstrapResult(estimate, math.nan, math.nan, math.nan, level, "paired percentile",
                               clusters.unit, len(clusters), n_boot, skipped)
    lo, hi = _quantiles(ok, level)
    b = len(ok)
    pval = min(1.0, 2 * min(np.sum(ok <= 0) + 1, np.sum(ok >= 0) + 1) / (b + 1))
    return BootstrapResult(estimate, lo, hi, float(ok.std(ddof=1)), level, "paired percentile", clusters.unit,
                           len(clusters), n_boot, skipped, float(pval))


def resampled_values(
    n: int, groups: Any, stat: Callable[[np.ndarray], float], n_boot: int = 2000, seed: int = 0
) -> tuple[str, int, np.ndarray]:
    """``stat(row indices)`` on ``n_boot`` resamples of ``n`` rows, drawn as ``cluster_bootstrap`` draws them
    (subjects when any id in ``groups`` is known, else images); returns the unit resampled (``"subject"`` or
    ``"image"``), how many units there are, and the ``n_boot`` values (NaN where ``stat`` is undefined)."""
    clusters, boot = _boot_stats(n, groups, stat, n_boot, seed)
    return clusters.unit, len(clusters), boot
