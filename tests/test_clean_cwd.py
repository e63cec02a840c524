"""Nothing is left in the working folder: the demo keeps only its output there (no ``.fusionfeat-demo.lock``),
and a test that once wrote ``runs/.s-resnet18.lock`` into the checkout now writes under its tmp_path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import fusionfeat.demo as demo
from fusionfeat import fsio
from fusionfeat.errors import FusionfeatError
from fusionfeat.fsio import output_lock
from tests.conftest import REPO

SMALL = {"subjects_all": 5, "subjects_hem": 5, "cells_per_subject": 3, "image_size": 48, "input_size": 32,
         "weights": "random", "device": "cpu", "progress": False}
DEFAULT = Path("fusionfeat-demo")  # the CLI's default -o, relative to the working folder


def test_demo_leaves_only_its_folder_in_the_working_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo.run_demo(DEFAULT, echo=lambda _: None, **SMALL)
    assert os.listdir(tmp_path) == ["fusionfeat-demo"]
    assert (tmp_path / "fusionfeat-demo" / "run" / "metrics.json").is_file()


def test_a_failed_demo_leaves_no_lock(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise FusionfeatError("extraction failed")

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(demo, "extract", broken)
    with pytest.raises(FusionfeatError, match="extraction failed"):
        demo.run_demo(DEFAULT, echo=lambda _: None, **SMALL)
    assert os.listdir(tmp_path) == []  # built aside, so a failed demo leaves nothing (no lock, no half-made folder)


def test_a_refused_second_demo_keeps_the_first_ones_lock(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    lock = tmp_path / ".fusionfeat-demo.lock"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; fh = open(sys.argv[1], 'a+'); fcntl.lockf(fh, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"), str(lock)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(FusionfeatError, match="being written by another fusionfeat process"):
            demo.run_demo(DEFAULT, echo=lambda _: None, **SMALL)
        assert lock.is_file() and not DEFAULT.exists()
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_on_a_file_removed_meanwhile_is_taken_again(tmp_path, monkeypatch):
    """The race that deleting a lock file opens: we open the lock file, its holder finishes and deletes it, then
    our lockf succeeds on the deleted file. output_lock notices and locks the file the path names now."""
    out = tmp_path / "d"
    lock = tmp_path / ".d.lock"
    real_lockf, calls = fsio.fcntl.lockf, []

    def lockf(fh, flags):
        calls.append(os.fstat(fh.fileno()).st_ino)
        if len(calls) == 1:
            lock.unlink()  # the previous holder, done, removes it between our open and our lock
        return real_lockf(fh, flags)

    monkeypatch.setattr(fsio.fcntl, "lockf", lockf)
    with output_lock(out, "demo folder", remove=True):
        assert len(calls) == 2 and lock.stat().st_ino == calls[1]
    assert not lock.exists()
    with output_lock(out, "run folder"):  # without remove (every other output) the lock file stays
        pass
    assert lock.is_file()


@pytest.mark.slow
def test_a_test_run_from_another_folder_leaves_it_empty(tmp_path):
    """The test whose refused ``fit`` (no -o) wrote ``runs/.s-resnet18.lock`` into the working folder."""
    node = f"{REPO / 'tests' / 'test_finetune.py'}::test_fit_uses_the_stored_plan_and_refuses_any_other"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert [p for p in tmp_path.rglob("*") if not p.is_dir()] == []  # empty folders (pytest plugins'), git ignores
