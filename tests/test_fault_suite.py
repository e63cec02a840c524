"""The fault suite: every writing command under a full disk and under SIGINT, SIGTERM and SIGKILL at a seeded
random moment (start-up included), each followed by the same command again.

Each case asserts: the interrupted or refused run ends cleanly (exit 130 / 143 with one line, or -9 for SIGKILL;
a full disk is exit 2 and one ``fusionfeat: error:`` line), never a traceback; every file that existed before is
byte-identical (the fine-tuned store excepted: it is the output); no temporary is left behind once the same
command has run again; and that rerun equals an uninterrupted run (same CSV bytes, same feature arrays, same
model files, same montages). A full disk is a small tmpfs (as root), else ``RLIMIT_FSIZE`` (``tests/faults.py``).
``demo`` has its own cases in ``tests/test_demo_aside.py``; extract, manifest and fit also have SIGINT/SIGTERM
cases in ``tests/test_signals.py``.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import itertools
import json
import os
import random
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner

from fusionfeat.cli import main
from fusionfeat.data.synthetic import generate_cnmc_like
from fusionfeat.store import FeatureStore
from tests.conftest import one_torch_thread
from tests.faults import check_interrupted, check_refused, run_cli, small_disk, snapshot, temporaries

pytestmark = pytest.mark.slow

EXTRACT = ["--weights", "random", "--input-size", "32", "--device", "cpu", "--precision", "fp32", "--quiet",
           "--workers", "0", "--batch-size", "4"]
FINETUNE = ["--backbones", "resnet18", "--weights", "random", "--epochs", "1", "--batch-size", "4", "--folds", "2",
            "--device", "cpu", "--precision", "fp32", "--workers", "0", "--quiet"]


# ----------------------------------------------------------------------------------------------- how outputs compare


def _bytes(out: Path) -> object:
    return out.read_bytes()


def _manifest(out: Path) -> object:
    """The rows, with each path resolved (paths are written relative to the CSV's folder)."""
    with open(out, newline="") as fh:
        rows = list(csv.reader(fh))
    return rows[0], [[str((out.parent / r[0]).resolve()), *r[1:]] for r in rows[1:]]


def _file(name: str) -> Callable[[Path], object]:
    return lambda out: (out / name).read_bytes()


def _pngs(out: Path) -> object:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.png"))}


def _model_files(out: Path) -> object:
    return json.loads((out / "bundle.json").read_text())["files"]


def _features(out: Path) -> object:
    with FeatureStore.open(out) as fs:
        return {b: fs.pooled(b).tobytes() for b in fs.backbones}, list(fs.paths)


def _finetuned(out: Path) -> object:
    with FeatureStore.open(out) as fs:
        return {k: fs.pooled("resnet18", fold=k).tobytes() for k in fs.finetuned_folds()}


@dataclass
class Command:
    args: list[str]
    out: str  # the output, relative to the working folder
    needs: list[str]  # inputs linked from the base folder
    same: Callable[[Path], object]  # what must equal between a rerun and an uninterrupted run
    span: float = 8.0  # signals land at a seeded moment in [0.1, span] s
    copy: dict[str, str] = field(default_factory=dict)  # inputs copied (the command changes them): name -> base name


COMMANDS = {
    "manifest": Command(["manifest", "data", "-o", "out.csv"], "out.csv", ["data"], _manifest, 4.0),
    "extract": Command(["extract", "data", "-o", "out.h5", *EXTRACT], "out.h5", ["data"], _features),
    "fit": Command(["fit", "s.h5", "--head", "logreg", "--cv", "grouped", "--folds", "2", "-o", "out", "--quiet"],
                   "out", ["s.h5"], _file("predictions.csv")),
    "study": Command(["study", "s8.h5", "-o", "out", "--head", "resnet18,concat", "--repeats", "1", "--folds", "2",
                      "--quiet"], "out", ["s8.h5"], _file("study.csv")),
    "train": Command(["train", "s.h5", "--head", "logreg", "-o", "out", "--quiet"], "out", ["s.h5"], _model_files),
    "predict": Command(["predict", "bundle", "data", "-o", "out.csv"], "out.csv", ["bundle", "data"], _bytes),
    "explain": Command(["explain", "arun", "-o", "out", "--n", "1"], "out", ["arun"], _pngs),
    "evaluate": Command(["evaluate", "bundle", "data", "-o", "out", "--quiet"], "out", ["bundle", "data"],
                        _file("predictions.csv")),
    "finetune": Command(["finetune", "out.h5", "data", *FINETUNE], "out.h5", ["data"], _finetuned, 12.0,
                        {"out.h5": "s.h5"}),
}


def cli(cwd: Path, *args: object) -> None:
    here = Path.cwd()
    os.chdir(cwd)
    try:
        with one_torch_thread():
            result = CliRunner().invoke(main, [str(a) for a in args])
    finally:
        os.chdir(here)
    assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """data/ (18 cells of 6 subjects), s.h5, s8.h5 (dihedral views), bundle/, arun/ (attention-spatial), and
    ref/ holding each command's uninterrupted output."""
    root = tmp_path_factory.mktemp("faults")
    generate_cnmc_like(root / "data", n_subjects_all=3, n_subjects_hem=3, cells_per_subject=3, size=48, n_folds=3)
    cli(root, "extract", "data", "-o", "s.h5", *EXTRACT)
    cli(root, "extract", "data", "-o", "s8.h5", "--views", "dihedral8", *EXTRACT)
    cli(root, "train", "s.h5", "--head", "logreg", "-o", "bundle", "--quiet")
    cli(root, "fit", "s.h5", "--head", "attention-spatial", "--cv", "grouped", "--folds", "2", "-o", "arun", "--quiet",
        "--head-param", "attention-spatial.max_epochs=2")
    ref = root / "ref"
    for name, command in COMMANDS.items():
        work = prepare(root, ref / name, command)
        cli(work, *command.args)
    return root


def prepare(base: Path, work: Path, command: Command) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    for name in command.needs:
        (work / name).symlink_to(base / name)
    for name, source in command.copy.items():
        shutil.copyfile(base / source, work / name)
    return work


def _inputs(work: Path, command: Command) -> dict[str, object]:
    """Everything in the working folder but the output (and its lock and temporaries)."""
    return {k: v for k, v in snapshot(work).items()
            if not k.split("/")[0].startswith((command.out, f".{command.out}"))}


def same_as_uninterrupted(base: Path, work: Path, name: str) -> None:
    command = COMMANDS[name]
    assert command.same(work / command.out) == command.same(base / "ref" / name / command.out), name


# ----------------------------------------------------------------------------------------------- signals


SIGNAL_CASES = [(name, sig, "run") for name in ("study", "train", "predict", "explain", "finetune", "evaluate")
                for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGKILL)]
SIGNAL_CASES += [(name, signal.SIGKILL, "run") for name in ("manifest", "extract", "fit")]
# a second moment for every command: start-up (imports, argument checks), where Ctrl-C is most often pressed
SIGNAL_CASES += [(name, sig, "start-up") for name, sig in zip(COMMANDS, itertools.cycle(
    (signal.SIGINT, signal.SIGTERM)))]


@pytest.mark.parametrize(("name", "sig", "moment"), SIGNAL_CASES, ids=lambda v: getattr(v, "name", v))
def test_a_signal_at_a_random_moment_then_the_same_command(base, tmp_path, name, sig, moment):
    command = COMMANDS[name]
    work = prepare(base, tmp_path / "w", command)
    before = _inputs(work, command)
    low, high = (0.05, 0.6) if moment == "start-up" else (0.1, command.span)
    delay = random.Random(f"{name}-{sig.name}-{moment}").uniform(low, high)
    rc, lines, _ = run_cli(command.args, work, sig, delay)
    interrupted = check_interrupted(rc, lines, sig)
    # an output in place after the signal is whole: it is renamed there only when complete (a signal landing after
    # that rename finds the work done), and same_as_uninterrupted below compares it with an uninterrupted run
    done = interrupted and not command.copy and os.path.lexists(work / command.out)
    assert _inputs(work, command) == before
    if interrupted and not done:  # the same command again (one that finished before the signal has its output)
        rc, lines, _ = run_cli(command.args, work)
        assert rc == 0 and not any("Traceback" in line for line in lines), lines
    same_as_uninterrupted(base, work, name)
    assert temporaries(work) == [], name


# ----------------------------------------------------------------------------------------------- full disks


def _size(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def _fill(folder: Path, leave: int) -> None:
    """Fill the file system of ``folder`` but ``leave`` bytes (a pre-existing file, checked like the others)."""
    block = b"\0" * 65536
    fd = os.open(folder / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        with contextlib.suppress(OSError):
            while os.write(fd, block):
                pass
    finally:
        os.close(fd)
    size = (folder / "filler").stat().st_size
    os.truncate(folder / "filler", max(0, size - leave))


@pytest.mark.parametrize("name", list(COMMANDS))
def test_a_full_disk_then_the_same_command_with_space(base, tmp_path, name):
    command = COMMANDS[name]
    expected = _size(base / "ref" / name / command.out)
    leave = 1 << 20 if name == "finetune" else expected // 3  # its checkpoints are ~45 MB
    with small_disk(tmp_path / "disk", (leave + _size(base / "s.h5") + (4 << 20))) as disk:
        work = prepare(base, disk.path, command)
        (work / "keep.txt").write_text("a file the command did not write\n")
        if disk.limit is None:
            _fill(work, leave)
        else:
            disk.limit = leave
        before = _inputs(work, command)
        rc, lines, _ = run_cli(command.args, work, preexec=disk.preexec)
        check_refused(rc, lines)
        assert any(w in lines[0] for w in ("disk is full", "No space left", "File too large")), lines
        assert _inputs(work, command) == before, name
        if disk.limit is None:
            (work / "filler").unlink()  # space again
            done = subprocess.run(["mount", "-o", "remount,size=512m", str(work)], capture_output=True)
            assert done.returncode == 0, done.stderr
        else:
            disk.limit = None
        rc, lines, _ = run_cli(command.args, work, preexec=disk.preexec)
        assert rc == 0, lines
        same_as_uninterrupted(base, work, name)
        assert temporaries(work) == [], name


def test_the_disk_helpers_fill_and_free(tmp_path):
    with small_disk(tmp_path / "d", 1 << 20) as disk:
        if disk.limit is not None:
            pytest.skip("no tmpfs here (not root): the suite uses RLIMIT_FSIZE instead")
        _fill(disk.path, 0)
        with pytest.raises(OSError) as exc, open(disk.path / "x", "wb") as fh:
            fh.write(b"\0" * 65536)
            fh.flush()
        assert exc.value.errno == errno.ENOSPC
