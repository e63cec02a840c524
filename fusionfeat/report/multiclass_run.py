"""The run folder of a K-class (K > 2) CV result: ``metrics.json``, ``predictions.csv`` (one probability column per
class and head), ``report.md``/``report.tex``, CSV tables and the per-head figures (K×K confusion, one-vs-rest ROC
curves, top-label reliability). ``fusionfeat.report.run.write_run_files`` dispatches here when a run has more than
two classes; binary runs never reach this module.
"""

from __future__ import annotations

import datetime as _dt
import math
from pathlib import Path
from typing import Any

import numpy as np

import fusionfeat
from fusionfeat.evaluation import multiclass_metrics as mm
from fusionfeat.evaluation.cv import CVResult
from fusionfeat.evaluation.multiclass_evidence import analyse_multiclass
from fusionfeat.fsio import csv_writer, dumps_json
from fusionfeat.report.latex import latex_table, tex_interval, tex_pm, write_csv
from fusionfeat.report.multiclass_markdown import render_multiclass_report
from fusionfeat.report.multiclass_plots import write_multiclass_plots

RESULTS_CSV = "table_results.csv"
PER_CLASS_CSV = "table_per_class.csv"
CONFUSION_CSV = "table_confusion.csv"
TEX_FILE = "report.tex"


def write_multiclass_files(result: CVResult, out: Path, files: dict[str, str], n_boot: int = 2000) -> None:
    """Write metrics.json, predictions.csv, subjects.csv (subjects known), report.md/.tex, tables and figures
    into ``out``; ``files`` names metrics/predictions/report/subjects as ``write_run_files`` does."""
    data = multiclass_run_json(result, n_boot=n_boot)
    data["plots"] = write_multiclass_plots(data, out)
    (out / files["metrics"]).write_text(dumps_json(data), encoding="utf-8")
    write_multiclass_predictions(result, out / files["predictions"])
    if (data.get("subjects") or {}).get("heads"):
        write_multiclass_subjects(data["subjects"], data["classes"], out / files["subjects"])
    (out / files["report"]).write_text(render_multiclass_report(data), encoding="utf-8")
    write_multiclass_tables(data, out)


def multiclass_run_json(result: CVResult, n_boot: int = 2000) -> dict[str, Any]:
    """Everything about a K-class run except per-row predictions, as JSON-able data (keys: docs/protocols.md)."""
    summary = result.summary()
    evidence = analyse_multiclass(result, n_boot=n_boot)
    by_class = result.fusion_weights()
    heads = {}
    for head in result.heads:
        folds = result.fold_results(head)
        heads[head] = {
            **result.head_info[head],
            "summary": summary[head],
            **evidence["heads"][head],
            "confusion_total": np.sum([f.confusion for f in folds], axis=0).tolist(),
            "fusion_weights_by_class": by_class.get(head),
            "folds": [
                {
                    "repeat": f.repeat,
                    "fold": f.fold,
                    "n_train": f.n_train,
                    "n_train_images": f.n_train_images,
                    "n_test": f.n_test,
                    "metrics": f.metrics,
                    "per_class": f.per_class,
                    "confusion": f.confusion,
                    "history": f.history,
                    "fusion_weights": f.fusion_weights,
                    "kernel": f.kernel,
                }
                for f in folds
            ],
        }
    return {
        "fusionfeat_version": fusionfeat.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "task": "multiclass",
        "classes": result.classes,
        "positive": None,
        "features": result.features,
        "protocol": result.protocol,
        "provenance": result.provenance,
        "heads": heads,
        "metrics": list(mm.METRICS),
        "options": {k: v for k, v in result.options.items() if k != "operating_target"},
        "decision_rule": "argmax (the most probable of the K classes)",
        "comparisons": evidence["comparisons"],
        "subjects": evidence["subjects"],
    }


def prediction_columns(classes: list[str], heads: list[str]) -> list[str]:
    """The probability columns of a K-class ``predictions.csv``: ``p_<class>_<head>`` per head, classes in order."""
    return [f"p_{c}_{h}" for h in heads for c in classes]


def write_multiclass_predictions(result: CVResult, path: Path) -> None:
    """One line per evaluated row and repeat: repeat, fold, path, view, label, group, then for every head its K
    out-of-fold class probabilities ``p_<class>_<head>`` (full precision; they sum to 1 on the row), then
    ``pred_<head>`` (the predicted class: the most probable) per head, then any fusion-weight columns."""
    rows = result.rows
    k = len(result.classes)
    weight_cols = [(h, i, f"w_{h}_{n}") for h, names in result.weight_names.items() for i, n in enumerate(names)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv_writer(fh)
        writer.writerow(["repeat", "fold", "path", "view", "label", "group",
                         *prediction_columns(result.classes, result.heads), *[f"pred_{h}" for h in result.heads],
                         *[c for _, _, c in weight_cols]])
        for r in range(result.test_fold.shape[0]):
            for j in range(len(rows["sample"])):
                writer.writerow([
                    r,
                    int(result.test_fold[r, j]),
                    rows["path"][j],
                    int(rows["view"][j]),
                    result.classes[int(rows["label"][j])],
                    rows["group"][j],
                    *[_fmt(result.oof_proba[h][r, j, c]) for h in result.heads for c in range(k)],
                    *[_class_name(result, h, r, j) for h in result.heads],
                    *[_fmt(result.oof_weights[h][r, j, i]) for h, i, _ in weight_cols],
                ])


def _fmt(x: float) -> str:
    return "" if math.isnan(x) else repr(float(x))


def _class_name(result: CVResult, head: str, r: int, j: int) -> str:
    x = result.oof_pred[head][r, j]
    return "" if math.isnan(x) else result.classes[int(x)]


def write_multiclass_subjects(subjects: dict[str, Any], classes: list[str], path: Path) -> None:
    """Subject-level results: one line per repeat and subject, the mean probability of every class per head
    (``p_<class>_<head>``) and the predicted class (``pred_<head>``)."""
    heads = list(subjects["heads"])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv_writer(fh)
        writer.writerow(["repeat", "subject", "label", "n_cells", *prediction_columns(classes, heads),
                         *[f"pred_{h}" for h in heads]])
        n_repeats = len(subjects["probabilities"][heads[0]])
        for r in range(n_repeats):
            for i, subject in enumerate(subjects["subject"]):
                probs = {h: subjects["probabilities"][h][r][i] for h in heads}
                writer.writerow([r, subject, subjects["label_names"][i], subjects["n_cells"][i],
                                 *[repr(float(probs[h][c])) for h in heads for c in range(len(classes))],
                                 *[classes[int(np.argmax(probs[h]))] for h in heads]])


def _results_rows(data: dict[str, Any]) -> list[list[Any]]:
    rows = []
    for head, info in data["heads"].items():
        for m in mm.METRICS:
            u = info["uncertainty"][m]
            boot = u["pooled"].get("bootstrap") or {}
            rows.append([head, m, u["per_fold"]["mean"], u["per_fold"]["sd"], u["corrected_t"]["lo"],
                         u["corrected_t"]["hi"], u["pooled"]["mean"], boot.get("lo", ""), boot.get("hi", "")])
    return rows


def write_multiclass_tables(data: dict[str, Any], out: Path) -> list[str]:
    """``table_results.csv`` (every metric with its intervals), ``table_per_class.csv``, ``table_confusion.csv``
    (K×K per head, counts summed over folds and repeats) and ``report.tex``; returns the file names."""
    classes = data["classes"]
    write_csv(out / RESULTS_CSV, ["head", "metric", "per_fold_mean", "per_fold_sd", "corrected_t_lo",
                                  "corrected_t_hi", "pooled", "bootstrap_lo", "bootstrap_hi"], _results_rows(data))
    per_class = [[head, c, *[info["pooled"]["per_class"][key][i] for key in mm.PER_CLASS]]
                 for head, info in data["heads"].items() for i, c in enumerate(classes)]
    write_csv(out / PER_CLASS_CSV, ["head", "class", *mm.PER_CLASS], per_class)
    confusion = [[head, c, *info["pooled"]["confusion"][i]] for head, info in data["heads"].items()
                 for i, c in enumerate(classes)]
    write_csv(out / CONFUSION_CSV, ["head", "true", *[f"pred_{c}" for c in classes]], confusion)
    (out / TEX_FILE).write_text(_tex(data), encoding="utf-8")
    return [RESULTS_CSV, PER_CLASS_CSV, CONFUSION_CSV, TEX_FILE]


def _tex(data: dict[str, Any]) -> str:
    shown = ("accuracy", "balanced_accuracy", "f1_macro", "kappa", "roc_auc_macro", "log_loss")
    summary = latex_table(
        ["head", *[mm.LABELS[m] for m in shown]],
        [[head, *[tex_pm(info["uncertainty"][m]["per_fold"]["mean"], info["uncertainty"][m]["per_fold"]["sd"])
                  for m in shown]] for head, info in data["heads"].items()],
        caption=f"Per-fold mean ± sd over {data['protocol'].get('n_folds', '?')} folds, {len(data['classes'])} "
                "classes", label="tab:multiclass-results")
    pooled = latex_table(
        ["head", "macro OvR AUC", "95% CI", "balanced acc.", "95% CI"],
        [[head, *[c for m in ("roc_auc_macro", "balanced_accuracy") for c in (
            f"{info['uncertainty'][m]['pooled']['mean']:.4f}",
            tex_interval(info["uncertainty"][m]["pooled"]["bootstrap"]["lo"],
                         info["uncertainty"][m]["pooled"]["bootstrap"]["hi"], m))]]
         for head, info in data["heads"].items()],
        caption="Pooled out-of-fold values with bootstrap intervals", label="tab:multiclass-pooled")
    return summary + "\n" + pooled
