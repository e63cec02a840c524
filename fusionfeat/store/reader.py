"""Read access to a finished store (``FeatureStore``), its integrity check (``verify_checksums``), and the one
rule by which the Python API takes a store (``as_store``, ``accepts_store``: a path or an open store)."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import h5py
import numpy as np

from fusionfeat.errors import FusionfeatError, StoreError
from fusionfeat.store.partial import partial_dir
from fusionfeat.store.schema import SCHEMA_VERSION, FoldPlan, dataset_sha256, decode_attr, feature_datasets


def verify_checksums(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``(dataset, status)`` for every feature dataset: OK, MISMATCH, UNREADABLE (…) or NO CHECKSUM."""
    path = Path(path).expanduser()
    FeatureStore.open(path).close()  # the usual clear errors for a missing, foreign or unfinished file
    results = []
    with h5py.File(path, "r") as h5:
        for dataset in feature_datasets(h5):
            recorded = decode_attr(dataset.attrs.get("sha256", ""))
            try:
                actual = dataset_sha256(dataset)
            except OSError as exc:
                results.append((dataset.name, f"UNREADABLE ({_one_line(exc)})"))
                continue
            if not recorded:
                results.append((dataset.name, "NO CHECKSUM"))
            else:
                results.append((dataset.name, "OK" if actual == recorded else "MISMATCH"))
    return results


def is_own_store(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular HDF5 file with a fusionfeat store's layout (finished or not): what
    ``extract --overwrite`` may replace."""
    path = Path(path)
    if path.is_symlink() or not path.is_file():
        return False
    try:
        if not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as h5:
            return "samples" in h5 and "schema_version" in h5.attrs
    except (OSError, ValueError):
        return False


def _check_layout(h5: h5py.File, path: Path) -> None:
    """A finished fusionfeat store of a schema this version reads, without links to elsewhere."""
    if "samples" not in h5 or "features" not in h5:
        raise StoreError(f"{path} is HDF5 but not a fusionfeat store (no /samples and /features)")
    version = h5.attrs.get("schema_version", SCHEMA_VERSION)
    if not isinstance(version, int | np.integer) or not 1 <= int(version) <= SCHEMA_VERSION:
        shown = int(version) if isinstance(version, int | np.integer) else repr(version)
        raise StoreError(f"{path} has store schema version {shown}; this fusionfeat reads versions 1 to "
                         f"{SCHEMA_VERSION}: update fusionfeat, or re-extract the store")
    link = _first_link(h5)
    if link:
        raise StoreError(f"{path}: {link} is a link to another place (fusionfeat writes none); the store was "
                         "edited: re-extract it")
    if not h5.attrs.get("complete", False):
        raise StoreError(f"{path} is marked incomplete; rerun `fusionfeat extract` to finish it")


def _first_link(group: h5py.Group, prefix: str = "") -> str:
    """The first soft or external link under ``group`` ("" when none): fusionfeat's stores hold hard links only."""
    for name in group:
        link = group.get(name, getlink=True)
        if isinstance(link, h5py.SoftLink | h5py.ExternalLink):
            return f"{prefix}/{name}"
        item = group.get(name)
        if isinstance(item, h5py.Group):
            found = _first_link(item, f"{prefix}/{name}")
            if found:
                return found
    return ""


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


class FeatureStore:
    """Read access to a finished store; arrays come back per backbone, view and subset of rows."""

    def __init__(self, h5: h5py.File, path: Path):
        self._h5 = h5
        self.path = path
        try:
            self._load_samples(h5)
            self._check_samples(h5)
        except StoreError:
            h5.close()
            raise
        except (OSError, KeyError, ValueError, TypeError) as exc:
            h5.close()
            raise StoreError(f"{path}: cannot read its /samples table ({_one_line(exc)}); the store is damaged: "
                             "re-extract it") from None

    def _check_samples(self, h5: h5py.File) -> None:
        """The /samples table and every feature dataset have the shape fusionfeat writes (one row per sample)."""
        n = len(self.paths)
        optional = ("nonfinite",) if "nonfinite" in h5["samples"] else ()  # absent in stores made before it
        for name in ("label", "group", "fold", "sha256", "ok", "error", *optional):
            if len(h5["samples"][name]) != n:
                raise StoreError(f"{self.path}: /samples/{name} has {len(h5['samples'][name])} rows for {n} images; "
                                 "the store is damaged: re-extract it")
        binary_ok = len(self.classes) == 2 and self.positive_class in self.classes
        multi_ok = len(self.classes) > 2 and self.positive_class is None
        if not (binary_ok or multi_ok) or len(set(self.classes)) != len(self.classes):
            raise StoreError(f"{self.path}: its classes {self.classes} (positive {self.positive_class!r}) are not "
                             "what fusionfeat writes; the store is damaged: re-extract it")
        bad = (self.labels < 0) | (self.labels >= len(self.classes))
        if bad.any():
            raise StoreError(f"{self.path}: {int(bad.sum())} label(s) are not class indices (first "
                             f"{int(self.labels[bad][0])} for {self.paths[np.flatnonzero(bad)[0]]}); the store is "
                             "damaged: re-extract it")
        for dataset in feature_datasets(h5):
            if not dataset.shape or dataset.shape[0] != n:
                raise StoreError(f"{self.path}: {dataset.name} has shape {dataset.shape} for {n} images; the store "
                                 "is damaged: re-extract it")

    def _load_samples(self, h5: h5py.File) -> None:
        samples = h5["samples"]
        self.classes: list[str] = [str(c) for c in decode_attr(samples.attrs["classes"])]
        positive = str(decode_attr(samples.attrs.get("positive", "")))
        # two classes: the positive one (binary metrics); more: None (no class is "positive")
        self.positive_class: str | None = positive if len(self.classes) == 2 or positive else None
        self.paths = samples["path"].asstr()[:]
        self.labels = samples["label"][:].astype(np.int64)
        self.groups = samples["group"].asstr()[:]
        self.folds = samples["fold"][:].astype(np.int64)
        self.sha256 = samples["sha256"].asstr()[:]
        self.ok = samples["ok"][:].astype(bool)
        self.errors = samples["error"].asstr()[:]
        self.nonfinite = (samples["nonfinite"][:].astype(bool) if "nonfinite" in samples
                          else np.zeros(len(self.paths), dtype=bool))
        self.has_nonfinite_record = "nonfinite" in samples

    @classmethod
    def open(cls, path: str | os.PathLike) -> FeatureStore:
        """Open a finished store read-only; a missing, unfinished or foreign file gets a clear error."""
        path = Path(path).expanduser()
        if not path.exists():
            if partial_dir(path).is_dir():
                raise StoreError(f"{path} is not finished yet; rerun the same `fusionfeat extract` to complete it")
            raise StoreError(f"no feature store at {path}; create one with `fusionfeat extract DATA -o {path}`")
        if not path.is_file():  # a FIFO would block h5py forever; a folder or device is no store either
            raise StoreError(f"{path} is not a regular file, so not a feature store")
        try:
            h5 = h5py.File(path, "r")
        except OSError:
            raise StoreError(f"{path} is not an HDF5 feature store (cannot open it as HDF5)") from None
        try:
            _check_layout(h5, path)
        except BaseException:
            h5.close()
            raise
        return cls(h5, path)

    def close(self) -> None:
        self._h5.close()

    @property
    def closed(self) -> bool:
        """True once ``close`` ran (or the ``with`` block ended): nothing can be read any more."""
        return not self._h5.id.valid

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def n_samples(self) -> int:
        return len(self.labels)

    def usable_rows(self) -> np.ndarray:
        """Indices of the samples that were extracted: skipped images (``--on-error skip``, duplicates left out by
        ``--dedupe``) excluded. ``labels[rows]``, ``paths[rows]``, ``pooled(..., index=rows)`` line up."""
        return np.flatnonzero(self.ok)

    def samples_frame(self, usable_only: bool = True) -> Any:
        """The samples table as a pandas DataFrame indexed by sample: path, label (class name), group, fold, ok,
        error. ``usable_only`` (default) keeps only the rows of ``usable_rows()``."""
        import pandas as pd

        frame = pd.DataFrame(
            {
                "path": self.paths.astype(str),
                "label": np.asarray(self.classes, dtype=object)[self.labels],
                "group": self.groups.astype(str),
                "fold": self.folds,
                "ok": self.ok,
                "error": self.errors.astype(str),
            },
            index=pd.RangeIndex(self.n_samples, name="sample"),
        )
        return frame[self.ok] if usable_only else frame

    @property
    def backbones(self) -> list[str]:
        return list(self._h5["features"].keys())

    @property
    def n_views(self) -> int:
        return int(self._h5["features"][self.backbones[0]]["pooled"].shape[1])

    @property
    def data_root(self) -> str:
        return str(decode_attr(self._h5.attrs.get("data_root", "")))

    def root_attrs(self) -> dict:
        return {k: decode_attr(v) for k, v in self._h5.attrs.items()}

    def attrs(self, backbone: str) -> dict:
        return {k: decode_attr(v) for k, v in self._group(backbone, None).attrs.items()}

    def has_tokens(self, backbone: str, fold: int | None = None) -> bool:
        return "tokens" in self._group(backbone, fold)

    def dataset_shape(self, backbone: str, kind: str, fold: int | None = None) -> tuple[int, ...]:
        """Shape of one feature dataset: ``(N, V, D)`` for ``pooled``, ``(N, V, T, C)`` for ``tokens``."""
        return tuple(int(d) for d in self._dataset(backbone, kind, fold).shape)

    def block_shape(self, backbone: str, inputs: str, fold: int | None = None) -> tuple[int, int]:
        """(T, C) of one sample's block: (1, D) for ``pooled``, the token map for ``tokens``."""
        if inputs == "pooled":
            return 1, self.dataset_shape(backbone, "pooled", fold)[-1]
        shape = self.dataset_shape(backbone, "tokens", fold)
        return shape[2], shape[3]

    def pooled(self, backbone: str, view: int = 0, index: np.ndarray | None = None,
               fold: int | None = None) -> np.ndarray:
        """Pooled features ``(n, D)`` float32 of one view for the rows in ``index`` (all when None)."""
        return self._read(self._dataset(backbone, "pooled", fold), view, index).astype(np.float32, copy=False)

    def tokens(self, backbone: str, view: int = 0, index: np.ndarray | None = None,
               fold: int | None = None) -> np.ndarray:
        """Token maps ``(n, T, C)`` float16 of one view for the rows in ``index`` (all when None)."""
        return self._read(self._dataset(backbone, "tokens", fold), view, index)

    def finetuned_folds(self) -> list[int]:
        if "finetuned" not in self._h5:
            return []
        return sorted(int(k.removeprefix("fold_")) for k in self._h5["finetuned"].keys())

    def finetuned_settings(self) -> dict[tuple[int, str], str]:
        """(fold, backbone) → the settings SHA-256 of every fine-tuned feature group in the store."""
        folds = self._h5.get("finetuned", {})
        return {(int(k.removeprefix("fold_")), b): str(decode_attr(folds[k][b].attrs.get("settings_sha256", "")))
                for k in folds for b in folds[k]}

    def fold_plan(self) -> FoldPlan | None:
        """The fold plan fine-tuned features were made under (None when nothing was fine-tuned)."""
        if "fold_plan" not in self._h5:
            return None
        group = self._h5["fold_plan"]
        return FoldPlan.from_attrs({k: decode_attr(v) for k, v in group.attrs.items()}, group["fold"][:])

    def provenance(self) -> dict:
        """Everything that says where the features came from (JSON-able)."""
        root = self.root_attrs()
        return {
            "store": str(self.path),
            "data_root": root.get("data_root", ""),
            "layout": root.get("layout", ""),
            "created": root.get("created", ""),
            "versions": root.get("versions", {}),
            "n_samples": self.n_samples,
            "n_skipped": int((~self.ok).sum()),
            "classes": self.classes,
            "positive_class": self.positive_class,
            "backbones": {b: self.attrs(b) for b in self.backbones},
            "finetuned_folds": self.finetuned_folds(),
        }

    def _group(self, backbone: str, fold: int | None) -> h5py.Group:
        base = self._h5["features"] if fold is None else self._h5.get(f"finetuned/fold_{fold}")
        if base is None:
            raise StoreError(f"{self.path} has no fine-tuned features for fold {fold}; run `fusionfeat finetune`")
        if backbone not in base:
            where = "" if fold is None else f" (fine-tuned, fold {fold})"
            raise StoreError(f"{self.path} has no {backbone} features{where}; it has {', '.join(base.keys())}")
        return base[backbone]

    def _dataset(self, backbone: str, kind: str, fold: int | None) -> h5py.Dataset:
        group = self._group(backbone, fold)
        if kind not in group:
            raise StoreError(f"{self.path} has no {backbone} {kind}; re-extract without --no-tokens")
        return group[kind]

    def _read(self, dataset: h5py.Dataset, view: int, index: np.ndarray | None) -> np.ndarray:
        if not 0 <= view < dataset.shape[1]:
            raise StoreError(f"view {view} is not stored (the store has {dataset.shape[1]} view(s))")
        try:
            return self._read_rows(dataset, view, index)
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot read {dataset.name} ({_one_line(exc)}); the store is damaged: "
                             "check it with `fusionfeat info --verify` and re-extract it") from None

    def _read_rows(self, dataset: h5py.Dataset, view: int, index: np.ndarray | None) -> np.ndarray:
        if index is None:
            return dataset[:, view]
        index = np.asarray(index, dtype=np.int64)
        if index.size == 0:
            return np.empty((0, *dataset.shape[2:]), dtype=dataset.dtype)
        order = np.argsort(index, kind="stable")
        unique, inverse = np.unique(index[order], return_inverse=True)
        out = np.empty((len(unique), *dataset.shape[2:]), dtype=dataset.dtype)
        for start in range(0, len(unique), 4096):  # h5py point selections are slow when very long
            part = unique[start:start + 4096]
            lo, hi = int(part[0]), int(part[-1]) + 1
            if hi - lo <= 2 * len(part):  # dense: read the span, then pick
                out[start:start + len(part)] = dataset[lo:hi, view][part - lo]
            else:
                out[start:start + len(part)] = dataset[part, view]
        result = np.empty((len(index), *dataset.shape[2:]), dtype=dataset.dtype)
        result[order] = out[inverse]
        return result


_Result = TypeVar("_Result")


@contextlib.contextmanager
def as_store(store: str | os.PathLike | FeatureStore | Any) -> Iterator[Any]:
    """A readable store for the API's functions: a path is opened here and closed when the block ends; an open
    ``FeatureStore`` (or an object with its reading methods) is used as it is, and left open."""
    if isinstance(store, (str, os.PathLike)):
        with FeatureStore.open(store) as fs:
            yield fs
        return
    if isinstance(store, FeatureStore):
        if store.closed:
            raise StoreError(f"the FeatureStore of {store.path} is closed; pass its path, or use it inside its "
                             "`with FeatureStore.open(...)` block")
    elif not all(hasattr(store, name) for name in ("classes", "labels", "ok", "backbones")):
        raise FusionfeatError(f"expected a feature store (a path to an .h5 file made by `fusionfeat extract`, or a "
                              f"FeatureStore), got {type(store).__name__}")
    yield store


def accepts_store(func: Callable[..., _Result]) -> Callable[..., _Result]:
    """Let ``func(store, ...)`` take a store path as well as a store: a path is opened for the call, then closed."""

    @functools.wraps(func)
    def wrapper(store: Any, *args: Any, **kwargs: Any) -> _Result:
        with as_store(store) as fs:
            return func(fs, *args, **kwargs)

    return wrapper
