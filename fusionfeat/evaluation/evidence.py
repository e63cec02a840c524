"""The statistics of a cross-validation run, as plain JSON for ``metrics.json`` and the report.

Per head and metric: the per-fold mean ± sd, the Nadeau–Bengio corrected resampled t interval over
folds × repeats, and the pooled out-of-fold value (per repeat, then averaged) with a subject (or image)
bootstrap interval. Between heads: corrected paired t on per-fold values and a paired bootstrap (or DeLong)
on pooled AUC, and the "does fusion help?" table with Holm-adjusted p (per column, and over the whole table).
At the edges (a value at 0 or 1, a zero-width interval, a tiny n) an exact interval beside the degenerate one,
and comparisons that cannot be measured flagged. When subjects are known and the folds keep them apart: the
subject-level diagnosis. Always: calibration (Brier, ECE with its interval and the ECE of a perfectly calibrated
model, calibration slope and intercept, reliability curve) and the heads' weights flags.
Every statistic comes from ``fusionfeat.stats``; see ``docs/protocols.md``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn import metrics as skm

from fusionfeat import stats
from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluation.cv import CVResult
from fusionfeat.evaluation.metrics import METRICS

N_BOOT = 2000
ECE_BINS = 10


def analyse(result: CVResult, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Everything below for a run: ``{"heads": {head: {...}}, "comparisons": ..., "subjects": ...}``."""
    heads = {
        head: {
            "weights": weights_flags(result, head),
            "uncertainty": uncertainty(result, head, n_boot, seed),
            "calibration": calibration(result, head, n_boot=n_boot, seed=seed),
            "operating_point": operating_point(result, head),
        }
        for head in result.heads
    }
    return {
        "heads": heads,
        "comparisons": comparisons(result, heads, n_boot, seed),
        "subjects": subject_level(result, n_boot, seed),
    }


# ----------------------------------------------------------------------------------------------- helpers


def positives(result: CVResult) -> np.ndarray:
    """0/1 truth of the evaluation rows (1 = the positive class, whatever its index)."""
    return (np.asarray(result.rows["label"]) == result.classes.index(result.positive)).astype(int)


def subjects_known(result: CVResult) -> bool:
    """Whether any evaluation row has a subject id."""
    return bool(np.any(np.asarray(result.rows["group"]).astype(str) != ""))


def bootstrap_groups(result: CVResult) -> tuple[np.ndarray | None, str]:
    """Clusters for the bootstrap and their name: subjects when known; else source images when rows repeat
    an image (the paper's copies); else none (images resampled)."""
    if subjects_known(result):
        return np.asarray(result.rows["group"]).astype(str), "subjects"
    sample = np.asarray(result.rows["sample"])
    if len(np.unique(sample)) < len(sample):
        return np.char.add("image-", sample.astype(str)), "images (copies of an image kept together)"
    return None, "images"


def pooled_value(name: str, y: np.ndarray, p: np.ndarray, hard: np.ndarray) -> float:
    """A pooled out-of-fold metric of one repeat: AUC from the probabilities (scikit-learn's
    ``roc_auc_score``), the others from the hard predictions (1.0 = predicted positive)."""
    if name == "roc_auc":
        return float(skm.roc_auc_score(y, p)) if 0 < y.sum() < len(y) else math.nan
    return stats.pooled_metric(name)(y, hard)


def _per_fold(values: np.ndarray) -> dict[str, Any]:
    v = values[np.isfinite(values)]
    return {
        "mean": float(v.mean()) if len(v) else math.nan,
        "sd": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
        "n": int(len(v)),
    }


def fold_sizes(result: CVResult, head: str) -> tuple[np.ndarray, np.ndarray]:
    """Per fit: evaluated images in training (no augmentation copies) and in the test fold."""
    folds = result.fold_results(head)
    n_train = [f.n_train_images if f.n_train_images is not None else f.n_train for f in folds]
    return np.asarray(n_train, dtype=float), np.asarray([f.n_test for f in folds], dtype=float)


# ----------------------------------------------------------------------------------------------- per head


def uncertainty(result: CVResult, head: str, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """metric -> ``per_fold`` (mean, sd, n), ``corrected_t`` (Nadeau–Bengio interval over folds × repeats),
    ``pooled`` (per repeat, their mean, and a cluster-bootstrap interval of that mean)."""
    y = positives(result)
    folds = result.fold_results(head)
    n_train, n_test = fold_sizes(result, head)
    groups, unit = bootstrap_groups(result)
    p, hard = result.oof[head], result.oof_pred[head]
    out = {}
    for name in METRICS:
        values = np.asarray([f.metrics.get(name, math.nan) for f in folds], dtype=float)
        per_repeat = [pooled_value(name, y, p[r], hard[r]) for r in range(p.shape[0])]
        boot = stats.cluster_bootstrap(y, p if name == "roc_auc" else hard, groups, name, n_boot=n_boot, seed=seed)
        per_fold = _per_fold(values)
        corrected = stats.corrected_resampled_t(values, n_train, n_test).to_dict()
        pooled_mean = float(np.mean(per_repeat))
        exact = edge_interval(name, y, hard, groups, corrected["lo"], corrected["hi"], per_fold["mean"], tiny=False)
        if exact:
            corrected["exact"] = exact
        out[name] = {
            "per_fold": per_fold,
            "corrected_t": corrected,
            "pooled": {
                "per_repeat": per_repeat,
                "mean": pooled_mean,
                "bootstrap": {**boot.to_dict(), "resampled": unit},
            },
        }
        exact = edge_interval(name, y, hard, groups, boot.lo, boot.hi, pooled_mean, tiny=groups is None)
        if exact:
            out[name]["pooled"]["exact"] = exact
    return out


def edge_interval(
    name: str, y: np.ndarray, hard: np.ndarray, groups: np.ndarray | None, lo: float | None, hi: float | None,
    estimate: float, tiny: bool = True,
) -> dict[str, Any] | None:
    """The exact interval that replaces ``[lo, hi]`` at the edges (None when it is not needed or not defined):
    when the estimate sits at the metric's ceiling or floor, when the interval is missing or of zero width, or
    (``tiny``: rows are the units) when a proportion's denominator holds fewer than ``stats.TINY`` units.

    Counts come from the hard predictions ``hard`` (``(repeats, n)``, averaged over repeats and rounded); with
    ``groups`` each subject counts once per confusion cell (``stats.counts_of``). ``edge`` names the ceiling or
    floor, if any."""
    if name not in stats.EXACT_METRICS or not math.isfinite(estimate):
        return None
    per_repeat = [stats.counts_of(y, row, groups) for row in np.atleast_2d(hard)]
    counts = stats.Counts(*(int(round(np.mean([getattr(c, f) for c in per_repeat]))) for f in ("tp", "tn", "fp", "fn")))
    edge = stats.at_edge(estimate, name)
    exact = stats.exact_interval(name, counts, estimate)
    if exact is None:
        return None
    small = tiny and min(n for _, n in exact.parts) < stats.TINY
    if not (edge or stats.degenerate(lo, hi) or small):
        return None
    return {**exact.to_dict(), "edge": edge}


def calibration(
    result: CVResult, head: str, n_bins: int = ECE_BINS, n_boot: int = N_BOOT, seed: int = 0
) -> dict[str, Any]:
    """Brier score and ECE of the pooled out-of-fold probabilities (per repeat, averaged), and the
    reliability curve of all repeats' rows together; the ECE's bootstrap interval (resampling the units of the
    other intervals), the ECE a perfectly calibrated model scores on the same predictions
    (``stats.ece_if_calibrated``), and the calibration intercept and slope with bootstrap intervals."""
    y = positives(result)
    p = result.oof[head]
    groups, unit = bootstrap_groups(result)
    curve = stats.reliability_curve(np.tile(y, p.shape[0]), p.reshape(-1), n_bins)
    ece_boot = stats.cluster_bootstrap(y, p, groups, lambda yy, pp: stats.expected_calibration_error(yy, pp, n_bins),
                                       n_boot=n_boot, seed=seed)
    return {
        "brier": float(np.mean([stats.brier(y, row) for row in p])),
        "ece": float(np.mean([stats.expected_calibration_error(y, row, n_bins) for row in p])),
        "n_bins": n_bins,
        "reliability": {k: v.tolist() for k, v in curve.items()},
        "calibrated": result.options.get("calibrate"),
        "ece_bootstrap": {**ece_boot.to_dict(), "resampled": unit},
        "ece_if_calibrated": stats.ece_if_calibrated(p, n_bins, seed=seed),
        "recalibration": {**stats.recalibration_bootstrap(y, p, groups, n_boot=n_boot, seed=seed), "resampled": unit},
    }


def operating_point(result: CVResult, head: str) -> dict[str, Any] | None:
    """With ``--operating-point``: the per-fold thresholds and inner rates, and the test rates at them."""
    target = result.options.get("operating_target")
    if not target:
        return None
    folds = result.fold_results(head)
    thresholds = np.asarray([f.threshold for f in folds], dtype=float)
    inner = [f.inner_rates or {} for f in folds]
    return {
        "target": target,
        "threshold": _per_fold(thresholds),
        "inner_sensitivity": _per_fold(np.asarray([r.get("sensitivity", math.nan) for r in inner], dtype=float)),
        "inner_specificity": _per_fold(np.asarray([r.get("specificity", math.nan) for r in inner], dtype=float)),
        "test_sensitivity": _per_fold(np.asarray([f.metrics["recall"] for f in folds], dtype=float)),
        "test_specificity": _per_fold(np.asarray([f.metrics["specificity"] for f in folds], dtype=float)),
    }


def weights_flag(attrs: dict[str, Any]) -> str:
    """IMAGENET, FILE <sha256[:12]>, RANDOM or UNKNOWN for one backbone's stored weights."""
    kind = str(attrs.get("weights_kind", ""))
    if kind == "random":
        return "RANDOM"
    if kind == "imagenet":
        return "IMAGENET"
    if kind == "file":
        return f"FILE {str(attrs.get('weights_sha256', '') or '?')[:12]}"
    return "UNKNOWN"


def weights_flags(result: CVResult, head: str) -> dict[str, str]:
    """backbone -> weights flag, for the backbones this head reads."""
    backbones = result.provenance.get("backbones", {}) or {}
    return {b: weights_flag(backbones.get(b, {}) or {}) for b in result.head_info[head]["backbones"]}


# ----------------------------------------------------------------------------------------------- comparisons


def compare(result: CVResult, a: str, b: str, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Head ``a`` minus head ``b`` on the same splits: corrected paired t on per-fold ROC AUC (paired by
    repeat and fold), and on pooled OOF AUC a paired cluster bootstrap (DeLong when subjects are unknown,
    images are distinct and there is one repeat)."""
    fa = {(f.repeat, f.fold): f for f in result.fold_results(a)}
    fb = {(f.repeat, f.fold): f for f in result.fold_results(b)}
    keys = sorted(set(fa) & set(fb))
    diffs = np.asarray([fa[k].metrics["roc_auc"] - fb[k].metrics["roc_auc"] for k in keys], dtype=float)
    n_train = np.asarray([fa[k].n_train_images or fa[k].n_train for k in keys], dtype=float)
    n_test = np.asarray([fa[k].n_test for k in keys], dtype=float)
    y = positives(result)
    groups, unit = bootstrap_groups(result)
    pa, pb = result.oof[a], result.oof[b]
    pooled: dict[str, Any]
    if groups is None and pa.shape[0] == 1 and min(y.sum(), len(y) - y.sum()) >= 2:
        d = stats.delong_test(y, pa[0], pb[0])
        pooled = {"method": "DeLong", "diff": d.diff, "lo": d.lo, "hi": d.hi, "p": d.p, "se": d.se}
    else:
        boot = stats.paired_cluster_bootstrap(y, pa, pb, groups, "roc_auc", n_boot=n_boot, seed=seed)
        pooled = {"method": f"paired bootstrap over {unit}", "diff": boot.estimate, "lo": boot.lo, "hi": boot.hi,
                  "p": boot.p, "se": boot.se, "n_boot": boot.n_boot, "n_skipped": boot.n_skipped}
    per_fold = stats.corrected_paired_t(diffs, n_train, n_test).to_dict()
    mean_a = float(np.nanmean([fa[k].metrics["roc_auc"] for k in keys])) if keys else math.nan
    mean_b = float(np.nanmean([fb[k].metrics["roc_auc"] for k in keys])) if keys else math.nan
    per_fold["edge"] = stats.unmeasurable(mean_a, mean_b, per_fold, "roc_auc")
    pooled["edge"] = stats.unmeasurable(_pooled_auc(y, pa), _pooled_auc(y, pb), pooled, "roc_auc")
    return {
        "a": a,
        "b": b,
        "metric": "roc_auc",
        "per_fold": per_fold,
        "pooled": pooled,
    }


def _pooled_auc(y: np.ndarray, p: np.ndarray) -> float:
    """Pooled out-of-fold ROC AUC averaged over repeats (NaN with one class)."""
    return float(np.mean([pooled_value("roc_auc", y, row, row) for row in p]))


TESTS = ("per_fold", "pooled")


def holm_family(rows: list[dict[str, Any]]) -> None:
    """Holm-adjust every p-value a comparison table shows (all rows × both tests) as one family, in place:
    ``p_holm_family`` beside each ``p``. A test whose difference cannot be measured (``edge``) shows no p and is
    left out of the family."""
    ps = [r[key]["p"] if not r[key].get("edge") else math.nan for r in rows for key in TESTS]
    adjusted = stats.holm(ps) if ps else []
    for i, q in enumerate(adjusted):
        rows[i // len(TESTS)][TESTS[i % len(TESTS)]]["p_holm_family"] = float(q)


def is_fusion(result: CVResult, head: str) -> bool:
    """A head that reads two or more backbones."""
    return len(result.head_info[head]["backbones"]) >= 2


def comparisons(
    result: CVResult, analysed: dict[str, Any], n_boot: int = N_BOOT, seed: int = 0
) -> dict[str, Any]:
    """Every pair of heads (AUC), and the "does fusion help?" table with Holm-adjusted p-values."""
    heads = result.heads
    pairs = [compare(result, a, b, n_boot, seed) for i, a in enumerate(heads) for b in heads[i + 1 :]]
    pooled_auc = {h: analysed[h]["uncertainty"]["roc_auc"]["pooled"]["mean"] for h in heads}
    singles = [h for h in heads if not is_fusion(result, h) and math.isfinite(pooled_auc[h])]
    best = max(singles, key=lambda h: pooled_auc[h]) if singles else None
    rows = []
    for head in heads:
        if not is_fusion(result, head):
            continue
        for ref, role in (("concat", "concat"), (best, "best single backbone")):
            if ref is None or ref == head or ref not in heads:
                continue
            rows.append({"head": head, "against": ref, "role": role, **compare(result, head, ref, n_boot, seed)})
    for key in TESTS:  # per column (kept for older readers); the report shows the family-wise p_holm_family
        adjusted = stats.holm([r[key]["p"] for r in rows]) if rows else []
        for r, q in zip(rows, adjusted, strict=True):
            r[key]["p_holm"] = float(q)
    holm_family(rows)
    holm_family(pairs)
    return {"pairs": pairs, "best_single": best, "fusion_table": rows}


# ----------------------------------------------------------------------------------------------- subjects


def subject_level(result: CVResult, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any] | None:
    """Subject-level diagnosis (None when no subject is known; ``{"left_out": why}`` when the folds are not
    subject-disjoint, ``{"skipped": why}`` when a subject has cells of both classes): per head, each subject's
    aggregated score
    per repeat, the metrics on those scores (per repeat, averaged, with a bootstrap over subjects), the
    confusion matrix at 0.5 (summed over repeats) and ROC points per repeat.

    Only original images (view 0) are aggregated: under ``--cv paper`` the scored rotated/mirrored copies are
    not extra cells of the subject."""
    if not subjects_known(result):
        return None
    how = result.options.get("subject_aggregate", "mean")
    if not subject_disjoint(result):
        originals = np.asarray(result.rows["view"]) == 0
        try:  # a data problem (a subject with cells of both classes) is said first
            stats.aggregate_by_subject(result.oof[result.heads[0]][0][originals],
                                       np.asarray(result.rows["group"]).astype(str)[originals],
                                       positives(result)[originals], how)
        except FusionfeatError as err:
            return {"aggregate": how, "skipped": str(err)}
        return {"aggregate": how, "left_out": IMAGE_LEVEL_SUBJECTS}
    return subject_scores(result, how, n_boot, seed)


IMAGE_LEVEL_SUBJECTS = ("the folds are not subject-disjoint: under image-level folds a subject's other cells sit "
                        "in training, so a subject-level result would score subjects the model has partly seen")


def subject_disjoint(result: CVResult) -> bool:
    """Whether, in every repeat, each subject's evaluated rows all lie in one test fold (grouped folds, or
    predefined folds that keep subjects apart): only then is a subject scored by models that never saw it."""
    groups = np.asarray(result.rows["group"]).astype(str)
    known = groups != ""
    for folds in np.atleast_2d(result.test_fold):
        pairs = np.unique(np.stack([groups[known], folds[known].astype(str)]), axis=1)
        if len(np.unique(pairs[0])) < pairs.shape[1]:
            return False
    return True


def subject_scores(result: CVResult, how: str, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """The subject-level diagnosis itself (``subject_level`` checks first that the folds allow it)."""
    originals = np.asarray(result.rows["view"]) == 0
    y = positives(result)[originals]
    groups = np.asarray(result.rows["group"]).astype(str)[originals]
    out: dict[str, Any] = {"aggregate": how, "threshold": 0.5, "heads": {}}
    for head in result.heads:
        try:
            per_repeat = [stats.aggregate_by_subject(row[originals], groups, y, how) for row in result.oof[head]]
        except FusionfeatError as err:  # e.g. a subject with cells of both classes: say so, keep the run
            return {"aggregate": how, "skipped": str(err)}
        first = per_repeat[0]
        scores = np.vstack([s.score for s in per_repeat])
        label = first.label
        hard = (scores >= 0.5).astype(float)
        metrics = {}
        for name in METRICS:
            values = [pooled_value(name, label, scores[r], hard[r]) for r in range(len(scores))]
            boot = stats.cluster_bootstrap(label, scores if name == "roc_auc" else hard, None, name,
                                           n_boot=n_boot, seed=seed)
            # one row per subject here, so resampling rows is resampling subjects
            metrics[name] = {"per_repeat": values, "mean": float(np.mean(values)),
                             "bootstrap": {**boot.to_dict(), "unit": "subject", "resampled": "subjects"}}
            exact = edge_interval(name, label, hard, None, boot.lo, boot.hi, metrics[name]["mean"])
            if exact:
                metrics[name]["exact"] = exact
        confusion = np.zeros((2, 2), dtype=np.int64)
        roc = []
        for r in range(len(scores)):
            t, pr = label == 1, hard[r] == 1
            confusion += np.array([[np.sum(~t & ~pr), np.sum(~t & pr)], [np.sum(t & ~pr), np.sum(t & pr)]])
            if 0 < label.sum() < len(label):
                fpr, tpr, _ = skm.roc_curve(label, scores[r])
                roc.append({"fpr": fpr.tolist(), "tpr": tpr.tolist()})
        out["heads"][head] = {"metrics": metrics, "confusion_total": confusion.tolist(), "roc": roc}
        out.setdefault("subject", first.subject.tolist())
        out.setdefault("label", label.tolist())
        out.setdefault("n_cells", first.n_images.tolist())
        out.setdefault("n_unassigned", first.n_unassigned)
        out.setdefault("scores", {})[head] = scores.tolist()
    if not out["heads"]:
        raise FusionfeatError("subject-level analysis: no heads")
    negative = next(c for c in result.classes if c != result.positive)
    out["label_names"] = [result.positive if v else negative for v in out["label"]]
    return out
