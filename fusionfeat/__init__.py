"""fusionfeat: ResNet18 + VGG16 feature fusion for acute lymphoblastic leukemia cell images.

The public API, imported lazily so that ``import fusionfeat`` (and the CLI) stays fast::

    from fusionfeat import build_manifest, extract, ExtractConfig, FeatureStore, cross_validate, write_run
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "build_manifest": "fusionfeat.data.manifest",
    "Manifest": "fusionfeat.data.manifest",
    "Preprocess": "fusionfeat.data.images",
    "load_backbone": "fusionfeat.encoders",
    "BACKBONES": "fusionfeat.encoders",
    "extract": "fusionfeat.engines.extract",
    "ExtractConfig": "fusionfeat.engines.extract",
    "FeatureStore": "fusionfeat.store",
    "HeadSpec": "fusionfeat.heads.zoo",
    "resolve_head": "fusionfeat.heads.zoo",
    "resolve_heads": "fusionfeat.heads.zoo",
    "TorchHeadClassifier": "fusionfeat.heads.torch_head",
    "cross_validate": "fusionfeat.evaluation.cv",
    "plan_folds": "fusionfeat.protocols",
    "write_run": "fusionfeat.report",
    "compare_runs": "fusionfeat.report",
    "train_head": "fusionfeat.train",
    "save_bundle": "fusionfeat.bundle",
    "load_bundle": "fusionfeat.bundle",
    "predict_images": "fusionfeat.predict",
    "FusionfeatError": "fusionfeat.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fusionfeat' has no attribute {name!r}")
