"""scikit-learn pipelines as data: their learned arrays in ``.npz`` and their parameters in JSON, no pickle.

Only the classes fusionfeat's classical heads are made of can be rebuilt (``ALLOWED``): StandardScaler →
LogisticRegression, and StandardScaler → WeightedPlattSVC (a CalibratedClassifierCV(SVC, sigmoid,
ensemble=False) fitted under the class weights; past its ``max_exact_rows`` a Nystroem map and a
CalibratedClassifierCV(LinearSVC) instead). An object is
written as ``{"class": name, "state": {attribute: value}}``, where arrays become ``{"array": key}`` references
into the ``.npz`` (read with ``allow_pickle=False``) and numpy scalars keep their dtype. Loading rebuilds each
object from its class and attribute dict, so nothing in the files can name code to run.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
from sklearn.calibration import CalibratedClassifierCV, _CalibratedClassifier, _SigmoidCalibration
from sklearn.kernel_approximation import Nystroem
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, LinearSVC

from fusionfeat.heads.svm import WeightedPlattSVC

ALLOWED: dict[str, type] = {cls.__name__: cls for cls in (
    Pipeline, StandardScaler, LogisticRegression, CalibratedClassifierCV, SVC, _CalibratedClassifier,
    _SigmoidCalibration, WeightedPlattSVC, Nystroem, LinearSVC)}


class StateError(ValueError):
    """The saved state names something that cannot be rebuilt (a class outside ``ALLOWED``, a bad array key)."""


def dump_estimator(estimator: Any) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """``(tree, arrays)``: a JSON-able description of a fitted pipeline and its arrays, for ``np.savez``."""
    arrays: dict[str, np.ndarray] = {}
    return _encode(estimator, arrays), arrays


def load_estimator(tree: dict[str, Any], arrays: dict[str, np.ndarray]) -> Any:
    """Rebuild what ``dump_estimator`` described; ``StateError`` for anything it would not have written."""
    return _decode(tree, arrays)


def _encode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if type(value).__name__ in ALLOWED and type(value) is ALLOWED[type(value).__name__]:
        return {"class": type(value).__name__, "state": {k: _encode(v, arrays) for k, v in vars(value).items()}}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise StateError(f"cannot save an object array ({value.dtype})")
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"array": key}
    if isinstance(value, np.generic):
        return {"scalar": value.dtype.str, "value": _encode(value.item(), arrays)}
    if isinstance(value, float) and not math.isfinite(value):
        return {"float": repr(value)}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, tuple):
        return {"tuple": [_encode(v, arrays) for v in value]}
    if isinstance(value, list):
        return [_encode(v, arrays) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {"dict": {k: _encode(v, arrays) for k, v in value.items()}}
    raise StateError(f"cannot save a {type(value).__name__} without pickle")


def _constructor_defaults(cls: type) -> dict[str, Any]:
    """``cls.__init__``'s parameters with defaults: an object saved before a parameter existed gets today's
    default, so ``get_params``, ``clone`` and ``repr`` keep working (its fitted state is what it was saved with)."""
    params = inspect.signature(cls.__init__).parameters.values()
    return {p.name: p.default for p in params if p.default is not inspect.Parameter.empty}


def _decode(value: Any, arrays: dict[str, np.ndarray]) -> Any:
    if isinstance(value, list):
        return [_decode(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"class", "state"}:
        cls = ALLOWED.get(value["class"])
        if cls is None or not isinstance(value["state"], dict):
            raise StateError(f"class {value['class']!r} is not one fusionfeat saves")
        obj = cls.__new__(cls)
        obj.__dict__.update(_constructor_defaults(cls))  # parameters added since the object was saved
        obj.__dict__.update({str(k): _decode(v, arrays) for k, v in value["state"].items()})
        return obj
    if set(value) == {"array"}:
        if value["array"] not in arrays:
            raise StateError(f"array {value['array']!r} is missing")
        return arrays[value["array"]]
    if set(value) == {"scalar", "value"}:
        return np.dtype(str(value["scalar"])).type(_decode(value["value"], arrays))
    if set(value) == {"float"}:
        return float(value["float"])
    if set(value) == {"tuple"}:
        return tuple(_decode(v, arrays) for v in value["tuple"])
    if set(value) == {"dict"}:
        return {str(k): _decode(v, arrays) for k, v in value["dict"].items()}
    raise StateError(f"unknown entry {sorted(value)}")
