"""A trained head with the provenance of its features: save, load, and label new images.

A bundle is a folder:

* ``bundle.json``: format version, head, classes, the training store's per-backbone provenance
  (weights + SHA-256, input size, normalisation, fill, precision), training summary, software versions;
* the model: ``model.pt`` (torch heads: a plain state dict, loaded with ``weights_only=True``),
  ``model.xgb.json`` (XGBoost's own JSON format), or ``model.joblib`` (scikit-learn pipelines: joblib
  is pickle, so load bundles from trusted sources only).
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusionfeat.errors import FusionfeatError
from fusionfeat.estimators import TorchHeadClassifier, XGBoostClassifier
from fusionfeat.store import now_iso
from fusionfeat.zoo import HeadSpec, head_from_record

FORMAT = "fusionfeat-bundle"
FORMAT_VERSION = 1
MANIFEST = "bundle.json"


@dataclass
class Bundle:
    """A fitted estimator, the head it implements and the provenance its features must match."""

    estimator: Any
    spec: HeadSpec
    info: dict[str, Any]

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def positive(self) -> str:
        return str(self.info["positive"])

    def backbone_provenance(self, name: str) -> dict[str, Any]:
        return self.info["backbones"][name]


def save_bundle(out: str | os.PathLike, estimator: Any, spec: HeadSpec, info: dict[str, Any]) -> Path:
    """Write a bundle folder atomically (a temporary folder renamed into place)."""
    out = Path(out).expanduser()
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "created": now_iso(), "head": spec.name,
            "head_backbones": list(spec.backbones), "head_inputs": spec.inputs, **info}
    if isinstance(estimator, TorchHeadClassifier):
        config, state = estimator.get_state()
        torch.save(state, tmp / "model.pt")
        meta.update(model_file="model.pt", model_kind="torch", torch_config=config)
    elif isinstance(estimator, XGBoostClassifier):
        estimator.model_.save_model(tmp / "model.xgb.json")
        meta.update(model_file="model.xgb.json", model_kind="xgboost",
                    xgb_params=estimator.get_params(), xgb_classes=estimator.classes_.tolist(),
                    n_features_in=int(estimator.n_features_in_))
    else:
        import joblib

        joblib.dump(estimator, tmp / "model.joblib")
        meta.update(model_file="model.joblib", model_kind="joblib")
    (tmp / MANIFEST).write_text(json.dumps(meta, indent=1, default=_json_default) + "\n")
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Load a bundle folder; anything that is not one gets a clear error."""
    path = Path(path).expanduser()
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise FusionfeatError(f"{path} is not a fusionfeat bundle (no {MANIFEST}); make one with `fusionfeat train`")
    try:
        info = json.loads(manifest.read_text())
    except json.JSONDecodeError:
        raise FusionfeatError(f"{manifest} is not valid JSON; the bundle is damaged") from None
    if info.get("format") != FORMAT:
        raise FusionfeatError(f"{path} is not a fusionfeat bundle ({MANIFEST} lacks format {FORMAT!r})")
    if info.get("format_version", 0) > FORMAT_VERSION:
        raise FusionfeatError(f"{path} was written by a newer fusionfeat (format {info['format_version']}); upgrade")
    try:
        spec = head_from_record(info.get("head"), info.get("head_backbones"), info.get("head_inputs"))
    except FusionfeatError as exc:
        raise FusionfeatError(f"{path} holds an unknown head ({exc})") from None
    model_file = path / info["model_file"]
    if not model_file.is_file():
        raise FusionfeatError(f"{path} is missing its model file {info['model_file']}")
    kind = info["model_kind"]
    if kind == "torch":
        state = torch.load(model_file, map_location="cpu", weights_only=True)
        estimator = TorchHeadClassifier.from_state(info["torch_config"], state, device="cpu")
    elif kind == "xgboost":
        from xgboost import XGBClassifier

        estimator = XGBoostClassifier(**info["xgb_params"])
        estimator.model_ = XGBClassifier()
        estimator.model_.load_model(model_file)
        estimator.classes_ = np.asarray(info["xgb_classes"])
        estimator.n_features_in_ = int(info["n_features_in"])
    else:
        import joblib

        estimator = joblib.load(model_file)
    return Bundle(estimator, spec, info)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
