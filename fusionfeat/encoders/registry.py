"""The encoder registry: the one place that knows an encoder. Adding one is one ``register(BackboneSpec(...))``.

An entry names a torchvision builder and a member of its weights enum (torchvision's ``get_model_weights``), or
a timm model (``fusionfeat.encoders.timm_models``: ``TimmSpec``, and any timm model as ``timm:<model_name>``
through ``register_source``); everything else is derived, never declared by hand:

* input statistics: the weights' own ``transforms()`` mean and std;
* the trunk: the classifier without its head, behind one contract (``fusionfeat.encoders.trunks``);
* pooled width and token grid: probed with one forward pass at the requested input size (``probe``,
  on the meta device when the architecture allows it, cached per name and size);
* stages for ``--freeze-stages``: the entry's ``stages`` (default: the ``features`` children, a new stage
  wherever the resolution drops).

The entries themselves are in ``fusionfeat.encoders.torchvision_models``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torchvision
from torch import nn
from torchvision.models import get_model_builder, get_model_weights

from fusionfeat.encoders.trunks import Stage, children_trunk, resolution_stages
from fusionfeat.errors import FusionfeatError


@dataclass(frozen=True)
class Probe:
    """What one forward pass at an input size shows: pooled width and token grid side."""

    dim: int
    grid: int

    @property
    def n_tokens(self) -> int:
        return self.grid**2

    def pooled_to(self, token_grid: int | None) -> Probe:
        """What is stored with ``--token-grid``: the grid pooled down to at most ``token_grid`` per side."""
        return self if not token_grid or self.grid <= token_grid else Probe(self.dim, int(token_grid))


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
    source: ClassVar[str] = "torchvision"  # where the architecture and its weights come from

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


BACKBONES: dict[str, BackboneSpec] = {}
SOURCES: dict[str, Callable[[str], BackboneSpec]] = {}  # "timm" → resolver of "timm:<model>" names
_RESOLVED: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    BACKBONES[spec.name] = spec
    return spec


def register_source(prefix: str, resolve: Callable[[str], BackboneSpec]) -> None:
    """Make ``<prefix>:<model>`` a backbone name without an entry: ``resolve(model)`` builds its spec."""
    SOURCES[prefix] = resolve


def get_backbone(name: str) -> BackboneSpec:
    """The entry of a registered name, or of a ``<source>:<model>`` name (e.g. ``timm:resnet50``)."""
    if name in BACKBONES:
        return BACKBONES[name]
    prefix, sep, model = name.partition(":")
    if sep and prefix in SOURCES and model:
        if name not in _RESOLVED:
            _RESOLVED[name] = SOURCES[prefix](model)
        return _RESOLVED[name]
    extra = "".join(f", or any {p} model as {p}:<model_name>" for p in SOURCES)
    raise FusionfeatError(f"unknown backbone {name!r}; available: {', '.join(BACKBONES)}{extra}")


def is_known(name: str) -> bool:
    """Whether ``name`` is a registered entry or a ``<source>:<model>`` name that resolves."""
    try:
        get_backbone(name)
    except FusionfeatError:
        return False
    return True


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
