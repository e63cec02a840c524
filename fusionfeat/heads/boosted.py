"""The XGBoost head: gradient-boosted trees whose ``class_weight`` becomes sample weights."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted, validate_data

from fusionfeat.heads.params import finite_in, weighted_fit_data, whole_number


class XGBoostClassifier(ClassifierMixin, BaseEstimator):
    """Gradient-boosted trees (XGBoost ``hist``); ``class_weight`` ("balanced" or a dict) becomes sample weights.

    Fitted attributes: ``model_`` (the ``xgboost.XGBClassifier``), ``classes_``, ``n_features_in_``.
    """

    def __init__(
        self,
        n_estimators: int = 300,
        max_depth: int = 4,
        learning_rate: float = 0.1,
        subsample: float = 0.8,
        colsample_bytree: float = 0.5,
        class_weight: str | dict | None = None,
        random_state: int | np.random.RandomState | None = None,
        n_jobs: int | None = None,
    ):
        self.n_estimators = n_estimators
        self.max_depth = max_depth
        self.learning_rate = learning_rate
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.class_weight = class_weight
        self.random_state = random_state
        self.n_jobs = n_jobs

    def fit(self, X: Any, y: Any) -> XGBoostClassifier:
        """Fit the trees; returns ``self``."""
        from xgboost import XGBClassifier

        whole_number("xgboost.n_estimators", self.n_estimators, minimum=1)
        whole_number("xgboost.max_depth", self.max_depth, minimum=0)
        for name, high in (("learning_rate", math.inf), ("subsample", 1.0), ("colsample_bytree", 1.0)):
            finite_in(f"xgboost.{name}", getattr(self, name), 0.0, high, low_open=True, high_open=False)
        X, y, weights = weighted_fit_data(self, X, y, (np.float32, np.float64))
        y_enc = np.unique(y, return_inverse=True)[1]
        if len(self.classes_) < 2:
            raise ValueError(f"training needs at least 2 classes; y has one class ({self.classes_[0]!r})")
        seed = int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))
        self.model_ = XGBClassifier(
            n_estimators=self.n_estimators,
            max_depth=self.max_depth,
            learning_rate=self.learning_rate,
            subsample=self.subsample,
            colsample_bytree=self.colsample_bytree,
            tree_method="hist",
            n_jobs=self.n_jobs if self.n_jobs is not None else torch.get_num_threads(),  # runtime.head_threads
            random_state=seed,
            verbosity=0,
        ).fit(X, y_enc, sample_weight=weights)
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities (N, K), columns in ``classes_`` order."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=(np.float32, np.float64), reset=False)
        return self.model_.predict_proba(X).astype(np.float64)

    def predict(self, X: Any) -> np.ndarray:
        """The most probable class per row."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(1)]
