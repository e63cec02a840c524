"""One output rule for every path written, --overwrite included: only a regular file or folder fusionfeat wrote
may be replaced. A user's thesis.h5 or another program's HDF5, a FIFO, a symbolic link, an input image, a
"m.csv/" that names a file, a user's s.h5.partial/ folder: each is refused in one line (exit 2) and stays
byte for byte as it was."""

from __future__ import annotations

import os
from pathlib import Path

import h5py
import pytest
from click.testing import CliRunner

from fusionfeat.cli import main
from fusionfeat.errors import StoreError
from fusionfeat.store import rewrite
from tests.conftest import write_cells


def _run(*args: object):
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result


def _refused(result, needle: str) -> None:
    errors = [line for line in result.output.splitlines() if line.startswith("fusionfeat: error:")]
    assert result.exit_code == 2 and len(errors) == 1 and needle in errors[0], result.output


def _state(folder: Path) -> dict[str, object]:
    out: dict[str, object] = {}
    for p in sorted(folder.rglob("*")):
        key = str(p.relative_to(folder))
        if p.is_symlink():
            out[key] = ("link", os.readlink(p))
        elif p.is_file():
            out[key] = p.read_bytes()
        elif p.is_dir():
            out[key] = "dir"
        else:
            out[key] = "special"
    return out


EXTRACT = ("--weights", "random", "--input-size", "32", "--backbones", "resnet18", "--device", "cpu", "--quiet",
           "--workers", "0")


@pytest.fixture
def cells(tmp_path: Path) -> Path:
    return write_cells(tmp_path / "cells", per_class=3)


def test_extract_overwrite_replaces_only_a_fusionfeat_store(cells, tmp_path):
    (tmp_path / "thesis.h5").write_text("chapter 1\n")
    with h5py.File(tmp_path / "other.h5", "w") as h5:
        h5["data"] = [1, 2, 3]
    before = _state(tmp_path)
    for name in ("thesis.h5", "other.h5"):
        _refused(_run("extract", cells, "-o", tmp_path / name, "--overwrite", *EXTRACT),
                 "not a fusionfeat feature store")
    assert _state(tmp_path) == before
    assert _run("extract", cells, "-o", tmp_path / "s.h5", *EXTRACT).exit_code == 0
    assert _run("extract", cells, "-o", tmp_path / "s.h5", "--overwrite", "--seed", "1", *EXTRACT).exit_code == 0


def test_pipes_links_and_folders_are_never_outputs(cells, tmp_path):
    os.mkfifo(tmp_path / "pipe")
    (tmp_path / "link.csv").symlink_to(tmp_path / "target.csv")
    (tmp_path / "target.csv").write_text("path,label,group,fold\n")
    (tmp_path / "folder.h5").mkdir()
    before = _state(tmp_path)
    _refused(_run("manifest", cells, "-o", tmp_path / "pipe", "--overwrite"), "named pipe")
    _refused(_run("extract", cells, "-o", tmp_path / "pipe", "--overwrite", *EXTRACT), "named pipe")
    _refused(_run("manifest", cells, "-o", tmp_path / "link.csv", "--overwrite"), "symbolic link")
    _refused(_run("extract", cells, "-o", tmp_path / "folder.h5", "--overwrite", *EXTRACT), "a folder")
    assert _state(tmp_path) == before


def test_an_input_image_is_never_an_output(cells, tmp_path):
    image = sorted((cells / "all").iterdir())[0]
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(
        f"{p.relative_to(tmp_path)},{p.parent.name}" for p in sorted(cells.rglob("*.png"))) + "\n")
    before = _state(tmp_path)
    _refused(_run("extract", tmp_path / "m.csv", "-o", image, "--overwrite", *EXTRACT), "one of the images")
    _refused(_run("manifest", cells, "-o", image, "--overwrite"), "not a CSV fusionfeat wrote")
    assert _state(tmp_path) == before


def test_a_csv_name_ending_in_a_slash_and_other_programs_csvs(cells, tmp_path):
    (tmp_path / "m.csv").write_text("my,own,table\n")
    before = _state(tmp_path)
    _refused(_run("manifest", cells, "-o", f"{tmp_path / 'm.csv'}/", "--overwrite"), "names a folder")
    _refused(_run("manifest", cells, "-o", tmp_path / "m.csv", "--overwrite"), "not a CSV fusionfeat wrote")
    assert _state(tmp_path) == before
    assert _run("manifest", cells, "-o", tmp_path / "ours.csv").exit_code == 0
    assert _run("manifest", cells, "-o", tmp_path / "ours.csv", "--overwrite").exit_code == 0  # its own: replaced


def test_a_users_partial_folder_is_never_deleted(cells, tmp_path):
    (tmp_path / "s.h5.partial").mkdir()
    (tmp_path / "s.h5.partial" / "notes.txt").write_text("my notes")
    before = _state(tmp_path)
    _refused(_run("extract", cells, "-o", tmp_path / "s.h5", *EXTRACT), "fusionfeat did not make it")
    _refused(_run("extract", cells, "-o", tmp_path / "s.h5", "--overwrite", *EXTRACT), "fusionfeat did not make it")
    assert _state(tmp_path) == before


def test_rewriting_a_store_keeps_its_link_and_mode_and_refuses_a_read_only_one(cells, tmp_path):
    assert _run("extract", cells, "-o", tmp_path / "real.h5", *EXTRACT).exit_code == 0
    (tmp_path / "s.h5").symlink_to(tmp_path / "real.h5")
    os.chmod(tmp_path / "real.h5", 0o640)
    with rewrite(tmp_path / "s.h5") as h5:
        h5.attrs["note"] = "edited"
    assert (tmp_path / "s.h5").is_symlink() and os.readlink(tmp_path / "s.h5") == str(tmp_path / "real.h5")
    assert (os.stat(tmp_path / "real.h5").st_mode & 0o777) == 0o640
    with h5py.File(tmp_path / "real.h5", "r") as h5:
        assert h5.attrs["note"] == "edited"
    os.chmod(tmp_path / "real.h5", 0o444)
    before = (tmp_path / "real.h5").read_bytes()
    with pytest.raises(StoreError, match="read-only"), rewrite(tmp_path / "s.h5") as h5:
        h5.attrs["note"] = "again"
    assert (tmp_path / "real.h5").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".real.h5.")] == []
