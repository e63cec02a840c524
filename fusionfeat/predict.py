"""Label new images with a bundle: same backbones, same weights, same preprocessing as its training store."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from fusionfeat.backbones import IMAGENET, RANDOM, LoadedBackbone, load_backbone, parse_weights
from fusionfeat.bundle import Bundle
from fusionfeat.data.images import Preprocess
from fusionfeat.data.manifest import IMAGE_SUFFIXES
from fusionfeat.errors import FusionfeatError, ImageDecodeError, WeightsError
from fusionfeat.extract import iter_embeddings
from fusionfeat.runtime import resolve_device, resolve_precision


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
    override = parse_weights(weights, names) if weights else {}
    models = []
    for name in names:
        prov = bundle.backbone_provenance(name)
        kind = prov["weights_kind"]
        choice = override.get(name) or {"random": RANDOM, "imagenet": IMAGENET}.get(kind, prov["weights_path"])
        if kind == RANDOM and choice != RANDOM or kind != RANDOM and choice == RANDOM:
            raise WeightsError(f"the bundle's {name} was trained on {kind} weights; --weights {name}={choice} "
                               "does not match")
        if kind not in (RANDOM, IMAGENET) and not Path(choice).is_file():
            raise WeightsError(f"the bundle's {name} weights file {prov['weights_path']} is missing; "
                               f"pass --weights {name}=FILE (SHA-256 {prov['weights_sha256']})")
        model = load_backbone(name, choice, int(prov.get("seed", 0)))
        if model.weights_sha256 != prov["weights_sha256"]:
            raise WeightsError(
                f"{name} weights {model.weights} (sha256 {model.weights_sha256[:12]}…) differ from the ones the "
                f"bundle was trained on ({prov['weights']}, sha256 {prov['weights_sha256'][:12]}…); refusing"
            )
        models.append(model)
    return models


def bundle_preprocess(bundle: Bundle) -> Preprocess:
    prov = bundle.backbone_provenance(bundle.spec.backbones[0])
    return Preprocess(input_size=int(prov["input_size"]), fill=tuple(prov.get("fill", (0, 0, 0))),
                      normalize=prov["normalization"], views="1")


def predict_images(bundle: Bundle, images: Sequence[Path], out: str | os.PathLike, weights: str | None = None,
                   device: str = "auto", precision: str | None = None, batch_size: int = 32,
                   workers: int | None = None, on_error: str = "fail", progress: bool = True) -> dict[str, int]:
    """Write ``path,p_<positive>,label[,error]`` for every image; returns counts per predicted label."""
    models = bundle_backbones(bundle, weights)
    preprocess = bundle_preprocess(bundle)
    dev = resolve_device(device)
    prec = resolve_precision(precision or _recorded_precision(bundle, dev), dev)
    estimator = bundle.estimator
    if hasattr(estimator, "device"):
        estimator.set_params(device=str(dev))
        estimator.module_.to(dev)
    positive_col = list(estimator.classes_).index(bundle.classes.index(bundle.positive))
    paths = [str(p) for p in images]
    batches = [list(range(i, min(len(paths), i + batch_size))) for i in range(0, len(paths), batch_size)]
    counts = {name: 0 for name in bundle.classes}
    counts["error"] = 0
    out = Path(out)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    from tqdm.auto import tqdm

    bar = tqdm(total=len(paths), unit="img", desc="predict", disable=not progress)
    try:
        with open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(["path", f"p_{bundle.positive}", "label", "error"])
            for rows, arrays, _, errors in iter_embeddings(paths, batches, models, preprocess, dev, prec, workers,
                                                           keep_tokens=bundle.spec.inputs == "tokens"):
                bad = [i for i, e in enumerate(errors) if e]
                if bad and on_error == "fail":
                    raise ImageDecodeError(paths[rows[bad[0]]], f"{errors[bad[0]]} (use --on-error skip)")
                probs = iter(_positive_proba(estimator, bundle, arrays, positive_col) if arrays else [])
                for row, error in zip(rows, errors, strict=True):
                    if error:
                        writer.writerow([paths[row], "", "", error])
                        counts["error"] += 1
                        continue
                    p = float(next(probs))
                    label = bundle.positive if p >= 0.5 else _negative(bundle)
                    counts[label] += 1
                    writer.writerow([paths[row], f"{p:.6f}", label, ""])
                bar.update(len(rows))
        os.replace(tmp, out)
    finally:
        bar.close()
        tmp.unlink(missing_ok=True)
    return counts


def _negative(bundle: Bundle) -> str:
    return next(c for c in bundle.classes if c != bundle.positive)


def _recorded_precision(bundle: Bundle, device: torch.device) -> str:
    recorded = bundle.backbone_provenance(bundle.spec.backbones[0]).get("precision", "auto")
    return "auto" if recorded == "fp16" and device.type == "cpu" else recorded


def _positive_proba(estimator, bundle: Bundle, arrays: dict, positive_col: int) -> np.ndarray:
    blocks = []
    for name in bundle.spec.backbones:
        pooled, tokens = arrays[name]
        block = tokens[:, 0] if bundle.spec.inputs == "tokens" else pooled[:, 0]
        blocks.append(block.reshape(len(block), -1))
    X = np.concatenate(blocks, axis=1)
    if bundle.spec.inputs == "tokens":
        X = X.astype(np.float16)
    return estimator.predict_proba(X)[:, positive_col]
