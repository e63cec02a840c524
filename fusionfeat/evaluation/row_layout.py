"""A split's training and test rows laid out in place as two contiguous views of one shared X (``RowLayout``)."""

from __future__ import annotations

import numpy as np

from fusionfeat.protocols import Split


class RowLayout:
    """Where each row of a shared X currently sits, so that a split's training and test rows can be laid out
    as two contiguous views of X instead of copied out of it.

    ``arrange(X, split)`` moves X's rows in place (cycle by cycle, one row of scratch memory) so that
    ``X[:n_train]`` holds ``split.train`` and the next ``n_test`` rows ``split.test``, each in the split's
    order: the same matrices ``X[split.train]`` and ``X[split.test]`` would copy, with no copy, so a token
    head's fit needs X once (a C-NMC paper run's 14,544 token rows are 1.4 GiB of float16), not twice.
    """

    def __init__(self, n_rows: int):
        self.row_at = np.arange(n_rows)  # row_at[i]: the original row now at position i

    def arrange(self, X: np.ndarray, split: Split) -> tuple[np.ndarray, np.ndarray]:
        """Rearrange ``X`` in place for ``split``; returns the (train, test) views."""
        n_train, n_test = len(split.train), len(split.test)
        position = np.empty_like(self.row_at)  # position[r]: where original row r sits now
        position[self.row_at] = np.arange(len(self.row_at))
        used = np.concatenate([split.train, split.test]).astype(np.int64)
        if len(np.unique(used)) != len(used):  # a row on both sides or twice: not a layout, copy the rows
            return X[position[split.train]], X[position[split.test]]
        rest = np.setdiff1d(np.arange(len(self.row_at)), used)
        want = np.concatenate([used, rest])
        permute_rows(X, position[want])
        self.row_at = want
        return X[:n_train], X[n_train : n_train + n_test]


def permute_rows(X: np.ndarray, source: np.ndarray) -> None:
    """``X[:] = X[source]`` in place for a permutation ``source``, with one row of scratch memory."""
    done = source == np.arange(len(source))
    scratch = np.empty_like(X[:1])
    for start in np.flatnonzero(~done):
        if done[start]:
            continue
        scratch[0] = X[start]
        i = start
        while True:
            done[i] = True
            j = source[i]
            if j == start:
                X[i] = scratch[0]
                break
            X[i] = X[j]
            i = j
