"""Protocols for K classes: stratified, grouped, predefined and the paper's table, leakage checks unchanged; a class
with fewer images (subjects) than folds is one warning naming it, a class missing from a training side an error."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from fusionfeat.errors import FusionfeatError, FusionfeatWarning
from fusionfeat.protocols import make_plan, paper_rows, plan_folds

NAMES = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]


def _labels(counts: list[int]) -> np.ndarray:
    return np.repeat(np.arange(len(counts)), counts).astype(np.int64)


def _plan(labels, groups=None, predefined=None, n_views=1, **kw):
    n = len(labels)
    groups = np.array([""] * n) if groups is None else groups
    predefined = np.full(n, -1) if predefined is None else predefined
    return make_plan(labels, groups, predefined, np.ones(n, bool), n_views, n_folds=kw.pop("n_folds", 5), seed=0,
                     class_names=kw.pop("class_names", NAMES), **kw)


@pytest.mark.parametrize("counts", [[3, 40, 15, 10, 50], [20, 3, 9], [12, 12, 12, 4]])
def test_stratified_k_classes_warns_once_by_name_and_every_training_side_holds_every_class(counts):
    labels = _labels(counts)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = _plan(labels, protocol="stratified", repeats=2)
    small = [NAMES[c] for c, n in enumerate(counts) if n < 5]
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and issubclass(caught[0].category, FusionfeatWarning), messages  # none of sklearn's
    assert all(f"'{name}' has" in messages[0] for name in small) and "\n" not in messages[0]
    assert any(f"'{small[0]}' has" in w for w in plan.protocol["warnings"])  # and the report says it too
    for split in plan.splits:
        train, test = plan.rows.sample[split.train], plan.rows.sample[split.test]
        assert not set(train) & set(test)
        assert set(labels[train]) == set(range(len(counts)))
    # stratified: each class's images spread over the folds as evenly as StratifiedKFold does (sizes differ by <= 1)
    for c, n in enumerate(counts):
        per_fold = np.bincount(plan.test_fold[0][labels[plan.rows.sample[:plan.n_eval]] == c], minlength=5)
        assert per_fold.max() - per_fold.min() <= 1 and per_fold.sum() == n


def test_a_class_of_one_image_cannot_be_learned_in_its_own_fold_which_is_warned_and_reported():
    labels = _labels([1, 20, 20])
    with pytest.warns(FusionfeatWarning, match=r"'basophil' \(1 image\) is absent from the training side"), \
            pytest.warns(FusionfeatWarning, match="'basophil' has 1 image for 5 folds"):
        plan = _plan(labels, protocol="stratified")
    assert any("absent from the training side" in w for w in plan.protocol["warnings"])


def test_grouped_k_classes_keeps_subjects_apart_and_warns_for_a_class_of_few_subjects():
    subject_class = np.array([0, 0] + [1] * 6 + [2] * 6)  # basophil: 2 subjects for 5 folds
    subjects = np.repeat(np.arange(len(subject_class)), 4)
    labels = subject_class[subjects]
    groups = np.array([f"S{s}" for s in subjects])
    with pytest.warns(FusionfeatWarning, match=r"'basophil' has 2 subjects for 5 folds"):
        plan = _plan(labels, groups=groups, protocol="grouped", class_names=NAMES)
    for split in plan.splits:
        train, test = plan.rows.sample[split.train], plan.rows.sample[split.test]
        assert not set(groups[train]) & set(groups[test])
    # with 2 basophil subjects, 3 of 5 test folds hold none, and 2 hold one subject each: all training sides keep one
    held = [len(set(groups[plan.rows.sample[s.test]][labels[plan.rows.sample[s.test]] == 0])) for s in plan.splits]
    assert sorted(held) == [0, 0, 0, 1, 1]


def test_predefined_folds_of_k_classes_are_used_as_given():
    labels = _labels([6, 6, 6])
    predefined = np.tile(np.arange(3), 6)
    plan = _plan(labels, predefined=predefined, protocol="predefined", n_folds=3)
    np.testing.assert_array_equal(plan.test_fold[0], predefined[plan.rows.sample[:plan.n_eval]])
    only_in_fold_0 = np.where(labels == 2, 0, predefined)  # class 2 only in fold 0: fold 0 cannot learn it
    with pytest.warns(FusionfeatWarning, match="'lymphocyte' .* absent from the training side of fold 0"):
        _plan(labels, predefined=only_in_fold_0, protocol="predefined", n_folds=3)


def test_the_paper_table_balances_every_class_to_the_largest_by_copies():
    labels = _labels([3, 10, 6])
    rows, n_copies = paper_rows(labels, np.ones(len(labels), bool), 8, seed=0)
    assert np.bincount(labels[rows.sample]).tolist() == [10, 10, 10]
    assert n_copies == 7 + 4
    copies = rows.view > 0
    assert len(set(zip(rows.sample[copies], rows.view[copies], strict=True))) == n_copies  # no copy twice


def test_augment_balances_every_non_majority_class_inside_each_training_fold():
    labels = _labels([5, 20, 10, 8])
    plan = _plan(labels, protocol="stratified", balance="augment", n_views=8, class_names=NAMES[:4])
    for split in plan.splits:
        counts = np.bincount(labels[plan.rows.sample[split.train]], minlength=4)
        assert len(set(counts.tolist())) == 1  # every class brought up to the largest
        copies = split.train[plan.rows.view[split.train] > 0]
        assert not set(plan.rows.sample[copies]) & set(plan.rows.sample[split.test])  # copies of training images


def test_plan_folds_names_the_class_or_its_label():
    labels = _labels([2, 10, 10])
    with pytest.warns(FusionfeatWarning, match="^class 0 has 2 images for 3 folds"):
        plan_folds(labels, np.array([""] * 22), np.full(22, -1), "stratified", 3, 0)
    with pytest.raises(FusionfeatError, match="the largest class has 2"):
        plan_folds(_labels([2, 2]), np.array([""] * 4), np.full(4, -1), "stratified", 3, 0)
