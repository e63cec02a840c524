"""Score a trained bundle on a labelled external set: ``fusionfeat evaluate BUNDLE DATA -o DIR``.

DATA is any layout ``extract`` reads (the bundle embeds its images with its own recorded backbones, weights and
preprocessing, as ``predict`` does) or a feature store extracted with the bundle's settings (checked). The run
folder holds what ``fit`` writes for a run (``metrics.json``, ``predictions.csv``, ``subjects.csv`` when
subjects are known, ``report.md``, figures), computed by the same evidence code
(``fusionfeat.evaluation.external``), beside the bundle's own cross-validated estimate when it keeps one
(``train --cv-run``), and the shift of the external images from the training features. A bundle of more than two
classes gets the K-class evidence of ``fit`` (``fusionfeat.evaluation.multiclass_evidence``). A bundle trained
with ``--classes`` reads DATA's labels through the same mapping: images of classes it left out are left out here
too (and counted), labels it does not know are refused.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from fusionfeat import runtime
from fusionfeat.bundle import Bundle, as_bundle
from fusionfeat.data.geometry import geometry_note, geometry_summary
from fusionfeat.data.manifest import build_manifest
from fusionfeat.engines.extract import iter_embeddings
from fusionfeat.errors import DatasetError, FusionfeatError, FusionfeatWarning, ImageDecodeError
from fusionfeat.evaluation.external import compare_to_cv, external_multiclass_result, external_result
from fusionfeat.fsio import RUN, check_output, csv_writer, dumps_json, output_target
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
from fusionfeat.report.external import render_evaluation, render_multiclass_evaluation
from fusionfeat.report.multiclass_plots import write_multiclass_plots
from fusionfeat.report.multiclass_run import multiclass_run_json, write_multiclass_subjects
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
    labels: list[str]  # true class names (the bundle's: through its --classes mapping when it has one)
    groups: list[str]  # subject ids ("" unknown)
    proba: np.ndarray  # two classes: P(positive) (n,); more: P of every class (n, K), the bundle's class order
    predicted: list[str]  # the class the bundle's decision rule chose
    shift: np.ndarray  # distance from the training features (NaN without a reference)
    source: dict[str, Any]  # what DATA was: layout, root or store
    left_out: dict[str, int] = field(default_factory=dict)  # DATA's label -> images of classes --classes left out


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
    """DATA's manifest. Its class order does not matter (labels are matched by name), so a layout that wants a
    positive class for two labels gets the bundle's (two classes, no ``--classes``) or, failing that, the first
    of the names the bundle maps that the data holds."""
    binary = len(bundle.classes) == 2 and not bundle.info.get("class_selection")
    # a binary bundle tries its positive class first, then none: DATA with other or more labels still builds, and
    # map_labels then names the labels the bundle does not know in one line
    tries: list[str | None] = [bundle.positive, None] if binary else [None, *label_map(bundle)]
    first: DatasetError | None = None
    for positive in tries:
        try:
            return build_manifest(data, layout, positive=positive)
        except DatasetError as exc:
            first = first or exc
    raise DatasetError(f"{first} (evaluate scores labelled images; `fusionfeat predict` labels unlabelled "
                       "ones)") from None


def label_map(bundle: Bundle) -> dict[str, str | None]:
    """DATA's label (lower case) -> the bundle's class it counts as, None for a class its ``--classes`` left
    out; without ``--classes``, each of the bundle's classes as itself."""
    selection = bundle.info.get("class_selection")
    if selection:
        return {str(old).lower(): (None if new is None else str(new))
                for old, new in (selection.get("mapping") or {}).items()}
    return {c.lower(): c for c in bundle.classes}


def map_labels(bundle: Bundle, names: Sequence[str], where: str) -> list[str | None]:
    """The bundle's class of every DATA label (case-insensitive; None: left out by the bundle's ``--classes``);
    labels the bundle does not know are refused in one line."""
    known = label_map(bundle)
    unknown = sorted({str(n) for n in names if str(n).lower() not in known})
    if unknown:
        selection = bundle.info.get("class_selection")
        how = (f" (its --classes {selection.get('spec', '')!r} maps {', '.join(sorted(known))})" if selection
               else "")
        raise FusionfeatError(f"{where} has labels {', '.join(unknown)} that are not among the bundle's classes "
                              f"({', '.join(bundle.classes)}){how}; evaluate it with a bundle trained on those "
                              "classes")
    return [known[str(n).lower()] for n in names]


def _left_out(names: Sequence[str], mapped: Sequence[str | None]) -> dict[str, int]:
    out: dict[str, int] = {}
    for name, new in zip(names, mapped, strict=True):
        if new is None:
            out[str(name)] = out.get(str(name), 0) + 1
    return out


def score_images(bundle: Bundle, data: Path, layout: str | None, weights: str | None, device: str,
                 precision: str | None, batch_size: int, workers: int | None, progress: bool) -> Scored:
    """Embed DATA's images with the bundle's backbones and score them."""
    manifest = _manifest(bundle, data, layout)
    names = [manifest.classes[s.label] for s in manifest.samples]
    mapped = map_labels(bundle, names, str(data))
    samples = [s for s, new in zip(manifest.samples, mapped, strict=True) if new is not None]
    if not samples:
        raise FusionfeatError(f"{data}: every image belongs to a class the bundle's --classes left out; nothing "
                              "to evaluate")
    files = [str(manifest.absolute(s)) for s in samples]
    models = bundle_backbones(bundle, weights)
    dev = resolve_device(device)
    prec = resolve_precision(precision or recorded_precision(bundle, dev), dev)
    estimator = bare_head(bundle.estimator)
    if hasattr(estimator, "device"):
        estimator.set_params(device=str(dev))
        estimator.module_.to(dev)
    batches = [list(range(i, min(len(files), i + batch_size))) for i in range(0, len(files), batch_size)]
    width = () if len(bundle.classes) == 2 else (len(bundle.classes),)
    proba, predicted, shift = np.full((len(files), *width), np.nan), [""] * len(files), np.full(len(files), np.nan)
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
    return Scored(paths=[s.path for s in samples], files=files, labels=[new for new in mapped if new is not None],
                  groups=[s.group for s in samples], proba=proba, predicted=predicted, shift=shift,
                  source={"kind": "images", "data_root": str(manifest.root.resolve()), "layout": manifest.layout},
                  left_out=_left_out(names, mapped))


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
    """Score the usable images of a store extracted with the bundle's settings (those of classes the bundle's
    ``--classes`` left out are left out)."""
    check_store_matches(bundle, store)
    usable = np.flatnonzero(store.ok)
    names = [str(store.classes[i]) for i in np.asarray(store.labels)[usable]]
    mapped = map_labels(bundle, names, str(store.path))
    kept = usable[[new is not None for new in mapped]]
    if not len(kept):
        raise FusionfeatError(f"{store.path}: every image belongs to a class the bundle's --classes left out; "
                              "nothing to evaluate")
    X = rows_matrix(store, bundle.spec, Rows(kept, np.zeros(len(kept), dtype=np.int64)))
    proba, predicted = predict_matrix(bundle, X)
    pooled = {b: (np.asarray(store.pooled(b, view=0, index=kept))[:, None], None) for b in bundle.spec.backbones}
    shift = shift_scores(bundle, pooled)
    paths = np.asarray(store.paths).astype(str)[kept].tolist()
    return Scored(paths=paths, files=[str(Path(store.data_root) / p) for p in paths],
                  labels=[new for new in mapped if new is not None],
                  groups=np.asarray(store.groups).astype(str)[kept].tolist(), proba=np.asarray(proba, dtype=float),
                  predicted=list(predicted), shift=np.asarray(shift, dtype=float),
                  source={"kind": "store", "store": str(store.path), "data_root": store.data_root,
                          "layout": str(store.root_attrs().get("layout", ""))},
                  left_out=_left_out(names, mapped))


def write_evaluation(bundle: Bundle, scored: Scored, out: Path, n_boot: int = 2000) -> dict[str, Any]:
    """Write metrics.json, predictions.csv, subjects.csv, report.md and the figures into ``out``."""
    if len(bundle.classes) > 2:
        return write_multiclass_evaluation(bundle, scored, out, n_boot)
    classes, positive = bundle.classes, bundle.positive
    head = bundle.spec.name
    rows, provenance, head_info = _evaluation_inputs(bundle, scored)
    training = bundle.info.get("training") or {}
    result = external_result(head, head_info, classes, positive, provenance, rows, scored.proba,
                             np.asarray([c == positive for c in scored.predicted], dtype=float),
                             int(training.get("n_images", 0)))
    data = run_json(result, n_boot=n_boot)
    data["decision_rule"] = f"the bundle's: {describe_rule(bundle.info.get('decision_rule'))}"
    data["external"] = external_record(bundle, scored, data["heads"][head]["uncertainty"])
    data["plots"] = write_plots(data, out, run_bands(result, n_boot=n_boot))
    (out / METRICS_FILE).write_text(dumps_json(data), encoding="utf-8")
    write_external_predictions(bundle, scored, out / PREDICTIONS_FILE)
    if (data.get("subjects") or {}).get("heads"):
        write_subjects(data["subjects"], out / SUBJECTS_FILE)
    (out / REPORT_FILE).write_text(render_evaluation(data), encoding="utf-8")
    return data


def write_multiclass_evaluation(bundle: Bundle, scored: Scored, out: Path, n_boot: int = 2000) -> dict[str, Any]:
    """The K-class (K > 2) run folder: the statistics, tables and figures of a K-class ``fit`` run
    (``multiclass_run_json``) on the one external "fold", beside the bundle's CV estimate."""
    head = bundle.spec.name
    P = np.asarray(scored.proba, dtype=np.float64)
    scored = replace(scored, proba=P / P.sum(axis=1, keepdims=True))  # rows sum to 1 in float64, as fit's do
    rows, provenance, head_info = _evaluation_inputs(bundle, scored)
    training = bundle.info.get("training") or {}
    result = external_multiclass_result(head, head_info, bundle.classes, provenance, rows, scored.proba,
                                        int(training.get("n_images", 0)))
    data = multiclass_run_json(result, n_boot=n_boot)
    data["decision_rule"] = f"the bundle's: {describe_rule(bundle.info.get('decision_rule'), len(bundle.classes))}"
    data["external"] = external_record(bundle, scored, data["heads"][head]["uncertainty"])
    data["plots"] = write_multiclass_plots(data, out, rows="external set")
    (out / METRICS_FILE).write_text(dumps_json(data), encoding="utf-8")
    write_external_predictions(bundle, scored, out / PREDICTIONS_FILE)
    if (data.get("subjects") or {}).get("heads"):
        write_multiclass_subjects(data["subjects"], data["classes"], out / SUBJECTS_FILE)
    (out / REPORT_FILE).write_text(render_multiclass_evaluation(data), encoding="utf-8")
    return data


def _evaluation_inputs(bundle: Bundle, scored: Scored) -> tuple[dict[str, np.ndarray], dict[str, Any],
                                                                  dict[str, Any]]:
    """The evaluation rows (labels as indices of the bundle's classes), the provenance and the head's info."""
    classes = bundle.classes
    n = len(scored.paths)
    rows = {"sample": np.arange(n), "view": np.zeros(n, dtype=np.int64), "path": np.asarray(scored.paths, dtype=str),
            "label": np.asarray([classes.index(c) for c in scored.labels], dtype=np.int64),
            "group": np.asarray(scored.groups, dtype=str)}
    provenance = {"store": bundle.info.get("store", ""), "data_root": scored.source.get("data_root", ""),
                  "layout": scored.source.get("layout", ""), "created": bundle.info.get("store_created", ""),
                  "versions": bundle.info.get("versions", {}), "n_samples": n, "n_skipped": 0,
                  "classes": classes, "positive_class": bundle.positive,
                  "backbones": {b: bundle.backbone_provenance(b) for b in bundle.spec.backbones}}
    head_info = {"backbones": list(bundle.spec.backbones), "inputs": bundle.spec.inputs,
                 "is_torch": bool(bundle.spec.is_torch)}
    return rows, provenance, head_info


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
        "class_selection": bundle.info.get("class_selection"),
        "left_out": dict(scored.left_out),
    }


def write_external_predictions(bundle: Bundle, scored: Scored, path: Path) -> None:
    """One line per external image: path, subject, true label, P(positive) (more than two classes: ``p_<class>``
    for every class, in the bundle's order), predicted label, shift; probabilities at full precision."""
    threshold = bundle.shift.threshold if bundle.shift is not None else math.nan
    k = len(bundle.classes)
    columns = [f"p_{bundle.positive}"] if k == 2 else [f"p_{c}" for c in bundle.classes]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv_writer(fh)
        writer.writerow(["path", "group", "label", *columns, "predicted", "shift_score", "beyond_p99"])
        for i, name in enumerate(scored.paths):
            d = float(scored.shift[i])
            probs = [scored.proba[i]] if k == 2 else scored.proba[i]
            writer.writerow([name, scored.groups[i], scored.labels[i], *(repr(float(p)) for p in probs),
                             scored.predicted[i], "" if math.isnan(d) else f"{d:.4f}",
                             "" if math.isnan(d) else str(d > threshold).lower()])
