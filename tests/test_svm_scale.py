"""The SVM head past ``max_exact_rows``: a Nystroem RBF map + LinearSVC under the same weighted Platt sigmoid."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from sklearn.calibration import CalibratedClassifierCV
from sklearn.kernel_approximation import Nystroem
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedGroupKFold
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.class_weight import compute_sample_weight

from fusionfeat.heads.calibration import fit_estimator
from fusionfeat.heads.state import dump_estimator, load_estimator
from fusionfeat.heads.svm import WeightedPlattSVC, make_svm


def _data(n: int, seed: int, d: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Separable-ish two-class data with a non-linear part (a radius) so the RBF kernel matters."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.35).astype(int)
    X = rng.normal(size=(n, d))
    X[y == 1, :3] += 1.0
    X[y == 1, 3:5] *= 2.0
    return X, y


def _approximate(max_exact_rows: int = 50) -> object:
    svm = make_svm("balanced", 0)
    svm.set_params(weightedplattsvc__max_exact_rows=max_exact_rows)
    return svm


def test_defaults_and_below_the_threshold_the_exact_svc_is_unchanged():
    assert WeightedPlattSVC().max_exact_rows == 5000 and WeightedPlattSVC().n_components == 1000
    X, y = _data(150, 0)
    for limit in (150, None, 5000):  # at the threshold (not past it), never, and the default
        svm = make_svm("balanced", 0).set_params(weightedplattsvc__max_exact_rows=limit).fit(X, y)
        assert svm[-1].approximation_ is None and svm[-1].kernel_ == "rbf"
        Xs = StandardScaler().fit_transform(X)
        ref = CalibratedClassifierCV(SVC(random_state=0), method="sigmoid", cv=5, ensemble=False)
        ref.fit(Xs, y, sample_weight=compute_sample_weight("balanced", y))
        np.testing.assert_array_equal(svm.predict_proba(X), ref.predict_proba(Xs))
        np.testing.assert_array_equal(svm.decision_function(X), ref.calibrated_classifiers_[0].estimator
                                      .decision_function(Xs))


def test_past_the_threshold_nystroem_with_svc_scale_gamma_is_close_to_the_exact_svc():
    X, y = _data(400, 1)
    X_test, y_test = _data(400, 2)
    approx = _approximate().fit(X, y)
    head = approx[-1]
    assert isinstance(head.approximation_, Nystroem)
    assert head.kernel_ == "rbf-nystroem(400)"  # n_components capped at the training rows
    assert head.approximation_.n_components == 400 and head.approximation_.kernel == "rbf"
    Xs = StandardScaler().fit_transform(X)
    by_hand = 1.0 / (Xs.shape[1] * np.var(Xs.astype(np.float64)))
    svc_gamma = SVC(gamma="scale").fit(Xs, y)._gamma  # what the exact SVC uses
    assert head.approximation_.gamma == pytest.approx(by_hand, rel=1e-12)
    assert head.approximation_.gamma == pytest.approx(svc_gamma, rel=1e-12)
    assert isinstance(head.calibrated_.calibrated_classifiers_[0].estimator, LinearSVC)
    assert head.calibrated_.calibrated_classifiers_[0].estimator.C == head.C

    exact = make_svm("balanced", 0).fit(X, y)
    p_approx, p_exact = approx.predict_proba(X_test)[:, 1], exact.predict_proba(X_test)[:, 1]
    auc_approx, auc_exact = roc_auc_score(y_test, p_approx), roc_auc_score(y_test, p_exact)
    assert auc_exact > 0.8  # the data are learnable, so the comparison means something
    assert abs(auc_approx - auc_exact) < 0.05
    assert np.mean(np.abs(p_approx - p_exact)) < 0.1
    assert np.array_equal(approx.predict_proba(X_test), _approximate().fit(X, y).predict_proba(X_test))

    fewer = _approximate().set_params(weightedplattsvc__n_components=64).fit(X, y)[-1]
    assert fewer.kernel_ == "rbf-nystroem(64)" and fewer.approximation_.components_.shape == (64, X.shape[1])


def test_the_approximate_path_keeps_the_class_weights_and_grouped_sigmoid_folds():
    rng = np.random.default_rng(3)
    groups = np.repeat([f"s{i}" for i in range(60)], 4)  # 60 subjects, 4 cells each
    y = np.repeat((rng.random(60) < 0.35).astype(int), 4)
    X = rng.normal(size=(240, 6)) + 0.8 * y[:, None]
    got = fit_estimator(_approximate(), X, y, groups)
    assert got[-1].kernel_ == "rbf-nystroem(240)"
    Xs = StandardScaler().fit_transform(X)
    splits = list(StratifiedGroupKFold(5, shuffle=True, random_state=0).split(Xs, y, groups))
    for train, test in splits:
        assert not set(groups[train]) & set(groups[test])
    gamma = 1.0 / (Xs.shape[1] * Xs.var())
    Z = Nystroem(gamma=gamma, n_components=240, random_state=0).fit_transform(Xs)
    ref = CalibratedClassifierCV(LinearSVC(max_iter=10000, random_state=0), method="sigmoid", cv=splits,
                                 ensemble=False)
    ref.fit(Z, y, sample_weight=compute_sample_weight("balanced", y))
    np.testing.assert_allclose(got.predict_proba(X), ref.predict_proba(Z), rtol=1e-9, atol=1e-9)
    ungrouped = _approximate().fit(X, y).predict_proba(X)
    assert not np.allclose(got.predict_proba(X), ungrouped)  # the groups changed the sigmoid's folds


def test_an_approximate_svm_round_trips_through_the_pickle_free_state():
    X, y = _data(300, 4)
    svm = _approximate().fit(X, y)
    tree, arrays = dump_estimator(svm)
    text = json.dumps(tree)
    assert '"Nystroem"' in text and '"LinearSVC"' in text
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        loaded = load_estimator(json.loads(text), {k: npz[k] for k in npz.files})
    X_new, _ = _data(50, 5)
    np.testing.assert_array_equal(loaded.predict_proba(X_new), svm.predict_proba(X_new))
    np.testing.assert_array_equal(loaded.decision_function(X_new), svm.decision_function(X_new))
    assert loaded[-1].kernel_ == "rbf-nystroem(300)"


def test_an_exact_svm_saved_before_the_approximation_existed_still_predicts():
    X, y = _data(100, 6)
    svm = make_svm("balanced", 0).fit(X, y)
    expected = svm.predict_proba(X)
    for name in ("approximation_", "kernel_"):
        del svm[-1].__dict__[name]
    np.testing.assert_array_equal(svm.predict_proba(X), expected)


def test_an_svm_saved_before_its_size_parameters_existed_loads_with_their_defaults():
    from sklearn.base import clone

    X, y = _data(100, 6)
    svm = make_svm("balanced", 0).fit(X, y)
    expected = svm.predict_proba(X)
    tree, arrays = dump_estimator(svm)
    state = tree["state"]["steps"][1]["tuple"][1]["state"]  # the pipeline's WeightedPlattSVC
    assert "max_exact_rows" in state
    for name in ("approximation_", "kernel_", "max_exact_rows", "n_components"):
        del state[name]
    loaded = load_estimator(json.loads(json.dumps(tree)), arrays)
    np.testing.assert_array_equal(loaded.predict_proba(X), expected)
    params = loaded[-1].get_params()
    assert params["max_exact_rows"] == 5000 and params["n_components"] == 1000
    assert repr(clone(loaded))


@pytest.mark.parametrize("name, value", [("max_exact_rows", float("inf")), ("max_exact_rows", -1),
                                         ("max_exact_rows", 2.5), ("n_components", 0), ("n_components", "10")])
def test_svm_size_parameters_out_of_range_are_one_line_errors(name, value):
    from fusionfeat.errors import FusionfeatError
    from fusionfeat.heads.svm import WeightedPlattSVC

    X, y = _data(60, 7)
    with pytest.raises(FusionfeatError, match=name):
        WeightedPlattSVC(**{name: value}).fit(X, y)
