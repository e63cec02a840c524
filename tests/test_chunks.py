"""Pre-compressed token chunks read back exactly like chunks written through h5py's own filters."""

from __future__ import annotations

import h5py
import numpy as np

from fusionfeat.store.chunks import ChunkEncoder, decode_chunk, encode_chunk, write_chunks


def test_direct_chunks_equal_filtered_writes(tmp_path):
    rng = np.random.default_rng(0)
    tokens = np.maximum(rng.standard_normal((5, 2, 4, 8)), 0).astype(np.float16)
    assert np.array_equal(decode_chunk(encode_chunk(tokens[1, 1]), np.float16, (4, 8)), tokens[1, 1])
    encoder = ChunkEncoder(threads=2)
    blob, offsets = encoder.encode(tokens)
    encoder.close()
    assert len(offsets) == 11 and offsets[-1] == len(blob)
    with h5py.File(tmp_path / "t.h5", "w") as h5:
        kw = dict(shape=(7, 2, 4, 8), dtype="f2", chunks=(1, 1, 4, 8), compression="gzip", shuffle=True)
        direct, filtered = h5.create_dataset("direct", **kw), h5.create_dataset("filtered", **kw)
        write_chunks(direct, 2, blob, offsets)
        filtered[2:7] = tokens
    with h5py.File(tmp_path / "t.h5", "r") as h5:
        np.testing.assert_array_equal(h5["direct"][2:7], tokens)
        np.testing.assert_array_equal(h5["direct"][:], h5["filtered"][:])
