"""The statistics of a K-class (K > 2) cross-validation run, as plain JSON for ``metrics.json`` and the report.

Per head: every metric of ``multiclass_metrics.METRICS`` as per-fold mean ± sd with the Nadeau–Bengio corrected
resampled t interval, and pooled out-of-fold (per repeat, averaged); a subject (or image) bootstrap interval of the
pooled macro one-vs-rest AUC and balanced accuracy; the per-class table, the K×K confusion matrix, one-vs-rest ROC
curves and the top-label reliability curve of the pooled rows. Between heads: corrected paired t across folds and a
paired bootstrap of the pooled value, on macro AUC and balanced accuracy (DeLong does not apply to a macro average
of one-vs-rest AUCs). When subjects are known: a subject's class is the argmax of its cells' mean probabilities.
See ``docs/protocols.md`` (multi-class evaluation).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fusionfeat import stats
from fusionfeat.evaluation import multiclass_metrics as mm
from fusionfeat.evaluation.cv import CVResult
from fusionfeat.evaluation.evidence import (
    IMAGE_LEVEL_SUBJECTS,
    bootstrap_groups,
    fold_sizes,
    subject_disjoint,
    subjects_known,
    weights_flags,
)

N_BOOT = 2000
COMPARED: tuple[str, ...] = ("roc_auc_macro", "balanced_accuracy")  # bootstrapped and compared between heads
DELONG_NOTE = (
    "DeLong's test compares two binary ROC AUCs; it does not apply to a macro average of one-vs-rest AUCs, so "
    "pooled macro AUCs are compared with a paired bootstrap over the same resampled subjects (or images)."
)


def analyse_multiclass(result: CVResult, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """``{"heads": {head: {...}}, "comparisons": {"pairs": [...], "note": ...}, "subjects": ... or None}``."""
    heads = {
        head: {
            "weights": weights_flags(result, head),
            "uncertainty": uncertainty(result, head, n_boot, seed),
            "pooled": pooled_tables(result, head),
            "calibration": calibration(result, head),
        }
        for head in result.heads
    }
    return {
        "heads": heads,
        "comparisons": comparisons(result, n_boot, seed),
        "subjects": subject_level(result, n_boot, seed),
    }


def _per_fold(values: np.ndarray) -> dict[str, Any]:
    v = values[np.isfinite(values)]
    return {"mean": float(v.mean()) if len(v) else math.nan, "sd": float(v.std(ddof=1)) if len(v) > 1 else math.nan,
            "n": int(len(v))}


def _scored(result: CVResult, head: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth (n_eval,), probabilities (repeats, n_eval, K) and predicted classes (repeats, n_eval) of one head."""
    return (np.asarray(result.rows["label"], dtype=np.int64), result.oof_proba[head],
            result.oof_pred[head].astype(np.int64))


def pooled_metrics(y: np.ndarray, P: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """Every metric of ``mm.METRICS`` on one repeat's pooled out-of-fold rows."""
    return mm.fold_metrics(y, pred, P)


def uncertainty(result: CVResult, head: str, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """metric -> ``per_fold`` (mean, sd, n), ``corrected_t`` and ``pooled`` (per repeat and their mean; for macro
    AUC and balanced accuracy also a bootstrap interval of that mean)."""
    folds = result.fold_results(head)
    n_train, n_test = fold_sizes(result, head)
    y, P, pred = _scored(result, head)
    per_repeat = [pooled_metrics(y, P[r], pred[r]) for r in range(P.shape[0])]
    groups, unit = bootstrap_groups(result)
    out = {}
    for name in mm.METRICS:
        values = np.asarray([f.metrics.get(name, math.nan) for f in folds], dtype=float)
        repeats = [r[name] for r in per_repeat]
        pooled: dict[str, Any] = {"per_repeat": repeats, "mean": float(np.mean(repeats))}
        if name in COMPARED:
            boot = stats.multiclass_bootstrap(y, P, pred, groups, name, n_boot=n_boot, seed=seed)
            pooled["bootstrap"] = {**boot.to_dict(), "resampled": unit}
        per_fold = _per_fold(values)
        corrected = stats.corrected_resampled_t(values, n_train, n_test).to_dict()
        k = len(result.classes)
        exact = stats.exact_multiclass(name, y, pred, groups, k, per_fold["mean"], corrected["lo"], corrected["hi"])
        if exact:
            corrected["exact"] = exact
        boot = pooled.get("bootstrap") or {}
        exact = stats.exact_multiclass(name, y, pred, groups, k, pooled["mean"], boot.get("lo"), boot.get("hi"))
        if exact:
            pooled["exact"] = exact
        out[name] = {"per_fold": per_fold, "corrected_t": corrected, "pooled": pooled}
    return out


def pooled_tables(result: CVResult, head: str) -> dict[str, Any]:
    """The per-class table (precision, recall, F1, support, OvR AUC of the pooled rows, averaged over repeats),
    the K×K confusion matrix summed over repeats, and one-vs-rest ROC curves of every repeat's rows together."""
    y, P, pred = _scored(result, head)
    k = len(result.classes)
    tables = [mm.per_class(y, pred[r], P[r]) for r in range(P.shape[0])]
    per_class = {
        key: (tables[0][key] if key == "support" else np.mean([t[key] for t in tables], axis=0).tolist())
        for key in mm.PER_CLASS
    }
    confusion = sum(mm.confusion_matrix(y, pred[r], k) for r in range(P.shape[0]))
    ys = np.tile(y, P.shape[0])
    groups, _ = bootstrap_groups(result)
    return {
        "per_class": per_class,
        "per_class_exact": stats.per_class_exact(y, pred, groups, k, per_class),
        "confusion": np.asarray(confusion).tolist(),
        "roc": mm.ovr_roc_points(ys, P.reshape(-1, k), result.classes),
    }


def calibration(result: CVResult, head: str, n_bins: int = mm.ECE_BINS) -> dict[str, Any]:
    """Brier (K-class), log loss, top-label and class-wise ECE of the pooled rows (per repeat, averaged), and the
    top-label reliability curve of every repeat's rows together."""
    y, P, _ = _scored(result, head)
    k = len(result.classes)
    curve = mm.top_label_reliability(np.tile(y, P.shape[0]), P.reshape(-1, k), n_bins)
    return {
        "brier": float(np.mean([mm.brier_multiclass(y, row) for row in P])),
        "log_loss": float(np.mean([pooled_metrics(y, row, row.argmax(1))["log_loss"] for row in P])),
        "ece_top": float(np.mean([mm.top_label_ece(y, row, n_bins) for row in P])),
        "ece_classwise": float(np.mean([mm.classwise_ece(y, row, n_bins) for row in P])),
        "n_bins": n_bins,
        "reliability": {k: v.tolist() for k, v in curve.items()},
        "calibrated": result.options.get("calibrate"),
    }


def compare(result: CVResult, a: str, b: str, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Head ``a`` minus head ``b`` on the same splits, per metric of ``COMPARED``: corrected paired t on the per-fold
    values (paired by repeat and fold) and a paired bootstrap of the pooled value."""
    fa = {(f.repeat, f.fold): f for f in result.fold_results(a)}
    fb = {(f.repeat, f.fold): f for f in result.fold_results(b)}
    keys = sorted(set(fa) & set(fb))
    n_train = np.asarray([fa[k].n_train_images or fa[k].n_train for k in keys], dtype=float)
    n_test = np.asarray([fa[k].n_test for k in keys], dtype=float)
    y, P_a, pred_a = _scored(result, a)
    _, P_b, pred_b = _scored(result, b)
    groups, unit = bootstrap_groups(result)
    out: dict[str, Any] = {"a": a, "b": b, "metrics": {}}
    for name in COMPARED:
        diffs = np.asarray([fa[k].metrics[name] - fb[k].metrics[name] for k in keys], dtype=float)
        boot = stats.paired_multiclass_bootstrap(y, P_a, pred_a, P_b, pred_b, groups, name, n_boot=n_boot,
                                                 seed=seed)
        per_fold = stats.corrected_paired_t(diffs, n_train, n_test).to_dict()
        pooled = {"method": f"paired bootstrap over {unit}", "diff": boot.estimate, "lo": boot.lo, "hi": boot.hi,
                  "p": boot.p, "se": boot.se, "n_boot": boot.n_boot, "n_skipped": boot.n_skipped}
        fold_means = [float(np.nanmean([f[k].metrics[name] for k in keys])) if keys else math.nan for f in (fa, fb)]
        pooled_means = [float(np.mean([pooled_metrics(y, P[r], pr[r])[name] for r in range(P.shape[0])]))
                        for P, pr in ((P_a, pred_a), (P_b, pred_b))]
        per_fold["edge"] = stats.unmeasurable(*fold_means, per_fold, name)
        pooled["edge"] = stats.unmeasurable(*pooled_means, pooled, name)
        out["metrics"][name] = {"per_fold": per_fold, "pooled": pooled}
    return out


def comparisons(result: CVResult, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """Every pair of heads; ``p_holm`` is Holm-adjusted over the whole family the table shows (every pair, metric
    and test together, as a reader scans it), a test whose difference cannot be measured left out."""
    heads = result.heads
    pairs = [compare(result, a, b, n_boot, seed) for i, a in enumerate(heads) for b in heads[i + 1:]]
    tests = [pair["metrics"][name][key] for pair in pairs for name in COMPARED for key in ("per_fold", "pooled")]
    measured = [t for t in tests if not t.get("edge") and math.isfinite(t["p"])]
    for test, q in zip(measured, stats.holm([t["p"] for t in measured]) if measured else [], strict=True):
        test["p_holm"] = float(q)
    return {"pairs": pairs, "metrics": list(COMPARED), "note": DELONG_NOTE}


def subject_level(result: CVResult, n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any] | None:
    """Subject-level results (None when no subject is known): a subject's probabilities are the mean of its
    original cells' (view 0) out-of-fold probabilities, its predicted class their argmax. Per head: accuracy,
    balanced accuracy and macro OvR AUC per repeat and averaged, bootstrap intervals over subjects, the K×K
    confusion matrix summed over repeats. A subject with cells of several classes skips the analysis (said)."""
    if not subjects_known(result):
        return None
    if not subject_disjoint(result):  # a subject's other cells sat in training: left out, as for two classes
        return {"aggregate": "mean", "left_out": IMAGE_LEVEL_SUBJECTS}
    originals = np.asarray(result.rows["view"]) == 0
    groups = np.asarray(result.rows["group"]).astype(str)[originals]
    y_rows = np.asarray(result.rows["label"], dtype=np.int64)[originals]
    known = groups != ""
    subjects, first, inverse = np.unique(groups[known], return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    member = rank[inverse]  # subject index (first-appearance order) of every known original row
    k = len(result.classes)
    labels = np.full(len(order), -1, dtype=np.int64)
    for s in range(len(order)):
        classes = np.unique(y_rows[known][member == s])
        if len(classes) > 1:
            return {"aggregate": "mean", "skipped": f"subject {subjects[order][s]!r} has cells of several classes "
                    f"({', '.join(result.classes[c] for c in classes)}); a subject-level result needs one class "
                    "per subject"}
        labels[s] = classes[0]
    counts = np.bincount(member, minlength=len(order)).astype(float)
    out: dict[str, Any] = {
        "aggregate": "mean",
        "rule": "a subject's class = the class with the highest mean probability over its cells",
        "subject": subjects[order].tolist(),
        "label": labels.tolist(),
        "label_names": [result.classes[c] for c in labels],
        "n_cells": counts.astype(int).tolist(),
        "n_unassigned": int((~known).sum()),
        "heads": {},
        "probabilities": {},
    }
    for head in result.heads:
        P = result.oof_proba[head][:, originals][:, known]  # (repeats, rows, K)
        mean = np.stack([np.stack([np.bincount(member, weights=P[r, :, c], minlength=len(order)) / counts
                                   for c in range(k)], axis=1) for r in range(P.shape[0])])
        pred = mean.argmax(axis=2)
        metrics = {}
        for name in ("accuracy", *COMPARED):
            values = [pooled_metrics(labels, mean[r], pred[r])[name] for r in range(len(mean))]
            entry: dict[str, Any] = {"per_repeat": values, "mean": float(np.mean(values))}
            bounds: dict[str, Any] = {}
            if name in COMPARED:  # one row per subject: resampling rows is resampling subjects
                boot = stats.multiclass_bootstrap(labels, mean, pred, None, name, n_boot=n_boot, seed=seed)
                entry["bootstrap"] = bounds = {**boot.to_dict(), "unit": "subject", "resampled": "subjects"}
            exact = stats.exact_multiclass(name, labels, pred, None, k, entry["mean"], bounds.get("lo"),
                                           bounds.get("hi"))
            if exact:
                entry["exact"] = exact
            metrics[name] = entry
        confusion = sum(mm.confusion_matrix(labels, pred[r], k) for r in range(len(mean)))
        out["heads"][head] = {"metrics": metrics, "confusion_total": np.asarray(confusion).tolist()}
        out["probabilities"][head] = mean.tolist()
    return out
