"""The run's figures a paper can use: ``summary.png`` (every head's pooled ROC with its bootstrap band) and
``training.png`` (the torch heads' training curves over every fold and repeat, mean and band)."""

from __future__ import annotations

import math
import textwrap
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fusionfeat.report.cells import interval, num
from fusionfeat.report.context import decision_rule
from fusionfeat.report.roc_bands import RocBand

FONT = 9  # legible when the figure is printed a column wide
VALIDATION = "early-stopping validation split"


def head_colours(heads: list[str]) -> dict[str, Any]:
    """A distinct colour per head: tab10 up to 10 heads, tab20 beyond (cycling past 20)."""
    cmap = colormaps["tab10" if len(heads) <= 10 else "tab20"]
    return {h: cmap(i % cmap.N) for i, h in enumerate(heads)}


def auc_label(info: dict[str, Any]) -> str:
    """``AUC 0.912 [0.870, 0.951]``: the pooled OOF ROC AUC and its bootstrap interval, as in report.md."""
    pooled = ((info.get("uncertainty") or {}).get("roc_auc") or {}).get("pooled") or {}
    if not pooled:
        auc = info["summary"]["roc_auc"]
        return f"per-fold AUC {num(auc.get('mean'), 3)}"
    boot = pooled.get("bootstrap") or {}
    return f"AUC {num(pooled.get('mean'), 3)} {interval(boot.get('lo'), boot.get('hi'), 'roc_auc', digits=3)}"


def summary_figure(data: dict[str, Any], bands: dict[str, RocBand]) -> Figure:
    """Every head's pooled out-of-fold ROC (mean over repeats) in one panel, then one small panel per head
    with its pointwise 95% bootstrap band; dots mark each head's decision rule (pooled sensitivity and
    1 − specificity)."""
    heads = [h for h in data["heads"] if h in bands]
    colours = head_colours(heads)
    n = len(heads)
    cols = 0 if n == 1 else (math.ceil(n / 2) if n <= 8 else 4)
    rows = 1 if n == 1 else max(2, math.ceil(n / cols))
    fig = Figure(figsize=(4.8 + 2.4 * cols, max(4.8, 2.9 * rows) + 0.6), layout="constrained")
    grid = fig.add_gridspec(rows, 2 + cols, width_ratios=[1, 1] + [1] * cols)
    overview = fig.add_subplot(grid[: min(rows, 2), :2])
    for head in heads:
        info, band = data["heads"][head], bands[head]
        overview.plot(band.fpr, band.tpr, color=colours[head], lw=1.8, label=f"{head}  {auc_label(info)}")
        _decision_dot(overview, info, colours[head])
        if n == 1:
            overview.fill_between(band.fpr, band.lo, band.hi, color=colours[head], alpha=0.2, lw=0,
                                  label="95% bootstrap band")
    _roc_axes(overview, "ROC of every head (pooled out-of-fold)")
    overview.legend(loc="lower right", fontsize=FONT - 1, frameon=True, framealpha=0.9)
    for i, head in enumerate(heads if n > 1 else []):
        ax = fig.add_subplot(grid[i // cols, 2 + i % cols])
        band = bands[head]
        ax.fill_between(band.fpr, band.lo, band.hi, color=colours[head], alpha=0.25, lw=0)
        ax.plot(band.fpr, band.tpr, color=colours[head], lw=1.5)
        _decision_dot(ax, data["heads"][head], colours[head])
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_title(f"{head}\n{auc_label(data['heads'][head])}", fontsize=FONT)
        ax.tick_params(labelsize=FONT - 2)
        ax.set_aspect("equal")
    width = int(fig.get_figwidth() * 13)  # characters of FONT-point text per line that fit the figure
    fig.suptitle("\n".join(textwrap.fill(line, width) for line in _summary_title(data, bands).splitlines()),
                 fontsize=FONT)
    return fig


def _summary_title(data: dict[str, Any], bands: dict[str, RocBand]) -> str:
    p = data["protocol"]
    repeats = int(p.get("repeats", 1) or 1)
    band = next(iter(bands.values()))
    pooled = "averaged over " + (f"{repeats} repeats" if repeats > 1 else "1 repeat")
    flags = sorted({f.split()[0] for info in data["heads"].values() for f in (info.get("weights") or {}).values()})
    weights = f"; weights {'/'.join(flags)}" if flags else ""
    leaky = " (LEAKY: the paper's protocol)" if p.get("leaky") else ""
    return (f"{p.get('name', '?')}{leaky} {p.get('n_folds', '?')}-fold CV, {p.get('n_evaluated', '?')} images"
            f"{weights}; decision rule {decision_rule(data)}.\nEach curve pools every fold's out-of-fold "
            f"predictions ({pooled}); bands: pointwise 95% bootstrap over {band.unit} ({band.n_boot} resamples, "
            "models held fixed); dots: each head's decision rule.")


def _decision_dot(ax: Any, info: dict[str, Any], colour: Any) -> None:
    """The pooled (1 − specificity, sensitivity) the head's hard predictions reached."""
    u = info.get("uncertainty") or {}
    try:
        spec, sens = u["specificity"]["pooled"]["mean"], u["recall"]["pooled"]["mean"]
    except (KeyError, TypeError):
        return
    if spec is not None and sens is not None and np.isfinite([spec, sens]).all():
        ax.plot([1 - spec], [sens], "o", color=colour, ms=5, mec="black", mew=0.6, zorder=5)


def _roc_axes(ax: Any, title: str) -> None:
    ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=0.8)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("false positive rate (1 − specificity)", fontsize=FONT)
    ax.set_ylabel("true positive rate (sensitivity)", fontsize=FONT)
    ax.tick_params(labelsize=FONT - 1)
    ax.set_title(title, fontsize=FONT + 1)


def has_history(info: dict[str, Any]) -> bool:
    return any(f.get("history") for f in info.get("folds", []))


def epoch_stats(folds: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per epoch: the epoch numbers, the mean and sd of ``key`` over the fits still training at that epoch
    (fits stop early at different epochs), and how many fits that is."""
    values: dict[int, list[float]] = {}
    for f in folds:
        for e in f.get("history") or []:
            v = e.get(key)
            if v is not None and np.isfinite(v):
                values.setdefault(int(e["epoch"]), []).append(float(v))
    epochs = np.array(sorted(values), dtype=int)
    mean = np.array([np.mean(values[e]) for e in epochs])
    sd = np.array([np.std(values[e], ddof=1) if len(values[e]) > 1 else 0.0 for e in epochs])
    count = np.array([len(values[e]) for e in epochs])
    return epochs, mean, sd, count


def training_figure(data: dict[str, Any]) -> Figure | None:
    """One row per torch head: loss and accuracy per epoch, mean ± sd over every fold and repeat, for the
    training rows and for the early-stopping validation split; None when no head has a history."""
    heads = [h for h, info in data["heads"].items() if has_history(info)]
    if not heads:
        return None
    fig = Figure(figsize=(8, 2.6 * len(heads) + 0.9), layout="constrained")
    axes = fig.subplots(len(heads), 2, squeeze=False)
    for row, head in zip(axes, heads, strict=True):
        folds = [f for f in data["heads"][head]["folds"] if f.get("history")]
        stops = sorted({len(f["history"]) for f in folds})
        stopped = f"epoch {stops[0]}" if len(stops) == 1 else f"epochs {stops[0]}–{stops[-1]}"
        for ax, key, name in ((row[0], "loss", "loss"), (row[1], "acc", "accuracy")):
            for split, colour, label, style in (("train", "C0", "training rows", "-"),
                                                ("val", "C1", VALIDATION, "--")):
                epochs, mean, sd, _ = epoch_stats(folds, f"{split}_{key}")
                if not len(epochs):
                    continue
                ax.plot(epochs, mean, color=colour, ls=style, lw=1.6, label=f"{label}: mean ± sd over fits")
                ax.fill_between(epochs, mean - sd, mean + sd, color=colour, alpha=0.2, lw=0)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch", fontsize=FONT)
            ax.set_ylabel(name, fontsize=FONT)
            ax.tick_params(labelsize=FONT - 1)
            ax.set_title(f"{head}: {name} ({len(folds)} fits, stopped at {stopped})", fontsize=FONT)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=2, fontsize=FONT, frameon=False)
    fig.suptitle(f"Training curves over every fold and repeat ({_fits(data)}). Fits stop early at different "
                 f"epochs: later epochs average the fits still training.\nThe {VALIDATION} is the rows each fit "
                 "held out of its training fold to stop early (never the test fold).", fontsize=FONT)
    return fig


def _fits(data: dict[str, Any]) -> str:
    p = data["protocol"]
    repeats = int(p.get("repeats", 1) or 1)
    return f"{p.get('n_folds', '?')} folds" + (f" × {repeats} repeats" if repeats > 1 else "")
