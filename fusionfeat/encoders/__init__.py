"""Encoders (backbones): the registry, its torchvision entries, trunk adapters, and weights with provenance.

``from fusionfeat.encoders import BACKBONES, get_backbone, load_backbone`` is the public surface; the
submodules are ``registry`` (entries and probing), ``trunks`` (adapters, ``embed``, stages), ``weights``
(``WeightsChoice``, loading), ``torchvision_models`` and ``timm_models`` (the entries, registered on import;
any timm model is also reachable as ``timm:<model_name>``), ``timm_trunks`` (the timm families' rules) and
``timm_weights`` (published checkpoints and the local hub cache).
"""

# the torchvision entries are registered first, so the registry lists them first
# isort: off
from fusionfeat.encoders import torchvision_models as _entries  # noqa: F401  (registers the entries)
from fusionfeat.encoders import timm_models as _timm_entries  # noqa: F401  (registers the timm entries)
# isort: on
from fusionfeat.encoders.registry import (
    BACKBONES,
    BackboneSpec,
    Probe,
    get_backbone,
    input_stats,
    is_known,
    parse_backbones,
    probe,
    register,
)
from fusionfeat.encoders.timm_models import TimmSpec
from fusionfeat.encoders.trunks import Stage, embed, pool_tokens
from fusionfeat.encoders.weights import (
    FILE,
    IMAGENET,
    RANDOM,
    LoadedBackbone,
    WeightsChoice,
    imagenet_cache_path,
    load_backbone,
    parse_weights,
    random_backbones,
    read_state_dict,
)

__all__ = [
    "BACKBONES", "FILE", "IMAGENET", "RANDOM", "BackboneSpec", "LoadedBackbone", "Probe", "Stage", "WeightsChoice",
    "TimmSpec", "embed", "get_backbone", "imagenet_cache_path", "input_stats", "is_known", "load_backbone",
    "parse_backbones", "parse_weights", "pool_tokens", "probe", "random_backbones", "read_state_dict", "register",
]
