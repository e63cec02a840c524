"""PNG plots of a run: the figures a paper can use in the run folder (``summary.png``, ``training.png``,
drawn by ``fusionfeat.report.figures``) and each head's detail figures in ``figures/`` (ROC per fold,
confusion, reliability, subject-level ROC and confusion)."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from fusionfeat.report.cells import pm
from fusionfeat.report.figures import FONT, summary_figure, training_figure
from fusionfeat.report.roc_bands import RocBand

FIGURES_DIR = "figures"
SUMMARY_PNG = "summary.png"
TRAINING_PNG = "training.png"


def write_plots(data: dict[str, Any], out: Path, bands: dict[str, RocBand] | None = None) -> dict[str, str]:
    """``summary.png`` (with ``bands``, every head's pooled ROC and its bootstrap band), ``training.png``
    (torch heads) and per-head detail figures under ``figures/``; returns plot key -> path relative to ``out``."""
    plots: dict[str, str] = {}
    if bands:
        _save(summary_figure(data, bands), out / SUMMARY_PNG, out, plots, "summary")
    training = training_figure(data)
    if training is not None:
        _save(training, out / TRAINING_PNG, out, plots, "training")
    detail = out / FIGURES_DIR
    detail.mkdir(exist_ok=True)
    for head, info in data["heads"].items():
        slug = _slug(head)
        _save(_roc_figure(head, info, data), detail / f"roc_{slug}.png", out, plots, f"roc_{head}")
        _save(_confusion_figure(head, info, data), detail / f"confusion_{slug}.png", out, plots, f"confusion_{head}")
        if info.get("calibration"):
            _save(_reliability_figure(head, info, data), detail / f"reliability_{slug}.png", out, plots,
                  f"reliability_{head}")
    for head, sub in ((data.get("subjects") or {}).get("heads") or {}).items():
        slug = _slug(head)
        if sub.get("roc"):
            _save(_subject_roc_figure(head, sub), detail / f"subject_roc_{slug}.png", out, plots,
                  f"subject_roc_{head}")
        counts = {"confusion_total": sub["confusion_total"]}
        fig = _confusion_figure(f"{head} SUBJECT-LEVEL", counts, data, "subjects")
        _save(fig, detail / f"subject_confusion_{slug}.png", out, plots, f"subject_confusion_{head}")
    return plots


def _reliability_figure(head: str, info: dict[str, Any], data: dict[str, Any]) -> Figure:
    cal = info["calibration"]
    curve = cal["reliability"]
    fig = Figure(figsize=(4.5, 5.2))
    ax, hist = fig.subplots(2, 1, gridspec_kw={"height_ratios": [3, 1]}, sharex=True)
    ref = cal.get("ece_if_calibrated")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8,
            label="perfectly calibrated" + (f" (its ECE here ≈ {ref['mean']:.3f})" if ref else ""))
    boot = cal.get("ece_bootstrap") or {}
    ece_ci = f" [{boot['lo']:.3f}, {boot['hi']:.3f}]" if boot.get("lo") is not None and boot.get("hi") is not None \
        and np.isfinite(boot["lo"]) and np.isfinite(boot["hi"]) else ""
    slope = ((cal.get("recalibration") or {}).get("slope") or {}).get("estimate")
    slope_text = f", slope {slope:.2f}" if slope is not None and np.isfinite(slope) else ""
    ax.plot(curve["prob_pred"], curve["prob_true"], marker="o", lw=1.5,
            label=f"Brier {pm(cal['brier'], None, 3)}, ECE {pm(cal['ece'], None, 3)}{ece_ci}{slope_text}")
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


def _save(fig: Figure, path: Path, out: Path, plots: dict[str, str], key: str) -> None:
    fig.savefig(path, dpi=150 if path.parent == out else 110, bbox_inches="tight")
    plots[key] = path.relative_to(out).as_posix()


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


def _roc_figure(head: str, info: dict[str, Any], data: dict[str, Any]) -> Figure:
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    folds = [f for f in info["folds"] if f["roc"]["fpr"]]
    for i, f in enumerate(folds):
        ax.plot(f["roc"]["fpr"], f["roc"]["tpr"], lw=0.8, alpha=0.5, color="tab:blue",
                label=f"each test fold ({len(folds)}: {_fits(data)})" if i == 0 else None)
    mean = _mean_roc(info)
    auc = info["summary"]["roc_auc"]
    if mean is not None:
        m, s = mean
        ax.plot(_GRID, m, color="black", lw=2, label=f"mean over folds (AUC {pm(auc['mean'], auc['std'], 3)})")
        ax.fill_between(_GRID, np.clip(m - s, 0, 1), np.clip(m + s, 0, 1), color="grey", alpha=0.25,
                        label="± 1 sd over folds")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    _roc_axes(ax, f"{head}: ROC per test fold")
    aucs = [f["metrics"].get("roc_auc") for f in folds]
    aucs = [a for a in aucs if a is not None and not (isinstance(a, float) and math.isnan(a))]
    if aucs:
        ax.text(0.98, 0.3, f"fold AUCs {min(aucs):.3f}–{max(aucs):.3f}", ha="right", fontsize=FONT - 1,
                transform=ax.transAxes)
    ax.legend(loc="lower right", fontsize=FONT - 1)
    return fig


def _fits(data: dict[str, Any]) -> str:
    p = data["protocol"]
    repeats = int(p.get("repeats", 1) or 1)
    return f"{p.get('n_folds', '?')} folds" + (f" × {repeats} repeats" if repeats > 1 else "")


def _roc_axes(ax: Any, title: str) -> None:
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("false positive rate (1 − specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title)


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
