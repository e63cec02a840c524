"""The package's public names resolve, and the CLI lists every command."""

from __future__ import annotations

import subprocess
import sys

import pytest

import fusionfeat


@pytest.mark.parametrize("name", fusionfeat.__all__)
def test_public_names_resolve(name):
    assert getattr(fusionfeat, name) is not None


def test_unknown_attribute():
    with pytest.raises(AttributeError):
        fusionfeat.nope  # noqa: B018


def test_cli_lists_commands():
    out = subprocess.run([sys.executable, "-m", "fusionfeat", "--help"], capture_output=True, text=True, check=True)
    for command in ("manifest", "extract", "info", "fit", "report", "train", "predict", "demo"):
        assert command in out.stdout
