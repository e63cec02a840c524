"""``fusionfeat study`` on a 3-class store: every number recomputed with scikit-learn from the arms' own
out-of-fold predictions (per-fold means, their differences, pooled figures on the original images and their
paired differences), the ceiling wording, and the files.

Tiny inputs: 20 synthetic cells of 3 imbalanced classes (10/6/4), 8 dihedral views, 32 px, random weights, CPU.
"""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, balanced_accuracy_score, roc_auc_score

from fusionfeat.data.images import Preprocess
from fusionfeat.data.manifest import build_manifest
from fusionfeat.data.synthetic import generate_multiclass_folders
from fusionfeat.engines.extract import ExtractConfig, extract
from fusionfeat.stats import EDGE_TEXT
from fusionfeat.study import run_study, write_study
from fusionfeat.study_multiclass import SHOWN_K, compare_multiclass, render_multiclass_study

pytestmark = pytest.mark.usefixtures("single_torch_thread")
HEAD = "resnet18"


@pytest.fixture(scope="module")
def studied(tmp_path_factory):
    folder = tmp_path_factory.mktemp("kstudy")
    data = generate_multiclass_folders(folder / "data", n_classes=3, n_per_class=[10, 6, 4], size=40)
    store = folder / "s.h5"
    extract(build_manifest(data), store, ExtractConfig(
        backbones=[HEAD], weights={HEAD: "random"}, preprocess=Preprocess(input_size=32, views="dihedral8"),
        device="cpu", workers=0, progress=False))
    results = run_study(store, [HEAD], repeats=2, folds=3, seed=0, device="cpu", progress=False)
    out = write_study(results, folder / "study", n_boot=200)
    return results, out


def _sk(metric: str, y: np.ndarray, P: np.ndarray, pred: np.ndarray) -> float:
    if metric == "roc_auc_macro":
        return float(roc_auc_score(y, P, multi_class="ovr", average="macro", labels=[0, 1, 2]))
    if metric == "balanced_accuracy":
        return float(balanced_accuracy_score(y, pred))
    return float(accuracy_score(y, pred))


def _fold_means(res, metric: str) -> float:
    """Mean over (repeat, fold) of the metric on each test fold's scored rows, by scikit-learn."""
    y = np.asarray(res.rows["label"])
    values = []
    for r in range(res.test_fold.shape[0]):
        for f in np.unique(res.test_fold[r][res.test_fold[r] >= 0]):
            rows = res.test_fold[r] == f
            values.append(_sk(metric, y[rows], res.oof_proba[HEAD][r, rows], res.oof_pred[HEAD][r, rows]))
    return float(np.mean(values))


def _originals(res, metric: str) -> tuple[float, np.ndarray]:
    """Metric of the pooled original images (view 0), averaged over repeats, by scikit-learn; and their samples."""
    view0 = np.flatnonzero(res.rows["view"] == 0)
    order = view0[np.argsort(res.rows["sample"][view0])]
    y = np.asarray(res.rows["label"])[order]
    value = np.mean([_sk(metric, y, res.oof_proba[HEAD][r, order], res.oof_pred[HEAD][r, order])
                     for r in range(res.oof_proba[HEAD].shape[0])])
    return float(value), res.rows["sample"][order]


def test_three_class_study_matches_scikit_learn_on_the_arms_predictions(studied):
    results, out = studied
    data = json.loads((out / "study.json").read_text())
    assert data["classes"] == ["class_a", "class_b", "class_c"] and data["paper_copies"] == 10
    h = data["heads_results"][HEAD]
    for arm, res in results.items():
        for m in SHOWN_K:
            assert h["arms"][arm]["metrics"][m]["mean"] == pytest.approx(_fold_means(res, m), abs=1e-12)
        for m in ("roc_auc_macro", "balanced_accuracy"):
            pooled = h["arms"][arm]["pooled_originals"][m]
            assert pooled["estimate"] == pytest.approx(_originals(res, m)[0], abs=1e-12)
            assert pooled["lo"] <= pooled["estimate"] <= pooled["hi"] and pooled["n_images"] == 20
    for cname, a, b in (("inflation", "paper", "weight"), ("leak", "paper", "augment"),
                        ("augmentation", "augment", "weight")):
        c = h["contrasts"][cname]
        for m in SHOWN_K:
            d = c["metrics"][m]
            assert d["diff"] == pytest.approx(_fold_means(results[a], m) - _fold_means(results[b], m), abs=1e-12)
            assert d["lo"] <= d["diff"] <= d["hi"]
            assert ("paired" in d["method"]) == (cname == "augmentation")  # only augment/weight share splits
        for m in ("roc_auc_macro", "balanced_accuracy"):
            (va, sa), (vb, sb) = _originals(results[a], m), _originals(results[b], m)
            assert np.array_equal(sa, sb)
            d = c["pooled_originals"][m]
            assert d["estimate"] == pytest.approx(va - vb, abs=1e-12) and 0 < d["p"] <= 1
            assert d["method"] == "paired percentile" and d["unit"] == "image"


def test_three_class_study_files_say_what_they_measure(studied):
    _, out = studied
    md = (out / "study.md").read_text()
    for needle in ("3 classes (class_a, class_b, class_c)", "macro OvR AUC", "balanced acc.",
                   "accuracy (prevalence-dependent)", "corrected Welch t", "paired bootstrap", "DeLong",
                   "WARNING: LEAKY PROTOCOL", "RANDOM-WEIGHT"):
        assert needle in md, needle
    csv = (out / "study.csv").read_text().splitlines()
    assert csv[0].startswith("head,metric,quantity,estimate") and any("pooled_roc_auc_macro_originals" in r
                                                                       for r in csv)
    assert "tab:study" in (out / "study.tex").read_text()
    assert all((out / arm / "report.md").is_file() for arm in ("paper", "augment", "weight"))


def test_both_arms_at_the_ceiling_read_as_unmeasurable_not_as_zero(studied):
    results, _ = studied
    perfect = {name: copy.copy(res) for name, res in results.items()}
    for name in ("paper", "weight"):
        res = perfect[name]
        onehot = np.eye(3)[np.asarray(res.rows["label"])]
        res.oof_proba = {HEAD: np.broadcast_to(onehot, res.oof_proba[HEAD].shape).copy()}
        res.oof_pred = {HEAD: np.broadcast_to(np.asarray(res.rows["label"]), res.oof_pred[HEAD].shape).copy()}
    numbers = compare_multiclass(perfect, n_boot=50)
    pooled = numbers[HEAD]["contrasts"]["inflation"]["pooled_originals"]
    assert pooled["roc_auc_macro"]["edge"] == pooled["balanced_accuracy"]["edge"] == "ceiling"
    assert numbers[HEAD]["contrasts"]["leak"]["pooled_originals"]["roc_auc_macro"]["edge"] is None
    data = {"store": "s.h5", "weights_kind": {HEAD: "random"}, "classes": ["a", "b", "c"], "n_folds": 3,
            "repeats": 2, "seed": 0, "honest_protocol": "stratified", "paper_copies": 10,
            "arms": {a: {"what": a, "n_eval_rows": 20} for a in ("paper", "augment", "weight")},
            "head_weights": {HEAD: {HEAD: "RANDOM"}}, "heads": [HEAD], "heads_results": json.loads(
                json.dumps(numbers, default=float))}
    md = render_multiclass_study(data)
    assert EDGE_TEXT["ceiling"] in md and "**At the ceiling (or floor)**" in md


def test_cli_studies_a_k_class_store_and_a_two_class_merge_of_it(studied, tmp_path):
    from click.testing import CliRunner

    from fusionfeat.cli import main

    results, _ = studied
    store = results["paper"].provenance["store"]
    runner = CliRunner()
    run = runner.invoke(main, ["study", store, "--head", HEAD, "--repeats", "1", "--folds", "3", "--quiet",
                               "--classes", "ab=class_a+class_b,class_c", "-o", str(tmp_path / "merged")])
    assert run.exit_code == 0, run.output
    merged = json.loads((tmp_path / "merged" / "study.json").read_text())
    assert "classes" not in merged and "roc_auc" in merged["heads_results"][HEAD]["arms"]["paper"]["metrics"]
    run = runner.invoke(main, ["study", store, "--head", HEAD, "--repeats", "1", "--folds", "3", "--quiet",
                               "--classes", "class_a,class_b,class_c", "-o", str(tmp_path / "k")])
    assert run.exit_code == 0, run.output
    assert "macro OvR AUC" in (tmp_path / "k" / "study.md").read_text()
