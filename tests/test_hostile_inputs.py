"""Hostile and careless inputs, second round: each gets exit 2 and one line naming the file or option, never a
traceback or a hang, and nothing already on disk changes.

The cases are the classes an independent probe found silently wrong or tracing back: repeated CSV columns,
labels outside the label set, image-named entries that are not files, control characters, absurd folds and
option values, damaged or edited stores (newer schema, links, bad labels, short datasets, non-finite features),
a FIFO given as a store, and head parameters that cannot work.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from fusionfeat.cli import main
from fusionfeat.data.synthetic import generate_class_folders
from tests.conftest import write_cells

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _run(*args: object) -> tuple[int, list[str]]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    lines = [line for line in result.output.splitlines() if not line.startswith("warning:")]
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, lines


def _one_line_error(args: tuple, needle: str) -> None:
    code, lines = _run(*args)
    errors = [line for line in lines if line.startswith("fusionfeat: error:")]
    assert code == 2 and len(errors) == 1 and needle in errors[0], (code, lines)
    assert not any("Traceback" in line for line in lines)


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and not p.is_symlink() and not p.name.endswith(".lock")}


# ----------------------------------------------------------------------------------------------- data


def _csv(rows: str) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        write_cells(root / "cells", per_class=2)
        (root / "cells" / "m.csv").write_text(rows)
        return root / "cells" / "m.csv"
    return make


def _cnmc(labels: bytes) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        data = root / "cnmc"
        for rel in ("training_data/fold_0/all/UID_1_1_1_all.bmp", "training_data/fold_0/hem/UID_H2_1_1_hem.bmp"):
            (data / rel).parent.mkdir(parents=True, exist_ok=True)
            (data / rel).write_bytes(b"x")
        val = data / "validation_data" / "C-NMC_test_prelim_phase_data"
        val.mkdir(parents=True)
        (val / "1.bmp").write_bytes(b"x")
        (data / "validation_data" / "C-NMC_test_prelim_phase_data_labels.csv").write_bytes(labels)
        return data
    return make


def _odd_entry(kind: str) -> Callable[[Path], Path]:
    def make(root: Path) -> Path:
        write_cells(root / "cells", per_class=2)
        odd = root / "cells" / "all" / "odd.png"
        if kind == "fifo":
            os.mkfifo(odd)
        elif kind == "device":
            odd.symlink_to("/dev/zero")
        else:
            odd.mkdir()
        return root / "cells"
    return make


ROW = "hem/cell_000.png,hem\nall/cell_000.png,all\nhem/cell_001.png,hem\nall/cell_001.png,all\n"
DATA_CASES = {
    "csv label column twice": (_csv("path,label,Label\n" + ROW.replace("\n", ",x\n")), "column 'label' twice"),
    "csv path column twice": (_csv("path,label,path\n" + ROW.replace("\n", ",y\n")), "column 'path' twice"),
    "nul byte in a label": (_csv("path,label\nhem/cell_000.png,he\0m\nall/cell_000.png,all\n"), "control character"),
    "newline-free control char in a group": (_csv("path,label,group\nhem/cell_000.png,hem,a\x07\n"
                                                   "all/cell_000.png,all,b\n"), "control character"),
    "fold beyond any dataset": (_csv("path,label,fold\nhem/cell_000.png,hem,99999999999999999999\n"
                                     "all/cell_000.png,all,0\n"), "out of range"),
    "c-nmc label 7": (_cnmc(b"Patient_ID,new_names,labels\nUID_h4_9_1_hem.bmp,1.bmp,7\n"), "label '7' is not 0"),
    "c-nmc non-integer label": (_cnmc(b"Patient_ID,new_names,labels\nUID_h4_9_1_hem.bmp,1.bmp,yes\n"),
                                "is not 0 (hem) or 1"),
    "c-nmc labels file with other columns": (_cnmc(b"id,name,y\nUID_h4_9_1_hem.bmp,1.bmp,0\n"), "needs the columns"),
    "c-nmc labels file in latin-1": (_cnmc("Patient_ID,new_names,labels\nUID_h4_9_1_hem.bmp,1é.bmp,0\n"
                                           .encode("latin-1")), "not UTF-8"),
    "fifo named like an image": (_odd_entry("fifo"), "named pipe"),
    "symlink to a device named like an image": (_odd_entry("device"), "character device behind a symbolic link"),
    "folder named like an image": (_odd_entry("folder"), "is a folder"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_is_one_line_before_any_work(tmp_path, case):
    make, needle = DATA_CASES[case]
    data = make(tmp_path)
    before = _snapshot(tmp_path)
    _one_line_error(("manifest", data, "-o", tmp_path / "out.csv"), needle)
    _one_line_error(("extract", data, "-o", tmp_path / "s.h5", "--weights", "random", "--input-size", "32",
                     "--device", "cpu", "--quiet"), needle)
    assert _snapshot(tmp_path) == before and not (tmp_path / "out.csv").exists() and not (tmp_path / "s.h5").exists()


# ----------------------------------------------------------------------------------------------- stores


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("hostile")
    generate_class_folders(folder / "cells", n_per_class=8, size=40)
    code, lines = _run("extract", folder / "cells", "-o", folder / "s.h5", "--backbones", "resnet18,vgg16", "--weights",
                       "random", "--input-size", "32", "--device", "cpu", "--workers", "0", "--quiet")
    assert code == 0, lines
    return folder / "s.h5"


def _edited(edit: Callable[[h5py.File], None]) -> Callable[[Path, Path], Path]:
    def make(store: Path, folder: Path) -> Path:
        copy = folder / "edited.h5"
        shutil.copyfile(store, copy)
        with h5py.File(copy, "r+") as h5:
            edit(h5)
        return copy
    return make


def _short_pooled(h5: h5py.File) -> None:
    data = h5["features/resnet18/pooled"][:-1]
    del h5["features/resnet18/pooled"]
    h5["features/resnet18"].create_dataset("pooled", data=data)


def _nan_features(h5: h5py.File) -> None:
    h5["features/resnet18/pooled"][3, 0, :5] = np.nan


def _fifo(store: Path, folder: Path) -> Path:
    os.mkfifo(folder / "f.h5")
    return folder / "f.h5"


STORE_CASES = {
    "newer schema": (_edited(lambda h5: h5.attrs.__setitem__("schema_version", 99)), "schema version 99"),
    "external link": (_edited(lambda h5: h5["features/resnet18"].__setitem__(
        "extra", h5py.ExternalLink("/etc/other.h5", "/x"))), "is a link to another place"),
    "negative label": (_edited(lambda h5: h5["samples/label"].__setitem__(0, -1)), "not class indices"),
    "short labels": (_edited(lambda h5: (h5["samples"].__delitem__("label"),
                                         h5["samples"].create_dataset("label", data=np.zeros(3, dtype=np.int64)))),
                     "/samples/label has 3 rows"),
    "fewer pooled rows": (_edited(_short_pooled), "/features/resnet18/pooled has shape"),
    "fifo named like a store": (_fifo, "not a regular file"),
}


@pytest.mark.parametrize("case", list(STORE_CASES))
def test_damaged_or_edited_stores_are_refused_in_one_line(store, tmp_path, case):
    make, needle = STORE_CASES[case]
    bad = make(store, tmp_path)
    _one_line_error(("info", bad), needle)
    _one_line_error(("fit", bad, "--head", "logreg", "--cv", "stratified", "--folds", "2", "-o", tmp_path / "run",
                     "--quiet"), needle)
    assert not (tmp_path / "run").exists()


def test_non_finite_features_are_refused_at_fit_and_train_naming_the_image(store, tmp_path):
    bad = _edited(_nan_features)(store, tmp_path)
    for args in (("fit", bad, "--head", "logreg", "--cv", "stratified", "--folds", "2", "-o", tmp_path / "run",
                  "--quiet"), ("train", bad, "--head", "logreg", "-o", tmp_path / "bundle", "--quiet")):
        _one_line_error(args, "non-finite (NaN or infinite) resnet18 features")
    assert not (tmp_path / "run").exists() and not (tmp_path / "bundle").exists()


# ----------------------------------------------------------------------------------------------- options


def test_option_values_outside_their_range_are_one_line(store, tmp_path):
    fit = ("fit", store, "--cv", "stratified", "--folds", "2", "-o", tmp_path / "run", "--quiet")
    _one_line_error((*fit, "--head", "logreg", "--threads", "100000"), "--threads 100000: give a whole number")
    _one_line_error(("extract", store.parent / "cells", "-o", tmp_path / "x.h5", "--input-size", "60000"),
                    "--input-size")
    _one_line_error((*fit, "--head", "xgboost", "--head-param", "xgboost.n_estimators=0"),
                    "xgboost.n_estimators must be a whole number >= 1")
    _one_line_error((*fit, "--head", "xgboost", "--head-param", "xgboost.subsample=1.5"), "xgboost.subsample")
    _one_line_error((*fit, "--head", "resnet18", "--head-param", "resnet18.lr=abc"),
                    "--head-param resnet18.lr='abc': not a number")
    _one_line_error((*fit, "--head", "resnet18", "--head-param", "resnet18.lr=-1"), "lr must be a finite number")
    _one_line_error((*fit, "--head", "resnet18", "--head-param", "resnet18.dropout=1.5"), "dropout")
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------------------------- read back


@pytest.fixture(scope="module")
def run_folder(store, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "run"
    code, lines = _run("fit", store, "--head", "logreg,attention-spatial", "--cv", "stratified", "--folds", "2",
                       "-o", out, "--quiet", "--device", "cpu", "--head-param", "*.max_epochs=2")
    assert code == 0, lines
    return out


def _edited_run(run: Path, folder: Path, edit: Callable[[Path], None]) -> Path:
    copy = folder / "run"
    shutil.copytree(run, copy)
    edit(copy)
    return copy


def _json_without(key: str) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        data = json.loads((run / "metrics.json").read_text())
        del data[key]
        (run / "metrics.json").write_text(json.dumps(data))
    return edit


def _npz(arrays: Callable[[dict], dict]) -> Callable[[Path], None]:
    def edit(run: Path) -> None:
        with np.load(run / "attention.npz", allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
        np.savez(run / "attention.npz", **arrays(data))
    return edit


RUN_CASES = {
    "metrics.json without provenance": (_json_without("provenance"), "report", "does not have the shape"),
    "metrics.json without classes": (_json_without("classes"), "report", "does not have the shape"),
    "deeply nested metrics.json": (lambda run: (run / "metrics.json").write_text("[" * 100_000 + "]" * 100_000),
                                   "report", "nested too deeply"),
    "attention.npz cut short": (lambda run: (run / "attention.npz").write_bytes(
        (run / "attention.npz").read_bytes()[:200]), "explain", "attention.npz is damaged"),
    "attention.npz without labels": (_npz(lambda d: {k: v for k, v in d.items() if k != "label"}), "explain",
                                     "missing label"),
    "attention.npz with an object array": (_npz(lambda d: {**d, "label": np.array([{}] * len(d["label"]))}),
                                           "explain", "attention.npz is damaged"),
}


@pytest.mark.parametrize("case", list(RUN_CASES))
def test_damaged_run_folders_are_one_line(run_folder, tmp_path, case):
    edit, command, needle = RUN_CASES[case]
    run = _edited_run(run_folder, tmp_path, edit)
    args = ("report", run) if command == "report" else ("explain", run, "-o", tmp_path / "montages")
    _one_line_error(args, needle)
    assert not (tmp_path / "montages").exists()


def _resigned(bundle: Path, folder: Path, edit: Callable[[dict], None]) -> Path:
    from fusionfeat.bundle import SELF_CHECKSUM, manifest_digest

    copy = folder / "bundle"
    shutil.copytree(bundle, copy)
    meta = json.loads((copy / "bundle.json").read_text())
    edit(meta)
    meta[SELF_CHECKSUM] = manifest_digest(meta)  # an editor can re-sign; the parts must still agree
    (copy / "bundle.json").write_text(json.dumps(meta))
    return copy


BUNDLE_CASES = {
    "classes flipped to three": (lambda m: m.__setitem__("classes", ["hem", "all", "other"]),
                                 "not two or more distinct classes"),
    "positive not a class": (lambda m: m.__setitem__("positive", "blast"), "not two or more distinct classes"),
    "a backbone twice": (lambda m: m.__setitem__("head_backbones", ["resnet18", "resnet18"]), "repeats a backbone"),
    "backbones reordered to another width": (lambda m: m["backbones"]["vgg16"].__setitem__("pooled_dim", 7),
                                             "the model reads"),
}


@pytest.mark.parametrize("case", list(BUNDLE_CASES))
def test_a_re_signed_bundle_whose_parts_disagree_is_refused(store, tmp_path, case):
    code, lines = _run("train", store, "--head", "logreg", "-o", tmp_path / "b", "--quiet")
    assert code == 0, lines
    edit, needle = BUNDLE_CASES[case]
    bundle = _resigned(tmp_path / "b", tmp_path, edit)
    _one_line_error(("predict", bundle, store.parent / "cells", "-o", tmp_path / "p.csv", "--device", "cpu"),
                    needle)
    assert not (tmp_path / "p.csv").exists()


def test_one_image_per_class_and_single_class_training_folds(tmp_path):
    write_cells(tmp_path / "one", per_class=1)
    write_cells(tmp_path / "cells", per_class=3)
    code, lines = _run("extract", tmp_path / "one", "-o", tmp_path / "one.h5", "--weights", "random",
                       "--input-size", "32", "--device", "cpu", "--quiet")
    assert code == 0, lines
    code, lines = _run("train", tmp_path / "one.h5", "--head", "attention", "-o", tmp_path / "b", "--quiet")
    assert code == 0 and (tmp_path / "b" / "bundle.json").is_file(), lines  # trains, without early stopping
    rows = ["path,label,fold"] + [f"cells/hem/cell_{i:03d}.png,hem,0" for i in range(3)] + \
           [f"cells/all/cell_{i:03d}.png,all,{1 if i else 0}" for i in range(3)]
    (tmp_path / "p.csv").write_text("\n".join(rows) + "\n")
    code, lines = _run("extract", tmp_path / "p.csv", "-o", tmp_path / "p.h5", "--weights", "random",
                       "--input-size", "32", "--device", "cpu", "--quiet")
    assert code == 0, lines
    _one_line_error(("fit", tmp_path / "p.h5", "--cv", "predefined", "--head", "logreg", "-o", tmp_path / "run",
                     "--quiet"), "fold 0's training side holds class 1 only")


def _process(args: list[str], **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    streams = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.run([sys.executable, "-m", "fusionfeat", *args], text=True, env=env, timeout=300, **streams)


def test_standard_output_on_a_full_device_is_one_line(store):
    with open("/dev/full", "w") as full:
        proc = _process(["info", str(store)], stdout=full)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "cannot write to standard output" in lines[0], proc.stderr


def test_a_deleted_working_folder_is_one_line(store, tmp_path):
    gone = tmp_path / "gone"
    gone.mkdir()
    proc = _process(["info", str(store)], cwd=gone, preexec_fn=lambda: os.rmdir(gone))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and "current folder no longer exists" in lines[0], proc.stderr
