"""Binary classification metrics per fold, and their per-fold mean ± sd over folds and repeats."""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

METRICS: tuple[str, ...] = (
    "accuracy",
    "precision",
    "recall",
    "specificity",
    "f1",
    "balanced_accuracy",
    "mcc",
    "roc_auc",
)
TIMINGS: tuple[str, ...] = ("fit_time", "predict_time")

LABELS: dict[str, str] = {
    "accuracy": "accuracy",
    "precision": "precision",
    "recall": "recall (sensitivity)",
    "specificity": "specificity",
    "f1": "F1",
    "balanced_accuracy": "balanced acc.",
    "mcc": "MCC",
    "roc_auc": "ROC AUC",
    "fit_time": "fit time (s)",
    "predict_time": "predict time (s)",
}


def confusion(y_true: np.ndarray, y_pred: np.ndarray, positive: int = 1) -> np.ndarray:
    """2x2 counts ``[[tn, fp], [fn, tp]]`` with rows = truth, columns = prediction, negative first."""
    t = np.asarray(y_true) == positive
    p = np.asarray(y_pred) == positive
    return np.array(
        [[np.sum(~t & ~p), np.sum(~t & p)], [np.sum(t & ~p), np.sum(t & p)]],
        dtype=np.int64,
    )


def binary_metrics(
    y_true: np.ndarray, y_pred: np.ndarray, p_positive: np.ndarray, positive: int = 1
) -> dict[str, float]:
    """Every metric in ``METRICS`` for one fold; an empty denominator gives 0, AUC of one class is NaN."""
    (tn, fp), (fn, tp) = confusion(y_true, y_pred, positive).tolist()
    t = (np.asarray(y_true) == positive).astype(int)
    n = tn + fp + fn + tp
    recall = _ratio(tp, tp + fn)
    specificity = _ratio(tn, tn + fp)
    precision = _ratio(tp, tp + fp)
    return {
        "accuracy": _ratio(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "specificity": specificity,
        "f1": _ratio(2 * tp, 2 * tp + fp + fn),
        "balanced_accuracy": (recall + specificity) / 2,
        "mcc": _mcc(tp, tn, fp, fn),
        "roc_auc": float(skm.roc_auc_score(t, p_positive)) if 0 < t.sum() < len(t) else math.nan,
    }


def roc_points(y_true: np.ndarray, p_positive: np.ndarray, positive: int = 1) -> dict[str, list[float]]:
    """ROC curve of one fold as ``{"fpr": [...], "tpr": [...]}`` (empty lists when a class is missing)."""
    t = (np.asarray(y_true) == positive).astype(int)
    if not 0 < t.sum() < len(t):
        return {"fpr": [], "tpr": []}
    fpr, tpr, _ = skm.roc_curve(t, p_positive, drop_intermediate=True)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist()}


def summarize(
    per_fold: list[dict[str, float]], repeat_of_fold: list[int], names: tuple[str, ...] | None = None
) -> dict[str, dict[str, float]]:
    """Per-fold mean and sd over all folds × repeats, and counts (intervals: ``fusionfeat.evaluation.evidence``),
    of ``names`` (default ``METRICS``) and the timings."""
    out: dict[str, dict[str, float]] = {}
    repeats = np.asarray(repeat_of_fold)
    for name in (METRICS if names is None else names) + TIMINGS:
        values = np.array([fold.get(name, math.nan) for fold in per_fold], dtype=float)
        out[name] = {
            "mean": _nanmean(values),
            "std": _nanstd(values),
            "n_folds": int(np.sum(~np.isnan(values))),
            "n_repeats": len(np.unique(repeats)),
        }
    return out


def _ratio(num: float, den: float) -> float:
    return float(num / den) if den else 0.0


def _mcc(tp: int, tn: int, fp: int, fn: int) -> float:
    den = math.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return float((tp * tn - fp * fn) / den) if den else 0.0


def _nanmean(v: np.ndarray) -> float:
    v = np.asarray(v, dtype=float)
    return float(np.nanmean(v)) if np.any(~np.isnan(v)) else math.nan


def _nanstd(v: np.ndarray) -> float:
    v = np.asarray(v, dtype=float)
    v = v[~np.isnan(v)]
    return float(v.std(ddof=1)) if len(v) > 1 else (0.0 if len(v) == 1 else math.nan)
