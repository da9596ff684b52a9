"""deploy/alertmanager: the config passes amtool, every shipped alert reaches the receiver
of its severity, and alerts are delivered for real: a real Prometheus fires copies of the
shipped alerts at once and sends them, through the shipped alerting block and discovery
file, to a real Alertmanager running the shipped config, whose webhook posts to a
loopback receiver of this test; the warnings a page covers are inhibited there."""

from __future__ import annotations

import copy
import json
import shutil
import subprocess
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.sources import DEPLOY, PROMETHEUS_DIR, rules
from tests.deploy.test_prometheus_rules import run_promtool
from tests.support.servers import (
    LOOPBACK,
    START_TIMEOUT_S,
    MetricsServer,
    PrometheusServer,
    ScrapeTarget,
    poll,
)

ALERTMANAGER_DIR = DEPLOY / "alertmanager"
CONFIG = ALERTMANAGER_DIR / "alertmanager.yml"
#: The file compose mounts as Prometheus' alertmanagers/ folder.
DISCOVERY = ALERTMANAGER_DIR / "targets" / "alertmanager.yml"
#: Where each severity must land (docs/OPERATIONS.md's Alerts table says what each one means).
RECEIVER_OF_SEVERITY = {"critical": "page", "warning": "ticket", "info": "channel"}
DEFAULT_RECEIVER = "default"
#: The live tests wait this long at most for a notification (group_wait is 1 s there).
DELIVERY_TIMEOUT_S = 20.0


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("amtool")
    if binary is None:
        pytest.fail("amtool is missing: scripts/test.sh installs the Debian prometheus-alertmanager package")
    return subprocess.run([binary, *args], capture_output=True, text=True, timeout=30)


def shipped_alerts() -> dict[str, dict[str, Any]]:
    return {rule["alert"]: rule for rule in rules() if "alert" in rule}


def routed_receiver(labels: dict[str, str]) -> str:
    """The receiver Alertmanager's routing tree picks for an alert with ``labels``."""
    matchers = [f"{name}={value}" for name, value in labels.items()]
    result = amtool("config", "routes", "test", f"--config.file={CONFIG}", *matchers)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


# --- the config, offline --------------------------------------------------------------


def test_amtool_check_config() -> None:
    result = amtool("check-config", str(CONFIG))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", sorted(shipped_alerts()))
def test_every_alert_reaches_the_receiver_of_its_severity(name: str) -> None:
    labels = shipped_alerts()[name].get("labels", {})
    severity = labels.get("severity")
    assert severity in RECEIVER_OF_SEVERITY, f"{name}: severity {severity!r} is none of {sorted(RECEIVER_OF_SEVERITY)}"
    alert = {"alertname": name, "job": "gateway-metrics", "provider": "openai", **labels}
    assert routed_receiver(alert) == RECEIVER_OF_SEVERITY[severity]


@pytest.mark.parametrize("severity", [None, "critcal", "page"])
def test_an_alert_without_a_known_severity_still_reaches_the_default_receiver(severity: str | None) -> None:
    labels = {"alertname": "GatewayProviderDown", "job": "gateway-metrics"}
    if severity is not None:
        labels["severity"] = severity
    assert routed_receiver(labels) == DEFAULT_RECEIVER


def test_example_receivers_fit_the_shipped_routes(tmp_path: Path) -> None:
    """deploy/alertmanager/examples/receivers.yml (PagerDuty, mail, Slack) pasted over the
    shipped receivers gives a valid config in which each severity still finds its receiver."""
    config = yaml.safe_load(CONFIG.read_text())
    examples = {r["name"]: r for r in yaml.safe_load((ALERTMANAGER_DIR / "examples" / "receivers.yml").read_text())
                ["receivers"]}
    assert set(examples) == set(RECEIVER_OF_SEVERITY.values())
    config["receivers"] = [examples.get(receiver["name"], receiver) for receiver in config["receivers"]]
    pasted = tmp_path / "alertmanager.yml"
    pasted.write_text(yaml.safe_dump(config))
    result = amtool("check-config", str(pasted))
    assert result.returncode == 0, result.stdout + result.stderr


def test_inhibition_rules_name_shipped_alerts_and_only_mute_lesser_ones() -> None:
    """A renamed alert would silently stop inhibiting; a page must never mute a page."""
    alerts = shipped_alerts()
    config = yaml.safe_load(CONFIG.read_text())
    assert config["inhibit_rules"]
    for rule in config["inhibit_rules"]:
        (source,) = [_alertnames(m, alerts) for m in rule["source_matchers"] if m.startswith("alertname")]
        (targets,) = [_alertnames(m, alerts) for m in rule["target_matchers"] if m.startswith("alertname")]
        for name in source:
            assert alerts[name]["labels"]["severity"] == "critical", name
        for name in targets:
            assert alerts[name]["labels"]["severity"] != "critical", name


def _alertnames(matcher: str, alerts: dict[str, Any]) -> list[str]:
    """The shipped alerts an ``alertname="A"`` or ``alertname=~"A|B"`` matcher names."""
    names = matcher.split("=", 1)[1].lstrip("~").strip('"').split("|")
    unknown = [name for name in names if name not in alerts]
    assert not unknown, f"{matcher}: {unknown} are not in alerts.yml"
    return names


def test_compose_discovery_file_lists_the_compose_alertmanager() -> None:
    (group,) = yaml.safe_load(DISCOVERY.read_text())
    assert group == {"targets": ["alertmanager:9093"]}


def test_prometheus_config_as_compose_mounts_it_passes_promtool(tmp_path: Path) -> None:
    """promtool reads the discovery files of alertmanagers/ too: the compose one must pass."""
    etc = tmp_path / "prometheus"
    shutil.copytree(PROMETHEUS_DIR, etc)
    shutil.rmtree(etc / "alertmanagers")
    shutil.copytree(DISCOVERY.parent, etc / "alertmanagers")
    bad = etc / "alertmanagers" / "typo.yml"
    bad.write_text("- target: [alertmanager:9093]\n")
    assert run_promtool("check", "config", etc / "prometheus.yml").returncode != 0  # it does read them
    bad.unlink()
    result = run_promtool("check", "config", etc / "prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# --- live delivery --------------------------------------------------------------------


class WebhookReceiver:
    """A loopback HTTP server that keeps every JSON body posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        lock = threading.Lock()
        bodies = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    bodies.append({**body, "_path": self.path})
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.url = f"http://{LOOPBACK}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True, name="webhook")
        self._thread.start()

    def notified(self, receiver: str, alertname: str, **labels: str) -> list[dict[str, Any]]:
        """The alerts named ``alertname`` with ``labels`` posted to ``receiver`` so far."""
        return [alert for body in list(self.bodies) if body["receiver"] == receiver
                for alert in body["alerts"] if alert["labels"]["alertname"] == alertname
                and labels.items() <= alert["labels"].items()]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class AlertmanagerServer(MetricsServer):
    """The Debian Alertmanager on a free loopback port, running ``config``."""

    kind = "alertmanager"
    health_path = "/-/ready"

    def __init__(self, tmp_dir: Path, config: dict[str, Any]) -> None:
        self.alertmanager_config = config
        super().__init__(tmp_dir, (), scrape_interval="1s", job="alertmanager", data_dir=None, extra_args=(),
                         start_timeout=START_TIMEOUT_S)

    def write_config(self, targets: Sequence[ScrapeTarget]) -> None:
        self.config_path.write_text(yaml.safe_dump(self.alertmanager_config))

    def argv(self) -> list[str]:
        binary = shutil.which("prometheus-alertmanager")  # Debian's name for alertmanager
        if binary is None:
            pytest.fail("alertmanager is missing: scripts/test.sh installs the Debian prometheus-alertmanager package")
        return [binary, f"--config.file={self.config_path}", f"--storage.path={self.data_dir}",
                f"--web.listen-address={LOOPBACK}:{self.port}", "--cluster.listen-address="]

    def alerts(self) -> list[dict[str, Any]]:
        """What Alertmanager holds, with each alert's status (active, suppressed, inhibitedBy)."""
        return list(self._http.get(self.url + "/api/v2/alerts").json())


class AlertingPrometheus(PrometheusServer):
    """A Prometheus that sends its alerts with the shipped `alerting` block: file-based
    discovery of alertmanagers/*.yml, here a copy of the compose discovery file pointed at
    ``alertmanager``."""

    def __init__(self, *args: Any, alertmanager: str, **kwargs: Any) -> None:
        self.alertmanager = alertmanager
        super().__init__(*args, **kwargs)

    def config(self, targets: Sequence[ScrapeTarget]) -> dict[str, Any]:
        folder = self.workdir / "alertmanagers"
        folder.mkdir(exist_ok=True)
        (folder / DISCOVERY.name).write_text(DISCOVERY.read_text().replace("alertmanager:9093", self.alertmanager))
        alerting = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())["alerting"]
        for manager in alerting["alertmanagers"]:
            for discovery in manager["file_sd_configs"]:
                discovery["files"] = [str(self.workdir / pattern) for pattern in discovery["files"]]
        return {**super().config(targets), "alerting": alerting}

    def alertmanagers(self) -> list[dict[str, str]]:
        """The Alertmanagers Prometheus has discovered and sends to."""
        return list(self._http.get(self.url + "/api/v1/alertmanagers").json()["data"]["activeAlertmanagers"])


def delivery_config(webhook_url: str) -> dict[str, Any]:
    """The shipped config with every receiver posting to ``webhook_url``/<receiver> and
    every group_wait 1 s (shipped: 10 to 30 s), nothing else changed."""
    config = yaml.safe_load(CONFIG.read_text())
    for receiver in config["receivers"]:
        receiver["webhook_configs"] = [{**hook, "url": f"{webhook_url}/{receiver['name']}"}
                                       for hook in receiver["webhook_configs"]]

    def shorten(route: dict[str, Any]) -> None:
        if "group_wait" in route:
            route["group_wait"] = "1s"
        for child in route.get("routes", []):
            shorten(child)

    shorten(config["route"])
    return config


@dataclass(frozen=True)
class Firing:
    """A copy of a shipped alert that fires with ``labels`` and ``value`` as soon as
    Prometheus has discovered the Alertmanager. Earlier, Prometheus would drop it and send
    it again only a minute later; and Alertmanager flushes an alert that started more than
    group_wait ago at once, before the inhibition rules have seen the page that mutes it."""

    alert: str
    labels: dict[str, str]
    value: float
    #: The receiver it must reach, or None: inhibited, it must reach none.
    receiver: str | None

    def rule(self) -> dict[str, Any]:
        rule = copy.deepcopy(shipped_alerts()[self.alert])
        rule.pop("for", None)
        expr = f"vector({self.value})"
        for name, value in self.labels.items():  # series labels, so the annotations see them
            expr = f'label_replace({expr}, "{name}", "{value}", "", "")'
        rule["expr"] = f"{expr} and on () prometheus_notifications_alertmanagers_discovered > 0"
        return rule


JOB = {"job": "gateway-metrics"}
FIRINGS = [
    # Provider x is down: one page; its low health score and flapping breaker are muted.
    Firing("GatewayProviderDown", {**JOB, "provider": "x"}, 1, "page"),
    Firing("GatewayProviderHealthLow", {**JOB, "provider": "x"}, 0.3, None),
    Firing("GatewayCircuitFlapping", {**JOB, "provider": "x"}, 5, None),
    # Provider y's score is low but it is not down: a ticket.
    Firing("GatewayProviderHealthLow", {**JOB, "provider": "y"}, 0.42, "ticket"),
    # The job burns its budget: its per-route warnings are muted, another job's are not.
    Firing("GatewayErrorBudgetBurn", {**JOB, "window": "1h"}, 0.2, "page"),
    Firing("GatewayHighErrorRatio", {**JOB, "endpoint": "/v1/chat/completions"}, 0.2, None),
    Firing("GatewayHighErrorRatio", {"job": "gateway-metrics-canary", "endpoint": "/v1/chat/completions"}, 0.1,
           "ticket"),
    Firing("GatewayRecordingRejects", {**JOB, "helper": "record_tokens", "reason": "negative"}, 3, "channel"),
]


@dataclass
class Delivery:
    webhook: WebhookReceiver
    alertmanager: AlertmanagerServer
    prometheus: PrometheusServer


@pytest.fixture(scope="module")
def delivery(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Delivery]:
    tmp = tmp_path_factory.mktemp("alert-delivery")
    rule_file = tmp / "firing.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "firing", "rules": [f.rule() for f in FIRINGS]}]}))
    webhook = WebhookReceiver()
    try:
        with AlertmanagerServer(tmp, delivery_config(webhook.url)) as alertmanager, AlertingPrometheus(
            tmp, ["self"], scrape_interval="1s", job="prometheus", data_dir=None, extra_args=(),
            start_timeout=START_TIMEOUT_S, rule_files=[rule_file], alertmanager=f"{LOOPBACK}:{alertmanager.port}",
        ) as prometheus:
            yield Delivery(webhook, alertmanager, prometheus)
    finally:
        webhook.stop()


@pytest.mark.parametrize("firing", [f for f in FIRINGS if f.receiver], ids=lambda f: f"{f.alert}-{f.receiver}")
def test_alerts_are_delivered_to_their_receiver_with_labels_and_annotations(delivery: Delivery,
                                                                            firing: Firing) -> None:
    assert firing.receiver is not None
    (alert, *_) = poll(lambda: delivery.webhook.notified(firing.receiver, firing.alert, **firing.labels),
                       DELIVERY_TIMEOUT_S, f"{firing.alert} at the webhook\n{delivery.alertmanager.log_tail()}")
    shipped = shipped_alerts()[firing.alert]
    assert alert["status"] == "firing"
    assert alert["labels"] == {"alertname": firing.alert, **shipped["labels"], **firing.labels}
    assert set(alert["annotations"]) == set(shipped["annotations"])
    for name, value in firing.labels.items():
        if f"$labels.{name}" in shipped["annotations"]["summary"]:
            assert value in alert["annotations"]["summary"], alert["annotations"]
    assert alert["annotations"]["runbook"] == shipped["annotations"]["runbook"]
    assert "{{" not in alert["annotations"]["description"]  # rendered, with the value


def test_the_description_carries_the_value(delivery: Delivery) -> None:
    (alert, *_) = poll(lambda: delivery.webhook.notified("ticket", "GatewayProviderHealthLow", provider="y"),
                       DELIVERY_TIMEOUT_S, "GatewayProviderHealthLow at the webhook")
    assert "is 0.42 " in alert["annotations"]["description"]


@pytest.mark.parametrize("firing", [f for f in FIRINGS if not f.receiver], ids=lambda f: f.alert)
def test_the_warnings_a_page_covers_are_inhibited(delivery: Delivery, firing: Firing) -> None:
    def held() -> list[dict[str, Any]]:
        return [alert for alert in delivery.alertmanager.alerts()
                if alert["labels"]["alertname"] == firing.alert and firing.labels.items() <= alert["labels"].items()]

    (alert,) = poll(held, DELIVERY_TIMEOUT_S, f"{firing.alert} in Alertmanager")
    assert alert["status"]["state"] == "suppressed", alert["status"]
    assert alert["status"]["inhibitedBy"], alert["status"]
    # Its group was due with the others (the same group_wait): nothing was sent for it.
    poll(lambda: all(delivery.webhook.notified(f.receiver, f.alert, **f.labels) for f in FIRINGS if f.receiver),
         DELIVERY_TIMEOUT_S, "every delivered alert at the webhook")
    sent = [body for body in delivery.webhook.bodies for alert in body["alerts"]
            if alert["labels"]["alertname"] == firing.alert and firing.labels.items() <= alert["labels"].items()]
    assert not sent, (sent, delivery.alertmanager.alerts())
