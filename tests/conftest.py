"""Fixtures shared by the whole suite."""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app import telemetry as telemetry_module
from app.access_log import flush_access_logs
from app.main import create_app
from app.settings import Settings
from app.telemetry import Telemetry


@pytest.fixture(autouse=True)
def fresh_default_telemetry() -> Iterator[None]:
    """Every test starts with a process whose default telemetry is yet to be made: what
    one test records, no other test reads."""
    previous = telemetry_module.set_default(None)
    try:
        yield
    finally:
        telemetry_module.set_default(previous)


@pytest.fixture
def settings() -> Settings:
    return Settings(access_log=False)


@pytest.fixture
def telemetry(settings: Settings) -> Telemetry:
    """The test's own telemetry, made from ``settings``: the default one, so the helpers
    of ``app.metrics`` record into it too."""
    made = Telemetry(settings)
    telemetry_module.set_default(made)
    return made


@pytest.fixture
def client(settings: Settings, telemetry: Telemetry) -> Iterator[TestClient]:
    with TestClient(create_app(settings, telemetry)) as test_client:
        yield test_client


def sample(name: str, labels: dict[str, str] | None = None) -> float:
    """Current value of one sample of the default telemetry's registry (0 when absent)."""
    return telemetry_module.default().metrics.all_registry.get_sample_value(name, labels or {}) or 0.0


class LineCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.extend(record.getMessage().split("\n"))


@pytest.fixture
def access_lines() -> Iterator[list[str]]:
    """The access log lines written while the test runs (call flush_access_logs first)."""
    flush_access_logs()  # lines other tests' apps still hold are theirs, not this test's
    logger = logging.getLogger("gateway_metrics.access")
    handler = LineCollector()
    logger.addHandler(handler)
    try:
        yield handler.lines
    finally:
        logger.removeHandler(handler)


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool is missing: scripts/test.sh installs the Debian prometheus package")
    return path


def promtool_check_metrics(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [promtool(), "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )


# --- processes a test leaves behind -------------------------------------------------------
#
# Every process a test starts must be gone when the session ends: a server, worker or
# exporter left running keeps its port and its CPU long after the run. pytest becomes a
# child subreaper, so the orphans of a supervisor killed by a test (its workers, its
# exporter, multiprocessing's resource tracker) are re-parented to pytest rather than to
# init, and stay its descendants. At the end every live descendant is waited for
# (LEFTOVER_GRACE_S: one may be shutting down), then killed and named, and the run fails.

LEFTOVER_GRACE_S = 10.0
PR_SET_CHILD_SUBREAPER = 36
_leftovers: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_CHILD_SUBREAPER)")


def _live_descendants(root: int) -> dict[int, str]:
    """Live (not zombie) descendants of ``root`` and their command lines, from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
            continue
        if fields[0] != "Z":
            parents[int(entry.name)] = int(fields[1])
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found:
                try:
                    found[pid] = (Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                                  .decode(errors="replace").strip()[:300])
                except (FileNotFoundError, ProcessLookupError):
                    found[pid] = "?"
                frontier.append(pid)
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    deadline = time.monotonic() + LEFTOVER_GRACE_S
    while (left := _live_descendants(os.getpid())) and time.monotonic() < deadline:
        time.sleep(0.1)
    if not left:
        return
    for pid in left:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _leftovers.extend(f"{pid}: {cmdline}" for pid, cmdline in sorted(left.items()))
    if session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_sessionstart(session: pytest.Session) -> None:
    """Say pytest-randomly's seed even under -q (its header line is hidden then), so an
    order bug reproduces from one line: pytest -p randomly --randomly-seed=N."""
    seed = getattr(session.config.option, "randomly_seed", None)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if seed is not None and reporter is not None:
        reporter.write_line(f"test order: --randomly-seed={seed}")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    seed = getattr(terminalreporter.config.option, "randomly_seed", None)
    if seed is not None:
        terminalreporter.write_line(f"test order: --randomly-seed={seed}")
    if _leftovers:
        terminalreporter.section("processes left behind by the tests (killed)", red=True)
        for line in _leftovers:
            terminalreporter.line(line, red=True)
