"""Bad input on the input side (manifest, extract, info, fit, train, predict, finetune): one line, exit 2,
nothing touched; plus content identity, float images, checksummed partial batches, ``info --verify`` and a
lock that dies with its process."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

import fusionfeat.engines.extract as extract_module
from fusionfeat.cli import main
from fusionfeat.data.images import read_rgb
from fusionfeat.data.manifest import build_manifest, detect_layout
from fusionfeat.errors import StoreError
from fusionfeat.progress import STAMPED
from fusionfeat.protocols import LeakageError, check_split
from fusionfeat.store import FeatureStore, PartialStore, partial_dir, store_lock, verify_checksums
from tests.conftest import REPO, write_cells

pytestmark = pytest.mark.usefixtures("single_torch_thread")

FAST = ["--backbones", "resnet18", "--weights", "random", "--input-size", "32", "--quiet", "--workers", "0"]


def run(*args) -> object:
    return CliRunner().invoke(main, [os.fsdecode(a) if isinstance(a, (bytes, Path)) else str(a) for a in args])


def snapshot(folder: Path) -> dict[bytes, str]:
    """SHA-256 of every file under ``folder`` (names as bytes, so non-UTF-8 names are kept)."""
    found = {}
    for dirpath, _, files in os.walk(os.fsencode(folder)):
        for name in files:
            path = os.path.join(dirpath, name)
            if os.path.islink(path):
                found[path] = "link:" + os.fsdecode(os.readlink(path))
                continue
            with open(path, "rb") as fh:
                found[path] = hashlib.sha256(fh.read()).hexdigest()
    return found


def flip_byte(path: Path, dataset: str, at: int = 7, chunk: int = 0) -> None:
    """Flip one byte inside a stored chunk of ``dataset`` (found through HDF5's own chunk index)."""
    with h5py.File(path, "r") as h5:
        info = h5[dataset].id.get_chunk_info(chunk)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + min(at, info.size - 1))
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))


def smash_chunk(path: Path, dataset: str) -> None:
    """Overwrite the middle of a compressed chunk so that it cannot be inflated."""
    with h5py.File(path, "r") as h5:
        info = h5[dataset].id.get_chunk_info(0)
    with open(path, "r+b") as fh:
        fh.seek(info.byte_offset + 2)
        fh.write(b"\x00\xff" * max(1, (info.size - 4) // 2))


@pytest.fixture(scope="module")
def made(tmp_path_factory) -> dict[str, Path]:
    """One tiny image folder and one finished two-backbone store, made once for the module."""
    base = tmp_path_factory.mktemp("made")
    cells = write_cells(base / "cells", size=32)
    store = base / "s.h5"
    result = run("extract", cells, "-o", store, *FAST[:1], "resnet18,vgg16", *FAST[2:])
    assert result.exit_code == 0, result.output
    return {"cells": cells, "store": store}


# --- the table --------------------------------------------------------------------------------------------


def _csv(ws: Path, text: str, encoding: str = "utf-8") -> Path:
    path = ws / "cells" / "m.csv"
    path.write_bytes(text.encode(encoding))
    return path


def _non_utf8_name(ws: Path) -> list:
    shutil.copyfile(ws / "cells" / "all" / "cell_000.png", os.path.join(os.fsencode(ws / "cells" / "all"),
                                                                       b"caf\xe9.png"))
    return ["manifest", ws / "cells", "-o", ws / "out.csv"]


def _symlink_loop(ws: Path) -> list:
    os.symlink("loop.png", ws / "cells" / "hem" / "loop.png")
    return ["manifest", ws / "cells", "-o", ws / "out.csv"]


def _duplicate_content(ws: Path) -> list:
    shutil.copyfile(ws / "cells" / "all" / "cell_000.png", ws / "cells" / "all" / "copy_of_000.png")
    return ["extract", ws / "cells", "-o", ws / "d.h5", *FAST]


def _damaged_settings(ws: Path) -> list:
    folder = partial_dir(ws / "p.h5")
    folder.mkdir()
    (folder / "settings.json").write_text('{"n_samples": 8, "batch')
    return ["extract", ws / "cells", "-o", ws / "p.h5", *FAST]


def _flipped(ws: Path) -> list:
    flip_byte(ws / "s.h5", "features/resnet18/pooled")
    return ["info", ws / "s.h5", "--verify"]


def _smashed_verify(ws: Path) -> list:
    smash_chunk(ws / "s.h5", "features/vgg16/tokens")
    return ["info", ws / "s.h5", "--verify"]


def _smashed_fit(ws: Path) -> list:
    smash_chunk(ws / "s.h5", "features/resnet18/tokens")
    return ["fit", ws / "s.h5", "--head", "attention", "--folds", "2", "-o", ws / "run", "--quiet", "--threads", "1"]


def _bundle(ws: Path) -> Path:
    folder = ws / "bundle"
    folder.mkdir()
    (folder / "bundle.json").write_text("{}")
    return folder


@dataclass(frozen=True)
class Case:
    id: str
    make: Callable[[Path], list]
    says: str  # a fragment the one error line must contain


CASES = [
    Case("manifest-missing-folder", lambda ws: ["manifest", ws / "nope", "-o", ws / "o.csv"], "no such file"),
    Case("manifest-csv-latin1", lambda ws: ["manifest", _csv(ws, "path,label\nall/caf\xe9.png,all\n", "latin-1"),
                                            "-o", ws / "o.csv"], "not UTF-8"),
    Case("manifest-csv-two-spellings", lambda ws: ["manifest", _csv(
        ws, "path,label\nall/cell_000.png,all\nhem/../all/cell_000.png,all\nhem/cell_000.png,hem\n"),
        "-o", ws / "o.csv"], "names one file twice"),
    Case("manifest-csv-blank-path", lambda ws: ["manifest", _csv(ws, "path,label\n,all\nhem/cell_000.png,hem\n"),
                                                "-o", ws / "o.csv"], ":2: the path is blank"),
    Case("manifest-csv-no-label-column", lambda ws: ["manifest", _csv(ws, "path,klass\nall/cell_000.png,all\n"),
                                                     "-o", ws / "o.csv"], "needs the columns"),
    Case("manifest-symlink-loop", _symlink_loop, "loop.png"),
    Case("manifest-non-utf8-name", _non_utf8_name, "not valid UTF-8"),
    Case("extract-batch-size-0", lambda ws: ["extract", ws / "cells", "-o", ws / "x.h5", *FAST, "--batch-size", "0"],
         "--batch-size"),
    Case("extract-workers-negative", lambda ws: ["extract", ws / "cells", "-o", ws / "x.h5", *FAST[:-2],
                                                 "--workers", "-1"], "--workers"),
    Case("extract-device-cuda", lambda ws: ["extract", ws / "cells", "-o", ws / "x.h5", *FAST, "--device",
                                            "cuda:99"], "--device"),
    Case("extract-input-size-8", lambda ws: ["extract", ws / "cells", "-o", ws / "x.h5", *FAST, "--input-size", "8"],
         "--input-size"),
    Case("extract-seed-negative", lambda ws: ["extract", ws / "cells", "-o", ws / "x.h5", *FAST, "--seed", "-1"],
         "--seed"),
    Case("extract-fill-300", lambda ws: ["extract", ws / "cells", "-o", ws / "x.h5", *FAST, "--fill", "300"],
         "--fill"),
    Case("extract-duplicate-content", _duplicate_content, "are the same image"),
    Case("extract-damaged-settings", _damaged_settings, "--overwrite"),
    Case("extract-over-other-store", lambda ws: ["extract", ws / "cells", "-o", ws / "s.h5", *FAST, "--seed", "5"],
         "--overwrite"),
    Case("info-missing-store", lambda ws: ["info", ws / "none.h5"], "no feature store"),
    Case("info-not-hdf5", lambda ws: ["info", ws / "cells" / "all" / "cell_000.png"], "not an HDF5"),
    Case("info-verify-flipped-byte", _flipped, "MISMATCH"),
    Case("info-verify-unreadable-chunk", _smashed_verify, "UNREADABLE"),
    Case("fit-unreadable-chunk", _smashed_fit, "features/resnet18/tokens"),
    Case("fit-device-cuda", lambda ws: ["fit", ws / "s.h5", "--head", "logreg", "--device", "cuda:99"], "--device"),
    Case("fit-folds-1", lambda ws: ["fit", ws / "s.h5", "--head", "logreg", "--folds", "1"], "--folds"),
    Case("fit-repeats-0", lambda ws: ["fit", ws / "s.h5", "--head", "logreg", "--repeats", "0"], "--repeats"),
    Case("fit-svm-max-exact-rows-inf", lambda ws: ["fit", ws / "s.h5", "--head", "svm", "--folds", "2", "-o",
                                                   ws / "run", "--quiet", "--head-param", "svm.max_exact_rows=inf"],
         "max_exact_rows"),
    Case("train-device-cuda", lambda ws: ["train", ws / "s.h5", "--head", "logreg", "-o", ws / "b", "--device",
                                          "cuda:99"], "--device"),
    Case("train-seed-negative", lambda ws: ["train", ws / "s.h5", "--head", "logreg", "-o", ws / "b", "--seed", "-2"],
         "--seed"),
    Case("predict-batch-size-0", lambda ws: ["predict", _bundle(ws), ws / "cells", "-o", ws / "p.csv",
                                             "--batch-size", "0"], "--batch-size"),
    Case("predict-workers-negative", lambda ws: ["predict", _bundle(ws), ws / "cells", "-o", ws / "p.csv",
                                                 "--workers", "-1"], "--workers"),
    Case("predict-non-utf8-name", lambda ws: ["predict", _bundle(ws), _non_utf8_name(ws)[1], "-o", ws / "p.csv"],
         "not valid UTF-8"),
    Case("predict-device-cuda", lambda ws: ["predict", _bundle(ws), ws / "cells", "-o", ws / "p.csv",
                                            "--device", "cuda:99"], "--device"),
    Case("finetune-batch-size-0", lambda ws: ["finetune", ws / "cells", "--store", ws / "s.h5", "--batch-size", "0"],
         "--batch-size"),
    Case("finetune-epochs-0", lambda ws: ["finetune", ws / "cells", "--store", ws / "s.h5", "--epochs", "0"],
         "--epochs"),
    Case("finetune-device-cuda", lambda ws: ["finetune", ws / "cells", "--store", ws / "s.h5", "--device",
                                             "cuda:99"], "--device"),
    Case("finetune-workers-negative", lambda ws: ["finetune", ws / "cells", "--store", ws / "s.h5", "--workers",
                                                  "-1"], "--workers"),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_exit_2_and_touches_nothing(case, made, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    shutil.copytree(made["cells"], ws / "cells")
    shutil.copyfile(made["store"], ws / "s.h5")
    args = case.make(ws)
    before = snapshot(ws)
    result = run(*args)
    lines = result.stderr.splitlines()
    # warnings, and the timestamped log lines of stages that ended before the error, are not the error
    error_lines = [line for line in lines if not line.startswith("warning: ") and not STAMPED.match(line)]
    assert result.exit_code == 2, result.output
    assert len(error_lines) == 1 and error_lines[0].startswith("fusionfeat: error:"), result.stderr
    assert case.says in error_lines[0], error_lines[0]
    assert "Traceback" not in result.output
    after = snapshot(ws)
    assert {p: h for p, h in after.items() if p in before} == before, "a pre-existing file changed"
    assert set(before) <= set(after), "a pre-existing file was deleted"


# --- focused tests ------------------------------------------------------------------------------------------


def test_duplicate_content_is_refused_before_any_model_loads_and_leaves_nothing(tmp_path, monkeypatch):
    cells = write_cells(tmp_path / "cells", size=32)
    shutil.copyfile(cells / "hem" / "cell_001.png", cells / "hem" / "zz_same_as_001.png")

    def no_model(*args, **kwargs):
        raise AssertionError("a backbone was loaded before the duplicate check")

    monkeypatch.setattr(extract_module, "load_backbone", no_model)
    monkeypatch.setattr(extract_module, "iter_embeddings", no_model)
    refused = run("extract", cells, "-o", tmp_path / "s.h5", *FAST)
    assert refused.exit_code == 2, refused.output
    errors = [line for line in refused.stderr.splitlines() if line.startswith("fusionfeat: error:")]
    assert len(errors) == 1 and "Traceback" not in refused.output
    assert "hem/cell_001.png and hem/zz_same_as_001.png are the same image" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells"]  # no store, partial folder or lock file


def test_dedupe_never_reads_the_copy_and_the_store_equals_one_of_the_deduplicated_folder(tmp_path):
    clean = write_cells(tmp_path / "clean", size=32)
    cells = Path(shutil.copytree(clean, tmp_path / "cells"))
    shutil.copyfile(cells / "hem" / "cell_001.png", cells / "hem" / "zz_same_as_001.png")
    one_batch = [*FAST, "--batch-size", "64", "--precision", "fp32"]  # the same images in the same forward pass
    assert run("extract", clean, "-o", tmp_path / "clean.h5", *one_batch).exit_code == 0
    kept = run("extract", cells, "-o", tmp_path / "s.h5", *one_batch, "--dedupe")
    assert kept.exit_code == 0, kept.output
    assert "(1 skipped)" in kept.output
    with FeatureStore.open(tmp_path / "s.h5") as fs, FeatureStore.open(tmp_path / "clean.h5") as ref:
        row = list(fs.paths).index("hem/zz_same_as_001.png")
        assert not fs.ok[row] and fs.errors[row] == "duplicate of hem/cell_001.png"
        assert fs.sha256[row] == hashlib.sha256((cells / "hem" / "cell_001.png").read_bytes()).hexdigest()
        assert not fs.pooled("resnet18")[row].any() and not fs.tokens("resnet18")[row].any()  # never computed
        keep = np.flatnonzero(fs.ok)
        assert len(keep) == ref.n_samples == fs.n_samples - 1 and ref.ok.all()
        assert list(np.asarray(fs.paths)[keep]) == list(ref.paths)
        np.testing.assert_array_equal(np.asarray(fs.labels)[keep], ref.labels)
        np.testing.assert_array_equal(np.asarray(fs.sha256)[keep], ref.sha256)
        np.testing.assert_array_equal(fs.pooled("resnet18")[keep], ref.pooled("resnet18"))
        np.testing.assert_array_equal(fs.tokens("resnet18")[keep], ref.tokens("resnet18"))


def test_empty_files_are_reported_as_empty_not_as_duplicates_of_each_other(tmp_path):
    cells = write_cells(tmp_path / "cells", size=32)
    (cells / "hem" / "zz_empty_a.png").write_bytes(b"")
    (cells / "all" / "zz_empty_b.png").write_bytes(b"")  # equal bytes under two labels, but no image at all
    result = run("extract", cells, "-o", tmp_path / "s.h5", *FAST, "--on-error", "skip")
    assert result.exit_code == 0, result.output
    with FeatureStore.open(tmp_path / "s.h5") as fs:
        errors = {p: e for p, e, ok in zip(fs.paths, fs.errors, fs.ok, strict=True) if not ok}
    assert errors == {"hem/zz_empty_a.png": "the file is empty (0 bytes)",
                      "all/zz_empty_b.png": "the file is empty (0 bytes)"}


def test_the_same_image_under_two_labels_is_refused_even_with_dedupe(tmp_path):
    cells = write_cells(tmp_path / "cells", size=32)
    shutil.copyfile(cells / "hem" / "cell_001.png", cells / "all" / "zz_same_as_hem_001.png")
    store = tmp_path / "s.h5"
    refused = run("extract", cells, "-o", store, *FAST, "--dedupe")
    assert refused.exit_code == 2 and "listed with different labels" in refused.stderr, refused.output
    errors = [line for line in refused.stderr.splitlines() if line.startswith("fusionfeat: error:")]
    assert len(errors) == 1 and "Traceback" not in refused.stderr and not store.exists()


def test_leakage_check_compares_content_not_only_rows():
    groups = np.array(["", "", "", ""])
    same = "ab" * 32
    sha = np.array([same, "cd" * 32, same, "ef" * 32])  # rows 0 and 2 are one image under two names
    with pytest.raises(LeakageError, match="same SHA-256 abababababab"):
        check_split(np.array([0, 1]), np.array([2, 3]), groups, by_subject=False, sha256=sha)
    check_split(np.array([0, 2]), np.array([1, 3]), groups, by_subject=False, sha256=sha)
    check_split(np.array([0, 1]), np.array([2, 3]), groups, by_subject=False)  # rows alone cannot see it
    unreadable = np.array(["", "cd" * 32, "", "ef" * 32])  # files that could not be read have no hash
    check_split(np.array([0, 1]), np.array([2, 3]), groups, by_subject=False, sha256=unreadable)


@pytest.mark.parametrize("values, grey", [
    (0.5, round(0.5 * 255)),       # [0, 1] floats: x 255
    (1.0, 255),
    (0.2, round(0.2 * 255)),
    (100.0, 100),                  # 8-bit values stored as floats: as they are
])
def test_float_tiff_scales_by_its_range(tmp_path, values, grey):
    array = np.full((8, 8), values, np.float32)
    array[0, 0] = 0.0
    path = tmp_path / "f.tif"
    Image.fromarray(array, mode="F").save(path)
    image, _ = read_rgb(str(path))
    pixels = np.asarray(image)
    assert pixels.shape == (8, 8, 3) and pixels[4, 4].tolist() == [grey] * 3 and pixels[0, 0].tolist() == [0, 0, 0]


def test_float_tiff_beyond_255_scales_by_its_maximum(tmp_path):
    array = np.array([[0.0, 500.0], [1000.0, 250.0]], np.float32)
    path = tmp_path / "f.tif"
    Image.fromarray(array, mode="F").save(path)
    pixels = np.asarray(read_rgb(str(path))[0])[..., 0]
    assert pixels.tolist() == [[0, 128], [255, 64]]  # x / 1000 * 255, rounded half up


def test_sixteen_bit_unchanged(tmp_path):
    path = tmp_path / "g.png"
    Image.fromarray(np.full((4, 4), 65535 // 2, np.uint16)).save(path)
    assert np.asarray(read_rgb(str(path))[0])[0, 0, 0] == round(32767 / 65535 * 255)


def test_layout_detection_ignores_lock_temp_and_os_files(tmp_path):
    img = tmp_path / "idb" / "img"
    img.mkdir(parents=True)
    for name in ("Im001_1.tif", "Im002_0.tif", "Im003_1.tif", "Im004_0.tif"):
        Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(img / name)
    for litter in ("Thumbs.db", ".DS_Store", "out.h5.lock", ".out.h5.123.tmp"):
        (img / litter).write_bytes(b"x")
    assert detect_layout(tmp_path / "idb") == "allidb"
    assert len(build_manifest(tmp_path / "idb")) == 4


def test_csv_blank_labels_are_left_out_with_a_note(tmp_path):
    cells = write_cells(tmp_path / "cells", per_class=2, size=32)
    (cells / "m.csv").write_text("path,label\nall/cell_000.png,all\nall/cell_001.png,\nhem/cell_000.png,hem\n"
                                 "hem/cell_001.png, \n")
    m = build_manifest(cells / "m.csv")
    assert [s.path for s in m.samples] == ["all/cell_000.png", "hem/cell_000.png"]
    assert m.notes == [f"2 row(s) of {cells / 'm.csv'} with a blank label left out (first: line 3, "
                       "all/cell_001.png)"]


def _interrupted(cells: Path, store: Path, monkeypatch) -> None:
    """Compute every batch, then stop before assembly (as a kill at that moment would)."""
    def stop(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(extract_module, "assemble", stop)
        result = run("extract", cells, "-o", store, *FAST, "--batch-size", "2")
    assert result.exit_code == 130


def _arrays(store: Path) -> dict[str, np.ndarray]:
    with h5py.File(store, "r") as h5:
        out = {}
        h5.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out


def test_damaged_partial_batches_are_recomputed_and_the_store_equals_an_uninterrupted_run(tmp_path, monkeypatch):
    cells = write_cells(tmp_path / "cells", size=32)
    reference = tmp_path / "ref.h5"
    assert run("extract", cells, "-o", reference, *FAST, "--batch-size", "2").exit_code == 0
    store = tmp_path / "s.h5"
    _interrupted(cells, store, monkeypatch)
    partial = PartialStore(partial_dir(store))
    assert partial.done() == {0, 1, 2, 3}
    truncated = partial.batch_path(0)
    truncated.write_bytes(truncated.read_bytes()[:-100])
    os.replace(partial.batch_path(1), partial.folder / "batch_000009.npz")  # renamed away
    os.replace(partial.batch_path(3), partial.batch_path(2))  # batch 3's file under batch 2's name
    assert partial.done() == set()
    info = run("info", store)
    assert info.exit_code == 0 and "0/4 batches committed and intact" in info.output
    assert "batch_000000.npz: size" in info.output and "batch_000002.npz: " in info.output
    result = run("extract", cells, "-o", store, *FAST, "--batch-size", "2")
    assert result.exit_code == 0, result.output
    assert "batch_000000.npz is damaged" in result.stderr and "batch_000009.npz is damaged" in result.stderr
    got, want = _arrays(store), _arrays(reference)
    assert got.keys() == want.keys()
    for name in want:
        assert np.array_equal(got[name], want[name]), name
    with h5py.File(store, "r") as h5, h5py.File(reference, "r") as ref:
        assert h5["features/resnet18/pooled"].attrs["sha256"] == ref["features/resnet18/pooled"].attrs["sha256"]


def test_info_says_a_damaged_settings_file_cannot_be_resumed(tmp_path, monkeypatch):
    cells = write_cells(tmp_path / "cells", size=32)
    store = tmp_path / "s.h5"
    _interrupted(cells, store, monkeypatch)
    (partial_dir(store) / "settings.json").write_bytes(b"\xff\xfe not json")
    info = run("info", store)
    assert info.exit_code == 0 and "NOT RESUMABLE" in info.output and "--overwrite" in info.output
    rerun = run("extract", cells, "-o", store, *FAST, "--batch-size", "2")
    assert rerun.exit_code == 2 and "cannot be resumed" in rerun.stderr
    assert run("extract", cells, "-o", store, *FAST, "--batch-size", "2", "--overwrite").exit_code == 0


def test_a_batch_damaged_after_the_check_is_never_assembled(tmp_path, monkeypatch):
    cells = write_cells(tmp_path / "cells", size=32)
    store = tmp_path / "s.h5"
    _interrupted(cells, store, monkeypatch)
    partial = PartialStore(partial_dir(store))
    path = partial.batch_path(1)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="batch_000001.npz is damaged"):
        partial.read(1)


def test_checksums_are_the_sha256_of_the_array_bytes_and_verify_reports_them(made, tmp_path):
    store = tmp_path / "s.h5"
    shutil.copyfile(made["store"], store)
    with h5py.File(store, "r") as h5:
        pooled = h5["features/resnet18/pooled"]
        assert pooled.attrs["sha256"] == hashlib.sha256(np.ascontiguousarray(pooled[()]).tobytes()).hexdigest()
    assert dict(verify_checksums(store)) == {f"/features/{b}/{k}": "OK" for b in ("resnet18", "vgg16")
                                             for k in ("pooled", "tokens")}
    ok = run("info", store, "--verify")
    assert ok.exit_code == 0 and "verify     /features/vgg16/tokens: OK" in ok.output
    flip_byte(store, "features/vgg16/pooled")
    assert dict(verify_checksums(store))["/features/vgg16/pooled"] == "MISMATCH"
    assert dict(verify_checksums(store))["/features/resnet18/pooled"] == "OK"


def test_unreadable_chunk_is_a_store_error_naming_the_dataset(made, tmp_path):
    store = tmp_path / "s.h5"
    shutil.copyfile(made["store"], store)
    smash_chunk(store, "features/resnet18/tokens")
    with FeatureStore.open(store) as fs, pytest.raises(StoreError, match="cannot read /features/resnet18/tokens"):
        fs.tokens("resnet18")


LINGER = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    from fusionfeat.store import store_lock

    with store_lock(Path(sys.argv[1])):
        child = os.fork()  # like a DataLoader worker: it inherits the descriptors, then outlives its parent
        if child == 0:
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 1)
            os.dup2(null, 2)  # let the test read the parent's output without waiting for this one
            time.sleep(60)
            os._exit(0)
        print(child, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
""")


def test_lock_dies_with_the_main_process_even_when_a_forked_worker_lingers(tmp_path):
    store = tmp_path / "s.h5"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", LINGER, str(store)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    child = int(proc.stdout.split()[0])
    try:
        os.kill(child, 0)  # the worker is still alive ...
        with store_lock(store):  # ... and the lock is free at once
            pass
    finally:
        os.kill(child, signal.SIGKILL)


def test_disk_full_is_one_line_and_keeps_committed_batches(tmp_path):
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("needs root to mount a tiny tmpfs")
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        cells = write_cells(tmp_path / "cells", per_class=16, size=32)
        result = run("extract", cells, "-o", small / "s.h5", *FAST, "--input-size", "64", "--batch-size", "4")
        assert result.exit_code == 2, result.output
        line = [x for x in result.stderr.splitlines() if not x.startswith("warning: ")]
        assert len(line) == 1 and "No space left on device" in line[0] and "are kept" in line[0], result.stderr
        assert not [p for p in small.rglob("*") if p.name.endswith((".tmp", ".assemble"))]
    finally:
        for _ in range(20):
            if subprocess.run(["umount", str(small)], capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
