"""``fusionfeat study`` on a K-class store (K > 2): the paper protocol's inflation of macro one-vs-rest ROC AUC,
balanced accuracy and accuracy, split into leak and augmentation as for two classes (``fusionfeat.study``).

The arms and contrasts are the binary study's. Per arm and metric: the per-fold mean with the Nadeau–Bengio
corrected resampled t interval. Per contrast: the corrected paired t on per-fold differences when the arms share
their splits (``augment`` − ``weight``), else the corrected Welch difference (the paper arm's folds are over
expanded rows). On the original images (view 0): each arm's pooled out-of-fold macro AUC and balanced accuracy
with a subject (or image) bootstrap interval (``stats.multiclass_bootstrap``), and each contrast by a paired
bootstrap that scores both arms on the same resampled subjects (``stats.paired_multiclass_bootstrap``; DeLong
does not apply to a macro average of one-vs-rest AUCs). Where both arms sit at the ceiling (or floor), or agree
on every resample, the difference is reported as unmeasurable (``stats.unmeasurable``), not as zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fusionfeat import stats
from fusionfeat.evaluation.cv import CVResult
from fusionfeat.evaluation.multiclass_metrics import LABELS
from fusionfeat.report.latex import Tex, latex_table
from fusionfeat.stats import EDGE_TEXT
from fusionfeat.study import (
    CONTRASTS,
    LEAKY_TEXT,
    common_originals,
    contrast,
    fold_values,
    groups_of,
    head_tag,
    md_row,
    num,
    p_text,
    random_heads,
)

SHOWN_K: tuple[str, ...] = ("roc_auc_macro", "balanced_accuracy", "accuracy")
POOLED_K: tuple[str, ...] = ("roc_auc_macro", "balanced_accuracy")  # bootstrapped on the original images
PREVALENCE_FREE_K: tuple[str, ...] = ("roc_auc_macro", "balanced_accuracy")


def originals(res: CVResult, head: str, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Truth, probabilities ``(repeats, n, K)`` and predicted classes ``(repeats, n)`` of ``rows``."""
    return (np.asarray(res.rows["label"], dtype=np.int64)[rows], np.asarray(res.oof_proba[head])[:, rows],
            np.asarray(res.oof_pred[head])[:, rows])


def _pooled(res: CVResult, head: str, n_boot: int, seed: int) -> dict[str, Any]:
    _, rows, _ = common_originals(res, res)
    y, P, pred = originals(res, head, rows)
    groups = groups_of(res, rows)
    return {m: {**stats.multiclass_bootstrap(y, P, pred, groups, m, n_boot=n_boot, seed=seed).to_dict(),
                "n_images": len(rows)} for m in POOLED_K}


def _paired(res_a: CVResult, res_b: CVResult, head: str, n_boot: int, seed: int) -> dict[str, Any]:
    samples, rows_a, rows_b = common_originals(res_a, res_b)
    if len(samples) == 0 or res_a.oof_proba[head].shape[0] != res_b.oof_proba[head].shape[0]:
        return {m: {"estimate": None, "note": "no original images scored by both protocols with the same repeats"}
                for m in POOLED_K}
    y, P_a, pred_a = originals(res_a, head, rows_a)
    _, P_b, pred_b = originals(res_b, head, rows_b)
    groups = groups_of(res_a, rows_a)
    return {m: {**stats.paired_multiclass_bootstrap(y, P_a, pred_a, P_b, pred_b, groups, m, n_boot=n_boot,
                                                    seed=seed).to_dict(), "n_images": len(samples)}
            for m in POOLED_K}


def compare_multiclass(results: dict[str, CVResult], n_boot: int, seed: int = 0) -> dict[str, Any]:
    """The K-class study's numbers (JSON-able), per head: per arm the corrected intervals of ``SHOWN_K`` and the
    pooled bootstrap of ``POOLED_K`` on the original images; per contrast the corrected t difference of each
    metric and the paired bootstrap of the pooled ones, each with its ``edge`` (None when measurable)."""
    first = next(iter(results.values()))
    out: dict[str, Any] = {}
    for head in first.heads:
        arms_out = {name: {"metrics": {m: stats.corrected_resampled_t(*fold_values(res, head, m)).to_dict()
                                       for m in SHOWN_K},
                           "pooled_originals": _pooled(res, head, n_boot, seed)}
                    for name, res in results.items()}
        contrasts = {}
        for cname, a, b, meaning in CONTRASTS:
            per_metric = {}
            for m in SHOWN_K:
                d = contrast(results[a], results[b], head, m)
                d["edge"] = stats.unmeasurable(arms_out[a]["metrics"][m]["mean"], arms_out[b]["metrics"][m]["mean"],
                                               d, m)
                per_metric[m] = d
            pooled = _paired(results[a], results[b], head, n_boot, seed)
            for m, d in pooled.items():
                if d.get("estimate") is not None:
                    d["edge"] = stats.unmeasurable(arms_out[a]["pooled_originals"][m].get("estimate"),
                                                   arms_out[b]["pooled_originals"][m].get("estimate"), d, m)
            contrasts[cname] = {"of": [a, b], "meaning": meaning, "metrics": per_metric, "pooled_originals": pooled}
        out[head] = {"arms": arms_out, "contrasts": contrasts}
    return out


def _ci(d: dict[str, Any], key: str, sign: bool = False) -> str:
    if d.get("edge") in EDGE_TEXT:
        return EDGE_TEXT[d["edge"]]
    lo, hi = d.get("lo"), d.get("hi")
    if not sign and lo is not None and hi is not None:  # shown clipped to the metric's range [0, 1]
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    return f"{num(d.get(key), sign=sign)} [{num(lo, sign=sign)}, {num(hi, sign=sign)}]"


def _label(metric: str) -> str:
    return LABELS[metric] if metric in PREVALENCE_FREE_K else f"{LABELS[metric]} (prevalence-dependent)"


def _any_edge(data: dict[str, Any]) -> bool:
    return any(d.get("edge") for h in data["heads_results"].values() for c in h["contrasts"].values()
               for d in [*c["metrics"].values(), *c["pooled_originals"].values()])


def render_multiclass_study(data: dict[str, Any]) -> str:
    """The K-class study's markdown report, rendered from its JSON data."""
    res = data["heads_results"]
    kinds = ", ".join(f"{b}: {k}" for b, k in data["weights_kind"].items())
    classes = ", ".join(data.get("classes", []))
    lines = [
        "# Protocol study: how much the paper's protocol inflates its numbers",
        "",
        f"Store `{data['store']}` (weights: {kinds}); {len(data.get('classes', []))} classes ({classes}); "
        f"{data['n_folds']} folds × {data['repeats']} repeats, seed {data['seed']}; honest protocol: "
        f"**{data['honest_protocol']}**.",
        "",
    ]
    if data["honest_protocol"] == "stratified":
        lines += ["> **Subjects unknown**: the honest arms' folds are image-level too, so \"honest\" here means free "
                  "of the copy leak only; these numbers do not estimate performance on new patients.", ""]
    random = random_heads(data)
    if random:
        lines += [f"> **WARNING: RANDOM-WEIGHT FEATURES** in head(s) {', '.join(f'`{h}`' for h in random)}: "
                  "these numbers measure random features; the protocol differences are still real.", ""]
    lines += [f"> **WARNING: LEAKY PROTOCOL** in the `paper` arm: {LEAKY_TEXT}", ""]
    lines += [
        "| arm | protocol | evaluated rows | sub-run |",
        "|---|---|---:|---|",
        *[md_row([f"`{n}`", a["what"], str(a["n_eval_rows"]), f"[{n}/report.md]({n}/report.md)"])
          for n, a in data["arms"].items()],
        "",
        f"The paper protocol added {data['paper_copies']} copies before splitting (every class up to the largest).",
        "",
        "inflation = paper − weight = **leak** (paper − augment) + **augmentation** (augment − weight).",
        "",
        "## Metrics per protocol (mean over folds × repeats [corrected resampled t 95% CI, clipped to [0, 1]])",
        "",
        md_row(["head", "arm", *[_label(m) for m in SHOWN_K]]),
        md_row(["---", "---", *["---:"] * len(SHOWN_K)]),
    ]
    for head, h in res.items():
        for arm, a in h["arms"].items():
            lines.append(md_row([head_tag(data, head), arm, *[_ci(a["metrics"][m], "mean") for m in SHOWN_K]]))
    lines += [
        "",
        "## Inflation and its split (difference of per-fold means [95% CI], p)",
        "",
        "Inflation and leak: corrected Welch t (each arm's Nadeau–Bengio corrected variance, combined as if "
        "independent: the paper arm's folds are over expanded rows, so they are not paired with the honest arms'). "
        "Augmentation: corrected paired t on per-fold differences paired by (repeat, fold). Balanced accuracy (the "
        "mean of per-class recalls) does not depend on the class mix; each one-vs-rest AUC does not depend on its "
        "class's prevalence, though its \"rest\" mixes the other classes in the test fold's proportions. Accuracy "
        "moves with the paper arm's balanced class mix, so its \"inflation\" includes that change of prevalence.",
        "",
        md_row(["head", "metric", "inflation (paper − weight)", "p", "leak (paper − augment)", "p",
                 "augmentation (augment − weight)", "p"]),
        md_row(["---", "---", *["---:"] * 6]),
    ]
    for head, h in res.items():
        for m in SHOWN_K:
            cells = []
            for cname in ("inflation", "leak", "augmentation"):
                d = h["contrasts"][cname]["metrics"][m]
                cells += [_ci(d, "diff", sign=True), "—" if d.get("edge") else p_text(d["p"])]
            lines.append(md_row([head_tag(data, head), _label(m), *cells]))
    lines += [
        "",
        "## Pooled out-of-fold figures on the original images (paired bootstrap)",
        "",
        "Each arm's out-of-fold class probabilities for the original images (view 0; the paper arm's scored "
        "copies left out), metric of the pooled rows averaged over repeats [percentile bootstrap 95% CI]; "
        "differences by a paired bootstrap that resamples subjects (images when subjects are unknown) and scores "
        "both arms on each resample (DeLong's test does not apply to a macro average of one-vs-rest AUCs).",
        "",
        md_row(["head", "metric", "paper", "augment", "weight", "inflation", "p", "leak", "p", "augmentation", "p"]),
        md_row(["---", "---", *["---:"] * 9]),
    ]
    for head, h in res.items():
        for m in POOLED_K:
            cells = [_ci(h["arms"][a]["pooled_originals"][m], "estimate") for a in ("paper", "augment", "weight")]
            for cname in ("inflation", "leak", "augmentation"):
                b = h["contrasts"][cname]["pooled_originals"][m]
                cells += [_ci(b, "estimate", sign=True), "—" if b.get("edge") else p_text(b.get("p"))]
            lines.append(md_row([head_tag(data, head), LABELS[m], *cells]))
    if _any_edge(data):
        lines += ["", "**At the ceiling (or floor)**: where both arms score perfectly (or agree on every resample), "
                  "the difference cannot be measured; that is not \"no inflation\": there is no room left to see one."]
    lines += ["", "Files: `study.json` (every number), `study.csv`, `study.tex`; each arm's full report in its "
              "sub-folder. Method: docs/protocols.md, \"Measuring the leak\".", ""]
    return "\n".join(lines)


def multiclass_csv_rows(data: dict[str, Any]) -> list[list[Any]]:
    """Rows of ``study.csv`` (the binary study's columns; no exact intervals)."""
    rows = []
    for head, h in data["heads_results"].items():
        for m in SHOWN_K:
            dep = m not in PREVALENCE_FREE_K
            for arm, a in h["arms"].items():
                ci = a["metrics"][m]
                rows.append([head, m, arm, ci["mean"], ci["lo"], ci["hi"], None, ci["method"], dep, None, None, None])
            for cname, c in h["contrasts"].items():
                d = c["metrics"][m]
                rows.append([head, m, cname, d["diff"], d["lo"], d["hi"], d["p"], d["method"], dep, d.get("edge"),
                             None, None])
        for m in POOLED_K:
            for arm, a in h["arms"].items():
                b = a["pooled_originals"][m]
                rows.append([head, f"pooled_{m}_originals", arm, b.get("estimate"), b.get("lo"), b.get("hi"), None,
                             b.get("method"), False, None, None, None])
            for cname, c in h["contrasts"].items():
                b = c["pooled_originals"][m]
                rows.append([head, f"pooled_{m}_originals", cname, b.get("estimate"), b.get("lo"), b.get("hi"),
                             b.get("p"), b.get("method"), False, b.get("edge"), None, None])
    return rows


def multiclass_tex(data: dict[str, Any]) -> str:
    """``study.tex``: per head and metric the paper and honest means and the three contrasts."""
    header = ["head", "metric", "paper", "honest (weight)", "inflation", "leak", "augmentation"]
    rows = []
    for head, h in data["heads_results"].items():
        for m in SHOWN_K:
            c = h["contrasts"]
            rows.append([head_tag(data, head).replace("`", ""), _label(m),
                         Tex(num(h["arms"]["paper"]["metrics"][m]["mean"])),
                         Tex(num(h["arms"]["weight"]["metrics"][m]["mean"])),
                         *[Tex(_tex_ci(c[k]["metrics"][m])) for k in ("inflation", "leak", "augmentation")]])
    return latex_table(header, rows, f"LEAKY: the paper arm's {LEAKY_TEXT} Protocol inflation of a "
                       f"{len(data.get('classes', []))}-class task (honest protocol: {data['honest_protocol']}); "
                       "differences with corrected 95% CI (augmentation: paired)", "tab:study")


def _tex_ci(d: dict[str, Any]) -> str:
    if d.get("edge") in EDGE_TEXT:
        return EDGE_TEXT[d["edge"]]
    return f"{num(d['diff'], sign=True)} [{num(d['lo'], sign=True)}, {num(d['hi'], sign=True)}]"

