"""Holm across the whole family a comparison table shows (all rows × both tests), not per column."""

from __future__ import annotations

import math

import pytest

from fusionfeat.evaluation.evidence import holm_family


def _rows(per_fold, pooled, edges=()):
    rows = [{"per_fold": {"p": a}, "pooled": {"p": b}} for a, b in zip(per_fold, pooled, strict=True)]
    for i, key in edges:
        rows[i][key]["edge"] = "ceiling"
    return rows


def test_holm_over_every_p_of_the_table_by_hand():
    rows = _rows([0.01, 0.04, 0.30], [0.002, 0.03, 0.02])
    holm_family(rows)
    # by hand: six p-values sorted 0.002, 0.01, 0.02, 0.03, 0.04, 0.30, times 6, 5, 4, 3, 2, 1, running max
    expected = {0.002: 0.012, 0.01: 0.05, 0.02: 0.08, 0.03: 0.09, 0.04: 0.09, 0.30: 0.30}
    for r in rows:
        for key in ("per_fold", "pooled"):
            assert r[key]["p_holm_family"] == pytest.approx(expected[r[key]["p"]])
    # per column it would have been 0.03 for the smallest per-fold p (3 × 0.01): the family is stricter
    assert rows[0]["per_fold"]["p_holm_family"] > 3 * 0.01


def test_unmeasurable_tests_are_left_out_of_the_family():
    rows = _rows([0.01, 1.0], [0.02, 1.0], edges=[(1, "per_fold"), (1, "pooled")])
    holm_family(rows)
    assert rows[0]["per_fold"]["p_holm_family"] == pytest.approx(0.02)  # m = 2, not 4
    assert rows[0]["pooled"]["p_holm_family"] == pytest.approx(0.02)
    assert math.isnan(rows[1]["per_fold"]["p_holm_family"]) and math.isnan(rows[1]["pooled"]["p_holm_family"])


def test_against_statsmodels_multipletests_when_installed():
    multitest = pytest.importorskip("statsmodels.stats.multitest")
    per_fold, pooled = [0.2, 0.004, 0.03, 0.5], [0.01, 0.0001, 0.049, 0.7]
    rows = _rows(per_fold, pooled)
    holm_family(rows)
    flat = [p for pair in zip(per_fold, pooled, strict=True) for p in pair]
    expected = multitest.multipletests(flat, method="holm")[1]
    got = [r[key]["p_holm_family"] for r in rows for key in ("per_fold", "pooled")]
    assert got == pytest.approx(list(expected))
