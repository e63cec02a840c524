"""``demo --overwrite`` builds the new demo aside and swaps it in only when complete: a SIGKILL, SIGTERM or
SIGINT at a random (seeded) moment once it has started work, or a full disk midway, leaves the previous demo
byte for byte; a finished one records where its data now is, not the temporary folder it was built in. The
command is the real command line with the demo's data made small (``tests/small_demo.py``)."""

from __future__ import annotations

import json
import random
import shutil
import signal
from pathlib import Path

import pytest

from tests.faults import check_interrupted, check_refused, run_cli, small_disk, snapshot, temporaries

pytestmark = pytest.mark.slow
DEMO = [Path(__file__).resolve().parent / "small_demo.py", "demo", "--weights", "random", "--device", "cpu", "--quiet"]


def _run(cwd: Path, out: str, extra: tuple[str, ...], **kwargs):
    return run_cli([*DEMO[1:], "-o", out, *extra], cwd, script=DEMO[0], **kwargs)


@pytest.fixture(scope="module")
def previous(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("demo")
    rc, lines, _ = _run(folder, "d", ())
    assert rc == 0, lines
    return folder / "d"


def _comparable(run: Path) -> tuple[bytes, dict]:
    data = json.loads((run / "metrics.json").read_text())
    return (run / "predictions.csv").read_bytes(), {h: v.get("pooled") for h, v in data["heads"].items()}


def test_a_finished_demo_records_its_final_place(previous):
    data = json.loads((previous / "run" / "metrics.json").read_text())
    assert data["provenance"]["data_root"] == str((previous / "data").resolve())
    assert data["provenance"]["store"] == "d/features.h5"  # as given, not the temporary folder it was built in
    assert ".tmp" not in (previous / "run" / "report.md").read_text()
    assert temporaries(previous.parent) == []


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_an_interrupted_overwrite_keeps_the_previous_demo(previous, tmp_path, sig):
    work = tmp_path / "w"
    shutil.copytree(previous.parent, work, symlinks=True)
    before = snapshot(work / "d")
    delay = random.Random(f"demo-{sig.name}").uniform(0.0, 3.0)  # after start-up, while the new demo is built
    rc, lines, _ = _run(work, "d", ("--overwrite",), sig=sig, delay=delay, after=work / ".d.lock")
    if check_interrupted(rc, lines, sig):
        assert snapshot(work / "d") == before, f"previous demo changed by {sig.name} at {delay:.1f} s"
    if sig == signal.SIGKILL:  # the same command again completes, equals an uninterrupted run, leaves nothing
        rc, lines, _ = _run(work, "d", ("--overwrite",))
        assert rc == 0, lines
        assert _comparable(work / "d" / "run") == _comparable(previous / "run")
    assert temporaries(work) == []


def test_a_full_disk_keeps_the_previous_demo(previous, tmp_path):
    with small_disk(tmp_path / "disk", 2_700_000) as disk:
        shutil.copytree(previous, disk.path / "d", symlinks=True)
        before = snapshot(disk.path / "d")
        rc, lines, _ = _run(disk.path, "d", ("--overwrite",), preexec=disk.preexec)
        check_refused(rc, lines, "d")
        assert snapshot(disk.path / "d") == before
        assert temporaries(disk.path) == []


def test_a_previous_demo_holding_a_users_file_is_refused(previous, tmp_path):
    shutil.copytree(previous, tmp_path / "d", symlinks=True)
    (tmp_path / "d" / "notes.txt").write_text("mine")
    before = snapshot(tmp_path / "d")
    rc, lines, _ = _run(tmp_path, "d", ("--overwrite",))
    check_refused(rc, lines, "notes.txt")
    assert snapshot(tmp_path / "d") == before

