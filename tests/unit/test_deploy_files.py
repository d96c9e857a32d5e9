"""Static checks of the deployment files: Dockerfile, docker-compose.yml and the upgrade-guide scripts.

No Docker engine is needed: the compose file is parsed as YAML, the Dockerfile as text, and the scripts are run
with a fake `ovembed` (via $OVEMBED) that prints the arguments it receives."""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
QUANTIZE_SCRIPT = ROOT / "scripts" / "quantize-bge-m3.sh"
VALIDATE_SCRIPT = ROOT / "scripts" / "validate-bge-m3-deployment.sh"
SCRIPTS = [QUANTIZE_SCRIPT, VALIDATE_SCRIPT]


# --- helpers -----------------------------------------------------------------------------------------------------

def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and `\\` continuations joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, args = line.partition(" ")
        out.append((keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a line continuation"
    return out


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Stage name -> its instructions (FROM excluded), in file order."""
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for keyword, args in _instructions(DOCKERFILE.read_text()):
        if keyword == "FROM":
            match = re.search(r"\bAS\s+(\S+)\s*$", args, flags=re.IGNORECASE)
            assert match, f"every stage is named: FROM {args}"
            current = stages.setdefault(match.group(1).lower(), [])
            current.append(("FROM", args))
        elif current is not None:
            current.append((keyword, args))
    return stages


def _stage_chain(name: str) -> list[tuple[str, str]]:
    """A stage's instructions preceded by those of the stages it is built FROM (within this Dockerfile)."""
    stages = _stages()
    own = stages[name]
    parent = own[0][1].split()[0].lower()
    inherited = _stage_chain(parent) if parent in stages else []
    return inherited + own[1:]


def _args(stage: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in stage if kw == keyword]


def _pip_installs(stage: list[tuple[str, str]]) -> list[str]:
    return [cmd for cmd in _args(stage, "RUN") if "pip install" in cmd]


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _service(name: str) -> dict:
    services = _compose().get("services", {})
    assert name in services, f"docker-compose.yml has no service {name!r}: {sorted(services)}"
    return services[name]


def _environment(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def _healthcheck_text(test) -> str:
    return " ".join(test) if isinstance(test, list) else str(test)


def _fake_ovembed(tmp_path: Path) -> Path:
    """An executable that prints each argument on its own line, standing in for the real CLI."""
    fake = tmp_path / "fake-ovembed"
    fake.write_text('#!/usr/bin/env bash\nfor arg in "$@"; do printf "%s\\n" "$arg"; done\n')
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return fake


def _run(script: Path, *args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(["bash", str(script), *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT)


# --- docker-compose.yml ------------------------------------------------------------------------------------------

def test_compose_serves_on_8019_with_models_volume():
    service = _service("openvino-service")
    assert service.get("image") == "ovembed:latest"
    assert "8019:8019" in [str(port) for port in service.get("ports", [])]
    assert "./models:/models" in service.get("volumes", [])


def test_compose_service_preloads_the_int8_model_from_the_volume():
    env = _environment(_service("openvino-service"))
    assert env.get("OPENVINO_PRELOAD_MODELS", "").lower() in {"true", "1", "yes"}
    models = [m.strip() for m in env.get("OVEMBED_MODELS", "").split(",") if m.strip()]
    assert models and all(m.startswith("/models/") for m in models), models
    assert "/models/bge-m3-int8" in models
    assert env.get("OVEMBED_DEFAULT_MODEL") == "bge-m3"
    # API keys are optional and come from the caller's environment, never hard-coded.
    assert env.get("OVEMBED_API_KEYS") == "${OVEMBED_API_KEYS:-}"


def test_compose_healthcheck_polls_health_on_8019_and_allows_for_model_loading():
    health = _service("openvino-service").get("healthcheck", {})
    text = _healthcheck_text(health.get("test"))
    assert "/health" in text and "8019" in text
    assert "curl" not in text and "wget" not in text  # python:3.11-slim has neither
    start_period = str(health.get("start_period", "0s"))
    match = re.fullmatch(r"(\d+)(s|m)", start_period)
    assert match, f"start_period {start_period!r}"
    seconds = int(match.group(1)) * (60 if match.group(2) == "m" else 1)
    assert seconds >= 60, "loading BGE-M3 takes tens of seconds"
    assert int(health.get("retries", 0)) >= 3


def test_compose_service_builds_the_serve_target_and_waits_for_quantize():
    service = _service("openvino-service")
    assert service.get("build", {}).get("target") == "serve"
    assert service.get("restart") == "unless-stopped"
    depends = service.get("depends_on", {})
    assert isinstance(depends, dict) and depends.get("quantize", {}).get("condition") == "service_completed_successfully"


def test_compose_quantize_is_a_one_shot_on_the_same_volume():
    quantize = _service("quantize")
    assert quantize.get("image") == "ovembed-quantize:latest"
    assert quantize.get("build", {}).get("target") == "quantize"
    assert quantize.get("volumes") == _service("openvino-service").get("volumes")
    assert quantize.get("restart") == "no"  # quoted in YAML: a bare `no` would be the boolean false


def test_compose_quantize_skips_when_the_model_manifest_exists(tmp_path):
    quantize = _service("quantize")
    entrypoint = quantize.get("entrypoint")
    command = quantize.get("command")
    assert entrypoint == ["sh", "-c"]
    script = command[0] if isinstance(command, list) else command
    assert "/models/bge-m3-int8/ovembed.json" in script
    assert "ovembed quantize BAAI/bge-m3 --output /models/bge-m3-int8" in script

    # Run the guard with a shell, /models remapped to tmp_path and `ovembed` replaced by the fake.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    fake = _fake_ovembed(tmp_path)
    (fake_bin / "ovembed").symlink_to(fake)
    local = script.replace("/models/", f"{tmp_path}/models/")
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}

    ran = subprocess.run(["sh", "-c", local], capture_output=True, text=True, env=env, timeout=30)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.split("\n")[:4] == ["quantize", "BAAI/bge-m3", "--output", f"{tmp_path}/models/bge-m3-int8"]

    (tmp_path / "models" / "bge-m3-int8").mkdir(parents=True)
    (tmp_path / "models" / "bge-m3-int8" / "ovembed.json").write_text("{}")
    skipped = subprocess.run(["sh", "-c", local], capture_output=True, text=True, env=env, timeout=30)
    assert skipped.returncode == 0, skipped.stderr
    assert "skipping" in skipped.stdout
    assert "BAAI/bge-m3" not in skipped.stdout  # the fake CLI was not called


# --- Dockerfile --------------------------------------------------------------------------------------------------

def test_dockerfile_has_serve_and_quantize_stages_on_python_311_slim():
    stages = _stages()
    assert {"serve", "quantize"} <= set(stages)
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.11-slim$", text, flags=re.MULTILINE) or "FROM python:3.11-slim" in text


def test_dockerfile_default_target_is_serve():
    assert list(_stages())[-1] == "serve", "a plain `docker build .` must give the serving image"


def test_dockerfile_serve_installs_the_package_with_openai_ids_and_no_torch():
    serve = _stage_chain("serve")
    installs = _pip_installs(serve)
    assert installs, "the serve stage installs the package"
    for cmd in installs:
        tokens = shlex.split(cmd)
        assert "-c" in tokens and tokens[tokens.index("-c") + 1] == "constraints.txt", cmd
        assert "convert" not in cmd and "[dev]" not in cmd, cmd
        assert "torch" not in cmd and "download.pytorch.org" not in cmd, cmd
        assert ".[openai-ids]" in tokens, cmd  # LangChain's default token-id input works in the image
    for path in ("pyproject.toml", "constraints.txt", "README.md", "src/"):
        assert any(path in args for args in _args(serve, "COPY")), f"{path} is copied for the install"


def test_dockerfile_serve_runs_as_non_root_and_listens_on_all_interfaces():
    serve = _stage_chain("serve")
    users = _args(serve, "USER")
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    env = " ".join(_args(serve, "ENV"))
    for setting in ("OVEMBED_HOST=0.0.0.0", "OVEMBED_PORT=8019", "OPENVINO_PRELOAD_MODELS=true",
                    "OVEMBED_MODELS=/models/bge-m3-int8"):
        assert setting in env, setting
    assert "8019" in " ".join(_args(serve, "EXPOSE")).split()
    assert any("/models" in v for v in _args(serve, "VOLUME"))


def test_dockerfile_serve_healthcheck_polls_health_with_python():
    serve = _stage_chain("serve")
    checks = _args(serve, "HEALTHCHECK")
    assert len(checks) == 1
    check = checks[0]
    assert "/health" in check and "8019" in check and "urllib" in check
    assert "curl" not in check
    assert re.search(r"--start-period=\d+s", check)
    assert _args(serve, "ENTRYPOINT")[-1] == '["ovembed"]'
    assert _args(serve, "CMD")[-1] == '["serve"]'


def test_dockerfile_serve_healthcheck_command_is_valid_python():
    check = _args(_stage_chain("serve"), "HEALTHCHECK")[0]
    exec_form = re.search(r"CMD\s+(\[.*\])\s*$", check)
    assert exec_form, check
    argv = yaml.safe_load(exec_form.group(1))  # JSON exec form; JSON is YAML
    assert argv[:2] == ["python", "-c"]
    compile(argv[2], "<healthcheck>", "exec")


def test_dockerfile_quantize_installs_cpu_torch_first_then_convert_extra_and_drops_torchvision():
    quantize = _stage_chain("quantize")
    installs = _pip_installs(quantize)
    convert = [cmd for cmd in installs if "[convert]" in cmd]
    assert convert, installs
    for cmd in convert:
        steps = [step.strip() for step in cmd.split("&&")]
        torch = next(i for i, step in enumerate(steps) if "--no-deps torch" in step)
        package = next(i for i, step in enumerate(steps) if "'.[convert]'" in step)
        assert torch < package, "torch comes first, so the package step finds the CPU build installed"
        assert "-c constraints.txt --index-url https://download.pytorch.org/whl/cpu" in steps[torch]
        assert "-c constraints.txt" in steps[package] and "download.pytorch.org" not in steps[package]
        assert "torchvision" not in cmd.split("pip uninstall")[0]
    assert any(re.search(r"pip uninstall -y torchvision", cmd) for cmd in _args(quantize, "RUN"))


def test_dockerfile_quantize_runs_as_non_root_and_writes_bge_m3_int8_to_models():
    quantize = _stage_chain("quantize")
    users = _args(quantize, "USER")
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert any("HF_HOME=/models/" in v for v in _args(quantize, "ENV"))
    assert _args(quantize, "ENTRYPOINT")[-1] == '["ovembed", "quantize"]'
    assert _args(quantize, "CMD")[-1] == '["BAAI/bge-m3", "--output", "/models/bge-m3-int8"]'


def test_dockerignore_keeps_models_and_venv_out_of_the_build_context():
    lines = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")}
    for entry in ("models", ".venv", ".git", "__pycache__", ".bench", ".pytest_cache"):
        assert entry in lines, entry
    for needed in ("src", "pyproject.toml", "constraints.txt", "README.md"):
        assert needed not in lines, f"{needed} is needed by the Dockerfile"


# --- scripts -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_executable_bash_with_valid_syntax(script):
    assert script.is_file()
    assert os.access(script, os.X_OK)
    assert script.read_text().startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in script.read_text()
    checked = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert checked.returncode == 0, checked.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_scripts_print_usage_on_help_and_exit_0(script, flag, tmp_path):
    # OVEMBED points at something that must not run: --help never calls the CLI.
    result = _run(script, flag, env={"OVEMBED": str(tmp_path / "missing")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage:")


def test_quantize_script_forwards_defaults_and_extra_args(tmp_path):
    fake = _fake_ovembed(tmp_path)
    result = _run(QUANTIZE_SCRIPT, "--precision", "int8-weights", env={"OVEMBED": str(fake)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["quantize", "BAAI/bge-m3", "--output", "models/bge-m3-int8",
                                          "--precision", "int8-weights"]


def test_quantize_script_takes_a_local_model_folder_and_output(tmp_path):
    fake = _fake_ovembed(tmp_path)
    result = _run(QUANTIZE_SCRIPT, "./bge-m3", "out/m3 int8", "--model-id", "BAAI/bge-m3",
                  env={"OVEMBED": str(fake)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["quantize", "./bge-m3", "--output", "out/m3 int8", "--model-id", "BAAI/bge-m3"]


def test_validate_script_forwards_url_and_bge_m3_expectations(tmp_path):
    fake = _fake_ovembed(tmp_path)
    result = _run(VALIDATE_SCRIPT, env={"OVEMBED": str(fake)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["validate", "--url", "http://localhost:8019", "--expect-model", "BAAI/bge-m3",
                                          "--expect-dim", "1024", "--max-p95-ms", "200"]

    result = _run(VALIDATE_SCRIPT, "http://embed:9000", "--queries", "50", "--json", env={"OVEMBED": str(fake)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["validate", "--url", "http://embed:9000", "--expect-model", "BAAI/bge-m3",
                                          "--expect-dim", "1024", "--max-p95-ms", "200", "--queries", "50", "--json"]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
@pytest.mark.parametrize("code", [1, 2])
def test_scripts_exit_with_the_cli_exit_code(script, code, tmp_path):
    failing = tmp_path / "failing-ovembed"
    failing.write_text(f"#!/usr/bin/env bash\nexit {code}\n")
    failing.chmod(0o755)
    assert _run(script, env={"OVEMBED": str(failing)}).returncode == code


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_fall_back_to_the_venv_binary_when_ovembed_is_not_on_path(script, tmp_path):
    venv_bin = tmp_path / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "ovembed").symlink_to(_fake_ovembed(tmp_path))
    # A PATH that still has bash and coreutils but no `ovembed`.
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep)
                           if d and not (Path(d) / "ovembed").exists())
    env = {key: value for key, value in os.environ.items() if key != "OVEMBED"}
    env["PATH"] = path
    result = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=30, env=env, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] in {"quantize", "validate"}


# --- .gitignore --------------------------------------------------------------------------------------------------

def test_gitignore_keeps_the_default_store_and_models_out_but_not_package_or_test_data():
    paths = ["data/ovembed.db", "models/bge-m3-int8/ovembed.json", "src/ovembed/data/calibration.txt",
             "tests/data/doc.pdf"]
    checked = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT, capture_output=True, text=True,
                             timeout=30)
    assert checked.stdout.split() == paths[:2]
