"""CSV outputs neutralise formula-leading cells (OWASP's advice on CSV injection): a file, class or group name
starting with ``=``, ``+``, ``-``, ``@``, a tab or a carriage return is written with a leading ``'`` (a path
with a leading ``./``, still the same file), numbers stay numbers, and fusionfeat's own manifest reads back
exactly what it was written from."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from fusionfeat.cli import main
from fusionfeat.data.manifest import build_manifest
from tests.conftest import write_cells

pytestmark = pytest.mark.usefixtures("single_torch_thread")

DANGEROUS = ("=", "+", "-", "@", "\t", "\r")


def run(*args: object):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result


def rows(path: Path) -> list[list[str]]:
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def formula_leading(cell: str) -> bool:
    return bool(cell) and cell[0] in DANGEROUS and not _is_number(cell)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return cell.strip().lstrip("+-")[:1].isdigit() or cell.strip().lstrip("+-")[:1] == "."


@pytest.mark.parametrize(("value", "written"), [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
    ("+cmd", "'+cmd"), ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\tx", "'\tx"), ("\rx", "'\rx"),
    ("'=x", "''=x"), ("''", "'''"), ("'plain", "'plain"), ("plain", "plain"), ("", ""),
    ("-0.5", "-0.5"), ("+1e-3", "+1e-3"), ("-3", "-3"), (-3, -3), (0.25, 0.25),
])
def test_safe_cell_prefixes_text_and_keeps_numbers(value, written):
    from fusionfeat.fsio import safe_cell, unsafe_cell  # here, so the command-line tests below run on any version

    assert safe_cell(value) == written
    if isinstance(value, str):
        assert unsafe_cell(written) == value  # the reader undoes it exactly


@pytest.mark.parametrize(("value", "written"), [
    ("=x/a.png", "./=x/a.png"), ("-data/a.png", "./-data/a.png"), ("/abs/=x.png", "/abs/=x.png"),
    ("a/=x.png", "a/=x.png"), ("./=x.png", "././=x.png"),
])
def test_a_path_cell_gets_dot_slash_and_still_names_the_same_file(value, written):
    from fusionfeat.fsio import safe_cell, unsafe_cell

    assert safe_cell(value, path=True) == written
    assert Path(written) == Path(value)
    assert unsafe_cell(written, path=True) == value


@pytest.fixture
def hostile(tmp_path: Path) -> Path:
    """Class folders named like formulas, inside a data folder whose name starts with '='."""
    cells = write_cells(tmp_path / "src", per_class=4, size=32)
    data = tmp_path / "=data"
    data.mkdir()
    shutil.move(cells / "all", data / "@all")
    shutil.move(cells / "hem", data / "+hem")
    (data / "@all" / "cell_000.png").rename(data / "@all" / "-cell.png")
    return tmp_path


def test_manifest_neutralises_cells_and_reads_back_the_same(hostile, monkeypatch):
    monkeypatch.chdir(hostile)
    run("manifest", "=data", "-o", "m.csv", "--positive", "@all")
    table = rows(hostile / "m.csv")
    assert table[0] == ["path", "label", "group", "fold"]
    assert not any(formula_leading(c) for row in table for c in row), table
    assert {r[1] for r in table[1:]} == {"'@all", "'+hem"}
    assert all(r[0].startswith("./=data/") for r in table[1:])
    from_folder, from_csv = build_manifest(hostile / "=data", positive="@all"), build_manifest(hostile / "m.csv",
                                                                                               positive="@all")
    assert list(from_csv.classes) == list(from_folder.classes) == ["+hem", "@all"]
    assert sorted((Path(s.path).relative_to("=data").as_posix(), from_csv.classes[s.label])
                  for s in from_csv.samples) == sorted((s.path, from_folder.classes[s.label])
                                                       for s in from_folder.samples)
    run("manifest", "m.csv", "-o", "again.csv", "--positive", "@all")  # fusionfeat's own manifest, read and rewritten
    assert (hostile / "again.csv").read_bytes() == (hostile / "m.csv").read_bytes()


def test_predictions_subjects_and_tables_hold_no_formula(hostile, monkeypatch):
    monkeypatch.chdir(hostile)
    with open(hostile / "m.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "group"])
        for i, image in enumerate(sorted((hostile / "=data").rglob("*.png"))):
            writer.writerow([image.relative_to(hostile).as_posix(), image.parent.name, f"=S{i // 2}"])
    extract = ("--weights", "random", "--input-size", "32", "--device", "cpu", "--quiet", "--workers", "0")
    run("extract", "m.csv", "-o", "s.h5", "--positive", "@all", *extract)
    run("fit", "s.h5", "--head", "logreg", "--cv", "grouped", "--folds", "2", "-o", "run", "--quiet")
    run("train", "s.h5", "--head", "logreg", "-o", "bundle", "--quiet")
    run("predict", "bundle", "=data", "-o", "p.csv")
    written = [hostile / "p.csv", *sorted((hostile / "run").glob("*.csv"))]
    assert {p.name for p in written} >= {"p.csv", "predictions.csv", "subjects.csv"}
    for path in written:
        table = rows(path)
        assert not any(formula_leading(c) for row in table for c in row), (path.name, table[:3])
    predictions = rows(hostile / "run" / "predictions.csv")
    header = predictions[0]
    assert {r[header.index("group")] for r in predictions[1:]} == {f"'=S{i}" for i in range(4)}
    assert {r[header.index("label")] for r in predictions[1:]} == {"'@all", "'+hem"}
    assert all(float(r[header.index("p_@all_logreg")]) >= 0 for r in predictions[1:])  # numbers stay numbers
    subjects = rows(hostile / "run" / "subjects.csv")
    assert {r[1] for r in subjects[1:]} == {f"'=S{i}" for i in range(4)}
    assert all(r[0].startswith("./=data/") or r[0].startswith("/") for r in rows(hostile / "p.csv")[1:])
