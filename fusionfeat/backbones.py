"""Backbone registry: the one place that knows a backbone. Adding one is one ``register(BackboneSpec(...))`` entry.

An entry names a torchvision builder and a member of its weights enum (torchvision's ``get_model_weights``);
everything else is derived, never declared by hand:

* input statistics: the weights' own ``transforms()`` mean and std;
* the trunk: the classifier without its head, behind one contract. ``trunk(x)`` maps a normalised
  ``(B, 3, S, S)`` batch to a spatial map ``(B, C, h, w)`` (CNNs) or to a token sequence ``(B, 1 + T, C)``
  whose first token is the class token (vision transformers); ``embed(trunk, x)`` turns either into
  ``(pooled (B, C), tokens (B, T, C))``. Trunk state-dict keys are the full torchvision model's keys;
* pooled width and token grid: probed with one forward pass at the requested input size (``probe``,
  on the meta device when the architecture allows it, cached per name and size);
* stages for ``--freeze-stages``: the entry's ``stages`` (default: the ``features`` children, a new stage
  wherever the resolution drops).

What the pooled vector is: for CNNs the global average of the trunk's last map (for DenseNet after its
final ReLU, for ConvNeXt before the classifier's LayerNorm); for ``vit_b_16`` the class token after the
encoder's final LayerNorm, i.e. exactly what torchvision's classification head reads, and its tokens are the
patch tokens after that LayerNorm, a ``(S/16)²`` grid. ViT position embeddings are learned for 224 px
(14 × 14 patches); another input size that is a multiple of 16 interpolates them bicubically over the patch
grid (as torchvision's ``interpolate_embeddings``), any other size is refused.
"""

from __future__ import annotations

import copy
import functools
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torchvision.models import get_model_builder, get_model_weights

from fusionfeat.errors import FusionfeatError, WeightsError
from fusionfeat.fsio import sha256_file

RANDOM = "random"
IMAGENET = "imagenet"
FILE = "file"

Stage = list[nn.Module | nn.Parameter]


# ----------------------------------------------------------------------------------------------- trunk adapters


class ChildrenTrunk(nn.Module):
    """The named children of a torchvision model, run in order (same state-dict keys), then ``tail``."""

    def __init__(self, model: nn.Module, names: tuple[str, ...], tail: nn.Module | None = None):
        super().__init__()
        for name in names:
            self.add_module(name, getattr(model, name))
        self.order = names
        self.tail = tail  # parameter-free (e.g. DenseNet's final ReLU): adds no state-dict keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self.order:
            x = self._modules[name](x)
        return x if self.tail is None else self.tail(x)


def children_trunk(*names: str, tail: Callable[[], nn.Module] | None = None) -> Callable[[nn.Module], nn.Module]:
    """Trunk adapter keeping the named children (default: ``features``) of a torchvision model."""
    return lambda model: ChildrenTrunk(model, names or ("features",), tail() if tail else None)


class ViTTrunk(nn.Module):
    """A torchvision VisionTransformer without its head: ``(B, 1 + T, C)``, class token first, after the final
    LayerNorm. Position embeddings are interpolated (bicubic over the patch grid) for other input sizes."""

    def __init__(self, model: torchvision.models.VisionTransformer):
        super().__init__()
        self.conv_proj, self.encoder, self.class_token = model.conv_proj, model.encoder, model.class_token
        self.patch_size = model.patch_size

    def position_embedding(self, grid_h: int, grid_w: int) -> torch.Tensor:
        pos = self.encoder.pos_embedding  # (1, 1 + g*g, C) for the native g × g patch grid
        side = math.isqrt(pos.shape[1] - 1)
        if (grid_h, grid_w) == (side, side):
            return pos
        patches = pos[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patches = F.interpolate(patches, size=(grid_h, grid_w), mode="bicubic", align_corners=True)
        return torch.cat([pos[:, :1], patches.flatten(2).transpose(1, 2)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p = self.patch_size
        if h % p or w % p:
            raise FusionfeatError(f"--input-size {h} does not fit a vision transformer with {p}-pixel patches; "
                                  f"use a multiple of {p} (224 is its native size)")
        x = self.conv_proj(x).flatten(2).transpose(1, 2)  # (B, T, C), patches row by row
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = x + self.position_embedding(h // p, w // p)
        return self.encoder.ln(self.encoder.layers(self.encoder.dropout(x)))


def embed(trunk: nn.Module, x: torch.Tensor, tokens: bool = True,
          chunk: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run a trunk: ``(pooled (B, C) float32, tokens (B, T, C) float16 or None)``.

    A map's pooled vector is its global average and its tokens the positions row by row; a sequence's pooled
    vector is its first (class) token and its tokens the rest. ``chunk`` runs the trunk that many rows at a time.
    """
    out = trunk(x) if chunk is None else torch.cat([trunk(part) for part in x.split(chunk)])
    if out.dim() == 4:
        pooled = out.float().mean(dim=(2, 3))
        seq = out.flatten(2).transpose(1, 2) if tokens else None
    else:
        pooled = out[:, 0].float()
        seq = out[:, 1:] if tokens else None
    return pooled, None if seq is None else seq.to(torch.float16)


# ----------------------------------------------------------------------------------------------- stages


def named_stages(*groups: tuple[str, ...]) -> Callable[[nn.Module], list[Stage]]:
    """Stages given as groups of the trunk's attribute names (ResNet: stem, layer1…layer4)."""
    return lambda trunk: [[getattr(trunk, name) for name in group] for group in groups]


def split_after(kind: type[nn.Module]) -> Callable[[nn.Module], list[Stage]]:
    """Stages of ``trunk.features`` ending at each module of ``kind`` (VGG: the 5 conv blocks, split at max-pools)."""
    def stages(trunk: nn.Module) -> list[Stage]:
        out, current = [], []
        for module in trunk.features:
            current.append(module)
            if isinstance(module, kind):
                out.append(current)
                current = []
        return out + ([current] if current else [])
    return stages


def resolution_stages(trunk: nn.Module) -> list[Stage]:
    """Stages of ``trunk.features``: a new stage starts at each child that lowers the resolution (probed with one
    meta-device forward at 224 px); parameter-free stages join their neighbour."""
    children = list(trunk.features)
    x, sides = torch.zeros(1, 3, 224, 224, device="meta"), []
    meta = _meta_copy(trunk.features)
    for child in meta:
        x = child(x)
        sides.append(x.shape[-1])
    stages: list[Stage] = []
    for i, child in enumerate(children):
        if not stages or sides[i] < sides[i - 1] and _has_params(stages[-1]):
            stages.append([])
        stages[-1].append(child)
    if len(stages) > 1 and not _has_params(stages[-1]):
        stages[-2].extend(stages.pop())
    return stages


def vit_stages(trunk: ViTTrunk) -> list[Stage]:
    """Patch embedding (with class token and position embedding), then each encoder block; the final norm last."""
    layers = list(trunk.encoder.layers)
    return [[trunk.conv_proj, trunk.class_token, trunk.encoder.pos_embedding], *[[b] for b in layers[:-1]],
            [layers[-1], trunk.encoder.ln]]


def _has_params(stage: Stage) -> bool:
    return any(isinstance(m, nn.Parameter) or any(True for _ in m.parameters()) for m in stage)


def _meta_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).to("meta").eval()


# ----------------------------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Probe:
    """What one forward pass at an input size shows: pooled width and token grid side."""

    dim: int
    grid: int

    @property
    def n_tokens(self) -> int:
        return self.grid**2


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: a torchvision builder, its weights, the trunk adapter and its stages."""

    name: str
    weights_name: str = "IMAGENET1K_V1"  # member of the builder's weights enum
    trunk: Callable[[nn.Module], nn.Module] = field(default_factory=children_trunk)
    stages: Callable[[nn.Module], list[Stage]] = resolution_stages
    pooling: str = "global average of the last conv stage"
    builder: str = ""  # torchvision builder name; "" = name
    build: Callable[[], nn.Module] | None = None  # a faster build with the same trunk, keys and random init

    @property
    def imagenet_weights(self) -> torchvision.models.WeightsEnum:
        return get_model_weights(self.builder or self.name)[self.weights_name]

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """The weights' input normalisation (torchvision's ``weights.transforms()``)."""
        transform = self.imagenet_weights.transforms()
        return tuple(float(v) for v in transform.mean), tuple(float(v) for v in transform.std)

    def build_model(self) -> nn.Module:
        """The torchvision model with random initialisation (from the global torch RNG)."""
        return self.build() if self.build else get_model_builder(self.builder or self.name)(weights=None)

    def native_size(self) -> int:
        return int(self.imagenet_weights.transforms().crop_size[0])

    @property
    def dim(self) -> int:
        """Pooled width (probed)."""
        return probe(self.name, self.native_size()).dim

    def token_grid(self, input_size: int) -> int:
        """Side of the token grid for a square input (probed: ResNet rounds odd sides up, VGG down)."""
        return probe(self.name, input_size).grid

    def n_tokens(self, input_size: int) -> int:
        return probe(self.name, input_size).n_tokens


class VGG16Features(nn.Module):
    """torchvision's ``vgg16()`` without its classifier: the same ``features.*`` keys and init scheme, built
    without the 100M-weight classifier that would take seconds to initialise and is thrown away anyway."""

    def __init__(self):
        super().__init__()
        self.features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["D"])
        for module in self.features:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.constant_(module.bias, 0)


BACKBONES: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


register(BackboneSpec("resnet18",
                      trunk=children_trunk("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"),
                      stages=named_stages(("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))))
register(BackboneSpec("vgg16", stages=split_after(nn.MaxPool2d), build=VGG16Features))
register(BackboneSpec("densenet121", trunk=children_trunk("features", tail=lambda: nn.ReLU(inplace=True))))
register(BackboneSpec("efficientnet_b0"))
register(BackboneSpec("convnext_tiny"))
register(BackboneSpec("vit_b_16", trunk=ViTTrunk, stages=vit_stages,
                      pooling="class token after the encoder's final LayerNorm"))
register(BackboneSpec("mobilenet_v3_large", weights_name="IMAGENET1K_V2"))


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


@functools.cache
def probe(name: str, input_size: int) -> Probe:
    """Pooled width and token grid of a backbone at a square input size, from one forward pass.

    Runs on the meta device (no weights, no compute) where the architecture can be built there, else on the
    CPU with random weights; the global RNG is left untouched. A size the trunk refuses raises its error.
    """
    spec = get_backbone(name)
    try:
        trunk = _meta_trunk(name)
        with torch.device("meta"):
            out = trunk(torch.zeros(1, 3, input_size, input_size))
    except FusionfeatError:
        raise
    except Exception:  # an architecture that cannot run on the meta device: a real forward, random weights
        with torch.random.fork_rng(devices=[]):
            trunk = spec.trunk(spec.build_model()).eval()
        with torch.inference_mode():
            out = trunk(torch.zeros(1, 3, input_size, input_size))
    if out.dim() == 4:
        return Probe(int(out.shape[1]), int(out.shape[-1]))
    return Probe(int(out.shape[-1]), math.isqrt(int(out.shape[1]) - 1))


@functools.cache
def _meta_trunk(name: str) -> nn.Module:
    """A backbone's trunk on the meta device (shapes only, built in milliseconds), for probing."""
    spec = get_backbone(name)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return spec.trunk(spec.build_model()).eval()


def input_stats(names: list[str]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std shared by the weights of ``names``; all backbones of one store share one preprocessing."""
    stats = {name: get_backbone(name).mean_std() for name in names}
    first = stats[names[0]]
    for name, value in stats.items():
        if value != first:
            raise FusionfeatError(
                f"--backbones {names[0]} and {name} expect different input normalisation (mean/std {first} vs "
                f"{value}); one store has one preprocessing: extract them into separate stores"
            )
    return first


# ----------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class WeightsChoice:
    """Which weights a backbone starts from: ``imagenet``, ``random`` (with its seed) or a state-dict ``file``."""

    kind: str
    path: str = ""
    seed: int = 0

    @classmethod
    def parse(cls, value: str | WeightsChoice, seed: int | None = None) -> WeightsChoice:
        """``imagenet`` | ``random`` | a file path; ``seed`` (default: a choice's own, else 0) seeds random weights."""
        if isinstance(value, WeightsChoice):
            return value if seed is None else replace(value, seed=seed)
        value, seed = value.strip(), seed or 0
        if value in (IMAGENET, RANDOM):
            return cls(value, "", seed)
        return cls(FILE, value, seed)

    @classmethod
    def from_provenance(cls, name: str, attrs: dict, override: str | None = None) -> WeightsChoice:
        """The choice recorded in a store's (or bundle's) provenance of ``name``; ``override`` points at a file
        that moved. Refuses a random/non-random swap and a missing file; the caller checks the SHA-256."""
        kind, seed = str(attrs["weights_kind"]), int(attrs.get("seed", 0))
        recorded = cls(kind, "" if kind in (RANDOM, IMAGENET) else str(attrs.get("weights_path", "")), seed)
        choice = recorded if override is None else cls.parse(override, seed)
        if (kind == RANDOM) != (choice.kind == RANDOM):
            raise WeightsError(f"{name} was made with {kind} weights; --weights {name}={override} does not match")
        if choice.kind == FILE and not Path(choice.path).expanduser().is_file():
            raise WeightsError(f"the {name} weights file {attrs.get('weights_path')} is missing; "
                               f"pass --weights {name}=FILE (SHA-256 {attrs.get('weights_sha256')})")
        return choice

    def __str__(self) -> str:
        return self.path if self.kind == FILE else self.kind


def parse_weights(value: str, backbones: list[str], seed: int = 0) -> dict[str, WeightsChoice]:
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
        return {b: WeightsChoice.parse(value, seed) for b in backbones}
    choice = {b: WeightsChoice(IMAGENET, "", seed) for b in backbones}
    for part in value.split(","):
        name, sep, item = part.partition("=")
        name = name.strip().lower()
        if not sep or not item.strip():
            raise FusionfeatError(f"--weights part {part!r} should read BACKBONE=imagenet|random|FILE")
        if name not in backbones:
            raise FusionfeatError(f"--weights names {name!r}, which is not among --backbones {','.join(backbones)}")
        choice[name] = WeightsChoice.parse(item, seed)
    return choice


def random_backbones(weights: dict[str, WeightsChoice | str]) -> list[str]:
    """The backbones of a ``parse_weights`` result that use random weights."""
    return [b for b, w in weights.items() if str(w) == RANDOM]


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


def load_backbone(name: str, weights: str | WeightsChoice = IMAGENET, seed: int | None = None) -> LoadedBackbone:
    """Build a backbone's trunk with ``imagenet``, ``random`` (seeded) or a state-dict file's weights.

    ``seed`` (default: the ``WeightsChoice``'s own, else 0) seeds random weights and is recorded in any case.
    """
    spec = get_backbone(name)
    choice = WeightsChoice.parse(weights, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(choice.seed)
        model = spec.build_model()
    trunk = spec.trunk(model)
    if choice.kind == RANDOM:
        return LoadedBackbone(spec, trunk.eval(), RANDOM, RANDOM, "", "", choice.seed)
    if choice.kind == IMAGENET:
        path = imagenet_file(spec)
        kind, label = IMAGENET, f"{IMAGENET}:{spec.imagenet_weights.name}"
    else:
        path = Path(choice.path).expanduser()
        if not path.is_file():
            raise WeightsError(f"weights file for {name} not found: {path} (or use imagenet / random)")
        kind, label = FILE, path.name
    state = read_state_dict(path)
    load_trunk_state(trunk, spec, state, str(path))
    return LoadedBackbone(spec, trunk.eval(), label, kind, sha256_file(path), str(path.resolve()), choice.seed)


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


@functools.cache
def _head_prefixes(name: str) -> tuple[str, ...]:
    """Top-level names of the full torchvision model's keys that the trunk does not use (its classifier)."""
    spec = get_backbone(name)
    full_model = get_model_builder(spec.builder or spec.name)
    with torch.random.fork_rng(devices=[]):
        try:
            with torch.device("meta"):  # keys only: no memory, no initialisation time
                full, trunk = full_model(weights=None).state_dict(), spec.trunk(spec.build_model()).state_dict()
        except Exception:  # an architecture that cannot be built on the meta device
            full, trunk = full_model(weights=None).state_dict(), spec.trunk(spec.build_model()).state_dict()
    used = {k.split(".")[0] for k in trunk}
    return tuple(sorted(f"{top}." for top in ({k.split(".")[0] for k in full} | {"fc", "classifier"}) - used))


def load_trunk_state(trunk: nn.Module, spec: BackboneSpec, state: dict[str, torch.Tensor], source: str) -> None:
    """Strictly load a trunk's weights; the full model's classifier keys are ignored.

    Accepts the full model's keys or the trunk's alone when every trunk key shares one prefix
    (e.g. ``0.weight`` for VGG's ``features.0.weight``).
    """
    expected = trunk.state_dict()
    tops = {k.split(".")[0] for k in expected}
    if len(tops) == 1:
        prefix = f"{next(iter(tops))}."
        if not any(k.startswith(prefix) for k in state):
            state = {prefix + k: v for k, v in state.items()}
    state = {k: v for k, v in state.items() if k in expected or not k.startswith(_head_prefixes(spec.name))}
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
    trunk.load_state_dict(state)
