"""fusionfeat.stats against scipy, scikit-learn and hand-worked cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st
from sklearn import metrics as skm
from sklearn.calibration import calibration_curve

from fusionfeat import paper
from fusionfeat import stats as fs
from fusionfeat.errors import FusionfeatError

# ----------------------------------------------------------------------------------------------- corrected t

VALUES = np.array([[0.80, 0.85, 0.90], [0.82, 0.88, 0.86]])  # 2 repeats x 3 folds


def test_corrected_t_matches_a_hand_computation():
    ci = fs.corrected_resampled_t(VALUES, n_train=100, n_test=50)
    v = VALUES.ravel()
    mean = sum(v) / 6
    s2 = sum((x - mean) ** 2 for x in v) / 5
    se = math.sqrt((1 / 6 + 50 / 100) * s2)
    half = st.t.ppf(0.975, 5) * se
    assert ci.mean == pytest.approx(mean)
    assert ci.se == pytest.approx(se)
    assert (ci.lo, ci.hi) == pytest.approx((mean - half, mean + half))
    assert ci.df == 5 and ci.n == 6


def test_corrected_t_without_correction_is_the_plain_t_interval():
    ci = fs.corrected_resampled_t(VALUES, n_train=100, n_test=0, level=0.9)
    lo, hi = st.t.interval(0.9, 5, loc=VALUES.mean(), scale=st.sem(VALUES.ravel()))
    assert (ci.lo, ci.hi) == pytest.approx((lo, hi))


def test_corrected_t_is_wider_by_the_nadeau_bengio_factor():
    plain = fs.corrected_resampled_t(VALUES, 80, 0)
    corrected = fs.corrected_resampled_t(VALUES, 80, 20)  # 5-fold: n_test/n_train = 1/4
    assert corrected.se / plain.se == pytest.approx(math.sqrt((1 / 6 + 1 / 4) / (1 / 6)))


def test_corrected_t_per_fold_sizes_and_nans():
    v = np.array([0.8, np.nan, 0.9, 0.85])
    ci = fs.corrected_resampled_t(v, n_train=[90, 90, 110, 100], n_test=[30, 30, 10, 20])
    ratio = np.mean([30 / 90, 10 / 110, 20 / 100])  # the NaN fit's sizes are dropped with it
    assert ci.n == 3
    assert ci.se == pytest.approx(math.sqrt((1 / 3 + ratio) * np.var([0.8, 0.9, 0.85], ddof=1)))
    with pytest.raises(FusionfeatError, match="one size per value"):
        fs.corrected_resampled_t(v, n_train=[90, 90], n_test=20)
    one = fs.corrected_resampled_t([0.8], 80, 20)
    assert one.mean == 0.8 and math.isnan(one.lo) and math.isnan(one.hi)


def test_corrected_paired_t_plain_case_equals_scipy_paired_t():
    a = np.array([0.81, 0.84, 0.90, 0.79, 0.88])
    b = np.array([0.80, 0.80, 0.86, 0.80, 0.84])
    test = fs.corrected_paired_t(a - b, n_train=80, n_test=0)
    ref = st.ttest_rel(a, b)
    assert test.stat == pytest.approx(ref.statistic)
    assert test.p == pytest.approx(ref.pvalue)
    assert (test.lo, test.hi) == pytest.approx(tuple(ref.confidence_interval()))


def test_corrected_paired_t_by_hand():
    d = np.array([0.01, 0.02, -0.01, 0.03, 0.02, 0.0])
    test = fs.corrected_paired_t(d, n_train=80, n_test=20)
    t = d.mean() / math.sqrt((1 / 6 + 0.25) * d.var(ddof=1))
    assert test.stat == pytest.approx(t)
    assert test.p == pytest.approx(2 * st.t.sf(abs(t), 5))
    assert fs.corrected_paired_t([0.0, 0.0, 0.0], 80, 20).p == 1.0
    assert fs.corrected_paired_t([0.01, 0.01, 0.01], 80, 20).p == 0.0


def test_corrected_difference_without_correction_is_welch():
    a = np.array([0.91, 0.93, 0.95, 0.92, 0.94, 0.96])
    b = np.array([0.85, 0.88, 0.80, 0.86, 0.84])
    test = fs.corrected_difference_t(a, 100, 0, b, 80, 0)
    ref = st.ttest_ind(a, b, equal_var=False)
    assert test.stat == pytest.approx(ref.statistic) and test.p == pytest.approx(ref.pvalue)
    assert (test.lo, test.hi) == pytest.approx(tuple(ref.confidence_interval()))
    corrected = fs.corrected_difference_t(a, 100, 25, b, 80, 20)
    se_a = math.sqrt((1 / 6 + 0.25) * a.var(ddof=1))
    se_b = math.sqrt((1 / 5 + 0.25) * b.var(ddof=1))
    assert corrected.se == pytest.approx(math.hypot(se_a, se_b))
    assert corrected.p > test.p


# ----------------------------------------------------------------------------------------------- bootstrap


def _toy(n: int = 120, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    return y, np.clip(0.35 * y + 0.65 * rng.random(n), 0, 1)


def test_one_image_per_subject_equals_the_image_bootstrap():
    y, p = _toy()
    ids = np.array([f"subject-{i:03d}" for i in range(len(y))])[::-1]  # names sort opposite to row order
    by_subject = fs.cluster_bootstrap(y, p, ids, "roc_auc", n_boot=300, seed=3)
    by_image = fs.cluster_bootstrap(y, p, None, "roc_auc", n_boot=300, seed=3)
    assert by_subject.unit == "subject" and by_image.unit == "image"
    assert (by_subject.lo, by_subject.hi, by_subject.se) == (by_image.lo, by_image.hi, by_image.se)
    empty = fs.cluster_bootstrap(y, p, [""] * len(y), "roc_auc", n_boot=300, seed=3)
    assert empty.unit == "image" and (empty.lo, empty.hi) == (by_image.lo, by_image.hi)


def _clustered(n_subjects: int = 40, size: int = 5, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Subjects of equal size whose cells share most of their value: strong within-subject correlation."""
    rng = np.random.default_rng(seed)
    centre = rng.random(n_subjects)
    p = np.clip(np.repeat(centre, size) + 0.01 * rng.standard_normal(n_subjects * size), 0, 1)
    groups = np.repeat([f"s{i}" for i in range(n_subjects)], size)
    order = rng.permutation(len(p))  # subjects' cells interleaved
    return p[order], groups[order], np.repeat(centre, size)[order]


def test_subject_bootstrap_of_a_mean_has_the_analytic_standard_error():
    p, groups, _ = _clustered()
    y = np.zeros(len(p), dtype=int)
    means = np.array([p[groups == g].mean() for g in np.unique(groups)])
    out = fs.cluster_bootstrap(y, p, groups, lambda _y, q: float(q.mean()), n_boot=3000, seed=0)
    analytic = means.std(ddof=0) / math.sqrt(len(means))  # bootstrap SE of a mean of equal clusters
    assert out.se == pytest.approx(analytic, rel=0.08)
    ref = st.bootstrap((means,), np.mean, n_resamples=3000, method="percentile", rng=np.random.default_rng(9))
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert out.lo == pytest.approx(ref.confidence_interval.low, abs=0.1 * width)
    assert out.hi == pytest.approx(ref.confidence_interval.high, abs=0.1 * width)
    naive = fs.cluster_bootstrap(y, p, None, lambda _y, q: float(q.mean()), n_boot=3000, seed=0)
    assert naive.se < out.se / 1.8  # ignoring subjects understates the SE by about sqrt(5)


def test_bca_agrees_with_scipy_on_cluster_means():
    p, groups, _ = _clustered(n_subjects=30, seed=4)
    p = p**3  # a skewed statistic, so BCa differs from the percentile interval
    y = np.zeros(len(p), dtype=int)
    means = np.array([p[groups == g].mean() for g in np.unique(groups)])
    out = fs.cluster_bootstrap(y, p, groups, lambda _y, q: float(q.mean()), n_boot=4000, seed=0, method="bca")
    ref = st.bootstrap((means,), np.mean, n_resamples=4000, method="BCa", rng=np.random.default_rng(2))
    width = ref.confidence_interval.high - ref.confidence_interval.low
    assert out.lo == pytest.approx(ref.confidence_interval.low, abs=0.1 * width)
    assert out.hi == pytest.approx(ref.confidence_interval.high, abs=0.1 * width)


def test_single_class_resamples_are_skipped_and_counted():
    y = np.array([1, 1, 1, 1, 0, 0, 0, 0])
    p = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2])
    groups = np.array(["a", "a", "b", "b", "c", "c", "d", "d"])  # each subject holds one class
    out = fs.cluster_bootstrap(y, p, groups, "roc_auc", n_boot=400, seed=0)
    assert out.unit == "subject" and out.n_units == 4
    assert 15 < out.n_skipped < 90  # P(all four draws from one class) = 2 / 2**4 = 1/8
    assert out.lo == out.hi == 1.0  # every two-class resample separates perfectly


def test_repeats_resample_the_same_subjects_and_average():
    y, p = _toy(60)
    groups = np.repeat([f"s{i}" for i in range(20)], 3)
    one = fs.cluster_bootstrap(y, p, groups, "roc_auc", n_boot=200, seed=1)
    twice = fs.cluster_bootstrap(y, np.vstack([p, p]), groups, "roc_auc", n_boot=200, seed=1)
    assert (one.estimate, one.lo, one.hi) == (twice.estimate, twice.lo, twice.hi)
    q = np.random.default_rng(2).random(60)
    two = fs.cluster_bootstrap(y, np.vstack([p, q]), groups, "roc_auc", n_boot=50)
    assert two.estimate == pytest.approx((skm.roc_auc_score(y, p) + skm.roc_auc_score(y, q)) / 2)
    paired = fs.paired_cluster_bootstrap(y, np.vstack([p, q]), np.vstack([q, q]), groups, "brier", n_boot=50)
    assert paired.estimate == pytest.approx((skm.brier_score_loss(y, p) - skm.brier_score_loss(y, q)) / 2)


@pytest.mark.parametrize("name", ["roc_auc", "brier", "f1", "mcc", "specificity"])
def test_fast_named_metrics_equal_the_metric_on_resampled_rows(name):
    y, p = _toy(90, seed=8)
    p = p.round(1)  # ties
    groups = np.repeat([f"s{i}" for i in range(30)], 3)
    plain = fs.pooled_metric(name)
    fast = fs.cluster_bootstrap(y, p, groups, name, n_boot=150, seed=4, method="bca")
    slow = fs.cluster_bootstrap(y, p, groups, lambda a, b: plain(a, b), n_boot=150, seed=4, method="bca")
    assert (fast.lo, fast.hi, fast.se, fast.n_skipped) == pytest.approx((slow.lo, slow.hi, slow.se, slow.n_skipped))
    q = np.random.default_rng(1).random(90)
    fast = fs.paired_cluster_bootstrap(y, p, q, groups, name, n_boot=100)
    slow = fs.paired_cluster_bootstrap(y, p, q, groups, lambda a, b: plain(a, b), n_boot=100)
    assert (fast.lo, fast.hi, fast.p) == pytest.approx((slow.lo, slow.hi, slow.p))


def test_unknown_subjects_are_subjects_of_their_own():
    y, p = _toy(6)
    out = fs.cluster_bootstrap(y, p, ["a", "a", "", "b", "", "b"], "brier", n_boot=20)
    assert out.unit == "subject" and out.n_units == 4


def test_paired_bootstrap_identical_and_distinct_heads():
    y, p = _toy(200)
    same = fs.paired_cluster_bootstrap(y, p, p.copy(), None, "roc_auc", n_boot=200)
    assert (same.estimate, same.lo, same.hi, same.p) == (0.0, 0.0, 0.0, 1.0)
    noise = np.random.default_rng(5).random(len(y))
    apart = fs.paired_cluster_bootstrap(y, p, noise, None, "roc_auc", n_boot=199)
    assert apart.estimate == pytest.approx(skm.roc_auc_score(y, p) - skm.roc_auc_score(y, noise))
    assert apart.lo > 0 and apart.p == pytest.approx(2 / 200)


def test_paired_image_bootstrap_se_is_close_to_delong():
    rng = np.random.default_rng(11)
    y = rng.integers(0, 2, 300)
    a = y + rng.normal(0, 1.0, 300)
    b = y + rng.normal(0, 1.3, 300)
    boot = fs.paired_cluster_bootstrap(y, a, b, None, "roc_auc", n_boot=1500, seed=1)
    assert boot.se == pytest.approx(fs.delong_test(y, a, b).se, rel=0.15)


# ----------------------------------------------------------------------------------------------- DeLong


def _delong_by_definition(y: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """DeLong et al. (1988) structural components, O(m·n), straight from the paper's definitions."""
    out = []
    for s in (a, b):
        x, z = s[y == 1], s[y == 0]
        psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
        out.append((psi.mean(), psi.mean(axis=1), psi.mean(axis=0)))  # AUC, V10 (positives), V01 (negatives)
    m, n = int(y.sum()), int((1 - y).sum())
    s10 = np.cov(np.vstack([out[0][1], out[1][1]]))
    s01 = np.cov(np.vstack([out[0][2], out[1][2]]))
    s = s10 / m + s01 / n
    return out[0][0], out[1][0], s[0, 0] + s[1, 1] - 2 * s[0, 1]


@pytest.mark.parametrize("decimals", [None, 1])  # 1 decimal: many ties within and across classes
def test_delong_matches_the_definition_and_sklearn(decimals):
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 150)
    a = 1 / (1 + np.exp(-(1.5 * y + rng.standard_normal(150))))
    b = 1 / (1 + np.exp(-(0.8 * y + rng.standard_normal(150))))
    if decimals is not None:
        a, b = a.round(decimals), b.round(decimals)
    res = fs.delong_test(y, a, b)
    auc_a, auc_b, var = _delong_by_definition(y, a, b)
    assert res.auc_a == pytest.approx(skm.roc_auc_score(y, a), abs=1e-12)
    assert res.auc_b == pytest.approx(skm.roc_auc_score(y, b), abs=1e-12)
    assert (res.auc_a, res.auc_b) == pytest.approx((auc_a, auc_b), abs=1e-12)
    assert res.se == pytest.approx(math.sqrt(var), rel=1e-10)
    z = (auc_a - auc_b) / math.sqrt(var)
    assert res.z == pytest.approx(z) and res.p == pytest.approx(2 * st.norm.sf(abs(z)))
    assert (res.lo, res.hi) == pytest.approx((res.diff - 1.959964 * res.se, res.diff + 1.959964 * res.se))


def test_delong_auc_interval_matches_the_definition():
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 120)
    a = (y + rng.standard_normal(120)).round(1)
    x, z = a[y == 1], a[y == 0]
    psi = (x[:, None] > z[None, :]) + 0.5 * (x[:, None] == z[None, :])
    se = math.sqrt(psi.mean(axis=1).var(ddof=1) / len(x) + psi.mean(axis=0).var(ddof=1) / len(z))
    out = fs.delong_auc(y, a, level=0.9)
    auc = psi.mean()
    assert out.mean == pytest.approx(skm.roc_auc_score(y, a)) and out.mean == pytest.approx(auc)
    assert out.se == pytest.approx(se)
    assert (out.lo, out.hi) == pytest.approx((auc - 1.644854 * se, auc + 1.644854 * se))


def test_delong_identical_scores_and_too_few_cases():
    y, p = _toy(40)
    same = fs.delong_test(y, p, p)
    assert same.diff == 0 and same.p == 1.0
    with pytest.raises(FusionfeatError, match="at least 2 positives"):
        fs.delong_test([1, 0, 0], [0.2, 0.3, 0.1], [0.3, 0.2, 0.1])


def test_roc_auc_equals_sklearn_with_ties():
    y, p = _toy(90)
    p = p.round(1)
    assert fs.roc_auc(y, p) == pytest.approx(skm.roc_auc_score(y, p), abs=1e-12)
    assert math.isnan(fs.roc_auc([1, 1], [0.2, 0.4]))


# ----------------------------------------------------------------------------------------------- Holm


def test_holm_by_hand():
    # sorted 0.01, 0.03, 0.04, 0.2 -> 4*0.01, 3*0.03, max(2*0.04, 0.09), max(1*0.2, 0.09)
    np.testing.assert_allclose(fs.holm([0.01, 0.04, 0.03, 0.2]), [0.04, 0.09, 0.09, 0.2])
    np.testing.assert_allclose(fs.holm([0.5, 0.6]), [1.0, 1.0])
    out = fs.holm([0.02, np.nan, 0.01])
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2]], [0.02, 0.02])


def test_holm_matches_statsmodels():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    p = np.random.default_rng(0).random(12) ** 3
    np.testing.assert_allclose(fs.holm(p), multitest.multipletests(p, method="holm")[1])


# ----------------------------------------------------------------------------------------------- calibration


def test_brier_matches_sklearn():
    y, p = _toy(50)
    assert fs.brier(y, p) == pytest.approx(skm.brier_score_loss(y, p))


def test_ece_by_hand():
    y = [0, 0, 1, 1, 1]
    p = [0.1, 0.3, 0.6, 0.8, 0.95]
    # bins (0, .5], (.5, 1]: |0 - 0.2| * 2/5 + |1 - 2.35/3| * 3/5
    assert fs.expected_calibration_error(y, p, n_bins=2) == pytest.approx(0.4 * 0.2 + 0.6 * (1 - 2.35 / 3))
    assert fs.expected_calibration_error([0, 1], [0.0, 1.0]) == 0.0


@pytest.mark.parametrize("strategy", ["uniform", "quantile"])
def test_reliability_curve_matches_sklearn(strategy):
    y, p = _toy(200, seed=2)
    p[:5] = [0.1, 0.5, 0.0, 1.0, 0.3]  # values on bin edges
    curve = fs.reliability_curve(y, p, n_bins=7, strategy=strategy)
    prob_true, prob_pred = calibration_curve(y, p, n_bins=7, strategy=strategy)
    np.testing.assert_allclose(curve["prob_true"], prob_true)
    np.testing.assert_allclose(curve["prob_pred"], prob_pred)
    assert curve["count"].sum() == len(y)


# ----------------------------------------------------------------------------------------------- metrics by name


def test_named_threshold_metrics_match_sklearn():
    y, p = _toy(80, seed=6)
    pred = (p >= 0.5).astype(int)
    expected = {
        "accuracy": skm.accuracy_score(y, pred),
        "precision": skm.precision_score(y, pred),
        "recall": skm.recall_score(y, pred),
        "specificity": skm.recall_score(1 - y, 1 - pred),
        "f1": skm.f1_score(y, pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y, pred),
        "mcc": skm.matthews_corrcoef(y, pred),
    }
    for name, value in expected.items():
        assert fs.pooled_metric(name)(y, p) == pytest.approx(value), name
    with pytest.raises(FusionfeatError, match="unknown metric"):
        fs.pooled_metric("auc")


# ----------------------------------------------------------------------------------------------- subjects


def test_aggregate_by_subject_by_hand():
    p = [0.9, 0.2, 0.7, 0.1, 0.3, 0.5, 0.8]
    g = ["b", "a", "b", "a", "", "b", "a"]
    y = [1, 0, 1, 0, 1, 1, 0]
    mean = fs.aggregate_by_subject(p, g, y)
    assert mean.subject.tolist() == ["b", "a"]  # first appearance
    assert mean.label.tolist() == [1, 0]
    assert mean.score == pytest.approx([0.7, (0.2 + 0.1 + 0.8) / 3])
    assert mean.n_images.tolist() == [3, 3] and mean.n_unassigned == 1
    assert fs.aggregate_by_subject(p, g, y, how="median").score == pytest.approx([0.7, 0.2])
    assert fs.aggregate_by_subject(p, g, y, how="fraction").score == pytest.approx([1.0, 1 / 3])
    assert fs.aggregate_by_subject(p, g, y, how="fraction", threshold=0.75).score == pytest.approx([1 / 3, 1 / 3])


def test_aggregate_by_subject_refuses_mixed_labels_and_missing_ids():
    with pytest.raises(FusionfeatError, match="subject 'a' has cells of both classes"):
        fs.aggregate_by_subject([0.1, 0.9], ["a", "a"], [0, 1])
    with pytest.raises(FusionfeatError, match="needs subject ids"):
        fs.aggregate_by_subject([0.1, 0.9], ["", ""], [0, 1])
    with pytest.raises(FusionfeatError, match="unknown subject aggregation"):
        fs.aggregate_by_subject([0.1], ["a"], [0], how="max")


# ----------------------------------------------------------------------------------------------- operating points

Y_OP = np.array([1, 1, 1, 1, 0, 0, 0, 0])
P_OP = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.1])


@pytest.mark.parametrize(
    "target, threshold",
    [({"sens": 0.75}, 0.6), ({"sens": 1.0}, 0.3), ({"sens": 0.5}, 0.8), ({"sens": 0.6}, 0.6),
     ({"spec": 0.75}, 0.6), ({"spec": 1.0}, 0.8), ({"spec": 0.5}, 0.3)],
)
def test_threshold_for_by_hand(target, threshold):
    assert fs.threshold_for(Y_OP, P_OP, **target) == threshold


@pytest.mark.parametrize("target", [{"sens": 0.7}, {"sens": 0.95}, {"spec": 0.4}, {"spec": 0.9}])
def test_threshold_for_is_the_best_reachable_by_brute_force(target):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 60)
    p = (0.3 * y + 0.7 * rng.random(60)).round(2)  # ties
    t = fs.threshold_for(y, p, **target)
    grid = np.append(np.unique(p), np.inf)
    rates = [fs.rates_at(y, p, c) for c in grid]
    if "sens" in target:
        ok = [c for c, r in zip(grid, rates, strict=True) if r["sensitivity"] >= target["sens"]]
        assert t == max(ok)
    else:
        ok = [c for c, r in zip(grid, rates, strict=True) if r["specificity"] >= target["spec"]]
        assert t == min(ok)


def test_threshold_for_refuses_bad_targets():
    with pytest.raises(FusionfeatError, match="exactly one"):
        fs.threshold_for(Y_OP, P_OP)
    with pytest.raises(FusionfeatError, match="exactly one"):
        fs.threshold_for(Y_OP, P_OP, sens=0.9, spec=0.9)
    with pytest.raises(FusionfeatError, match=r"\(0, 1\]"):
        fs.threshold_for(Y_OP, P_OP, sens=0)
    with pytest.raises(FusionfeatError, match="no positive"):
        fs.threshold_for([0, 0], [0.1, 0.2], sens=0.9)


def test_rates_at():
    assert fs.rates_at(Y_OP, P_OP, 0.6) == {"threshold": 0.6, "sensitivity": 0.75, "specificity": 0.75}


# ----------------------------------------------------------------------------------------------- the paper's F1


def test_paper_f1_is_the_harmonic_mean_of_its_precision_and_recall():
    row = paper.TABLE1["attention"]
    assert round(2 * row["precision"] * row["recall"] / (row["precision"] + row["recall"]), 4) == row["f1"]
    assert round(fs.f1_from(row["precision"], row["recall"]), 4) == row["f1"] == 0.9194
    assert "2PR/(P+R)" in fs.PAPER_F1_NOTE


def test_bad_inputs_are_user_errors():
    with pytest.raises(FusionfeatError, match="positive class"):
        fs.brier([0, 2], [0.1, 0.2])
    with pytest.raises(FusionfeatError, match="NaN"):
        fs.cluster_bootstrap([0, 1], [0.1, np.nan], None, "brier")
    with pytest.raises(FusionfeatError, match="groups has 1 entries"):
        fs.cluster_bootstrap([0, 1], [0.1, 0.2], ["a"], "brier")


# ----------------------------------------------------------------------------------------------- on a CVResult


def test_wiring_on_a_cross_validation_result():
    """How the report feeds a ``CVResult`` to these functions (a reference for the integration)."""
    from fusionfeat.evaluation.cv import cross_validate
    from tests.test_evaluate import fake_store

    store = fake_store(n_subjects=15, cells=4, signal=0.8)
    result = cross_validate(store, ["logreg", "svm"], repeats=2, progress=False)
    y = result.rows["label"] == result.classes.index(result.positive)
    groups = result.rows["group"]
    per_fold = {h: result.fold_results(h) for h in result.heads}
    for head, folds in per_fold.items():
        auc = [f.metrics["roc_auc"] for f in folds]
        ci = fs.corrected_resampled_t(auc, [f.n_train for f in folds], [f.n_test for f in folds])
        assert ci.mean == pytest.approx(result.summary()[head]["roc_auc"]["mean"]) and ci.df == 9
        pooled = fs.cluster_bootstrap(y, result.oof[head], groups, "roc_auc", n_boot=200)
        assert pooled.unit == "subject" and pooled.n_units == 15
        assert pooled.estimate == pytest.approx(np.mean([skm.roc_auc_score(y, row) for row in result.oof[head]]))
        subjects = fs.aggregate_by_subject(result.oof[head].mean(axis=0), groups, y)
        assert len(subjects.subject) == 15 and subjects.n_images.sum() == len(y)
    a, b = per_fold["logreg"], per_fold["svm"]
    assert [(f.repeat, f.fold) for f in a] == [(f.repeat, f.fold) for f in b]  # same splits: pair them
    diffs = [fa.metrics["roc_auc"] - fb.metrics["roc_auc"] for fa, fb in zip(a, b, strict=True)]
    paired = fs.corrected_paired_t(diffs, [f.n_train for f in a], [f.n_test for f in a])
    boot = fs.paired_cluster_bootstrap(y, result.oof["logreg"], result.oof["svm"], groups, "roc_auc", n_boot=200)
    adjusted = fs.holm([paired.p, boot.p])
    assert np.all(adjusted >= [paired.p, boot.p]) and np.all(adjusted <= 1)
