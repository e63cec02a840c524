"""Image decoding and preprocessing: any common file → RGB → padded square → resized uint8 tensor → views.

Normalisation is not done here: it happens on the device, in float, after the compact uint8 batch is moved.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch
from PIL import Image, ImageFile, UnidentifiedImageError

from fusionfeat.errors import FusionfeatError, ImageDecodeError

VIEWS = {"1": 1, "dihedral8": 8}
NORMALIZATIONS = ("imagenet", "unit")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

ImageFile.LOAD_TRUNCATED_IMAGES = False  # a truncated file is an error, never silently half-grey


MAX_INPUT_SIZE = 2048  # pixels; beyond this one batch of views does not fit in memory


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the backbones' input; recorded in the store so it can be repeated exactly."""

    input_size: int = 224
    fill: tuple[int, int, int] = (0, 0, 0)
    normalize: str = "imagenet"
    views: str = "1"
    mean: tuple[float, ...] = IMAGENET_MEAN  # the backbones' weights' statistics, used when normalize="imagenet"
    std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self):
        if self.input_size < 32:
            raise FusionfeatError(f"--input-size {self.input_size} is too small; use 32 or more (224 is standard)")
        if self.input_size > MAX_INPUT_SIZE:
            raise FusionfeatError(f"--input-size {self.input_size} is too large; use at most {MAX_INPUT_SIZE} "
                                  "(224 is standard; one 2048 px image batch already takes gigabytes)")
        if self.normalize not in NORMALIZATIONS:
            raise FusionfeatError(f"--normalize {self.normalize!r}: choose one of {', '.join(NORMALIZATIONS)}")
        if self.views not in VIEWS:
            raise FusionfeatError(f"--views {self.views!r}: choose 1 or dihedral8")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(s > 0 for s in self.std):
            raise FusionfeatError(f"normalisation mean {self.mean} / std {self.std}: give 3 values each, std > 0")
        if len(self.fill) != 3 or not all(0 <= c <= 255 for c in self.fill):
            raise FusionfeatError(f"--fill {self.fill!r}: give one grey level or R,G,B values in 0..255")

    @property
    def n_views(self) -> int:
        return VIEWS[self.views]

    def mean_std(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        if self.normalize == "imagenet":
            return tuple(self.mean), tuple(self.std)
        return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)

    def with_stats(self, mean: tuple[float, ...], std: tuple[float, ...]) -> Preprocess:
        """The same preprocessing with the weights' own mean/std (see ``backbones.input_stats``)."""
        return replace(self, mean=tuple(mean), std=tuple(std))

    @classmethod
    def from_attrs(cls, attrs: dict) -> Preprocess:
        """The preprocessing recorded by ``as_attrs`` (a store's feature attributes or a bundle's provenance)."""
        stats = {}
        if str(attrs["normalization"]) == "imagenet" and "mean" in attrs:
            stats = {"mean": tuple(float(v) for v in attrs["mean"]), "std": tuple(float(v) for v in attrs["std"])}
        return cls(input_size=int(attrs["input_size"]), fill=tuple(int(c) for c in attrs.get("fill", (0, 0, 0))),
                   normalize=str(attrs["normalization"]), views=str(attrs.get("views", "1")), **stats)

    def as_attrs(self) -> dict:
        mean, std = self.mean_std()
        return {
            "input_size": self.input_size,
            "fill": list(self.fill),
            "normalization": self.normalize,
            "mean": list(mean),
            "std": list(std),
            "views": self.views,
            "n_views": self.n_views,
            "resize": "longest side to input_size (PIL bilinear, antialiased), centred on a fill-coloured square",
        }

    def load(self, path: str, digest: str | None = None) -> tuple[torch.Tensor, str]:
        """Decode one file into a ``(V, 3, S, S)`` uint8 tensor and the file's SHA-256 (``digest`` when given:
        the file was hashed already)."""
        image, digest = read_rgb(path, self.fill, digest)
        square = to_square(image, self.input_size, self.fill)
        tensor = torch.from_numpy(np.asarray(square, dtype=np.uint8).copy()).permute(2, 0, 1)
        return (dihedral_views(tensor) if self.n_views == 8 else tensor.unsqueeze(0)), digest


def read_rgb(path: str, fill: tuple[int, int, int] = (0, 0, 0), digest: str | None = None) -> tuple[Image.Image, str]:
    """Read a file once; return it as 8-bit RGB and its SHA-256 (``digest`` when given, else computed from the
    bytes read). Raises ``ImageDecodeError``."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as exc:
        raise ImageDecodeError(path, exc.strerror or str(exc)) from None
    if digest is None:
        digest = hashlib.sha256(data).hexdigest()
    if not data:
        raise ImageDecodeError(path, "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            image.load()
            return _to_rgb(image, fill), digest
    except UnidentifiedImageError:
        raise ImageDecodeError(path, "not an image file PIL can decode (BMP, TIFF, PNG, JPEG expected)") from None
    except (OSError, SyntaxError, ValueError, TypeError, Image.DecompressionBombError) as exc:
        raise ImageDecodeError(path, f"corrupt or truncated image ({exc})") from None


def _to_rgb(image: Image.Image, fill: tuple[int, int, int]) -> Image.Image:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.nan_to_num(np.asarray(image).astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        top = float_scale_top(array) if mode == "F" else (
            65535.0 if mode.startswith("I;16") or array.max() > 255 else 255.0)
        image = Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        background = Image.new("RGB", image.size, fill)
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image if mode == "RGB" else image.convert("RGB")


def float_scale_top(array: np.ndarray) -> float:
    """The value that maps to white for a float image: 1 when every value is in [0, 1] (the usual float
    convention), 255 when the maximum is at most 255 (8-bit values stored as floats), else the maximum.
    NaN and infinities count as 0; negative values clip to black."""
    finite = array[np.isfinite(array)]
    top = float(finite.max()) if finite.size else 0.0
    if top <= 1.0:
        return 1.0
    return 255.0 if top <= 255.0 else top


def to_square(image: Image.Image, size: int, fill: tuple[int, int, int]) -> Image.Image:
    """Resize the longest side to ``size`` and centre on a ``fill`` square (= pad to square, then resize)."""
    width, height = image.size
    scale = size / max(width, height)
    new = (max(1, round(width * scale)), max(1, round(height * scale)))
    if new != image.size:
        image = image.resize(new, Image.BILINEAR, reducing_gap=None)
    if new == (size, size):
        return image
    canvas = Image.new("RGB", (size, size), fill)
    canvas.paste(image, ((size - new[0]) // 2, (size - new[1]) // 2))
    return canvas


def dihedral_views(image: torch.Tensor) -> torch.Tensor:
    """The 8 views of the dihedral group: 4 rotations of the image, then 4 of its mirror. View 0 is the image."""
    mirrored = image.flip(-1)
    return torch.stack([torch.rot90(src, k, dims=(-2, -1)) for src in (image, mirrored) for k in range(4)])


def normalize_batch(batch: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 ``(B, 3, S, S)`` → float32 normalised, on the batch's own device."""
    mean_t = torch.tensor(mean, device=batch.device).view(1, 3, 1, 1) * 255.0
    std_t = torch.tensor(std, device=batch.device).view(1, 3, 1, 1) * 255.0
    return (batch.float() - mean_t) / std_t
