"""The status page in a real browser: Debian's chromium, headless, driven by Playwright.

One demo service for the module (simulated traffic, its summaries from a real Prometheus
scraping it), one browser. The test forces ``flakycloud``'s circuit open through the
health tracker, so the page has an unavailable provider to show, and stops Prometheus at
the end, so the summary turns stale. The trend charts' first paint already holds the
service's history (Prometheus' range query, or the local snapshots once Prometheus is
stopped: the tests run in any order). Every figure the page shows is checked against the
JSON answer the page itself received (``data-source`` and ``data-path`` say where each one
comes from). The browser is never downloaded: scripts/test.sh installs Debian's chromium.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright import sync_api

from app.main import create_app
from app.scoring import HealthTracker
from app.settings import Settings
from app.telemetry import Telemetry
from tests.support.servers import AppServer, MetricsServer, poll, serve_app, start_prometheus

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
JOB = "gateway-metrics"
STATUS = "/prometheus/metrics/status"
#: Long enough that nothing polls behind the test's back; it clicks "Refresh now" instead.
QUIET = "?refresh=60"
WAIT_MS = 15_000
FORCED = "flakycloud"
#: A model name a caller made up to break the page; it must show as text.
HOSTILE_MODEL = '<img src=x onerror="document.title=1">'
#: A provider whose calls are never streamed: no time to first token, so "no data".
BATCH = ("batchcloud", "batch-embedder")
API_KEY = "status-page-test-token"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if shutil.which(CHROMIUM) is None:
        pytest.fail(f"{CHROMIUM} is missing: scripts/test.sh installs Debian's chromium package")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AppServer, MetricsServer, Telemetry]]:
    """The demo service with a telemetry (and health tracker) of its own, its summaries
    from a real Prometheus."""
    prometheus = start_prometheus(tmp_path_factory.mktemp("status-page"), targets=[], job=JOB)
    settings = Settings(demo=True, prometheus_url=prometheus.url, prometheus_job=JOB,
                        query_cache_seconds=0, query_deadline_seconds=1.0, access_log=False)
    telemetry = Telemetry(settings)
    try:
        with serve_app(create_app(settings, telemetry)) as app:
            prometheus.set_targets([app.address])
            for _ in range(20):
                telemetry.record_upstream_call(*BATCH, duration_s=0.4)
                telemetry.record_upstream_call("openrouter", HOSTILE_MODEL, duration_s=0.3)
            # Rates need two scrapes with traffic between them.
            prometheus.wait_until(f'sum(rate(model_inference_requests_total{{job="{JOB}"}}[1m])) > 0', timeout=30)
            yield app, prometheus, telemetry
    finally:
        prometheus.close()


def force_open(tracker: HealthTracker, provider: str) -> None:
    """Five timeouts in a row open a circuit (HealthConfig.consecutive_failures); it stays
    open for its cooldown (5 s, or more after a failed trial): a test that reads the open
    circuit forces it again and redraws the page first."""
    for _ in range(tracker.config.consecutive_failures):
        tracker.record(provider, duration_s=30.0, error="timeout")


class LoadedPage:
    """A page with the answers it rendered last and the console errors it logged."""

    def __init__(self, page: Any) -> None:
        self.page = page
        self.errors: list[str] = []
        self.answers: dict[str, dict] = {}
        page.on("console", lambda message: message.type == "error" and self.errors.append(message.text))
        page.on("pageerror", lambda error: self.errors.append(str(error)))

    def refresh(self, action: Any, *, navigation: bool = False) -> None:
        """Run ``action`` (a click, or a ``navigation``) and wait until the page has drawn
        the answers it triggered."""
        generation = 0 if navigation else int(self.page.evaluate("() => Number(document.body.dataset.generation || 0)"))
        with (self.page.expect_response(lambda r: "/prometheus/metrics/health" in r.url) as health,
              self.page.expect_response(lambda r: "/prometheus/metrics/summary" in r.url) as summary):
            action()
        self.answers = {"health": health.value.json(), "summary": summary.value.json()}
        self.page.wait_for_function(
            "(before) => Number(document.body.dataset.generation || 0) > before", arg=generation, timeout=WAIT_MS)


@pytest.fixture(scope="module")
def status(browser: Any, demo: tuple[AppServer, MetricsServer, Telemetry]) -> Iterator[LoadedPage]:
    app, _, telemetry = demo
    # The summary must come from Prometheus before the page loads, so the stale test below
    # has a good answer to fall back on.
    poll(lambda: httpx.get(f"{app.url}/prometheus/metrics/summary", trust_env=False, timeout=10).json()["source"]
         == "prometheus", 20, "a summary from Prometheus")
    force_open(telemetry.tracker, FORCED)
    context = browser.new_context(viewport={"width": 1360, "height": 900}, color_scheme="dark")
    loaded = LoadedPage(context.new_page())
    loaded.refresh(lambda: loaded.page.goto(app.url + STATUS + QUIET), navigation=True)
    yield loaded
    context.close()


# --- what the figures say ---------------------------------------------------------------

SUFFIX_FACTORS = {"%": 0.01, "ms": 1.0, "s": 1000.0, "k tokens": 1e3, "M tokens": 1e6}
UNIT_SUFFIXES = {
    "ms": {"ms", "s"}, "percent": {"%"}, "rate": {"req/s"}, "score": {""}, "usd": {""},
    "tokens": {"tokens", "k tokens", "M tokens"}, "calls": {"call", "calls"}, "requests": {""},
    "inflight": {"request", "requests"}, "pace": {"tokens/s"},
}
DISPLAY = re.compile(r"^(\$?)(-?[\d,]+(?:\.(\d+))?)\s*(.*)$")


def resolve(answer: Any, path: list[Any]) -> Any:
    """The value at ``path`` in a JSON answer; a dict segment picks the list item it matches."""
    node = answer
    for segment in path:
        if isinstance(segment, dict):
            matches = [item for item in node if all(item.get(k) == v for k, v in segment.items())]
            assert len(matches) == 1, f"{segment} matches {len(matches)} entries"
            node = matches[0]
        else:
            node = node[segment]
    return node


def check_display(text: str, unit: str, value: Any) -> None:
    """``text`` shows ``value`` in ``unit``, rounded to the digits it shows, or "no data"."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        assert text == "no data", f"null shown as {text!r}"
        return
    match = DISPLAY.match(text)
    assert match, f"{text!r} is not a number with a unit"
    dollar, number, decimals, suffix = match.groups()
    assert (dollar == "$") == (unit == "usd"), text
    assert suffix in UNIT_SUFFIXES[unit], f"{text!r} has no {unit} unit"
    factor = SUFFIX_FACTORS.get(suffix, 1.0)
    step = 10.0 ** -len(decimals or "") * factor
    shown = float(number.replace(",", "")) * factor
    assert abs(shown - value) <= step / 2 * (1 + 1e-9) + 1e-9, f"{text!r} for {value!r} ({unit})"


# --- the tests ----------------------------------------------------------------------------


def card_names(page: Any) -> list[str]:
    return page.locator("#cards > li.card h3").all_inner_texts()


def test_cards_show_every_provider_in_failover_order(status: LoadedPage) -> None:
    health, summary = status.answers["health"], status.answers["summary"]
    order = health["failover_order"]
    summary_only = sorted({p["provider"] for p in summary["metrics"]["providers"]["providers"]} - set(order))
    assert {"openrouter", "anthropic", "cerebras", FORCED} <= set(order)
    assert card_names(status.page) == order + summary_only
    for entry in health["providers"]:
        card = status.page.locator(f'#cards > li[data-provider="{entry["provider"]}"]')
        assert card.get_attribute("data-state") == entry["state"]
        assert entry["state"].capitalize() in card.locator(".badge").inner_text()  # in words, not only colour
        for reason in entry["reasons"]:
            assert reason in card.locator(".reasons").inner_text()


def test_an_open_circuit_shows_as_unavailable_in_words(status: LoadedPage,
                                                        demo: tuple[AppServer, MetricsServer, Telemetry]) -> None:
    force_open(demo[2].tracker, FORCED)  # the tests before this one may have outlasted its cooldown
    status.refresh(lambda: status.page.locator("#refresh").click())
    card = status.page.locator(f'#cards > li[data-provider="{FORCED}"]')
    assert "Unavailable" in card.locator(".badge").inner_text()
    assert "open" in card.locator(".circuit").inner_text()
    assert "circuit open since" in card.locator(".reasons").inner_text()  # after 5 timeouts, or a failed trial
    rank = status.answers["health"]["failover_order"].index(FORCED) + 1
    assert rank > 1 and card.locator(".rank").inner_text() == f"#{rank}"  # failed over, ranked where the order says


def test_every_figure_matches_the_json_it_came_from(status: LoadedPage) -> None:
    figures = status.page.eval_on_selector_all(
        "[data-path]", "(nodes) => nodes.map((n) => [n.dataset.source, n.dataset.path, n.dataset.unit, n.textContent])")
    sources = {source for source, *_ in figures}
    assert sources == {"health", "summary"}
    assert len(figures) > 60
    for source, path, unit, text in figures:
        value = resolve(status.answers[source], json.loads(path))
        check_display(text, unit, value)


def test_fleet_totals_and_models_are_all_there(status: LoadedPage) -> None:
    fleet = status.page.locator("#fleet").inner_text()
    for label in ("REQUESTS", "ERROR RATE", "P50", "P95", "P99", "TOKENS", "COST", "CACHE HIT RATE", "IN FLIGHT"):
        assert label in fleet.upper()
    models = status.answers["summary"]["metrics"]["models"]["models"]
    rows = status.page.locator("#models tbody tr")
    show_all_models(status.page, False)  # another test may have asked for all of them
    assert rows.count() == min(len(models), 12)  # the busiest; the rest one click away
    if len(models) > 12:
        show_all_models(status.page)
        assert rows.count() == min(len(models), 200)
    columns = status.page.locator("#models thead th").all_text_contents()
    assert columns[-4:] == ["TTFT p95", "TPOT p50", "TPOT p95", "Tokens/s"]
    batch = status.page.locator("#models tbody tr", has_text=BATCH[1])
    # Never streamed: no time to first token, no time per output token, no pace; not 0.
    assert batch.locator("td").all_inner_texts()[-4:] == ["no data"] * 4
    # The demo's streamed calls give the busiest models a pace (checked against the JSON
    # with every other figure by test_every_figure_matches_the_json_it_came_from).
    streamed = [m for m in models if m["output_tokens_per_second"] is not None]
    assert streamed and all(m["tpot_p50_ms"] <= m["tpot_p95_ms"] for m in streamed)
    busiest = status.page.locator("#models tbody tr").first.locator("td").all_inner_texts()
    assert busiest[-1].endswith("tokens/s") and busiest[-2].endswith("ms"), busiest


def show_all_models(page: Any, show: bool = True) -> None:
    """Show every model (or, ``show=False``, the busiest few) whatever the table shows now."""
    toggle = page.locator("#models-toggle")
    if toggle.is_visible() and toggle.get_attribute("aria-expanded") != str(show).lower():
        toggle.click()
        assert toggle.get_attribute("aria-expanded") == str(show).lower()


def test_caller_supplied_names_are_shown_as_text(status: LoadedPage) -> None:
    show_all_models(status.page)
    cell = status.page.locator("#models td.model", has_text="onerror")
    assert cell.inner_text() == HOSTILE_MODEL
    assert status.page.locator("#models img").count() == 0
    assert status.page.title() != "1"


def test_screenshot_and_no_console_errors(status: LoadedPage, tmp_path: Path) -> None:
    shot = tmp_path / "status-page.png"
    status.page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    assert status.errors == []


def test_keyboard_reaches_the_controls_and_refreshes(status: LoadedPage) -> None:
    page = status.page
    page.locator("a.skip").focus()  # the first stop of the tab order
    focused = []
    for _ in range(3):
        page.keyboard.press("Tab")
        focused.append(page.evaluate("() => document.activeElement.id"))
    assert focused == ["interval", "pause", "refresh"]
    page.locator("#refresh").focus()
    status.refresh(lambda: page.keyboard.press("Enter"))
    assert status.errors == []


def test_interval_is_adjustable_and_polling_pauses_when_hidden(status: LoadedPage) -> None:
    page = status.page
    page.select_option("#interval", "10")
    assert "every 10 s" in page.locator("#freshness").inner_text()
    page.evaluate("""() => {
        Object.defineProperty(document, "hidden", { value: true, configurable: true });
        document.dispatchEvent(new Event("visibilitychange"));
    }""")
    assert "paused while this tab is hidden" in page.locator("#freshness").inner_text()
    # Back in view, the page polls at once rather than waiting out its interval.
    status.refresh(lambda: page.evaluate("""() => {
        Object.defineProperty(document, "hidden", { value: false, configurable: true });
        document.dispatchEvent(new Event("visibilitychange"));
    }"""))
    assert "every 10 s" in page.locator("#freshness").inner_text()
    page.select_option("#interval", "60")


def rated_points(answer: dict) -> int:
    return sum(value is not None for value in answer["requests_per_second"])


def test_first_paint_already_holds_the_services_history(browser: Any,
                                                        demo: tuple[AppServer, MetricsServer, Telemetry]) -> None:
    app, _, _ = demo
    # A service that has run for a while: its history (Prometheus', or its own snapshots
    # once the stale test has stopped Prometheus) holds a few rates.
    poll(lambda: rated_points(httpx.get(f"{app.url}/prometheus/metrics/trends", trust_env=False,
                                        timeout=10).json()) >= 2, 30, "two points of history with a rate")
    context = browser.new_context(viewport={"width": 1360, "height": 900}, color_scheme="dark")
    loaded = LoadedPage(context.new_page())
    page = loaded.page
    try:
        with page.expect_response(lambda r: "/prometheus/metrics/trends" in r.url) as trends:
            loaded.refresh(lambda: page.goto(app.url + STATUS + QUIET), navigation=True)
        history = trends.value.json()
        assert page.evaluate("() => document.body.dataset.generation") == "1"  # the first paint
        assert rated_points(history) >= 2
        # Every point of the history and the one the page polled, each once.
        samples = int(page.locator("#chart-rate").get_attribute("data-samples"))
        assert samples == len(history["times"]) + 1
        line = page.locator("#chart-rate path.line").first.get_attribute("d") or ""
        assert line.count("L") >= 1, "the rate chart draws a line, not a lone dot"
        assert int(page.locator("#trends-note").get_attribute("data-history")) == len(history["times"])
        assert "The last 15 minutes: from" in page.locator("#trends-note").inner_text()
        assert page.locator("#chart-rate line.opened").count() == 1  # where the polls begin
        # The polls go on from there, one point each; the history is fetched once.
        urls: list[str] = []
        page.on("request", lambda request: urls.append(request.url))
        loaded.refresh(lambda: page.locator("#refresh").click())
        assert int(page.locator("#chart-rate").get_attribute("data-samples")) == samples + 1
        assert not [url for url in urls if "/prometheus/metrics/trends" in url]
        assert loaded.errors == []
    finally:
        context.close()


def test_a_failed_history_leaves_the_page_working_and_says_so(browser: Any,
                                                              demo: tuple[AppServer, MetricsServer, Telemetry]) -> None:
    app, _, _ = demo
    context = browser.new_context()
    loaded = LoadedPage(context.new_page())
    page = loaded.page
    page.route("**/prometheus/metrics/trends*", lambda route: route.fulfill(status=500, body="boom"))
    try:
        loaded.refresh(lambda: page.goto(app.url + STATUS + QUIET), navigation=True)
        assert page.locator("#cards > li.card").count() >= 4
        assert page.locator("#chart-rate").get_attribute("data-samples") == "1"  # the poll alone
        assert "No history (trends answered HTTP 500)" in page.locator("#trends-note").inner_text()
        # The only error: the browser logging the 500 the page was built to survive.
        assert loaded.errors and all("500" in error for error in loaded.errors)
    finally:
        context.close()


def test_phone_width_needs_no_sideways_scrolling(browser: Any,
                                                 demo: tuple[AppServer, MetricsServer, Telemetry]) -> None:
    app, _, _ = demo
    context = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
    loaded = LoadedPage(context.new_page())
    try:
        loaded.refresh(lambda: loaded.page.goto(app.url + STATUS + QUIET), navigation=True)
        assert loaded.page.evaluate("() => document.documentElement.scrollWidth") <= 390
        assert loaded.page.locator("#cards > li.card").count() >= 4
        assert loaded.errors == []
    finally:
        context.close()


def test_token_is_asked_once_kept_in_the_session_and_never_put_in_a_url(browser: Any) -> None:
    settings = Settings(api_key=API_KEY, access_log=False)
    with serve_app(create_app(settings)) as app:
        context = browser.new_context()
        loaded = LoadedPage(context.new_page())
        urls: list[str] = []
        loaded.page.on("request", lambda request: urls.append(request.url))
        try:
            page = loaded.page
            page.goto(app.url + STATUS + QUIET)
            page.locator("#auth").wait_for(state="visible", timeout=WAIT_MS)
            assert page.locator("#main").is_hidden()
            page.fill("#token", "wrong")
            page.locator("#auth button[type=submit]").click()
            page.get_by_text("refused that token").wait_for(timeout=WAIT_MS)
            assert page.evaluate("() => sessionStorage.length") == 0
            page.fill("#token", API_KEY)
            loaded.refresh(lambda: page.locator("#auth button[type=submit]").click())
            assert page.locator("#auth").is_hidden()
            assert page.evaluate("() => Object.values(sessionStorage)") == [API_KEY]
            assert page.evaluate("() => Object.values(localStorage).join()").find(API_KEY) == -1
            # A reload keeps the tab's token: no second prompt.
            loaded.refresh(lambda: page.reload(), navigation=True)
            assert page.locator("#auth").is_hidden()
            assert all(API_KEY not in url for url in urls)
            page.locator("#forget").click()
            assert page.locator("#auth").is_visible()
            assert page.evaluate("() => sessionStorage.length") == 0
            # The only errors: the browser logging the 401s the page was built to expect.
            assert loaded.errors and all("401" in error for error in loaded.errors)
        finally:
            context.close()


def test_stale_summary_shows_the_backend_down_notice(status: LoadedPage,
                                                     demo: tuple[AppServer, MetricsServer, Telemetry],
                                                     tmp_path: Path) -> None:
    _, prometheus, _ = demo
    assert status.page.locator("#notices .notice").count() == 0
    prometheus.stop()
    status.refresh(lambda: status.page.locator("#refresh").click())
    summary = status.answers["summary"]
    assert summary["stale"] is True and summary["errors"]
    notice = status.page.locator("#notices .notice")
    assert notice.count() == 1
    assert notice.get_attribute("role") == "alert"
    assert "Metrics backend down" in notice.inner_text()
    assert "cannot be reached" in notice.inner_text() or "did not answer" in notice.inner_text()
    status.page.screenshot(path=str(tmp_path / "status-page-stale.png"), full_page=True)
    assert status.errors == []
