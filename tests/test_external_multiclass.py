"""`fusionfeat evaluate` for K-class bundles and bundles trained with `--classes`.

The external statistics are checked against scikit-learn recomputed from the run's own predictions.csv, and the
probabilities against `predict`'s on the same images; a class selection's mapping against the labels written.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sklearn import metrics as skm

from fusionfeat.bundle import load_bundle
from fusionfeat.cli import main
from fusionfeat.data.synthetic import generate_multiclass_folders
from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluate import map_labels

pytestmark = pytest.mark.usefixtures("single_torch_thread")

EXTRACT = ["--weights", "random", "--input-size", "32", "--device", "cpu", "--quiet", "--workers", "0"]
FOUR = ["class_a", "class_b", "class_c", "class_d"]
SUBSET = "class_a,class_b,class_c"
MERGE = "ab=class_a+class_b,class_c"


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, result.output
    return result


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Three and four synthetic classes: training stores, external folders from another seed, CV runs and
    bundles (K = 3 with its CV estimate; a subset and a merge of the four classes)."""
    root = tmp_path_factory.mktemp("external-k")
    train3 = generate_multiclass_folders(root / "train3", n_classes=3, n_per_class=10, size=48)
    ext3 = generate_multiclass_folders(root / "ext3", n_classes=3, n_per_class=6, size=48, seed=5)
    train4 = generate_multiclass_folders(root / "train4", n_classes=4, n_per_class=8, size=48)
    ext4 = generate_multiclass_folders(root / "ext4", n_classes=4, n_per_class=5, size=48, seed=5)
    ok("extract", train3, "-o", root / "k3.h5", *EXTRACT)
    ok("extract", train4, "-o", root / "k4.h5", *EXTRACT)
    ok("fit", root / "k3.h5", "--head", "logreg", "-o", root / "cv3", "--quiet")
    ok("train", root / "k3.h5", "--head", "logreg", "--cv-run", root / "cv3", "-o", root / "b3", "--quiet")
    ok("fit", root / "k4.h5", "--head", "logreg", "--classes", SUBSET, "-o", root / "cv-subset", "--quiet")
    ok("train", root / "k4.h5", "--head", "logreg", "--classes", SUBSET, "--cv-run", root / "cv-subset", "-o",
       root / "b-subset", "--quiet")
    ok("train", root / "k4.h5", "--head", "logreg", "--classes", MERGE, "-o", root / "b-merge", "--quiet")
    return {"root": root, "ext3": ext3, "ext4": ext4, "k4": root / "k4.h5"}


def _probabilities(rows: list[dict[str, str]], classes: list[str]) -> np.ndarray:
    return np.array([[float(r[f"p_{c}"]) for c in classes] for r in rows])


def test_k3_evaluate_gives_predicts_probabilities_and_sklearns_metrics(world, tmp_path):
    root = world["root"]
    out = tmp_path / "ev"
    result = ok("evaluate", root / "b3", world["ext3"], "-o", out, "--quiet", "--workers", "0")
    assert "macro OvR AUC" in result.output and "CV estimate macro OvR AUC" in result.output
    classes = ["class_a", "class_b", "class_c"]
    rows = _rows(out / "predictions.csv")
    assert list(rows[0]) == ["path", "group", "label", "p_class_a", "p_class_b", "p_class_c", "predicted",
                             "shift_score", "beyond_p99"]
    assert len(rows) == 18
    P = _probabilities(rows, classes)
    np.testing.assert_allclose(P.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    # the same images through `predict` (six decimals in its CSV)
    ok("predict", root / "b3", world["ext3"], "-o", tmp_path / "p.csv", "--quiet", "--workers", "0")
    predicted = {r["path"]: r for r in _rows(tmp_path / "p.csv")}
    mine = {str(world["ext3"] / r["path"]): r for r in rows}
    assert set(mine) == set(predicted)
    for path, row in mine.items():
        np.testing.assert_allclose([float(row[f"p_{c}"]) for c in classes],
                                   [float(predicted[path][f"p_{c}"]) for c in classes], rtol=0, atol=1e-6)
        assert row["predicted"] == predicted[path]["predicted"]
    # every figure recomputed from predictions.csv with scikit-learn
    y = np.array([classes.index(r["label"]) for r in rows])
    pred = np.array([classes.index(r["predicted"]) for r in rows])
    assert (pred == P.argmax(axis=1)).all()
    data = json.loads((out / "metrics.json").read_text())
    assert data["task"] == "multiclass" and data["classes"] == classes and data["positive"] is None
    u = data["heads"]["logreg"]["uncertainty"]
    assert u["roc_auc_macro"]["pooled"]["mean"] == pytest.approx(
        skm.roc_auc_score(y, P, multi_class="ovr", average="macro"), abs=1e-12)
    assert u["roc_auc_weighted"]["pooled"]["mean"] == pytest.approx(
        skm.roc_auc_score(y, P, multi_class="ovr", average="weighted"), abs=1e-12)
    assert u["balanced_accuracy"]["pooled"]["mean"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert u["kappa"]["pooled"]["mean"] == pytest.approx(skm.cohen_kappa_score(y, pred))
    assert u["log_loss"]["pooled"]["mean"] == pytest.approx(skm.log_loss(y, P, labels=[0, 1, 2]))
    onehot = np.eye(3)[y]
    assert u["brier"]["pooled"]["mean"] == pytest.approx(np.mean(np.sum((P - onehot) ** 2, axis=1)))
    pooled = data["heads"]["logreg"]["pooled"]
    assert pooled["confusion"] == skm.confusion_matrix(y, pred, labels=[0, 1, 2]).tolist()
    np.testing.assert_allclose(pooled["per_class"]["recall"], skm.recall_score(y, pred, average=None))
    boot = u["roc_auc_macro"]["pooled"]["bootstrap"]
    assert boot["resampled"] == "images" and boot["lo"] <= u["roc_auc_macro"]["pooled"]["mean"] <= boot["hi"]
    # the CV estimate beside it, with the difference
    ext = data["external"]
    cv = json.loads((root / "cv3" / "metrics.json").read_text())["heads"]["logreg"]["uncertainty"]
    assert ext["cv_estimate"]["metrics"]["roc_auc_macro"]["pooled"] == cv["roc_auc_macro"]["pooled"]["mean"]
    assert ext["versus_cv"]["balanced_accuracy"]["difference"] == pytest.approx(
        u["balanced_accuracy"]["pooled"]["mean"] - cv["balanced_accuracy"]["pooled"]["mean"])
    report = (out / "report.md").read_text()
    for text in ("external evaluation report (multi-class)", "3 classes", "Per class (external images)",
                 "Confusion matrix (3×3", "The bundle's cross-validated estimate", "top-label ECE",
                 "Distribution shift", "| class_c |"):
        assert text in report, text
    assert (out / "figures" / "confusion_logreg.png").is_file() and (out / "figures" / "roc_logreg.png").is_file()


def test_k3_subjects_from_a_manifest_are_resampled_and_scored(world, tmp_path):
    """A manifest CSV with subject ids: the bootstrap resamples subjects and subject-level results are written,
    each subject's class the argmax of its cells' mean probabilities (checked by hand from predictions.csv)."""
    manifest = tmp_path / "ext.csv"
    images = sorted(world["ext3"].rglob("*.png"))
    with open(manifest, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "group"])
        for i, image in enumerate(images):
            writer.writerow([str(image), image.parent.name, f"S{i // 2}"])  # two cells of one class per subject
    out = tmp_path / "ev"
    ok("evaluate", world["root"] / "b3", manifest, "-o", out, "--quiet", "--workers", "0")
    data = json.loads((out / "metrics.json").read_text())
    assert data["protocol"]["subjects_known"] and data["protocol"]["n_subjects"] == 9
    boot = data["heads"]["logreg"]["uncertainty"]["roc_auc_macro"]["pooled"]["bootstrap"]
    assert boot["resampled"] == "subjects" and boot["n_units"] == 9
    classes = data["classes"]
    rows = _rows(out / "predictions.csv")
    P = _probabilities(rows, classes)
    groups = [r["group"] for r in rows]
    subjects = list(dict.fromkeys(groups))
    mean = np.array([P[[g == s for g in groups]].mean(axis=0) for s in subjects])
    truth = [classes.index(next(r["label"] for r in rows if r["group"] == s)) for s in subjects]
    sub = data["subjects"]["heads"]["logreg"]
    assert sub["metrics"]["balanced_accuracy"]["mean"] == pytest.approx(
        skm.balanced_accuracy_score(truth, mean.argmax(axis=1)))
    assert (out / "subjects.csv").is_file() and "Subject-level results" in (out / "report.md").read_text()


def test_a_subset_bundle_leaves_the_dropped_class_out_and_counts_it(world, tmp_path):
    out = tmp_path / "ev"
    result = ok("evaluate", world["root"] / "b-subset", world["ext4"], "-o", out, "--quiet", "--workers", "0")
    assert "(5 of classes the bundle's --classes leaves out left out)" in result.output
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 15 and {r["label"] for r in rows} == {"class_a", "class_b", "class_c"}
    assert not any("class_d" in r["path"] for r in rows)
    data = json.loads((out / "metrics.json").read_text())
    assert data["external"]["left_out"] == {"class_d": 5}
    assert data["external"]["class_selection"]["spec"] == SUBSET
    assert data["external"]["cv_estimate"]["metrics"]["roc_auc_macro"]  # fit and train used the same --classes
    report = (out / "report.md").read_text()
    assert "5 external images of classes it leaves out were left out (class_d 5)" in report
    # the training store itself (no embedding): its class_d rows are left out the same way
    again = tmp_path / "own"
    ok("evaluate", world["root"] / "b-subset", world["k4"], "-o", again, "--quiet")
    own = json.loads((again / "metrics.json").read_text())
    assert own["external"]["left_out"] == {"class_d": 8} and own["protocol"]["n_samples"] == 24


def test_a_merge_to_two_reads_the_labels_through_the_mapping(world, tmp_path):
    out = tmp_path / "ev"
    ok("evaluate", world["root"] / "b-merge", world["ext4"], "-o", out, "--quiet", "--workers", "0")
    rows = _rows(out / "predictions.csv")
    assert list(rows[0])[:5] == ["path", "group", "label", "p_class_c", "predicted"]  # the binary layout
    assert len(rows) == 15
    for r in rows:
        folder = r["path"].split("/")[0]
        assert r["label"] == {"class_a": "ab", "class_b": "ab", "class_c": "class_c"}[folder]
    y = np.array([r["label"] == "class_c" for r in rows], dtype=int)
    p = np.array([float(r["p_class_c"]) for r in rows])
    data = json.loads((out / "metrics.json").read_text())
    assert data["classes"] == ["ab", "class_c"] and data["external"]["left_out"] == {"class_d": 5}
    assert data["heads"]["logreg"]["uncertainty"]["roc_auc"]["pooled"]["mean"] == pytest.approx(
        skm.roc_auc_score(y, p), abs=1e-12)
    report = (out / "report.md").read_text()
    assert "ab = class_a + class_b" in report
    assert f'--head logreg --classes "{MERGE}" --cv-run RUN' in report  # how to get the CV estimate of this task


def test_labels_the_mapping_does_not_know_are_refused_in_one_line(world, tmp_path):
    bundle = load_bundle(world["root"] / "b-merge")
    assert map_labels(bundle, ["CLASS_A", "Class_C", "class_d"], "x") == ["ab", "class_c", None]
    with pytest.raises(FusionfeatError, match=r"class_e .*bundle's classes \(ab, class_c\).*maps class_a, class_b"):
        map_labels(bundle, ["class_a", "class_e"], "x")
    other = generate_multiclass_folders(tmp_path / "other", n_classes=3, n_per_class=2, size=32,
                                        names=["class_a", "class_c", "class_e"])
    result = run("evaluate", world["root"] / "b-merge", other, "-o", tmp_path / "ev", "--quiet", "--workers", "0")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "class_e" in result.output and "(ab, class_c)" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "ev").exists()
    only_dropped = generate_multiclass_folders(tmp_path / "dropped", n_classes=2, n_per_class=2, size=32,
                                               names=["class_d", "all"])
    result = run("evaluate", world["root"] / "b-subset", only_dropped, "-o", tmp_path / "ev2", "--quiet")
    assert result.exit_code == 2 and "all" in result.output and result.output.count("\n") == 1, result.output


def test_train_refuses_a_cv_run_of_other_classes(world, tmp_path):
    root, store = world["root"], world["k4"]
    # the run used --classes SUBSET: a training without it (or with another selection) is another task
    result = run("train", store, "--head", "logreg", "--cv-run", root / "cv-subset", "-o", tmp_path / "a")
    assert result.exit_code == 2 and result.output.count("\n") == 1, result.output
    assert "used --classes 'class_a,class_b,class_c', this training the store's own classes" in result.output
    result = run("train", store, "--head", "logreg", "--classes", MERGE, "--cv-run", root / "cv-subset", "-o",
                 tmp_path / "b")
    assert result.exit_code == 2 and "fit the head with the same --classes" in result.output
    # the same selection spelled in another case and order is the same task
    ok("train", store, "--head", "logreg", "--classes", "CLASS_C,class_b,Class_A", "--cv-run", root / "cv-subset",
       "-o", tmp_path / "c", "--quiet")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_perfect_external_score_shows_exact_intervals_and_the_ceiling(world, tmp_path):
    """The merged two-class bundle scored on its own training store (resubstitution): where every image is right,
    the report shows the Clopper–Pearson interval of k/n (scipy's) and the ceiling flag, not [1.0000, 1.0000]."""
    from scipy.stats import binomtest

    out = tmp_path / "own"
    result = ok("evaluate", world["root"] / "b-merge", world["k4"], "-o", out, "--quiet")
    data = json.loads((out / "metrics.json").read_text())
    accuracy = data["heads"]["logreg"]["uncertainty"]["accuracy"]["pooled"]
    assert accuracy["mean"] == 1.0, "the fixture's resubstitution is expected to be perfect"
    n = data["protocol"]["n_samples"]
    lo = binomtest(n, n).proportion_ci(method="exact").low
    assert accuracy["exact"]["lo"] == pytest.approx(lo, abs=1e-12)
    report = (out / "report.md").read_text()
    assert f"| accuracy | 1.0000 (at the ceiling) | [{lo:.4f}, 1.0000]‡ {n}/{n} |" in report
    assert "[1.0000, 1.0000]" not in report.split("## The bundle's")[0]
    assert " exact" in result.output


def test_a_perfect_k_class_external_score_shows_exact_intervals_and_external_titles(world, tmp_path, monkeypatch):
    """The K = 3 bundle scored on its own training store (resubstitution, perfect here): accuracy shows scipy's
    Clopper–Pearson interval of k/n and the ceiling flag, the per-class table its recall intervals, and the
    figures are titled for the external set, not "out-of-fold"."""
    from scipy.stats import binomtest

    import fusionfeat.evaluate as evaluate_module

    seen = {}
    draw = evaluate_module.write_multiclass_plots

    def spy(data, out, rows="out-of-fold"):
        seen["rows"] = rows
        return draw(data, out, rows=rows)

    monkeypatch.setattr(evaluate_module, "write_multiclass_plots", spy)
    out = tmp_path / "own3"
    ok("evaluate", world["root"] / "b3", world["root"] / "k3.h5", "-o", out, "--quiet")
    assert seen["rows"] == "external set"
    data = json.loads((out / "metrics.json").read_text())
    accuracy = data["heads"]["logreg"]["uncertainty"]["accuracy"]["pooled"]
    assert accuracy["mean"] == 1.0, "the fixture's resubstitution is expected to be perfect"
    n = data["protocol"]["n_samples"]
    lo = binomtest(n, n).proportion_ci(method="exact").low
    assert (accuracy["exact"]["k"], accuracy["exact"]["n"]) == (n, n)
    assert accuracy["exact"]["lo"] == pytest.approx(lo, abs=1e-12)
    report = (out / "report.md").read_text()
    assert f"| accuracy | 1.0000 (at the ceiling) | [{lo:.4f}, 1.0000]‡ {n}/{n} |" in report
    assert "‡ marks an exact interval" in report
    recall = data["heads"]["logreg"]["pooled"]["per_class_exact"]["recall"][0]
    low = binomtest(recall["n"], recall["n"]).proportion_ci(method="exact").low
    assert f"| class_a | 1.0000 [{low:.4f}, 1.0000]‡ {recall['n']}/{recall['n']} (at the ceiling) |" in report
