"""torchrun with 2 CPU processes (gloo): split extraction and DDP fine-tuning equal a single process's result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from fusionfeat.data.images import Preprocess
from fusionfeat.data.manifest import build_manifest
from fusionfeat.data.synthetic import generate_cnmc_like
from fusionfeat.engines.distributed import SINGLE, DistContext
from fusionfeat.engines.extract import ExtractConfig, extract
from fusionfeat.engines.finetune import FinetuneConfig, finetune, work_dir
from fusionfeat.engines.train_loop import TrainConfig
from fusionfeat.errors import FusionfeatError

pytestmark = pytest.mark.usefixtures("single_torch_thread")

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return generate_cnmc_like(tmp_path_factory.mktemp("dist") / "data", n_subjects_all=3, n_subjects_hem=3,
                              cells_per_subject=3, size=48, n_folds=3)


def torchrun(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "fusionfeat", *args]
    run = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    return run


def extract_config(backbones: list[str], **changes) -> ExtractConfig:
    return ExtractConfig(backbones=backbones, weights={b: "random" for b in backbones},
                         preprocess=Preprocess(input_size=32), device="cpu", precision="fp32", workers=0,
                         progress=False, **changes)


def arrays(path: Path, prefix: str) -> dict[str, np.ndarray]:
    out = {}
    with h5py.File(path, "r") as h5:
        h5[prefix].visititems(lambda name, obj: out.update({name: obj[()]}) if isinstance(obj, h5py.Dataset)
                              else None)
    return out


def test_torchrun_extract_equals_a_single_process_store(data, tmp_path):
    single, split = tmp_path / "single.h5", tmp_path / "split.h5"
    extract(build_manifest(data), single, extract_config(["resnet18", "vgg16"], batch_size=4))
    run = torchrun("extract", str(data), "-o", str(split), "--backbones", "resnet18,vgg16", "--weights", "random",
                   "--input-size", "32", "--batch-size", "4", "--device", "cpu", "--precision", "fp32",
                   "--workers", "0", "--quiet")
    assert run.stdout.count("18 samples (0 skipped), 18 computed") == 1  # rank 0 reports for all ranks
    assert not split.with_name(split.name + ".partial").exists()
    for group in ("samples", "features"):
        ours, theirs = arrays(single, group), arrays(split, group)
        assert ours.keys() == theirs.keys()
        for name in ours:  # identical computation per batch: equal to the bit on this machine
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=name)
    rerun = torchrun("extract", str(data), "-o", str(split), "--backbones", "resnet18,vgg16", "--weights", "random",
                     "--input-size", "32", "--batch-size", "4", "--device", "cpu", "--precision", "fp32",
                     "--workers", "0", "--quiet")
    assert "already complete" in rerun.stdout


def test_torchrun_finetune_equals_a_single_process_run(data, tmp_path):
    """VGG16 (no batch norm) with DDP over 2 processes follows the single-process run to float32 rounding."""
    single, split = tmp_path / "single.h5", tmp_path / "split.h5"
    extract(build_manifest(data), single, extract_config(["vgg16"]))
    split.write_bytes(single.read_bytes())
    train = TrainConfig(epochs=2, batch_size=4, lr=1e-3, warmup_epochs=0.5, head_dropout=0.0)
    config = FinetuneConfig(backbones=["vgg16"], weights={"vgg16": "random"}, train=train, protocol="grouped",
                            n_folds=2, device="cpu", precision="fp32", workers=0, progress=False)
    finetune(build_manifest(data), single, config)
    run = torchrun("finetune", str(data), "--store", str(split), "--backbones", "vgg16", "--weights", "random",
                   "--cv", "grouped", "--folds", "2", "--epochs", "2", "--batch-size", "4", "--lr", "1e-3",
                   "--warmup-epochs", "0.5", "--head-dropout", "0", "--device", "cpu", "--precision", "fp32",
                   "--workers", "0", "--quiet")
    assert run.stdout.count("fold 0 vgg16: trained") == 1
    ours, theirs = arrays(single, "finetuned"), arrays(split, "finetuned")
    assert sorted(ours) == sorted(theirs) == [f"fold_{k}/vgg16/{a}" for k in (0, 1) for a in ("pooled", "tokens")]
    for name in ours:
        tol = {"atol": 2e-3, "rtol": 1e-2} if name.endswith("tokens") else {"atol": 1e-5, "rtol": 1e-4}
        np.testing.assert_allclose(ours[name].astype(np.float32), theirs[name].astype(np.float32), err_msg=name,
                                   **tol)
    np.testing.assert_array_equal(arrays(single, "fold_plan")["fold"], arrays(split, "fold_plan")["fold"])
    for k in (0, 1):
        a = torch.load(work_dir(single) / f"fold_{k}" / "vgg16" / "best.pt", weights_only=True)
        b = torch.load(work_dir(split) / f"fold_{k}" / "vgg16" / "best.pt", weights_only=True)
        assert (a["epoch"], a["train_ids"], a["val_ids"]) == (b["epoch"], b["train_ids"], b["val_ids"])


def test_single_process_context_is_a_no_op():
    assert SINGLE.is_main and not SINGLE.active and SINGLE.world == 1
    SINGLE.barrier()
    assert SINGLE.broadcast({"a": 1}) == {"a": 1} and SINGLE.all_sum([1.0, 2.0]) == [1.0, 2.0]
    assert SINGLE.run_on_main(lambda: 3) == 3
    with pytest.raises(FusionfeatError, match="bad"):
        DistContext().run_on_main(lambda: (_ for _ in ()).throw(FusionfeatError("bad")))
    assert SINGLE.device("cpu").type == "cpu"
