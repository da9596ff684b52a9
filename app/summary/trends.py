"""The status page's trends: requests per second, latency p95 and each provider's health
score over the last minutes, so the page opens with its charts already drawn.

    trends = trend_history(service, span_s=900, step_s=5)
    trends.times                 # Unix seconds, oldest first
    trends.requests_per_second   # one figure per time, None where undefined
    trends.health_scores         # {"openrouter": [0.97, 0.97, ...]}

With a backend, the three series travel as one packed range query (``/api/v1/query_range``)
within the backend's deadline; without one, or when it fails, they come from this process's
snapshots of its own registry (app.summary.snapshots), and ``errors`` says why. Each point
means what the page's polls mean: the rate and p95 are those of a summary taken at that
instant over ``window_seconds`` (the same :class:`app.summary.promql.Query` objects, so
both sources agree by construction); the score is the ``gatewayz_provider_health_score``
gauge the tracker's collector exports.
"""

from __future__ import annotations

import bisect
import math
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from app.summary.backend import BackendError, PrometheusBackend
from app.summary.figures import ms, number
from app.summary.models import SummaryError
from app.summary.promql import PACK_LABEL, Matcher, buckets, current, rate
from app.summary.quantiles import quantiles_by
from app.summary.snapshots import Snapshot, Snapshots, evaluate

if TYPE_CHECKING:
    from app.summary.service import SummaryService

#: The page's charts span 15 minutes; local history keeps a snapshot every 15 s or better
#: that far back (app.summary.snapshots.RETENTION), and one a minute to an hour.
DEFAULT_SPAN_S = 900
MAX_SPAN_S = 3600
#: Points at most in one answer: a chart 320 units wide gains nothing from more, and the
#: answer stays a few kB per provider.
MAX_POINTS = 450
#: The default step gives about this many points: one per 5 s over 15 minutes, the page's
#: default refresh, so the history and the polled points that follow it look alike.
DEFAULT_POINTS = 180
QUANTILE = 0.95

REQUESTS = rate("trend_requests", "http_requests_total")
HTTP_BUCKETS = buckets("trend_http_buckets", "http_request_duration_seconds")
#: One series per provider in a process (the workers' files hold the host's minimum): max
#: and min agree locally. Across replicas the backend's series is the worst replica's view.
SCORES = current("trend_scores", "gatewayz_provider_health_score", "provider", aggregate="max")

TrendSource = Literal["local", "prometheus"]


class Trends(BaseModel):
    """The trend series, one figure per entry of ``times`` in each."""

    timestamp: datetime = Field(description="The end of the history (the newest time asked for)")
    source: TrendSource
    span_seconds: int
    step_seconds: int = Field(description="At least this many seconds between two points")
    window_seconds: int = Field(description="Window of each point's rate and p95, as in the summary")
    times: list[float] = Field(description="Unix seconds of each point, oldest first")
    requests_per_second: list[float | None]
    p95_ms: list[float | None] = Field(description="HTTP request latency p95; None where nothing was observed")
    health_scores: dict[str, list[float | None]] = Field(description="Each provider's health score")
    errors: list[SummaryError] = []
    note: str | None = Field(None, description="Why the history is empty, when it is")


def default_step(span_s: int) -> int:
    """The step that gives about DEFAULT_POINTS points over ``span_s``."""
    return max(1, math.ceil(span_s / DEFAULT_POINTS))


def point_count(span_s: int, step_s: int) -> int:
    return span_s // step_s + 1


class _Series:
    """The columns of an answer while they are built."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.rates: list[float | None] = []
        self.p95: list[float | None] = []
        self.scores: dict[str, dict[int, float | None]] = {}

    def add(self, at: float, rps: float | None, p95_ms: float | None, scores: dict[str, float | None]) -> None:
        index = len(self.times)
        self.times.append(round(at, 3))
        self.rates.append(rps)
        self.p95.append(p95_ms)
        for provider, score in scores.items():
            self.scores.setdefault(provider, {})[index] = score

    def score_columns(self) -> dict[str, list[float | None]]:
        return {provider: [points.get(index) for index in range(len(self.times))]
                for provider, points in sorted(self.scores.items())}


# --- from this process's snapshots --------------------------------------------------------

def local_trends(snapshots: Snapshots, *, span_s: int, step_s: int, window_s: int,
                 now: float | None = None) -> _Series:
    """The snapshots of the last ``span_s`` seconds, one at least ``step_s`` after the
    other (the newest always), each point's rates over ``window_s`` before it. ``now``:
    Unix seconds of the snapshots' clock reading "now" (time.time() when None)."""
    history = snapshots.history()
    clock_now = snapshots.clock()
    offset = (time.time() if now is None else now) - clock_now  # the snapshots' clock -> Unix seconds
    start = clock_now - span_s
    chosen: list[int] = []
    for index in range(len(history) - 1, -1, -1):  # newest first, so the newest is kept
        at = history[index].at
        if at < start:
            break
        # 10% slack: snapshots taken every ``step_s`` arrive a few ms late or early.
        if not chosen or history[chosen[-1]].at - at >= step_s * 0.9:
            chosen.append(index)
    times = [snapshot.at for snapshot in history]
    series = _Series()
    for index in reversed(chosen):
        snapshot = history[index]
        base = _baseline(history, times, index, window_s)
        series.add(snapshot.at + offset, *_figures(snapshot, base))
    return series


def _baseline(history: list[Snapshot], times: list[float], index: int, window_s: int) -> Snapshot | None:
    """The newest snapshot at least ``window_s`` before ``history[index]``, else the
    oldest (as a summary's rates are taken: app.summary.snapshots.Snapshots.baseline)."""
    if index == 0:
        return None
    before = bisect.bisect_right(times, times[index] - window_s, 0, index) - 1
    return history[max(before, 0)]


def _figures(now: Snapshot, base: Snapshot | None) -> tuple[float | None, float | None, dict[str, float | None]]:
    requests = evaluate(REQUESTS, now, base).get(()) if base is not None else None
    p95 = quantiles_by(evaluate(HTTP_BUCKETS, now, base), QUANTILE).get(()) if base is not None else None
    scores = {key[0]: number(value) for key, value in evaluate(SCORES, now, None).items()}
    return number(requests), ms(p95), scores


# --- from the backend ---------------------------------------------------------------------

def trends_promql(window_s: int, extra: tuple[Matcher, ...] = ()) -> str:
    """The three series as one PromQL request, each tagged with its name in PACK_LABEL."""
    texts = {
        REQUESTS.name: REQUESTS.promql(window_s, extra),
        HTTP_BUCKETS.name: f"histogram_quantile({QUANTILE}, {HTTP_BUCKETS.promql(window_s, extra)})",
        SCORES.name: f"min by (provider) ({SCORES.selector('', extra)})",
    }
    return " or ".join(f'label_replace({text}, "{PACK_LABEL}", "{name}", "", "")' for name, text in texts.items())


def backend_trends(backend: PrometheusBackend, *, span_s: int, step_s: int, window_s: int,
                   extra: tuple[Matcher, ...] = (), now: float | None = None,
                   ) -> tuple[_Series, tuple[str, ...]] | BackendError:
    """The series from the backend's range query, on a grid of multiples of ``step_s``
    (times where no series has a point are left out), and the backend's warnings."""
    end = math.floor((time.time() if now is None else now) / step_s) * step_s
    answer = backend.query_range(trends_promql(window_s, extra), start=end - span_s, end=end, step_s=step_s)
    if isinstance(answer, BackendError):
        return answer
    rates: dict[float, float] = {}
    p95: dict[float, float] = {}
    scores: dict[float, dict[str, float | None]] = {}
    for entry in answer.series:
        name = entry.labels.get(PACK_LABEL)
        for at, value in entry.points:
            if name == REQUESTS.name:
                rates[at] = value
            elif name == HTTP_BUCKETS.name:
                p95[at] = value
            elif name == SCORES.name and "provider" in entry.labels:
                scores.setdefault(at, {})[entry.labels["provider"]] = number(value)
    series = _Series()
    for at in sorted({*rates, *p95, *scores}):
        series.add(at, number(rates.get(at)), ms(p95.get(at)), scores.get(at, {}))
    return series, answer.warnings


# --- the answer -------------------------------------------------------------------------------

def trend_history(service: SummaryService, *, span_s: int = DEFAULT_SPAN_S, step_s: int | None = None,
                  window_s: int | None = None, local: bool = False) -> Trends:
    """The trends of the last ``span_s`` seconds: from the backend when one is configured
    (and ``local`` is not asked), from the snapshots otherwise or when it fails."""
    service.snapshots.start()  # no-op once running; an embedding app may skip our lifespan
    step = step_s or default_step(span_s)
    if point_count(span_s, step) > MAX_POINTS + 1:
        raise ValueError(f"{span_s} s every {step} s is more than {MAX_POINTS} points")
    window = int(window_s or service.settings.summary_window_seconds)
    now = time.time()
    errors: list[SummaryError] = []
    source: TrendSource = "local"
    series: _Series | None = None
    if service.backend is not None and not local:
        answer = backend_trends(service.backend, span_s=span_s, step_s=step, window_s=window,
                                extra=service.extra_matchers, now=now)
        if isinstance(answer, BackendError):
            errors.append(SummaryError(kind=answer.kind, message=answer.message, status=answer.status,
                                       query="trends"))
            errors.append(SummaryError(kind="fallback", message="the trends come from this instance's own "
                                       "history of its registry", query="trends"))
        else:
            (series, warnings), source = answer, "prometheus"
            if warnings:
                errors.append(SummaryError(kind="partial", message="; ".join(warnings), query="trends"))
    if series is None:
        series = local_trends(service.snapshots, span_s=span_s, step_s=step, window_s=window, now=now)
    note = None
    if not series.times:
        note = ("the backend holds no history of this service yet" if source == "prometheus" else
                f"no history yet: this instance keeps a snapshot of its registry every "
                f"{service.snapshots.interval:g} s")
    return Trends(
        timestamp=datetime.fromtimestamp(now, UTC),
        source=source,
        span_seconds=span_s,
        step_seconds=step,
        window_seconds=window,
        times=series.times,
        requests_per_second=series.rates,
        p95_ms=series.p95,
        health_scores=series.score_columns(),
        errors=errors,
        note=note,
    )
