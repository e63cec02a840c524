"""Trunk adapters, the pooled vector and token rule, and fine-tuning stages of the registered encoders.

A trunk maps a normalised ``(B, 3, S, S)`` batch to a spatial map ``(B, C, h, w)`` (CNNs) or to a token
sequence ``(B, 1 + T, C)`` whose first token is the class token (vision transformers); ``embed(trunk, x)``
turns either into ``(pooled (B, C), tokens (B, T, C))``. Trunk state-dict keys are the full torchvision
model's keys.

What the pooled vector is: for CNNs the global average of the trunk's last map (for DenseNet after its
final ReLU, for ConvNeXt before the classifier's LayerNorm); for ``vit_b_16`` the class token after the
encoder's final LayerNorm, i.e. exactly what torchvision's classification head reads, and its tokens are the
patch tokens after that LayerNorm, a ``(S/16)²`` grid. ViT position embeddings are learned for 224 px
(14 × 14 patches); another input size that is a multiple of 16 interpolates them bicubically over the patch
grid (as torchvision's ``interpolate_embeddings``), any other size is refused.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from fusionfeat.errors import FusionfeatError

Stage = list[nn.Module | nn.Parameter]


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


def embed(trunk: nn.Module, x: torch.Tensor, tokens: bool = True, chunk: int | None = None,
          grid: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run a trunk: ``(pooled (B, C) float32, tokens (B, T, C) float16 or None)``.

    A map's pooled vector is its global average and its tokens the positions row by row; a sequence's pooled
    vector is its first (class) token and its tokens the rest. ``chunk`` runs the trunk that many rows at a time;
    ``grid`` pools the token grid down to at most ``grid × grid`` (``pool_tokens``; the pooled vector is unchanged).
    """
    out = trunk(x) if chunk is None else torch.cat([trunk(part) for part in x.split(chunk)])
    if out.dim() == 4:
        pooled = out.float().mean(dim=(2, 3))
        seq = out.flatten(2).transpose(1, 2) if tokens else None
    else:
        pooled = out[:, 0].float()
        seq = out[:, 1:] if tokens else None
    if seq is not None and grid:
        seq = pool_tokens(seq, grid)
    return pooled, None if seq is None else seq.to(torch.float16)


def pool_tokens(seq: torch.Tensor, grid: int) -> torch.Tensor:
    """``(B, s², C)`` tokens of an ``s × s`` grid → ``(B, g², C)`` by adaptive average pooling (in float32) when
    ``s > g``; a grid of ``g`` or fewer per side is returned as it is."""
    side = math.isqrt(seq.shape[1])
    if side <= grid or side * side != seq.shape[1]:
        return seq
    b, _, c = seq.shape
    maps = seq.float().transpose(1, 2).reshape(b, c, side, side)
    return F.adaptive_avg_pool2d(maps, grid).flatten(2).transpose(1, 2)


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
