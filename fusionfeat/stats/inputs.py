"""Checked inputs of every statistic: 0/1 labels, finite scores, and scores of several CV repeats as rows."""

from __future__ import annotations

from typing import Any

import numpy as np

from fusionfeat.errors import FusionfeatError
from fusionfeat.stats.results import Metric


def binary_labels(y: Any, name: str = "y") -> np.ndarray:
    a = np.asarray(y)
    if a.dtype == bool:
        return a.astype(np.int64)
    if a.size and not np.all(np.isin(a, (0, 1))):
        raise FusionfeatError(f"{name} must hold 1 for the positive class and 0 otherwise; got {np.unique(a)[:5]}")
    return a.astype(np.int64)


def checked_scores(p: Any, n: int, name: str = "p") -> np.ndarray:
    a = np.asarray(p, dtype=float).reshape(-1)
    if len(a) != n:
        raise FusionfeatError(f"{name} has {len(a)} values for {n} labels")
    if not np.all(np.isfinite(a)):
        raise FusionfeatError(f"{name} holds NaN or infinite values: score only rows that were predicted")
    return a


def score_rows(p: Any, n: int, name: str = "p") -> np.ndarray:
    """Scores as a ``(repeats, n)`` matrix: one row for a 1-D ``p``, one row per CV repeat for a 2-D one."""
    a = np.asarray(p, dtype=float)
    if a.ndim > 2:
        raise FusionfeatError(f"{name} must be 1-D (one score per image) or 2-D (repeats, images); got {a.shape}")
    a = a.reshape(1, -1) if a.ndim < 2 else a
    for row in a:
        checked_scores(row, n, name)
    return a


def mean_over_repeats(fn: Metric, y: np.ndarray, p: np.ndarray, idx: np.ndarray | None = None) -> float:
    """``fn`` on the rows ``idx`` of every repeat's scores, averaged over repeats (NaN if any is NaN)."""
    if idx is None:
        return float(np.mean([fn(y, row) for row in p]))
    return float(np.mean([fn(y[idx], row[idx]) for row in p]))
