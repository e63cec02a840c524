"""The statistics' result records: frozen dataclasses with ``to_dict`` for JSON."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

Metric = Callable[[np.ndarray, np.ndarray], float]


class Record:
    """Results are frozen dataclasses; ``to_dict`` gives their JSON-able fields."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return asdict(self)


@dataclass(frozen=True)
class Interval(Record):
    """A point estimate with a two-sided interval; ``df`` is NaN for bootstrap intervals."""

    mean: float
    lo: float
    hi: float
    se: float
    df: float
    level: float
    n: int
    method: str


@dataclass(frozen=True)
class PairedTest(Record):
    """A paired comparison ``a - b``: the difference, its interval, the test statistic and a two-sided p."""

    diff: float
    lo: float
    hi: float
    se: float
    stat: float
    p: float
    level: float
    n: int
    method: str


@dataclass(frozen=True)
class BootstrapResult(Record):
    """A bootstrap interval of a pooled metric (or of a paired difference, with ``p``).

    ``unit`` is ``"subject"`` when clusters were resampled, else ``"image"``; ``n_units`` counts them.
    ``n_skipped`` resamples were left out because the metric was undefined there (e.g. one class only);
    the interval uses the ``n_boot - n_skipped`` others.
    """

    estimate: float
    lo: float
    hi: float
    se: float
    level: float
    method: str
    unit: str
    n_units: int
    n_boot: int
    n_skipped: int
    p: float = math.nan


@dataclass(frozen=True)
class DelongResult(Record):
    """DeLong's paired comparison of two correlated ROC AUCs (``diff = auc_a - auc_b``)."""

    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    p: float
    lo: float
    hi: float
    level: float
    n_pos: int
    n_neg: int
