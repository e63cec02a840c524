"""Calibration and operating points see training rows only, and match scikit-learn where they should."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_predict

from fusionfeat import stats as fs
from fusionfeat.errors import FusionfeatError
from fusionfeat.heads.calibration import CalibratedHead, InnerOperatingPoint, inner_oof_scores

pytestmark = pytest.mark.usefixtures("single_torch_thread")

LOG: list[tuple[str, frozenset[int]]] = []


class Spy(ClassifierMixin, BaseEstimator):
    """Logistic regression on columns 1:, recording which row ids (column 0) each call was given."""

    def __init__(self, C: float = 1.0):
        self.C = C

    def fit(self, X: Any, y: Any) -> Spy:
        X = np.asarray(X)
        LOG.append(("fit", frozenset(X[:, 0].astype(int).tolist())))
        self.model_ = LogisticRegression(C=self.C).fit(X[:, 1:], y)
        self.classes_ = self.model_.classes_
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        X = np.asarray(X)
        LOG.append(("score", frozenset(X[:, 0].astype(int).tolist())))
        return self.model_.decision_function(X[:, 1:])

    def predict_proba(self, X: Any) -> np.ndarray:
        X = np.asarray(X)
        LOG.append(("score", frozenset(X[:, 0].astype(int).tolist())))
        return self.model_.predict_proba(X[:, 1:])

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]


def _data(n: int = 160, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Row id in column 0, one informative and two noise features; 4 cells per subject, one label each."""
    rng = np.random.default_rng(seed)
    y = np.repeat(rng.integers(0, 2, n // 4), 4)
    X = np.column_stack([np.arange(n), y + rng.normal(0, 1.2, n), rng.normal(size=(n, 2))])
    groups = np.array([f"s{i // 4}" for i in range(n)])
    return X, y, groups


def _outer(y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An outer split by subject (first 30 subjects train, last 10 test)."""
    return np.arange(120), np.arange(120, len(y))


@pytest.mark.parametrize(
    "make",
    [
        lambda: CalibratedHead(Spy(), "sigmoid", cv=4),
        lambda: CalibratedHead(Spy(), "isotonic", cv=3),
        lambda: InnerOperatingPoint(Spy(), sens=0.9, cv=4),
        lambda: InnerOperatingPoint(CalibratedHead(Spy(), cv=4), spec=0.8),
    ],
    ids=["sigmoid", "isotonic", "operating-point", "calibrated-operating-point"],
)
@pytest.mark.parametrize("grouped", [False, True])
def test_fitting_never_sees_a_test_row(make, grouped):
    X, y, groups = _data()
    train, test = _outer(y)
    LOG.clear()
    est = make().fit(X[train], y[train], groups=groups[train] if grouped else None)
    fitting = list(LOG)
    train_ids = set(train.tolist())
    assert fitting and all(ids <= train_ids for _, ids in fitting)  # not one test row while fitting
    inner = 0
    for (what, fit_ids), (next_what, scored) in zip(fitting, fitting[1:], strict=False):
        if what == "fit" and next_what == "score":  # an inner fit, then its held-out rows are scored
            inner += 1
            assert not fit_ids & scored
            if grouped:
                assert not {groups[i] for i in fit_ids} & {groups[i] for i in scored}
    assert inner >= 3
    LOG.clear()
    est.predict_proba(X[test])
    assert LOG and all(ids <= set(test.tolist()) and what == "score" for what, ids in LOG)


def test_sigmoid_and_isotonic_match_sklearn_on_logistic_regression():
    X, y, _ = _data(200, seed=3)
    X = X[:, 1:]
    cv = StratifiedKFold(5)
    for method in ("sigmoid", "isotonic"):
        ours = CalibratedHead(LogisticRegression(), method, cv=cv).fit(X, y)
        ref = CalibratedClassifierCV(LogisticRegression(), method=method, cv=cv, ensemble=False).fit(X, y)
        np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-12)
        np.testing.assert_array_equal(ours.predict(X), ref.predict(X))


def test_operating_point_is_picked_on_inner_out_of_fold_probabilities():
    X, y, _ = _data(200, seed=4)
    X = X[:, 1:]
    cv = StratifiedKFold(4, shuffle=True, random_state=1)
    op = InnerOperatingPoint(LogisticRegression(), sens=0.9, cv=cv).fit(X, y)
    inner = cross_val_predict(LogisticRegression(), X, y, cv=cv, method="predict_proba")[:, 1]
    assert op.threshold_ == fs.threshold_for(y, inner, sens=0.9)
    assert op.inner_rates_["sensitivity"] >= 0.9
    p = op.predict_proba(X)[:, 1]
    np.testing.assert_allclose(p, LogisticRegression().fit(X, y).predict_proba(X)[:, 1])
    np.testing.assert_array_equal(op.predict(X), (p >= op.threshold_).astype(int))


def test_operating_point_for_a_positive_class_at_index_0():
    X, y, _ = _data(200, seed=5)
    X = X[:, 1:]
    labels = np.array(["all", "hem"])[1 - y]  # "all" sorts first and is the positive class
    cv = StratifiedKFold(4)
    op = InnerOperatingPoint(LogisticRegression(), sens=0.95, positive="all", cv=cv).fit(X, labels)
    inner = cross_val_predict(LogisticRegression(), X, labels, cv=cv, method="predict_proba")[:, 0]
    assert op.threshold_ == fs.threshold_for(labels == "all", inner, sens=0.95)
    pred = op.predict(X)
    assert np.array_equal(pred == "all", op.predict_proba(X)[:, 0] >= op.threshold_)


def test_clone_keeps_parameters_and_unfitted_state():
    est = InnerOperatingPoint(CalibratedHead(LogisticRegression(C=0.5), "isotonic", cv=3), spec=0.9)
    copy = clone(est)
    assert copy.get_params()["estimator__method"] == "isotonic"
    assert copy.get_params()["estimator__estimator__C"] == 0.5
    assert not hasattr(copy, "threshold_")


def test_bad_settings_are_user_errors():
    X, y, _ = _data(40)
    with pytest.raises(FusionfeatError, match="unknown calibration"):
        CalibratedHead(LogisticRegression(), "beta").fit(X, y)
    with pytest.raises(FusionfeatError, match="2 or more classes"):  # K > 2 classes calibrate per class
        CalibratedHead(LogisticRegression()).fit(X, np.zeros(len(y), dtype=int))
    with pytest.raises(FusionfeatError, match="lower the inner folds"):
        inner_oof_scores(LogisticRegression(), X[:6], np.array([0, 0, 0, 0, 1, 1]), cv=5)
    with pytest.raises(FusionfeatError, match="exactly one"):
        InnerOperatingPoint(LogisticRegression()).fit(X, y)


def test_torch_head_calibrates_and_clones():
    from fusionfeat.heads.torch_head import TorchHeadClassifier

    X, y, groups = _data(96, seed=6)
    head = TorchHeadClassifier(hidden=8, max_epochs=3, patience=2, batch_size=32, device="cpu", random_state=0)
    est = clone(CalibratedHead(head, "sigmoid", cv=2))
    est.fit(X[:, 1:].astype(np.float32), y, groups=groups)
    p = est.predict_proba(X[:, 1:].astype(np.float32))
    assert p.shape == (96, 2) and np.allclose(p.sum(1), 1)
    assert est.history_ and not hasattr(est, "fusion_weights")


# ----------------------------------------------------------------------------------------------- through the CV loop

CV_LOG: list[np.ndarray] = []


class SampleSpy(ClassifierMixin, BaseEstimator):
    """Logistic regression on the features after the ``ident`` columns; records the samples of every fit."""

    def fit(self, X: Any, y: Any) -> SampleSpy:
        X = np.asarray(X, dtype=float)
        CV_LOG.append(X[:, 0].astype(int))
        self.model_ = LogisticRegression().fit(X[:, 2:], y)
        self.classes_ = self.model_.classes_
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        return self.model_.decision_function(np.asarray(X, dtype=float)[:, 2:])

    def predict_proba(self, X: Any) -> np.ndarray:
        return self.model_.predict_proba(np.asarray(X, dtype=float)[:, 2:])

    def predict(self, X: Any) -> np.ndarray:
        return self.classes_[self.predict_proba(X).argmax(1)]


@pytest.mark.parametrize("balance", ["weight", "augment"])
def test_calibration_and_threshold_inside_cross_validate_never_see_the_test_fold(balance):
    from fusionfeat.evaluation.cv import cross_validate
    from fusionfeat.heads.zoo import HeadSpec
    from tests.test_evaluate import fake_store

    def build(**_: Any) -> InnerOperatingPoint:
        return InnerOperatingPoint(CalibratedHead(SampleSpy(), "sigmoid", cv=3), sens=0.9)

    store = fake_store(n_subjects=12, cells=6)
    CV_LOG.clear()
    result = cross_validate(store, [HeadSpec("spy", ("ident", "resnet18"), "pooled", False, build)],
                            balance=balance, progress=False)
    folds = result.fold_results("spy")
    assert len(CV_LOG) == 4 * len(folds)  # per outer fold: 3 inner fits, then the fit on all training rows
    for k, f in enumerate(folds):
        test = set(result.rows["sample"][result.test_fold[f.repeat] == f.fold].tolist())
        for seen in CV_LOG[4 * k : 4 * k + 4]:
            assert not test & set(seen.tolist())
    assert not np.isnan(result.oof["spy"]).any()


def test_isotonic_operating_point_is_picked_on_raw_inner_scores_and_does_not_overshoot():
    """The threshold for sens=0.95 of an isotonic-calibrated head is picked on the head's uncalibrated inner
    out-of-fold scores (the calibrated ones are tied in steps): its inner sensitivity is no further from the
    target than without calibration, and predictions apply it on the raw scale."""
    X, y, _ = _data(240, seed=7)
    X = X[:, 1:]
    cv = StratifiedKFold(4, shuffle=True, random_state=2)
    plain = InnerOperatingPoint(LogisticRegression(), sens=0.95, cv=cv).fit(X, y)
    cal = InnerOperatingPoint(CalibratedHead(LogisticRegression(), "isotonic", cv=cv), sens=0.95).fit(X, y)
    assert abs(cal.inner_rates_["sensitivity"] - 0.95) <= abs(plain.inner_rates_["sensitivity"] - 0.95)
    # by hand: the raw inner decision values, the largest threshold keeping >= 95% of positives above it
    raw = cross_val_predict(LogisticRegression(), X, y, cv=cv, method="decision_function")
    pos = np.sort(raw[y == 1])[::-1]
    k = int(np.ceil(0.95 * len(pos) - 1e-9))
    assert cal.score_threshold_ == pytest.approx(pos[k - 1])
    assert cal.inner_rates_["sensitivity"] == pytest.approx(np.mean(raw[y == 1] >= pos[k - 1]))
    # the old choice, on calibrated (isotonic, in-sample, tied) inner probabilities, lands further away
    iso = cal.estimator_.inner_oof_
    old = fs.threshold_for(y, iso, sens=0.95)
    assert abs(np.mean(iso[y == 1] >= old) - 0.95) >= abs(cal.inner_rates_["sensitivity"] - 0.95)
    head = LogisticRegression().fit(X, y)
    np.testing.assert_array_equal(cal.predict(X), (head.decision_function(X) >= cal.score_threshold_).astype(int))
    assert 0 <= cal.threshold_ <= 1
