"""Fit one head on every usable sample of a store, for a bundle that labels new images."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fusionfeat import protocols
from fusionfeat.bundle import write_bundle_files
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
from fusionfeat.store import FeatureStore
from fusionfeat.store.reader import accepts_store


def train_bundle(store: str | os.PathLike | FeatureStore, head: str, out: str | os.PathLike,
                 balance: str = "weight", seed: int = 0, device: str = "auto", progress: bool = True,
                 backbones: str | Sequence[str] | None = None, overwrite: bool = False,
                 calibrate: str | None = None, operating_point: str | dict[str, float] | None = None) -> Path:
    """``fusionfeat train`` in Python: fit ``head`` on every usable sample and save it as a bundle at ``out``.

    ``out`` follows the output rule (checked before any fitting; an existing bundle is replaced only with
    ``overwrite``). Returns the bundle's folder, which ``load_bundle`` and ``predict_images`` take.
    """
    source = store if isinstance(store, (str, os.PathLike)) else getattr(store, "path", None)
    with output_target(out, BUNDLE, inputs=[source] if source is not None else [], overwrite=overwrite) as target:
        estimator, spec, info = train_head(store, head, balance=balance, seed=seed, device=device,
                                           progress=progress, backbones=backbones, calibrate=calibrate,
                                           operating_point=operating_point)
        write_bundle_files(target.path, estimator, spec, info)
    return target.final


@accepts_store
def train_head(store: str | os.PathLike | FeatureStore, head: str, balance: str = "weight", seed: int = 0,
               device: str = "auto", progress: bool = True, backbones: str | Sequence[str] | None = None,
               calibrate: str | None = None, operating_point: str | dict[str, float] | None = None,
               ) -> tuple[Any, HeadSpec, dict[str, Any]]:
    """Fit ``head`` on all kept samples (view 0; ``balance="augment"`` adds minority-class stored views).

    ``store`` is a store's path (opened for the call, then closed) or an open ``FeatureStore``. A fusion head or
    baseline reads ``backbones`` (default: every stored backbone, in store order). Returns the fitted
    estimator, its spec and the bundle info (classes, provenance, training summary): ``save_bundle`` writes
    them (``train_bundle`` does both). ``calibrate`` (``"sigmoid"``/``"isotonic"``) and ``operating_point``
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
    }
    if hasattr(store, "class_selection"):  # trained through --classes (fusionfeat.store.selection)
        info["class_selection"] = store.class_selection()
    return estimator, spec, info
