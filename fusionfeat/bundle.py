"""A trained head with the provenance of its features: save, load, and label new images.

A bundle is a folder of data only, never code:

* ``bundle.json``: format version, head, classes, the training store's per-backbone provenance
  (weights + SHA-256, input size, normalisation, fill, precision; for random weights the seed and a
  fingerprint of the initialised trunk), training summary, software versions, and ``files``: the SHA-256
  of every other file in the bundle, checked on load;
* ``decision_rule`` in ``bundle.json`` (``train --calibrate/--operating-point``): the calibration map and the
  operating point, as data (``fusionfeat.heads.decision_rule``), applied by ``predict``;
* the model: ``model.pt`` (torch heads: a plain state dict, loaded with ``weights_only=True``),
  ``model.xgb.json`` (XGBoost's own JSON format), or ``model.sklearn.json`` + ``model.sklearn.npz``
  (scikit-learn pipelines as their parameters and learned arrays, see ``fusionfeat.heads.state``);
* ``shift.npz`` and ``shift`` in ``bundle.json``: the training features' reference for shift warnings
  (``fusionfeat.stats.shift``); ``input_geometry``: the training images' size, mode and padding;
  ``cv_estimate`` (``train --cv-run``): the head's cross-validated metrics on the training store.

Every file a bundle names must lie inside its folder. A legacy ``model.joblib`` (a pickle) loads only when
the caller passes ``trust_pickle=True`` (``predict --trust-pickle``).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusionfeat.encoders import RANDOM, is_known, load_backbone
from fusionfeat.errors import FusionfeatError
from fusionfeat.fsio import BUNDLE, dumps_json, output_target, sha256_file
from fusionfeat.heads.boosted import XGBoostClassifier
from fusionfeat.heads.decision_rule import bare_head, rebuild_rule, split_rule
from fusionfeat.heads.state import StateError, dump_estimator, load_estimator
from fusionfeat.heads.torch_head import TorchHeadClassifier
from fusionfeat.heads.zoo import HeadSpec, head_from_record
from fusionfeat.stats.shift import ShiftReference
from fusionfeat.store import now_iso

FORMAT = "fusionfeat-bundle"
FORMAT_VERSION = 2
MANIFEST = "bundle.json"
REQUIRED = ("head", "classes", "positive", "backbones", "model_file", "model_kind")
SELF_CHECKSUM = "manifest_sha256"
WEIGHTS_KINDS = ("imagenet", "random", "file")
SHIFT_FILE = "shift.npz"


@dataclass
class Bundle:
    """A fitted estimator, the head it implements and the provenance its features must match."""

    estimator: Any
    spec: HeadSpec
    info: dict[str, Any]
    shift: ShiftReference | None = None  # the training features' reference (bundles from before it: None)

    @property
    def classes(self) -> list[str]:
        return list(self.info["classes"])

    @property
    def positive(self) -> str:
        return str(self.info["positive"])

    def backbone_provenance(self, name: str) -> dict[str, Any]:
        return self.info["backbones"][name]


def head_spec(info: dict[str, Any]) -> HeadSpec:
    """The head a bundle records (the one place bundles look heads up): name, backbones in column order, inputs."""
    try:
        return head_from_record(info.get("head"), info.get("head_backbones"), info.get("head_inputs"))
    except FusionfeatError as exc:
        raise FusionfeatError(f"the bundle holds an unknown head ({exc}); it was not written by this fusionfeat") \
            from None


def trunk_fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes and bytes, in key order)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    return digest.hexdigest()


def random_fingerprint(backbone: str, seed: int) -> str:
    """The fingerprint of ``backbone`` initialised with random weights from ``seed``."""
    return trunk_fingerprint(load_backbone(backbone, RANDOM, int(seed)).trunk)


def save_bundle(out: str | os.PathLike, estimator: Any, spec: HeadSpec, info: dict[str, Any],
                overwrite: bool = False, inputs: tuple[str | os.PathLike, ...] = ()) -> Path:
    """Write a bundle folder under the output rule (built aside, renamed into place; ``fusionfeat.fsio``)."""
    with output_target(out, BUNDLE, inputs=inputs, overwrite=overwrite) as target:
        write_bundle_files(target.path, estimator, spec, info)
    return target.final


def write_bundle_files(folder: Path, estimator: Any, spec: HeadSpec, info: dict[str, Any]) -> None:
    """Write the model files and ``bundle.json`` (with their SHA-256s) into ``folder``."""
    backbones = {name: dict(prov) for name, prov in info["backbones"].items()}
    for name, prov in backbones.items():
        if prov.get("weights_kind") == "random" and is_known(name):  # an unknown one cannot predict anyway
            prov["trunk_fingerprint"] = random_fingerprint(name, int(prov.get("seed", 0)))
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "created": now_iso(), "head": spec.name,
            "head_backbones": list(spec.backbones), "head_inputs": spec.inputs, **info, "backbones": backbones}
    shift = meta.pop("shift", None)
    if isinstance(shift, ShiftReference):
        with open(folder / SHIFT_FILE, "wb") as fh:
            np.savez(fh, **shift.arrays())
        meta["shift"] = {**shift.summary(), "file": SHIFT_FILE}
    estimator, rule = split_rule(estimator)
    if rule:
        meta["decision_rule"] = rule
    if isinstance(estimator, TorchHeadClassifier):
        config, state = estimator.get_state()
        torch.save(state, folder / "model.pt")
        meta.update(model_file="model.pt", model_kind="torch", torch_config=config)
    elif isinstance(estimator, XGBoostClassifier):
        estimator.model_.save_model(folder / "model.xgb.json")
        meta.update(model_file="model.xgb.json", model_kind="xgboost",
                    xgb_params=estimator.get_params(), xgb_classes=estimator.classes_.tolist(),
                    n_features_in=int(estimator.n_features_in_))
    else:
        tree, arrays = dump_estimator(estimator)
        (folder / "model.sklearn.json").write_text(dumps_json(tree), encoding="utf-8")
        with open(folder / "model.sklearn.npz", "wb") as fh:
            np.savez(fh, **arrays)
        meta.update(model_file="model.sklearn.json", model_kind="sklearn", model_arrays="model.sklearn.npz",
                    n_features_in=int(estimator.n_features_in_))
    names = [meta["model_file"], *([meta["model_arrays"]] if "model_arrays" in meta else []),
             *([SHIFT_FILE] if "shift" in meta else [])]
    meta["files"] = {name: sha256_file(folder / name) for name in names}
    meta[SELF_CHECKSUM] = manifest_digest(meta)
    (folder / MANIFEST).write_text(dumps_json(meta), encoding="utf-8")


def manifest_digest(meta: dict[str, Any]) -> str:
    """SHA-256 of ``bundle.json``'s content without its own checksum (canonical JSON, sorted keys): an edited
    seed, weights record or backbone order is caught on load, not silently used."""
    body = {k: v for k, v in meta.items() if k != SELF_CHECKSUM}
    canonical = json.dumps(json.loads(dumps_json(body)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def load_bundle(path: str | os.PathLike, trust_pickle: bool = False,
                warn: Callable[[str], None] | None = None) -> Bundle:
    """Load a bundle folder; anything that is not one, or was tampered with, gets a one-line error.

    A legacy pickle loads only with ``trust_pickle``, after ``warn`` is told (it can run any code).
    """
    path = Path(path).expanduser()
    info = _read_manifest(path, trust_pickle)
    kind = info["model_kind"]
    model_file = bundle_file(path, info["model_file"], "model_file")
    _verify_files(path, info)
    try:
        estimator = _load_model(path, info, kind, model_file, trust_pickle, warn)
    except FusionfeatError:
        raise
    except Exception as exc:  # a damaged model file: whatever the library raises, the user gets one line
        raise FusionfeatError(f"{path}: cannot load its model {info['model_file']} ({type(exc).__name__}: "
                              f"{' '.join(str(exc).split())[:200]}); the bundle is damaged, retrain it") from None
    _check_consistent(path, info, estimator)
    rule = info.get("decision_rule")
    if rule is not None and not isinstance(rule, dict):
        raise FusionfeatError(f"{path}/{MANIFEST}: decision_rule is not a record; the bundle is damaged or edited")
    return Bundle(rebuild_rule(estimator, rule), head_spec(info), info, _load_shift(path, info))


def _load_shift(path: Path, info: dict[str, Any]) -> ShiftReference | None:
    """The shift reference a bundle keeps (its SHA-256 was checked with the other files), or None."""
    record = info.get("shift")
    if record is None:
        return None
    name = record.get("file") if isinstance(record, dict) else None
    file = bundle_file(path, name, "shift.file")
    if name not in (info.get("files") or {}):
        raise FusionfeatError(f"{path}/{MANIFEST}: {name!r} has no recorded SHA-256; refusing")
    try:
        with np.load(file, allow_pickle=False) as data:
            return ShiftReference.from_arrays({k: data[k] for k in data.files})
    except (OSError, KeyError, ValueError) as exc:
        raise FusionfeatError(f"{file}: cannot read the shift reference ({type(exc).__name__}); the bundle is "
                              "damaged, retrain it") from None


def _check_consistent(path: Path, info: dict[str, Any], estimator: Any) -> None:
    """The bundle's parts agree: two or more distinct classes (two: the positive among them; more: no positive),
    the model's classes, the head's backbones (no repeats), and its input width from their recorded widths and
    token grids. The checksum catches accidents; this catches a bundle re-signed after an edit that would
    change predictions silently."""
    where = f"{path}/{MANIFEST}"
    classes, positive = info["classes"], info["positive"]
    distinct = isinstance(classes, list) and len(classes) >= 2 and len(set(map(str, classes))) == len(classes)
    if not (distinct and (positive in classes if len(classes) == 2 else positive == "")):
        raise FusionfeatError(f"{where}: classes {classes!r} with positive {positive!r} are not two or more distinct "
                              "classes (with two, including the positive); the bundle is damaged or edited")
    backbones = list(info.get("head_backbones") or [])
    if len(set(backbones)) != len(backbones):
        raise FusionfeatError(f"{where}: head_backbones {backbones} repeats a backbone; the bundle is damaged or "
                              "edited")
    model = bare_head(estimator)
    model_classes = [int(c) for c in np.asarray(getattr(model, "classes_", [0, 1])).tolist()]
    if model_classes != list(range(len(classes))):
        raise FusionfeatError(f"{where}: the model predicts classes {model_classes} but the bundle names "
                              f"{len(classes)} ({', '.join(map(str, classes))}); the bundle is damaged or edited")
    expected = 0
    for name in backbones:
        prov = info["backbones"].get(name, {})
        dim, grid = prov.get("pooled_dim"), prov.get("token_grid", 1)
        if not isinstance(dim, int) or not isinstance(grid, int):
            return  # an older bundle without widths: nothing more to compare
        expected += dim * (grid * grid if info.get("head_inputs") == "tokens" else 1)
    width = getattr(model, "n_features_in_", None)
    if width is not None and int(width) != expected:
        raise FusionfeatError(f"{where}: the model reads {int(width)} features but {', '.join(backbones)} give "
                              f"{expected}; the bundle is damaged or edited")


def as_bundle(bundle: str | os.PathLike | Bundle) -> Bundle:
    """A loaded bundle for the API's functions: a ``Bundle`` as it is, a bundle folder's path loaded
    (``load_bundle``, no pickles); anything else gets a one-line error."""
    if isinstance(bundle, Bundle):
        return bundle
    if isinstance(bundle, (str, os.PathLike)):
        return load_bundle(bundle)
    raise FusionfeatError(f"expected a bundle (the folder `fusionfeat train` wrote, or a Bundle from load_bundle), "
                          f"got {type(bundle).__name__}")


def _read_manifest(path: Path, trust_legacy: bool = False) -> dict[str, Any]:
    manifest = path / MANIFEST
    if not manifest.is_file():
        raise FusionfeatError(f"{path} is not a fusionfeat bundle (no {MANIFEST}); make one with `fusionfeat train`")
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise FusionfeatError(f"{manifest} is not valid JSON; the bundle is damaged") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise FusionfeatError(f"{path} is not a fusionfeat bundle ({MANIFEST} lacks format {FORMAT!r})")
    version = info.get("format_version", 0)
    if not isinstance(version, int):
        raise FusionfeatError(f"{manifest}: format_version {version!r} is not an integer; the bundle is damaged")
    if version > FORMAT_VERSION:
        raise FusionfeatError(f"{path} was written by a newer fusionfeat (format {version}); upgrade")
    if version < 2 and not trust_legacy:
        raise FusionfeatError(f"{path} was written by fusionfeat before bundles carried checksums (format {version}), "
                              "so edits to it cannot be detected; retrain it, or pass --trust-pickle if you trust "
                              "its source")
    if version >= 2 and info.get(SELF_CHECKSUM) != manifest_digest(info):
        raise FusionfeatError(f"{manifest} was edited after `fusionfeat train` wrote it (its checksum does not "
                              "match); refusing to use the bundle, retrain it")
    missing = [k for k in REQUIRED if k not in info]
    if missing:
        raise FusionfeatError(f"{manifest} lacks {', '.join(missing)}; the bundle is damaged, retrain it")
    spec = head_spec(info)
    if not isinstance(info["backbones"], dict) or not all(isinstance(v, dict) for v in info["backbones"].values()):
        raise FusionfeatError(f"{manifest}: 'backbones' is not a table of provenance; the bundle is damaged")
    for name in spec.backbones:
        prov = info["backbones"].get(name)
        if prov is None:
            raise FusionfeatError(f"{manifest} has no provenance for backbone {name}; the bundle is damaged")
        if prov.get("weights_kind") not in WEIGHTS_KINDS or not isinstance(prov.get("weights_sha256"), str):
            raise FusionfeatError(f"{manifest}: {name} has no valid weights record (weights_kind one of "
                                  f"{', '.join(WEIGHTS_KINDS)}, weights_sha256); the bundle is damaged")
        for key in ("input_size", "seed"):
            value = prov.get(key, 0)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise FusionfeatError(f"{manifest}: {name} {key} {value!r} is not a non-negative integer; "
                                      "the bundle is damaged")
    return info


def bundle_file(folder: Path, name: Any, key: str) -> Path:
    """A file a bundle names, which must be a plain relative name that stays inside the folder."""
    if not isinstance(name, str) or not name or os.path.isabs(name) or ".." in Path(name).parts:
        raise FusionfeatError(f"{folder}/{MANIFEST}: {key} {name!r} must name a file inside the bundle folder; "
                              "refusing")
    target = folder / name
    if target.is_symlink() or not target.resolve().is_relative_to(folder.resolve()):
        raise FusionfeatError(f"{folder}/{MANIFEST}: {key} {name!r} leads outside the bundle folder; refusing")
    if not target.is_file():
        raise FusionfeatError(f"{folder} is missing its model file {name}")
    return target


def _verify_files(folder: Path, info: dict[str, Any]) -> None:
    files = info.get("files")
    if files is None:
        if info.get("format_version", 0) >= 2:
            raise FusionfeatError(f"{folder}/{MANIFEST} lacks the files' SHA-256s; the bundle is damaged")
        return  # format 1: written before checksums
    if not isinstance(files, dict):
        raise FusionfeatError(f"{folder}/{MANIFEST}: 'files' is not a table; the bundle is damaged")
    for key in ("model_file", "model_arrays"):
        if key in info and info[key] not in files:
            raise FusionfeatError(f"{folder}/{MANIFEST}: {info[key]!r} has no recorded SHA-256; refusing")
    for name, digest in files.items():
        file = bundle_file(folder, name, "files")
        if sha256_file(file) != digest:
            raise FusionfeatError(f"{file} does not match the SHA-256 in {MANIFEST} (changed or truncated); "
                                  "refusing to use the bundle, retrain it")


def _load_model(path: Path, info: dict[str, Any], kind: str, model_file: Path, trust_pickle: bool,
                warn: Callable[[str], None] | None) -> Any:
    if kind == "torch":
        state = torch.load(model_file, map_location="cpu", weights_only=True)
        return TorchHeadClassifier.from_state(info["torch_config"], state, device="cpu")
    if kind == "xgboost":
        from xgboost import XGBClassifier

        estimator = XGBoostClassifier(**info["xgb_params"])
        estimator.model_ = XGBClassifier()
        estimator.model_.load_model(model_file)
        estimator.classes_ = np.asarray(info["xgb_classes"])
        estimator.n_features_in_ = int(info["n_features_in"])
        return estimator
    if kind == "sklearn":
        arrays_file = bundle_file(path, info.get("model_arrays"), "model_arrays")
        with np.load(arrays_file, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        try:
            return load_estimator(json.loads(model_file.read_text(encoding="utf-8")), arrays)
        except StateError as exc:
            raise FusionfeatError(f"{model_file}: {exc}; refusing (the bundle is damaged or not fusionfeat's)") \
                from None
    if kind == "joblib":
        if not trust_pickle:
            raise FusionfeatError(f"{path} holds a pickle ({info['model_file']}), which can run any code when "
                                  "loaded; retrain the bundle, or pass --trust-pickle if you trust its source")
        import joblib

        if warn is not None:
            warn(f"warning: loading the pickle {model_file} because of --trust-pickle (it can run any code)")
        estimator = joblib.load(model_file)
        if not hasattr(estimator, "predict_proba"):
            raise FusionfeatError(f"{model_file} is not a fitted classifier ({type(estimator).__name__})")
        return estimator
    raise FusionfeatError(f"{path}/{MANIFEST}: unknown model_kind {kind!r}; the bundle is damaged")
