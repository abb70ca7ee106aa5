"""The `deployft` command line: a thin layer that parses flags, builds a config, and calls the library.

Each command lives in its own module and is imported only when it runs, so `deployft --help` stays fast
and heavy imports (torch, transformers, optimum) happen inside the command that needs them.
"""

from __future__ import annotations

import importlib

import click

from ..errors import DeployftError

_COMMANDS = {
    "finetune": ("deployft.cli.finetune", "finetune"),
    "export": ("deployft.cli.export", "export"),
    "info": ("deployft.cli.export", "info"),
    "predict": ("deployft.cli.predict", "predict"),
    "bench": ("deployft.cli.bench", "bench"),
    "serve": ("deployft.cli.serve", "serve"),
}


class _LazyGroup(click.Group):
    """A group that imports a command's module on first use and turns deployft errors into one line."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        module, attr = _COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except DeployftError as exc:
            raise click.ClickException(str(exc)) from exc


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="deployft")
def main() -> None:
    """Fine-tune, export, serve and benchmark Transformer models.

    \b
    deployft finetune --task classify --output runs/clf
    deployft export runs/clf --output bundles/clf --quantize int8
    deployft predict bundles/clf "a warm, funny film"
    deployft bench --run runs/clf --bundle bundles/clf --report reports/clf
    deployft serve bundles/clf --port 8000
    """
