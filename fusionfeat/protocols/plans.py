"""Fold plans: every split of a run, made before any model is fitted.

A ``SplitPlan`` holds positions into one table of rows ``(sample, view)``: the evaluation rows come first
(originals at view 0, or the paper's expanded rows), then the rotated or mirrored copies used only for
training. Each non-paper split is checked: no image, and under ``grouped`` no subject, is on both sides
(``LeakageError`` otherwise: a bug, not user input).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from fusionfeat.errors import FusionfeatError
from fusionfeat.protocols.checks import (
    BALANCES,
    PROTOCOLS,
    check_choice,
    check_folds,
    check_predefined,
    check_split,
    need_views,
)
from fusionfeat.protocols.describe import describe_protocol
from fusionfeat.protocols.rows import Rows, RowTable, copy_priority, fold_copies, paper_rows


@dataclass(frozen=True)
class Split:
    """One fit: positions into ``SplitPlan.rows`` for training (may include copies) and testing."""

    repeat: int
    fold: int
    train: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class SplitPlan:
    """All splits of a run, made before any fit. Rows ``[0, n_eval)`` are evaluated; the rest only train."""

    rows: Rows
    n_eval: int
    test_fold: np.ndarray  # (repeats, n_eval): test fold of each evaluation row per repeat
    splits: list[Split]
    protocol: dict[str, Any]


def default_protocol(groups: np.ndarray, mask: np.ndarray | None = None) -> str:
    """``grouped`` when any (kept) sample names its subject, else ``stratified`` (image-level)."""
    groups = np.asarray(groups).astype(str)
    if mask is not None:
        groups = groups[np.asarray(mask, dtype=bool)]
    return "grouped" if np.any(groups != "") else "stratified"


def plan_folds(
    labels: np.ndarray,
    groups: np.ndarray,
    predefined: np.ndarray,
    protocol: str,
    n_folds: int,
    seed: int,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """Test fold of each sample (-1 where ``mask`` is False or, for ``predefined``, the dataset gives none).

    For ``grouped`` a sample without a subject id counts as its own subject. The ``paper`` protocol splits
    expanded rows (originals plus copies), not samples, so it has no per-sample plan and is refused.
    """
    labels = np.asarray(labels)
    mask = np.ones(len(labels), dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    check_choice("cv", protocol, PROTOCOLS)
    if protocol == "paper":
        raise FusionfeatError(
            "the paper protocol splits rotated/mirrored copies as rows of their own, so it has no "
            "per-sample fold plan: use --cv grouped, stratified or predefined here"
        )
    fold = np.full(len(labels), -1, dtype=np.int64)
    idx = np.flatnonzero(mask)
    if protocol == "predefined":
        fold[idx] = np.asarray(predefined, dtype=np.int64)[idx]
        check_predefined(fold[idx])
        return fold
    check_folds(n_folds)
    y = labels[idx]
    if protocol == "grouped":
        if not np.any(np.asarray(groups).astype(str)[idx] != ""):
            raise FusionfeatError(
                "--cv grouped needs subject ids, and no sample in this store has one; "
                "use --cv stratified (image-level) or give subjects in a manifest CSV's group column"
            )
        subjects = _subject_ids(np.asarray(groups).astype(str)[idx])
        n_subjects = len(np.unique(subjects))
        if n_subjects < n_folds:
            raise FusionfeatError(
                f"--cv grouped needs at least as many subjects as folds: {n_subjects} subjects "
                f"for {n_folds} folds; use --folds {max(n_subjects, 2)} or fewer, or --cv stratified"
            )
        splits = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(idx, y, subjects)
    else:
        present = np.bincount(y)
        smallest = int(present[present > 0].min()) if present.any() else 0
        if smallest < n_folds:
            raise FusionfeatError(
                f"--cv stratified needs at least {n_folds} images of each class for {n_folds} folds; "
                f"the smallest class has {smallest}: lower --folds"
            )
        splits = StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(idx, y)
    for k, (_, test) in enumerate(splits):
        fold[idx[test]] = k
    return fold


def make_plan(
    labels: np.ndarray,
    groups: np.ndarray,
    predefined: np.ndarray,
    ok: np.ndarray,
    n_views: int,
    *,
    protocol: str,
    n_folds: int,
    seed: int,
    repeats: int = 1,
    balance: str = "weight",
    fixed_folds: np.ndarray | None = None,
    sha256: np.ndarray | None = None,
) -> SplitPlan:
    """Every split of a run. ``fixed_folds`` (a stored fine-tuning plan) replaces fold planning;
    ``sha256`` (per sample) makes the leakage check compare image content, not only rows."""
    check_choice("cv", protocol, PROTOCOLS)
    check_choice("balance", balance, BALANCES)
    if repeats < 1:
        raise FusionfeatError(f"--repeats must be 1 or more, got {repeats}")
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups).astype(str)
    ok = np.asarray(ok, dtype=bool)
    if protocol == "paper" or balance == "augment":
        need_views(n_views, "--cv paper" if protocol == "paper" else "--balance augment")
    if protocol == "paper":
        rows, n_copies = paper_rows(labels, ok, n_views, seed)
        sample_fold = None
    else:
        n_copies = 0
        folds_r = [
            fixed_folds
            if fixed_folds is not None
            else plan_folds(labels, groups, predefined, protocol, n_folds, seed + r, mask=ok)
            for r in range(repeats)
        ]
        sample_fold = np.stack(folds_r)
        kept = np.flatnonzero(sample_fold[0] >= 0)
        rows = Rows(kept, np.zeros(len(kept), dtype=np.int64))
    n_eval = len(rows)
    y_eval = labels[rows.sample]
    test_fold = np.empty((repeats, n_eval), dtype=np.int64)
    for r in range(repeats):
        if sample_fold is None:
            test_fold[r] = _stratified_rows(y_eval, n_folds, seed + r)
        else:
            test_fold[r] = sample_fold[r][rows.sample]
    table = RowTable(rows)
    splits = []
    for r in range(repeats):
        priority = copy_priority(labels, ok, n_views, seed, r) if balance == "augment" else None
        for k in np.unique(test_fold[r]):
            train = np.flatnonzero(test_fold[r] != k)
            test = np.flatnonzero(test_fold[r] == k)
            if priority is not None:
                train = np.concatenate([train, table.add(fold_copies(priority, rows, train, labels))])
            splits.append(Split(r, int(k), train, test))
    rows = table.rows()
    if protocol != "paper":
        for split in splits:
            check_split(rows.sample[split.train], rows.sample[split.test], groups, protocol == "grouped",
                        sha256=sha256)
    if len(np.unique(labels[rows.sample[:n_eval]])) < 2:
        raise FusionfeatError("the store holds a single class among usable images: nothing to classify")
    for split in splits:  # before any fit: a single-class training side cannot train any head
        present = np.unique(labels[rows.sample[split.train]])
        if len(present) < 2:
            only = f"class {int(present[0])}" if len(present) else "no images"
            raise FusionfeatError(
                f"fold {split.fold}'s training side holds {only} only (protocol {protocol}): no classifier can be "
                "trained on it; give every class images outside each test fold (check the fold column), or use "
                "--cv stratified or grouped"
            )
    described = describe_protocol(
        protocol, labels, groups, ok, rows, n_eval, test_fold, n_folds, seed, repeats, balance, n_copies
    )
    return SplitPlan(rows, n_eval, test_fold, splits, described)


def _stratified_rows(y: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    check_folds(n_folds)
    fold = np.empty(len(y), dtype=np.int64)
    for k, (_, test) in enumerate(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(y, y)):
        fold[test] = k
    return fold


def _subject_ids(groups: np.ndarray) -> np.ndarray:
    """Subject ids for grouping; a sample with no subject ("") becomes a subject of its own."""
    out = groups.astype(object).copy()
    unknown = np.flatnonzero(groups == "")
    out[unknown] = [f"\0unknown-{i}" for i in unknown]
    return out.astype(str)
