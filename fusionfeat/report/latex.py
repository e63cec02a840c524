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
from fusionfeat.report.cells import CLIP_NOTE, EXACT_NOTE, any_exact, interval
from fusionfeat.report.context import calibration_text, rule_summary
from fusionfeat.report.flags import file_heads, random_heads, tag
from fusionfeat.stats import EDGE_TEXT

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
    with open(path, "w", newline="", encoding="utf-8") as fh:
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


def _with_clip_note(caption: str, exact: bool = False) -> Tex:
    """An escaped caption followed by the legend of the clip mark (and, with ``exact``, of the exact mark)."""
    note = TEX_EXACT_NOTE if exact else ""
    return Tex(latex_escape(caption) + TEX_CLIP_NOTE + note)


TEX_EXACT_MARK = r"$^\ddagger$"
TEX_EXACT_NOTE = Tex(r" $^\ddagger$: " + latex_escape(EXACT_NOTE.removeprefix("‡ marks ")) + ".")


def tex_ci(bounds: dict[str, Any], metric: str, exact: dict[str, Any] | None) -> Tex:
    r"""An interval cell as ``tex_interval``, or the exact interval marked ``$^\ddagger$`` (with k/n)."""
    if not exact:
        return tex_interval(bounds.get("lo"), bounds.get("hi"), metric)
    k, n = exact.get("k", -1), exact.get("n", -1)
    counts = f" {k}/{n}" if k is not None and k >= 0 else ""
    return Tex(tex_interval(exact.get("lo"), exact.get("hi"), metric) + TEX_EXACT_MARK + counts)


def _edge(text: str, exact: dict[str, Any] | None) -> str:
    edge = (exact or {}).get("edge")
    return f"{text} (at the {edge})" if edge in ("ceiling", "floor") else text


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
            rows.append([head_cell(data, head), LABELS[m],
                         Tex(_edge(tex_pm(u["per_fold"]["mean"], u["per_fold"]["sd"]), ci.get("exact"))),
                         tex_ci(ci, m, ci.get("exact")), _edge(_num(pooled.get("mean")), pooled.get("exact")),
                         tex_ci(pooled["bootstrap"], m, pooled.get("exact"))])
    caption = _caption(data, "Uncertainty. Per-fold mean and sd over folds x repeats; corrected t: Nadeau-Bengio "
                       "corrected resampled t interval; pooled OOF: the metric on all out-of-fold predictions of a "
                       f"repeat, averaged over repeats; bootstrap: percentile interval resampling {unit}, holding "
                       "the fitted models fixed (it excludes training variability, so it is usually narrower "
                       "than the corrected t)")
    header[2] = Tex("per-fold mean $\\pm$ sd")
    return latex_table(header, rows, _with_clip_note(caption, any_exact(data)), "tab:uncertainty")


def _tex_test(test: dict[str, Any]) -> list[Any]:
    """A comparison's difference [CI], p and family-wise Holm p, or the words when it cannot be measured."""
    if test.get("edge"):
        return [EDGE_TEXT.get(test["edge"], test["edge"]), "--", "--"]
    diff = test.get("diff", test.get("estimate"))
    return [Tex(f"{_num(diff, sign=True)} {tex_interval(test.get('lo'), test.get('hi'), 'roc_auc', difference=True)}"),
            _pval(test.get("p")), _pval(test.get("p_holm_family", test.get("p_holm")))]


def _fusion_table(data: dict[str, Any]) -> str:
    comp = data.get("comparisons") or {}
    rows_in = comp.get("fusion_table") or []
    if not rows_in:
        return ""
    header = ["fusion head", "against", "d AUC per-fold [95% CI]", "p (corrected t, primary)", "p (Holm)",
              "d AUC pooled [95% CI], conditional", "p (conditional)", "p (Holm)", "pooled test"]
    rows = []
    for r in rows_in:
        t, b = r["per_fold"], r["pooled"]
        rows.append([head_cell(data, r["head"]), f"{head_cell(data, r['against'])} ({r['role']})",
                     *_tex_test(t), *_tex_test(b), b.get("method", "")])
    independent = "" if data["protocol"].get("subjects_known") else (
        " Subjects unknown: DeLong and the image bootstrap treat images as independent.")
    caption = _caption(data, "Does fusion help? Difference in ROC AUC (fusion - reference) on the same splits. "
                       "Primary test: the corrected resampled paired t over folds x repeats (Nadeau-Bengio; it "
                       "includes training variability). Pooled OOF columns: the paired test named, conditional on "
                       "the fitted models (test-image uncertainty only). Holm-adjusted over every p of the table "
                       "(all rows x both tests) as one family; differences at the ceiling cannot be measured and "
                       f"are left out. Best single-backbone head: {comp.get('best_single')}.{independent}")
    return latex_table(header, rows, _with_clip_note(caption), "tab:fusion")


def _calibration_table(data: dict[str, Any]) -> str:
    heads = {h: i["calibration"] for h, i in data["heads"].items() if i.get("calibration")}
    if not heads:
        return ""
    first = next(iter(heads.values()))
    how = first.get("calibrated")
    extended = "ece_if_calibrated" in first
    header = ["head", "Brier", "ECE"]
    rows = []
    for h, c in heads.items():
        row = [head_cell(data, h), _num(c.get("brier")), _num(c.get("ece"))]
        if extended:
            boot, ref = c.get("ece_bootstrap") or {}, c["ece_if_calibrated"]
            row += [Tex(f"[{_num(boot.get('lo'))}, {_num(boot.get('hi'))}]"), _num(ref.get("mean")),
                    *[_recal(c["recalibration"].get(k) or {}) for k in ("slope", "intercept")]]
        rows.append(row)
    if extended:
        header += ["ECE 95% CI", "ECE if calibrated", "slope [95% CI]", "intercept [95% CI]"]
    caption = _caption(data, f"Calibration of the pooled out-of-fold P({data['positive']}): Brier score and ECE "
                       f"({first.get('n_bins', 10)} equal-width bins), averaged over repeats; "
                       + (f"calibrated post hoc ({how}) inside each training fold" if how else "no post-hoc "
                          "calibration")
                       + ("; ECE bootstrap interval; the mean ECE of labels drawn from the predictions themselves "
                          "(a perfectly calibrated model); logistic recalibration slope and intercept with bootstrap "
                          "intervals (-- when the classes are separated)" if extended else ""))
    return latex_table(header, rows, caption, "tab:calibration")


def _recal(entry: dict[str, Any]) -> Tex:
    return Tex(f"{_num(entry.get('estimate'), 3)} [{_num(entry.get('lo'), 3)}, {_num(entry.get('hi'), 3)}]")


RESULTS_COLUMNS = ["mean", "std", "corrected_t_ci95_low", "corrected_t_ci95_high", "pooled_oof",
                   "bootstrap_ci95_low", "bootstrap_ci95_high", "bootstrap_unit", "n_folds", "n_repeats",
                   "exact_ci95_low", "exact_ci95_high", "exact_method", "edge"]


def _results_csv_row(info: dict[str, Any], metric: str) -> list[Any]:
    summary = info["summary"][metric]
    u = (info.get("uncertainty") or {}).get(metric) or {}
    ci = u.get("corrected_t") or {}
    pooled = u.get("pooled") or {}
    boot = pooled.get("bootstrap") or {}
    exact = pooled.get("exact") or ci.get("exact") or {}
    return [summary.get("mean"), summary.get("std"), ci.get("lo"), ci.get("hi"), pooled.get("mean"), boot.get("lo"),
            boot.get("hi"), boot.get("resampled", boot.get("unit")), summary.get("n_folds"), summary.get("n_repeats"),
            exact.get("lo"), exact.get("hi"), exact.get("method"), exact.get("edge")]


def write_tables(data: dict[str, Any], out: Path) -> list[str]:
    """Write ``report.tex`` and the CSV tables of a run's JSON data into ``out``; return their names."""
    heads = data["heads"]
    folds, repeats = data["protocol"].get("n_folds", "?"), data["protocol"].get("repeats", 1)
    unit = f"{folds} folds" + (f" x {repeats} repeats" if repeats and repeats > 1 else "")
    header = ["head", *[LABELS[m] for m in METRICS]]
    rows = [[head_cell(data, h), *[Tex(_edge(tex_pm(i["summary"][m]["mean"], i["summary"][m]["std"]),
                                             ((i.get("uncertainty") or {}).get(m) or {}).get("corrected_t", {})
                                             .get("exact"))) for m in METRICS]]
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
    (out / TEX_FILE).write_text(tex, encoding="utf-8")
    write_csv(out / RESULTS_CSV, ["head", "metric", *RESULTS_COLUMNS],
              [[h, m, *_results_csv_row(i, m)] for h, i in heads.items() for m in METRICS])
    write_csv(out / CONFUSION_CSV, conf_header, conf_rows)
    return [TEX_FILE, RESULTS_CSV, CONFUSION_CSV]
