"""docker-compose.yml: valid for Compose (checked offline by Debian's docker-compose), the
service alone by default, Prometheus, Alertmanager and Grafana with the `observability`
profile, provisioned from deploy/."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.sources import ROOT

COMPOSE = ROOT / "docker-compose.yml"


def compose_config(*args: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    binary = shutil.which("docker-compose")
    if binary is None:
        pytest.fail("docker-compose is missing: scripts/test.sh installs the Debian docker-compose package")
    result = subprocess.run([binary, "-f", str(COMPOSE), *args, "config"], capture_output=True, text=True,
                            timeout=60, cwd=ROOT, env={**os.environ, **(env or {})})
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)


def test_observability_profile_config_is_valid() -> None:
    config = compose_config("--profile", "observability", env={"GRAFANA_ADMIN_PASSWORD": "s3cret-for-test"})
    services = config["services"]
    assert set(services) == {"gateway-metrics", "prometheus", "alertmanager", "grafana"}
    assert services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "s3cret-for-test"
    assert services["prometheus"]["depends_on"]["gateway-metrics"]["condition"] == "service_healthy"


def test_prometheus_sends_alerts_to_the_profiles_alertmanager() -> None:
    services = compose_config("--profile", "observability")["services"]
    alertmanager = services["alertmanager"]
    assert alertmanager["image"] == "prom/alertmanager:v0.25.0"  # the Debian version the tests deliver with
    assert "--config.file=/etc/alertmanager/alertmanager.yml" in alertmanager["command"]
    assert {"source": str(ROOT / "deploy" / "alertmanager"), "target": "/etc/alertmanager", "read_only": True} \
        in _binds(alertmanager)
    assert "/-/ready" in " ".join(alertmanager["healthcheck"]["test"])
    assert any(port.startswith("127.0.0.1:9093:9093") for port in alertmanager["ports"])
    # Prometheus' file-based discovery of alertmanagers/*.yml reads the compose list, which
    # names the service at its port: alertmanager:9093.
    mounts = {bind["target"]: bind["source"] for bind in _binds(services["prometheus"])}
    listed = Path(mounts["/etc/prometheus/alertmanagers"]) / "alertmanager.yml"
    assert yaml.safe_load(listed.read_text()) == [{"targets": ["alertmanager:9093"]}]


def _binds(service: dict[str, Any]) -> list[dict[str, Any]]:
    """host:container[:ro] volumes as {source, target, read_only} (named volumes left out)."""
    binds = []
    for volume in service["volumes"]:
        source, target, *mode = volume.split(":")
        if source.startswith("/"):
            binds.append({"source": source, "target": target, "read_only": mode == ["ro"]})
    return binds


def test_the_service_has_its_health_check() -> None:
    service = compose_config()["services"]["gateway-metrics"]
    assert "/health" in " ".join(service["healthcheck"]["test"])


def test_mounted_folders_exist() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    for name in ("prometheus", "alertmanager", "grafana"):
        assert services[name]["profiles"] == ["observability"]
        for volume in services[name]["volumes"]:
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (ROOT / source).is_dir(), volume


def test_metrics_port_is_not_published() -> None:
    service = yaml.safe_load(COMPOSE.read_text())["services"]["gateway-metrics"]
    port = service["environment"]["GATEWAY_METRICS_METRICS_PORT"]
    assert not any(port in mapping for mapping in service["ports"])
    targets = (ROOT / "deploy" / "prometheus" / "targets" / "gateway-metrics.yml").read_text()
    assert f"gateway-metrics:{port}" in targets
