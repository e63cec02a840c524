"""The timm encoders: one ``register`` entry each, and any timm model as ``timm:<model_name>``.

A timm entry names a timm model (with its pretrained tag); its input statistics and native size come from the
model's ``pretrained_cfg``, its pooled vector and tokens from its family's rule (``fusionfeat.encoders.
timm_trunks``), its fine-tuning stages from ``timm_stages``. DINOv2 entries are timm's DINOv2 models; the
DinoBloom entries (Koch et al., MICCAI 2024: DINOv2 fine-tuned on haematology single-cell images) are the same
architectures built for 224 px, whose weights come only from the authors' published files
(``--weights dinobloom_s=FILE``). timm itself is imported only when a timm entry is used.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from fusionfeat.encoders.registry import BackboneSpec, register, register_source
from fusionfeat.encoders.timm_trunks import CNN_POOLING, VIT_POOLING, is_vit, timm_stages, timm_trunk
from fusionfeat.errors import FusionfeatError

DINOBLOOM_SOURCE = "published by the authors, github.com/marrlab/DinoBloom"


@dataclass(frozen=True)
class TimmSpec(BackboneSpec):
    """A registry entry built by timm: ``model`` is a timm model name, optionally with its pretrained tag."""

    model: str = ""
    img_size: int = 0  # ViTs: the side their position embeddings are built for (0: the pretrained config's)
    hub: bool = True  # built-in weights from the local hub cache; False: weights only from a user's file
    published: str = ""  # the authors' file name (e.g. DinoBloom-S.pth), for messages
    known_sha256: str = ""  # the SHA-256 of that file, where known: another file warns
    source: ClassVar[str] = "timm"

    @property
    def imagenet_weights(self) -> Any:
        raise FusionfeatError(f"{self.name} is a timm model: it has no torchvision weights enum")

    def pretrained_cfg(self) -> dict:
        """timm's pretrained configuration of the model (mean, std, input size, hub id, classifier)."""
        return pretrained_cfg(self.model)

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        cfg = self.pretrained_cfg()
        return tuple(float(v) for v in cfg["mean"]), tuple(float(v) for v in cfg["std"])

    def native_size(self) -> int:
        return int(self.img_size or self.pretrained_cfg()["input_size"][-1])

    def build_model(self) -> nn.Module:
        """The timm model without classifier, random initialisation (global torch RNG), never downloading.
        ViTs are built for ``native_size`` with ``dynamic_img_size`` (position embeddings interpolated)."""
        import timm

        try:
            return timm.create_model(self.model, pretrained=False, num_classes=0, img_size=self.native_size(),
                                     dynamic_img_size=True)
        except TypeError:  # not a ViT: no image size to give
            return timm.create_model(self.model, pretrained=False, num_classes=0)

    def adapt_state(self, state: dict[str, torch.Tensor], model: nn.Module) -> dict[str, torch.Tensor]:
        """A checkpoint's backbone keys → this model's keys: timm's own filter for the architecture (DINOv2
        renames, position embeddings resampled to the model's grid), classifier keys dropped."""
        module = _entry_module(self.model)
        fn = getattr(module, "checkpoint_filter_fn", None)
        if fn is not None:
            state = fn(dict(state), model)
        classifier = self.pretrained_cfg().get("classifier") or ()
        heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
        return {k: v for k, v in state.items() if not any(k.startswith(f"{h}.") for h in heads)}


def timm_spec(name: str, model: str, pooling: str = VIT_POOLING,
              stages: Callable[[nn.Module], list] = timm_stages, **kwargs: Any) -> TimmSpec:
    """A timm registry entry: ``name`` in the registry, ``model`` in timm."""
    return TimmSpec(name, trunk=functools.partial(timm_trunk, name=name), stages=stages, pooling=pooling,
                    model=model, **kwargs)


@functools.cache
def pretrained_cfg(model: str) -> dict:
    import timm

    if not timm.is_model(model):
        raise FusionfeatError(f"unknown timm model {model!r}; list them with python -c \"import timm; "
                              f"print(timm.list_models('{model.split('.')[0][:6]}*', pretrained=True))\"")
    cfg = timm.models.get_pretrained_cfg(model)
    if cfg is None:
        raise FusionfeatError(f"timm model {model!r} has no pretrained configuration (input statistics); "
                              "name it with a pretrained tag, e.g. resnet50.a1_in1k")
    return cfg.to_dict()


def _entry_module(model: str) -> Any:
    import importlib

    import timm

    arch = timm.models.split_model_name_tag(model)[0]
    return importlib.import_module(timm.models.model_entrypoint(arch).__module__)


def resolve_timm(model: str) -> TimmSpec:
    """``timm:<model>`` → an entry for any timm model; its family (ViT or CNN) is read off a meta-device build."""
    cfg = pretrained_cfg(model)
    probe_spec = timm_spec(f"timm:{model}", model)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        vit = is_vit(probe_spec.build_model())
    return timm_spec(f"timm:{model}", model, pooling=VIT_POOLING if vit else CNN_POOLING,
                     hub=bool(cfg.get("hf_hub_id") or cfg.get("url")))


register_source("timm", resolve_timm)
register(timm_spec("dinov2_vits14", "vit_small_patch14_dinov2.lvd142m"))
register(timm_spec("dinov2_vitb14", "vit_base_patch14_dinov2.lvd142m"))
register(timm_spec("dinov2_vitl14", "vit_large_patch14_dinov2.lvd142m"))
register(timm_spec("dinobloom_s", "vit_small_patch14_dinov2.lvd142m", img_size=224, hub=False,
                   published="DinoBloom-S.pth",
                   known_sha256="c2f7990b003e89bcece80e379fb8fe0ba2ec392ce19b286e8a294abd99568e44"))
register(timm_spec("dinobloom_b", "vit_base_patch14_dinov2.lvd142m", img_size=224, hub=False,
                   published="DinoBloom-B.pth"))
register(timm_spec("dinobloom_l", "vit_large_patch14_dinov2.lvd142m", img_size=224, hub=False,
                   published="DinoBloom-L.pth"))
register(timm_spec("dinobloom_g", "vit_giant_patch14_dinov2.lvd142m", img_size=224, hub=False,
                   published="DinoBloom-G.pth"))
