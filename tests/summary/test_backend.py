"""app.summary.backend: healthy paths against a real Prometheus and a real VictoriaMetrics, faults
against a deliberately broken server (tests/support/faulty_backend.py)."""

from __future__ import annotations

import base64
import gc
import math
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Gauge, make_asgi_app
from support.faulty_backend import FaultyBackend, Reply, envelope, error_envelope
from support.servers import (
    AppServer,
    MetricsServer,
    free_port,
    poll,
    serve_app,
    start_prometheus,
    start_victoriametrics,
)

from app.summary import backend as backend_module
from app.summary.backend import (
    BackendFailure,
    BatchResult,
    PrometheusBackend,
    QueryResult,
    parse_response,
)
from app.summary.labelsets import label_set
from app.summary.promql import Matcher

#: Label values the probe app exports, one series each, valued by their index.
LABEL_VALUES = (
    "plain",
    'double"quote',
    "back\\slash",
    "trailing\\",
    '\\"',
    "new\nline",
    "tab\tand\rreturn",
    "single'quote and `backtick`",
    'x"} or vector(666) or {v="',
    "unicode é ☃ \ufffd",
)
INJECTION = 'nope"} or vector(666) or {v="'  # not exported: must match nothing
PROBE = "gm_label_probe"

#: Fault tests use a short deadline to stay fast. Wall-clock bounds are several times the
#: deadline they test (BOUND_S), so a loaded machine cannot fail them, while a deadline that
#: is not kept (a 30 s reply, a retry taking seconds) still does.
DEADLINE_S = 0.5
BOUND_S = 5 * DEADLINE_S
QUERY = "vector(1)"


class FakeClock:
    """The backend's cache clock, moved by hand: TTL expiry without sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def timed(backend: PrometheusBackend, queries: Mapping[str, str]) -> tuple[BatchResult, float]:
    started = time.monotonic()
    batch = backend.query_many(queries)
    return batch, time.monotonic() - started


def probe_query(value: str) -> str:
    return f"{PROBE}{{{Matcher('v', '=', value).promql()}}}"


# --- real backends ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def probe_app() -> Iterator[AppServer]:
    """A scrape target whose series carry label values that need escaping."""
    registry = CollectorRegistry()
    gauge = Gauge(PROBE, "One series per awkward label value.", ["v"], registry=registry)
    for index, value in enumerate(LABEL_VALUES):
        gauge.labels(v=value).set(index)
    with serve_app(make_asgi_app(registry)) as app:
        yield app


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory, probe_app: AppServer) -> Iterator[dict[str, MetricsServer]]:
    tmp: Path = tmp_path_factory.mktemp("backends")
    with (
        start_prometheus(tmp, ["self", probe_app.address]) as prometheus,
        start_victoriametrics(tmp, ["self", probe_app.address]) as victoriametrics,
    ):
        # Started together, they scrape concurrently: Prometheus 2.42 sends its first
        # scrape about 5 s after start (its discovery manager batches updates).
        for server in (prometheus, victoriametrics):
            server.wait_until(f"count({PROBE}) == {len(LABEL_VALUES)}", timeout=20)
        yield {"prometheus": prometheus, "victoriametrics": victoriametrics}


@pytest.fixture(params=["prometheus", "victoriametrics"])
def server(request: pytest.FixtureRequest, servers: dict[str, MetricsServer]) -> MetricsServer:
    return servers[request.param]


@pytest.fixture
def backend(server: MetricsServer) -> Iterator[PrometheusBackend]:
    with PrometheusBackend(server.url) as backend:
        yield backend


def test_label_values_that_need_escaping_match_their_series_exactly(backend: PrometheusBackend) -> None:
    batch = backend.query_many({value: probe_query(value) for value in LABEL_VALUES})
    assert batch.errors == []
    for index, value in enumerate(LABEL_VALUES):
        [sample] = batch.results[value].samples
        assert (sample.labels["v"], sample.value) == (value, index)


def test_an_injection_attempt_is_a_literal_value(backend: PrometheusBackend) -> None:
    batch = backend.query_many({"q": probe_query(INJECTION)})
    assert batch.errors == []
    assert batch.results["q"].samples == ()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(
    st.sampled_from(LABEL_VALUES),
    st.text(st.one_of(st.sampled_from('"\\\n\r\t\x00{}=~!,\'`\ufffd'), st.characters(exclude_categories=["Cs"])),
            max_size=12),
))
def test_any_label_value_matches_literally(backend: PrometheusBackend, value: str) -> None:
    batch = backend.query_many({"q": probe_query(value)})
    assert batch.errors == []
    assert [sample.labels["v"] for sample in batch.results["q"].samples] in ([], [value])


def test_result_type_is_the_backends_own(backend: PrometheusBackend, server: MetricsServer) -> None:
    queries = {"vector": "vector(1)", "scalar": "scalar(vector(2))", "matrix": "up[10s]", "string": '"text"'}
    batch = backend.query_many(queries)
    assert batch.errors == []
    for name, expr in queries.items():
        assert batch.results[name].result_type == server.query(expr)["resultType"]
    assert batch.results["vector"].value() == 1.0
    assert batch.results["scalar"].value() == 2.0
    assert batch.results["matrix"].samples  # one last point per series


def test_nan_samples_are_dropped_and_infinities_kept(backend: PrometheusBackend) -> None:
    batch = backend.query_many({"nan": "vector(0) / 0", "inf": "vector(1) / 0"})
    assert batch.errors == []
    assert batch.results["nan"].samples == ()  # VictoriaMetrics drops NaN itself; Prometheus sends it
    assert batch.results["inf"].value() == math.inf


def test_invalid_promql_is_the_backends_rejection(backend: PrometheusBackend, server: MetricsServer) -> None:
    batch = backend.query_many({"broken": "sum(rate("})
    [error] = batch.errors
    # Prometheus says bad_data (400); VictoriaMetrics answers every query error with 422.
    expected = ("bad_data", 400) if server.kind == "prometheus" else ("execution", 422)
    assert (error.kind, error.status, error.query) == (*expected, "broken")
    assert "broken" not in batch.results


def test_evaluation_error_is_execution_422(backend: PrometheusBackend) -> None:
    many_to_many = '{__name__=~"up|scrape_duration_seconds"} + on (job) {__name__=~"up|scrape_samples_scraped"}'
    [error] = backend.query_many({"q": many_to_many}).errors
    assert (error.kind, error.status) == ("execution", 422)


def test_a_batch_answers_every_query(backend: PrometheusBackend) -> None:
    batch = backend.query_many({f"q{i}": f"vector({i})" for i in range(24)})
    assert batch.errors == [] and not batch.stale
    assert {name: result.value() for name, result in batch.results.items()} == {f"q{i}": i for i in range(24)}


def test_answers_are_cached_for_the_ttl(servers: dict[str, MetricsServer]) -> None:
    # Counted by Prometheus itself. (VictoriaMetrics' own counter shows requests up to
    # a second late, so it cannot say "exactly one more".)
    prometheus, clock = servers["prometheus"], FakeClock()

    def served() -> float:
        return prometheus.self_metric("prometheus_http_requests_total", {"handler": "/api/v1/query"})

    def served_at_least(expected: float) -> float:
        # Prometheus counts a request just after answering it.
        return float(prometheus.wait_until(lambda: (count := served()) >= expected and count, timeout=5))

    with PrometheusBackend(prometheus.url, cache_ttl_s=10, clock=clock) as backend:
        before = served()
        for _ in range(3):  # and two names for one text: still one request
            assert backend.query_many({"a": "vector(7)", "b": "vector(7)"}).results["b"].value() == 7
        assert served_at_least(before + 1) == before + 1
        clock.advance(10.1)
        backend.query_many({"a": "vector(7)"})
        assert served_at_least(before + 2) == before + 2


def test_ping_reaches_a_real_backend(backend: PrometheusBackend) -> None:
    state = backend.ping()
    assert state.reachable and state.error is None
    assert state.latency_ms > 0  # measured; how fast a real backend answers is no test's claim


# --- faults -------------------------------------------------------------------------------


@pytest.fixture
def fake() -> Iterator[FaultyBackend]:
    with FaultyBackend() as fake:
        yield fake


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def warm_backend(fake: FaultyBackend, clock: FakeClock) -> Iterator[PrometheusBackend]:
    """A backend on the fake with a last good answer for QUERY, its cache entry expired."""
    with PrometheusBackend(fake.url, deadline_s=DEADLINE_S, clock=clock) as backend:
        assert backend.query_many({"q": QUERY}).errors == []
        clock.advance(backend.cache_ttl_s + 1)
        yield backend


def assert_stale_answer(batch: BatchResult, elapsed: float, kind: str, status: int | None = None) -> None:
    # The kind is the fault's own, not "timeout": it was seen within the deadline.
    assert elapsed < BOUND_S
    assert [(e.kind, e.status, e.query) for e in batch.errors] == [(kind, status, "q")]
    assert batch.stale and batch.results["q"].stale
    assert batch.results["q"].value() == 1.0  # the last good answer


def test_backend_down_answers_at_once_with_the_last_good_value(
    fake: FaultyBackend, warm_backend: PrometheusBackend
) -> None:
    fake.stop()
    batch, elapsed = timed(warm_backend, {"q": QUERY})
    assert_stale_answer(batch, elapsed, "unreachable")
    assert "Connection refused" in batch.errors[0].message


def test_refused_connection_is_not_retried_for_seconds() -> None:
    # prometheus-api-client's default Retry would take about 6 s here.
    # Retried, the refusal would outlast the (default 2 s) deadline and read as "timeout".
    with PrometheusBackend(f"http://127.0.0.1:{free_port()}") as backend:
        batch, elapsed = timed(backend, {"q": QUERY})
    assert elapsed < 5 * backend.deadline_s
    assert [e.kind for e in batch.errors] == ["unreachable"]
    assert batch.results == {} and not batch.stale  # no last good answer to fall back on


def test_slow_backend_answers_at_the_deadline_with_the_last_good_value(
    fake: FaultyBackend, warm_backend: PrometheusBackend
) -> None:
    fake.reply = Reply(delay_s=30)
    batch, elapsed = timed(warm_backend, {"q": QUERY})
    assert elapsed >= DEADLINE_S * 0.9
    assert_stale_answer(batch, elapsed, "timeout")


def test_one_deadline_covers_the_whole_batch(fake: FaultyBackend) -> None:
    # A deadline per query would take 40 / 2 workers x 0.5 s = 10 s, four times BOUND_S.
    fake.reply = Reply(delay_s=30)
    with PrometheusBackend(fake.url, deadline_s=DEADLINE_S, max_workers=2) as backend:
        batch, elapsed = timed(backend, {f"q{i}": f"vector({i})" for i in range(40)})
    assert DEADLINE_S * 0.9 <= elapsed < BOUND_S
    assert [e.kind for e in batch.errors] == ["timeout"] * 40


def test_backend_is_asked_to_give_up_before_the_deadline(fake: FaultyBackend) -> None:
    with PrometheusBackend(fake.url, deadline_s=DEADLINE_S) as backend:
        backend.query_many({"q": QUERY})
    form = fake.requests[-1].form
    assert form["query"] == QUERY
    assert 0 < int(form["timeout"].removesuffix("ms")) < DEADLINE_S * 1000


@pytest.mark.parametrize(
    ("reply", "kind", "status"),
    [
        pytest.param(Reply(status=500, body=b"internal error", content_type="text/plain"),
                     "http_error", 500, id="500-text"),
        pytest.param(Reply(status=502, body=b"<html>Bad Gateway</html>", content_type="text/html"),
                     "http_error", 502, id="502-proxy-page"),
        pytest.param(Reply(status=503, body=error_envelope("timeout", "query timed out in expression evaluation")),
                     "backend_timeout", 503, id="503-prometheus-timeout"),
        pytest.param(Reply(status=422, body=error_envelope("execution", "many-to-many matching not allowed")),
                     "execution", 422, id="422-execution"),
        pytest.param(Reply(body=b"hello, I am not Prometheus", content_type="text/plain"),
                     "garbage", 200, id="not-json"),
        pytest.param(Reply(body=b"[1, 2, 3]"), "garbage", 200, id="json-array"),
        pytest.param(Reply(body=b'{"answer": 42}'), "garbage", 200, id="json-without-status"),
        pytest.param(Reply(body=envelope(result="oops")), "garbage", 200, id="result-not-a-list"),
        pytest.param(Reply(body=envelope(result=[{"metric": {}, "value": [0, "x"]}])),
                     "garbage", 200, id="value-not-a-number"),
        pytest.param(Reply(cut_at=40), "partial", None, id="body-cut-short-of-content-length"),
        pytest.param(Reply(body=envelope()[:60]), "partial", 200, id="json-ends-early"),
        pytest.param(Reply(body=b'{"status": "success"}'), "partial", 200, id="data-missing"),
    ],
)
def test_faulty_answer_serves_the_last_good_value(
    fake: FaultyBackend, warm_backend: PrometheusBackend, reply: Reply, kind: str, status: int | None
) -> None:
    fake.reply = reply
    batch, elapsed = timed(warm_backend, {"q": QUERY})
    assert_stale_answer(batch, elapsed, kind, status)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"warnings": ["remote read: store 2 unreachable"]}, "remote read: store 2 unreachable"),
        ({"isPartial": True}, "isPartial"),
    ],
)
def test_partial_answer_is_served_and_reported(
    fake: FaultyBackend, warm_backend: PrometheusBackend, extra: dict[str, Any], message: str
) -> None:
    fake.reply = Reply(body=envelope(result=[{"metric": {"job": "a"}, "value": [0, "2"]}], **extra))
    batch = warm_backend.query_many({"q": QUERY})
    assert not batch.stale and batch.results["q"].value() == 2.0
    [error] = batch.errors
    assert error.kind == "partial" and message in error.message and error.query == "q"
    assert batch.results["q"].warnings


def test_queries_run_in_parallel(fake: FaultyBackend) -> None:
    # The fake holds every reply past the deadline: all four requests reach it only if they
    # are in flight together (one after the other, the first would still hold the rest back).
    fake.reply = Reply(delay_s=30)
    with PrometheusBackend(fake.url, max_workers=4, deadline_s=2.0) as backend:
        batch = backend.query_many({f"q{i}": f"vector({i})" for i in range(4)})
        # A query still queued at the deadline is never sent: waiting longer cannot make four.
        poll(lambda: fake.request_count >= 4, 5, "four requests in flight at once")
    assert [e.kind for e in batch.errors] == ["timeout"] * 4
    assert sorted(request.form["query"] for request in fake.requests) == [f"vector({i})" for i in range(4)]


def test_each_answer_is_read_as_it_arrives(fake: FaultyBackend) -> None:
    # The slow query is held until the fast one's answer has been read: were answers read
    # only once all had arrived, the slow one would wait for the deadline and fail.
    fast_read = threading.Event()
    fake.replies["vector(2)"] = Reply(body=envelope(result=[{"metric": {}, "value": [0, "2"]}]), hold=fast_read)
    read: list[tuple[str, float | None]] = []

    def on_answer(name: str, answer: QueryResult) -> None:
        read.append((name, answer.value()))
        fast_read.set()

    with PrometheusBackend(fake.url, deadline_s=BOUND_S) as backend:
        batch = backend.query_many({"slow": "vector(2)", "fast": QUERY}, on_answer=on_answer)
    assert read == [("fast", 1.0), ("slow", 2.0)]
    assert batch.errors == [] and list(batch.results) == ["slow", "fast"]  # the order asked


def test_answers_settle_in_the_order_asked_whatever_their_arrival(
        fake: FaultyBackend, warm_backend: PrometheusBackend) -> None:
    # "q" fails (the last good answer is read, stale), "new" has none to fall back on, and
    # "late" arrives last: results and errors come in the order asked all the same.
    arrived = threading.Event()
    fake.reply = Reply(status=500, body=b"down", content_type="text/plain")
    fake.replies["vector(3)"] = Reply(hold=arrived)
    read: list[tuple[str, bool]] = []

    def on_answer(name: str, answer: QueryResult) -> None:
        read.append((name, answer.stale))
        arrived.set()

    batch = warm_backend.query_many({"late": "vector(3)", "q": QUERY, "new": "vector(4)"}, on_answer=on_answer)
    assert read == [("q", True), ("late", False)]  # an error with no last good answer reads nothing
    assert list(batch.results) == ["late", "q"]
    assert [(error.query, error.kind) for error in batch.errors] == [("q", "http_error"), ("new", "http_error")]


def test_concurrent_batches_share_one_request_per_query(fake: FaultyBackend) -> None:
    fake.reply = Reply(delay_s=0.2)
    with PrometheusBackend(fake.url) as backend:
        threads = [threading.Thread(target=backend.query_many, args=({"q": QUERY},)) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(5)
    assert fake.request_count == 1


def test_bearer_token_is_sent(fake: FaultyBackend) -> None:
    with PrometheusBackend(fake.url, bearer_token="s3cret-token") as backend:
        assert backend.query_many({"q": QUERY}).errors == []
    assert fake.requests[-1].headers["authorization"] == "Bearer s3cret-token"


def test_basic_auth_is_sent(fake: FaultyBackend) -> None:
    with PrometheusBackend(fake.url, basic_auth=("grafana", "pa:ss")) as backend:
        assert backend.ping().reachable
    assert fake.requests[-1].headers["authorization"] == "Basic " + base64.b64encode(b"grafana:pa:ss").decode()


@pytest.fixture
def no_proxy_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """An environment without proxies, and a home of its own (for ~/.netrc)."""
    for name in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def test_the_environments_proxy_is_used(no_proxy_settings: pytest.MonkeyPatch, fake: FaultyBackend) -> None:
    # Read once per connection rather than by requests at every request: still honoured.
    no_proxy_settings.setenv("HTTP_PROXY", fake.url)
    with PrometheusBackend("http://prometheus.invalid:9090") as backend:
        assert backend.query_many({"q": QUERY}).errors == []
    assert fake.requests[-1].headers["host"] == "prometheus.invalid:9090"


def test_netrc_credentials_are_sent_unless_the_settings_give_some(
        no_proxy_settings: pytest.MonkeyPatch, tmp_path: Path, fake: FaultyBackend) -> None:
    (tmp_path / ".netrc").write_text("machine 127.0.0.1 login netrc-user password netrc-pass\n")
    (tmp_path / ".netrc").chmod(0o600)
    with PrometheusBackend(fake.url) as backend:
        assert backend.query_many({"q": QUERY}).errors == []
    assert fake.requests[-1].headers["authorization"] == "Basic " + base64.b64encode(b"netrc-user:netrc-pass").decode()
    with PrometheusBackend(fake.url, bearer_token="s3cret-token") as backend:
        assert backend.query_many({"q": QUERY}).errors == []
    assert fake.requests[-1].headers["authorization"] == "Bearer s3cret-token"


def test_bearer_token_and_basic_auth_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        PrometheusBackend("http://127.0.0.1:9090", bearer_token="t", basic_auth=("u", "p"))


def test_errors_never_show_credentials_from_the_url() -> None:
    with PrometheusBackend(f"http://user:hunter2@127.0.0.1:{free_port()}") as backend:
        [error] = backend.query_many({"q": QUERY}).errors
    assert error.kind == "unreachable" and "hunter2" not in error.message


def test_ping_of_a_down_backend_is_fast_and_says_why() -> None:
    # Retried (prometheus-api-client's default), a refusal would take about 6 s.
    with PrometheusBackend(f"http://127.0.0.1:{free_port()}", ping_timeout_s=0.3) as backend:
        state = backend.ping()
    assert not state.reachable and state.error is not None and state.error.kind == "unreachable"
    assert state.latency_ms < 5 * 0.3 * 1000


def test_ping_of_a_slow_backend_keeps_to_its_timeout(fake: FaultyBackend) -> None:
    fake.reply = Reply(delay_s=30)
    with PrometheusBackend(fake.url, ping_timeout_s=0.3) as backend:
        state = backend.ping()
    assert not state.reachable and state.error is not None and state.error.kind == "timeout"
    assert 0.3 * 0.9 * 1000 <= state.latency_ms < 5 * 0.3 * 1000  # waited for its timeout, not the 30 s reply


def test_ping_of_a_garbage_backend_is_not_reachable(fake: FaultyBackend) -> None:
    fake.reply = Reply(body=b"<html>login</html>", content_type="text/html")
    with PrometheusBackend(fake.url) as backend:
        state = backend.ping()
    assert not state.reachable and state.error is not None and state.error.kind == "garbage"


# --- any bytes: an answer or a BackendFailure, nothing else ------------------------------

_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
_FIELDS = st.sampled_from(["status", "data", "resultType", "result", "metric", "value", "values", "warnings",
                           "isPartial", "errorType", "error"])
#: Envelopes shaped like Prometheus answers, with anything anywhere.
_ENVELOPES = st.recursive(
    _JSON,
    lambda inner: st.dictionaries(_FIELDS | st.text(max_size=3), inner, max_size=4) | st.lists(inner, max_size=3),
    max_leaves=20,
).map(lambda value: {"status": "success", "data": value} if not isinstance(value, dict) else value)


@settings(max_examples=300, deadline=None)
@given(envelope=_ENVELOPES, status=st.sampled_from([200, 400, 422, 503]), finite_only=st.booleans())
def test_any_envelope_reads_as_an_answer_or_a_backend_failure(envelope: Any, status: int, finite_only: bool) -> None:
    import json

    try:
        answer = parse_response(status, json.dumps(envelope).encode(), finite_only=finite_only)
    except BackendFailure:
        return
    assert isinstance(answer, QueryResult)
    for sample in answer.samples:
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in sample.labels.items())
        assert isinstance(sample.value, float) and not math.isnan(sample.value)
        assert math.isfinite(sample.value) or not finite_only


@pytest.mark.parametrize("body", [b"[" * 100_000 + b"]" * 100_000, b'{"status": "success", "data": {"resultType": '
                                  b'"vector", "result": [{"metric": {}, "value": [0, ' + b"9" * 400 + b"]}]}}"])
def test_nesting_and_huge_numbers_are_garbage(body: bytes) -> None:
    with pytest.raises(BackendFailure) as failure:
        parse_response(200, body)
    assert failure.value.error.kind == "garbage"


# --- reading an answer, a column at a time ---------------------------------------------------


def _vector(*points: tuple[Any, Any]) -> bytes:
    return envelope(result=[{"metric": labels, "value": [1700000000.5, raw]} for labels, raw in points])


def test_answer_holds_its_samples_labels_and_values_in_order() -> None:
    answer = parse_response(200, _vector(({"m": "a"}, "1.5"), ({"m": "b"}, "NaN"), ({"m": "c"}, "+Inf"),
                                         ({}, "-2")))
    assert answer.labels == ({"m": "a"}, {"m": "c"}, {})  # NaN: undefined, dropped
    assert answer.values == (1.5, math.inf, -2.0)
    pairs = list(zip(answer.labels, answer.values, strict=True))
    assert [(sample.labels, sample.value) for sample in answer.samples] == pairs
    assert answer.value() == 1.5


def test_matrix_answer_keeps_each_series_last_point() -> None:
    body = envelope("matrix", [{"metric": {"m": "a"}, "values": [[1, "1"], [2, "2"]]},
                               {"metric": {"m": "b"}, "values": []}])
    answer = parse_response(200, body)
    assert (answer.labels, answer.values) == (({"m": "a"},), (2.0,))


def test_scalar_and_string_answers() -> None:
    scalar = parse_response(200, envelope("scalar", [1700000000, "4"]))
    assert (scalar.labels, scalar.values, scalar.value()) == (({},), (4.0,), 4.0)
    assert parse_response(200, envelope("string", [1700000000, "x"])).samples == ()


@pytest.mark.parametrize(("points", "says"), [
    ((({"m": "a"}, "1"), ({"m": "b"}, True)), "must be a number"),
    ((({"m": "a"}, "1"), ({"m": "b"}, [1])), "must be a number"),
    ((({"m": "a"}, "one"),), "could not convert"),
    ((({"m": "a"}, "1"), ({"m": 1}, "2")), "object of strings"),
    ((({"m": "a"}, "1"), (["m"], "2")), "object of strings"),
])
def test_a_bad_sample_anywhere_makes_the_answer_garbage(points: tuple[tuple[Any, Any], ...], says: str) -> None:
    with pytest.raises(BackendFailure) as failure:
        parse_response(200, _vector(*points))
    assert failure.value.error.kind == "garbage" and says in failure.value.error.message


def test_finite_only_names_the_value_that_is_not_finite() -> None:
    with pytest.raises(BackendFailure) as failure:
        parse_response(200, _vector(({"m": "a"}, "1"), ({"m": "b"}, "+Inf")), finite_only=True)
    assert failure.value.error.kind == "garbage" and "+Inf" in failure.value.error.message \
        and "is not a finite number" in failure.value.error.message


# --- reading into a label set ---------------------------------------------------------------

_INTO = label_set(frozenset({"provider", "model", "le"}))
#: Mostly what Prometheus sends (a third of them as anything else).
_GOOD_VALUES = st.floats(allow_nan=False, allow_infinity=False).map(repr) | st.sampled_from(["0", "-2", "1e3"])
_ODD_VALUES = st.sampled_from(["1e999", " 2", "1_000", "NaN", "+Inf", "-Inf", "inf", "one", "", 1.5, 3, True, None,
                               [1]])
_GOOD_LABELS = st.dictionaries(st.sampled_from(["provider", "model", "le"]), st.sampled_from(["a", "b", "x\"y"]),
                               max_size=3)
_ODD_LABELS = st.dictionaries(st.sampled_from(["provider", "job", "__name__"]),
                              st.sampled_from(["a", ""]) | st.integers(0, 2), max_size=2)
_GOOD_POINTS = st.tuples(st.floats(allow_nan=False, allow_infinity=False), _GOOD_VALUES).map(list)
_ODD_POINTS = st.tuples(st.just("1700000000.5") | st.none(), _GOOD_VALUES | _ODD_VALUES).map(list) | st.just([1])
_SERIES = st.fixed_dictionaries({"metric": st.one_of(*[_GOOD_LABELS] * 8, _ODD_LABELS),
                                 "value": st.one_of(*[_GOOD_POINTS] * 8, _ODD_POINTS)})
_EXTRA = st.one_of(st.just({}), st.just({}), st.fixed_dictionaries(
    {}, optional={"warnings": st.sampled_from([[], ["slow"], None, False, 0, "x"]),
                  "isPartial": st.sampled_from([False, True, "false", None, []])}))


@settings(max_examples=400, deadline=None)
@given(result_type=st.sampled_from(["vector"] * 8 + ["matrix", "scalar"]), series=st.lists(_SERIES, max_size=4),
       extra=_EXTRA, status=st.sampled_from([200] * 8 + [206, 503]), finite_only=st.booleans())
def test_an_answer_read_into_a_label_set_is_the_same_answer_with_those_labels(
        result_type: str, series: list[Any], extra: dict[str, Any], status: int, finite_only: bool) -> None:
    body = envelope(result_type, series, **extra)
    try:
        general = parse_response(status, body, finite_only=finite_only)
    except BackendFailure as failure:
        with pytest.raises(BackendFailure) as read_into:
            parse_response(status, body, finite_only=finite_only, into=_INTO)
        assert read_into.value.error == failure.error
        return
    answer = parse_response(status, body, finite_only=finite_only, into=_INTO)
    assert (answer.result_type, answer.values, answer.warnings) == \
        (general.result_type, general.values, general.warnings)
    assert [dict(labels) for labels in answer.labels] == \
        [{name: value for name, value in labels.items() if name in _INTO.__struct_fields__ and value}
         for labels in general.labels]


def test_series_read_into_a_label_set_are_nothing_for_the_garbage_collector() -> None:
    answer = parse_response(200, _vector(({"provider": "p", "model": "m", "job": "j"}, "1.5")), into=_INTO)
    (labels,) = answer.labels
    assert isinstance(labels, _INTO) and not gc.is_tracked(labels)
    assert dict(labels) == {"provider": "p", "model": "m"} and answer.values == (1.5,)


def test_answers_read_into_a_label_set_are_kept_apart(fake: FaultyBackend) -> None:
    fake.reply = Reply(body=_vector(({"provider": "p", "job": "j"}, "1")))
    with PrometheusBackend(fake.url, cache_ttl_s=60) as backend:
        read_into = backend.query_many({"q": "up"}, into=_INTO).results["q"]
        read = backend.query_many({"q": "up"}).results["q"]
        assert backend.query_many({"q": "up"}, into=_INTO).results["q"] is read_into
    assert isinstance(read_into.labels[0], _INTO) and read.labels == ({"provider": "p", "job": "j"},)
    assert fake.request_count == 2


_PLAIN = [{"metric": {"provider": "p", "le": "+Inf"}, "value": [1700000000.5, "2.5"]}]


@pytest.mark.parametrize(("status", "body", "finite_only"), [
    pytest.param(206, envelope(result=_PLAIN), False, id="not-200"),
    pytest.param(200, envelope("matrix", [{"metric": {}, "values": [[1, "1"]]}]), False, id="matrix"),
    pytest.param(200, envelope(result=_PLAIN, warnings=["slow"]), False, id="warnings"),
    pytest.param(200, envelope(result=_PLAIN, isPartial=True), False, id="partial"),
    pytest.param(200, envelope(result=[{"metric": {"job": "j"}, "value": [1, "1"]}]), False, id="label-not-held"),
    pytest.param(200, _vector(({}, "NaN")), False, id="nan-to-drop"),
    pytest.param(200, _vector(({}, "-Inf")), True, id="not-finite"),
    pytest.param(200, envelope(result=_PLAIN).replace(b"success", b"error"), False, id="not-success"),
])
def test_only_a_plain_vector_is_read_straight_into_label_sets(status: int, body: bytes, finite_only: bool) -> None:
    assert backend_module._vector_into(_INTO, 200, envelope(result=_PLAIN), finite_only) is not None
    assert backend_module._vector_into(_INTO, 200, envelope(result=_PLAIN, warnings=[], isPartial=False),
                                       finite_only) is not None
    assert backend_module._vector_into(_INTO, status, body, finite_only) is None
