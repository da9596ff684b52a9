"""Active probes: per provider a URL polled on an interval; each outcome feeds the
tracker's availability, and a success ends a quota lockout.

A probe succeeds on any answer below 500 other than 429: the provider is reachable and
serving (a 401 on an unauthenticated health URL still proves that).
"""

from __future__ import annotations

import asyncio
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
    ) -> None:
        self.tracker = tracker
        self.urls = dict(urls)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._client = client
        self._task: asyncio.Task[None] | None = None

    async def probe(self, provider: str, client: httpx.AsyncClient) -> bool:
        try:
            response = await client.get(self.urls[provider], timeout=self.timeout_s)
            ok = response.status_code < 500 and response.status_code != 429
        except httpx.HTTPError:
            ok = False
        self.tracker.record_probe(provider, ok)
        return ok

    async def probe_all(self, client: httpx.AsyncClient) -> dict[str, bool]:
        names = list(self.urls)
        results = await asyncio.gather(*(self.probe(name, client) for name in names))
        return dict(zip(names, results))

    async def run(self) -> None:
        client = self._client or httpx.AsyncClient()
        try:
            while True:
                await self.probe_all(client)
                await asyncio.sleep(self.interval_s)
        finally:
            if self._client is None:
                await client.aclose()

    def start(self) -> None:
        if self._task is None and self.urls:
            self._task = asyncio.get_running_loop().create_task(self.run(), name="provider-probes")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
