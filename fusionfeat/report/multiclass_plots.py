"""PNG figures of a K-class (K > 2) run: ``training.png`` (torch heads' training curves, as for binary runs) and one
set per head under ``figures/``: the K×K confusion matrix (counts and row-normalised), the one-vs-rest ROC curve
of every class (pooled out-of-fold rows) and the top-label reliability diagram; with subjects known, the
subject-level confusion matrix."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fusionfeat.report.figures import training_figure

FIGURES_DIR = "figures"
TRAINING_PNG = "training.png"
FONT = 8


def write_multiclass_plots(data: dict[str, Any], out: Path, rows: str = "out-of-fold") -> dict[str, str]:
    """Draw every head's figures into ``out/figures``; returns plot key -> path relative to ``out``. ``rows`` names
    the rows the figures' titles describe (``"out-of-fold"`` for ``fit``, ``"external set"`` for ``evaluate``)."""
    plots: dict[str, str] = {}
    training = training_figure(data)  # the torch heads' training curves, as for binary runs
    if training is not None:
        training.savefig(out / TRAINING_PNG, dpi=150, bbox_inches="tight")
        plots["training"] = TRAINING_PNG
    detail = out / FIGURES_DIR
    detail.mkdir(exist_ok=True)
    classes = data["classes"]
    repeats = max(1, int(data["protocol"].get("repeats", 1) or 1))
    for head, info in data["heads"].items():
        slug = _slug(head)
        fig = confusion_figure(f"{head}: confusion ({rows}{_per(repeats)})", info["pooled"]["confusion"],
                               classes, repeats)
        _save(fig, detail / f"confusion_{slug}.png", out, plots, f"confusion_{head}")
        _save(_roc_figure(head, info, data, rows), detail / f"roc_{slug}.png", out, plots, f"roc_{head}")
        _save(_reliability_figure(head, info, rows), detail / f"reliability_{slug}.png", out, plots,
              f"reliability_{head}")
    for head, sub in ((data.get("subjects") or {}).get("heads") or {}).items():
        fig = confusion_figure(f"{head} SUBJECT-LEVEL: confusion{_per(repeats)}", sub["confusion_total"], classes,
                               repeats)
        _save(fig, detail / f"subject_confusion_{_slug(head)}.png", out, plots, f"subject_confusion_{head}")
    return plots


def _per(repeats: int) -> str:
    return f", mean of {repeats} repeats" if repeats > 1 else ""


def confusion_figure(title: str, counts: Any, classes: list[str], repeats: int = 1) -> Figure:
    """Two panels: the counts (mean over repeats) and the row-normalised matrix (each true class's share)."""
    counts = np.asarray(counts, dtype=float) / repeats
    support = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, support, out=np.zeros_like(counts), where=support > 0)
    k = len(classes)
    size = max(3.6, 0.55 * k + 2)
    fig = Figure(figsize=(2 * size + 0.6, size), layout="constrained")  # keeps the right panel's names clear
    for ax, values, what, fmt in zip(fig.subplots(1, 2), (counts, share), ("counts", "row-normalised (recall)"),
                                     ("{:.0f}" if repeats == 1 else "{:.1f}", "{:.2f}"), strict=True):
        ax.imshow(values, cmap="Blues", vmin=0, vmax=max(float(values.max()), 1e-12))
        for i in range(k):
            for j in range(k):
                ax.text(j, i, fmt.format(values[i, j]), ha="center", va="center", fontsize=FONT,
                        color="white" if values[i, j] > values.max() / 2 else "black")
        ax.set_xticks(range(k), classes, rotation=45, ha="right", fontsize=FONT)
        ax.set_yticks(range(k), classes, fontsize=FONT)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(what, fontsize=FONT + 1)
    fig.suptitle(title, fontsize=FONT + 1)
    return fig


def _roc_figure(head: str, info: dict[str, Any], data: dict[str, Any], rows: str = "out-of-fold") -> Figure:
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    for name, curve in info["pooled"]["roc"].items():
        ax.plot(curve["fpr"], curve["tpr"], lw=1.3, label=f"{name} vs rest (AUC {curve['auc']:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    missing = [c for c in data["classes"] if c not in info["pooled"]["roc"]]
    macro = info["uncertainty"]["roc_auc_macro"]["pooled"]["mean"]
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    which = "pooled out-of-fold" if rows == "out-of-fold" else rows
    ax.set_title(f"{head}: one-vs-rest ROC ({which}; macro AUC {macro:.3f})", fontsize=FONT + 1)
    if missing:
        ax.text(0.98, 0.02, f"undefined for {', '.join(missing)}", ha="right", fontsize=FONT - 1,
                transform=ax.transAxes)
    ax.legend(loc="lower right", fontsize=FONT - 1)
    return fig


def _reliability_figure(head: str, info: dict[str, Any], rows: str = "out-of-fold") -> Figure:
    cal = info["calibration"]
    curve = cal["reliability"]
    fig = Figure(figsize=(4.5, 5.2))
    ax, hist = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfectly calibrated")
    ax.plot(curve["confidence"], curve["accuracy"], marker="o", lw=1.5,
            label=f"top-label ECE {cal['ece_top']:.3f}, Brier {cal['brier']:.3f}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_ylabel("fraction whose top class is right")
    ax.set_title(f"{head}: top-label reliability ({rows}, {cal['n_bins']} bins)", fontsize=FONT + 1)
    ax.legend(loc="upper left", fontsize=FONT - 1)
    n_bins = cal["n_bins"]
    bins = np.clip(np.ceil(np.asarray(curve["confidence"]) * n_bins) - 1, 0, n_bins - 1)
    hist.bar((bins + 0.5) / n_bins, curve["count"], width=0.9 / n_bins, color="C0", alpha=0.6)
    hist.set_xlabel("mean top-class probability")
    hist.set_ylabel("rows")
    return fig


def _save(fig: Figure, path: Path, out: Path, plots: dict[str, str], key: str) -> None:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plots[key] = path.relative_to(out).as_posix()


def _slug(head: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", head)
