"""Trunk adapters and fine-tuning stages for timm models: one rule per architecture family.

* **ViT family** (timm models with a patch embedding and prefix tokens: ``VisionTransformer``, DINOv2, Eva, ...):
  the trunk returns ``(B, 1 + T, C)`` from ``forward_features``, i.e. after the model's final norm: the class
  token first, then the ``T`` patch tokens row by row as a square grid; register tokens are left out. A model
  without a class token gets the mean of its patch tokens in that place. The input side must be a multiple of
  the patch size; position embeddings are interpolated (bicubic, timm's ``dynamic_img_size``) to the grid.
* **CNN family** (every other timm model whose ``forward_features`` is a spatial map): the trunk returns that
  final map ``(B, C, h, w)``; its pooled vector is the global average (``fusionfeat.encoders.trunks.embed``).

The trunk holds the timm model as ``model``, built with ``num_classes=0`` (no classifier): its state-dict keys
are timm's own keys under ``model.``.
"""

from __future__ import annotations

import torch
from torch import nn

from fusionfeat.encoders.trunks import Stage
from fusionfeat.errors import FusionfeatError

VIT_POOLING = "class token after the final norm (timm forward_features; tokens: the patch tokens, registers left out)"
CNN_POOLING = "global average of the final feature map (timm forward_features)"


def is_vit(model: nn.Module) -> bool:
    """Whether a timm model belongs to the ViT family (a patch embedding and prefix tokens)."""
    return hasattr(model, "patch_embed") and hasattr(model, "num_prefix_tokens")


class TimmViTTrunk(nn.Module):
    """A timm vision transformer without its head: ``(B, 1 + T, C)``, class token first, registers dropped."""

    def __init__(self, model: nn.Module, name: str = ""):
        super().__init__()
        self.model = model
        self.label = name or "this vision transformer"
        patch = model.patch_embed.patch_size
        self.patch = int(patch[0] if isinstance(patch, (tuple, list)) else patch)
        self.n_prefix = int(model.num_prefix_tokens)
        self.has_class = bool(getattr(model, "has_class_token", self.n_prefix > 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        p = self.patch
        if h % p or w % p:
            lo, hi = max(p, h // p * p), (h // p + 1) * p
            raise FusionfeatError(f"--input-size {h} does not fit {self.label}, a vision transformer with {p}-pixel "
                                  f"patches; use a multiple of {p} (e.g. {lo} or {hi})")
        out = self.model.forward_features(x)  # after the final norm
        patches = out[:, self.n_prefix:]
        first = out[:, :1] if self.has_class else patches.mean(dim=1, keepdim=True)
        return torch.cat([first, patches], dim=1)


class TimmMapTrunk(nn.Module):
    """A timm CNN without its head: the final feature map ``(B, C, h, w)``."""

    def __init__(self, model: nn.Module, name: str = ""):
        super().__init__()
        self.model = model
        self.label = name or "this model"
        self.nhwc = str(getattr(model, "output_fmt", "NCHW")) == "NHWC"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model.forward_features(x)
        if self.nhwc and out.dim() == 4:
            out = out.permute(0, 3, 1, 2)
        if out.dim() != 4:
            raise FusionfeatError(f"{self.label} returns features of shape {tuple(out.shape)}, neither a spatial map "
                                  "nor a ViT token sequence; fusionfeat has no pooling rule for its family")
        return out


def timm_trunk(model: nn.Module, name: str = "") -> nn.Module:
    """The family's trunk adapter for a timm model."""
    return TimmViTTrunk(model, name) if is_vit(model) else TimmMapTrunk(model, name)


def timm_stages(trunk: nn.Module) -> list[Stage]:
    """Fine-tuning stages of a timm trunk, input first.

    ViT: the patch embedding with class/register tokens and position embedding, then each block, the last block
    with the final norm. CNN: one stage per entry of timm's ``feature_info`` (the stem, then each resolution
    stage), each with the parameters up to that module; what follows the last one joins the last stage.
    """
    model = trunk.model
    if isinstance(trunk, TimmViTTrunk):
        first: Stage = [model.patch_embed]
        first += [p for p in (getattr(model, n, None) for n in ("cls_token", "reg_token", "pos_embed"))
                  if isinstance(p, nn.Parameter)]
        blocks = list(model.blocks)
        tail = [m for m in (getattr(model, "norm", None), getattr(model, "fc_norm", None)) if m is not None]
        return [first, *[[b] for b in blocks[:-1]], [blocks[-1], *tail]]
    info = getattr(model, "feature_info", None)
    names = [str(f["module"]) for f in info] if info else []
    if not names:
        raise FusionfeatError(f"{trunk.label} records no feature stages (timm feature_info); fine-tuning is not "
                              "supported for its family: use --freeze-stages 0 or extract frozen features")
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    ends = []
    for n in names:
        below = [i for m, i in order.items() if m == n or m.startswith(n + ".")]
        ends.append(max(below) if below else order.get(n, -1))
    stages: list[Stage] = [[] for _ in names]
    for mod_name, module in model.named_modules():
        own = list(module.parameters(recurse=False))
        if not own:
            continue
        k = next((j for j, end in enumerate(ends) if order[mod_name] <= end), len(ends) - 1)
        leaf = next(module.children(), None) is None
        stages[k].extend([module] if leaf else own)  # a leaf module, so batch norm statistics freeze too
    return [s for s in stages if s]
