"""The feature store: one self-describing HDF5 file per dataset (schema in docs/store.md).

Writing is crash-safe by construction: extraction commits each batch as its own small file in
``<store>.partial/`` (written to a temporary name, fsynced, renamed), and the HDF5 file is assembled from
them only at the end, under a temporary name that is renamed into place. A killed run therefore never
leaves a half-written HDF5 file, and a rerun picks up every committed batch. Later changes to a finished
store (fine-tuned features) go through ``rewrite``, which works on a copy and swaps it in atomically.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import h5py
import numpy as np

from fusionfeat.chunks import DEFLATE_LEVEL
from fusionfeat.errors import StoreError
from fusionfeat.fsio import atomic_write_bytes, fsync_dir, sha256_file

SCHEMA_VERSION = 1
STR_DTYPE = h5py.string_dtype("utf-8")


def partial_dir(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


_HELD_LOCK_FDS: set[int] = set()


def _drop_inherited_locks() -> None:
    """In a forked child (a DataLoader worker), close the inherited lock descriptors: the lock then dies with
    the process that took it, even when a worker outlives it for a few seconds after a SIGKILL."""
    for fd in list(_HELD_LOCK_FDS):
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD_LOCK_FDS.clear()


os.register_at_fork(after_in_child=_drop_inherited_locks)


@contextlib.contextmanager
def store_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock for writing ``path``; a second writer gets a clear error, not a corrupt file.

    The lock is an ``flock`` on ``<store>.lock``, held by the taking process only (forked children close
    their copy of the descriptor), so the kernel drops it as soon as that process dies, even by SIGKILL.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    _HELD_LOCK_FDS.add(fd)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StoreError(
                f"{path} is being written by another fusionfeat process (lock {lock_path}); wait for it to finish"
            ) from None
        yield
    finally:
        _HELD_LOCK_FDS.discard(fd)
        os.close(fd)


class PartialStore:
    """The committed batches of an unfinished extraction, plus the settings they were made with.

    Each batch is ``batch_<k>.npz`` plus a sidecar ``batch_<k>.json`` written after it, holding the batch
    index, the byte size and the SHA-256 of the npz. A batch counts as committed only when its sidecar
    names the same index and the file still has that size and hash: a renamed, truncated or corrupt batch
    is recomputed, never assembled.
    """

    def __init__(self, folder: Path):
        self.folder = folder
        self.damaged: dict[int, str] = {}

    @classmethod
    def open(cls, store_path: Path, settings: dict, overwrite: bool) -> PartialStore:
        """Start or resume; refuses to mix batches made with other settings unless ``overwrite``."""
        folder = partial_dir(store_path)
        settings_file = folder / "settings.json"
        if folder.exists() and (overwrite or not settings_file.is_file()):
            shutil.rmtree(folder)
        if settings_file.is_file():
            previous = read_settings(folder)
            if previous is None:
                raise StoreError(
                    f"the unfinished extraction into {store_path} cannot be resumed: {settings_file} is damaged; "
                    "add --overwrite to start over"
                )
            if previous != settings:
                changed = sorted(k for k in set(previous) | set(settings) if previous.get(k) != settings.get(k))
                raise StoreError(
                    f"an unfinished extraction into {store_path} used other settings ({', '.join(changed)}); "
                    "rerun it with the same options to resume, or add --overwrite to start over"
                )
        else:
            folder.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(settings_file, lambda fh: fh.write(json.dumps(settings, sort_keys=True).encode()))
        return cls(folder)

    def batch_path(self, batch: int) -> Path:
        return self.folder / f"batch_{batch:06d}.npz"

    def sidecar_path(self, batch: int) -> Path:
        return self.folder / f"batch_{batch:06d}.json"

    def candidates(self) -> list[int]:
        """Indices of every ``batch_<k>.npz`` file present, committed or not."""
        found = []
        for p in self.folder.glob("batch_*.npz"):
            with contextlib.suppress(ValueError):
                found.append(int(p.stem[6:]))
        return sorted(found)

    def check(self, batch: int) -> str:
        """'' when batch ``batch`` is committed and intact, else why not."""
        path, sidecar = self.batch_path(batch), self.sidecar_path(batch)
        try:
            record = json.loads(sidecar.read_bytes())
        except FileNotFoundError:
            return "no checksum record (renamed or not finished)"
        except (OSError, ValueError) as exc:
            return f"unreadable checksum record ({exc})"
        if not isinstance(record, dict) or record.get("batch") != batch:
            return f"its record names batch {record.get('batch') if isinstance(record, dict) else '?'} (renamed?)"
        try:
            size = path.stat().st_size
            if size != record.get("size"):
                return f"size {size} bytes, {record.get('size')} committed (truncated?)"
            if sha256_file(path) != record.get("sha256"):
                return "SHA-256 mismatch (corrupt)"
        except OSError as exc:
            return f"unreadable ({exc.strerror or exc})"
        return ""

    def done(self) -> set[int]:
        """Indices of the intact committed batches; damaged ones are listed in ``self.damaged``."""
        good = set()
        self.damaged = {}
        for batch in self.candidates():
            problem = self.check(batch)
            if problem:
                self.damaged[batch] = problem
            else:
                good.add(batch)
        return good

    def write(self, batch: int, arrays: dict[str, np.ndarray]) -> None:
        path = self.batch_path(batch)
        self.sidecar_path(batch).unlink(missing_ok=True)  # never leave an old record beside new bytes
        atomic_write_bytes(path, lambda fh: np.savez(fh, **arrays))
        record = {"batch": batch, "size": path.stat().st_size, "sha256": sha256_file(path)}
        atomic_write_bytes(self.sidecar_path(batch), lambda fh: fh.write(json.dumps(record).encode()))

    def read(self, batch: int, verify: bool = True) -> dict[str, np.ndarray]:
        """The arrays of one committed batch; with ``verify`` its checksum is checked first."""
        problem = self.check(batch) if verify else ""
        if problem:
            raise StoreError(f"batch {self.batch_path(batch)} is damaged ({problem}); rerun the same "
                             "`fusionfeat extract` to recompute it")
        try:
            with np.load(self.batch_path(batch), allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise StoreError(f"batch {self.batch_path(batch)} is unreadable ({exc}); rerun the same "
                             "`fusionfeat extract` to recompute it") from None

    def read_field(self, batch: int, name: str) -> np.ndarray:
        """One small array of a batch (no checksum: callers verified the batch first)."""
        with np.load(self.batch_path(batch), allow_pickle=False) as data:
            return data[name]

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def read_settings(folder: Path) -> dict | None:
    """The settings of an unfinished run, or None when ``settings.json`` is damaged."""
    try:
        value = json.loads((folder / "settings.json").read_bytes())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def create_store_file(tmp: Path, samples: dict[str, np.ndarray], classes: list[str], root_attrs: dict) -> h5py.File:
    """Create a new HDF5 store with its ``/samples`` table and root attributes; returns it open for writing."""
    h5 = h5py.File(tmp, "w")
    group = h5.create_group("samples")
    for name, values in samples.items():
        if values.dtype.kind in "US":
            group.create_dataset(name, data=values.astype(object), dtype=STR_DTYPE)
        else:
            group.create_dataset(name, data=values)
    group.attrs["classes"] = classes
    group.attrs["positive"] = classes[1]
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
                             shuffle=True)  # the filters fusionfeat.chunks reproduces
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


def verify_checksums(path: str | os.PathLike) -> list[tuple[str, str]]:
    """``(dataset, status)`` for every feature dataset: OK, MISMATCH, UNREADABLE (…) or NO CHECKSUM."""
    path = Path(path).expanduser()
    FeatureStore.open(path).close()  # the usual clear errors for a missing, foreign or unfinished file
    results = []
    with h5py.File(path, "r") as h5:
        for dataset in feature_datasets(h5):
            recorded = _attr(dataset.attrs.get("sha256", ""))
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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


@contextlib.contextmanager
def rewrite(path: Path) -> Iterator[h5py.File]:
    """Edit a finished store on a copy that replaces it only if the block succeeds (crash-safe append)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.rewrite")
    shutil.copyfile(path, tmp)
    h5 = h5py.File(tmp, "r+")
    try:
        yield h5
    except BaseException:
        h5.close()
        tmp.unlink(missing_ok=True)
        raise
    finish_store(h5, tmp, path)


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _attr(value):
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    if isinstance(value, np.ndarray):
        return [_attr(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    return value


class FeatureStore:
    """Read access to a finished store; arrays come back per backbone, view and subset of rows."""

    def __init__(self, h5: h5py.File, path: Path):
        self._h5 = h5
        self.path = path
        try:
            self._load_samples(h5)
        except (OSError, KeyError) as exc:
            h5.close()
            raise StoreError(f"{path}: cannot read its /samples table ({_one_line(exc)}); the store is damaged: "
                             "re-extract it") from None

    def _load_samples(self, h5: h5py.File) -> None:
        samples = h5["samples"]
        self.classes: list[str] = [str(c) for c in _attr(samples.attrs["classes"])]
        self.positive_class: str = str(_attr(samples.attrs["positive"]))
        self.paths = samples["path"].asstr()[:]
        self.labels = samples["label"][:].astype(np.int64)
        self.groups = samples["group"].asstr()[:]
        self.folds = samples["fold"][:].astype(np.int64)
        self.sha256 = samples["sha256"].asstr()[:]
        self.ok = samples["ok"][:].astype(bool)
        self.errors = samples["error"].asstr()[:]

    @classmethod
    def open(cls, path: str | os.PathLike) -> FeatureStore:
        """Open a finished store read-only; a missing, unfinished or foreign file gets a clear error."""
        path = Path(path).expanduser()
        if not path.exists():
            if partial_dir(path).is_dir():
                raise StoreError(f"{path} is not finished yet; rerun the same `fusionfeat extract` to complete it")
            raise StoreError(f"no feature store at {path}; create one with `fusionfeat extract DATA -o {path}`")
        try:
            h5 = h5py.File(path, "r")
        except OSError:
            raise StoreError(f"{path} is not an HDF5 feature store (cannot open it as HDF5)") from None
        if "samples" not in h5 or "features" not in h5:
            h5.close()
            raise StoreError(f"{path} is HDF5 but not a fusionfeat store (no /samples and /features)")
        if not h5.attrs.get("complete", False):
            h5.close()
            raise StoreError(f"{path} is marked incomplete; rerun `fusionfeat extract` to finish it")
        return cls(h5, path)

    def close(self) -> None:
        self._h5.close()

    def __enter__(self) -> FeatureStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def n_samples(self) -> int:
        return len(self.labels)

    @property
    def backbones(self) -> list[str]:
        return list(self._h5["features"].keys())

    @property
    def n_views(self) -> int:
        return int(self._h5["features"][self.backbones[0]]["pooled"].shape[1])

    @property
    def data_root(self) -> str:
        return str(_attr(self._h5.attrs.get("data_root", "")))

    def root_attrs(self) -> dict:
        return {k: _attr(v) for k, v in self._h5.attrs.items()}

    def attrs(self, backbone: str) -> dict:
        return {k: _attr(v) for k, v in self._group(backbone, None).attrs.items()}

    def has_tokens(self, backbone: str, fold: int | None = None) -> bool:
        return "tokens" in self._group(backbone, fold)

    def block_shape(self, backbone: str, inputs: str, fold: int | None = None) -> tuple[int, int]:
        """(T, C) of one sample's block: (1, D) for ``pooled``, the token map for ``tokens``."""
        if inputs == "pooled":
            return 1, int(self._group(backbone, fold)["pooled"].shape[-1])
        shape = self._dataset(backbone, "tokens", fold).shape
        return int(shape[2]), int(shape[3])

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

    def fold_plan(self) -> dict | None:
        """The fold plan fine-tuned features were made under: protocol, n_folds, seed, fold per sample."""
        if "fold_plan" not in self._h5:
            return None
        group = self._h5["fold_plan"]
        plan = {k: _attr(v) for k, v in group.attrs.items()}
        plan["fold"] = group["fold"][:].astype(np.int64)
        return plan

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
