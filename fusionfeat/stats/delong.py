"""DeLong's variance of a ROC AUC and his paired test of two correlated AUCs (independent images only)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy import stats as st

from fusionfeat.errors import FusionfeatError
from fusionfeat.stats.inputs import binary_labels, checked_scores
from fusionfeat.stats.results import DelongResult, Interval


def _midranks(x: np.ndarray) -> np.ndarray:
    """Midranks (1-based, ties averaged) of each column's entries of 2-D ``x`` (rows = observations)."""
    return st.rankdata(x, axis=0)


def delong_test(y: Any, p_a: Any, p_b: Any, level: float = 0.95) -> DelongResult:
    """DeLong, DeLong & Clarke-Pearson (1988) test of two correlated ROC AUCs on the same images.

    Uses the fast midrank algorithm of Sun & Xu (2014): structural components from the ranks within
    positives, within negatives and overall, their covariance ``S = S10/m + S01/n``, and
    ``z = (auc_a - auc_b) / sqrt(var)``, two-sided normal p and a Wald interval. It assumes independent
    images: with several images per subject use ``paired_cluster_bootstrap`` instead. Identical scores
    give ``se = 0``, ``z`` NaN and ``p = 1``.
    """
    y = binary_labels(y)
    a = checked_scores(p_a, len(y), "p_a")
    b = checked_scores(p_b, len(y), "p_b")
    pos, neg = y == 1, y == 0
    m, n = int(pos.sum()), int(neg.sum())
    if m < 2 or n < 2:
        raise FusionfeatError(f"DeLong's test needs at least 2 positives and 2 negatives; got {m} and {n}")
    scores = np.column_stack([a, b])
    x, z = scores[pos], scores[neg]
    tx, tz, t_all = _midranks(x), _midranks(z), _midranks(np.vstack([x, z]))
    auc = (t_all[:m].sum(axis=0) / m - (m + 1) / 2) / n
    v10 = (t_all[:m] - tx) / n  # per positive: fraction of negatives it outranks
    v01 = 1.0 - (t_all[m:] - tz) / m  # per negative: fraction of positives that outrank it
    cov = np.cov(v10, rowvar=False) / m + np.cov(v01, rowvar=False) / n
    var = float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1])
    diff = float(auc[0] - auc[1])
    se = math.sqrt(max(var, 0.0))
    if se == 0:
        zstat, pval = math.nan, 1.0
    else:
        zstat = diff / se
        pval = float(2 * st.norm.sf(abs(zstat)))
    half = float(st.norm.ppf((1 + level) / 2)) * se
    return DelongResult(float(auc[0]), float(auc[1]), diff, se, zstat, pval, diff - half, diff + half, level, m, n)


def delong_auc(y: Any, p: Any, level: float = 0.95) -> Interval:
    """ROC AUC with DeLong's variance and a Wald interval clipped to [0, 1] (independent images only)."""
    y = binary_labels(y)
    p = checked_scores(p, len(y))
    pos = y == 1
    m, n = int(pos.sum()), int((~pos).sum())
    if m < 2 or n < 2:
        raise FusionfeatError(f"DeLong's variance needs at least 2 positives and 2 negatives; got {m} and {n}")
    t_all = st.rankdata(np.concatenate([p[pos], p[~pos]]))
    auc = (t_all[:m].sum() / m - (m + 1) / 2) / n
    v10 = (t_all[:m] - st.rankdata(p[pos])) / n
    v01 = 1.0 - (t_all[m:] - st.rankdata(p[~pos])) / m
    se = math.sqrt(v10.var(ddof=1) / m + v01.var(ddof=1) / n)
    half = float(st.norm.ppf((1 + level) / 2)) * se
    return Interval(float(auc), max(0.0, auc - half), min(1.0, auc + half), se, math.nan, level, m + n, "DeLong")
