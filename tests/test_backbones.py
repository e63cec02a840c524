"""The backbone registry: every entry runs extract → finetune → info → fit → train → predict; probes, pooling
and weights are checked against torchvision's own models (an independent computation), and policy warnings come
from the library."""

from __future__ import annotations

import csv
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from click.testing import CliRunner
from torch import nn

import fusionfeat.encoders.registry as bb
import fusionfeat.encoders.trunks as trunks
from fusionfeat.bundle import load_bundle
from fusionfeat.cli import main
from fusionfeat.data.images import Preprocess
from fusionfeat.data.manifest import build_manifest
from fusionfeat.encoders import BACKBONES, WeightsChoice, embed, input_stats, load_backbone, parse_weights, probe
from fusionfeat.engines.extract import ExtractConfig, extract
from fusionfeat.engines.finetune import FinetuneConfig, finetune
from fusionfeat.engines.train_loop import TrainConfig
from fusionfeat.errors import FusionfeatError, PrecisionWarning, RandomWeightsWarning, WeightsError
from fusionfeat.info import describe_store
from fusionfeat.store import FeatureStore

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SIZE = 64
# the torchvision entries; the timm entries (DINOv2, DinoBloom) have their own chain in tests/test_timm_encoders.py
TORCHVISION = [name for name, spec in BACKBONES.items() if spec.source == "torchvision"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_extract_finetune_info_chain(name, tiny_folders, tmp_path):
    """Random weights, 64 px (vit_b_16 through interpolated position embeddings), 8 images, 1 epoch per fold."""
    manifest = build_manifest(tiny_folders)
    store = tmp_path / "s.h5"
    config = ExtractConfig(backbones=[name], weights={name: "random"}, preprocess=Preprocess(input_size=SIZE),
                           device="cpu", precision="fp32", workers=0, progress=False)
    with pytest.warns(RandomWeightsWarning, match=f"{name} uses RANDOM weights"):
        extract(manifest, store, config)
    shape = probe(name, SIZE)
    train = TrainConfig(epochs=1, batch_size=2, warmup_epochs=0, augment=(), val_fraction=0, freeze_stages=1)
    with pytest.warns(RandomWeightsWarning, match="starts? from RANDOM weights"):
        result = finetune(manifest, store, FinetuneConfig(
            backbones=[name], weights={name: "random"}, train=train, protocol="stratified", n_folds=2,
            device="cpu", precision="fp32", workers=0, progress=False))
    assert [r.status for r in result.reports] == ["trained", "trained"]
    with FeatureStore.open(store) as fs:
        pooled, tokens = fs.pooled(name), fs.tokens(name)
        assert pooled.shape == (8, shape.dim) and tokens.shape == (8, shape.n_tokens, shape.dim)
        assert fs.attrs(name)["token_grid"] == shape.grid and fs.attrs(name)["pooled_dim"] == shape.dim
        assert np.isfinite(pooled).all() and np.abs(pooled).sum() > 0
        if name != "vit_b_16":  # a map's pooled vector is the average of its tokens
            np.testing.assert_allclose(pooled, tokens.astype(np.float32).mean(1), rtol=0.02, atol=2e-3)
        assert fs.finetuned_folds() == [0, 1]
    assert f"backbone   {name}: pooled 8×1×{shape.dim}" in describe_store(store)
    fast = ["--quiet", "--device", "cpu", "--head-param", f"{name}.max_epochs=2"]
    fitted = CliRunner().invoke(main, ["fit", str(store), "--head", name, "--features", "finetuned",
                                       "-o", str(tmp_path / "run"), *fast])
    assert fitted.exit_code == 0, fitted.output
    trained = CliRunner().invoke(main, ["train", str(store), "--head", name, "-o", str(tmp_path / "b"), "--quiet",
                                        "--device", "cpu"])
    assert trained.exit_code == 0, trained.output
    predicted = CliRunner().invoke(main, ["predict", str(tmp_path / "b"), str(tiny_folders), "-o",
                                          str(tmp_path / "p.csv"), "--quiet", "--device", "cpu", "--workers", "0"])
    assert predicted.exit_code == 0, predicted.output
    with FeatureStore.open(store) as fs:
        bundle = load_bundle(tmp_path / "b")
        column = list(bundle.estimator.classes_).index(bundle.classes.index(bundle.positive))
        expected = dict(zip(fs.paths, bundle.estimator.predict_proba(fs.pooled(name))[:, column], strict=True))
    with open(tmp_path / "p.csv", newline="") as fh:
        got = {str(Path(r["path"]).relative_to(tiny_folders)): float(r["p_all"]) for r in csv.DictReader(fh)}
    assert set(got) == set(expected)
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), atol=2e-3)


@pytest.mark.parametrize("name", TORCHVISION)
def test_probe_matches_a_real_forward(name):
    model = load_backbone(name, "random", seed=1)
    for size in (SIZE, 96 if name == "vit_b_16" else 100):
        with torch.inference_mode():
            pooled, tokens = embed(model.trunk, torch.randn(2, 3, size, size))
        shape = probe(name, size)
        assert pooled.shape == (2, shape.dim) and tokens.shape == (2, shape.grid**2, shape.dim)


@pytest.mark.parametrize("name, head", [("resnet18", "fc"), ("densenet121", "classifier"),
                                        ("efficientnet_b0", "classifier"), ("mobilenet_v3_large", "classifier"),
                                        ("vit_b_16", "heads")])
def test_pooled_vector_is_what_torchvisions_classifier_reads(name, head):
    torch.manual_seed(0)
    full = torchvision.models.get_model(name, weights=None).eval()
    setattr(full, head, nn.Identity())
    loaded = load_backbone(name, "random", seed=0)
    loaded.trunk.load_state_dict({k: v for k, v in full.state_dict().items() if k in loaded.trunk.state_dict()})
    x = torch.randn(2, 3, 224, 224)
    with torch.inference_mode():
        np.testing.assert_allclose(embed(loaded.trunk, x)[0].numpy(), full(x).numpy(), rtol=1e-4, atol=1e-5)


def test_vit_interpolates_position_embeddings_like_torchvision():
    from torchvision.models.vision_transformer import interpolate_embeddings

    loaded = load_backbone("vit_b_16", "random", seed=2)
    state = {**loaded.trunk.state_dict(), "heads.head.weight": torch.zeros(1000, 768),
             "heads.head.bias": torch.zeros(1000)}
    small = torchvision.models.VisionTransformer(SIZE, 16, 12, 12, 768, 3072).eval()
    small.load_state_dict(interpolate_embeddings(SIZE, 16, state, interpolation_mode="bicubic"))
    small.heads = nn.Identity()
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        np.testing.assert_allclose(embed(loaded.trunk, x)[0].numpy(), small(x).numpy(), rtol=1e-4, atol=1e-4)


def test_vit_refuses_sizes_that_are_not_a_multiple_of_16(tiny_folders, tmp_path):
    with pytest.raises(FusionfeatError, match="multiple of 16"):
        probe("vit_b_16", 100)
    result = CliRunner().invoke(main, ["extract", str(tiny_folders), "-o", str(tmp_path / "s.h5"), "--backbones",
                                       "vit_b_16", "--input-size", "100", "--weights", "random"])
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "multiple of 16" in result.output and not (tmp_path / "s.h5").exists()


def test_resnet_and_vgg_trunks_keep_torchvisions_keys():
    for name, head in (("resnet18", "fc."), ("vgg16", "classifier.")):
        with torch.device("meta"):
            full = torchvision.models.get_model(name, weights=None).state_dict()
        expected = {k for k in full if not k.startswith(head)}
        assert set(load_backbone(name, "random").trunk.state_dict()) == expected


def test_trunk_only_file_loads_for_a_features_backbone(tmp_path):
    trunk = load_backbone("densenet121", "random", seed=4).trunk.state_dict()
    torch.save({k.removeprefix("features."): v for k, v in trunk.items()}, tmp_path / "t.pth")
    loaded = load_backbone("densenet121", str(tmp_path / "t.pth")).trunk.state_dict()
    assert all(torch.equal(loaded[k], trunk[k]) for k in trunk)
    full = {**trunk, "classifier.weight": torch.zeros(2, 1024), "features.extra.weight": torch.zeros(1)}
    torch.save(full, tmp_path / "f.pth")  # a classifier is ignored, a stray trunk key is not
    with pytest.raises(WeightsError, match=r"does not fit densenet121: 1 unexpected key\(s\) \(first features.extra"):
        load_backbone("densenet121", str(tmp_path / "f.pth"))


def test_backbones_with_other_normalisation_cannot_share_a_store(monkeypatch):
    registry = dict(BACKBONES)
    registry["vgg16_features"] = bb.BackboneSpec("vgg16_features", weights_name="IMAGENET1K_FEATURES",
                                                 builder="vgg16", build=trunks.VGG16Features)
    monkeypatch.setattr(bb, "BACKBONES", registry)
    mean, std = input_stats(["resnet18", "vgg16", "densenet121"])
    assert mean == (0.485, 0.456, 0.406) and std == (0.229, 0.224, 0.225)  # torchvision's ImageNet statistics
    with pytest.raises(FusionfeatError, match="different input normalisation"):
        input_stats(["resnet18", "vgg16_features"])


def test_preprocess_round_trips_through_attrs():
    pre = Preprocess(input_size=96, fill=(10, 20, 30), normalize="imagenet", views="dihedral8")
    assert Preprocess.from_attrs(pre.as_attrs()) == pre
    unit = Preprocess(input_size=48, normalize="unit")
    assert Preprocess.from_attrs(unit.as_attrs()).mean_std() == ((0.0,) * 3, (1.0,) * 3)


def test_weights_choice_parse_and_restore(tmp_path):
    assert parse_weights("random", ["resnet18", "vgg16"], seed=4)["vgg16"] == WeightsChoice("random", "", 4)
    parsed = parse_weights(f"vgg16={tmp_path / 'w.pth'}", ["resnet18", "vgg16"])
    assert parsed == {"resnet18": WeightsChoice("imagenet"), "vgg16": WeightsChoice("file", str(tmp_path / "w.pth"))}
    prov = load_backbone("resnet18", "random", seed=7).provenance()
    assert WeightsChoice.from_provenance("resnet18", prov) == WeightsChoice("random", "", 7)
    with pytest.raises(WeightsError, match="does not match"):
        WeightsChoice.from_provenance("resnet18", prov, override="imagenet")
    path = tmp_path / "r.pth"
    torch.save(load_backbone("resnet18", "random", seed=1).trunk.state_dict(), path)
    recorded = load_backbone("resnet18", str(path)).provenance()
    restored = load_backbone("resnet18", WeightsChoice.from_provenance("resnet18", recorded))
    assert restored.weights_sha256 == recorded["weights_sha256"]
    path.unlink()
    with pytest.raises(WeightsError, match="missing"):
        WeightsChoice.from_provenance("resnet18", recorded)


@pytest.mark.parametrize("speedup, auto", [(0.5, "fp32"), (1.1, "fp32"), (2.0, "bf16")])
def test_auto_precision_on_the_cpu_follows_the_measured_bf16_speedup(monkeypatch, speedup, auto):
    from fusionfeat import runtime

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: True)
    monkeypatch.setattr(runtime, "cpu_bf16_speedup", lambda: speedup)
    assert runtime.resolve_precision("auto", torch.device("cpu")) == auto
    if speedup < 1:
        with pytest.warns(PrecisionWarning, match="measured 2.0x slower than fp32"):
            assert runtime.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert runtime.resolve_precision("bf16", torch.device("cpu")) == "bf16"


@pytest.mark.real_cpu_precision
def test_bf16_speedup_is_measured_only_where_bf16_is_native():
    """On this machine's real CPU (any kind): a positive measured ratio where bf16 is native, else 0."""
    from fusionfeat import runtime

    speedup = runtime.cpu_bf16_speedup()
    assert speedup == 0.0 if not runtime.cpu_supports_bf16() else speedup > 0


def test_emulated_bf16_is_a_warning_from_the_library(monkeypatch, tiny_folders, tmp_path):
    from fusionfeat import runtime

    monkeypatch.setattr(runtime, "cpu_supports_bf16", lambda: False)
    with pytest.warns(PrecisionWarning, match="no native bf16"):
        assert runtime.resolve_precision("bf16", torch.device("cpu")) == "bf16"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert runtime.resolve_precision("auto", torch.device("cpu")) == "fp32"
    result = CliRunner().invoke(main, ["extract", str(tiny_folders), "-o", str(tmp_path / "s.h5"), "--backbones",
                                       "resnet18", "--input-size", "32", "--weights", "random", "--quiet",
                                       "--workers", "0", "--precision", "bf16"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("warning: ")]
    assert lines == ["warning: resnet18 uses RANDOM weights (seed 0): features are not ImageNet features",
                     "warning: this CPU has no native bf16 (avx512_bf16/amx); bf16 will be several times slower "
                     "than fp32 here (--precision auto picks fp32)"]
