"""Table cells every report format shares: numbers, mean ± sd, signed differences, p-values, intervals."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x))


def num(x: Any, digits: int = 4) -> str:
    """A number, or n/a."""
    return "n/a" if _missing(x) else f"{x:.{digits}f}"


def signed(x: Any, digits: int = 4) -> str:
    """A difference with its sign, or n/a."""
    return "n/a" if _missing(x) else f"{x:+.{digits}f}"


def diff_ci(test: dict[str, Any]) -> str:
    """A paired difference with its interval: ``+0.0123 [-0.0040, +0.0286]``."""
    return f"{signed(test['diff'])} [{signed(test['lo'])}, {signed(test['hi'])}]"


def pval(p: Any) -> str:
    """A p-value: 3 significant digits, or n/a."""
    if _missing(p):
        return "n/a"
    return f"{p:.3g}" if p >= 1e-4 else "< 0.0001"


def interval(low: Any, high: Any, metric: str) -> str:
    """``[low, high]`` clipped to the metric's range (MCC: [-1, 1], others [0, 1]), or n/a."""
    if _missing(low) or _missing(high):
        return "n/a"
    floor = -1.0 if metric == "mcc" else 0.0
    return f"[{max(low, floor):.4f}, {min(high, 1.0):.4f}]"
