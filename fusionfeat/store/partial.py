"""Unfinished work on disk: the committed batch files of ``<store>.partial/`` (and of fine-tuned embeddings),
each with a checksum sidecar, and the per-store writer lock."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from fusionfeat.errors import StoreError
from fusionfeat.fsio import atomic_write_bytes, sha256_file

PARTIAL_MARKER = ".fusionfeat-partial"


def is_own_partial(folder: Path) -> bool:
    """A real folder fusionfeat made: its marker, or (made before the marker) a readable ``settings.json``, or
    nothing inside but batch files, their sidecars and a (possibly damaged) ``settings.json``."""
    if folder.is_symlink() or not folder.is_dir():
        return False
    if (folder / PARTIAL_MARKER).is_file() or read_settings(folder) is not None:
        return True
    return all(p.name.startswith(("batch_", ".batch_", "settings.json", ".settings.json")) for p in folder.iterdir())


def partial_dir(path: Path) -> Path:
    """``<store>.partial``: where an unfinished extraction keeps its committed batches."""
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

    def __init__(self, folder: Path, rerun: str = "fusionfeat extract"):
        self.folder = folder
        self.rerun = rerun  # the command whose rerun recomputes a damaged batch (named in errors)
        self.damaged: dict[int, str] = {}

    @classmethod
    def open(cls, store_path: Path, settings: dict, overwrite: bool) -> PartialStore:
        """Start or resume; refuses to mix batches made with other settings unless ``overwrite``."""
        folder = partial_dir(store_path)
        settings_file = folder / "settings.json"
        if os.path.lexists(folder) and not is_own_partial(folder):
            raise StoreError(f"{folder} exists but fusionfeat did not make it (an unfinished extraction keeps its "
                             "batches there); move it away or choose another -o")
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
            (folder / PARTIAL_MARKER).write_text("written by fusionfeat: committed batches of an extraction\n",
                                                 encoding="utf-8")
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
                             f"`{self.rerun}` to recompute it")
        try:
            with np.load(self.batch_path(batch), allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise StoreError(f"batch {self.batch_path(batch)} is unreadable ({exc}); rerun the same "
                             f"`{self.rerun}` to recompute it") from None

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
