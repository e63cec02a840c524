"""Inner splits of a training fold: the early-stopping validation split, the inner folds of calibration and
of the SVM's sigmoid, and the group (source image) of each row.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from fusionfeat.errors import FusionfeatError


def inner_split(rows: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a fold's training rows into rows to learn from and rows that pick the epoch.

    ``rows`` index ``labels`` and ``groups``. Grouped (StratifiedGroupKFold, one split of about ``fraction``)
    when any group id is known, else stratified by class; no validation when ``fraction`` is 0 or the rows
    are too few to split. Groups are subjects, or source-image ids (``image_groups``) so rotated/mirrored
    copies of one image never validate it. Shared by ``finetune`` and the torch heads' early stopping.
    """
    none = (rows, np.empty(0, dtype=rows.dtype))
    if fraction <= 0:
        return none
    y = labels[rows]
    n_splits = max(2, round(1 / fraction))
    g = np.asarray(groups).astype(str)[rows]
    counts = np.unique(y, return_counts=True)[1]  # images per class present
    if len(counts) < 2:
        return none
    if np.any(g != ""):
        subjects = np.where(g == "", np.char.add("\0row-", rows.astype(str)), g)
        n_splits = min(n_splits, len(np.unique(subjects)), int(counts.min()))
        extra: tuple = (subjects,)
    else:
        n_splits = min(n_splits, int(counts.min()))
        extra = ()
    if n_splits < 2:  # e.g. one image of a class: nothing to validate on
        return none
    kind = StratifiedGroupKFold if extra else StratifiedKFold
    splitter = kind(n_splits, shuffle=True, random_state=seed)
    try:
        fit, val = next(splitter.split(rows, y, *extra))
    except ValueError:  # too few rows of a class to split this way: no validation
        return none
    if len(np.unique(y[fit])) < len(counts):  # every class must stay learnable
        return none
    return rows[fit], rows[val]


def image_groups(groups: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """One group id per row: its subject where known, else ``image-<sample>`` (so copies of an image share it)."""
    g = np.asarray(groups).astype(str)
    return np.where(g != "", g, np.char.add("image-", np.asarray(sample).astype(str)))


def inner_splits(
    y: np.ndarray, groups: Any = None, cv: Any = 5, random_state: Any = 0
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Inner folds of a training fold: ``cv`` as an int (stratified, shuffled with ``random_state``; grouped
    by subject when any of ``groups`` is non-empty, an empty id being a subject of its own) or any
    scikit-learn splitter / list of ``(train, test)`` index pairs that partitions the rows."""
    y = np.asarray(y)
    if not isinstance(cv, int | np.integer):
        splits = cv.split(np.zeros(len(y)), y, groups) if hasattr(cv, "split") else cv
        return [(np.asarray(a), np.asarray(b)) for a, b in splits]
    if cv < 2:
        raise FusionfeatError(f"inner cross-validation needs 2 or more folds, got cv={cv}")
    g = None if groups is None else np.asarray(groups).astype(str)
    if g is not None and np.any(g != ""):
        g = np.where(g == "", np.char.add("\0row-", np.arange(len(g)).astype(str)), g)
        splitter: Any = StratifiedGroupKFold(cv, shuffle=True, random_state=random_state)
    else:
        g = None
        splitter = StratifiedKFold(cv, shuffle=True, random_state=random_state)
    try:
        with warnings.catch_warnings():  # a rare class (fewer rows than folds) is said once, by the fold plan
            warnings.filterwarnings("ignore", message="The least populated class in y has only")
            return [(a, b) for a, b in splitter.split(np.zeros(len(y)), y, g)]
    except ValueError as err:
        raise FusionfeatError(f"inner cross-validation of a training fold with cv={cv} is impossible: {err}; "
                              "lower the inner folds") from None
