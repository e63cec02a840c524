"""PNG plots of a run: ROC per head with per-fold curves, summed confusion, training curves, all heads' ROC."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from fusionfeat.report.cells import pm


def write_plots(data: dict[str, Any], out: Path) -> dict[str, str]:
    """PNG plots (ROC per head with per-fold curves, summed confusion, training curves, all heads' ROC);
    returns plot key -> file name relative to ``out``."""
    plots: dict[str, str] = {}
    for head, info in data["heads"].items():
        slug = _slug(head)
        _save(_roc_figure(head, info), out / f"roc_{slug}.png", plots, f"roc_{head}")
        _save(_confusion_figure(head, info, data), out / f"confusion_{slug}.png", plots, f"confusion_{head}")
        if any(f.get("history") for f in info["folds"]):
            _save(_history_figure(head, info), out / f"history_{slug}.png", plots, f"history_{head}")
        if info.get("calibration"):
            _save(_reliability_figure(head, info, data), out / f"reliability_{slug}.png", plots, f"reliability_{head}")
    if len(data["heads"]) > 1:
        _save(_roc_all_figure(data), out / "roc_all.png", plots, "roc_all")
    for head, sub in ((data.get("subjects") or {}).get("heads") or {}).items():
        slug = _slug(head)
        if sub.get("roc"):
            _save(_subject_roc_figure(head, sub), out / f"subject_roc_{slug}.png", plots, f"subject_roc_{head}")
        counts = {"confusion_total": sub["confusion_total"]}
        fig = _confusion_figure(f"{head} SUBJECT-LEVEL", counts, data, "subjects")
        _save(fig, out / f"subject_confusion_{slug}.png", plots, f"subject_confusion_{head}")
    return plots


def _reliability_figure(head: str, info: dict[str, Any], data: dict[str, Any]) -> Figure:
    cal = info["calibration"]
    curve = cal["reliability"]
    fig = Figure(figsize=(4.5, 5.2))
    ax, hist = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8, label="perfectly calibrated")
    ax.plot(curve["prob_pred"], curve["prob_true"], marker="o", lw=1.5,
            label=f"Brier {pm(cal['brier'], None, 3)}, ECE {pm(cal['ece'], None, 3)}")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_ylabel(f"observed fraction {data['positive']}")
    ax.set_title(f"{head}: reliability (pooled OOF, {cal['n_bins']} bins)", fontsize=9)
    ax.legend(loc="upper left", fontsize=7)
    n_bins = cal["n_bins"]
    bins = np.clip(np.ceil(np.asarray(curve["prob_pred"]) * n_bins) - 1, 0, n_bins - 1)  # bin i: (i/n, (i+1)/n]
    hist.bar((bins + 0.5) / n_bins, curve["count"], width=0.9 / n_bins, color="C0", alpha=0.6)
    hist.set_xlabel(f"mean predicted P({data['positive']})")
    repeats = int(data["protocol"].get("repeats", 1) or 1)
    hist.set_ylabel("rows × repeats" if repeats > 1 else "rows")  # the curve pools every repeat's rows
    return fig


def _subject_roc_figure(head: str, sub: dict[str, Any]) -> Figure:
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    auc = sub["metrics"]["roc_auc"]
    for r, roc in enumerate(sub["roc"]):
        ax.plot(roc["fpr"], roc["tpr"], lw=1.2, alpha=0.7, marker="o", ms=3, clip_on=False,
                label=f"repeat {r} (AUC {auc['per_repeat'][r]:.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    _roc_axes(ax, f"{head}: SUBJECT-LEVEL ROC")
    ax.legend(loc="lower right", fontsize=7)
    return fig


def _save(fig: Figure, path: Path, plots: dict[str, str], key: str) -> None:
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plots[key] = path.name


def _slug(head: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", head)


_GRID = np.linspace(0.0, 1.0, 201)


def _mean_roc(info: dict[str, Any]) -> tuple[np.ndarray, np.ndarray] | None:
    curves = []
    for f in info["folds"]:
        fpr, tpr = f["roc"]["fpr"], f["roc"]["tpr"]
        if fpr:
            t = np.interp(_GRID, fpr, tpr)
            t[0] = 0.0
            curves.append(t)
    if not curves:
        return None
    return np.mean(curves, axis=0), np.std(curves, axis=0)


def _roc_figure(head: str, info: dict[str, Any]) -> Figure:
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    for f in info["folds"]:
        if f["roc"]["fpr"]:
            ax.plot(f["roc"]["fpr"], f["roc"]["tpr"], lw=0.8, alpha=0.45, label=_fold_label(f))
    mean = _mean_roc(info)
    auc = info["summary"]["roc_auc"]
    if mean is not None:
        m, s = mean
        ax.plot(_GRID, m, color="black", lw=2, label=f"mean (AUC {pm(auc['mean'], auc['std'])})")
        ax.fill_between(_GRID, np.clip(m - s, 0, 1), np.clip(m + s, 0, 1), color="grey", alpha=0.2, label="± 1 std")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    _roc_axes(ax, f"{head}: ROC per fold")
    ax.legend(loc="lower right", fontsize=6 if len(info["folds"]) > 6 else 8)
    return fig


def _fold_label(f: dict[str, Any]) -> str:
    auc = f["metrics"].get("roc_auc")
    auc_text = "n/a" if auc is None or (isinstance(auc, float) and math.isnan(auc)) else f"{auc:.3f}"
    return f"repeat {f['repeat']} fold {f['fold']} (AUC {auc_text})"


def _roc_axes(ax: Any, title: str) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title)


def _roc_all_figure(data: dict[str, Any]) -> Figure:
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    for head, info in data["heads"].items():
        mean = _mean_roc(info)
        if mean is not None:
            auc = info["summary"]["roc_auc"]
            ax.plot(_GRID, mean[0], lw=1.5, label=f"{head} (AUC {pm(auc['mean'], auc['std'], 3)})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    _roc_axes(ax, "mean ROC over folds")
    ax.legend(loc="lower right", fontsize=7)
    return fig


def _confusion_figure(head: str, info: dict[str, Any], data: dict[str, Any], unit: str = "folds") -> Figure:
    repeats = max(1, int(data["protocol"].get("repeats", 1)))
    counts = np.asarray(info["confusion_total"], dtype=float) / repeats
    positive = data["positive"]
    negative = next(c for c in data["classes"] if c != positive)
    fig = Figure(figsize=(4, 3.6))
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues")
    for i in range(2):
        for j in range(2):
            text = f"{counts[i, j]:.0f}" if repeats == 1 else f"{counts[i, j]:.1f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                color="white" if counts[i, j] > counts.max() / 2 else "black",
            )
    ax.set_xticks([0, 1], [negative, positive])
    ax.set_yticks([0, 1], [negative, positive])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    per = ("summed over folds" if unit == "folds" else "subjects") + (
        f", mean of {repeats} repeats" if repeats > 1 else "")
    ax.set_title(f"{head}: confusion ({per})", fontsize=9)
    return fig


def _history_figure(head: str, info: dict[str, Any]) -> Figure:
    fig = Figure(figsize=(9, 3.6))
    loss_ax, acc_ax = fig.subplots(1, 2)
    folds = [f for f in info["folds"] if f.get("history") and f["repeat"] == info["folds"][0]["repeat"]]
    for i, f in enumerate(folds):
        color = f"C{i % 10}"
        epochs = [e["epoch"] for e in f["history"]]
        for ax, key in ((loss_ax, "loss"), (acc_ax, "acc")):
            ax.plot(
                epochs,
                [e.get(f"train_{key}") for e in f["history"]],
                color=color,
                lw=1,
                label=f"fold {f['fold']} train",
            )
            val = [e.get(f"val_{key}") for e in f["history"]]
            if any(v is not None for v in val):
                ax.plot(
                    epochs,
                    [np.nan if v is None else v for v in val],
                    color=color,
                    lw=1,
                    ls="--",
                    label=f"fold {f['fold']} validation",
                )
    for ax, name in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.set_title(f"{head}: {name} per epoch")
        ax.legend(fontsize=6)
    return fig


