"""Token maps compressed exactly as HDF5's shuffle + deflate filters would, but off the critical path.

Compressing float16 token maps is the slowest part of writing a store (a few hundred images/s per core),
slower than a GPU computes them. So each batch's chunks are compressed in a thread pool while the next
batch is on the device, kept compressed in the committed batch file, and copied into the HDF5 file
verbatim with ``write_direct_chunk``: the store reads back exactly like one written by h5py's filters.
"""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

DEFLATE_LEVEL = 1


def encode_chunk(chunk: np.ndarray) -> bytes:
    """One chunk through HDF5's filter pipeline: byte shuffle, then zlib deflate."""
    raw = np.ascontiguousarray(chunk)
    shuffled = raw.view(np.uint8).reshape(-1, raw.dtype.itemsize).T.tobytes()
    return zlib.compress(shuffled, DEFLATE_LEVEL)


def decode_chunk(data: bytes, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of ``encode_chunk`` (for tests and tools)."""
    itemsize = np.dtype(dtype).itemsize
    planes = np.frombuffer(zlib.decompress(data), np.uint8).reshape(itemsize, -1)
    return planes.T.copy().view(dtype).reshape(shape)


class ChunkEncoder:
    """A thread pool that compresses per-sample, per-view token chunks (zlib releases the GIL)."""

    def __init__(self, threads: int | None = None):
        self._pool = ThreadPoolExecutor(max_workers=threads or min(8, os.cpu_count() or 1))

    def encode(self, tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``(B, V, T, C)`` → (concatenated compressed chunks as uint8, offsets of B·V+1 boundaries)."""
        chunks = [tokens[i, v] for i in range(tokens.shape[0]) for v in range(tokens.shape[1])]
        encoded = list(self._pool.map(encode_chunk, chunks))
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        offsets[1:] = np.cumsum([len(e) for e in encoded])
        return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets

    def close(self) -> None:
        self._pool.shutdown(wait=True)


def write_chunks(dataset: h5py.Dataset, first_row: int, blob: np.ndarray, offsets: np.ndarray) -> None:
    """Write pre-compressed ``(1, 1, T, C)`` chunks for rows ``first_row…`` (row-major over rows × views)."""
    n_views = dataset.shape[1]
    data = blob.tobytes()
    for k in range(len(offsets) - 1):
        row, view = divmod(k, n_views)
        dataset.id.write_direct_chunk((first_row + row, view, 0, 0), data[offsets[k]:offsets[k + 1]])
