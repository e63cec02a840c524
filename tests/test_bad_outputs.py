"""Bad inputs and bad outputs across the commands: one line, exit 2, and not one pre-existing byte changed.

Each case builds a small tree in its own temporary folder, hashes every file in it, runs one command in-process,
and checks the result: exit code 2, exactly one line on stderr starting ``fusionfeat: error:``, no traceback,
and every file that existed before byte-identical afterwards. Then: SIGKILL during ``train`` and ``fit``,
stale temporaries of dead processes, and a second concurrent writer.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fusionfeat.bundle import load_bundle, manifest_digest
from fusionfeat.cli import main
from fusionfeat.fsio import sha256_file
from fusionfeat.progress import STAMPED
from tests.conftest import REPO, write_cells

pytestmark = pytest.mark.usefixtures("single_torch_thread")
DEAD_PID = 99_999_999  # above Linux's pid_max: never a live process


def run(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], **kwargs)


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


# ----------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """cells/ (8 per class, 32 px), s.h5 (random weights), a logreg and an xgboost bundle, a logreg run."""
    root = tmp_path_factory.mktemp("bad")
    write_cells(root / "cells", per_class=8, size=32)
    steps = [
        ("extract", root / "cells", "-o", root / "s.h5", "--weights", "random", "--input-size", "32", "--quiet",
         "--workers", "0"),
        ("train", root / "s.h5", "--head", "logreg", "-o", root / "bundle", "--quiet", "--device", "cpu"),
        ("train", root / "s.h5", "--head", "xgboost", "-o", root / "xgb", "--quiet", "--device", "cpu"),
        ("fit", root / "s.h5", "--head", "logreg", "--cv", "stratified", "--folds", "2", "-o", root / "run",
         "--quiet", "--device", "cpu"),
    ]
    for step in steps:
        result = run(*step)
        assert result.exit_code == 0, result.output
    return root


def _copy(base: Path, tmp: Path, *names: str) -> None:
    for name in names:
        src = base / name
        if src.is_dir():
            shutil.copytree(src, tmp / name)
        else:
            shutil.copy2(src, tmp / name)


def _edit_bundle(bundle: Path, edit, resign: bool = True) -> None:
    """Edit bundle.json; ``resign`` also rewrites its self-checksum (as a tool that knows the format would), so
    the deeper checks are reached; without it the checksum alone must catch the edit."""
    info = json.loads((bundle / "bundle.json").read_text())
    edit(info)
    if resign and "manifest_sha256" in info:
        info["manifest_sha256"] = manifest_digest(info)
    (bundle / "bundle.json").write_text(json.dumps(info))


def _refresh_sha(info: dict, bundle: Path) -> None:
    info["files"] = {name: sha256_file(bundle / name) for name in info["files"]}


# ----------------------------------------------------------------------------------------------- setups
# Each returns the argv (relative paths are made absolute by the runner) and a substring of the expected error.


def manifest_onto_source(b, t):
    (t / "m.csv").write_text("path,label,group,fold,extra\n" + "".join(
        f"{p.relative_to(t)},{p.parent.name},,-1,keep\n" for p in sorted((t / "cells").rglob("*.png"))))
    return ["manifest", t / "m.csv", "-o", t / "m.csv"], "is the input"


def manifest_existing(b, t):
    (t / "notes.csv").write_text("mine\n")
    return ["manifest", t / "cells", "-o", t / "notes.csv"], "--overwrite"


def manifest_under_file(b, t):
    (t / "afile").write_text("x")
    return ["manifest", t / "cells", "-o", t / "afile" / "m.csv"], "cannot create the folder"


def manifest_onto_folder(b, t):
    (t / "out").mkdir()
    (t / "out" / "keep.txt").write_text("x")
    return ["manifest", t / "cells", "-o", t / "out"], "is a folder"


def extract_inside_data(b, t):
    return ["extract", t / "cells", "-o", t / "cells" / "s.h5", "--weights", "random"], "inside the input"


def extract_under_file(b, t):
    (t / "afile").write_text("x")
    return ["extract", t / "cells", "-o", t / "afile" / "s.h5", "--weights", "random"], "cannot create the folder"


def fit_over_user_folder(b, t):
    _copy(b, t, "s.h5")
    (t / "mine").mkdir()
    (t / "mine" / "thesis.tex").write_text("years of work")
    return ["fit", t / "s.h5", "--head", "logreg", "-o", t / "mine", "--overwrite"], "did not write"


def fit_over_store_folder(b, t):
    (t / "v").mkdir()
    _copy(b, t / "v", "s.h5")
    return ["fit", t / "v" / "s.h5", "--head", "logreg", "-o", t / "v"], "contains the input"


def _over_previous(command: str, folder: str):
    """``command`` (fit or train) writing over the output folder a previous run of it made."""
    def case(b, t):
        _copy(b, t, "s.h5", folder)
        return [command, t / "s.h5", "--head", "logreg", "-o", t / folder], "--overwrite"

    case.__name__ = f"{command}_over_previous_{folder}"
    return case


def _under_file(command: str, leaf: str):
    """``command`` (fit or train) asked to write below a file."""
    def case(b, t):
        _copy(b, t, "s.h5")
        (t / "afile").write_text("x")
        return [command, t / "s.h5", "--head", "logreg", "-o", t / "afile" / leaf], "cannot create the folder"

    case.__name__ = f"{command}_under_file"
    return case


fit_over_previous_run = _over_previous("fit", "run")
fit_under_file = _under_file("fit", "run")


def fit_onto_file(b, t):
    _copy(b, t, "s.h5")
    (t / "afile").write_text("x")
    return ["fit", t / "s.h5", "--head", "logreg", "-o", t / "afile"], "is a file"


def report_other_shape(b, t):
    (t / "r").mkdir()
    (t / "r" / "metrics.json").write_text(json.dumps({"heads": [1, 2], "accuracy": 0.9}))
    return ["report", t / "r"], "shape"


def report_nested_other_shape(b, t):
    _copy(b, t, "run")
    data = json.loads((t / "run" / "metrics.json").read_text())
    data["heads"]["logreg"]["summary"] = {"accuracy": 0.9}
    (t / "run" / "metrics.json").write_text(json.dumps(data))
    return ["report", t / "run"], "shape"


def train_over_store_folder(b, t):
    (t / "v" / "notes").mkdir(parents=True)
    (t / "v" / "notes" / "n.txt").write_text("x")
    _copy(b, t / "v", "s.h5")
    return ["train", t / "v" / "s.h5", "--head", "logreg", "-o", t / "v", "--overwrite"], "contains the input"


def train_over_user_folder(b, t):
    _copy(b, t, "s.h5")
    (t / "mine").mkdir()
    (t / "mine" / "data.csv").write_text("x")
    return ["train", t / "s.h5", "--head", "logreg", "-o", t / "mine"], "did not write"


train_over_previous_bundle = _over_previous("train", "bundle")
train_under_file = _under_file("train", "b")


def predict_onto_image(b, t):
    _copy(b, t, "bundle")
    image = sorted((t / "cells").rglob("*.png"))[0]
    return ["predict", t / "bundle", image, "-o", image], "is the input"


def predict_into_input_folder(b, t):
    _copy(b, t, "bundle")
    return ["predict", t / "bundle", t / "cells", "-o", t / "cells" / "all" / "p.csv"], "inside the input"


def predict_existing(b, t):
    _copy(b, t, "bundle")
    (t / "p.csv").write_text("mine\n")
    return ["predict", t / "bundle", t / "cells", "-o", t / "p.csv"], "--overwrite"


def predict_under_file(b, t):
    _copy(b, t, "bundle")
    (t / "afile").write_text("x")
    return ["predict", t / "bundle", t / "cells", "-o", t / "afile" / "p.csv"], "cannot create the folder"


def _tampered(edit, message, *extra):
    def setup(b, t):
        _copy(b, t, "bundle", "xgb")
        folder = edit(t)
        return ["predict", folder, t / "cells", "-o", t / "p.csv", "--device", "cpu", "--quiet", *extra], message
    setup.__name__ = edit.__name__
    return setup


def _missing_key(t):
    _edit_bundle(t / "bundle", lambda info: info.pop("classes"))
    return t / "bundle"


def _truncated_arrays(t):
    npz = t / "bundle" / "model.sklearn.npz"
    npz.write_bytes(npz.read_bytes()[:100])
    return t / "bundle"


def _truncated_xgb(t):
    model = t / "xgb" / "model.xgb.json"
    model.write_bytes(model.read_bytes()[:200])
    return t / "xgb"


def _truncated_xgb_legacy(t):
    model = t / "xgb" / "model.xgb.json"
    model.write_bytes(model.read_bytes()[:200])

    def edit(info):
        info.pop("files")
        info["format_version"] = 1
    _edit_bundle(t / "xgb", edit)
    return t / "xgb"


def _non_integer_input_size(t):
    _edit_bundle(t / "bundle", lambda info: info["backbones"]["resnet18"].update(input_size="32px"))
    return t / "bundle"


def _escaping_model_file(t):
    _edit_bundle(t / "bundle", lambda info: info.update(model_file="../../x.joblib", model_kind="joblib"))
    return t / "bundle"


def _seed_changed(t):
    _edit_bundle(t / "bundle", lambda info: info["backbones"]["resnet18"].update(seed=7))
    return t / "bundle"


def _seed_edited_by_hand(t):
    _edit_bundle(t / "bundle", lambda info: info["backbones"]["resnet18"].update(seed=7), resign=False)
    return t / "bundle"


def _downgraded_to_legacy(t):
    def edit(info):
        for key in ("files", "manifest_sha256"):
            info.pop(key)
        info["format_version"] = 1
        info["backbones"]["resnet18"].update(seed=7)
    _edit_bundle(t / "bundle", edit, resign=False)
    return t / "bundle"


def _wrong_width(t):
    from fusionfeat.heads.linear import make_logreg
    from fusionfeat.heads.state import dump_estimator

    rng = np.random.default_rng(0)
    tree, arrays = dump_estimator(make_logreg().fit(rng.normal(size=(20, 10)), np.arange(20) % 2))
    bundle = t / "bundle"
    (bundle / "model.sklearn.json").write_text(json.dumps(tree))
    np.savez(bundle / "model.sklearn.npz", **arrays)
    _edit_bundle(bundle, lambda info: _refresh_sha(info, bundle))
    return bundle


def malicious_pickle(b, t):
    _copy(b, t, "bundle")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {t / 'PWNED'}",))
    (t / "bundle" / "model.joblib").write_bytes(pickle.dumps(Evil()))

    def edit(info):
        info.update(model_file="model.joblib", model_kind="joblib")
        info.pop("model_arrays")
        info["files"] = {"model.joblib": sha256_file(t / "bundle" / "model.joblib")}
    _edit_bundle(t / "bundle", edit)
    return ["predict", t / "bundle", t / "cells", "-o", t / "p.csv"], "--trust-pickle"


def demo_over_data(b, t):
    (t / "d" / "data").mkdir(parents=True)
    (t / "d" / "data" / "precious.tif").write_bytes(b"\x00" * 64)
    return ["demo", "-o", t / "d", "--overwrite", "--weights", "random"], "did not write"


def demo_over_previous_demo(b, t):
    (t / "d" / "data").mkdir(parents=True)
    (t / "d" / ".fusionfeat-demo").write_text("written by fusionfeat demo\n")
    return ["demo", "-o", t / "d", "--weights", "random"], "--overwrite"


def demo_under_file(b, t):
    (t / "afile").write_text("x")
    return ["demo", "-o", t / "afile" / "d", "--weights", "random"], "cannot create the folder"


def _symlink_out(t):
    outside = t / "elsewhere.npz"
    shutil.copy2(t / "bundle" / "model.sklearn.npz", outside)
    (t / "bundle" / "model.sklearn.npz").unlink()
    (t / "bundle" / "model.sklearn.npz").symlink_to(outside)
    return t / "bundle"


def finetune_bad_freeze(b, t):
    _copy(b, t, "s.h5")
    return ["finetune", t / "s.h5", t / "cells", "--backbones", "resnet18", "--weights", "random",
            "--freeze-stages", "9", "--cv", "stratified", "--folds", "2", "--epochs", "1"], "--freeze-stages 9"


CASES = [
    manifest_onto_source, manifest_existing, manifest_under_file, manifest_onto_folder,
    extract_inside_data, extract_under_file,
    fit_over_user_folder, fit_over_store_folder, fit_over_previous_run, fit_under_file, fit_onto_file,
    report_other_shape, report_nested_other_shape,
    train_over_store_folder, train_over_user_folder, train_over_previous_bundle, train_under_file,
    predict_onto_image, predict_into_input_folder, predict_existing, predict_under_file,
    _tampered(_missing_key, "lacks classes"),
    _tampered(_truncated_arrays, "SHA-256"),
    _tampered(_truncated_xgb, "SHA-256"),
    _tampered(_truncated_xgb_legacy, "before bundles carried checksums"),
    _tampered(_truncated_xgb_legacy, "cannot load its model", "--trust-pickle"),
    _tampered(_non_integer_input_size, "input_size"),
    _tampered(_escaping_model_file, "inside the bundle folder"),
    _tampered(_seed_changed, "fingerprint"),
    _tampered(_seed_edited_by_hand, "was edited after `fusionfeat train` wrote it"),
    _tampered(_downgraded_to_legacy, "before bundles carried checksums"),
    _tampered(_wrong_width, "the model reads 10 features"),  # refused on load since the parts-agree check
    _tampered(_symlink_out, "outside the bundle folder"),
    malicious_pickle, demo_over_data, demo_over_previous_demo, demo_under_file, finetune_bad_freeze,
]


@pytest.mark.parametrize("setup", CASES, ids=[c.__name__ for c in CASES])
def test_bad_case_is_one_line_and_changes_nothing(base, tmp_path, setup):
    _copy(base, tmp_path, "cells")
    argv, message = setup(base, tmp_path)
    before = snapshot(tmp_path)
    result = run(*argv)
    assert result.exit_code == 2, result.output
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("fusionfeat: error: "), result.stderr
    assert message in lines[0], lines[0]
    assert "Traceback" not in result.output
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before
    assert not (tmp_path / "PWNED").exists()
    assert not (tmp_path / "s.h5.finetune").exists()  # nothing written before validation


def test_pickle_runs_only_with_trust_pickle(base, tmp_path):
    _copy(base, tmp_path, "cells")
    malicious_pickle(base, tmp_path)
    result = run("predict", tmp_path / "bundle", tmp_path / "cells", "-o", tmp_path / "p.csv", "--trust-pickle")
    assert (tmp_path / "PWNED").exists()  # the opt-in really loads it (here: runs the payload)
    assert "warning: loading the pickle" in result.stderr
    assert result.exit_code == 2 and "not a fitted classifier" in result.stderr


def test_legacy_joblib_bundle_needs_trust_pickle(base, tmp_path):
    import joblib

    from fusionfeat.heads.state import load_estimator

    _copy(base, tmp_path, "cells", "bundle")
    bundle = tmp_path / "bundle"
    with np.load(bundle / "model.sklearn.npz", allow_pickle=False) as z:
        estimator = load_estimator(json.loads((bundle / "model.sklearn.json").read_text()), dict(z))
    joblib.dump(estimator, bundle / "model.joblib")

    def legacy(info):
        for key in ("files", "model_arrays"):
            info.pop(key)
        info.update(format_version=1, model_file="model.joblib", model_kind="joblib")
    _edit_bundle(bundle, legacy)
    refused = run("predict", bundle, tmp_path / "cells", "-o", tmp_path / "a.csv", "--quiet", "--device", "cpu")
    assert refused.exit_code == 2 and "--trust-pickle" in refused.stderr and not (tmp_path / "a.csv").exists()
    trusted = run("predict", bundle, tmp_path / "cells", "-o", tmp_path / "b.csv", "--quiet", "--device", "cpu",
                  "--trust-pickle")
    assert trusted.exit_code == 0, trusted.output
    assert trusted.stderr.startswith("warning: loading the pickle")
    assert run("predict", base / "bundle", tmp_path / "cells", "-o", tmp_path / "c.csv", "--quiet", "--device",
               "cpu").exit_code == 0
    assert (tmp_path / "b.csv").read_text() == (tmp_path / "c.csv").read_text()


@pytest.mark.parametrize("command", ["fit", "train", "predict"])
def test_disk_full_is_one_line_and_keeps_the_old_output(base, tmp_path, monkeypatch, command):
    _copy(base, tmp_path, "cells", "s.h5", "run", "bundle")
    (tmp_path / "p.csv").write_text("path,p_all,label,error\nold.png,0.500000,all,\n")  # a previous predict output

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", "somefile")
    argv = {
        "fit": ("fit", tmp_path / "s.h5", "--head", "logreg", "--cv", "stratified", "--folds", "2", "-o",
                tmp_path / "run", "--overwrite", "--quiet", "--device", "cpu"),
        "train": ("train", tmp_path / "s.h5", "--head", "logreg", "-o", tmp_path / "bundle", "--overwrite", "--quiet"),
        "predict": ("predict", tmp_path / "bundle", tmp_path / "cells", "-o", tmp_path / "p.csv", "--overwrite",
                    "--quiet", "--device", "cpu"),
    }[command]
    target = {"fit": "fusionfeat.report.run.write_predictions", "train": "fusionfeat.bundle.write_bundle_files",
              "predict": "fusionfeat.predict.csv_writer"}[command]
    monkeypatch.setattr(target, full)
    before = snapshot(tmp_path)
    result = run(*argv)
    assert result.exit_code == 2, result.output
    # the stages that ended before the write failed said so (timestamped log lines); the error is one line
    lines = [line for line in result.stderr.splitlines() if not STAMPED.match(line)]
    assert len(lines) == 1 and "disk is full" in lines[0] and "previous output is kept" in lines[0], result.stderr
    after = snapshot(tmp_path)
    assert {k: after.get(k) for k in before} == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_overwrite_replaces_previous_outputs(base, tmp_path):
    _copy(base, tmp_path, "cells", "s.h5", "run", "bundle")
    assert run("train", tmp_path / "s.h5", "--head", "logreg", "-o", tmp_path / "bundle", "--overwrite",
               "--quiet").exit_code == 0
    assert load_bundle(tmp_path / "bundle").info["model_kind"] == "sklearn"
    result = run("fit", tmp_path / "s.h5", "--head", "logreg", "--cv", "stratified", "--folds", "2", "-o",
                 tmp_path / "run", "--overwrite", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "run" / ".fusionfeat-run").is_file()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == [".bundle.lock", ".run.lock"]


def test_stale_temporaries_of_dead_processes_are_cleaned(base, tmp_path):
    """What a killed fusionfeat left (temporaries marked as its own, named after the output) is removed; a user's
    file or folder that merely looks like one (no marker: `.results.99999.tmp/thesis.tex`) stays, byte for byte."""
    _copy(base, tmp_path, "cells", "s.h5")
    stale = [tmp_path / f".run.{DEAD_PID}.tmp", tmp_path / f".b.{DEAD_PID}.tmp",
             tmp_path / f".s2.h5.{DEAD_PID}.assemble"]
    for folder, kind in zip(stale, ("run", "bundle", None), strict=True):
        folder.mkdir()
        (folder / "half.json").write_text("{")
        marker = (folder / f".fusionfeat-{kind}") if kind else (folder / ".fusionfeat-temp")
        marker.write_text("written by fusionfeat\n" if kind else "s2.h5\n")
    users = {tmp_path / f".run.{DEAD_PID + 1}.tmp" / "thesis.tex": b"my thesis",
             tmp_path / f".p.csv.{DEAD_PID}.tmp": b"notes", tmp_path / f".p.csv.{DEAD_PID}.old": b"more notes",
             tmp_path / f".s2.h5.{DEAD_PID}.notes.assemble": b"x", tmp_path / f".s.h5.{DEAD_PID}.rewrite": b"y"}
    for path, data in users.items():
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
    live = tmp_path / f".run.{os.getppid()}.tmp"  # a live process's temp stays
    live.mkdir()
    assert run("fit", tmp_path / "s.h5", "--head", "logreg", "--cv", "stratified", "--folds", "2", "-o",
               tmp_path / "run", "--quiet", "--device", "cpu").exit_code == 0
    assert run("train", tmp_path / "s.h5", "--head", "logreg", "-o", tmp_path / "b", "--quiet").exit_code == 0
    assert run("extract", tmp_path / "cells", "-o", tmp_path / "s2.h5", "--weights", "random", "--input-size", "32",
               "--backbones", "resnet18", "--quiet", "--workers", "0").exit_code == 0
    assert run("predict", tmp_path / "b", tmp_path / "cells", "-o", tmp_path / "p.csv", "--quiet",
               "--device", "cpu").exit_code == 0
    assert not any(p.exists() for p in stale)
    assert live.exists() and all(path.read_bytes() == data for path, data in users.items())


def test_killed_swap_restores_the_previous_output(base, tmp_path):
    """A kill between 'rename old aside' and 'rename new in': the next run puts the old one back first."""
    _copy(base, tmp_path, "s.h5", "bundle")
    before = snapshot(tmp_path / "bundle")
    os.replace(tmp_path / "bundle", tmp_path / f".bundle.{DEAD_PID}.old")
    result = run("train", tmp_path / "s.h5", "--head", "logreg", "-o", tmp_path / "bundle", "--quiet")
    assert result.exit_code == 2 and "--overwrite" in result.stderr  # the restored bundle is there again
    assert snapshot(tmp_path / "bundle") == before


def test_second_concurrent_writer_is_refused(base, tmp_path):
    _copy(base, tmp_path, "s.h5")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, sys, time; fh = open(sys.argv[1], 'a+'); fcntl.lockf(fh, fcntl.LOCK_EX); "
        "print('locked', flush=True); time.sleep(60)"), str(tmp_path / ".run.lock")], stdout=subprocess.PIPE,
        text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = run("fit", tmp_path / "s.h5", "--head", "logreg", "-o", tmp_path / "run", "--quiet")
        assert result.exit_code == 2 and "another fusionfeat process" in result.stderr
        assert not (tmp_path / "run").exists()
    finally:
        holder.kill()
        holder.wait()


# ----------------------------------------------------------------------------------------------- SIGKILL


def _spawn(argv: list) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "fusionfeat", *map(str, argv)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while proc.poll() is None and not ready() and time.monotonic() < deadline:
        time.sleep(0.003)
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
    proc.wait()


def _temp_has(parent: Path, name: str, inner: str | None):
    def ready() -> bool:
        for tmp in parent.glob(f".{name}.*.tmp"):
            if inner is None or (tmp / inner).exists():
                return True
        return False
    return ready


@pytest.mark.parametrize("command", ["train", "fit"])
def test_sigkill_while_writing_keeps_old_or_gives_new(base, tmp_path, command):
    """Kill --overwrite while it builds its temporary output, and once that is complete (just before the swap).

    Each time the output is the old one, byte for byte, or a complete new one equal to an uninterrupted run;
    a rerun then succeeds and leaves no temporaries."""
    _copy(base, tmp_path, "s.h5")
    name = "bundle" if command == "train" else "run"
    _copy(base, tmp_path, name)
    out = tmp_path / name
    argv = [command, tmp_path / "s.h5", "--head", "logreg", "-o", out, "--overwrite", "--quiet", "--device", "cpu"]
    if command == "fit":
        argv += ["--cv", "stratified", "--folds", "2"]
    last = "bundle.json" if command == "train" else "report.md"
    old = snapshot(out)
    reference = _summary(base / name, command)
    points = [_temp_has(tmp_path, name, None), _temp_has(tmp_path, name, last)]  # mid-work; about to swap
    for i, point in enumerate(points):
        proc = _spawn(argv)
        _kill_when(proc, point)
        now = snapshot(out) if out.exists() else None
        assert now == old or _summary(out, command) == reference, f"kill point {i}: output is neither old nor new"
    proc = _spawn(argv)
    assert proc.wait() == 0, proc.stderr.read()
    assert _summary(out, command) == reference
    assert not [p for p in tmp_path.iterdir() if p.name.endswith((".tmp", ".old"))]


def _summary(folder: Path, command: str):
    """What must equal between runs (not timestamps): predictions of a bundle, the CV summary of a run."""
    if command == "train":
        bundle = load_bundle(folder)
        X = np.random.default_rng(0).normal(size=(5, bundle.estimator.n_features_in_))
        return np.round(bundle.estimator.predict_proba(X), 12).tolist()
    data = json.loads((folder / "metrics.json").read_text())
    return {h: {k: v for k, v in d["summary"].items() if not k.endswith("_time")} for h, d in data["heads"].items()}


def test_sklearn_state_rebuilds_only_allowed_classes():
    from fusionfeat.heads.state import StateError, load_estimator

    with pytest.raises(StateError, match="not one fusionfeat saves"):
        load_estimator({"class": "Popen", "state": {"args": "touch x"}}, {})
    with pytest.raises(StateError, match="missing"):
        load_estimator({"class": "StandardScaler", "state": {"mean_": {"array": "a9"}}}, {})


def test_missing_parent_folders_are_created(base, tmp_path):
    out = tmp_path / "new" / "deeper" / "m.csv"
    assert run("manifest", base / "cells", "-o", out).exit_code == 0
    assert out.read_text().startswith("path,label,group,fold")
