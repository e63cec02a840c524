"""Score a trained bundle on a labelled external set: ``fusionfeat evaluate BUNDLE DATA -o DIR``.

DATA is any layout ``extract`` reads (the bundle embeds its images with its own recorded backbones, weights and
preprocessing, as ``predict`` does) or a feature store extracted with the bundle's settings (checked). The run
folder holds what ``fit`` writes for a run (``metrics.json``, ``predictions.csv``, ``subjects.csv`` when
subjects are known, ``report.md``, figures), computed by the same evidence code
(``fusionfeat.evaluation.external``), beside the bundle's own cross-validated estimate when it keeps one
(``train --cv-run``), and the shift of the external images from the training features.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusionfeat import runtime
from fusionfeat.bundle import Bundle, as_bundle
from fusionfeat.data.geometry import geometry_note, geometry_summary
from fusionfeat.data.manifest import build_manifest
from fusionfeat.engines.extract import iter_embeddings
from fusionfeat.errors import DatasetError, FusionfeatError, FusionfeatWarning, ImageDecodeError
from fusionfeat.evaluation.external import compare_to_cv, external_result
from fusionfeat.fsio import RUN, check_output, dumps_json, output_target
from fusionfeat.heads.decision_rule import bare_head, describe_rule
from fusionfeat.heads.inputs import rows_matrix
from fusionfeat.predict import (
    bundle_backbones,
    bundle_preprocess,
    predict_matrix,
    predict_rows,
    recorded_precision,
    shift_scores,
    token_grid_of,
)
from fusionfeat.protocols import Rows
from fusionfeat.report.external import render_evaluation
from fusionfeat.report.plots import write_plots
from fusionfeat.report.roc_bands import run_bands
from fusionfeat.report.run import METRICS_FILE, PREDICTIONS_FILE, REPORT_FILE, SUBJECTS_FILE, run_json, write_subjects
from fusionfeat.runtime import resolve_device, resolve_precision
from fusionfeat.stats.shift import shift_share, shift_warning
from fusionfeat.store import FeatureStore
from fusionfeat.store.reader import is_own_store

MATCHED = ("weights_sha256", "input_size", "normalization", "fill", "mean", "std", "pooled_dim", "token_grid")


@dataclass
class Scored:
    """The external images as the bundle scored them, in DATA's order."""

    paths: list[str]  # as the data lists them (relative to its root)
    files: list[str]  # where they are now (for the geometry)
    labels: list[str]  # true class names
    groups: list[str]  # subject ids ("" unknown)
    proba: np.ndarray  # P(positive)
    predicted: list[str]  # the class the bundle's decision rule chose
    shift: np.ndarray  # distance from the training features (NaN without a reference)
    source: dict[str, Any]  # what DATA was: layout, root or store


def evaluate_bundle(bundle: str | os.PathLike | Bundle, data: str | os.PathLike, out: str | os.PathLike,
                    layout: str | None = None, weights: str | None = None, device: str = "auto",
                    precision: str | None = None, batch_size: int = 32, workers: int | None = None,
                    progress: bool = True, overwrite: bool = False, n_boot: int = 2000,
                    inputs: Sequence[str | os.PathLike] = ()) -> Path:
    """Score ``bundle`` on the labelled ``data`` and write a run folder at ``out`` (the output rule of
    ``fusionfeat.fsio``, as ``fit``: a previous run folder is replaced only with ``overwrite``)."""
    if batch_size < 1:
        raise FusionfeatError(f"--batch-size {batch_size}: give 1 or more")
    check_output(out, RUN, inputs=[*inputs, data], overwrite=overwrite)
    bundle = as_bundle(bundle)
    path = Path(data).expanduser()
    if path.is_file() and is_own_store(path):
        with FeatureStore.open(path) as store:
            scored = score_store(bundle, store)
    else:
        scored = score_images(bundle, path, layout, weights, device, precision, batch_size, workers, progress)
    with output_target(out, RUN, inputs=[*inputs, data], overwrite=overwrite) as target:
        write_evaluation(bundle, scored, target.path, n_boot)
    return target.final


def _manifest(bundle: Bundle, data: Path, layout: str | None) -> Any:
    try:
        manifest = build_manifest(data, layout, positive=bundle.positive)
    except DatasetError as exc:
        raise DatasetError(f"{exc} (evaluate scores labelled images; `fusionfeat predict` labels unlabelled "
                           "ones)") from None
    check_classes(bundle, list(manifest.classes), str(data))
    return manifest


def check_classes(bundle: Bundle, classes: Sequence[str], where: str) -> None:
    """Refuse labels the bundle does not know (one line)."""
    unknown = sorted(set(map(str, classes)) - set(bundle.classes))
    if unknown:
        raise FusionfeatError(f"{where} has labels {', '.join(unknown)} that are not among the bundle's classes "
                              f"({', '.join(bundle.classes)}); evaluate it with a bundle trained on those classes")


def score_images(bundle: Bundle, data: Path, layout: str | None, weights: str | None, device: str,
                 precision: str | None, batch_size: int, workers: int | None, progress: bool) -> Scored:
    """Embed DATA's images with the bundle's backbones and score them."""
    manifest = _manifest(bundle, data, layout)
    files = [str(manifest.absolute(s)) for s in manifest.samples]
    models = bundle_backbones(bundle, weights)
    dev = resolve_device(device)
    prec = resolve_precision(precision or recorded_precision(bundle, dev), dev)
    estimator = bare_head(bundle.estimator)
    if hasattr(estimator, "device"):
        estimator.set_params(device=str(dev))
        estimator.module_.to(dev)
    batches = [list(range(i, min(len(files), i + batch_size))) for i in range(0, len(files), batch_size)]
    proba, predicted, shift = np.full(len(files), np.nan), [""] * len(files), np.full(len(files), np.nan)
    bar = runtime.progress(len(files), progress, "evaluate")
    try:
        for rows, arrays, _, errors in iter_embeddings(files, batches, models, bundle_preprocess(bundle), dev, prec,
                                                       workers, keep_tokens=bundle.spec.inputs == "tokens",
                                                       token_grid=token_grid_of(bundle)):
            bad = [i for i, e in enumerate(errors) if e]
            if bad:
                raise ImageDecodeError(files[rows[bad[0]]], f"{errors[bad[0]]}; evaluate scores every image, remove "
                                       "or fix it")
            p, labels = predict_rows(bundle, arrays)
            proba[rows], shift[rows] = p, shift_scores(bundle, arrays)
            for row, label in zip(rows, labels, strict=True):
                predicted[row] = label
            bar.update(len(rows))
    finally:
        bar.close()
    return Scored(paths=[s.path for s in manifest.samples], files=files,
                  labels=[manifest.classes[s.label] for s in manifest.samples],
                  groups=[s.group for s in manifest.samples], proba=proba, predicted=predicted, shift=shift,
                  source={"kind": "images", "data_root": str(manifest.root.resolve()), "layout": manifest.layout})


def check_store_matches(bundle: Bundle, store: FeatureStore) -> None:
    """The store holds the head's backbones extracted as the bundle's training store was (one line otherwise)."""
    for name in bundle.spec.backbones:
        if name not in store.backbones:
            raise FusionfeatError(f"{store.path} lacks {name}, which the bundle's head reads; extract DATA with the "
                                  "bundle's settings, or pass the image folder and let the bundle embed it")
        theirs, ours = store.attrs(name), bundle.backbone_provenance(name)
        for key in MATCHED:
            if key in ours and _plain(theirs.get(key)) != _plain(ours[key]):
                raise FusionfeatError(f"{store.path}: {name} {key} {theirs.get(key)!r} differs from the bundle's "
                                      f"{ours[key]!r}; extract DATA with the bundle's settings, or pass the image "
                                      "folder and let the bundle embed it")


def _plain(value: Any) -> Any:
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def score_store(bundle: Bundle, store: FeatureStore) -> Scored:
    """Score the usable images of a store extracted with the bundle's settings."""
    check_store_matches(bundle, store)
    check_classes(bundle, list(store.classes), str(store.path))
    kept = np.flatnonzero(store.ok)
    X = rows_matrix(store, bundle.spec, Rows(kept, np.zeros(len(kept), dtype=np.int64)))
    proba, predicted = predict_matrix(bundle, X)
    pooled = {b: (np.asarray(store.pooled(b, view=0, index=kept))[:, None], None) for b in bundle.spec.backbones}
    shift = shift_scores(bundle, pooled)
    paths = np.asarray(store.paths).astype(str)[kept].tolist()
    return Scored(paths=paths, files=[str(Path(store.data_root) / p) for p in paths],
                  labels=[str(store.classes[i]) for i in np.asarray(store.labels)[kept]],
                  groups=np.asarray(store.groups).astype(str)[kept].tolist(), proba=np.asarray(proba, dtype=float),
                  predicted=list(predicted), shift=np.asarray(shift, dtype=float),
                  source={"kind": "store", "store": str(store.path), "data_root": store.data_root,
                          "layout": str(store.root_attrs().get("layout", ""))})


def write_evaluation(bundle: Bundle, scored: Scored, out: Path, n_boot: int = 2000) -> dict[str, Any]:
    """Write metrics.json, predictions.csv, subjects.csv, report.md and the figures into ``out``."""
    classes, positive = bundle.classes, bundle.positive
    head = bundle.spec.name
    n = len(scored.paths)
    rows = {"sample": np.arange(n), "view": np.zeros(n, dtype=np.int64), "path": np.asarray(scored.paths, dtype=str),
            "label": np.asarray([classes.index(c) for c in scored.labels], dtype=np.int64),
            "group": np.asarray(scored.groups, dtype=str)}
    training = bundle.info.get("training") or {}
    provenance = {"store": bundle.info.get("store", ""), "data_root": scored.source.get("data_root", ""),
                  "layout": scored.source.get("layout", ""), "created": bundle.info.get("store_created", ""),
                  "versions": bundle.info.get("versions", {}), "n_samples": n, "n_skipped": 0,
                  "classes": classes, "positive_class": positive,
                  "backbones": {b: bundle.backbone_provenance(b) for b in bundle.spec.backbones}}
    head_info = {"backbones": list(bundle.spec.backbones), "inputs": bundle.spec.inputs,
                 "is_torch": bool(bundle.spec.is_torch)}
    result = external_result(head, head_info, classes, positive, provenance, rows, scored.proba,
                             np.asarray([c == positive for c in scored.predicted], dtype=float),
                             int(training.get("n_images", 0)))
    data = run_json(result, n_boot=n_boot)
    data["decision_rule"] = f"the bundle's: {describe_rule(bundle.info.get('decision_rule'))}"
    data["external"] = external_record(bundle, scored, data["heads"][head]["uncertainty"])
    data["plots"] = write_plots(data, out, run_bands(result, n_boot=n_boot))
    (out / METRICS_FILE).write_text(dumps_json(data))
    write_external_predictions(bundle, scored, out / PREDICTIONS_FILE)
    if (data.get("subjects") or {}).get("heads"):
        write_subjects(data["subjects"], out / SUBJECTS_FILE)
    (out / REPORT_FILE).write_text(render_evaluation(data))
    return data


def external_record(bundle: Bundle, scored: Scored, uncertainty: dict[str, Any]) -> dict[str, Any]:
    """What ``metrics.json`` says about the bundle, the data, the CV estimate and the shift (warning as it goes)."""
    note = geometry_note(bundle.info.get("input_geometry"), geometry_summary(scored.files))
    if note:
        warnings.warn(note, FusionfeatWarning, stacklevel=3)
    shift = None
    if bundle.shift is not None:
        shift = {**bundle.shift.summary(), **shift_share(scored.shift, bundle.shift.threshold)}
        message = shift_warning(shift)
        shift["warning"] = message
        if message:
            warnings.warn(message, FusionfeatWarning, stacklevel=3)
    cv = bundle.info.get("cv_estimate")
    return {
        "head": bundle.spec.name,
        "bundle_created": bundle.info.get("created", ""),
        "training": bundle.info.get("training") or {},
        "training_store": bundle.info.get("store", ""),
        "decision_rule": bool(bundle.info.get("decision_rule")),
        "source": scored.source,
        "cv_estimate": cv,
        "versus_cv": compare_to_cv(cv, uncertainty),
        "shift": shift,
        "geometry_note": note,
        "input_geometry": bundle.info.get("input_geometry"),
    }


def write_external_predictions(bundle: Bundle, scored: Scored, path: Path) -> None:
    """One line per external image: path, subject, true label, P(positive), predicted label, shift."""
    threshold = bundle.shift.threshold if bundle.shift is not None else math.nan
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "group", "label", f"p_{bundle.positive}", "predicted", "shift_score", "beyond_p99"])
        for i, name in enumerate(scored.paths):
            d = float(scored.shift[i])
            writer.writerow([name, scored.groups[i], scored.labels[i], repr(float(scored.proba[i])),
                             scored.predicted[i], "" if math.isnan(d) else f"{d:.4f}",
                             "" if math.isnan(d) else str(d > threshold).lower()])
