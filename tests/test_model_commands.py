"""fit / train / predict / demo through the CLI: run folders, bundles that round-trip, clear refusals."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusionfeat.bundle import load_bundle
from fusionfeat.cli import main
from fusionfeat.heads.inputs import feature_matrix
from fusionfeat.store import FeatureStore
from tests.conftest import write_cells

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("model")
    data = write_cells(root / "cells", per_class=10, size=40)
    path = root / "s.h5"
    result = run("extract", data, "-o", path, "--weights", "random", "--input-size", "32", "--quiet", "--workers", "0")
    assert result.exit_code == 0, result.output
    return path


def test_fit_writes_run_and_is_reproducible(store, tmp_path):
    outs = []
    for name in ("a", "b"):
        outs.append(tmp_path / name)
        result = run("fit", store, "--head", "logreg,concat", "--cv", "stratified", "--folds", "3", "-o", outs[-1],
                     "--quiet", "--device", "cpu")
        assert result.exit_code == 0, result.output
        assert "logreg" in result.output and "report:" in result.output
    a, b = (json.loads((o / "metrics.json").read_text()) for o in outs)
    for head in ("logreg", "concat"):
        sa, sb = ({k: v for k, v in d["heads"][head]["summary"].items() if not k.endswith("_time")} for d in (a, b))
        assert sa == sb
    report = (outs[0] / "report.md").read_text()
    assert "RANDOM" in report and "0.9216" in report  # random-weight label and the paper's fusion accuracy
    assert (outs[0] / "summary.png").stat().st_size > 1000  # every head's ROC in one figure (was roc_all.png)


@pytest.mark.parametrize("args, message", [
    (["--head", "alexnet"], "unknown head"),
    (["--head", "logreg", "--cv", "grouped"], "subject"),
    (["--head", "logreg", "--cv", "paper"], "dihedral8"),
])
def test_fit_bad_requests_are_one_line(store, tmp_path, args, message):
    result = run("fit", store, *args, "-o", tmp_path / "r", "--quiet")
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output


def test_fit_missing_store(tmp_path):
    result = run("fit", tmp_path / "none.h5", "--head", "logreg")
    assert result.exit_code == 2 and "no feature store" in result.output


def assert_predict_matches_store(store, bundle_dir, tmp_path) -> dict[str, dict]:
    """``predict`` on the store's images gives the bundle's probabilities on the stored features; the rows."""
    bundle = load_bundle(bundle_dir)
    with FeatureStore.open(store) as fs:
        expected = bundle.estimator.predict_proba(feature_matrix(fs, bundle.spec, np.arange(fs.n_samples)))[:, 1]
        paths = [fs.path.parent / "cells" / p for p in fs.paths]
    out = tmp_path / "pred.csv"
    result = run("predict", bundle_dir, paths[0].parent.parent, "-o", out, "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    got = np.array([float(rows[str(p)]["p_all"]) for p in paths])
    np.testing.assert_allclose(got, expected, atol=2e-3)  # features recomputed from the images
    return rows


@pytest.mark.parametrize("head", ["logreg", "svm", "xgboost", "attention"])
def test_train_bundle_predict_round_trip(store, tmp_path, head):
    bundle_dir = tmp_path / "bundle"
    result = run("train", store, "--head", head, "-o", bundle_dir, "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    rows = assert_predict_matches_store(store, bundle_dir, tmp_path)
    assert {r["label"] for r in rows.values()} <= {"all", "hem"}


def test_predict_refuses_foreign_bundles_and_other_weights(store, tmp_path):
    assert run("predict", tmp_path, tmp_path, "-o", tmp_path / "p.csv").exit_code == 2
    bundle_dir = tmp_path / "bundle"
    assert run("train", store, "--head", "logreg", "-o", bundle_dir, "--quiet").exit_code == 0
    weights = tmp_path / "w.pth"
    from fusionfeat.encoders import load_backbone

    torch.save(load_backbone("resnet18", "random", seed=1).trunk.state_dict(), weights)
    images = store.parent / "cells"
    result = run("predict", bundle_dir, images, "-o", tmp_path / "p.csv", "--weights", f"resnet18={weights}")
    assert result.exit_code == 2 and "does not match" in result.output


def test_train_prints_a_readable_summary(store, tmp_path):
    bundle_dir = tmp_path / "bundle"
    result = run("train", store, "--head", "logreg", "-o", bundle_dir, "--seed", "3", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    with FeatureStore.open(store) as fs:
        counts = np.bincount(fs.labels[fs.ok], minlength=2)
        per_class = ", ".join(f"{c} {n}" for c, n in zip(fs.classes, counts, strict=True))
        n_images = int(fs.ok.sum())
    assert result.stdout.strip() == (f"{bundle_dir}: head logreg trained on {n_images} images ({per_class}), "
                                     "balance weight, seed 3; weights: resnet18 random, vgg16 random; "
                                     "decision: argmax (P >= 0.5), uncalibrated")


def test_train_refuses_head_lists(store, tmp_path):
    result = run("train", store, "--head", "all", "-o", tmp_path / "b")
    assert result.exit_code == 2 and "one head" in result.output


def test_demo_pipeline_small(tmp_path):
    from fusionfeat.demo import run_demo

    messages = []
    result = run_demo(tmp_path / "demo", subjects_all=5, subjects_hem=5, cells_per_subject=3, image_size=48,
                      input_size=32, weights="random", device="cpu", progress=False, echo=messages.append)
    assert any("RANDOM" in m for m in messages)
    data = json.loads((result.run_dir / "metrics.json").read_text())
    assert set(data["heads"]) == {"resnet18", "vgg16", "concat", "attention-spatial", "svm", "xgboost", "logreg"}
    assert "grouped" in json.dumps(data["protocol"]).lower()


# ----------------------------------------------------------------------------------------------- K backbones


@pytest.fixture(scope="module")
def store3(tmp_path_factory):
    from tests.test_zoo import BLOCKS3, write_synthetic_store

    return write_synthetic_store(tmp_path_factory.mktemp("k3") / "k3.h5", BLOCKS3)


def test_fit_all_over_three_backbones_reports_every_head_and_three_fusion_weights(store3, tmp_path):
    out = tmp_path / "run"
    result = run("fit", store3, "--head", "all", "--backbones", "gamma,alpha,beta", "--cv", "stratified",
                 "--folds", "2", "-o", out, "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    heads = ["gamma", "alpha", "beta", "concat", "attention-spatial", "svm", "xgboost", "logreg"]
    data = json.loads((out / "metrics.json").read_text())
    assert list(data["heads"]) == heads
    for head in heads:
        assert f"| {head} " in result.output or f"`{head}`" in result.output, result.output
    weights = data["heads"]["attention-spatial"]["fusion_weights_by_class"]
    for by_backbone in weights.values():
        assert list(by_backbone) == ["gamma", "alpha", "beta"]
        assert sum(by_backbone.values()) == pytest.approx(1.0)
    report = (out / "report.md").read_text()
    assert "| head | true class | gamma | alpha | beta |" in report
    with open(out / "predictions.csv", newline="") as fh:
        columns = next(csv.reader(fh))
    expected = [f"w_attention-spatial_{b}" for b in ("gamma", "alpha", "beta")]
    assert [c for c in columns if c.startswith("w_")] == expected


@pytest.mark.parametrize("args, message", [
    (["fit", "--head", "concat", "--backbones", "alpha,delta"], "--backbones delta: not in"),
    (["fit", "--head", "concat", "--backbones", "alpha"], "fuses two or more backbones"),
    (["train", "--head", "svm", "--backbones", "resnet18"], "which holds alpha, beta, gamma"),
])
def test_backbones_option_refuses_what_the_store_lacks(store3, tmp_path, args, message):
    command, *rest = args
    result = run(command, store3, *rest, "-o", tmp_path / "out", "--quiet")
    assert result.exit_code == 2 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_train_backbones_records_the_fused_backbones(store3, tmp_path):
    result = run("train", store3, "--head", "logreg", "--backbones", "beta,alpha", "-o", tmp_path / "b", "--quiet")
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "b" / "bundle.json").read_text())
    assert (meta["head"], meta["head_backbones"], meta["head_inputs"]) == ("logreg", ["beta", "alpha"], "pooled")
    assert load_bundle(tmp_path / "b").spec.backbones == ("beta", "alpha")


# Small CNNs first: they run at a tiny input size; any registered backbone may stand in.
_PREFERRED = ("resnet18", "vgg16", "densenet121", "efficientnet_b0", "mobilenet_v3_large", "regnet_y_400mf",
              "convnext_tiny")


def three_registered_backbones() -> list[str]:
    from fusionfeat.encoders import BACKBONES

    names = [n for n in _PREFERRED if n in BACKBONES] + [n for n in BACKBONES if n not in _PREFERRED]
    if len(names) < 3:
        pytest.skip(f"needs 3 registered backbones for K=3 predict-from-images; the registry has {', '.join(names)}")
    return names[:3]


@pytest.fixture(scope="module")
def image_store3(tmp_path_factory):
    names = three_registered_backbones()
    root = tmp_path_factory.mktemp("k3img")
    data = write_cells(root / "cells", per_class=8, size=40)
    path = root / "s3.h5"
    result = run("extract", data, "-o", path, "--backbones", ",".join(names), "--weights", "random",
                 "--input-size", "32", "--quiet", "--workers", "0")
    assert result.exit_code == 0, result.output
    return path, names


@pytest.mark.parametrize("head", ["concat", "attention-spatial", "attention-pooled", "svm", "xgboost", "logreg",
                                  "single"])
def test_predict_from_images_equals_store_probabilities_with_three_backbones(image_store3, tmp_path, head):
    path, names = image_store3
    head = names[2] if head == "single" else head
    bundle_dir = tmp_path / "bundle"
    result = run("train", path, "--head", head, "--backbones", ",".join(names), "-o", bundle_dir, "--quiet",
                 "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert load_bundle(bundle_dir).spec.backbones == ((head,) if head in names else tuple(names))
    assert_predict_matches_store(path, bundle_dir, tmp_path)


def test_fit_head_params_calibration_and_operating_point_from_the_cli(store, tmp_path):
    toml = tmp_path / "heads.toml"
    toml.write_text('[logreg]\nC = 0.5\n\n["*"]\nmax_epochs = 2\n')
    out = tmp_path / "r"
    result = run("fit", store, "--head", "logreg,concat", "--cv", "stratified", "--folds", "3", "-o", out, "--quiet",
                 "--device", "cpu", "--head-params", toml, "--head-param", "concat.lr=3e-4", "--head-param",
                 "logreg.C=0.25", "--calibrate", "sigmoid", "--operating-point", "spec=0.9")
    assert result.exit_code == 0, result.output
    data = json.loads((out / "metrics.json").read_text())
    assert data["heads"]["logreg"]["params"]["logisticregression__C"] == 0.25  # the option overrides the file
    assert data["heads"]["concat"]["params"]["max_epochs"] == 2 and data["heads"]["concat"]["params"]["lr"] == 3e-4
    assert data["options"]["calibrate"] == "sigmoid" and data["options"]["operating_point"] == "spec=0.9"
    assert all(f["threshold"] is not None for f in data["heads"]["logreg"]["folds"])
    report = (out / "report.md").read_text()
    assert "## Operating point" in report and "specificity ≥ 0.9" in report
    assert "calibrated post hoc (sigmoid)" in report
    assert "lr=0.0003" in report


@pytest.mark.parametrize("args, message", [
    (["--head-param", "logreg.gamma=1"], "valid: "),
    (["--head-param", "logreg"], "HEAD.NAME=VALUE"),
    (["--head-params", "missing.toml"], "no such file"),
    (["--operating-point", "sens"], "sens=TARGET"),
])
def test_fit_bad_head_options_are_one_line(store, tmp_path, args, message):
    result = run("fit", store, "--head", "logreg", "-o", tmp_path / "r", "--quiet", *args)
    assert result.exit_code == 2 and message in result.output, result.output
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


def test_fit_bad_toml_is_one_line(store, tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[logreg\nC = ")
    result = run("fit", store, "--head", "logreg", "-o", tmp_path / "r", "--quiet", "--head-params", bad)
    assert result.exit_code == 2 and "not valid TOML" in result.output and len(result.output.strip().splitlines()) == 1


def test_train_fits_with_image_groups_for_inner_splits(store, monkeypatch):
    """train hands the head the same groups as cross_validate (subject, else source image), so the SVM's
    sigmoid folds and the torch heads' early-stopping split never split an image from its copies."""
    from fusionfeat.heads.svm import WeightedPlattSVC
    from fusionfeat.train import train_head

    seen = {}
    original = WeightedPlattSVC.fit

    def spy(self, X, y, groups=None):
        seen["groups"] = groups
        return original(self, X, y, groups)

    monkeypatch.setattr(WeightedPlattSVC, "fit", spy)
    with FeatureStore.open(store) as fs:
        train_head(fs, "svm", progress=False, device="cpu")
        kept = np.flatnonzero(fs.ok)
    assert seen["groups"] is not None
    assert list(seen["groups"]) == [f"image-{s}" for s in kept]  # no subjects here: one group per source image
