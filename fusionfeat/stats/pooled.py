"""Pooled metrics of ``(y, p)`` by name (ROC AUC by ranks, thresholded metrics from confusion counts), and the
weighted form a bootstrap resample is scored with in O(n).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy import stats as st

from fusionfeat.errors import FusionfeatError
from fusionfeat.stats.calibration import brier, expected_calibration_error
from fusionfeat.stats.inputs import binary_labels, checked_scores, mean_over_repeats
from fusionfeat.stats.results import Metric

PAPER_F1_NOTE = (
    "The paper's Table 1 F1 (0.9194) is the harmonic mean 2PR/(P+R) of its precision (0.9459) and recall "
    "(0.8944); the F1 formula printed in the paper differs from this (a misprint), its numbers do not."
)


def f1_from(precision: float, recall: float) -> float:
    """F1 as the harmonic mean ``2PR/(P+R)`` of precision and recall (0 when both are 0)."""
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def roc_auc(y: Any, p: Any) -> float:
    """ROC AUC by the rank (Mann–Whitney) formula, ties counted half; NaN when a class is missing."""
    y = binary_labels(y)
    p = checked_scores(p, len(y))
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = st.rankdata(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def confusion_counts(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    pred = p >= threshold
    t = y == 1
    return int(np.sum(t & pred)), int(np.sum(~t & ~pred)), int(np.sum(~t & pred)), int(np.sum(t & ~pred))


def ratio(a: float, b: float) -> float:
    return float(a / b) if b else math.nan


THRESHOLDED: tuple[str, ...] = (
    "accuracy", "precision", "recall", "sensitivity", "specificity", "f1", "balanced_accuracy", "mcc"
)


def metric_from_counts(name: str, tp: float, tn: float, fp: float, fn: float) -> float:
    sens, spec = ratio(tp, tp + fn), ratio(tn, tn + fp)
    if name == "accuracy":
        return ratio(tp + tn, tp + tn + fp + fn)
    if name == "precision":
        return ratio(tp, tp + fp)
    if name in ("recall", "sensitivity"):
        return sens
    if name == "specificity":
        return spec
    if name == "f1":
        return ratio(2 * tp, 2 * tp + fp + fn)
    if name == "balanced_accuracy":
        return (sens + spec) / 2
    den = math.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return ratio(tp * tn - fp * fn, den)


def pooled_metric(name: str, threshold: float = 0.5) -> Metric:
    """A pooled metric of ``(y, p)`` by name: ``roc_auc``, ``brier``, ``ece`` or a thresholded one
    (``accuracy``, ``precision``, ``recall``/``sensitivity``, ``specificity``, ``f1``, ``balanced_accuracy``,
    ``mcc``) computed at ``p >= threshold``. Undefined values (an empty denominator) are NaN, so the
    bootstrap skips them."""
    if name == "roc_auc":
        return roc_auc
    if name == "brier":
        return brier
    if name == "ece":
        return expected_calibration_error
    if name not in THRESHOLDED:
        raise FusionfeatError(
            f"unknown metric {name!r}; choose roc_auc, brier, ece or one of {', '.join(THRESHOLDED)}"
        )

    def metric(y: np.ndarray, p: np.ndarray) -> float:
        return metric_from_counts(name, *confusion_counts(binary_labels(y), np.asarray(p, dtype=float), threshold))

    return metric


def as_metric(metric: str | Metric) -> Metric:
    return pooled_metric(metric) if isinstance(metric, str) else metric


class WeightedMetric:
    """A named metric of fixed ``(y, p)`` as a function of per-row multiplicities ``w``: a bootstrap
    resample in O(n) instead of re-ranking it (same value as the metric on the repeated rows)."""

    def __init__(self, name: str, y: np.ndarray, p: np.ndarray, threshold: float = 0.5):
        self.name = name
        self.y = y
        self.p = p
        order = np.argsort(p, kind="stable")
        self.order = order
        self.pos_sorted = y[order] == 1
        self.tie = np.concatenate([[0], np.cumsum(np.diff(p[order]) != 0)])  # tie-group id in sorted order
        self.n_ties = int(self.tie[-1]) + 1 if len(p) else 0
        pred = p >= threshold
        self.cells = np.stack([(y == 1) & pred, (y == 0) & ~pred, (y == 0) & pred, (y == 1) & ~pred]).astype(float)

    def __call__(self, w: np.ndarray) -> float:
        if self.name == "brier":
            return float(np.sum(w * (self.p - self.y) ** 2) / np.sum(w))
        if self.name != "roc_auc":
            return metric_from_counts(self.name, *(self.cells @ w).tolist())  # tp, tn, fp, fn
        ws = w[self.order].astype(float)
        wp = np.bincount(self.tie, weights=ws * self.pos_sorted, minlength=self.n_ties)
        wn = np.bincount(self.tie, weights=ws * ~self.pos_sorted, minlength=self.n_ties)
        n_pos, n_neg = wp.sum(), wn.sum()
        if n_pos == 0 or n_neg == 0:
            return math.nan
        below = np.cumsum(wn) - wn
        return float(np.sum(wp * (below + 0.5 * wn)) / (n_pos * n_neg))


def resampled_statistic(metric: str | Metric, y: np.ndarray, p: np.ndarray) -> Callable[[np.ndarray], float]:
    """The statistic of one resample (row indices, with repetition), averaged over the rows of ``p``."""
    if isinstance(metric, str) and metric in ("roc_auc", "brier") + THRESHOLDED:
        scorers = [WeightedMetric(metric, y, row) for row in p]
        n = len(y)
        return lambda idx: float(np.mean([s(np.bincount(idx, minlength=n)) for s in scorers]))
    fn = as_metric(metric)
    return lambda idx: mean_over_repeats(fn, y, p, idx)
