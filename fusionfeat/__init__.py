"""fusionfeat: ResNet18 + VGG16 feature fusion for acute lymphoblastic leukemia cell images.

The public API, imported lazily so that ``import fusionfeat`` (and the CLI) stays fast::

    import fusionfeat

    result = fusionfeat.cross_validate("cells.h5", ["logreg", "svm"])   # a store path or a FeatureStore
    print(result.metrics_table())                                        # pandas, one row per head
    fusionfeat.train_bundle("cells.h5", "logreg", "model")
    fusionfeat.predict_images("model", "new_cells/", "labels.csv").to_frame()

Quick start and reference: ``docs/api.md``.
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
    "CVResult": "fusionfeat.evaluation.cv",
    "FoldResult": "fusionfeat.evaluation.cv",
    "plan_folds": "fusionfeat.protocols",
    "write_run": "fusionfeat.report",
    "compare_runs": "fusionfeat.report",
    "run_study": "fusionfeat.study",
    "write_study": "fusionfeat.study",
    "train_head": "fusionfeat.train",
    "train_bundle": "fusionfeat.train",
    "Bundle": "fusionfeat.bundle",
    "save_bundle": "fusionfeat.bundle",
    "load_bundle": "fusionfeat.bundle",
    "predict_images": "fusionfeat.predict",
    "evaluate_bundle": "fusionfeat.evaluate",
    "PredictionSummary": "fusionfeat.predict",
    "generate_cnmc_like": "fusionfeat.data.synthetic",
    "FusionfeatError": "fusionfeat.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fusionfeat' has no attribute {name!r}")
