"""Rows ``(sample, view)`` of a run: the paper's expanded table, and the stored rotated/mirrored copies that
balance a training fold (``--balance augment``), each appended once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Rows:
    """A table of rows: which stored sample, and which of its views (0 = the original image)."""

    sample: np.ndarray
    view: np.ndarray

    def __len__(self) -> int:
        return len(self.sample)


def paper_rows(labels: np.ndarray, ok: np.ndarray, n_views: int, seed: int) -> tuple[Rows, int]:
    """The paper's expanded table: every kept original, then minority copies (views 1..7) up to balance."""
    kept = np.flatnonzero(np.asarray(ok, dtype=bool))
    priority = copy_priority(labels, ok, n_views, seed, 0)
    counts = np.bincount(labels[kept])
    extra = []
    for c in np.flatnonzero((counts > 0) & (counts < counts.max())):
        of_c = priority.sample[labels[priority.sample] == c], priority.view[labels[priority.sample] == c]
        need = int(counts.max() - counts[c])
        extra.append((of_c[0][:need], of_c[1][:need]))
    sample = np.concatenate([kept] + [s for s, _ in extra])
    view = np.concatenate([np.zeros(len(kept), dtype=np.int64)] + [v for _, v in extra])
    return Rows(sample.astype(np.int64), view.astype(np.int64)), len(sample) - len(kept)


def copy_priority(labels: np.ndarray, ok: np.ndarray, n_views: int, seed: int, repeat: int) -> Rows:
    """All copies (sample, view 1..V-1) of kept samples, round-robin: each sample's first copy, then its
    second, ... in a seeded order, so any prefix spreads copies over many images and few views are read."""
    rng = np.random.default_rng([seed, repeat, 7])
    kept = rng.permutation(np.flatnonzero(np.asarray(ok, dtype=bool)))
    views = np.stack([rng.permutation(np.arange(1, n_views)) for _ in kept]) if len(kept) else None
    if views is None or n_views < 2:
        return Rows(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    return Rows(np.tile(kept, n_views - 1), views.T.reshape(-1).astype(np.int64))


def minority_copies(labels: np.ndarray, ok: np.ndarray, n_views: int, seed: int, rows: Rows,
                    train: np.ndarray, repeat: int = 0) -> Rows:
    """Stored views (1..V-1) of training images of under-represented classes, until each class matches the
    largest: the leak-free augmentation ``--balance augment`` uses, for ``train`` positions into ``rows``."""
    return fold_copies(copy_priority(labels, ok, n_views, seed, repeat), rows, train, labels)


def fold_copies(priority: Rows, rows: Rows, train: np.ndarray, labels: np.ndarray) -> Rows:
    """Copies of training images of under-represented classes, until each class matches the largest."""
    train_samples = rows.sample[train]
    counts = np.bincount(labels[train_samples], minlength=labels.max(initial=0) + 1)
    width = int(max(priority.view.max(initial=0), rows.view.max(initial=0))) + 1
    already = np.isin(priority.sample * width + priority.view, train_samples * width + rows.view[train])
    in_train = np.isin(priority.sample, train_samples) & ~already
    picked_s, picked_v = [], []
    for c in np.flatnonzero((counts > 0) & (counts < counts.max())):
        at = np.flatnonzero(in_train & (labels[priority.sample] == c))[: int(counts.max() - counts[c])]
        picked_s.append(priority.sample[at])
        picked_v.append(priority.view[at])
    if not picked_s:
        return Rows(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64))
    return Rows(np.concatenate(picked_s), np.concatenate(picked_v))


class RowTable:
    """Evaluation rows plus copies appended once each, addressed by position."""

    def __init__(self, rows: Rows):
        self._sample = list(rows.sample.tolist())
        self._view = list(rows.view.tolist())
        self._at = {(s, v): i for i, (s, v) in enumerate(zip(self._sample, self._view, strict=True))}

    def add(self, rows: Rows) -> np.ndarray:
        out = np.empty(len(rows), dtype=np.int64)
        for i, key in enumerate(zip(rows.sample.tolist(), rows.view.tolist(), strict=True)):
            if key not in self._at:
                self._at[key] = len(self._sample)
                self._sample.append(key[0])
                self._view.append(key[1])
            out[i] = self._at[key]
        return out

    def rows(self) -> Rows:
        return Rows(np.asarray(self._sample, dtype=np.int64), np.asarray(self._view, dtype=np.int64))
