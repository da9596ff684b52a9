"""Active probes against mocked provider health URLs (respx): their outcomes feed the tracker."""

from __future__ import annotations

import asyncio

import httpx
import pytest
import respx

from app.scoring import HealthTracker, ProbeRunner, State
from tests.scoring.fake_clock import FakeClock

UP = "https://up.example/health"
DOWN = "https://down.example/health"
GONE = "https://gone.example/health"


@pytest.fixture
def upstream() -> respx.MockRouter:
    with respx.mock(assert_all_called=False) as router:
        router.get(UP).mock(return_value=httpx.Response(200, json={"status": "ok"}))
        router.get(DOWN).mock(return_value=httpx.Response(503))
        router.get(GONE).mock(side_effect=httpx.ConnectError("connection refused"))
        yield router


def probe_all(runner: ProbeRunner) -> dict[str, bool]:
    """One probe of each provider, all at once, and whether each passed."""

    async def run() -> dict[str, bool]:
        async with httpx.AsyncClient() as client:
            names = list(runner.urls)
            return dict(zip(names, await asyncio.gather(*(runner.probe(name, client) for name in names)), strict=True))

    return asyncio.run(run())


def test_probe_outcomes_200_ok_503_and_connect_error_not(
    tracker: HealthTracker, upstream: respx.MockRouter
) -> None:
    runner = ProbeRunner(tracker, {"up": UP, "down": DOWN, "gone": GONE}, interval_s=15.0)

    assert probe_all(runner) == {"up": True, "down": False, "gone": False}
    assert upstream.calls.call_count == 3
    assert [tracker.status(name).availability for name in ("up", "down", "gone")] == [1.0, 0.0, 0.0]
    assert [tracker.status(name).probes for name in ("up", "down", "gone")] == [1, 1, 1]


@pytest.mark.parametrize(("response", "ok"), [(httpx.Response(401), True), (httpx.Response(404), True),
                                              (httpx.Response(429), False), (httpx.Response(500), False)])
def test_probe_reads_any_answer_below_500_but_429_as_reachable(
    tracker: HealthTracker, response: httpx.Response, ok: bool
) -> None:
    with respx.mock() as router:
        router.get(UP).mock(return_value=response)
        assert probe_all(ProbeRunner(tracker, {"p": UP})) == {"p": ok}


def test_probe_timeout_is_a_failed_probe(tracker: HealthTracker) -> None:
    with respx.mock() as router:
        router.get(UP).mock(side_effect=httpx.ReadTimeout("slow"))
        assert probe_all(ProbeRunner(tracker, {"p": UP})) == {"p": False}


def test_failed_probes_lower_availability(
    tracker: HealthTracker, clock: FakeClock, upstream: respx.MockRouter
) -> None:
    for _ in range(4):
        tracker.record("p", duration_s=0.5)
    runner = ProbeRunner(tracker, {"p": DOWN})

    availabilities = []
    for _ in range(4):
        probe_all(runner)
        availabilities.append(tracker.status("p").availability)
        clock.advance(15.0)

    assert availabilities == pytest.approx([4 / 5, 4 / 6, 4 / 7, 4 / 8])
    health = tracker.status("p")
    assert (health.error_rate, health.latency_score) == (0.0, 1.0)  # probes are not calls
    assert health.score == pytest.approx(0.4 * 0.5 + 0.3 + 0.3)


def test_only_probes_in_the_window_count(tracker: HealthTracker, clock: FakeClock, upstream: respx.MockRouter) -> None:
    probe_all(ProbeRunner(tracker, {"p": GONE}))
    assert tracker.status("p").state is State.DEGRADED

    clock.advance(61.0)

    assert (tracker.status("p").availability, tracker.status("p").state) == (1.0, State.UNKNOWN)


def test_successful_probe_ends_a_quota_lockout(tracker: HealthTracker, upstream: respx.MockRouter) -> None:
    tracker.record("p", duration_s=0.05, status_code=429, error_code="insufficient_quota")
    assert tracker.choose(["p"]).panic

    probe_all(ProbeRunner(tracker, {"p": DOWN}))
    assert tracker.choose(["p"]).panic  # a failed probe does not end it

    probe_all(ProbeRunner(tracker, {"p": UP}))

    assert not tracker.choose(["p"]).panic
    assert tracker.status("p").rate_limited_until is None
    assert not any("quota" in reason for reason in tracker.status("p").reasons)


def test_a_provider_whose_circuit_is_not_closed_is_probed_at_the_short_interval(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    for _ in range(5):
        tracker.record("sick", duration_s=0.1, status_code=503)
    tracker.record("well", duration_s=0.5)
    runner = ProbeRunner(tracker, {"sick": DOWN, "well": UP}, interval_s=10.0, unhealthy_interval_s=0.02)
    assert (runner.next_wait_s("sick"), runner.next_wait_s("well")) == (0.02, 10.0)

    async def run_briefly() -> None:
        task = asyncio.get_running_loop().create_task(runner.run())
        await asyncio.sleep(0.3)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with respx.mock() as router:
        sick = router.get(DOWN).mock(return_value=httpx.Response(503))
        well = router.get(UP).mock(return_value=httpx.Response(200))
        asyncio.run(run_briefly())

    assert well.call_count == 1  # at start, then not for 10 s
    assert sick.call_count >= 3


def test_a_successful_probe_ends_an_open_circuits_cooldown(tracker: HealthTracker, upstream: respx.MockRouter) -> None:
    for _ in range(5):
        tracker.record("p", duration_s=0.1, status_code=503)
    assert not tracker.allow("p")

    probe_all(ProbeRunner(tracker, {"p": UP}))

    assert tracker.status("p").circuit == "half_open"
    assert tracker.allow("p")


def test_a_probe_waiting_for_its_timeout_does_not_hold_back_the_next(tracker: HealthTracker) -> None:
    for _ in range(5):
        tracker.record("p", duration_s=0.1, status_code=503)
    runner = ProbeRunner(tracker, {"p": UP}, interval_s=10.0, unhealthy_interval_s=0.02, timeout_s=5.0)
    answers = 0

    async def hang_then_answer(request: httpx.Request) -> httpx.Response:
        nonlocal answers
        answers += 1
        if answers == 1:  # the provider was still down when this one went: it hangs
            await asyncio.sleep(5.0)
        return httpx.Response(200)

    async def run_briefly() -> None:
        task = asyncio.get_running_loop().create_task(runner.run())
        for _ in range(100):  # bounded: at most 2 s
            await asyncio.sleep(0.02)
            if tracker.status("p").circuit == "half_open":
                break
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    with respx.mock() as router:
        router.get(UP).mock(side_effect=hang_then_answer)
        asyncio.run(run_briefly())

    assert answers >= 2
    assert tracker.status("p").circuit == "half_open"  # the second probe ended the cooldown
