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
from fusionfeat.evaluate import feature_matrix
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
    assert (outs[0] / "roc_all.png").stat().st_size > 1000


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


@pytest.mark.parametrize("head", ["logreg", "xgboost", "attention"])
def test_train_bundle_predict_round_trip(store, tmp_path, head):
    bundle_dir = tmp_path / "bundle"
    result = run("train", store, "--head", head, "-o", bundle_dir, "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    bundle = load_bundle(bundle_dir)
    with FeatureStore.open(store) as fs:
        X = feature_matrix(fs, bundle.spec, np.arange(fs.n_samples))
        expected = bundle.estimator.predict_proba(X)[:, 1]
        paths = [fs.path.parent / "cells" / p for p in fs.paths]
    out = tmp_path / "pred.csv"
    result = run("predict", bundle_dir, paths[0].parent.parent, "-o", out, "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    with open(out, newline="") as fh:
        rows = {r["path"]: r for r in csv.DictReader(fh)}
    got = np.array([float(rows[str(p)]["p_all"]) for p in paths])
    np.testing.assert_allclose(got, expected, atol=2e-3)  # features recomputed from the images
    assert {r["label"] for r in rows.values()} <= {"all", "hem"}


def test_predict_refuses_foreign_bundles_and_other_weights(store, tmp_path):
    assert run("predict", tmp_path, tmp_path, "-o", tmp_path / "p.csv").exit_code == 2
    bundle_dir = tmp_path / "bundle"
    assert run("train", store, "--head", "logreg", "-o", bundle_dir, "--quiet").exit_code == 0
    weights = tmp_path / "w.pth"
    from fusionfeat.backbones import load_backbone

    torch.save(load_backbone("resnet18", "random", seed=1).trunk.state_dict(), weights)
    images = store.parent / "cells"
    result = run("predict", bundle_dir, images, "-o", tmp_path / "p.csv", "--weights", f"resnet18={weights}")
    assert result.exit_code == 2 and "does not match" in result.output


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
