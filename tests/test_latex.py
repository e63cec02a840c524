"""Tables people paste: LaTeX that escapes and parses, CSV that reads back to the report's numbers."""

from __future__ import annotations

import csv
import math
import re

import pytest

from fusionfeat.evaluation.metrics import METRICS
from fusionfeat.report.latex import Tex, latex_escape, latex_table, write_tables

SEPARATOR = re.compile(r"(?<!\\)&")  # an unescaped column separator
ROW_END = re.compile(r"(?<!\\)\\\\\s*$")  # a row ending in an unescaped \\


@pytest.mark.parametrize(
    "text, tex",
    [
        ("attention_spatial", r"attention\_spatial"),
        ("a & b", r"a \& b"),
        ("50%", r"50\%"),
        ("$x$ #1 {y}", r"\$x\$ \#1 \{y\}"),
        ("~^", r"\textasciitilde{}\textasciicircum{}"),
        ("C:\\dir", r"C:\textbackslash{}dir"),
        ("argmax (P ≥ 0.5), 0.31 ± 0.04", r"argmax (P $\geq$ 0.5), 0.31 $\pm$ 0.04"),
    ],
)
def test_escape(text, tex):
    assert latex_escape(text) == tex


def body_rows(tex: str) -> list[str]:
    lines = tex.splitlines()
    out, inside = [], False
    for line in lines:
        if line.startswith(r"\begin{tabular}"):
            inside = True
        elif line.startswith(r"\end{tabular}"):
            inside = False
        elif inside and line not in (r"\toprule", r"\midrule", r"\bottomrule"):
            out.append(line)
    return out


def test_table_parses():
    tex = latex_table(["head", "a_b", "c&d"], [["x_y", "1 & 2", Tex("0.1 $\\pm$ 0.2")], ["z", 3, 4]], "cap_1", "t:x")
    assert r"\begin{tabular}{lrr}" in tex and r"\toprule" in tex and r"\bottomrule" in tex
    assert r"\caption{cap\_1}" in tex
    rows = body_rows(tex)
    assert len(rows) == 3  # header + 2
    for row in rows:
        assert len(SEPARATOR.findall(row)) == 2
        assert ROW_END.search(row)
        assert "_" not in row.replace(r"\_", "")
    assert r"x\_y & 1 \& 2 & 0.1 $\pm$ 0.2 \\" in rows


def fake_run() -> dict:
    summary = {m: {"mean": 0.5 + i / 100, "std": 0.01 * i, "ci95_low": math.nan, "ci95_high": math.nan,
                   "n_folds": 5, "n_repeats": 1} for i, m in enumerate(METRICS)}
    return {
        "protocol": {"name": "grouped", "n_folds": 5, "repeats": 1},
        "heads": {
            "attention_spatial": {"summary": summary, "confusion_total": [[10, 2], [3, 9]]},
            "logreg": {"summary": summary, "confusion_total": [[11, 1], [4, 8]]},
        },
    }


def test_run_tables(tmp_path):
    data = fake_run()
    names = write_tables(data, tmp_path)
    assert names == ["report.tex", "table_results.csv", "table_confusion.csv"]
    tex = (tmp_path / "report.tex").read_text()
    assert tex.count(r"\begin{tabular}") == 2
    rows = body_rows(tex)
    results = [r for r in rows if r.startswith("attention") or r.startswith("logreg")]
    assert len(results) == 4  # two heads in two tables
    for row in rows[: 1 + 2]:  # results header + 2 heads: one column per metric
        assert len(SEPARATOR.findall(row)) == len(METRICS) and ROW_END.search(row)
    assert results[0].startswith(r"attention\_spatial & 0.5000 $\pm$ 0.0000 & 0.5100 $\pm$ 0.0100")
    with open(tmp_path / "table_results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert len(table) == 2 * len(METRICS)
    auc = next(r for r in table if r["head"] == "logreg" and r["metric"] == "roc_auc")
    assert float(auc["mean"]) == data["heads"]["logreg"]["summary"]["roc_auc"]["mean"]
    assert auc["corrected_t_ci95_low"] == ""  # no uncertainty data → empty
    with open(tmp_path / "table_confusion.csv") as fh:
        conf = list(csv.reader(fh))
    assert conf == [["head", "TN", "FP", "FN", "TP"], ["attention_spatial", "10", "2", "3", "9"],
                    ["logreg", "11", "1", "4", "8"]]
