"""Active probes against mocked provider health URLs (respx): their outcomes feed the tracker."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import respx

from app.scoring import HealthTracker, ProbeRunner, State
from app.scoring.sharing import FileTrialGate
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


def _in_a_thread(target: Callable[[], object], timeout_s: float = 5.0) -> bool:
    """Run ``target`` in a daemon thread; whether it returned within ``timeout_s`` (a bound
    for a call that must not hang, not a measure of its speed)."""
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    return not thread.is_alive()


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
    # At least 3 in 0.3 s at the 0.02 s interval (a loaded machine may wake late, so not 15);
    # at most one at start and one per 0.02 s tick after it: asyncio.sleep never returns early.
    assert 3 <= sick.call_count <= 1 + round(0.3 / 0.02)


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


# --- the runner's settings, pacing and thread -------------------------------------------------


def test_the_runner_defaults_are_15_s_between_probes_1_s_while_unhealthy_and_a_5_s_timeout(
    tracker: HealthTracker,
) -> None:
    runner = ProbeRunner(tracker, {"p": UP})

    assert (runner.interval_s, runner.unhealthy_interval_s, runner.timeout_s) == (15.0, 1.0, 5.0)
    assert runner.urls == {"p": UP}


def test_the_short_interval_is_never_longer_than_the_normal_one(tracker: HealthTracker) -> None:
    for _ in range(5):
        tracker.record("sick", duration_s=0.1, status_code=503)
    runner = ProbeRunner(tracker, {"sick": DOWN, "new": UP}, interval_s=0.5, unhealthy_interval_s=2.0)

    assert runner.unhealthy_interval_s == 0.5
    assert (runner.next_wait_s("sick"), runner.next_wait_s("new")) == (0.5, 0.5)


def test_a_degraded_provider_with_a_closed_circuit_is_probed_at_the_short_interval(
    tracker: HealthTracker,
) -> None:
    for _ in range(4):  # four timeouts: closed, but scored out
        tracker.record("p", duration_s=0.1, error="timeout")
    runner = ProbeRunner(tracker, {"p": UP}, interval_s=15.0, unhealthy_interval_s=1.0)

    assert tracker.status("p").circuit == "closed"
    assert runner.next_wait_s("p") == 1.0


def test_a_probe_is_sent_with_the_runners_timeout(tracker: HealthTracker) -> None:
    timeouts: list[object] = []

    def answer(request: httpx.Request) -> httpx.Response:
        timeouts.append(request.extensions.get("timeout"))
        return httpx.Response(200)

    runner = ProbeRunner(tracker, {"p": UP}, timeout_s=2.5)

    async def run() -> bool:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            return await runner.probe("p", client)

    assert asyncio.run(run()) is True
    assert timeouts == [{"connect": 2.5, "read": 2.5, "write": 2.5, "pool": 2.5}]


def test_a_probe_counts_from_when_it_was_sent_not_when_it_answered(
    tracker: HealthTracker, clock: FakeClock
) -> None:
    """A trial sent while the probe was in flight is not overtaken by it: it still holds the door."""
    for _ in range(5):
        tracker.record("p", duration_s=0.1, status_code=503)
    clock.advance(5.0)  # the cooldown is over: half-open at the next call
    trials = []

    def answer(request: httpx.Request) -> httpx.Response:
        clock.advance(1.0)
        trials.append(tracker.allow("p"))  # a trial goes out after the probe was sent
        clock.advance(1.0)
        return httpx.Response(200)

    runner = ProbeRunner(tracker, {"p": UP})

    async def run() -> bool:
        async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as client:
            return await runner.probe("p", client)

    assert asyncio.run(run()) is True
    assert trials[0].trial and not trials[0].void
    assert not tracker.allow("p")  # the one trial out holds it


def _run_until(runner: ProbeRunner, done: asyncio.Event | None = None, timeout_s: float = 5.0) -> None:
    """Run the runner's loops until ``done`` is set (bounded), then cancel them; fails if the
    loop reported an error on the way (a callback that raised, a task that failed unseen)."""
    errors: list[dict[str, object]] = []

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: errors.append(context))
        task = asyncio.get_running_loop().create_task(runner.run())
        if done is not None:
            await asyncio.wait_for(done.wait(), timeout_s)
        task.cancel()
        await asyncio.wait_for(asyncio.gather(task, return_exceptions=True), timeout_s)

    asyncio.run(main())
    assert errors == []


def test_a_healthy_provider_is_probed_at_once_then_an_interval_later(tracker: HealthTracker) -> None:
    tracker.record("p", duration_s=0.5)  # healthy: the normal interval
    sent: list[float] = []
    done = asyncio.Event()

    async def answer(request: httpx.Request) -> httpx.Response:
        sent.append(asyncio.get_running_loop().time())
        if len(sent) == 2:
            done.set()
        return httpx.Response(200)

    client = httpx.AsyncClient(transport=httpx.MockTransport(answer))
    runner = ProbeRunner(tracker, {"p": UP}, interval_s=0.2, unhealthy_interval_s=0.02, client=client)

    _run_until(runner, done)

    assert len(sent) == 2
    # asyncio.sleep never returns early: the second probe comes no sooner than 0.2 s after the first.
    assert sent[1] - sent[0] >= 0.2 - 1e-3
    assert not client.is_closed  # the caller's client stays the caller's


def test_stopping_the_loops_cancels_a_probe_still_waiting(tracker: HealthTracker) -> None:
    started, cancelled = asyncio.Event(), []

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        try:
            await asyncio.sleep(60.0)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return httpx.Response(200)

    runner = ProbeRunner(tracker, {"p": UP}, timeout_s=60.0,
                         client=httpx.AsyncClient(transport=httpx.MockTransport(hang)))

    _run_until(runner, started, timeout_s=2.0)

    assert cancelled == [True]
    assert tracker.status("p").probes == 0  # a cancelled probe records nothing


def test_a_client_the_runner_made_is_closed_when_it_stops(
    tracker: HealthTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[httpx.AsyncClient] = []
    done = asyncio.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        done.set()
        return httpx.Response(200)

    real = httpx.AsyncClient

    def make_client(*args: object, **kwargs: object) -> httpx.AsyncClient:
        client = real(transport=httpx.MockTransport(answer))
        made.append(client)
        return client

    monkeypatch.setattr(httpx, "AsyncClient", make_client)
    runner = ProbeRunner(tracker, {"p": UP})

    _run_until(runner, done)

    assert len(made) == 1
    assert made[0].is_closed


def _probe_threads() -> set[threading.Thread]:
    """The live probe threads. Compared with a set taken before: another test's runner may
    still be winding down (or have just finished) while this one runs."""
    return {thread for thread in threading.enumerate() if thread.name == "provider-probes"}


def test_start_probes_in_a_daemon_thread_until_stop(tracker: HealthTracker) -> None:
    probed = threading.Event()
    answers = []

    def answer(request: httpx.Request) -> httpx.Response:
        answers.append(request.url)
        probed.set()
        return httpx.Response(200)

    before = _probe_threads()
    runner = ProbeRunner(tracker, {"p": UP}, client=httpx.AsyncClient(transport=httpx.MockTransport(answer)))

    assert _in_a_thread(runner.start)
    try:
        threads = _probe_threads() - before
        assert len(threads) == 1
        assert all(thread.daemon for thread in threads)
        assert _in_a_thread(runner.start)  # started already: no second thread
        assert _probe_threads() - before == threads
        assert probed.wait(5.0)  # probed at once on start
    finally:
        runner.stop()

    assert not _probe_threads() - before
    assert tracker.status("p").probes == 1  # 15 s apart: one probe in this time
    count = len(answers)
    runner.stop()  # stopped already: nothing to do
    assert len(answers) == count


def test_the_probes_thread_is_a_daemon_whoever_starts_it(tracker: HealthTracker) -> None:
    """Started from the main thread (no daemon), the probes' thread still is one: it must
    never hold the interpreter open at exit."""
    assert not threading.current_thread().daemon
    before = _probe_threads()
    runner = ProbeRunner(tracker, {"p": UP},
                         client=httpx.AsyncClient(transport=httpx.MockTransport(lambda _: httpx.Response(200))))
    runner.start()
    try:
        (thread,) = _probe_threads() - before
        assert thread.daemon
    finally:
        runner.stop()


def test_stop_right_after_start_stops_the_thread(tracker: HealthTracker) -> None:
    before = _probe_threads()
    runner = ProbeRunner(tracker, {"p": UP},
                         client=httpx.AsyncClient(transport=httpx.MockTransport(lambda request: httpx.Response(200))))

    assert _in_a_thread(runner.start)
    runner.stop()

    assert not _probe_threads() - before


def test_a_stopped_runner_starts_again(tracker: HealthTracker) -> None:
    probed = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        probed.set()
        return httpx.Response(200)

    before = _probe_threads()
    runner = ProbeRunner(tracker, {"p": UP}, client=httpx.AsyncClient(transport=httpx.MockTransport(answer)))
    assert _in_a_thread(runner.start)
    assert probed.wait(5.0)
    runner.stop()
    probed.clear()

    assert _in_a_thread(runner.start)
    try:
        assert probed.wait(5.0)
        assert len(_probe_threads() - before) == 1
    finally:
        runner.stop()
    assert not _probe_threads() - before


def test_start_without_urls_starts_nothing(tracker: HealthTracker) -> None:
    before = _probe_threads()
    runner = ProbeRunner(tracker, {})

    assert _in_a_thread(runner.start)

    assert not _probe_threads() - before
    runner.stop()


def test_stop_before_start_does_nothing(tracker: HealthTracker) -> None:
    ProbeRunner(tracker, {"p": UP}).stop()


def test_start_returns_once_the_probes_run_and_the_thread_ends_cleanly(
    tracker: HealthTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures: list[threading.ExceptHookArgs] = []
    monkeypatch.setattr(threading, "excepthook", failures.append)
    probed = threading.Event()

    def answer(request: httpx.Request) -> httpx.Response:
        probed.set()
        return httpx.Response(200)

    runner = ProbeRunner(tracker, {"p": UP}, client=httpx.AsyncClient(transport=httpx.MockTransport(answer)))

    assert _in_a_thread(runner.start)
    try:
        assert probed.wait(5.0)
    finally:
        runner.stop()

    assert failures == []  # cancelled on stop, not crashed


@pytest.mark.parametrize("breaks", ["new_event_loop", "create_task"])
def test_a_probes_thread_that_cannot_start_fails_start_with_its_reason(
    tracker: HealthTracker, monkeypatch: pytest.MonkeyPatch, breaks: str
) -> None:
    # Out of file descriptors, an event loop cannot be made: the service's startup must say
    # so, not wait forever for a thread that has died.
    def fail(*args: object, **kwargs: object) -> object:
        for arg in args:
            getattr(arg, "close", lambda: None)()  # the coroutine create_task was handed
        raise OSError(24, "Too many open files")

    if breaks == "new_event_loop":
        monkeypatch.setattr("app.scoring.probes.asyncio.new_event_loop", fail)
    else:
        monkeypatch.setattr(asyncio.BaseEventLoop, "create_task", fail)
    runner = ProbeRunner(tracker, {"p": UP})
    raised: list[BaseException] = []
    before = _probe_threads()

    def start() -> None:
        try:
            runner.start()
        except RuntimeError as exc:
            raised.append(exc)

    assert _in_a_thread(start)
    assert [str(exc) for exc in raised] == ["the provider probes could not start"]
    assert isinstance(raised[0].__cause__, OSError)
    assert not _probe_threads() - before  # its thread has ended
    monkeypatch.undo()
    runner.start()  # once the cause is gone, it starts
    try:
        assert runner._task is not None
    finally:
        runner.stop()


def test_stop_waits_no_longer_than_its_timeout_for_a_probe_that_blocks(tracker: HealthTracker) -> None:
    entered, release = threading.Event(), threading.Event()

    def block(request: httpx.Request) -> httpx.Response:
        entered.set()
        release.wait(10.0)  # blocks the probes' loop: cancelling cannot reach it
        return httpx.Response(200)

    runner = ProbeRunner(tracker, {"p": UP}, client=httpx.AsyncClient(transport=httpx.MockTransport(block)))
    assert _in_a_thread(runner.start)
    try:
        assert entered.wait(5.0)
        assert _in_a_thread(lambda: runner.stop(timeout_s=0.05))
    finally:
        release.set()


def test_stop_cancels_a_probe_in_flight_and_lets_it_end(tracker: HealthTracker) -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        started.set()
        try:
            await asyncio.sleep(60.0)
        except asyncio.CancelledError:
            await asyncio.sleep(0)  # a clean-up that takes a turn of the loop
            cancelled.set()
            raise
        return httpx.Response(200)

    runner = ProbeRunner(tracker, {"p": UP}, timeout_s=60.0,
                         client=httpx.AsyncClient(transport=httpx.MockTransport(hang)))
    assert _in_a_thread(runner.start)
    assert started.wait(5.0)

    runner.stop()

    assert cancelled.is_set()  # it ran its cancellation before the loop closed
    assert tracker.status("p").probes == 0


def test_the_first_probe_goes_before_the_loop_first_sleeps(
    tracker: HealthTracker, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[str] = []
    done = asyncio.Event()
    real_sleep = asyncio.sleep

    async def sleep(seconds: float) -> None:
        events.append("sleep")
        await real_sleep(0)

    def answer(request: httpx.Request) -> httpx.Response:
        events.append("probe")
        done.set()
        return httpx.Response(200)

    runner = ProbeRunner(tracker, {"p": UP}, client=httpx.AsyncClient(transport=httpx.MockTransport(answer)))
    monkeypatch.setattr("app.scoring.probes.asyncio.sleep", sleep)

    _run_until(runner, done)

    # Sent as the loop starts: it runs while the loop waits for the first time, not a wait later.
    assert events[:2] == ["sleep", "probe"]


def test_each_probe_is_claimed_by_its_own_provider(tracker: HealthTracker, upstream: respx.MockRouter) -> None:
    # The workers of a host take turns per provider: a claim under another name would let
    # one provider's probe stand in for another's.
    claims: list[str] = []
    done = asyncio.Event()
    claim_probe = tracker.claim_probe

    def claim(provider: str, for_s: float) -> bool:
        claims.append(provider)
        if {"p", "q"} <= set(claims):
            done.set()
        return claim_probe(provider, for_s)

    tracker.claim_probe = claim  # type: ignore[method-assign]
    upstream.get(UP).mock(return_value=httpx.Response(200))
    upstream.get(DOWN).mock(return_value=httpx.Response(200))
    runner = ProbeRunner(tracker, {"p": UP, "q": DOWN})

    _run_until(runner, done)

    assert set(claims) == {"p", "q"}


def test_two_workers_on_one_gate_probe_as_one(tmp_path: Path) -> None:
    # Each worker runs its prober; their claims on the host's gate last an interval each,
    # so the host sends at most one probe per interval, whichever worker sends it.
    interval_s, run_s = 0.05, 0.5
    workers = []
    for pid in (101, 102):
        tracker = HealthTracker()
        tracker.trial_gate = FileTrialGate(str(tmp_path), pid=pid)
        workers.append(ProbeRunner(tracker, {"p": UP}, interval_s=interval_s, unhealthy_interval_s=interval_s))

    async def run_briefly() -> None:
        tasks = [asyncio.get_running_loop().create_task(runner.run()) for runner in workers]
        await asyncio.sleep(run_s)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    with respx.mock() as router:
        up = router.get(UP).mock(return_value=httpx.Response(200))
        asyncio.run(run_briefly())

    # Alone, each would send one at start and one per tick: about 20 between them.
    assert 2 <= up.call_count <= 1 + round(run_s / interval_s)
    for runner in workers:
        gate = runner.tracker.trial_gate
        assert isinstance(gate, FileTrialGate)
        gate.close()
