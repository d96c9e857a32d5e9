"""The one `ovembed` tree: every command listed, usage errors exit 2 with a message, error kinds map to exit codes
in one place, and options take their defaults from the environment (OVEMBED_DB, OVEMBED_URL, OVEMBED_API_KEY)."""

from __future__ import annotations

import json
import re
import socket

import pytest

from cli_runner import run_cli
from ovembed.cli.common import EXIT_CODES, exit_code
from ovembed.errors import ErrorKind
from ovembed.store import open_store

COMMANDS = ("quantize", "embed", "serve", "ingest", "search", "spaces", "reembed", "eval", "validate", "bench")
BENCH_COMMANDS = ("engine", "http", "soak", "memory", "store")


def _listed(help_text: str) -> set[str]:
    """The command names of a click help page (wrapped descriptions are indented further)."""
    return set(re.findall(r"^  (\S+)", help_text.split("Commands:")[1], re.MULTILINE))


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_help_lists_every_command():
    result = run_cli("--help")
    assert result.returncode == 0
    assert _listed(result.stdout) == set(COMMANDS)


def test_bench_help_lists_its_tools():
    result = run_cli("bench", "--help")
    assert result.returncode == 0
    assert set(BENCH_COMMANDS) <= _listed(result.stdout)


@pytest.mark.parametrize("args, message", [
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    (["search"], "Missing argument 'QUERY'"),
    (["search", "q", "--mode", "fuzzy"], "'fuzzy' is not one of"),
    (["spaces", "rename"], "'rename' is not one of"),
    (["quantize", "x", "--precision", "int4"], "'int4' is not one of"),
    (["reembed"], "Missing option '--to'"),
    (["eval", "--model", "m"], "Missing option '--data'"),
    (["embed", "x"], "Missing option '--model'"),
    (["validate", "--url", "localhost:8019"], "--url must start with http://"),
    (["validate", "--queries", "0"], "--queries must be positive"),
    (["validate", "--max-p95-ms", "-1"], "--max-p95-ms must be positive"),
    (["serve", "--port", "many"], "'many' is not a valid integer"),
])
def test_usage_errors_exit_2_with_a_message(args, message):
    result = run_cli(*args)
    assert result.returncode == 2, result
    assert message in result.stderr and "Traceback" not in result.stderr


def test_each_error_kind_has_one_exit_code():
    assert {kind: exit_code(kind) for kind in ErrorKind} == {kind: EXIT_CODES.get(kind, 2) for kind in ErrorKind}
    assert exit_code(ErrorKind.GATE_FAILED) == 1 and exit_code(ErrorKind.UNAVAILABLE) == 1
    assert exit_code(ErrorKind.OVERLOADED) == 1  # a busy service is a failed run, not bad input
    assert exit_code(ErrorKind.VALIDATION) == 2 and exit_code(ErrorKind.MODEL_NOT_FOUND) == 2


def test_db_defaults_to_ovembed_db(tmp_path):
    db = tmp_path / "from-env.db"
    missing = run_cli("spaces", "list", "--json", env={"OVEMBED_DB": str(db)})
    assert missing.returncode == 2 and f"no store at {db}" in missing.stderr and not db.exists()
    open_store(str(db)).close()
    result = run_cli("spaces", "list", "--json", env={"OVEMBED_DB": str(db)})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == []


def test_validate_talks_to_ovembed_url_and_fails_the_check_when_unreachable():
    url = f"http://127.0.0.1:{_closed_port()}"
    result = run_cli("validate", "--queries", "1", "--timeout", "2", "--json", env={"OVEMBED_URL": url})
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["url"] == url and report["passed"] is False


@pytest.mark.slow
def test_a_model_folder_wins_over_a_url_from_the_environment(tmp_path, minilm_int8):
    db = str(tmp_path / "s.db")
    (tmp_path / "a.txt").write_text("The Eiffel Tower is in Paris.")
    assert run_cli("ingest", tmp_path / "a.txt", "--db", db, "--model", minilm_int8).returncode == 0
    closed = f"http://127.0.0.1:{_closed_port()}"
    from_env = run_cli("search", "Paris", "--db", db, "--model", minilm_int8, env={"OVEMBED_URL": closed})
    assert from_env.returncode == 0 and "a.txt" in from_env.stdout, from_env.stderr
    # An explicit --url makes --model the name of a served model: that service is asked, and is not there.
    both = run_cli("search", "Paris", "--db", db, "--model", "minilm-int8", "--url", closed)
    assert both.returncode != 0 and closed in both.stderr and "Traceback" not in both.stderr
