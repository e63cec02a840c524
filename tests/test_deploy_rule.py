"""The decision rule `fit` validates can be deployed: `train --calibrate/--operating-point` keeps the
calibration and the threshold in the bundle (as data, no pickle), and a loaded bundle gives the fitted
wrapper's probabilities and labels, by the library and by `predict`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.special import expit
from sklearn.calibration import CalibratedClassifierCV

from fusionfeat.bundle import load_bundle, save_bundle
from fusionfeat.cli import main
from fusionfeat.errors import FusionfeatError
from fusionfeat.heads.calibration import fit_calibrator
from fusionfeat.heads.decision_rule import ScoreCalibrator, describe_rule
from fusionfeat.heads.inputs import feature_matrix
from fusionfeat.predict import predict_rows
from fusionfeat.store import FeatureStore
from fusionfeat.train import train_head
from tests.test_zoo import BLOCKS3, write_synthetic_store

pytestmark = pytest.mark.usefixtures("single_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    return write_synthetic_store(tmp_path_factory.mktemp("rule") / "s.h5", BLOCKS3)


@pytest.mark.parametrize("method", ["sigmoid", "isotonic"])
def test_the_saved_calibration_map_is_scikit_learns(method):
    rng = np.random.default_rng(0)
    scores = rng.normal(size=300)
    y = (scores + rng.normal(scale=1.2, size=300) > 0).astype(int)
    fitted: CalibratedClassifierCV = fit_calibrator(scores, y, method)
    ours = ScoreCalibrator.from_fitted(fitted)
    probe = np.concatenate([rng.normal(scale=3, size=500), [scores.min() - 5, scores.max() + 5]])
    np.testing.assert_allclose(ours.predict_proba(probe), fitted.predict_proba(probe[:, None]), rtol=0, atol=1e-12)
    if method == "sigmoid":  # Platt's map written out by hand
        a, b = ours.params["a"], ours.params["b"]
        np.testing.assert_allclose(ours.probability(probe), 1 / (1 + np.exp(a * probe + b)), atol=1e-12)
        np.testing.assert_allclose(ours.probability(probe), expit(-(a * probe + b)), atol=0)


@pytest.mark.parametrize("head, calibrate, point", [
    ("logreg", "sigmoid", {"sens": 0.95}),
    ("svm", "isotonic", {"spec": 0.9}),
    ("xgboost", None, {"sens": 0.9}),
    ("beta", "sigmoid", None),
])
def test_a_loaded_bundle_decides_as_the_fitted_wrapper(store, tmp_path, head, calibrate, point):
    with FeatureStore.open(store) as fs:
        estimator, spec, info = train_head(fs, head, device="cpu", progress=False, calibrate=calibrate,
                                           operating_point=point, backbones=["beta", "gamma", "alpha"])
        X = feature_matrix(fs, spec, np.arange(fs.n_samples))
        emb = {b: (fs.pooled(b)[:, None], fs.tokens(b)[:, None]) for b in fs.backbones}
    bundle = load_bundle(save_bundle(tmp_path / "b", estimator, spec, info))
    rule = json.loads((tmp_path / "b" / "bundle.json").read_text())["decision_rule"]
    assert ("calibration" in rule) == bool(calibrate) and ("operating_point" in rule) == bool(point)
    np.testing.assert_allclose(bundle.estimator.predict_proba(X), estimator.predict_proba(X), rtol=0, atol=1e-9)
    np.testing.assert_array_equal(bundle.estimator.predict(X), estimator.predict(X))
    p, labels = predict_rows(bundle, emb)  # predict's path: fresh embeddings, the stored rule
    assert labels == [bundle.classes[int(i)] for i in estimator.predict(X)]
    np.testing.assert_allclose(p, estimator.predict_proba(X)[:, 1], atol=1e-6)
    if point:
        assert bundle.estimator.threshold_ == pytest.approx(estimator.threshold_, abs=0)
        assert "operating point" in describe_rule(rule)


def test_train_command_stores_the_rule_and_predict_applies_it(store, tmp_path):
    runner = CliRunner()
    plain = runner.invoke(main, ["train", str(store), "--head", "logreg", "-o", str(tmp_path / "plain"), "--quiet"])
    assert plain.exit_code == 0, plain.output and "decision: argmax" in plain.output
    tuned = runner.invoke(main, ["train", str(store), "--head", "logreg", "--calibrate", "sigmoid",
                                 "--operating-point", "sens=0.99", "-o", str(tmp_path / "tuned"), "--quiet"])
    assert tuned.exit_code == 0, tuned.output
    assert "sigmoid-calibrated, operating point sens=0.99" in tuned.output
    assert "decision_rule" not in json.loads((tmp_path / "plain" / "bundle.json").read_text())
    rule = json.loads((tmp_path / "tuned" / "bundle.json").read_text())["decision_rule"]
    assert rule["operating_point"]["target"] == {"sens": 0.99} and rule["calibration"]["method"] == "sigmoid"
    with FeatureStore.open(store) as fs:
        emb = {b: (fs.pooled(b)[:, None], fs.tokens(b)[:, None]) for b in fs.backbones}
        bundle = load_bundle(tmp_path / "tuned")
        X = feature_matrix(fs, bundle.spec, np.arange(fs.n_samples))
    raw = bundle.estimator.estimator_.raw_scores(X)  # the operating point acts on the raw score scale
    by_hand = [bundle.positive if s >= rule["operating_point"]["score_threshold"] else "hem" for s in raw]
    assert predict_rows(bundle, emb)[1] == by_hand
    bad = runner.invoke(main, ["train", str(store), "--head", "logreg", "--operating-point", "sens=2",
                               "-o", str(tmp_path / "bad")])
    assert bad.exit_code == 2 and "--operating-point" in bad.output and not (tmp_path / "bad").exists()


def test_an_edited_rule_is_refused_in_one_line(store, tmp_path):
    with FeatureStore.open(store) as fs:
        estimator, spec, info = train_head(fs, "logreg", device="cpu", progress=False, calibrate="sigmoid")
    save_bundle(tmp_path / "b", estimator, spec, info)
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    del meta["decision_rule"]["calibration"]["a"]
    from fusionfeat.bundle import SELF_CHECKSUM, manifest_digest

    meta[SELF_CHECKSUM] = manifest_digest(meta)  # re-signed: the checksum catches accidents, not an editor
    (tmp_path / "b" / "bundle.json").write_text(json.dumps(meta))
    with pytest.raises(FusionfeatError, match="calibration map is not one fusionfeat writes"):
        load_bundle(tmp_path / "b")
