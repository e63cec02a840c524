"""Command-line interface: a thin click group that maps ``FusionfeatError`` to one line and exit 2.

Each command lives in its own module in this package and only parses options and calls the API. Progress and
stage ends are ``logging`` lines of the ``fusionfeat`` logger: the group shows them on stderr, timestamped,
while a command runs (``fusionfeat.progress``), and puts the logger back afterwards.
"""

from __future__ import annotations

import sys
import warnings

import click

from fusionfeat import interrupts
from fusionfeat.errors import FusionfeatError, FusionfeatWarning
from fusionfeat.progress import install_handler, remove_handler


class _Group(click.Group):
    """A click group that turns user-facing errors into one line on stderr and exit code 2, and fusionfeat's
    warnings into one ``warning: …`` line each; fusionfeat's INFO log lines go to stderr, timestamped."""

    def invoke(self, ctx: click.Context):
        interrupts.reset()
        installed = install_handler()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("default", FusionfeatWarning)
                warnings.showwarning = _show_warning(warnings.showwarning)
                return super().invoke(ctx)
        except FusionfeatError as exc:
            click.echo(f"fusionfeat: error: {_one_line(str(exc))}", err=True)
            ctx.exit(exc.exit_code)
        except click.UsageError as exc:  # a bad option value: one line too, naming the command and --help
            where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            click.echo(f"fusionfeat: error: {where}{_one_line(exc.format_message())}{hint}", err=True)
            ctx.exit(2)
        except (KeyboardInterrupt, interrupts.Terminated) as exc:
            line, code = interrupts.interrupted_line(exc)
            click.echo(line, err=True)
            ctx.exit(code)
        finally:
            remove_handler(installed)


def _show_warning(fallback):
    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, FusionfeatWarning):
            click.echo(f"warning: {_one_line(str(message))}", err=True)
        else:
            fallback(message, category, filename, lineno, file, line)
    return show


def _one_line(message: str) -> str:
    return " ".join(message.split())


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="fusionfeat")
def main() -> None:
    """fusionfeat: cached ResNet18 + VGG16 features and honest heads for ALL vs HEM cell images."""


def _register() -> None:
    # Imported here so each command module stays independent; a missing module is a bug, not user input.
    from fusionfeat.cli import commands  # noqa: F401


_register()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
