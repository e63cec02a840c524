"""The protocols' names and limits, option checks, and the leakage check every non-paper split passes."""

from __future__ import annotations

import numpy as np

from fusionfeat.errors import FusionfeatError

PROTOCOLS: tuple[str, ...] = ("grouped", "stratified", "predefined", "paper")


BALANCES: tuple[str, ...] = ("weight", "augment", "none")


DIHEDRAL_VIEWS = 8


DEFAULT_FOLDS = 5


DEFAULT_SEED = 0


class LeakageError(AssertionError):
    """An image or a subject is on both sides of a split that must keep them apart: a bug, never input."""


def check_split(train_samples: np.ndarray, test_samples: np.ndarray, groups: np.ndarray, by_subject: bool,
                sha256: np.ndarray | None = None) -> None:
    """Raise ``LeakageError`` if an image (any view), or with ``by_subject`` a subject, is on both sides.

    An image is a row, and, given ``sha256`` (the store's per-sample image hashes), also its content: two rows
    holding the same bytes under different names count as one image.
    """
    shared = np.intersect1d(train_samples, test_samples)
    if shared.size:
        raise LeakageError(f"{shared.size} images are in both train and test (first: sample {shared[0]})")
    if sha256 is not None:
        sha256 = np.asarray(sha256).astype(str)
        same = (set(sha256[train_samples]) & set(sha256[test_samples])) - {""}
        if same:
            digest = sorted(same)[0]
            rows = np.flatnonzero(sha256 == digest)
            raise LeakageError(f"{len(same)} image(s) are in both train and test under different rows (same "
                               f"SHA-256 {digest[:12]}…, samples {', '.join(map(str, rows[:4]))}); "
                               "deduplicate the data (`fusionfeat extract --dedupe`)")
    if by_subject:
        groups = np.asarray(groups).astype(str)
        both = (set(groups[train_samples]) & set(groups[test_samples])) - {""}
        if both:
            raise LeakageError(f"{len(both)} subjects are in both train and test (e.g. {sorted(both)[0]!r})")


def check_choice(option: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise FusionfeatError(f"unknown --{option} {value!r}: choose one of {', '.join(choices)}")


def check_folds(n_folds: int) -> None:
    if n_folds < 2:
        raise FusionfeatError(f"--folds must be 2 or more, got {n_folds}")


def check_predefined(fold: np.ndarray) -> None:
    present = np.unique(fold[fold >= 0])
    if len(present) == 0:
        raise FusionfeatError(
            "--cv predefined needs the dataset's own folds, but every image has fold -1: use --cv grouped or stratified"
        )
    if len(present) < 2:
        raise FusionfeatError(f"--cv predefined needs 2 or more dataset folds; found only fold {present[0]}")


def need_views(n_views: int, option: str) -> None:
    if n_views != DIHEDRAL_VIEWS:
        raise FusionfeatError(
            f"{option} needs the 8 rotated/mirrored views of every image, but the store holds {n_views} "
            "view(s): re-extract with --views dihedral8"
        )
