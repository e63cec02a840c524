"""``report.md``: laid out like the paper's Table 1 with the paper's numbers beside ours, and saying up front
what a reader must know before comparing them: random-weight features, a leaky protocol, image-level folds.
"""

from __future__ import annotations

from typing import Any

from fusionfeat import paper
from fusionfeat.evaluation.metrics import LABELS, METRICS, TIMINGS
from fusionfeat.report.cells import (
    CLIP_NOTE,
    EXACT_NOTE,
    any_exact,
    ci_cell,
    diff_ci,
    edge_value,
    interval,
    md_row,
    num,
    pm,
    pval,
)
from fusionfeat.report.context import (
    calibration_text,
    class_selection_line,
    count_note,
    rule_summary,
    skipped_at_extraction,
    table1_note,
)
from fusionfeat.report.flags import (
    describe_weights,
    file_backbones,
    file_heads,
    flags_text,
    random_backbones,
    random_heads,
    tag,
)
from fusionfeat.stats import EDGE_TEXT, PAPER_F1_NOTE


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
        f"{skipped_at_extraction(data)} skipped at extraction)",
        f"- data `{prov.get('data_root') or '?'}` (layout {prov.get('layout') or '?'}); features extracted "
        f"{prov.get('created') or '?'}",
        f"- positive class **{data['positive']}**; features: {data['features']}",
        *([f"- {class_selection_line(data)}"] if class_selection_line(data) else []),
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
            md_row([f"`{head}`", "ours", flags_text(info),
                    *[edge_value(pm(s[m]["mean"], s[m]["std"]), _fold_exact(info, m)) for m in METRICS]])
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


def _fold_exact(info: dict[str, Any], metric: str) -> dict[str, Any] | None:
    """The exact interval that replaced a head's degenerate per-fold interval, if any (its ``edge`` flags the
    per-fold mean at the ceiling or floor)."""
    return (((info.get("uncertainty") or {}).get(metric) or {}).get("corrected_t") or {}).get("exact")


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
        f"Intervals are shown clipped to the metric's range; {CLIP_NOTE}."
        + (f" {EXACT_NOTE}." if any_exact(data) else ""),
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
                        edge_value(pm(u["per_fold"]["mean"], u["per_fold"]["sd"]), ci.get("exact")),
                        ci_cell(ci, m, ci.get("exact")),
                        edge_value(num(pooled["mean"]), pooled.get("exact")),
                        ci_cell(pooled["bootstrap"], m, pooled.get("exact")),
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
    best = comp.get("best_single")
    single = (f" and against the best single-backbone head (by pooled OOF ROC AUC: `{best}`)" if best else
              " (no single-backbone head was fitted to compare with; `--head` a backbone's name adds one)")
    lines = [
        "## Does fusion help?",
        "",
        f"Each fusion head (reading two or more backbones) against `concat`{single}, on the same splits. "
        "Difference in ROC AUC (fusion − reference).",
        "",
        *_tests_note(data, rows),
        "",
        md_row(["fusion head", "against", "Δ AUC per-fold [95% CI]", "p (corrected t, primary)", "p (Holm)",
                "Δ AUC pooled [95% CI], conditional on the fitted models", "p (conditional)", "p (Holm)",
                "pooled test"]),
        md_row(["---"] * 2 + ["---:"] * 6 + ["---"]),
    ]
    for r in rows:
        lines.append(md_row([tag(data, r["head"]), f"{tag(data, r['against'])} ({r['role']})",
                             *_test_cells(r["per_fold"], holm=True), *_test_cells(r["pooled"], holm=True),
                             r["pooled"]["method"]]))
    return "\n".join(lines)


def _test_cells(test: dict[str, Any], holm: bool) -> list[str]:
    """A comparison's difference [CI], p and (``holm``) its family-wise Holm p; when the difference cannot be
    measured (both at the ceiling, say) the words instead, and no p."""
    edge = test.get("edge")
    if edge:
        return [EDGE_TEXT.get(edge, edge), "—", *(["—"] if holm else [])]
    cells = [diff_ci(test), pval(test.get("p"))]
    if holm:
        cells.append(pval(test.get("p_holm_family", test.get("p_holm"))))
    return cells


def _tests_note(data: dict[str, Any], rows: list[dict[str, Any]], holm: bool = True) -> list[str]:
    """What each test of a comparison table answers, the Holm family, and the independence assumption."""
    n_p = sum(1 for r in rows for key in ("per_fold", "pooled") if not r[key].get("edge"))
    lines = [
        "- **Primary test: the corrected resampled paired t** (Nadeau & Bengio 2003) on per-fold differences over "
        "folds × repeats. It includes the variability of training, so it answers: would a new training run, on "
        "new data from the same population, differ?",
        "- **Pooled columns, conditional on the fitted models**: the paired bootstrap (or DeLong) on the pooled "
        "out-of-fold predictions holds the fitted models fixed and measures only the uncertainty from the test "
        "images. Its p is usually much smaller than the primary test's and answers a narrower question: with "
        "these fitted models, is the difference more than the test images' noise?",
    ]
    family = any("p_holm_family" in r[key] for r in rows for key in ("per_fold", "pooled"))
    if holm and n_p and family:
        lines.append(f"- **p (Holm)**: Holm's step-down adjustment over every p this table shows ({n_p} p-values: "
                     "all rows × both tests) as one family, not per column.")
    elif holm and n_p:  # a run written before the family-wise adjustment
        lines.append("- **p (Holm)**: Holm's step-down adjustment over the rows, separately for each test.")
    if not (data.get("protocol") or {}).get("subjects_known"):
        lines.append("- **Subjects unknown: images are treated as independent.** DeLong and the image bootstrap "
                     "assume independent images; cells of one patient are not, so the pooled p is optimistic.")
    if any(r[key].get("edge") for r in rows for key in ("per_fold", "pooled")):
        lines.append("- Where both heads sit at the ceiling (or floor), or agree on every fold, the difference "
                     "cannot be measured: no interval or p is shown, and those tests are left out of the Holm "
                     "family.")
    return lines


def _pairs_section(data: dict[str, Any]) -> str:
    pairs = (data.get("comparisons") or {}).get("pairs") or []
    if not pairs:
        return ""
    holm = any("p_holm_family" in r["per_fold"] for r in pairs)
    lines = [
        "## Paired comparisons of every two heads (ROC AUC, a − b)",
        "",
        *_tests_note(data, pairs, holm),
        "",
        md_row(["a", "b", "Δ per-fold [95% CI]", "p (corrected t, primary)", *(["p (Holm)"] if holm else []),
                "Δ pooled [95% CI], conditional on the fitted models", "p (conditional)",
                *(["p (Holm)"] if holm else []), "pooled test"]),
        md_row(["---"] * 2 + ["---:"] * (6 if holm else 4) + ["---"]),
    ]
    for r in pairs:
        lines.append(md_row([tag(data, r["a"]), tag(data, r["b"]), *_test_cells(r["per_fold"], holm),
                             *_test_cells(r["pooled"], holm), r["pooled"]["method"]]))
    return "\n".join(lines)


def _calibration_section(data: dict[str, Any]) -> str:
    heads = {h: i["calibration"] for h, i in data["heads"].items() if i.get("calibration")}
    if not heads:
        return ""
    first = next(iter(heads.values()))
    how = first.get("calibrated")
    bins = first.get("n_bins", 10)
    extended = "ece_if_calibrated" in first
    lines = [
        "## Calibration",
        "",
        "Brier score and expected calibration error (ECE, "
        f"{bins} equal-width bins) of the pooled out-of-fold P({data['positive']}), per repeat "
        "and averaged; the reliability diagrams pool every repeat's rows. "
        + (f"Probabilities were calibrated post hoc ({how}), fitted inside each training fold only."
           if how else "No post-hoc calibration (`fit --calibrate sigmoid|isotonic` adds it)."),
    ]
    if extended:
        unit = (first.get("ece_bootstrap") or {}).get("resampled", "images")
        lines += [
            "",
            f"ECE depends on the bin count ({bins} here) and is biased upward at small n: **ECE if perfectly "
            "calibrated** is the mean ECE of labels drawn from the predictions themselves (y* ~ Bernoulli(p), "
            f"{first['ece_if_calibrated'].get('n_sim')} seeded draws; 95th percentile in brackets), the ECE chance "
            "alone gives on these predictions. An ECE near it is no evidence of miscalibration. The ECE's 95% "
            f"interval is a percentile bootstrap resampling {unit}. **Slope and intercept**: logistic recalibration "
            "logit P(y=1) = intercept + slope · logit(p) (perfect: slope 1, intercept 0; slope < 1: predictions "
            f"too extreme), with 95% bootstrap intervals resampling {unit}; n/a when the classes are separated "
            "by p (the slope is then infinite).",
        ]
    header = ["head", "weights", "Brier", f"ECE ({bins} bins)"]
    if extended:
        header += ["ECE 95% CI", "ECE if perfectly calibrated", "slope [95% CI]", "intercept [95% CI]"]
    lines += ["", md_row(header), md_row(["---", "---"] + ["---:"] * (len(header) - 2))]
    for head, c in heads.items():
        cells = [f"`{head}`", flags_text(data["heads"][head]), num(c["brier"]), num(c["ece"])]
        if extended:
            ref = c["ece_if_calibrated"]
            cells += [interval(c["ece_bootstrap"].get("lo"), c["ece_bootstrap"].get("hi"), "ece"),
                      f"{num(ref.get('mean'))} [{num(ref.get('q95'))}]",
                      *[_recal_cell(c["recalibration"], k) for k in ("slope", "intercept")]]
        lines.append(md_row(cells))
    plots = data.get("plots", {})
    for head in heads:
        if f"reliability_{head}" in plots:
            lines += ["", f"![{head} reliability diagram]({plots[f'reliability_{head}']})"]
    return "\n".join(lines)


def _recal_cell(recal: dict[str, Any], key: str) -> str:
    """``1.02 [0.80, 1.31]`` for the calibration slope or intercept, n/a when not estimable."""
    entry = recal.get(key) or {}
    est, lo, hi = entry.get("estimate"), entry.get("lo"), entry.get("hi")
    if est is None or (isinstance(est, float) and est != est):
        return "n/a (separated)" if "separated" in recal.get("note", "") else "n/a"
    bounds = "n/a" if lo is None or hi is None or lo != lo or hi != hi else f"[{lo:.3f}, {hi:.3f}]"
    return f"{est:.3f} {bounds}"


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
    if sub.get("left_out"):
        return (f"## SUBJECT-LEVEL diagnosis\n\nLeft out: {sub['left_out']}. Subject-grouped folds "
                "(`--cv grouped`) give subject-level results.")
    n = len(sub.get("subject", []))
    how = sub.get("aggregate", "mean")
    rule = {"mean": "mean of its cells' probabilities", "median": "median of its cells' probabilities",
            "fraction": "fraction of its cells with P ≥ 0.5"}.get(how, how)
    lines = [
        "## SUBJECT-LEVEL diagnosis (one row per subject, not per cell)",
        "",
        f"Each of the {n} subjects is scored by the {rule} (`--subject-aggregate {how}`) over its out-of-fold "
        f"cells and called {data['positive']} at score ≥ 0.5. Metrics are computed on subjects, per repeat, "
        "then averaged; the 95% interval is a bootstrap over subjects (‡: exact, see the legend). Scores per "
        "subject: `subjects.csv`."
        + (f" {sub['n_unassigned']} cells without a subject id were left out." if sub.get("n_unassigned") else ""),
        "",
        md_row(["head", *[LABELS[m] for m in METRICS]]),
        md_row(["---"] + ["---:"] * len(METRICS)),
    ]
    for head, h in sub["heads"].items():
        cells = [
            f"{edge_value(num(h['metrics'][m]['mean']), h['metrics'][m].get('exact'))} "
            f"{ci_cell(h['metrics'][m]['bootstrap'], m, h['metrics'][m].get('exact'))}"
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


def shared_parts(data: dict[str, Any]) -> dict[str, Any]:
    """The parts of ``report.md`` that do not depend on the number of classes, for the K-class report
    (``fusionfeat.report.multiclass_markdown``): ``warnings`` (a list) and the ``params``, ``timing``,
    ``protocol`` and ``features`` sections."""
    return {"warnings": _warnings(data), "params": _params_section(data), "timing": _timing_section(data),
            "protocol": _protocol_section(data), "features": _features_section(data)}
