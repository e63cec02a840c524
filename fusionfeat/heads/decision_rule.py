"""A fitted head's decision rule as plain data, and back: what ``train --calibrate/--operating-point`` puts in a
bundle so that ``predict`` applies the calibration and the threshold ``fit`` validated.

``split_rule`` peels ``InnerOperatingPoint`` and ``CalibratedHead`` off a fitted head, leaving the bare head
(saved in the bundle's own model formats) and a JSON-able record: the calibration map (Platt's ``a, b`` or the
isotonic steps) and the operating point (target, positive class, thresholds, inner rates). ``rebuild_rule``
wraps a loaded bare head in the same classes again, so probabilities and labels equal the fitted ones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import expit
from sklearn.calibration import _SigmoidCalibration
from sklearn.isotonic import IsotonicRegression

from fusionfeat.errors import FusionfeatError
from fusionfeat.heads.calibration import METHODS, CalibratedHead, InnerOperatingPoint


class ScoreCalibrator:
    """The fitted map from a head's raw score to P(``classes_[1]``), rebuilt from its parameters: Platt's
    sigmoid ``1 / (1 + exp(a·s + b))`` or isotonic steps interpolated linearly and clipped at the ends, as
    scikit-learn's calibrators compute them."""

    def __init__(self, method: str, params: dict[str, Any]):
        if method not in METHODS:
            raise FusionfeatError(f"unknown calibration {method!r} in the bundle; choose one of {', '.join(METHODS)}")
        self.method = method
        self.params = params
        if method == "sigmoid":
            ok = all(isinstance(params.get(k), int | float) and np.isfinite(params[k]) for k in ("a", "b"))
        else:
            x, y = np.asarray(params.get("x", []), dtype=float), np.asarray(params.get("y", []), dtype=float)
            ok = (x.ndim == 1 and x.shape == y.shape and len(x) >= 1 and bool(np.all(np.diff(x) > 0))
                  and bool(np.all((y >= 0) & (y <= 1))))
        if not ok:
            raise FusionfeatError(f"the bundle's {method} calibration map is not one fusionfeat writes; the bundle "
                                  "is damaged or edited")

    @classmethod
    def from_fitted(cls, calibrator: Any) -> ScoreCalibrator:
        """From a ``CalibratedClassifierCV`` fitted on one score column (``calibration.fit_calibrator``)."""
        (fitted,) = calibrator.calibrated_classifiers_
        (inner,) = fitted.calibrators
        if isinstance(inner, _SigmoidCalibration):
            return cls("sigmoid", {"a": float(inner.a_), "b": float(inner.b_)})
        if isinstance(inner, IsotonicRegression) and inner.out_of_bounds == "clip":
            return cls("isotonic", {"x": inner.X_thresholds_.astype(float).tolist(),
                                    "y": inner.y_thresholds_.astype(float).tolist()})
        raise FusionfeatError(f"cannot save a {type(inner).__name__} calibrator in a bundle")

    def probability(self, scores: Any) -> np.ndarray:
        """P(``classes_[1]``) of raw scores."""
        s = np.asarray(scores, dtype=float).reshape(-1)
        if self.method == "sigmoid":
            return expit(-(self.params["a"] * s + self.params["b"]))
        x, y = np.asarray(self.params["x"], dtype=float), np.asarray(self.params["y"], dtype=float)
        return np.interp(np.clip(s, x[0], x[-1]), x, y)

    def predict_proba(self, scores: Any) -> np.ndarray:
        """``(N, 2)`` as a scikit-learn calibrator gives it, for ``CalibratedHead.calibrate``."""
        p = self.probability(scores)
        return np.column_stack([1 - p, p])


class ClassScoreCalibrator:
    """The fitted map from a head's K scores to K probabilities (more than two classes): one ``ScoreCalibrator``
    per class, one-vs-rest, then divided by their sum (uniform where every class gets 0), as scikit-learn's
    ``CalibratedClassifierCV`` computes it."""

    def __init__(self, method: str, per_class: list[dict[str, Any]]):
        if not isinstance(per_class, list) or len(per_class) < 3:
            raise FusionfeatError("the bundle's per-class calibration maps are not ones fusionfeat writes; the bundle "
                                  "is damaged or edited")
        self.method = method
        self.maps = [ScoreCalibrator(method, params) for params in per_class]

    @classmethod
    def from_fitted(cls, calibrator: Any) -> ClassScoreCalibrator:
        """From a ``CalibratedClassifierCV`` fitted on K score columns (``calibration.fit_calibrator``)."""
        (fitted,) = calibrator.calibrated_classifiers_
        maps = [ScoreCalibrator.from_fitted(_OneMap(inner)) for inner in fitted.calibrators]
        return cls(maps[0].method, [m.params for m in maps])

    @property
    def params(self) -> dict[str, Any]:
        return {"per_class": [m.params for m in self.maps]}

    def predict_proba(self, scores: Any) -> np.ndarray:
        """``(N, K)`` probabilities of ``(N, K)`` raw scores."""
        s = np.asarray(scores, dtype=float)
        if s.ndim != 2 or s.shape[1] != len(self.maps):
            raise FusionfeatError(f"the head gives {s.shape[-1]} scores per image but the bundle's calibration has "
                                  f"{len(self.maps)} classes; the bundle is damaged or edited")
        proba = np.column_stack([m.probability(s[:, k]) for k, m in enumerate(self.maps)])
        total = proba.sum(axis=1, keepdims=True)
        proba = np.divide(proba, total, out=np.full_like(proba, 1 / len(self.maps)), where=total != 0)
        proba[(proba > 1.0) & (proba <= 1.0 + 1e-5)] = 1.0
        return proba


class _OneMap:
    """One per-class calibrator dressed as the one-calibrator ``CalibratedClassifierCV`` ``from_fitted`` reads."""

    def __init__(self, inner: Any):
        self.calibrated_classifiers_ = [type("Fitted", (), {"calibrators": [inner]})()]


def bare_head(estimator: Any) -> Any:
    """The head inside any calibration / operating-point wrappers (fitted or rebuilt)."""
    while hasattr(estimator, "estimator_"):
        estimator = estimator.estimator_
    return estimator


def split_rule(estimator: Any) -> tuple[Any, dict[str, Any]]:
    """``(bare head, rule)``: the head without its calibration / operating-point wrappers, and those as data."""
    rule: dict[str, Any] = {}
    if isinstance(estimator, InnerOperatingPoint):
        target = {"sens": estimator.sens} if estimator.sens is not None else {"spec": estimator.spec}
        rule["operating_point"] = {
            "target": target,
            "positive": _plain(estimator.classes_[estimator.pos_index_]),
            "classes": [_plain(c) for c in estimator.classes_],
            "threshold": float(estimator.threshold_),
            "score_threshold": None if estimator.score_threshold_ is None else float(estimator.score_threshold_),
            "inner_rates": {k: float(v) for k, v in estimator.inner_rates_.items()},
        }
        estimator = estimator.estimator_
    if isinstance(estimator, CalibratedHead):
        many = len(estimator.classes_) > 2
        calibrator = (ClassScoreCalibrator if many else ScoreCalibrator).from_fitted(estimator.calibrator_)
        rule["calibration"] = {"method": calibrator.method, "classes": [_plain(c) for c in estimator.classes_],
                               **calibrator.params}
        estimator = estimator.estimator_
    return estimator, rule


def rebuild_rule(head: Any, rule: dict[str, Any] | None) -> Any:
    """Wrap a loaded bare head in the recorded rule again (``rule`` None or empty: the head itself)."""
    if not rule:
        return head
    try:
        estimator = head
        if "calibration" in rule:
            record = rule["calibration"]
            params = {k: v for k, v in record.items() if k not in ("method", "classes")}
            calibrated = CalibratedHead(head, method=record["method"])
            calibrated.estimator_ = head
            calibrated.calibrator_ = (ClassScoreCalibrator(record["method"], params["per_class"])
                                      if "per_class" in params else ScoreCalibrator(record["method"], params))
            calibrated.classes_ = np.asarray(record["classes"])
            estimator = calibrated
        if "operating_point" in rule:
            record = rule["operating_point"]
            point = InnerOperatingPoint(estimator, positive=record["positive"], **record["target"])
            point.estimator_ = estimator
            point.classes_ = np.asarray(record["classes"])
            point.pos_index_ = int(np.flatnonzero(point.classes_ == record["positive"])[0])
            point.threshold_ = float(record["threshold"])
            point.score_threshold_ = record["score_threshold"]
            point.inner_rates_ = dict(record["inner_rates"])
            estimator = point
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise FusionfeatError(f"the bundle's decision_rule does not have the shape fusionfeat writes ({exc!r}); "
                              "the bundle is damaged or edited") from None
    return estimator


def describe_rule(rule: dict[str, Any] | None, n_classes: int = 2) -> str:
    """One phrase: ``argmax``, ``sigmoid-calibrated``, ``operating point sens=0.95 (threshold 0.31)``, …"""
    argmax = "argmax (P >= 0.5)" if n_classes == 2 else "argmax (the most probable class)"
    if not rule:
        return f"{argmax}, uncalibrated"
    parts = []
    if "calibration" in rule:
        parts.append(f"{rule['calibration']['method']}-calibrated")
    if "operating_point" in rule:
        point = rule["operating_point"]
        (key, value), = point["target"].items()
        parts.append(f"operating point {key}={value:g} (P >= {point['threshold']:.4f})")
    else:
        parts.append(argmax)
    return ", ".join(parts)


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value
