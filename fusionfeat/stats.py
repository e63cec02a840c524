"""Statistics a reviewer accepts: corrected CV intervals, subject bootstrap, paired tests, calibration.

Every function takes plain numpy arrays, so it can be fed from a ``CVResult`` (``oof[head]``, ``test_fold``,
``rows["label"]``, ``rows["group"]``, ``FoldResult.metrics``/``n_train``/``n_test``) or from anything else.
Conventions used throughout:

* ``y`` is 1 for the positive class and 0 otherwise (convert class indices with ``y = label == pos``);
* ``p`` is the predicted probability (or any score) of the positive class;
* a row is predicted positive when ``p >= threshold`` (default threshold 0.5);
* ``groups`` holds subject ids as strings; ``""`` means unknown, and such a row is a subject of its own.

References are listed in ``docs/protocols.md`` (Statistics).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats as st

from fusionfeat.errors import FusionfeatError

Metric = Callable[[np.ndarray, np.ndarray], float]

# ----------------------------------------------------------------------------------------------- the paper's F1

PAPER_F1_NOTE = (
    "The paper's Table 1 F1 (0.9194) is the harmonic mean 2PR/(P+R) of its precision (0.9459) and recall "
    "(0.8944); the F1 formula printed in the paper differs from this (a misprint), its numbers do not."
)


def f1_from(precision: float, recall: float) -> float:
    """F1 as the harmonic mean ``2PR/(P+R)`` of precision and recall (0 when both are 0)."""
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


# ----------------------------------------------------------------------------------------------- results


class _Record:
    """Results are frozen dataclasses; ``to_dict`` gives their JSON-able fields."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-able fields."""
        return asdict(self)


@dataclass(frozen=True)
class Interval(_Record):
    """A point estimate with a two-sided interval; ``df`` is NaN for bootstrap intervals."""

    mean: float
    lo: float
    hi: float
    se: float
    df: float
    level: float
    n: int
    method: str


@dataclass(frozen=True)
class PairedTest(_Record):
    """A paired comparison ``a - b``: the difference, its interval, the test statistic and a two-sided p."""

    diff: float
    lo: float
    hi: float
    se: float
    stat: float
    p: float
    level: float
    n: int
    method: str


@dataclass(frozen=True)
class BootstrapResult(_Record):
    """A bootstrap interval of a pooled metric (or of a paired difference, with ``p``).

    ``unit`` is ``"subject"`` when clusters were resampled, else ``"image"``; ``n_units`` counts them.
    ``n_skipped`` resamples were left out because the metric was undefined there (e.g. one class only);
    the interval uses the ``n_boot - n_skipped`` others.
    """

    estimate: float
    lo: float
    hi: float
    se: float
    level: float
    method: str
    unit: str
    n_units: int
    n_boot: int
    n_skipped: int
    p: float = math.nan


@dataclass(frozen=True)
class DelongResult(_Record):
    """DeLong's paired comparison of two correlated ROC AUCs (``diff = auc_a - auc_b``)."""

    auc_a: float
    auc_b: float
    diff: float
    se: float
    z: float
    p: float
    lo: float
    hi: float
    level: float
    n_pos: int
    n_neg: int


# ----------------------------------------------------------------------------------------------- corrected t


def _nb_factor(n: int, n_train: Any, n_test: Any) -> float:
    """Nadeau–Bengio variance factor ``1/J + n_test/n_train`` (ratio averaged over folds if arrays)."""
    n_train = np.broadcast_to(np.asarray(n_train, dtype=float), (n,))
    n_test = np.broadcast_to(np.asarray(n_test, dtype=float), (n,))
    if np.any(n_train <= 0) or np.any(n_test < 0):
        raise FusionfeatError("corrected t: n_train must be positive and n_test non-negative")
    return 1.0 / n + float(np.mean(n_test / n_train))


def _finite_with(values: Any, *others: Any) -> tuple[np.ndarray, ...]:
    """Flatten ``values`` and drop NaNs, together with the matching entries of array-like ``others``."""
    v = np.asarray(values, dtype=float).reshape(-1)
    keep = ~np.isnan(v)
    out = [v[keep]]
    for o in others:
        a = np.asarray(o, dtype=float)
        if a.ndim and a.size != v.size:
            raise FusionfeatError(f"{v.size} metric values but {a.size} fold sizes: give one size per value, or one")
        out.append(a.reshape(-1)[keep] if a.ndim else a)
    return tuple(out)


def corrected_resampled_t(values: Any, n_train: Any, n_test: Any, level: float = 0.95) -> Interval:
    """Nadeau & Bengio (2003) corrected resampled t interval of a metric over folds × repeats.

    ``values`` holds one metric value per fit (any shape, e.g. ``(repeats, folds)``; NaNs are dropped).
    With J values, sample variance s², the standard error is ``sqrt((1/J + n_test/n_train) · s²)`` and the
    interval uses Student's t with J − 1 degrees of freedom. ``n_train``/``n_test`` are scalars or one per
    value (then the mean ratio is used); count evaluated images, not augmentation copies. With the
    correction term 0 this is the plain t interval of the mean. Fewer than 2 values give NaN bounds.
    """
    v, n_tr, n_te = _finite_with(values, n_train, n_test)
    n = len(v)
    mean = float(v.mean()) if n else math.nan
    if n < 2:
        return Interval(mean, math.nan, math.nan, math.nan, math.nan, level, n, "corrected resampled t")
    se = math.sqrt(_nb_factor(n, n_tr, n_te) * float(v.var(ddof=1)))
    half = float(st.t.ppf((1 + level) / 2, n - 1)) * se
    return Interval(mean, mean - half, mean + half, se, float(n - 1), level, n, "corrected resampled t")


def corrected_paired_t(diffs: Any, n_train: Any, n_test: Any, level: float = 0.95) -> PairedTest:
    """Corrected resampled paired t-test (Nadeau & Bengio 2003) on per-fit differences ``a - b``.

    ``diffs`` are the metric differences of two heads fitted on the same splits (one per fold × repeat).
    Returns the mean difference, its corrected t interval, ``t = mean / se`` and the two-sided p with
    J − 1 df. When every difference is equal the standard error is 0: ``t`` is ±inf (p 0) for a non-zero
    difference and NaN (p 1) for zero.
    """
    ci = corrected_resampled_t(diffs, n_train, n_test, level)
    if ci.n < 2:
        return PairedTest(ci.mean, ci.lo, ci.hi, ci.se, math.nan, math.nan, level, ci.n, "corrected paired t")
    if ci.se == 0:
        t, p = (math.nan, 1.0) if ci.mean == 0 else (math.copysign(math.inf, ci.mean), 0.0)
    else:
        t = ci.mean / ci.se
        p = float(2 * st.t.sf(abs(t), ci.df))
    return PairedTest(ci.mean, ci.lo, ci.hi, ci.se, t, p, level, ci.n, "corrected paired t")


def corrected_difference_t(
    values_a: Any,
    n_train_a: Any,
    n_test_a: Any,
    values_b: Any,
    n_train_b: Any,
    n_test_b: Any,
    level: float = 0.95,
) -> PairedTest:
    """Difference ``mean(a) - mean(b)`` of two CV experiments that do not share splits (e.g. one head under
    two protocols), each with its Nadeau–Bengio corrected variance, combined Welch-style:
    ``se = sqrt(se_a² + se_b²)`` with Welch–Satterthwaite degrees of freedom.

    An approximation: it treats the two experiments as independent although they read the same images,
    which usually makes the interval conservative. With the correction terms 0 it is Welch's t-test.
    When both experiments score the same images, a paired subject bootstrap of their out-of-fold
    predictions (``paired_cluster_bootstrap``) is the sharper comparison.
    """
    a = corrected_resampled_t(values_a, n_train_a, n_test_a, level)
    b = corrected_resampled_t(values_b, n_train_b, n_test_b, level)
    diff = a.mean - b.mean
    method = "corrected Welch t"
    if a.n < 2 or b.n < 2:
        return PairedTest(diff, math.nan, math.nan, math.nan, math.nan, math.nan, level, a.n + b.n, method)
    var = a.se**2 + b.se**2
    se = math.sqrt(var)
    if se == 0:
        t, p = (math.nan, 1.0) if diff == 0 else (math.copysign(math.inf, diff), 0.0)
        return PairedTest(diff, diff, diff, 0.0, t, p, level, a.n + b.n, method)
    df = var**2 / (a.se**4 / a.df + b.se**4 / b.df)
    t = diff / se
    half = float(st.t.ppf((1 + level) / 2, df)) * se
    return PairedTest(diff, diff - half, diff + half, se, t, float(2 * st.t.sf(abs(t), df)), level, a.n + b.n, method)


# ----------------------------------------------------------------------------------------------- metrics


def _binary(y: Any, name: str = "y") -> np.ndarray:
    a = np.asarray(y)
    if a.dtype == bool:
        return a.astype(np.int64)
    if a.size and not np.all(np.isin(a, (0, 1))):
        raise FusionfeatError(f"{name} must hold 1 for the positive class and 0 otherwise; got {np.unique(a)[:5]}")
    return a.astype(np.int64)


def _scores(p: Any, n: int, name: str = "p") -> np.ndarray:
    a = np.asarray(p, dtype=float).reshape(-1)
    if len(a) != n:
        raise FusionfeatError(f"{name} has {len(a)} values for {n} labels")
    if not np.all(np.isfinite(a)):
        raise FusionfeatError(f"{name} holds NaN or infinite values: score only rows that were predicted")
    return a


def _score_rows(p: Any, n: int, name: str = "p") -> np.ndarray:
    """Scores as a ``(repeats, n)`` matrix: one row for a 1-D ``p``, one row per CV repeat for a 2-D one."""
    a = np.asarray(p, dtype=float)
    if a.ndim > 2:
        raise FusionfeatError(f"{name} must be 1-D (one score per image) or 2-D (repeats, images); got {a.shape}")
    a = a.reshape(1, -1) if a.ndim < 2 else a
    for row in a:
        _scores(row, n, name)
    return a


def _over_repeats(fn: Metric, y: np.ndarray, p: np.ndarray, idx: np.ndarray | None = None) -> float:
    """``fn`` on the rows ``idx`` of every repeat's scores, averaged over repeats (NaN if any is NaN)."""
    if idx is None:
        return float(np.mean([fn(y, row) for row in p]))
    return float(np.mean([fn(y[idx], row[idx]) for row in p]))


def roc_auc(y: Any, p: Any) -> float:
    """ROC AUC by the rank (Mann–Whitney) formula, ties counted half; NaN when a class is missing."""
    y = _binary(y)
    p = _scores(p, len(y))
    n_pos = int(y.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = st.rankdata(p)
    return float((ranks[y == 1].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _counts(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[int, int, int, int]:
    pred = p >= threshold
    t = y == 1
    return int(np.sum(t & pred)), int(np.sum(~t & ~pred)), int(np.sum(~t & pred)), int(np.sum(t & ~pred))


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else math.nan


THRESHOLDED: tuple[str, ...] = (
    "accuracy", "precision", "recall", "sensitivity", "specificity", "f1", "balanced_accuracy", "mcc"
)


def _from_counts(name: str, tp: float, tn: float, fp: float, fn: float) -> float:
    sens, spec = _ratio(tp, tp + fn), _ratio(tn, tn + fp)
    if name == "accuracy":
        return _ratio(tp + tn, tp + tn + fp + fn)
    if name == "precision":
        return _ratio(tp, tp + fp)
    if name in ("recall", "sensitivity"):
        return sens
    if name == "specificity":
        return spec
    if name == "f1":
        return _ratio(2 * tp, 2 * tp + fp + fn)
    if name == "balanced_accuracy":
        return (sens + spec) / 2
    den = math.sqrt(float(tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return _ratio(tp * tn - fp * fn, den)


def pooled_metric(name: str, threshold: float = 0.5) -> Metric:
    """A pooled metric of ``(y, p)`` by name: ``roc_auc``, ``brier``, ``ece`` or a thresholded one
    (``accuracy``, ``precision``, ``recall``/``sensitivity``, ``specificity``, ``f1``, ``balanced_accuracy``,
    ``mcc``) computed at ``p >= threshold``. Undefined values (an empty denominator) are NaN, so the
    bootstrap skips them."""
    if name == "roc_auc":
        return roc_auc
    if name == "brier":
        return brier
    if name == "ece":
        return expected_calibration_error
    if name not in THRESHOLDED:
        raise FusionfeatError(
            f"unknown metric {name!r}; choose roc_auc, brier, ece or one of {', '.join(THRESHOLDED)}"
        )

    def metric(y: np.ndarray, p: np.ndarray) -> float:
        return _from_counts(name, *_counts(_binary(y), np.asarray(p, dtype=float), threshold))

    return metric


def _metric(metric: str | Metric) -> Metric:
    return pooled_metric(metric) if isinstance(metric, str) else metric


class _Weighted:
    """A named metric of fixed ``(y, p)`` as a function of per-row multiplicities ``w``: a bootstrap
    resample in O(n) instead of re-ranking it (same value as the metric on the repeated rows)."""

    def __init__(self, name: str, y: np.ndarray, p: np.ndarray, threshold: float = 0.5):
        self.name = name
        self.y = y
        self.p = p
        order = np.argsort(p, kind="stable")
        self.order = order
        self.pos_sorted = y[order] == 1
        self.tie = np.concatenate([[0], np.cumsum(np.diff(p[order]) != 0)])  # tie-group id in sorted order
        self.n_ties = int(self.tie[-1]) + 1 if len(p) else 0
        pred = p >= threshold
        self.cells = np.stack([(y == 1) & pred, (y == 0) & ~pred, (y == 0) & pred, (y == 1) & ~pred]).astype(float)

    def __call__(self, w: np.ndarray) -> float:
        if self.name == "brier":
            return float(np.sum(w * (self.p - self.y) ** 2) / np.sum(w))
        if self.name != "roc_auc":
            return _from_counts(self.name, *(self.cells @ w).tolist())  # tp, tn, fp, fn
        ws = w[self.order].astype(float)
        wp = np.bincount(self.tie, weights=ws * self.pos_sorted, minlength=self.n_ties)
        wn = np.bincount(self.tie, weights=ws * ~self.pos_sorted, minlength=self.n_ties)
        n_pos, n_neg = wp.sum(), wn.sum()
        if n_pos == 0 or n_neg == 0:
            return math.nan
        below = np.cumsum(wn) - wn
        return float(np.sum(wp * (below + 0.5 * wn)) / (n_pos * n_neg))


def _resampled(metric: str | Metric, y: np.ndarray, p: np.ndarray) -> Callable[[np.ndarray], float]:
    """The statistic of one resample (row indices, with repetition), averaged over the rows of ``p``."""
    if isinstance(metric, str) and metric in ("roc_auc", "brier") + THRESHOLDED:
        scorers = [_Weighted(metric, y, row) for row in p]
        n = len(y)
        return lambda idx: float(np.mean([s(np.bincount(idx, minlength=n)) for s in scorers]))
    fn = _metric(metric)
    return lambda idx: _over_repeats(fn, y, p, idx)


# ----------------------------------------------------------------------------------------------- bootstrap


class _Clusters:
    """Rows grouped by subject (first-appearance order), so one resample is a vector of row indices."""

    def __init__(self, n: int, groups: Any):
        g = None if groups is None else np.asarray(groups).astype(str).reshape(-1)
        if g is not None and len(g) != n:
            raise FusionfeatError(f"groups has {len(g)} entries for {n} rows")
        if g is None or not np.any(g != ""):
            self.unit = "image"
            self.order = np.arange(n)
            self.starts = np.arange(n)
            self.sizes = np.ones(n, dtype=np.int64)
            return
        self.unit = "subject"
        keys = np.where(g == "", np.char.add("\0row-", np.arange(n).astype(str)), g)
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        rank = np.empty(len(first), dtype=np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        cluster = rank[inverse]  # cluster id in order of first appearance
        self.order = np.argsort(cluster, kind="stable")
        self.sizes = np.bincount(cluster)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)[:-1]])

    def __len__(self) -> int:
        return len(self.sizes)

    def rows(self, picked: np.ndarray) -> np.ndarray:
        """Row indices of the picked clusters, with repetition."""
        sizes = self.sizes[picked]
        offsets = np.repeat(np.cumsum(sizes) - sizes, sizes)
        within = np.arange(int(sizes.sum())) - offsets
        return self.order[np.repeat(self.starts[picked], sizes) + within]

    def without(self, c: int) -> np.ndarray:
        """Row indices of every cluster but ``c`` (for the jackknife)."""
        keep = np.ones(len(self), dtype=bool)
        keep[c] = False
        return self.rows(np.flatnonzero(keep))


def _quantiles(boot: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def _bca(boot: np.ndarray, estimate: float, jack: np.ndarray, level: float) -> tuple[float, float]:
    """Efron's bias-corrected and accelerated percentile bounds."""
    jack = jack[np.isfinite(jack)]
    prop = (np.sum(boot < estimate) + 0.5 * np.sum(boot == estimate)) / len(boot)
    if prop <= 0 or prop >= 1 or len(jack) < 3:
        return math.nan, math.nan
    z0 = st.norm.ppf(prop)
    d = jack.mean() - jack
    den = 6 * float(np.sum(d**2)) ** 1.5
    a = float(np.sum(d**3)) / den if den else 0.0
    out = []
    for q in ((1 - level) / 2, (1 + level) / 2):
        z = st.norm.ppf(q)
        out.append(float(np.quantile(boot, st.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))))))
    return out[0], out[1]


def _boot_stats(
    n: int, groups: Any, stat: Callable[[np.ndarray], float], n_boot: int, seed: int
) -> tuple[_Clusters, np.ndarray]:
    clusters = _Clusters(n, groups)
    if n_boot < 1:
        raise FusionfeatError(f"n_boot must be 1 or more, got {n_boot}")
    rng = np.random.default_rng(seed)
    k = len(clusters)
    boot = np.array([stat(clusters.rows(rng.integers(0, k, k))) for _ in range(n_boot)], dtype=float)
    return clusters, boot


def cluster_bootstrap(
    y: Any,
    p: Any,
    groups: Any,
    metric: str | Metric,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
    method: str = "percentile",
) -> BootstrapResult:
    """Bootstrap interval of a pooled metric, resampling subjects (clusters) when any subject id is known.

    Each resample draws as many subjects as there are, with replacement, and keeps all their images
    (Field & Welsh 2007); with no subject ids (``groups`` None or all ``""``) images are resampled instead
    (Efron & Tibshirani 1993), and with one image per subject the two coincide draw for draw. ``metric`` is
    a name (see ``pooled_metric``) or a callable ``(y, p) -> float``. ``p`` may be 2-D ``(repeats, n)``
    (``CVResult.oof[head]``): the statistic is then the mean over repeats of the pooled metric, each
    resample drawing the same subjects for every repeat. Resamples where the metric is
    undefined (NaN, e.g. AUC of a single class) are skipped and counted in ``n_skipped``. ``method`` is
    ``"percentile"`` or ``"bca"`` (bias-corrected and accelerated, jackknife over the same units).
    """
    y = _binary(y)
    p = _score_rows(p, len(y))
    fn = _metric(metric)
    if method not in ("percentile", "bca"):
        raise FusionfeatError(f"bootstrap method must be 'percentile' or 'bca', got {method!r}")
    estimate = _over_repeats(fn, y, p)
    stat = _resampled(metric, y, p)
    clusters, boot = _boot_stats(len(y), groups, stat, n_boot, seed)
    ok = boot[np.isfinite(boot)]
    skipped = n_boot - len(ok)
    if len(ok) < 2:
        return BootstrapResult(estimate, math.nan, math.nan, math.nan, level, method, clusters.unit,
                               len(clusters), n_boot, skipped)
    if method == "bca":
        jack = np.array([stat(idx) for idx in map(clusters.without, range(len(clusters)))])
        lo, hi = _bca(ok, estimate, jack, level)
    else:
        lo, hi = _quantiles(ok, level)
    return BootstrapResult(estimate, lo, hi, float(ok.std(ddof=1)), level, method, clusters.unit,
                           len(clusters), n_boot, skipped)


def paired_cluster_bootstrap(
    y: Any,
    p_a: Any,
    p_b: Any,
    groups: Any,
    metric: str | Metric,
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> BootstrapResult:
    """Paired bootstrap of ``metric(a) - metric(b)`` on the same resampled subjects (or images).

    Both heads are scored on every resample, so their correlation is kept; ``p_a``/``p_b`` may be 2-D
    ``(repeats, n)`` as in ``cluster_bootstrap``. The interval is the percentile
    interval of the differences. The two-sided p-value is proportion-based:
    ``p = min(1, 2 · min(#{d* <= 0} + 1, #{d* >= 0} + 1) / (B + 1))`` over the B valid resamples, i.e. about
    the smallest 1 − level at which the percentile interval excludes 0 (never exactly 0, so at best
    ``2 / (B + 1)``: use enough resamples for the p you need to resolve).
    """
    y = _binary(y)
    p_a = _score_rows(p_a, len(y), "p_a")
    p_b = _score_rows(p_b, len(y), "p_b")
    fn = _metric(metric)
    estimate = _over_repeats(fn, y, p_a) - _over_repeats(fn, y, p_b)
    stat_a, stat_b = _resampled(metric, y, p_a), _resampled(metric, y, p_b)
    clusters, boot = _boot_stats(len(y), groups, lambda idx: stat_a(idx) - stat_b(idx), n_boot, seed)
    ok = boot[np.isfinite(boot)]
    skipped = n_boot - len(ok)
    if len(ok) < 2:
        return BootstrapResult(estimate, math.nan, math.nan, math.nan, level, "paired percentile",
                               clusters.unit, len(clusters), n_boot, skipped)
    lo, hi = _quantiles(ok, level)
    b = len(ok)
    pval = min(1.0, 2 * min(np.sum(ok <= 0) + 1, np.sum(ok >= 0) + 1) / (b + 1))
    return BootstrapResult(estimate, lo, hi, float(ok.std(ddof=1)), level, "paired percentile", clusters.unit,
                           len(clusters), n_boot, skipped, float(pval))


# ----------------------------------------------------------------------------------------------- DeLong


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
    y = _binary(y)
    a = _scores(p_a, len(y), "p_a")
    b = _scores(p_b, len(y), "p_b")
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
    y = _binary(y)
    p = _scores(p, len(y))
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


# ----------------------------------------------------------------------------------------------- multiplicity


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, in the input order; NaNs stay NaN and are not counted.

    Sorted ascending, the i-th smallest (0-based) of m p-values becomes ``max_{j<=i} min(1, (m - j) p_(j))``.
    """
    p = np.asarray(pvalues, dtype=float).reshape(-1)
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(~np.isnan(p))
    if len(idx) == 0:
        return out
    if np.any((p[idx] < 0) | (p[idx] > 1)):
        raise FusionfeatError("p-values must lie in [0, 1]")
    order = idx[np.argsort(p[idx], kind="stable")]
    m = len(order)
    scaled = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(scaled)
    return out


# ----------------------------------------------------------------------------------------------- calibration


def brier(y: Any, p: Any) -> float:
    """Brier (1950) score: mean squared difference between P(positive) and the 0/1 outcome."""
    y = _binary(y)
    p = _scores(p, len(y))
    return float(np.mean((p - y) ** 2)) if len(y) else math.nan


def _bin_ids(p: np.ndarray, n_bins: int, strategy: str) -> np.ndarray:
    if n_bins < 1:
        raise FusionfeatError(f"n_bins must be 1 or more, got {n_bins}")
    if np.any((p < 0) | (p > 1)):
        raise FusionfeatError("calibration needs probabilities in [0, 1]")
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    elif strategy == "quantile":
        edges = np.percentile(p, np.linspace(0, 100, n_bins + 1))
    else:
        raise FusionfeatError(f"calibration strategy must be 'uniform' or 'quantile', got {strategy!r}")
    return np.searchsorted(edges[1:-1], p)  # bin i holds (edge_i, edge_i+1]; the first also holds 0


def reliability_curve(
    y: Any, p: Any, n_bins: int = 10, strategy: str = "uniform"
) -> dict[str, np.ndarray]:
    """Reliability diagram data per non-empty bin: ``prob_true`` (observed fraction positive),
    ``prob_pred`` (mean predicted probability) and ``count``; the bins of ``sklearn.calibration_curve``."""
    y = _binary(y)
    p = _scores(p, len(y))
    ids = _bin_ids(p, n_bins, strategy)
    total = np.bincount(ids, minlength=n_bins)
    keep = total > 0
    return {
        "prob_true": np.bincount(ids, weights=y, minlength=n_bins)[keep] / total[keep],
        "prob_pred": np.bincount(ids, weights=p, minlength=n_bins)[keep] / total[keep],
        "count": total[keep],
    }


def expected_calibration_error(y: Any, p: Any, n_bins: int = 10, strategy: str = "uniform") -> float:
    """Expected calibration error (Naeini et al. 2015): ``sum_b n_b/N · |observed_b - predicted_b|``
    over the reliability bins (equal-width on [0, 1] by default, or equal-count with ``"quantile"``)."""
    curve = reliability_curve(y, p, n_bins, strategy)
    n = curve["count"].sum()
    if n == 0:
        return math.nan
    return float(np.sum(curve["count"] * np.abs(curve["prob_true"] - curve["prob_pred"])) / n)


# ----------------------------------------------------------------------------------------------- subjects

AGGREGATIONS: tuple[str, ...] = ("mean", "median", "fraction")


@dataclass(frozen=True)
class SubjectScores:
    """One row per subject, in order of first appearance: id, 0/1 label, aggregated score, image count.

    ``n_unassigned`` images had no subject id and were left out.
    """

    subject: np.ndarray
    label: np.ndarray
    score: np.ndarray
    n_images: np.ndarray
    how: str
    n_unassigned: int


def aggregate_by_subject(
    p: Any, groups: Any, y: Any, how: str = "mean", threshold: float = 0.5
) -> SubjectScores:
    """Aggregate cell probabilities per subject for a subject-level diagnosis.

    ``how``: ``"mean"`` (mean probability, the default), ``"median"``, or ``"fraction"`` (fraction of the
    subject's cells with ``p >= threshold``). Images without a subject id (``""``) are left out and counted.
    A subject whose cells carry different labels cannot be diagnosed and is refused.
    """
    if how not in AGGREGATIONS:
        raise FusionfeatError(f"unknown subject aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
    y = _binary(y)
    p = _scores(p, len(y))
    g = np.asarray(groups).astype(str).reshape(-1)
    if len(g) != len(y):
        raise FusionfeatError(f"groups has {len(g)} entries for {len(y)} rows")
    known = g != ""
    if not known.any():
        raise FusionfeatError("subject-level diagnosis needs subject ids, and no image has one")
    g, p, y = g[known], p[known], y[known]
    subjects, first, inverse = np.unique(g, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    labels, scores, counts = [], [], []
    for s in order:
        rows = inverse == s
        ys = np.unique(y[rows])
        if len(ys) > 1:
            raise FusionfeatError(
                f"subject {str(subjects[s])!r} has cells of both classes; a subject-level diagnosis needs one "
                "label per subject: fix the group column of the manifest, or skip the subject-level analysis"
            )
        ps = p[rows]
        score = {"mean": np.mean, "median": np.median}.get(how, lambda v: np.mean(v >= threshold))(ps)
        labels.append(int(ys[0]))
        scores.append(float(score))
        counts.append(int(rows.sum()))
    return SubjectScores(
        subject=subjects[order],
        label=np.asarray(labels, dtype=np.int64),
        score=np.asarray(scores, dtype=float),
        n_images=np.asarray(counts, dtype=np.int64),
        how=how,
        n_unassigned=int((~known).sum()),
    )


# ----------------------------------------------------------------------------------------------- operating points


def threshold_for(y: Any, p: Any, sens: float | None = None, spec: float | None = None) -> float:
    """The decision threshold (positive iff ``p >= threshold``) for a target sensitivity or specificity.

    Pick it on training (inner out-of-fold) predictions, never on the test fold. With ``sens``: the largest
    threshold whose sensitivity is at least ``sens`` (the most specific such; a positive's score). With
    ``spec``: the smallest threshold whose specificity is at least ``spec`` (the most sensitive such; the
    smallest observed score above the negatives it must exclude, or just above the largest score when it
    must exclude them all). Give exactly one target, in (0, 1].
    """
    if (sens is None) == (spec is None):
        raise FusionfeatError("give exactly one operating-point target: sens=... or spec=...")
    target = float(sens if sens is not None else spec)  # type: ignore[arg-type]
    if not 0 < target <= 1:
        raise FusionfeatError(f"operating-point target must be in (0, 1], got {target}")
    y = _binary(y)
    p = _scores(p, len(y))
    cls = 1 if sens is not None else 0
    own = np.sort(p[y == cls])
    if len(own) == 0:
        raise FusionfeatError(
            f"cannot pick a threshold for {'sensitivity' if cls else 'specificity'}: no "
            f"{'positive' if cls else 'negative'} examples among the training predictions"
        )
    k = math.ceil(target * len(own) - 1e-9)  # how many of that class must fall on their correct side
    if sens is not None:
        return float(own[::-1][k - 1])
    below = own[k - 1]  # every negative <= this must be predicted negative
    above = p[p > below]
    return float(above.min()) if len(above) else float(np.nextafter(below, np.inf))


def rates_at(y: Any, p: Any, threshold: float) -> dict[str, float]:
    """Sensitivity and specificity at ``p >= threshold`` (NaN where a class is absent)."""
    y = _binary(y)
    tp, tn, fp, fn = _counts(y, _scores(p, len(y)), threshold)
    return {"threshold": float(threshold), "sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp)}
