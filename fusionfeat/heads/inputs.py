"""The one X layout of a head, for cross-validation, training and prediction alike.

Row ``i`` of X is, for each backbone of the head's spec in order, that backbone's block for image ``i``
flattened and laid end to end: its pooled vector ``(1, D)`` for pooled heads (float32), or its token map
``(T, C)`` flattened row-major for token heads (float16, to halve memory). Blocks come either from a
feature store (rows × views, frozen or one fine-tuned fold) or from fresh embeddings
``{backbone: (pooled (N, V, D), tokens (N, V, T, C) | None)}`` as ``fusionfeat.engines.extract.iter_embeddings``
yields them; both go through ``_place`` so the two can never drift apart.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np

from fusionfeat.errors import FusionfeatError

READ_ROWS = 256  # rows read from the store at a time: bounds the temporary copies while X is assembled


class RowsLike(Protocol):
    """Rows of a store that mix views: the stored sample and the view of each row."""

    sample: np.ndarray
    view: np.ndarray


def input_dtype(inputs: str) -> type:
    """float16 for token inputs, float32 for pooled ones."""
    return np.float16 if inputs == "tokens" else np.float32


def head_blocks(store: Any, spec: Any, fold: int | None = None) -> tuple[tuple[int, int], ...]:
    """``(n_tokens, dim)`` of each of the spec's backbones in column order (of fine-tuned ``fold`` if given)."""
    extra = {} if fold is None else {"fold": fold}
    return tuple(tuple(int(x) for x in store.block_shape(b, spec.inputs, **extra)) for b in spec.backbones)


def feature_matrix(store: Any, spec: Any, index: np.ndarray, view: int = 0, fold: int | None = None) -> np.ndarray:
    """X for the store rows ``index`` (in that order) of one ``view``; ``fold=k`` reads fold k's fine-tuned
    features instead of the frozen ones."""
    index = np.asarray(index, dtype=np.int64)
    out = np.empty((len(index), _width(head_blocks(store, spec, fold))), dtype=input_dtype(spec.inputs))
    _fill(store, spec, index, view, fold, out)
    return out


def rows_matrix(store: Any, spec: Any, rows: RowsLike, fold: int | None = None) -> np.ndarray:
    """X for rows that mix views (originals and their rotated/mirrored copies), in row order; read
    ``READ_ROWS`` rows at a time, so reading needs little memory beyond X itself."""
    out = np.empty((len(rows.sample), _width(head_blocks(store, spec, fold))), dtype=input_dtype(spec.inputs))
    sample = np.asarray(rows.sample)
    for view in np.unique(rows.view):
        at = np.flatnonzero(rows.view == view)
        for lo in range(0, len(at), READ_ROWS):
            chunk = at[lo : lo + READ_ROWS]
            part = np.empty((len(chunk), out.shape[1]), dtype=out.dtype)
            _fill(store, spec, sample[chunk], int(view), fold, part)
            out[chunk] = part
    return out


def embedding_matrix(
    spec: Any, embeddings: Mapping[str, tuple[np.ndarray, np.ndarray | None]], view: int = 0
) -> np.ndarray:
    """X for freshly embedded images: ``embeddings[backbone] = (pooled (N, V, D), tokens (N, V, T, C) or None)``."""
    blocks = []
    for backbone in spec.backbones:
        if backbone not in embeddings:
            raise FusionfeatError(f"head {spec.name!r} reads {backbone}, which was not embedded")
        pooled, tokens = embeddings[backbone]
        if spec.inputs == "tokens" and tokens is None:
            raise FusionfeatError(f"head {spec.name!r} reads {backbone} token maps, which were not kept")
        block = np.asarray(tokens if spec.inputs == "tokens" else pooled)[:, view]
        if not np.isfinite(block).all():
            raise FusionfeatError(f"{backbone} gave non-finite (NaN or infinite) features for "
                                  f"{int((~np.isfinite(block.reshape(len(block), -1)).all(axis=1)).sum())} image(s); "
                                  "try --precision fp32")
        blocks.append(block)
    n = len(blocks[0]) if blocks else 0
    out = np.empty((n, sum(int(np.prod(b.shape[1:])) for b in blocks)), dtype=input_dtype(spec.inputs))
    _place(out, blocks)
    return out


def _width(blocks: tuple[tuple[int, int], ...]) -> int:
    return sum(t * c for t, c in blocks)


def _fill(store: Any, spec: Any, index: np.ndarray, view: int, fold: int | None, out: np.ndarray) -> None:
    """Write the rows ``index`` of one view into ``out`` (same order), ``READ_ROWS`` at a time, reading each
    stored row of a chunk once."""
    read = store.tokens if spec.inputs == "tokens" else store.pooled
    for lo in range(0, len(index), READ_ROWS):
        uniq, inverse = np.unique(index[lo : lo + READ_ROWS], return_inverse=True)
        blocks = (_finite(read(backbone, view=view, index=uniq, fold=fold), store, backbone, uniq)
                  for backbone in spec.backbones)
        _place(out[lo : lo + READ_ROWS], blocks, inverse)


def _finite(block: np.ndarray, store: Any, backbone: str, rows: np.ndarray) -> np.ndarray:
    """``block`` when every value is finite; else a one-line error naming the store, backbone and image."""
    bad = ~np.isfinite(block.reshape(len(block), -1)).all(axis=1)
    if bad.any():
        found = [int(r) for r in rows[np.flatnonzero(bad)]]
        first = ", ".join(f"row {r} {store.paths[r]}" for r in found[:3])
        record = ("its /samples/nonfinite record (extraction leaves such images out) does not list them, so the "
                  "store changed after extraction" if getattr(store, "has_nonfinite_record", False) else
                  "the store predates the per-image /samples/nonfinite record")
        raise FusionfeatError(f"{store.path}: {len(found)} image(s) read here have non-finite (NaN or infinite) "
                              f"{backbone} features ({first}); {record}: re-extract it (`fusionfeat info --verify` "
                              "checks its checksums)")
    return block


def _place(out: np.ndarray, blocks: Any, inverse: np.ndarray | None = None) -> None:
    """Lay per-backbone blocks ``(n, ...)`` end to end into ``out``, each flattened row-major and cast to
    ``out``'s dtype; ``inverse`` picks (and repeats) rows of every block."""
    start = 0
    for block in blocks:
        block = np.asarray(block).reshape(len(block), -1)
        out[:, start : start + block.shape[1]] = block if inverse is None else block[inverse]
        start += block.shape[1]
    if start != out.shape[1]:
        raise FusionfeatError(f"the blocks fill {start} of X's {out.shape[1]} columns: their shapes changed")
