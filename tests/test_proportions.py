"""Exact intervals of proportions and of metrics built from them, against scipy's binomial test and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from fusionfeat import stats
from fusionfeat.errors import FusionfeatError

CASES = [(0, 1), (1, 1), (0, 10), (10, 10), (3, 10), (7, 18), (18, 18), (1, 50), (49, 50), (250, 400)]


@pytest.mark.parametrize(("k", "n"), CASES)
@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_clopper_pearson_matches_scipy_binomtest(k, n, level):
    ci = st.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    assert stats.clopper_pearson(k, n, level) == pytest.approx((ci.low, ci.high), abs=1e-10)


@pytest.mark.parametrize(("k", "n"), CASES)
def test_wilson_matches_scipy_binomtest(k, n):
    ci = st.binomtest(k, n).proportion_ci(method="wilson")
    assert stats.wilson(k, n) == pytest.approx((ci.low, ci.high), abs=1e-10)


@pytest.mark.parametrize(("k", "n"), [(0, 10), (10, 10), (3, 10), (17, 20)])
def test_against_statsmodels_when_installed(k, n):
    smp = pytest.importorskip("statsmodels.stats.proportion")
    assert stats.clopper_pearson(k, n) == pytest.approx(smp.proportion_confint(k, n, method="beta"), abs=1e-10)
    assert stats.wilson(k, n) == pytest.approx(smp.proportion_confint(k, n, method="wilson"), abs=1e-10)


def test_ten_of_ten_is_not_certain():
    # worked example: for k = n the exact lower bound solves p^n = alpha/2, so 0.025 ** (1/10)
    lo, hi = stats.clopper_pearson(10, 10)
    assert lo == pytest.approx(0.025 ** 0.1) and round(lo, 2) == 0.69 and hi == 1.0
    lo, hi = stats.clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** 0.1)


def test_bad_counts_are_refused_in_one_line():
    for k, n in [(3, 2), (-1, 4), (0, 0)]:
        with pytest.raises(FusionfeatError, match="0 <= k <= n"):
            stats.clopper_pearson(k, n)


def _cp(k, n, level):
    ci = st.binomtest(k, n).proportion_ci(confidence_level=level, method="exact")
    return ci.low, ci.high


def test_exact_intervals_of_metrics_from_counts():
    c = stats.Counts(tp=12, tn=6, fp=0, fn=0)  # every one right
    acc = stats.exact_interval("accuracy", c, 1.0)
    assert (acc.k, acc.n) == (18, 18) and (acc.lo, acc.hi) == pytest.approx(_cp(18, 18, 0.95))
    rec = stats.exact_interval("recall", c, 1.0)
    assert (rec.k, rec.n) == (12, 12) and rec.lo == pytest.approx(0.025 ** (1 / 12))
    spec = stats.exact_interval("specificity", c, 1.0)
    assert (spec.k, spec.n) == (6, 6) and spec.lo == pytest.approx(0.025 ** (1 / 6))
    # two parts: each at 97.5% (Bonferroni), balanced accuracy their mean, AUC >= sens * spec
    s_lo, _ = _cp(12, 12, 0.975)
    t_lo, _ = _cp(6, 6, 0.975)
    ba = stats.exact_interval("balanced_accuracy", c, 1.0)
    assert (ba.lo, ba.hi) == pytest.approx(((s_lo + t_lo) / 2, 1.0))
    auc = stats.exact_interval("roc_auc", c, 1.0)
    assert (auc.lo, auc.hi) == pytest.approx((s_lo * t_lo, 1.0))
    f1 = stats.exact_interval("f1", c, 1.0)
    p_lo, _ = _cp(12, 12, 0.975)  # precision 12/12 and recall 12/12
    assert (f1.lo, f1.hi) == pytest.approx((p_lo, 1.0))
    mcc = stats.exact_interval("mcc", c, 1.0)
    los = [_cp(12, 12, 0.9875)[0], _cp(12, 12, 0.9875)[0], _cp(6, 6, 0.9875)[0], _cp(6, 6, 0.9875)[0]]
    expected = math.sqrt(np.prod(los)) - math.sqrt(np.prod([1 - x for x in los]))
    assert mcc.lo == pytest.approx(expected) and mcc.hi == pytest.approx(1.0)
    # no predicted positive: precision has no denominator, so no interval
    assert stats.exact_interval("precision", stats.Counts(0, 5, 0, 3), 0.0) is None


def test_auc_bound_holds_in_a_simulation():
    """AUC >= sens(t) * spec(t) at any fixed t: check on a population where everything is known."""
    rng = np.random.default_rng(0)
    pos, neg = rng.normal(1.0, 1, 200_000), rng.normal(0, 1, 200_000)
    auc = np.mean(pos[:4000, None] > neg[None, :4000])
    for t in (-0.5, 0.0, 0.5, 1.0, 2.0):
        assert auc >= np.mean(pos > t) * np.mean(neg < t) - 1e-3
        assert auc <= 1 - np.mean(pos <= t) * np.mean(neg >= t) + 1e-3


def test_counts_of_rows_and_of_subjects():
    y = np.array([1, 1, 1, 0, 0, 1])
    pred = np.array([1, 1, 0, 0, 1, 1])
    assert stats.counts_of(y, pred) == stats.Counts(tp=3, tn=1, fp=1, fn=1)
    groups = np.array(["a", "a", "a", "b", "b", ""])  # a: 2 tp + 1 fn; b: 1 tn + 1 fp; the last its own
    assert stats.counts_of(y, pred, groups) == stats.Counts(tp=2, tn=1, fp=1, fn=1)


def test_edges_and_degenerate_intervals():
    assert stats.at_edge(1.0, "accuracy") == "ceiling" and stats.at_edge(0.0, "recall") == "floor"
    assert stats.at_edge(0.0, "mcc") is None and stats.at_edge(-1.0, "mcc") == "floor"
    assert stats.at_edge(math.nan, "accuracy") is None and stats.at_edge(0.5, "accuracy") is None
    assert stats.degenerate(1.0, 1.0) and stats.degenerate(None, 1.0) and stats.degenerate(math.nan, 0.2)
    assert not stats.degenerate(0.4, 0.6)


def test_unmeasurable_differences():
    flat = {"diff": 0.0, "lo": 0.0, "hi": 0.0, "p": 1.0}
    assert stats.unmeasurable(1.0, 1.0, flat, "roc_auc") == "ceiling"
    assert stats.unmeasurable(0.8, 0.8, flat, "roc_auc") == "identical"
    assert stats.unmeasurable(1.0, 0.9, {"diff": 0.1, "lo": 0.02, "hi": 0.2, "p": 0.01}, "roc_auc") is None
    assert stats.unmeasurable(0.0, 0.0, {"estimate": 0.0, "lo": 0.0, "hi": 0.0, "p": 1.0}, "recall") == "floor"
    assert "cannot be measured" in stats.EDGE_TEXT["ceiling"]
