"""K-class metrics and their bootstrap, each against scikit-learn or a small example worked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from fusionfeat import stats
from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluation import multiclass_metrics as mm
from fusionfeat.stats.multiclass import MulticlassScorer


def _fold(k: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels with every class present, probabilities that lean towards the truth, and their argmax."""
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])
    logits = rng.normal(size=(n, k)) + 1.5 * np.eye(k)[y]
    P = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return y, P, P.argmax(axis=1)


@pytest.mark.parametrize("k", [3, 4, 5])
def test_fold_metrics_equal_scikit_learn(k):
    y, P, pred = _fold(k, 60, seed=k)
    got = mm.fold_metrics(y, pred, P)
    labels = np.arange(k)
    want = {
        "accuracy": skm.accuracy_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "f1_macro": skm.f1_score(y, pred, average="macro"),
        "f1_weighted": skm.f1_score(y, pred, average="weighted"),
        "kappa": skm.cohen_kappa_score(y, pred),
        "mcc": skm.matthews_corrcoef(y, pred),
        "roc_auc_macro": skm.roc_auc_score(y, P, multi_class="ovr", average="macro", labels=labels),
        "roc_auc_weighted": skm.roc_auc_score(y, P, multi_class="ovr", average="weighted", labels=labels),
        "log_loss": skm.log_loss(y, P, labels=labels),
    }
    for name, value in want.items():
        assert got[name] == pytest.approx(value, abs=1e-12), name
    assert got["n_auc_classes"] == k


def test_per_class_figures_from_the_confusion_matrix_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    pred = np.array([0, 1, 2, 1, 1, 2, 2, 0, 0])
    P = np.eye(3)[pred] * 0.8 + 0.2 / 3
    cm = mm.confusion_matrix(y, pred, 3)
    assert cm.tolist() == [[1, 1, 1], [0, 2, 0], [2, 0, 2]]
    pc = mm.per_class(y, pred, P)
    # class 0: tp 1, predicted 3, true 3; class 1: tp 2, predicted 3, true 2; class 2: tp 2, predicted 3, true 4
    assert pc["precision"] == pytest.approx([1 / 3, 2 / 3, 2 / 3])
    assert pc["recall"] == pytest.approx([1 / 3, 1.0, 0.5])
    assert pc["f1"] == pytest.approx([1 / 3, 0.8, 4 / 7])
    assert pc["support"] == [3, 2, 4]
    assert mm.balanced_accuracy(y, pred, 3) == pytest.approx((1 / 3 + 1 + 0.5) / 3)


def test_a_class_absent_from_the_fold_has_no_auc_and_is_left_out_of_the_averages():
    y, P, pred = _fold(4, 40, seed=1)
    keep = y != 2  # class 2 absent from this "test fold", its column still there
    y, P, pred = y[keep], P[keep], pred[keep]
    got = mm.fold_metrics(y, pred, P)
    aucs = {c: skm.roc_auc_score(y == c, P[:, c]) for c in (0, 1, 3)}
    support = {c: int(np.sum(y == c)) for c in aucs}
    assert got["n_auc_classes"] == 3
    assert got["roc_auc_macro"] == pytest.approx(np.mean(list(aucs.values())), abs=1e-12)
    assert got["roc_auc_weighted"] == pytest.approx(sum(aucs[c] * support[c] for c in aucs) / sum(support.values()),
                                                    abs=1e-12)
    assert math.isnan(mm.per_class(y, pred, P)["roc_auc"][2])
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0), abs=1e-12)
    never_2 = np.where(pred == 2, 0, pred)  # class 2 neither true nor predicted: precision and recall undefined
    table = mm.per_class(y, never_2, P)
    assert math.isnan(table["recall"][2]) and math.isnan(table["precision"][2])
    assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred), abs=1e-12)


def test_brier_worked_by_hand_and_twice_the_binary_score_for_two_classes():
    P = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6]])
    # row 0 (class 0): 0.3² + 0.2² + 0.1² = 0.14; row 1 (class 1): 0.1² + 0.7² + 0.6² = 0.86
    assert mm.brier_multiclass(np.array([0, 1]), P) == pytest.approx(0.5)
    p = np.array([0.9, 0.2, 0.6, 0.4])
    y = np.array([1, 0, 0, 1])
    assert mm.brier_multiclass(y, np.column_stack([1 - p, p])) == pytest.approx(2 * stats.brier(y, p))


def test_top_label_and_classwise_ece_worked_by_hand():
    P = np.array([[0.95, 0.03, 0.02], [0.55, 0.25, 0.20], [0.15, 0.60, 0.25], [0.30, 0.30, 0.40]])
    y = np.array([0, 1, 1, 2])
    # top class 0, 0, 1, 2 -> right, wrong, right, right; confidences 0.95 (bin 10), 0.55 (bin 6), 0.60 (bin 6),
    # 0.40 (bin 4): bins {0.95: acc 1}, {0.55, 0.60: acc 0.5, conf 0.575}, {0.40: acc 1}
    want = (abs(1 - 0.95) + 2 * abs(0.5 - 0.575) + abs(1 - 0.40)) / 4
    assert mm.top_label_ece(y, P, 10) == pytest.approx(want)
    curve = mm.top_label_reliability(y, P, 10)
    assert curve["count"].tolist() == [1, 2, 1]
    assert curve["accuracy"].tolist() == pytest.approx([1.0, 0.5, 1.0])
    # class-wise: each column's binary ECE (fusionfeat's binary reliability bins), averaged
    want_cw = np.mean([stats.expected_calibration_error((y == c).astype(int), P[:, c], 10) for c in range(3)])
    assert mm.classwise_ece(y, P, 10) == pytest.approx(want_cw)
    # class 0 by hand: bins (0.9,1]: p 0.95, y 1; (0.5,0.6]: 0.55, 0; (0.1,0.2]: 0.15, 0; (0.2,0.3]: 0.30, 0
    by_hand_0 = (0.05 + 0.55 + 0.15 + 0.30) / 4
    assert stats.expected_calibration_error((y == 0).astype(int), P[:, 0], 10) == pytest.approx(by_hand_0)


@pytest.mark.parametrize("k", [3, 5])
def test_a_resample_scored_from_multiplicities_equals_scikit_learn_on_the_repeated_rows(k):
    y, P, pred = _fold(k, 50, seed=10 + k)
    rng = np.random.default_rng(0)
    for _ in range(5):
        idx = rng.integers(0, len(y), len(y))
        if len(np.unique(y[idx])) < k:
            continue
        w = np.bincount(idx, minlength=len(y)).astype(float)
        auc = MulticlassScorer("roc_auc_macro", y, P, pred)(w)
        assert auc == pytest.approx(skm.roc_auc_score(y[idx], P[idx], multi_class="ovr", average="macro"), abs=1e-12)
        bacc = MulticlassScorer("balanced_accuracy", y, P, pred)(w)
        assert bacc == pytest.approx(skm.balanced_accuracy_score(y[idx], pred[idx]), abs=1e-12)


def test_image_bootstrap_equals_a_plain_loop_with_scikit_learn():
    y, P, pred = _fold(3, 45, seed=3)
    res = stats.multiclass_bootstrap(y, P, pred, None, "roc_auc_macro", n_boot=200, seed=7)
    rng = np.random.default_rng(7)  # images resampled: each draw is n row indices, as cluster_bootstrap draws them
    values = []
    for _ in range(200):
        idx = rng.integers(0, len(y), len(y))
        values.append(skm.roc_auc_score(y[idx], P[idx], multi_class="ovr") if len(np.unique(y[idx])) == 3
                      else math.nan)
    values = np.asarray(values)
    ok = values[np.isfinite(values)]
    assert res.estimate == pytest.approx(skm.roc_auc_score(y, P, multi_class="ovr"), abs=1e-12)
    assert res.n_skipped == 200 - len(ok)
    assert (res.lo, res.hi) == pytest.approx(tuple(np.quantile(ok, [0.025, 0.975])), abs=1e-12)
    assert res.unit == "image" and res.n_units == len(y)


def test_paired_subject_bootstrap_keeps_subjects_together_and_pairs_the_heads():
    y, P_a, pred_a = _fold(4, 48, seed=5)
    rng = np.random.default_rng(1)
    P_b = np.clip(P_a + rng.normal(0, 0.2, P_a.shape), 1e-3, None)
    P_b /= P_b.sum(axis=1, keepdims=True)
    pred_b = P_b.argmax(axis=1)
    groups = np.array([f"S{i // 3}" for i in range(len(y))])  # 16 subjects of 3 rows, in order
    res = stats.paired_multiclass_bootstrap(y, P_a, pred_a, P_b, pred_b, groups, "balanced_accuracy", n_boot=300,
                                            seed=2)
    draw = np.random.default_rng(2)
    diffs = []
    for _ in range(300):
        subjects = draw.integers(0, 16, 16)
        idx = (subjects[:, None] * 3 + np.arange(3)).reshape(-1)
        bacc = skm.balanced_accuracy_score
        diffs.append(bacc(y[idx], pred_a[idx]) - bacc(y[idx], pred_b[idx]))
    diffs = np.asarray(diffs)
    want_diff = skm.balanced_accuracy_score(y, pred_a) - skm.balanced_accuracy_score(y, pred_b)
    assert res.estimate == pytest.approx(want_diff, abs=1e-12)
    assert (res.lo, res.hi) == pytest.approx(tuple(np.quantile(diffs, [0.025, 0.975])), abs=1e-12)
    p = min(1.0, 2 * min(np.sum(diffs <= 0) + 1, np.sum(diffs >= 0) + 1) / 301)
    assert res.p == pytest.approx(p)
    assert res.unit == "subject" and res.n_units == 16


def test_repeats_average_the_pooled_metric():
    y, P1, _ = _fold(3, 30, seed=8)
    _, P2, _ = _fold(3, 30, seed=9)
    P = np.stack([P1, P2])
    res = stats.multiclass_bootstrap(y, P, P.argmax(axis=2), None, "roc_auc_macro", n_boot=10, seed=0)
    want = np.mean([skm.roc_auc_score(y, p, multi_class="ovr") for p in (P1, P2)])
    assert res.estimate == pytest.approx(want, abs=1e-12)


def test_bad_inputs_are_one_line_errors():
    y, P, pred = _fold(3, 12, seed=0)
    with pytest.raises(FusionfeatError, match="unknown K-class metric"):
        stats.multiclass_bootstrap(y, P, pred, None, "f1", n_boot=5)
    with pytest.raises(FusionfeatError, match="NaN"):
        stats.multiclass_bootstrap(y, np.full_like(P, np.nan), pred, None, "roc_auc_macro", n_boot=5)
    with pytest.raises(FusionfeatError, match="class indices"):
        stats.multiclass_bootstrap(y + 3, P, pred, None, "roc_auc_macro", n_boot=5)
