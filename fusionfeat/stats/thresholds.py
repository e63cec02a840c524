"""Operating points: the threshold for a target sensitivity or specificity, and the rates at a threshold."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fusionfeat.errors import FusionfeatError
from fusionfeat.stats.inputs import binary_labels, checked_scores
from fusionfeat.stats.pooled import confusion_counts, ratio


def threshold_for(y: Any, p: Any, sens: float | None = None, spec: float | None = None) -> float:
    """The decision threshold (positive iff ``p >= threshold``) for a target sensitivity or specificity.

    Pick it on training (inner out-of-fold) predictions, never on the test fold. With ``sens``: the largest
    threshold whose sensitivity is at least ``sens`` (the most specific such; a positive's score). With
    ``spec``: the smallest threshold whose specificity is at least ``spec`` (the most sensitive such; the
    smallest observed score above the negatives it must exclude, or just above the largest score when it
    must exclude them all). Give exactly one target, in (0, 1].
    """
    if (sens is None) == (spec is None):
        raise FusionfeatError("give exactly one operating-point target: sens=... or spec=...")
    target = float(sens if sens is not None else spec)  # type: ignore[arg-type]
    if not 0 < target <= 1:
        raise FusionfeatError(f"operating-point target must be in (0, 1], got {target}")
    y = binary_labels(y)
    p = checked_scores(p, len(y))
    cls = 1 if sens is not None else 0
    own = np.sort(p[y == cls])
    if len(own) == 0:
        raise FusionfeatError(
            f"cannot pick a threshold for {'sensitivity' if cls else 'specificity'}: no "
            f"{'positive' if cls else 'negative'} examples among the training predictions"
        )
    k = math.ceil(target * len(own) - 1e-9)  # how many of that class must fall on their correct side
    if sens is not None:
        return float(own[::-1][k - 1])
    below = own[k - 1]  # every negative <= this must be predicted negative
    above = p[p > below]
    return float(above.min()) if len(above) else float(np.nextafter(below, np.inf))


def rates_at(y: Any, p: Any, threshold: float) -> dict[str, float]:
    """Sensitivity and specificity at ``p >= threshold`` (NaN where a class is absent)."""
    y = binary_labels(y)
    tp, tn, fp, fn = confusion_counts(y, checked_scores(p, len(y)), threshold)
    return {"threshold": float(threshold), "sensitivity": ratio(tp, tp + fn), "specificity": ratio(tn, tn + fp)}
