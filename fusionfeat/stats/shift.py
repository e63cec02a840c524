"""Distribution shift in feature space: how far new images lie from the training images' pooled features.

The reference is fitted on the training images' pooled vectors (the backbones the head reads, concatenated):
their mean, then, when the vectors are wider than ``MAX_COMPONENTS``, the top principal directions of the
centred training vectors, and a Ledoit–Wolf shrinkage covariance (``sklearn.covariance.LedoitWolf``) of the
coordinates there. An image's ``shift_score`` is its Mahalanobis distance under that covariance.

The training images' own scores, the yardstick, are out-of-sample: each training image is scored by a
reference fitted without its fold (subject-disjoint folds when subjects are known), so the 99th percentile is
what a new image from the training distribution would score, not the smaller in-sample distances.
A set is flagged when ``WARN_SHARE`` (20%) or more of its images lie beyond that percentile: from the training
distribution about 1% would.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from sklearn.covariance import LedoitWolf
from sklearn.model_selection import GroupKFold, KFold

MAX_COMPONENTS = 64
PERCENTILE = 99.0
WARN_SHARE = 0.20
N_FOLDS = 5
MIN_IMAGES = 20  # fewer training images cannot place a 99th percentile
METHOD = "Mahalanobis distance (Ledoit-Wolf covariance) on the pooled features"


@dataclass(frozen=True)
class ShiftReference:
    """The training features' reference: ``mean`` (D,), ``basis`` (D, K) orthonormal principal directions (None
    when the distance uses all D coordinates), ``precision`` (K, K) the inverse shrunk covariance, and the
    training images' out-of-sample scores (sorted) with their ``PERCENTILE``th percentile ``threshold``."""

    mean: np.ndarray
    basis: np.ndarray | None
    precision: np.ndarray
    train_scores: np.ndarray
    threshold: float

    def score(self, X: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of ``X`` (N, D) from the training mean."""
        return _distance(np.asarray(X, dtype=np.float64), self.mean, self.basis, self.precision)

    @property
    def n_components(self) -> int:
        return int(self.precision.shape[0])

    def summary(self) -> dict[str, Any]:
        """What a bundle records in JSON beside the arrays."""
        return {"method": METHOD, "dim": int(self.mean.shape[0]), "components": self.n_components,
                "percentile": PERCENTILE, "threshold": float(self.threshold), "warn_share": WARN_SHARE,
                "n_train": int(len(self.train_scores)),
                "train_median": float(np.median(self.train_scores)) if len(self.train_scores) else math.nan}

    def arrays(self) -> dict[str, np.ndarray]:
        """The arrays to save (``np.savez``; loaded back by ``from_arrays`` without pickles)."""
        out = {"mean": self.mean, "precision": self.precision, "train_scores": self.train_scores,
               "threshold": np.asarray([self.threshold])}
        if self.basis is not None:
            out["basis"] = self.basis
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> ShiftReference:
        """The reference ``arrays`` gave; a ``KeyError``/``ValueError`` when one is missing or misshapen."""
        mean = np.asarray(arrays["mean"], dtype=np.float64)
        precision = np.asarray(arrays["precision"], dtype=np.float64)
        basis = np.asarray(arrays["basis"], dtype=np.float64) if "basis" in arrays else None
        k = precision.shape[0] if precision.ndim == 2 else -1
        if mean.ndim != 1 or precision.shape != (k, k) or (basis is None and k != len(mean)) \
                or (basis is not None and basis.shape != (len(mean), k)):
            raise ValueError("shift reference arrays have inconsistent shapes")
        return cls(mean, basis, precision, np.sort(np.asarray(arrays["train_scores"], dtype=np.float64)),
                   float(np.asarray(arrays["threshold"]).reshape(-1)[0]))


def mahalanobis(X: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """``sqrt((x - mean) P (x - mean)ᵀ)`` per row of ``X``, for a precision matrix ``P``."""
    return _distance(np.asarray(X, dtype=np.float64), np.asarray(mean, dtype=np.float64), None,
                     np.asarray(precision, dtype=np.float64))


def _distance(X: np.ndarray, mean: np.ndarray, basis: np.ndarray | None, precision: np.ndarray) -> np.ndarray:
    Z = X - mean
    if basis is not None:
        Z = Z @ basis
    return np.sqrt(np.maximum(np.einsum("ij,jk,ik->i", Z, precision, Z), 0.0))


def n_components(n_fit: int, dim: int, max_components: int = MAX_COMPONENTS) -> int:
    """Coordinates the distance uses: all ``dim`` when few, else the top ``max_components`` principal directions,
    never more than half the images a reference is fitted on (so the directions are not noise)."""
    return int(min(dim, max_components, max(1, n_fit // 2)))


def _fit_parts(X: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    mean = X.mean(axis=0)
    centred = X - mean
    basis = None
    if k < X.shape[1]:
        _, _, vt = np.linalg.svd(centred, full_matrices=False)
        basis = vt[:k].T
        centred = centred @ basis
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    return mean, basis, precision


def fit_reference(X: np.ndarray, groups: np.ndarray | None = None, n_folds: int = N_FOLDS, seed: int = 0,
                  max_components: int = MAX_COMPONENTS) -> ShiftReference:
    """The reference of training features ``X`` (N, D): fitted on all rows, with out-of-sample training scores
    from ``n_folds`` folds (by ``groups`` when at least ``n_folds`` distinct non-empty ones are given)."""
    X = np.asarray(X, dtype=np.float64)
    n = len(X)
    if n < 4:
        raise ValueError(f"a shift reference needs at least 4 training images, got {n}")
    folds = min(n_folds, n // 2)
    ids = None if groups is None else np.asarray(groups).astype(str)
    if ids is not None and (np.any(ids == "") or len(np.unique(ids)) < folds):
        ids = None
    splitter = GroupKFold(folds) if ids is not None else KFold(folds, shuffle=True, random_state=seed)
    splits = list(splitter.split(X, groups=ids))
    k = n_components(min(len(train) for train, _ in splits), X.shape[1], max_components)
    scores = np.empty(n)
    for train, test in splits:
        mean, basis, precision = _fit_parts(X[train], k)
        scores[test] = _distance(X[test], mean, basis, precision)
    mean, basis, precision = _fit_parts(X, k)
    return ShiftReference(mean, basis, precision, np.sort(scores), float(np.percentile(scores, PERCENTILE)))


def shift_share(scores: np.ndarray, threshold: float) -> dict[str, Any]:
    """How many of ``scores`` lie beyond ``threshold``, their share, and whether that share warrants a warning."""
    scores = np.asarray(scores, dtype=np.float64)
    scores = scores[np.isfinite(scores)]
    beyond = int(np.sum(scores > threshold))
    share = beyond / len(scores) if len(scores) else math.nan
    return {"n": int(len(scores)), "n_beyond": beyond, "share": share, "threshold": float(threshold),
            "warn": bool(len(scores) and share >= WARN_SHARE),
            "median": float(np.median(scores)) if len(scores) else math.nan}


def shift_warning(summary: dict[str, Any], what: str = "images") -> str | None:
    """The one-line warning for a ``shift_share`` summary, or None when the share is below ``WARN_SHARE``."""
    if not summary.get("warn"):
        return None
    return (f"{summary['n_beyond']} of {summary['n']} {what} ({summary['share']:.0%}) lie beyond the training "
            f"images' {PERCENTILE:.0f}th percentile of feature-space distance (shift_score > "
            f"{summary['threshold']:.2f}; about 1% would from the training distribution): they look unlike the "
            "training data, so the model's outputs on them are not backed by its validation")
