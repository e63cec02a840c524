"""K > 2 classes at the data layer: manifests of any label set in a stable order, the K-class synthetic cells,
and the store's class list (`positive` is "" for more than two classes)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusionfeat.data import synthetic
from fusionfeat.data.manifest import build_manifest, write_manifest
from fusionfeat.errors import DatasetError, FusionfeatError
from fusionfeat.store import FeatureStore
from fusionfeat.store.schema import create_store_file


@pytest.mark.parametrize("k", [3, 4, 5])
def test_class_folders_of_k_classes_in_sorted_order(tmp_path, k):
    names = ["Neutrophil", "eosinophil", "Basophil", "lymphocyte", "Monocyte"][:k]
    counts = [4, 3, 5, 2, 6][:k]
    synthetic.generate_multiclass_folders(tmp_path, n_classes=k, n_per_class=counts, size=16, names=names)
    m = build_manifest(tmp_path)
    assert list(m.classes) == sorted(n.lower() for n in names)  # lower-cased and sorted by name
    assert m.counts() == {n.lower(): c for n, c in zip(names, counts, strict=True)}
    assert m.positive_class == ""
    for s in m.samples:  # every label names the folder the image came from
        assert Path(s.path).parts[0].lower() == m.classes[s.label]


def test_positive_is_refused_for_more_than_two_classes_and_kept_for_two(tmp_path):
    synthetic.generate_multiclass_folders(tmp_path / "k3", n_classes=3, n_per_class=2, size=16)
    with pytest.raises(DatasetError, match="--positive 'class_b' applies to two classes only.*has 3"):
        build_manifest(tmp_path / "k3", positive="class_b")
    synthetic.generate_class_folders(tmp_path / "k2", n_per_class=2, size=16)
    assert build_manifest(tmp_path / "k2").classes == ("hem", "all")  # binary: [negative, positive], as before
    assert build_manifest(tmp_path / "k2", positive="hem").classes == ("all", "hem")


def test_a_csv_of_four_named_classes_round_trips(tmp_path):
    synthetic.generate_multiclass_folders(tmp_path, n_classes=4, n_per_class=[3, 1, 2, 2], size=16)
    m = build_manifest(tmp_path)
    again = build_manifest(write_manifest(m, tmp_path / "m.csv"))
    assert again.layout == "csv" and again.classes == m.classes
    assert [s.label for s in again.samples] == [s.label for s in m.samples]
    assert again.counts() == {"class_a": 3, "class_b": 1, "class_c": 2, "class_d": 2}  # a one-image class is kept


def test_folders_differing_only_in_case_are_refused(tmp_path):
    for name in ("Monocyte", "monocyte", "other", "third"):
        (tmp_path / name).mkdir()
        Image.new("RGB", (4, 4)).save(tmp_path / name / "a.png")
    with pytest.raises(DatasetError, match="differ only in case"):
        build_manifest(tmp_path)


def test_multiclass_morphologies_span_the_binary_looks():
    two = synthetic.multiclass_morphologies(2)
    assert two == [synthetic._MORPHOLOGY[0], synthetic._MORPHOLOGY[1]]
    five = synthetic.multiclass_morphologies(5)
    radii = [m.cell_radius[0] for m in five]
    assert radii == sorted(radii) and radii[0] == pytest.approx(0.43) and radii[-1] == pytest.approx(0.5)
    with pytest.raises(FusionfeatError, match="n_classes must be 2 or more"):
        synthetic.multiclass_morphologies(1)


def test_multiclass_cells_are_deterministic_and_differ_by_class(tmp_path):
    a = synthetic.generate_multiclass_folders(tmp_path / "a", n_classes=3, n_per_class=6, size=48, seed=3)
    b = synthetic.generate_multiclass_folders(tmp_path / "b", n_classes=3, n_per_class=6, size=48, seed=3)
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert len(files) == 18
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    # the cell (non-black) area grows from the first class to the last, as the cell radius does
    area = {name: np.mean([(np.asarray(Image.open(p)).sum(axis=2) > 0).mean() for p in (a / name).glob("*.png")])
            for name in ("class_a", "class_b", "class_c")}
    assert area["class_a"] < area["class_b"] < area["class_c"]
    with pytest.raises(FusionfeatError, match="one count or 3 counts"):
        synthetic.generate_multiclass_folders(tmp_path / "c", n_classes=3, n_per_class=[1, 2])


def _store(path: Path, classes: list[str], positive: str) -> Path:
    n = len(classes)
    samples = {"path": np.array([f"{c}/x.png" for c in classes]), "label": np.arange(n, dtype=np.int64),
               "group": np.array([""] * n), "fold": np.full(n, -1, dtype=np.int64),
               "sha256": np.array([f"{i:064x}" for i in range(n)]), "ok": np.ones(n, dtype=bool),
               "error": np.array([""] * n)}
    h5 = create_store_file(path, samples, classes, {"complete": True})
    h5["samples"].attrs["positive"] = positive
    h5.create_group("features")
    h5.close()
    return path


def test_the_reader_takes_k_classes_with_no_positive_and_refuses_a_broken_class_record(tmp_path):
    with FeatureStore.open(_store(tmp_path / "k4.h5", ["a", "b", "c", "d"], "")) as fs:
        assert fs.classes == ["a", "b", "c", "d"] and fs.positive_class is None
    with pytest.raises(FusionfeatError, match="not what fusionfeat writes"):
        FeatureStore.open(_store(tmp_path / "bad.h5", ["a", "b", "c"], "b"))  # K > 2 has no positive class


def test_finetune_trains_a_k_class_head_per_fold(tmp_path):
    """Fine-tuning a 3-class store: each fold's network ends in 3 logits, and its features are stored."""
    import torch

    from fusionfeat.data.images import Preprocess
    from fusionfeat.engines.extract import ExtractConfig, extract
    from fusionfeat.engines.finetune import FinetuneConfig, finetune, work_dir
    from fusionfeat.engines.train_loop import TrainConfig

    data = synthetic.generate_multiclass_folders(tmp_path / "data", n_classes=3, n_per_class=4, size=48)
    store = tmp_path / "s.h5"
    extract(build_manifest(data), store, ExtractConfig(backbones=["resnet18"], weights={"resnet18": "random"},
                                                       preprocess=Preprocess(input_size=32), device="cpu",
                                                       workers=0, progress=False))
    train = TrainConfig(epochs=1, batch_size=4, lr=1e-3, warmup_epochs=0, augment=())
    finetune(build_manifest(data), store, FinetuneConfig(backbones=["resnet18"], weights={"resnet18": "random"},
                                                         train=train, protocol="stratified", n_folds=2,
                                                         device="cpu", precision="fp32", workers=0, progress=False))
    with FeatureStore.open(store) as fs:
        assert fs.finetuned_folds() == [0, 1] and fs.pooled("resnet18", fold=0).shape[0] == 12
        for k in (0, 1):
            ckpt = torch.load(work_dir(store) / f"fold_{k}" / "resnet18" / "best.pt", weights_only=True)
            assert ckpt["classes"] == ["class_a", "class_b", "class_c"]
            head = [v for k, v in ckpt["head"].items() if k.endswith("weight")]
            assert head[-1].shape[0] == 3  # 3 logits: cross-entropy over the K classes
            assert {fs.labels[list(fs.paths).index(p)] for p in ckpt["train_ids"] + ckpt["val_ids"]} == {0, 1, 2}
