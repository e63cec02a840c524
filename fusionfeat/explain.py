"""Where attention looks: PNG montages of a run's out-of-fold attention maps over the cell images.

``explain_run`` reads a run folder's ``attention.npz`` (written for ``attention-spatial`` heads) and
``metrics.json``, re-reads each chosen image from the store's ``data_root`` with the extraction's
pad-to-square preprocessing, and overlays each backbone's map (mass its tokens receive from the other
backbones' queries, upsampled bilinearly from its token grid) for the most confident ALL, the most
confident HEM and the worst errors (most confident wrong); with more than two classes (``p/<head>`` of shape
(repeats, rows, K)), for the most confident image of each class and the worst errors. Maps and probabilities
are averaged over
repeats (each repeat scores every evaluation row once, out of fold). Each overlay uses a perceptually
uniform colour map (``CMAP``, viridis: dark = less, bright = more) centred on uniform attention (1/T) and
spanning ± the map's largest deviation from it (at least ``MIN_HALF_RANGE``), with a colour bar that marks
the uniform share, so read the bar before reading the colours.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from fusionfeat.data.images import read_rgb, to_square
from fusionfeat.errors import FusionfeatError, ImageDecodeError
from fusionfeat.fsio import EXPLAIN, check_output, output_target
from fusionfeat.report.attention import load_attention
from fusionfeat.report.run import load_run

DISPLAY = 224
MIN_HALF_RANGE = 0.01  # colour scale half-width floor, so a near-uniform map stays mid-scale
CMAP = "viridis"  # perceptually uniform and readable in grey and by colour-blind readers


@dataclass(frozen=True)
class Pick:
    """One row to show: its index in the evaluation rows, why it was chosen, its mean P(positive) (K classes: its
    mean P of the class ``shown``)."""

    row: int
    group: str
    p: float
    shown: str = ""


def explain_run(run_dir: str | Path, out_dir: str | Path | None = None, n: int = 4,
                data_root: str | None = None, overwrite: bool = False) -> list[Path]:
    """Write the attention montages of a run; return the PNG paths (``out_dir`` default: RUN/explain).

    The folder is written atomically under the output rule (``fusionfeat.fsio``): a previous montage folder
    is replaced only with ``overwrite``."""
    if n < 1:
        raise FusionfeatError(f"--n must be at least 1, got {n}")
    data = load_run(run_dir)
    head = _spatial_head(data, run_dir)
    arrays = load_attention(run_dir)
    backbones = list(data["heads"][head]["backbones"])
    if f"p/{head}" not in arrays:
        raise FusionfeatError(f"{run_dir}: attention.npz has no maps for head {head!r}; rerun fusionfeat fit")
    missing = [k for k in (f"map/{head}/{b}" for b in backbones) if k not in arrays]
    if missing:
        raise FusionfeatError(f"{run_dir}: attention.npz lacks {missing[0]}; rerun fusionfeat fit")
    p = np.nanmean(arrays[f"p/{head}"], axis=0)
    maps = {b: np.nanmean(arrays[f"map/{head}/{b}"], axis=0) for b in backbones}
    root = Path(data_root or data["provenance"].get("data_root") or "")
    out = Path(out_dir).expanduser() if out_dir else Path(run_dir) / "explain"
    inputs = _data_folders(root, arrays["path"], data["provenance"].get("layout"))
    check_output(out, EXPLAIN, inputs=inputs, overwrite=overwrite, option="-o" if out_dir else "the default -o")
    prep = _preprocessing(data, backbones[0])
    written = []
    if p.ndim == 2:  # K classes: P of every class per row
        choices = choose_per_class(p, np.asarray(arrays["label"], dtype=np.int64), arrays["sample"], n,
                                   list(data["classes"]))
    else:
        truth = arrays["label"] == data["classes"].index(data["positive"])
        negative = next(c for c in data["classes"] if c != data["positive"])
        choices = _choose(p, truth, arrays["sample"], n, data["positive"], negative)
    figures = []
    for name, title, picks in choices:
        if not picks:
            continue
        images = [_image(root, str(arrays["path"][k.row]), int(arrays["view"][k.row]), prep) for k in picks]
        figures.append((name, _montage(title, picks, images, {b: maps[b] for b in backbones}, arrays, data,
                                       backbones)))
    with output_target(out, EXPLAIN, inputs=inputs, overwrite=overwrite,
                       option="-o" if out_dir else "the default -o") as target:
        for name, fig in figures:
            fig.savefig(target.path / f"attention_{name}.png", dpi=100, bbox_inches="tight")
            written.append(target.final / f"attention_{name}.png")
    return written


def _data_folders(root: Path, paths: np.ndarray, layout: str | None) -> list[Path]:
    """The folders holding the run's images (and, for a folder layout, the data folder itself): montages
    written there would be read back as images by the next ``manifest`` or ``extract``."""
    if str(root) in ("", ".") or not root.is_dir():
        return []
    folders = {(root / str(p)).parent for p in np.unique(paths)}
    if layout not in (None, "csv"):
        folders.add(root)
    return sorted(folders)


def _spatial_head(data: dict[str, Any], run_dir: str | Path) -> str:
    heads = [h for h, info in data["heads"].items() if info.get("inputs") == "tokens" and h.startswith("attention")]
    if not heads:
        raise FusionfeatError(
            f"{run_dir} has no attention-spatial head (it has {', '.join(data['heads'])}): fit with "
            "--head attention on a store with token maps, then explain that run"
        )
    return heads[0]


def _choose(p: np.ndarray, truth: np.ndarray, sample: np.ndarray, n: int, positive: str,
            negative: str) -> list[tuple[str, str, list[Pick]]]:
    """(file stem, title, picks) for the most confident positives, negatives and the worst errors."""
    said = p >= 0.5
    groups = [
        (f"confident_{_slug(positive)}", f"most confident {positive.upper()} (true {positive}, highest P)",
         np.flatnonzero(truth & said), -p),
        (f"confident_{_slug(negative)}", f"most confident {negative.upper()} (true {negative}, lowest P)",
         np.flatnonzero(~truth & ~said), p),
        ("worst_errors", "worst errors (wrong, most confident)", np.flatnonzero(truth != said), -np.abs(p - 0.5)),
    ]
    out = []
    for name, title, rows, key in groups:
        rows = rows[np.argsort(key[rows], kind="stable")]
        seen: set[int] = set()
        picks = []
        for r in rows:  # one row per image (the paper protocol scores rotated copies too)
            if int(sample[r]) in seen or not np.isfinite(p[r]):
                continue
            seen.add(int(sample[r]))
            picks.append(Pick(int(r), name, float(p[r])))
            if len(picks) == n:
                break
        out.append((name, title, picks))
    return out


def choose_per_class(p: np.ndarray, label: np.ndarray, sample: np.ndarray, n: int,
                     classes: list[str]) -> list[tuple[str, str, list[Pick]]]:
    """K classes, ``p`` (rows, K): per class the most confident correct images (highest P of their class), then
    the worst errors (wrong, highest P of the class chosen); ``Pick.p`` is the P of the class shown."""
    finite = np.all(np.isfinite(p), axis=1)
    chosen = np.where(finite, np.nanargmax(np.where(finite[:, None], p, 0), axis=1), -1)
    groups = []
    for c, name in enumerate(classes):
        rows = np.flatnonzero(finite & (label == c) & (chosen == c))
        groups.append((f"confident_{_slug(name)}", f"most confident {name} (true {name}, highest P({name}))", rows))
    groups.append(("worst_errors", "worst errors (wrong, highest P of the chosen class)",
                   np.flatnonzero(finite & (chosen != label))))
    out = []
    for name, title, rows in groups:
        score = p[rows, chosen[rows]]
        picks, seen = [], set()
        for r in rows[np.argsort(-score, kind="stable")]:
            if int(sample[r]) in seen:  # one row per image (the paper protocol scores rotated copies too)
                continue
            seen.add(int(sample[r]))
            picks.append(Pick(int(r), name, float(p[r, chosen[r]]), classes[chosen[r]]))
            if len(picks) == n:
                break
        out.append((name, title, picks))
    return out


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def _preprocessing(data: dict[str, Any], backbone: str) -> dict[str, Any]:
    attrs = data["provenance"].get("backbones", {}).get(backbone, {})
    fill = attrs.get("fill", [0, 0, 0])
    return {"fill": tuple(int(x) for x in (fill if isinstance(fill, list) else [fill] * 3))}


def _image(root: Path, rel: str, view: int, prep: dict[str, Any]) -> np.ndarray:
    """The image as extraction saw it (padded to a square, in the row's dihedral view), at DISPLAY px."""
    path = Path(rel) if Path(rel).is_absolute() else root / rel
    if not path.is_file():
        raise FusionfeatError(
            f"image {path} is gone: explain re-reads the original images from the store's data_root; "
            "restore them or pass --data-root FOLDER"
        )
    try:
        image, _ = read_rgb(str(path), prep["fill"])
    except ImageDecodeError as exc:
        raise FusionfeatError(f"cannot read {path}: {exc}") from None
    square = np.asarray(to_square(image, DISPLAY, prep["fill"]))
    if view >= 4:
        square = square[:, ::-1]
    return np.ascontiguousarray(np.rot90(square, view % 4, axes=(0, 1)))


def _upsample(values: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    small = Image.fromarray(np.asarray(values, dtype=np.float32).reshape(grid), mode="F")
    return np.asarray(small.resize((DISPLAY, DISPLAY), Image.BILINEAR))


def _montage(title: str, picks: list[Pick], images: list[np.ndarray], maps: dict[str, np.ndarray],
             arrays: dict[str, Any], data: dict[str, Any], backbones: list[str]) -> Figure:
    cols = 1 + len(backbones)
    fig = Figure(figsize=(2.4 * cols, 2.6 * len(picks) + 0.4))
    fig.suptitle(title, fontsize=10)
    for i, (pick, image) in enumerate(zip(picks, images, strict=True)):
        label = data["classes"][int(arrays["label"][pick.row])]
        ax = fig.add_subplot(len(picks), cols, i * cols + 1)
        ax.imshow(image)
        shown_class = pick.shown or data["positive"]
        ax.set_title(f"{Path(str(arrays['path'][pick.row])).name} v{int(arrays['view'][pick.row])}\n"
                     f"true {label}, P({shown_class})={pick.p:.3f}", fontsize=7)
        ax.axis("off")
        for j, b in enumerate(backbones):
            grid = tuple(int(x) for x in arrays[f"grid/{b}"])
            heat = _upsample(maps[b][pick.row], grid)
            ax = fig.add_subplot(len(picks), cols, i * cols + 2 + j)
            ax.imshow(image)
            values = maps[b][pick.row]
            uniform = 1.0 / len(values)
            half = max(float(np.max(np.abs(values - uniform))), MIN_HALF_RANGE)
            shown = ax.imshow(heat, cmap=CMAP, alpha=0.5, vmin=uniform - half, vmax=uniform + half)
            ax.set_title(f"{b} {grid[0]}x{grid[1]}: mass {float(values.min()):.3f}–{float(values.max()):.3f}",
                         fontsize=7)
            ax.axis("off")
            _colour_bar(fig, ax, shown, uniform, half)
    fig.tight_layout()
    return fig


def _colour_bar(fig: Figure, ax: Any, shown: Any, uniform: float, half: float) -> None:
    """A colour bar beside an overlay: attention mass per token, its ends and the uniform share 1/T marked."""
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.03)
    bar.solids.set_alpha(1)
    bar.set_ticks([uniform - half, uniform, uniform + half])
    bar.set_ticklabels([f"{uniform - half:.3f}", f"1/T={uniform:.3f}", f"{uniform + half:.3f}"])
    bar.ax.tick_params(labelsize=6)
    bar.set_label("attention mass per token", fontsize=6)
