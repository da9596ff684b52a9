"""A real ``redis-server`` (Debian's) for the tests, on a free loopback port, without
persistence (``--save "" --appendonly no``: a restart comes back empty).

    with redis_server() as server:
        client = server.client()
        server.kill()      # Redis down
        server.start()     # back, empty, on the same port
        server.pause()     # Redis hung (SIGSTOP): connections open, no answers
        server.resume()

Every wait polls under a bound; the process is killed in ``finally`` (and gets SIGTERM
if the test process dies first).
"""

from __future__ import annotations

import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import redis

from tests.support.servers import LOOPBACK, ServerError, _binary, _die_with_parent, free_port

START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 5.0
POLL_INTERVAL_S = 0.02
BIND_ATTEMPTS = 3


class RedisServer:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "redis.log"

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.port}/0"

    def client(self) -> redis.Redis:
        """A plain client for the test's own reads and writes."""
        return redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=2.0, socket_connect_timeout=2.0)

    def argv(self) -> list[str]:
        return [_binary("redis-server"), "--port", str(self.port), "--bind", LOOPBACK, "--save", "",
                "--appendonly", "no", "--dir", str(self.workdir), "--daemonize", "no", "--logfile", ""]

    def start(self) -> None:
        """Start it (on the port it had, if it ran before) and wait until PING answers."""
        if self.port:
            if not self._launch():
                raise ServerError(f"redis-server: port {self.port} was taken meanwhile\n{self.log_tail()}")
            return
        for _ in range(BIND_ATTEMPTS):
            self.port = free_port()
            if self._launch():
                return
        raise ServerError(f"redis-server: no free port after {BIND_ATTEMPTS} attempts\n{self.log_tail()}")

    def _launch(self) -> bool:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(_die_with_parent(self.argv()), stdin=subprocess.DEVNULL, stdout=log,
                                            stderr=subprocess.STDOUT)
        deadline = time.monotonic() + START_TIMEOUT_S
        client = redis.Redis(host=LOOPBACK, port=self.port, socket_timeout=0.5, socket_connect_timeout=0.5)
        try:
            while True:
                if self.process.poll() is not None:
                    self.process = None
                    if "Address already in use" in self.log_tail():
                        return False
                    raise ServerError(f"redis-server exited at start\n{self.log_tail()}")
                try:
                    if client.ping():
                        return True
                except redis.RedisError:
                    pass
                if time.monotonic() >= deadline:
                    self.kill()
                    raise ServerError(f"redis-server did not answer PING in {START_TIMEOUT_S:g} s\n{self.log_tail()}")
                time.sleep(POLL_INTERVAL_S)
        finally:
            client.close()

    def kill(self) -> None:
        """Kill it at once (SIGKILL, resumed first if paused); safe to call twice."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGCONT)
            process.kill()
            process.wait(STOP_TIMEOUT_S)

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""


@contextmanager
def redis_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="redis-") as workdir:
        server = RedisServer(Path(workdir))
        try:
            server.start()
            yield server
        finally:
            server.kill()
