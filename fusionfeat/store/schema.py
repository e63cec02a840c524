"""Every HDF5 writer of the store, in one place (the schema is documented in docs/store.md).

A new store is built under a temporary name and renamed into place by ``finish_store``; a finished store is
only changed through ``rewrite`` (copy, edit, fsync, rename). The fine-tuning fold plan is a ``FoldPlan``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from fusionfeat.errors import StoreError
from fusionfeat.fsio import fsync_dir, temp_folder
from fusionfeat.store.chunks import DEFLATE_LEVEL
from fusionfeat.store.partial import PartialStore

SCHEMA_VERSION = 1
STR_DTYPE = h5py.string_dtype("utf-8")


def create_store_file(tmp: Path, samples: dict[str, np.ndarray], classes: list[str], root_attrs: dict) -> h5py.File:
    """Create a new HDF5 store with its ``/samples`` table and root attributes; returns it open for writing.

    ``classes`` are the K >= 2 class names in label order; with two, the second is the positive class (the
    ``positive`` attribute), with more there is none (``positive`` is ``""``)."""
    h5 = h5py.File(tmp, "w")
    group = h5.create_group("samples")
    for name, values in samples.items():
        if values.dtype.kind in "US":
            group.create_dataset(name, data=values.astype(object), dtype=STR_DTYPE)
        else:
            group.create_dataset(name, data=values)
    group.attrs["classes"] = classes
    group.attrs["positive"] = classes[1] if len(classes) == 2 else ""  # K > 2: no positive class
    for key, value in root_attrs.items():
        h5.attrs[key] = value
    h5.attrs["schema_version"] = SCHEMA_VERSION
    return h5


def create_feature_datasets(parent: h5py.Group, name: str, n: int, n_views: int, dim: int,
                            n_tokens: int | None, attrs: dict) -> h5py.Group:
    """``<parent>/<name>/pooled`` (N, V, D) float32 and, if ``n_tokens``, ``tokens`` (N, V, T, C) float16."""
    group = parent.create_group(name)
    group.create_dataset("pooled", shape=(n, n_views, dim), dtype="f4",
                         chunks=(min(n, 1024), n_views, dim))
    if n_tokens:
        group.create_dataset("tokens", shape=(n, n_views, n_tokens, dim), dtype="f2",
                             chunks=(1, 1, n_tokens, dim), compression="gzip", compression_opts=DEFLATE_LEVEL,
                             shuffle=True)  # the filters fusionfeat.store.chunks reproduces
    for key, value in attrs.items():
        group.attrs[key] = json.dumps(value) if isinstance(value, (dict, list)) else value
    return group


def finish_store(h5: h5py.File, tmp: Path, final: Path) -> None:
    """Mark complete, flush, fsync and rename into place."""
    h5.attrs["complete"] = True
    h5.attrs["completed"] = now_iso()
    h5.flush()
    h5.close()
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, final)
    fsync_dir(final.parent)


def dataset_sha256(dataset: h5py.Dataset, rows: int = 256) -> str:
    """SHA-256 of a dataset's array bytes (C order, as stored), read ``rows`` rows at a time."""
    digest = hashlib.sha256()
    for lo in range(0, dataset.shape[0], rows):
        digest.update(np.ascontiguousarray(dataset[lo:lo + rows]).tobytes())
    return digest.hexdigest()


def feature_datasets(h5: h5py.File) -> list[h5py.Dataset]:
    """Every dataset under ``/features`` (pooled and tokens of every backbone), in a stable order."""
    found: list[h5py.Dataset] = []
    if "features" in h5:
        h5["features"].visititems(lambda _, obj: found.append(obj) if isinstance(obj, h5py.Dataset) else None)
    return sorted(found, key=lambda d: d.name)


def record_checksums(h5: h5py.File) -> None:
    """Store each feature dataset's SHA-256 as its ``sha256`` attribute (checked by ``info --verify``)."""
    for dataset in feature_datasets(h5):
        dataset.attrs["sha256"] = dataset_sha256(dataset)


@contextlib.contextmanager
def rewrite(path: Path) -> Iterator[h5py.File]:
    """Edit a finished store on a copy that replaces it only if the block succeeds (crash-safe append).

    A symbolic link is edited through (the link stays, its target is replaced) and the file's permission bits
    are kept; a store without any write permission bit is refused (the user made it read-only). The copy lives
    in a marked temporary folder (``fsio.temp_folder``), so cleaning up after a kill touches nothing else.
    """
    path = Path(path).resolve()
    mode = stat.S_IMODE(path.stat().st_mode)
    if not mode & 0o222:
        raise StoreError(f"{path} is read-only (mode {mode:04o}); make it writable (chmod u+w) to add to it, or "
                         "work on a copy")
    folder = temp_folder(path, "rewrite")
    tmp = folder / path.name
    try:
        shutil.copyfile(path, tmp)
        os.chmod(tmp, mode)
        h5 = h5py.File(tmp, "r+")
        try:
            yield h5
        except BaseException:
            h5.close()
            raise
        finish_store(h5, tmp, path)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def decode_attr(value):
    """An HDF5 attribute as a Python value (JSON strings decoded, numpy scalars and arrays unwrapped)."""
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.ndarray):
        return [decode_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


@dataclass(frozen=True, eq=False)
class FoldPlan:
    """The folds fine-tuned features were made under: how (protocol, number of folds, seed) and the test fold of
    every store row (``fold``, -1 for rows in no test fold). Stored as ``/fold_plan``.

    ``classes``: the ``--classes`` selection the backbones were fine-tuned on, as each store class's new class
    (``None``: left out); ``None`` when every class of the store was used as it is. It is part of the plan's
    identity only when given, so plans of stores fine-tuned on all their classes keep their SHA-256."""

    protocol: str
    n_folds: int
    seed: int
    fold: np.ndarray
    classes: dict[str, str | None] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "protocol", str(self.protocol))
        object.__setattr__(self, "n_folds", int(self.n_folds))
        object.__setattr__(self, "seed", int(self.seed))
        object.__setattr__(self, "fold", np.asarray(self.fold, dtype=np.int64))
        if self.classes is not None:
            object.__setattr__(self, "classes", {str(k): None if v is None else str(v)
                                                 for k, v in dict(self.classes).items()})

    @property
    def sha256(self) -> str:
        """Identity of the plan (recorded beside every fine-tuned fold)."""
        value = {"protocol": self.protocol, "n_folds": self.n_folds, "seed": self.seed, "fold": self.fold.tolist()}
        if self.classes is not None:
            value["classes"] = self.classes
        return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FoldPlan):
            return NotImplemented
        return (self.protocol, self.n_folds, self.seed, self.classes) == \
            (other.protocol, other.n_folds, other.seed, other.classes) and np.array_equal(self.fold, other.fold)

    __hash__ = None  # type: ignore[assignment]

    def describe(self) -> str:
        """The options that reproduce the plan."""
        text = f"--cv {self.protocol} --folds {self.n_folds} --seed {self.seed}"
        return text if self.classes is None else f"{text} --classes {classes_spec(self.classes)}"

    def to_attrs(self) -> dict:
        """The attributes of ``/fold_plan`` (the per-row folds are its ``fold`` dataset)."""
        out = {"protocol": self.protocol, "n_folds": self.n_folds, "seed": self.seed, "sha256": self.sha256}
        if self.classes is not None:
            out["classes"] = json.dumps(self.classes, sort_keys=True)
        return out

    @classmethod
    def from_attrs(cls, attrs: dict, fold: np.ndarray) -> FoldPlan:
        """The plan from ``/fold_plan``'s attributes (decoded) and its ``fold`` dataset."""
        classes = attrs.get("classes")
        return cls(str(attrs["protocol"]), int(attrs["n_folds"]), int(attrs["seed"]), fold,
                   classes if isinstance(classes, dict) else None)


def classes_spec(mapping: dict[str, str | None] | None) -> str:
    """A ``--classes`` value that makes ``mapping`` (store class -> new class, None: left out); ``""`` for none."""
    if not mapping:
        return ""
    merged: dict[str, list[str]] = {}
    for old, new in mapping.items():
        if new is not None:
            merged.setdefault(new, []).append(old)
    return ",".join(new if olds == [new] else f"{new}={'+'.join(olds)}" for new, olds in sorted(merged.items()))


def write_fold_plan(h5: h5py.File, plan: FoldPlan) -> None:
    """Store the fold plan; a different stored plan (only reachable with --overwrite) drops every fine-tuned fold."""
    if "fold_plan" in h5:
        if h5["fold_plan"].attrs.get("sha256") == plan.sha256:
            return
        del h5["fold_plan"]
        if "finetuned" in h5:
            del h5["finetuned"]
    group = h5.create_group("fold_plan")
    group.create_dataset("fold", data=plan.fold)
    for key, value in plan.to_attrs().items():
        group.attrs[key] = value


def finetuned_fold_group(h5: h5py.File, plan: FoldPlan, fold: int) -> h5py.Group:
    """``/finetuned/fold_<fold>`` (created if needed) under ``plan``, which is stored first."""
    write_fold_plan(h5, plan)
    parent = h5.require_group("finetuned").require_group(f"fold_{fold}")
    parent.attrs["fold"] = fold
    parent.attrs["fold_plan_sha256"] = plan.sha256
    return parent


def write_finetuned_features(parent: h5py.Group, name: str, n: int, n_views: int, dim: int, n_tokens: int | None,
                             attrs: dict, batches: PartialStore) -> None:
    """Replace ``<parent>/<name>`` with the features in the committed batch files ``batches`` (each holds
    ``rows``, ``pooled`` and, with ``n_tokens``, ``tokens``); every one of the ``n`` rows must be covered."""
    if name in parent:
        del parent[name]
    group = create_feature_datasets(parent, name, n, n_views, dim, n_tokens, attrs)
    covered = np.zeros(n, dtype=bool)
    for batch in sorted(batches.done()):
        arrays = batches.read(batch)
        lo, hi = int(arrays["rows"][0]), int(arrays["rows"][-1]) + 1
        group["pooled"][lo:hi] = arrays["pooled"]
        if "tokens" in group:
            group["tokens"][lo:hi] = arrays["tokens"]
        covered[lo:hi] = True
    if not covered.all():
        raise StoreError(f"{batches.folder} lacks the embeddings of {int((~covered).sum())} images; "
                         "rerun to compute them")
