"""``finetune --classes``: a selection of a store's classes is fine-tuned under its own fold plan and settings
digest, never reuses another selection's checkpoints, and ``fit --features finetuned`` takes only the same
selection.

Tiny inputs (12 synthetic cells of 3 classes, 32 px, random weights, 1 epoch, CPU, one torch thread).
"""

from __future__ import annotations

import json
import re

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fusionfeat.cli import main
from fusionfeat.data.images import Preprocess
from fusionfeat.data.manifest import build_manifest
from fusionfeat.data.synthetic import generate_multiclass_folders
from fusionfeat.engines.extract import ExtractConfig, extract
from fusionfeat.engines.finetune import FinetuneConfig, finetune, work_dir
from fusionfeat.engines.train_loop import TrainConfig
from fusionfeat.errors import FusionfeatError, StoreError
from fusionfeat.evaluation.cv import cross_validate
from fusionfeat.store import FeatureStore, FoldPlan
from fusionfeat.store.schema import classes_spec
from fusionfeat.store.selection import select_classes

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SUBSET = "class_a,class_b"
MERGE = "ab=class_a+class_b,class_c"


def config(**changes) -> FinetuneConfig:
    base = dict(backbones=["resnet18"], weights={"resnet18": "random"},
                train=TrainConfig(epochs=1, batch_size=2, lr=3e-3, warmup_epochs=0, augment=(), val_fraction=0.0),
                protocol="stratified", n_folds=2, device="cpu", precision="fp32", workers=0, progress=False)
    return FinetuneConfig(**{**base, **changes})


@pytest.fixture(scope="module")
def subset(tmp_path_factory):
    """A 3-class store whose backbones were fine-tuned on two of its classes."""
    folder = tmp_path_factory.mktemp("classes")
    data = generate_multiclass_folders(folder / "data", n_classes=3, n_per_class=4, size=48)
    store = folder / "s.h5"
    extract(build_manifest(data), store, ExtractConfig(backbones=["resnet18"], weights={"resnet18": "random"},
                                                        preprocess=Preprocess(input_size=32), device="cpu",
                                                        workers=0, progress=False))
    result = finetune(build_manifest(data), store, config(classes=SUBSET))
    return data, store, result


def fit(fs, **options):
    return cross_validate(fs, ["resnet18"], features="finetuned", device="cpu", progress=False, **options)


def test_a_subset_is_planned_and_trained_on_its_classes_only(subset):
    data, store, result = subset
    assert [r.status for r in result.reports] == ["trained", "trained"]
    with FeatureStore.open(store) as fs:
        plan = fs.fold_plan()
        assert plan.classes == {"class_a": "class_a", "class_b": "class_b", "class_c": None}
        assert plan == result.plan and classes_spec(plan.classes) == SUBSET
        is_c = np.asarray(fs.classes)[fs.labels] == "class_c"
        assert np.all(plan.fold[is_c] == -1) and np.all(plan.fold[~is_c] >= 0)
        assert sorted(np.bincount(plan.fold[~is_c])) == [4, 4]
        c_paths = set(fs.paths[is_c])
        for k in (0, 1):
            task = work_dir(store) / f"fold_{k}" / "resnet18"
            ckpt = torch.load(task / "best.pt", weights_only=True)
            assert ckpt["classes"] == ["class_a", "class_b"]
            assert not set(ckpt["train_ids"]) & c_paths and len(ckpt["train_ids"]) == 4
            settings = json.loads((task / "config.json").read_text())["settings"]
            assert settings["classes"] == plan.classes and settings["fold_plan_sha256"] == plan.sha256
            with h5py.File(store, "r") as h5:
                assert h5[f"finetuned/fold_{k}/resnet18"].attrs["fold_plan_sha256"] == plan.sha256


def test_fit_takes_the_same_selection_however_spelt_and_refuses_any_other(subset, tmp_path):
    data, store, _ = subset
    with FeatureStore.open(store) as opened:
        for spelling in (SUBSET, "CLASS_B,class_a"):
            result = fit(select_classes(opened, spelling))
            assert result.classes == list(select_classes(opened, spelling).classes)
            assert len(result.rows["sample"]) == 8
        for other, says in ((None, "every class of the store"), (MERGE, f"--classes {MERGE}"),
                            ("class_a,class_c", "--classes class_a,class_c")):
            wanted = re.escape(f"fine-tuned on --classes {SUBSET}; this run asks for {says}")
            with pytest.raises(FusionfeatError, match=wanted):
                fit(select_classes(opened, other))
    run = CliRunner().invoke(main, ["fit", str(store), "--features", "finetuned", "--head", "resnet18", "--classes",
                                    "class_a,class_c", "--quiet", "-o", str(tmp_path / "run")])
    errors = [line for line in run.output.splitlines() if line.startswith("fusionfeat: error:")]
    assert run.exit_code == 2 and len(errors) == 1 and "fine-tuned on --classes" in errors[0], run.output
    assert not (tmp_path / "run").exists()


def test_another_selection_is_refused_then_trained_afresh_with_overwrite(subset, tmp_path):
    data, store0, first = subset
    store = tmp_path / "s.h5"
    store.write_bytes(store0.read_bytes())
    manifest = build_manifest(data)
    again = finetune(manifest, store, config(classes="class_b,class_a", protocol=None, n_folds=None))
    assert [r.status for r in again.reports] == ["stored", "stored"]  # same selection, other spelling
    wanted = f"another fold plan .*--classes {SUBSET}.*--classes {re.escape(MERGE)}.*--overwrite"
    with pytest.raises(StoreError, match=wanted):
        finetune(manifest, store, config(classes=MERGE))
    with pytest.raises(StoreError, match="another fold plan .*--classes .*this run asks for --cv stratified"):
        finetune(manifest, store, config())  # every class: not the subset's checkpoints either
    merged = finetune(manifest, store, config(classes=MERGE, overwrite=True))
    assert [r.status for r in merged.reports] == ["trained", "trained"]
    with FeatureStore.open(store) as opened:
        plan = opened.fold_plan()
        assert plan.classes == {"class_a": "ab", "class_b": "ab", "class_c": "class_c"}
        assert np.all(plan.fold >= 0) and plan.sha256 != first.plan.sha256
        result = fit(select_classes(opened, MERGE))
        assert result.classes == ["ab", "class_c"] and len(result.rows["sample"]) == 12
        with pytest.raises(FusionfeatError, match="fine-tuned on --classes"):
            fit(select_classes(opened, SUBSET))
    ckpt = torch.load(work_dir(store) / "fold_0" / "resnet18" / "best.pt", weights_only=True)
    assert ckpt["classes"] == ["ab", "class_c"]


def test_a_selection_without_plan_options_keeps_the_stored_plans_protocol_folds_and_seed(subset, tmp_path):
    data, store0, _ = subset
    store = tmp_path / "s.h5"
    store.write_bytes(store0.read_bytes())
    merged = finetune(build_manifest(data), store, config(classes=MERGE, protocol=None, n_folds=None,
                                                          overwrite=True))
    assert (merged.plan.protocol, merged.plan.n_folds, merged.plan.seed) == ("stratified", 2, 0)


def test_unknown_class_is_one_line_exit_2(subset):
    data, store, _ = subset
    run = CliRunner().invoke(main, ["finetune", str(store), str(data), "--weights", "random", "--classes",
                                    "class_a,basophil", "--quiet"])
    errors = [line for line in run.output.splitlines() if line.startswith("fusionfeat: error:")]
    assert run.exit_code == 2 and len(errors) == 1 and "'basophil' is not a class" in errors[0], run.output


def test_the_plan_records_its_selection_and_keeps_the_old_identity_without_one(tmp_path):
    fold = np.array([0, 1, -1, 0])
    plain = FoldPlan("grouped", 2, 3, fold)
    mapping = {"a": "x", "b": "x", "c": None}
    chosen = FoldPlan("grouped", 2, 3, fold, mapping)
    assert plain.to_attrs() == {"protocol": "grouped", "n_folds": 2, "seed": 3, "sha256": plain.sha256}
    assert chosen.sha256 != plain.sha256 and chosen != plain
    assert chosen.describe() == "--cv grouped --folds 2 --seed 3 --classes x=a+b"
    with h5py.File(tmp_path / "p.h5", "w") as h5:
        from fusionfeat.store import write_fold_plan
        write_fold_plan(h5, chosen)
    with h5py.File(tmp_path / "p.h5", "r") as h5:
        from fusionfeat.store import decode_attr
        back = FoldPlan.from_attrs({k: decode_attr(v) for k, v in h5["fold_plan"].attrs.items()},
                                   h5["fold_plan/fold"][:])
    assert back == chosen and back.classes == mapping and back.sha256 == chosen.sha256
