"""Tables people paste: a run's main tables as LaTeX (``report.tex``, booktabs) and CSV (``table_*.csv``).

The same numbers as ``report.md``, read from the run's JSON data; ``latex_table``/``write_csv`` also
serve ``fusionfeat study``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from fusionfeat.evaluation.metrics import LABELS, METRICS
from fusionfeat.fsio import csv_writer
from fusionfeat.report.cells import CLIP_NOTE, interval
from fusionfeat.report.context import calibration_text, rule_summary
from fusionfeat.report.flags import file_heads, random_heads, tag

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
    "≥": r"$\geq$",
    "≤": r"$\leq$",
    "±": r"$\pm$",
    "−": "-",
}


def latex_escape(text: Any) -> str:
    """Text safe inside a LaTeX tabular cell (``_`` → ``\\_``, ``&`` → ``\\&``, ``≥`` → ``$\\geq$``, ...)."""
    return "".join(_SPECIAL.get(ch, ch) for ch in str(text))


def latex_table(header: Sequence[str], rows: Sequence[Sequence[Any]], caption: str = "", label: str = "") -> str:
    """A booktabs ``table`` with a left-aligned first column and right-aligned others; cells are escaped.

    Needs ``\\usepackage{booktabs}``. Cells (and a caption) that are already LaTeX (e.g. ``$\\pm$``) pass
    through when given as ``Tex`` instances.
    """
    spec = "l" + "r" * (len(header) - 1)
    lines = [r"\begin{table}[ht]", r"\centering"]
    if caption:
        text = caption if isinstance(caption, Tex) else latex_escape(caption)
        lines.append(rf"\caption{{{text}}}")
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
        writer = csv_writer(fh)
        writer.writerow(header)
        for row in rows:
            writer.writerow(["" if _missing(v) else v for v in row])


def _missing(v: Any) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def head_cell(data: dict[str, Any], head: str) -> str:
    """A head's name with its weights flags, e.g. ``resnet18 [RANDOM]`` (as in report.md, without markdown);
    the bare name when the data records no flags."""
    if not (data["heads"].get(head) or {}).get("weights"):
        return head
    return tag(data, head).replace("`", "")


def warnings_caption(data: dict[str, Any]) -> str:
    """The report's warnings, for every caption: LEAKY protocol, RANDOM-weight heads, heads on weights from a
    FILE (empty when none)."""
    parts = []
    if data["protocol"].get("leaky"):
        parts.append("LEAKY PROTOCOL (paper): copies balanced before the split, scores optimistic by construction.")
    random = random_heads(data)
    if random:
        parts.append(f"RANDOM-WEIGHT FEATURES in {', '.join(random)}: not comparable with ImageNet features.")
    files = file_heads(data)
    if files:
        parts.append(f"WEIGHTS FROM A FILE in {', '.join(files)}: not ImageNet weights.")
    return " ".join(parts)


def _caption(data: dict[str, Any], text: str) -> str:
    warn = warnings_caption(data)
    return f"{warn} {text}" if warn else text


def _num(x: Any, digits: int = 4, sign: bool = False) -> str:
    if _missing(x):
        return "--"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"


TEX_CLIP_MARK = r"$^\dagger$"
TEX_CLIP_NOTE = Tex(r" $^\dagger$: " + latex_escape(CLIP_NOTE.removeprefix("† marks ")) + ".")


def tex_interval(lo: Any, hi: Any, metric: str, difference: bool = False) -> Tex:
    """``[lo, hi]`` clipped and marked exactly as in report.md (``cells.interval``), the mark as ``$^\\dagger$``."""
    text = interval(lo, hi, metric, difference, mark=TEX_CLIP_MARK)
    return Tex("[--, --]" if text == "n/a" else text)


def _with_clip_note(caption: str) -> Tex:
    """An escaped caption followed by the legend of the clip mark."""
    return Tex(latex_escape(caption) + TEX_CLIP_NOTE)


def _pval(p: Any) -> str:
    return "--" if _missing(p) else (f"{p:.3g}" if p >= 1e-3 else "<0.001")


def _uncertainty_table(data: dict[str, Any]) -> str:
    heads = {h: i for h, i in data["heads"].items() if i.get("uncertainty")}
    if not heads:
        return ""
    header = ["head", "metric", "per-fold mean $\\pm$ sd", "corrected t 95% CI", "pooled OOF", "bootstrap 95% CI"]
    rows = []
    unit = "images"
    for head, info in heads.items():
        for m in METRICS:
            u = info["uncertainty"][m]
            ci, pooled = u["corrected_t"], u["pooled"]
            unit = pooled["bootstrap"].get("resampled", unit)
            rows.append([head_cell(data, head), LABELS[m], tex_pm(u["per_fold"]["mean"], u["per_fold"]["sd"]),
                         tex_interval(ci.get("lo"), ci.get("hi"), m), _num(pooled.get("mean")),
                         tex_interval(pooled["bootstrap"].get("lo"), pooled["bootstrap"].get("hi"), m)])
    caption = _caption(data, "Uncertainty. Per-fold mean and sd over folds x repeats; corrected t: Nadeau-Bengio "
                       "corrected resampled t interval; pooled OOF: the metric on all out-of-fold predictions of a "
                       f"repeat, averaged over repeats; bootstrap: percentile interval resampling {unit}, holding "
                       "the fitted models fixed (it excludes training variability, so it is usually narrower "
                       "than the corrected t)")
    header[2] = Tex("per-fold mean $\\pm$ sd")
    return latex_table(header, rows, _with_clip_note(caption), "tab:uncertainty")


def _fusion_table(data: dict[str, Any]) -> str:
    comp = data.get("comparisons") or {}
    rows_in = comp.get("fusion_table") or []
    if not rows_in:
        return ""
    header = ["fusion head", "against", "d AUC per-fold [95% CI]", "p", "p (Holm)", "d AUC pooled [95% CI]", "p",
              "p (Holm)", "pooled test"]
    rows = []
    for r in rows_in:
        t, b = r["per_fold"], r["pooled"]
        rows.append([head_cell(data, r["head"]), f"{head_cell(data, r['against'])} ({r['role']})",
                     Tex(f"{_num(t.get('diff'), sign=True)} "
                         f"{tex_interval(t.get('lo'), t.get('hi'), 'roc_auc', difference=True)}"),
                     _pval(t.get("p")), _pval(t.get("p_holm")),
                     Tex(f"{_num(b.get('diff', b.get('estimate')), sign=True)} "
                         f"{tex_interval(b.get('lo'), b.get('hi'), 'roc_auc', difference=True)}"),
                     _pval(b.get("p")), _pval(b.get("p_holm")), b.get("method", "")])
    caption = _caption(data, "Does fusion help? Difference in ROC AUC (fusion - reference) on the same splits: "
                       "per-fold with the corrected resampled paired t-test; pooled OOF with the paired test named; "
                       f"Holm-adjusted over the rows. Best single-backbone head: {comp.get('best_single')}")
    return latex_table(header, rows, _with_clip_note(caption), "tab:fusion")


def _calibration_table(data: dict[str, Any]) -> str:
    heads = {h: i["calibration"] for h, i in data["heads"].items() if i.get("calibration")}
    if not heads:
        return ""
    first = next(iter(heads.values()))
    how = first.get("calibrated")
    rows = [[head_cell(data, h), _num(c.get("brier")), _num(c.get("ece"))] for h, c in heads.items()]
    caption = _caption(data, f"Calibration of the pooled out-of-fold P({data['positive']}): Brier score and ECE "
                       f"({first.get('n_bins', 10)} equal-width bins), averaged over repeats; "
                       + (f"calibrated post hoc ({how}) inside each training fold" if how else "no post-hoc "
                          "calibration"))
    return latex_table(["head", "Brier", "ECE"], rows, caption, "tab:calibration")


RESULTS_COLUMNS = ["mean", "std", "corrected_t_ci95_low", "corrected_t_ci95_high", "pooled_oof",
                   "bootstrap_ci95_low", "bootstrap_ci95_high", "bootstrap_unit", "n_folds", "n_repeats"]


def _results_csv_row(info: dict[str, Any], metric: str) -> list[Any]:
    summary = info["summary"][metric]
    u = (info.get("uncertainty") or {}).get(metric) or {}
    ci = u.get("corrected_t") or {}
    pooled = u.get("pooled") or {}
    boot = pooled.get("bootstrap") or {}
    return [summary.get("mean"), summary.get("std"), ci.get("lo"), ci.get("hi"), pooled.get("mean"), boot.get("lo"),
            boot.get("hi"), boot.get("resampled", boot.get("unit")), summary.get("n_folds"), summary.get("n_repeats")]


def write_tables(data: dict[str, Any], out: Path) -> list[str]:
    """Write ``report.tex`` and the CSV tables of a run's JSON data into ``out``; return their names."""
    heads = data["heads"]
    folds, repeats = data["protocol"].get("n_folds", "?"), data["protocol"].get("repeats", 1)
    unit = f"{folds} folds" + (f" x {repeats} repeats" if repeats and repeats > 1 else "")
    header = ["head", *[LABELS[m] for m in METRICS]]
    rows = [[head_cell(data, h), *[tex_pm(i["summary"][m]["mean"], i["summary"][m]["std"]) for m in METRICS]]
            for h, i in heads.items()]
    caption = _caption(data, f"Results, per-fold mean and standard deviation over {unit}; protocol "
                       f"{data['protocol'].get('name', '')}; decision rule {rule_summary(data, quote='')}; calibration "
                       f"{calibration_text(data)}")
    tex = latex_table(header, rows, caption, "tab:results")
    conf_header = ["head", "TN", "FP", "FN", "TP"]
    conf_rows = [[h, *[int(x) for row in i["confusion_total"] for x in row]] for h, i in heads.items()]
    tex_conf_rows = [[head_cell(data, h), *r[1:]] for h, r in zip(heads, conf_rows, strict=True)]
    tex += "\n" + latex_table(conf_header, tex_conf_rows,
                              _caption(data, "Confusion counts summed over folds (and repeats)"), "tab:confusion")
    for extra in (_uncertainty_table(data), _fusion_table(data), _calibration_table(data)):
        if extra:
            tex += "\n" + extra
    (out / TEX_FILE).write_text(tex)
    write_csv(out / RESULTS_CSV, ["head", "metric", *RESULTS_COLUMNS],
              [[h, m, *_results_csv_row(i, m)] for h, i in heads.items() for m in METRICS])
    write_csv(out / CONFUSION_CSV, conf_header, conf_rows)
    return [TEX_FILE, RESULTS_CSV, CONFUSION_CSV]
