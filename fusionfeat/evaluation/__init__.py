"""Evaluation: ``cv`` (the cross-validation loop over heads, and its ``CVResult``), ``row_layout`` (a split's
rows laid out in place in one shared X), ``metrics`` (per-fold metrics and their aggregation) and ``evidence``
(a run's statistics as plain JSON: intervals, paired comparisons, subjects); for more than two classes
``multiclass_metrics`` (K-class metrics per fold) and ``multiclass_evidence`` (their statistics).

Import from the modules; the package itself imports nothing.
"""
