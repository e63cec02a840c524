"""What a reader must know before comparing a run with another or with the paper: the data it was on, its
decision rule and its calibration, in words (read from ``metrics.json``)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from fusionfeat.report.cells import pm

CNMC_LAYOUT = "cnmc"
_CNMC_NAME = re.compile(r"c[-_ ]?nmc", re.IGNORECASE)
PAPER_DATA = "C-NMC 2019 training data (7,272 ALL and 3,389 HEM cell images)"
PAPER_IMAGES = 10_661
ARGMAX = "argmax (P ≥ 0.5)"


def is_cnmc(data: dict[str, Any]) -> bool:
    """Whether the run's store was extracted from C-NMC 2019: its recorded layout is ``cnmc``, or a manifest
    CSV under a data root named like C-NMC. Unknown provenance is not C-NMC."""
    prov = data.get("provenance") or {}
    layout = str(prov.get("layout") or "")
    if layout == CNMC_LAYOUT:
        return True
    return layout == "csv" and bool(_CNMC_NAME.search(str(prov.get("data_root") or "")))


def dataset_text(data: dict[str, Any]) -> str:
    """The data of a run in a few words, e.g. ``C-NMC layout, `data` (168 images)``."""
    prov = data.get("provenance") or {}
    layout = str(prov.get("layout") or "")
    root = str(prov.get("data_root") or "")
    kind = "C-NMC layout" if layout == CNMC_LAYOUT else (f"{layout} layout" if layout else "unknown layout")
    n = (data.get("protocol") or {}).get("n_samples", prov.get("n_samples"))
    where = f", `{Path(root).name or root}`" if root else ""
    return f"{kind}{where}" + (f" ({n} images)" if n is not None else "")


def table1_note(data: dict[str, Any]) -> str | None:
    """The warning beside the paper's Table 1 when the run is not on C-NMC (None when it is)."""
    if is_cnmc(data):
        return None
    prov = data.get("provenance") or {}
    what = (f"data from `{prov.get('data_root')}` (layout {prov.get('layout') or 'unknown'})"
            if prov.get("data_root") else "data whose origin the store does not record")
    return (f"**Different data.** The paper's rows are on the {PAPER_DATA}; this run is on {what}. They are "
            "printed for reference only: no difference between the two says anything about the models.")


def count_note(data: dict[str, Any]) -> str | None:
    """On C-NMC-layout data, a word when the store does not hold the paper's 10,661 training images."""
    if not is_cnmc(data):
        return None
    protocol = data.get("protocol") or {}
    n = protocol.get("n_samples")
    total = None if n is None else int(n) + int(protocol.get("n_skipped") or 0)
    if total is None or total == PAPER_IMAGES:
        return None
    return (f"The paper used all {PAPER_IMAGES:,} C-NMC 2019 training images; this store holds {total:,} images "
            "in the C-NMC layout (a subset, or other data laid out like C-NMC), so its numbers need not match.")


def decision_rule(data: dict[str, Any], head: str | None = None) -> str:
    """A head's decision rule in a table cell: ``argmax (P ≥ 0.5)`` or ``sens ≥ 0.95 at threshold 0.31 ± 0.04``
    (the operating point's per-fold threshold, mean ± sd)."""
    target = (data.get("options") or {}).get("operating_point")
    if len(data.get("classes") or ()) > 2:
        return "argmax (the most probable class)"
    if not target:
        return ARGMAX
    rule = " ".join(f"{k} ≥ {v}" for k, v in _target(data, head, str(target)).items())
    op = ((data["heads"].get(head) or {}).get("operating_point") or {}) if head else {}
    t = op.get("threshold")
    return f"{rule} at threshold {pm(t['mean'], t.get('sd'), 3)}" if t else rule


def rule_summary(data: dict[str, Any], quote: str = "`") -> str:
    """The run's decision rule in a sentence: argmax, or the operating point with each head's threshold."""
    if not (data.get("options") or {}).get("operating_point"):
        return decision_rule(data)
    per_head = ", ".join(f"{quote}{h}{quote} {decision_rule(data, h).rsplit(' at ', 1)[-1]}" for h in data["heads"])
    return f"operating point {decision_rule(data)}, chosen inside each training fold ({per_head})"


def _target(data: dict[str, Any], head: str | None, text: str) -> dict[str, Any]:
    op = ((data["heads"].get(head) or {}).get("operating_point") or {}) if head else {}
    if op.get("target"):
        return dict(op["target"])
    key, _, value = text.partition("=")
    return {key.strip(): value.strip()}


def calibration_text(data: dict[str, Any]) -> str:
    """``none`` or the post-hoc calibration (``sigmoid, fitted inside each training fold``)."""
    how = (data.get("options") or {}).get("calibrate")
    return f"{how}, fitted inside each training fold" if how else "none"


def skipped_at_extraction(data: dict[str, Any]) -> int:
    """Images extraction skipped (unreadable): the protocol's unusable rows less those a ``--classes`` choice left
    out, which are usable images of other classes, not failures."""
    protocol = data.get("protocol") or {}
    sel = (data.get("provenance") or {}).get("class_selection") or {}
    return int(protocol.get("n_skipped") or 0) - int(sel.get("left_out") or 0)


def class_selection_line(data: dict[str, Any]) -> str | None:
    """The run's ``--classes`` choice, when the store was viewed through one: which classes, and how many images
    of other classes were left out."""
    sel = data["provenance"].get("class_selection")
    if not sel:
        return None
    mapping = sel.get("mapping") or {}
    merged = {}
    for old, new in mapping.items():
        if new is not None:
            merged.setdefault(new, []).append(old)
    order = [c for c in sel.get("classes", []) if c in merged] + [c for c in merged if c not in sel.get("classes", [])]
    parts = [f"{new} = {' + '.join(merged[new])}" if merged[new] != [new] else new for new in order]
    left = int(sel.get("left_out", 0))
    chosen = ", ".join(parts) or ", ".join(sel.get("classes", []))
    return (f"class selection `--classes {sel.get('spec', '')}`: {chosen}; {left} image{'s' if left != 1 else ''} "
            "of other classes left out")
