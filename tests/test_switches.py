"""Every setting turned and observed where it acts, in this process: the summaries' backend
(TLS, basic auth, job, cache), the summaries (window, top-N, history budget), the health
score (weights, Apdex threshold), the probes' intervals, the Redis key prefix and the access
log. Settings are read from ``GATEWAY_METRICS_*`` variables where the variable's own parsing
matters (booleans, paths, weights).

The switches that act across processes (the exporter's bearer token, the gauges'
multiprocess modes, the console script's ports, ``PROBE_URLS`` in a service) are in
``tests/integration/test_switches_live.py``.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import certifi
import pytest
from fastapi.testclient import TestClient

from app import access_log
from app.main import create_app
from app.settings import Settings
from app.telemetry import Telemetry
from tests.support.loopback_targets import Certificates, FakePrometheus, ProbeTarget, make_certificates

SUMMARY = "/prometheus/metrics/summary"
HEALTH = "/prometheus/metrics/health"
#: Upper bound of every wait; waits poll, and nothing is asserted on how long they took.
WAIT_S = 15.0


def wait_for(condition: Callable[[], Any], what: str, timeout_s: float = WAIT_S) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.02)


def app_client(settings: Settings) -> TestClient:
    """An app with a telemetry of its own, so nothing recorded elsewhere reaches it."""
    return TestClient(create_app(settings, Telemetry(settings)))


def models_summary(client: TestClient, **params: Any) -> dict[str, Any]:
    response = client.get(SUMMARY, params={"category": "models", **params})
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No GATEWAY_METRICS_* from the outer environment; requests' CA bundle pinned to
    certifi's (which does not know the test's CA), as on a host without a custom bundle."""
    import os

    for name in list(os.environ):
        if name.startswith("GATEWAY_METRICS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", certifi.where())
    monkeypatch.setenv("GATEWAY_METRICS_ACCESS_LOG", "false")
    return monkeypatch


# --- the backend: TLS ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def https_backend(certificates: Certificates) -> Iterator[FakePrometheus]:
    with FakePrometheus(tls=certificates) as backend:
        yield backend


def test_tls_is_verified_by_default_and_an_unknown_certificate_is_an_error(
        clean_env: pytest.MonkeyPatch, https_backend: FakePrometheus) -> None:
    clean_env.setenv("GATEWAY_METRICS_PROMETHEUS_URL", https_backend.url)
    with app_client(Settings()) as client:
        summary = models_summary(client)
        ready = client.get("/ready").json()["backend"]
    assert summary["source"] == "local"  # answered from the local registry instead
    unreachable = [error for error in summary["errors"] if error["kind"] == "unreachable"]
    assert unreachable and "certificate verify failed" in unreachable[0]["message"].lower()
    assert ready["configured"] is True and ready["reachable"] is False
    assert "certificate verify failed" in ready["error"].lower()
    assert https_backend.seen() == []  # nothing got past the handshake
    assert https_backend.handshake_failures > 0


def test_ca_bundle_makes_the_backend_trusted(clean_env: pytest.MonkeyPatch, https_backend: FakePrometheus,
                                             certificates: Certificates) -> None:
    clean_env.setenv("GATEWAY_METRICS_PROMETHEUS_URL", https_backend.url)
    clean_env.setenv("GATEWAY_METRICS_PROMETHEUS_CA_BUNDLE", str(certificates.ca))
    with app_client(Settings()) as client:
        summary = models_summary(client)
        ready = client.get("/ready").json()["backend"]
    assert summary["source"] == "prometheus" and summary["errors"] == []
    assert ready["reachable"] is True and ready["error"] is None
    assert https_backend.queries()


@pytest.mark.filterwarnings("ignore::urllib3.exceptions.InsecureRequestWarning")
def test_verify_tls_false_accepts_any_certificate(clean_env: pytest.MonkeyPatch,
                                                  https_backend: FakePrometheus) -> None:
    clean_env.setenv("GATEWAY_METRICS_PROMETHEUS_URL", https_backend.url)
    clean_env.setenv("GATEWAY_METRICS_PROMETHEUS_VERIFY_TLS", "false")
    with app_client(Settings()) as client:
        summary = models_summary(client)
        ready = client.get("/ready").json()["backend"]
    assert summary["source"] == "prometheus" and summary["errors"] == []
    assert ready["reachable"] is True
    assert https_backend.queries()


# --- the backend: credentials, job, cache -----------------------------------------------------


@pytest.fixture
def backend() -> Iterator[FakePrometheus]:
    with FakePrometheus() as fake:
        yield fake


def test_basic_auth_reaches_the_backend_on_every_request(clean_env: pytest.MonkeyPatch,
                                                         backend: FakePrometheus) -> None:
    clean_env.setenv("GATEWAY_METRICS_PROMETHEUS_URL", backend.url)
    clean_env.setenv("GATEWAY_METRICS_PROMETHEUS_USERNAME", "grafana")
    clean_env.setenv("GATEWAY_METRICS_PROMETHEUS_PASSWORD", "pa:ss word")
    with app_client(Settings()) as client:
        assert models_summary(client)["source"] == "prometheus"
        assert client.get("/ready").json()["backend"]["reachable"] is True
    expected = "Basic " + base64.b64encode(b"grafana:pa:ss word").decode()
    seen = backend.seen()
    assert len(seen) >= 2  # the summary's queries and /ready's ping
    assert {request.headers.get("authorization") for request in seen} == {expected}


@pytest.mark.parametrize("credentials", [{"USERNAME": "grafana", "PASSWORD": "пароль"}, {"BEARER_TOKEN": "токен"}])
def test_non_latin1_credentials_never_make_a_5xx(clean_env: pytest.MonkeyPatch, backend: FakePrometheus,
                                                 credentials: dict[str, str]) -> None:
    clean_env.setenv("GATEWAY_METRICS_PROMETHEUS_URL", backend.url)
    for name, secret in credentials.items():
        clean_env.setenv(f"GATEWAY_METRICS_PROMETHEUS_{name}", secret)
    with TestClient(create_app(Settings(), Telemetry(Settings())), raise_server_exceptions=False) as client:
        assert client.get(SUMMARY, params={"category": "models"}).status_code == 200
        assert client.get("/ready").status_code == 200
        assert client.get(HEALTH, params={"source": "fleet"}).status_code == 200
    if "PASSWORD" in credentials:  # as curl and Go send them (RFC 7617's charset="UTF-8")
        expected = "Basic " + base64.b64encode("grafana:пароль".encode()).decode()
        assert {request.headers.get("authorization") for request in backend.seen()} == {expected}


def test_bearer_token_reaches_the_backend_on_every_request(clean_env: pytest.MonkeyPatch,
                                                           backend: FakePrometheus) -> None:
    clean_env.setenv("GATEWAY_METRICS_PROMETHEUS_URL", backend.url)
    clean_env.setenv("GATEWAY_METRICS_PROMETHEUS_BEARER_TOKEN", "backend-secret")
    with app_client(Settings()) as client:
        assert models_summary(client)["source"] == "prometheus"
        assert client.get("/ready").json()["backend"]["reachable"] is True
    assert {request.headers.get("authorization") for request in backend.seen()} == {"Bearer backend-secret"}


def test_backend_secrets_from_files_follow_their_rotation(clean_env: pytest.MonkeyPatch, backend: FakePrometheus,
                                                         tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("first-token\n")
    clean_env.setenv("GATEWAY_METRICS_PROMETHEUS_URL", backend.url)
    clean_env.setenv("GATEWAY_METRICS_PROMETHEUS_BEARER_TOKEN_FILE", str(token))
    with app_client(Settings(query_cache_seconds=0)) as client:
        models_summary(client)
        first = {request.headers.get("authorization") for request in backend.seen()}
        rotated = tmp_path / "token.new"  # as the kubelet rotates a mounted Secret: a new file swapped in
        rotated.write_text("second-token\n")
        rotated.replace(token)
        seen_before = len(backend.seen())
        models_summary(client)
        second = {request.headers.get("authorization") for request in backend.seen()[seen_before:]}
    assert first == {"Bearer first-token"}
    assert second == {"Bearer second-token"}


def test_no_credentials_send_no_authorization(clean_env: pytest.MonkeyPatch, backend: FakePrometheus) -> None:
    clean_env.setenv("GATEWAY_METRICS_PROMETHEUS_URL", backend.url)
    with app_client(Settings()) as client:
        assert models_summary(client)["source"] == "prometheus"
    assert backend.seen() and all("authorization" not in request.headers for request in backend.seen())


def test_prometheus_job_narrows_every_summary_query(backend: FakePrometheus) -> None:
    with app_client(Settings(access_log=False, prometheus_url=backend.url)) as client:
        client.get(SUMMARY)  # every category
    unscoped = backend.queries()
    assert unscoped and not any("job=" in query for query in unscoped)
    backend.requests.clear()
    with app_client(Settings(access_log=False, prometheus_url=backend.url, prometheus_job="edge-gw")) as client:
        client.get(SUMMARY)
    scoped = backend.queries()
    assert len(scoped) == len(unscoped)
    assert all('job="edge-gw"' in query for query in scoped)


@pytest.mark.parametrize("cache_s, second_summary_queries", [(60.0, 0), (0.0, 1)])
def test_query_cache_seconds_reuses_the_backends_answers(backend: FakePrometheus, cache_s: float,
                                                         second_summary_queries: int) -> None:
    settings = Settings(access_log=False, prometheus_url=backend.url, query_cache_seconds=cache_s)
    with app_client(settings) as client:
        models_summary(client)
        first = len(backend.queries())
        models_summary(client)
        second = len(backend.queries()) - first
    assert first > 0
    assert second == second_summary_queries * first


# --- the summaries: window, top-N, history ------------------------------------------------------


def test_summary_window_seconds_is_the_default_window(clean_env: pytest.MonkeyPatch,
                                                      backend: FakePrometheus) -> None:
    clean_env.setenv("GATEWAY_METRICS_SUMMARY_WINDOW_SECONDS", "90")
    with app_client(Settings()) as client:  # local mode
        assert models_summary(client)["window_seconds"] == 90
        assert models_summary(client, window_seconds=120)["window_seconds"] == 120  # a request's own wins
    clean_env.setenv("GATEWAY_METRICS_PROMETHEUS_URL", backend.url)
    clean_env.setenv("GATEWAY_METRICS_QUERY_CACHE_SECONDS", "0")
    with app_client(Settings()) as client:  # prometheus mode: the window is in the PromQL
        summary = models_summary(client)
    assert summary["source"] == "prometheus" and summary["window_seconds"] == 90
    ranges = {query for query in backend.queries() if "[" in query}
    assert ranges and all("[90s]" in query for query in ranges)
    assert not any("[5m]" in query for query in ranges)


@pytest.mark.parametrize("top_n", [3, 12])
def test_top_n_is_the_length_of_the_top_lists(top_n: int) -> None:
    settings = Settings(access_log=False, top_n=top_n)
    telemetry = Telemetry(settings)
    for n in range(40):
        telemetry.record_credits_used("p", "m", f"user-{n}", 1.0 + n, api_key=f"sk-test-{n}")
        telemetry.record_api_key_usage(f"sk-test-{n}", "success")
    with TestClient(create_app(settings, telemetry)) as client:
        business = client.get(SUMMARY, params={"category": "business"}).json()["metrics"]["business"]
    top_lists = {name: entries for name, entries in business.items() if name.startswith("top_")}
    assert top_lists and all(len(entries) == top_n for entries in top_lists.values()), top_lists
    assert [entry["key"] for entry in business["top_users_by_credits"]] == [
        f"user-{n}" for n in range(39, 39 - top_n, -1)]


def test_summary_history_mb_bounds_the_history() -> None:
    def history(settings: Settings, snapshots: int) -> Telemetry:
        telemetry = Telemetry(settings)
        for model in range(100):
            telemetry.record_upstream_call("p", f"model-{model}", duration_s=0.5, ttft_s=0.1)
        for _ in range(snapshots):
            telemetry.snapshots.take()
        return telemetry

    roomy = history(Settings(access_log=False), 30)
    assert len(roomy.snapshots) == 30  # all kept: 30 snapshots take far less than 64 MB
    budget_mb = roomy.snapshots.nbytes / 2 / 2**20  # room for about half of them
    tight = history(Settings(access_log=False, summary_history_mb=budget_mb), 30)
    assert tight.snapshots.budget_bytes == int(budget_mb * 2**20)
    assert 1 < len(tight.snapshots) < 30
    assert tight.snapshots.nbytes <= budget_mb * 2**20


# --- the health score: weights and Apdex threshold -------------------------------------------


def provider_health(client: TestClient, provider: str) -> dict[str, Any]:
    report = client.get(HEALTH).json()
    return next(entry for entry in report["providers"] if entry["provider"] == provider)


@pytest.mark.parametrize("weights", ["1,0,0", "0,1,0", "0,0,1", "0.4,0.3,0.3", "0.2,0.5,0.3"])
def test_health_weights_weigh_the_three_components(clean_env: pytest.MonkeyPatch, weights: str) -> None:
    clean_env.setenv("GATEWAY_METRICS_HEALTH_WEIGHTS", weights)
    settings = Settings()
    telemetry = Telemetry(settings)
    # Three components apart: probes lift availability, failures lower 1 - error rate,
    # slow successes lower the Apdex.
    for index in range(10):
        telemetry.record_upstream_call("weighed", "m1", duration_s=3.0, status_code=500 if index % 3 == 0 else 200)
        telemetry.tracker.record_probe("weighed", True)
    with TestClient(create_app(settings, telemetry)) as client:
        health = provider_health(client, "weighed")
    components = (health["availability"], 1 - health["error_rate"], health["latency_score"])
    assert len(set(components)) == 3, components
    w = tuple(float(part) for part in weights.split(","))
    assert health["score"] == pytest.approx(sum(wi * ci for wi, ci in zip(w, components, strict=True)), abs=1e-6)


@pytest.mark.parametrize("threshold_s, latency_score, zone", [(2.0, 1.0, "satisfied"), (1.0, 0.5, "tolerating"),
                                                              (0.3, 0.0, "frustrated")])
def test_apdex_threshold_seconds_sets_t(clean_env: pytest.MonkeyPatch, threshold_s: float, latency_score: float,
                                        zone: str) -> None:
    clean_env.setenv("GATEWAY_METRICS_APDEX_THRESHOLD_SECONDS", str(threshold_s))
    settings = Settings()
    telemetry = Telemetry(settings)
    for _ in range(4):  # 1.5 s: satisfied under T = 2, tolerating under T = 1 (up to 4T), frustrated under 0.3
        telemetry.record_upstream_call("timed", "m1", duration_s=1.5)
    with TestClient(create_app(settings, telemetry)) as client:
        health = provider_health(client, "timed")
        scraped = client.get("/prometheus/metrics/providers").text
    assert health["latency_score"] == pytest.approx(latency_score)
    assert f'gatewayz_provider_apdex_total{{provider="timed",zone="{zone}"}} 4.0' in scraped


# --- probes: the two intervals ----------------------------------------------------------------


def test_probe_intervals_pace_healthy_and_unhealthy_providers() -> None:
    with ProbeTarget() as target:
        fast = Telemetry(Settings(access_log=False, probe_interval_seconds=0.05,
                                  probe_urls={"fast": f"{target.url}/up/fast"}))
        # Healthy providers at the (long) interval, a failing one at the short one.
        split = Telemetry(Settings(access_log=False, probe_interval_seconds=3600,
                                   probe_unhealthy_interval_seconds=0.05,
                                   probe_urls={"steady": f"{target.url}/up/steady",
                                               "failing": f"{target.url}/down/failing"}))
        # Both intervals long: the failing provider is probed once, on start, like the others.
        slow = Telemetry(Settings(access_log=False, probe_interval_seconds=3600,
                                  probe_unhealthy_interval_seconds=3600,
                                  probe_urls={"failing-slow": f"{target.url}/down/failing-slow"}))
        running: list[Telemetry] = []
        try:
            for telemetry in (fast, split, slow):
                telemetry.start()
                running.append(telemetry)
            wait_for(lambda: target.count("/up/fast") >= 5 and target.count("/down/failing") >= 5
                     and target.count("/up/steady") >= 1 and target.count("/down/failing-slow") >= 1,
                     "the probes")
            assert target.count("/up/steady") == 1
            assert target.count("/down/failing-slow") == 1
        finally:
            for telemetry in running:
                telemetry.stop()
    assert fast.tracker.status("fast").probes >= 5
    assert split.tracker.status("failing").availability == 0.0


# --- sharing through Redis: the key prefix -----------------------------------------------------


def test_redis_key_prefix_names_every_key() -> None:
    from tests.support.redis_server import redis_server

    with redis_server() as server:
        made = [Telemetry(Settings(access_log=False, redis_url=server.url, redis_key_prefix=prefix))
                for prefix in ("gw-a", "gw-b")]
        client = server.client()
        try:
            for telemetry in made:
                telemetry.start()
                telemetry.record_upstream_call("shared", "m1", duration_s=0.1)

            def streams() -> set[bytes]:
                return {key for key in client.keys("*") if b":outcomes:" in key}

            found = wait_for(lambda: {key.split(b":", 1)[0] for key in streams()} == {b"gw-a", b"gw-b"} and streams(),
                             "both prefixes' outcome streams")
            assert len(found) == 2
            keys = client.keys("*")
            assert keys and all(key.startswith((b"gw-a:", b"gw-b:")) for key in keys), keys
        finally:
            for telemetry in made:
                telemetry.stop()
            client.close()


# --- the access log -------------------------------------------------------------------------------


@pytest.mark.parametrize("enabled", [True, False])
def test_access_log_setting_writes_or_skips_the_lines(clean_env: pytest.MonkeyPatch, access_lines: list[str],
                                                      enabled: bool) -> None:
    clean_env.setenv("GATEWAY_METRICS_ACCESS_LOG", str(enabled).lower())
    with app_client(Settings()) as client:
        for _ in range(3):
            assert client.get("/health").status_code == 200
    access_log.flush_access_logs()
    routes = [json.loads(line)["route"] for line in access_lines if line]
    assert routes.count("/health") == (3 if enabled else 0)

