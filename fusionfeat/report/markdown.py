"""``report.md``: laid out like the paper's Table 1 with the paper's numbers beside ours, and saying up front
what a reader must know before comparing them: random-weight features, a leaky protocol, image-level folds.
"""

from __future__ import annotations

from typing import Any

from fusionfeat import paper
from fusionfeat.evaluation.metrics import LABELS, METRICS, TIMINGS
from fusionfeat.report.cells import CLIP_NOTE, diff_ci, interval, md_row, num, pm, pval
from fusionfeat.report.context import calibration_text, count_note, rule_summary, table1_note
from fusionfeat.report.flags import (
    describe_weights,
    file_backbones,
    file_heads,
    flags_text,
    random_backbones,
    random_heads,
    tag,
)
from fusionfeat.stats import PAPER_F1_NOTE


def render_report(data: dict[str, Any]) -> str:
    """``report.md`` from a run's ``metrics.json`` data."""
    parts = [
        "# fusionfeat cross-validation report",
        *_warnings(data),
        _header(data),
        _results_section(data),
        _intervals_section(data),
        _fusion_help_section(data),
        _pairs_section(data),
        _calibration_section(data),
        _operating_section(data),
        _subjects_section(data),
        _params_section(data),
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
        affected = random_heads(data)
        out.append(
            f"> **WARNING: RANDOM-WEIGHT FEATURES** in head(s) {', '.join(f'`{h}`' for h in affected)}: "
            f"backbone(s) {', '.join(random)} used randomly initialised weights, not ImageNet weights. Those "
            "heads' numbers measure random features and are NOT comparable with the paper's."
        )
    files = file_backbones(data)
    if files:
        out.append(
            f"> **Note: WEIGHTS FROM A FILE** in head(s) {', '.join(f'`{h}`' for h in file_heads(data))}: "
            f"backbone(s) {', '.join(files)} loaded their weights from a file (Features section: its name and "
            "SHA-256), not ImageNet weights. Those heads are not the paper's ImageNet models."
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
        f"- decision rule: {rule_summary(data)}; calibration: {calibration_text(data)}",
    ]
    return "\n".join(lines)


def _results_section(data: dict[str, Any]) -> str:
    folds, repeats = data["protocol"].get("n_folds", "?"), data["protocol"].get("repeats", 1)
    unit = f"{folds} folds" + (f" × {repeats} repeats" if repeats > 1 else "")
    header = ["head", "source", "weights", *[LABELS[m] for m in METRICS]]
    different = table1_note(data)
    lines = [
        f"## Results (per-fold mean ± sd over {unit}), beside the paper's Table 1",
        "",
        *([f"> {different}", ""] if different else []),
        md_row(header),
        md_row(["---"] * 3 + ["---:"] * len(METRICS)),
    ]
    shown_paper: set[str] = set()
    for head, info in data["heads"].items():
        s = info["summary"]
        lines.append(
            md_row([f"`{head}`", "ours", flags_text(info), *[pm(s[m]["mean"], s[m]["std"]) for m in METRICS]])
        )
        key = paper_key(head, info.get("backbones"))
        if key and key not in shown_paper:
            shown_paper.add(key)
            lines.append(_paper_row(key, bool(different)))
    for key in paper.TABLE1:
        if key not in shown_paper:
            lines.append(_paper_row(key, bool(different)))
    lines += [
        "",
        f"Paper: {paper.CITATION}. Its protocol: {paper.PROTOCOL}, so its numbers are comparable with a "
        "`--cv paper` run on ImageNet features, not with grouped folds. A dash means the paper does "
        f"not report that metric. Positive class: {data['positive']}; decision rule: "
        f"{data.get('decision_rule', 'argmax (the more probable class)')}. Values are per-fold: each metric is "
        "computed on each test fold, then averaged (pooled out-of-fold values and intervals: next section)."
        + (f" {count_note(data)}" if count_note(data) else ""),
        "",
        f"Note on the paper's F1: {data['paper'].get('f1_note', PAPER_F1_NOTE)}",
    ]
    return "\n".join(lines)


def paper_key(head: str, backbones: list[str] | None = None) -> str | None:
    """The paper's Table 1 row a head corresponds to (the attention variants share the fusion row, which
    fused ResNet18 and VGG16 only: an attention head over other ``backbones`` has no paper row)."""
    if head in paper.TABLE1:
        return head
    fuses_the_pair = backbones is None or sorted(backbones) == ["resnet18", "vgg16"]
    return "attention" if head.startswith("attention") and fuses_the_pair else None


def _paper_row(key: str, different_data: bool = False) -> str:
    row = paper.TABLE1[key]
    cells = [f"{row[m]:.4f}" if m in row else "—" for m in METRICS]
    source = "paper, Table 1" + (" (C-NMC 2019: **different data**)" if different_data else " (C-NMC 2019)")
    return md_row([f"*{paper.PAPER_NAMES[key]}*", source, "ImageNet", *cells])


def _intervals_section(data: dict[str, Any]) -> str:
    heads = {h: i for h, i in data["heads"].items() if i.get("uncertainty")}
    if not heads:
        return ""
    p = data["protocol"]
    unit = next(iter(heads.values()))["uncertainty"]["roc_auc"]["pooled"]["bootstrap"].get("resampled", "images")
    lines = [
        "## Uncertainty: per-fold and pooled out-of-fold values with 95% intervals",
        "",
        f"- **per-fold mean ± sd**: each metric computed on each of the {p.get('n_folds')} folds × "
        f"{p.get('repeats', 1)} repeats, then averaged.",
        "- **corrected t 95% CI**: Nadeau–Bengio corrected resampled t interval over folds × repeats (variance "
        "inflated by n_test/n_train for the overlap of training sets; " + _counted(p) + ").",
        "- **pooled OOF**: the metric computed once on all out-of-fold predictions of a repeat, averaged over "
        f"repeats; **bootstrap 95% CI**: percentile interval of that value, resampling {unit}. It holds the "
        "fitted models fixed (it excludes training variability), which is why it is usually narrower than the "
        "corrected t interval.",
        "- ROC AUC: the per-fold value ranks images within a fold only; the pooled value also ranks images of "
        "different folds (different models) against each other, so the two can differ.",
        "",
        f"Intervals are shown clipped to the metric's range; {CLIP_NOTE}.",
    ]
    for head, info in heads.items():
        lines += [
            "",
            f"### `{head}` ({flags_text(info)})",
            "",
            md_row(["metric", "per-fold mean ± sd", "corrected t 95% CI", "pooled OOF", "bootstrap 95% CI"]),
            md_row(["---"] + ["---:"] * 4),
        ]
        for m in METRICS:
            u = info["uncertainty"][m]
            ci, pooled = u["corrected_t"], u["pooled"]
            lines.append(
                md_row(
                    [
                        LABELS[m],
                        pm(u["per_fold"]["mean"], u["per_fold"]["sd"]),
                        interval(ci.get("lo"), ci.get("hi"), m),
                        num(pooled["mean"]),
                        interval(pooled["bootstrap"].get("lo"), pooled["bootstrap"].get("hi"), m),
                    ]
                )
            )
    return "\n".join(lines)


def _counted(protocol: dict[str, Any]) -> str:
    """What n_train and n_test count, which depends on whether copies were scored."""
    if protocol.get("leaky"):
        return ("under `paper` n counts the scored rows, so the rotated/mirrored copies added before the split "
                "count as images")
    return "n counts evaluated images, not augmentation copies"


def _fusion_help_section(data: dict[str, Any]) -> str:
    comp = data.get("comparisons") or {}
    rows = comp.get("fusion_table") or []
    if not rows:
        return ""
    lines = [
        "## Does fusion help?",
        "",
        "Each fusion head (reading two or more backbones) against `concat` and against the best "
        f"single-backbone head (by pooled OOF ROC AUC: `{comp.get('best_single')}`), on the same splits. "
        "Difference in ROC AUC (fusion − reference): per-fold, with the corrected resampled paired t-test over "
        "folds × repeats; pooled OOF, with the paired test named in the table. p (Holm) is adjusted over the "
        "rows of this table, separately for each test.",
        "",
        md_row(["fusion head", "against", "Δ AUC per-fold [95% CI]", "p (corrected t)", "p (Holm)",
                "Δ AUC pooled [95% CI]", "p", "p (Holm)", "pooled test"]),
        md_row(["---"] * 2 + ["---:"] * 6 + ["---"]),
    ]
    for r in rows:
        t, b = r["per_fold"], r["pooled"]
        lines.append(
            md_row(
                [
                    tag(data, r["head"]),
                    f"{tag(data, r['against'])} ({r['role']})",
                    diff_ci(t),
                    pval(t.get("p")),
                    pval(t.get("p_holm")),
                    diff_ci(b),
                    pval(b.get("p")),
                    pval(b.get("p_holm")),
                    b["method"],
                ]
            )
        )
    return "\n".join(lines)


def _pairs_section(data: dict[str, Any]) -> str:
    pairs = (data.get("comparisons") or {}).get("pairs") or []
    if not pairs:
        return ""
    lines = [
        "## Paired comparisons of every two heads (ROC AUC, a − b, unadjusted p)",
        "",
        md_row(["a", "b", "Δ per-fold [95% CI]", "p (corrected t)", "Δ pooled [95% CI]", "p", "pooled test"]),
        md_row(["---"] * 2 + ["---:"] * 4 + ["---"]),
    ]
    for r in pairs:
        t, b = r["per_fold"], r["pooled"]
        lines.append(
            md_row(
                [
                    tag(data, r["a"]),
                    tag(data, r["b"]),
                    diff_ci(t),
                    pval(t.get("p")),
                    diff_ci(b),
                    pval(b.get("p")),
                    b["method"],
                ]
            )
        )
    return "\n".join(lines)


def _calibration_section(data: dict[str, Any]) -> str:
    heads = {h: i["calibration"] for h, i in data["heads"].items() if i.get("calibration")}
    if not heads:
        return ""
    first = next(iter(heads.values()))
    how = first.get("calibrated")
    lines = [
        "## Calibration",
        "",
        "Brier score and expected calibration error (ECE, "
        f"{first.get('n_bins', 10)} equal-width bins) of the pooled out-of-fold P({data['positive']}), per repeat "
        "and averaged; the reliability diagrams pool every repeat's rows. "
        + (f"Probabilities were calibrated post hoc ({how}), fitted inside each training fold only."
           if how else "No post-hoc calibration (`fit --calibrate sigmoid|isotonic` adds it)."),
        "",
        md_row(["head", "weights", "Brier", "ECE"]),
        md_row(["---", "---", "---:", "---:"]),
    ]
    for head, c in heads.items():
        lines.append(md_row([f"`{head}`", flags_text(data["heads"][head]), num(c["brier"]), num(c["ece"])]))
    plots = data.get("plots", {})
    for head in heads:
        if f"reliability_{head}" in plots:
            lines += ["", f"![{head} reliability diagram]({plots[f'reliability_{head}']})"]
    return "\n".join(lines)


def _operating_section(data: dict[str, Any]) -> str:
    heads = {h: i["operating_point"] for h, i in data["heads"].items() if i.get("operating_point")}
    if not heads:
        return (
            "## Decision threshold\n\nHard predictions are the argmax (the more probable class, "
            f"P({data['positive']}) ≥ 0.5); no operating point was set (`fit --operating-point sens=0.95`)."
        )
    target = next(iter(heads.values()))["target"]
    what = ", ".join(f"{'sensitivity' if k == 'sens' else 'specificity'} ≥ {v}" for k, v in target.items())
    lines = [
        "## Operating point",
        "",
        f"Target {what}: in each fold, the threshold on P({data['positive']}) was chosen on the training fold's "
        "inner out-of-fold predictions (never the test fold); the test fold was then scored at it. Per-fold "
        "mean ± sd.",
        "",
        md_row(["head", "threshold", "inner sensitivity", "inner specificity", "test sensitivity",
                "test specificity"]),
        md_row(["---"] + ["---:"] * 5),
    ]
    for head, o in heads.items():
        cells = [pm(o[k]["mean"], o[k]["sd"]) for k in ("threshold", "inner_sensitivity", "inner_specificity",
                                                         "test_sensitivity", "test_specificity")]
        lines.append(md_row([tag(data, head), *cells]))
    return "\n".join(lines)


def _subjects_section(data: dict[str, Any]) -> str:
    sub = data.get("subjects")
    if not sub:
        return ""
    if sub.get("skipped"):
        return f"## SUBJECT-LEVEL diagnosis\n\nNot computed: {sub['skipped']}."
    n = len(sub.get("subject", []))
    how = sub.get("aggregate", "mean")
    rule = {"mean": "mean of its cells' probabilities", "median": "median of its cells' probabilities",
            "fraction": "fraction of its cells with P ≥ 0.5"}.get(how, how)
    lines = [
        "## SUBJECT-LEVEL diagnosis (one row per subject, not per cell)",
        "",
        f"Each of the {n} subjects is scored by the {rule} (`--subject-aggregate {how}`) over its out-of-fold "
        f"cells and called {data['positive']} at score ≥ 0.5. Metrics are computed on subjects, per repeat, "
        "then averaged; the 95% interval is a bootstrap over subjects. Scores per subject: `subjects.csv`."
        + (f" {sub['n_unassigned']} cells without a subject id were left out." if sub.get("n_unassigned") else ""),
        "",
        md_row(["head", *[LABELS[m] for m in METRICS]]),
        md_row(["---"] + ["---:"] * len(METRICS)),
    ]
    for head, h in sub["heads"].items():
        cells = [
            f"{num(h['metrics'][m]['mean'])} "
            f"{interval(h['metrics'][m]['bootstrap'].get('lo'), h['metrics'][m]['bootstrap'].get('hi'), m)}"
            for m in METRICS
        ]
        lines.append(md_row([tag(data, head), *cells]))
    plots = data.get("plots", {})
    for head in sub["heads"]:
        for kind, title in (("subject_roc", "subject-level ROC"), ("subject_confusion", "subject-level confusion")):
            if f"{kind}_{head}" in plots:
                lines += ["", f"![{head} {title}]({plots[f'{kind}_{head}']})"]
    return "\n".join(lines)


def _params_section(data: dict[str, Any]) -> str:
    heads = {h: i.get("params") for h, i in data["heads"].items() if i.get("params")}
    if not heads:
        return ""
    lines = [
        "## Head hyper-parameters",
        "",
        "As fitted (`estimator.get_params()`; seeds are the run seed + repeat). Set them with "
        "`fit --head-param HEAD.NAME=VALUE` or `--head-params FILE.toml`.",
        "",
        md_row(["head", "parameters"]),
        md_row(["---", "---"]),
    ]
    for head, params in heads.items():
        lines.append(md_row([tag(data, head), ", ".join(f"{k}={v}" for k, v in params.items())]))
    for head, info in data["heads"].items():
        folds = info.get("folds") or []
        approx = sorted({f["kernel"] for f in folds if (f.get("kernel") or "rbf") != "rbf"})
        if approx:
            n_approx = sum(f.get("kernel") in approx for f in folds)
            lines += ["", f"{tag(data, head)}: approximate kernel ({', '.join(approx)}) in {n_approx} "
                      f"of {len(folds)} folds, whose training rows exceed `max_exact_rows`; "
                      f"`--head-param {head}.max_exact_rows=none` fits the exact SVC (cost ~ rows²)."]
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
        lines.append(md_row([tag(data, head), info.get("inputs", ""), " + ".join(info.get("backbones", [])), *times]))
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
                    str(attrs.get("precision", "?")) + (" (compiled)" if attrs.get("compile", "eager") != "eager"
                                                         else ""),
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
            lines.append(md_row([tag(data, head), cls, *[f"{weights[n]:.3f}" for n in names]]))
        lines.append("")
    return "\n".join(lines).rstrip()


def _plots_section(data: dict[str, Any]) -> str:
    plots = data.get("plots", {})
    if not plots:
        return ""
    lines = ["## Plots"]
    if "summary" in plots:
        lines += ["", "Every head's ROC from its pooled out-of-fold predictions (averaged over repeats), with a "
                  "pointwise 95% bootstrap band resampling the units of the intervals above; dots mark each "
                  "head's decision rule. Ready for a paper:", "", f"![ROC of every head]({plots['summary']})"]
    if "training" in plots:
        lines += ["", "Training curves of the torch heads over every fold and repeat (mean ± sd); the validation "
                  "curve is the early-stopping validation split held out of each training fold, never the test "
                  "fold:", "", f"![training curves]({plots['training']})"]
    details = [(head, kind, title) for head in data["heads"] for kind, title in
               (("roc", "ROC per fold"), ("confusion", "confusion matrix")) if f"{kind}_{head}" in plots]
    if details:
        lines += ["", "### Per head (`figures/`)"]
    for head in data["heads"]:
        images = [f"![{head} {title}]({plots[f'{kind}_{head}']})" for h, kind, title in details if h == head]
        if images:
            lines += ["", f"#### `{head}`", "", *images]
    return "\n".join(lines)
