"""Active probes: per provider a URL polled on an interval; each outcome feeds the
tracker's availability, and a success ends a quota lockout.

A probe succeeds on any answer below 500 other than 429: the provider is reachable and
serving (a 401 on an unauthenticated health URL still proves that).

A provider whose circuit is not closed, or whose score ranks it out, is probed every
``unhealthy_interval_s`` (1 s) instead of every ``interval_s`` (15 s), like Envoy's
``unhealthy_interval``: a probe costs no user call, and a success moves the circuit to
half-open at once, so a recovered provider is taken back within about a second plus one
trial call. Probes are paced from when they are sent: one that waits for its timeout
does not hold back the next.

Between :meth:`ProbeRunner.start` and :meth:`ProbeRunner.stop` the probes run on an event
loop of their own, in a daemon thread: they belong to no app's loop, so they outlive none
and die with none (several apps may share the tracker they feed).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping

import httpx

from app.scoring.tracker import HealthTracker


class ProbeRunner:
    def __init__(
        self,
        tracker: HealthTracker,
        urls: Mapping[str, str],
        interval_s: float = 15.0,
        timeout_s: float = 5.0,
        client: httpx.AsyncClient | None = None,
        unhealthy_interval_s: float = 1.0,
    ) -> None:
        self.tracker = tracker
        self.urls = dict(urls)
        self.interval_s = interval_s
        self.unhealthy_interval_s = min(unhealthy_interval_s, interval_s)
        self.timeout_s = timeout_s
        self._client = client
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None

    async def probe(self, provider: str, client: httpx.AsyncClient) -> bool:
        sent_at = self.tracker.clock()
        try:
            response = await client.get(self.urls[provider], timeout=self.timeout_s)
            ok = response.status_code < 500 and response.status_code != 429
        except httpx.HTTPError:
            ok = False
        self.tracker.record_probe(provider, ok, sent_at)
        return ok

    def next_wait_s(self, provider: str) -> float:
        """Seconds until the provider's next probe: sooner while its circuit is not closed
        or its score ranks it out (Envoy's unhealthy_interval)."""
        return self.unhealthy_interval_s if self.tracker.needs_watching(provider) else self.interval_s

    async def _probe_loop(self, provider: str, client: httpx.AsyncClient) -> None:
        # Each probe runs as a task of its own and the next is due an interval after this
        # one was sent, answered or not: a probe that hangs until its timeout (5 s) while a
        # provider is out must not keep the recovery from being seen for that long.
        running: set[asyncio.Task[bool]] = set()
        waited = self.interval_s  # probe at once on start
        try:
            while True:
                wait_s = self.next_wait_s(provider)
                if waited >= wait_s:
                    waited = 0.0
                    # Workers of one host take turns: one probe per interval from the host.
                    if self.tracker.claim_probe(provider, wait_s):
                        task = asyncio.get_running_loop().create_task(self.probe(provider, client))
                        running.add(task)
                        task.add_done_callback(running.discard)
                # Wake at the short interval, so a circuit that opens meanwhile is probed soon.
                await asyncio.sleep(self.unhealthy_interval_s)
                waited += self.unhealthy_interval_s
        finally:
            for task in running:
                task.cancel()
            await asyncio.gather(*running, return_exceptions=True)

    async def run(self) -> None:
        client = self._client or httpx.AsyncClient()
        try:  # one loop per provider: a probe that times out delays no other provider's
            await asyncio.gather(*(self._probe_loop(name, client) for name in self.urls))
        finally:
            if self._client is None:
                await client.aclose()

    def start(self) -> None:
        """Probe in the background until :meth:`stop` (nothing to do without URLs)."""
        if self._thread is not None or not self.urls:
            return
        started = threading.Event()
        failed: list[BaseException] = []
        self._thread = threading.Thread(target=self._serve, args=(started, failed), name="provider-probes",
                                        daemon=True)
        self._thread.start()
        started.wait()
        if failed:  # raised here, in the caller's thread: a startup that fails says why, never hangs
            self._thread.join()
            self._thread = self._loop = None
            raise RuntimeError("the provider probes could not start") from failed[0]

    def _serve(self, started: threading.Event, failed: list[BaseException]) -> None:
        try:
            loop = self._loop = asyncio.new_event_loop()
            try:
                self._task = loop.create_task(self.run())
            except BaseException:
                loop.close()
                raise
        except BaseException as exc:  # noqa: BLE001 - handed to start(), which raises it
            failed.append(exc)
            return
        finally:
            started.set()
        try:
            loop.run_until_complete(asyncio.gather(self._task, return_exceptions=True))
        finally:
            loop.close()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop probing; waits up to ``timeout_s`` for probes in flight to be cancelled."""
        thread, loop, task = self._thread, self._loop, self._task
        if thread is None or loop is None or task is None:
            return
        try:
            loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:  # the loop has already ended
            pass
        thread.join(timeout_s)
        self._thread = self._loop = self._task = None
