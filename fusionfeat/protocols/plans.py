"""Fold plans: every split of a run, made before any model is fitted.

A ``SplitPlan`` holds positions into one table of rows ``(sample, view)``: the evaluation rows come first
(originals at view 0, or the paper's expanded rows), then the rotated or mirrored copies used only for
training. Each non-paper split is checked: no image, and under ``grouped`` no subject, is on both sides
(``LeakageError`` otherwise: a bug, not user input).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from fusionfeat.errors import FusionfeatError, FusionfeatWarning
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
    class_names: Sequence[str] | None = None,
) -> np.ndarray:
    """Test fold of each sample (-1 where ``mask`` is False or, for ``predefined``, the dataset gives none).

    For ``grouped`` a sample without a subject id counts as its own subject. The ``paper`` protocol splits
    expanded rows (originals plus copies), not samples, so it has no per-sample plan and is refused. A class
    with fewer images (``grouped``: subjects) than folds gets a ``FusionfeatWarning`` naming it (from
    ``class_names``, else its label) and the plan goes on: some test folds hold none of it.
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
        per_class = {int(c): len(np.unique(subjects[y == c])) for c in np.unique(y)}
        _warn_small_classes(per_class, n_folds, "subject", class_names)
        splitter: Any = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed)
        split_args: tuple = (idx, y, subjects)
    else:
        present = np.bincount(y)
        if present.any() and int(present.max()) < n_folds:
            raise FusionfeatError(
                f"--cv stratified needs at least {n_folds} images of a class for {n_folds} folds; "
                f"the largest class has {int(present.max())}: lower --folds"
            )
        _warn_small_classes({int(c): int(n) for c, n in enumerate(present) if n}, n_folds, "image", class_names)
        splitter = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
        split_args = (idx, y)
    with warnings.catch_warnings():  # said above, once and by class name
        warnings.filterwarnings("ignore", message="The least populated class in y has only")
        for k, (_, test) in enumerate(splitter.split(*split_args)):
            fold[idx[test]] = k
    return fold


def class_name(label: int, class_names: Sequence[str] | None) -> str:
    """A class as users know it: its name when given, else ``class <label>``."""
    return repr(str(class_names[label])) if class_names is not None and 0 <= label < len(class_names) \
        else f"class {label}"


def _warn_small_classes(per_class: dict[int, int], n_folds: int, unit: str,
                        class_names: Sequence[str] | None) -> None:
    """One ``FusionfeatWarning`` line naming the classes with fewer images (subjects) than folds."""
    small = [(c, n) for c, n in sorted(per_class.items()) if n < n_folds]
    if small:
        listed = ", ".join(f"{class_name(c, class_names)} has {n} {unit}{'s' if n != 1 else ''}" for c, n in small)
        warnings.warn(f"{listed} for {n_folds} folds: some test folds hold none of it, so per-fold figures there "
                      "leave it out (macro ones average the classes present); the pooled out-of-fold figures "
                      "count all its images", FusionfeatWarning, stacklevel=3)


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
    class_names: Sequence[str] | None = None,
) -> SplitPlan:
    """Every split of a run. ``fixed_folds`` (a stored fine-tuning plan) replaces fold planning;
    ``sha256`` (per sample) makes the leakage check compare image content, not only rows; ``class_names``
    (by label) name classes in warnings and errors. A class absent from some training sides is a one-line
    warning (its test images there get probability 0 for it) and the run goes on."""
    check_choice("cv", protocol, PROTOCOLS)
    check_choice("balance", balance, BALANCES)
    if repeats < 1:
        raise FusionfeatError(f"--repeats must be 1 or more, got {repeats}")
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups).astype(str)
    ok = np.asarray(ok, dtype=bool)
    if protocol == "paper" or balance == "augment":
        need_views(n_views, "--cv paper" if protocol == "paper" else "--balance augment")
    class_notes: list[str] = []
    if protocol == "paper":
        rows, n_copies = paper_rows(labels, ok, n_views, seed)
        sample_fold = None
    else:
        n_copies = 0
        folds_r = []
        for r in range(repeats):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", FusionfeatWarning)
                folds_r.append(fixed_folds if fixed_folds is not None else
                               plan_folds(labels, groups, predefined, protocol, n_folds, seed + r, mask=ok,
                                          class_names=class_names))
            for w in caught:
                if not issubclass(w.category, FusionfeatWarning):
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
                elif r == 0:  # the class-size warning is the same for every repeat: said once, and in the report
                    class_notes.append(str(w.message))
                    warnings.warn(w.message, stacklevel=2)
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
    class_notes.extend(_training_gaps(labels, rows, n_eval, splits, protocol, class_names))
    described = describe_protocol(
        protocol, labels, groups, ok, rows, n_eval, test_fold, n_folds, seed, repeats, balance, n_copies
    )
    notes = [note[:1].upper() + note[1:] + "." for note in class_notes]
    described["warnings"] = [*described["warnings"], *notes]
    if notes:  # the K-class report also puts them at its top; binary metrics.json stays as it was without them
        described["class_notes"] = notes
    return SplitPlan(rows, n_eval, test_fold, splits, described)


def _training_gaps(labels: np.ndarray, rows: Rows, n_eval: int, splits: list[Split], protocol: str,
                   class_names: Sequence[str] | None) -> list[str]:
    """Classes some training side lacks, warned and returned for the report. (A class cannot lack from every
    training side: with two or more folds, the folds that do not test its images train on them.)"""
    evaluated = np.unique(labels[rows.sample[:n_eval]])
    notes = []
    for c in evaluated.tolist():
        lacking = [s.fold for s in splits if not np.any(labels[rows.sample[s.train]] == c)]
        if not lacking:
            continue
        n = int(np.sum(labels[rows.sample[:n_eval]] == c))
        what = f"{class_name(c, class_names)} ({n} image{'s' if n != 1 else ''})"
        folds = ", ".join(str(f) for f in sorted(set(lacking)))
        note = (f"{what} is absent from the training side of fold {folds} (protocol {protocol}): no head there can "
                "predict it, so its test images in that fold count as errors; add images or subjects of it, or "
                "leave it out with --classes")
        warnings.warn(note, FusionfeatWarning, stacklevel=3)
        notes.append(note)
    return notes


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
