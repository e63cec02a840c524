"""Options shared by several commands, so they read the same everywhere."""

from __future__ import annotations

import click

from fusionfeat.data.manifest import DEFAULT_POSITIVE, LAYOUTS

layout_option = click.option("--layout", type=click.Choice(LAYOUTS), default=None,
                             help="Force the dataset layout instead of auto-detecting it.")
positive_option = click.option("--positive", default=DEFAULT_POSITIVE, show_default=True,
                               help="Name of the positive class.")
root_option = click.option("--root", type=click.Path(file_okay=False), default=None,
                           help="Folder a manifest CSV's relative paths start from (default: the CSV's folder).")


def _check_device(ctx: click.Context, param: click.Parameter, value: str) -> str:
    """Validate ``--device`` before any work starts (CUDA asked for where there is none → one line)."""
    from fusionfeat.runtime import resolve_device

    resolve_device(value)
    return value


device_option = click.option("--device", default="auto", show_default=True, callback=_check_device,
                             help="auto, cpu, cuda or cuda:K.")
overwrite_option = click.option("--overwrite", is_flag=True,
                                help="Replace a previous fusionfeat output of the same kind (never anything else).")
