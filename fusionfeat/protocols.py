"""Fold plans and leakage checks: every split of a run, made before any model is fitted.

A ``SplitPlan`` holds positions into one table of rows ``(sample, view)``: the evaluation rows come first
(originals at view 0, or the paper's expanded rows), then the rotated or mirrored copies used only for
training. Each non-paper split is checked: no image, and under ``grouped`` no subject, is on both sides
(``LeakageError`` otherwise: a bug, not user input). ``describe_protocol`` words what was done and every
caveat a reader must know. See ``docs/protocols.md``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold

from fusionfeat.errors import FusionfeatError

PROTOCOLS: tuple[str, ...] = ("grouped", "stratified", "predefined", "paper")
BALANCES: tuple[str, ...] = ("weight", "augment", "none")
DIHEDRAL_VIEWS = 8
DEFAULT_FOLDS = 5
DEFAULT_SEED = 0


class LeakageError(AssertionError):
    """An image or a subject is on both sides of a split that must keep them apart: a bug, never input."""


# ----------------------------------------------------------------------------------------------- plans


@dataclass(frozen=True)
class Rows:
    """A table of rows: which stored sample, and which of its views (0 = the original image)."""

    sample: np.ndarray
    view: np.ndarray

    def __len__(self) -> int:
        return len(self.sample)


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
    table = _RowTable(rows)
    splits = []
    for r in range(repeats):
        priority = _copy_priority(labels, ok, n_views, seed, r) if balance == "augment" else None
        for k in np.unique(test_fold[r]):
            train = np.flatnonzero(test_fold[r] != k)
            test = np.flatnonzero(test_fold[r] == k)
            if priority is not None:
                train = np.concatenate([train, table.add(_fold_copies(priority, rows, train, labels))])
            splits.append(Split(r, int(k), train, test))
    rows = table.rows()
    if protocol != "paper":
        for split in splits:
            check_split(rows.sample[split.train], rows.sample[split.test], groups, protocol == "grouped",
                        sha256=sha256)
    described = describe_protocol(
        protocol, labels, groups, ok, rows, n_eval, test_fold, n_folds, seed, repeats, balance, n_copies
    )
    return SplitPlan(rows, n_eval, test_fold, splits, described)


def paper_rows(labels: np.ndarray, ok: np.ndarray, n_views: int, seed: int) -> tuple[Rows, int]:
    """The paper's expanded table: every kept original, then minority copies (views 1..7) up to balance."""
    kept = np.flatnonzero(np.asarray(ok, dtype=bool))
    priority = _copy_priority(labels, ok, n_views, seed, 0)
    counts = np.bincount(labels[kept])
    extra = []
    for c in np.flatnonzero((counts > 0) & (counts < counts.max())):
        of_c = priority.sample[labels[priority.sample] == c], priority.view[labels[priority.sample] == c]
        need = int(counts.max() - counts[c])
        extra.append((of_c[0][:need], of_c[1][:need]))
    sample = np.concatenate([kept] + [s for s, _ in extra])
    view = np.concatenate([np.zeros(len(kept), dtype=np.int64)] + [v for _, v in extra])
    return Rows(sample.astype(np.int64), view.astype(np.int64)), len(sample) - len(kept)


def check_split(train_samples: np.ndarray, test_samples: np.ndarray, groups: np.ndarray, by_subject: bool,
                sha256: np.ndarray | None = None) -> None:
    """Raise ``LeakageError`` if an image (any view), or with ``by_subject`` a subject, is on both sides.

    An image is a row, and, given ``sha256`` (the store's per-sample image hashes), also its content: two rows
    holding the same bytes under different names count as one image.
    """
    shared = np.intersect1d(train_samples, test_samples)
    if shared.size:
        raise LeakageError(f"{shared.size} images are in both train and test (first: sample {shared[0]})")
    if sha256 is not None:
        sha256 = np.asarray(sha256).astype(str)
        same = (set(sha256[train_samples]) & set(sha256[test_samples])) - {""}
        if same:
            digest = sorted(same)[0]
            rows = np.flatnonzero(sha256 == digest)
            raise LeakageError(f"{len(same)} image(s) are in both train and test under different rows (same "
                               f"SHA-256 {digest[:12]}…, samples {', '.join(map(str, rows[:4]))}); "
                               "deduplicate the data (`fusionfeat extract --dedupe`)")
    if by_subject:
        groups = np.asarray(groups).astype(str)
        both = (set(groups[train_samples]) & set(groups[test_samples])) - {""}
        if both:
            raise LeakageError(f"{len(both)} subjects are in both train and test (e.g. {sorted(both)[0]!r})")


def _stratified_rows(y: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    check_folds(n_folds)
    fold = np.empty(len(y), dtype=np.int64)
    for k, (_, test) in enumerate(StratifiedKFold(n_folds, shuffle=True, random_state=seed).split(y, y)):
        fold[test] = k
    return fold


def _copy_priority(labels: np.ndarray, ok: np.ndarray, n_views: int, seed: int, repeat: int) -> Rows:
    """All copies (sample, view 1..V-1) of kept samples, round-robin: each sample's first copy, then its
    second, ... in a seeded order, so any prefix spreads copies over many images and few views are read."""
    rng = np.random.default_rng([seed, repeat, 7])
    kept = rng.permutation(np.flatnonzero(np.asarray(ok, dtype=bool)))
    views = np.stack([rng.permutation(np.arange(1, n_views)) for _ in kept]) if len(kept) else None
    if views is None or n_views < 2:
        return Rows(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    return Rows(np.tile(kept, n_views - 1), views.T.reshape(-1).astype(np.int64))


def minority_copies(labels: np.ndarray, ok: np.ndarray, n_views: int, seed: int, rows: Rows,
                    train: np.ndarray, repeat: int = 0) -> Rows:
    """Stored views (1..V-1) of training images of under-represented classes, until each class matches the
    largest: the leak-free augmentation ``--balance augment`` uses, for ``train`` positions into ``rows``."""
    return _fold_copies(_copy_priority(labels, ok, n_views, seed, repeat), rows, train, labels)


def _fold_copies(priority: Rows, rows: Rows, train: np.ndarray, labels: np.ndarray) -> Rows:
    """Copies of training images of under-represented classes, until each class matches the largest."""
    train_samples = rows.sample[train]
    counts = np.bincount(labels[train_samples], minlength=labels.max(initial=0) + 1)
    width = int(max(priority.view.max(initial=0), rows.view.max(initial=0))) + 1
    already = np.isin(priority.sample * width + priority.view, train_samples * width + rows.view[train])
    in_train = np.isin(priority.sample, train_samples) & ~already
    picked_s, picked_v = [], []
    for c in np.flatnonzero((counts > 0) & (counts < counts.max())):
        at = np.flatnonzero(in_train & (labels[priority.sample] == c))[: int(counts.max() - counts[c])]
        picked_s.append(priority.sample[at])
        picked_v.append(priority.view[at])
    if not picked_s:
        return Rows(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    return Rows(np.concatenate(picked_s), np.concatenate(picked_v))


class _RowTable:
    """Evaluation rows plus copies appended once each, addressed by position."""

    def __init__(self, rows: Rows):
        self._sample = list(rows.sample.tolist())
        self._view = list(rows.view.tolist())
        self._at = {(s, v): i for i, (s, v) in enumerate(zip(self._sample, self._view, strict=True))}

    def add(self, rows: Rows) -> np.ndarray:
        out = np.empty(len(rows), dtype=np.int64)
        for i, key in enumerate(zip(rows.sample.tolist(), rows.view.tolist(), strict=True)):
            if key not in self._at:
                self._at[key] = len(self._sample)
                self._sample.append(key[0])
                self._view.append(key[1])
            out[i] = self._at[key]
        return out

    def rows(self) -> Rows:
        return Rows(np.asarray(self._sample, dtype=np.int64), np.asarray(self._view, dtype=np.int64))


def _subject_ids(groups: np.ndarray) -> np.ndarray:
    """Subject ids for grouping; a sample with no subject ("") becomes a subject of its own."""
    out = groups.astype(object).copy()
    unknown = np.flatnonzero(groups == "")
    out[unknown] = [f"\0unknown-{i}" for i in unknown]
    return out.astype(str)


# ----------------------------------------------------------------------------------------------- describing


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


# ----------------------------------------------------------------------------------------------- checks


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FusionfeatError(f"unknown --{option} {value!r}: choose one of {', '.join(choices)}")


def check_folds(n_folds: int) -> None:
    if n_folds < 2:
        raise FusionfeatError(f"--folds must be 2 or more, got {n_folds}")


def check_predefined(fold: np.ndarray) -> None:
    present = np.unique(fold[fold >= 0])
    if len(present) == 0:
        raise FusionfeatError(
            "--cv predefined needs the dataset's own folds, but every image has fold -1: use --cv grouped or stratified"
        )
    if len(present) < 2:
        raise FusionfeatError(f"--cv predefined needs 2 or more dataset folds; found only fold {present[0]}")


def need_views(n_views: int, option: str) -> None:
    if n_views != DIHEDRAL_VIEWS:
        raise FusionfeatError(
            f"{option} needs the 8 rotated/mirrored views of every image, but the store holds {n_views} "
            "view(s): re-extract with --views dihedral8"
        )


def inner_split(rows: np.ndarray, labels: np.ndarray, groups: np.ndarray, fraction: float,
                seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split a fold's training rows into rows to learn from and rows that pick the epoch.

    ``rows`` index ``labels`` and ``groups``. Grouped (StratifiedGroupKFold, one split of about ``fraction``)
    when any group id is known, else stratified by class; no validation when ``fraction`` is 0 or the rows
    are too few to split. Groups are subjects, or source-image ids (``image_groups``) so rotated/mirrored
    copies of one image never validate it. Shared by ``finetune`` and the torch heads' early stopping.
    """
    none = (rows, np.empty(0, dtype=rows.dtype))
    if fraction <= 0:
        return none
    y = labels[rows]
    n_splits = max(2, round(1 / fraction))
    g = np.asarray(groups).astype(str)[rows]
    counts = np.bincount(y, minlength=2)
    if np.any(g != ""):
        subjects = np.where(g == "", np.char.add("\0row-", rows.astype(str)), g)
        n_splits = min(n_splits, len(np.unique(subjects)), int(counts.min()))
        splitter, extra = StratifiedGroupKFold(n_splits, shuffle=True, random_state=seed), (subjects,)
    else:
        n_splits = min(n_splits, int(counts.min()))
        splitter, extra = StratifiedKFold(n_splits, shuffle=True, random_state=seed), ()
    if n_splits < 2:
        return none
    try:
        fit, val = next(splitter.split(rows, y, *extra))
    except ValueError:  # too few rows of a class to split this way: no validation
        return none
    if len(np.unique(y[fit])) < 2:
        return none
    return rows[fit], rows[val]


def image_groups(groups: np.ndarray, sample: np.ndarray) -> np.ndarray:
    """One group id per row: its subject where known, else ``image-<sample>`` (so copies of an image share it)."""
    g = np.asarray(groups).astype(str)
    return np.where(g != "", g, np.char.add("image-", np.asarray(sample).astype(str)))
