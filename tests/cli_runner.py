"""Run `ovembed ARGS` in-process through click's test runner, shaped like a finished subprocess."""

from __future__ import annotations

import traceback
from dataclasses import dataclass

from click.testing import CliRunner

from ovembed.cli import cli


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(*args, input: str | None = None, env: dict[str, str] | None = None) -> CliResult:
    """An exception the CLI failed to turn into a message lands in `stderr` as a traceback, as it would in a
    terminal, so `"Traceback" not in result.stderr` keeps its meaning."""
    result = CliRunner().invoke(cli, [str(a) for a in args], input=input, env=env)
    stderr = result.stderr
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        stderr += "".join(traceback.format_exception(*result.exc_info))
    return CliResult(result.exit_code, result.stdout, stderr)
