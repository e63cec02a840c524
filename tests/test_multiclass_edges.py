"""Exact intervals at the edges of K-class figures (accuracy, balanced accuracy, per-class recall and precision,
macro OvR AUC at the ceiling), binary F1 with no predicted positive, and the wording of K-class figure titles:
each interval checked against scipy's Clopper–Pearson interval (``binomtest(...).proportion_ci("exact")``)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.stats import binomtest

from fusionfeat import stats
from fusionfeat.evaluation.cv import cross_validate
from fusionfeat.evaluation.evidence import edge_interval
from fusionfeat.report import multiclass_plots, write_run
from fusionfeat.report.cells import ci_cell, edge_value, exact_cell
from tests.test_multiclass_report import write_k_store


def cp(k: int, n: int, level: float = 0.95) -> tuple[float, float]:
    ci = binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return ci.low, ci.high


# three classes, 4 + 3 + 5 rows
Y = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2])


def test_accuracy_at_the_ceiling_is_scipys_clopper_pearson_interval():
    exact = stats.exact_multiclass("accuracy", Y, Y, None, 3, 1.0, 1.0, 1.0)
    assert (exact["k"], exact["n"], exact["edge"]) == (12, 12, "ceiling")
    assert (exact["lo"], exact["hi"]) == pytest.approx(cp(12, 12), abs=1e-12)


def test_accuracy_with_subjects_counts_subjects_not_cells():
    groups = np.array(["a", "a", "b", "b", "c", "c", "d", "e", "e", "f", "f", "f"])
    pred = Y.copy()
    pred[0] = 1  # subject a: one cell wrong, one right -> counts once on each side
    exact = stats.exact_multiclass("accuracy", Y, pred, groups, 3, 11 / 12, 0.9, 0.9)  # zero-width interval
    assert (exact["k"], exact["n"], exact["edge"]) == (6, 7, None)
    assert (exact["lo"], exact["hi"]) == pytest.approx(cp(6, 7), abs=1e-12)


def test_an_interior_value_with_a_real_interval_gets_none():
    pred = Y.copy()
    pred[[0, 5]] = 2
    assert stats.exact_multiclass("accuracy", Y, pred, None, 3, 10 / 12, 0.6, 0.95) is None
    assert stats.exact_multiclass("accuracy", Y, pred, None, 3, 10 / 12, None, None) is None  # no interval shown
    assert stats.exact_multiclass("roc_auc_macro", Y, pred, None, 3, 0.9, 0.9, 0.9) is None  # only the ceiling


def test_balanced_accuracy_is_the_mean_of_the_recalls_bonferroni_bounds():
    pred = Y.copy()
    pred[4] = 0  # class 1: 2 of 3 right
    estimate = (1 + 2 / 3 + 1) / 3
    exact = stats.exact_multiclass("balanced_accuracy", Y, pred, None, 3, estimate, 0.8, 0.8)
    assert exact["parts"] == [[4, 4], [2, 3], [5, 5]]
    bounds = [cp(k, n, 1 - 0.05 / 3) for k, n in ((4, 4), (2, 3), (5, 5))]
    assert exact["lo"] == pytest.approx(np.mean([b[0] for b in bounds]), abs=1e-12)
    assert exact["hi"] == pytest.approx(np.mean([b[1] for b in bounds]), abs=1e-12)
    assert exact["lo"] < estimate < exact["hi"]


def test_macro_auc_at_the_ceiling_is_bounded_by_sens_times_spec_of_every_class():
    exact = stats.exact_multiclass("roc_auc_macro", Y, Y, None, 3, 1.0, 1.0, 1.0)
    level = 1 - 0.05 / 6
    # by hand: class c has n_c rows against 12 - n_c, all separated
    expected = np.mean([cp(n, n, level)[0] * cp(12 - n, 12 - n, level)[0] for n in (4, 3, 5)])
    assert exact["lo"] == pytest.approx(expected, abs=1e-12) and exact["hi"] == 1.0
    assert exact["edge"] == "ceiling" and 0 < exact["lo"] < 0.5  # 12 rows support little


def test_macro_and_weighted_f1_at_their_parts_bonferroni_bounds():
    pred = np.array([0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2])  # class 1 never predicted: its F1 is 0
    f1 = [1.0, 0.0, 2 * (5 / 8) / (5 / 8 + 1)]
    exact = stats.exact_multiclass("f1_macro", Y, pred, None, 3, float(np.mean(f1)), 0.5, 0.5)
    level = 1 - 0.05 / 5  # precision and recall of classes 0 and 2, recall of class 1
    p0, r0, r1, p2, r2 = cp(4, 4, level), cp(4, 4, level), cp(0, 3, level), cp(5, 8, level), cp(5, 5, level)

    def h(p: float, r: float) -> float:
        return 2 * p * r / (p + r) if p + r else 0.0

    lo = [h(p0[0], r0[0]), 0.0, h(p2[0], r2[0])]
    hi = [h(p0[1], r0[1]), h(1.0, r1[1]), h(p2[1], r2[1])]
    assert exact["lo"] == pytest.approx(np.mean(lo), abs=1e-12) and exact["hi"] == pytest.approx(np.mean(hi))
    weighted = stats.exact_multiclass("f1_weighted", Y, pred, None, 3, 0.6, 0.6, 0.6)
    w = np.array([4, 3, 5]) / 12
    assert weighted["lo"] == pytest.approx(w @ lo, abs=1e-12) and weighted["hi"] == pytest.approx(w @ hi)


def test_kappa_and_mcc_at_the_ceiling_are_flagged_and_say_they_have_no_interval():
    exact = stats.exact_multiclass("kappa", Y, Y, None, 3, 1.0, 1.0, 1.0)
    assert exact["edge"] == "ceiling" and exact["lo"] is None
    assert ci_cell({"lo": 1.0, "hi": 1.0}, "mcc", exact) == "n/a: cannot be estimated at the ceiling"
    assert stats.exact_multiclass("mcc", Y, Y, None, 3, 0.5, 0.2, 0.7) is None


def test_per_class_recall_and_precision_at_the_edges():
    pred = np.array([0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 2])  # class 1 never predicted
    values = {"recall": [1.0, 0.0, 1.0], "precision": [1.0, float("nan"), 5 / 8]}
    exact = stats.per_class_exact(Y, pred, None, 3, values)
    assert (exact["recall"][0]["k"], exact["recall"][0]["n"]) == (4, 4)
    assert (exact["recall"][0]["lo"], exact["recall"][0]["hi"]) == pytest.approx(cp(4, 4), abs=1e-12)
    assert exact["recall"][1]["edge"] == "floor" and (exact["recall"][1]["k"], exact["recall"][1]["n"]) == (0, 3)
    assert exact["recall"][1]["hi"] == pytest.approx(cp(0, 3)[1], abs=1e-12)
    assert exact["precision"][1] is None and exact["precision"][2] is None  # n/a; interior
    assert (exact["precision"][0]["lo"], exact["precision"][0]["hi"]) == pytest.approx(cp(4, 4), abs=1e-12)
    cell = exact_cell(1.0, exact["recall"][0])
    assert cell == f"1.0000 [{cp(4, 4)[0]:.4f}, 1.0000]‡ 4/4 (at the ceiling)"
    assert exact_cell(0.625, None) == "0.6250"


def test_binary_f1_without_predicted_positives_is_at_the_floor_with_an_honest_bound():
    y = np.array([1] * 6 + [0] * 10)
    hard = np.zeros((1, 16))
    exact = edge_interval("f1", y, hard, None, 0.0, 0.0, 0.0)
    hi_recall = cp(0, 6)[1]
    assert exact["edge"] == "floor" and exact["lo"] == 0.0
    assert exact["hi"] == pytest.approx(2 * hi_recall / (1 + hi_recall), abs=1e-12)
    assert exact["parts"] == [[0, 6]] and "no predicted positives" in exact["method"]
    # F1 = 2PR/(P + R) can never exceed that bound, whatever the precision, at recall's upper bound
    for precision in (0.01, 0.5, 0.99, 1.0):
        assert 2 * precision * hi_recall / (precision + hi_recall) <= exact["hi"] + 1e-12
    cell = edge_value("0.0000", exact) + " " + ci_cell({"lo": 0.0, "hi": 0.0}, "f1", exact)
    assert cell == f"0.0000 (at the floor) [0.0000, {exact['hi']:.4f}]‡"
    # precision and MCC stay undefined (n/a): no exact interval is made up for them
    assert edge_interval("precision", y, hard, None, float("nan"), float("nan"), 0.0) is None
    assert stats.exact_interval("mcc", stats.counts_of(y, hard[0]), 0.0) is None


def test_a_perfect_k_class_run_shows_exact_intervals_and_the_ceiling(tmp_path):
    store = write_k_store(tmp_path / "store.h5", 3, n_subjects=9, separation=12.0)
    result = cross_validate(store, ["logreg", "concat"], folds=3, progress=False)
    out = write_run(result, tmp_path / "run", n_boot=100)
    data = json.loads((out / "metrics.json").read_text())
    u = data["heads"]["logreg"]["uncertainty"]
    assert u["accuracy"]["pooled"]["mean"] == 1.0, "the separated fixture is expected to be perfect"
    # subjects are known: k = n = 9 subjects
    accuracy = u["accuracy"]["pooled"]["exact"]
    assert (accuracy["k"], accuracy["n"]) == (9, 9)
    assert (accuracy["lo"], accuracy["hi"]) == pytest.approx(cp(9, 9), abs=1e-12)
    assert u["balanced_accuracy"]["pooled"]["exact"]["edge"] == "ceiling"
    assert u["roc_auc_macro"]["pooled"]["exact"]["lo"] == pytest.approx(
        np.mean([cp(3, 3, 1 - 0.05 / 6)[0] * cp(6, 6, 1 - 0.05 / 6)[0]] * 3), abs=1e-12)
    report = (out / "report.md").read_text()
    lo = cp(9, 9)[0]
    assert f"| accuracy | 1.0000 ± 0.0000 (at the ceiling) | [{lo:.4f}, 1.0000]‡ 9/9 | 1.0000 (at the ceiling) |" \
        in report
    assert "‡ marks an exact interval" in report and "[1.0000, 1.0000]" not in report.split("## Per class")[0]
    # two heads at the ceiling: their difference cannot be measured, and says so instead of +0 [+0, +0], p = 1
    assert data["heads"]["concat"]["uncertainty"]["roc_auc_macro"]["pooled"]["mean"] == 1.0
    pair = data["comparisons"]["pairs"][0]["metrics"]["roc_auc_macro"]
    assert pair["per_fold"]["edge"] == "ceiling" and pair["pooled"]["edge"] == "ceiling"
    assert "p_holm" not in pair["per_fold"]
    assert "| at the ceiling: the difference cannot be measured | — | — | paired bootstrap over subjects | at the " \
        "ceiling: the difference cannot be measured | — | — |" in report
    recall = data["heads"]["logreg"]["pooled"]["per_class_exact"]["recall"][0]
    assert f"1.0000 [{recall['lo']:.4f}, 1.0000]‡ {recall['k']}/{recall['n']} (at the ceiling)" in report


def test_figure_titles_name_the_rows_they_show(monkeypatch, tmp_path):
    titles: list[str] = []

    def keep(fig, path, out, plots, key):
        texts = [fig._suptitle.get_text()] if fig._suptitle else []
        titles.append(" ".join(texts + [ax.get_title() for ax in fig.axes]))
        plots[key] = key

    monkeypatch.setattr(multiclass_plots, "_save", keep)
    monkeypatch.setattr(multiclass_plots, "training_figure", lambda data: None)
    curve = {"fpr": [0, 0, 1], "tpr": [0, 1, 1], "auc": 1.0}
    data = {"classes": ["a", "b", "c"], "protocol": {"repeats": 1},
            "heads": {"h": {"pooled": {"confusion": np.eye(3).tolist(), "roc": {"a": curve, "b": curve, "c": curve}},
                            "uncertainty": {"roc_auc_macro": {"pooled": {"mean": 1.0}}},
                            "calibration": {"n_bins": 10, "ece_top": 0.0, "brier": 0.0,
                                            "reliability": {"confidence": [0.95], "accuracy": [1.0],
                                                            "count": [3]}}}}}
    multiclass_plots.write_multiclass_plots(data, tmp_path, rows="external set")
    assert len(titles) == 3 and all("external set" in t for t in titles), titles
    assert not any("out-of-fold" in t for t in titles)
    titles.clear()
    multiclass_plots.write_multiclass_plots(data, tmp_path)
    assert all("out-of-fold" in t for t in titles), titles
