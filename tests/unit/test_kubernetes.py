"""The Kubernetes manifests (deploy/kubernetes): valid against the Kubernetes schemas, offline, and consistent with
the service they run: its routes, its settings and port, the images docker-compose.yml builds, the quantize CLI and
the memory figures of docs/reliability.md §5."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from fastapi import FastAPI
from pydantic import AliasChoices

from ovembed.bench.memory import predicted_peak
from ovembed.config import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
COMPOSE = ROOT / "docker-compose.yml"
MEMORY_FIT = ROOT / "docs" / "reliability" / "memory-bge-m3.json"
# The oldest Kubernetes docs/scaling.md promises, and the newest this kubernetes-validate ships schemas for.
VERSIONS = ["1.30", kubernetes_validate.latest_version()]
# Memory beyond the fitted formula, MiB (docs/reliability.md §5; the sum is spelled out in deployment.yaml).
SECOND_LANE_MB = 485
PROCESS_MB = 100
QUEUE_AND_RESPONSE_MB = 21 + 32
QUANTITY_UNITS = {"": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30}


# --- reading the manifests -----------------------------------------------------------------------------------------

def _kustomization() -> dict:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def _manifests() -> dict[str, dict]:
    """Kind -> the one resource of that kind, from the files kustomization.yaml lists."""
    found = {}
    for name in _kustomization()["resources"]:
        docs = [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
        assert len(docs) == 1, f"{name}: one resource per file"
        assert docs[0]["kind"] not in found, f"{name}: a second {docs[0]['kind']}"
        found[docs[0]["kind"]] = docs[0]
    return found


def _config_literals() -> dict[str, str]:
    """The generated `ovembed` ConfigMap's data: the service's environment."""
    (generator,) = [g for g in _kustomization()["configMapGenerator"] if g["name"] == "ovembed"]
    return dict(literal.split("=", 1) for literal in generator["literals"])


def _pod(kind: str) -> dict:
    return _manifests()[kind]["spec"]["template"]["spec"]


def _server() -> dict:
    (container,) = _pod("Deployment")["containers"]
    return container


def _quantity(value: str | int) -> float:
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(value)).groups()
    return float(number) * QUANTITY_UNITS[unit]


def _port_number(container: dict, port: str | int) -> int:
    return port if isinstance(port, int) else {p["name"]: p["containerPort"] for p in container["ports"]}[port]


def _settings_env_names() -> set[str]:
    """Every environment variable Settings reads: its prefix + field name, or a field's own aliases."""
    prefix = Settings.model_config["env_prefix"]
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        names |= {c for c in alias.choices if isinstance(c, str)} if isinstance(alias, AliasChoices) else {
            (prefix + name).upper()}
    return names


@pytest.fixture
def configured(monkeypatch) -> Settings:
    """Settings as a pod gets them: the ConfigMap's values and nothing from this process's environment."""
    for name in list(os.environ):
        if name.startswith("OVEMBED_") or name == "OPENVINO_PRELOAD_MODELS":
            monkeypatch.delenv(name)
    for name, value in _config_literals().items():
        monkeypatch.setenv(name, value)
    return Settings()


# --- the files themselves ------------------------------------------------------------------------------------------

def test_kustomization_lists_every_manifest_in_the_folder():
    listed = set(_kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize("version", VERSIONS)
def test_every_manifest_is_valid_against_the_kubernetes_schemas(version):
    generated = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ovembed"}, "data": _config_literals()}
    for resource in [*_manifests().values(), generated]:
        kubernetes_validate.validate(resource, version, strict=True)  # raises on the first violation


# --- what would break the service ----------------------------------------------------------------------------------

def test_probes_get_paths_the_app_serves_without_an_api_key(configured):
    from ovembed.server import routes
    from ovembed.server.middleware import OPEN_PATHS

    app = FastAPI()
    routes.register(app)  # the one place the service's routes are registered
    served = {route.path for route in app.routes if "GET" in getattr(route, "methods", ())}
    server = _server()
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = server[probe]["httpGet"]
        assert get["path"] in served, probe
        assert get["path"] in OPEN_PATHS, f"{probe}: a path behind OVEMBED_API_KEYS would fail with 401"
        assert _port_number(server, get["port"]) == configured.port
    # /health reports "loading" (503) only while models preload; without it readiness passes before any model loads.
    assert configured.preload


def test_environment_is_settings_the_service_reads(configured):
    known = _settings_env_names()
    assert set(_config_literals()) <= known
    for container in [_server(), *_pod("Deployment")["initContainers"]]:
        assert {e["name"] for e in container.get("env", [])} <= known, container["name"]
        assert [s["configMapRef"]["name"] for s in container["envFrom"]] == ["ovembed"], container["name"]
    assert configured.host == "0.0.0.0"
    # Kubernetes would otherwise inject OVEMBED_PORT=tcp://... for the Service named `ovembed`.
    for kind in ("Deployment", "Job"):
        assert _pod(kind)["enableServiceLinks"] is False, kind


def test_service_sends_to_the_container_port_settings_default_to(configured):
    service, deployment = _manifests()["Service"], _manifests()["Deployment"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    container_port = _port_number(_server(), port["targetPort"])
    assert container_port == port["port"] == configured.port == Settings.model_fields["port"].default


def test_models_volume_holds_the_models_served_and_quantized(configured):
    claim = _manifests()["PersistentVolumeClaim"]["metadata"]["name"]

    def mount(pod: dict, container: dict) -> Path:
        (volume,) = [v for v in pod["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == claim]
        (path,) = [m["mountPath"] for m in container["volumeMounts"] if m["name"] == volume["name"]]
        return Path(path)

    serving = _pod("Deployment")
    mounted = {mount(serving, c) for c in [*serving["containers"], *serving["initContainers"]]}
    assert mounted == {Path(configured.models_dir)}
    assert all(Path(m).parent == Path(configured.models_dir) for m in configured.models)
    (quantize,) = _pod("Job")["containers"]
    args = quantize["args"]
    output = args[args.index("--output") + 1]
    assert mount(_pod("Job"), quantize) == Path(configured.models_dir)
    assert output in configured.models


def test_quantize_job_runs_the_real_cli_and_skips_a_done_model():
    from ovembed.cli.model import quantize

    (container,) = _pod("Job")["containers"]
    assert container["command"] == ["ovembed", "quantize"]
    params = quantize.make_context("quantize", list(container["args"])).params  # unknown flags raise here
    assert params["model"] == "BAAI/bge-m3"
    assert params["if_changed"] is True
    assert container["env"] == [{"name": "HF_HOME", "value": str(Path(params["output"]).parent / ".hf-cache")}]


def test_images_are_the_ones_docker_compose_builds():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    serving = _pod("Deployment")
    assert {c["image"] for c in [*serving["containers"], *serving["initContainers"]]} == {
        services["openvino-service"]["image"]}
    assert {c["image"] for c in _pod("Job")["containers"]} == {services["quantize"]["image"]}


def test_memory_limit_covers_the_sizing_formula_for_the_configured_model(configured):
    measured = json.loads(MEMORY_FIT.read_text())
    # The fit is BGE-M3 int8's: another model, or a second one beside it, needs its own figures.
    assert [Path(m).name for m in configured.models] == ["bge-m3-int8"]
    needed = (predicted_peak(measured["fit"], configured.batch_tokens, measured["max_length"])
              + (configured.lanes - 1) * SECOND_LANE_MB + PROCESS_MB + QUEUE_AND_RESPONSE_MB)
    resources = _server()["resources"]
    assert _quantity(resources["limits"]["memory"]) / 2**20 >= needed
    assert needed == pytest.approx(3437, abs=1)  # the figure deployment.yaml's comment arrives at


def test_every_serving_container_is_guaranteed_whole_cores():
    """OpenVINO sizes its threads from the CPU affinity mask: only Guaranteed QoS with whole cores gets the pod
    pinned cores (static CPU manager), so its threads match its quota."""
    serving = _pod("Deployment")
    for container in [*serving["containers"], *serving["initContainers"]]:
        assert container["resources"]["requests"] == container["resources"]["limits"], container["name"]
    assert _quantity(_server()["resources"]["requests"]["cpu"]).is_integer()


def test_openvino_threads_match_the_cpu_limit(configured):
    """Without the static CPU manager OpenVINO would count the node's cores: OVEMBED_THREADS pins it to the limit."""
    assert configured.threads == _quantity(_server()["resources"]["limits"]["cpu"])


def test_termination_grace_covers_the_prestop_sleep_and_the_drain(configured):
    (sleep, seconds) = _server()["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep == "sleep"
    assert _pod("Deployment")["terminationGracePeriodSeconds"] > float(seconds) + configured.graceful_timeout_s


def test_startup_probe_allows_the_load_time_docker_compose_allows():
    healthcheck = yaml.safe_load(COMPOSE.read_text())["services"]["openvino-service"]["healthcheck"]
    startup = _server()["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= float(healthcheck["start_period"].rstrip("s"))


def test_autoscaler_and_disruption_budget_act_on_the_deployment():
    manifests = _manifests()
    hpa, pdb, deployment = manifests["HorizontalPodAutoscaler"], manifests["PodDisruptionBudget"], manifests["Deployment"]
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                              "name": deployment["metadata"]["name"]}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    assert "replicas" not in deployment["spec"], "the HPA owns the count; a re-apply would reset it"
    assert pdb["spec"]["selector"] == deployment["spec"]["selector"]
    # A drain must be able to evict one replica while another serves.
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_wait_for_models_init_container_waits_until_the_folders_exist(configured, monkeypatch, tmp_path, capsys):
    (init,) = _pod("Deployment")["initContainers"]
    assert init["command"][:2] == ["python", "-c"]
    folder = tmp_path / "bge-m3-int8"
    monkeypatch.setenv("OVEMBED_MODELS", str(folder))
    monkeypatch.setenv("OVEMBED_MODELS_DIR", str(tmp_path))
    waits = []

    def sleep(seconds: float) -> None:  # the quantize Job finishing while the init container waits
        waits.append(seconds)
        folder.mkdir()

    monkeypatch.setattr(time, "sleep", sleep)
    exec(compile(init["command"][2], "wait-for-models", "exec"), {})  # returns once the folder is there
    assert waits == [10]
    assert str(folder) in capsys.readouterr().out
