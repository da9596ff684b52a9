"""State owned by ``app.telemetry.Telemetry``: two apps share nothing, importing ``app``
touches nothing of the host process, and the default instance serves the module helpers."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import prometheus_client
import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY, Counter, Histogram, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.parser import text_string_to_metric_families

from app import metrics
from app import telemetry as telemetry_module
from app.main import create_app
from app.scoring import Circuit, get_tracker
from app.settings import Settings
from app.telemetry import Telemetry

ROOT = Path(__file__).resolve().parent.parent
OPENMETRICS = {"Accept": "application/openmetrics-text; version=1.0.0"}


def label_values(client: TestClient, family: str, label: str) -> set[str]:
    """The values of ``label`` in the samples of ``family`` that ``client``'s /metrics shows."""
    found: set[str] = set()
    for parsed in text_string_to_metric_families(client.get("/metrics").text):
        for sample in parsed.samples:
            if sample.name.removesuffix("_total") == family.removesuffix("_total") and label in sample.labels:
                found.add(sample.labels[label])
    return found


def value(telemetry: Telemetry, name: str, labels: dict[str, str]) -> float | None:
    return telemetry.metrics.all_registry.get_sample_value(name, labels)


# --- 1. two apps with their own Telemetry share nothing -----------------------------------


@pytest.fixture
def two_apps() -> Iterator[tuple[tuple[Telemetry, TestClient], tuple[Telemetry, TestClient]]]:
    """A: label cap 3, the default series cap. B: the default label cap, series cap 5."""
    settings_a = Settings(access_log=False, label_cap=3)
    settings_b = Settings(access_log=False, series_cap=5)
    a, b = Telemetry(settings_a), Telemetry(settings_b)
    with TestClient(create_app(settings_a, a)) as client_a, TestClient(create_app(settings_b, b)) as client_b:
        yield (a, client_a), (b, client_b)


def test_each_app_has_its_own_label_cap(two_apps: tuple[tuple[Telemetry, TestClient], ...]) -> None:
    (a, client_a), (b, client_b) = two_apps
    assert a.metrics["cache_hits_total"].label_cap == 3
    assert b.metrics["cache_hits_total"].label_cap == 500
    caches = [f"cache-{n}" for n in range(5)]
    for telemetry in (a, b):
        for cache in caches:
            telemetry.record_cache_hit(cache)

    assert label_values(client_a, "cache_hits_total", "cache_name") == {*caches[:3], "other"}
    assert label_values(client_b, "cache_hits_total", "cache_name") == set(caches)
    overflow = {"metric": "cache_hits_total", "label": "cache_name"}
    assert value(a, "gatewayz_label_overflow_total", overflow) == 2
    assert value(b, "gatewayz_label_overflow_total", overflow) is None
    assert value(a, "cache_hits_total", {"cache_name": "other"}) == 2


def test_each_app_has_its_own_series_cap(two_apps: tuple[tuple[Telemetry, TestClient], ...]) -> None:
    (a, client_a), (b, client_b) = two_apps
    assert a.metrics["credits_used_total"].series_cap == 8000
    assert b.metrics["credits_used_total"].series_cap == 5
    pairs = [(f"p{p}", f"m{m}") for p in range(3) for m in range(3)]  # 9 label sets, 3 values per label
    for telemetry in (a, b):
        for provider, model in pairs:
            telemetry.record_credits_used(provider, model, "user", 1.0)

    # A keeps all nine (within its label cap of 3); B keeps its first 5 sets, then records
    # the rest with its free-text labels as "other".
    assert label_values(client_a, "credits_used_total", "model") == {"m0", "m1", "m2"}
    assert label_values(client_a, "credits_used_total", "provider") == {"p0", "p1", "p2"}
    assert label_values(client_b, "credits_used_total", "model") == {"m0", "m1", "m2", "other"}
    assert label_values(client_b, "credits_used_total", "provider") == {"p0", "p1", "other"}
    assert value(b, "credits_used_total", {"provider": "other", "model": "other"}) == 4
    for label in ("provider", "model"):
        folded = {"metric": "credits_used_total", "label": label}
        assert value(a, "gatewayz_label_overflow_total", folded) is None
        assert value(b, "gatewayz_label_overflow_total", folded) == 4
    for telemetry in (a, b):  # nothing lost in either
        total = sum(sample.value for family in telemetry.metrics["credits_used_total"].metric.collect()
                    for sample in family.samples if sample.name == "credits_used_total")
        assert total == 9


def test_series_recorded_in_one_app_do_not_show_in_the_other(
    two_apps: tuple[tuple[Telemetry, TestClient], ...]
) -> None:
    (a, client_a), (b, client_b) = two_apps
    a.record_upstream_call("only-in-a", "model-a", duration_s=0.2)
    b.record_upstream_call("only-in-b", "model-b", duration_s=0.2)
    client_a.get("/v1/nowhere")  # an HTTP request served by A only

    assert label_values(client_a, "model_inference_requests_total", "provider") == {"only-in-a"}
    assert label_values(client_b, "model_inference_requests_total", "provider") == {"only-in-b"}
    assert "unmatched" in label_values(client_a, "http_requests_total", "endpoint")
    assert "unmatched" not in label_values(client_b, "http_requests_total", "endpoint")
    for telemetry in (a, b):
        assert telemetry.metrics is not (b if telemetry is a else a).metrics
    assert a.http_stats is not b.http_stats and a.in_flight is not b.in_flight


def test_trackers_are_distinct_and_a_trip_in_one_is_not_seen_by_the_other(
    two_apps: tuple[tuple[Telemetry, TestClient], ...]
) -> None:
    (a, client_a), (b, client_b) = two_apps
    assert a.tracker is not b.tracker
    b.record_upstream_call("shared-provider", "m", duration_s=0.1)
    for _ in range(a.tracker.config.consecutive_failures):
        a.record_upstream_call("shared-provider", "m", duration_s=0.1, status_code=500)

    assert a.tracker.status("shared-provider").circuit is Circuit.OPEN
    assert not a.tracker.allow("shared-provider")
    assert b.tracker.status("shared-provider").circuit is Circuit.CLOSED
    assert b.tracker.allow("shared-provider")
    state = {"provider": "shared-provider"}
    client_a.get("/metrics"), client_b.get("/metrics")  # the collectors read their own tracker
    assert value(a, "gatewayz_provider_circuit_state", state) == 1
    assert value(b, "gatewayz_provider_circuit_state", state) == 0
    opened = {"provider": "shared-provider", "to_state": "open"}
    assert value(a, "gatewayz_provider_circuit_transitions_total", opened) == 1
    assert value(b, "gatewayz_provider_circuit_transitions_total", opened) == 0


def test_top_lists_are_separate(two_apps: tuple[tuple[Telemetry, TestClient], ...]) -> None:
    (a, client_a), (b, client_b) = two_apps
    assert a.top_lists is not b.top_lists
    a.record_credits_used("p", "m", "user-of-a", 7.0, api_key="sk-a")
    b.record_credits_used("p", "m", "user-of-b", 3.0, api_key="sk-b")

    assert [(hit.key, hit.value) for hit in a.top_lists.users_by_credits.top(10)] == [("user-of-a", 7.0)]
    assert [(hit.key, hit.value) for hit in b.top_lists.users_by_credits.top(10)] == [("user-of-b", 3.0)]
    for client, user in ((client_a, "user-of-a"), (client_b, "user-of-b")):
        business = client.get("/prometheus/metrics/summary", params={"category": "business", "source": "local"})
        top = business.json()["metrics"]["business"]["top_users_by_credits"]
        assert [hit["key"] for hit in top] == [user]


def test_snapshots_are_distinct(two_apps: tuple[tuple[Telemetry, TestClient], ...]) -> None:
    (a, _), (b, _) = two_apps
    assert a.snapshots is not b.snapshots
    assert a.snapshots.registry is a.metrics.all_registry
    assert b.snapshots.registry is b.metrics.all_registry
    a.record_upstream_call("snap-a", "m", duration_s=0.2)
    b.record_upstream_call("snap-b", "m", duration_s=0.2)

    def providers(telemetry: Telemetry) -> set[str]:
        snapshot = telemetry.snapshots.take()
        return {labels["provider"] for labels, _ in snapshot.samples("model_inference_requests_total")}

    assert providers(a) == {"snap-a"}
    assert providers(b) == {"snap-b"}


# --- 2. importing app in a host process --------------------------------------------------

IMPORT_SCRIPT = textwrap.dedent(
    """
    import importlib, json, pkgutil, sys, threading

    from prometheus_client import REGISTRY, Counter
    from prometheus_client import metrics as client_metrics

    host = Counter("host_jobs", "A host's own counter", registry=REGISTRY)
    host.inc()

    def state():
        return {
            "created": REGISTRY.get_sample_value("host_jobs_created") is not None,
            "collectors": sorted(id(c) for c in REGISTRY._collector_to_names),
            "names": sorted(n for c in list(REGISTRY._collector_to_names) for n in REGISTRY._collector_to_names[c]),
            "threads": threading.active_count(),
            "use_created": client_metrics._use_created,
        }

    before = state()
    import app
    imported = []
    for info in pkgutil.walk_packages(app.__path__, "app."):
        importlib.import_module(info.name)
        imported.append(info.name)
    after_imports = state()
    import app.main
    service = app.main.app
    assert app.main.app is service  # built once
    after_app = state()
    print(json.dumps({"before": before, "after_imports": after_imports, "after_app": after_app,
                      "imported": imported, "service": type(service).__name__}))
    """
)


def test_importing_every_module_of_app_leaves_the_host_process_alone() -> None:
    env = {key: value for key, value in os.environ.items()
           if key != "PROMETHEUS_MULTIPROC_DIR" and not key.startswith("GATEWAY_METRICS_")}
    env["GATEWAY_METRICS_ACCESS_LOG"] = "false"
    result = subprocess.run([sys.executable, "-c", IMPORT_SCRIPT], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    before, after_imports, after_app = report["before"], report["after_imports"], report["after_app"]

    assert {"app.main", "app.metrics", "app.telemetry", "app.collectors", "app.exporter", "app.cli"} <= set(
        report["imported"])
    assert before["created"] is True
    assert after_imports["created"] is True  # the host's _created sample survives the imports
    assert after_imports["collectors"] == before["collectors"]
    assert after_imports["names"] == before["names"]
    assert after_imports["threads"] == before["threads"]
    assert after_imports["use_created"] == before["use_created"]
    # Building the service on first access still registers nothing globally.
    assert report["service"] == "FastAPI"
    assert after_app["collectors"] == before["collectors"]
    assert after_app["names"] == before["names"]
    assert after_app["created"] is True
    assert after_app["use_created"] == before["use_created"]


# --- 3. no _created series of ours, the host's kept ----------------------------------------


def test_our_exposition_has_no_created_series_while_a_host_counter_keeps_its_own(client: TestClient) -> None:
    host = Counter("test_telemetry_host_jobs", "A host's own counter", registry=REGISTRY)
    host_histogram = Histogram("test_telemetry_host_seconds", "A host's own histogram", registry=REGISTRY)
    try:
        host.inc()
        host_histogram.observe(0.1)
        metrics.record_upstream_call("created-check", "m", duration_s=0.2, ttft_s=0.1)
        metrics.record_tokens_used("created-check", "m", 10, 5)
        metrics.record_cache_hit("created-check")
        client.get("/health")  # an HTTP request, so the HTTP families have series

        text = client.get("/metrics").text
        openmetrics = client.get("/metrics", headers=OPENMETRICS).text
        assert "model_inference_requests_total{" in text and "http_requests_total{" in text
        assert "model_inference_requests_total{" in openmetrics
        for exposition in (text, openmetrics):
            assert "_created" not in exposition
        # The process-wide switch was not used: the host's metrics keep their _created.
        assert prometheus_client.metrics._use_created is True
        host_text = generate_latest(REGISTRY).decode()
        assert "test_telemetry_host_jobs_created " in host_text
        assert "test_telemetry_host_seconds_created " in host_text
        assert "test_telemetry_host_jobs_created " in generate_openmetrics(REGISTRY).decode()
        assert REGISTRY.get_sample_value("test_telemetry_host_jobs_created") is not None
    finally:
        REGISTRY.unregister(host)
        REGISTRY.unregister(host_histogram)


# --- 4. the default instance --------------------------------------------------------------


def test_create_app_without_telemetry_uses_the_default_and_the_module_helpers_record_into_it() -> None:
    service = create_app()
    default = telemetry_module.default()
    assert service.state.telemetry is default
    assert get_tracker() is default.tracker
    metrics.record_upstream_call("via-helpers", "m", duration_s=0.2)
    metrics.record_cache_hit("via-helpers")
    with TestClient(service) as client:
        assert label_values(client, "model_inference_requests_total", "provider") == {"via-helpers"}
        assert label_values(client, "cache_hits_total", "cache_name") == {"via-helpers"}
    assert default.metrics.all_registry.get_sample_value(
        "model_inference_requests_total", {"provider": "via-helpers", "model": "m", "status": "success"}) == 1
    assert default.tracker.status("via-helpers").calls == 1


def test_get_tracker_is_the_default_telemetrys_tracker() -> None:
    from app import scoring

    assert scoring.get_tracker() is telemetry_module.default().tracker
    mine = Telemetry(Settings(access_log=False))
    telemetry_module.set_default(mine)
    assert scoring.get_tracker() is mine.tracker


# --- 5. background work between start() and stop() ----------------------------------------


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


def snapshot_threads() -> set[threading.Thread]:
    return {thread for thread in threading.enumerate() if thread.name == "registry-snapshots"}


def closed_port() -> int:
    """A loopback port nothing listens on: a probe of it fails at once, and is counted."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def background_settings() -> Settings:
    """Snapshots and probes every 20 ms."""
    return Settings(access_log=False, snapshot_interval_seconds=0.02,
                    probe_urls={"probed": f"http://127.0.0.1:{closed_port()}/health"},
                    probe_interval_seconds=0.02, probe_unhealthy_interval_seconds=0.02)


def working(telemetry: Telemetry) -> bool:
    """Whether snapshots are taken and probes sent now (each at least twice within 5 s)."""
    taken, probed = len(telemetry.snapshots), telemetry.tracker.status("probed").probes
    return wait_until(lambda: len(telemetry.snapshots) >= taken + 2
                      and telemetry.tracker.status("probed").probes >= probed + 2)


def idle(telemetry: Telemetry) -> bool:
    """Whether no snapshot is taken and no probe sent for 0.2 s (ten intervals)."""
    taken, probed = len(telemetry.snapshots), telemetry.tracker.status("probed").probes
    time.sleep(0.2)
    return len(telemetry.snapshots) == taken and telemetry.tracker.status("probed").probes == probed


def test_background_work_runs_between_start_and_stop_and_while_any_app_sharing_it_runs() -> None:
    settings = background_settings()
    telemetry = Telemetry(settings)
    threads_before = snapshot_threads()
    assert idle(telemetry)  # made, not started
    assert len(telemetry.snapshots) == 0 and telemetry.tracker.status("probed").probes == 0

    first, second = TestClient(create_app(settings, telemetry)), TestClient(create_app(settings, telemetry))
    with first:
        ours = snapshot_threads() - threads_before
        assert len(ours) == 1  # started once, by the first app
        assert working(telemetry)
        with second:
            assert snapshot_threads() - threads_before == ours  # not started twice
            assert working(telemetry)
        # The second app stopped; the first still runs, and so does the work.
        assert all(thread.is_alive() for thread in ours)
        assert working(telemetry)
    # The last app stopped: so did the work.
    assert not any(thread.is_alive() for thread in ours)
    assert idle(telemetry)


def test_the_app_started_last_may_stop_last_on_another_event_loop() -> None:
    settings = background_settings()
    telemetry = Telemetry(settings)
    first, second = TestClient(create_app(settings, telemetry)), TestClient(create_app(settings, telemetry))
    first.__enter__()  # each TestClient runs its app in an event loop of its own
    try:
        second.__enter__()
    finally:
        first.__exit__(None, None, None)  # the first app stops first
    try:
        assert working(telemetry)  # the second still runs
    finally:
        second.__exit__(None, None, None)
    assert idle(telemetry)


def test_start_and_stop_pair_up_when_called_directly() -> None:
    telemetry = Telemetry(Settings(access_log=False, snapshot_interval_seconds=0.02))
    threads_before = snapshot_threads()
    telemetry.start()
    telemetry.start()
    assert len(snapshot_threads() - threads_before) == 1
    telemetry.stop()
    assert len(snapshot_threads() - threads_before) == 1  # one user left
    telemetry.stop()
    assert snapshot_threads() - threads_before == set()
    telemetry.stop()  # one stop too many is ignored: the next start starts again
    telemetry.start()
    assert len(snapshot_threads() - threads_before) == 1
    telemetry.stop()
    assert snapshot_threads() - threads_before == set()
