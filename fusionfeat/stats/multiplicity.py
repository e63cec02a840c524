"""Adjusting p-values for multiple comparisons (Holm's step-down)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fusionfeat.errors import FusionfeatError


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, in the input order; NaNs stay NaN and are not counted.

    Sorted ascending, the i-th smallest (0-based) of m p-values becomes ``max_{j<=i} min(1, (m - j) p_(j))``.
    """
    p = np.asarray(pvalues, dtype=float).reshape(-1)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    if len(idx) == 0:
        return out
    if np.any((p[idx] < 0) | (p[idx] > 1)):
        raise FusionfeatError("p-values must lie in [0, 1]")
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out
