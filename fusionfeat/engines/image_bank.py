"""Decode every image once: a uint8 ``(N, 3, S, S)`` file that fine-tuning reads for all folds, backbones and epochs.

Fine-tuning runs many epochs over the same images for each fold and backbone; decoding BMP/TIFF files and
resizing them each time would cost more than the GPU's forward and backward passes. The bank holds exactly
what ``Preprocess.load`` gives for view 0 (so fine-tuned and frozen features see the same pixels), as a
memory-mapped file in the fine-tuning work folder; on a CUDA device it is copied to the GPU when it fits.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from fusionfeat import runtime
from fusionfeat.data.images import Preprocess
from fusionfeat.data.loader import ImageDataset, collate_images
from fusionfeat.fsio import atomic_write_bytes, fsync_dir
from fusionfeat.interrupts import ignore_in_worker

GPU_SHARE = 0.25  # copy the bank to the GPU when it takes at most this share of the free GPU memory


@dataclass
class ImageBank:
    """Decoded images (view 0) of every sample, with the per-sample decode outcome."""

    images: np.ndarray | torch.Tensor  # (N, 3, S, S) uint8: a read-only memmap, or a tensor on the GPU
    ok: np.ndarray  # (N,) bool
    sha256: list[str]
    errors: list[str]

    def __len__(self) -> int:
        return len(self.ok)

    def batch(self, rows: np.ndarray, device: torch.device) -> torch.Tensor:
        """uint8 ``(B, 3, S, S)`` of ``rows`` on ``device``."""
        if isinstance(self.images, torch.Tensor):
            return self.images[torch.as_tensor(rows, device=self.images.device)].to(device, non_blocking=True)
        order = np.argsort(rows, kind="stable")
        picked = np.empty((len(rows), *self.images.shape[1:]), dtype=np.uint8)
        picked[order] = self.images[np.asarray(rows)[order]]  # sorted reads are kind to the page cache
        tensor = torch.from_numpy(picked)
        if device.type == "cuda":
            tensor = tensor.pin_memory()
        return tensor.to(device, non_blocking=True)

    def to_device(self, device: torch.device) -> ImageBank:
        """Copy the images to a CUDA device if they fit comfortably; otherwise keep reading the memmap."""
        if device.type != "cuda" or isinstance(self.images, torch.Tensor):
            return self
        free, _ = torch.cuda.mem_get_info(device)
        if self.images.nbytes > GPU_SHARE * free:
            return self
        return replace(self, images=torch.from_numpy(np.ascontiguousarray(self.images)).to(device))


def bank_key(paths: Sequence[str], preprocess: Preprocess) -> str:
    """What the bank's pixels depend on: the files and the resizing (not the normalisation)."""
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.encode() + b"\n")
    digest.update(json.dumps([preprocess.input_size, list(preprocess.fill)]).encode())
    return digest.hexdigest()[:16]


def bank_paths(folder: Path, key: str, size: int) -> tuple[Path, Path]:
    base = folder / f"images_{size}px_{key}"
    return base.with_suffix(".npy"), base.with_suffix(".json")


def build_bank(paths: Sequence[str], preprocess: Preprocess, folder: Path, workers: int | None,
               device: torch.device, progress: bool) -> Path:
    """Decode ``paths`` into the bank file in ``folder`` unless it is there already; returns its index file.

    Written under temporary names and renamed, so a killed run leaves no half bank behind.
    """
    preprocess = replace(preprocess, views="1")
    key = bank_key(paths, preprocess)
    data_path, index_path = bank_paths(folder, key, preprocess.input_size)
    if index_path.is_file() and data_path.is_file():
        return index_path
    folder.mkdir(parents=True, exist_ok=True)
    for stale in [*folder.glob("images_*px_*"), *folder.glob(".images_*px_*")]:
        stale.unlink(missing_ok=True)
    size = preprocess.input_size
    tmp = data_path.with_name(f".{data_path.name}.{os.getpid()}.tmp")
    images = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), 3, size, size))
    ok = np.zeros(len(paths), dtype=bool)
    sha256, errors = [""] * len(paths), [""] * len(paths)
    batches = [list(range(lo, min(len(paths), lo + 64))) for lo in range(0, len(paths), 64)]
    workers = runtime.default_workers(device) if workers is None else workers
    loader = DataLoader(ImageDataset(list(paths), preprocess), batch_sampler=batches, num_workers=workers,
                        collate_fn=collate_images, prefetch_factor=4 if workers else None,
                        worker_init_fn=ignore_in_worker)
    bar = runtime.progress(len(paths), progress, "decode images")
    try:
        for rows, decoded, digests, errs in loader:
            good = np.array([not e for e in errs], dtype=bool)
            if decoded is not None:
                images[rows[good]] = decoded[:, 0].numpy()
            ok[rows] = good
            for row, digest, err in zip(rows.tolist(), digests, errs, strict=True):
                sha256[row], errors[row] = digest, err
            bar.update(len(rows))
    finally:
        bar.close()
    images.flush()
    del images
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, data_path)
    fsync_dir(folder)
    index = {"key": key, "n": len(paths), "input_size": size, "ok": ok.tolist(), "sha256": sha256, "errors": errors}
    atomic_write_bytes(index_path, lambda fh: fh.write(json.dumps(index).encode()))
    return index_path


def open_bank(index_path: Path) -> ImageBank:
    """Open a built bank read-only (memory-mapped)."""
    index = json.loads(index_path.read_text(encoding="utf-8"))
    images = np.load(index_path.with_suffix(".npy"), mmap_mode="r")
    return ImageBank(images, np.asarray(index["ok"], dtype=bool), index["sha256"], index["errors"])
