"""``fusionfeat study``: how much the paper's protocol inflates its numbers, and why.

The same heads are cross-validated on one store under three protocols (``evaluation.cv.cross_validate``,
three calls; each written as a run folder by ``report.write_run``):

- ``paper``: the paper's protocol (``--cv paper``): minority images' rotated/mirrored copies are added
  before splitting, so a copy of a test image can be in training (the leak), and the copies are scored;
- ``augment``: the honest split (grouped when subjects are known, else stratified) with the same kind of
  copies added only inside each training fold (``--balance augment``): augmentation without the leak;
- ``weight``: the honest split with class weights (``--balance weight``), no copies.

inflation = paper − weight = (paper − augment) + (augment − weight) = leak + augmentation.
The ``augment`` and ``weight`` arms share their test folds exactly (same repeat, fold and rows), so the
augmentation contrast is the corrected paired t (``stats.corrected_paired_t``) on per-fold differences paired
by (repeat, fold). The paper arm's folds are over expanded rows, so the inflation and leak contrasts use
``stats.corrected_difference_t`` (Nadeau–Bengio corrected variance of each arm, Welch-combined: an
approximation). ROC AUC is also compared on the original images with a paired subject (or image) bootstrap
of the pooled out-of-fold predictions.

The paper arm scores class-balanced test folds (copies included) while the honest arms score originals at
the natural prevalence, so prevalence-dependent metrics (accuracy, precision, F1, MCC) mix a change of
prevalence into "leak" and "inflation"; the split is clean only for the prevalence-free metrics
(``PREVALENCE_FREE``). See ``docs/protocols.md``. A K-class store (K > 2) gets the same arms and contrasts on
macro one-vs-rest AUC, balanced accuracy and accuracy (``fusionfeat.study_multiclass``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fusionfeat import runtime, stats
from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluation.cv import CVResult, cross_validate
from fusionfeat.evaluation.evidence import bootstrap_groups, edge_interval, positives, weights_flags
from fusionfeat.evaluation.metrics import LABELS, METRICS
from fusionfeat.fsio import RUN, STUDY, dumps_json, marker_name, output_target, to_jsonable
from fusionfeat.heads.zoo import HeadSpec
from fusionfeat.protocols import default_protocol
from fusionfeat.report.cells import EXACT_NOTE
from fusionfeat.report.flags import flags_text, tag
from fusionfeat.report.latex import Tex, latex_table, write_csv
from fusionfeat.report.run import write_run_files
from fusionfeat.stats import EDGE_TEXT
from fusionfeat.store import FeatureStore
from fusionfeat.store.reader import accepts_store

DEFAULT_HEADS: tuple[str, ...] = ("resnet18", "vgg16", "concat", "attention")
STUDY_JSON = "study.json"
STUDY_MD = "study.md"
STUDY_CSV = "study.csv"
STUDY_TEX = "study.tex"
N_BOOT = 1000
SHOWN = ("accuracy", "balanced_accuracy", "f1", "mcc", "roc_auc")
# metrics that do not depend on the test fold's class prevalence: the only ones whose leak split is clean
PREVALENCE_FREE: tuple[str, ...] = ("recall", "sensitivity", "specificity", "balanced_accuracy", "roc_auc")
DECOMPOSED: tuple[str, ...] = ("balanced_accuracy", "roc_auc", "recall", "specificity")
PREVALENCE_DEPENDENT_SHOWN = tuple(m for m in SHOWN if m not in PREVALENCE_FREE)
CSV_HEADER = ["head", "metric", "quantity", "estimate", "lo", "hi", "p", "method", "prevalence_dependent", "edge",
              "exact_lo", "exact_hi"]


@dataclass(frozen=True)
class Arm:
    """One protocol of the study: its sub-run folder name, ``--cv`` and ``--balance``."""

    name: str
    protocol: str
    balance: str
    what: str


# inflation, leak and augmentation: (name, minuend arm, subtrahend arm, meaning)
CONTRASTS: tuple[tuple[str, str, str, str], ...] = (
    ("inflation", "paper", "weight", "paper − honest (weights)"),
    ("leak", "paper", "augment", "paper − honest augmentation: copies of test images in training, copies scored"),
    ("augmentation", "augment", "weight", "honest augmentation − honest weights: the copies themselves"),
)


def arms(honest: str) -> tuple[Arm, ...]:
    """The three protocols, the honest ones under ``honest`` (grouped or stratified)."""
    return (
        Arm("paper", "paper", "weight", "--cv paper: copies balanced before splitting (leaky), image-level"),
        Arm("augment", honest, "augment", f"--cv {honest} --balance augment: copies inside training folds only"),
        Arm("weight", honest, "weight", f"--cv {honest} --balance weight: class weights, no copies"),
    )


def check_dihedral(store: Any) -> None:
    """The study needs the 8 dihedral views (the paper's copies); one-line error otherwise."""
    n_views = int(store.n_views)
    if n_views != 8:
        raise FusionfeatError(
            f"fusionfeat study needs a store with dihedral views (8 per image); {getattr(store, 'path', 'the store')} "
            f"has {n_views}: re-extract with --views dihedral8"
        )


@accepts_store
def run_study(
    store: str | os.PathLike | FeatureStore,
    heads: Sequence[str | HeadSpec] = DEFAULT_HEADS,
    repeats: int = 3,
    folds: int | None = None,
    seed: int | None = None,
    device: str = "auto",
    progress: bool = True,
) -> dict[str, CVResult]:
    """Cross-validate ``heads`` under the three protocols; arm name → CVResult (same folds, seed, repeats).

    ``store`` is a store's path (opened for the call, then closed) or an open ``FeatureStore``; it needs the
    dihedral views (``--views dihedral8``). ``write_study`` turns the result into a study folder.
    """
    check_dihedral(store)
    if repeats < 1:
        raise FusionfeatError(f"--repeats must be at least 1, got {repeats}")
    honest = default_protocol(np.asarray(store.groups).astype(str), np.asarray(store.ok, dtype=bool))
    results = {}
    with runtime.progress(len(arms(honest)), progress, "study", unit="arm") as bar:
        for arm in arms(honest):
            bar.set_description(f"study {arm.name}")
            results[arm.name] = cross_validate(store, heads, protocol=arm.protocol, folds=folds, seed=seed,
                                               repeats=repeats, balance=arm.balance, device=device, progress=progress)
            bar.update(1)
            bar.stage(f"arm {len(results)}/{bar.total} done ({arm.what})")
        bar.set_description("study")
    return results


# ----------------------------------------------------------------------------------------------- numbers


def fold_values(result: CVResult, head: str, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-fit values of a metric, and per fit the evaluated training and test row counts (no copies)."""
    n_eval = len(result.rows["sample"])
    folds = result.fold_results(head)
    values = np.array([f.metrics.get(metric, math.nan) for f in folds], dtype=float)
    n_test = np.array([f.n_test for f in folds], dtype=float)
    return values, n_eval - n_test, n_test


def original_rows(result: CVResult) -> dict[int, int]:
    """Store sample → evaluation row of its original image (view 0)."""
    view0 = np.flatnonzero(result.rows["view"] == 0)
    return {int(result.rows["sample"][j]): int(j) for j in view0}


def compare(results: dict[str, CVResult], n_boot: int = N_BOOT, seed: int = 0) -> dict[str, Any]:
    """The study's numbers (JSON-able): per head, per arm per-metric corrected intervals and pooled AUC on
    originals; per contrast the corrected Welch difference of every metric and the paired bootstrap AUC."""
    first = next(iter(results.values()))
    out: dict[str, Any] = {}
    for head in first.heads:
        arms_out = {}
        for name, res in results.items():
            per_metric = {}
            for m in METRICS:
                ci = stats.corrected_resampled_t(*fold_values(res, head, m)).to_dict()
                exact = edge_interval(m, positives(res), res.oof_pred[head], bootstrap_groups(res)[0], ci["lo"],
                                      ci["hi"], ci["mean"], tiny=False)
                if exact:
                    ci["exact"] = exact
                per_metric[m] = ci
            arms_out[name] = {"metrics": per_metric, "pooled_auc_originals": _pooled_auc(res, head, n_boot, seed)}
        contrasts = {}
        for cname, a, b, meaning in CONTRASTS:
            per_metric = {}
            for m in METRICS:
                d = contrast(results[a], results[b], head, m)
                d["edge"] = stats.unmeasurable(arms_out[a]["metrics"][m]["mean"], arms_out[b]["metrics"][m]["mean"],
                                               d, m)
                per_metric[m] = d
            paired = _paired_auc(results[a], results[b], head, n_boot, seed)
            if paired.get("estimate") is not None:
                paired["edge"] = stats.unmeasurable(arms_out[a]["pooled_auc_originals"].get("estimate"),
                                                    arms_out[b]["pooled_auc_originals"].get("estimate"), paired,
                                                    "roc_auc")
            contrasts[cname] = {
                "of": [a, b],
                "meaning": meaning,
                "metrics": per_metric,
                "pooled_auc_originals": paired,
            }
        out[head] = {"arms": arms_out, "contrasts": contrasts}
    return out


def shares_splits(res_a: CVResult, res_b: CVResult, head: str) -> bool:
    """Whether two arms scored the same test rows on every (repeat, fold): then their fits are paired."""
    if res_a.test_fold.shape != res_b.test_fold.shape or len(res_a.rows["sample"]) != len(res_b.rows["sample"]):
        return False
    same_rows = all(np.array_equal(res_a.rows[k], res_b.rows[k]) for k in ("sample", "view"))
    keys_a = [(f.repeat, f.fold) for f in res_a.fold_results(head)]
    keys_b = [(f.repeat, f.fold) for f in res_b.fold_results(head)]
    return same_rows and keys_a == keys_b and bool(np.array_equal(res_a.test_fold, res_b.test_fold))


def contrast(res_a: CVResult, res_b: CVResult, head: str, metric: str) -> dict[str, Any]:
    """``a − b`` of one metric's per-fold means: corrected paired t when the arms share their splits (per-fold
    differences paired by (repeat, fold)), else the corrected Welch difference."""
    if shares_splits(res_a, res_b, head):
        va, n_train, n_test = fold_values(res_a, head, metric)
        vb, _, _ = fold_values(res_b, head, metric)
        return stats.corrected_paired_t(va - vb, n_train, n_test).to_dict()
    return stats.corrected_difference_t(*fold_values(res_a, head, metric), *fold_values(res_b, head, metric)).to_dict()


def common_originals(res_a: CVResult, res_b: CVResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows_a, rows_b = original_rows(res_a), original_rows(res_b)
    samples = np.array(sorted(set(rows_a) & set(rows_b)), dtype=np.int64)
    return (samples, np.array([rows_a[s] for s in samples], dtype=np.int64),
            np.array([rows_b[s] for s in samples], dtype=np.int64))


def groups_of(res: CVResult, rows: np.ndarray) -> np.ndarray | None:
    """Subject ids of the rows (None when no subject is known: the bootstrap then resamples images)."""
    g = np.asarray(res.rows["group"]).astype(str)[rows]
    return g if np.any(g != "") else None


def _pooled_auc(res: CVResult, head: str, n_boot: int, seed: int) -> dict[str, Any]:
    _, rows, _ = common_originals(res, res)
    y = (res.rows["label"][rows] == res.classes.index(res.positive)).astype(int)
    if len(np.unique(y)) < 2:
        return {"estimate": None, "note": "one class among the original images"}
    groups = groups_of(res, rows)
    boot = stats.cluster_bootstrap(y, res.oof[head][:, rows], groups, "roc_auc", n_boot=n_boot, seed=seed)
    out = {**boot.to_dict(), "n_images": len(rows)}
    exact = edge_interval("roc_auc", y, res.oof_pred[head][:, rows], groups, boot.lo, boot.hi, boot.estimate,
                          tiny=False)
    if exact:
        out["exact"] = exact
    return out


def _paired_auc(res_a: CVResult, res_b: CVResult, head: str, n_boot: int, seed: int) -> dict[str, Any]:
    samples, rows_a, rows_b = common_originals(res_a, res_b)
    if len(samples) == 0 or res_a.oof[head].shape[0] != res_b.oof[head].shape[0]:
        return {"estimate": None, "note": "no original images scored by both protocols with the same repeats"}
    pos = res_a.classes.index(res_a.positive)
    y = (res_a.rows["label"][rows_a] == pos).astype(int)
    if len(np.unique(y)) < 2:
        return {"estimate": None, "note": "one class among the shared original images"}
    boot = stats.paired_cluster_bootstrap(y, res_a.oof[head][:, rows_a], res_b.oof[head][:, rows_b],
                                          groups_of(res_a, rows_a), "roc_auc", n_boot=n_boot, seed=seed)
    return {**boot.to_dict(), "n_images": len(samples)}


# ----------------------------------------------------------------------------------------------- writing


def write_study(results: dict[str, CVResult], out_dir: str | Path, n_boot: int = N_BOOT, overwrite: bool = False,
                inputs: tuple[str | Path, ...] = ()) -> Path:
    """Write each arm's run folder (``paper/``, ``augment/``, ``weight/``) and the study report beside them:
    ``study.md``, ``study.json``, ``study.csv`` and ``study.tex``, atomically under the output rule
    (``fusionfeat.fsio``; a previous study folder is replaced only with ``overwrite``). Returns the folder."""
    with output_target(out_dir, STUDY, inputs=inputs, overwrite=overwrite) as target:
        write_study_files(results, target.path, n_boot)
    return target.final


def write_study_files(results: dict[str, CVResult], out: Path, n_boot: int = N_BOOT) -> None:
    """The study's files and its arms' run folders, written into the (temporary) folder ``out``."""
    for name, res in results.items():
        (out / name).mkdir()
        (out / name / marker_name(RUN)).write_text("written by fusionfeat as a run folder\n", encoding="utf-8")
        write_run_files(res, out / name)
    first = next(iter(results.values()))
    honest = results["weight"].protocol.get("name", "")
    data = {
        "store": first.provenance.get("store", ""),
        "heads": first.heads,
        "honest_protocol": honest,
        "repeats": int(first.test_fold.shape[0]),
        "n_folds": first.protocol.get("n_folds"),
        "seed": first.protocol.get("seed"),
        "paper_copies": int(results["paper"].protocol.get("n_paper_copies", 0)),
        "arms": {a.name: {"protocol": a.protocol, "balance": a.balance, "what": a.what, "run": a.name,
                          "n_eval_rows": len(results[a.name].rows["sample"])} for a in arms(honest)},
        "weights_kind": {b: p.get("weights_kind") for b, p in first.provenance.get("backbones", {}).items()},
        "head_weights": {h: weights_flags(first, h) for h in first.heads},
    }
    seed = int(first.protocol.get("seed") or 0)
    if len(first.classes) > 2:  # K classes: macro AUC, balanced accuracy and accuracy (fusionfeat.study_multiclass)
        from fusionfeat import study_multiclass as k

        data = to_jsonable({**data, "classes": list(first.classes),
                            "heads_results": k.compare_multiclass(results, n_boot=n_boot, seed=seed)})
        (out / STUDY_JSON).write_text(dumps_json(data), encoding="utf-8")
        write_csv(out / STUDY_CSV, CSV_HEADER, k.multiclass_csv_rows(data))
        (out / STUDY_TEX).write_text(k.multiclass_tex(data), encoding="utf-8")
        (out / STUDY_MD).write_text(k.render_multiclass_study(data), encoding="utf-8")
        return
    data["heads_results"] = compare(results, n_boot=n_boot, seed=seed)
    data = to_jsonable(data)
    (out / STUDY_JSON).write_text(dumps_json(data), encoding="utf-8")
    write_csv(out / STUDY_CSV, CSV_HEADER, _csv_rows(data))
    (out / STUDY_TEX).write_text(_tex(data), encoding="utf-8")
    (out / STUDY_MD).write_text(render_study(data), encoding="utf-8")


def _csv_rows(data: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for head, h in data["heads_results"].items():
        for m in METRICS:
            dep = m not in PREVALENCE_FREE
            for arm, a in h["arms"].items():
                ci = a["metrics"][m]
                e = ci.get("exact") or {}
                rows.append([head, m, arm, ci["mean"], ci["lo"], ci["hi"], None, ci["method"], dep, e.get("edge"),
                             e.get("lo"), e.get("hi")])
            for cname, c in h["contrasts"].items():
                d = c["metrics"][m]
                rows.append([head, m, cname, d["diff"], d["lo"], d["hi"], d["p"], d["method"], dep, d.get("edge"),
                             None, None])
        for arm, a in h["arms"].items():
            b = a["pooled_auc_originals"]
            e = b.get("exact") or {}
            rows.append([head, "pooled_auc_originals", arm, b.get("estimate"), b.get("lo"), b.get("hi"), None,
                         b.get("method"), False, e.get("edge"), e.get("lo"), e.get("hi")])
        for cname, c in h["contrasts"].items():
            b = c["pooled_auc_originals"]
            rows.append([head, "pooled_auc_originals", cname, b.get("estimate"), b.get("lo"), b.get("hi"),
                         b.get("p"), b.get("method"), False, b.get("edge"), None, None])
    return rows


def num(x: Any, digits: int = 3, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "—"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


def _ci(d: dict[str, Any], key: str = "mean", sign: bool = False, bounds: tuple[float, float] | None = None) -> str:
    if d.get("edge") in EDGE_TEXT:  # a difference that cannot be measured
        return EDGE_TEXT[d["edge"]]
    exact = d.get("exact")
    if exact:  # the corrected t interval degenerated: the exact interval, marked
        edge = f" (at the {exact['edge']})" if exact.get("edge") else ""
        counts = f" {exact['k']}/{exact['n']}" if exact.get("k", -1) >= 0 else ""
        return f"{num(d.get(key))}{edge} [{num(exact['lo'])}, {num(exact['hi'])}]‡{counts}"
    lo, hi = d.get("lo"), d.get("hi")
    if bounds is not None and lo is not None and hi is not None:  # shown clipped to the metric's range
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return f"{num(d.get(key), sign=sign)} [{num(lo, sign=sign)}, {num(hi, sign=sign)}]"


def _range(metric: str) -> tuple[float, float]:
    return (-1.0, 1.0) if metric == "mcc" else (0.0, 1.0)


def p_text(x: Any) -> str:
    return "—" if x is None else (f"{x:.3g}" if x >= 1e-3 else "<0.001")


def md_row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def render_study(data: dict[str, Any]) -> str:
    """The study's markdown report, rendered from its JSON data."""
    res = data["heads_results"]
    kinds = ", ".join(f"{b}: {k}" for b, k in data["weights_kind"].items())
    lines = [
        "# Protocol study: how much the paper's protocol inflates its numbers",
        "",
        f"Store `{data['store']}` (weights: {kinds}); {data['n_folds']} folds × {data['repeats']} repeats, "
        f"seed {data['seed']}; honest protocol: **{data['honest_protocol']}**.",
        "",
    ]
    if data["honest_protocol"] == "stratified":
        lines += ["> **Subjects unknown**: the store names no subjects, so the honest arms' folds are image-level "
                  "too and cells of one patient can sit in training and test. \"Honest\" here means free of the "
                  "copy leak only; these numbers do not estimate performance on new patients.", ""]
    lines += ["Weights per head: " + "; ".join(f"`{h}` ({flags_text({'weights': f})})"
                                              for h, f in data.get("head_weights", {}).items()) + ".", ""]
    random = random_heads(data)
    if random:
        lines += [f"> **WARNING: RANDOM-WEIGHT FEATURES** in head(s) {', '.join(f'`{h}`' for h in random)}: "
                  "these heads' numbers measure random features, not ImageNet ones; the protocol differences "
                  "are still real differences between protocols.", ""]
    lines += [f"> **WARNING: LEAKY PROTOCOL** in the `paper` arm: {LEAKY_TEXT}", ""]
    lines += [
        "| arm | protocol | evaluated rows | sub-run |",
        "|---|---|---:|---|",
        *[md_row([f"`{n}`", a["what"], str(a["n_eval_rows"]), f"[{n}/report.md]({n}/report.md)"])
          for n, a in data["arms"].items()],
        "",
        "inflation = paper − weight = **leak** (paper − augment) + **augmentation** (augment − weight).",
        "",
        *_balance_note(data),
        "## Metrics per protocol (mean over folds × repeats [corrected resampled t 95% CI, shown clipped to the "
        "metric's range])",
        "",
        md_row(["head", "arm", *[_label(m) for m in SHOWN]]),
        md_row(["---", "---", *["---:"] * len(SHOWN)]),
    ]
    for head, h in res.items():
        for arm, a in h["arms"].items():
            lines.append(md_row([head_tag(data, head), arm,
                                  *[_ci(a["metrics"][m], bounds=_range(m)) for m in SHOWN]]))
    lines += [
        "",
        "## Inflation and its split (difference of per-fold means [95% CI], p)",
        "",
        "Inflation and leak: corrected Welch t (each arm's Nadeau–Bengio corrected variance, combined as if "
        "independent; an approximation, usually conservative since the arms read the same images: the paper "
        "arm's folds are over expanded rows, so they are not paired with the honest arms' folds). "
        "Augmentation: corrected paired t on per-fold differences paired by (repeat, fold), since the "
        "`augment` and `weight` arms share their test folds exactly. (Any two arms that share their splits, "
        "e.g. all three when no copies are added, get the paired t; `study.json` names each test's method.)",
        "",
        "The split into leak and augmentation is clean only for sensitivity, specificity, balanced accuracy "
        "and ROC AUC: the paper arm scores class-balanced test folds (copies included) while the honest arms "
        "score the original images at their natural prevalence, so accuracy, precision, F1 and MCC also move "
        "with the change of prevalence. Those are in the separate table below.",
        "",
        *_contrast_table(data, DECOMPOSED),
        "",
        "### Prevalence-dependent metrics (not a clean leak split)",
        "",
        "**Prevalence-dependent**: under the paper arm these are measured at a different class prevalence "
        "(balanced by copies) than under the honest arms, so their \"inflation\" and \"leak\" include that "
        "change of prevalence, not only the leak.",
        "",
        *_contrast_table(data, PREVALENCE_DEPENDENT_SHOWN),
        "",
        "## ROC AUC of pooled out-of-fold predictions on the original images (paired bootstrap)",
        "",
        "Each arm's out-of-fold P(positive) for the original images (view 0; the paper arm's scored copies "
        "left out), averaged over repeats' AUCs; differences by a paired bootstrap that resamples subjects "
        "(images when subjects are unknown) and scores both arms on each resample.",
        "",
        md_row(["head", "paper", "augment", "weight", "inflation", "p", "leak", "p", "augmentation", "p"]),
        md_row(["---", *["---:"] * 9]),
    ]
    for head, h in res.items():
        cells = [_ci(h["arms"][a]["pooled_auc_originals"], "estimate") for a in ("paper", "augment", "weight")]
        for cname in ("inflation", "leak", "augmentation"):
            b = h["contrasts"][cname]["pooled_auc_originals"]
            cells += [_ci(b, "estimate", sign=True), "—" if b.get("edge") else p_text(b.get("p"))]
        lines.append(md_row([head_tag(data, head), *cells]))
    unit = next((b.get("unit") for h in res.values() for b in [h["contrasts"]["inflation"]["pooled_auc_originals"]]
                 if b.get("unit")), "image")
    if _any_edge(data):
        lines += ["", "**At the ceiling (or floor)**: where both arms score perfectly (or agree on every fold), the "
                  "difference cannot be measured; that is not \"no inflation\": there is no room left to see one. "
                  "Such cells say so instead of a zero difference with a zero-width interval and p = 1."]
    if any(a["metrics"][m].get("exact") or a["pooled_auc_originals"].get("exact")
           for h in res.values() for a in h["arms"].values() for m in METRICS):
        lines += ["", f"{EXACT_NOTE}."]
    lines += [
        "",
        f"Bootstrap unit: {unit}. Files: `{STUDY_JSON}` (every number), `{STUDY_CSV}`, `{STUDY_TEX}`; each "
        "arm's full report in its sub-folder. Method: docs/protocols.md, \"Measuring the leak\".",
        "",
    ]
    return "\n".join(lines)


def _any_edge(data: dict[str, Any]) -> bool:
    """Whether any contrast of the study could not be measured (both arms at the ceiling, say)."""
    return any(c["metrics"][m].get("edge") or c["pooled_auc_originals"].get("edge")
               for h in data["heads_results"].values() for c in h["contrasts"].values() for m in METRICS)


LEAKY_TEXT = ("copies balanced before the split, so test folds hold copies of training images; its numbers "
              "are optimistic by construction (that is what this study measures).")


def random_heads(data: dict[str, Any]) -> list[str]:
    """Heads that read at least one random-weight backbone (all heads for an old study without per-head flags)."""
    flags = data.get("head_weights")
    if flags is None:
        return list(data["heads"]) if any(k == "random" for k in data["weights_kind"].values()) else []
    return [h for h, f in flags.items() if "RANDOM" in f.values()]


def head_tag(data: dict[str, Any], head: str) -> str:
    """A head's name with its weights flags, e.g. ``resnet18 [RANDOM]`` (markdown, as in report.md)."""
    return tag({"heads": {head: {"weights": data.get("head_weights", {}).get(head, {})}}}, head)


def _contrast_table(data: dict[str, Any], metrics: Sequence[str]) -> list[str]:
    """Markdown rows of the three contrasts of ``metrics`` for every head."""
    lines = [
        md_row(["head", "metric", "inflation (paper − weight)", "p", "leak (paper − augment)", "p",
                 "augmentation (augment − weight)", "p"]),
        md_row(["---", "---", *["---:"] * 6]),
    ]
    for head, h in data["heads_results"].items():
        for m in metrics:
            cells = []
            for cname in ("inflation", "leak", "augmentation"):
                d = h["contrasts"][cname]["metrics"][m]
                cells += [_ci(d, "diff", sign=True), "—" if d.get("edge") else p_text(d["p"])]
            lines.append(md_row([head_tag(data, head), _label(m), *cells]))
    return lines


def _label(metric: str) -> str:
    """The metric's label, marked when it depends on the test fold's class prevalence."""
    return LABELS[metric] if metric in PREVALENCE_FREE else f"{LABELS[metric]} (prevalence-dependent)"


def _balance_note(data: dict[str, Any]) -> list[str]:
    """Say when the comparison is degenerate: balanced classes give the paper protocol no copies."""
    if data.get("paper_copies", 0) > 0:
        return [f"The paper protocol added {data['paper_copies']} minority copies before splitting.", ""]
    same = data["honest_protocol"] == "stratified"
    return [
        "> **No copies**: the store's classes are balanced, so the paper protocol adds no copies and "
        "`--balance augment` none either" + (
            "; with no subjects known the honest split is also image-level, so the three arms fit the "
            "same rows on the same folds and the inflation is zero by construction (the leak needs "
            "imbalanced classes, as in C-NMC, or subjects)." if same else
            "; what remains is the subject leak of image-level folds."),
        "",
    ]


def _tex(data: dict[str, Any]) -> str:
    header = ["head", "metric", "paper", "honest (weight)", "inflation", "leak", "augmentation"]
    rows = []
    for head, h in data["heads_results"].items():
        for m in DECOMPOSED + PREVALENCE_DEPENDENT_SHOWN:
            c = h["contrasts"]
            rows.append([head_tag(data, head).replace("`", ""), _label(m),
                         Tex(num(h["arms"]["paper"]["metrics"][m]["mean"])),
                         Tex(num(h["arms"]["weight"]["metrics"][m]["mean"])),
                         *[Tex(_tex_ci(c[k]["metrics"][m])) for k in ("inflation", "leak", "augmentation")]])
    random = random_heads(data)
    warn = f"LEAKY: the paper arm's {LEAKY_TEXT} "
    if random:
        warn += f"RANDOM weights in {', '.join(random)}: those numbers measure random features. "
    return latex_table(header, rows, f"{warn}Protocol inflation (honest protocol: {data['honest_protocol']}); "
                       "differences with corrected 95% CI (augmentation: paired). The leak split is clean only for "
                       "sensitivity, specificity, balanced accuracy and ROC AUC; rows marked prevalence-dependent "
                       "also carry the paper arm's change of class prevalence", "tab:study")


def _tex_ci(d: dict[str, Any]) -> str:
    if d.get("edge") in EDGE_TEXT:
        return EDGE_TEXT[d["edge"]]
    return f"{num(d['diff'], sign=True)} [{num(d['lo'], sign=True)}, {num(d['hi'], sign=True)}]"
