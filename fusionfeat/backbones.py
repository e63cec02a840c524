"""Backbone registry: name → trunk, pooled width, token grid and weights resolution.

A backbone is a torchvision classifier with its classifier removed. Its trunk maps a normalised
``(B, 3, S, S)`` batch to a token map ``(B, C, S/32, S/32)``; the pooled vector is that map's global
average. Adding a backbone is one ``register`` call.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from fusionfeat.errors import FusionfeatError, WeightsError

RANDOM = "random"
IMAGENET = "imagenet"


class ResNetTrunk(nn.Module):
    """A torchvision ResNet up to ``layer4``, returning the spatial map (no pooling, no ``fc``)."""

    def __init__(self, model: torchvision.models.ResNet):
        super().__init__()
        self.conv1, self.bn1, self.relu, self.maxpool = model.conv1, model.bn1, model.relu, model.maxpool
        self.layer1, self.layer2, self.layer3, self.layer4 = model.layer1, model.layer2, model.layer3, model.layer4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class VGG16Features(nn.Module):
    """torchvision's ``vgg16()`` without its classifier: the same ``features.*`` keys and init scheme, built
    without the 100M-weight classifier that would take seconds to initialise and is thrown away anyway."""

    def __init__(self, weights=None):
        super().__init__()
        self.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(module.bias, 0)


class VGGTrunk(nn.Module):
    """A torchvision VGG's ``features`` (13 conv layers and 5 max-pools for vgg16), returning the map."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.features = model.features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


@dataclass(frozen=True)
class BackboneSpec:
    """Everything fusionfeat needs to know about one backbone."""

    name: str
    constructor: Callable[..., nn.Module]  # torchvision builder, called with weights=None
    trunk: Callable[[nn.Module], nn.Module]  # full model → trunk whose state-dict keys match the full model's
    imagenet_weights: torchvision.models.WeightsEnum
    dim: int = 512
    halvings: int = 5  # stride-2 stages between input and token map (total stride 32)
    rounding: str = "floor"  # how each stage rounds an odd side: "floor" (VGG's max-pools), "ceil" (padded convs)
    trunk_prefix: str = ""  # prefix of trunk keys in the full model ("features." for VGG)

    def token_grid(self, input_size: int) -> int:
        """Side of the token map for a square input (7 at 224; at 112, ResNet gives 4 and VGG 3)."""
        side = input_size
        for _ in range(self.halvings):
            side = -(-side // 2) if self.rounding == "ceil" else side // 2
        return max(1, side)

    def n_tokens(self, input_size: int) -> int:
        return self.token_grid(input_size) ** 2


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


register(BackboneSpec("resnet18", torchvision.models.resnet18, ResNetTrunk,
                      torchvision.models.ResNet18_Weights.IMAGENET1K_V1, rounding="ceil"))
register(BackboneSpec("vgg16", VGG16Features, VGGTrunk,
                      torchvision.models.VGG16_Weights.IMAGENET1K_V1, trunk_prefix="features."))


def get_backbone(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise FusionfeatError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}") from None


def parse_backbones(value: str) -> list[str]:
    """``"resnet18,vgg16"`` → validated, de-duplicated list."""
    names = [n.strip().lower() for n in value.split(",") if n.strip()]
    if not names:
        raise FusionfeatError("--backbones is empty; name at least one of " + ", ".join(BACKBONES))
    for name in names:
        get_backbone(name)
    return list(dict.fromkeys(names))


def parse_weights(value: str, backbones: list[str]) -> dict[str, str]:
    """``--weights`` → one choice per backbone: ``imagenet``, ``random`` or a file path.

    Accepts one value for all (``random``), or per backbone (``vgg16=FILE,resnet18=random``);
    backbones not named get ``imagenet``.
    """
    value = value.strip()
    if "=" not in value:
        if value not in (IMAGENET, RANDOM) and len(backbones) > 1:
            raise FusionfeatError(
                f"--weights {value!r} is one file for {len(backbones)} backbones; "
                f"name the backbone it belongs to, e.g. --weights {backbones[-1]}={value},"
                f"{backbones[0]}={RANDOM}"
            )
        return {b: value for b in backbones}
    choice = {b: IMAGENET for b in backbones}
    for part in value.split(","):
        name, sep, item = part.partition("=")
        name = name.strip().lower()
        if not sep or not item.strip():
            raise FusionfeatError(f"--weights part {part!r} should read BACKBONE=imagenet|random|FILE")
        if name not in backbones:
            raise FusionfeatError(f"--weights names {name!r}, which is not among --backbones {','.join(backbones)}")
        choice[name] = item.strip()
    return choice


@dataclass(frozen=True)
class LoadedBackbone:
    """A trunk ready to run, with the provenance of its weights."""

    spec: BackboneSpec
    trunk: nn.Module
    weights: str  # "imagenet:IMAGENET1K_V1", "random", or the file name
    weights_kind: str  # "imagenet" | "file" | "random"
    weights_sha256: str  # "" for random
    weights_path: str
    seed: int

    def provenance(self) -> dict:
        return {
            "backbone": self.spec.name,
            "weights": self.weights,
            "weights_kind": self.weights_kind,
            "weights_sha256": self.weights_sha256,
            "weights_path": self.weights_path,
            "seed": self.seed,
            "pooled_dim": self.spec.dim,
        }


def load_backbone(name: str, weights: str = IMAGENET, seed: int = 0) -> LoadedBackbone:
    """Build a backbone's trunk with ``imagenet``, ``random`` (seeded) or a state-dict file's weights."""
    spec = get_backbone(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.constructor(weights=None)
    if weights == RANDOM:
        return LoadedBackbone(spec, spec.trunk(model).eval(), RANDOM, RANDOM, "", "", seed)
    if weights == IMAGENET:
        path = imagenet_file(spec)
        kind, label = IMAGENET, f"{IMAGENET}:{spec.imagenet_weights.name}"
    else:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file for {name} not found: {path} (or use imagenet / random)")
        kind, label = "file", path.name
    state = read_state_dict(path)
    load_trunk_state(model, spec, state, str(path))
    return LoadedBackbone(spec, spec.trunk(model).eval(), label, kind, sha256_file(path), str(path.resolve()), seed)


def imagenet_cache_path(spec: BackboneSpec) -> Path:
    """Where torch hub keeps (or would keep) a backbone's ImageNet weights file."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(spec.imagenet_weights.url)


def imagenet_file(spec: BackboneSpec) -> Path:
    """The torch hub cache file of the ImageNet weights, downloaded if missing and possible."""
    url = spec.imagenet_weights.url
    target = imagenet_cache_path(spec)
    if target.is_file():
        return target
    try:
        torch.hub.load_state_dict_from_url(url, model_dir=str(target.parent), progress=True, check_hash=True,
                                           map_location="cpu", weights_only=True)
    except Exception as exc:  # no network, proxy, hash mismatch: all mean the same thing to the user
        raise WeightsError(
            f"ImageNet weights for {spec.name} are missing: {target.name} is not at {target} and could not be "
            f"downloaded ({type(exc).__name__}); fetch {url} elsewhere and put it there (or set TORCH_HOME), "
            f"or pass --weights {spec.name}=FILE or --weights random"
        ) from None
    return target


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict safely (``weights_only=True``), unwrapping ``{"state_dict": …}``-style containers."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(f"cannot read weights file {path}: not a torch state dict ({type(exc).__name__})") from None
    for key in ("state_dict", "model", "model_state_dict", "trunk"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_trunk_state(model: nn.Module, spec: BackboneSpec, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load the trunk's weights into a full torchvision model; the classifier's keys are ignored.

    Accepts the full model's keys or the trunk's alone (e.g. ``0.weight`` for VGG's ``features.0.weight``).
    """
    expected = {k: v for k, v in model.state_dict().items() if k.startswith(spec.trunk_prefix)}
    if spec.trunk_prefix == "":
        expected = {k: v for k, v in expected.items() if not k.startswith(("fc.", "classifier."))}
    if spec.trunk_prefix and not any(k.startswith(spec.trunk_prefix) for k in state):
        state = {spec.trunk_prefix + k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(("fc.", "classifier."))}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s) (first {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s) (first {unexpected[0]})")
        if wrong:
            parts.append(f"{len(wrong)} shape mismatch(es) (first {wrong[0]})")
        raise WeightsError(f"weights file {source} does not fit {spec.name}: {'; '.join(parts)}")
    model.load_state_dict(state, strict=False)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
