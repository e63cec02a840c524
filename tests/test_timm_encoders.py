"""timm encoders without any download: DinoBloom checkpoints in the authors' published layout (built here from
random timm models), DINOv2 entries, any timm model as ``timm:<name>``, token grids of any size, fusion with the
CNNs through extract → fit → train → predict, and one-line errors for bad checkpoints or missing hub files.
Reference values come from timm's own models and loading (an independent computation)."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from torch.nn import functional as F

from fusionfeat.bundle import load_bundle
from fusionfeat.cli import main
from fusionfeat.data.images import IMAGENET_MEAN, IMAGENET_STD, Preprocess, normalize_batch
from fusionfeat.data.manifest import build_manifest
from fusionfeat.encoders import BACKBONES, embed, get_backbone, input_stats, load_backbone, probe
from fusionfeat.encoders.timm_trunks import timm_stages
from fusionfeat.encoders.timm_weights import published_state
from fusionfeat.engines.extract import ExtractConfig, extract
from fusionfeat.engines.finetune import FinetuneConfig, finetune
from fusionfeat.engines.train_loop import TrainConfig
from fusionfeat.errors import FusionfeatError, RandomWeightsWarning, WeightsError, WeightsWarning
from fusionfeat.heads.inputs import feature_matrix
from fusionfeat.store import FeatureStore

pytestmark = pytest.mark.usefixtures("single_torch_thread")

SIZE = 56  # a multiple of 14: a 4 × 4 patch grid for the /14 ViTs
VITS = "vit_small_patch14_dinov2"
QUIET = ["--quiet", "--device", "cpu", "--workers", "0"]


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


def dinobloom_checkpoint(path: Path, seed: int = 7, chunks: int = 4) -> dict[str, torch.Tensor]:
    """A checkpoint laid out as DinoBloom publishes it (DINOv2 training format), from a random timm ViT-S/14 at
    224 px: ``teacher`` → ``backbone.`` keys with blocks chunked ``blocks.<chunk>.<i>.``, a ``mask_token``, and
    ``dino_head``/``ibot_head`` keys; returns the timm model's own state dict."""
    torch.manual_seed(seed)
    model = timm.create_model(VITS, pretrained=False, img_size=224, num_classes=0)
    state = model.state_dict()
    per_chunk = len(model.blocks) // chunks
    teacher = {}
    for key, value in state.items():
        if key.startswith("blocks."):
            i = int(key.split(".")[1])
            key = f"blocks.{i // per_chunk}.{i}.{key.split('.', 2)[2]}"
        teacher[f"backbone.{key}"] = value
    teacher["backbone.mask_token"] = torch.zeros(1, model.embed_dim)
    teacher["dino_head.mlp.0.weight"] = torch.randn(16, model.embed_dim)
    teacher["ibot_head.last_layer.weight_g"] = torch.randn(16, 1)
    torch.save({"teacher": teacher, "iteration": 1000}, path)
    return state


def direct_class_tokens(state: dict[str, torch.Tensor], folder: Path, paths: list[str]) -> np.ndarray:
    """timm's own ViT-S/14 built for SIZE px with the same weights (timm's loader interpolates the position
    embeddings), run on the images preprocessed as the store's; its class token after the final norm."""
    model = timm.create_model(VITS, pretrained=True, img_size=SIZE, num_classes=0,
                              pretrained_cfg_overlay={"state_dict": dict(state)}).eval()
    pre = Preprocess(input_size=SIZE)
    x = torch.cat([pre.load(str(folder / p))[0] for p in paths])
    with torch.inference_mode():
        return model.forward_features(normalize_batch(x, IMAGENET_MEAN, IMAGENET_STD))[:, 0].numpy()


@pytest.fixture(scope="module")
def cells(tmp_path_factory) -> Path:
    from tests.conftest import write_cells

    return write_cells(tmp_path_factory.mktemp("timm") / "cells", per_class=5, size=40)


@pytest.fixture(scope="module")
def fused(cells, tmp_path_factory):
    """resnet18 (random) + dinobloom_s (a published-layout checkpoint) in one store, through the CLI."""
    root = tmp_path_factory.mktemp("fused")
    ckpt = root / "DinoBloom-S.pth"
    state = dinobloom_checkpoint(ckpt)
    store = root / "s.h5"
    result = run("extract", cells, "-o", store, "--backbones", "resnet18,dinobloom_s", "--weights",
                 f"dinobloom_s={ckpt},resnet18=random", "--input-size", SIZE, "--precision", "fp32", *QUIET)
    assert result.exit_code == 0, result.output
    return store, ckpt, state, result.output


def test_published_dinobloom_checkpoint_gives_timms_own_class_token(fused, cells):
    store, ckpt, state, output = fused
    with FeatureStore.open(store) as fs:
        pooled, tokens, paths = fs.pooled("dinobloom_s"), fs.tokens("dinobloom_s"), list(fs.paths)
        attrs = fs.attrs("dinobloom_s")
    np.testing.assert_allclose(pooled, direct_class_tokens(state, cells, paths), rtol=1e-4, atol=1e-4)
    assert tokens.shape == (10, 16, 384) and attrs["token_grid"] == 4 and attrs["weights_kind"] == "file"
    assert attrs["weights_sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert "warning: dinobloom_s: DinoBloom-S.pth is not the published DinoBloom-S.pth" in output


def test_info_shows_the_files_sha256_and_the_class_token_rule(fused):
    store, ckpt, _, _ = fused
    result = run("info", store)
    assert result.exit_code == 0, result.output
    assert f"sha256 {hashlib.sha256(ckpt.read_bytes()).hexdigest()}" in result.output
    assert "pooled   class token after the final norm" in result.output and "token grid 4x4" in result.output
    assert "pooled   global average of the last conv stage; token grid 2x2" in result.output


def test_fit_all_reports_every_head_including_attention_over_both_sources(fused, tmp_path):
    store = fused[0]
    result = run("fit", store, "--head", "all", "-o", tmp_path / "run", "--folds", "2", "--head-param",
                 "*.max_epochs=2", "--quiet", "--device", "cpu")
    assert result.exit_code == 0, result.output
    heads = json.loads((tmp_path / "run" / "metrics.json").read_text())["heads"]
    assert list(heads) == ["dinobloom_s", "resnet18", "concat", "attention-spatial", "svm", "xgboost", "logreg"]
    assert heads["attention-spatial"]["backbones"] == ["dinobloom_s", "resnet18"]
    with np.load(tmp_path / "run" / "attention.npz") as maps:  # the ViT's 4 × 4 grid beside the CNN's 2 × 2
        assert maps["grid/dinobloom_s"].tolist() == [4, 4] and maps["grid/resnet18"].tolist() == [2, 2]
    explained = run("explain", tmp_path / "run", "-o", tmp_path / "ex")
    assert explained.exit_code == 0, explained.output
    assert sorted(p.name for p in (tmp_path / "ex").glob("*.png"))


def test_plain_state_dicts_load_the_same_weights(fused, tmp_path):
    _, ckpt, state, _ = fused
    torch.save(state, tmp_path / "plain.pth")
    with pytest.warns(WeightsWarning, match=r"^dinobloom_s: plain.pth is not the published DinoBloom-S.pth"):
        plain = load_backbone("dinobloom_s", str(tmp_path / "plain.pth")).trunk.state_dict()
    with pytest.warns(WeightsWarning):
        published = load_backbone("dinobloom_s", str(ckpt)).trunk.state_dict()
    assert published.keys() == plain.keys() and all(torch.equal(published[k], plain[k]) for k in plain)


def test_published_layout_is_unwrapped_to_backbone_keys():
    raw = {"teacher": {"backbone.blocks.1.4.norm1.weight": torch.ones(1), "backbone.mask_token": torch.ones(1),
                       "dino_head.mlp.0.weight": torch.ones(1), "ibot_head.x": torch.ones(1)}, "iteration": 3}
    assert set(published_state(raw)) == {"blocks.4.norm1.weight", "mask_token"}
    assert set(published_state({"module.norm.weight": torch.ones(1)})) == {"norm.weight"}


@pytest.mark.parametrize("bad, message", [
    ("garbage", r"cannot read weights file .*: not a torch or safetensors checkpoint"),
    ("other size", r"does not fit dinobloom_b: \d+ shape mismatch\(es\) \(first cls_token \(1, 1, 384\) vs"),
    ("missing key", r"does not fit dinobloom_s: 1 missing key\(s\) \(first norm.weight\)"),
])
def test_corrupted_or_mismatched_checkpoints_are_one_line(fused, cells, tmp_path, bad, message):
    _, ckpt, state, _ = fused
    path, name = tmp_path / "w.pth", "dinobloom_s"
    if bad == "garbage":
        path.write_bytes(b"not a checkpoint" * 4)
    elif bad == "other size":
        path, name = ckpt, "dinobloom_b"
    else:
        torch.save({k: v for k, v in state.items() if k != "norm.weight"}, path)
    result = run("extract", cells, "-o", tmp_path / "s.h5", "--backbones", name, "--weights", f"{name}={path}",
                 "--input-size", SIZE, *QUIET)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1, result.output
    assert result.output.startswith("fusionfeat: error:")
    assert re.search(message, result.output), result.output
    assert not (tmp_path / "s.h5").exists()


def test_dinobloom_has_no_built_in_weights(cells, tmp_path):
    result = run("extract", cells, "-o", tmp_path / "s.h5", "--backbones", "dinobloom_s", *QUIET)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "--weights dinobloom_s=DinoBloom-S.pth" in result.output


def test_vit_input_size_must_be_a_multiple_of_its_patch(cells, tmp_path):
    result = run("extract", cells, "-o", tmp_path / "s.h5", "--backbones", "resnet18,dinov2_vits14",
                 "--weights", "random", "--input-size", "64", *QUIET)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "--input-size 64 does not fit dinov2_vits14" in result.output and "multiple of 14 (e.g. 56 or 70)" in \
        result.output


def test_entries_share_imagenet_statistics_and_probe_like_a_real_forward():
    assert {"dinov2_vits14", "dinov2_vitb14", "dinov2_vitl14", "dinobloom_s", "dinobloom_b", "dinobloom_l",
            "dinobloom_g"} <= set(BACKBONES)
    assert input_stats(["resnet18", "vgg16", "dinobloom_s", "dinov2_vits14"]) == (IMAGENET_MEAN, IMAGENET_STD)
    assert probe("dinobloom_g", 224) == probe("dinobloom_l", 224).__class__(1536, 16)  # meta device: no weights
    assert probe("dinov2_vitb14", 224).dim == 768 and probe("dinobloom_s", 224).grid == 16
    model = load_backbone("dinov2_vits14", "random", seed=1)
    with torch.inference_mode():
        pooled, tokens = embed(model.trunk, torch.randn(2, 3, 70, 70))
    assert pooled.shape == (2, 384) and tokens.shape == (2, probe("dinov2_vits14", 70).n_tokens, 384)


def test_other_normalisations_cannot_share_a_store():
    with pytest.raises(FusionfeatError, match="different input normalisation"):
        input_stats(["resnet18", "timm:vit_base_patch16_clip_224.openai"])


def test_unknown_timm_model_is_one_line(cells, tmp_path):
    result = run("extract", cells, "-o", tmp_path / "s.h5", "--backbones", "timm:no_such_net", *QUIET)
    assert result.exit_code == 2 and "unknown timm model 'no_such_net'" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_register_tokens_are_left_out_and_the_class_token_is_first():
    name = "timm:vit_small_patch14_reg4_dinov2.lvd142m"
    loaded = load_backbone(name, "random", seed=3)
    x = torch.randn(2, 3, SIZE, SIZE)
    with torch.inference_mode():
        pooled, tokens = embed(loaded.trunk, x)
        full = loaded.trunk.model.forward_features(x)  # class, 4 registers, 16 patches, after the final norm
    assert full.shape[1] == 1 + 4 + 16 and tokens.shape == (2, 16, 384)
    np.testing.assert_allclose(pooled.numpy(), full[:, 0].numpy(), rtol=1e-6)
    np.testing.assert_allclose(tokens.float().numpy(), full[:, 5:].numpy(), rtol=2e-3, atol=2e-3)
    assert get_backbone(name).pooling.startswith("class token after the final norm")


def test_timm_cnn_pools_its_final_map_and_has_resolution_stages():
    loaded = load_backbone("timm:resnet18", "random", seed=0)
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        pooled, tokens = embed(loaded.trunk, x)
        reference = loaded.trunk.model.forward_head(loaded.trunk.model.forward_features(x))  # timm's own pooling
    np.testing.assert_allclose(pooled.numpy(), reference.numpy(), rtol=1e-5, atol=1e-6)
    assert tokens.shape == (2, 4, 512)
    stages = timm_stages(loaded.trunk)
    assert len(stages) == 5  # stem, layer1..layer4 (timm's feature_info)
    owned = {id(p) for stage in stages for item in stage
             for p in (item.parameters() if isinstance(item, torch.nn.Module) else [item])}
    assert owned == {id(p) for p in loaded.trunk.parameters()}


def test_hub_weights_come_from_the_local_cache_only(cells, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub
    from safetensors.torch import save_file

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # nor in torch hub's cache
    result = run("extract", cells, "-o", tmp_path / "s.h5", "--backbones", "timm:resnet18", *QUIET)
    assert result.exit_code == 2 and len(result.output.strip().splitlines()) == 1
    assert "models--timm--resnet18.a1_in1k/snapshots/<revision>/model.safetensors" in result.output
    assert "huggingface-cli download timm/resnet18.a1_in1k" in result.output
    torch.manual_seed(5)
    reference = timm.create_model("resnet18", pretrained=False).eval()  # with its 1000-class classifier
    folder = tmp_path / "hf" / "models--timm--resnet18.a1_in1k"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    (folder / "snapshots" / "abc123").mkdir(parents=True)
    save_file(reference.state_dict(), str(folder / "snapshots" / "abc123" / "model.safetensors"))
    loaded = load_backbone("timm:resnet18", "imagenet")
    assert loaded.weights == "hf-hub:timm/resnet18.a1_in1k" and loaded.weights_kind == "imagenet"
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode():
        expected = reference.forward_head(reference.forward_features(x), pre_logits=True)
        np.testing.assert_allclose(embed(loaded.trunk, x)[0].numpy(), expected.numpy(), rtol=1e-5, atol=1e-6)


def test_timm_model_by_name_with_a_token_grid_through_predict(cells, tmp_path):
    """timm:resnet50 (2 × 2 at 56 px) + dinobloom_s (4 × 4 pooled to 2 × 2): store, attention, bundle, predict."""
    store = tmp_path / "g.h5"
    result = run("extract", cells, "-o", store, "--backbones", "timm:resnet50,dinobloom_s", "--weights", "random",
                 "--input-size", SIZE, "--token-grid", "2", "--precision", "fp32", *QUIET)
    assert result.exit_code == 0, result.output
    manifest = build_manifest(cells)
    native = tmp_path / "n.h5"
    with pytest.warns(RandomWeightsWarning):
        extract(manifest, native, ExtractConfig(backbones=["dinobloom_s"], weights={"dinobloom_s": "random"},
                                                preprocess=Preprocess(input_size=SIZE), device="cpu",
                                                precision="fp32", workers=0, progress=False))
    with FeatureStore.open(store) as fs, FeatureStore.open(native) as ns:
        attrs = fs.attrs("dinobloom_s")
        assert attrs["token_grid"] == 2 and attrs["native_token_grid"] == 4 and "token_pooling" in attrs
        assert fs.root_attrs()["settings"]["token_grid"] == 2
        assert fs.tokens("timm:resnet50").shape == (10, 4, 2048) and "token_pooling" not in fs.attrs("timm:resnet50")
        full = torch.from_numpy(ns.tokens("dinobloom_s").astype(np.float32)).reshape(10, 4, 4, 384)
        expected = F.avg_pool2d(full.permute(0, 3, 1, 2), 2).flatten(2).transpose(1, 2).numpy()
        np.testing.assert_allclose(fs.tokens("dinobloom_s").astype(np.float32), expected, rtol=5e-3, atol=5e-3)
        np.testing.assert_array_equal(fs.pooled("dinobloom_s"), ns.pooled("dinobloom_s"))
    trained = run("train", store, "--head", "attention", "-o", tmp_path / "b", "--quiet", "--device", "cpu")
    assert trained.exit_code == 0, trained.output
    predicted = run("predict", tmp_path / "b", cells, "-o", tmp_path / "p.csv", *QUIET)
    assert predicted.exit_code == 0, predicted.output
    bundle = load_bundle(tmp_path / "b")
    column = list(bundle.estimator.classes_).index(bundle.classes.index(bundle.positive))
    with FeatureStore.open(store) as fs:
        X = feature_matrix(fs, bundle.spec, np.arange(fs.n_samples))
        expected = dict(zip(fs.paths, bundle.estimator.predict_proba(X)[:, column], strict=True))
    with open(tmp_path / "p.csv", newline="") as fh:
        got = {str(Path(r["path"]).relative_to(cells)): float(r["p_all"]) for r in csv.DictReader(fh)}
    assert got.keys() == expected.keys()
    np.testing.assert_allclose([got[k] for k in expected], list(expected.values()), atol=2e-3)
    train = TrainConfig(epochs=1, batch_size=2, warmup_epochs=0, augment=(), val_fraction=0, freeze_stages=12)
    with pytest.warns(RandomWeightsWarning):  # fine-tuned token maps are pooled to the store's grid as well
        finetune(manifest, store, FinetuneConfig(backbones=["dinobloom_s"], weights={"dinobloom_s": "random"},
                                                 train=train, protocol="stratified", n_folds=2, device="cpu",
                                                 precision="fp32", workers=0, progress=False))
    with FeatureStore.open(store) as fs:
        assert fs.tokens("dinobloom_s", fold=0).shape == (10, 4, 384)
        assert fs.block_shape("dinobloom_s", "tokens", fold=1) == (4, 384)


def test_finetune_a_dinobloom_entry_from_its_stages(fused, cells):
    store = fused[0]
    manifest = build_manifest(cells)
    train = TrainConfig(epochs=1, batch_size=2, warmup_epochs=0, augment=(), val_fraction=0, freeze_stages=11)
    result = finetune(manifest, store, FinetuneConfig(
        backbones=["dinobloom_s"], weights={"dinobloom_s": str(fused[1])}, train=train, protocol="stratified",
        n_folds=2, device="cpu", precision="fp32", workers=0, progress=False))
    assert [r.status for r in result.reports] == ["trained", "trained"]
    with FeatureStore.open(store) as fs:
        assert fs.finetuned_folds() == [0, 1]
    stages = get_backbone("dinobloom_s").stages(load_backbone("dinobloom_s", "random").trunk)
    assert len(stages) == 13  # patch embedding with its tokens, blocks 1-11, block 12 with the final norm
    with pytest.raises(WeightsError):
        load_backbone("dinobloom_s", "imagenet")
