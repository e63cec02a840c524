"""Outputs written by earlier versions still load: a bundle saved before the package was split into layers
(``tests/data/bundle-before-layers``, a logreg head trained by the demo's pipeline at commit 9702ad8) gives the
probabilities that version computed for the same rows."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fusionfeat.bundle import load_bundle

DATA = Path(__file__).parent / "data"


def test_a_bundle_saved_before_the_layered_packages_predicts_as_it_did():
    bundle = load_bundle(DATA / "bundle-before-layers")
    scaler = bundle.estimator.steps[0][1]
    rows = np.random.default_rng(0).normal(size=(6, scaler.mean_.shape[0]))
    X = (scaler.mean_ + 0.05 * scaler.scale_ * rows).astype(np.float32)
    expected = np.loadtxt(DATA / "bundle-before-layers-proba.txt")
    np.testing.assert_array_equal(bundle.estimator.predict_proba(X), expected)
    assert list(bundle.classes) == ["hem", "all"] and bundle.positive == "all"
