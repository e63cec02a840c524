"""Every command's --help: a realistic example, every option described, every default stated."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from fusionfeat.cli import main

COMMANDS = sorted(main.commands)
EXPECTED = {"manifest", "extract", "info", "finetune", "fit", "report", "train", "predict", "demo", "study",
            "explain"}


def test_every_command_is_checked():
    assert EXPECTED <= set(COMMANDS)


@pytest.mark.parametrize("name", COMMANDS)
def test_help_shows_an_example_that_runs_this_command(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Example" in result.output
    example = result.output.split("Example", 1)[1].split("Options:", 1)[0]
    assert f"fusionfeat {name}" in example  # the example calls the command it documents
    for line in example.splitlines()[1:]:  # \b kept the lines: no example is wrapped into the next one
        assert not line.strip() or line.startswith("    "), line


def _options(name: str) -> list[tuple[click.Option, tuple[str, str]]]:
    command = main.commands[name]
    ctx = click.Context(command, info_name=name, parent=click.Context(main, info_name="fusionfeat"))
    return [(p, p.get_help_record(ctx)) for p in command.params
            if isinstance(p, click.Option) and not p.hidden and p.name != "help"]


@pytest.mark.parametrize("name", COMMANDS)
def test_every_option_is_described_and_states_its_default(name):
    for option, (flags, text) in _options(name):
        assert text.strip(), f"{name} {flags}: no help"
        if option.is_flag or option.required or option.multiple:
            continue  # a flag is off unless given; a required option has no default
        assert "[default: " in text, f"{name} {flags}: states no default: {text!r}"


@pytest.mark.parametrize("name", ["extract", "finetune", "fit", "train", "predict", "demo", "study"])
def test_quiet_is_described_the_same_everywhere(name):
    (text,) = [text for option, (_, text) in _options(name) if option.name == "quiet"]
    assert "progress bars" in text and "warnings are still printed" in text


def test_a_shown_default_is_the_one_the_command_uses():
    """The stated defaults are read from the option objects, so they cannot drift from what runs."""
    options = {option.name: (option, text) for option, (_, text) in _options("train")}
    for name, value in (("balance", "weight"), ("seed", "0"), ("head", "attention")):
        option, text = options[name]
        assert str(option.default) == value and f"[default: {value}" in text
