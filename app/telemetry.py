"""What one instrumented app keeps, owned by one object: :class:`Telemetry`.

::

    from app.telemetry import Telemetry

    telemetry = Telemetry(Settings(label_cap=200))
    app = create_app(telemetry=telemetry)          # the routes serve what it recorded
    with telemetry.track_model_inference("openrouter", "gpt-4o") as call:
        ...
    telemetry.tracker.choose(["openrouter", "anthropic"])

A ``Telemetry`` holds the metric families and the registries that expose them, the HTTP
stats, the top-N tables, the health tracker, the history of its own registry (snapshots)
and the scrape-time collectors, all built from one ``Settings``. Two instances share
nothing: caps, series, tracker, probes, snapshots, top-N. Its recording helpers are the
methods of :class:`app.recording.Recorder`.

:func:`default` is the process's instance, made on first use from the environment (as
prometheus_client's ``REGISTRY`` is); the helpers of ``app.metrics``,
``app.scoring.get_tracker()`` and ``create_app()`` without ``telemetry=`` use it.

Background work (snapshots, the multiprocess gauge publisher, provider probes), each in a
thread of its own, runs between :meth:`Telemetry.start` and :meth:`Telemetry.stop`, which
the app's lifespan calls; several apps may share one instance: it runs while any of them does.
"""

from __future__ import annotations

import hashlib
import os
import socket
import threading

from app import multiprocess
from app.collectors import GaugePublisher, register_collectors
from app.genai import GenAISemconv
from app.http_stats import HttpStats
from app.middleware import InFlight
from app.recording import Recorder
from app.registry import MetricSet
from app.scoring import HealthConfig, HealthTracker, ProbeRunner
from app.scoring.sharing import Channel, ChannelStatus, FileTrialGate, HostChannel, Sharing
from app.settings import Settings
from app.summary.snapshots import Snapshots
from app.topn import TOP_N_CAPACITY, TopLists

#: Rounds of sharing through Redis: an outcome waits up to one round to leave and one to be
#: read, so 0.1 s brings it to every replica within 0.2 s plus a round trip (replicas whose
#: trials and cooldowns run a second apart send each other's trials into an outage). A
#: round is one pipelined round trip each way: 20 a second per process is little for Redis.
REDIS_INTERVAL_S = 0.1


def health_config(settings: Settings) -> HealthConfig:
    """The health scoring configuration that ``settings`` give."""
    return HealthConfig(weights=settings.health_weights, apdex_threshold_s=settings.apdex_threshold_seconds)


class Telemetry(Recorder):
    """The metrics, HTTP stats, top-N tables, health tracker and snapshots of one app."""

    def __init__(self, settings: Settings | None = None, *, tracker: HealthTracker | None = None) -> None:
        settings = settings or Settings()
        self.settings = settings
        metrics = MetricSet(settings.label_cap, settings.series_cap)
        http_stats = HttpStats(settings.label_cap, settings.series_cap, overflow=metrics.overflow,
                               in_files=metrics.in_files)
        super().__init__(metrics, http_stats, tracker or HealthTracker(health_config(settings)),
                         TopLists(max(settings.top_n, TOP_N_CAPACITY)))
        if settings.genai_semconv:  # off: never built, and the helpers skip it with one test
            self.genai = GenAISemconv(metrics, settings.label_cap, settings.series_cap)
        self.in_flight = InFlight()
        published = register_collectors(metrics, http_stats, self.tracker, self.in_flight)
        #: With several workers: writes this worker's computed gauges into its files.
        self.publisher = GaugePublisher(published) if published else None
        self.snapshots = Snapshots(metrics.all_registry, interval=settings.snapshot_interval_seconds,
                                   budget_bytes=int(settings.summary_history_mb * 2**20))
        self.probes = ProbeRunner(self.tracker, settings.probe_urls, settings.probe_interval_seconds,
                                  unhealthy_interval_s=settings.probe_unhealthy_interval_seconds)
        #: Shares the tracker's outcomes with the host's other workers and other replicas.
        self.sharing = self._sharing(settings)
        self._users = 0
        self._lock = threading.Lock()

    def _sharing(self, settings: Settings) -> Sharing | None:
        """The host's workers share through the multiprocess directory (their outcomes, and
        their half-open trials); replicas through Redis when ``redis_url`` is set."""
        channels: list[Channel] = []
        gate = None
        if self.in_files and multiprocess.DIRECTORY is not None:
            channels.append(HostChannel(multiprocess.DIRECTORY, horizon_s=self.tracker.config.window_s,
                                        clock=self.tracker.clock))
            gate = FileTrialGate(multiprocess.DIRECTORY)
        if settings.redis_url is not None:
            from app.scoring.redis_channel import RedisChannel  # redis-py only when configured

            channels.append(RedisChannel(settings.redis_url.get_secret_value(), prefix=settings.redis_key_prefix,
                                         host_id=self._host_id(), interval_s=REDIS_INTERVAL_S))
        if not channels:
            return None
        return Sharing(self.tracker, channels, gate=gate, on_error=self._count_sharing_error)

    def _host_id(self) -> str:
        """Who this process shares through Redis as: the processes that share outcomes
        through one multiprocess directory are one host (they read each other's outcomes
        from their files, not from Redis); a process without one is a host of its own."""
        directory = multiprocess.DIRECTORY if self.in_files else None
        group = hashlib.blake2b(os.path.realpath(directory).encode(), digest_size=6).hexdigest() if directory \
            else f"pid{os.getpid()}"
        return f"{socket.gethostname()}:{group}"

    def _count_sharing_error(self, channel: str, error: BaseException) -> None:
        self.metrics["gatewayz_health_sharing_errors_total"].child(channel).inc()

    def sharing_status(self) -> list[ChannelStatus]:
        """Each sharing channel's state (none when this process decides alone)."""
        return self.sharing.status() if self.sharing is not None else []

    @property
    def in_files(self) -> bool:
        """Whether the metrics are written to the workers' multiprocess files."""
        return self.metrics.in_files

    def start(self) -> None:
        """Start the background work (threads of its own); each call is matched by one
        :meth:`stop`."""
        with self._lock:
            self._users += 1
            if self._users > 1:
                return
            self.snapshots.start()
            if self.publisher is not None:
                self.publisher.start()
            if self.sharing is not None:
                self.sharing.start()
            self.probes.start()

    def stop(self) -> None:
        """Stop the background work once the last user of this instance stops (blocks for
        the probes in flight to be cancelled and a last publication of the gauges)."""
        with self._lock:
            if self._users == 0:
                return
            self._users -= 1
            if self._users > 0:
                return
            try:
                self.probes.stop()
                if self.sharing is not None:
                    self.sharing.stop()
                if self.publisher is not None:
                    self.publisher.stop()
            finally:
                self.snapshots.stop()


_default: Telemetry | None = None
_default_lock = threading.Lock()


def default(settings: Settings | None = None) -> Telemetry:
    """The process's instance, made on first use from ``settings`` (else the environment)."""
    global _default
    telemetry = _default
    if telemetry is None:
        with _default_lock:
            if _default is None:
                _default = Telemetry(settings)
            telemetry = _default
    return telemetry


def set_default(telemetry: Telemetry | None) -> Telemetry | None:
    """Make ``telemetry`` the process's instance (None: make a new one on next use);
    returns the one it replaces. For tests and benchmarks that want a fresh process."""
    global _default
    with _default_lock:
        previous, _default = _default, telemetry
    return previous
