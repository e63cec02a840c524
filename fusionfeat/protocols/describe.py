"""``describe_protocol``: what a plan did, in words, with every caveat a reader must know."""

from __future__ import annotations

from typing import Any

import numpy as np

from fusionfeat.protocols.rows import Rows


def describe_protocol(
    protocol: str,
    labels: np.ndarray,
    groups: np.ndarray,
    ok: np.ndarray,
    rows: Rows,
    n_eval: int,
    test_fold: np.ndarray,
    n_folds: int,
    seed: int,
    repeats: int,
    balance: str,
    n_copies: int,
) -> dict[str, Any]:
    """A JSON-able account of the protocol: what was split how, and every caveat a reader must know."""
    kept = np.flatnonzero(ok)
    known = groups[kept][groups[kept] != ""]
    evaluated = np.unique(rows.sample[:n_eval])
    n_folds_real = int(len(np.unique(test_fold[0])))
    info: dict[str, Any] = {
        "name": protocol,
        "n_folds": n_folds_real,
        "seed": seed,
        "repeats": repeats,
        "balance": balance,
        "leaky": protocol == "paper",
        "image_level": protocol in ("stratified", "paper") or len(known) == 0,
        "subjects_known": bool(len(known)),
        "n_subjects": int(len(np.unique(known))),
        "n_samples": int(len(kept)),
        "n_evaluated": int(len(evaluated)),
        "n_eval_rows": int(n_eval),
        "n_paper_copies": int(n_copies),
        "n_training_copies": int(len(rows) - n_eval),
        "n_skipped": int(len(ok) - len(kept)),
        "class_counts": np.bincount(labels[kept]).tolist(),
        "warnings": [],
    }
    info["text"] = _protocol_text(info)
    info["warnings"] = _protocol_warnings(info, labels, groups, rows, n_eval, test_fold)
    return info


def _protocol_text(info: dict[str, Any]) -> str:
    k, seed, reps = info["n_folds"], info["seed"], info["repeats"]
    base = {
        "grouped": f"{k}-fold StratifiedGroupKFold by subject ({info['n_subjects']} subjects): no subject "
        "is in both training and test (asserted for every fold)",
        "stratified": f"{k}-fold StratifiedKFold over images (image-level)",
        "predefined": f"the dataset's own {k} folds",
        "paper": f"the paper's protocol: the minority class was balanced with {info['n_paper_copies']} "
        f"rotated/mirrored copies BEFORE splitting, then {k}-fold StratifiedKFold over the "
        f"{info['n_eval_rows']} expanded rows (image-level)",
    }[info["name"]]
    balance = {
        "weight": "class weights inversely proportional to class frequency in each training fold",
        "augment": "training folds balanced with rotated/mirrored copies of their own minority-class "
        "images; test folds use original images only",
        "none": "no balancing",
    }[info["balance"]]
    what = "model seeds" if info["name"] == "predefined" else "seeds"
    repeat = f"{reps} repeats ({what} {seed}..{seed + reps - 1})" if reps > 1 else f"{what[:-1]} {seed}"
    return f"{base}; {repeat}; balancing: {balance}."


def _protocol_warnings(
    info: dict[str, Any],
    labels: np.ndarray,
    groups: np.ndarray,
    rows: Rows,
    n_eval: int,
    test_fold: np.ndarray,
) -> list[str]:
    out = []
    if info["leaky"]:
        out.append(
            "LEAKY: rotated/mirrored copies were added before splitting, so test folds contain copies of "
            "images whose original (or other copies) were trained on, and cells of one subject fall on both "
            "sides; scores are optimistic and reproduce the paper's protocol only."
        )
    if not info["subjects_known"]:
        out.append(
            "Image-level folds because subjects are unknown: cells of one subject may be in both "
            "training and test, which inflates scores."
        )
    elif info["name"] == "stratified":
        out.append(
            "Image-level folds although subjects are known: cells of one subject are in both training "
            "and test, which inflates scores; --cv grouped gives the honest estimate."
        )
    if info["name"] == "predefined" and info["subjects_known"]:
        spanning = _subjects_spanning_folds(groups[rows.sample[:n_eval]], test_fold[0])
        if spanning:
            out.append(f"{spanning} subjects appear in more than one of the dataset's folds.")
    if info["name"] == "grouped" and not _all_known(groups, rows):
        out.append("Some images have no subject id; each was treated as a subject of its own.")
    single = _single_class_folds(labels[rows.sample[:n_eval]], test_fold)
    if single:
        out.append(f"{single} test folds hold a single class: ROC AUC is undefined (NaN) there.")
    return out


def _subjects_spanning_folds(groups: np.ndarray, fold: np.ndarray) -> int:
    known = groups != ""
    pairs = {(g, f) for g, f in zip(groups[known].tolist(), fold[known].tolist(), strict=True)}
    subjects = [g for g, _ in pairs]
    return len(subjects) - len(set(subjects))


def _all_known(groups: np.ndarray, rows: Rows) -> bool:
    return bool(np.all(groups[rows.sample] != ""))


def _single_class_folds(y: np.ndarray, test_fold: np.ndarray) -> int:
    return sum(len(np.unique(y[test_fold[r] == k])) < 2 for r in range(len(test_fold)) for k in np.unique(test_fold[r]))
