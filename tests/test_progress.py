"""Progress that fits where it goes: a log file gets a few timestamped lines, a terminal one live bar.

The reporter is driven by a fake clock (so the 30-second pace is tested without waiting), the command line
end to end on a tiny store (``CliRunner``'s stderr is not a terminal), and the terminal path in a real
pseudo-terminal (``pty``), where there must be one bar and no cursor movement.
"""

from __future__ import annotations

import logging
import os
import pty
import re
import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from fusionfeat import progress as fp
from fusionfeat.cli import main
from fusionfeat.heads.zoo import resolve_head
from fusionfeat.store import FeatureStore
from fusionfeat.study import run_study
from tests.conftest import REPO, write_cells

pytestmark = pytest.mark.usefixtures("single_torch_thread")
STAMP = re.compile(fp.STAMPED.pattern + r"\S")
ALL_HEADS = ("resnet18", "vgg16", "concat", "attention-spatial", "svm", "xgboost", "logreg")


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lines(monkeypatch, capsys):
    """Lines mode, a fake clock, and the command line's handler on stderr (read with ``capsys``)."""
    monkeypatch.setenv("FUSIONFEAT_PROGRESS", "lines")
    clock = Clock()
    monkeypatch.setattr(fp, "_clock", clock)
    monkeypatch.setattr(fp, "_last_line", [-float("inf")])
    installed = fp.install_handler()
    yield clock, capsys
    fp.remove_handler(installed)


def test_lines_come_at_most_every_interval_and_stage_ends_always(lines):
    clock, stream = lines
    bar = fp.progress(100, True, "extract resnet18")
    for _ in range(100):  # one batch a second: 100 s
        clock.now += 1.0
        bar.update(1)
    bar.stage("a stage in between")
    bar.close()
    text = stream.readouterr().err.splitlines()
    assert all(STAMP.match(line) and "\r" not in line and "\x1b" not in line for line in text)
    periodic = [line for line in text if "%" in line]
    assert [re.search(r"img (\d+)/100", line).group(1) for line in periodic] == ["30", "60", "90"]
    assert periodic[0].endswith("extract resnet18: img 30/100 (30%) [30s, ~1m10s left]")
    assert text[-2].endswith("extract resnet18: a stage in between [1m40s]")
    assert text[-1].endswith("extract resnet18: 100 img done in 1m40s (1.0 img/s)")
    assert len(text) == 5


def test_quiet_logs_stage_ends_only(lines):
    clock, stream = lines
    with fp.progress(50, False, "cross-validation", unit="fit") as bar:
        for i in range(50):
            clock.now += 10.0
            bar.set_postfix_str(f"logreg fold {i % 5}")
            bar.update(1)
            if i % 25 == 24:
                bar.stage("logreg done")
    assert [line[20:] for line in stream.readouterr().err.splitlines()] == [
        "cross-validation: logreg done [4m10s]",
        "cross-validation: logreg done [4m10s]",
        "cross-validation: 50 fits done in 8m20s",
    ]


def test_a_nested_reporter_is_part_of_the_outer_line(lines):
    clock, stream = lines
    with fp.progress(2, True, "cross-validation", unit="fit") as outer:
        outer.set_postfix_str("resnet18 fold 0")
        epochs = fp.progress(60, True, "resnet18", unit="epoch", leave=False)
        for _ in range(7):  # early stopping after 7 of 60 epochs
            clock.now += 5.0
            epochs.update(1)
            epochs.set_postfix({"val_loss": 0.41234})
        assert epochs.label() == "cross-validation > resnet18"
        epochs.close()
        outer.update(1)
    # one periodic line at 30 s; the epochs' early end and the unfinished outer loop log nothing
    (line,) = stream.readouterr().err.splitlines()
    assert line.endswith("cross-validation: fit 0/2 (0%), resnet18 fold 0 | resnet18 epoch 6/60, val_loss=0.4123 [30s]")


def test_an_unfinished_outer_reporter_logs_no_done_line(lines):
    clock, _ = lines
    bar = fp.progress(10, True, "predict")
    bar.update(3)
    bar.close()  # an error stopped it: the error line says why, no "done"
    assert sys.stderr.getvalue() == ""


def test_a_reporter_an_error_left_open_does_not_adopt_later_ones(lines):
    clock, stream = lines

    def fails() -> None:
        epochs = fp.progress(60, True, "resnet18", unit="epoch", leave=False)
        epochs.update(1)
        raise ValueError("a bad value")

    try:
        fails()
    except ValueError:
        pass
    with fp.progress(1, True, "predict") as bar:
        bar.update(1)
        assert bar.label() == "predict"
    assert stream.readouterr().err.splitlines()[-1].endswith(" predict: 1 img done in 0s")


def test_library_logs_nothing_until_the_user_configures_logging(monkeypatch, capsys):
    monkeypatch.setenv("FUSIONFEAT_PROGRESS", "lines")
    assert not logging.getLogger("fusionfeat").handlers
    with fp.progress(1, False, "extract") as bar:
        bar.update(1)
    assert capsys.readouterr().err == ""


def test_single_heads_report_epochs_under_their_own_name():
    assert resolve_head("resnet18").build(progress=True, device="cpu").progress == "resnet18"
    concat = resolve_head("concat", backbones=("resnet18", "vgg16")).build(progress=True)
    assert concat.progress == "concat"
    assert resolve_head("vgg16").build(progress=False).progress is False
    assert resolve_head("resnet18") == resolve_head("resnet18")  # specs still compare equal


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("progress")
    data = write_cells(root / "cells", per_class=8, size=40)
    path = root / "s.h5"
    result = CliRunner().invoke(main, ["extract", str(data), "-o", str(path), "--weights", "random",
                                       "--input-size", "32", "--quiet", "--workers", "0", "--views", "dihedral8"])
    assert result.exit_code == 0, result.output
    return path


def _fit(store, out, *extra):
    return CliRunner().invoke(main, ["fit", str(store), "--head", "all", "--folds", "2", "--device", "cpu",
                                     "--head-param", "*.max_epochs=3", "-o", str(out), *extra])


def _log_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if not line.startswith("warning: ")]


def test_fit_all_to_a_file_is_a_few_readable_lines(store, tmp_path):
    result = _fit(store, tmp_path / "run")
    assert result.exit_code == 0, result.output
    log = _log_lines(result.stderr)
    assert all(STAMP.match(line) for line in log), result.stderr
    assert "\r" not in result.stderr and "\x1b" not in result.stderr
    done = [line for line in log if " done: 2 fits" in line]
    assert [line.split("cross-validation: ")[1].split(" done")[0] for line in done] == list(ALL_HEADS)
    assert log[-1].split(" ", 2)[2].startswith("cross-validation: 14 fits done in ")
    assert len(log) <= len(ALL_HEADS) + 1 + 4  # + at most a few periodic lines (one per 30 s)


def test_fit_quiet_still_says_when_each_head_ends(store, tmp_path, monkeypatch):
    monkeypatch.setattr(fp, "LINE_INTERVAL", 0.0)  # periodic lines would come at every step, were they on
    result = _fit(store, tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    log = _log_lines(result.stderr)
    assert len(log) == len(ALL_HEADS) + 1 and all(" done" in line for line in log), result.stderr
    assert not logging.getLogger("fusionfeat").handlers  # the CLI put the logger back


def test_periodic_lines_name_the_head_training(store, tmp_path, monkeypatch):
    monkeypatch.setattr(fp, "LINE_INTERVAL", 0.0)
    result = CliRunner().invoke(main, ["fit", str(store), "--head", "resnet18", "--folds", "2", "--device", "cpu",
                                       "--head-param", "*.max_epochs=2", "-o", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    epochs = [line for line in _log_lines(result.stderr) if " epoch " in line]
    assert epochs and all("| resnet18 epoch " in line for line in epochs), result.stderr
    assert "mlp" not in result.stderr


def test_study_says_when_each_arm_and_head_ends(store, caplog):
    caplog.set_level(logging.INFO, logger="fusionfeat")
    with FeatureStore.open(store) as fs:
        run_study(fs, ["logreg"], repeats=1, folds=2, progress=False, device="cpu")
    messages = [r.getMessage() for r in caplog.records if r.name == "fusionfeat.progress"]
    arms = [m.split(": ")[0] for m in messages if ": arm " in m]
    assert arms == ["study paper", "study augment", "study weight"]
    heads = [m for m in messages if "logreg done: 2 fits" in m]
    assert [m.split(": ")[0] for m in heads] == [f"study {a} > cross-validation" for a in ("paper", "augment",
                                                                                              "weight")]
    assert messages[-1].startswith("study: 3 arms done in ")
    assert len(messages) == 7


def test_a_terminal_gets_one_bar_and_no_cursor_movement(tmp_path):
    script = textwrap.dedent("""
        import time
        from fusionfeat import progress as fp
        inst = fp.install_handler()
        with fp.progress(4, True, "cross-validation", unit="fit") as bar:
            for head in ("resnet18", "concat"):
                for fold in range(2):
                    bar.set_postfix_str(f"{head} fold {fold}")
                    with fp.progress(5, True, head, unit="epoch", leave=False) as epochs:
                        for _ in range(5):
                            time.sleep(0.05)
                            epochs.update(1)
                    bar.update(1)
                bar.stage(f"{head} done")
        fp.remove_handler(inst)
    """)
    leader, follower = pty.openpty()
    env = {**os.environ, "PYTHONPATH": str(REPO), "COLUMNS": "160"}
    env.pop("FUSIONFEAT_PROGRESS", None)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.DEVNULL, stdout=follower,
                            stderr=follower, env=env)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    raw = b"".join(chunks).decode("utf-8", "replace")
    assert "\x1b[A" not in raw  # no cursor up: nested bars would need it
    assert "cross-validation:" in raw and "resnet18 epoch" in raw and "concat epoch" in raw  # the bar, live
    stage = [line.split(" ", 2)[2] for line in raw.replace("\r", "\n").splitlines() if STAMP.match(line)]
    assert [re.sub(r" \[.*\]$| in \d+s$", "", line) for line in stage] == [
        "cross-validation: resnet18 done", "cross-validation: concat done", "cross-validation: 4 fits done"]
