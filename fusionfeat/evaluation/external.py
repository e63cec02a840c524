"""Scoring a trained model on an external labelled set with the statistics of ``fit``.

The external predictions become a ``CVResult`` with one "fold" that tests every external image on the model
trained on the whole training store, so ``fusionfeat.evaluation.evidence`` (two classes) or
``fusionfeat.evaluation.multiclass_evidence`` (more: ``external_multiclass_result``) computes the same pooled
metrics, bootstrap intervals (over subjects when known, else images), calibration and subject-level results as for
a cross-validation run. The per-fold columns of ``fit`` (one fold here) have no spread and are not reported.
The bundle's own cross-validated estimate (``train --cv-run``) is lined up beside it by ``compare_to_cv``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluation import metrics as fm
from fusionfeat.evaluation import multiclass_metrics as mm
from fusionfeat.evaluation.cv import CVResult, FoldResult

PROTOCOL = "external"


def external_result(head: str, head_info: dict[str, Any], classes: list[str], positive: str,
                    provenance: dict[str, Any], rows: dict[str, np.ndarray], proba: np.ndarray,
                    predicted_positive: np.ndarray, n_train: int) -> CVResult:
    """A one-fold ``CVResult`` of a model trained on ``n_train`` images and scored on the external ``rows``
    (sample, view, path, label as an index of ``classes``, group): ``proba`` is P(positive), ``predicted_positive``
    1.0 where the model chose the positive class."""
    labels = np.asarray(rows["label"], dtype=np.int64)
    if len(np.unique(labels)) < 2:
        raise FusionfeatError("the external set holds a single class: its metrics need both classes")
    pos = classes.index(positive)
    proba = np.asarray(proba, dtype=float)
    hard = np.asarray(predicted_positive, dtype=float)
    y_pred = np.where(hard >= 0.5, pos, 1 - pos)
    groups = np.asarray(rows["group"]).astype(str)
    n = len(labels)
    fold = FoldResult(head=head, repeat=0, fold=0, metrics=fm.binary_metrics(labels, y_pred, proba, positive=pos),
                      confusion=fm.confusion(labels, y_pred, positive=pos).tolist(),
                      roc=fm.roc_points(labels, proba, positive=pos), n_train=int(n_train), n_test=n,
                      n_train_images=int(n_train))
    return CVResult(heads=[head], head_info={head: dict(head_info)}, classes=list(classes), positive=positive,
                    protocol=_protocol(labels, groups, len(classes), positive), provenance=provenance,
                    features="frozen", rows={k: np.asarray(v) for k, v in rows.items()},
                    test_fold=np.zeros((1, n), dtype=np.int64), oof={head: proba[None, :]},
                    oof_pred={head: hard[None, :]}, options=_options(), folds=[fold])


def external_multiclass_result(head: str, head_info: dict[str, Any], classes: list[str],
                               provenance: dict[str, Any], rows: dict[str, np.ndarray], proba: np.ndarray,
                               n_train: int) -> CVResult:
    """The K-class (K > 2) one-fold ``CVResult``: ``proba`` is the (n, K) matrix of class probabilities in
    ``classes`` order, the predicted class its argmax (the bundle's rule for K classes); the fold's metrics are
    those ``cross_validate`` computes for a K-class fold (``multiclass_metrics``), so
    ``multiclass_evidence.analyse_multiclass`` reads it as a one-fold cross-validation run."""
    labels = np.asarray(rows["label"], dtype=np.int64)
    if len(np.unique(labels)) < 2:
        raise FusionfeatError("the external set holds a single class: its metrics need two classes or more")
    k = len(classes)
    P = np.asarray(proba, dtype=float)
    if P.shape != (len(labels), k):
        raise FusionfeatError(f"expected {len(labels)}×{k} class probabilities, got the shape {P.shape}")
    pred = P.argmax(axis=1)
    groups = np.asarray(rows["group"]).astype(str)
    n = len(labels)
    fold = FoldResult(head=head, repeat=0, fold=0, metrics=mm.fold_metrics(labels, pred, P),
                      confusion=mm.confusion_matrix(labels, pred, k).tolist(), roc={"fpr": [], "tpr": []},
                      n_train=int(n_train), n_test=n, n_train_images=int(n_train),
                      per_class=mm.per_class(labels, pred, P))
    return CVResult(heads=[head], head_info={head: dict(head_info)}, classes=list(classes), positive=None,
                    protocol=_protocol(labels, groups, k, None), provenance=provenance, features="frozen",
                    rows={key: np.asarray(v) for key, v in rows.items()},
                    test_fold=np.zeros((1, n), dtype=np.int64), oof={}, oof_pred={head: pred[None, :].astype(float)},
                    options=_options(), folds=[fold], oof_proba={head: P[None, :, :]})


def _protocol(labels: np.ndarray, groups: np.ndarray, k: int, positive: str | None) -> dict[str, Any]:
    subjects = bool(np.any(groups != ""))
    n = len(labels)
    return {
        "name": PROTOCOL, "text": "a model trained on the whole training store, scored once on an external set.",
        "n_folds": 1, "repeats": 1, "seed": 0, "balance": "n/a", "subjects_known": subjects,
        "n_subjects": int(len(np.unique(groups[groups != ""]))) if subjects else 0,
        "n_samples": n, "n_skipped": 0, "n_evaluated": n, "n_eval_rows": n,
        "class_counts": np.bincount(labels, minlength=k).tolist(),
        "image_level": False, "leaky": False, "defaulted": False, "features": "frozen", "positive": positive,
        "subject_disjoint": True,
    }


def _options() -> dict[str, Any]:
    return {"calibrate": None, "operating_point": None, "operating_target": None, "subject_aggregate": "mean",
            "head_params": {}}


def cv_estimate(run: dict[str, Any], head: str) -> dict[str, Any]:
    """What a ``fit`` run's ``metrics.json`` data says about ``head``: the protocol, and per metric the pooled
    out-of-fold value with its bootstrap interval and the per-fold mean ± sd with the corrected t interval."""
    info = run["heads"][head]
    protocol = run.get("protocol") or {}
    out: dict[str, Any] = {
        "head": head,
        "protocol": protocol.get("name"),
        "n_folds": protocol.get("n_folds"),
        "repeats": protocol.get("repeats", 1),
        "subjects_known": protocol.get("subjects_known"),
        "leaky": bool(protocol.get("leaky")),
        "image_level": bool(protocol.get("image_level")),
        "n_images": protocol.get("n_evaluated", protocol.get("n_samples")),
        "metrics": {},
    }
    for name, u in (info.get("uncertainty") or {}).items():
        boot = u["pooled"].get("bootstrap") or {}  # K classes: only macro AUC and balanced accuracy have one
        out["metrics"][name] = {
            "pooled": u["pooled"]["mean"], "lo": boot.get("lo"), "hi": boot.get("hi"),
            "resampled": boot.get("resampled"),
            "per_fold_mean": u["per_fold"]["mean"], "per_fold_sd": u["per_fold"]["sd"],
            "corrected_t_lo": u["corrected_t"].get("lo"), "corrected_t_hi": u["corrected_t"].get("hi"),
        }
    return out


def compare_to_cv(cv: dict[str, Any] | None, external: dict[str, Any]) -> dict[str, dict[str, float]] | None:
    """Per metric: the external pooled value, the cross-validated pooled value and ``external − cv``
    (None without a CV estimate). ``external`` is a head's ``uncertainty`` from ``evidence``."""
    if not cv:
        return None
    out = {}
    for name, u in external.items():
        theirs = (cv.get("metrics") or {}).get(name)
        if theirs is None:
            continue
        ours, ref = float(u["pooled"]["mean"]), float(theirs["pooled"])
        out[name] = {"external": ours, "cv": ref,
                     "difference": ours - ref if math.isfinite(ours) and math.isfinite(ref) else math.nan}
    return out
