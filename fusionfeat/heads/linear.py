"""The logistic-regression head: standardised features, L2-regularised logistic regression."""

from __future__ import annotations

from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler


def make_logreg(class_weight: str | None = None, random_state: int | None = None, C: float = 1.0) -> Pipeline:
    """StandardScaler → L2 logistic regression (lbfgs, up to 5000 iterations)."""
    return make_pipeline(
        StandardScaler(),
        LogisticRegression(C=C, class_weight=class_weight, random_state=random_state, max_iter=5000),
    )
