"""``report.md`` of a K-class (K > 2) run, rendered from its ``metrics.json`` data: macro figures with intervals,
the per-class table, the K×K confusion matrix, the paired head comparisons, calibration and subject-level results.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fusionfeat.evaluation.multiclass_metrics import LABELS, METRICS
from fusionfeat.report.cells import (
    CLIP_NOTE,
    MULTICLASS_EXACT_NOTE,
    any_exact,
    ci_cell,
    diff_ci,
    edge_value,
    exact_cell,
    md_row,
    num,
    pm,
    pval,
)
from fusionfeat.report.context import calibration_text, class_selection_line, skipped_at_extraction
from fusionfeat.report.flags import flags_text, tag
from fusionfeat.report.markdown import shared_parts
from fusionfeat.stats import EDGE_TEXT

SHOWN: tuple[str, ...] = ("accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "kappa", "mcc",
                          "roc_auc_macro", "roc_auc_weighted")
METRIC_NOTES = (
    "How the K-class figures are computed (details: `docs/protocols.md`, multi-class evaluation):\n"
    "- **balanced acc.**: the mean of the per-class recalls (classes present in the rows); **accuracy**: the "
    "share of rows whose predicted class (the most probable) is the true one.\n"
    "- **macro** F1 / OvR AUC: the plain mean over classes, each class counting the same however rare; "
    "**weighted**: the mean weighted by each class's support (its prevalence among the true labels).\n"
    "- **OvR AUC** of a class: ROC AUC of that class's probability, the class against all others. It is "
    "undefined in a test fold without the class (then averaged over the classes it is defined for).\n"
    "- **Cohen's kappa** and **MCC**: agreement of the predicted and true classes corrected for chance "
    "(multi-class MCC: Gorodkin's R_K).\n"
    "- **log loss**: mean −log P(true class); **Brier (K-class)**: mean over rows of Σ_k (P_k − [true = k])², "
    "from 0 to 2 (twice the binary Brier score for two classes); **top-label ECE**: binned |accuracy − "
    "confidence| of the top class; **class-wise ECE**: the binned ECE of each class's probability, averaged."
)


def render_multiclass_report(data: dict[str, Any]) -> str:
    """``report.md`` of a K-class run from its ``metrics.json`` data."""
    shared = shared_parts(data)
    parts = [
        "# fusionfeat cross-validation report (multi-class)",
        *shared["warnings"],
        _class_notes(data),
        _header(data),
        _results_section(data),
        _intervals_section(data),
        _per_class_section(data),
        _confusion_section(data),
        _pairs_section(data),
        _calibration_section(data),
        _subjects_section(data),
        METRIC_NOTES,
        shared["params"],
        shared["timing"],
        shared["protocol"],
        shared["features"],
        _plots_section(data),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _class_notes(data: dict[str, Any]) -> str:
    """The protocol's notes on rare classes (fewer images or subjects than folds, absent from a training side),
    at the top of the report where a reader of the per-fold figures sees them."""
    notes = data["protocol"].get("class_notes") or []
    return f"> **Note: rare classes.** {' '.join(notes)}" if notes else ""


def _header(data: dict[str, Any]) -> str:
    prov, protocol = data["provenance"], data["protocol"]
    counts = protocol.get("class_counts", [])
    classes = ", ".join(f"{c} {n}" for c, n in zip(data["classes"], counts, strict=False))
    lines = [
        f"- created {data['created']} with fusionfeat {data['fusionfeat_version']}",
        f"- store `{prov.get('store', '?')}` ({protocol.get('n_samples', '?')} usable images: {classes}; "
        f"{skipped_at_extraction(data)} skipped at extraction)",
        f"- **{len(data['classes'])} classes** (no positive class); features: {data['features']}",
    ]
    selection = class_selection_line(data)
    if selection:
        lines.append(f"- {selection}")
    lines += [
        f"- protocol **{protocol['name']}**: {protocol.get('text', '')}",
        f"- decision rule: {data.get('decision_rule')}; calibration: {calibration_text(data)}",
    ]
    return "\n".join(lines)


def _unit(data: dict[str, Any]) -> str:
    p = data["protocol"]
    repeats = p.get("repeats", 1) or 1
    return f"{p.get('n_folds', '?')} folds" + (f" × {repeats} repeats" if repeats > 1 else "")


def _results_section(data: dict[str, Any]) -> str:
    lines = [
        f"## Results (per-fold mean ± sd over {_unit(data)})",
        "",
        md_row(["head", "weights", *[LABELS[m] for m in SHOWN]]),
        md_row(["---"] * 2 + ["---:"] * len(SHOWN)),
    ]
    for head, info in data["heads"].items():
        s, u = info["summary"], info.get("uncertainty") or {}
        lines.append(md_row([f"`{head}`", flags_text(info),
                             *[edge_value(pm(s[m]["mean"], s[m]["std"]),
                                          ((u.get(m) or {}).get("corrected_t") or {}).get("exact")) for m in SHOWN]]))
    return "\n".join(lines)


def _intervals_section(data: dict[str, Any]) -> str:
    first = next(iter(data["heads"].values()))
    unit = first["uncertainty"]["roc_auc_macro"]["pooled"]["bootstrap"].get("resampled", "images")
    lines = [
        "## Macro figures with 95% intervals",
        "",
        "- **per-fold mean ± sd** over the fits; **corrected t 95% CI**: Nadeau–Bengio corrected resampled t "
        "interval over folds × repeats.",
        f"- **pooled OOF**: the metric on all out-of-fold predictions of a repeat, averaged over repeats; "
        f"**bootstrap 95% CI** (macro OvR AUC and balanced accuracy): percentile interval resampling {unit}.",
        "",
        f"Intervals are shown clipped to the metric's range; {CLIP_NOTE}."
        + (f" {MULTICLASS_EXACT_NOTE}." if any_exact(data) else ""),
    ]
    for head, info in data["heads"].items():
        lines += ["", f"### `{head}` ({flags_text(info)})", "",
                  md_row(["metric", "per-fold mean ± sd", "corrected t 95% CI", "pooled OOF", "bootstrap 95% CI"]),
                  md_row(["---"] + ["---:"] * 4)]
        for m in METRICS:
            u = info["uncertainty"][m]
            ci, pooled = u["corrected_t"], u["pooled"]
            boot = pooled.get("bootstrap")
            bounded = m not in ("log_loss", "brier")  # no upper bound of 1 to clip to
            lines.append(md_row([
                LABELS[m],
                edge_value(pm(u["per_fold"]["mean"], u["per_fold"]["sd"]), ci.get("exact")),
                ci_cell(ci, _range(m), ci.get("exact")) if bounded
                else f"[{num(ci.get('lo'))}, {num(ci.get('hi'))}]",
                edge_value(num(pooled["mean"]), pooled.get("exact")),
                ci_cell(boot or {}, m, pooled.get("exact")) if boot or pooled.get("exact") else "—",
            ]))
    return "\n".join(lines)


def _range(metric: str) -> str:
    """The metric whose range ``cells.interval`` clips to: kappa lies in [-1, 1] like MCC, the others in [0, 1]."""
    return "mcc" if metric == "kappa" else metric


def _per_class_section(data: dict[str, Any]) -> str:
    lines = ["## Per class (pooled out-of-fold, averaged over repeats)", "",
             "Support: the class's evaluated rows. Precision is n/a when the head never predicted the class. "
             "OvR AUC: that class against all others (n/a when undefined). A recall or precision at 0 or 1 shows "
             "its exact 95% interval (‡, Clopper–Pearson of k/n; with subjects known, k and n count "
             "subjects) and the floor or ceiling."]
    for head, info in data["heads"].items():
        pc = info["pooled"]["per_class"]
        exact = info["pooled"].get("per_class_exact") or {}
        lines += ["", f"### `{head}`", "", md_row(["class", "precision", "recall", "F1", "support", "OvR AUC"]),
                  md_row(["---"] + ["---:"] * 5)]
        for i, c in enumerate(data["classes"]):
            lines.append(md_row([c, *[exact_cell(pc[m][i], class_exact(exact, m, i)) for m in ("precision", "recall")],
                                 num(pc["f1"][i]), str(pc["support"][i]), num(pc["roc_auc"][i])]))
    return "\n".join(lines)


def class_exact(exact: dict[str, Any], metric: str, i: int) -> dict[str, Any] | None:
    """Class ``i``'s exact interval of ``metric`` in a run's ``per_class_exact`` (None: none, or an older run)."""
    cells = exact.get(metric) or []
    return cells[i] if i < len(cells) else None


def _matrix(classes: list[str], counts: Any, repeats: int) -> list[str]:
    counts = np.asarray(counts, dtype=float)
    support = counts.sum(axis=1)
    rows = [md_row(["true \\ predicted", *classes, "recall"]), md_row(["---"] + ["---:"] * (len(classes) + 1))]
    for i, c in enumerate(classes):
        share = counts[i] / support[i] if support[i] else np.zeros(len(classes))
        cells = [f"{counts[i, j] / repeats:.{0 if repeats == 1 else 1}f} ({share[j]:.2f})" for j in range(len(classes))]
        rows.append(md_row([c, *cells, num(share[i], 3) if support[i] else "n/a"]))
    return rows


def _confusion_section(data: dict[str, Any]) -> str:
    repeats = max(1, int(data["protocol"].get("repeats", 1) or 1))
    per = " (mean of the repeats)" if repeats > 1 else ""
    lines = [f"## Confusion matrices ({len(data['classes'])}×{len(data['classes'])}, out-of-fold){per}", "",
             "Each cell: count (share of the true class's rows, i.e. the row-normalised matrix)."]
    for head, info in data["heads"].items():
        lines += ["", f"### `{head}`", "", *_matrix(data["classes"], info["pooled"]["confusion"], repeats)]
    return "\n".join(lines)


def _pairs_section(data: dict[str, Any]) -> str:
    comp = data.get("comparisons") or {}
    pairs = comp.get("pairs") or []
    if not pairs:
        return ""
    lines = [
        "## Paired head comparisons (a − b, same splits)",
        "",
        "Per-fold: corrected resampled paired t over folds × repeats; pooled: paired bootstrap of the pooled "
        "out-of-fold value. p (Holm): Holm-adjusted over the whole table (every pair, metric and test). Where both "
        "heads sit at the ceiling (or floor), or are identical on every fold, the difference cannot be measured: the "
        "table says so instead of +0.0000 [+0.0000, +0.0000], p = 1, and that test leaves the Holm family. "
        + comp.get("note", ""),
    ]
    for m in comp.get("metrics", []):
        lines += ["", f"### {LABELS[m]}", "",
                  md_row(["a", "b", "per-fold diff [95% CI]", "p", "p (Holm)", "pooled diff [95% CI]", "method",
                          "p", "p (Holm)"]),
                  md_row(["---"] * 2 + ["---:"] * 3 + ["---:", "---"] + ["---:"] * 2)]
        for pair in pairs:
            t, b = pair["metrics"][m]["per_fold"], pair["metrics"][m]["pooled"]
            lines.append(md_row([tag(data, pair["a"]), tag(data, pair["b"]), *_tested(t, m), b["method"],
                                 *_tested(b, m)]))
    return "\n".join(lines)


def _tested(test: dict[str, Any], metric: str) -> list[str]:
    """A test's difference [CI], p and Holm p; where the difference cannot be measured (both heads at the ceiling
    or floor, or identical on every fold) the reason instead, and no p."""
    edge = test.get("edge")
    if edge:
        return [EDGE_TEXT.get(edge, edge), "—", "—"]
    return [diff_ci(test, metric), pval(test["p"]), pval(test.get("p_holm"))]


def _calibration_section(data: dict[str, Any]) -> str:
    lines = ["## Calibration (pooled out-of-fold)", "",
             md_row(["head", "Brier (K-class)", "log loss", "top-label ECE", "class-wise ECE", "bins"]),
             md_row(["---"] + ["---:"] * 5)]
    for head, info in data["heads"].items():
        c = info["calibration"]
        lines.append(md_row([tag(data, head), num(c["brier"]), num(c["log_loss"]), num(c["ece_top"]),
                             num(c["ece_classwise"]), str(c["n_bins"])]))
    return "\n".join(lines)


def _subjects_section(data: dict[str, Any]) -> str:
    sub = data.get("subjects")
    if not sub:
        return ""
    if sub.get("skipped"):
        return f"## Subject level\n\nSkipped: {sub['skipped']}."
    if sub.get("left_out"):
        return f"## Subject level\n\nLeft out: {sub['left_out']}."
    lines = ["## Subject level", "",
             f"{sub['rule'][0].upper()}{sub['rule'][1:]} (original images only); {len(sub['subject'])} subjects"
             + (f", {sub['n_unassigned']} images without a subject left out" if sub.get("n_unassigned") else "")
             + ". Intervals: bootstrap over subjects.", "",
             md_row(["head", "accuracy", "balanced acc. [95% CI]", "macro OvR AUC [95% CI]"]),
             md_row(["---"] + ["---:"] * 3)]
    for head, h in sub["heads"].items():
        m = h["metrics"]
        cells = [f"{edge_value(num(m[k]['mean']), m[k].get('exact'))} "
                 f"{ci_cell(m[k]['bootstrap'], k, m[k].get('exact'))}" for k in ("balanced_accuracy", "roc_auc_macro")]
        accuracy = m["accuracy"]
        lines.append(md_row([tag(data, head), exact_cell(accuracy["mean"], accuracy.get("exact")), *cells]))
    repeats = max(1, int(data["protocol"].get("repeats", 1) or 1))
    for head, h in sub["heads"].items():
        lines += ["", f"### `{head}`: subjects", "", *_matrix(data["classes"], h["confusion_total"], repeats)]
    return "\n".join(lines)


def _plots_section(data: dict[str, Any]) -> str:
    plots = data.get("plots") or {}
    if not plots:
        return ""
    lines = ["## Plots (`figures/`)"]
    if "training" in plots:
        lines += ["", "Training curves of the torch heads over every fold and repeat (mean ± sd); the validation "
                  "curve is the early-stopping split held out of each training fold, never the test fold:", "",
                  f"![training curves]({plots['training']})"]
    for head in data["heads"]:
        images = [f"![{head} {title}]({plots[f'{kind}_{head}']})" for kind, title in
                  (("confusion", "confusion matrix"), ("roc", "one-vs-rest ROC"), ("reliability", "reliability"),
                   ("subject_confusion", "subject-level confusion")) if f"{kind}_{head}" in plots]
        if images:
            lines += ["", f"### `{head}`", "", *images]
    return "\n".join(lines)
