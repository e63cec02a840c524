"""Exact intervals of K-class figures at the edges, the K-class counterpart of ``proportions.exact_interval``.

Accuracy and a class's recall or precision are single proportions k/n: their Clopper–Pearson interval.
Balanced accuracy is the mean of the recalls of the classes present: the mean of their Clopper–Pearson bounds,
each at level ``1 − α/K`` (Bonferroni); macro (weighted) F1 the mean of each class's F1 at its precision's and
recall's bounds. Macro (or weighted) one-vs-rest AUC at the ceiling: every class's scores separate it from the
rest, so at that threshold sensitivity and specificity are k/k, and ``AUC_c ≥ sens_c · spec_c`` bounds each
class's AUC from below; the bound is the (weighted) mean over classes of the products of the 2K Clopper–Pearson
lower bounds at level ``1 − α/(2K)`` each. Kappa and MCC get the edge flag and no interval.
With subjects known each subject counts once on each side (right, wrong) it has cells on, as in
``proportions.counts_of``. See ``docs/protocols.md`` ("Intervals at the edges").
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fusionfeat.stats.proportions import at_edge, clopper_pearson, degenerate

MULTICLASS_EXACT: tuple[str, ...] = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "roc_auc_macro",
                                      "roc_auc_weighted", "kappa", "mcc")
NO_BOUND = ("kappa", "mcc")  # flagged at the edges, but no exact interval is defined for them


def _units(mask: np.ndarray, keys: np.ndarray | None) -> int:
    """Rows in ``mask``, or the distinct subjects among them."""
    return int(mask.sum()) if keys is None else len(np.unique(keys[mask]))


def _keys(groups: Any, n: int) -> np.ndarray | None:
    if groups is None:
        return None
    g = np.asarray(groups).astype(str).reshape(-1)
    if len(g) != n or not np.any(g != ""):
        return None
    return np.where(g == "", np.char.add("\0row-", np.arange(n).astype(str)), g)


def proportion_counts(success: np.ndarray, within: np.ndarray, groups: Any = None) -> tuple[int, int]:
    """(k, n) of a proportion: rows (or subjects) ``within`` the denominator that are ``success``; a subject
    counts once among the successes and once among the failures if it has rows in both."""
    keys = _keys(groups, len(success))
    k = _units(within & success, keys)
    return k, k + _units(within & ~success, keys)


def _averaged(pred: np.ndarray, count: Any) -> tuple[int, int]:
    """``count(pred_row) -> (k, n)`` averaged over repeats and rounded (as ``evidence.edge_interval`` does)."""
    per = [count(row) for row in np.atleast_2d(pred)]
    return int(round(np.mean([c[0] for c in per]))), int(round(np.mean([c[1] for c in per])))


def exact_multiclass(name: str, y: np.ndarray, pred: np.ndarray, groups: Any, n_classes: int, estimate: float,
                     lo: float | None, hi: float | None, level: float = 0.95) -> dict[str, Any] | None:
    """The exact interval (as a ``metrics.json`` dict, with ``edge``) that replaces ``[lo, hi]`` of ``name`` (one
    of ``MULTICLASS_EXACT``) when ``estimate`` sits at 0 or 1 or ``[lo, hi]`` is of zero width (or NaN); None
    otherwise, when undefined, or when there is no interval (``lo``, ``hi`` None) and no edge.
    ``pred``: predicted class indices, ``(repeats, n)`` or ``(n,)``. Macro AUC gets a bound only
    at the ceiling (elsewhere no exact interval is defined from the predicted classes)."""
    if name not in MULTICLASS_EXACT or estimate is None or not math.isfinite(estimate):
        return None
    edge = at_edge(estimate, name)
    if not (edge or (lo is not None and hi is not None and degenerate(lo, hi))):
        return None
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    pred = np.asarray(pred, dtype=np.int64)
    everything = np.ones(len(y), dtype=bool)
    present = [c for c in range(n_classes) if np.any(y == c)]
    if name == "accuracy":
        k, n = _averaged(pred, lambda row: proportion_counts(row == y, everything, groups))
        a, b = clopper_pearson(k, n, level)
        return {"estimate": float(estimate), "lo": a, "hi": b, "level": level, "k": k, "n": n, "parts": [[k, n]],
                "method": f"Clopper–Pearson exact interval of {k}/{n}", "edge": edge}
    if name in NO_BOUND:
        return {"estimate": float(estimate), "lo": None, "hi": None, "level": level, "k": -1, "n": -1, "parts": [],
                "edge": edge, "method": "no exact interval is defined for this metric; the t or bootstrap interval "
                                        "degenerates here, so it cannot be estimated"}
    if name in ("f1_macro", "f1_weighted"):
        return _f1_exact(name, y, pred, groups, n_classes, estimate, edge, level)
    if not present:
        return None
    m = len(present) * (1 if name == "balanced_accuracy" else 2)
    each = 1 - (1 - level) / m
    if name == "balanced_accuracy":
        parts = [_averaged(pred, lambda row, c=c: proportion_counts(row == c, y == c, groups)) for c in present]
        bounds = [clopper_pearson(k, n, each) for k, n in parts]
        return {"estimate": float(estimate), "lo": float(np.mean([b[0] for b in bounds])),
                "hi": float(np.mean([b[1] for b in bounds])), "level": level, "k": -1, "n": -1,
                "parts": [list(p) for p in parts], "edge": edge,
                "method": f"mean of the Clopper–Pearson bounds of the {len(parts)} per-class recalls, Bonferroni"}
    if edge != "ceiling":  # OvR AUC: only the ceiling gives a bound from counts
        return None
    parts = []
    for c in present:
        pos = _units(y == c, _keys(groups, len(y)))
        neg = _units(y != c, _keys(groups, len(y)))
        if neg < 1:
            return None
        parts += [[pos, pos], [neg, neg]]
    lows = [clopper_pearson(k, n, each)[0] for k, n in parts]
    support = np.asarray([np.sum(y == c) for c in present], dtype=float)
    weights = support / support.sum() if name == "roc_auc_weighted" else np.full(len(present), 1 / len(present))
    bound = float(np.dot(weights, [lows[2 * i] * lows[2 * i + 1] for i in range(len(present))]))
    mean = "support-weighted mean" if name == "roc_auc_weighted" else "mean"
    return {"estimate": float(estimate), "lo": bound, "hi": 1.0, "level": level, "k": -1, "n": -1, "parts": parts,
            "edge": edge, "method": (f"{mean} over classes of AUC_c ≥ sens_c·spec_c at a separating threshold, "
                                     f"from the Clopper–Pearson lower bounds of the {m} proportions, Bonferroni")}


def _f1_exact(name: str, y: np.ndarray, pred: np.ndarray, groups: Any, n_classes: int, estimate: float,
              edge: str | None, level: float) -> dict[str, Any] | None:
    """Macro (or support-weighted) F1 at its parts' Clopper–Pearson bounds: each class's F1 = 2PR/(P + R)
    increases in its precision and recall; a class never predicted has F1 0 and at most 2R/(1 + R) (as for
    binary F1); Bonferroni over all the proportions used."""
    classes = [c for c in range(n_classes) if np.any(y == c) or np.any(pred == c)]
    prec = {c: _averaged(pred, lambda row, c=c: proportion_counts(y == c, row == c, groups)) for c in classes}
    rec = {c: _averaged(pred, lambda row, c=c: proportion_counts(row == c, y == c, groups)) for c in classes}
    parts = [p for c in classes for p in (prec[c], rec[c]) if p[1] > 0]
    if not parts:
        return None
    each = 1 - (1 - level) / len(parts)

    def bounds(part: tuple[int, int]) -> tuple[float, float]:
        return clopper_pearson(*part, each) if part[1] > 0 else (0.0, 1.0)

    def f1(p: float, r: float) -> float:
        return 2 * p * r / (p + r) if p + r else 0.0

    los, his = [], []
    for c in classes:
        (pl, ph), (rl, rh) = bounds(prec[c]), bounds(rec[c])
        if prec[c][1] == 0:  # never predicted: precision undefined, F1 = 0 and at most 2R/(1 + R)
            pl = 0.0
        los.append(f1(pl, rl) if rec[c][1] else 0.0)
        his.append(f1(ph, rh) if rec[c][1] else 0.0)
    if name == "f1_weighted":
        support = np.asarray([np.sum(y == c) for c in classes], dtype=float)
        weights = support / support.sum()
    else:
        weights = np.full(len(classes), 1 / len(classes))
    return {"estimate": float(estimate), "lo": float(np.dot(weights, los)), "hi": float(np.dot(weights, his)),
            "level": level, "k": -1, "n": -1, "parts": [list(p) for p in parts], "edge": edge,
            "method": (f"{'support-weighted' if name == 'f1_weighted' else 'macro'} mean of each class's F1 at the "
                       f"Clopper–Pearson bounds of its precision and recall ({len(parts)} proportions, "
                       "Bonferroni)")}


def per_class_exact(y: np.ndarray, pred: np.ndarray, groups: Any, n_classes: int, values: dict[str, Any],
                    level: float = 0.95) -> dict[str, list[dict[str, Any] | None]]:
    """For ``recall`` and ``precision`` of every class: the Clopper–Pearson interval of k/n (with ``edge``) where
    the value in ``values[metric][c]`` sits at 0 or 1, else None (the per-class table has no other interval).
    Recall: the class's rows predicted as it; precision: the rows predicted as the class that are of it."""
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    pred = np.asarray(pred, dtype=np.int64)
    out: dict[str, list[dict[str, Any] | None]] = {}
    for metric in ("recall", "precision"):
        cells: list[dict[str, Any] | None] = []
        for c in range(n_classes):
            value = values[metric][c]
            edge = at_edge(value, metric)
            if edge is None:
                cells.append(None)
                continue
            if metric == "recall":
                k, n = _averaged(pred, lambda row, c=c: proportion_counts(row == c, y == c, groups))
            else:
                k, n = _averaged(pred, lambda row, c=c: proportion_counts(y == c, row == c, groups))
            if n < 1:
                cells.append(None)
                continue
            a, b = clopper_pearson(k, n, level)
            cells.append({"lo": a, "hi": b, "level": level, "k": k, "n": n, "edge": edge,
                          "method": f"Clopper–Pearson exact interval of {k}/{n}"})
        out[metric] = cells
    return out
