"""Several run folders side by side: what each run was (data, protocol, decision rule, calibration, weights),
then one markdown table row per run and head, with the warnings a reader needs before comparing rows."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluation import multiclass_metrics as mm
from fusionfeat.evaluation.evidence import weights_flag
from fusionfeat.evaluation.metrics import LABELS, METRICS
from fusionfeat.report.cells import md_row, pm
from fusionfeat.report.context import calibration_text, dataset_text, decision_rule
from fusionfeat.report.flags import FLAGS_LEGEND, describe_weights, warning_flags
from fusionfeat.report.run import METRICS_FILE, load_run, looks_like_run

THRESHOLDED = [m for m in METRICS if m != "roc_auc"]


def compare_runs(run_dirs: Sequence[str | Path]) -> str:
    """Markdown: a table of the runs (data, protocol, decision rule, calibration, weights per backbone) and a
    table of their heads side by side (mean ± sd per metric), with a note wherever rows are not comparable."""
    if not run_dirs:
        raise FusionfeatError("compare_runs needs at least one run folder")
    runs = [(Path(d).name or str(d), load_run(d)) for d in run_dirs]
    try:
        return "\n\n".join(p for p in (_runs_table(runs), _compare_table(runs, *_metrics_of(runs)), _cautions(runs))
                           if p) + "\n"
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        bad = next((name for name, data in runs if not looks_like_run(data)), runs[0][0])
        raise FusionfeatError(f"{bad}/{METRICS_FILE} does not have the shape fusionfeat writes ({type(exc).__name__}: "
                              f"{exc}); pass run folders written by `fusionfeat fit`") from None


def _metrics_of(runs: list[tuple[str, Any]]) -> tuple[tuple[str, ...], dict[str, str]]:
    """The metrics the runs share: binary runs the binary ones, runs of more than two classes the K-class ones;
    the two kinds cannot share a table."""
    multi = {name: len(data["classes"]) > 2 for name, data in runs}
    if len(set(multi.values())) > 1:
        raise FusionfeatError(f"cannot compare binary runs ({', '.join(n for n, m in multi.items() if not m)}) with "
                              f"runs of more than two classes ({', '.join(n for n, m in multi.items() if m)}): "
                              "compare each kind separately")
    return (mm.METRICS, mm.LABELS) if any(multi.values()) else (METRICS, LABELS)


def _runs_table(runs: list[tuple[str, Any]]) -> str:
    lines = [md_row(["run", "data", "protocol", "features", "decision rule", "calibration", "weights"]),
             md_row(["---"] * 7)]
    for name, data in runs:
        lines.append(md_row([f"`{name}`", dataset_text(data), _protocol_cell(data), data.get("features", "?"),
                             _run_rule(data), calibration_text(data), _weights_flags(data)]))
    return "\n".join(lines)


def _compare_table(runs: list[tuple[str, Any]], metrics: tuple[str, ...] = METRICS,
                   labels: dict[str, str] = LABELS) -> str:
    header = ["run", "protocol", "features", "head", "decision rule", *[labels[m] for m in metrics]]
    lines = [md_row(header), md_row(["---"] * 5 + ["---:"] * len(metrics))]
    notes = []
    for name, data in runs:
        for head, info in data["heads"].items():
            flags = warning_flags(data, head)
            s = info["summary"]
            cells = [pm(nan_or(s[m]["mean"]), nan_or(s[m]["std"])) for m in metrics]
            lines.append(
                md_row(
                    [
                        f"`{name}`",
                        _protocol_cell(data) + (f" **{' '.join(flags)}**" if flags else ""),
                        data.get("features", "?"),
                        f"`{head}`",
                        decision_rule(data, head),
                        *cells,
                    ]
                )
            )
        notes.append(f"- `{name}`: {data['protocol'].get('text', '')} Weights: {_weights_summary(data)}.")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n\n" + FLAGS_LEGEND


def _cautions(runs: list[tuple[str, Any]]) -> str:
    """Notes where runs differ in what makes their rows comparable: decision rule, calibration, data."""
    if len(runs) < 2:
        return ""
    out = []
    rules = {name: _run_rule(data) for name, data in runs}
    if len(set(rules.values())) > 1:
        out.append(
            f"> **Different decision rules**: {_listing(rules)}. "
            f"The thresholded metrics ({', '.join(LABELS[m] for m in THRESHOLDED)}) depend on it, so they differ "
            "between these runs even for the same model (a rule set for high sensitivity trades specificity for "
            "it); ROC AUC is threshold-free. Compare thresholded metrics only between runs with the same rule."
        )
    calibration = {name: calibration_text(data) for name, data in runs}
    if len(set(calibration.values())) > 1:
        out.append(f"> **Different calibration**: {_listing(calibration)}. Calibration changes the probabilities, "
                   "so the hard predictions (and every thresholded metric) can change with it.")
    datasets = {name: dataset_text(data) for name, data in runs}
    if len(set(datasets.values())) > 1:
        out.append(f"> **Different data**: {_listing(datasets)}. Rows on different data do not compare models.")
    return "\n>\n".join(out)


def _listing(values: dict[str, str]) -> str:
    return "; ".join(f"`{name}` {value}" for name, value in values.items())


def _run_rule(data: dict[str, Any]) -> str:
    """The run's rule; an operating point's threshold differs per head (see the heads' rows)."""
    rule = decision_rule(data)
    return rule if rule.startswith("argmax") else f"operating point {rule} (threshold per head and fold)"


def _protocol_cell(data: dict[str, Any]) -> str:
    p = data["protocol"]
    reps = f"×{p['repeats']}" if p.get("repeats", 1) > 1 else ""
    return f"{p['name']} {p.get('n_folds', '?')}-fold{reps}, {p.get('balance', '?')}"


def _weights_flags(data: dict[str, Any]) -> str:
    """backbone → IMAGENET / FILE sha / RANDOM for every backbone of the run's store."""
    backbones = data["provenance"].get("backbones", {}) or {}
    parts = []
    for b, attrs in backbones.items():
        flag = weights_flag(attrs or {})
        parts.append(f"{b} **{flag}**" if flag == "RANDOM" else f"{b} {flag}")
    return ", ".join(parts) or "unknown"


def _weights_summary(data: dict[str, Any]) -> str:
    backbones = data["provenance"].get("backbones", {}) or {}
    return "; ".join(f"{b}: {describe_weights(a)}" for b, a in backbones.items()) or "unknown"


def nan_or(x: float | None) -> float:
    return math.nan if x is None else float(x)
