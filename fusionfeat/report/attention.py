"""Out-of-fold attention maps of a run as ``attention.npz`` (read back by ``fusionfeat explain``).

Layout: ``sample``, ``view``, ``label``, ``path`` (evaluation rows), ``test_fold`` ``(repeats, n_eval)``, and per
attention-spatial head ``h`` and backbone ``b``: ``map/h/b`` ``(repeats, n_eval, T_b)`` float32 (the mass
backbone b's tokens receive from the other backbones' queries, in the stored token order: row-major
over the ``grid/b`` ``(rows, cols)`` grid) and ``p/h`` ``(repeats, n_eval)`` the out-of-fold P(positive) (with more
than two classes ``proba/h`` ``(repeats, n_eval, K)``, every class's probability).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from fusionfeat.errors import FusionfeatError
from fusionfeat.evaluation.cv import CVResult
from fusionfeat.fsio import require_file

ATTENTION_FILE = "attention.npz"


def write_attention(result: CVResult, out: Path) -> str | None:
    """Write ``attention.npz`` when a head produced attention maps; return its name (None otherwise)."""
    if not result.oof_attention:
        return None
    arrays: dict[str, np.ndarray] = {
        "sample": np.asarray(result.rows["sample"], dtype=np.int64),
        "view": np.asarray(result.rows["view"], dtype=np.int64),
        "label": np.asarray(result.rows["label"], dtype=np.int64),
        "path": np.asarray(result.rows["path"], dtype=str),
        "test_fold": np.asarray(result.test_fold, dtype=np.int64),
    }
    for head, maps in result.oof_attention.items():
        backbones = result.head_info[head]["backbones"]
        if result.multiclass:  # K > 2: every class's probability, (repeats, n_eval, K) in class order
            arrays[f"proba/{head}"] = np.asarray(result.oof_proba[head], dtype=np.float64)
        else:
            arrays[f"p/{head}"] = np.asarray(result.oof[head], dtype=np.float64)
        for backbone, m in zip(backbones, maps, strict=True):
            arrays[f"map/{head}/{backbone}"] = np.asarray(m, dtype=np.float32)
            arrays[f"grid/{backbone}"] = np.asarray(_grid(m.shape[-1]), dtype=np.int64)
    np.savez_compressed(out / ATTENTION_FILE, **arrays)
    return ATTENTION_FILE


def _grid(n_tokens: int) -> tuple[int, int]:
    """The (rows, cols) of a square token grid (extraction stores square inputs, so grids are square)."""
    side = math.isqrt(n_tokens)
    return (side, side) if side * side == n_tokens else (1, n_tokens)


def load_attention(run_dir: str | Path) -> dict[str, Any]:
    """The arrays of a run's ``attention.npz`` (FusionfeatError when the run has none)."""
    path = require_file(run_dir, ATTENTION_FILE,
                        f"{Path(run_dir)} has no {ATTENTION_FILE}: no attention-spatial head was cross-validated "
                        "there; run fusionfeat fit --head attention on a store with token maps")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:  # cut short, object arrays, …
        raise FusionfeatError(f"{path} is damaged ({type(exc).__name__}); rerun the `fusionfeat fit` that wrote "
                              "it") from None
    missing = [k for k in ("sample", "view", "label", "path", "test_fold") if k not in arrays]
    n = len(arrays.get("sample", ()))
    if missing or any(len(arrays[k]) != n for k in ("view", "label", "path") if k in arrays):
        raise FusionfeatError(f"{path} does not have the shape fusionfeat writes ("
                              f"{'missing ' + ', '.join(missing) if missing else 'row counts differ'}); rerun the "
                              "`fusionfeat fit` that wrote it")
    return arrays
