"""Tables people paste: a run's main tables as LaTeX (``report.tex``, booktabs) and CSV (``table_*.csv``).

The same numbers as ``report.md``, read from the run's JSON data; ``latex_table``/``write_csv`` also
serve ``fusionfeat study``.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusionfeat.metrics import LABELS, METRICS

TEX_FILE = "report.tex"
RESULTS_CSV = "table_results.csv"
CONFUSION_CSV = "table_confusion.csv"

_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: Any) -> str:
    """Text safe inside a LaTeX tabular cell (``_`` → ``\\_``, ``&`` → ``\\&``, ...)."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def latex_table(header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "", label: str = "") -> str:
    """A booktabs ``table`` with a left-aligned first column and right-aligned others; cells are escaped.

    Needs ``\\usepackage{booktabs}``. Cells that are already LaTeX (e.g. ``$\\pm$``) pass through when
    given as ``Tex`` instances.
    """
    spec = "l" + "r" * (len(header) - 1)
    lines = [r"\begin{table}[ht]", r"\centering"]
    if caption:
        lines.append(rf"\caption{{{latex_escape(caption)}}}")
    if label:
        lines.append(rf"\label{{{label}}}")
    lines += [rf"\begin{{tabular}}{{{spec}}}", r"\toprule", _tex_row(header), r"\midrule"]
    lines += [_tex_row(row) for row in rows]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


class Tex(str):
    """A cell that is LaTeX already (not escaped)."""


def _tex_row(cells: Sequence[Any]) -> str:
    return " & ".join(c if isinstance(c, Tex) else latex_escape(c) for c in cells) + r" \\"


def tex_pm(mean: float | None, std: float | None, digits: int = 4) -> Tex:
    """``mean $\\pm$ std`` (a dash when missing)."""
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return Tex("--")
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return Tex(f"{mean:.{digits}f}")
    return Tex(f"{mean:.{digits}f} $\\pm$ {std:.{digits}f}")


def write_csv(path: Path, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """A plain CSV with a header line (numbers at full precision, missing values empty)."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if _missing(v) else v for v in row])


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def write_tables(data: dict[str, Any], out: Path) -> list[str]:
    """Write ``report.tex`` and the CSV tables of a run's JSON data into ``out``; return their names."""
    heads = data["heads"]
    folds, repeats = data["protocol"].get("n_folds", "?"), data["protocol"].get("repeats", 1)
    unit = f"{folds} folds" + (f" x {repeats} repeats" if repeats and repeats > 1 else "")
    header = ["head", *[LABELS[m] for m in METRICS]]
    rows = [[h, *[tex_pm(i["summary"][m]["mean"], i["summary"][m]["std"]) for m in METRICS]] for h, i in heads.items()]
    caption = f"Results, mean and standard deviation over {unit}; protocol {data['protocol'].get('name', '')}"
    tex = latex_table(header, rows, caption, "tab:results")
    conf_header = ["head", "TN", "FP", "FN", "TP"]
    conf_rows = [[h, *[int(x) for row in i["confusion_total"] for x in row]] for h, i in heads.items()]
    tex += "\n" + latex_table(conf_header, conf_rows, "Confusion counts summed over folds (and repeats)",
                              "tab:confusion")
    (out / TEX_FILE).write_text(tex)
    stats = ["mean", "std", "ci95_low", "ci95_high", "n_folds", "n_repeats"]
    write_csv(out / RESULTS_CSV, ["head", "metric", *stats],
              [[h, m, *[i["summary"][m].get(k) for k in stats]] for h, i in heads.items() for m in METRICS])
    write_csv(out / CONFUSION_CSV, conf_header, conf_rows)
    return [TEX_FILE, RESULTS_CSV, CONFUSION_CSV]
