"""Non-finite features at extraction are recorded per image (``/samples/nonfinite``) and left out, with one warning
naming how many and the first paths; ``fit`` and ``train`` then run on the rest. A store whose features turn
non-finite after extraction is refused at ``fit``/``train`` in one line naming the rows and paths and
pointing at the record."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

import fusionfeat.engines.extract as extract_engine
from fusionfeat.cli import main
from fusionfeat.store import FeatureStore
from tests.conftest import write_cells

pytestmark = pytest.mark.usefixtures("single_torch_thread")
EXTRACT = ("--weights", "random", "--input-size", "32", "--device", "cpu", "--quiet", "--workers", "0",
           "--batch-size", "4")


def run(*args: object):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.fixture(scope="module")
def poisoned(tmp_path_factory) -> tuple[Path, list[str]]:
    """A store where the first image of the first two batches gave NaN (resnet18) or inf (vgg16) features."""
    root = tmp_path_factory.mktemp("nonfinite")
    write_cells(root / "cells", per_class=6, size=32)
    forward, calls = extract_engine._forward, []

    def poisoning(models, images, *args, **kwargs):
        out = forward(models, images, *args, **kwargs)
        calls.append(1)
        if len(calls) == 1:
            out["resnet18"][0][0, 0, 3] = np.nan
        if len(calls) == 2:
            out["vgg16"][0][0, 0, :] = np.inf
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(extract_engine, "_forward", poisoning)
        result = run("extract", root / "cells", "-o", root / "s.h5", *EXTRACT)
    assert result.exit_code == 0, result.output
    return root, result.output.splitlines()


def test_extraction_records_and_names_the_images(poisoned):
    root, lines = poisoned
    with FeatureStore.open(root / "s.h5") as fs:
        assert fs.has_nonfinite_record
        assert np.flatnonzero(fs.nonfinite).tolist() == [0, 4]
        assert not fs.ok[[0, 4]].any() and fs.ok.sum() == len(fs.ok) - 2
        assert "non-finite (NaN or infinite) resnet18 features" in fs.errors[0]
        assert "non-finite (NaN or infinite) vgg16 features" in fs.errors[4]
        first = [fs.paths[0], fs.paths[4]]
    warned = [line for line in lines if line.startswith("warning:") and "non-finite" in line]
    assert len(warned) == 1, lines
    assert "2 image(s)" in warned[0] and all(p in warned[0] for p in first) and "/samples/nonfinite" in warned[0]


def test_fit_and_train_leave_the_recorded_images_out(poisoned, tmp_path):
    root, _ = poisoned
    result = run("fit", root / "s.h5", "--head", "logreg", "--cv", "stratified", "--folds", "2", "-o",
                 tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    with FeatureStore.open(root / "s.h5") as fs:
        left_out = {fs.paths[0], fs.paths[4]}
        kept = set(fs.paths) - left_out
    with open(tmp_path / "run" / "predictions.csv", newline="") as fh:
        assert {row["path"] for row in csv.DictReader(fh)} == kept
    result = run("train", root / "s.h5", "--head", "logreg", "-o", tmp_path / "bundle", "--quiet")
    assert result.exit_code == 0, result.output


def test_features_damaged_after_extraction_are_refused_naming_rows_and_record(poisoned, tmp_path):
    root, _ = poisoned
    shutil.copy(root / "s.h5", tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r+") as h5:
        h5["features/resnet18/pooled"][7, 0, 0] = np.inf
        path = h5["samples/path"].asstr()[7]
    for args in (("fit", tmp_path / "s.h5", "--head", "logreg", "--cv", "stratified", "--folds", "2", "-o",
                  tmp_path / "run", "--quiet"),
                 ("train", tmp_path / "s.h5", "--head", "logreg", "-o", tmp_path / "bundle", "--quiet")):
        result = run(*args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1, result.output
        assert f"row 7 {path}" in lines[0] and "/samples/nonfinite record" in lines[0]
    assert not (tmp_path / "run").exists() and not (tmp_path / "bundle").exists()


def test_a_store_made_before_the_record_still_reads(poisoned, tmp_path):
    root, _ = poisoned
    shutil.copy(root / "s.h5", tmp_path / "s.h5")
    with h5py.File(tmp_path / "s.h5", "r+") as h5:
        del h5["samples/nonfinite"]
    with FeatureStore.open(tmp_path / "s.h5") as fs:
        assert not fs.has_nonfinite_record and not fs.nonfinite.any()
    assert run("info", tmp_path / "s.h5").exit_code == 0
