"""``report.md``: laid out like the paper's Table 1 with the paper's numbers beside ours, and saying up front
what a reader must know before comparing them: random-weight features, a leaky protocol, image-level folds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from fusionfeat import paper
from fusionfeat.metrics import LABELS, METRICS, TIMINGS


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
    random = random_backbones(data)
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


def random_backbones(data: dict[str, Any]) -> list[str]:
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
        md_row(header),
        md_row(["---"] * 2 + ["---:"] * len(METRICS)),
    ]
    shown_paper: set[str] = set()
    for head, info in data["heads"].items():
        s = info["summary"]
        lines.append(md_row([f"`{head}`", "ours", *[pm(s[m]["mean"], s[m]["std"]) for m in METRICS]]))
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
    return md_row([f"*{paper.PAPER_NAMES[key]}*", "paper, Table 1", *cells])


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
        md_row(["head", *[LABELS[m] for m in METRICS]]),
        md_row(["---"] + ["---:"] * len(METRICS)),
    ]
    for head, info in data["heads"].items():
        s = info["summary"]
        lines.append(md_row([f"`{head}`", *[_ci(s[m], m) for m in METRICS]]))
    return "\n".join(lines)


def _timing_section(data: dict[str, Any]) -> str:
    lines = [
        "## Time per fold",
        "",
        md_row(["head", "inputs", "backbones", *[LABELS[t] for t in TIMINGS]]),
        md_row(["---"] * 3 + ["---:"] * len(TIMINGS)),
    ]
    for head, info in data["heads"].items():
        s = info["summary"]
        times = [pm(s[t]["mean"], s[t]["std"], digits=3) for t in TIMINGS]
        lines.append(md_row([f"`{head}`", info.get("inputs", ""), " + ".join(info.get("backbones", [])), *times]))
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
        md_row(["backbone", "weights", "input size", "normalization", "views", "precision", "device"]),
        md_row(["---"] * 7),
    ]
    for name, attrs in backbones.items():
        lines.append(
            md_row(
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
        lines += [md_row(["head", "true class", *names]), md_row(["---"] * 2 + ["---:"] * len(names))]
        for cls, weights in by_class.items():
            lines.append(md_row([f"`{head}`", cls, *[f"{weights[n]:.3f}" for n in names]]))
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


def md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def pm(mean: float | None, std: float | None, digits: int = 4) -> str:
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


