"""The run folder of a CV result: ``metrics.json``, ``predictions.csv``, ``report.md``, the summary figures and
per-head detail plots in ``figures/``.

Everything in ``report.md`` is rendered from ``metrics.json`` (``fusionfeat.report.markdown``), so
``compare_runs`` can line runs up later.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

import fusionfeat
from fusionfeat import paper, stats
from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluation.cv import CVResult
from fusionfeat.evaluation.evidence import analyse
from fusionfeat.fsio import RUN, csv_writer, dumps_json, output_target, require_file
from fusionfeat.report.attention import write_attention
from fusionfeat.report.latex import write_tables
from fusionfeat.report.markdown import render_report
from fusionfeat.report.multiclass_run import write_multiclass_files
from fusionfeat.report.plots import write_plots
from fusionfeat.report.roc_bands import run_bands

METRICS_FILE = "metrics.json"
PREDICTIONS_FILE = "predictions.csv"
REPORT_FILE = "report.md"
SUBJECTS_FILE = "subjects.csv"


def write_run(result: CVResult, out_dir: str | Path, overwrite: bool = False, n_boot: int = 2000) -> Path:
    """Write the run folder atomically under the output rule (``fusionfeat.fsio``) and return its path.

    A previous run folder at ``out_dir`` is replaced only with ``overwrite``; any other non-empty folder is refused.
    ``n_boot`` resamples for every bootstrap interval and paired bootstrap test.
    """
    with output_target(out_dir, RUN, overwrite=overwrite) as target:
        write_run_files(result, target.path, n_boot=n_boot)
    return target.final


def write_run_files(result: CVResult, out: Path, n_boot: int = 2000) -> None:
    """Write metrics.json, predictions.csv, subjects.csv, report.md/.tex, tables, summary.png, training.png and
    per-head plots (``figures/``) into ``out``. A run of more than two classes is written by
    ``fusionfeat.report.multiclass_run`` (its own metrics, tables and figures)."""
    if result.multiclass:
        files = {"metrics": METRICS_FILE, "predictions": PREDICTIONS_FILE, "report": REPORT_FILE,
                 "subjects": SUBJECTS_FILE}
        write_multiclass_files(result, out, files, n_boot=n_boot)
        write_attention(result, out)
        return
    data = run_json(result, n_boot=n_boot)
    plots = write_plots(data, out, run_bands(result))
    data["plots"] = plots
    (out / METRICS_FILE).write_text(dumps_json(data), encoding="utf-8")
    write_predictions(result, out / PREDICTIONS_FILE)
    if (data.get("subjects") or {}).get("heads"):
        write_subjects(data["subjects"], out / SUBJECTS_FILE)
    (out / REPORT_FILE).write_text(render_report(data), encoding="utf-8")
    write_tables(data, out)
    write_attention(result, out)


# ----------------------------------------------------------------------------------------------- data



def run_json(result: CVResult, n_boot: int = 2000) -> dict[str, Any]:
    """Everything about a run except per-sample predictions, as plain JSON-able data (keys: docs/protocols.md)."""
    summary = result.summary()
    evidence = analyse(result, n_boot=n_boot)
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
                    "threshold": f.threshold,
                    "n_test": f.n_test,
                    "metrics": f.metrics,
                    "confusion": f.confusion,
                    "roc": f.roc,
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
        "classes": result.classes,
        "positive": result.positive,
        "features": result.features,
        "protocol": result.protocol,
        "provenance": result.provenance,
        "heads": heads,
        "options": {k: v for k, v in result.options.items() if k != "operating_target"},
        "decision_rule": (
            "threshold chosen on each training fold's inner out-of-fold predictions "
            f"({result.options['operating_point']})"
            if result.options.get("operating_point") else "argmax (the more probable class; P(positive) >= 0.5)"
        ),
        "comparisons": evidence["comparisons"],
        "subjects": evidence["subjects"],
        "paper": {"citation": paper.CITATION, "protocol": paper.PROTOCOL, "table1": paper.TABLE1,
                  "f1_note": stats.PAPER_F1_NOTE},
    }


def write_predictions(result: CVResult, path: Path) -> None:
    """Out-of-fold P(positive) per head for every evaluated row and repeat (one line per row and repeat)."""
    rows = result.rows
    prob_cols = [f"p_{result.positive}_{head}" for head in result.heads]
    pred_cols = [f"pred_{head}" for head in result.heads]
    weight_cols = [(h, i, f"w_{h}_{n}") for h, names in result.weight_names.items() for i, n in enumerate(names)]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv_writer(fh)
        writer.writerow(
            ["repeat", "fold", "path", "view", "label", "group", *prob_cols, *pred_cols,
             *[c for _, _, c in weight_cols]]
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
                        *[_fmt_pred(result, h, r, j) for h in result.heads],
                        *[_fmt_prob(result.oof_weights[h][r, j, i]) for h, i, _ in weight_cols],
                    ]
                )


def _fmt_prob(x: float) -> str:
    """Full precision: ``repr`` of the float reads back to the same double, so AUCs recompute exactly."""
    return "" if math.isnan(x) else repr(float(x))


def _fmt_pred(result: CVResult, head: str, r: int, j: int) -> str:
    """The hard prediction (a class name), as the per-fold and pooled thresholded metrics used it."""
    x = result.oof_pred[head][r, j]
    if math.isnan(x):
        return ""
    negative = next(c for c in result.classes if c != result.positive)
    return result.positive if x >= 0.5 else negative


def write_subjects(subjects: dict[str, Any], path: Path) -> None:
    """Subject-level scores: one line per repeat and subject, one score column per head."""
    heads = list(subjects["heads"])
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv_writer(fh)
        writer.writerow(["repeat", "subject", "label", "n_cells", *[f"score_{h}" for h in heads]])
        n_repeats = len(subjects["scores"][heads[0]])
        for r in range(n_repeats):
            for i, subject in enumerate(subjects["subject"]):
                writer.writerow([r, subject, subjects["label_names"][i], subjects["n_cells"][i],
                                 *[repr(float(subjects["scores"][h][r][i])) for h in heads]])


def load_run(run_dir: str | Path) -> dict[str, Any]:
    """A run folder's ``metrics.json`` data (FusionfeatError when it is not a run folder)."""
    path = require_file(run_dir, METRICS_FILE, f"{Path(run_dir)} is not a fusionfeat run folder (no {METRICS_FILE}); "
                        "pass folders written by a fusionfeat evaluation")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise FusionfeatError(f"{path} is not valid JSON ({exc.msg}); rerun the evaluation that wrote it") from None
    except RecursionError:
        raise FusionfeatError(f"{path} is nested too deeply to be fusionfeat's; rerun the evaluation that wrote it"
                              ) from None
    except UnicodeDecodeError:
        raise FusionfeatError(f"{path} is not UTF-8 text; rerun the evaluation that wrote it") from None
    if not looks_like_run(data):
        raise FusionfeatError(f"{path} does not have the shape fusionfeat writes (heads, protocol, summaries); "
                              "pass run folders written by `fusionfeat fit`")
    return data


def looks_like_run(data: Any) -> bool:
    """Whether parsed ``metrics.json`` data has the shape ``write_run`` gives it."""
    return (isinstance(data, dict) and isinstance(data.get("heads"), dict) and isinstance(data.get("protocol"), dict)
            and isinstance(data.get("provenance"), dict) and isinstance(data.get("classes"), list)
            and len(data["classes"]) >= 2
            and (data.get("positive") in data["classes"] if len(data["classes"]) == 2 else data.get("positive") is None)
            and all(isinstance(h, dict) and isinstance(h.get("summary"), dict) for h in data["heads"].values()))
