"""``--classes``: many tasks from one store. Keep some classes or merge them, case-insensitively, without
re-extracting; the selection travels with the run and the bundle; every mistake is one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fusionfeat.cli import main
from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluation.cv import cross_validate
from fusionfeat.heads.inputs import feature_matrix
from fusionfeat.store import FeatureStore, create_feature_datasets, create_store_file, finish_store
from fusionfeat.store.selection import LEFT_OUT, parse_classes, select_classes
from fusionfeat.train import train_head

pytestmark = pytest.mark.usefixtures("single_torch_thread")

WBC = ["basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil"]


def write_k_store(path: Path, classes: list[str], counts: list[int], dim: int = 8, seed: int = 0,
                  positive: str = "") -> Path:
    """A finished store of ``classes`` (``counts`` images each) with class-dependent pooled features, 2 backbones."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(len(classes)), counts).astype(np.int64)
    n = len(labels)
    samples = {
        "path": np.array([f"{classes[y]}/cell_{i:03d}.png" for i, y in enumerate(labels)]),
        "label": labels, "group": np.array([""] * n), "fold": np.full(n, -1, dtype=np.int64),
        "sha256": np.array([f"{i:064x}" for i in range(n)]), "ok": np.ones(n, dtype=bool),
        "error": np.array([""] * n),
    }
    tmp = path.with_name(path.name + ".tmp")
    h5 = create_store_file(tmp, samples, classes, {"created": "2024-01-01T00:00:00+00:00"})
    h5["samples"].attrs["positive"] = positive
    features = h5.create_group("features")
    for name in ("alpha", "beta"):
        centres = rng.normal(scale=1.5, size=(len(classes), dim))
        attrs = {"backbone": name, "weights": "random", "weights_kind": "random", "weights_sha256": "", "seed": 0,
                 "input_size": 32, "normalization": "imagenet", "views": "1", "precision": "fp32", "device": "cpu"}
        group = create_feature_datasets(features, name, n, 1, dim, None, attrs)
        group["pooled"][:] = (rng.normal(size=(n, 1, dim)) + centres[labels][:, None]).astype(np.float32)
    finish_store(h5, tmp, path)
    return path


@pytest.fixture(scope="module")
def wbc(tmp_path_factory) -> Path:
    return write_k_store(tmp_path_factory.mktemp("sel") / "wbc.h5", WBC, [4, 12, 10, 8, 16])


def test_keep_four_of_five_in_sorted_order_case_insensitively():
    sel = parse_classes("Neutrophil,EOSINOPHIL,lymphocyte,Monocyte", WBC)
    assert sel.classes == ("eosinophil", "lymphocyte", "monocyte", "neutrophil") and sel.positive == ""
    assert sel.mapping == {"basophil": None, "eosinophil": "eosinophil", "lymphocyte": "lymphocyte",
                           "monocyte": "monocyte", "neutrophil": "neutrophil"}


def test_merge_to_two_the_second_listed_is_positive_unless_positive_names_one():
    spec = "granulocyte=Neutrophil+Eosinophil+Basophil,mononuclear=Lymphocyte+Monocyte"
    sel = parse_classes(spec, WBC)
    assert sel.classes == ("granulocyte", "mononuclear") and sel.positive == "mononuclear"
    assert sel.mapping["basophil"] == "granulocyte" and sel.mapping["monocyte"] == "mononuclear"
    flipped = parse_classes(spec, WBC, positive="Granulocyte")
    assert flipped.classes == ("mononuclear", "granulocyte") and flipped.positive == "granulocyte"
    mixed = parse_classes("neutrophil,mono=lymphocyte+monocyte,eosinophil", WBC)
    assert mixed.classes == ("eosinophil", "mono", "neutrophil") and mixed.mapping["basophil"] is None


@pytest.mark.parametrize("spec, positive, message", [
    ("neutrophil,platelet", None, r"'platelet' is not a class of the store; its classes are basophil, eosinophil"),
    ("neutrophil,Neutrophil", None, "names the class 'neutrophil' twice"),
    ("g=neutrophil+eosinophil,m=eosinophil+monocyte", None, "names the class 'eosinophil' twice"),
    ("g=neutrophil+eosinophil,G=monocyte", None, "makes the class 'G' twice"),
    ("neutrophil", None, "leaves 1 class; a run needs two or more"),
    ("g=neutrophil+eosinophil+basophil+lymphocyte+monocyte", None, "leaves 1 class"),
    ("neutrophil,,monocyte", None, "empty entry"),
    ("g=neutrophil+,monocyte", None, "incomplete"),
    ("monocyte=neutrophil+eosinophil,basophil", None, "already a class of the store"),
    ("neutrophil,monocyte,eosinophil", "monocyte", "--positive 'monocyte' applies to two classes only"),
    ("neutrophil,monocyte", "basophil", "--positive 'basophil' is not one of the classes"),
    ("  ", None, "--classes is empty"),
])
def test_mistakes_are_one_line_errors(spec, positive, message):
    with pytest.raises(FusionfeatError, match=message) as info:
        parse_classes(spec, WBC, positive)
    assert "\n" not in str(info.value)


def test_the_view_remaps_labels_leaves_rows_out_and_records_the_selection(wbc):
    with FeatureStore.open(wbc) as fs:
        view = select_classes(fs, "neutrophil,mono=lymphocyte+monocyte")
        assert view.classes == ["neutrophil", "mono"] and view.positive_class == "mono"  # the second listed
        names = np.array(fs.classes)[fs.labels]
        expected = {"neutrophil": 0, "lymphocyte": 1, "monocyte": 1}
        for i, name in enumerate(names):
            assert view.ok[i] == (name in expected)
            if name in expected:
                assert view.labels[i] == expected[name]
            else:
                assert view.errors[i] == LEFT_OUT
        assert view.left_out == 4 + 12 and view.n_samples == fs.n_samples
        np.testing.assert_array_equal(view.usable_rows(), np.flatnonzero(np.isin(names, list(expected))))
        np.testing.assert_array_equal(view.pooled("alpha"), fs.pooled("alpha"))  # same rows, same features
        assert list(view.paths) == list(fs.paths) and view.backbones == fs.backbones
        frame = view.samples_frame()
        assert sorted(set(frame["label"])) == ["mono", "neutrophil"] and len(frame) == 34
        record = view.provenance()["class_selection"]
        assert record == {"spec": "neutrophil,mono=lymphocyte+monocyte", "classes": ["neutrophil", "mono"],
                          "mapping": {"basophil": None, "eosinophil": None, "lymphocyte": "mono",
                                      "monocyte": "mono", "neutrophil": "neutrophil"}, "left_out": 16}
        assert view.provenance()["classes"] == ["neutrophil", "mono"]
        assert select_classes(fs, None) is fs


def test_cross_validate_on_a_merge_to_two_uses_only_the_kept_rows(wbc):
    with FeatureStore.open(wbc) as fs:
        view = select_classes(fs, "granulocyte=neutrophil+eosinophil,mononuclear=lymphocyte+monocyte")
        result = cross_validate(view, ["logreg"], protocol="stratified", folds=3, progress=False, device="cpu")
        kept = set(np.asarray(fs.paths)[view.ok])
    assert set(result.rows["path"]) == kept and len(kept) == 12 + 10 + 8 + 16  # basophil left out, no others
    assert result.classes == ["granulocyte", "mononuclear"] and result.positive == "mononuclear"


def test_train_records_the_selection_and_its_classes(wbc, tmp_path):
    with FeatureStore.open(wbc) as fs:
        view = select_classes(fs, "neutrophil,eosinophil,monocyte")
        estimator, spec, info = train_head(view, "logreg", device="cpu", progress=False)
        X = feature_matrix(fs, spec, view.usable_rows())
    assert info["classes"] == ["eosinophil", "monocyte", "neutrophil"] and info["positive"] == ""
    assert info["training"]["per_class"] == {"eosinophil": 12, "monocyte": 8, "neutrophil": 16}
    assert info["class_selection"]["left_out"] == 4 + 10
    assert estimator.predict_proba(X).shape == (36, 3)


def test_operating_point_is_refused_for_more_than_two_classes(wbc):
    with FeatureStore.open(wbc) as fs, pytest.raises(FusionfeatError, match="--operating-point is for two classes"):
        train_head(fs, "logreg", device="cpu", progress=False, operating_point={"sens": 0.9})


def test_cli_fit_and_train_take_classes(wbc, tmp_path):
    runner = CliRunner()
    got = runner.invoke(main, ["fit", str(wbc), "--head", "logreg", "--cv", "stratified", "--folds", "3",
                               "--classes", "a=neutrophil+eosinophil,b=lymphocyte+monocyte", "-o",
                               str(tmp_path / "run"), "--quiet", "--device", "cpu"])
    assert got.exit_code == 0, got.output
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["classes"] == ["a", "b"] and metrics["provenance"]["class_selection"]["left_out"] == 4
    got = runner.invoke(main, ["train", str(wbc), "--head", "logreg", "--classes", "Neutrophil,Monocyte,Basophil",
                               "-o", str(tmp_path / "bundle"), "--quiet", "--device", "cpu"])
    assert got.exit_code == 0, got.output
    info = json.loads((tmp_path / "bundle" / "bundle.json").read_text())
    assert info["classes"] == ["basophil", "monocyte", "neutrophil"]
    assert info["class_selection"]["mapping"]["eosinophil"] is None
    bad = runner.invoke(main, ["train", str(wbc), "--head", "logreg", "--classes", "neutrophil,blast", "-o",
                               str(tmp_path / "b2"), "--quiet"])
    assert bad.exit_code == 2 and "'blast' is not a class of the store" in bad.output
    assert not (tmp_path / "b2").exists()
    alone = runner.invoke(main, ["train", str(wbc), "--head", "logreg", "--positive", "monocyte", "-o",
                                 str(tmp_path / "b3"), "--quiet"])
    assert alone.exit_code == 2 and "--positive 'monocyte' needs --classes" in alone.output
