"""Statistics a reviewer accepts: corrected CV intervals, subject bootstrap, paired tests, calibration.

Every function takes plain numpy arrays, so it can be fed from a ``CVResult`` (``oof[head]``, ``test_fold``,
``rows["label"]``, ``rows["group"]``, ``FoldResult.metrics``/``n_train``/``n_test``) or from anything else.
Conventions used throughout:

* ``y`` is 1 for the positive class and 0 otherwise (convert class indices with ``y = label == pos``);
* ``p`` is the predicted probability (or any score) of the positive class;
* a row is predicted positive when ``p >= threshold`` (default threshold 0.5);
* ``groups`` holds subject ids as strings; ``""`` means unknown, and such a row is a subject of its own.

The package's modules each hold one family: ``corrected_t``, ``bootstrap``, ``delong``, ``multiplicity``,
``pooled`` (metrics by name), ``calibration``, ``subjects``, ``thresholds``, ``multiclass`` (bootstrap of K-class
macro AUC and balanced accuracy), ``multiclass_exact`` (K-class exact intervals at the edges),
``proportions`` (exact intervals at the edges), ``edges`` (differences that
cannot be measured), ``recalibration`` (calibration slope, the ECE of a perfectly calibrated model);
``results`` and ``inputs`` serve them.

References are listed in ``docs/protocols.md`` (Statistics).
"""

from fusionfeat.stats.bootstrap import cluster_bootstrap, paired_cluster_bootstrap
from fusionfeat.stats.calibration import brier, expected_calibration_error, reliability_curve
from fusionfeat.stats.corrected_t import corrected_difference_t, corrected_paired_t, corrected_resampled_t
from fusionfeat.stats.delong import delong_auc, delong_test
from fusionfeat.stats.edges import EDGE_TEXT, unmeasurable
from fusionfeat.stats.multiclass import MULTICLASS_METRICS, multiclass_bootstrap, paired_multiclass_bootstrap
from fusionfeat.stats.multiclass_exact import MULTICLASS_EXACT, exact_multiclass, per_class_exact
from fusionfeat.stats.multiplicity import holm
from fusionfeat.stats.pooled import PAPER_F1_NOTE, THRESHOLDED, f1_from, pooled_metric, roc_auc
from fusionfeat.stats.proportions import (
    EXACT_METRICS,
    TINY,
    Counts,
    ExactInterval,
    at_edge,
    clopper_pearson,
    counts_of,
    degenerate,
    exact_interval,
    wilson,
)
from fusionfeat.stats.recalibration import Recalibration, ece_if_calibrated, recalibration, recalibration_bootstrap
from fusionfeat.stats.results import BootstrapResult, DelongResult, Interval, Metric, PairedTest
from fusionfeat.stats.subjects import AGGREGATIONS, SubjectScores, aggregate_by_subject
from fusionfeat.stats.thresholds import rates_at, threshold_for

__all__ = [
    "AGGREGATIONS",
    "BootstrapResult",
    "Counts",
    "DelongResult",
    "EDGE_TEXT",
    "EXACT_METRICS",
    "ExactInterval",
    "Interval",
    "MULTICLASS_EXACT",
    "MULTICLASS_METRICS",
    "Metric",
    "PAPER_F1_NOTE",
    "PairedTest",
    "Recalibration",
    "SubjectScores",
    "THRESHOLDED",
    "TINY",
    "aggregate_by_subject",
    "at_edge",
    "brier",
    "clopper_pearson",
    "cluster_bootstrap",
    "counts_of",
    "corrected_difference_t",
    "corrected_paired_t",
    "corrected_resampled_t",
    "degenerate",
    "delong_auc",
    "delong_test",
    "ece_if_calibrated",
    "exact_interval",
    "exact_multiclass",
    "expected_calibration_error",
    "f1_from",
    "holm",
    "per_class_exact",
    "multiclass_bootstrap",
    "paired_cluster_bootstrap",
    "paired_multiclass_bootstrap",
    "pooled_metric",
    "rates_at",
    "recalibration",
    "recalibration_bootstrap",
    "reliability_curve",
    "roc_auc",
    "threshold_for",
    "unmeasurable",
    "wilson",
]
