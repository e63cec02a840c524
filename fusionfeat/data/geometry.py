"""The input geometry of a set of images (size, channels, black padding), to tell a user when new images are
shaped unlike the training images. Read from a sample of the images, headers and border pixels only."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

SAMPLE = 64  # images read per set (evenly spaced)
DARK = 10  # a border pixel at or below this in every channel counts as padding
PADDED = 0.5  # an image whose border ring is at least this share dark is padded
SIZE_TOLERANCE = 0.15  # median sides differing by more than this (relative) differ
PADDING_TOLERANCE = 0.5  # shares of padded images differing by more than this differ


def image_geometry(path: str | os.PathLike) -> dict[str, Any] | None:
    """``{"width", "height", "mode", "padded"}`` of one image (None when it cannot be read)."""
    try:
        with Image.open(path) as image:
            width, height, mode = image.width, image.height, image.mode
            rgb = np.asarray(image.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):
        return None
    ring = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return {"width": int(width), "height": int(height), "mode": str(mode),
            "padded": bool(np.mean(np.all(ring <= DARK, axis=1)) >= PADDED)}


def geometry_summary(paths: Sequence[str | os.PathLike], sample: int = SAMPLE) -> dict[str, Any] | None:
    """Median width and height, the image modes, and the share of padded images over up to ``sample`` of
    ``paths`` (evenly spaced); None when none of them can be read."""
    if not len(paths):
        return None
    picked = np.unique(np.linspace(0, len(paths) - 1, min(sample, len(paths))).round().astype(int))
    found = [g for g in (image_geometry(paths[i]) for i in picked) if g is not None]
    if not found:
        return None
    return {"n_sampled": len(found), "width": float(np.median([g["width"] for g in found])),
            "height": float(np.median([g["height"] for g in found])),
            "modes": dict(Counter(g["mode"] for g in found).most_common()),
            "padded_share": float(np.mean([g["padded"] for g in found]))}


def geometry_differences(train: dict[str, Any] | None, new: dict[str, Any] | None) -> list[str]:
    """What differs between the training images' geometry and new images' (empty when alike or unknown)."""
    if not train or not new:
        return []
    out = []
    sides = [(k, float(train[k]), float(new[k])) for k in ("width", "height")]
    if any(abs(b - a) > SIZE_TOLERANCE * a for _, a, b in sides):
        out.append(f"size {new['width']:.0f}×{new['height']:.0f} px (median) vs {train['width']:.0f}×"
                   f"{train['height']:.0f} px in training")
    if set(new["modes"]) != set(train["modes"]):
        out.append(f"image mode {'/'.join(new['modes'])} vs {'/'.join(train['modes'])} in training")
    if abs(float(new["padded_share"]) - float(train["padded_share"])) > PADDING_TOLERANCE:
        out.append(f"{float(new['padded_share']):.0%} black-padded vs {float(train['padded_share']):.0%} in "
                   "training")
    return out


def geometry_note(train: dict[str, Any] | None, new: dict[str, Any] | None) -> str | None:
    """One line naming how new images are shaped unlike the training images, or None."""
    diffs = geometry_differences(train, new)
    if not diffs:
        return None
    return ("the images differ in input geometry from the training store's: " + "; ".join(diffs)
            + " (the bundle resizes and pads them the same way, but the features may not be comparable)")
