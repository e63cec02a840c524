"""Nadeau–Bengio corrected resampled t: intervals of a CV metric and paired tests across folds and repeats."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as st

from fusionfeat.errors import FusionfeatError
from fusionfeat.stats.results import Interval, PairedTest


def _nb_factor(n: int, n_train: Any, n_test: Any) -> float:
    """Nadeau–Bengio variance factor ``1/J + n_test/n_train`` (ratio averaged over folds if arrays)."""
    n_train = np.broadcast_to(np.asarray(n_train, dtype=float), (n,))
    n_test = np.broadcast_to(np.asarray(n_test, dtype=float), (n,))
    if np.any(n_train <= 0) or np.any(n_test < 0):
        raise FusionfeatError("corrected t: n_train must be positive and n_test non-negative")
    return 1.0 / n + float(np.mean(n_test / n_train))


def _finite_with(values: Any, *others: Any) -> tuple[np.ndarray, ...]:
    """Flatten ``values`` and drop NaNs, together with the matching entries of array-like ``others``."""
    v = np.asarray(values, dtype=float).reshape(-1)
    keep = ~np.isnan(v)
    out = [v[keep]]
    for o in others:
        a = np.asarray(o, dtype=float)
        if a.ndim and a.size != v.size:
            raise FusionfeatError(f"{v.size} metric values but {a.size} fold sizes: give one size per value, or one")
        out.append(a.reshape(-1)[keep] if a.ndim else a)
    return tuple(out)


def corrected_resampled_t(values: Any, n_train: Any, n_test: Any, level: float = 0.95) -> Interval:
    """Nadeau & Bengio (2003) corrected resampled t interval of a metric over folds × repeats.

    ``values`` holds one metric value per fit (any shape, e.g. ``(repeats, folds)``; NaNs are dropped).
    With J values, sample variance s², the standard error is ``sqrt((1/J + n_test/n_train) · s²)`` and the
    interval uses Student's t with J − 1 degrees of freedom. ``n_train``/``n_test`` are scalars or one per
    value (then the mean ratio is used); count evaluated images, not augmentation copies. With the
    correction term 0 this is the plain t interval of the mean. Fewer than 2 values give NaN bounds.
    """
    v, n_tr, n_te = _finite_with(values, n_train, n_test)
    n = len(v)
    mean = float(v.mean()) if n else math.nan
    if n < 2:
        return Interval(mean, math.nan, math.nan, math.nan, math.nan, level, n, "corrected resampled t")
    se = math.sqrt(_nb_factor(n, n_tr, n_te) * float(v.var(ddof=1)))
    half = float(st.t.ppf((1 + level) / 2, n - 1)) * se
    return Interval(mean, mean - half, mean + half, se, float(n - 1), level, n, "corrected resampled t")


def corrected_paired_t(diffs: Any, n_train: Any, n_test: Any, level: float = 0.95) -> PairedTest:
    """Corrected resampled paired t-test (Nadeau & Bengio 2003) on per-fit differences ``a - b``.

    ``diffs`` are the metric differences of two heads fitted on the same splits (one per fold × repeat).
    Returns the mean difference, its corrected t interval, ``t = mean / se`` and the two-sided p with
    J − 1 df. When every difference is equal the standard error is 0: ``t`` is ±inf (p 0) for a non-zero
    difference and NaN (p 1) for zero.
    """
    ci = corrected_resampled_t(diffs, n_train, n_test, level)
    if ci.n < 2:
        return PairedTest(ci.mean, ci.lo, ci.hi, ci.se, math.nan, math.nan, level, ci.n, "corrected paired t")
    if ci.se == 0:
        t, p = (math.nan, 1.0) if ci.mean == 0 else (math.copysign(math.inf, ci.mean), 0.0)
    else:
        t = ci.mean / ci.se
        p = float(2 * st.t.sf(abs(t), ci.df))
    return PairedTest(ci.mean, ci.lo, ci.hi, ci.se, t, p, level, ci.n, "corrected paired t")


def corrected_difference_t(
    values_a: Any,
    n_train_a: Any,
    n_test_a: Any,
    values_b: Any,
    n_train_b: Any,
    n_test_b: Any,
    level: float = 0.95,
) -> PairedTest:
    """Difference ``mean(a) - mean(b)`` of two CV experiments that do not share splits (e.g. one head under
    two protocols), each with its Nadeau–Bengio corrected variance, combined Welch-style:
    ``se = sqrt(se_a² + se_b²)`` with Welch–Satterthwaite degrees of freedom.

    An approximation: it treats the two experiments as independent although they read the same images,
    which usually makes the interval conservative. With the correction terms 0 it is Welch's t-test.
    When both experiments score the same images, a paired subject bootstrap of their out-of-fold
    predictions (``paired_cluster_bootstrap``) is the sharper comparison.
    """
    a = corrected_resampled_t(values_a, n_train_a, n_test_a, level)
    b = corrected_resampled_t(values_b, n_train_b, n_test_b, level)
    diff = a.mean - b.mean
    method = "corrected Welch t"
    if a.n < 2 or b.n < 2:
        return PairedTest(diff, math.nan, math.nan, math.nan, math.nan, math.nan, level, a.n + b.n, method)
    var = a.se**2 + b.se**2
    se = math.sqrt(var)
    if se == 0:
        t, p = (math.nan, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
        return PairedTest(diff, diff, diff, 0.0, t, p, level, a.n + b.n, method)
    df = var**2 / (a.se**4 / a.df + b.se**4 / b.df)
    t = diff / se
    half = float(st.t.ppf((1 + level) / 2, df)) * se
    return PairedTest(diff, diff - half, diff + half, se, t, float(2 * st.t.sf(abs(t), df)), level, a.n + b.n, method)
