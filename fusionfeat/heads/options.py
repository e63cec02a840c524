"""Heads' hyper-parameters from the command line or TOML (``--head-param``): resolved, typed and recorded."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from fusionfeat.errors import FusionfeatError
from fusionfeat.heads.zoo import HeadSpec

IGNORED_PARAMS: tuple[str, ...] = ("blocks", "device", "progress", "random_state", "n_jobs", "verbose", "memory",
                                   "steps", "transform_input", "copy")


def recorded_params(est: Any) -> dict[str, Any]:
    """A head's hyper-parameters as plain JSON (``get_params(deep=True)`` without objects, seeds, devices)."""
    out = {}
    for key, value in est.get_params(deep=True).items():
        if key.rsplit("__", 1)[-1] in IGNORED_PARAMS:
            continue
        if value is None or isinstance(value, bool | int | float | str):
            out[key] = value
        elif isinstance(value, np.generic):
            out[key] = value.item()
    return out


def _matches(key: str, head: str) -> bool:
    return key in ("*", head) or head.startswith(key + "-")


def resolve_head_params(specs: Sequence[HeadSpec], wanted: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """head name -> ``set_params`` keywords for it, from ``{head or "*": {param: value}}``; a parameter may be
    given by its last part (``C`` for ``weightedplattsvc__C``). Unknown heads or parameters are refused."""
    names = [s.name for s in specs]
    for key in wanted:
        if not any(_matches(key, n) for n in names):
            raise FusionfeatError(f"--head-param: no head {key!r} in this run (heads: {', '.join(names)}; or '*')")
    out: dict[str, dict[str, Any]] = {n: {} for n in names}
    for spec in specs:
        valid = recorded_params(spec.build(class_weight=None, random_state=0, device="cpu", progress=False))
        for key, params in wanted.items():
            if not _matches(key, spec.name):
                continue
            for param, value in params.items():
                full = _full_param(param, valid)
                if full is None:
                    if key == "*":
                        continue
                    raise FusionfeatError(
                        f"--head-param: head {spec.name!r} has no parameter {param!r}; valid: {', '.join(valid)}"
                    )
                out[spec.name][full] = _typed(value, valid[full], f"{spec.name}.{param}")
    for key, params in wanted.items():
        if key == "*":
            for param in params:
                if not any(_full_param(param, recorded_params(
                        s.build(class_weight=None, random_state=0, device="cpu", progress=False))) for s in specs):
                    raise FusionfeatError(f"--head-param: no head in this run has a parameter {param!r}")
    return out


def _full_param(param: str, valid: dict[str, Any]) -> str | None:
    if param in valid:
        return param
    ends = [k for k in valid if k.endswith("__" + param)]
    return ends[0] if len(ends) == 1 else None


def _typed(value: Any, like: Any, name: str = "") -> Any:
    """A CLI string as the default's type (bool, float, int; a number where the default is a str or None, e.g.
    SVC's ``gamma="scale"``; ``none`` is None); values that are not strings (from TOML) stay as they are."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    if text.lower() in ("none", "null"):
        return None
    if isinstance(like, bool):
        if text.lower() in ("true", "1", "yes"):
            return True
        if text.lower() in ("false", "0", "no"):
            return False
        raise FusionfeatError(f"--head-param {name}={value!r}: not a boolean (true/false)")
    casts = (float,) if isinstance(like, float) else (int, float)  # a str default may also take a number
    for cast in casts:
        try:
            return cast(text)
        except ValueError:
            continue
    if isinstance(like, int | float):
        raise FusionfeatError(f"--head-param {name}={value!r}: not a number")
    return text
