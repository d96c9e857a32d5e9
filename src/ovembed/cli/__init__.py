"""The `ovembed` command: one click tree. Exit codes: 0 ok · 1 a check failed · 2 usage or input error ·
130 interrupted (see `common.EXIT_CODES`)."""

from __future__ import annotations

import click

from ovembed.cli import bench, checks, model, rag
from ovembed.cli.common import EXIT_INTERRUPTED, EXIT_OK, OvembedGroup


@click.group("ovembed", cls=OvembedGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
def cli() -> None:
    """BGE-M3 and friends as INT8 OpenVINO models on the CPU."""


for command in (model.quantize, model.embed, model.serve, rag.ingest, rag.search, rag.spaces, rag.reembed,
                checks.eval_, checks.validate, bench.bench):
    cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """The console entry point; returns the exit code instead of exiting, so tests can call it."""
    try:
        result = cli.main(args=argv, prog_name="ovembed", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("ovembed: interrupted", err=True)
        return EXIT_INTERRUPTED
    return result if isinstance(result, int) else EXIT_OK


