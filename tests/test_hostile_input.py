"""Hostile values through every recording helper: nothing raises into the caller, and no
label value can break a scrape, the summary or any other endpoint afterwards."""

from __future__ import annotations

import inspect
import random
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text

from app import metrics
from app import telemetry as telemetry_module
from app.catalogue import FAMILIES_BY_NAME, UNKNOWN_VALUE, Label
from app.main import create_app
from app.registry import MAX_LABEL_LENGTH, REPLACEMENT, clean_label_value
from app.settings import Settings
from app.telemetry import Telemetry
from tests.conftest import promtool_check_metrics, sample

HOSTILE_TEXT = [
    "gpt-4o\ud800",  # a lone surrogate, as json.loads('"gpt-4o\\ud800"') gives it
    "\udc00low-first",
    "\ud83d\ude00 a pair held as two code points",
    "nul\x00byte",
    "new\nline",
    "carriage\rreturn",
    "tab\there",
    "esc\x1b[31mred",
    "del\x7f",
    "c1\x85next-line",
    "line\u2028separator",
    "para\u2029separator",
    'quote"and\\backslash',
    '"} 1\n# TYPE injected counter\ninjected_total 1\n{a="',
    "{}=,",
    "\ufeffbom",
    "é" * 300,
    "x" * 100_000,
    "   ",
    "",
]
HOSTILE_NUMBERS: list[Any] = [
    10**400,
    -(10**400),
    10**5000,  # str() refuses it: more digits than sys.get_int_max_str_digits()
    float("nan"),
    float("inf"),
    -1,
    "12",
    None,
    True,
    object(),
]
#: Parameters of the helpers that take an amount; every other parameter is a label value
#: (or a key, an error, headers: all free text to a hostile caller).
AMOUNTS = {"input_tokens", "output_tokens", "credits", "cost_usd", "seconds", "duration_s", "count",
           "size", "size_bytes", "remaining", "balance", "ttft_s"}


def helpers() -> Iterator[tuple[str, Callable[..., Any]]]:
    for name in metrics.__all__:
        helper = getattr(metrics, name)
        if inspect.isfunction(helper):
            yield name, helper


def call(helper: Callable[..., Any], label: Any, amount: Any) -> None:
    """``helper`` with ``label`` for every label-like argument and ``amount`` for every amount."""
    arguments = {
        name: amount if name in AMOUNTS else label
        for name, parameter in inspect.signature(helper).parameters.items()
    }
    if "headers" in arguments:
        arguments["headers"] = {"retry-after": label} if isinstance(label, str) else label
    result = helper(**arguments)
    if hasattr(result, "__enter__"):
        with result as tracked:
            if hasattr(tracked, "first_token"):
                tracked.first_token()
                tracked.status_code = amount


def test_every_helper_takes_hostile_values_without_raising() -> None:
    tried = set()
    for name, helper in helpers():
        for text in HOSTILE_TEXT:
            call(helper, text, 1)
            call(helper, text, text)
        for number in HOSTILE_NUMBERS:
            call(helper, "hostile-numbers", number)
            call(helper, number, number)
        tried.add(name)
    assert {"track_model_inference", "record_upstream_call", "record_tokens_used", "set_queue_size",
            "record_http_request", "inference_status"} <= tried


@pytest.fixture(scope="module")
def hostile_telemetry() -> Iterator[Telemetry]:
    """A telemetry the module helpers recorded hostile values into (as the default)."""
    telemetry = Telemetry(Settings(access_log=False))
    previous = telemetry_module.set_default(telemetry)
    try:
        for _, helper in helpers():
            for text in HOSTILE_TEXT:
                call(helper, text, 1)
            for number in HOSTILE_NUMBERS:
                call(helper, number, 1)
        metrics.record_credits_used("p", "m", "user\ud800", 1.0, api_key="key\ud800")
    finally:
        telemetry_module.set_default(previous)
    yield telemetry


@pytest.fixture(scope="module")
def hostile_client(hostile_telemetry: Telemetry) -> Iterator[TestClient]:
    app = create_app(Settings(access_log=False), hostile_telemetry)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def get_routes() -> list[str]:
    settings = Settings(access_log=False)
    app = create_app(settings, Telemetry(settings))  # at collection: leaves the default alone
    return sorted(
        route.path for route in app.routes
        if isinstance(route, APIRoute) and "GET" in route.methods and "{" not in route.path
    ) + ["/docs", "/openapi.json"]


@pytest.mark.parametrize("path", get_routes())
def test_every_endpoint_answers_200_after_hostile_values(hostile_client: TestClient, path: str) -> None:
    response = hostile_client.get(path)
    assert response.status_code == 200, response.text[:500]


@pytest.mark.parametrize("path", ["/metrics", "/prometheus/metrics/models", "/prometheus/metrics/performance"])
def test_scrapes_pass_promtool_and_both_parsers_read_back_what_was_recorded(
    hostile_client: TestClient, hostile_telemetry: Telemetry, path: str
) -> None:
    # A provider's first scrape creates its transition counters at 0 (app/collectors.py),
    # after that scrape has exposed the family: compare from the scrape after it.
    hostile_client.get(path)
    text = hostile_client.get(path).text
    result = promtool_check_metrics(text)
    assert result.returncode == 0, result.stdout + result.stderr
    openmetrics = hostile_client.get(path, headers={"Accept": "application/openmetrics-text; version=1.0.0"}).text
    metric_set = hostile_telemetry.metrics
    recorded = label_values(metric_set.all_registry.collect())
    for parsed in (label_values(parse_text(text)), label_values(parse_openmetrics(openmetrics))):
        for family in parsed.keys() & metric_set.metrics.keys():  # computed families move between scrapes
            assert parsed[family] == recorded[family], family
    if path != "/prometheus/metrics/performance":
        model = metric_set["model_inference_requests_total"]
        expected = {model.label_value("model", text) for text in HOSTILE_TEXT}
        assert expected <= label_values(parse_text(text))[model.family.name]


def label_values(families: Any) -> dict[str, set[str]]:
    """Every label value per catalogue family, as exposed."""
    seen: dict[str, set[str]] = {}
    for family in families:
        name = family.name if family.name in FAMILIES_BY_NAME else f"{family.name}_total"
        for sample_ in family.samples:
            seen.setdefault(name, set()).update(v for k, v in sample_.labels.items() if k != "le")
    return seen


def test_the_summary_shows_a_hostile_user_id_safely(
    hostile_client: TestClient, hostile_telemetry: Telemetry
) -> None:
    body = hostile_client.get("/prometheus/metrics/summary?source=local").json()
    assert body  # served as JSON: the lone surrogate could not be encoded before
    top_users = hostile_telemetry.top_lists.users_by_credits.top(10_000)
    assert any(hit.key == "user" + REPLACEMENT for hit in top_users)


@pytest.mark.parametrize(
    ("raw", "recorded"),
    [
        ("gpt-4o\ud800", "gpt-4o" + REPLACEMENT),
        ("\ud83d\ude00", "\U0001f600"),  # a surrogate pair held as two code points is joined
        ("a\x00b", "a" + REPLACEMENT + "b"),
        ("new\nline", "new" + REPLACEMENT + "line"),
        ("line\u2028sep", "line" + REPLACEMENT + "sep"),
        ("c1\x85x", "c1" + REPLACEMENT + "x"),
        ("  padded  ", "padded"),
        ("\n\t ", UNKNOWN_VALUE),
        ("é" * 300, "é" * MAX_LABEL_LENGTH),
        (10**5000, UNKNOWN_VALUE),
        (10**400, "1" + "0" * (MAX_LABEL_LENGTH - 1)),
        ("gpt-4o", "gpt-4o"),
        ("ünïcödé ✓ 模型", "ünïcödé ✓ 模型"),
    ],
    ids=lambda value: f"int-of-{value.bit_length()}-bits" if isinstance(value, int) else ascii(value)[:40],
)
def test_free_text_is_made_safe_where_it_is_cleaned(raw: Any, recorded: str) -> None:
    assert clean_label_value(Label("model"), raw) == recorded
    recorded.encode("utf-8")


def test_a_raw_value_is_cleaned_once(monkeypatch: pytest.MonkeyPatch) -> None:
    import app.registry as registry

    cleaned: list[Any] = []
    original = registry.clean_label_value

    def counting(label: Label, value: Any) -> str:
        cleaned.append(value)
        return original(label, value)

    monkeypatch.setattr(registry, "clean_label_value", counting)
    name = f"once-{random.random()}\ud800"
    for _ in range(100):
        metrics.record_cache_hit(name)
        metrics.record_tokens_used("once-provider", name, 1, 1)
    assert cleaned.count(name) <= 2  # once per family it is a label of


# --- numbers -----------------------------------------------------------------------------


def rejected(helper: str, reason: str) -> float:
    return sample("gatewayz_recording_rejected_total", {"helper": helper, "reason": reason})


@pytest.mark.parametrize("huge", [10**400, -(10**400)], ids=["10**400", "-10**400"])
def test_integers_no_float_can_hold_are_dropped_and_counted(huge: int) -> None:
    for helper, record in [
        ("record_tokens_used", lambda: metrics.record_tokens_used("huge", "m", huge, None)),
        ("record_credits_used", lambda: metrics.record_credits_used("huge", "m", "u", huge)),
        ("record_provider_cost", lambda: metrics.record_provider_cost("huge", huge)),
        ("set_queue_size", lambda: metrics.set_queue_size("huge", huge)),
        ("set_user_credit_balance", lambda: metrics.set_user_credit_balance("huge", huge)),
        ("record_database_query", lambda: metrics.record_database_query("huge", "select", huge)),
        ("track_model_inference", lambda: metrics.record_upstream_call("huge", "m", duration_s=huge)),
        ("record_http_request", lambda: metrics.record_http_request("GET", "/huge", 200, huge)),
    ]:
        record()
        assert rejected(helper, "too_large") == 1, helper


def test_a_bad_number_is_checked_before_anything_is_recorded() -> None:
    model = f"m-{random.random()}"
    metrics.record_tokens_used("partial", model, 5, 10**400)
    labels = {"provider": "partial", "model": model}
    assert sample("tokens_used_total", {**labels, "token_type": "input"}) == 5  # the sane one is kept
    assert sample("tokens_used_total", {**labels, "token_type": "output"}) == 0
    metrics.record_upstream_call("partial", model, duration_s=0.5, ttft_s=10**400)
    assert sample("model_inference_requests_total", {**labels, "status": "success"}) == 1
    assert sample("model_inference_duration_seconds_count", labels) == 1


def test_the_largest_float_is_still_a_number() -> None:
    import sys

    metrics.set_queue_size("largest", sys.float_info.max)
    assert sample("queue_size", {"queue_name": "largest"}) == sys.float_info.max
    metrics.set_queue_size("largest-int", int(sys.float_info.max))
    assert sample("queue_size", {"queue_name": "largest-int"}) == sys.float_info.max
