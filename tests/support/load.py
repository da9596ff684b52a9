"""A known load through an instrumented gateway served by two (or N) uvicorn workers.

``gateway_app`` is ``create_app()`` with one gateway route that records what a gateway
records per call, through the public helpers: the HTTP request (middleware), one upstream
inference and its tokens. ``Gateway`` serves it as production does with
``gateway-metrics --workers N``: the owner prepares ``PROMETHEUS_MULTIPROC_DIR``, starts
the exporter (``app.exporter``) and the uvicorn workers. ``run_load`` drives it from a
process of its own (an asyncio httpx pool, bounded in count and time) and returns what it
sent and how fast::

    python -m tests.support.load --url http://127.0.0.1:8000 --requests 2000 --concurrency 16
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from tests.support.servers import LOOPBACK, free_port, poll

ROOT = Path(__file__).resolve().parents[2]
ROUTE = "/v1/chat/completions"
PROVIDER = "alpha"
#: Tokens one call of the route records.
INPUT_TOKENS, OUTPUT_TOKENS = 12, 5
#: uvicorn kills a worker that misses its health ping for this long; its 5 s default kills
#: workers still importing on a loaded machine (as app.cli says).
WORKER_HEALTHCHECK_S = 30


def gateway_app():  # noqa: ANN201 - the uvicorn factory
    """The app; a request may name its ``provider`` (default ``alpha``) and an upstream
    ``status_code`` (default none: a success) to record a failed upstream call, which the
    route answers with 502. With ``WORKER_PID_HEADER`` set in the environment, every
    answer says which worker gave it (``x-worker-pid``)."""
    from fastapi import Body
    from fastapi.responses import JSONResponse

    from app import metrics
    from app.main import create_app

    app = create_app()

    @app.post(ROUTE, response_model=None)
    async def chat_completions(model: str = Body("m1", embed=True), provider: str = Body(PROVIDER, embed=True),
                               status_code: int | None = Body(None, embed=True)) -> dict[str, Any] | JSONResponse:
        started = time.perf_counter()
        metrics.record_upstream_call(provider, model, duration_s=time.perf_counter() - started,
                                     status_code=status_code)
        if status_code is not None and status_code >= 400:
            return JSONResponse({"error": f"upstream answered {status_code}", "provider": provider}, status_code=502)
        metrics.record_tokens_used(provider, model, INPUT_TOKENS, OUTPUT_TOKENS)
        return {"model": model, "usage": {"prompt_tokens": INPUT_TOKENS, "completion_tokens": OUTPUT_TOKENS}}

    if os.environ.get(WORKER_PID_HEADER):
        app.add_middleware(_WorkerPid)
    return app


#: Set (to anything) in a gateway's environment: its answers carry ``x-worker-pid``.
WORKER_PID_HEADER = "LOAD_WORKER_PID_HEADER"


class _WorkerPid:
    """Pure ASGI: adds the serving process's pid to every HTTP answer."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.pid = str(os.getpid()).encode()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_pid(message: Any) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), (b"x-worker-pid", self.pid)]}
            await send(message)

        return await self.app(scope, receive, send_with_pid)


def serve(workers: int, port: int, metrics_port: int, declare_tcp: bool = True) -> None:
    """What ``gateway-metrics --workers N`` does, for ``gateway_app`` (``declare_tcp=False``:
    uvicorn's own socket, without TCP_NODELAY on its connections, for comparison)."""
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from app import exporter, multiprocess
    from app.cli import declared_tcp

    multiprocess.prepare_directory(os.environ[multiprocess.ENV_VAR])
    scraper = exporter.start(LOOPBACK, metrics_port)
    try:
        config = uvicorn.Config("tests.support.load:gateway_app", factory=True, host=LOOPBACK, port=port,
                                workers=workers, log_level="warning", access_log=False,
                                timeout_worker_healthcheck=WORKER_HEALTHCHECK_S)
        sock = config.bind_socket()
        Multiprocess(config, sockets=[declared_tcp(sock) if declare_tcp else sock]).run()
    finally:
        scraper.terminate()
        scraper.wait()


class Gateway:
    """``gateway_app`` under uvicorn with ``workers`` processes and the exporter."""

    def __init__(self, tmp_dir: Path, workers: int = 2, env: dict[str, str] | None = None,
                 metrics_port: int | None = None, declare_tcp: bool = True) -> None:
        self.directory = tmp_dir / "multiproc"
        self.port, self.metrics_port = free_port(), metrics_port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        self.exporter_url = f"http://{LOOPBACK}:{self.metrics_port}"
        self.log_path = tmp_dir / "gateway.log"
        full_env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(self.directory),
                    "GATEWAY_METRICS_ACCESS_LOG": "false", "PYTHONPATH": str(ROOT), **(env or {})}
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "tests.support.load", "serve", "--workers", str(workers),
                 "--port", str(self.port), "--metrics-port", str(self.metrics_port),
                 *([] if declare_tcp else ["--uvicorn-socket"])],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT,
            )

    def wait_ready(self, timeout: float = 120.0) -> None:
        with httpx.Client(timeout=10.0, trust_env=False) as http:
            for url in (self.url + "/health", self.exporter_url + "/metrics"):
                poll(lambda url=url: self.process.poll() is not None or http.get(url).status_code == 200,
                     timeout, url)
        if self.process.poll() is not None:
            raise RuntimeError(f"the gateway exited:\n{self.log_path.read_text(errors='replace')[-4000:]}")

    def worker_pids(self) -> set[int]:
        """Processes that have recorded requests in the directory."""
        return {int(path.stem.split("_")[-1]) for path in self.directory.glob("counter_*.db")}

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- the load, from a process of its own -----------------------------------------------


@dataclass
class LoadResult:
    sent: int  # requests answered 200
    failed: dict[str, int]  # status code or exception name -> count
    seconds: float
    p50_ms: float
    p99_ms: float

    @property
    def per_second(self) -> float:
        return self.sent / self.seconds if self.seconds else 0.0


async def _load(url: str, requests: int, concurrency: int, time_limit: float) -> dict[str, Any]:
    latencies: list[float] = []
    failed: dict[str, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(requests):
        queue.put_nowait(n)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            queue.get_nowait()
            started = time.perf_counter()
            try:
                response = await client.post(url + ROUTE, json={"model": "m1"})
                outcome = str(response.status_code)
            except httpx.HTTPError as exc:
                outcome = type(exc).__name__
            if outcome == "200":
                latencies.append(time.perf_counter() - started)
            else:
                failed[outcome] = failed.get(outcome, 0) + 1

    started = time.perf_counter()
    async with httpx.AsyncClient(limits=limits, timeout=30.0, trust_env=False) as client:
        tasks = [asyncio.ensure_future(client_loop(client)) for _ in range(concurrency)]
        done, pending = await asyncio.wait(tasks, timeout=time_limit)
        for task in pending:  # over time: stop, and say how many were never sent
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
    seconds = time.perf_counter() - started
    if queue.qsize() or pending:
        failed["not sent (time limit)"] = queue.qsize()
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {"sent": len(latencies), "failed": failed, "seconds": seconds,
            "p50_ms": quantiles[49] * 1e3, "p99_ms": quantiles[98] * 1e3}


def run_load(url: str, requests: int, concurrency: int = 16, time_limit: float = 60.0) -> LoadResult:
    """Send ``requests`` POSTs to the route from a process of its own; at most ``time_limit`` s."""
    completed = subprocess.run(
        [sys.executable, "-m", "tests.support.load", "load", "--url", url, "--requests", str(requests),
         "--concurrency", str(concurrency), "--time-limit", str(time_limit)],
        capture_output=True, check=True, cwd=ROOT, timeout=time_limit + 30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return LoadResult(**json.loads(completed.stdout))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    load = commands.add_parser("load", help="send the load and print the result as JSON")
    load.add_argument("--url", required=True)
    load.add_argument("--requests", type=int, required=True)
    load.add_argument("--concurrency", type=int, default=16)
    load.add_argument("--time-limit", type=float, default=60.0)
    server = commands.add_parser("serve", help="serve gateway_app with workers and the exporter")
    server.add_argument("--workers", type=int, default=2)
    server.add_argument("--port", type=int, required=True)
    server.add_argument("--metrics-port", type=int, required=True)
    server.add_argument("--uvicorn-socket", action="store_true", help="the socket as uvicorn binds it")
    args = parser.parse_args()
    if args.command == "load":
        print(json.dumps(asyncio.run(_load(args.url, args.requests, args.concurrency, args.time_limit))))
    else:
        serve(args.workers, args.port, args.metrics_port, declare_tcp=not args.uvicorn_socket)


if __name__ == "__main__":
    main()
