"""The SVM head: an RBF SVC (a Nystroem map + LinearSVC past ``max_exact_rows`` training rows) under a
class-weighted Platt sigmoid fitted on grouped inner folds.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.calibration import CalibratedClassifierCV
from sklearn.exceptions import ConvergenceWarning
from sklearn.kernel_approximation import Nystroem
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC
from sklearn.utils.validation import check_is_fitted, validate_data

from fusionfeat.errors import FusionfeatError
from fusionfeat.heads.params import weighted_fit_data, whole_number
from fusionfeat.protocols import inner_splits


class WeightedPlattSVC(ClassifierMixin, BaseEstimator):
    """RBF SVC whose Platt sigmoid is fitted under the same class weights as the SVC.

    ``class_weight`` ("balanced" or a dict) becomes per-row sample weights given to the SVC *and* to the
    sigmoid (``CalibratedClassifierCV(..., method="sigmoid", cv=cv, ensemble=False)`` routes them to both),
    so the probabilities keep the weighting instead of pulling back towards the majority class. The sigmoid
    is monotone: ``predict_proba[:, 1]`` ranks as the SVC's decision values.

    An exact kernel SVC costs about O(N²) in the training rows (≈ 27 s at 4,000 rows of 1024 features, one
    thread, and five sigmoid fits more), so past ``max_exact_rows`` training rows (``None``: always exact)
    the RBF kernel is approximated: a ``Nystroem`` map (``n_components`` landmarks, the gamma the exact SVC
    would use) fitted on the training rows, then a ``LinearSVC`` with the same ``C``, class weights and
    sigmoid folds.

    Fitted attributes: ``calibrated_``, ``approximation_`` (the fitted ``Nystroem``; ``None`` when exact),
    ``kernel_`` (``"rbf"`` or ``"rbf-nystroem(K)"``), ``classes_``, ``n_features_in_``.
    """

    def __init__(
        self,
        C: float = 1.0,
        gamma: str | float = "scale",
        class_weight: str | dict | None = None,
        cv: int = 5,
        random_state: int | None = None,
        max_exact_rows: int | None = 5000,
        n_components: int = 1000,
    ):
        self.C = C
        self.gamma = gamma
        self.class_weight = class_weight
        self.cv = cv
        self.random_state = random_state
        self.max_exact_rows = max_exact_rows
        self.n_components = n_components

    def fit(self, X: Any, y: Any, groups: Any = None) -> WeightedPlattSVC:
        """Fit SVC and sigmoid with the class weights as sample weights; returns ``self``.

        Without ``groups`` the sigmoid's inner folds are scikit-learn's ``cv``-fold stratified split. With
        ``groups`` (subject, else source-image ids; ``""`` a row of its own) they are grouped
        (``protocols.inner_splits``: StratifiedGroupKFold, shuffled by ``random_state``), so neither a
        subject's other cells nor a rotated copy of a row score it for the sigmoid."""
        max_exact = whole_number("the SVM's max_exact_rows", self.max_exact_rows, minimum=0, optional=True)
        n_components = whole_number("the SVM's n_components", self.n_components, minimum=1)
        X, y, weights = weighted_fit_data(self, X, y, (np.float64, np.float32))
        cv: Any = self._ungrouped_cv(y)
        if groups is not None:
            cv = self._grouped_splits(y, groups, cv)
        if max_exact is None or X.shape[0] <= max_exact:
            svc = SVC(kernel="rbf", C=self.C, gamma=self.gamma, random_state=self.random_state)
            calibrated = CalibratedClassifierCV(svc, method="sigmoid", cv=cv, ensemble=False)
            self.calibrated_ = calibrated.fit(X, y, sample_weight=weights)
            self.approximation_, self.kernel_ = None, "rbf"
            return self
        seed = 0 if self.random_state is None else self.random_state
        k = min(n_components, X.shape[0])
        self.approximation_ = Nystroem(kernel="rbf", gamma=rbf_gamma(X, self.gamma), n_components=k,
                                       random_state=seed).fit(X)
        self.kernel_ = f"rbf-nystroem({k})"
        linear = LinearSVC(C=self.C, dual="auto", max_iter=10000, random_state=seed)
        calibrated = CalibratedClassifierCV(linear, method="sigmoid", cv=cv, ensemble=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            self.calibrated_ = calibrated.fit(self.approximation_.transform(X), y, sample_weight=weights)
        _rewarn(caught)
        return self

    def _features(self, X: Any) -> np.ndarray:
        """Validated ``X``, through the Nystroem map when the approximation was fitted."""
        check_is_fitted(self)
        X = validate_data(self, X, dtype=(np.float64, np.float32), reset=False)
        approximation = getattr(self, "approximation_", None)  # absent in bundles saved before it existed
        return X if approximation is None else approximation.transform(X)

    def _ungrouped_cv(self, y: np.ndarray) -> int:
        """``cv`` folds, or fewer when the rarer class has fewer training rows (a tiny fold); refused below 2."""
        smallest = int(np.bincount(np.unique(y, return_inverse=True)[1]).min())
        if smallest < 2:
            raise FusionfeatError(f"the SVM's Platt sigmoid needs at least 2 training images of each class; a "
                                  f"training fold has {smallest}: use fewer folds or more images")
        return min(int(self.cv), smallest)

    def _grouped_splits(self, y: np.ndarray, groups: Any, fallback: int) -> Any:
        """Grouped inner folds for the sigmoid: at most as many as the rarer class has groups, and every
        training part holding every class; else (too few groups) scikit-learn's ``cv`` as without groups."""
        g = np.asarray(groups).astype(str).reshape(-1)
        if len(g) != len(y):
            raise FusionfeatError(f"groups has {len(g)} entries for {len(y)} training rows")
        units = np.where(g == "", np.char.add("\0row-", np.arange(len(g)).astype(str)), g)
        per_class = [len(np.unique(units[y == c])) for c in np.unique(y)]
        n_splits = min(int(self.cv), *per_class)
        if n_splits < 2:
            return fallback
        seed = 0 if self.random_state is None else self.random_state
        try:
            splits = inner_splits(y, g, n_splits, seed)
        except FusionfeatError:
            return fallback
        if any(len(np.unique(y[train])) < len(per_class) for train, _ in splits):
            return fallback
        return splits

    def decision_function(self, X: Any) -> np.ndarray:
        """The SVC's (or, approximated, the LinearSVC's) decision values."""
        features = self._features(X)  # checks it is fitted first
        return self.calibrated_.calibrated_classifiers_[0].estimator.decision_function(features)

    def predict_proba(self, X: Any) -> np.ndarray:
        """Weighted-Platt class probabilities (N, K), columns in ``classes_`` order (K > 2: one-vs-rest sigmoids
        of the decision values, renormalised to sum to 1)."""
        features = self._features(X)  # checks it is fitted first
        return self.calibrated_.predict_proba(features)

    def predict(self, X: Any) -> np.ndarray:
        """The more probable class."""
        proba = self.predict_proba(X)  # checks it is fitted first
        return self.classes_[proba.argmax(axis=1)]


def rbf_gamma(X: np.ndarray, gamma: str | float) -> float:
    """The RBF gamma ``SVC(gamma=gamma)`` would use on ``X``: ``"scale"`` is 1 / (n_features · X.var()) over
    ``X`` as float64 (as SVC converts it), 1 when that variance is 0; ``"auto"`` is 1 / n_features."""
    if gamma == "scale":
        var = float(np.asarray(X, dtype=np.float64).var())
        return 1.0 / (X.shape[1] * var) if var != 0 else 1.0
    if gamma == "auto":
        return 1.0 / X.shape[1]
    return float(gamma)


def _rewarn(caught: list[warnings.WarningMessage]) -> None:
    """Re-emit recorded warnings, the LinearSVC's convergence warnings (one per sigmoid fold) as one."""
    converge = [w for w in caught if issubclass(w.category, ConvergenceWarning)]
    for w in caught:
        if not issubclass(w.category, ConvergenceWarning):
            warnings.warn(w.message, w.category, stacklevel=3)
    if converge:
        warnings.warn(f"the approximate SVM's LinearSVC did not converge in {len(converge)} of its fits "
                      f"({str(converge[0].message).splitlines()[0]})", ConvergenceWarning, stacklevel=3)


def make_svm(class_weight: str | None = None, random_state: int | None = None) -> Pipeline:
    """StandardScaler → RBF SVC with class-weighted Platt probabilities (``WeightedPlattSVC``: sigmoid,
    5-fold, one final SVC, the class weights given to both SVC and sigmoid).

    The calibration is monotone, so ``predict_proba[:, 1]`` ranks exactly as the SVC's decision values
    (AUC is unchanged). The pipeline is deterministic; ``random_state`` is passed to SVC for uniformity.
    Past 5000 training rows the kernel is approximated (``WeightedPlattSVC.max_exact_rows``; ``None``: exact).
    """
    return make_pipeline(StandardScaler(), WeightedPlattSVC(class_weight=class_weight, random_state=random_state))
