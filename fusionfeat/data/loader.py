"""Images → decoded tensors for a ``DataLoader``: each image is decoded once (in loader workers), and a file
that cannot be decoded comes back as a record with its reason, never as a worker crash."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from fusionfeat.data.images import Preprocess
from fusionfeat.errors import ImageDecodeError


class ImageDataset(Dataset):
    """Item ``row`` → ``(row, tensor | None, sha256, error)``: the preprocessed views of ``paths[row]``."""

    def __init__(self, paths: Sequence[str], preprocess: Preprocess):
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, row: int):
        try:
            tensor, digest = self.preprocess.load(self.paths[row])
            return row, tensor, digest, ""
        except ImageDecodeError as exc:
            return row, None, _sha256_or_empty(self.paths[row]), exc.reason


def _sha256_or_empty(path: str) -> str:
    try:
        with open(path, "rb") as fh:
            return hashlib.sha256(fh.read()).hexdigest()
    except OSError:
        return ""


def collate_images(items) -> tuple[np.ndarray, torch.Tensor | None, list[str], list[str]]:
    """``ImageDataset`` items → ``(rows, images of the decoded rows stacked (or None), sha256s, errors)``."""
    rows = np.array([it[0] for it in items], dtype=np.int64)
    good = [it[1] for it in items if it[1] is not None]
    images = torch.stack(good) if good else None
    return rows, images, [it[2] for it in items], [it[3] for it in items]
