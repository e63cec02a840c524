"""Helpers of the fault suite (not tests): run the real command line in its own process group, signal it,
give it a small full disk, and compare folders byte for byte.

A full disk is a small tmpfs mounted for the test when the tests run as root on Linux (``mount -t tmpfs``);
elsewhere the stand-in is ``RLIMIT_FSIZE`` (no file may grow past the limit; ``SIGXFSZ`` ignored, so the write
fails with ``EFBIG`` as a full disk fails with ``ENOSPC``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from fusionfeat.progress import STAMPED

ROOT = Path(__file__).resolve().parents[1]
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGKILL: -9}


def snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root``: a file's SHA-256, a link's target, a folder as such."""
    out: dict[str, object] = {}
    for p in sorted(root.rglob("*")):
        key = str(p.relative_to(root))
        if p.is_symlink():
            out[key] = ("link", os.readlink(p))
        elif p.is_file():
            out[key] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[key] = "dir"
    return out


def tree_without(root: Path, *skip: str) -> dict[str, object]:
    """``snapshot`` of the entries whose first part is not in ``skip`` (and no lock files)."""
    return {k: v for k, v in snapshot(root).items() if k.split("/")[0] not in skip and not k.endswith(".lock")}


def temporaries(folder: Path) -> list[str]:
    """Hidden temporaries left in ``folder`` (``.<name>.<pid>.<kind>``), locks excepted."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.count(".") >= 3
                  and not p.name.endswith(".lock") and not p.name.startswith(".fusionfeat-"))


def _no_bigger_files(limit: int):
    def limit_files() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return limit_files


class Disk:
    """A folder with little space: ``path``, plus ``preexec`` for the command when space is an rlimit."""

    def __init__(self, path: Path, limit: int | None) -> None:
        self.path, self.limit = path, limit

    @property
    def preexec(self):
        return None if self.limit is None else _no_bigger_files(self.limit)


def can_mount() -> bool:
    return sys.platform.startswith("linux") and os.geteuid() == 0


@contextlib.contextmanager
def small_disk(folder: Path, size: int) -> Iterator[Disk]:
    """``folder`` as a ``size``-byte tmpfs (as root), else an ordinary folder with a ``size``-byte file limit."""
    folder.mkdir(parents=True, exist_ok=True)
    if can_mount():
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                              capture_output=True)
        if done.returncode == 0:
            try:
                yield Disk(folder, None)
            finally:
                subprocess.run(["umount", "-l", str(folder)], capture_output=True)
            return
    yield Disk(folder, size)


def run_cli(args: list[object], cwd: Path, sig: signal.Signals | None = None, delay: float = 0.0,
            preexec=None, env: dict[str, str] | None = None, timeout: float = 600, script: Path | None = None,
            after: Path | None = None) -> tuple[int, list[str], str]:
    """Run ``python -m fusionfeat ARGS`` (or ``python SCRIPT ARGS``) in ``cwd`` (own session); with ``sig``,
    signal its whole process group after ``delay`` seconds (counted from the moment ``after`` exists, when
    given: e.g. the output's lock, taken once start-up is over and the work begins). Returns the exit code,
    the stderr lines that are not warnings, progress lines or the demo's own messages, and stdout."""
    environ = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", **(env or {})}
    command = [str(script)] if script is not None else ["-m", "fusionfeat"]
    proc = subprocess.Popen([sys.executable, *command, *map(str, args)], cwd=cwd, env=environ,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=preexec)
    if sig is not None:
        end = time.monotonic() + timeout
        while after is not None and not os.path.lexists(after) and proc.poll() is None and time.monotonic() < end:
            time.sleep(0.02)
        time.sleep(delay)
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
    out, err = proc.communicate(timeout=timeout)
    if sig == signal.SIGKILL:  # its workers may outlive it for a moment: wait for the group to be gone
        _wait_group_gone(proc.pid)
    lines = [line for line in _without_python_warnings(err.splitlines()) if line.strip() and not STAMPED.match(line)
             and not line.startswith(("warning:", "WARNING: ImageNet weights", "demo data: "))]
    return proc.returncode, lines, out


def _without_python_warnings(lines: list[str]) -> list[str]:
    """Drop Python's own warning lines (``file:line: SomeWarning: …`` and the source line after it): libraries'
    notes, not fusionfeat's messages."""
    kept, skip = [], False
    for line in lines:
        if re.match(r"^\S+:\d+: \w*Warning: ", line):
            skip = True
            continue
        if skip and line.startswith("  "):
            skip = False
            continue
        skip = False
        kept.append(line)
    return kept


def _wait_group_gone(pgid: int, seconds: float = 10.0) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


def record(case: str, outcome: object) -> None:
    """Append ``case: outcome`` to the file named by ``FUSIONFEAT_FAULT_LOG`` (for the suite's tally), if set."""
    log = os.environ.get("FUSIONFEAT_FAULT_LOG")
    if log:
        with open(log, "a") as fh:
            fh.write(f"{case}\t{outcome}\n")


def check_interrupted(rc: int, lines: list[str], sig: signal.Signals) -> bool:
    """The command ended cleanly on ``sig`` (or finished first): returns whether it was interrupted."""
    record(f"signal {sig.name}", f"rc={rc} lines={len(lines)} traceback={any('Traceback' in x for x in lines)}")
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    if rc == 0:
        return False
    assert rc == EXIT[sig], (rc, lines)
    if sig != signal.SIGKILL:
        assert len(lines) == 1 and lines[0].startswith(f"fusionfeat: interrupted ({sig.name}); "), lines
    return True


def check_refused(rc: int, lines: list[str], needle: str = "") -> None:
    """Exit 2 and exactly one ``fusionfeat: error:`` line (containing ``needle``), no traceback."""
    record("refused", f"rc={rc} lines={len(lines)} traceback={any('Traceback' in x for x in lines)}")
    assert not any("Traceback" in line for line in lines), "\n".join(lines)
    errors = [line for line in lines if line.startswith("fusionfeat: error:")]
    assert rc == 2 and len(lines) == 1 and len(errors) == 1 and needle in errors[0], (rc, lines)
