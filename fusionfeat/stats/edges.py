"""When a difference of two results cannot be measured: both at the metric's ceiling (or floor), or identical on
every resample, so the test's interval collapses to ``[0, 0]`` with ``p = 1``. That reads as "no difference"
and is not one: it is the absence of any room to see a difference."""

from __future__ import annotations

import math
from typing import Any

from fusionfeat.stats.proportions import at_edge, degenerate

EDGE_TEXT: dict[str, str] = {
    "ceiling": "at the ceiling: the difference cannot be measured",
    "floor": "at the floor: the difference cannot be measured",
    "identical": "identical on every fold: the difference cannot be measured",
}


def unmeasurable(a: float | None, b: float | None, test: dict[str, Any], metric: str) -> str | None:
    """``"ceiling"``/``"floor"`` when both values sit at that edge of the metric's range, ``"identical"`` when
    the test's difference is 0 with a zero-width (or missing) interval and p = 1 (or undefined); else None.
    ``test`` holds ``diff`` (or ``estimate``), ``lo``, ``hi`` and ``p`` (``PairedTest``/``BootstrapResult``)."""
    ea, eb = at_edge(a, metric), at_edge(b, metric)
    if ea is not None and ea == eb:
        return ea
    diff = test.get("diff", test.get("estimate"))
    p = test.get("p")
    p_flat = p is None or (isinstance(p, float) and math.isnan(p)) or p >= 1.0
    if diff is not None and math.isfinite(diff) and diff == 0 and degenerate(test.get("lo"), test.get("hi")) \
            and p_flat:
        return "identical"
    return None
