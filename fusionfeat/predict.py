"""Label new images with a bundle: same backbones, same weights, same preprocessing as its training store."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fusionfeat import runtime
from fusionfeat.bundle import Bundle, as_bundle, trunk_fingerprint
from fusionfeat.data.geometry import geometry_note, geometry_summary
from fusionfeat.data.images import Preprocess
from fusionfeat.data.manifest import IMAGE_SUFFIXES
from fusionfeat.encoders import RANDOM, LoadedBackbone, WeightsChoice, load_backbone, parse_weights
from fusionfeat.engines.extract import iter_embeddings
from fusionfeat.errors import FusionfeatError, FusionfeatWarning, ImageDecodeError, WeightsError
from fusionfeat.fsio import CSV, check_output, csv_writer, output_target
from fusionfeat.heads.decision_rule import bare_head
from fusionfeat.heads.inputs import embedding_matrix
from fusionfeat.runtime import resolve_device, resolve_precision
from fusionfeat.stats.shift import shift_share, shift_warning


def collect_images(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named directly, or found recursively in folders (sorted); clear errors otherwise."""
    found: list[Path] = []
    for item in inputs:
        path = Path(item).expanduser()
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES))
        elif path.is_file():
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                raise FusionfeatError(f"{path} is not an image file ({', '.join(IMAGE_SUFFIXES)} expected)")
            found.append(path)
        else:
            raise FusionfeatError(f"no such file or folder: {path}")
    if not found:
        raise FusionfeatError(f"no images ({', '.join(IMAGE_SUFFIXES)}) found in {', '.join(map(str, inputs))}")
    for path in found:
        try:
            str(path).encode("utf-8")
        except UnicodeEncodeError:
            shown = os.fsencode(path).decode("utf-8", "backslashreplace")
            raise FusionfeatError(f"the file name {shown!r} is not valid UTF-8, so it cannot be written to the "
                                  "CSV; rename it (e.g. `convmv -f latin1 -t utf8`)") from None
    return list(dict.fromkeys(found))


def bundle_backbones(bundle: Bundle, weights: str | None = None) -> list[LoadedBackbone]:
    """Load the bundle's backbones with the weights it was trained on; refuse anything else.

    ``weights`` (same syntax as ``extract --weights``) points at files when they moved; their SHA-256
    must still match the bundle's record.
    """
    names = list(bundle.spec.backbones)
    override = {b: str(w) for b, w in parse_weights(weights, names).items()} if weights else {}
    models = []
    for name in names:
        prov = bundle.backbone_provenance(name)
        model = load_backbone(name, WeightsChoice.from_provenance(name, prov, override.get(name)))
        if prov["weights_kind"] == RANDOM:
            check_fingerprint(bundle, name, model)
        if model.weights_sha256 != prov["weights_sha256"]:
            raise WeightsError(
                f"{name} weights {model.weights} (sha256 {model.weights_sha256[:12]}…) differ from the ones the "
                f"bundle was trained on ({prov['weights']}, sha256 {prov['weights_sha256'][:12]}…); refusing"
            )
        models.append(model)
    return models


def check_fingerprint(bundle: Bundle, name: str, model: LoadedBackbone) -> None:
    """A random-weights backbone must be the very trunk the bundle was trained on (seed and fingerprint)."""
    recorded = bundle.backbone_provenance(name).get("trunk_fingerprint")
    if recorded is None:
        if int(bundle.info.get("format_version", 1)) >= 2:
            raise WeightsError(f"the bundle's {name} uses random weights but records no trunk fingerprint; "
                               "the bundle is damaged, retrain it")
        return
    if trunk_fingerprint(model.trunk) != recorded:
        raise WeightsError(f"the bundle's {name} random weights (seed {model.seed}) do not match its recorded "
                           "trunk fingerprint: bundle.json was edited or torch initialises differently; refusing")


def bundle_preprocess(bundle: Bundle) -> Preprocess:
    """The bundle's training store's preprocessing, one view per image."""
    return replace(Preprocess.from_attrs(bundle.backbone_provenance(bundle.spec.backbones[0])), views="1")


class PredictionSummary(dict):
    """What ``predict_images`` returns: counts per predicted label (and ``"error"``), as a dict, plus the CSV it
    wrote (``path``) and its rows: ``to_frame()`` gives them as a pandas DataFrame."""

    def __init__(self, counts: dict[str, int], path: Path, positive: str, records: list[tuple],
                 columns: Sequence[str] | None = None, shift_scores: list[float] | None = None,
                 shift: dict[str, Any] | None = None):
        super().__init__(counts)
        self.path = path
        self.positive = positive
        self.records = records
        self.columns = list(columns) if columns is not None else ["path", f"p_{positive}", "label", "error"]
        self.shift_scores = shift_scores if shift_scores is not None else [math.nan] * len(records)
        self.shift = shift  # shift_share's summary (None: the bundle keeps no reference)

    def to_frame(self) -> Any:
        """One row per image, as in the CSV: path, ``p_<positive>`` (two classes) or ``p_<class>`` for every class
        (NaN for an unreadable image), the predicted class (``label``; ``predicted`` for more than two classes; ""
        when unreadable), error ("" unless the image could not be read), ``shift_score`` (distance from the
        training features, NaN without a reference) and ``beyond_p99``."""
        import pandas as pd

        frame = pd.DataFrame(self.records, columns=self.columns)
        frame["shift_score"] = self.shift_scores
        threshold = (self.shift or {}).get("threshold", math.nan)
        frame["beyond_p99"] = [bool(s > threshold) for s in self.shift_scores]
        return frame


def csv_columns(bundle: Bundle) -> list[str]:
    """The predictions' columns before the shift columns: ``path,p_<positive>,label,error`` for two classes,
    else ``path,p_<class>…,predicted,error`` with one probability column per class in the bundle's order."""
    if len(bundle.classes) == 2:
        return ["path", f"p_{bundle.positive}", "label", "error"]
    return ["path", *(f"p_{c}" for c in bundle.classes), "predicted", "error"]


def image_list(images: str | os.PathLike | Sequence[str | os.PathLike]) -> list[str | os.PathLike]:
    """The images argument of the API as a list of files and folders: one path, or a list of them."""
    if isinstance(images, (str, os.PathLike)):
        return [images]
    if isinstance(images, (list, tuple)) and all(isinstance(i, (str, os.PathLike)) for i in images):
        if not images:
            raise FusionfeatError("no images given: name image files or folders")
        return list(images)
    raise FusionfeatError(f"expected images as a file or folder path, or a list of them; got {type(images).__name__}")


def predict_images(bundle: str | os.PathLike | Bundle, images: str | os.PathLike | Sequence[str | os.PathLike],
                   out: str | os.PathLike, weights: str | None = None,
                   device: str = "auto", precision: str | None = None, batch_size: int = 32,
                   workers: int | None = None, on_error: str = "fail", progress: bool = True,
                   overwrite: bool = False, inputs: Sequence[str | os.PathLike] = ()) -> PredictionSummary:
    """Write ``path,p_<positive>,label[,error]`` for every image (more than two classes: ``path,p_<class>…,
    predicted[,error]``); returns counts per predicted label.

    ``bundle`` is a bundle folder's path or a loaded ``Bundle``; ``images`` an image file or folder (searched
    recursively), or a list of them. The result is a dict of counts whose ``to_frame()`` gives the rows.
    ``out`` follows the output rule (``fusionfeat.fsio``): it may not be or be inside an image or a folder in
    ``inputs``/``images``, an existing file is replaced only with ``overwrite``, and it appears atomically.
    """
    if batch_size < 1:
        raise FusionfeatError(f"--batch-size {batch_size}: give 1 or more")
    items = image_list(images)
    check_output(out, CSV, inputs=[*inputs, *items], overwrite=overwrite)  # as `predict` does: output, images,
    paths = collect_images(items)                                           # bundle, then the work
    bundle = as_bundle(bundle)
    with output_target(out, CSV, inputs=[*inputs, *items], overwrite=overwrite) as target:
        models = bundle_backbones(bundle, weights)
        counts, records, scores = _write_predictions(bundle, paths, target.path, models, device, precision,
                                                     batch_size, workers, on_error, progress)
    shift = warn_shift(bundle, scores, paths)
    return PredictionSummary(counts, target.final, bundle.positive, records, csv_columns(bundle), scores, shift)


def warn_shift(bundle: Bundle, scores: Sequence[float], images: Sequence[str | os.PathLike]) -> dict[str, Any] | None:
    """Warn (``FusionfeatWarning``, one line each) when many images lie beyond the training features' 99th
    percentile, and when the images' geometry differs from the training images'; returns the shift summary
    with the geometry note (None when the bundle keeps no reference)."""
    note = geometry_note(bundle.info.get("input_geometry"), geometry_summary(list(images)))
    if note:
        warnings.warn(note, FusionfeatWarning, stacklevel=3)
    if bundle.shift is None:
        return None
    summary = shift_share(np.asarray(scores, dtype=float), bundle.shift.threshold)
    message = shift_warning(summary)
    if message:
        warnings.warn(message, FusionfeatWarning, stacklevel=3)
    return {**summary, "geometry_note": note}


def pooled_vectors(bundle: Bundle, embeddings: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
    """The pooled vectors (view 0) of the head's backbones, concatenated: what the shift reference scores."""
    return np.hstack([np.asarray(embeddings[b][0])[:, 0] for b in bundle.spec.backbones])


def shift_scores(bundle: Bundle, embeddings: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
    """Each image's distance from the training features (NaN for all when the bundle keeps no reference)."""
    n = len(next(iter(embeddings.values()))[0]) if embeddings else 0
    if bundle.shift is None:
        return np.full(n, np.nan)
    return bundle.shift.score(pooled_vectors(bundle, embeddings))


def _write_predictions(bundle: Bundle, images: Sequence[Path], tmp: Path, models: list[LoadedBackbone], device: str,
                       precision: str | None, batch_size: int, workers: int | None, on_error: str,
                       progress: bool) -> tuple[dict[str, int], list[tuple], list[float]]:
    preprocess = bundle_preprocess(bundle)
    dev = resolve_device(device)
    prec = resolve_precision(precision or recorded_precision(bundle, dev), dev)
    estimator = bare_head(bundle.estimator)  # inside a calibration / operating-point wrapper
    if hasattr(estimator, "device"):
        estimator.set_params(device=str(dev))
        estimator.module_.to(dev)
    paths = [str(p) for p in images]
    batches = [list(range(i, min(len(paths), i + batch_size))) for i in range(0, len(paths), batch_size)]
    counts = {name: 0 for name in bundle.classes}
    counts["error"] = 0
    records: list[tuple] = []
    scores: list[float] = []
    n_probs = 1 if len(bundle.classes) == 2 else len(bundle.classes)
    threshold = bundle.shift.threshold if bundle.shift is not None else math.nan
    bar = runtime.progress(len(paths), progress, "predict")
    try:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv_writer(fh)
            writer.writerow([*csv_columns(bundle), "shift_score", "beyond_p99"])
            for rows, arrays, _, errors in iter_embeddings(paths, batches, models, preprocess, dev, prec, workers,
                                                           keep_tokens=bundle.spec.inputs == "tokens",
                                                           token_grid=token_grid_of(bundle)):
                bad = [i for i, e in enumerate(errors) if e]
                if bad and on_error == "fail":
                    raise ImageDecodeError(paths[rows[bad[0]]], f"{errors[bad[0]]} (use --on-error skip)")
                probs, labels = predict_rows(bundle, arrays) if arrays else ([], [])
                distances = iter(shift_scores(bundle, arrays) if arrays else [])
                probs, labels = iter(probs), iter(labels)
                for row, error in zip(rows, errors, strict=True):
                    if error:
                        writer.writerow([paths[row], *[""] * n_probs, "", error, "", ""])
                        records.append((paths[row], *[float("nan")] * n_probs, "", error))
                        scores.append(math.nan)
                        counts["error"] += 1
                        continue
                    ps, label = np.atleast_1d(np.asarray(next(probs), dtype=float)).tolist(), str(next(labels))
                    d = float(next(distances))
                    counts[label] += 1
                    shift = ["", ""] if math.isnan(d) else [f"{d:.4f}", str(d > threshold).lower()]
                    writer.writerow([paths[row], *(f"{p:.6f}" for p in ps), label, "", *shift])
                    records.append((paths[row], *ps, label, ""))
                    scores.append(d)
                bar.update(len(rows))
    finally:
        bar.close()
    return counts, records, scores


def token_grid_of(bundle: Bundle) -> int | None:
    """The grid the bundle's store pooled token maps down to (``extract --token-grid``), or None. One store has one
    such grid; backbones whose own grid was that size or smaller were stored unchanged, and stay so."""
    pooled = [int(bundle.backbone_provenance(b)["token_grid"]) for b in bundle.spec.backbones
              if "token_pooling" in bundle.backbone_provenance(b)]
    return min(pooled) if pooled else None


def recorded_precision(bundle: Bundle, device: torch.device) -> str:
    recorded = bundle.backbone_provenance(bundle.spec.backbones[0]).get("precision", "auto")
    return "auto" if recorded == "fp16" and device.type == "cpu" else recorded


def predict_rows(bundle: Bundle, embeddings: dict[str, tuple[np.ndarray, np.ndarray | None]]
                 ) -> tuple[np.ndarray, list[str]]:
    """P(positive) and the predicted class name per image: by the rule ``train --calibrate/--operating-point``
    stored in the bundle, else the positive class where P(positive) >= 0.5. More than two classes: the
    probabilities ``(N, K)`` in the bundle's class order and the most probable class (``class_probabilities``)."""
    return predict_matrix(bundle, embedding_matrix(bundle.spec, embeddings))


def predict_matrix(bundle: Bundle, X: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """``predict_rows`` for the head's input matrix ``X`` (laid out as ``fusionfeat.heads.inputs`` does)."""
    if len(bundle.classes) != 2:
        proba = _class_columns(bundle, X)
        return proba, [bundle.classes[int(k)] for k in proba.argmax(axis=1)]
    p = _positive_column(bundle, X)
    if bundle.info.get("decision_rule"):
        return p, [bundle.classes[int(label)] for label in bundle.estimator.predict(X)]
    negative = next(c for c in bundle.classes if c != bundle.positive)
    return p, [bundle.positive if q >= 0.5 else negative for q in p]


def positive_proba(bundle: Bundle, embeddings: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
    """P(positive class) per image from fresh embeddings ``{backbone: (pooled, tokens)}`` (view 0), laid out
    exactly as the head was trained (``fusionfeat.heads.inputs``). Two-class bundles only (else
    ``class_probabilities``)."""
    if len(bundle.classes) != 2:
        raise FusionfeatError(f"the bundle has {len(bundle.classes)} classes and no positive one; use "
                              "class_probabilities for P of every class")
    return _positive_column(bundle, embedding_matrix(bundle.spec, embeddings))


def class_probabilities(bundle: Bundle, embeddings: dict[str, tuple[np.ndarray, np.ndarray | None]]) -> np.ndarray:
    """P(class) per image and class ``(N, K)``, columns in ``bundle.classes`` order, from fresh embeddings."""
    return _class_columns(bundle, embedding_matrix(bundle.spec, embeddings))


def _class_columns(bundle: Bundle, X: np.ndarray) -> np.ndarray:
    order = [list(bundle.estimator.classes_).index(k) for k in range(len(bundle.classes))]
    return _model_proba(bundle, X)[:, order]


def _positive_column(bundle: Bundle, X: np.ndarray) -> np.ndarray:
    column = list(bundle.estimator.classes_).index(bundle.classes.index(bundle.positive))
    return _model_proba(bundle, X)[:, column]


def _model_proba(bundle: Bundle, X: np.ndarray) -> np.ndarray:
    try:
        return bundle.estimator.predict_proba(X)
    except (ValueError, RuntimeError) as exc:
        width = getattr(bundle.estimator, "n_features_in_", "?")
        raise FusionfeatError(f"the bundle's model expects {width} features but its backbones give {X.shape[1]} "
                              f"({' '.join(str(exc).split())[:120]}); the bundle is damaged or edited") from None
