"""Issue 20, statistics at the edges, end to end: a head that scores perfectly gets exact intervals and the
ceiling flag (never ``1.0000 [1.0000, 1.0000]``), a study at the ceiling says the inflation cannot be measured,
subject-level results only under subject-disjoint folds, and the calibration extras in metrics.json."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats as st
from sklearn.linear_model import LogisticRegression

from fusionfeat.evaluation.cv import cross_validate
from fusionfeat.report import write_run
from fusionfeat.study import run_study, write_study
from tests.test_evaluate import PAIR, fake_store

N_BOOT = 100


def _exact(k, n, level=0.95):
    ci = st.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return ci.low, ci.high


@pytest.fixture(scope="module")
def perfect_run(tmp_path_factory):
    store = fake_store(signal=30.0)  # well separated: every head scores perfectly
    result = cross_validate(store, ["logreg", "concat"], folds=3, progress=False, backbones=PAIR)
    return result, write_run(result, tmp_path_factory.mktemp("edges") / "perfect", n_boot=N_BOOT)


def test_a_perfect_head_gets_exact_intervals_and_the_ceiling_flag(perfect_run):
    result, out = perfect_run
    data = json.loads((out / "metrics.json").read_text())
    u = data["heads"]["logreg"]["uncertainty"]
    # the old intervals are kept as computed (zero width), the exact one is added beside them
    assert u["accuracy"]["pooled"]["bootstrap"]["lo"] == u["accuracy"]["pooled"]["bootstrap"]["hi"] == 1.0
    n_pos_subjects, n_neg_subjects = 8, 4  # fake_store: 12 subjects, two-thirds positive; subjects are counted
    exact = u["accuracy"]["pooled"]["exact"]
    assert (exact["k"], exact["n"], exact["edge"]) == (12, 12, "ceiling")
    assert (exact["lo"], exact["hi"]) == pytest.approx(_exact(12, 12))
    assert u["recall"]["corrected_t"]["exact"]["lo"] == pytest.approx(_exact(n_pos_subjects, n_pos_subjects)[0])
    assert u["specificity"]["pooled"]["exact"]["lo"] == pytest.approx(_exact(n_neg_subjects, n_neg_subjects)[0])
    auc = u["roc_auc"]["pooled"]["exact"]  # AUC >= sens * spec, each part at 97.5 %
    assert auc["lo"] == pytest.approx(_exact(8, 8, 0.975)[0] * _exact(4, 4, 0.975)[0]) and auc["hi"] == 1.0
    # subject level: one row per subject, so k/n are subjects too
    sub = data["subjects"]["heads"]["logreg"]["metrics"]["accuracy"]
    assert sub["exact"]["lo"] == pytest.approx(_exact(12, 12)[0]) and sub["exact"]["method"].startswith("Clopper")
    md = (out / "report.md").read_text()
    assert "1.0000 [1.0000, 1.0000]" not in md
    assert f"[{_exact(12, 12)[0]:.4f}, 1.0000]‡ 12/12" in md and "(at the ceiling)" in md
    assert "exact interval" in md and "Clopper–Pearson interval of k/n" in md
    # the comparison at the ceiling: no +0.0000 [+0.0000, +0.0000], p = 1
    fusion = md[md.index("## Does fusion help?"):md.index("## Paired comparisons")]
    assert "at the ceiling: the difference cannot be measured" in fusion and "+0.0000 [+0.0000, +0.0000]" not in fusion
    row = data["comparisons"]["fusion_table"][0]
    assert row["per_fold"]["edge"] == "ceiling" and row["per_fold"]["p_holm_family"] is None
    tex = (out / "report.tex").read_text()
    assert r"$^\ddagger$ 12/12" in tex and "at the ceiling: the difference cannot be measured" in tex
    csv_text = (out / "table_results.csv").read_text()
    assert "exact_ci95_low" in csv_text.splitlines()[0] and "ceiling" in csv_text
    cal = data["heads"]["logreg"]["calibration"]
    assert "separated" in cal["recalibration"]["note"] and "n/a (separated)" in md


def test_a_study_at_the_ceiling_says_the_inflation_cannot_be_measured(tmp_path):
    results = run_study(fake_store(signal=30.0), ["logreg"], repeats=1, folds=3, progress=False, device="cpu")
    out = write_study(results, tmp_path / "study", n_boot=N_BOOT)
    md = (out / "study.md").read_text()
    assert "+0.000 [+0.000, +0.000]" not in md and "[1.000, 1.000]" not in md
    assert "at the ceiling: the difference cannot be measured" in md and "not \"no inflation\"" in md
    data = json.loads((out / "study.json").read_text())
    c = data["heads_results"]["logreg"]["contrasts"]["inflation"]
    assert c["metrics"]["roc_auc"]["edge"] == "ceiling" and c["pooled_auc_originals"]["edge"] == "ceiling"
    assert data["heads_results"]["logreg"]["arms"]["weight"]["metrics"]["accuracy"]["exact"]["edge"] == "ceiling"
    assert "at the ceiling" in (out / "study.tex").read_text()


def test_subject_level_results_only_under_subject_disjoint_folds(tmp_path):
    store = fake_store()
    image_level = cross_validate(store, ["logreg"], protocol="stratified", folds=3, progress=False, backbones=PAIR)
    out = write_run(image_level, tmp_path / "image", n_boot=N_BOOT)
    data = json.loads((out / "metrics.json").read_text())
    assert "heads" not in data["subjects"] and "image-level folds" in data["subjects"]["left_out"]
    assert not (out / "subjects.csv").exists()
    md = (out / "report.md").read_text()
    assert "a subject's other cells sit in training" in md and "| `logreg` [IMAGENET] | 0." not in \
        md[md.index("## SUBJECT-LEVEL"):md.index("## Head hyper")]
    # predefined folds that keep each subject in one fold: subject-level results are shown
    store.folds = np.array([int(g[1:]) % 3 for g in store.groups])
    predefined = cross_validate(store, ["logreg"], protocol="predefined", progress=False, backbones=PAIR)
    out = write_run(predefined, tmp_path / "predefined", n_boot=N_BOOT)
    data = json.loads((out / "metrics.json").read_text())
    assert "logreg" in data["subjects"]["heads"] and (out / "subjects.csv").exists()


def test_unknown_subjects_state_the_independence_assumption(tmp_path):
    result = cross_validate(fake_store(subjects_known=False, signal=0.6), ["logreg", "concat"], folds=3,
                            progress=False, backbones=PAIR)
    out = write_run(result, tmp_path / "u", n_boot=N_BOOT)
    md = (out / "report.md").read_text()
    fusion = md[md.index("## Does fusion help?"):md.index("## Paired comparisons")]
    assert "images are treated as independent" in fusion
    assert "Primary test: the corrected resampled paired t" in fusion and "conditional on the fitted models" in fusion
    # the table's Holm column is the family-wise one: both tests of the one row, adjusted together, by hand
    row = json.loads((out / "metrics.json").read_text())["comparisons"]["fusion_table"][0]
    assert row["per_fold"]["edge"] is None and row["pooled"]["edge"] is None
    low, high = sorted([row["per_fold"]["p"], row["pooled"]["p"]])
    expected = {low: min(1.0, 2 * low), high: max(min(1.0, 2 * low), high)}
    assert row["per_fold"]["p_holm_family"] == pytest.approx(expected[row["per_fold"]["p"]])
    assert row["pooled"]["p_holm_family"] == pytest.approx(expected[row["pooled"]["p"]])
    assert "2 p-values: all rows × both tests" in fusion


def test_calibration_extras_in_metrics_json_match_independent_fits(tmp_path):
    result = cross_validate(fake_store(signal=1.0), ["logreg"], folds=3, progress=False, backbones=PAIR)
    out = write_run(result, tmp_path / "c", n_boot=N_BOOT)
    cal = json.loads((out / "metrics.json").read_text())["heads"]["logreg"]["calibration"]
    assert cal["n_bins"] == 10 and cal["ece_bootstrap"]["resampled"] == "subjects"
    assert cal["ece_bootstrap"]["lo"] <= cal["ece"] <= cal["ece_bootstrap"]["hi"]
    y = (result.rows["label"] == 1).astype(int)
    p = np.clip(result.oof["logreg"][0], 1e-12, 1 - 1e-12)
    x = np.log(p / (1 - p))
    sk = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x[:, None], y)
    assert cal["recalibration"]["slope"]["estimate"] == pytest.approx(float(sk.coef_[0, 0]), abs=1e-4)
    assert cal["recalibration"]["intercept"]["estimate"] == pytest.approx(float(sk.intercept_[0]), abs=1e-4)
    assert cal["recalibration"]["slope"]["lo"] < cal["recalibration"]["slope"]["hi"]
    assert 0 < cal["ece_if_calibrated"]["mean"] < 0.5 and cal["ece_if_calibrated"]["n_sim"] == 200
    md = (out / "report.md").read_text()
    assert "ECE (10 bins)" in md and "ECE if perfectly calibrated" in md and "slope [95% CI]" in md


def test_does_fusion_help_without_a_single_backbone_head_says_so_not_none(perfect_run):
    _, out = perfect_run  # heads logreg and concat: no single-backbone head to be the best one
    md = (out / "report.md").read_text()
    fusion = md[md.index("## Does fusion help?"):md.index("## Paired comparisons")]
    assert "`None`" not in fusion
    assert "against `concat` (no single-backbone head was fitted to compare with;" in fusion
