"""Options shared by several commands, so they read the same everywhere."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from fusionfeat.data.manifest import LAYOUTS
from fusionfeat.errors import FusionfeatError
from fusionfeat.runtime import PRECISIONS

layout_option = click.option("--layout", type=click.Choice(LAYOUTS), default=None,
                             help="Force the dataset layout [default: detected from DATA].")
positive_option = click.option("--positive", default=None,
                               help="Name of the positive class of a two-class dataset [default: all]; not for more "
                                    "classes.")
classes_option = click.option(
    "--classes", default=None, metavar="A,B,…|NEW=A+B,…",
    help="Use only these classes of the store (comma list) or merge them (NEW=A+B, e.g. "
         "granulocyte=neutrophil+eosinophil,mononuclear=lymphocyte+monocyte); names match case-insensitively; "
         "other classes' images are left out. For two classes the second listed is the positive one unless "
         "--positive names one [default: every class of the store].")
root_option = click.option("--root", type=click.Path(file_okay=False), default=None,
                           help="Folder a manifest CSV's relative paths start from [default: the CSV's folder].")
quiet_option = click.option("--quiet", is_flag=True,
                            help="No progress bars; results, notes and warnings are still printed.")
precision_option = click.option(
    "--precision", type=click.Choice(PRECISIONS), default="auto", show_default=True,
    help="Inference precision; auto: bf16 on CUDA (fp16 on older cards), on the CPU bf16 only where it "
         "measured faster, else fp32.")
workers_option = click.option("--workers", type=click.IntRange(min=0), default=None,
                              help="Image-decoding processes; 0 decodes in the main process "
                                   "[default: cores-1, at most 4; 8 on CUDA].")


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Validate ``--device`` before any work starts (CUDA asked for where there is none → one line)."""
    from fusionfeat.runtime import resolve_device

    resolve_device(value)
    return value


device_option = click.option("--device", default="auto", show_default=True, callback=_check_device,
                             help="auto (the first CUDA device, else the CPU), cpu, cuda or cuda:K.")
overwrite_option = click.option("--overwrite", is_flag=True,
                                help="Replace a previous fusionfeat output of the same kind (never anything else) "
                                     "[default: refuse].")


def head_params_from(items: tuple[str, ...] | list[str], path: str | None = None) -> dict[str, dict[str, Any]]:
    """``{head or "*": {param: value}}`` from a TOML file (one table per head, ``["*"]`` for all) and then
    ``HEAD.PARAM=VALUE`` options, which override the file. Values from the command line stay strings (typed
    later against the head's defaults); TOML values keep their TOML type."""
    out: dict[str, dict[str, Any]] = {}
    if path:
        for head, table in _read_toml(Path(path)).items():
            if not isinstance(table, dict):
                raise FusionfeatError(
                    f"--head-params {path}: {head!r} is not a table; write [HEAD] then NAME = VALUE lines"
                )
            out.setdefault(str(head), {}).update(table)
    for item in items:
        key, eq, value = item.partition("=")
        head, dot, param = key.strip().partition(".")
        if not eq or not dot or not head or not param:
            raise FusionfeatError(
                f"--head-param {item!r}: write HEAD.NAME=VALUE, e.g. attention.lr=3e-4 or *.max_epochs=20"
            )
        out.setdefault(head, {})[param.strip()] = value.strip()
    return out


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise FusionfeatError(f"--head-params {path}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise FusionfeatError(f"--head-params {path} is not valid TOML ({exc})") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise FusionfeatError(f"--head-params {path} cannot be read ({exc.__class__.__name__})") from None
