"""Fit one head on every usable sample of a store, for a bundle that labels new images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionfeat import protocols
from fusionfeat.bundle import write_bundle_files
from fusionfeat.data.geometry import geometry_summary
from fusionfeat.engines.extract import software_versions
from fusionfeat.errors import FusionfeatError
from fusionfeat.fsio import BUNDLE, output_target
from fusionfeat.heads.calibration import (
    METHODS,
    CalibratedHead,
    InnerOperatingPoint,
    fit_estimator,
    parse_operating_point,
)
from fusionfeat.heads.inputs import head_blocks, rows_matrix
from fusionfeat.heads.zoo import HeadSpec, resolve_heads
from fusionfeat.runtime import head_threads
from fusionfeat.stats.shift import MIN_IMAGES, ShiftReference, fit_reference
from fusionfeat.store import FeatureStore
from fusionfeat.store.reader import accepts_store


def train_bundle(store: str | os.PathLike | FeatureStore, head: str, out: str | os.PathLike,
                 balance: str = "weight", seed: int = 0, device: str = "auto", progress: bool = True,
                 backbones: str | Sequence[str] | None = None, overwrite: bool = False,
                 calibrate: str | None = None, operating_point: str | dict[str, float] | None = None,
                 cv_run: str | os.PathLike | None = None) -> Path:
    """``fusionfeat train`` in Python: fit ``head`` on every usable sample and save it as a bundle at ``out``.

    ``out`` follows the output rule (checked before any fitting; an existing bundle is replaced only with
    ``overwrite``). Returns the bundle's folder, which ``load_bundle`` and ``predict_images`` take. ``cv_run``:
    a run folder of ``fit`` on the same store and head, whose cross-validated estimate the bundle keeps.
    """
    source = store if isinstance(store, (str, os.PathLike)) else getattr(store, "path", None)
    with output_target(out, BUNDLE, inputs=[source] if source is not None else [], overwrite=overwrite) as target:
        estimator, spec, info = train_head(store, head, balance=balance, seed=seed, device=device,
                                           progress=progress, backbones=backbones, calibrate=calibrate,
                                           operating_point=operating_point, cv_run=cv_run)
        write_bundle_files(target.path, estimator, spec, info)
    return target.final


@accepts_store
def train_head(store: str | os.PathLike | FeatureStore, head: str, balance: str = "weight", seed: int = 0,
               device: str = "auto", progress: bool = True, backbones: str | Sequence[str] | None = None,
               calibrate: str | None = None, operating_point: str | dict[str, float] | None = None,
               cv_run: str | os.PathLike | None = None) -> tuple[Any, HeadSpec, dict[str, Any]]:
    """Fit ``head`` on all kept samples (view 0; ``balance="augment"`` adds minority-class stored views).

    ``store`` is a store's path (opened for the call, then closed) or an open ``FeatureStore``. A fusion head or
    baseline reads ``backbones`` (default: every stored backbone, in store order). Returns the fitted
    estimator, its spec and the bundle info (classes, provenance, training summary, the ``shift`` reference as a
    ``ShiftReference``, ``input_geometry``, and with ``cv_run`` the ``cv_estimate``): ``save_bundle`` writes them
    (``train_bundle`` does both). ``calibrate`` (``"sigmoid"``/``"isotonic"``) and ``operating_point``
    (``"sens=0.95"`` or ``{"spec": 0.9}``) wrap the head exactly as ``fit`` does, fitted on inner folds of these
    rows; the bundle keeps the rule and ``predict`` applies it.
    """
    target = parse_operating_point(operating_point) if isinstance(operating_point, str) else operating_point
    if calibrate is not None and calibrate not in METHODS:
        raise FusionfeatError(f"--calibrate {calibrate!r}: choose one of {', '.join(METHODS)}")
    if balance not in protocols.BALANCES:
        raise FusionfeatError(f"--balance {balance!r}: choose one of {', '.join(protocols.BALANCES)}")
    if not isinstance(head, str):
        raise FusionfeatError(f"train fits one head, named by a string (e.g. 'logreg'); got {type(head).__name__}")
    if "," in head or head == "all":
        raise FusionfeatError("`train` fits one head; name one, e.g. --head attention")
    if target and len(store.classes) != 2:
        raise FusionfeatError(f"--operating-point is for two classes; this store has {len(store.classes)} "
                              f"({', '.join(store.classes)}): leave it out (or merge to two with --classes)")
    (spec,) = resolve_heads(store, [head], backbones=backbones)
    cv_estimate = None if cv_run is None else run_estimate(cv_run, store, spec.name, balance, calibrate, target)
    kept = np.flatnonzero(store.ok)
    labels = store.labels
    if len(np.unique(labels[kept])) < 2:
        raise FusionfeatError(f"{store.path} holds a single class among usable images: nothing to learn")
    rows = protocols.Rows(kept, np.zeros(len(kept), dtype=np.int64))
    if balance == "augment":
        if store.n_views < 2:
            raise FusionfeatError("--balance augment needs stored views; re-extract with --views dihedral8")
        copies = protocols.minority_copies(labels, store.ok, store.n_views, seed, rows, np.arange(len(kept)))
        rows = protocols.Rows(np.concatenate([rows.sample, copies.sample]), np.concatenate([rows.view, copies.view]))
    X = rows_matrix(store, spec, rows)
    y = labels[rows.sample]
    blocks = head_blocks(store, spec)
    estimator = spec.build(blocks=blocks, class_weight="balanced" if balance == "weight" else None,
                           random_state=seed, device=device, progress=progress)
    if calibrate:
        estimator = CalibratedHead(estimator, method=calibrate, random_state=seed)
    if target:
        estimator = InnerOperatingPoint(estimator, positive=store.classes.index(store.positive_class),
                                        random_state=seed, **target)
    # the inner splits (torch heads' early stopping, the SVM's sigmoid) group by subject, else by source image,
    # as in cross_validate: a copy (--balance augment) never validates its own image
    groups = protocols.image_groups(np.asarray(store.groups).astype(str)[rows.sample], rows.sample)
    with head_threads():  # 1 CPU thread unless the caller chose (train --threads)
        fit_estimator(estimator, X, y, groups)
    counts = np.bincount(labels[kept], minlength=len(store.classes))
    info = {
        "classes": list(store.classes),
        "positive": store.positive_class or "",  # "" for more than two classes (the reader gives None)
        "backbones": {b: store.attrs(b) for b in spec.backbones},
        "store": str(store.path),
        "store_created": store.root_attrs().get("created", ""),
        "training": {"n_images": int(len(kept)), "n_rows": int(len(rows)), "balance": balance, "seed": seed,
                     "per_class": {c: int(n) for c, n in zip(store.classes, counts, strict=True)}},
        "versions": software_versions(),
        "shift": shift_reference(store, spec, kept, seed),
        "input_geometry": store_geometry(store, kept),
    }
    if hasattr(store, "class_selection"):  # trained through --classes (fusionfeat.store.selection)
        info["class_selection"] = store.class_selection()
    if cv_estimate is not None:
        info["cv_estimate"] = cv_estimate
    return estimator, spec, info


def shift_reference(store: FeatureStore, spec: HeadSpec, kept: np.ndarray, seed: int = 0) -> ShiftReference | None:
    """The training images' feature reference for shift warnings (``fusionfeat.stats.shift``): their pooled
    vectors (view 0) of the head's backbones, concatenated; folds by subject when subjects are known. None for
    fewer than ``MIN_IMAGES`` images, too few to place a 99th percentile."""
    if len(kept) < MIN_IMAGES:
        return None
    X = np.hstack([np.asarray(store.pooled(b, view=0, index=kept), dtype=np.float64) for b in spec.backbones])
    return fit_reference(X, np.asarray(store.groups).astype(str)[kept], seed=seed)


def store_geometry(store: FeatureStore, kept: np.ndarray) -> dict[str, Any] | None:
    """The training images' size, mode and padding: recorded by ``extract``, else read from a sample of the
    store's images where they still are (None when they are gone)."""
    recorded = store.root_attrs().get("input_geometry")
    if isinstance(recorded, dict):
        return recorded
    root = Path(store.data_root)
    paths = [root / str(p) for p in np.asarray(store.paths).astype(str)[kept]]
    return geometry_summary(paths)


def run_estimate(run: str | os.PathLike, store: FeatureStore, head: str, balance: str, calibrate: str | None,
                 target: dict[str, float] | None) -> dict[str, Any]:
    """The cross-validated estimate of ``head`` from a ``fit`` run folder, refused in one line unless the run
    fitted the same head, the same way, on this store."""
    from fusionfeat.evaluation.external import cv_estimate
    from fusionfeat.report.run import load_run

    data = load_run(run)
    where = f"--cv-run {run}"
    if head not in data["heads"]:
        raise FusionfeatError(f"{where} did not fit head {head!r} (it has {', '.join(data['heads'])}); pass a run "
                              f"of `fusionfeat fit {store.path} --head {head}`")
    prov = data["provenance"]
    if str(prov.get("created", "")) != str(store.root_attrs().get("created", "")) \
            or prov.get("n_samples") != store.n_samples:
        raise FusionfeatError(f"{where} was fitted on the store {prov.get('store') or '?'} (extracted "
                              f"{prov.get('created') or '?'}), not on {store.path}; fit the head on this store")
    our_selection = store.class_selection() if hasattr(store, "class_selection") else None  # store.selection
    run_selection = prov.get("class_selection")
    if _selection_of(run_selection) != _selection_of(our_selection):
        raise FusionfeatError(f"{where} used {_selection_text(run_selection)}, this training "
                              f"{_selection_text(our_selection)}: its "
                              "estimate is not of these classes; fit the head with the same --classes")
    options = data.get("options") or {}
    wanted = {"balance": (data["protocol"].get("balance"), balance),
              "calibrate": (options.get("calibrate"), calibrate),
              "operating point": (_target_of(options.get("operating_point")), target or None)}
    for name, (theirs, ours) in wanted.items():
        if theirs != ours:
            raise FusionfeatError(f"{where} used {name} {theirs!r}, this training {ours!r}: its estimate is not of "
                                  "this model; fit the head with the same options")
    params = options.get("head_params") or {}
    if params.get(head) or params.get("*"):
        raise FusionfeatError(f"{where} set head parameters ({params}), which `train` does not; its estimate is "
                              "not of this model")
    if data.get("features", "frozen") != "frozen":
        raise FusionfeatError(f"{where} scored fine-tuned features; a bundle reads the frozen ones")
    return {"run": str(Path(run).resolve()), **cv_estimate(data, head)}


def _selection_of(record: dict[str, Any] | None) -> tuple | None:
    """What makes two class selections the same task: the new classes in order and every store class's new one
    (the spec's spelling and case do not matter)."""
    if not record:
        return None
    mapping = record.get("mapping") or {}
    return tuple(record.get("classes") or ()), tuple(sorted((str(k), v) for k, v in mapping.items()))


def _selection_text(record: dict[str, Any] | None) -> str:
    return f"--classes {record.get('spec', '')!r}" if record else "the store's own classes (no --classes)"


def _target_of(text: Any) -> dict[str, float] | None:
    return parse_operating_point(str(text)) if text else None
