"""Metrics of a K-class (K > 2) prediction: one fold's figures, per-class figures, one-vs-rest ROC and calibration.

Inputs are class indices ``y`` (0..K-1), the (n, K) probability matrix ``P`` (rows sum to 1, columns in class
order) and the predicted class ``pred`` (the argmax of ``P``). Averages over classes:

* **macro**: the plain mean over classes (each class counts the same, however rare; macro F1 over the classes that
  occur among the rows' true or predicted labels);
* **weighted**: weighted by each class's support (its share of the true labels, i.e. its prevalence).

One-vs-rest ROC AUC of class k scores ``P[:, k]`` with class k as positive and every other class as negative; it is
undefined (NaN) for a class absent from the rows (or the only class present), and the macro / weighted averages are
then taken over the classes that are defined (``n_auc_classes`` says how many).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn import metrics as skm

# the K-class metrics of every fold, in report order (per-class figures: ``per_class``)
METRICS: tuple[str, ...] = (
    "accuracy",
    "balanced_accuracy",
    "f1_macro",
    "f1_weighted",
    "kappa",
    "mcc",
    "roc_auc_macro",
    "roc_auc_weighted",
    "log_loss",
    "brier",
    "ece_top",
    "ece_classwise",
)
PER_CLASS: tuple[str, ...] = ("precision", "recall", "f1", "support", "roc_auc")
ECE_BINS = 10

LABELS: dict[str, str] = {
    "accuracy": "accuracy",
    "balanced_accuracy": "balanced acc.",
    "f1_macro": "macro F1",
    "f1_weighted": "weighted F1",
    "kappa": "Cohen's kappa",
    "mcc": "MCC",
    "roc_auc_macro": "macro OvR AUC",
    "roc_auc_weighted": "weighted OvR AUC",
    "log_loss": "log loss",
    "brier": "Brier (K-class)",
    "ece_top": "top-label ECE",
    "ece_classwise": "class-wise ECE",
    "fit_time": "fit time (s)",
    "predict_time": "predict time (s)",
}


def confusion_matrix(y: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """K×K counts, rows = true class, columns = predicted class, in class order."""
    return skm.confusion_matrix(np.asarray(y), np.asarray(pred), labels=np.arange(k)).astype(np.int64)


def per_class(y: np.ndarray, pred: np.ndarray, P: np.ndarray) -> dict[str, list[float]]:
    """Per class (in class order): precision, recall, F1, support (true count) and one-vs-rest ROC AUC. Undefined
    values are NaN: precision of a class never predicted, recall of a class absent from ``y`` (F1 when both are),
    AUC when the class is absent from ``y`` or the only one present."""
    k = P.shape[1]
    precision, recall, f1, support = skm.precision_recall_fscore_support(
        y, pred, labels=np.arange(k), zero_division=np.nan
    )
    return {
        "precision": precision.astype(float).tolist(),
        "recall": recall.astype(float).tolist(),
        "f1": f1.astype(float).tolist(),
        "support": support.astype(int).tolist(),
        "roc_auc": ovr_auc(y, P).tolist(),
    }


def ovr_auc(y: np.ndarray, P: np.ndarray) -> np.ndarray:
    """One-vs-rest ROC AUC of every class (NaN where undefined: class absent, or no other class)."""
    y = np.asarray(y)
    out = np.full(P.shape[1], math.nan)
    for c in range(P.shape[1]):
        t = y == c
        if 0 < t.sum() < len(t):
            out[c] = float(skm.roc_auc_score(t.astype(int), P[:, c]))
    return out


def auc_averages(y: np.ndarray, P: np.ndarray) -> tuple[float, float, int]:
    """(macro, prevalence-weighted) one-vs-rest AUC over the classes where it is defined, and how many those are."""
    auc = ovr_auc(y, P)
    ok = np.isfinite(auc)
    if not ok.any():
        return math.nan, math.nan, 0
    support = np.bincount(np.asarray(y), minlength=P.shape[1])[ok].astype(float)
    return float(auc[ok].mean()), float(np.sum(auc[ok] * support) / support.sum()), int(ok.sum())


def balanced_accuracy(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    """Mean recall over the classes present in ``y`` (scikit-learn's ``balanced_accuracy_score``)."""
    cm = confusion_matrix(y, pred, k)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present])) if present.any() else math.nan


def brier_multiclass(y: np.ndarray, P: np.ndarray) -> float:
    """Brier's (1950) multi-class score: mean over rows of ``sum_k (P[i, k] - [y_i = k])²`` (0 best, 2 worst).

    For two classes it is twice the binary Brier score ``mean (p - y)²`` fusionfeat reports for binary runs."""
    onehot = np.eye(P.shape[1])[np.asarray(y)]
    return float(np.mean(np.sum((P - onehot) ** 2, axis=1))) if len(P) else math.nan


def _ece_bins(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Equal-width bin of each confidence: bin i holds (i/n, (i+1)/n], the first also holds 0."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], conf)


def top_label_reliability(y: np.ndarray, P: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, np.ndarray]:
    """Top-label reliability per non-empty bin of the top probability: ``confidence`` (mean top probability),
    ``accuracy`` (fraction whose top class is the true one) and ``count``."""
    conf = P.max(axis=1)
    correct = (P.argmax(axis=1) == np.asarray(y)).astype(float)
    ids = _ece_bins(conf, n_bins)
    total = np.bincount(ids, minlength=n_bins)
    keep = total > 0
    return {
        "confidence": np.bincount(ids, weights=conf, minlength=n_bins)[keep] / total[keep],
        "accuracy": np.bincount(ids, weights=correct, minlength=n_bins)[keep] / total[keep],
        "count": total[keep],
    }


def top_label_ece(y: np.ndarray, P: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label (confidence) ECE (Guo et al. 2017): ``sum_b n_b/N · |accuracy_b - confidence_b|`` over equal-width
    bins of the top probability."""
    curve = top_label_reliability(y, P, n_bins)
    n = curve["count"].sum()
    return float(np.sum(curve["count"] * np.abs(curve["accuracy"] - curve["confidence"])) / n) if n else math.nan


def classwise_ece(y: np.ndarray, P: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Class-wise ECE (Kull et al. 2019): for each class k the binned ECE of ``P[:, k]`` against ``[y = k]``
    (equal-width bins), averaged over the K classes."""
    y = np.asarray(y)
    values = []
    for c in range(P.shape[1]):
        p = P[:, c]
        t = (y == c).astype(float)
        ids = _ece_bins(p, n_bins)
        total = np.bincount(ids, minlength=n_bins)
        keep = total > 0
        gap = np.abs(np.bincount(ids, weights=t, minlength=n_bins)[keep] - np.bincount(ids, weights=p,
                                                                                      minlength=n_bins)[keep])
        values.append(float(gap.sum() / len(p)) if len(p) else math.nan)
    return float(np.mean(values))


def fold_metrics(y: np.ndarray, pred: np.ndarray, P: np.ndarray) -> dict[str, float]:
    """Every metric of ``METRICS`` for one fold (``n_auc_classes``: classes with a defined OvR AUC)."""
    y, pred, P = np.asarray(y), np.asarray(pred), np.asarray(P, dtype=float)
    k = P.shape[1]
    labels = np.arange(k)
    macro, weighted, n_auc = auc_averages(y, P)
    one_class = len(np.unique(np.concatenate([y, pred]))) < 2  # kappa and MCC are undefined
    return {
        "accuracy": float(skm.accuracy_score(y, pred)),
        "balanced_accuracy": balanced_accuracy(y, pred, k),
        # over the classes in the rows' true or predicted labels: a class absent from the fold on both sides would
        # otherwise count as an F1 of 0
        "f1_macro": float(skm.f1_score(y, pred, average="macro", zero_division=0)),
        "f1_weighted": float(skm.f1_score(y, pred, labels=labels, average="weighted", zero_division=0)),
        "kappa": math.nan if one_class else float(skm.cohen_kappa_score(y, pred, labels=labels)),
        "mcc": math.nan if one_class else float(skm.matthews_corrcoef(y, pred)),
        "roc_auc_macro": macro,
        "roc_auc_weighted": weighted,
        "n_auc_classes": float(n_auc),
        "log_loss": float(skm.log_loss(y, P, labels=labels)),
        "brier": brier_multiclass(y, P),
        "ece_top": top_label_ece(y, P),
        "ece_classwise": classwise_ece(y, P),
    }


def ovr_roc_points(y: np.ndarray, P: np.ndarray, classes: list[str]) -> dict[str, Any]:
    """class name -> one-vs-rest ROC curve ``{"fpr", "tpr", "auc"}`` of the pooled rows (absent when undefined)."""
    y = np.asarray(y)
    out = {}
    for c, name in enumerate(classes):
        t = (y == c).astype(int)
        if 0 < t.sum() < len(t):
            fpr, tpr, _ = skm.roc_curve(t, P[:, c], drop_intermediate=True)
            out[name] = {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "auc": float(skm.roc_auc_score(t, P[:, c]))}
    return out
