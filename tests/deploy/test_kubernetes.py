"""deploy/kubernetes, offline: every kustomization renders with kubectl's kustomize, the core
objects pass kubernetes-validate --strict for Kubernetes 1.32, the ServiceMonitor and the
PrometheusRule pass prometheus-operator v0.93's CRD schemas with unknown fields rejected,
promtool checks the rule groups, checkov reports no failed check, the generated files are
fresh, and the objects are what docs/KUBERNETES.md says they are.

The pod itself runs in tests/deploy/test_kubernetes_pod.py.
"""

from __future__ import annotations

import copy
import functools
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from app import cli

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
CRDS = Path(__file__).resolve().parent / "crds"
KUBERNETES_VERSION = "1.32"
RENDER_TIMEOUT_S = 60
CHECKOV_TIMEOUT_S = 300
RELEASE = {"release": "kube-prometheus-stack"}
#: The kustomizations a user applies: the default install and each overlay.
KUSTOMIZATIONS = sorted(path.parent for path in KUBERNETES.rglob("kustomization.yaml"))
CRD_KINDS = {"ServiceMonitor": "servicemonitors", "PrometheusRule": "prometheusrules"}


def _name(folder: Path) -> str:
    return str(folder.relative_to(KUBERNETES)) if folder != KUBERNETES else "default"


@functools.cache
def rendered(folder: Path) -> list[dict[str, Any]]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run(["kubectl", "kustomize", str(folder)], capture_output=True, text=True,
                            timeout=RENDER_TIMEOUT_S)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def objects(folder: Path, kind: str) -> list[dict[str, Any]]:
    return [doc for doc in rendered(folder) if doc["kind"] == kind]


def one(folder: Path, kind: str, name: str = "gateway-metrics") -> dict[str, Any]:
    found = [doc for doc in objects(folder, kind) if doc["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def _generator() -> Any:
    spec = importlib.util.spec_from_file_location("kubernetes_generator", ROOT / "scripts" / "kubernetes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -- one source, rendered ---------------------------------------------------------------


def test_the_default_install_is_the_root_and_variants_build_on_base() -> None:
    assert KUBERNETES in KUSTOMIZATIONS and KUBERNETES / "overlays" / "example-gateway" in KUSTOMIZATIONS
    for folder in KUSTOMIZATIONS:
        resources = yaml.safe_load((folder / "kustomization.yaml").read_text()).get("resources", [])
        for resource in resources:
            target = (folder / resource).resolve()
            # Never on the root: kustomize refuses the cycle of an overlay inside its base.
            assert target != KUBERNETES or folder == KUBERNETES, (folder, resource)
            assert target == KUBERNETES / "base" or target.is_relative_to(folder), (folder, resource)


def test_the_generated_rules_and_dashboards_are_fresh() -> None:
    for path, text in _generator().rendered().items():
        assert path.exists() and path.read_text() == text, (
            f"{path.relative_to(ROOT)} is stale: run .venv/bin/python scripts/kubernetes.py")


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=_name)
def test_every_kustomization_renders(folder: Path) -> None:
    kinds = {doc["kind"] for doc in rendered(folder)}
    assert {"Namespace", "Deployment", "Service", "ServiceMonitor", "PrometheusRule", "ConfigMap",
            "HorizontalPodAutoscaler", "PodDisruptionBudget", "NetworkPolicy"} <= kinds
    assert "Secret" not in kinds  # the token is the user's: never committed, never generated here


# -- schemas ------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=_name)
def test_core_objects_pass_kubernetes_validate_strict(folder: Path) -> None:
    core = [doc for doc in rendered(folder) if doc["kind"] not in CRD_KINDS]
    assert core
    for doc in core:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{doc['kind']}/{doc['metadata']['name']}: {error.message} at {list(error.path)}")


def strict(schema: Any) -> Any:
    """A CRD's openAPIV3Schema as a JSON schema that rejects unknown fields."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) for key, value in schema.items() if not key.startswith("x-kubernetes-")}
    if schema.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in schema and "additionalProperties" not in schema \
            and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schema(kind: str) -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / f"monitoring.coreos.com_{CRD_KINDS[kind]}.yaml").read_text())
    assert crd["metadata"]["annotations"]["operator.prometheus.io/version"] == "0.93.0"
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    # The API server owns metadata's schema: check the fields this project sets.
    schema["properties"]["metadata"] = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "namespace": {"type": "string"},
                       "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                       "annotations": {"type": "object", "additionalProperties": {"type": "string"}}},
        "required": ["name"], "additionalProperties": False,
    }
    return schema


def validate_crd(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"] == "monitoring.coreos.com/v1"
    jsonschema.Draft7Validator(crd_schema(doc["kind"])).validate(doc)


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=_name)
def test_monitoring_objects_pass_the_operators_crd_schemas_strictly(folder: Path) -> None:
    for kind in CRD_KINDS:
        validate_crd(one(folder, kind))


def test_the_crd_check_rejects_a_misspelt_field() -> None:
    monitor = copy.deepcopy(one(KUBERNETES, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        validate_crd(monitor)
    rule = copy.deepcopy(one(KUBERNETES, "PrometheusRule"))
    rule["spec"]["groups"][0]["rules"][0]["exprr"] = "up"
    with pytest.raises(jsonschema.ValidationError, match="exprr"):
        validate_crd(rule)


# -- rules and dashboards -----------------------------------------------------------------


def _source_groups() -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for name in ("recording.yml", "alerts.yml"):
        groups += yaml.safe_load((ROOT / "deploy" / "prometheus" / "rules" / name).read_text())["groups"]
    return groups


def _normalised(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _normalised(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_normalised(item) for item in value]
    if isinstance(value, str):
        return "\n".join(line.rstrip() for line in value.split("\n"))
    return value


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=_name)
def test_the_prometheus_rule_holds_exactly_the_shipped_groups(folder: Path, tmp_path: Path) -> None:
    rule = one(folder, "PrometheusRule")
    assert rule["metadata"]["labels"].items() >= RELEASE.items()
    assert _normalised(rule["spec"]["groups"]) == _normalised(_source_groups())
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool is not installed: scripts/test.sh installs Debian's prometheus")
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=_name)
def test_one_config_map_per_shipped_dashboard(folder: Path) -> None:
    shipped = {path.name: path.read_text() for path in (ROOT / "deploy" / "grafana" / "dashboards").glob("*.json")}
    maps = [doc for doc in objects(folder, "ConfigMap") if doc["metadata"].get("labels", {}).get("grafana_dashboard")]
    assert len(maps) == len(shipped)
    served: dict[str, str] = {}
    for config_map in maps:
        assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert config_map["metadata"]["annotations"]["grafana_folder"]
        served.update(config_map["data"])
    assert served == shipped
    for text in served.values():
        json.loads(text)


# -- the objects --------------------------------------------------------------------------


def _container(folder: Path, name: str = "gateway-metrics") -> dict[str, Any]:
    (container,) = [c for c in one(folder, "Deployment", name)["spec"]["template"]["spec"]["containers"]]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item.get("value", "") for item in container.get("env", [])}


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=_name)
def test_the_fleet_shares_through_redis_and_scales_from_two(folder: Path) -> None:
    deployment = one(folder, "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    assert _env(_container(folder))["GATEWAY_METRICS_REDIS_URL"] == "redis://gateway-metrics-redis:6379/0"
    redis = one(folder, "Service", "gateway-metrics-redis")
    assert redis["spec"]["ports"][0]["port"] == 6379
    assert one(folder, "Deployment", "gateway-metrics-redis")["spec"]["replicas"] == 1
    hpa = one(folder, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2" and hpa["spec"]["minReplicas"] >= 2
    assert one(folder, "PodDisruptionBudget")["spec"]["minAvailable"] >= 1
    # Redis only from the service's pods; the service's pods on their ports.
    policies = {doc["metadata"]["name"]: doc for doc in objects(folder, "NetworkPolicy")}
    (redis_rule,) = policies["gateway-metrics-redis"]["spec"]["ingress"]
    assert [peer["podSelector"]["matchLabels"] for peer in redis_rule["from"]] == [
        deployment["spec"]["selector"]["matchLabels"]]
    ports = {port["name"] for port in _container(folder)["ports"]}
    assert {port["port"] for port in policies["gateway-metrics"]["spec"]["ingress"][0]["ports"]} == ports


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=_name)
def test_the_service_monitor_scrapes_every_family_once_with_the_token(folder: Path) -> None:
    monitor = one(folder, "ServiceMonitor")
    assert monitor["metadata"]["labels"].items() >= RELEASE.items()
    service = one(folder, "Service")
    named = {port["name"] for port in service["spec"]["ports"]}
    assert all(port.get("name") for port in service["spec"]["ports"])
    # One endpoint on /metrics (every family): the category endpoints overlap.
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] in named
    assert endpoint["authorization"] == {"type": "Bearer",
                                         "credentials": {"name": "gateway-metrics-token", "key": "token"}}
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    volumes = one(folder, "Deployment")["spec"]["template"]["spec"]["volumes"]
    assert {"name": "token", "secret": {"secretName": "gateway-metrics-token", "defaultMode": 0o440}} in volumes


def _pods(folder: Path) -> list[dict[str, Any]]:
    return [doc["spec"]["template"]["spec"] for doc in objects(folder, "Deployment")]


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=_name)
def test_every_container_meets_the_restricted_standard_with_a_read_only_root(folder: Path) -> None:
    namespace = objects(folder, "Namespace")[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    for pod in _pods(folder):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for volume in pod["volumes"]:
            assert set(volume) - {"name"} <= {"emptyDir", "secret", "configMap", "projected"}, volume
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"] == {"drop": ["ALL"]}
            assert context["runAsNonRoot"] is True and context["runAsUser"] >= 10000
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert context["readOnlyRootFilesystem"] is True
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                assert probe in container, (container["name"], probe)


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=_name)
def test_the_multiprocess_directory_is_an_empty_dir_of_the_pod(folder: Path) -> None:
    container = _container(folder)
    env = _env(container)
    if "--workers" not in container["command"]:
        assert "PROMETHEUS_MULTIPROC_DIR" not in env
        return
    pod = one(folder, "Deployment")["spec"]["template"]["spec"]
    empty_dirs = {volume["name"] for volume in pod["volumes"] if "emptyDir" in volume}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert mounts[env["PROMETHEUS_MULTIPROC_DIR"]] in empty_dirs


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=_name)
def test_the_grace_period_covers_the_prestop_sleep_and_the_drain(folder: Path) -> None:
    pod = one(folder, "Deployment")["spec"]["template"]["spec"]
    sleep = _container(folder)["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert pod["terminationGracePeriodSeconds"] - sleep > cli.DRAIN_S + cli.EXPORTER_STOP_S


def test_the_example_gateway_overlay_runs_the_example() -> None:
    folder = KUBERNETES / "overlays" / "example-gateway"
    container = _container(folder)
    assert "examples/openai_gateway.py" in container["command"]
    assert (ROOT / "examples" / "openai_gateway.py").exists()
    assert "COPY examples" in (ROOT / "Dockerfile").read_text()
    assert _env(container)["GATEWAY_UPSTREAMS"]
    assert one(folder, "Deployment")["spec"]["replicas"] >= 2


# -- checkov ------------------------------------------------------------------------------


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=_name)
def test_checkov_reports_no_failed_check(folder: Path, tmp_path: Path) -> None:
    checkov = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "checkov"
    binary = str(checkov) if checkov.exists() else shutil.which("checkov")
    if binary is None:
        pytest.skip("checkov is not installed (the test extra installs it)")
    (tmp_path / "render.yaml").write_text(yaml.safe_dump_all(rendered(folder), sort_keys=False))
    result = subprocess.run(
        [binary, "--framework", "kubernetes", "-d", str(tmp_path), "--output", "json", "--quiet",
         "--skip-download", "--compact"],
        capture_output=True, text=True, timeout=CHECKOV_TIMEOUT_S,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BC_SKIP_MAPPING": "TRUE"},
    )
    report = json.loads(result.stdout)
    results = report["results"]
    failed = [(check["check_id"], check["resource"]) for check in results.get("failed_checks", [])]
    assert not failed, failed
    assert report["summary"]["passed"] > 100
    # Every skip comes from a checkov.io/skipN annotation that says why.
    for check in results.get("skipped_checks", []):
        assert len(check["check_result"].get("suppress_comment", "")) > 40, check["check_id"]


# -- what the pods rely on: secrets as files, readiness with workers ------------------------


def test_a_secret_file_is_read_and_read_again_when_it_changes(tmp_path: Path) -> None:
    from app.settings import Settings

    token = tmp_path / "token"
    token.write_text("first-token\n")
    settings = Settings(api_key_file=str(token), access_log=False)
    assert settings.bearer_token == b"first-token"
    rotated = tmp_path / "token.new"
    rotated.write_text("second-token")
    os.replace(rotated, token)  # how the kubelet swaps a mounted Secret
    assert settings.bearer_token == b"second-token"
    token.write_text("")  # a rotation gone wrong never opens the routes
    assert settings.bearer_token == b"second-token"
    assert "second-token" not in repr(settings) and "second-token" not in str(settings.model_dump())


@pytest.mark.parametrize("name", ["api_key", "prometheus_bearer_token", "prometheus_password"])
def test_a_value_and_its_file_together_is_a_start_up_error(name: str, tmp_path: Path) -> None:
    from pydantic import ValidationError

    from app.settings import Settings

    secret = tmp_path / "secret"
    secret.write_text("from-the-file")
    variable = f"GATEWAY_METRICS_{name.upper()}"
    with pytest.raises(ValidationError, match=f"{variable} and {variable}_FILE are both set") as caught:
        Settings(**{name: "from-the-environment", f"{name}_file": str(secret)})
    assert "from-the-environment" not in str(caught.value)
    with pytest.raises(ValidationError, match=f"{variable}_FILE: cannot read"):
        Settings(**{f"{name}_file": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text("\n")
    with pytest.raises(ValidationError, match="is empty"):
        Settings(**{f"{name}_file": str(tmp_path / "empty")})
    assert Settings(**{f"{name}_file": str(secret)}).model_dump()[name].get_secret_value() == "from-the-file"


def test_with_workers_ready_waits_for_the_exporters_port() -> None:
    import socket

    from fastapi.testclient import TestClient

    from app.main import create_app
    from app.settings import Settings
    from app.telemetry import Telemetry
    from tests.support.servers import LOOPBACK, free_port

    port = free_port()
    settings = Settings(host=LOOPBACK, exporter_port=port, access_log=False)
    with TestClient(create_app(settings, Telemetry(settings))) as client:
        answer = client.get("/ready")
        assert answer.status_code == 503 and str(port) in answer.json()["waiting_for"]
        assert client.get("/health").status_code == 200
        with socket.socket() as listener:
            listener.bind((LOOPBACK, port))
            listener.listen()
            assert client.get("/ready").status_code == 200
