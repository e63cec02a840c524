"""Extraction end to end: store contents, provenance, resume after SIGKILL, bad input, weights files."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusionfeat.cli import main
from fusionfeat.encoders import load_backbone
from fusionfeat.store import FeatureStore, partial_dir, store_lock
from tests.conftest import HED_WEIGHTS, need, write_cells

FAST = ["--input-size", "32", "--weights", "random", "--quiet", "--workers", "0"]


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_allidb2_store_shapes_labels_and_provenance(allidb2, tmp_path):
    store = tmp_path / "s.h5"
    args = ("extract", allidb2, "-o", store, "--backbones", "resnet18,vgg16", *FAST, "--batch-size", "64")
    refused = run(*args)  # ALL-IDB2 holds one image twice: Im223_0.tif and Im257_0.tif are byte-identical
    assert refused.exit_code == 2 and "img/Im223_0.tif and img/Im257_0.tif are the same image" in refused.output
    assert list(tmp_path.iterdir()) == []  # refused before any batch: nothing to resume, nothing in the way
    result = run(*args, "--dedupe")
    assert result.exit_code == 0, result.output
    assert "260 samples (1 skipped)" in result.output
    with FeatureStore.open(store) as fs:
        assert fs.n_samples == 260 and fs.backbones == ["resnet18", "vgg16"]
        assert fs.errors[list(fs.paths).index("img/Im257_0.tif")] == "duplicate of img/Im223_0.tif"
        assert np.bincount(fs.labels).tolist() == [130, 130]
        for name in ("resnet18", "vgg16"):
            assert fs.pooled(name).shape == (260, 512) and fs.tokens(name).shape == (260, 1, 512)
            assert fs.attrs(name)["weights_kind"] == "random"
        assert fs.sha256[0] == hashlib.sha256((allidb2 / fs.paths[0]).read_bytes()).hexdigest()
    info = run("info", store)
    assert info.exit_code == 0
    assert "hem 129, all 130" in info.output and "RANDOM (seed 0)" in info.output


def test_store_round_trip_matches_a_direct_forward(tiny_folders, tmp_path):
    store = tmp_path / "s.h5"
    assert run("extract", tiny_folders, "-o", store, "--backbones", "resnet18", "--input-size", "64", "--weights",
               "random", "--seed", "3", "--quiet", "--precision", "fp32").exit_code == 0
    with FeatureStore.open(store) as fs:
        pooled, tokens = fs.pooled("resnet18"), fs.tokens("resnet18")
        assert tokens.shape == (8, 4, 512) and tokens.dtype == np.float16
        np.testing.assert_allclose(pooled, tokens.astype(np.float32).mean(1), rtol=0.01, atol=1e-3)
        subset = fs.pooled("resnet18", index=np.array([5, 1, 5]))
        np.testing.assert_array_equal(subset, pooled[[5, 1, 5]])
        from fusionfeat.data.images import Preprocess, normalize_batch

        x, _ = Preprocess(input_size=64).load(str(tiny_folders / fs.paths[2]))
        trunk = load_backbone("resnet18", "random", seed=3).trunk
        with torch.inference_mode():
            direct = trunk(normalize_batch(x, *Preprocess().mean_std())).mean((2, 3)).numpy()[0]
        np.testing.assert_allclose(pooled[2], direct, rtol=1e-4, atol=1e-5)


def test_same_seed_same_features_other_seed_differs(tiny_folders, tmp_path):
    stores = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        stores.append(tmp_path / f"{name}.h5")
        result = run("extract", tiny_folders, "-o", stores[-1], "--backbones", "vgg16", *FAST, "--seed", seed)
        assert result.exit_code == 0
    a, b, c = (FeatureStore.open(s).pooled("vgg16") for s in stores)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_rerun_complete_refuse_other_settings_overwrite(tiny_folders, tmp_path):
    store = tmp_path / "s.h5"
    args = ["extract", tiny_folders, "-o", store, "--backbones", "resnet18", *FAST]
    assert run(*args).exit_code == 0
    again = run(*args)
    assert again.exit_code == 0 and "already complete" in again.output
    other = run(*args, "--seed", "9")
    assert other.exit_code == 2 and "--overwrite" in other.output
    assert run(*args, "--seed", "9", "--overwrite").exit_code == 0
    assert FeatureStore.open(store).attrs("resnet18")["seed"] == 9


def test_second_writer_is_refused(tiny_folders, tmp_path):
    store = tmp_path / "s.h5"
    with store_lock(store):
        result = run("extract", tiny_folders, "-o", store, "--backbones", "resnet18", *FAST)
    assert result.exit_code == 2 and "another fusionfeat process" in result.output


def test_corrupt_image_fail_keeps_work_then_skip_records_it(tiny_folders, tmp_path):
    (tiny_folders / "all" / "zz_broken.png").write_bytes(b"\x89PNG not really")
    store = tmp_path / "s.h5"
    args = ["extract", tiny_folders, "-o", store, "--backbones", "resnet18", *FAST, "--batch-size", "2"]
    failed = run(*args)
    assert failed.exit_code == 2 and "zz_broken.png" in failed.output and "Traceback" not in failed.output
    assert not store.exists() and len(list(partial_dir(store).glob("batch_*.npz"))) >= 1  # work kept
    skipped = run(*args, "--on-error", "skip")
    assert skipped.exit_code == 0, skipped.output
    with FeatureStore.open(store) as fs:
        bad = np.flatnonzero(~fs.ok)
        assert [Path(fs.paths[i]).name for i in bad] == ["zz_broken.png"]
        assert "not an image" in fs.errors[bad[0]]
    assert "zz_broken.png" in run("info", store).output


def _extract_cmd(data: Path, store: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "fusionfeat", "extract", str(data), "-o", str(store), "--backbones",
            "resnet18,vgg16", "--input-size", "32", "--weights", "random", "--quiet", "--workers", "0",
            "--batch-size", "2", "--precision", "fp32", *extra]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The data of the SIGKILL tests and the store an uninterrupted extraction makes of it."""
    root = tmp_path_factory.mktemp("kill")
    data = write_cells(root / "cells", per_class=8, size=48)
    subprocess.run(_extract_cmd(data, root / "clean.h5"), check=True, capture_output=True)
    return data, root / "clean.h5"


@pytest.mark.parametrize("committed, delay", [(1, 0.0), (3, 0.07), (6, 0.02)])
def test_sigkill_then_rerun_equals_uninterrupted_run(uninterrupted, tmp_path, committed, delay):
    """Killed after 1, 3 or 6 of 8 batches (plus a little, so the kill may land mid-commit), then rerun."""
    data, clean = uninterrupted
    killed = tmp_path / "killed.h5"
    proc = subprocess.Popen(_extract_cmd(data, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len(list(partial_dir(killed).glob("batch_*.npz"))) < committed:
        time.sleep(0.01)
    time.sleep(delay)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(list(partial_dir(killed).glob("batch_*.npz")))
    assert committed <= done_before < 8 and not killed.exists(), "the kill should land mid-run"
    assert "UNFINISHED" in run("info", killed).output
    subprocess.run(_extract_cmd(data, killed), check=True, capture_output=True)
    a, b = FeatureStore.open(killed), FeatureStore.open(clean)
    for name in ("resnet18", "vgg16"):
        np.testing.assert_array_equal(a.pooled(name), b.pooled(name))
        np.testing.assert_array_equal(a.tokens(name), b.tokens(name))
    np.testing.assert_array_equal(a.sha256, b.sha256)
    assert not partial_dir(killed).exists()


def test_hed_weights_file_recorded_with_sha256(tiny_folders, tmp_path):
    weights = need(HED_WEIGHTS)
    store = tmp_path / "h.h5"
    result = run("extract", tiny_folders, "-o", store, "--backbones", "vgg16", "--weights", weights,
                 "--input-size", "32", "--quiet", "--workers", "0")
    assert result.exit_code == 0, result.output
    digest = hashlib.sha256(weights.read_bytes()).hexdigest()
    info = run("info", store).output
    assert digest in info and "vgg16_features-hed_bsds500.pth" in info and "RANDOM" not in info


def test_trunk_only_and_full_model_keys_load_the_same(tmp_path):
    full = load_backbone("vgg16", "random", seed=5).trunk.state_dict()  # keys features.*
    torch.save({k.removeprefix("features."): v for k, v in full.items()}, tmp_path / "trunk.pth")
    torch.save({"state_dict": {f"module.{k}": v for k, v in full.items()}}, tmp_path / "wrapped.pth")
    for name in ("trunk.pth", "wrapped.pth"):
        loaded = load_backbone("vgg16", str(tmp_path / name)).trunk.state_dict()
        assert all(torch.equal(loaded[k], full[k]) for k in full)


@pytest.mark.parametrize("content, message", [
    ("resnet", "does not fit vgg16"),
    ("shape", "shape mismatch"),
    ("garbage", "not a torch state dict"),
])
def test_bad_weights_files(tiny_folders, tmp_path, content, message):
    path = tmp_path / "w.pth"
    if content == "resnet":
        torch.save(load_backbone("resnet18", "random").trunk.state_dict(), path)
    elif content == "shape":
        state = load_backbone("vgg16", "random").trunk.state_dict()
        state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
        torch.save(state, path)
    else:
        path.write_bytes(b"not a checkpoint")
    result = run("extract", tiny_folders, "-o", tmp_path / "s.h5", "--backbones", "vgg16", "--weights", path)
    assert result.exit_code == 2 and message in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_imagenet_weights_name_the_file(tiny_folders, tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    result = run("extract", tiny_folders, "-o", tmp_path / "s.h5", "--backbones", "resnet18")
    if result.exit_code == 0:
        pytest.skip("ImageNet weights could be downloaded here")
    assert result.exit_code == 2 and "resnet18-f37072fd.pth" in result.output
    assert str(tmp_path / "torch-home" / "hub" / "checkpoints") in result.output


@pytest.mark.parametrize("case", ["empty", "single", "backbone", "missing", "weights-one-file", "device"])
def test_bad_input_is_one_line_exit_2(tmp_path, tiny_folders, case):
    data = tiny_folders
    extra: list[str] = []
    if case == "empty":
        data = tmp_path / "empty"
        data.mkdir()
    elif case == "single":
        data = tmp_path / "one"
        (data / "all").mkdir(parents=True)
        (tiny_folders / "all" / "cell_000.png").rename(data / "all" / "a.png")
    elif case == "backbone":
        extra = ["--backbones", "alexnet"]
    elif case == "missing":
        data = tmp_path / "nowhere"
    elif case == "weights-one-file":
        extra = ["--weights", str(tmp_path / "w.pth")]
    elif case == "device":
        extra = ["--device", "tpu"]
    result = run("extract", data, "-o", tmp_path / "s.h5", *FAST[:2], *extra)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fusionfeat: error:") or lines[-1].startswith("Error:")
    assert "Traceback" not in result.output


def test_non_image_file_fails_with_its_name(tiny_folders, tmp_path):
    (tiny_folders / "hem" / "notes.bmp").write_text("just text")
    result = run("extract", tiny_folders, "-o", tmp_path / "s.h5", "--backbones", "resnet18", *FAST)
    assert result.exit_code == 2 and "notes.bmp" in result.output


@pytest.mark.parametrize("name", ["resnet18", "vgg16"])
@pytest.mark.parametrize("size", [32, 100, 112, 224])
def test_token_grid_matches_the_trunk(name, size):
    model = load_backbone(name, "random")
    with torch.inference_mode():
        side = model.trunk(torch.zeros(1, 3, size, size)).shape[-1]
    assert model.spec.token_grid(size) == side


def test_extract_loads_and_hashes_each_backbone_once(tiny_folders, tmp_path, monkeypatch):
    """One load per backbone per process (under torchrun every rank runs this same path once)."""
    import fusionfeat.engines.extract as engine
    from fusionfeat.data.images import Preprocess
    from fusionfeat.data.manifest import build_manifest

    loads: list[str] = []
    real = engine.load_backbone
    monkeypatch.setattr(engine, "load_backbone", lambda name, *a, **k: loads.append(name) or real(name, *a, **k))
    config = engine.ExtractConfig(["resnet18", "vgg16"], {"resnet18": "random", "vgg16": "random"},
                                  preprocess=Preprocess(input_size=32), workers=0, progress=False)
    with pytest.warns(UserWarning, match="RANDOM"):
        result = engine.extract(build_manifest(tiny_folders), tmp_path / "s.h5", config)
    assert result is not None and result.n_computed == 8 and sorted(loads) == ["resnet18", "vgg16"]


def test_each_image_is_hashed_once_and_before_any_backbone_loads(tiny_folders, tmp_path, monkeypatch):
    """The SHA-256s read up front are the ones stored: the decoder does not hash the files again."""
    import types

    import fusionfeat.data.content as content
    import fusionfeat.data.images as images
    import fusionfeat.engines.extract as engine
    from fusionfeat.data.images import Preprocess
    from fusionfeat.data.manifest import build_manifest

    events: list[tuple[str, str]] = []
    hash_file, load = content.sha256_file, engine.load_backbone
    monkeypatch.setattr(content, "sha256_file", lambda p: events.append(("hash", Path(p).name)) or hash_file(p))
    monkeypatch.setattr(engine, "load_backbone",
                        lambda name, *a, **k: events.append(("load", name)) or load(name, *a, **k))
    rehashed = types.SimpleNamespace(sha256=lambda *a: events.append(("rehash", "")) or hashlib.sha256(*a))
    monkeypatch.setattr(images, "hashlib", rehashed)
    config = engine.ExtractConfig(["resnet18"], {"resnet18": "random"}, preprocess=Preprocess(input_size=32),
                                  workers=0, progress=False)
    with pytest.warns(UserWarning, match="RANDOM"):
        result = engine.extract(build_manifest(tiny_folders), tmp_path / "s.h5", config)
    assert result is not None and result.n_computed == 8
    kinds = [kind for kind, _ in events]
    assert kinds == ["hash"] * 8 + ["load"], events
    with FeatureStore.open(tmp_path / "s.h5") as fs:
        assert list(fs.sha256) == [hashlib.sha256((tiny_folders / p).read_bytes()).hexdigest() for p in fs.paths]


def test_torchrun_ranks_follow_one_duplicate_decision(tmp_path):
    """Refused on every rank before compute; with --dedupe the rank whose batch holds the copy skips it too,
    so the store equals a single process's."""
    cells = write_cells(tmp_path / "cells", per_class=4, size=32)
    shutil.copyfile(cells / "all" / "cell_000.png", cells / "all" / "cell_001b.png")  # row 2: batch 1, rank 1
    args = ["extract", str(cells), "--backbones", "resnet18", "--weights", "random", "--input-size", "32",
            "--batch-size", "2", "--device", "cpu", "--precision", "fp32", "--workers", "0", "--quiet"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "fusionfeat"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    refused = subprocess.run([*cmd, *args, "-o", str(tmp_path / "d.h5")], env=env, capture_output=True, text=True,
                             timeout=600)
    lines = [line for line in refused.stderr.splitlines() if line.startswith("fusionfeat: error:")]
    assert refused.returncode != 0 and len(lines) == 2, refused.stderr  # one line per rank, the same line
    assert lines[0] == lines[1] and "all/cell_000.png and all/cell_001b.png are the same image" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells"]
    split = subprocess.run([*cmd, *args, "-o", str(tmp_path / "d.h5"), "--dedupe"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert split.returncode == 0, split.stderr
    single = [sys.executable, "-m", "fusionfeat", *args, "-o", str(tmp_path / "single.h5"), "--dedupe"]
    subprocess.run(single, env=env, check=True, capture_output=True, timeout=600)
    with FeatureStore.open(tmp_path / "d.h5") as a, FeatureStore.open(tmp_path / "single.h5") as b:
        row = list(a.paths).index("all/cell_001b.png")
        assert a.errors[row] == "duplicate of all/cell_000.png" and not a.pooled("resnet18")[row].any()
        np.testing.assert_array_equal(a.ok, b.ok)
        np.testing.assert_array_equal(a.pooled("resnet18"), b.pooled("resnet18"))
        np.testing.assert_array_equal(a.tokens("resnet18"), b.tokens("resnet18"))


@pytest.mark.parametrize("threads", [1, 3, 16])
def test_hash_files_keeps_the_order_and_gives_unreadable_files_no_hash(tiny_folders, threads):
    from fusionfeat.data.content import hash_files

    paths = sorted(str(p) for p in tiny_folders.rglob("*.png")) + [str(tiny_folders / "missing.png")]
    expected = [hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths[:-1]] + [""]
    assert hash_files(paths, threads=threads) == expected
    assert hash_files([], threads=threads) == []
