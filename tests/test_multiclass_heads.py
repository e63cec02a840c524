"""Every head for K classes: K probabilities per row summing to 1, classes_ the sorted labels; logistic regression
multinomial, XGBoost multi:softprob, the SVM's class-weighted one-vs-rest Platt, calibration per class."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import softmax
from sklearn.calibration import CalibratedClassifierCV
from sklearn.model_selection import StratifiedKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC
from sklearn.utils.class_weight import compute_sample_weight

from fusionfeat.heads.calibration import CalibratedHead
from fusionfeat.heads.decision_rule import ClassScoreCalibrator, rebuild_rule, split_rule
from fusionfeat.heads.linear import make_logreg
from fusionfeat.heads.svm import WeightedPlattSVC
from fusionfeat.heads.zoo import fusion_head

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BLOCKS = ((4, 6), (4, 6))


def _data(k: int, n_per_class: int = 24, seed: int = 0, rare: int | None = None):
    rng = np.random.default_rng(seed)
    counts = [n_per_class] * k
    if rare is not None:
        counts[0] = rare
    y = np.repeat(np.arange(k), counts)
    centres = rng.normal(scale=1.2, size=(k, 48))
    X = (rng.normal(size=(len(y), 48)) + centres[y]).astype(np.float32)
    return X, y


@pytest.mark.parametrize("k", [3, 4, 5])
@pytest.mark.parametrize("head", ["logreg", "svm", "xgboost", "concat", "attention-spatial", "attention-pooled"])
def test_every_head_gives_k_probabilities_summing_to_one(k, head):
    X, y = _data(k)
    spec = fusion_head(head, ["a", "b"])
    est = spec.build(blocks=BLOCKS, class_weight="balanced", random_state=0, device="cpu", progress=False)
    if spec.is_torch:
        est.set_params(max_epochs=15)
    labels = y + 10  # any sorted labels: classes_ is what training saw
    est.fit(X, labels)
    proba = est.predict_proba(X)
    assert proba.shape == (len(y), k)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(est.classes_, np.arange(k) + 10)
    np.testing.assert_array_equal(est.predict(X), est.classes_[proba.argmax(axis=1)])
    assert (est.predict(X) == labels).mean() > 1.5 / k  # learns something: well above chance


def test_logistic_regression_is_multinomial():
    X, y = _data(4)
    model = make_logreg(class_weight="balanced", random_state=0).fit(X, y)
    # multinomial: P = softmax of the K linear scores (one-vs-rest would normalise K separate sigmoids instead)
    np.testing.assert_allclose(model.predict_proba(X), softmax(model.decision_function(X), axis=1), atol=1e-12)


def test_xgboost_uses_softprob_for_k_classes_and_the_logistic_objective_for_two():
    X, y = _data(3)
    head = fusion_head("xgboost", ["a", "b"]).build(class_weight="balanced", random_state=0)
    params = head.fit(X, y).model_.get_xgb_params()
    assert params["objective"] == "multi:softprob" and head.model_.n_classes_ == 3
    two = fusion_head("xgboost", ["a", "b"]).build(class_weight="balanced", random_state=0).fit(X[y < 2], y[y < 2])
    assert two.model_.get_xgb_params()["objective"] == "binary:logistic"


def test_the_svm_is_scikit_learns_weighted_one_vs_rest_platt_for_k_classes():
    X, y = _data(4, n_per_class=20, rare=6)
    Xs = StandardScaler().fit_transform(X).astype(np.float64)
    ours = WeightedPlattSVC(class_weight="balanced", random_state=0).fit(Xs, y).predict_proba(Xs)
    weights = compute_sample_weight("balanced", y)
    ref = CalibratedClassifierCV(SVC(random_state=0), method="sigmoid", cv=5, ensemble=False)
    np.testing.assert_allclose(ours, ref.fit(Xs, y, sample_weight=weights).predict_proba(Xs), atol=1e-12)
    unweighted = WeightedPlattSVC(random_state=0).fit(Xs, y).predict_proba(Xs)
    assert ours[:, 0].mean() > unweighted[:, 0].mean()  # the weights reach the sigmoids: the rare class gains


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_calibration_for_k_classes_equals_scikit_learns_and_survives_a_bundle_round_trip(method):
    X, y = _data(3, n_per_class=30)
    X = X.astype(np.float64)  # float32 decision values would round differently inside scikit-learn's own path
    head = make_logreg(class_weight="balanced", random_state=0)
    ours = CalibratedHead(head, method=method, cv=5, random_state=0).fit(X, y)
    ref = CalibratedClassifierCV(make_logreg(class_weight="balanced", random_state=0), method=method,
                                 cv=StratifiedKFold(5, shuffle=True, random_state=0), ensemble=False).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-10)
    np.testing.assert_allclose(ours.predict_proba(X).sum(axis=1), 1.0, atol=1e-12)
    assert ours.inner_oof_.shape == (len(y), 3)
    bare, rule = split_rule(ours)
    assert len(rule["calibration"]["per_class"]) == 3
    rebuilt = rebuild_rule(bare, rule)
    assert isinstance(rebuilt.calibrator_, ClassScoreCalibrator)
    np.testing.assert_allclose(rebuilt.predict_proba(X), ours.predict_proba(X), atol=1e-12)


def test_calibration_of_two_classes_is_unchanged():
    X, y = _data(2, n_per_class=30)
    X = X.astype(np.float64)
    ours = CalibratedHead(make_logreg(random_state=0), method="sigmoid", random_state=0).fit(X, y)
    ref = CalibratedClassifierCV(make_logreg(random_state=0), method="sigmoid",
                                 cv=StratifiedKFold(5, shuffle=True, random_state=0), ensemble=False).fit(X, y)
    np.testing.assert_allclose(ours.predict_proba(X), ref.predict_proba(X), atol=1e-10)
    assert ours.inner_oof_.ndim == 1 and "per_class" not in split_rule(ours)[1]["calibration"]
