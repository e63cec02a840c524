"""``fusionfeat study``: three sub-runs, and an inflation that is exactly paper − honest, split into leak and
augmentation, checked against the sub-runs' own metrics.json and predictions.csv."""

from __future__ import annotations

import csv
import json
import math
from functools import partial

import numpy as np
import pytest
from click.testing import CliRunner
from scipy import stats as st
from sklearn.metrics import roc_auc_score

from fusionfeat.cli import main
from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluation.metrics import METRICS
from fusionfeat.heads.torch_head import TorchHeadClassifier
from fusionfeat.heads.zoo import HeadSpec
from fusionfeat.store import FeatureStore
from fusionfeat.study import check_dihedral, run_study, write_study
from tests.conftest import write_cells

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def extract(root, name, views):
    data = write_cells(root / f"cells_{name}", per_class=8, size=40)
    for i in range(3):  # imbalanced: 8 ALL, 5 HEM, so the paper protocol adds HEM copies
        (data / "hem" / f"cell_{i:03d}.png").unlink()
    path = root / f"{name}.h5"
    result = run("extract", data, "-o", path, "--weights", "random", "--input-size", "32", "--quiet",
                 "--workers", "0", "--backbones", "resnet18,vgg16", "--views", views)
    assert result.exit_code == 0, result.output
    return path


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("study")
    path = extract(root, "d8", "dihedral8")
    mlp = HeadSpec("resnet18", ("resnet18",), "pooled", True,
                   partial(TorchHeadClassifier, architecture="mlp", max_epochs=3, hidden=16))
    with FeatureStore.open(path) as fs:
        results = run_study(fs, ["logreg", mlp], repeats=2, folds=2, progress=False, device="cpu")
    return write_study(results, root / "out", n_boot=200), path


def metrics_json(folder):
    return json.loads((folder / "metrics.json").read_text())


def test_inflation_is_paper_minus_honest(study_dir):
    out, _ = study_dir
    study = json.loads((out / "study.json").read_text())
    subs = {arm: metrics_json(out / arm) for arm in ("paper", "augment", "weight")}
    assert subs["paper"]["protocol"]["name"] == "paper"
    assert subs["augment"]["protocol"]["balance"] == "augment" and subs["weight"]["protocol"]["balance"] == "weight"
    assert subs["augment"]["protocol"]["name"] == subs["weight"]["protocol"]["name"] == study["honest_protocol"]
    for head in ("logreg", "resnet18"):
        for m in METRICS:
            mean = {arm: np.nanmean([f["metrics"][m] for f in subs[arm]["heads"][head]["folds"]]) for arm in subs}
            c = study["heads_results"][head]["contrasts"]
            assert c["inflation"]["metrics"][m]["diff"] == pytest.approx(mean["paper"] - mean["weight"], abs=1e-12)
            assert c["leak"]["metrics"][m]["diff"] == pytest.approx(mean["paper"] - mean["augment"], abs=1e-12)
            assert c["augmentation"]["metrics"][m]["diff"] == pytest.approx(mean["augment"] - mean["weight"],
                                                                            abs=1e-12)
            lo, hi = c["inflation"]["metrics"][m]["lo"], c["inflation"]["metrics"][m]["hi"]
            if lo is not None:
                assert lo <= c["inflation"]["metrics"][m]["diff"] <= hi


def fold_table(out, study, arm, head="resnet18", metric="roc_auc"):
    """Per-fit values, training and test row counts of one arm, read from its metrics.json."""
    folds = metrics_json(out / arm)["heads"][head]["folds"]
    n_eval = study["arms"][arm]["n_eval_rows"]
    keys = [(f["repeat"], f["fold"]) for f in folds]
    values = np.array([f["metrics"][metric] for f in folds], dtype=float)
    n_test = np.array([f["n_test"] for f in folds], dtype=float)
    return keys, values, n_eval - n_test, n_test


def test_contrast_tests_by_hand(study_dir):
    """augmentation (augment − weight, same splits) is the corrected paired t: checked with scipy's t
    distribution; inflation (paper − weight, different splits) is the corrected Welch t, computed by hand."""
    out, _ = study_dir
    study = json.loads((out / "study.json").read_text())
    c = study["heads_results"]["resnet18"]["contrasts"]
    keys_a, va, n_train, n_test = fold_table(out, study, "augment")
    keys_w, vw, n_train_w, n_test_w = fold_table(out, study, "weight")
    assert keys_a == keys_w and np.array_equal(n_test, n_test_w)  # the two honest arms share their folds
    d = va - vw
    j = len(d)
    se = math.sqrt((1 / j + np.mean(n_test / n_train)) * d.var(ddof=1))
    half = st.t.ppf(0.975, j - 1) * se
    aug = c["augmentation"]["metrics"]["roc_auc"]
    assert aug["method"] == "corrected paired t"
    assert aug["diff"] == pytest.approx(d.mean(), abs=1e-12)
    assert aug["lo"] == pytest.approx(d.mean() - half, abs=1e-9) and aug["hi"] == pytest.approx(d.mean() + half,
                                                                                              abs=1e-9)
    assert aug["p"] == pytest.approx(2 * st.t.sf(abs(d.mean() / se), j - 1), abs=1e-9)

    _, vp, n_train_p, n_test_p = fold_table(out, study, "paper")
    var_p = (1 / len(vp) + np.mean(n_test_p / n_train_p)) * vp.var(ddof=1)
    var_w = (1 / len(vw) + np.mean(n_test_w / n_train_w)) * vw.var(ddof=1)
    se = math.sqrt(var_p + var_w)
    df = (var_p + var_w) ** 2 / (var_p**2 / (len(vp) - 1) + var_w**2 / (len(vw) - 1))
    diff = vp.mean() - vw.mean()
    inflation = c["inflation"]["metrics"]["roc_auc"]
    assert inflation["method"] == "corrected Welch t"
    assert inflation["lo"] == pytest.approx(diff - st.t.ppf(0.975, df) * se, abs=1e-9)
    assert inflation["p"] == pytest.approx(2 * st.t.sf(abs(diff / se), df), abs=1e-9)


def oof_auc_on_originals(folder, head):
    """Mean over repeats of the AUC of view-0 rows, from predictions.csv (independent of the study code)."""
    with open(folder / "predictions.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["view"] == "0"]
    aucs = []
    for r in sorted({row["repeat"] for row in rows}):
        part = [row for row in rows if row["repeat"] == r]
        y = [row["label"] == "all" for row in part]
        aucs.append(roc_auc_score(y, [float(row[f"p_all_{head}"]) for row in part]))
    return float(np.mean(aucs)), len(part)


def test_pooled_auc_on_originals(study_dir):
    out, _ = study_dir
    study = json.loads((out / "study.json").read_text())
    auc = {arm: oof_auc_on_originals(out / arm, "logreg") for arm in ("paper", "augment", "weight")}
    assert {n for _, n in auc.values()} == {13}  # every original image, once per repeat, in every arm
    h = study["heads_results"]["logreg"]
    for arm, (value, _) in auc.items():
        assert h["arms"][arm]["pooled_auc_originals"]["estimate"] == pytest.approx(value, abs=2e-3)
    inflation = h["contrasts"]["inflation"]["pooled_auc_originals"]
    assert inflation["estimate"] == pytest.approx(auc["paper"][0] - auc["weight"][0], abs=2e-3)
    assert inflation["unit"] == "image" and inflation["n_images"] == 13


def test_report_files(study_dir):
    out, _ = study_dir
    md = (out / "study.md").read_text()
    assert "inflation" in md and "leak" in md and "augmentation" in md and "RANDOM" in md
    for arm in ("paper", "augment", "weight"):
        assert (out / arm / "report.md").is_file() and (out / arm / "report.tex").is_file()
    with open(out / "study.csv") as fh:
        rows = list(csv.DictReader(fh))
    quantities = {r["quantity"] for r in rows}
    assert quantities == {"paper", "augment", "weight", "inflation", "leak", "augmentation"}
    dependent = {r["metric"] for r in rows if r["prevalence_dependent"] == "True"}
    assert dependent == {"accuracy", "precision", "f1", "mcc"}
    assert "prevalence-dependent" in md and "clean only for sensitivity, specificity" in md
    tex = (out / "study.tex").read_text()
    assert r"\toprule" in tex and "roc_auc" not in tex  # labels, escaped
    # per-head weights flags in every table, the warnings in the banner and the LaTeX caption
    assert "`resnet18` [RANDOM]" in md and "WARNING: RANDOM-WEIGHT FEATURES" in md and "LEAKY PROTOCOL" in md
    assert all("[RANDOM]" in line for line in md.splitlines() if line.startswith(("| `logreg`", "| `resnet18`")))
    assert "resnet18 [RANDOM]" in tex and "LEAKY" in tex and "RANDOM weights in" in tex


def test_study_cli_and_single_view_refusal(study_dir, tmp_path):
    _, path = study_dir
    result = run("study", path, "-o", tmp_path / "cli", "--head", "logreg", "--repeats", "1", "--folds", "2",
                 "--quiet")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cli" / "study.md").is_file() and (tmp_path / "cli" / "paper" / "metrics.json").is_file()
    single = extract(tmp_path, "v1", "1")
    result = run("study", single, "-o", tmp_path / "no", "--head", "logreg")
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and "dihedral views" in result.output
    assert not (tmp_path / "no").exists()
    with FeatureStore.open(single) as fs, pytest.raises(FusionfeatError, match="--views dihedral8"):
        check_dihedral(fs)


def test_study_md_says_when_the_honest_split_is_image_level(study_dir):
    from fusionfeat.study import render_study

    out, _ = study_dir
    data = json.loads((out / "study.json").read_text())
    assert data["honest_protocol"] == "stratified"  # write_cells names no subjects
    note = "**Subjects unknown**"
    assert note in (out / "study.md").read_text() and "new patients" in render_study(data)
    assert note not in render_study({**data, "honest_protocol": "grouped"})
