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


def diff_ci(test: dict[str, Any], metric: str = "roc_auc") -> str:
    """A paired difference with its interval, clipped and marked like ``interval``: ``+0.0123 [-0.0040, +0.0286]``."""
    return f"{signed(test['diff'])} {interval(test['lo'], test['hi'], metric, difference=True)}"


def pval(p: Any) -> str:
    """A p-value: 3 significant digits, or n/a."""
    if _missing(p):
        return "n/a"
    return f"{p:.3g}" if p >= 1e-4 else "< 0.0001"


CLIP_MARK = "†"
CLIP_NOTE = (
    "† marks a bound clipped to the metric's range (the computed bound lies outside it; metrics.json and "
    "table_results.csv keep the computed value)"
)


def metric_range(metric: str, difference: bool = False) -> tuple[float, float]:
    """The values a metric can take (MCC: [-1, 1], the others [0, 1]); a difference of two: ± the width."""
    low, high = (-1.0, 1.0) if metric == "mcc" else (0.0, 1.0)
    return (low - high, high - low) if difference else (low, high)


def clip_bounds(low: Any, high: Any, metric: str,
                difference: bool = False) -> tuple[tuple[float, bool], tuple[float, bool]] | None:
    """An interval's bounds clipped to the metric's range, each with whether it was clipped (None: missing)."""
    if _missing(low) or _missing(high):
        return None
    floor, ceiling = metric_range(metric, difference)
    lo, hi = float(low), float(high)
    return (min(max(lo, floor), ceiling), not floor <= lo <= ceiling), \
        (min(max(hi, floor), ceiling), not floor <= hi <= ceiling)


def interval(low: Any, high: Any, metric: str, difference: bool = False, mark: str = CLIP_MARK,
             digits: int = 4) -> str:
    """``[low, high]`` clipped to the metric's range, a clipped bound marked ``†`` (``CLIP_NOTE``), or n/a;
    ``difference``: the interval of a difference of two values of the metric (signed)."""
    bounds = clip_bounds(low, high, metric, difference)
    if bounds is None:
        return "n/a"
    fmt = signed if difference else num
    return "[" + ", ".join(fmt(v, digits) + (mark if clipped else "") for v, clipped in bounds) + "]"


EXACT_MARK = "‡"
EXACT_NOTE = (
    "‡ marks an exact interval, shown where the t or bootstrap interval degenerates (a value at 0 or 1, a "
    "zero-width interval) or a proportion has fewer than 10 units: the Clopper–Pearson interval of k/n (k/n "
    "shown; with subjects known, k and n count subjects), and for balanced accuracy, F1, MCC and ROC AUC the bound "
    "from the Clopper–Pearson intervals of the proportions they are built from (F1 with no predicted positive: "
    "at most 2R/(1 + R) at recall's upper bound) (docs/protocols.md, \"Intervals at the edges\")"
)
MULTICLASS_EXACT_NOTE = (
    "‡ marks an exact interval, shown where the t or bootstrap interval degenerates (a value at 0 or 1, a "
    "zero-width interval): for accuracy and a class's recall or precision the Clopper–Pearson interval of k/n "
    "(k/n shown; with subjects known, k and n count subjects), for balanced accuracy the mean of the per-class "
    "recalls' Clopper–Pearson bounds, for macro and weighted F1 the mean of each class's F1 at the bounds of its "
    "precision and recall, and for macro OvR AUC at the ceiling the lower bound from each class's "
    "one-vs-rest true-positive and true-negative rates at a separating threshold; kappa and MCC have none, "
    "and say so (docs/protocols.md, "
    "\"Intervals at the edges\")"
)
EDGE_WORDS = {"ceiling": "at the ceiling", "floor": "at the floor"}


def edge_value(text: str, exact: dict[str, Any] | None) -> str:
    """A value cell, followed by "(at the ceiling)"/"(at the floor)" when its exact interval says so."""
    edge = (exact or {}).get("edge")
    return f"{text} ({EDGE_WORDS[edge]})" if edge in EDGE_WORDS else text


def ci_cell(bounds: dict[str, Any], metric: str, exact: dict[str, Any] | None = None,
            mark: str = EXACT_MARK) -> str:
    """An interval cell: the exact interval when there is one (marked ``‡``, with ``k/n`` for a single
    proportion), else ``bounds``' ``lo``/``hi`` as ``interval`` shows them."""
    if exact and exact.get("lo") is None:  # flagged at an edge where no exact interval is defined
        return "n/a: cannot be estimated" + (f" {EDGE_WORDS[exact['edge']]}" if exact.get("edge") in EDGE_WORDS
                                             else "")
    if exact:
        k, n = exact.get("k", -1), exact.get("n", -1)
        counts = f" {k}/{n}" if k is not None and k >= 0 else ""
        return interval(exact.get("lo"), exact.get("hi"), metric) + mark + counts
    return interval(bounds.get("lo"), bounds.get("hi"), metric)


def exact_cell(value: Any, exact: dict[str, Any] | None, metric: str = "recall") -> str:
    """A value with no other interval: ``num(value)``, and where ``exact`` holds one, its interval (marked ``‡``,
    with ``k/n``) and the ceiling or floor: ``1.0000 [0.6915, 1.0000]‡ 10/10 (at the ceiling)``."""
    if not exact:
        return num(value)
    return edge_value(f"{num(value)} {ci_cell({}, metric, exact)}", exact)


def any_exact(data: dict[str, Any]) -> bool:
    """Whether a run's data holds any exact interval (so the report needs the ‡ legend)."""
    for info in data["heads"].values():
        for u in (info.get("uncertainty") or {}).values():
            if u.get("corrected_t", {}).get("exact") or u.get("pooled", {}).get("exact"):
                return True
        if any(any(cells) for cells in ((info.get("pooled") or {}).get("per_class_exact") or {}).values()):
            return True
    for h in ((data.get("subjects") or {}).get("heads") or {}).values():
        if any(m.get("exact") for m in h["metrics"].values()):
            return True
    return False
