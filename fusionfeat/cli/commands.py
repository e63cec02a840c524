"""Registers every command module on the ``main`` group (one import per module)."""

from __future__ import annotations

import fusionfeat.cli.finetune_commands  # noqa: F401
from fusionfeat.cli import data_commands, evaluate_commands, model_commands, study_commands  # noqa: F401
