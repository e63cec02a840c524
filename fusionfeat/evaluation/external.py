"""Scoring a trained model on an external labelled set with the statistics of ``fit``.

The external predictions become a ``CVResult`` with one "fold" that tests every external image on the model
trained on the whole training store, so ``fusionfeat.evaluation.evidence`` computes the same pooled metrics,
bootstrap intervals (over subjects when known, else images), calibration and subject-level results as for a
cross-validation run. The per-fold columns of ``fit`` (one fold here) have no spread and are not reported.
The bundle's own cross-validated estimate (``train --cv-run``) is lined up beside it by ``compare_to_cv``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluation import metrics as fm
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
    subjects = bool(np.any(groups != ""))
    n = len(labels)
    fold = FoldResult(head=head, repeat=0, fold=0, metrics=fm.binary_metrics(labels, y_pred, proba, positive=pos),
                      confusion=fm.confusion(labels, y_pred, positive=pos).tolist(),
                      roc=fm.roc_points(labels, proba, positive=pos), n_train=int(n_train), n_test=n,
                      n_train_images=int(n_train))
    counts = np.bincount(labels, minlength=len(classes)).tolist()
    protocol = {
        "name": PROTOCOL, "text": "a model trained on the whole training store, scored once on an external set.",
        "n_folds": 1, "repeats": 1, "seed": 0, "balance": "n/a", "subjects_known": subjects,
        "n_subjects": int(len(np.unique(groups[groups != ""]))) if subjects else 0,
        "n_samples": n, "n_skipped": 0, "n_evaluated": n, "n_eval_rows": n, "class_counts": counts,
        "image_level": False, "leaky": False, "defaulted": False, "features": "frozen", "positive": positive,
        "subject_disjoint": True,
    }
    return CVResult(heads=[head], head_info={head: dict(head_info)}, classes=list(classes), positive=positive,
                    protocol=protocol, provenance=provenance, features="frozen",
                    rows={k: np.asarray(v) for k, v in rows.items()}, test_fold=np.zeros((1, n), dtype=np.int64),
                    oof={head: proba[None, :]}, oof_pred={head: hard[None, :]},
                    options={"calibrate": None, "operating_point": None, "operating_target": None,
                             "subject_aggregate": "mean", "head_params": {}},
                    folds=[fold])


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
        boot = u["pooled"]["bootstrap"]
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
