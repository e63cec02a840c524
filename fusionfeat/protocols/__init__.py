"""Evaluation protocols: fold plans and leakage checks, made before any model is fitted (``docs/protocols.md``).

``plans`` (``make_plan``, ``plan_folds``, ``SplitPlan``), ``rows`` (the paper's expanded rows and the stored
copies that balance a training fold), ``checks`` (option limits and ``check_split``), ``describe`` (the
protocol in words, with its caveats) and ``inner`` (inner splits of a training fold).
"""

from fusionfeat.protocols.checks import (
    BALANCES,
    DEFAULT_FOLDS,
    DEFAULT_SEED,
    DIHEDRAL_VIEWS,
    PROTOCOLS,
    LeakageError,
    check_choice,
    check_folds,
    check_predefined,
    check_split,
    need_views,
)
from fusionfeat.protocols.describe import describe_protocol
from fusionfeat.protocols.inner import image_groups, inner_split, inner_splits
from fusionfeat.protocols.plans import Split, SplitPlan, default_protocol, make_plan, plan_folds
from fusionfeat.protocols.rows import Rows, minority_copies, paper_rows

__all__ = [
    "BALANCES", "DEFAULT_FOLDS", "DEFAULT_SEED", "DIHEDRAL_VIEWS", "PROTOCOLS", "LeakageError", "Rows", "Split",
    "SplitPlan", "check_choice", "check_folds", "check_predefined", "check_split", "default_protocol",
    "describe_protocol", "image_groups", "inner_split", "inner_splits", "make_plan", "minority_copies",
    "need_views", "paper_rows", "plan_folds",
]
