"""Post-hoc calibration and operating points fitted on training rows only (inner CV of the training fold).

Both meta-estimators keep the scikit-learn contract (``clone`` works; parameters are stored untouched) and
see nothing but the rows given to ``fit``: out-of-fold scores of those rows come from an inner
cross-validation (``inner_oof_scores``), the calibrator or threshold is fitted on them, and the wrapped
head is then refitted on all the rows. Used inside an outer CV fold, the test fold is never touched.

* ``CalibratedHead(estimator, method="sigmoid"|"isotonic")``: Platt (1999) or isotonic (Zadrozny & Elkan
  2002) calibration of the head's decision values, through ``sklearn.calibration.CalibratedClassifierCV``;
* ``InnerOperatingPoint(estimator, sens=...|spec=...)``: ``predict`` at the threshold that reaches the
  target on the inner out-of-fold probabilities (``fusionfeat.stats.threshold_for``).

``fit(X, y, groups=None)``: with subject ids, the inner folds are grouped (``StratifiedGroupKFold``). Pass
one id per training row: the subject where known, else an id of the source image (e.g. ``f"image-{sample}"``)
so that rotated/mirrored copies of one image stay in one inner fold; ``""`` makes a row its own group.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, MetaEstimatorMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.frozen import FrozenEstimator
from sklearn.model_selection import cross_val_predict
from sklearn.utils.metaestimators import available_if
from sklearn.utils.validation import check_is_fitted

from fusionfeat import stats as fs
from fusionfeat.errors import FusionfeatError
from fusionfeat.protocols import inner_splits

METHODS: tuple[str, ...] = ("sigmoid", "isotonic")


def _response(estimator: Any) -> str:
    return "decision_function" if hasattr(estimator, "decision_function") else "predict_proba"


def inner_oof_scores(
    estimator: Any, X: Any, y: Any, groups: Any = None, cv: Any = 5, random_state: Any = 0,
    method: str = "predict_proba",
) -> np.ndarray:
    """Out-of-fold scores of each training row from clones of ``estimator`` fitted on inner folds.

    ``method`` is ``"predict_proba"`` (returns P(``classes[1]``); more than two classes: every column) or
    ``"decision_function"``. Every inner fit sees only the rows given here, so the result is safe to tune
    thresholds or calibrators on.
    """
    y = np.asarray(y)
    splits = inner_splits(y, groups, cv, random_state)
    params = group_params(estimator, groups) or None
    out = cross_val_predict(clone(estimator), X, y, cv=splits, method=method, params=params)
    return out[:, 1] if out.ndim == 2 and out.shape[1] == 2 else out


class ScoreColumn(ClassifierMixin, BaseEstimator):
    """A "classifier" whose decision value is its single input column (K > 2 classes: its K columns): lets
    scikit-learn's calibrators be fitted on precomputed out-of-fold scores."""

    def fit(self, X: Any, y: Any) -> ScoreColumn:
        """Remember the classes; there is nothing to learn."""
        self.classes_ = np.unique(y)
        return self

    def decision_function(self, X: Any) -> np.ndarray:
        """The first column of ``X`` (all of ``X`` for more than two classes)."""
        check_is_fitted(self)
        X = np.asarray(X, dtype=float)
        return X[:, 0] if len(self.classes_) == 2 else X

    def predict(self, X: Any) -> np.ndarray:
        """``classes_[1]`` where the score is positive (more classes: the highest score)."""
        scores = self.decision_function(X)
        return self.classes_[(scores > 0).astype(int) if scores.ndim == 1 else scores.argmax(axis=1)]


def fit_calibrator(scores: np.ndarray, y: np.ndarray, method: str = "sigmoid") -> CalibratedClassifierCV:
    """A fitted scikit-learn calibrator mapping a score column ``scores[:, None]`` to probabilities; for more than
    two classes ``scores`` is ``(N, K)`` and scikit-learn fits one calibrator per class, one-vs-rest, and
    divides by their sum."""
    if method not in METHODS:
        raise FusionfeatError(f"unknown calibration {method!r}; choose one of {', '.join(METHODS)}")
    frozen = FrozenEstimator(ScoreColumn().fit(None, y))
    scores = np.asarray(scores, dtype=float)
    return CalibratedClassifierCV(frozen, method=method).fit(scores[:, None] if scores.ndim == 1 else scores, y)


def _has_fusion_weights(self: Any) -> bool:
    return hasattr(self.estimator, "fusion_weights")


class CalibratedHead(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """A head whose probabilities are calibrated on inner out-of-fold scores of its own training rows.

    ``fit`` scores every training row with clones fitted on ``cv`` inner folds (the head's
    ``decision_function`` when it has one, else P(positive)), fits a ``method`` calibrator (``"sigmoid"``:
    Platt 1999; ``"isotonic"``: Zadrozny & Elkan 2002) on those scores, then refits the head on all rows.
    Equivalent to ``CalibratedClassifierCV(estimator, method, cv, ensemble=False)`` with shuffled (and,
    given ``groups``, subject-grouped) inner folds. Costs ``cv + 1`` fits of the head.

    Fitted attributes: ``estimator_`` (the head on all rows), ``calibrator_``, ``classes_``,
    ``inner_scores_`` (the head's uncalibrated out-of-fold scores of the training rows, for ``classes_[1]``;
    pick thresholds on these), ``inner_oof_`` (the same calibrated: in-sample for the calibrator, and coarse
    under isotonic calibration), ``history_`` when the head has one.
    """

    def __init__(self, estimator: Any, method: str = "sigmoid", cv: Any = 5, random_state: Any = 0):
        self.estimator = estimator
        self.method = method
        self.cv = cv
        self.random_state = random_state

    def fit(self, X: Any, y: Any, groups: Any = None) -> CalibratedHead:
        """Calibrate on inner folds of these rows, then refit the head on all of them."""
        if self.method not in METHODS:
            raise FusionfeatError(f"unknown calibration {self.method!r}; choose one of {', '.join(METHODS)}")
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) < 2:
            raise FusionfeatError(f"calibration needs 2 or more classes in the training rows; got {len(self.classes_)}")
        response = _response(self.estimator)
        scores = inner_oof_scores(self.estimator, X, y, groups, self.cv, self.random_state, method=response)
        self.inner_scores_ = np.asarray(scores, dtype=float)
        if len(self.classes_) == 2:
            y01 = (y == self.classes_[1]).astype(int)
            self.calibrator_ = fit_calibrator(scores, y01, self.method)
            self.inner_oof_ = self.calibrator_.predict_proba(scores[:, None])[:, 1]
        else:  # one-vs-rest per class on the head's K scores, then renormalised (scikit-learn's multi-class rule)
            codes = np.searchsorted(self.classes_, y)
            self.calibrator_ = fit_calibrator(self.inner_scores_, codes, self.method)
            self.inner_oof_ = self.calibrator_.predict_proba(self.inner_scores_)
        self.estimator_ = fit_estimator(clone(self.estimator), X, y, groups)
        if hasattr(self.estimator_, "history_"):
            self.history_ = self.estimator_.history_
        return self

    def raw_scores(self, X: Any) -> np.ndarray:
        """The refitted head's uncalibrated scores for ``classes_[1]`` (the scale of ``inner_scores_``; more than
        two classes: ``(N, K)``)."""
        check_is_fitted(self)
        out = np.asarray(getattr(self.estimator_, _response(self.estimator_))(X), dtype=float)
        return out[:, 1] if out.ndim == 2 and len(self.classes_) == 2 else out

    def calibrate(self, scores: Any) -> np.ndarray:
        """Calibrated P(``classes_[1]``) of uncalibrated scores (more than two classes: ``(N, K)`` of ``(N, K)``)."""
        check_is_fitted(self)
        if len(self.classes_) > 2:
            return self.calibrator_.predict_proba(np.asarray(scores, dtype=float))
        return self.calibrator_.predict_proba(np.asarray(scores, dtype=float).reshape(-1, 1))[:, 1]

    def predict_proba(self, X: Any) -> np.ndarray:
        """Calibrated class probabilities (N, K), columns in ``classes_`` order."""
        p = self.calibrate(self.raw_scores(X))
        return p if p.ndim == 2 else np.column_stack([1 - p, p])

    def predict(self, X: Any) -> np.ndarray:
        """The more probable class after calibration."""
        return self.classes_[self.predict_proba(X).argmax(axis=1)]

    @available_if(_has_fusion_weights)
    def fusion_weights(self, X: Any) -> np.ndarray:
        """The refitted head's fusion weights (attention heads only)."""
        check_is_fitted(self)
        return self.estimator_.fusion_weights(X)


class InnerOperatingPoint(MetaEstimatorMixin, ClassifierMixin, BaseEstimator):
    """A head that predicts at the threshold reaching a target sensitivity (or specificity) on inner
    out-of-fold probabilities of its training rows; ``predict_proba`` is the head's, unchanged.

    ``positive`` is the class label whose sensitivity is targeted (default: ``classes_[1]``). When the head
    is a ``CalibratedHead``, its uncalibrated inner out-of-fold scores (``inner_scores_``) are used and no
    extra inner fits are made: the threshold is picked on that raw decision scale and applied there
    (calibrated inner probabilities are in-sample for the calibrator and, under isotonic calibration,
    tied in steps, which overshoots the target); ``threshold_`` is then that raw threshold mapped through
    the calibrator, for the record. Otherwise ``cv`` inner fits score the training rows first.

    Fitted attributes: ``estimator_``, ``classes_``, ``threshold_`` (on P(positive)), ``score_threshold_``
    (on the raw scale of a calibrated head, else None), ``inner_rates_`` (sensitivity and specificity at the
    threshold on the inner predictions), ``history_`` when present.
    """

    def __init__(
        self,
        estimator: Any,
        sens: float | None = None,
        spec: float | None = None,
        positive: Any = None,
        cv: Any = 5,
        random_state: Any = 0,
    ):
        self.estimator = estimator
        self.sens = sens
        self.spec = spec
        self.positive = positive
        self.cv = cv
        self.random_state = random_state

    def fit(self, X: Any, y: Any, groups: Any = None) -> InnerOperatingPoint:
        """Pick the threshold on inner out-of-fold probabilities, then fit the head on all rows."""
        if (self.sens is None) == (self.spec is None):
            raise FusionfeatError("give exactly one operating-point target: sens=... or spec=...")
        y = np.asarray(y)
        self.classes_ = np.unique(y)
        if len(self.classes_) != 2:
            raise FusionfeatError(
                f"an operating point needs exactly 2 classes; the training rows have {len(self.classes_)}"
            )
        positive = self.classes_[1] if self.positive is None else self.positive
        if positive not in self.classes_:
            raise FusionfeatError(
                f"positive class {positive!r} is not among the training labels {self.classes_.tolist()}"
            )
        self.pos_index_ = int(np.flatnonzero(self.classes_ == positive)[0])
        self.estimator_ = fit_estimator(clone(self.estimator), X, y, groups)
        y01 = (y == positive).astype(int)
        self.score_threshold_ = None
        raw = getattr(self.estimator_, "inner_scores_", None)
        if raw is not None and hasattr(self.estimator_, "calibrate"):
            sign = 1.0 if self.pos_index_ == 1 else -1.0  # raw scores rank classes_[1]
            scores = sign * np.asarray(raw, dtype=float)
            self.score_threshold_ = fs.threshold_for(y01, scores, sens=self.sens, spec=self.spec)
            self.inner_rates_ = fs.rates_at(y01, scores, self.score_threshold_)
            p1 = float(self.estimator_.calibrate(np.array([sign * self.score_threshold_]))[0])
            self.threshold_ = p1 if self.pos_index_ == 1 else 1 - p1
            if hasattr(self.estimator_, "history_"):
                self.history_ = self.estimator_.history_
            return self
        inner = getattr(self.estimator_, "inner_oof_", None)
        if inner is None:
            inner = inner_oof_scores(self.estimator, X, y, groups, self.cv, self.random_state)
        inner = np.asarray(inner, dtype=float)
        if self.pos_index_ == 0:
            inner = 1 - inner  # inner_oof_ is P(classes_[1])
        self.threshold_ = fs.threshold_for(y01, inner, sens=self.sens, spec=self.spec)
        self.inner_rates_ = fs.rates_at(y01, inner, self.threshold_)
        if hasattr(self.estimator_, "history_"):
            self.history_ = self.estimator_.history_
        return self

    def predict_proba(self, X: Any) -> np.ndarray:
        """The head's probabilities, unchanged."""
        check_is_fitted(self)
        return np.asarray(self.estimator_.predict_proba(X))

    def predict(self, X: Any) -> np.ndarray:
        """The positive class where P(positive) >= ``threshold_`` (for a calibrated head: where its raw score
        reaches ``score_threshold_``), the other class elsewhere."""
        check_is_fitted(self)
        other = self.classes_[1 - self.pos_index_]
        if self.score_threshold_ is not None:
            sign = 1.0 if self.pos_index_ == 1 else -1.0
            s = sign * np.asarray(self.estimator_.raw_scores(X), dtype=float)
            return np.where(s >= self.score_threshold_, self.classes_[self.pos_index_], other)
        p = self.predict_proba(X)[:, self.pos_index_]
        return np.where(p >= self.threshold_, self.classes_[self.pos_index_], other)

    @available_if(_has_fusion_weights)
    def fusion_weights(self, X: Any) -> np.ndarray:
        """The head's fusion weights (attention heads only)."""
        check_is_fitted(self)
        return self.estimator_.fusion_weights(X)


def _fit_takes_groups(estimator: Any) -> bool:
    return "groups" in inspect.signature(estimator.fit).parameters


def group_params(estimator: Any, groups: Any) -> dict[str, Any]:
    """The fit parameters that hand ``groups`` to ``estimator``: ``{"groups": g}`` when its ``fit`` takes them,
    ``{"<last step>__groups": g}`` for a ``Pipeline`` whose last step does (e.g. the SVM), else nothing."""
    if groups is None:
        return {}
    g = np.asarray(groups)
    if _fit_takes_groups(estimator):
        return {"groups": g}
    steps = getattr(estimator, "steps", None)
    if steps and steps[-1][1] not in (None, "passthrough") and _fit_takes_groups(steps[-1][1]):
        return {f"{steps[-1][0]}__groups": g}
    return {}


def takes_groups(estimator: Any) -> bool:
    """Whether ``estimator`` can use ``groups`` in ``fit`` (torch heads, these meta-estimators, the SVM)."""
    return bool(group_params(estimator, np.zeros(0)))


def fit_estimator(estimator: Any, X: Any, y: Any, groups: Any = None) -> Any:
    """``estimator.fit(X, y, groups=groups)`` (or a pipeline's ``step__groups``) when it can use groups and
    they are given, else ``fit(X, y)``."""
    return estimator.fit(X, y, **group_params(estimator, groups))


def parse_operating_point(text: str) -> dict[str, float]:
    """``"sens=0.95"`` -> ``{"sens": 0.95}``, ``"spec=0.9"`` -> ``{"spec": 0.9}``; anything else is refused."""
    key, _, value = str(text).partition("=")
    key = {"sensitivity": "sens", "specificity": "spec"}.get(key.strip().lower(), key.strip().lower())
    try:
        target = float(value)
    except ValueError:
        target = float("nan")
    if key not in ("sens", "spec") or not 0 < target <= 1:
        raise FusionfeatError(
            f"--operating-point {text!r}: write sens=TARGET or spec=TARGET with TARGET in (0, 1], e.g. sens=0.95"
        )
    return {key: target}
