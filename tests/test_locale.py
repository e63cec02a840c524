"""Under ``LC_ALL=C`` / ``LANG=C`` a valid UTF-8 file or class name is accepted and written as it is, also when
Python's UTF-8 mode is switched off (``PYTHONUTF8=0``, where file names would otherwise read as ASCII)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from tests.conftest import write_cells
from tests.faults import run_cli

C_LOCALES = [{"LC_ALL": "C", "LANG": "C"}, {"LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0"},
             {"LC_ALL": "POSIX", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0"}]


@pytest.fixture
def utf8_cells(tmp_path: Path) -> Path:
    cells = write_cells(tmp_path / "cells", per_class=3, size=32)
    (cells / "all" / "cell_000.png").rename(cells / "all" / "Blüte_é—ü.png")
    (cells / "hem").rename(cells / "hém")
    return tmp_path


@pytest.mark.parametrize("env", C_LOCALES, ids=lambda e: ",".join(f"{k}={v}" for k, v in e.items()))
def test_a_utf8_name_is_accepted_under_the_c_locale(utf8_cells, env):
    rc, lines, out = run_cli(["manifest", "cells", "-o", "m.csv", "--positive", "all"], utf8_cells, env=env)
    assert rc == 0 and lines == [], lines
    assert "hém 3" in out
    with open(utf8_cells / "m.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["path"] for r in rows} >= {"cells/all/Blüte_é—ü.png", "cells/hém/cell_000.png"}
    assert {r["label"] for r in rows} == {"all", "hém"}


def test_extract_and_info_under_the_c_locale_without_utf8_mode(utf8_cells):
    env = C_LOCALES[1]
    rc, lines, _ = run_cli(["extract", "cells", "-o", "s.h5", "--weights", "random", "--input-size", "32",
                            "--backbones", "resnet18", "--device", "cpu", "--quiet", "--workers", "0",
                            "--positive", "all"], utf8_cells, env=env)
    assert rc == 0, lines
    from fusionfeat.store import FeatureStore

    with FeatureStore.open(utf8_cells / "s.h5") as fs:
        assert {"all/Blüte_é—ü.png", "hém/cell_000.png"} <= set(fs.paths)
        assert "hém" in fs.classes


def test_the_library_writes_utf8_whatever_the_locale(tmp_path):
    """Called as a library (no CLI restart into UTF-8 mode), under an ASCII locale with UTF-8 mode off, a
    manifest with non-ASCII class names is still written in UTF-8, which is what fusionfeat reads back."""
    import os
    import subprocess
    import sys

    cells = write_cells(tmp_path / "cells", per_class=3, size=32)
    rows = [f"{p.relative_to(tmp_path).as_posix()},{'all' if p.parent.name == 'all' else 'hém'}\n"
            for p in sorted(cells.rglob("*.png"))]
    (tmp_path / "in.csv").write_text("path,label\n" + "".join(rows), encoding="utf-8")
    code = ("from fusionfeat.data.manifest import build_manifest, write_manifest; "
            "m = build_manifest('in.csv', 'csv', positive='all'); write_manifest(m, 'm.csv'); "
            "print(len(build_manifest('m.csv', 'csv', positive='all').samples))")
    env = {**os.environ, "LC_ALL": "C", "LANG": "C", "PYTHONUTF8": "0", "PYTHONCOERCECLOCALE": "0",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "6"
    assert "hém" in (tmp_path / "m.csv").read_bytes().decode("utf-8")
