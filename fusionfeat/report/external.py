"""``report.md`` of ``fusionfeat evaluate``: a bundle scored on an external labelled set, beside its own
cross-validated estimate, with the shift of the external images from the training features.

Rendered from the evaluation's ``metrics.json`` data (``fusionfeat.evaluate``), whose statistics are those of
``fit`` (``fusionfeat.evaluation.evidence``; more than two classes: ``fusionfeat.evaluation.multiclass_evidence``,
rendered by ``render_multiclass_evaluation``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fusionfeat.evaluation import multiclass_metrics as mm
from fusionfeat.evaluation.metrics import LABELS, METRICS
from fusionfeat.report.cells import (
    CLIP_NOTE,
    EXACT_NOTE,
    MULTICLASS_EXACT_NOTE,
    any_exact,
    ci_cell,
    edge_value,
    exact_cell,
    interval,
    md_row,
    num,
    pm,
    signed,
)
from fusionfeat.report.flags import describe_weights, random_backbones
from fusionfeat.report.multiclass_markdown import class_exact

AGGREGATE_RULE = {"mean": "mean of its cells' probabilities", "median": "median of its cells' probabilities",
                  "fraction": "fraction of its cells with P ≥ 0.5"}


def render_evaluation(data: dict[str, Any]) -> str:
    """``report.md`` of an external evaluation from its ``metrics.json`` data."""
    ext = data["external"]
    head = ext["head"]
    parts = [
        "# fusionfeat external evaluation report",
        *_warnings(data),
        _header(data),
        _results(data, head),
        _cv_section(ext),
        _calibration(data, head),
        _subjects(data, head),
        _shift_section(ext),
        _features(data),
        _plots(data, head),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _warnings(data: dict[str, Any]) -> list[str]:
    ext = data["external"]
    out = []
    random = random_backbones(data)
    if random:
        out.append(f"> **WARNING: RANDOM-WEIGHT FEATURES**: backbone(s) {', '.join(random)} of the bundle use "
                   "randomly initialised weights, not ImageNet weights; these numbers measure random features.")
    shift = ext.get("shift") or {}
    if shift.get("warning"):
        out.append(f"> **WARNING: DISTRIBUTION SHIFT.** {shift['warning']}.")
    if ext.get("geometry_note"):
        out.append(f"> **Note: input geometry.** {ext['geometry_note'][0].upper()}{ext['geometry_note'][1:]}.")
    if not ext.get("cv_estimate"):
        sel = ext.get("class_selection")
        classes = f" --classes \"{sel.get('spec', '')}\"" if sel else ""
        out.append("> **Note: no cross-validated estimate in the bundle.** It was trained without `--cv-run`, so "
                   "the external figures below stand alone. To get one: `fusionfeat fit STORE --head "
                   f"{ext['head']}{classes} -o RUN` on the training store, then `fusionfeat train STORE --head "
                   f"{ext['head']}{classes} --cv-run RUN -o BUNDLE` (same head and options).")
    return out


def _unit_text(data: dict[str, Any], head: str, metric: str = "roc_auc") -> str:
    boot = data["heads"][head]["uncertainty"][metric]["pooled"]["bootstrap"]
    if boot.get("resampled") == "subjects":
        return f"a bootstrap over the {boot.get('n_units', '?')} subjects ({boot.get('n_boot', '?')} resamples)"
    return (f"a bootstrap over the {boot.get('n_units', '?')} images ({boot.get('n_boot', '?')} resamples); "
            "subjects are unknown, so it assumes the images are independent, which is optimistic when several "
            "come from one person")


def _header(data: dict[str, Any]) -> str:
    ext, protocol = data["external"], data["protocol"]
    training = ext.get("training") or {}
    per_class = ", ".join(f"{c} {n}" for c, n in (training.get("per_class") or {}).items())
    counts = ", ".join(f"{c} {n}" for c, n in zip(data["classes"], protocol.get("class_counts", []), strict=False))
    source = ext.get("source") or {}
    where = (f"store `{source.get('store')}`" if source.get("kind") == "store"
             else f"images under `{source.get('data_root', '?')}`, embedded by the bundle")
    subjects = (f"{protocol.get('n_subjects')} subjects" if protocol.get("subjects_known") else "subjects unknown")
    return "\n".join([
        f"- created {data['created']} with fusionfeat {data['fusionfeat_version']}",
        f"- bundle: head `{ext['head']}`, trained on `{ext.get('training_store') or '?'}` "
        f"({training.get('n_images', '?')} images: {per_class}; balance {training.get('balance', '?')}, "
        f"seed {training.get('seed', '?')})",
        f"- external data: {where} (layout {source.get('layout') or '?'}); {protocol.get('n_samples')} images "
        f"({counts}); {subjects}",
        *_selection_lines(ext),
        (f"- positive class **{data['positive']}**" if data.get("positive") else
         f"- **{len(data['classes'])} classes** (no positive class)")
        + f"; decision rule: {data.get('decision_rule', '?')}",
        "- every external image is scored once by the model trained on the whole training store: no fold, so "
        "the spread below is over resampled external images, not over training runs",
    ])


def _selection_lines(ext: dict[str, Any]) -> list[str]:
    """The bundle's ``--classes`` and what it did to the external labels (nothing without one)."""
    sel = ext.get("class_selection")
    if not sel:
        return []
    merged: dict[str, list[str]] = {}
    for old, new in (sel.get("mapping") or {}).items():
        if new is not None:
            merged.setdefault(new, []).append(old)
    parts = [f"{new} = {' + '.join(olds)}" if olds != [new] else new for new, olds in merged.items()]
    left = ext.get("left_out") or {}
    n = sum(left.values())
    dropped = (f"{n} external image{'s' if n != 1 else ''} of classes it leaves out were left out "
               f"({', '.join(f'{c} {k}' for c, k in sorted(left.items()))})" if n else
               "no external image belongs to a class it leaves out")
    return [f"- the bundle was trained with `--classes {sel.get('spec', '')}` ({', '.join(parts)}): the external "
            f"labels are read through the same mapping; {dropped}"]


def _results(data: dict[str, Any], head: str) -> str:
    u = data["heads"][head]["uncertainty"]
    versus = data["external"].get("versus_cv") or {}
    cv = (data["external"].get("cv_estimate") or {}).get("metrics") or {}
    lines = [
        "## Results on the external set, beside the cross-validated estimate",
        "",
        "External values are computed on all external images at once; their 95% intervals are "
        f"{_unit_text(data, head)}. The CV estimate is the bundle's head cross-validated on its training store "
        "(pooled out-of-fold value "
        "and its bootstrap interval; see the next section). Difference: external − CV.",
        "",
        md_row(["metric", "external", "95% CI", "CV estimate", "CV 95% CI", "difference"]),
        md_row(["---"] + ["---:"] * 5),
    ]
    for m in METRICS:
        pooled = u[m]["pooled"]
        c = cv.get(m) or {}
        lines.append(md_row([
            LABELS[m], edge_value(num(pooled["mean"]), pooled.get("exact")),
            ci_cell(pooled["bootstrap"], m, pooled.get("exact")),
            num(c.get("pooled")) if c else "—", interval(c.get("lo"), c.get("hi"), m) if c else "—",
            signed((versus.get(m) or {}).get("difference")) if c else "—",
        ]))
    exact = f" {EXACT_NOTE}." if any_exact(data) else ""
    lines += ["", f"Intervals are shown clipped to the metric's range; {CLIP_NOTE}.{exact}",
              "", f"Confusion matrix (rows: true {', '.join(data['classes'])}; columns: predicted): "
              f"`{data['heads'][head]['confusion_total']}`."]
    return "\n".join(lines)


def _cv_section(ext: dict[str, Any], metrics: tuple[str, ...] = METRICS, labels: dict[str, str] = LABELS) -> str:
    cv = ext.get("cv_estimate")
    if not cv:
        return ""
    folds = f"{cv.get('n_folds')} folds" + (f" × {cv['repeats']} repeats" if (cv.get("repeats") or 1) > 1 else "")
    lines = [
        "## The bundle's cross-validated estimate",
        "",
        f"From the run folder `{cv.get('run')}`: protocol **{cv.get('protocol')}**, {folds}, "
        f"{cv.get('n_images')} images"
        + ("; subjects known (subject-disjoint folds)" if cv.get("subjects_known") else "; subjects unknown")
        + ". Per-fold mean ± sd with the corrected resampled t interval (which includes training variability), "
        "and the pooled out-of-fold value with its bootstrap interval (which holds the fitted models fixed).",
    ]
    if cv.get("leaky") or cv.get("image_level"):
        lines += ["", "> **The CV estimate used image-level folds**: cells of one subject were on both sides, so "
                  "it is optimistic for new patients; a drop on the external set is expected from that alone."]
    lines += ["", md_row(["metric", "per-fold mean ± sd", "corrected t 95% CI", "pooled OOF", "bootstrap 95% CI"]),
              md_row(["---"] + ["---:"] * 4)]
    for m in metrics:
        c = (cv.get("metrics") or {}).get(m)
        if not c:
            continue
        lines.append(md_row([labels[m], pm(c.get("per_fold_mean"), c.get("per_fold_sd")),
                             _ci(c.get("corrected_t_lo"), c.get("corrected_t_hi"), m), num(c.get("pooled")),
                             _ci(c.get("lo"), c.get("hi"), m)]))
    return "\n".join(lines)


def _calibration(data: dict[str, Any], head: str) -> str:
    c = data["heads"][head].get("calibration")
    if not c:
        return ""
    lines = [
        "## Calibration",
        "",
        f"Brier score {num(c['brier'])}; expected calibration error (ECE, {c.get('n_bins', 10)} equal-width bins) "
        f"{num(c['ece'])}, of P({data['positive']}) on the external images.",
    ]
    plot = (data.get("plots") or {}).get(f"reliability_{head}")
    if plot:
        lines += ["", f"![{head} reliability diagram]({plot})"]
    return "\n".join(lines)


def _no_subjects(sub: dict[str, Any] | None) -> str:
    """The subject-level section when there is none: no subject ids, or why the analysis was skipped."""
    if not sub:
        return ("## Subject-level results\n\nNot computed: the external data has no subject ids, so each image "
                "counts as independent.")
    return f"## Subject-level results\n\nNot computed: {sub['skipped']}."


def _subjects(data: dict[str, Any], head: str) -> str:
    sub = data.get("subjects")
    if not sub or sub.get("skipped"):
        return _no_subjects(sub)
    h = sub["heads"][head]
    how = sub.get("aggregate", "mean")
    lines = [
        "## Subject-level results (one row per subject, not per cell)",
        "",
        f"Each of the {len(sub.get('subject', []))} external subjects is scored by the {AGGREGATE_RULE.get(how, how)} "
        f"and called {data['positive']} at score ≥ 0.5; the 95% interval is a bootstrap over subjects. Scores per "
        "subject: `subjects.csv`.",
        "",
        md_row(["metric", "subject level", "95% CI"]),
        md_row(["---", "---:", "---:"]),
    ]
    for m in METRICS:
        b = h["metrics"][m]
        lines.append(md_row([LABELS[m], edge_value(num(b["mean"]), b.get("exact")),
                             ci_cell(b["bootstrap"], m, b.get("exact"))]))
    plots = data.get("plots") or {}
    for kind, title in (("subject_roc", "subject-level ROC"), ("subject_confusion", "subject-level confusion")):
        if f"{kind}_{head}" in plots:
            lines += ["", f"![{head} {title}]({plots[f'{kind}_{head}']})"]
    return "\n".join(lines)


def _shift_section(ext: dict[str, Any]) -> str:
    shift = ext.get("shift")
    if not shift:
        return ("## Distribution shift\n\nThe bundle keeps no reference of its training features (it was trained "
                "on fewer than 20 images, or by an older fusionfeat), so the images have no shift scores.")
    lines = [
        "## Distribution shift",
        "",
        f"Each image's `shift_score` (in `predictions.csv`) is its {shift['method']} of the bundle's backbones "
        f"({shift['components']} of {shift['dim']} coordinates: "
        + ("all of them" if shift["components"] == shift["dim"] else "the training features' top principal "
           "directions")
        + f"). The training images' own out-of-fold scores (median {num(shift.get('train_median'), 2)}, "
        f"{shift['n_train']} images) put the {shift['percentile']:.0f}th percentile at {num(shift['threshold'], 2)}. "
        f"External images: median {num(shift.get('median'), 2)}; {shift['n_beyond']} of {shift['n']} "
        f"({shift['share']:.0%}) lie beyond it (from the training distribution about 1% would; a warning is given "
        f"at {shift['warn_share']:.0%} or more).",
    ]
    return "\n".join(lines)


def _features(data: dict[str, Any]) -> str:
    backbones = (data.get("provenance") or {}).get("backbones") or {}
    lines = ["## Features (the bundle's backbones)", "",
             md_row(["backbone", "weights", "input size", "normalization", "precision"]), md_row(["---"] * 5)]
    for name, attrs in backbones.items():
        lines.append(md_row([f"`{name}`", describe_weights(attrs), str(attrs.get("input_size", "?")),
                             str(attrs.get("normalization", "?")), str(attrs.get("precision", "?"))]))
    return "\n".join(lines)


def _plots(data: dict[str, Any], head: str) -> str:
    plots = data.get("plots") or {}
    images = [f"![{title}]({plots[key]})" for key, title in
              (("summary", "ROC with a 95% bootstrap band"), (f"roc_{head}", f"{head} ROC"),
               (f"confusion_{head}", f"{head} confusion matrix")) if key in plots]
    if not images:
        return ""
    return "\n\n".join(["## Plots", "ROC on the external images with a pointwise 95% bootstrap band resampling the "
                        "units of the intervals above, and the confusion matrix:", *images])


def _ci(lo: Any, hi: Any, metric: str) -> str:
    """An interval clipped to the metric's range; kappa lies in [-1, 1] like MCC; log loss and the K-class Brier
    score are not clipped (no upper bound of 1)."""
    if metric in ("log_loss", "brier"):  # K-class names only: the binary metrics have neither
        return "n/a" if lo is None or hi is None else f"[{num(lo)}, {num(hi)}]"
    return interval(lo, hi, "mcc" if metric == "kappa" else metric)


# ------------------------------------------------------------------------------------------- K classes


def render_multiclass_evaluation(data: dict[str, Any]) -> str:
    """``report.md`` of an external evaluation of a K-class (K > 2) bundle from its ``metrics.json`` data."""
    ext = data["external"]
    head = ext["head"]
    parts = [
        "# fusionfeat external evaluation report (multi-class)",
        *_warnings(data),
        _header(data),
        _multiclass_results(data, head),
        _cv_section(ext, mm.METRICS, mm.LABELS),
        _per_class(data, head),
        _confusion(data, head),
        _multiclass_calibration(data, head),
        _multiclass_subjects(data, head),
        _shift_section(ext),
        _features(data),
        _multiclass_plots(data, head),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def _multiclass_results(data: dict[str, Any], head: str) -> str:
    u = data["heads"][head]["uncertainty"]
    versus = data["external"].get("versus_cv") or {}
    cv = (data["external"].get("cv_estimate") or {}).get("metrics") or {}
    lines = [
        "## Results on the external set, beside the cross-validated estimate",
        "",
        "External values are computed on all external images at once (macro: the plain mean over classes; "
        "weighted: by each class's share of the external images; OvR AUC averaged over the classes present). "
        f"The 95% intervals of macro OvR AUC and balanced accuracy are {_unit_text(data, head, 'roc_auc_macro')}. "
        "The CV estimate is the bundle's head cross-validated on its training store (pooled out-of-fold value and "
        "its bootstrap interval; see the next section). Difference: external − CV.",
        "",
        md_row(["metric", "external", "95% CI", "CV estimate", "CV 95% CI", "difference"]),
        md_row(["---"] + ["---:"] * 5),
    ]
    for m in mm.METRICS:
        pooled = u[m]["pooled"]
        boot = pooled.get("bootstrap") or {}
        c = cv.get(m) or {}
        exact = pooled.get("exact")
        lines.append(md_row([
            mm.LABELS[m], edge_value(num(pooled["mean"]), exact),
            ci_cell(boot, "mcc" if m == "kappa" else m, exact) if exact
            else _ci(boot.get("lo"), boot.get("hi"), m) if boot else "—",
            num(c.get("pooled")) if c else "—", _ci(c.get("lo"), c.get("hi"), m) if c.get("lo") is not None else "—",
            signed((versus.get(m) or {}).get("difference")) if c else "—",
        ]))
    exact = f" {MULTICLASS_EXACT_NOTE}." if any_exact(data) else ""
    lines += ["", f"Intervals are shown clipped to the metric's range; {CLIP_NOTE}.{exact}"]
    return "\n".join(lines)


def _per_class(data: dict[str, Any], head: str) -> str:
    pc = data["heads"][head]["pooled"]["per_class"]
    exact = data["heads"][head]["pooled"].get("per_class_exact") or {}
    lines = ["## Per class (external images)", "",
             "Support: the class's external images. Precision is n/a when the head never predicted the class. OvR "
             "AUC: that class against all others (n/a when the class is absent). A recall or precision at 0 or 1 "
             "shows its exact 95% interval (‡, Clopper–Pearson of k/n; with subjects known, k and n count "
             "subjects) and the floor or ceiling.", "",
             md_row(["class", "precision", "recall", "F1", "support", "OvR AUC"]), md_row(["---"] + ["---:"] * 5)]
    for i, c in enumerate(data["classes"]):
        lines.append(md_row([c, *[exact_cell(pc[m][i], class_exact(exact, m, i)) for m in ("precision", "recall")],
                             num(pc["f1"][i]), str(pc["support"][i]), num(pc["roc_auc"][i])]))
    return "\n".join(lines)


def _matrix(classes: list[str], counts: Any) -> list[str]:
    counts = np.asarray(counts, dtype=float)
    rows = [md_row(["true \\ predicted", *classes, "recall"]), md_row(["---"] + ["---:"] * (len(classes) + 1))]
    for i, c in enumerate(classes):
        total = counts[i].sum()
        share = counts[i] / total if total else np.zeros(len(classes))
        rows.append(md_row([c, *[f"{counts[i, j]:.0f} ({share[j]:.2f})" for j in range(len(classes))],
                            num(share[i], 3) if total else "n/a"]))
    return rows


def _confusion(data: dict[str, Any], head: str) -> str:
    k = len(data["classes"])
    return "\n".join([f"## Confusion matrix ({k}×{k}, external images)", "",
                      "Each cell: count (share of the true class's images, i.e. the row-normalised matrix).", "",
                      *_matrix(data["classes"], data["heads"][head]["pooled"]["confusion"])])


def _multiclass_calibration(data: dict[str, Any], head: str) -> str:
    c = data["heads"][head].get("calibration")
    if not c:
        return ""
    lines = ["## Calibration", "",
             f"Of the K class probabilities on the external images ({c.get('n_bins', mm.ECE_BINS)} equal-width bins "
             "for the ECEs):", "",
             md_row(["Brier (K-class)", "log loss", "top-label ECE", "class-wise ECE"]), md_row(["---:"] * 4),
             md_row([num(c["brier"]), num(c["log_loss"]), num(c["ece_top"]), num(c["ece_classwise"])])]
    plot = (data.get("plots") or {}).get(f"reliability_{head}")
    if plot:
        lines += ["", f"![{head} reliability diagram]({plot})"]
    return "\n".join(lines)


def _multiclass_subjects(data: dict[str, Any], head: str) -> str:
    sub = data.get("subjects")
    if not sub or sub.get("skipped"):
        return _no_subjects(sub)
    h = sub["heads"][head]["metrics"]
    cells = [f"{edge_value(num(h[m]['mean']), h[m].get('exact'))} {ci_cell(h[m]['bootstrap'], m, h[m].get('exact'))}"
             for m in ("balanced_accuracy", "roc_auc_macro")]
    lines = ["## Subject-level results (one row per subject, not per cell)", "",
             f"{sub['rule'][0].upper()}{sub['rule'][1:]}; {len(sub['subject'])} external subjects. Intervals: "
             "bootstrap over subjects. Per subject: `subjects.csv`.", "",
             md_row(["accuracy", "balanced acc. [95% CI]", "macro OvR AUC [95% CI]"]), md_row(["---:"] * 3),
             md_row([exact_cell(h["accuracy"]["mean"], h["accuracy"].get("exact")), *cells]), "",
             *_matrix(data["classes"], sub["heads"][head]["confusion_total"])]
    return "\n".join(lines)


def _multiclass_plots(data: dict[str, Any], head: str) -> str:
    plots = data.get("plots") or {}
    images = [f"![{head} {title}]({plots[f'{kind}_{head}']})" for kind, title in
              (("confusion", "confusion matrix"), ("roc", "one-vs-rest ROC"),
               ("subject_confusion", "subject-level confusion")) if f"{kind}_{head}" in plots]
    if not images:
        return ""
    return "\n\n".join(["## Plots", "The confusion matrix and the one-vs-rest ROC curve of every class on the "
                         "external images:", *images])
