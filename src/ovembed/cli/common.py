"""What every `ovembed` command shares: the exit codes, the one mapping from error kind to exit code, and the
option definitions (declared once, with their environment defaults)."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable
from pathlib import Path

import click
from click.core import ParameterSource

from ovembed.errors import ErrorKind, OvembedError

EXIT_OK, EXIT_CHECK_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
# `serve` on a taken port: its own code, so a supervisor can tell "pick another port" from a crash (not 3:
# uvicorn exits 3 when the app fails to start).
EXIT_PORT_IN_USE = 4
# `reembed` while another job fills the same space: nothing was done, nothing is wrong; a scheduler retries later.
EXIT_BUSY = 5
# Failures of the world rather than of the input count as failed checks; every other kind is an input error.
EXIT_CODES = {ErrorKind.GATE_FAILED: EXIT_CHECK_FAILED, ErrorKind.BACKEND: EXIT_CHECK_FAILED,
              ErrorKind.HUB_UNREACHABLE: EXIT_CHECK_FAILED, ErrorKind.UNAVAILABLE: EXIT_CHECK_FAILED,
              ErrorKind.OVERLOADED: EXIT_CHECK_FAILED, ErrorKind.PORT_IN_USE: EXIT_PORT_IN_USE,
              ErrorKind.BUSY: EXIT_BUSY}
DEFAULT_DB = "data/ovembed.db"
DEFAULT_URL = "http://localhost:8019"


def exit_code(kind: ErrorKind) -> int:
    return EXIT_CODES.get(kind, EXIT_USAGE)


class OvembedGroup(click.Group):
    """A click group that turns what commands raise or return into exit codes, in one place.

    A command returns None (ok) or an exit code; an `OvembedError` prints `ovembed CMD: error: MESSAGE` and exits
    with its kind's code. Click's own usage errors exit 2, as `EXIT_USAGE` does."""

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        ctx.meta["ovembed.command"] = f"{ctx.command_path} {name}"  # the innermost group resolves last
        return name, command, rest

    def invoke(self, ctx: click.Context):
        try:
            code = super().invoke(ctx)
        except OvembedError as exc:
            click.echo(f"{self._name(ctx)}: error: {exc}", err=True)
            raise click.exceptions.Exit(exit_code(exc.kind)) from None
        except KeyboardInterrupt:
            click.echo(f"{self._name(ctx)}: interrupted", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except BrokenPipeError:
            raise click.exceptions.Exit(EXIT_OK) from None
        if isinstance(code, int) and code != EXIT_OK:
            raise click.exceptions.Exit(code)
        return code

    @staticmethod
    def _name(ctx: click.Context) -> str:
        return ctx.meta.get("ovembed.command", ctx.command_path)


def usage(message: str) -> OvembedError:
    """An input error found after parsing (exit 2), for checks click cannot express."""
    return OvembedError(ErrorKind.VALIDATION, message)


def positive(value: float | None, flag: str) -> None:
    if value is not None and value <= 0:
        raise usage(f"{flag} must be positive")


def print_json(value) -> None:
    click.echo(json.dumps(value, ensure_ascii=False, default=str))


def positive_ints(text: str) -> list[int]:
    """`1,4,16` → [1, 4, 16]: for options that take a list of sizes."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise click.BadParameter(f"expected positive integers, got {text!r}")
    return values


class IntList(click.ParamType):
    name = "N[,N...]"

    def convert(self, value, param, ctx):
        return value if isinstance(value, list) else positive_ints(value)


INT_LIST = IntList()
POSITIVE_INT = click.IntRange(min=1)

Decorator = Callable[[Callable], Callable]


def json_option(help: str = "machine-readable output") -> Decorator:
    return click.option("--json", "as_json", is_flag=True, help=help)


def db_option() -> Decorator:
    return click.option("--db", envvar="OVEMBED_DB", default=DEFAULT_DB, show_default=True, show_envvar=True,
                        help="SQLite file or postgresql://...")


def api_key_option() -> Decorator:
    return click.option("--api-key", envvar="OVEMBED_API_KEY", show_envvar=True, metavar="KEY",
                        help="Bearer key for a service URL")


def url_option(required_default: str | None = None, help: str = "a running `ovembed serve`, e.g. "
               "http://127.0.0.1:8019") -> Decorator:
    """`--url`, defaulting to OVEMBED_URL; `required_default` is the fallback for commands that always talk to
    a service (validate), None for commands where a service is one choice among others (ingest, search)."""
    return click.option("--url", envvar="OVEMBED_URL", default=required_default, show_envvar=True,
                        show_default=required_default is not None, help=help)


def model_folder_option(required: bool = True, help: str = "model folder made by `ovembed quantize`") -> Decorator:
    return click.option("--model", type=click.Path(path_type=Path), required=required, help=help)


def read_lines_or_args(texts: tuple[str, ...]) -> list[str]:
    """Texts from arguments, or from stdin (one per line) when the only argument is '-'."""
    if list(texts) == ["-"]:
        return [line.rstrip("\n") for line in sys.stdin]
    return list(texts)


def command_line() -> str:
    """The command as typed, rebuilt from the options not left at their defaults: what a report records."""
    ctx = click.get_current_context()
    words = [ctx.command_path]
    for param in ctx.command.params:
        if ctx.get_parameter_source(param.name) in (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None):
            continue
        value = ctx.params[param.name]
        if getattr(param, "is_flag", False):
            words += [param.opts[0]] if value else []
            continue
        for one in value if param.multiple else [value]:
            text = shlex.quote(",".join(map(str, one)) if isinstance(one, list) else str(one))
            words += [text] if isinstance(param, click.Argument) else [param.opts[0], text]
    return " ".join(words)


def service_url(url: str | None, model: str | None) -> str | None:
    """The service a command talks to, or None for in-process. With a URL, `--model` names a model that service
    serves; but a `--model` that is a model folder, beside a URL that came only from OVEMBED_URL (a default),
    means the folder."""
    source = click.get_current_context().get_parameter_source("url")
    if model and source is ParameterSource.ENVIRONMENT and Path(model).expanduser().is_dir():
        return None
    return url
