"""Several run folders side by side: one markdown table row per run and head."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluation.metrics import LABELS, METRICS
from fusionfeat.report.cells import md_row, pm
from fusionfeat.report.flags import describe_weights, random_heads
from fusionfeat.report.run import METRICS_FILE, load_run, looks_like_run


def compare_runs(run_dirs: Sequence[str | Path]) -> str:
    """A markdown table of several runs side by side: one row per run and head, mean ± std per metric."""
    if not run_dirs:
        raise FusionfeatError("compare_runs needs at least one run folder")
    runs = [(Path(d).name or str(d), load_run(d)) for d in run_dirs]
    try:
        return _compare_table(runs)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as exc:
        bad = next((name for name, data in runs if not looks_like_run(data)), runs[0][0])
        raise FusionfeatError(f"{bad}/{METRICS_FILE} does not have the shape fusionfeat writes ({type(exc).__name__}: "
                              f"{exc}); pass run folders written by `fusionfeat fit`") from None


def _compare_table(runs: list[tuple[str, Any]]) -> str:
    header = ["run", "protocol", "features", "head", *[LABELS[m] for m in METRICS]]
    lines = [md_row(header), md_row(["---"] * 4 + ["---:"] * len(METRICS))]
    notes = []
    for name, data in runs:
        for head, info in data["heads"].items():
            flags = _run_flags(data, head)
            s = info["summary"]
            cells = [pm(nan_or(s[m]["mean"]), nan_or(s[m]["std"])) for m in METRICS]
            lines.append(
                md_row(
                    [
                        f"`{name}`",
                        _protocol_cell(data) + flags,
                        data.get("features", "?"),
                        f"`{head}`",
                        *cells,
                    ]
                )
            )
        notes.append(f"- `{name}`: {data['protocol'].get('text', '')} Weights: {_weights_summary(data)}.")
    legend = (
        "Flags: LEAKY = the paper's leaky protocol; RANDOM = this head read random-weight features (not comparable "
        "with ImageNet)."
    )
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n\n" + legend + "\n"


def _run_flags(data: dict[str, Any], head: str) -> str:
    flags = []
    if data["protocol"].get("leaky"):
        flags.append("LEAKY")
    if head in random_heads(data):
        flags.append("RANDOM")
    return f" **{' '.join(flags)}**" if flags else ""


def _protocol_cell(data: dict[str, Any]) -> str:
    p = data["protocol"]
    reps = f"×{p['repeats']}" if p.get("repeats", 1) > 1 else ""
    return f"{p['name']} {p.get('n_folds', '?')}-fold{reps}, {p.get('balance', '?')}"


def _weights_summary(data: dict[str, Any]) -> str:
    backbones = data["provenance"].get("backbones", {}) or {}
    return "; ".join(f"{b}: {describe_weights(a)}" for b, a in backbones.items()) or "unknown"


def nan_or(x: float | None) -> float:
    return math.nan if x is None else float(x)
