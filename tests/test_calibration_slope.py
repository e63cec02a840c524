"""Calibration slope and intercept (logistic recalibration) against scikit-learn and a numerical Hessian; the ECE
of a perfectly calibrated model by simulation; the ECE's bootstrap."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import approx_fprime
from scipy.special import expit
from sklearn.linear_model import LogisticRegression

from fusionfeat import stats


def _sample(n=400, a=0.3, b=0.6, seed=1):
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 2, n)
    p = expit(x)
    y = (rng.random(n) < expit(a + b * x)).astype(int)
    return y, p, x


def test_slope_and_intercept_match_sklearn_unpenalised():
    y, p, x = _sample()
    fit = stats.recalibration(y, p)
    sk = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x[:, None], y)
    assert fit.slope == pytest.approx(float(sk.coef_[0, 0]), abs=1e-5)
    assert fit.intercept == pytest.approx(float(sk.intercept_[0]), abs=1e-5)
    assert abs(fit.slope - 0.6) < 0.25 and fit.note == ""


def test_wald_standard_errors_from_a_numerical_hessian():
    y, p, x = _sample(n=300, seed=3)
    fit = stats.recalibration(y, p)

    def nll_grad(beta):
        def nll(b):
            eta = b[0] + b[1] * x
            return float(np.sum(np.logaddexp(0, eta) - y * eta))
        return approx_fprime(beta, nll, 1e-6)

    beta = np.array([fit.intercept, fit.slope])
    h = 1e-4
    hess = np.column_stack([(nll_grad(beta + h * e) - nll_grad(beta - h * e)) / (2 * h) for e in np.eye(2)])
    cov = np.linalg.inv((hess + hess.T) / 2)
    assert fit.se_intercept == pytest.approx(math.sqrt(cov[0, 0]), rel=1e-3)
    assert fit.se_slope == pytest.approx(math.sqrt(cov[1, 1]), rel=1e-3)


def test_against_statsmodels_logit_when_installed():
    sm = pytest.importorskip("statsmodels.api")
    y, p, x = _sample(n=250, seed=5)
    res = sm.Logit(y, sm.add_constant(x)).fit(disp=0)
    fit = stats.recalibration(y, p)
    assert (fit.intercept, fit.slope) == pytest.approx(tuple(res.params), abs=1e-6)
    assert (fit.se_intercept, fit.se_slope) == pytest.approx(tuple(res.bse), rel=1e-5)


def test_a_perfectly_calibrated_sample_has_slope_near_one():
    rng = np.random.default_rng(7)
    p = rng.uniform(0.02, 0.98, 5000)
    y = (rng.random(5000) < p).astype(int)
    fit = stats.recalibration(y, p)
    assert abs(fit.slope - 1) < 3 * fit.se_slope and abs(fit.intercept) < 3 * fit.se_intercept


def test_separated_classes_are_not_estimable():
    fit = stats.recalibration([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9])
    assert math.isnan(fit.slope) and "separated" in fit.note
    out = stats.recalibration_bootstrap([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n_boot=20)
    assert math.isnan(out["slope"]["lo"]) and "separated" in out["note"]


def test_recalibration_bootstrap_draws_as_a_hand_bootstrap():
    y, p, x = _sample(n=120, seed=11)
    out = stats.recalibration_bootstrap(y, p, None, n_boot=60, seed=4)
    rng = np.random.default_rng(4)  # the same draws as cluster_bootstrap over rows
    slopes = []
    for _ in range(60):
        idx = rng.integers(0, len(y), len(y))
        sk = LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000).fit(x[idx, None], y[idx])
        slopes.append(float(sk.coef_[0, 0]))
    lo, hi = np.quantile(slopes, [0.025, 0.975])
    assert (out["slope"]["lo"], out["slope"]["hi"]) == pytest.approx((lo, hi), abs=1e-4)
    assert out["n_skipped"] == 0 and out["unit"] == "image"
    assert out["slope"]["wald"][0][0] < out["slope"]["estimate"] < out["slope"]["wald"][0][1]


def test_ece_of_a_perfectly_calibrated_model_by_simulation():
    rng = np.random.default_rng(2)
    p = rng.uniform(0, 1, 150)
    ref = stats.ece_if_calibrated(p, n_bins=10, n_sim=300, seed=9)
    sim = np.random.default_rng(9)  # by hand: the same draws, ECE as scikit-learn's bins would give it
    eces = []
    for _ in range(300):
        ys = (sim.random(150) < p).astype(int)
        edges = np.linspace(0, 1, 11)
        ids = np.searchsorted(edges[1:-1], p)
        eces.append(sum(np.sum(ids == b) / 150 * abs(ys[ids == b].mean() - p[ids == b].mean())
                        for b in range(10) if np.any(ids == b)))
    assert ref["mean"] == pytest.approx(np.mean(eces)) and ref["q95"] == pytest.approx(np.quantile(eces, 0.95))
    assert 0.03 < ref["mean"] < 0.12  # biased upward at small n: well above 0
    assert stats.ece_if_calibrated(p, n_sim=50, seed=1) == stats.ece_if_calibrated(p, n_sim=50, seed=1)
