"""File-system rules every writer follows: atomic writes, one JSON encoder, file hashes, and the output rule.

The output rule (``output_target``): a command never deletes or overwrites anything it did not create. It
refuses an output that is, is inside, or contains one of its inputs; it refuses an existing non-empty folder
that is not a previous output of the same kind (a marker file ``.fusionfeat-<kind>`` says what fusionfeat
wrote), and replaces a previous output of the same kind only with ``--overwrite``. The output is built
under a temporary sibling ``.<name>.<pid>.tmp`` and renamed into place; a replaced output is first renamed
aside (``.<name>.<pid>.old``) and deleted only once the new one is in place. The output is locked for the
whole command (``.<name>.lock``), and temporary siblings left by dead processes are cleaned on the next run.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from fusionfeat.errors import FusionfeatError

RUN, BUNDLE, DEMO, FINETUNE, CSV = "run", "bundle", "demo", "finetune", "csv"
STUDY, EXPLAIN = "study", "explain"
_WHAT = {RUN: "run folder", BUNDLE: "bundle", DEMO: "demo folder", FINETUNE: "fine-tuning work folder",
         CSV: "file", STUDY: "study folder", EXPLAIN: "attention montage folder"}
WRITE_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG)
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<kind>tmp|old|assemble|rewrite)$")


# ----------------------------------------------------------------------------------------------- atomic writes


def fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_sibling(path: Path, kind: str = "tmp") -> Path:
    """``.<name>.<pid>.<kind>`` next to ``path`` (the name a temporary of ``path`` gets)."""
    return path.with_name(f".{path.name}.{os.getpid()}.{kind}")


TEMP_MARKER = ".fusionfeat-temp"


def temp_folder(path: Path, kind: str = "tmp") -> Path:
    """Create ``.<name>.<pid>.<kind>/`` beside ``path``, marked as fusionfeat's own temporary of ``path`` (a file
    ``.fusionfeat-temp`` inside): ``clean_stale`` removes only folders it can prove it made, never a user's file
    that merely has such a name. A file written in it and renamed out of it is replaced atomically."""
    folder = temp_sibling(path, kind)
    folder.mkdir()
    (folder / TEMP_MARKER).write_text(f"{path.name}\n", encoding="utf-8")
    return folder


def is_own_temporary(entry: Path, name: str) -> bool:
    """``entry`` is a real folder fusionfeat made for output ``name``: its temp marker names it, or it holds a
    previous output of ours (the aside copy of a swap, with its kind marker)."""
    if entry.is_symlink() or not entry.is_dir():
        return False
    marker = entry / TEMP_MARKER
    if marker.is_file() and not marker.is_symlink():
        try:
            return marker.read_text(encoding="utf-8").strip() == name
        except (OSError, UnicodeDecodeError):
            return False
    return any((entry / marker_name(kind)).is_file() for kind in _WHAT) or is_previous_output(entry, BUNDLE)


def atomic_write_bytes(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Call ``write(fh)`` on a temporary file, fsync it, and rename it to ``path``."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


# ----------------------------------------------------------------------------------------------- JSON


def to_jsonable(value: Any) -> Any:
    """numpy → Python, tuples → lists, paths → strings, NaN/inf → None, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"not JSON-able: {type(value).__name__}")


def dumps_json(obj: Any, indent: int | None = 1) -> str:
    """The one JSON dumper: strict JSON of ``to_jsonable(obj)``, ending in a newline."""
    return json.dumps(to_jsonable(obj), indent=indent, allow_nan=False) + "\n"


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON atomically (temporary file, fsync, rename)."""
    text = dumps_json(obj).encode()
    atomic_write_bytes(Path(path), lambda fh: fh.write(text))


# ----------------------------------------------------------------------------------------------- CSV cells


FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def safe_cell(value: Any, path: bool = False) -> Any:
    """A CSV cell a spreadsheet will not run as a formula (OWASP's advice on CSV injection).

    A text cell starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return gets a leading ``'``; one
    starting with ``'`` followed by such a character (or another ``'``) gets one too, so ``unsafe_cell`` undoes
    it exactly. A number (``-0.5``, ``+1e-3``) and any non-text value are returned unchanged. A ``path`` cell
    gets ``./`` instead (also one already starting ``./`` and such a character), so it still names the same
    file for any program (absolute paths start with ``/``).
    """
    if not isinstance(value, str) or not value or _NUMBER.fullmatch(value):
        return value
    if path:
        return "./" + value if _formula_path(value) else value
    if value[0] in FORMULA_LEADS:
        return "'" + value
    if value[0] == "'" and len(value) > 1 and value[1] in (*FORMULA_LEADS, "'"):
        return "'" + value
    return value


def unsafe_cell(text: str, path: bool = False) -> str:
    """The inverse of ``safe_cell`` (reading back a CSV fusionfeat wrote)."""
    if path:
        return text[2:] if text.startswith("./") and _formula_path(text) else text
    if len(text) > 1 and text[0] == "'" and text[1] in (*FORMULA_LEADS, "'"):
        return text[1:]
    return text


def _formula_path(text: str) -> bool:
    """Whether ``text``, past any leading ``./``, starts like a formula."""
    while text.startswith("./"):
        text = text[2:]
    return text[:1] in FORMULA_LEADS and text != ""


class _SafeWriter:
    """``csv.writer`` whose rows go through ``safe_cell``; columns named ``path`` in the first row (the header)
    are neutralised as paths."""

    def __init__(self, fh: Any, **kwargs: Any) -> None:
        self._writer = csv.writer(fh, **kwargs)
        self._paths: set[int] | None = None

    def writerow(self, row: Sequence[Any]) -> Any:
        if self._paths is None:
            self._paths = {i for i, name in enumerate(row) if name == "path"}
            return self._writer.writerow([safe_cell(v) for v in row])
        return self._writer.writerow([safe_cell(v, i in self._paths) for i, v in enumerate(row)])

    def writerows(self, rows: Any) -> None:
        for row in rows:
            self.writerow(row)


def csv_writer(fh: Any, **kwargs: Any) -> _SafeWriter:
    """The CSV writer of every CSV fusionfeat writes: ``csv.writer`` with formula-leading cells neutralised
    (``safe_cell``); the first row written is the header."""
    return _SafeWriter(fh, **kwargs)


# ----------------------------------------------------------------------------------------------- hashing


def require_file(folder: str | os.PathLike, name: str, missing: str) -> Path:
    """``folder/name`` when that file exists, else a ``FusionfeatError`` saying ``missing``."""
    path = Path(folder).expanduser() / name
    if not path.is_file():
        raise FusionfeatError(missing)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    """SHA-256 hex digest of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------- locks and stale temps


@contextlib.contextmanager
def output_lock(path: Path, what: str = "output", remove: bool = False) -> Iterator[None]:
    """An exclusive POSIX lock on ``.<name>.lock`` beside ``path``; a second writer gets a one-line error.

    ``lockf`` locks belong to the process (children do not inherit them) and the kernel drops them when it dies.
    With ``remove`` the lock file is deleted on the way out (``demo``, whose default output sits in the working
    folder). A lock taken on a file that was deleted meanwhile is not the lock of ``path``: it is taken again.
    """
    lock_path = path.with_name(f".{path.name}.lock")
    while True:
        try:
            fh = open(lock_path, "a+")
        except OSError as exc:
            raise FusionfeatError(f"cannot write {what} {path}: {exc.strerror} ({lock_path})") from None
        try:
            fcntl.lockf(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.close()
            raise FusionfeatError(f"{path} is being written by another fusionfeat process (lock {lock_path}); "
                                  "wait for it to finish or choose another -o") from None
        if _is_open_file(fh, lock_path):
            break
        fh.close()  # its holder removed it between our open and our lock
    try:
        yield
    finally:
        if remove:
            lock_path.unlink(missing_ok=True)  # while still held, so no one else holds a lock on this file
        fh.close()


def _is_open_file(fh: Any, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fh``."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fh.fileno())
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale(path: Path) -> list[Path]:
    """Remove temporary siblings of ``path`` left by dead processes (call while holding its lock): only folders
    ``is_own_temporary`` proves fusionfeat made; anything else with a look-alike name stays as it is.

    An aside copy (``.old``) of a killed swap is put back when ``path`` itself is missing, so the previous
    output survives a kill between the two renames. Returns what was removed or restored.
    """
    touched = []
    parent = path.parent
    if not parent.is_dir():
        return touched
    for entry in sorted(parent.glob(f".{glob_escape(path.name)}.*")):
        match = _TEMP.match(entry.name)
        if not match or match["name"] != path.name:
            continue
        pid = int(match["pid"])
        if pid == os.getpid() or pid_alive(pid) or not is_own_temporary(entry, path.name):
            continue  # a live process's, or not provably ours (a user's file with a look-alike name): untouched
        if match["kind"] == "old" and not os.path.lexists(path):
            os.replace(entry, path)
        else:
            shutil.rmtree(entry, ignore_errors=True)
        touched.append(entry)
    return touched


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


# ----------------------------------------------------------------------------------------------- the output rule


_OWN_CSV_HEADERS = (re.compile(r"path,label,group,fold"), re.compile(r"path,p_[^,]*,label(,error)?"))


def is_own_csv(path: Path) -> bool:
    """Whether ``path`` starts like a CSV fusionfeat writes (a manifest or a predictions file)."""
    try:
        with open(path, "rb") as fh:
            first = fh.read(4096).split(b"\n", 1)[0].rstrip(b"\r").decode("utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return any(p.fullmatch(first) for p in _OWN_CSV_HEADERS)


def kind_of(path: Path) -> str:
    """What a path is, in words (a folder, a named pipe, a device, a socket, a file), following a symbolic link
    and saying so."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return "unreadable"
    for test, word in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a file")):
        if test(mode):
            return word + (" behind a symbolic link" if path.is_symlink() else "")
    return "not a regular file"


def marker_name(kind: str) -> str:
    return f".fusionfeat-{kind}"


def _within(a: Path, b: Path) -> bool:
    """``a`` is ``b`` or inside it (resolved paths)."""
    return a == b or b in a.parents


def check_not_input(out: Path, inputs: Sequence[str | os.PathLike], option: str = "-o") -> None:
    """Refuse an output that is, is inside, or contains one of the inputs (compared as resolved paths)."""
    target = out.expanduser().resolve()
    for item in inputs:
        source = Path(item).expanduser()
        if not source.exists():
            continue
        source = source.resolve()
        if _within(target, source) or _within(source, target):
            relation = "is" if target == source else "is inside" if _within(target, source) else "contains"
            raise FusionfeatError(f"{option} {out} {relation} the input {item}; writing there could destroy it, "
                                  f"choose another {option}")


def is_previous_output(folder: Path, kind: str) -> bool:
    """Whether ``folder`` is one fusionfeat wrote as ``kind`` (marker file, or a legacy bundle/run)."""
    if (folder / marker_name(kind)).is_file():
        return True
    if kind == BUNDLE:
        try:
            return json.loads((folder / "bundle.json").read_text(encoding="utf-8")).get("format") == "fusionfeat-bundle"
        except (OSError, ValueError, AttributeError):
            return False
    return False


def ensure_parent(out: Path, what: str) -> None:
    """Create the missing folders above ``out``; a one-line error when that is impossible."""
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise FusionfeatError(f"cannot create the folder {parent} for {what} {out}: "
                              f"{exc.strerror or exc}; choose another -o") from None
    if not os.access(parent, os.W_OK):
        raise FusionfeatError(f"cannot write {what} {out}: {parent} is not writable; choose another -o")


def check_output(out: str | os.PathLike, kind: str, inputs: Sequence[str | os.PathLike] = (),
                 overwrite: bool = False, option: str = "-o") -> Path:
    """Validate an output path against the rule (before any work); returns it. Creates only missing parents."""
    text = os.fspath(out)
    out = Path(out).expanduser()
    what = _WHAT[kind]
    if kind == CSV and text.endswith((os.sep, "/")):
        raise FusionfeatError(f"{option} {text} names a folder (it ends in /); give a file name for the {what}")
    check_not_input(out, inputs, option)
    if os.path.lexists(out):
        if out.is_symlink():
            raise FusionfeatError(f"{option} {out} is a symbolic link; give a real path for the {what}")
        if kind == CSV:
            if out.is_dir():
                raise FusionfeatError(f"{option} {out} is a folder; give a file name for the {what}")
            if not out.is_file():
                raise FusionfeatError(f"{option} {out} is {kind_of(out)}, not a file: fusionfeat never replaces "
                                      "one, even with --overwrite; choose another name")
            if not overwrite:
                raise FusionfeatError(f"{option} {out} already exists; add --overwrite to replace it, "
                                      "or choose another name")
            if not is_own_csv(out):
                raise FusionfeatError(f"{option} {out} is not a CSV fusionfeat wrote (its first line is not a "
                                      "manifest or predictions header); --overwrite only replaces fusionfeat's own "
                                      "output: choose another name")
        else:
            if not out.is_dir():
                raise FusionfeatError(f"{option} {out} is {kind_of(out) if not out.is_file() else 'a file'}, not a "
                                      f"folder; choose another {option} for the {what}")
            if any(out.iterdir()):
                if not is_previous_output(out, kind):
                    raise FusionfeatError(f"{option} {out} is a non-empty folder that fusionfeat did not write as "
                                          f"a {what}; choose another {option} (--overwrite only replaces a "
                                          f"previous fusionfeat {what})")
                if not overwrite:
                    raise FusionfeatError(f"{option} {out} holds a previous fusionfeat {what}; add --overwrite to "
                                          "replace it, or choose another name")
    ensure_parent(out, what)
    return out


@dataclass
class OutputTarget:
    """Where a command writes its output: ``path`` (a temporary sibling) until ``commit`` swaps it in."""

    final: Path
    kind: str
    path: Path

    def commit(self) -> Path:
        """Rename the finished output into place; a replaced one is renamed aside first, deleted last."""
        final, tmp = self.final, self.path
        if self.kind == CSV:
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            fsync_dir(final.parent)
            return final
        _fsync_tree(tmp)
        aside = None
        if os.path.lexists(final):
            aside = temp_sibling(final, "old")
            os.replace(final, aside)
        os.replace(tmp, final)
        fsync_dir(final.parent)
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
        return final


def _fsync_tree(folder: Path) -> None:
    for root, _dirs, files in os.walk(folder):
        for name in files:
            with open(os.path.join(root, name), "rb") as fh:
                os.fsync(fh.fileno())
        fsync_dir(Path(root))


@contextlib.contextmanager
def output_target(out: str | os.PathLike, kind: str, inputs: Sequence[str | os.PathLike] = (),
                  overwrite: bool = False, option: str = "-o", remove_lock: bool = False) -> Iterator[OutputTarget]:
    """Check the output rule, lock the output, clean stale temps, and yield a temporary place to build it.

    On success the output is swapped in atomically; on any error (or a kill) nothing at ``out`` changes.
    ``remove_lock``: delete the lock file on the way out (see ``output_lock``).
    """
    out = check_output(out, kind, inputs, overwrite, option)
    with output_lock(out, _WHAT[kind], remove=remove_lock):
        clean_stale(out)
        check_output(out, kind, inputs, overwrite, option)  # again, now that we hold the lock
        tmp = temp_sibling(out)
        try:
            if kind == CSV:  # the file is written in a marked temporary folder and renamed out of it
                target = OutputTarget(out, kind, temp_folder(out) / out.name)
            else:
                tmp.mkdir()
                (tmp / marker_name(kind)).write_text(f"written by fusionfeat as a {_WHAT[kind]}\n", encoding="utf-8")
                target = OutputTarget(out, kind, tmp)
            yield target
            target.commit()
        except OSError as exc:
            if exc.errno not in WRITE_ERRORS:
                raise
            raise disk_error(exc, out) from None
        finally:
            if os.path.lexists(tmp) and not tmp.is_symlink() and tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)


def disk_error(exc: OSError, out: Path) -> FusionfeatError:
    """A one-line error for a failed write: names the output and what was kept."""
    reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else \
        "the file system is read-only" if exc.errno == errno.EROFS else (exc.strerror or str(exc))
    kept = "the previous output is kept unchanged" if os.path.lexists(out) else "nothing was written"
    where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
    return FusionfeatError(f"cannot write {out}: {reason}{where}; {kept}")
