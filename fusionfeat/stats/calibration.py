"""Calibration statistics of probabilities: Brier score, reliability curve, expected calibration error."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fusionfeat.errors import FusionfeatError
from fusionfeat.stats.inputs import binary_labels, checked_scores


def brier(y: Any, p: Any) -> float:
    """Brier (1950) score: mean squared difference between P(positive) and the 0/1 outcome."""
    y = binary_labels(y)
    p = checked_scores(p, len(y))
    return float(np.mean((p - y) ** 2)) if len(y) else math.nan


def _bin_ids(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if n_bins < 1:
        raise FusionfeatError(f"n_bins must be 1 or more, got {n_bins}")
    if np.any((p < 0) | (p > 1)):
        raise FusionfeatError("calibration needs probabilities in [0, 1]")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))
    else:
        raise FusionfeatError(f"calibration strategy must be 'uniform' or 'quantile', got {strategy!r}")
    return np.searchsorted(edges[1:-1], p)  # bin i holds (edge_i, edge_i+1]; the first also holds 0


def reliability_curve(
    y: Any, p: Any, n_bins: int = 10, strategy: str = "uniform"
) -> dict[str, np.ndarray]:
    """Reliability diagram data per non-empty bin: ``prob_true`` (observed fraction positive),
    ``prob_pred`` (mean predicted probability) and ``count``; the bins of ``sklearn.calibration_curve``."""
    y = binary_labels(y)
    p = checked_scores(p, len(y))
    ids = _bin_ids(p, n_bins, strategy)
    total = np.bincount(ids, minlength=n_bins)
    keep = total > 0
    return {
        "prob_true": np.bincount(ids, weights=y, minlength=n_bins)[keep] / total[keep],
        "prob_pred": np.bincount(ids, weights=p, minlength=n_bins)[keep] / total[keep],
        "count": total[keep],
    }


def expected_calibration_error(y: Any, p: Any, n_bins: int = 10, strategy: str = "uniform") -> float:
    """Expected calibration error (Naeini et al. 2015): ``sum_b n_b/N · |observed_b - predicted_b|``
    over the reliability bins (equal-width on [0, 1] by default, or equal-count with ``"quantile"``)."""
    curve = reliability_curve(y, p, n_bins, strategy)
    n = curve["count"].sum()
    if n == 0:
        return math.nan
    return float(np.sum(curve["count"] * np.abs(curve["prob_true"] - curve["prob_pred"])) / n)
