"""Per-fold fine-tuning: no leakage, real learning, resume after a kill, skip/refuse on rerun, fit on the result.

Tiny inputs (18 synthetic cells of 6 subjects, 32 px, random weights, CPU). Torch runs single-threaded here:
on a busy 2-core machine two threads per process are several times slower than one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusionfeat.cli import main
from fusionfeat.data.images import Preprocess
from fusionfeat.data.manifest import build_manifest
from fusionfeat.data.synthetic import generate_class_folders, generate_cnmc_like
from fusionfeat.encoders import load_backbone, read_state_dict
from fusionfeat.engines.extract import ExtractConfig, extract
from fusionfeat.engines.finetune import FinetuneConfig, finetune, inner_split, work_dir
from fusionfeat.engines.train_loop import (
    TrainConfig,
    augment,
    draw_augment,
    epoch_order,
    freeze_stages,
    global_batches,
    lr_factor,
    param_groups,
    parse_augment,
    trunk_stages,
)
from fusionfeat.errors import DatasetError, FusionfeatError, StoreError
from fusionfeat.evaluation.cv import cross_validate
from fusionfeat.store import FeatureStore

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TRAIN = TrainConfig(epochs=3, batch_size=2, lr=3e-3, warmup_epochs=0, augment=())


def make_store(folder: Path, backbones: tuple[str, ...] = ("resnet18",)) -> tuple[Path, Path]:
    """18 synthetic C-NMC-like cells (6 subjects) and a 32 px random-weight store of them."""
    data = generate_cnmc_like(folder / "data", n_subjects_all=3, n_subjects_hem=3, cells_per_subject=3, size=48,
                              n_folds=3)
    store = folder / "s.h5"
    config = ExtractConfig(backbones=list(backbones), weights={b: "random" for b in backbones},
                           preprocess=Preprocess(input_size=32), device="cpu", workers=0, progress=False)
    extract(build_manifest(data), store, config)
    return data, store


def config(**changes) -> FinetuneConfig:
    base = dict(backbones=["resnet18"], weights={"resnet18": "random"}, train=TRAIN, protocol="grouped", n_folds=2,
                device="cpu", precision="fp32", workers=0, progress=False)
    return FinetuneConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """A store with fine-tuned features for both folds of a grouped 2-fold plan."""
    folder = tmp_path_factory.mktemp("tuned")
    data, store = make_store(folder)
    frozen_copy = folder / "frozen.h5"
    shutil.copyfile(store, frozen_copy)
    result = finetune(build_manifest(data), store, config())
    return data, store, frozen_copy, result


def test_fold_checkpoints_never_train_on_their_test_fold(tuned):
    data, store, _, result = tuned
    with FeatureStore.open(store) as fs:
        plan = fs.fold_plan()
        assert (plan.protocol, plan.n_folds, plan.seed) == ("grouped", 2, 0)
        assert fs.finetuned_folds() == [0, 1]
        for k in (0, 1):
            test_paths = set(fs.paths[plan.fold == k])
            test_subjects = set(fs.groups[plan.fold == k])
            ckpt = torch.load(work_dir(store) / f"fold_{k}" / "resnet18" / "best.pt", weights_only=True)
            seen = set(ckpt["train_ids"]) | set(ckpt["val_ids"])
            assert ckpt["fold"] == k and seen and not seen & test_paths
            subject_of = dict(zip(fs.paths, fs.groups, strict=True))
            assert not {subject_of[p] for p in seen} & test_subjects  # grouped: no subject on both sides
            ids = json.loads((work_dir(store) / f"fold_{k}" / "resnet18" / "train_ids.json").read_text())
            assert ids["train"] == ckpt["train_ids"] and ids["val"] == ckpt["val_ids"]
            assert len(seen) == int((plan.fold != k).sum())  # every other-fold image, nothing else
            with h5py.File(store, "r") as h5:
                attrs = dict(h5[f"finetuned/fold_{k}/resnet18"].attrs)
                assert attrs["fold"] == k
                assert attrs["fold_plan_sha256"] == h5["fold_plan"].attrs["sha256"] == plan.sha256
            assert attrs["weights_kind"] == "random" and attrs["finetuned"]
            assert Path(attrs["checkpoint"]).is_file() and len(attrs["checkpoint_sha256"]) == 64


def test_finetuning_changes_features_and_lowers_training_loss(tuned):
    _, store, frozen, result = tuned
    with FeatureStore.open(store) as fs, FeatureStore.open(frozen) as before:
        start = before.pooled("resnet18")
        for k in (0, 1):
            tuned_k = fs.pooled("resnet18", fold=k)
            assert tuned_k.shape == start.shape and fs.tokens("resnet18", fold=k).shape[0] == fs.n_samples
            assert np.abs(tuned_k - start).max() > 1e-3
        np.testing.assert_array_equal(fs.pooled("resnet18"), start)  # frozen features untouched
    for k in (0, 1):
        history = json.loads((work_dir(store) / f"fold_{k}" / "resnet18" / "history.json").read_text())
        losses = [e["train_loss"] for e in history["epochs"]]
        assert len(losses) == 3 and losses[-1] < losses[0]
        assert {"val_loss", "val_acc", "val_bacc", "images_per_s", "lr"} <= set(history["epochs"][0])
    assert [r.status for r in result.reports] == ["trained", "trained"]


def test_checkpoint_is_a_weights_file_that_reproduces_the_stored_features(tuned, tmp_path):
    data, store, _, _ = tuned
    best = work_dir(store) / "fold_1" / "resnet18" / "best.pt"
    state = read_state_dict(best)  # weights_only; unwraps {"state_dict": ...}
    assert "layer4.1.bn2.running_var" in state
    out = tmp_path / "again.h5"
    extract(build_manifest(data), out, ExtractConfig(
        backbones=["resnet18"], weights={"resnet18": str(best)}, preprocess=Preprocess(input_size=32),
        device="cpu", precision="fp32", workers=0, progress=False))
    with FeatureStore.open(out) as again, FeatureStore.open(store) as fs:
        np.testing.assert_allclose(again.pooled("resnet18"), fs.pooled("resnet18", fold=1), rtol=1e-4, atol=1e-5)
    assert load_backbone("resnet18", str(best)).weights_kind == "file"


def test_rerun_skips_finished_folds_and_refuses_other_settings(tuned):
    data, store, _, _ = tuned
    manifest = build_manifest(data)
    before = store.stat().st_mtime_ns
    again = finetune(manifest, store, config(protocol=None, n_folds=None))  # the stored plan is the default
    assert [r.status for r in again.reports] == ["stored", "stored"] and store.stat().st_mtime_ns == before
    with pytest.raises(StoreError, match="other settings.*--overwrite"):
        finetune(manifest, store, config(train=TrainConfig(epochs=4, batch_size=2, lr=3e-3, augment=())))
    with pytest.raises(StoreError, match="another fold plan.*--overwrite"):
        finetune(manifest, store, config(n_folds=3))
    with pytest.raises(FusionfeatError, match="paper"):
        finetune(manifest, store, config(protocol="paper"))


def test_fit_uses_the_stored_plan_and_refuses_any_other(tuned, tmp_path):
    _, store, _, _ = tuned
    with FeatureStore.open(store) as fs:
        result = cross_validate(fs, ["resnet18"], features="finetuned", device="cpu", progress=False)
        assert result.features == "finetuned" and result.protocol["features"] == "finetuned"
        assert result.provenance["fine_tuning_plan"] == {"protocol": "grouped", "n_folds": 2, "seed": 0}
        assert {f.fold for f in result.folds} == {0, 1}
        for wrong in ({"folds": 3}, {"protocol": "stratified"}, {"seed": 1}):
            with pytest.raises(FusionfeatError, match="fine-tuned with"):
                cross_validate(fs, ["resnet18"], features="finetuned", progress=False, **wrong)
    if "fit" in main.commands:
        run = CliRunner().invoke(main, ["fit", str(store), "--features", "finetuned", "--head", "resnet18",
                                        "--folds", "3", "--quiet", "-o", str(tmp_path / "run")])
        assert run.exit_code == 2 and "fine-tuned with" in run.output


def test_data_that_does_not_match_the_store_is_refused(tuned, tmp_path):
    _, store, _, _ = tuned
    other = generate_class_folders(tmp_path / "other", n_per_class=3, size=40)
    with pytest.raises(DatasetError, match="lists 6 images but"):
        finetune(build_manifest(other), store, config())


def test_cli_errors_are_one_line_exit_2(tuned, tmp_path):
    data, store, _, _ = tuned
    runner = CliRunner()
    for args, needle in (
        (["--epochs", "0"], "--epochs must be 1 or more"),
        (["--augment", "flip,blur"], "--augment blur"),
        (["--cv", "paper"], "leaky"),
    ):
        run = runner.invoke(main, ["finetune", str(store), str(data), "--weights", "random", *args])
        errors = [line for line in run.output.splitlines() if line.startswith("fusionfeat: error:")]
        assert run.exit_code == 2 and len(errors) == 1 and needle in errors[0], run.output
    run = runner.invoke(main, ["finetune", str(tmp_path / "none.h5"), str(data), "--weights", "random"])
    assert run.exit_code == 2 and "fusionfeat extract" in run.output


def record_finetune_calls(monkeypatch) -> list[tuple]:
    """Replace the engine by a recorder: which manifest and store the command passes it (nothing is trained)."""
    import fusionfeat.engines.finetune as engine

    calls = []
    monkeypatch.setattr(engine, "finetune", lambda manifest, store, config, ctx: calls.append((manifest, store)))
    return calls


@pytest.mark.parametrize("form", ["STORE DATA", "DATA --store STORE (deprecated)"])
def test_store_then_data_like_every_other_command_and_the_old_form_with_one_warning(tuned, monkeypatch, form):
    data, store, _, _ = tuned
    calls = record_finetune_calls(monkeypatch)
    paths = [str(store), str(data)] if form == "STORE DATA" else [str(data), "--store", str(store)]
    run = CliRunner().invoke(main, ["finetune", *paths, "--weights", "random", "--device", "cpu", "--quiet"])
    assert run.exit_code == 0, run.output
    ((manifest, given_store),) = calls
    assert given_store == str(store)
    assert sorted(s.path for s in manifest.samples) == sorted(s.path for s in build_manifest(data).samples)
    warnings = [line for line in run.stderr.splitlines() if line.startswith("warning:")]
    if form == "STORE DATA":
        assert warnings == []
    else:
        assert len(warnings) == 1 and "deprecated" in warnings[0] and "finetune STORE DATA" in warnings[0]


@pytest.mark.parametrize("args, says", [
    (["{store}", "{data}", "--store", "{store}"], "given twice"),  # both forms
    (["{data}"], "expected STORE and DATA, got 1"),  # neither: DATA alone
    ([], "expected STORE and DATA, got 0"),
    (["{store}", "{data}", "{data}"], "expected STORE and DATA, got 3"),
    (["{data}", "{data}", "--store", "{store}"], "given twice"),
    (["--store", "{store}"], "give DATA only, got 0"),
])
def test_store_given_twice_or_not_at_all_is_one_line_exit_2(tmp_path, args, says):
    data, store = tmp_path / "data", tmp_path / "s.h5"
    data.mkdir()
    argv = ["finetune", *(a.format(store=store, data=data) for a in args), "--weights", "random"]
    run = CliRunner().invoke(main, argv)
    lines = run.stderr.splitlines()
    assert run.exit_code == 2 and len(lines) == 1 and lines[0].startswith("fusionfeat: error:"), run.output
    assert says in lines[0] and "finetune --help" in lines[0], lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing written


def test_killed_mid_fold_resumes_from_the_last_epoch(tmp_path):
    data, store = make_store(tmp_path)
    cmd = [sys.executable, "-m", "fusionfeat", "finetune", str(store), str(data), "--backbones",
           "resnet18", "--weights", "random", "--cv", "grouped", "--folds", "2", "--epochs", "3", "--batch-size",
           "2", "--augment", "none", "--patience", "0", "--device", "cpu", "--precision", "fp32", "--workers", "0",
           "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    last = work_dir(store) / "fold_0" / "resnet18" / "last.pt"
    saved = last.with_name("history.json")  # written after last.pt at the end of each epoch
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not saved.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert saved.is_file() and last.is_file(), proc.stdout.read().decode()
    history = json.loads(saved.read_text())
    done_before = [e["seconds"] for e in history["epochs"]]
    assert 1 <= len(done_before) < 3
    with FeatureStore.open(store) as fs:  # the store is intact and holds no half-written fold
        assert fs.finetuned_folds() == [] and fs.fold_plan() is None

    rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert "fold 0 resnet18: resumed, 3 epoch(s)" in rerun.stdout
    history = json.loads(saved.read_text())
    assert [e["epoch"] for e in history["epochs"]] == [1, 2, 3]
    assert [e["seconds"] for e in history["epochs"]][:len(done_before)] == done_before  # kept, not redone
    assert "fold 1 resnet18: trained" in rerun.stdout
    with FeatureStore.open(store) as fs:
        assert fs.finetuned_folds() == [0, 1]
    assert "model" not in torch.load(last, weights_only=True)  # a finished task keeps best.pt only


# ----------------------------------------------------------------------------------------------- engine units


def test_inner_split_is_subject_grouped_and_stratified():
    rows = np.arange(40)
    labels = np.repeat([0, 1], 20)
    groups = np.array([f"s{i // 4}" for i in range(40)])
    fit, val = inner_split(rows, labels, groups, 0.25, seed=0)
    assert len(fit) + len(val) == 40 and not set(groups[fit]) & set(groups[val])
    assert set(labels[val]) == {0, 1}
    fit, val = inner_split(rows, labels, np.array([""] * 40), 0.25, seed=0)
    assert len(val) == 10 and np.bincount(labels[val]).tolist() == [5, 5]
    assert len(inner_split(rows, labels, groups, 0.0, seed=0)[1]) == 0


def test_schedule_sampling_and_batches():
    assert lr_factor(0, 4, 20) == 0.25 and lr_factor(3, 4, 20) == 1.0 and lr_factor(4, 4, 20) == 1.0
    assert lr_factor(12, 4, 20) == pytest.approx(0.5) and lr_factor(20, 4, 20) == pytest.approx(0.0)
    labels = np.array([0] * 18 + [1] * 2)
    drawn = epoch_order(labels, "sampler", seed=0, epoch=0)
    assert len(drawn) == 20 and 4 <= labels[drawn].sum() <= 16  # minority drawn about half the time
    perm = epoch_order(labels, "weight", seed=0, epoch=1)
    assert sorted(perm) == list(range(20)) and not np.array_equal(perm, epoch_order(labels, "weight", 0, 2))
    for world in (1, 2):
        assert [len(b) for b in global_batches(np.arange(10), 4, world)] == [4, 4]
    assert [len(b) for b in global_batches(np.arange(3), 4, 1)] == [3] and global_batches(np.arange(3), 4, 2) == []


def test_augment_options_and_ops():
    assert parse_augment("none") == ((), 0.1)
    assert parse_augment("flip,rot90,jitter=0.2") == (("flip", "rot90", "jitter"), 0.2)
    with pytest.raises(FusionfeatError):
        parse_augment("flip=2")
    x = torch.rand(6, 3, 8, 8)
    cfg = TrainConfig(augment=("flip", "rot90", "jitter"))
    params = draw_augment(6, cfg, torch.Generator().manual_seed(0))
    out = augment(x.clone(), params)
    assert out.shape == x.shape and 0 <= out.min() and out.max() <= 1
    same = draw_augment(6, cfg, torch.Generator().manual_seed(0))
    assert all(torch.equal(params[k], same[k]) for k in params)
    none = draw_augment(6, TrainConfig(augment=()), torch.Generator().manual_seed(0))
    torch.testing.assert_close(augment(x.clone(), none), x)


def test_freezing_and_differential_learning_rates():
    from fusionfeat.engines.train_loop import FineTuneNet

    for name in ("resnet18", "vgg16"):
        trunk = load_backbone(name, "random").trunk
        assert len(trunk_stages(trunk, name)) == 5
        model = FineTuneNet(trunk, 512, backbone=name)
        frozen = freeze_stages(model, 2)
        assert frozen and all(not p.requires_grad for m in frozen for p in m.parameters())
        groups = param_groups(model, TrainConfig(lr=1e-3, backbone_lr_scale=0.1))
        lrs = sorted({g["lr"] for g in groups})
        assert lrs == [pytest.approx(1e-4), 1e-3]
        trained = {id(p) for g in groups for p in g["params"]}
        assert not trained & {id(p) for m in frozen for p in m.parameters()}
        with pytest.raises(FusionfeatError):
            freeze_stages(model, 6)
