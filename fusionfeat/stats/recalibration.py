"""How to read an ECE and a reliability diagram: the ECE a perfectly calibrated model would score on the same
predictions, and the logistic recalibration (calibration slope and intercept) with intervals.

ECE is biased upward at small n: even labels drawn from the predicted probabilities themselves
(``y* ~ Bernoulli(p)``, a perfectly calibrated model by construction) score an ECE above 0, of about the size a
real head scores on a few hundred images. ``ece_if_calibrated`` simulates that reference, seeded.

The calibration slope and intercept (Cox 1958) come from the logistic regression ``logit P(y=1) = a + b·logit(p)``:
a perfectly calibrated model has ``a = 0`` and ``b = 1``; ``b < 1`` means predictions too extreme (overfitting),
``b > 1`` too timid. When the classes are separated by ``p`` the maximum-likelihood slope is infinite and the fit
is reported as not estimable (NaN).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as st
from scipy.special import expit

from fusionfeat.errors import FusionfeatError
from fusionfeat.stats.bootstrap import Clusters
from fusionfeat.stats.calibration import expected_calibration_error
from fusionfeat.stats.inputs import binary_labels, checked_scores, score_rows
from fusionfeat.stats.results import Record

EPS = 1e-12  # probabilities are clipped to [EPS, 1 - EPS] before the logit
N_SIM = 200


def ece_if_calibrated(p: Any, n_bins: int = 10, n_sim: int = N_SIM, seed: int = 0) -> dict[str, float]:
    """The ECE of a perfectly calibrated model on the same predictions: labels drawn ``y* ~ Bernoulli(p)``
    ``n_sim`` times (seeded), the ECE of each draw; returns their ``mean`` and ``q95`` (95th percentile), averaged
    over the rows of a 2-D ``p`` (CV repeats). An observed ECE near ``mean`` is what chance alone gives."""
    rows = score_rows(p, np.asarray(p).shape[-1])
    if n_sim < 1:
        raise FusionfeatError(f"n_sim must be 1 or more, got {n_sim}")
    if np.any((rows < 0) | (rows > 1)):
        raise FusionfeatError("calibration needs probabilities in [0, 1]")
    rng = np.random.default_rng(seed)
    means, q95s = [], []
    for row in rows:
        sims = np.array([expected_calibration_error((rng.random(len(row)) < row).astype(int), row, n_bins)
                         for _ in range(n_sim)])
        means.append(float(sims.mean()))
        q95s.append(float(np.quantile(sims, 0.95)))
    return {"mean": float(np.mean(means)), "q95": float(np.mean(q95s)), "n_sim": n_sim, "seed": seed}


@dataclass(frozen=True)
class Recalibration(Record):
    """Logistic recalibration ``logit P(y=1) = intercept + slope·logit(p)``: estimates and Wald standard errors
    (NaN when not estimable: one class, or the classes separated by ``p``)."""

    intercept: float
    slope: float
    se_intercept: float
    se_slope: float
    n: int
    note: str


def _logits(p: np.ndarray) -> np.ndarray:
    q = np.clip(p, EPS, 1 - EPS)
    return np.log(q) - np.log1p(-q)


def _separated(y: np.ndarray, x: np.ndarray, w: np.ndarray) -> bool:
    """Complete separation of the weighted rows by ``x`` (either direction): the slope's MLE is infinite."""
    keep = w > 0
    pos, neg = x[keep & (y == 1)], x[keep & (y == 0)]
    if len(pos) == 0 or len(neg) == 0:
        return True
    return bool(pos.min() > neg.max() or pos.max() < neg.min())


def _fit(y: np.ndarray, x: np.ndarray, w: np.ndarray, max_iter: int = 100) -> tuple[np.ndarray, np.ndarray] | None:
    """Weighted logistic regression of y on [1, x] by Newton–Raphson with step halving; (beta, covariance) or None
    when it does not converge."""
    design = np.column_stack([np.ones_like(x), x])

    def loglik(beta: np.ndarray) -> float:
        eta = design @ beta
        return float(np.sum(w * (y * eta - np.logaddexp(0.0, eta))))

    beta = np.array([0.0, 1.0])  # start at perfect calibration
    current = loglik(beta)
    for _ in range(max_iter):
        mu = expit(design @ beta)
        grad = design.T @ (w * (y - mu))
        info = (design * (w * mu * (1 - mu))[:, None]).T @ design
        try:
            step = np.linalg.solve(info, grad)
        except np.linalg.LinAlgError:
            return None
        for _ in range(30):
            trial = beta + step
            value = loglik(trial)
            if value >= current - 1e-12:
                break
            step = step / 2
        beta, current = trial, value
        if np.max(np.abs(step)) < 1e-10:
            mu = expit(design @ beta)
            info = (design * (w * mu * (1 - mu))[:, None]).T @ design
            try:
                return beta, np.linalg.inv(info)
            except np.linalg.LinAlgError:
                return None
    return None


def recalibration(y: Any, p: Any) -> Recalibration:
    """Calibration intercept and slope of probabilities ``p`` for 0/1 outcomes ``y`` (maximum likelihood, Wald
    standard errors from the observed information; rows treated as independent). ``p`` is clipped to
    ``[1e-12, 1 - 1e-12]`` before the logit."""
    y = binary_labels(y)
    p = checked_scores(p, len(y))
    x = _logits(p)
    w = np.ones(len(y))
    nan = math.nan
    if len(np.unique(y)) < 2:
        return Recalibration(nan, nan, nan, nan, len(y), "one class only")
    if _separated(y, x, w):
        return Recalibration(nan, nan, nan, nan, len(y), "not estimable: the classes are separated by p")
    fitted = _fit(y.astype(float), x, w)
    if fitted is None:
        return Recalibration(nan, nan, nan, nan, len(y), "not estimable: the fit did not converge")
    beta, cov = fitted
    return Recalibration(float(beta[0]), float(beta[1]), float(math.sqrt(cov[0, 0])), float(math.sqrt(cov[1, 1])),
                         len(y), "")


def recalibration_bootstrap(
    y: Any, p: Any, groups: Any = None, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Intercept and slope (averaged over the rows of a 2-D ``p``, CV repeats) with percentile bootstrap intervals
    resampling subjects when any is known, else rows (the same draws as ``cluster_bootstrap``); resamples where a
    fit is not estimable are skipped and counted. Also each repeat's Wald interval (rows independent)."""
    y = binary_labels(y)
    rows = score_rows(p, len(y))
    fits = [recalibration(y, row) for row in rows]
    z = float(st.norm.ppf((1 + level) / 2))
    out: dict[str, Any] = {"level": level, "note": next((f.note for f in fits if f.note), "")}
    clusters = Clusters(len(y), groups)
    rng = np.random.default_rng(seed)
    k = len(clusters)
    xs = [_logits(row) for row in rows]
    yf = y.astype(float)
    boot = []
    if not any(f.note for f in fits):
        for _ in range(n_boot):
            w = np.bincount(clusters.rows(rng.integers(0, k, k)), minlength=len(y)).astype(float)
            per_repeat = []
            for x in xs:
                fitted = None if _separated(y, x, w) else _fit(yf, x, w)
                if fitted is None:
                    break
                per_repeat.append(fitted[0])
            if len(per_repeat) == len(xs):
                boot.append(np.mean(per_repeat, axis=0))
    boot_arr = np.asarray(boot).reshape(-1, 2)
    for i, name in enumerate(("intercept", "slope")):
        estimate = float(np.mean([getattr(f, name) for f in fits]))
        se = [getattr(f, f"se_{name}") for f in fits]
        entry: dict[str, Any] = {
            "estimate": estimate,
            "wald": [[getattr(f, name) - z * s, getattr(f, name) + z * s] for f, s in zip(fits, se, strict=True)],
        }
        if len(boot_arr) >= 2:
            lo, hi = np.quantile(boot_arr[:, i], [(1 - level) / 2, (1 + level) / 2])
            entry.update(lo=float(lo), hi=float(hi))
        else:
            entry.update(lo=math.nan, hi=math.nan)
        out[name] = entry
    out.update(n_boot=n_boot, n_skipped=n_boot - len(boot_arr), unit=clusters.unit, n_units=k)
    return out
