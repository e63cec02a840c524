"""Checks shared by the heads' hyper-parameters and the classical heads' weighted ``fit`` inputs."""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
from sklearn.utils.class_weight import compute_sample_weight
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import validate_data

from fusionfeat.errors import FusionfeatError


def whole_number(name: str, value: Any, minimum: int, optional: bool = False) -> int | None:
    """A head's whole-number hyper-parameter as an int (``None`` kept when ``optional``); a one-line error for
    anything else (a fraction, infinity, a string, below ``minimum``) instead of truncating or tracing back."""
    if value is None and optional:
        return None
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value != int(value) or int(value) < minimum:
        also = " or none" if optional else ""
        raise FusionfeatError(f"{name} must be a whole number >= {minimum}{also}; got {value!r}")
    return int(value)


def finite_in(name: str, value: Any, low: float, high: float, low_open: bool, high_open: bool) -> float:
    """A head's real-valued hyper-parameter, finite and inside the interval ``low``..``high`` (each end open or
    closed); a one-line error naming it otherwise."""
    real = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    above = real and (value > low if low_open else value >= low)
    below = real and (value < high if high_open else value <= high)
    if not (above and below):
        bound = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise FusionfeatError(f"{name} must be a finite number in {bound}; got {value!r}")
    return float(value)


def check_class_weight(class_weight: Any) -> None:
    if not (class_weight is None or class_weight == "balanced" or isinstance(class_weight, dict)):
        raise FusionfeatError(
            f"class_weight must be 'balanced', None or a {{label: weight}} dict; got {class_weight!r}"
        )


def weighted_fit_data(estimator: Any, X: Any, y: Any, dtype: tuple) -> tuple[np.ndarray, np.ndarray, Any]:
    """A classical head's ``fit`` inputs: validated ``X`` and ``y`` (their classes set as ``estimator.classes_``)
    and the per-row weights of its ``class_weight`` (None without one)."""
    check_class_weight(estimator.class_weight)
    X, y = validate_data(estimator, X, y, dtype=dtype)
    check_classification_targets(y)
    estimator.classes_ = np.unique(y)
    weights = None if estimator.class_weight is None else compute_sample_weight(estimator.class_weight, y)
    return X, y, weights
