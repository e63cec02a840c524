"""Encoders (backbones): the registry, its torchvision entries, trunk adapters, and weights with provenance.

``from fusionfeat.encoders import BACKBONES, get_backbone, load_backbone`` is the public surface; the
submodules are ``registry`` (entries and probing), ``trunks`` (adapters, ``embed``, stages), ``weights``
(``WeightsChoice``, loading) and ``torchvision_models`` (the entries, registered on import).
"""

from fusionfeat.encoders import torchvision_models as _entries  # noqa: F401  (registers the entries)
from fusionfeat.encoders.registry import (
    BACKBONES,
    BackboneSpec,
    Probe,
    get_backbone,
    input_stats,
    parse_backbones,
    probe,
    register,
)
from fusionfeat.encoders.trunks import Stage, embed
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
    "embed", "get_backbone", "imagenet_cache_path", "input_stats", "load_backbone", "parse_backbones",
    "parse_weights", "probe", "random_backbones", "read_state_dict", "register",
]
