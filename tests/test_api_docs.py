"""The Python code in the docs runs as written: docs/api.md's quick start, and docs/store.md's reading snippet."""

from __future__ import annotations

import re
import tempfile

import pytest

import fusionfeat
from fusionfeat.errors import RandomWeightsWarning
from tests.conftest import REPO, write_cells

pytestmark = pytest.mark.usefixtures("single_torch_thread")


def python_blocks(doc: str) -> list[str]:
    """The ```python blocks of a markdown file under docs/, in order."""
    return re.findall(r"^```python\n(.*?)^```", (REPO / "docs" / doc).read_text(), flags=re.S | re.M)


def run_blocks(blocks: list[str], doc: str) -> dict:
    namespace: dict = {"__name__": "__main__"}
    exec(compile("\n".join(blocks), f"docs/{doc}", "exec"), namespace)  # noqa: S102 - our own docs
    return namespace


def test_api_quick_start_runs_as_written(tmp_path, monkeypatch, capsys):
    blocks = python_blocks("api.md")
    assert len(blocks) >= 3
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # its temporary folder lands in pytest's
    with pytest.warns(RandomWeightsWarning):
        ns = run_blocks(blocks, "api.md")
    out = capsys.readouterr().out
    assert "roc_auc_mean" in out and "logreg" in out and "svm" in out
    work = ns["work"]
    assert work.parent == tmp_path
    assert (work / "cells.h5").is_file() and (work / "model" / "bundle.json").is_file()
    assert (work / "labels.csv").is_file()
    assert sum(ns["labels"].values()) == 4 and len(ns["labels"].to_frame()) == 4
    assert list(ns["table"].index) == ["logreg", "svm"]


def test_store_reading_snippet_runs_as_written(tmp_path, monkeypatch):
    """docs/store.md reads cnmc.h5 with resnet18 and vgg16 features: a tiny one stands in for it."""
    (block,) = python_blocks("store.md")
    cells = write_cells(tmp_path / "cells", per_class=4, size=32)
    pair = ["resnet18", "vgg16"]
    config = fusionfeat.ExtractConfig(backbones=pair, weights=dict.fromkeys(pair, "random"),
                                      preprocess=fusionfeat.Preprocess(input_size=32), workers=0, progress=False)
    with pytest.warns(RandomWeightsWarning):
        fusionfeat.extract(fusionfeat.build_manifest(cells), tmp_path / "cnmc.h5", config)
    monkeypatch.chdir(tmp_path)
    ns = run_blocks([block], "store.md")
    assert ns["X"].shape == (8, 512) and ns["T"].shape[0] == 8 and len(ns["y"]) == 8
