import pytest
from click.testing import CliRunner

from deployft.cli import _COMMANDS, main


def test_root_help_lists_every_command():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in _COMMANDS:
        assert name in result.output


@pytest.mark.parametrize("name", sorted(_COMMANDS))
def test_every_command_has_help(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_unknown_command_is_a_usage_error():
    result = CliRunner().invoke(main, ["fly"])
    assert result.exit_code == 2
    assert "No such command" in result.output


def test_version():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and "0.1.0" in result.output
