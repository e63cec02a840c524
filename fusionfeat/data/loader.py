"""Images → decoded tensors for a ``DataLoader``: each image is decoded once (in loader workers), and a file
that cannot be decoded comes back as a record with its reason, never as a worker crash."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from fusionfeat.data.content import file_digest
from fusionfeat.data.images import Preprocess
from fusionfeat.errors import ImageDecodeError


class ImageDataset(Dataset):
    """Item ``row`` → ``(row, tensor | None, sha256, error)``: the preprocessed views of ``paths[row]``.

    ``digests`` (one per path) are SHA-256s computed already, so no file is hashed twice; rows in ``skip``
    are not read at all and come back with no tensor and their reason (e.g. "duplicate of <path>").
    """

    def __init__(self, paths: Sequence[str], preprocess: Preprocess, digests: Sequence[str] | None = None,
                 skip: Mapping[int, str] | None = None):
        if digests is not None and len(digests) != len(paths):
            raise ValueError(f"{len(digests)} digests for {len(paths)} paths")
        self.paths = paths
        self.preprocess = preprocess
        self.digests = digests
        self.skip = dict(skip or {})

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        known = None if self.digests is None else self.digests[row]
        if row in self.skip:
            return row, None, known if known is not None else file_digest(self.paths[row]), self.skip[row]
        try:
            tensor, digest = self.preprocess.load(self.paths[row], known or None)  # "": unreadable then, hash now
            return row, tensor, digest, ""
        except ImageDecodeError as exc:
            return row, None, known if known is not None else file_digest(self.paths[row]), exc.reason


def collate_images(items) -> tuple[np.ndarray, torch.Tensor | None, list[str], list[str]]:
    """``ImageDataset`` items → ``(rows, images of the decoded rows stacked (or None), sha256s, errors)``."""
    rows = np.array([it[0] for it in items], dtype=np.int64)
    good = [it[1] for it in items if it[1] is not None]
    images = torch.stack(good) if good else None
    return rows, images, [it[2] for it in items], [it[3] for it in items]
