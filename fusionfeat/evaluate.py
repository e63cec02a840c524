"""Cross-validation of heads on cached features: protocols, fold-local balancing, metrics, one loop.

Every split is built before any model is fitted, as positions into one table of rows ``(sample, view)``:
the evaluation rows come first (originals at view 0, or the paper's expanded rows), then the rotated or
mirrored copies used only for training. Each non-paper split is checked: no image, and under ``grouped``
no subject, is on both sides (``LeakageError`` otherwise: a bug, not user input).
See ``docs/protocols.md``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.base import clone
from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold
from tqdm.auto import tqdm

from fusionfeat import metrics as fm
from fusionfeat.errors import FusionfeatError, StoreError
from fusionfeat.estimators import HeadSpec, expand_head_names, resolve_head
from fusionfeat.runtime import head_threads

PROTOCOLS: tuple[str, ...] = ("grouped", "stratified", "predefined", "paper")
BALANCES: tuple[str, ...] = ("weight", "augment", "none")
FEATURES: tuple[str, ...] = ("frozen", "finetuned")
DIHEDRAL_VIEWS = 8
DEFAULT_FOLDS = 5
DEFAULT_SEED = 0


class LeakageError(AssertionError):
    """An image or a subject is on both sides of a split that must keep them apart: a bug, never input."""


# ----------------------------------------------------------------------------------------------- features


def feature_matrix(store: Any, spec: Any, index: np.ndarray, view: int = 0, fold: int | None = None) -> np.ndarray:
    """X for a head: per row of ``index`` (in that order) its backbones' blocks, flattened, in spec order.

    Pooled inputs give float32, token inputs stay float16 to halve memory. ``fold=k`` reads the features
    fine-tuned for CV fold k instead of the frozen ones.
    """
    index = np.asarray(index, dtype=np.int64)
    out = np.empty((len(index), _width(store, spec)), dtype=_dtype(spec))
    _fill(store, spec, index, view, fold, out)
    return out


def _width(store: Any, spec: Any) -> int:
    return sum(int(np.prod(store.block_shape(b, spec.inputs))) for b in spec.backbones)


def _dtype(spec: Any) -> type:
    return np.float16 if spec.inputs == "tokens" else np.float32


def _fill(store: Any, spec: Any, index: np.ndarray, view: int, fold: int | None, out: np.ndarray) -> None:
    """Write the rows ``index`` of one view into ``out`` (same order), reading each stored row once."""
    if len(index) == 0:
        return
    uniq, inverse = np.unique(index, return_inverse=True)
    start = 0
    for backbone in spec.backbones:
        read = store.tokens if spec.inputs == "tokens" else store.pooled
        block = np.asarray(read(backbone, view=view, index=uniq, fold=fold)).reshape(len(uniq), -1)
        out[:, start : start + block.shape[1]] = block[inverse]
        start += block.shape[1]


def rows_matrix(store: Any, spec: Any, rows: Rows, fold: int | None = None) -> np.ndarray:
    """X for rows that mix views (originals and their rotated/mirrored copies), in row order."""
    out = np.empty((len(rows), _width(store, spec)), dtype=_dtype(spec))
    for view in np.unique(rows.view):
        at = np.flatnonzero(rows.view == view)
        part = np.empty((len(at), out.shape[1]), dtype=out.dtype)
        _fill(store, spec, rows.sample[at], int(view), fold, part)
        out[at] = part
    return out


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
    """One fit: positions into ``Plan.rows`` for training (may include copies) and testing."""

    repeat: int
    fold: int
    train: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class Plan:
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
    _check_choice("cv", protocol, PROTOCOLS)
    if protocol == "paper":
        raise FusionfeatError(
            "the paper protocol splits rotated/mirrored copies as rows of their own, so it has no "
            "per-sample fold plan: use --cv grouped, stratified or predefined here"
        )
    fold = np.full(len(labels), -1, dtype=np.int64)
    idx = np.flatnonzero(mask)
    if protocol == "predefined":
        fold[idx] = np.asarray(predefined, dtype=np.int64)[idx]
        _check_predefined(fold[idx])
        return fold
    _check_folds(n_folds)
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
) -> Plan:
    """Every split of a run. ``fixed_folds`` (a stored fine-tuning plan) replaces fold planning."""
    _check_choice("cv", protocol, PROTOCOLS)
    _check_choice("balance", balance, BALANCES)
    if repeats < 1:
        raise FusionfeatError(f"--repeats must be 1 or more, got {repeats}")
    labels = np.asarray(labels, dtype=np.int64)
    groups = np.asarray(groups).astype(str)
    ok = np.asarray(ok, dtype=bool)
    if protocol == "paper" or balance == "augment":
        _need_views(n_views, "--cv paper" if protocol == "paper" else "--balance augment")
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
            check_split(rows.sample[split.train], rows.sample[split.test], groups, protocol == "grouped")
    described = describe_protocol(
        protocol, labels, groups, ok, rows, n_eval, test_fold, n_folds, seed, repeats, balance, n_copies
    )
    return Plan(rows, n_eval, test_fold, splits, described)


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


def check_split(train_samples: np.ndarray, test_samples: np.ndarray, groups: np.ndarray, by_subject: bool) -> None:
    """Raise ``LeakageError`` if an image (any view), or with ``by_subject`` a subject, is on both sides."""
    shared = np.intersect1d(train_samples, test_samples)
    if shared.size:
        raise LeakageError(f"{shared.size} images are in both train and test (first: sample {shared[0]})")
    if by_subject:
        groups = np.asarray(groups).astype(str)
        both = (set(groups[train_samples]) & set(groups[test_samples])) - {""}
        if both:
            raise LeakageError(f"{len(both)} subjects are in both train and test (e.g. {sorted(both)[0]!r})")


def _stratified_rows(y: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    _check_folds(n_folds)
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


# ----------------------------------------------------------------------------------------------- results


@dataclass
class FoldResult:
    """One fitted head on one split: its metrics, curves, counts and (torch) training history."""

    head: str
    repeat: int
    fold: int
    metrics: dict[str, float]
    confusion: list[list[int]]
    roc: dict[str, list[float]]
    n_train: int
    n_test: int
    history: list[dict[str, float]] | None = None
    fusion_weights: dict[str, dict[str, float]] | None = None


@dataclass
class CVResult:
    """Everything a cross-validation run produced; ``write_run`` turns it into a run folder."""

    heads: list[str]
    head_info: dict[str, dict[str, Any]]
    classes: list[str]
    positive: str
    protocol: dict[str, Any]
    provenance: dict[str, Any]
    features: str
    rows: dict[str, np.ndarray]  # sample, view, path, label, group of the evaluation rows
    test_fold: np.ndarray  # (repeats, n_eval)
    oof: dict[str, np.ndarray]  # head -> (repeats, n_eval) out-of-fold P(positive)
    oof_weights: dict[str, np.ndarray] = field(default_factory=dict)  # head -> (repeats, n_eval, n_weights)
    weight_names: dict[str, list[str]] = field(default_factory=dict)
    folds: list[FoldResult] = field(default_factory=list)

    def fold_results(self, head: str) -> list[FoldResult]:
        """The fold results of one head, in (repeat, fold) order."""
        return [f for f in self.folds if f.head == head]

    def summary(self) -> dict[str, dict[str, dict[str, float]]]:
        """head -> metric -> mean, std, 95% CI over repeats, counts."""
        return {
            head: fm.summarize(
                [f.metrics for f in self.fold_results(head)], [f.repeat for f in self.fold_results(head)]
            )
            for head in self.heads
        }

    def fusion_weights(self) -> dict[str, dict[str, dict[str, float]]]:
        """head -> true class -> weight name -> mean out-of-fold fusion weight (attention heads only)."""
        out = {}
        for head, w in self.oof_weights.items():
            labels = self.rows["label"]
            out[head] = {
                cls: dict(zip(self.weight_names[head], _class_mean(w, labels == c), strict=True))
                for c, cls in enumerate(self.classes)
                if np.any(labels == c)
            }
        return out


def _class_mean(w: np.ndarray, of_class: np.ndarray) -> list[float]:
    return np.nanmean(w[:, of_class].reshape(-1, w.shape[2]), axis=0).tolist()


# ----------------------------------------------------------------------------------------------- the loop


def cross_validate(
    store: Any,
    heads: Sequence[str | HeadSpec],
    protocol: str | None = None,
    folds: int | None = None,
    seed: int | None = None,
    repeats: int = 1,
    balance: str = "weight",
    features: str = "frozen",
    device: str = "auto",
    positive: str | None = None,
    progress: bool = True,
) -> CVResult:
    """Cross-validate heads on a store's cached features under one protocol; one loop for every head.

    ``protocol=None`` means ``grouped`` when subjects are known, else ``stratified``. ``folds``/``seed``
    default to 5 and 0, or, with ``features="finetuned"``, to the stored fine-tuning plan (which any
    other request contradicts). ``heads`` are names (see ``fusionfeat.estimators``) or ``HeadSpec``s.
    Each fold fits ``sklearn.base.clone`` of the head's estimator.
    """
    _check_choice("balance", balance, BALANCES)
    _check_choice("features", features, FEATURES)
    classes = [str(c) for c in store.classes]
    positive = positive if positive is not None else str(store.positive_class)
    if positive not in classes:
        raise FusionfeatError(f"positive class {positive!r} is not in the store's classes {classes}")
    if len(classes) != 2:
        raise FusionfeatError(f"fusionfeat evaluates binary tasks; the store has classes {classes}")
    specs = resolve_heads(store, heads, features)
    plan, fixed = _plan_for_store(store, protocol, folds, seed, repeats, balance, features)
    labels = np.asarray(store.labels, dtype=np.int64)
    if len(np.unique(labels[plan.rows.sample[: plan.n_eval]])) < 2:
        raise FusionfeatError("the store holds a single class among usable images: nothing to classify")
    if features == "finetuned":
        _check_finetuned_features(store, specs, plan)
    result = _empty_result(store, specs, plan, classes, positive, features, fixed)
    bar = tqdm(total=len(specs) * len(plan.splits), desc="cross-validation", unit="fit", disable=not progress)
    try:
        for spec in specs:
            _run_head(
                store,
                spec,
                plan,
                labels,
                classes.index(positive),
                balance,
                features,
                device,
                progress,
                result,
                bar,
            )
    finally:
        bar.close()
    return result


def resolve_heads(store: Any, heads: Sequence[str | HeadSpec], features: str = "frozen") -> list[HeadSpec]:
    """HeadSpecs for head names (``"all"`` and comma lists expand) or ready specs, checked against the store.

    ``"attention"`` becomes ``attention-spatial`` when the store holds token maps, else ``attention-pooled``.
    """
    if isinstance(heads, str):
        heads = [heads]
    specs: list[HeadSpec] = []
    for entry in heads:
        for spec in [entry] if isinstance(entry, HeadSpec) else _specs_named(store, str(entry), features):
            if spec.name not in [s.name for s in specs]:
                specs.append(spec)
    if not specs:
        raise FusionfeatError("no heads given: name at least one head, e.g. --head attention or --head all")
    for spec in specs:
        _check_store_has(store, spec)
    return specs


def _specs_named(store: Any, entry: str, features: str) -> list[HeadSpec]:
    names = [n for part in entry.split(",") if part.strip() for n in expand_head_names(part.strip())]
    return [_resolve(store, name, features) for name in names]


def _resolve(store: Any, name: str, features: str) -> HeadSpec:
    """The token variant of a head when the store holds its backbones' tokens, else the pooled one."""
    spec = resolve_head(name, True)
    if spec.inputs == "tokens" and not _has_tokens(store, spec.backbones, features):
        spec = resolve_head(name, False)
    return spec


def _has_tokens(store: Any, backbones: Sequence[str], features: str) -> bool:
    """Whether every backbone is stored with token maps (in the first fine-tuned fold, if fine-tuned)."""
    folds = store.finetuned_folds() if features == "finetuned" else []
    extra = {"fold": folds[0]} if folds else {}
    try:
        return all(b in store.backbones and store.has_tokens(b, **extra) for b in backbones)
    except StoreError:  # a backbone that was not fine-tuned: reported with the head's name later
        return False


def _check_store_has(store: Any, spec: HeadSpec) -> None:
    where = getattr(store, "path", "the feature store")
    missing = [b for b in spec.backbones if b not in store.backbones]
    if missing:
        raise FusionfeatError(
            f"head {spec.name!r} needs backbone(s) {', '.join(missing)} but {where} holds "
            f"{', '.join(store.backbones) or 'none'}: extract them first (fusionfeat extract --backbones ...)"
        )
    if spec.inputs == "tokens":
        lacking = [b for b in spec.backbones if not store.has_tokens(b)]
        if lacking:
            raise FusionfeatError(
                f"head {spec.name!r} reads token grids, but {where} has no tokens for {', '.join(lacking)}: "
                "re-extract with tokens, or choose a pooled head"
            )


def _plan_for_store(
    store: Any,
    protocol: str | None,
    folds: int | None,
    seed: int | None,
    repeats: int,
    balance: str,
    features: str,
) -> tuple[Plan, dict[str, Any] | None]:
    ok = np.asarray(store.ok, dtype=bool)
    if not ok.any():
        raise FusionfeatError(f"{getattr(store, 'path', 'the feature store')} has no usable images (all skipped)")
    fixed = _finetuned_plan(store, protocol, folds, seed, repeats) if features == "finetuned" else None
    defaulted = protocol is None and fixed is None
    if fixed is not None:
        protocol, folds, seed = fixed["protocol"], fixed["n_folds"], fixed["seed"]
    protocol = protocol or default_protocol(store.groups, ok)
    if protocol == "predefined" and np.all(np.asarray(store.folds)[ok] < 0):
        raise FusionfeatError(
            "--cv predefined needs the dataset's own folds, but this store has none (all -1): "
            "use --cv grouped or stratified"
        )
    plan = make_plan(
        store.labels,
        store.groups,
        store.folds,
        ok,
        int(store.n_views),
        protocol=protocol,
        n_folds=DEFAULT_FOLDS if folds is None else int(folds),
        seed=DEFAULT_SEED if seed is None else int(seed),
        repeats=repeats,
        balance=balance,
        fixed_folds=None if fixed is None else np.where(ok, fixed["fold"], -1),
    )
    plan.protocol["defaulted"] = defaulted
    return plan, fixed


def _finetuned_plan(
    store: Any, protocol: str | None, folds: int | None, seed: int | None, repeats: int
) -> dict[str, Any]:
    """The stored fine-tuning plan; any request that contradicts it would leak, so it is refused."""
    plan = store.fold_plan()
    if not plan:
        raise FusionfeatError("--features finetuned: this store has no fine-tuned features (run fusionfeat finetune)")
    requested = {"protocol": ("--cv", protocol), "n_folds": ("--folds", folds), "seed": ("--seed", seed)}
    for key, (flag, value) in requested.items():
        if value is not None and value != plan[key]:
            raise FusionfeatError(
                f"--features finetuned: the backbones were fine-tuned with {flag} {plan[key]}; evaluating "
                f"with {flag} {value} would test on images a backbone was trained on. Leave {flag} out, "
                "or fine-tune again with it"
            )
    if repeats != 1:
        raise FusionfeatError("--features finetuned supports --repeats 1 only (one fine-tuning per fold)")
    fold = np.asarray(plan["fold"], dtype=np.int64)
    have = set(int(k) for k in store.finetuned_folds())
    missing = sorted(set(np.unique(fold[fold >= 0]).tolist()) - have)
    if missing:
        raise FusionfeatError(f"--features finetuned: folds {missing} are not fine-tuned yet (run fusionfeat finetune)")
    return {
        "protocol": str(plan["protocol"]),
        "n_folds": int(plan["n_folds"]),
        "seed": int(plan["seed"]),
        "fold": fold,
    }


def _empty_result(
    store: Any,
    specs: list[Any],
    plan: Plan,
    classes: list[str],
    positive: str,
    features: str,
    fixed: dict[str, Any] | None,
) -> CVResult:
    sample = plan.rows.sample[: plan.n_eval]
    provenance = dict(store.provenance())
    if fixed is not None:
        provenance["fine_tuning_plan"] = {k: fixed[k] for k in ("protocol", "n_folds", "seed")}
    protocol = dict(plan.protocol, features=features, positive=positive)
    return CVResult(
        heads=[s.name for s in specs],
        head_info={
            s.name: {"backbones": list(s.backbones), "inputs": s.inputs, "is_torch": bool(s.is_torch)} for s in specs
        },
        classes=classes,
        positive=positive,
        protocol=protocol,
        provenance=provenance,
        features=features,
        rows={
            "sample": sample,
            "view": plan.rows.view[: plan.n_eval],
            "path": np.asarray(store.paths).astype(str)[sample],
            "label": np.asarray(store.labels, dtype=np.int64)[sample],
            "group": np.asarray(store.groups).astype(str)[sample],
        },
        test_fold=plan.test_fold,
        oof={s.name: np.full(plan.test_fold.shape, np.nan) for s in specs},
    )


def _run_head(
    store: Any,
    spec: Any,
    plan: Plan,
    labels: np.ndarray,
    pos: int,
    balance: str,
    features: str,
    device: str,
    progress: bool,
    result: CVResult,
    bar: Any,
) -> None:
    """Fit and score one head on every split, filling ``result``."""
    y = labels[plan.rows.sample]
    finetuned = features == "finetuned"
    blocks = _blocks(store, spec, plan.splits[0].fold if finetuned else None)
    X = None if finetuned else rows_matrix(store, spec, plan.rows)  # read once, shared by every split
    templates: dict[int, Any] = {}
    for split in plan.splits:
        bar.set_postfix_str(f"{spec.name} repeat {split.repeat} fold {split.fold}")
        if split.repeat not in templates:
            templates[split.repeat] = spec.build(
                blocks=blocks,
                class_weight="balanced" if balance == "weight" else None,
                random_state=_seed_of(plan) + split.repeat,
                device=device,
                progress=progress,
            )
        X_fold = rows_matrix(store, spec, plan.rows, fold=split.fold) if finetuned else X
        with head_threads():  # 1 CPU thread unless the caller chose (fit --threads)
            result.folds.append(_fit_fold(clone(templates[split.repeat]), spec, X_fold, y, split, pos, result))
        bar.update(1)


def _blocks(store: Any, spec: Any, fold: int | None) -> tuple[tuple[int, int], ...]:
    """Block shapes in spec order (of fine-tuned fold ``fold`` when given)."""
    extra = {} if fold is None else {"fold": fold}
    return tuple(tuple(int(x) for x in store.block_shape(b, spec.inputs, **extra)) for b in spec.backbones)


def _check_finetuned_features(store: Any, specs: list[HeadSpec], plan: Plan) -> None:
    """Fail before any fit when a fold lacks a backbone or tokens a head needs."""
    for fold in sorted({s.fold for s in plan.splits}):
        for spec in specs:
            try:
                _blocks(store, spec, fold)
            except StoreError as exc:
                raise StoreError(
                    f"head {spec.name!r} reads {' + '.join(spec.backbones)} {spec.inputs}, which fold {fold} "
                    f"lacks ({exc}): fine-tune those backbones too, or pick a head that reads only what was "
                    "fine-tuned"
                ) from None


def _seed_of(plan: Plan) -> int:
    return int(plan.protocol["seed"])


def _fit_fold(
    est: Any, spec: Any, X: np.ndarray, y: np.ndarray, split: Split, pos: int, result: CVResult
) -> FoldResult:
    t0 = time.perf_counter()
    est.fit(X[split.train], y[split.train])
    fit_time = time.perf_counter() - t0
    X_test = X[split.test]
    t0 = time.perf_counter()
    proba = np.asarray(est.predict_proba(X_test))
    predict_time = time.perf_counter() - t0
    est_classes = list(np.asarray(est.classes_).tolist())
    if pos not in est_classes:
        raise FusionfeatError(f"head {spec.name!r}: fold {split.fold} trained without the positive class")
    p = proba[:, est_classes.index(pos)].astype(float)
    y_pred = np.asarray(est_classes)[proba.argmax(axis=1)]
    y_test = y[split.test]
    result.oof[spec.name][split.repeat, split.test] = p
    scores = fm.binary_metrics(y_test, y_pred, p, positive=pos)
    scores.update(fit_time=fit_time, predict_time=predict_time)
    return FoldResult(
        head=spec.name,
        repeat=split.repeat,
        fold=split.fold,
        metrics=scores,
        confusion=fm.confusion(y_test, y_pred, positive=pos).tolist(),
        roc=fm.roc_points(y_test, p, positive=pos),
        n_train=len(split.train),
        n_test=len(split.test),
        history=_history(est),
        fusion_weights=_fusion_weights(est, spec, X_test, y_test, split, result),
    )


def _history(est: Any) -> list[dict[str, float]] | None:
    history = getattr(est, "history_", None)
    if not history:
        return None
    return [{k: _num(v) for k, v in epoch.items()} for epoch in history]


def _num(v: Any) -> float | None:
    try:
        x = float(v)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(x) else x


def _fusion_weights(
    est: Any, spec: Any, X_test: np.ndarray, y_test: np.ndarray, split: Split, result: CVResult
) -> dict[str, dict[str, float]] | None:
    weigh: Callable[[np.ndarray], np.ndarray] | None = getattr(est, "fusion_weights", None)
    if weigh is None:
        return None
    w = np.asarray(weigh(X_test), dtype=float).reshape(len(X_test), -1)
    names = list(spec.backbones) if w.shape[1] == len(spec.backbones) else [f"w{i}" for i in range(w.shape[1])]
    if spec.name not in result.oof_weights:
        result.oof_weights[spec.name] = np.full(result.test_fold.shape + (w.shape[1],), np.nan)
        result.weight_names[spec.name] = names
    result.oof_weights[spec.name][split.repeat, split.test] = w
    return {
        result.classes[c]: dict(zip(names, w[y_test == c].mean(axis=0).tolist(), strict=True))
        for c in np.unique(y_test).tolist()
    }


# ----------------------------------------------------------------------------------------------- checks


def _check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FusionfeatError(f"unknown --{option} {value!r}: choose one of {', '.join(choices)}")


def _check_folds(n_folds: int) -> None:
    if n_folds < 2:
        raise FusionfeatError(f"--folds must be 2 or more, got {n_folds}")


def _check_predefined(fold: np.ndarray) -> None:
    present = np.unique(fold[fold >= 0])
    if len(present) == 0:
        raise FusionfeatError(
            "--cv predefined needs the dataset's own folds, but every image has fold -1: use --cv grouped or stratified"
        )
    if len(present) < 2:
        raise FusionfeatError(f"--cv predefined needs 2 or more dataset folds; found only fold {present[0]}")


def _need_views(n_views: int, option: str) -> None:
    if n_views != DIHEDRAL_VIEWS:
        raise FusionfeatError(
            f"{option} needs the 8 rotated/mirrored views of every image, but the store holds {n_views} "
            "view(s): re-extract with --views dihedral8"
        )
