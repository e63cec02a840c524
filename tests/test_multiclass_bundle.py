"""K-class bundles: `train` + `predict` on real pixels give the store's probabilities (K per image, to 1e-5) and
the predicted class; the bundle records the classes and any --classes mapping; an edited class list is refused.
The BCCD white-cell crops (5 classes, Basophil has 3 images) run when ../shared/data holds them."""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fusionfeat.bundle import load_bundle, manifest_digest
from fusionfeat.cli import main
from fusionfeat.data.synthetic import generate_multiclass_folders
from fusionfeat.errors import FusionfeatError, FusionfeatWarning
from fusionfeat.heads.inputs import feature_matrix
from fusionfeat.protocols import make_plan
from fusionfeat.store import FeatureStore
from fusionfeat.train import train_head
from tests.conftest import SHARED_DATA

pytestmark = pytest.mark.usefixtures("single_torch_thread")

BCCD = SHARED_DATA / "BCCD_WBC"
EXTRACT = ["--weights", "random", "--input-size", "32", "--device", "cpu", "--quiet"]


def _extract(data: Path, out: Path) -> Path:
    got = CliRunner().invoke(main, ["extract", str(data), "-o", str(out), *EXTRACT])
    assert got.exit_code == 0, got.output
    return out


@pytest.fixture(scope="module")
def k3(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("k3")
    data = generate_multiclass_folders(root / "data", n_classes=3, n_per_class=[8, 8, 4], size=48)
    return data, _extract(data, root / "k3.h5")


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _train_and_predict(store: Path, data: Path, tmp: Path, head: str, extra: list[str] = ()) -> tuple:
    runner = CliRunner()
    got = runner.invoke(main, ["train", str(store), "--head", head, "-o", str(tmp / "bundle"), "--device", "cpu",
                               "--quiet", *extra])
    assert got.exit_code == 0, got.output
    got = runner.invoke(main, ["predict", str(tmp / "bundle"), str(data), "-o", str(tmp / "p.csv"), "--device", "cpu",
                               "--quiet"])
    assert got.exit_code == 0, got.output
    return load_bundle(tmp / "bundle"), _read_csv(tmp / "p.csv")


@pytest.mark.parametrize("head, extra", [("logreg", []), ("attention-pooled", []), ("svm", ["--calibrate",
                                                                                             "sigmoid"])])
def test_predict_gives_the_stores_k_probabilities(k3, tmp_path, head, extra):
    data, store = k3
    bundle, rows = _train_and_predict(store, data, tmp_path, head, extra)
    assert bundle.classes == ["class_a", "class_b", "class_c"] and bundle.positive == ""
    assert list(rows[0]) == ["path", "p_class_a", "p_class_b", "p_class_c", "predicted", "error",
                            "shift_score", "beyond_p99"]
    with FeatureStore.open(store) as fs:
        X = feature_matrix(fs, bundle.spec, np.arange(fs.n_samples))
        expected = bundle.estimator.predict_proba(X)
        by_path = {str(Path(fs.data_root) / p): i for i, p in enumerate(fs.paths)}
    assert len(rows) == len(by_path)
    for row in rows:
        got = np.array([float(row[f"p_{c}"]) for c in bundle.classes])
        want = expected[by_path[row["path"]]]
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        assert abs(got.sum() - 1) < 1e-5
        assert row["predicted"] == bundle.classes[int(np.argmax(want))]


def test_the_bundle_is_the_fitted_head_and_refuses_an_edited_class_list(k3, tmp_path):
    data, store = k3
    _train_and_predict(store, data, tmp_path, "logreg", ["--classes", "ab=class_a+class_b,class_c"])
    info = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert info["classes"] == ["ab", "class_c"] and info["positive"] == "class_c"
    assert info["class_selection"]["mapping"] == {"class_a": "ab", "class_b": "ab", "class_c": "class_c"}
    rows = _read_csv(tmp_path / "p.csv")
    assert list(rows[0]) == ["path", "p_class_c", "label", "error", "shift_score", "beyond_p99"]  # the binary layout
    for edit in ({"classes": ["ab", "class_c", "extra"], "positive": ""},  # more classes than the model has
                 {"classes": ["ab", "class_c", "ab"], "positive": ""},      # a class twice
                 {"classes": ["ab", "class_c"], "positive": ""}):           # two classes without a positive
        edited = {**info, **edit}
        edited["manifest_sha256"] = manifest_digest(edited)  # re-signed: the checksum alone would pass
        (tmp_path / "bundle" / "bundle.json").write_text(json.dumps(edited))
        with pytest.raises(FusionfeatError, match="damaged or edited"):
            load_bundle(tmp_path / "bundle")


def test_info_lists_the_classes_with_counts(k3):
    got = CliRunner().invoke(main, ["info", str(k3[1])])
    assert got.exit_code == 0 and "class_a 8, class_b 8, class_c 4; 3 classes" in got.output


def test_train_refuses_an_operating_point_for_three_classes(k3, tmp_path):
    got = CliRunner().invoke(main, ["train", str(k3[1]), "--head", "logreg", "--operating-point", "sens=0.9", "-o",
                                    str(tmp_path / "b"), "--quiet"])
    assert got.exit_code == 2 and "--operating-point is for two classes" in got.output
    assert not (tmp_path / "b").exists()


@pytest.mark.skipif(not BCCD.is_dir(), reason=f"BCCD white-cell crops not found at {BCCD}")
def test_bccd_subset_train_predict_and_a_rare_basophil(tmp_path):
    """A few crops per class (copied into tmp): predict equals the store-based probabilities to 1e-5, and the
    3-image Basophil class under 5 folds is one warning naming it while the plan goes on."""
    data = tmp_path / "wbc"
    for folder in sorted(p for p in BCCD.iterdir() if p.is_dir()):
        (data / folder.name).mkdir(parents=True)
        for image in sorted(folder.glob("*.jpg"))[:6]:
            shutil.copy(image, data / folder.name / image.name)
    store = _extract(data, tmp_path / "wbc.h5")
    with FeatureStore.open(store) as fs:
        assert fs.classes == ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]
        assert np.bincount(fs.labels).tolist() == [3, 6, 6, 6, 6]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            plan = make_plan(fs.labels, fs.groups, fs.folds, fs.ok, fs.n_views, protocol="stratified", n_folds=5,
                             seed=0, class_names=fs.classes)
        assert [str(w.message).split(" for ")[0] for w in caught if w.category is FusionfeatWarning] == \
            ["'basophil' has 3 images"]
        assert all(0 in fs.labels[plan.rows.sample[s.train]] for s in plan.splits)
        estimator, spec, _ = train_head(fs, "logreg", device="cpu", progress=False)
        expected = estimator.predict_proba(feature_matrix(fs, spec, np.arange(fs.n_samples)))
        paths = [str(Path(fs.data_root) / p) for p in fs.paths]
    bundle, rows = _train_and_predict(store, data, tmp_path, "logreg")
    got = {r["path"]: [float(r[f"p_{c}"]) for c in bundle.classes] for r in rows}
    np.testing.assert_allclose(np.array([got[p] for p in paths]), expected, rtol=0, atol=1e-5)


def test_explain_picks_the_most_confident_image_of_each_class_and_the_worst_errors():
    from fusionfeat.explain import choose_per_class

    p = np.array([[0.7, 0.2, 0.1],   # 0: true a, said a (0.7)
                  [0.9, 0.05, 0.05],  # 1: true a, said a (0.9): the most confident a
                  [0.1, 0.8, 0.1],   # 2: true b, said b
                  [0.6, 0.3, 0.1],   # 3: true c, said a (0.6): an error
                  [0.05, 0.9, 0.05],  # 4: true c, said b (0.9): the worst error
                  [0.9, 0.05, 0.05]])  # 5: a copy of image 1 (same sample): shown once
    label = np.array([0, 0, 1, 2, 2, 0])
    sample = np.array([10, 11, 12, 13, 14, 11])
    got = {name: [(k.row, k.p, k.shown) for k in picks]
           for name, _, picks in choose_per_class(p, label, sample, 4, ["a", "b", "c"])}
    assert got == {"confident_a": [(1, 0.9, "a"), (0, 0.7, "a")], "confident_b": [(2, 0.8, "b")], "confident_c": [],
                   "worst_errors": [(4, 0.9, "b"), (3, 0.6, "a")]}


def test_positive_proba_is_for_two_classes_and_class_probabilities_for_k(k3, tmp_path):
    from fusionfeat.predict import class_probabilities, positive_proba

    with FeatureStore.open(k3[1]) as fs:
        estimator, spec, info = train_head(fs, "logreg", device="cpu", progress=False)
        emb = {b: (fs.pooled(b)[:, None], None) for b in fs.backbones}
        X = feature_matrix(fs, spec, np.arange(fs.n_samples))
    from fusionfeat.bundle import save_bundle

    bundle = load_bundle(save_bundle(tmp_path / "b", estimator, spec, info))
    np.testing.assert_allclose(class_probabilities(bundle, emb), estimator.predict_proba(X), atol=1e-12)
    with pytest.raises(FusionfeatError, match="has 3 classes and no positive one"):
        positive_proba(bundle, emb)
