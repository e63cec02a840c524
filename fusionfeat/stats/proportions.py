"""Exact and score intervals of a binomial proportion k/n (Clopper–Pearson, Wilson), and the exact intervals of
metrics built from proportions, for the edges where a t or percentile interval degenerates.

A metric at 0 or 1 (10 of 10 subjects right), a zero-width bootstrap interval, or a handful of units makes the
usual intervals report certainty they do not have: ``1.0000 [1.0000, 1.0000]``. The Clopper–Pearson (1934)
interval inverts two one-sided binomial tests and never has zero width: 10/10 gives [0.692, 1].

Metrics that are not a single proportion but increase with each of a few (balanced accuracy: sensitivity and
specificity; F1: precision and recall; MCC: PPV, sensitivity, specificity, NPV) get the interval of the metric
evaluated at the parts' Clopper–Pearson bounds, each part at level ``1 − α/m`` (Bonferroni), so that all m
intervals hold together with probability ≥ ``level``. ROC AUC at a fixed threshold t obeys
``AUC ≥ sens(t) · spec(t)`` (a positive scored above t and a negative below it are ordered correctly, and the two
are independent), and symmetrically ``AUC ≤ 1 − (1 − sens(t)) (1 − spec(t))``; its bound uses the parts' exact
intervals the same way. See ``docs/protocols.md`` ("Intervals at the edges").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as st

from fusionfeat.errors import FusionfeatError
from fusionfeat.stats.inputs import binary_labels
from fusionfeat.stats.results import Record

TINY = 10  # fewer units than this in a proportion's denominator: the exact interval replaces the bootstrap's


def _check(k: int, n: int, level: float) -> None:
    if n < 1 or k < 0 or k > n:
        raise FusionfeatError(f"a proportion needs 0 <= k <= n and n >= 1, got {k}/{n}")
    if not 0 < level < 1:
        raise FusionfeatError(f"level must lie in (0, 1), got {level}")


def clopper_pearson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Clopper & Pearson (1934) exact interval of k/n: Beta quantiles, 0 when ``k == 0`` and 1 when ``k == n``
    (the same as ``scipy.stats.binomtest(k, n).proportion_ci(method="exact")``)."""
    _check(k, n, level)
    alpha = 1 - level
    lo = 0.0 if k == 0 else float(st.beta.ppf(alpha / 2, k, n - k + 1))
    hi = 1.0 if k == n else float(st.beta.ppf(1 - alpha / 2, k + 1, n - k))
    return lo, hi


def wilson(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    """Wilson (1927) score interval of k/n (no continuity correction)."""
    _check(k, n, level)
    z = float(st.norm.ppf((1 + level) / 2))
    phat = k / n
    den = 1 + z * z / n
    centre = (phat + z * z / (2 * n)) / den
    half = z * math.sqrt(phat * (1 - phat) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


@dataclass(frozen=True)
class Counts:
    """Confusion counts (true/false positives/negatives) of thresholded predictions."""

    tp: int
    tn: int
    fp: int
    fn: int


# metric -> its parts as (successes, denominator) of the counts; every metric increases in each part
_PARTS: dict[str, Callable[[Counts], list[tuple[int, int]]]] = {
    "accuracy": lambda c: [(c.tp + c.tn, c.tp + c.tn + c.fp + c.fn)],
    "precision": lambda c: [(c.tp, c.tp + c.fp)],
    "recall": lambda c: [(c.tp, c.tp + c.fn)],
    "sensitivity": lambda c: [(c.tp, c.tp + c.fn)],
    "specificity": lambda c: [(c.tn, c.tn + c.fp)],
    "balanced_accuracy": lambda c: [(c.tp, c.tp + c.fn), (c.tn, c.tn + c.fp)],
    "f1": lambda c: [(c.tp, c.tp + c.fp), (c.tp, c.tp + c.fn)],
    "mcc": lambda c: [(c.tp, c.tp + c.fp), (c.tp, c.tp + c.fn), (c.tn, c.tn + c.fp), (c.tn, c.tn + c.fn)],
    "roc_auc": lambda c: [(c.tp, c.tp + c.fn), (c.tn, c.tn + c.fp)],
}


def _harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b else 0.0


def _mcc(ppv: float, tpr: float, tnr: float, npv: float) -> float:
    return math.sqrt(ppv * tpr * tnr * npv) - math.sqrt((1 - ppv) * (1 - tpr) * (1 - tnr) * (1 - npv))


def _auc_lo(sens: float, spec: float) -> float:
    return sens * spec


def _auc_hi(sens: float, spec: float) -> float:
    return 1 - (1 - sens) * (1 - spec)


EXACT_METRICS: tuple[str, ...] = tuple(_PARTS)


@dataclass(frozen=True)
class ExactInterval(Record):
    """An exact interval of a metric from confusion counts: ``k``/``n`` for a single proportion (else -1),
    ``parts`` the (k, n) of each proportion it is built from, ``method`` in words."""

    estimate: float
    lo: float
    hi: float
    level: float
    k: int
    n: int
    parts: list[list[int]]
    method: str


def exact_interval(metric: str, counts: Counts, estimate: float, level: float = 0.95) -> ExactInterval | None:
    """The exact interval of ``metric`` (one of ``EXACT_METRICS``) from confusion counts, or None when a part
    has an empty denominator. ``estimate`` is the value shown (e.g. averaged over repeats); it is kept as is.

    A single proportion gets its Clopper–Pearson interval; a metric of several gets the metric at its parts'
    Clopper–Pearson bounds at level ``1 − (1 − level)/m`` each (Bonferroni); ROC AUC gets
    ``[lo_sens · lo_spec, 1 − (1 − hi_sens)(1 − hi_spec)]`` from the counts at the decision threshold.
    """
    if metric not in _PARTS:
        raise FusionfeatError(f"no exact interval for {metric!r}; choose one of {', '.join(EXACT_METRICS)}")
    parts = _PARTS[metric](counts)
    if metric == "f1" and parts[0][1] == 0 and parts[1][1] > 0:
        return _f1_without_predicted_positives(counts, estimate, level)
    if any(n < 1 for _, n in parts):
        return None
    m = len(parts)
    each = 1 - (1 - level) / m
    bounds = [clopper_pearson(k, n, each) for k, n in parts]
    los = [b[0] for b in bounds]
    his = [b[1] for b in bounds]
    if m == 1:
        lo, hi = los[0], his[0]
        k, n = parts[0]
        method = f"Clopper–Pearson exact interval of {k}/{n}"
        return ExactInterval(float(estimate), lo, hi, level, k, n, [list(p) for p in parts], method)
    if metric == "roc_auc":
        lo, hi = _auc_lo(*los), _auc_hi(*his)
        method = ("bound from the Clopper–Pearson intervals of sensitivity and specificity at the decision "
                  "threshold (AUC ≥ sens·spec), Bonferroni")
    else:
        f = {"balanced_accuracy": lambda a, b: (a + b) / 2, "f1": _harmonic, "mcc": _mcc}[metric]
        lo, hi = f(*los), f(*his)
        method = f"{metric} at the Clopper–Pearson bounds of its {m} proportions, Bonferroni"
    return ExactInterval(float(estimate), float(lo), float(hi), level, -1, -1, [list(p) for p in parts], method)


def _f1_without_predicted_positives(counts: Counts, estimate: float, level: float) -> ExactInterval:
    """F1 = 0 with no predicted positive: precision is undefined, recall is 0/(tp + fn). F1 = 2PR/(P + R) grows
    with precision, so whatever precision the head would reach, ``F1 ≤ 2R/(1 + R)``: the interval is
    ``[0, 2·hi/(1 + hi)]`` with ``hi`` the Clopper–Pearson upper bound of recall."""
    k, n = counts.tp, counts.tp + counts.fn
    lo_r, hi_r = clopper_pearson(k, n, level)
    return ExactInterval(float(estimate), _harmonic(0.0, lo_r), _harmonic(1.0, hi_r), level, -1, -1, [[k, n]],
                         f"no predicted positives: F1 ≤ 2R/(1 + R) at the Clopper–Pearson upper bound of recall "
                         f"{k}/{n}")


def at_edge(estimate: float | None, metric: str) -> str | None:
    """``"ceiling"`` or ``"floor"`` when a metric sits at the top or bottom of its range (MCC: ±1, others 0/1)."""
    if estimate is None or not math.isfinite(estimate):
        return None
    low = -1.0 if metric == "mcc" else 0.0
    if estimate >= 1.0 - 1e-12:
        return "ceiling"
    if estimate <= low + 1e-12:
        return "floor"
    return None


def degenerate(lo: float | None, hi: float | None) -> bool:
    """Whether an interval is missing or has zero width (it claims certainty it cannot have)."""
    if lo is None or hi is None or not (math.isfinite(lo) and math.isfinite(hi)):
        return True
    return hi - lo <= 1e-12


def counts_of(y: Any, predicted: Any, groups: Any = None) -> Counts:
    """Confusion counts of 0/1 truth ``y`` and 0/1 ``predicted``; with ``groups`` (subject ids, ``""`` = a
    subject of its own) each subject counts once in every cell of the confusion matrix it has cells in, so the
    cells of one subject are not treated as independent (at the ceiling: k = n = the number of subjects)."""
    y = binary_labels(y)
    pred = np.asarray(predicted, dtype=float).reshape(-1) >= 0.5
    if len(pred) != len(y):
        raise FusionfeatError(f"predicted has {len(pred)} values for {len(y)} labels")
    t = y == 1
    cells = [t & pred, ~t & ~pred, ~t & pred, t & ~pred]  # tp, tn, fp, fn
    g = None if groups is None else np.asarray(groups).astype(str).reshape(-1)
    if g is None or not np.any(g != ""):
        return Counts(*(int(c.sum()) for c in cells))
    if len(g) != len(y):
        raise FusionfeatError(f"groups has {len(g)} entries for {len(y)} rows")
    keys = np.where(g == "", np.char.add("\0row-", np.arange(len(g)).astype(str)), g)
    return Counts(*(len(np.unique(keys[c])) for c in cells))
