"""Fine-tuning stays fresh and durable: work is keyed to the images' content, damaged checkpoints are recomputed
with a warning, a diverging run ends in one line naming the fold and the learning rate, and a full disk while a
checkpoint is written is one line that keeps everything written before.

Tiny inputs as in tests/test_finetune.py (18 synthetic cells of 6 subjects, 32 px, random weights, CPU).
"""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusionfeat.data.images import Preprocess
from fusionfeat.data.manifest import build_manifest
from fusionfeat.data.synthetic import generate_cnmc_like
from fusionfeat.engines import train_loop
from fusionfeat.engines.extract import ExtractConfig, extract
from fusionfeat.engines.finetune import FinetuneConfig, finetune, work_dir
from fusionfeat.engines.train_loop import TrainConfig
from fusionfeat.errors import DamagedBatchWarning, FusionfeatError, StoreError
from fusionfeat.store import FeatureStore

pytestmark = pytest.mark.usefixtures("single_torch_thread")

TRAIN = TrainConfig(epochs=2, batch_size=2, lr=3e-3, warmup_epochs=0, augment=(), patience=0)


def _extract(data: Path, store: Path, overwrite: bool = False) -> None:
    config = ExtractConfig(backbones=["resnet18"], weights={"resnet18": "random"}, preprocess=Preprocess(input_size=32),
                           device="cpu", workers=0, progress=False, overwrite=overwrite)
    extract(build_manifest(data), store, config)


def _config(**changes) -> FinetuneConfig:
    base = dict(backbones=["resnet18"], weights={"resnet18": "random"}, train=TRAIN, protocol="grouped", n_folds=2,
                device="cpu", precision="fp32", workers=0, progress=False)
    return FinetuneConfig(**{**base, **changes})


def _features(store: Path) -> dict[int, np.ndarray]:
    with FeatureStore.open(store) as fs:
        return {k: fs.pooled("resnet18", fold=k).copy() for k in fs.finetuned_folds()}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """Data, a frozen store, and the same store fine-tuned on both folds (checkpoints left in its work folder)."""
    folder = tmp_path_factory.mktemp("fresh")
    data = generate_cnmc_like(folder / "data", n_subjects_all=3, n_subjects_hem=3, cells_per_subject=3, size=48,
                              n_folds=3)
    store = folder / "s.h5"
    _extract(data, store)
    frozen = folder / "frozen.h5"
    shutil.copyfile(store, frozen)
    finetune(build_manifest(data), store, _config())
    return data, store, frozen, _features(store)


def _copy_run(finished, tmp_path: Path) -> tuple[Path, Path]:
    """A private copy of the finished run: data, a frozen store, and the work folder with its checkpoints."""
    data, store, frozen, _ = finished
    shutil.copytree(data, tmp_path / "data")
    shutil.copyfile(frozen, tmp_path / "s.h5")
    shutil.copytree(work_dir(store), work_dir(tmp_path / "s.h5"))
    return tmp_path / "data", tmp_path / "s.h5"


def test_unchanged_images_reuse_the_finished_checkpoints(finished, tmp_path):
    data, store = _copy_run(finished, tmp_path)
    result = finetune(build_manifest(data), store, _config())
    assert [r.status for r in result.reports] == ["resumed", "resumed"]  # nothing trained again
    for k, expected in finished[3].items():
        np.testing.assert_array_equal(_features(store)[k], expected)


def test_changed_images_in_a_re_extracted_store_start_over(finished, tmp_path):
    """The bug: after an image changed and the store was re-extracted, finetune reused checkpoints trained on the
    old pixels (its key was paths, not content). Now it trains again, and equals a run that never saw the old ones."""
    data, store = _copy_run(finished, tmp_path)
    image = sorted(p for p in data.rglob("*_all.*") if p.is_file())[0]
    pixels = np.asarray(Image.open(image).convert("RGB"))
    Image.fromarray(255 - pixels).save(image)
    _extract(data, store, overwrite=True)
    fresh_data = tmp_path / "fresh" / "data"
    shutil.copytree(data, fresh_data)
    fresh_store = tmp_path / "fresh" / "s.h5"
    _extract(fresh_data, fresh_store)

    with pytest.warns(DamagedBatchWarning, match="other image content"):
        result = finetune(build_manifest(data), store, _config())
    assert [r.status for r in result.reports] == ["trained", "trained"]
    finetune(build_manifest(fresh_data), fresh_store, _config())
    got, fresh = _features(store), _features(fresh_store)
    for k in fresh:
        np.testing.assert_allclose(got[k], fresh[k], rtol=0, atol=1e-5)
    assert any(not np.allclose(got[k], finished[3][k], atol=1e-3) for k in got)  # the old run's numbers are gone


@pytest.mark.parametrize("damaged", ["last.pt", "best.pt", "config.json"])
def test_a_damaged_checkpoint_is_recomputed_with_a_warning(finished, tmp_path, damaged):
    data, store = _copy_run(finished, tmp_path)
    path = work_dir(store) / "fold_0" / "resnet18" / damaged
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])  # cut short, as a kill or full disk would
    with pytest.warns(DamagedBatchWarning, match="damaged"):
        result = finetune(build_manifest(data), store, _config())
    assert {r.fold: r.status for r in result.reports} == {0: "trained", 1: "resumed"}
    for k, expected in finished[3].items():  # retraining from the start gives the same numbers (seeded, CPU)
        np.testing.assert_allclose(_features(store)[k], expected, rtol=0, atol=1e-5)


def test_a_diverging_run_ends_in_one_line_naming_the_fold_and_the_learning_rate(finished, tmp_path):
    data, store = _copy_run(finished, tmp_path)
    shutil.rmtree(work_dir(store))
    diverging = TrainConfig(epochs=2, batch_size=2, lr=1e4, backbone_lr_scale=1.0, warmup_epochs=0, augment=())
    with pytest.raises(FusionfeatError, match=r"fold 0 resnet18: training diverged at epoch \d with --lr 10000"):
        finetune(build_manifest(data), store, _config(train=diverging))
    for bad in (float("inf"), float("nan"), -1.0):
        with pytest.raises(FusionfeatError, match="--lr must be a positive finite number"):
            TrainConfig(lr=bad)


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_and_keeps_earlier_work(finished, tmp_path, monkeypatch):
    data, store = _copy_run(finished, tmp_path)
    shutil.rmtree(work_dir(store))
    real = train_loop.atomic_write_bytes
    calls = []

    def fill_up(path, write):
        calls.append(path.name)
        if len(calls) > 2:  # best.pt and last.pt of the first epoch are written; then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path, write)

    monkeypatch.setattr(train_loop, "atomic_write_bytes", fill_up)
    with pytest.raises(StoreError, match="the disk is full.*kept.*resume"):
        finetune(build_manifest(data), store, _config())
    folder = work_dir(store) / "fold_0" / "resnet18"
    assert train_loop.load_checkpoint(folder / "last.pt", "cpu", train_loop.LAST_KEYS)["epoch"] == 1
    monkeypatch.setattr(train_loop, "atomic_write_bytes", real)
    result = finetune(build_manifest(data), store, _config())  # resumes from epoch 1
    assert {r.fold: r.status for r in result.reports} == {0: "resumed", 1: "trained"}
    with pytest.raises(StoreError, match="holds fine-tuned"):  # nothing else changed: the store is as a full run's
        finetune(build_manifest(data), store, _config(train=TrainConfig(epochs=3, batch_size=2, augment=())))


def test_whole_and_decimal_numbers_are_one_setting():
    """``--warmup-epochs 0`` arrives as 0.0 from the command line and as 0 from Python: one settings hash, so a
    command-line rerun does not refuse folds the Python API stored."""
    assert TrainConfig(warmup_epochs=0, lr=1).as_dict() == TrainConfig(warmup_epochs=0.0, lr=1.0).as_dict()
