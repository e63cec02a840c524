"""Registers every command module on the ``main`` group (one import per module)."""

from __future__ import annotations

from fusionfeat.cli import data_commands  # noqa: F401
