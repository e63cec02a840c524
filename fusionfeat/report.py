"""The run folder: ``metrics.json``, ``predictions.csv``, ``report.md`` and PNG plots of a CV result.

``report.md`` is laid out like the paper's Table 1 with the paper's numbers beside ours, and says up front
what a reader must know before comparing them: random-weight features, a leaky protocol, image-level folds.
Everything in it is rendered from ``metrics.json``, so ``compare_runs`` can line runs up later.
"""

from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

import fusionfeat
from fusionfeat import paper
from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluate import CVResult
from fusionfeat.metrics import LABELS, METRICS, TIMINGS

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
REPORT_FILE = "report.md"


def write_run(result: CVResult, out_dir: str | Path) -> Path:
    """Write the run folder (created if needed; our files in it are replaced) and return its path."""
    out = Path(out_dir).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    data = run_json(result)
    plots = write_plots(data, out)
    data["plots"] = plots
    (out / METRICS_FILE).write_text(json.dumps(_jsonable(data), indent=1, allow_nan=False) + "\n")
    write_predictions(result, out / PREDICTIONS_FILE)
    (out / REPORT_FILE).write_text(render_report(data))
    return out


# ----------------------------------------------------------------------------------------------- data


def run_json(result: CVResult) -> dict[str, Any]:
    """Everything about a run except per-sample predictions, as plain JSON-able data."""
    summary = result.summary()
    by_class = result.fusion_weights()
    heads = {}
    for head in result.heads:
        folds = result.fold_results(head)
        heads[head] = {
            **result.head_info[head],
            "summary": summary[head],
            "confusion_total": np.sum([f.confusion for f in folds], axis=0).tolist(),
            "fusion_weights_by_class": by_class.get(head),
            "folds": [
                {
                    "repeat": f.repeat,
                    "fold": f.fold,
                    "n_train": f.n_train,
                    "n_test": f.n_test,
                    "metrics": f.metrics,
                    "confusion": f.confusion,
                    "roc": f.roc,
                    "history": f.history,
                    "fusion_weights": f.fusion_weights,
                }
                for f in folds
            ],
        }
    return {
        "fusionfeat_version": fusionfeat.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "classes": result.classes,
        "positive": result.positive,
        "features": result.features,
        "protocol": result.protocol,
        "provenance": result.provenance,
        "heads": heads,
        "paper": {"citation": paper.CITATION, "protocol": paper.PROTOCOL, "table1": paper.TABLE1},
    }


def write_predictions(result: CVResult, path: Path) -> None:
    """Out-of-fold P(positive) per head for every evaluated row and repeat (one line per row and repeat)."""
    rows = result.rows
    prob_cols = [f"p_{result.positive}_{head}" for head in result.heads]
    weight_cols = [(h, i, f"w_{h}_{n}") for h, names in result.weight_names.items() for i, n in enumerate(names)]
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(
            ["repeat", "fold", "path", "view", "label", "group", *prob_cols, *[c for _, _, c in weight_cols]]
        )
        for r in range(result.test_fold.shape[0]):
            for j in range(len(rows["sample"])):
                writer.writerow(
                    [
                        r,
                        int(result.test_fold[r, j]),
                        rows["path"][j],
                        int(rows["view"][j]),
                        result.classes[int(rows["label"][j])],
                        rows["group"][j],
                        *[_fmt_prob(result.oof[h][r, j]) for h in result.heads],
                        *[_fmt_prob(result.oof_weights[h][r, j, i]) for h, i, _ in weight_cols],
                    ]
                )


def _fmt_prob(x: float) -> str:
    return "" if math.isnan(x) else f"{x:.6f}"


def _jsonable(value: Any) -> Any:
    """numpy → Python, NaN/inf → None, recursively (strict JSON)."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# ----------------------------------------------------------------------------------------------- markdown


def render_report(data: dict[str, Any]) -> str:
    """``report.md`` from a run's ``metrics.json`` data."""
    parts = [
        "# fusionfeat cross-validation report",
        *_warnings(data),
        _header(data),
        _results_section(data),
        _intervals_section(data),
        _timing_section(data),
        _protocol_section(data),
        _features_section(data),
        _fusion_section(data),
        _plots_section(data),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _warnings(data: dict[str, Any]) -> list[str]:
    out = []
    random = _random_backbones(data)
    if random:
        out.append(
            f"> **WARNING: RANDOM-WEIGHT FEATURES.** {', '.join(random)} used randomly initialised weights, "
            "not ImageNet weights. These numbers measure random features and are NOT comparable with the "
            "paper's."
        )
    protocol = data["protocol"]
    if protocol.get("leaky"):
        out.append(
            "> **WARNING: LEAKY PROTOCOL (`paper`).** As in the paper, the minority class was balanced with "
            "rotated/mirrored copies BEFORE the split, so test folds hold copies of images whose original or "
            "other copies were trained on, and the folds are image-level (cells of one subject on both "
            "sides). The scores are optimistic by construction; they reproduce the paper's protocol, not "
            "performance on new patients. Use `--cv grouped` for an honest estimate."
        )
    elif protocol.get("image_level"):
        reason = "subjects are unknown" if not protocol.get("subjects_known") else "as requested"
        out.append(
            f"> **Note: image-level folds** ({reason}): cells of one subject may be in both training and "
            "test, which inflates scores compared with new patients."
        )
    return out


def _random_backbones(data: dict[str, Any]) -> list[str]:
    used = {b for h in data["heads"].values() for b in h.get("backbones", [])}
    backbones = data["provenance"].get("backbones", {}) or {}
    return [b for b in sorted(used) if str(backbones.get(b, {}).get("weights_kind", "")) == "random"]


def _header(data: dict[str, Any]) -> str:
    prov, protocol = data["provenance"], data["protocol"]
    counts = protocol.get("class_counts", [])
    classes = ", ".join(f"{c} {n}" for c, n in zip(data["classes"], counts, strict=False))
    lines = [
        f"- created {data['created']} with fusionfeat {data['fusionfeat_version']}",
        f"- store `{prov.get('store', '?')}` ({protocol.get('n_samples', '?')} usable images: {classes}; "
        f"{protocol.get('n_skipped', 0)} skipped at extraction)",
        f"- data `{prov.get('data_root') or '?'}` (layout {prov.get('layout') or '?'}); features extracted "
        f"{prov.get('created') or '?'}",
        f"- positive class **{data['positive']}**; features: {data['features']}",
        f"- protocol **{protocol['name']}**: {protocol.get('text', '')}",
    ]
    return "\n".join(lines)


def _results_section(data: dict[str, Any]) -> str:
    folds, repeats = data["protocol"].get("n_folds", "?"), data["protocol"].get("repeats", 1)
    unit = f"{folds} folds" + (f" × {repeats} repeats" if repeats > 1 else "")
    header = ["head", "source", *[LABELS[m] for m in METRICS]]
    lines = [
        f"## Results (mean ± std over {unit}), beside the paper's Table 1",
        "",
        _md_row(header),
        _md_row(["---"] * 2 + ["---:"] * len(METRICS)),
    ]
    shown_paper: set[str] = set()
    for head, info in data["heads"].items():
        s = info["summary"]
        lines.append(_md_row([f"`{head}`", "ours", *[_pm(s[m]["mean"], s[m]["std"]) for m in METRICS]]))
        key = paper_key(head, info.get("backbones"))
        if key and key not in shown_paper:
            shown_paper.add(key)
            lines.append(_paper_row(key))
    for key in paper.TABLE1:
        if key not in shown_paper:
            lines.append(_paper_row(key))
    lines += [
        "",
        f"Paper: {paper.CITATION}. Its protocol: {paper.PROTOCOL}, so its numbers are comparable with a "
        "`--cv paper` run on ImageNet features, not with grouped folds. A dash means the paper does "
        f"not report that metric. Positive class: {data['positive']}; hard predictions are the most "
        "probable class.",
    ]
    return "\n".join(lines)


def paper_key(head: str, backbones: list[str] | None = None) -> str | None:
    """The paper's Table 1 row a head corresponds to (the attention variants share the fusion row, which
    fused ResNet18 and VGG16 only: an attention head over other ``backbones`` has no paper row)."""
    if head in paper.TABLE1:
        return head
    fuses_the_pair = backbones is None or sorted(backbones) == ["resnet18", "vgg16"]
    return "attention" if head.startswith("attention") and fuses_the_pair else None


def _paper_row(key: str) -> str:
    row = paper.TABLE1[key]
    cells = [f"{row[m]:.4f}" if m in row else "—" for m in METRICS]
    return _md_row([f"*{paper.PAPER_NAMES[key]}*", "paper, Table 1", *cells])


def _intervals_section(data: dict[str, Any]) -> str:
    repeats = data["protocol"].get("repeats", 1)
    if repeats < 2:
        return ""
    lines = [
        f"## 95% confidence intervals over {repeats} repeats",
        "",
        "Student-t intervals of the mean over repeat-level means (each repeat: a fresh split seed), "
        "shown clipped to the metric's range.",
        "",
        _md_row(["head", *[LABELS[m] for m in METRICS]]),
        _md_row(["---"] + ["---:"] * len(METRICS)),
    ]
    for head, info in data["heads"].items():
        s = info["summary"]
        lines.append(_md_row([f"`{head}`", *[_ci(s[m], m) for m in METRICS]]))
    return "\n".join(lines)


def _timing_section(data: dict[str, Any]) -> str:
    lines = [
        "## Time per fold",
        "",
        _md_row(["head", "inputs", "backbones", *[LABELS[t] for t in TIMINGS]]),
        _md_row(["---"] * 3 + ["---:"] * len(TIMINGS)),
    ]
    for head, info in data["heads"].items():
        s = info["summary"]
        times = [_pm(s[t]["mean"], s[t]["std"], digits=3) for t in TIMINGS]
        lines.append(_md_row([f"`{head}`", info.get("inputs", ""), " + ".join(info.get("backbones", [])), *times]))
    return "\n".join(lines)


def _protocol_section(data: dict[str, Any]) -> str:
    p = data["protocol"]
    lines = ["## Protocol", "", p.get("text", "")]
    if p.get("defaulted"):
        lines.append(
            f"\n(`{p['name']}` was chosen by default: subjects are {'known' if p['subjects_known'] else 'unknown'}.)"
        )
    lines += [
        "",
        f"- folds: {p.get('n_folds')}; seed: {p.get('seed')}; repeats: {p.get('repeats')}; "
        f"balancing: {p.get('balance')}",
        f"- subjects: {p.get('n_subjects') if p.get('subjects_known') else 'unknown'}; "
        f"images evaluated: {p.get('n_evaluated')} ({p.get('n_eval_rows')} test rows per repeat)",
    ]
    if p.get("n_paper_copies"):
        lines.append(f"- rotated/mirrored copies added before splitting (paper): {p['n_paper_copies']}")
    if p.get("n_training_copies"):
        lines.append(f"- distinct rotated/mirrored copies used in training folds only: {p['n_training_copies']}")
    plan = data["provenance"].get("fine_tuning_plan")
    if plan:
        lines.append(
            f"- fine-tuned features: each fold is scored with the backbones fine-tuned on its own training "
            f"images (plan: {plan['protocol']}, {plan['n_folds']} folds, seed {plan['seed']})"
        )
    lines += [f"- {w}" for w in p.get("warnings", [])]
    lines.append("\nSee `docs/protocols.md` for what each protocol does and what is asserted.")
    return "\n".join(lines)


def _features_section(data: dict[str, Any]) -> str:
    prov = data["provenance"]
    backbones = prov.get("backbones", {}) or {}
    lines = [
        "## Features",
        "",
        _md_row(["backbone", "weights", "input size", "normalization", "views", "precision", "device"]),
        _md_row(["---"] * 7),
    ]
    for name, attrs in backbones.items():
        lines.append(
            _md_row(
                [
                    f"`{name}`",
                    describe_weights(attrs),
                    str(attrs.get("input_size", "?")),
                    str(attrs.get("normalization", "?")),
                    str(attrs.get("views", attrs.get("n_views", "?"))),
                    str(attrs.get("precision", "?")),
                    str(attrs.get("device", "?")),
                ]
            )
        )
    versions = prov.get("versions") or {}
    if isinstance(versions, dict) and versions:
        lines.append("\nExtracted with " + ", ".join(f"{k} {v}" for k, v in versions.items()) + ".")
    if data["features"] == "finetuned":
        lines.append("\nScored features are the per-fold fine-tuned ones; the weights above are the starting point.")
    return "\n".join(lines)


def describe_weights(attrs: dict[str, Any]) -> str:
    """Human words for a backbone's weights; a file is named with its SHA-256, never called ImageNet."""
    kind = str(attrs.get("weights_kind", ""))
    sha = str(attrs.get("weights_sha256", "") or "")
    if kind == "random":
        return f"**RANDOM** (seed {attrs.get('seed', '?')}), not ImageNet"
    if kind == "imagenet":
        return f"ImageNet (`{attrs.get('weights', '')}`, SHA-256 `{sha}`)"
    if kind == "file":
        return f"file `{attrs.get('weights', '?')}` (SHA-256 `{sha}`)"
    return f"unknown (`{attrs.get('weights', '?')}`)"


def _fusion_section(data: dict[str, Any]) -> str:
    heads = {h: i["fusion_weights_by_class"] for h, i in data["heads"].items() if i.get("fusion_weights_by_class")}
    if not heads:
        return ""
    lines = [
        "## Fusion weights",
        "",
        "Mean attention weight of each backbone over out-of-fold images, by true class.",
        "",
    ]
    for head, by_class in heads.items():
        names = list(next(iter(by_class.values())).keys())
        lines += [_md_row(["head", "true class", *names]), _md_row(["---"] * 2 + ["---:"] * len(names))]
        for cls, weights in by_class.items():
            lines.append(_md_row([f"`{head}`", cls, *[f"{weights[n]:.3f}" for n in names]]))
        lines.append("")
    return "\n".join(lines).rstrip()


def _plots_section(data: dict[str, Any]) -> str:
    plots = data.get("plots", {})
    if not plots:
        return ""
    lines = ["## Plots"]
    if "roc_all" in plots:
        lines += ["", f"![mean ROC of every head]({plots['roc_all']})"]
    for head in data["heads"]:
        lines += ["", f"### `{head}`", ""]
        for kind, title in (
            ("roc", "ROC per fold"),
            ("confusion", "confusion matrix"),
            ("history", "training"),
        ):
            if f"{kind}_{head}" in plots:
                lines.append(f"![{head} {title}]({plots[f'{kind}_{head}']})")
    return "\n".join(lines)


def _md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _pm(mean: float | None, std: float | None, digits: int = 4) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "n/a"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def _ci(stat: dict[str, Any], metric: str) -> str:
    low, high = stat.get("ci95_low"), stat.get("ci95_high")
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return "n/a"
    floor = -1.0 if metric == "mcc" else 0.0
    return f"{stat['mean']:.4f} [{max(low, floor):.4f}, {min(high, 1.0):.4f}]"


# ----------------------------------------------------------------------------------------------- plots


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
    if len(data["heads"]) > 1:
        _save(_roc_all_figure(data), out / "roc_all.png", plots, "roc_all")
    return plots


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
        ax.plot(_GRID, m, color="black", lw=2, label=f"mean (AUC {_pm(auc['mean'], auc['std'])})")
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
            ax.plot(_GRID, mean[0], lw=1.5, label=f"{head} (AUC {_pm(auc['mean'], auc['std'], 3)})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=0.8)
    _roc_axes(ax, "mean ROC over folds")
    ax.legend(loc="lower right", fontsize=7)
    return fig


def _confusion_figure(head: str, info: dict[str, Any], data: dict[str, Any]) -> Figure:
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
    per = "summed over folds" + (f", mean of {repeats} repeats" if repeats > 1 else "")
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


# ----------------------------------------------------------------------------------------------- compare


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's ``metrics.json`` data (FusionfeatError when it is not a run folder)."""
    path = Path(run_dir).expanduser() / METRICS_FILE
    if not path.is_file():
        raise FusionfeatError(
            f"{Path(run_dir)} is not a fusionfeat run folder (no {METRICS_FILE}); "
            "pass folders written by a fusionfeat evaluation"
        )
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise FusionfeatError(f"{path} is not valid JSON ({exc.msg}); rerun the evaluation that wrote it") from None


def compare_runs(run_dirs: Sequence[str | Path]) -> str:
    """A markdown table of several runs side by side: one row per run and head, mean ± std per metric."""
    if not run_dirs:
        raise FusionfeatError("compare_runs needs at least one run folder")
    runs = [(Path(d).name or str(d), load_run(d)) for d in run_dirs]
    header = ["run", "protocol", "features", "head", *[LABELS[m] for m in METRICS]]
    lines = [_md_row(header), _md_row(["---"] * 4 + ["---:"] * len(METRICS))]
    notes = []
    for name, data in runs:
        flags = _run_flags(data)
        for head, info in data["heads"].items():
            s = info["summary"]
            cells = [_pm(_nan(s[m]["mean"]), _nan(s[m]["std"])) for m in METRICS]
            lines.append(
                _md_row(
                    [
                        f"`{name}`",
                        _protocol_cell(data) + flags,
                        data.get("features", "?"),
                        f"`{head}`",
                        *cells,
                    ]
                )
            )
        notes.append(f"- `{name}`: {data['protocol'].get('text', '')} Weights: {_weights_summary(data)}.")
    legend = (
        "Flags: LEAKY = the paper's leaky protocol; RANDOM = random-weight features (not comparable with ImageNet)."
    )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n\n" + legend + "\n"


def _run_flags(data: dict[str, Any]) -> str:
    flags = []
    if data["protocol"].get("leaky"):
        flags.append("LEAKY")
    if _random_backbones(data):
        flags.append("RANDOM")
    return f" **{' '.join(flags)}**" if flags else ""


def _protocol_cell(data: dict[str, Any]) -> str:
    p = data["protocol"]
    reps = f"×{p['repeats']}" if p.get("repeats", 1) > 1 else ""
    return f"{p['name']} {p.get('n_folds', '?')}-fold{reps}, {p.get('balance', '?')}"


def _weights_summary(data: dict[str, Any]) -> str:
    backbones = data["provenance"].get("backbones", {}) or {}
    return "; ".join(f"{b}: {describe_weights(a)}" for b, a in backbones.items()) or "unknown"


def _nan(x: float | None) -> float:
    return math.nan if x is None else float(x)
