"""Grouped folds are stratified: every fold's share of the positive class is close to the whole set's.

scikit-learn before 1.8 (PR #32540) shuffled StratifiedGroupKFold's groups without remapping them, so with
``shuffle=True`` (our grouped outer folds and grouped inner folds of calibration and the SVM's sigmoid) the
folds were random groups of subjects: on the data below the worst fold missed the overall share by 0.05 to
0.29 over seeds 0-4 (measured with 1.7.2, where these tests fail; with 1.9.1: 0.003 to 0.020).
pyproject.toml asks for scikit-learn >= 1.8; these tests catch an environment or a regression without the fix.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import GroupKFold

from fusionfeat.protocols import inner_splits, plan_folds

FOLDS = 5
# 1,308 cells from 60 subjects of 4 to 40 cells, each subject with its own share of the positive class: 0
# (HEM-only) to 1 (ALL-only), a few mixed. A fold holds ~260 cells, and one mid-sized subject (22 cells) is ~8%
# of it, so no grouped plan can match the overall share exactly. StratifiedGroupKFold's greedy assignment comes
# within 0.020 on these data and seeds 0-4 (scikit-learn 1.9.1); BOUND = 0.04, half a mid-sized subject, leaves
# a margin for other versions, while the unstratified GroupKFold misses by 0.19.
BOUND = 0.04


def subjects_of_unequal_balance(seed: int = 1, n_subjects: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = rng.integers(4, 41, n_subjects)
    shares = rng.choice([0.0, 0.0, 0.1, 0.3, 0.5, 0.8, 1.0, 1.0, 1.0], n_subjects)
    labels, groups = [], []
    for subject, (size, share) in enumerate(zip(sizes, shares, strict=True)):
        positives = int(round(share * size))
        labels += [1] * positives + [0] * (size - positives)
        groups += [f"S{subject:02d}"] * size
    return np.array(labels), np.array(groups)


def worst_fold_gap(labels: np.ndarray, test_sets: list[np.ndarray]) -> float:
    """The largest |positive share of a test fold - positive share of all rows|."""
    overall = labels.mean()
    return max(abs(labels[test].mean() - overall) for test in test_sets)


def test_the_data_make_the_check_meaningful():
    labels, groups = subjects_of_unequal_balance()
    per_subject = {g: labels[groups == g].mean() for g in np.unique(groups)}
    assert len(per_subject) == 60 and 1200 < len(labels) < 1500
    assert {0.0, 1.0} <= set(per_subject.values()) and any(0 < s < 1 for s in per_subject.values())
    # the control: GroupKFold balances fold sizes, not classes, and misses the share by several BOUNDs
    control = [test for _, test in GroupKFold(FOLDS).split(labels, labels, groups)]
    assert worst_fold_gap(labels, control) > 3 * BOUND


@pytest.mark.parametrize("seed", range(5))
def test_grouped_outer_folds_are_stratified(seed):
    labels, groups = subjects_of_unequal_balance()
    fold = plan_folds(labels, groups, np.full(len(labels), -1), "grouped", FOLDS, seed)
    tests = [np.flatnonzero(fold == k) for k in range(FOLDS)]
    assert sorted(np.concatenate(tests).tolist()) == list(range(len(labels)))
    for test in tests:  # grouped: each subject in exactly one fold
        assert not set(groups[test]) & set(groups[np.setdiff1d(np.arange(len(labels)), test)])
    assert worst_fold_gap(labels, tests) < BOUND


@pytest.mark.parametrize("seed", range(5))
def test_grouped_inner_folds_of_calibration_are_stratified(seed):
    labels, groups = subjects_of_unequal_balance()
    splits = inner_splits(labels, groups, cv=FOLDS, random_state=seed)
    assert len(splits) == FOLDS
    assert worst_fold_gap(labels, [test for _, test in splits]) < BOUND
