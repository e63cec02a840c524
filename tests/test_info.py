"""``fusionfeat info``: the sample counts it prints add up to the store's samples, skipped ones included."""

from __future__ import annotations

import re

import numpy as np
from click.testing import CliRunner

from fusionfeat.cli import main
from fusionfeat.store import FeatureStore
from tests.conftest import write_cells


def test_sample_counts_add_up_with_the_skipped_images_named(tmp_path):
    cells = write_cells(tmp_path / "cells", per_class=4, size=32)
    (cells / "hem" / "cell_002.png").write_bytes(b"not an image")
    store = tmp_path / "s.h5"
    extracted = CliRunner().invoke(main, ["extract", str(cells), "-o", str(store), "--backbones", "resnet18",
                                          "--weights", "random", "--input-size", "32", "--workers", "0",
                                          "--on-error", "skip", "--quiet", "--device", "cpu"])
    assert extracted.exit_code == 0, extracted.output
    result = CliRunner().invoke(main, ["info", str(store)])
    assert result.exit_code == 0, result.output
    (line,) = [x for x in result.stdout.splitlines() if x.startswith("samples ")]
    with FeatureStore.open(store) as fs:
        usable = np.bincount(fs.labels[fs.ok], minlength=2)
        counts = ", ".join(f"{c} {n}" for c, n in zip(fs.classes, usable, strict=True))
        assert line == f"samples    {fs.n_samples} ({counts}, 1 skipped (listed below); positive class all)"
        assert fs.n_samples == 8 and usable.sum() == 7
    total, *parts = (int(n) for n in re.findall(r"\d+", line))
    assert total == sum(parts)  # all 4 + hem 3 + 1 skipped
    assert "skipped    1" in result.stdout and "hem/cell_002.png: " in result.stdout
