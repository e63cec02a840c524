"""Cell probabilities aggregated per subject, for a subject-level diagnosis."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fusionfeat.errors import FusionfeatError
from fusionfeat.stats.inputs import binary_labels, checked_scores

AGGREGATIONS: tuple[str, ...] = ("mean", "median", "fraction")


@dataclass(frozen=True)
class SubjectScores:
    """One row per subject, in order of first appearance: id, 0/1 label, aggregated score, image count.

    ``n_unassigned`` images had no subject id and were left out.
    """

    subject: np.ndarray
    label: np.ndarray
    score: np.ndarray
    n_images: np.ndarray
    how: str
    n_unassigned: int


def aggregate_by_subject(
    p: Any, groups: Any, y: Any, how: str = "mean", threshold: float = 0.5
) -> SubjectScores:
    """Aggregate cell probabilities per subject for a subject-level diagnosis.

    ``how``: ``"mean"`` (mean probability, the default), ``"median"``, or ``"fraction"`` (fraction of the
    subject's cells with ``p >= threshold``). Images without a subject id (``""``) are left out and counted.
    A subject whose cells carry different labels cannot be diagnosed and is refused.
    """
    if how not in AGGREGATIONS:
        raise FusionfeatError(f"unknown subject aggregation {how!r}; choose one of {', '.join(AGGREGATIONS)}")
    y = binary_labels(y)
    p = checked_scores(p, len(y))
    g = np.asarray(groups).astype(str).reshape(-1)
    if len(g) != len(y):
        raise FusionfeatError(f"groups has {len(g)} entries for {len(y)} rows")
    known = g != ""
    if not known.any():
        raise FusionfeatError("subject-level diagnosis needs subject ids, and no image has one")
    g, p, y = g[known], p[known], y[known]
    subjects, first, inverse = np.unique(g, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    labels, scores, counts = [], [], []
    for s in order:
        rows = inverse == s
        ys = np.unique(y[rows])
        if len(ys) > 1:
            raise FusionfeatError(
                f"subject {str(subjects[s])!r} has cells of both classes; a subject-level diagnosis needs one "
                "label per subject: fix the group column of the manifest, or skip the subject-level analysis"
            )
        ps = p[rows]
        score = {"mean": np.mean, "median": np.median}.get(how, lambda v: np.mean(v >= threshold))(ps)
        labels.append(int(ys[0]))
        scores.append(float(score))
        counts.append(int(rows.sum()))
    return SubjectScores(
        subject=subjects[order],
        label=np.asarray(labels, dtype=np.int64),
        score=np.asarray(scores, dtype=float),
        n_images=np.asarray(counts, dtype=np.int64),
        how=how,
        n_unassigned=int((~known).sum()),
    )
