"""Synthetic C-NMC-like cell images, for tests, demos and benchmarks without the real data.

Each image is one segmented, stained white blood cell, roughly centred on a black background (every
pixel outside the cell is exactly 0), like the C-NMC 2019 BMPs. Leukemic blasts ("all", label 1) have
larger, rounder nuclei filling more of the cell, with fine open chromatin and often a pale
nucleolus; healthy cells ("hem", label 0) are smaller, with an eccentric, irregular nucleus, dense
clumped chromatin and more visible cytoplasm. Every subject has its own stain (hue and density
shift) and cell size, so subject identity is a confound as in the real data, and every cell varies
in position, size, shape, texture and noise. Output is byte-identical for a given seed (on one numpy
build: float32 SIMD maths may differ in the last bit between CPUs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image

from fusionfeat.errors import FusionfeatError

CLASSES = ("hem", "all")
"""Class names indexed by label: 0 = healthy ("hem"), 1 = leukemic blast ("all")."""

_FORMATS = ("bmp", "png")
_PIXELS_PER_CHUNK = 2_000_000  # bounds peak memory at a few hundred MB for any image size

# Optical density per unit stain for R, G, B (Beer-Lambert): a blue-purple nuclear stain and a pink
# counterstain, mixed so that a nucleus lands near the real C-NMC mean colour (about 65, 28, 78).
_NUCLEAR_STAIN = np.array([1.15, 1.55, 1.05])
_COUNTER_STAIN = np.array([0.25, 0.95, 0.25])


@dataclass(frozen=True)
class _Morphology:
    """Class-specific cell appearance; sizes are fractions of half the image width."""

    cell_radius: tuple[float, float]  # mean, sd
    nucleus_ratio: tuple[float, float]  # nucleus radius / cell radius: mean, sd
    cell_wobble: tuple[float, float, float, float]  # sd of harmonic amplitudes k = 2..5
    nucleus_wobble: tuple[float, float, float, float]
    nucleus_offset: float  # how far the nucleus may sit off-centre, fraction of the cytoplasm rim
    density: tuple[float, float]  # nuclear stain density: mean, sd
    chromatin_frequency: float  # texture frequency, cycles per half-width
    chromatin_contrast: float
    chromatin_clumping: float  # 0: symmetric open texture, 1: dark clumps on a paler ground
    nucleolus_probability: float


class _SubjectLook(NamedTuple):
    stain: np.ndarray  # (2, 3) optical density of the nuclear stain and the counterstain, per channel
    scale: float  # multiplies every cell radius of the subject


class _Cell(NamedTuple):
    path: Path
    label: int
    look: _SubjectLook
    rng: np.random.Generator  # the cell's own generator: its pixels do not depend on batching


_MORPHOLOGY = {
    0: _Morphology(  # hem
        cell_radius=(0.43, 0.045),
        nucleus_ratio=(0.78, 0.06),
        cell_wobble=(0.05, 0.035, 0.02, 0.015),
        nucleus_wobble=(0.07, 0.05, 0.035, 0.025),
        nucleus_offset=0.7,
        density=(1.22, 0.07),
        chromatin_frequency=3.5,
        chromatin_contrast=0.1,
        chromatin_clumping=0.6,
        nucleolus_probability=0.1,
    ),
    1: _Morphology(  # all
        cell_radius=(0.5, 0.045),
        nucleus_ratio=(0.9, 0.04),
        cell_wobble=(0.05, 0.025, 0.012, 0.008),
        nucleus_wobble=(0.05, 0.025, 0.015, 0.01),
        nucleus_offset=0.4,
        density=(1.08, 0.07),
        chromatin_frequency=6.0,
        chromatin_contrast=0.1,
        chromatin_clumping=0.2,
        nucleolus_probability=0.6,
    ),
}


def generate_cnmc_like(
    root: Path,
    n_subjects_all: int = 6,
    n_subjects_hem: int = 4,
    cells_per_subject: int = 10,
    size: int = 128,
    n_folds: int = 3,
    seed: int = 0,
    fmt: str = "bmp",
) -> Path:
    """Write a synthetic dataset in the official C-NMC 2019 training layout and return ``root``.

    Layout (``<ext>`` is ``fmt``; images are 24-bit RGB, ``size`` x ``size``)::

        root/training_data/fold_<k>/all/UID_<P>_<i>_<j>_all.<ext>     ALL patient P = 1..n_subjects_all
        root/training_data/fold_<k>/hem/UID_H<S>_<i>_<j>_hem.<ext>    healthy subject S = 1..n_subjects_hem

    ``k`` runs over ``0..n_folds-1``, ``i`` numbers the microscope image and ``j`` the cell within it
    (several cells can share an image). Every subject lives in exactly one fold, and each fold holds
    subjects of both classes. Each subject contributes ``cells_per_subject`` cells. Existing files of
    the same names are overwritten; nothing else under ``root`` is touched.
    """
    _check_positive(n_subjects_all=n_subjects_all, n_subjects_hem=n_subjects_hem,
                    cells_per_subject=cells_per_subject, size=size, n_folds=n_folds)
    if min(n_subjects_all, n_subjects_hem) < n_folds:
        raise FusionfeatError(
            f"n_folds={n_folds} needs at least that many subjects per class so every fold holds both "
            f"classes; got n_subjects_all={n_subjects_all}, n_subjects_hem={n_subjects_hem}"
        )
    ext = _check_format(fmt)
    root = Path(root)

    folds = {label: _assign_folds(n, n_folds, seed, label)
             for label, n in ((1, n_subjects_all), (0, n_subjects_hem))}
    cells: list[_Cell] = []
    for label, subject_folds in folds.items():
        for subject, fold in enumerate(subject_folds, start=1):
            subject_rng = np.random.default_rng([seed, label, subject])
            look = _subject_look(subject_rng)
            uid = f"{subject}" if label == 1 else f"H{subject}"
            folder = root / "training_data" / f"fold_{fold}" / CLASSES[label]
            for cell, (image_no, cell_no) in enumerate(_cell_numbers(subject_rng, cells_per_subject)):
                path = folder / f"UID_{uid}_{image_no}_{cell_no}_{CLASSES[label]}.{ext}"
                cells.append(_Cell(path, label, look, np.random.default_rng([seed, label, subject, cell, 1])))
    _render_to_files(cells, size)
    return root


def generate_class_folders(
    root: Path, n_per_class: int = 8, size: int = 64, seed: int = 0, fmt: str = "png"
) -> Path:
    """Write a tiny class-per-folder dataset, ``root/{all,hem}/<class>_<n>.<fmt>``, and return ``root``.

    Same renderer as :func:`generate_cnmc_like`, but every cell gets its own stain: this layout carries
    no subject identity to confound with.
    """
    _check_positive(n_per_class=n_per_class, size=size)
    ext = _check_format(fmt)
    root = Path(root)
    cells = []
    for label in (1, 0):
        for index in range(n_per_class):
            rng = np.random.default_rng([seed, label, index, 2])
            path = root / CLASSES[label] / f"{CLASSES[label]}_{index:03d}.{ext}"
            cells.append(_Cell(path, label, _subject_look(rng), rng))
    _render_to_files(cells, size)
    return root


def multiclass_morphologies(n_classes: int) -> list[_Morphology]:
    """``n_classes`` cell appearances spread evenly from the healthy ("hem") to the blast ("all") look: every
    size, shape, density and texture parameter interpolated, so neighbouring classes are the hardest to tell."""
    if n_classes < 2:
        raise FusionfeatError(f"n_classes must be 2 or more, got {n_classes}")
    low, high = _MORPHOLOGY[0], _MORPHOLOGY[1]

    def mix(a, b, t: float):
        if isinstance(a, tuple):
            return tuple(x + t * (y - x) for x, y in zip(a, b, strict=True))
        return a + t * (b - a)

    return [_Morphology(**{f.name: mix(getattr(low, f.name), getattr(high, f.name), k / (n_classes - 1))
                           for f in fields(_Morphology)})
            for k in range(n_classes)]


def generate_multiclass_folders(
    root: Path, n_classes: int = 3, n_per_class: int | Sequence[int] = 8, size: int = 64, seed: int = 0,
    fmt: str = "png", names: Sequence[str] | None = None,
) -> Path:
    """Write a K-class class-per-folder dataset, ``root/<name>/<name>_<n>.<fmt>``, and return ``root``.

    ``names`` (default ``class_a``, ``class_b``, …) are the K folder names; class k looks like the k-th of
    ``multiclass_morphologies(K)``. ``n_per_class`` is one count for every class or one per class (a rare
    class of 3 images, say). Every cell gets its own stain, as in ``generate_class_folders``.
    """
    names = [f"class_{chr(ord('a') + k)}" for k in range(n_classes)] if names is None else list(names)
    if len(names) != n_classes or len({n.lower() for n in names}) != n_classes:
        raise FusionfeatError(f"names must be {n_classes} distinct class names, got {names!r}")
    counts = [n_per_class] * n_classes if isinstance(n_per_class, int) else list(n_per_class)
    if len(counts) != n_classes:
        raise FusionfeatError(f"n_per_class must be one count or {n_classes} counts, got {n_per_class!r}")
    _check_positive(size=size, **{f"n_per_class[{k}]": c for k, c in enumerate(counts)})
    ext = _check_format(fmt)
    root = Path(root)
    cells = []
    for label, (name, count) in enumerate(zip(names, counts, strict=True)):
        for index in range(count):
            rng = np.random.default_rng([seed, label, index, 3])
            cells.append(_Cell(root / name / f"{name}_{index:03d}.{ext}", label, _subject_look(rng), rng))
    _render_to_files(cells, size, multiclass_morphologies(n_classes))
    return root


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if value < 1:
            raise FusionfeatError(f"{name} must be a positive integer, got {value}")


def _check_format(fmt: str) -> str:
    ext = fmt.lower().lstrip(".")
    if ext not in _FORMATS:
        raise FusionfeatError(f"unsupported image format {fmt!r}; use one of {', '.join(_FORMATS)}")
    return ext


def _assign_folds(n_subjects: int, n_folds: int, seed: int, label: int) -> np.ndarray:
    """Fold of each subject (index 0 = subject 1): a shuffled round robin, so fold sizes differ by <= 1."""
    order = np.random.default_rng([seed, label]).permutation(n_subjects)
    folds = np.empty(n_subjects, dtype=int)
    folds[order] = np.arange(n_subjects) % n_folds
    return folds


def _cell_numbers(rng: np.random.Generator, n_cells: int) -> list[tuple[int, int]]:
    """(microscope image, cell in image) numbers: one to three cells per image, images with gaps."""
    numbers: list[tuple[int, int]] = []
    image_no = 0
    while len(numbers) < n_cells:
        image_no += int(rng.integers(1, 4))
        cells_here = int(rng.choice([1, 2, 3], p=[0.6, 0.3, 0.1]))
        numbers.extend((image_no, cell) for cell in range(1, cells_here + 1))
    return numbers[:n_cells]


def _subject_look(rng: np.random.Generator) -> _SubjectLook:
    """A subject's stain (density and hue shift) and overall cell size."""
    density = np.exp(0.05 * rng.standard_normal())
    hue = np.exp(0.05 * rng.standard_normal((2, 3)))
    scale = np.exp(0.04 * rng.standard_normal())
    return _SubjectLook(density * hue * np.stack([_NUCLEAR_STAIN, _COUNTER_STAIN]), float(scale))


def _render_to_files(cells: list[_Cell], size: int, morphologies: Sequence[_Morphology] | None = None) -> None:
    chunk = max(1, _PIXELS_PER_CHUNK // (size * size))
    for folder in sorted({cell.path.parent for cell in cells}):
        folder.mkdir(parents=True, exist_ok=True)
    for start in range(0, len(cells), chunk):
        batch = cells[start:start + chunk]
        for cell, image in zip(batch, _render(batch, size, morphologies), strict=True):
            Image.fromarray(image, mode="RGB").save(cell.path)


def _render(cells: list[_Cell], size: int, morphologies: Sequence[_Morphology] | None = None) -> np.ndarray:
    """Render a batch of cells to uint8 RGB, shape (B, size, size, 3); each cell uses only its own rng.
    ``morphologies`` (indexed by label) defaults to the two C-NMC-like classes."""
    looks = [_MORPHOLOGY[0], _MORPHOLOGY[1]] if morphologies is None else list(morphologies)
    n = len(cells)
    labels = np.array([cell.label for cell in cells])
    stains = np.stack([cell.look.stain for cell in cells]).astype(np.float32)
    rngs = [cell.rng for cell in cells]

    def by_class(field: str) -> np.ndarray:
        """A class-specific parameter for every cell, shaped to broadcast against (B, S, S)."""
        table = np.array([getattr(look, field) for look in looks], dtype=np.float32)
        values = table[labels]
        return values.reshape(values.shape + (1, 1))

    # Every random number a cell needs, drawn from its own generator in a fixed order.
    z = np.stack([rng.standard_normal(20) for rng in rngs]).astype(np.float32).reshape(n, 20, 1, 1)
    u = np.stack([rng.random(12) for rng in rngs]).astype(np.float32).reshape(n, 12, 1, 1)
    white = np.stack([rng.standard_normal((2, size, size), dtype=np.float32) for rng in rngs])

    axis = ((np.arange(size, dtype=np.float32) + 0.5) / size * 2 - 1)  # pixel centres in [-1, 1]
    x, y = axis[None, None, :], axis[None, :, None]
    pixel = np.float32(2 / size)

    # Cell outline: a jittered, wobbly circle.
    scale = np.array([cell.look.scale for cell in cells], dtype=np.float32).reshape(n, 1, 1)
    radius = scale * (by_class("cell_radius")[:, 0] + by_class("cell_radius")[:, 1] * np.clip(z[:, 0], -2.5, 2.5))
    cx, cy = 0.08 * z[:, 1], 0.08 * z[:, 2]
    wobble = by_class("cell_wobble") * z[:, 3:7] * np.exp(2j * np.pi * u[:, 0:4])
    rho, outline = _wobbly_outline(x - cx, y - cy, radius, wobble)
    inside = np.clip((outline - rho) / pixel + 0.5, 0, 1)

    # Nucleus: smaller wobbly circle, shifted into the cytoplasm by up to `nucleus_offset` of the rim.
    ratio = np.clip(by_class("nucleus_ratio")[:, 0] + by_class("nucleus_ratio")[:, 1] * z[:, 7], 0.55, 0.97)
    n_radius = ratio * radius
    shift = by_class("nucleus_offset") * (radius - n_radius) * u[:, 4]
    angle = 2 * np.pi * u[:, 5]
    nx, ny = cx + shift * np.cos(angle), cy + shift * np.sin(angle)
    n_wobble = by_class("nucleus_wobble") * z[:, 8:12] * np.exp(2j * np.pi * u[:, 6:10])
    n_rho, n_outline = _wobbly_outline(x - nx, y - ny, n_radius, n_wobble)
    nucleus = np.clip((n_outline - n_rho) / (1.5 * pixel) + 0.5, 0, 1)

    # Chromatin: band-passed noise; clumping turns it into dark blobs on a paler ground.
    texture = _band_pass(white[:, 0], by_class("chromatin_frequency") * (1 + 0.1 * z[:, 12]))
    clumping = by_class("chromatin_clumping")
    chromatin = (1 - clumping) * texture + clumping * (2 * np.maximum(texture, 0) - 0.8)
    density = by_class("density")[:, 0] + by_class("density")[:, 1] * z[:, 13]
    nuclear = density * (1 + by_class("chromatin_contrast") * chromatin)

    # Nucleolus: a pale spot somewhere inside the nucleus, in some cells.
    has_nucleolus = (u[:, 10] < by_class("nucleolus_probability")).astype(np.float32)
    spot_x = nx + 0.3 * n_radius * z[:, 14].clip(-1.5, 1.5)
    spot_y = ny + 0.3 * n_radius * z[:, 15].clip(-1.5, 1.5)
    spot_r = n_radius * (0.13 + 0.03 * z[:, 16].clip(-2, 2))
    spot = np.exp(-((x - spot_x) ** 2 + (y - spot_y) ** 2) / (2 * spot_r**2))
    nuclear = nuclear * (1 - 0.3 * has_nucleolus * spot)

    # Cytoplasm: paler, with a darker membrane at the very edge.
    cytoplasm = 0.8 * density * (1 + 0.05 * texture)
    membrane = np.exp(-np.maximum(outline - rho, 0) / (0.025 * radius))
    nuclear_stain = (nucleus * nuclear + (1 - nucleus) * cytoplasm) * (1 + 0.12 * membrane)
    counterstain = 0.2 + 0.35 * nucleus

    optical_density = (nuclear_stain[..., None] * stains[:, None, None, 0]
                       + counterstain[..., None] * stains[:, None, None, 1])
    brightness = 1 + 0.04 * z[:, 17, ..., None]
    rgb = 255 * brightness * np.exp(-optical_density) + 2.0 * white[:, 1, ..., None]
    rgb *= inside[..., None]  # outside the outline this is exactly 0: the black, segmented background
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _wobbly_outline(dx: np.ndarray, dy: np.ndarray, radius: np.ndarray, wobble: np.ndarray):
    """Distance of each pixel from the centre, and the boundary radius in its direction.

    The boundary is ``radius * (1 + Re sum_k c_k e^{ik phi})`` over harmonics k = 2..5, with complex
    coefficients ``wobble`` (B, 4, 1, 1) carrying amplitude and phase; e^{ik phi} comes from powers of
    (dx + i dy) / rho, which is much cheaper than arctan2 and cosines.
    """
    rho = np.hypot(dx, dy)
    direction = (dx + 1j * dy) / np.maximum(rho, 1e-6)
    series = np.zeros_like(direction)
    for coefficient in wobble.astype(np.complex64)[:, ::-1].transpose(1, 0, 2, 3):  # Horner, c5 first
        series = series * direction + coefficient
    series *= direction**2
    return rho, radius * (1 + series.real)


def _band_pass(white: np.ndarray, frequency: np.ndarray) -> np.ndarray:
    """Filter white noise (B, S, S) to a ring around `frequency` (cycles per half-width); unit std."""
    size = white.shape[-1]
    fy = np.fft.fftfreq(size)[:, None] * size / 2  # cycles per half-width
    fx = np.fft.rfftfreq(size)[None, :] * size / 2
    radial = np.hypot(fx, fy)[None].astype(np.float32)
    ring = np.exp(-((radial - frequency) ** 2) / (2 * (0.4 * frequency) ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * ring, s=white.shape[-2:]).astype(np.float32)
    field -= field.mean(axis=(1, 2), keepdims=True)
    return field / (field.std(axis=(1, 2), keepdims=True) + 1e-12)
