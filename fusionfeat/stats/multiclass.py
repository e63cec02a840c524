"""Bootstrap intervals and paired bootstrap tests of K-class pooled metrics: macro one-vs-rest ROC AUC and
balanced accuracy.

Inputs: class indices ``y`` (0..K-1, one per row), probabilities ``P`` of shape ``(n, K)`` or ``(repeats, n, K)``
(one CV repeat per leading row) and predicted classes ``pred`` of shape ``(n,)`` or ``(repeats, n)``. The statistic
is the metric of the pooled rows, averaged over repeats; each resample draws the same subjects (or images) for
every repeat, as ``cluster_bootstrap`` does for binary runs. A resample is scored in O(n K) from row multiplicities
(the same value as the metric on the repeated rows).

DeLong's test compares two binary AUCs; it does not apply to a macro average of one-vs-rest AUCs, whose
variance mixes K correlated AUCs: two heads' macro AUCs are compared with the paired bootstrap here instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from fusionfeat.errors import FusionfeatError
from fusionfeat.stats.bootstrap import resampled_values
from fusionfeat.stats.pooled import WeightedMetric
from fusionfeat.stats.results import BootstrapResult

MULTICLASS_METRICS: tuple[str, ...] = ("roc_auc_macro", "balanced_accuracy")


class MulticlassScorer:
    """Macro OvR AUC or balanced accuracy of fixed ``(y, P, pred)`` as a function of per-row multiplicities ``w``.

    Macro OvR AUC: the mean over classes of each class's one-vs-rest AUC, over the classes present and not alone
    (NaN when none). Balanced accuracy: the mean recall over the classes present."""

    def __init__(self, metric: str, y: np.ndarray, P: np.ndarray, pred: np.ndarray):
        if metric not in MULTICLASS_METRICS:
            raise FusionfeatError(f"unknown K-class metric {metric!r}; choose {' or '.join(MULTICLASS_METRICS)}")
        self.metric = metric
        self.k = P.shape[1]
        self.onehot = np.eye(self.k)[y].T  # (K, n): row c marks the rows of class c
        if metric == "roc_auc_macro":
            self.ovr = [WeightedMetric("roc_auc", (y == c).astype(np.int64), P[:, c]) for c in range(self.k)]
        else:
            self.hit = self.onehot * (pred == y)[None, :]

    def __call__(self, w: np.ndarray) -> float:
        support = self.onehot @ w
        if self.metric == "balanced_accuracy":
            present = support > 0
            return float(np.mean((self.hit @ w)[present] / support[present])) if present.any() else math.nan
        total = support.sum()
        aucs = [s(w) for c, s in enumerate(self.ovr) if 0 < support[c] < total]
        return float(np.mean(aucs)) if aucs else math.nan


def _as_repeats(y: Any, P: Any, pred: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    P = np.asarray(P, dtype=float)
    P = P[None] if P.ndim == 2 else P
    pred = np.asarray(pred, dtype=float)
    pred = pred[None] if pred.ndim == 1 else pred
    if P.ndim != 3 or P.shape[1] != len(y) or pred.shape != P.shape[:2]:
        raise FusionfeatError(f"K-class bootstrap: P {P.shape} and pred {pred.shape} do not match {len(y)} labels")
    if not (np.all(np.isfinite(P)) and np.all(np.isfinite(pred))):
        raise FusionfeatError("K-class bootstrap: P or pred holds NaN; score only rows that were predicted")
    if y.size and (y.min() < 0 or y.max() >= P.shape[2]):
        raise FusionfeatError(f"K-class bootstrap: labels must be class indices 0..{P.shape[2] - 1}")
    return y, P, pred.astype(np.int64)


def _statistic(metric: str, y: np.ndarray, P: np.ndarray, pred: np.ndarray) -> Callable[[np.ndarray], float]:
    scorers = [MulticlassScorer(metric, y, P[r], pred[r]) for r in range(len(P))]
    n = len(y)
    return lambda idx: float(np.mean([s(np.bincount(idx, minlength=n).astype(float)) for s in scorers]))


def multiclass_bootstrap(
    y: Any, P: Any, pred: Any, groups: Any, metric: str, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> BootstrapResult:
    """Percentile bootstrap interval of a pooled K-class metric (``roc_auc_macro`` or ``balanced_accuracy``),
    resampling subjects when any id in ``groups`` is known, else images. Undefined resamples are skipped."""
    y, P, pred = _as_repeats(y, P, pred)
    stat = _statistic(metric, y, P, pred)
    estimate = stat(np.arange(len(y)))
    unit, n_units, boot = resampled_values(len(y), groups, stat, n_boot, seed)
    ok = boot[np.isfinite(boot)]
    if len(ok) < 2:
        return BootstrapResult(estimate, math.nan, math.nan, math.nan, level, "percentile", unit, n_units, n_boot,
                               n_boot - len(ok))
    lo, hi = np.quantile(ok, [(1 - level) / 2, (1 + level) / 2])
    return BootstrapResult(estimate, float(lo), float(hi), float(ok.std(ddof=1)), level, "percentile", unit, n_units,
                           n_boot, n_boot - len(ok))


def paired_multiclass_bootstrap(
    y: Any, P_a: Any, pred_a: Any, P_b: Any, pred_b: Any, groups: Any, metric: str, n_boot: int = 2000,
    seed: int = 0, level: float = 0.95,
) -> BootstrapResult:
    """Paired bootstrap of ``metric(a) - metric(b)`` on the same resampled subjects (or images): the percentile
    interval of the differences and the two-sided p ``min(1, 2 · min(#{d* <= 0} + 1, #{d* >= 0} + 1) / (B + 1))``,
    as ``paired_cluster_bootstrap`` computes it for binary AUCs."""
    y, P_a, pred_a = _as_repeats(y, P_a, pred_a)
    _, P_b, pred_b = _as_repeats(y, P_b, pred_b)
    stat_a, stat_b = _statistic(metric, y, P_a, pred_a), _statistic(metric, y, P_b, pred_b)
    every = np.arange(len(y))
    estimate = stat_a(every) - stat_b(every)
    unit, n_units, boot = resampled_values(len(y), groups, lambda idx: stat_a(idx) - stat_b(idx), n_boot, seed)
    ok = boot[np.isfinite(boot)]
    method = "paired percentile"
    if len(ok) < 2:
        return BootstrapResult(estimate, math.nan, math.nan, math.nan, level, method, unit, n_units, n_boot,
                               n_boot - len(ok))
    lo, hi = np.quantile(ok, [(1 - level) / 2, (1 + level) / 2])
    p = min(1.0, 2 * min(np.sum(ok <= 0) + 1, np.sum(ok >= 0) + 1) / (len(ok) + 1))
    return BootstrapResult(estimate, float(lo), float(hi), float(ok.std(ddof=1)), level, method, unit, n_units,
                           n_boot, n_boot - len(ok), float(p))
