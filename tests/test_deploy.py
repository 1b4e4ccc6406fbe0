"""The production topology, checked without a Docker engine: docker-compose.yml, the image, the
Prometheus scrape targets and the Grafana dashboard must agree with each other and with what
crewline reads and exports. Where a Docker engine exists, one marked test brings the stack up."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from crewline.metrics import Metrics
from crewline.settings import Settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES: dict[str, Any] = COMPOSE["services"]
CREWLINE = ("api", "worker")
LOOPBACK = "${CREWLINE_BIND:-127.0.0.1}:"


def env_of(name: str) -> dict[str, str]:
    return {k: str(v) for k, v in SERVICES[name].get("environment", {}).items()}


def default_of(value: str) -> str:
    """`${VAR:-default}` → default (what compose uses when VAR is unset)."""
    match = re.fullmatch(r"\$\{\w+:-(.*)\}", value)
    return match.group(1) if match else value


def test_every_part_of_the_topology_is_there_and_pinned() -> None:
    assert set(SERVICES) == {
        "temporal-db", "temporal", "temporal-ui", "app-db", "api", "worker",
        "jaeger", "prometheus", "grafana",
    }  # fmt: skip
    for name, service in SERVICES.items():
        assert ("image" in service) != ("build" in service), name
        if "image" in service:
            assert ":" in service["image"] and not service["image"].endswith(":latest"), name
    assert SERVICES["worker"]["deploy"]["replicas"] == 2
    assert SERVICES["worker"]["command"] == ["crewline", "worker"]
    assert SERVICES["api"]["command"] == ["crewline", "api"]


def test_only_what_a_user_needs_is_published_and_only_on_loopback() -> None:
    published = {n: s["ports"] for n, s in SERVICES.items() if "ports" in s}
    assert set(published) == {"temporal", "temporal-ui", "api", "jaeger", "prometheus", "grafana"}
    for ports in published.values():
        assert all(p.startswith(LOOPBACK) for p in ports), ports


def test_it_comes_up_in_order() -> None:
    for name in ("temporal-db", "app-db", "temporal", "api", "worker"):
        assert "test" in SERVICES[name]["healthcheck"], name
    for name in CREWLINE:
        needs = SERVICES[name]["depends_on"]
        assert needs["temporal"]["condition"] == "service_healthy"
        assert needs["app-db"]["condition"] == "service_healthy"
    assert SERVICES["temporal"]["depends_on"]["temporal-db"]["condition"] == "service_healthy"
    # Versioned workers need a server with worker heartbeats, and the flags that enable them.
    tag = SERVICES["temporal"]["image"].rpartition(":")[2]
    assert tuple(int(p) for p in tag.split(".")) >= (1, 29, 1)
    mounted = SERVICES["temporal"]["volumes"][0].split(":")[0]
    flags = yaml.safe_load((REPO / mounted).read_text())
    assert flags["frontend.WorkerHeartbeatsEnabled"][0]["value"] is True
    assert flags["frontend.ListWorkersEnabled"][0]["value"] is True


def test_crewline_services_set_only_variables_crewline_reads_and_no_secret() -> None:
    known = {f.alias for f in Settings.model_fields.values()}
    for name in CREWLINE:
        env = env_of(name)
        assert set(env) <= known, (
            f"{name} sets variables crewline does not read: {set(env) - known}"
        )
        for needed in ("TEMPORAL_ADDRESS", "DATABASE_URL", "OTEL_EXPORTER_OTLP_ENDPOINT"):
            assert needed in env, (name, needed)
        assert not {"GROQ_API_KEY", "LLM_API_KEY", "CREWLINE_ADMIN_KEY"} & set(env)
        assert SERVICES[name]["env_file"][0]["path"] == ".env"  # secrets from there
        host = re.match(r"postgresql\+psycopg://[^@]+@([\w-]+):", env["DATABASE_URL"])
        assert host and host.group(1) == "app-db"
        otlp = httpx.URL(env["OTEL_EXPORTER_OTLP_ENDPOINT"])
        assert otlp.host == "jaeger" and otlp.port == 4318  # Jaeger's OTLP/HTTP port
    assert env_of("api")["OTEL_SERVICE_NAME"] == "crewline-api"
    assert env_of("worker")["OTEL_SERVICE_NAME"] == "crewline-worker"
    assert env_of("jaeger")["COLLECTOR_OTLP_ENABLED"] == "true"


def test_prometheus_scrapes_what_the_services_serve() -> None:
    mounted = dict(v.split(":")[:2][::-1] for v in SERVICES["prometheus"]["volumes"] if "./" in v)
    config = yaml.safe_load((REPO / mounted["/etc/prometheus/prometheus.yml"]).read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"crewline-api", "crewline-worker", "temporal"}
    api_env, worker_env = env_of("api"), env_of("worker")
    # The API: its port, bound beyond loopback, and `api` among the Host names it answers.
    [api_target] = jobs["crewline-api"]["static_configs"][0]["targets"]
    assert api_target == f"api:{Settings.model_fields['api_port'].default}"
    assert api_env["API_HOST"] == "0.0.0.0"
    assert "api" in default_of(api_env["ALLOWED_HOSTS"]).split(",")
    # Every worker replica, by DNS, on the port its metrics endpoint listens on.
    [sd] = jobs["crewline-worker"]["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["port"] == int(worker_env["WORKER_METRICS_PORT"])
    assert worker_env["WORKER_METRICS_HOST"] == "0.0.0.0"
    # Temporal's own metrics endpoint.
    [temporal_target] = jobs["temporal"]["static_configs"][0]["targets"]
    port = env_of("temporal")["PROMETHEUS_ENDPOINT"].rpartition(":")[2]
    assert temporal_target == f"temporal:{port}"


def test_grafana_dashboard_uses_metrics_crewline_exports() -> None:
    mounts = dict(v.split(":")[:2][::-1] for v in SERVICES["grafana"]["volumes"])
    provisioning = REPO / mounts["/etc/grafana/provisioning"]
    [datasource] = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert httpx.URL(datasource["url"]).host == "prometheus"
    dashboards = REPO / mounts["/var/lib/grafana/dashboards"]
    dashboard = json.loads((dashboards / "crewline.json").read_text())
    exported = {
        sample
        for family in Metrics().registry.collect()
        for sample in (family.name, f"{family.name}_total", f"{family.name}_bucket")
    } | {"crewline_runs"}  # the API's runs-table gauge
    used = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used |= set(re.findall(r"\bcrewline_\w+", target["expr"]))
    assert used and used <= exported, used - exported
    assert len(dashboard["panels"]) >= 10


def test_the_image_runs_unprivileged_without_dev_dependencies_or_secrets() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    users = re.findall(r"^USER (\S+)", dockerfile, flags=re.M)
    assert users and users[-1] not in ("root", "0")
    assert "pip install --no-cache-dir '.[postgres]'" in dockerfile and "[dev]" not in dockerfile
    ignored = (REPO / ".dockerignore").read_text().split()
    assert {".env", ".crewline", ".venv", ".git"} <= set(ignored)


def _docker_engine() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0


@pytest.mark.docker
@pytest.mark.skipif(
    not _docker_engine(), reason="no Docker engine here (the client alone is not enough)"
)
def test_the_stack_comes_up_and_runs_a_pipeline(tmp_path: Path) -> None:
    compose = ["docker", "compose", "-p", "crewline-test", "-f", str(REPO / "docker-compose.yml")]
    env_file = REPO / ".env"
    assert not env_file.exists(), "the test writes its own .env; move yours aside"
    env_file.write_text("LLM_PROVIDER=scripted\nCREWLINE_ADMIN_KEY=compose-test-admin-key-0123\n")
    try:
        subprocess.run([*compose, "up", "--build", "-d", "--wait"], check=True, timeout=900)
        auth = {"Authorization": "Bearer compose-test-admin-key-0123"}
        started = httpx.post(
            "http://127.0.0.1:8000/runs", json={"query": "Build a snake game"}, headers=auth
        )
        assert started.status_code == 202, started.text
        run_id = started.json()["run_id"]
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            run = httpx.get(f"http://127.0.0.1:8000/runs/{run_id}", headers=auth).json()
            if run["status"] == "COMPLETED":
                break
            time.sleep(1)
        assert run["status"] == "COMPLETED", run
    finally:
        env_file.unlink(missing_ok=True)
        subprocess.run([*compose, "down", "-v"], timeout=300)
