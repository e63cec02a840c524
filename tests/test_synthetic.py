"""The synthetic C-NMC-like generator: official layout, determinism, image format, learnable classes."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from fusionfeat.data.synthetic import generate_class_folders, generate_cnmc_like
from fusionfeat.errors import FusionfeatError

NAME = {
    "all": re.compile(r"UID_(\d+)_(\d+)_(\d+)_all\.bmp"),
    "hem": re.compile(r"UID_(H\d+)_(\d+)_(\d+)_hem\.bmp"),
}
SMALL = dict(n_subjects_all=4, n_subjects_hem=3, cells_per_subject=5, size=48, n_folds=3)


def _images(root: Path) -> list[Path]:
    return sorted((root / "training_data").glob("fold_*/*/*"))


def _contents(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in _images(root)}


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_cnmc_like(tmp_path_factory.mktemp("small"), seed=0, **SMALL)


def test_same_seed_gives_identical_bytes_and_another_seed_differs(small: Path, tmp_path: Path) -> None:
    again = _contents(generate_cnmc_like(tmp_path / "again", seed=0, **SMALL))
    assert again == _contents(small)
    other = _contents(generate_cnmc_like(tmp_path / "other", seed=1, **SMALL))
    assert set(other.values()).isdisjoint(again.values())


def test_layout_follows_official_cnmc_naming(small: Path) -> None:
    cells_by_subject: dict[str, int] = {}
    for path in _images(small):
        fold_dir, class_dir = path.parent.parent.name, path.parent.name
        assert re.fullmatch(r"fold_[0-2]", fold_dir)
        match = NAME[class_dir].fullmatch(path.name)
        assert match, path.name
        cells_by_subject[match.group(1)] = cells_by_subject.get(match.group(1), 0) + 1
    assert cells_by_subject == {**{str(p): 5 for p in range(1, 5)}, **{f"H{s}": 5 for s in range(1, 4)}}


def test_folds_are_subject_disjoint_and_hold_both_classes(small: Path) -> None:
    folds_of_subject: dict[str, set[str]] = {}
    classes_in_fold: dict[str, set[str]] = {}
    for path in _images(small):
        subject = path.name.split("_")[1]
        folds_of_subject.setdefault(subject, set()).add(path.parent.parent.name)
        classes_in_fold.setdefault(path.parent.parent.name, set()).add(path.parent.name)
    assert all(len(folds) == 1 for folds in folds_of_subject.values())
    assert classes_in_fold == {f"fold_{k}": {"all", "hem"} for k in range(3)}


def test_images_are_24_bit_rgb_bmp_on_black_background(small: Path) -> None:
    for path in _images(small):
        header = path.read_bytes()[:30]
        assert header[:2] == b"BM" and int.from_bytes(header[28:30], "little") == 24
        with Image.open(path) as image:
            assert (image.format, image.mode, image.size) == ("BMP", "RGB", (48, 48))
            pixels = np.asarray(image)
        for corner in (pixels[:4, :4], pixels[:4, -4:], pixels[-4:, :4], pixels[-4:, -4:]):
            assert not corner.any()
        assert 0.05 < pixels.any(axis=2).mean() < 0.5  # one cell, neither a speck nor the whole frame


def test_png_format_and_returned_root(tmp_path: Path) -> None:
    root = generate_cnmc_like(tmp_path, n_subjects_all=1, n_subjects_hem=1, cells_per_subject=2,
                              size=32, n_folds=1, fmt="png")
    assert root == tmp_path
    names = sorted(path.name for path in _images(root))
    assert len(names) == 4 and all(name.endswith(".png") for name in names)


def test_class_folders(tmp_path: Path) -> None:
    root = generate_class_folders(tmp_path / "folders", n_per_class=3, size=40, seed=0)
    for class_name in ("all", "hem"):
        files = sorted((root / class_name).iterdir())
        assert [path.name for path in files] == [f"{class_name}_{i:03d}.png" for i in range(3)]
        with Image.open(files[0]) as image:
            assert (image.mode, image.size) == ("RGB", (40, 40))


@pytest.mark.parametrize(
    "kwargs, option",
    [(dict(fmt="jpg"), "jpg"), (dict(n_folds=5), "n_folds"), (dict(cells_per_subject=0), "cells_per_subject")],
)
def test_bad_options_raise_user_errors(tmp_path: Path, kwargs: dict, option: str) -> None:
    with pytest.raises(FusionfeatError, match=option):
        generate_cnmc_like(tmp_path, **kwargs)


def _hand_features(path: Path) -> list[float]:
    """Cell area, mean and spread of grey level, and the fraction of dark (clumped chromatin) pixels."""
    with Image.open(path) as image:
        grey = np.asarray(image, dtype=float).mean(axis=2)
    cell = grey[grey > 0]
    return [cell.size / grey.size, cell.mean(), cell.std(), (cell < 0.85 * np.median(cell)).mean()]


def test_classes_are_learnable_on_held_out_subjects(tmp_path: Path) -> None:
    root = generate_cnmc_like(tmp_path, n_subjects_all=6, n_subjects_hem=6, cells_per_subject=20, size=64)
    paths = _images(root)
    features = np.array([_hand_features(path) for path in paths])
    labels = np.array([path.parent.name == "all" for path in paths])
    folds = np.array([path.parent.parent.name for path in paths])
    correct = 0
    for fold in np.unique(folds):
        test = folds == fold
        model = make_pipeline(StandardScaler(), LogisticRegression())
        model.fit(features[~test], labels[~test])
        correct += (model.predict(features[test]) == labels[test]).sum()
    assert correct / len(paths) > 0.75
