"""`fusionfeat evaluate` on external sets, and the shift scores of predict and evaluate.

The statistics are checked against independent computations: Mahalanobis distances against
``scipy.spatial.distance.mahalanobis`` with the same inverse covariance, the out-of-sample 99th percentile
against the chi distribution of Gaussian data, and the external metrics against scikit-learn on predictions.csv.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import stats as sps
from scipy.spatial.distance import mahalanobis as scipy_mahalanobis
from sklearn import metrics as skm
from sklearn.covariance import LedoitWolf

from fusionfeat.cli import main
from fusionfeat.data.geometry import geometry_differences, geometry_summary
from fusionfeat.data.synthetic import generate_cnmc_like
from fusionfeat.stats.shift import ShiftReference, fit_reference, mahalanobis, shift_share
from tests.conftest import SHARED_DATA, need

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ------------------------------------------------------------------------------------------- statistics


def test_mahalanobis_equals_scipy_with_the_same_inverse_covariance():
    rng = np.random.default_rng(0)
    A = rng.normal(size=(4, 4))
    precision = A @ A.T + 0.5 * np.eye(4)
    mean, X = rng.normal(size=4), rng.normal(size=(7, 4))
    expected = [scipy_mahalanobis(x, mean, precision) for x in X]
    np.testing.assert_allclose(mahalanobis(X, mean, precision), expected, rtol=1e-12)


def test_reference_scores_are_mahalanobis_under_ledoit_wolf_in_all_or_principal_coordinates():
    rng = np.random.default_rng(1)
    X, new = rng.normal(size=(80, 5)) * [1, 2, 3, 4, 5], rng.normal(size=(6, 5)) * 3
    ref = fit_reference(X)
    assert ref.basis is None  # 5 coordinates: all used
    VI = LedoitWolf().fit(X).precision_  # sklearn centres on the mean itself
    np.testing.assert_allclose(ref.score(new), [scipy_mahalanobis(x, X.mean(0), VI) for x in new], rtol=1e-9)
    wide = rng.normal(size=(40, 30))
    ref = fit_reference(wide, max_components=6)
    assert ref.basis.shape == (30, 6)
    centred = wide - wide.mean(0)
    basis = np.linalg.svd(centred, full_matrices=False)[2][:6].T  # the top 6 principal directions
    VI = basis @ LedoitWolf(assume_centered=True).fit(centred @ basis).precision_ @ basis.T
    x = rng.normal(size=(3, 30))
    np.testing.assert_allclose(ref.score(x), [scipy_mahalanobis(v, wide.mean(0), VI) for v in x], rtol=1e-8)


def test_training_percentile_is_out_of_sample_and_flags_shifted_sets_only():
    rng = np.random.default_rng(2)
    d = 6
    X = rng.normal(size=(600, d))
    ref = fit_reference(X)
    chi99 = np.sqrt(sps.chi2.ppf(0.99, d))  # the 99th percentile of the distance of new Gaussian points
    assert abs(ref.threshold - chi99) / chi99 < 0.12
    # few images for their width: in-sample distances understate a new image's, the out-of-fold ones do not
    wide = rng.normal(size=(120, 30))
    wide_ref = fit_reference(wide)
    fresh = wide_ref.score(rng.normal(size=(5000, 30)))
    in_sample_p99 = np.percentile(wide_ref.score(wide), 99)
    assert in_sample_p99 < wide_ref.threshold
    assert np.mean(fresh > wide_ref.threshold) < min(0.025, np.mean(fresh > in_sample_p99))
    same = shift_share(ref.score(rng.normal(size=(300, d))), ref.threshold)
    assert same["share"] < 0.05 and not same["warn"]
    shifted = shift_share(ref.score(rng.normal(size=(300, d)) + 1.5), ref.threshold)
    assert shifted["share"] >= 0.2 and shifted["warn"]
    arrays = ref.arrays()
    again = ShiftReference.from_arrays(arrays)
    np.testing.assert_array_equal(again.score(X[:5]), ref.score(X[:5]))


def test_geometry_summary_tells_size_and_padding(tmp_path):
    for i in range(3):
        small = np.full((60, 60, 3), 180, np.uint8)
        Image.fromarray(small).save(tmp_path / f"small_{i}.png")
        padded = np.zeros((200, 200, 3), np.uint8)
        padded[80:120, 80:120] = 150
        Image.fromarray(padded).save(tmp_path / f"padded_{i}.png")
    a = geometry_summary(sorted(tmp_path.glob("small_*.png")))
    b = geometry_summary(sorted(tmp_path.glob("padded_*.png")))
    assert (a["width"], a["padded_share"], b["width"], b["padded_share"]) == (60, 0, 200, 1)
    diffs = geometry_differences(a, b)
    assert len(diffs) == 2 and "200×200" in diffs[0] and "black-padded" in diffs[1]
    assert geometry_differences(a, a) == []


# ------------------------------------------------------------------------------------------- the command


def _recolour(src: Path, dst: Path) -> Path:
    """The same cells with a shifted appearance: colours inverted and channels reversed."""
    for image in src.rglob("*.bmp"):
        out = dst / image.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(255 - np.asarray(Image.open(image).convert("RGB"))[..., ::-1]).save(out)
    return dst


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("external")
    train = generate_cnmc_like(root / "train", n_subjects_all=5, n_subjects_hem=5, cells_per_subject=6, size=48)
    same = generate_cnmc_like(root / "same", n_subjects_all=3, n_subjects_hem=3, cells_per_subject=6, size=48,
                              seed=7)
    shifted = _recolour(same, root / "shifted")
    store = root / "train.h5"
    common = ["--weights", "random", "--backbones", "resnet18,vgg16", "--input-size", "32", "--quiet", "--workers",
              "0"]
    assert run("extract", train, "-o", store, *common).exit_code == 0
    assert run("extract", same, "-o", root / "same.h5", *common).exit_code == 0
    result = run("fit", store, "--head", "logreg", "-o", root / "cv", "--quiet")
    assert result.exit_code == 0, result.output
    result = run("train", store, "--head", "logreg", "--cv-run", root / "cv", "-o", root / "bundle", "--quiet")
    assert result.exit_code == 0, result.output
    assert run("train", store, "--head", "logreg", "-o", root / "bare", "--quiet").exit_code == 0
    return {"root": root, "train": train, "same": same, "shifted": shifted, "store": store,
            "bundle": root / "bundle", "bare": root / "bare"}


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def test_evaluate_on_a_set_from_the_same_generator_reports_fit_statistics_and_no_shift(world, tmp_path):
    out = tmp_path / "ev"
    result = run("evaluate", world["bundle"], world["same"], "-o", out, "--quiet", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "lie beyond" not in result.output and "CV estimate ROC AUC" in result.output
    data = json.loads((out / "metrics.json").read_text())
    rows = _rows(out / "predictions.csv")
    assert len(rows) == 36 and {r["group"] for r in rows} >= {"1", "H1"}
    y = np.array([r["label"] == "all" for r in rows], dtype=int)
    p = np.array([float(r["p_all"]) for r in rows])
    pred = np.array([r["predicted"] == "all" for r in rows], dtype=int)
    u = data["heads"]["logreg"]["uncertainty"]
    assert u["roc_auc"]["pooled"]["mean"] == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert u["balanced_accuracy"]["pooled"]["mean"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert u["mcc"]["pooled"]["mean"] == pytest.approx(skm.matthews_corrcoef(y, pred))
    assert u["roc_auc"]["pooled"]["bootstrap"]["resampled"] == "subjects"
    assert data["heads"]["logreg"]["calibration"]["brier"] == pytest.approx(skm.brier_score_loss(y, p))
    ext = data["external"]
    cv = json.loads((world["root"] / "cv" / "metrics.json").read_text())["heads"]["logreg"]["uncertainty"]
    assert ext["cv_estimate"]["metrics"]["roc_auc"]["pooled"] == cv["roc_auc"]["pooled"]["mean"]
    assert ext["versus_cv"]["roc_auc"]["difference"] == pytest.approx(
        u["roc_auc"]["pooled"]["mean"] - cv["roc_auc"]["pooled"]["mean"])
    assert not ext["shift"]["warn"] and ext["shift"]["share"] < 0.2
    assert data["subjects"]["heads"]["logreg"] and (out / "subjects.csv").is_file()
    report = (out / "report.md").read_text()
    for text in ("external evaluation report", "CV estimate", "bootstrap over the 6 subjects", "Distribution shift",
                 "Subject-level results"):
        assert text in report
    assert (out / "summary.png").is_file() and (out / "figures" / "roc_logreg.png").is_file()
    # extract recorded the images' geometry and train kept it in the bundle
    from fusionfeat.store import FeatureStore

    with FeatureStore.open(world["store"]) as fs:
        recorded = fs.root_attrs()["input_geometry"]
    assert recorded["width"] == 48 and recorded["n_sampled"] == 60
    assert json.loads((world["bundle"] / "bundle.json").read_text())["input_geometry"] == recorded
    # scoring the store of the same images extracted with the bundle's settings gives the same numbers
    again = tmp_path / "ev-store"
    assert run("evaluate", world["bundle"], world["root"] / "same.h5", "-o", again, "--quiet").exit_code == 0
    from_store = {r["path"]: float(r["p_all"]) for r in _rows(again / "predictions.csv")}
    assert np.allclose([from_store[r["path"]] for r in rows], p, atol=2e-3)
    # the run folder follows the output rule: refused without --overwrite, replaced with it
    assert run("evaluate", world["bundle"], world["same"], "-o", out, "--quiet").exit_code == 2
    assert run("evaluate", world["bundle"], world["same"], "-o", out, "--quiet", "--overwrite",
               "--workers", "0").exit_code == 0


def test_evaluate_on_a_shifted_set_warns_and_predict_marks_the_images(world, tmp_path):
    result = run("evaluate", world["bundle"], world["shifted"], "-o", tmp_path / "ev", "--quiet", "--workers", "0")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.output.splitlines() if "lie beyond" in line]
    assert len(warning) == 1 and warning[0].startswith("warning: ")
    data = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert data["external"]["shift"]["warn"] and "DISTRIBUTION SHIFT" in (tmp_path / "ev" / "report.md").read_text()
    result = run("predict", world["bundle"], world["shifted"], "-o", tmp_path / "p.csv", "--quiet", "--workers", "0")
    assert result.exit_code == 0 and "lie beyond" in result.output
    rows = _rows(tmp_path / "p.csv")
    threshold = data["external"]["shift"]["threshold"]
    assert all((float(r["shift_score"]) > threshold) == (r["beyond_p99"] == "true") for r in rows)
    # the training images themselves stay below the warning level
    result = run("predict", world["bundle"], world["train"], "-o", tmp_path / "t.csv", "--quiet", "--workers", "0")
    assert result.exit_code == 0 and "lie beyond" not in result.output
    beyond = np.mean([r["beyond_p99"] == "true" for r in _rows(tmp_path / "t.csv")])
    assert beyond < 0.2


def test_evaluate_applies_the_bundles_decision_rule_as_predict_does(world, tmp_path):
    options = ["--head", "logreg", "--calibrate", "sigmoid", "--operating-point", "sens=0.9"]
    assert run("fit", world["store"], *options, "-o", tmp_path / "cv", "--quiet").exit_code == 0
    result = run("train", world["store"], *options, "--cv-run", tmp_path / "cv", "-o", tmp_path / "b", "--quiet")
    assert result.exit_code == 0 and "CV estimate kept" in result.output, result.output
    # a run with other options is not this model's estimate
    result = run("train", world["store"], "--head", "logreg", "--cv-run", tmp_path / "cv", "-o", tmp_path / "c")
    assert result.exit_code == 2 and "calibrate" in result.output
    assert run("evaluate", tmp_path / "b", world["same"], "-o", tmp_path / "ev", "--quiet", "--workers",
               "0").exit_code == 0
    assert run("predict", tmp_path / "b", world["same"], "-o", tmp_path / "p.csv", "--quiet", "--workers",
               "0").exit_code == 0
    predicted = {r["path"]: r["label"] for r in _rows(tmp_path / "p.csv")}
    evaluated = {str(world["same"] / r["path"]): r["predicted"] for r in _rows(tmp_path / "ev" / "predictions.csv")}
    assert evaluated == predicted
    data = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert "sens" in data["decision_rule"] and "sigmoid" in data["decision_rule"]


def test_evaluate_without_a_cv_estimate_says_how_to_get_one(world, tmp_path):
    result = run("evaluate", world["bare"], world["same"], "-o", tmp_path / "ev", "--quiet", "--workers", "0")
    assert result.exit_code == 0 and "no CV estimate in the bundle" in result.output
    report = (tmp_path / "ev" / "report.md").read_text()
    assert "no cross-validated estimate in the bundle" in report and "--cv-run RUN" in report


def _flat_images(folder: Path, n: int = 4) -> Path:
    folder.mkdir(parents=True)
    for i in range(n):
        Image.fromarray(np.full((40, 40, 3), 40 * i, np.uint8)).save(folder / f"cell_{i}.png")
    return folder


def test_bad_inputs_are_one_line(world, tmp_path):
    other = tmp_path / "other"
    for name in ("all", "blast"):
        _flat_images(other / name)
    three = tmp_path / "three"  # more labels than the binary bundle has: named, with no word of --positive
    for name in ("all", "hem", "blast"):
        _flat_images(three / name)
    cases = [
        (["evaluate", world["bundle"], other, "-o", tmp_path / "a"], "not among the bundle's classes"),
        (["evaluate", world["bundle"], three, "-o", tmp_path / "a3"], "not among the bundle's classes"),
        (["evaluate", tmp_path / "nothing", world["same"], "-o", tmp_path / "b"], "not a fusionfeat bundle"),
        (["evaluate", world["bundle"], _flat_images(tmp_path / "flat"), "-o", tmp_path / "c"], "labelled"),
        (["evaluate", world["bundle"], world["same"], "-o", world["same"] / "x"], "inside"),
    ]
    for args, message in cases:
        result = run(*args, "--quiet", "--workers", "0")
        assert result.exit_code == 2, (args, result.output)
        assert message in result.output and result.output.count("\n") == 1, result.output
        assert "Traceback" not in result.output


def test_a_store_extracted_otherwise_or_a_foreign_cv_run_is_refused(world, tmp_path):
    store = tmp_path / "other.h5"
    assert run("extract", world["same"], "-o", store, "--weights", "random", "--backbones", "resnet18,vgg16",
               "--input-size", "40", "--quiet", "--workers", "0").exit_code == 0
    result = run("evaluate", world["bundle"], store, "-o", tmp_path / "ev")
    assert result.exit_code == 2 and "input_size" in result.output and result.output.count("\n") == 1
    result = run("train", world["store"], "--head", "svm", "--cv-run", world["root"] / "cv", "-o", tmp_path / "b")
    assert result.exit_code == 2 and "did not fit head 'svm'" in result.output
    result = run("train", store, "--head", "logreg", "--cv-run", world["root"] / "cv", "-o", tmp_path / "c")
    assert result.exit_code == 2 and "not on" in result.output


def test_bundle_shift_reference_is_checked_on_load(world, tmp_path):
    import shutil

    from fusionfeat.bundle import load_bundle

    copy = tmp_path / "bundle"
    shutil.copytree(world["bundle"], copy)
    assert load_bundle(copy).shift is not None
    with open(copy / "shift.npz", "ab") as fh:
        fh.write(b"x")
    result = run("predict", copy, world["same"], "-o", tmp_path / "p.csv")
    assert result.exit_code == 2 and "shift.npz does not match the SHA-256" in result.output


# ------------------------------------------------------------------------------------------- real data


@pytest.mark.slow
def test_allidb2_bundle_on_cnmc_samples_warns_of_shift(tmp_path):
    allidb, cnmc = need(SHARED_DATA / "ALL_IDB2"), need(SHARED_DATA / "C-NMC_2019_samples")
    store = tmp_path / "allidb.h5"
    # 112 px keeps the suite's time down (a quarter of 224's work); the shift and the geometry note remain
    result = run("extract", allidb, "--dedupe", "-o", store, "--weights", "random", "--input-size", "112", "--quiet")
    assert result.exit_code == 0, result.output
    assert run("fit", store, "--head", "logreg", "-o", tmp_path / "cv", "--quiet").exit_code == 0
    result = run("train", store, "--head", "logreg", "--cv-run", tmp_path / "cv", "-o", tmp_path / "bundle", "--quiet")
    assert result.exit_code == 0, result.output
    result = run("evaluate", tmp_path / "bundle", cnmc, "-o", tmp_path / "ev", "--quiet")
    assert result.exit_code == 0, result.output
    assert "lie beyond" in result.output and "differ in input geometry" in result.output
    data = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    report = (tmp_path / "ev" / "report.md").read_text()
    assert data["external"]["cv_estimate"] and "DISTRIBUTION SHIFT" in report and "CV estimate" in report
    assert data["protocol"]["subjects_known"] and data["subjects"]["heads"]["logreg"]
    # the training images themselves (scored from their store, which the bundle's settings made)
    result = run("evaluate", tmp_path / "bundle", store, "-o", tmp_path / "own", "--quiet")
    assert result.exit_code == 0 and "lie beyond" not in result.output
    assert np.mean([r["beyond_p99"] == "true" for r in _rows(tmp_path / "own" / "predictions.csv")]) < 0.2
