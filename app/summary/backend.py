"""The Prometheus-compatible backend of the summaries: named instant queries run in
parallel under one deadline, cached for a short TTL, and never an exception for
backend trouble.

    backend = PrometheusBackend("http://prometheus:9090", deadline_s=2.0, cache_ttl_s=10.0)
    batch = backend.query_many({"rps": 'sum(rate(http_requests_total{job="gateway-metrics"}[5m]))'})
    batch.results["rps"].samples   # (Sample(labels={}, value=12.5),)
    batch.errors, batch.stale      # what went wrong, and whether a last good value was served
    backend.ping()                 # BackendState(reachable=True, latency_ms=1.9, error=None)

Anything that serves ``/api/v1/query`` works: Prometheus, VictoriaMetrics, Thanos, Mimir.
Requests go through prometheus-api-client's ``PrometheusConnect``, around its traps
(checked on 0.7.2 against Prometheus 2.42):

- Its default urllib3 ``Retry`` (3 tries, backoff 1 s, on 408/429/500/502/503/504) turns a
  query timeout (a 503) into a ``RetryError`` after about 9 s and a refused connection
  into about 6 s. We pass our own: no retries, and a timeout taken from the deadline.
- ``custom_query`` returns ``data.result`` alone, dropping ``resultType`` and
  ``warnings``. We send the same request on the client's own session, headers and auth
  (``_Connection.query_response``) and read the whole envelope.
- All calls share one ``requests.Session``, which is not documented as thread-safe: each
  worker thread gets its own client.
- ``get_current_metric_value`` pastes label values into PromQL unescaped: never used;
  build matchers with :class:`app.summary.promql.Matcher`.

Answers are kept (fresh for ``cache_ttl_s``, then as the last good answer for failures) in
one store bounded in entries and in bytes (app.summary.caches), the bytes estimated once
per answer from its samples (:func:`result_nbytes`).
"""

from __future__ import annotations

import base64
import functools
import math
import re
import struct
import sys
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import datetime
from email.utils import parsedate_to_datetime
from itertools import chain
from operator import attrgetter, itemgetter
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self, cast
from urllib.parse import urlsplit, urlunsplit

import msgspec
import requests
from cachetools import LRUCache

# The submodule, not the package: the package's lazy __getattr__ hides the types.
from prometheus_api_client.prometheus_connect import PrometheusConnect
from pydantic import SecretStr
from urllib3.util.retry import Retry

from app.summary.caches import bounded, keep
from app.summary.labelsets import LabelSet, held_values

ErrorKind = Literal[
    "unreachable",  # no connection (refused, DNS, TLS, reset)
    "timeout",  # no answer before our deadline
    "http_error",  # an HTTP error status without a usable Prometheus error body
    "bad_data",  # the backend rejected the query (Prometheus errorType bad_data, 400)
    "execution",  # evaluation failed (errorType execution, 422; VictoriaMetrics' 422)
    "backend_timeout",  # the backend's own query timeout (errorType timeout, 503)
    "garbage",  # an answer that is not a Prometheus API response
    "partial",  # an incomplete answer: warnings, isPartial, a cut body, missing fields
]

#: Answers kept (fresh ones and last good ones alike), and their bytes at most. A summary
#: is a dozen packed requests per window (app.summary.promql.packs_for). The per-model
#: answers of a fleet of 1,000 models are about 32,000 samples, some 15 MB parsed (about
#: 450 bytes a sample), so 32 MiB holds every pack of the default window of such a fleet,
#: and those of many windows of a smaller one; callers asking for distinct windows cannot
#: grow the process past it.
MAX_CACHED_QUERIES = 4096
MAX_CACHED_BYTES = 32 * 2**20
#: /ready must answer fast even when the backend hangs.
PING_TIMEOUT_S = 1.0
#: The backend is asked to give up a little before us, so its own timeout error (which
#: says where it spent the time) arrives instead of our bare client timeout.
BACKEND_TIMEOUT_SHARE = 0.9
#: Enough of an unexpected body to recognise it in an error message.
SNIPPET_CHARS = 200

# Connection errors surface at once and read timeouts as ReadTimeout: ``read=False``
# re-raises read errors instead of wrapping them in a ConnectionError, as requests'
# own default Retry(0, read=False) does. No retries, so the deadline holds.
NO_RETRY = Retry(total=0, read=False)


@dataclass(frozen=True, slots=True)
class BackendError:
    """One thing that went wrong with the backend, as reported in a summary's ``errors``."""

    kind: ErrorKind
    message: str
    query: str | None = None  # the named query concerned
    status: int | None = None  # the HTTP status the backend answered, if it answered


_Labels = tuple[Mapping[str, str], ...]


class Sample(NamedTuple):
    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class QueryResult:
    """An instant query's answer. NaN samples (0/0, a quantile of no observations) are
    dropped, as VictoriaMetrics does itself, so both backends answer alike: a missing
    sample means "undefined". ±Inf is kept. A ``matrix`` keeps each series' last point;
    a ``string`` has no samples.

    The samples are held as two parallel tuples, the series' labels and their values,
    which is how the answer is read and how :func:`app.summary.promql.unpack` reads it
    (tens of thousands of samples at fleet scale: no tuple per sample);
    :attr:`samples` pairs them. Each series' labels are a dict, or a
    :class:`app.summary.labelsets.LabelSet` when the answer was read into one."""

    result_type: str  # vector, scalar, matrix or string
    labels: tuple[Mapping[str, str], ...]
    values: tuple[float, ...]
    warnings: tuple[str, ...] = ()
    stale: bool = False  # served from the last good answer after a failure

    @property
    def samples(self) -> tuple[Sample, ...]:
        return tuple(map(Sample, self.labels, self.values))

    def value(self) -> float | None:
        """The value of a single-sample answer (a scalar, or ``sum(...)``); None if empty."""
        return self.values[0] if self.values else None


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Answers of :meth:`PrometheusBackend.query_many`, by query name. A name that failed
    with no last good answer to fall back on is absent from ``results``."""

    results: dict[str, QueryResult]
    errors: list[BackendError] = field(default_factory=list)

    @property
    def stale(self) -> bool:
        return any(result.stale for result in self.results.values())


@dataclass(frozen=True, slots=True)
class BackendState:
    """The backend's health for ``/ready``."""

    reachable: bool
    latency_ms: float
    error: BackendError | None = None


class BackendFailure(Exception):
    def __init__(self, error: BackendError) -> None:
        super().__init__(error.message)
        self.error = error


# --- reading the answer -----------------------------------------------------------------

#: Prometheus' errorType names; VictoriaMetrics sends the HTTP status as errorType instead.
_ERROR_TYPES: dict[str, ErrorKind] = {
    "bad_data": "bad_data",
    "execution": "execution",
    "timeout": "backend_timeout",
    "canceled": "backend_timeout",
}
_ERROR_STATUSES: dict[int, ErrorKind] = {400: "bad_data", 422: "execution", 503: "backend_timeout"}


def _snippet(body: bytes | str) -> str:
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    return repr(text[:SNIPPET_CHARS]) + ("..." if len(text) > SNIPPET_CHARS else "")


def _failure(kind: ErrorKind, message: str, status: int | None = None) -> BackendFailure:
    return BackendFailure(BackendError(kind, message, None, status))


def _looks_cut(body: bytes, error: msgspec.DecodeError) -> bool:
    """A JSON object that parsed fine up to where the body ends."""
    return body.lstrip().startswith(b"{") and str(error).startswith("Input data was truncated")


def _error_from_envelope(status: int, envelope: Mapping[str, Any]) -> BackendFailure:
    error_type = str(envelope.get("errorType", ""))
    kind = _ERROR_TYPES.get(error_type)
    if kind is None and error_type == str(status):
        kind = _ERROR_STATUSES.get(status)
    message = f"{error_type or 'error'}: {str(envelope.get('error', ''))[:SNIPPET_CHARS * 2]}"
    return _failure(kind or "http_error", message, status)


def _number(raw: Any) -> float:
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise TypeError(f"a sample value must be a number or a string, not {_snippet(repr(raw))}")
    return float(raw)  # Prometheus sends "NaN", "+Inf", "-Inf", which float() reads


def _label_pairs(labels: Any) -> dict[str, str]:
    if not isinstance(labels, dict) or not all(isinstance(value, str) for value in labels.values()):
        raise TypeError(f"series labels must be an object of strings, not {_snippet(repr(labels))}")
    return labels


_METRIC = itemgetter("metric")
_VALUE = itemgetter("value")
_VALUES = itemgetter("values")
_SECOND = itemgetter(1)
_LAST = itemgetter(-1)
_NUMBER_TYPES = frozenset({str, int, float})  # not bool: type() is exact


def _samples(result_type: str, result: Any, finite_only: bool) -> tuple[list[dict[str, str]], list[float]]:
    """The labels and values of ``data.result``'s samples.

    Read a column at a time (``map`` of getters, ``float``, ``math.isfinite``: the loops
    run in C), so checking every sample costs less than reading the JSON that holds them;
    a bad sample is then looked for, to say which.
    """
    if result_type == "string":
        return [], []
    labels: list[Any]
    raws: list[Any]
    if result_type == "scalar":
        labels, raws = [{}], [result[1]]
    elif result_type == "vector":
        labels = list(map(_METRIC, result))
        raws = list(map(_SECOND, map(_VALUE, result)))
    elif result_type == "matrix":
        series = [entry for entry in result if entry["values"]]
        labels = list(map(_METRIC, series))
        raws = list(map(_SECOND, map(_LAST, map(_VALUES, series))))
    else:
        raise ValueError(f"unknown resultType {_snippet(repr(result_type))}")
    if not _NUMBER_TYPES.issuperset(map(type, raws)):
        for raw in raws:
            _number(raw)  # raises for the first one that is not a number
    values = list(map(float, raws))  # Prometheus sends "NaN", "+Inf", "-Inf", which float() reads
    if finite_only and not all(map(math.isfinite, values)):
        raw = next(raw for raw, value in zip(raws, values, strict=True) if not math.isfinite(value))
        raise ValueError(f"{_snippet(repr(raw))} is not a finite number")
    if labels and (set(map(type, labels)) != {dict}
                   or set(map(type, chain.from_iterable(map(dict.values, labels)))) - {str}):
        for pairs in labels:
            _label_pairs(pairs)  # raises for the first one that is not an object of strings
    if not finite_only and any(map(math.isnan, values)):
        kept = [(pairs, value) for pairs, value in zip(labels, values, strict=True) if not math.isnan(value)]
        labels, values = [pairs for pairs, _ in kept], [value for _, value in kept]
    return labels, values


def parse_response(status: int, body: bytes, *, finite_only: bool = False,
                   into: type[LabelSet] | None = None) -> QueryResult:
    """The answer of ``/api/v1/query``, or BackendFailure saying what is wrong with it.

    This is where the backend's bytes become data, so this is where anything they hold
    stops: every exception the reading raises (a RecursionError from JSON nested
    100,000 deep, an OverflowError from a 400-digit number, a TypeError from a value of the
    wrong type anywhere in the envelope) means the answer is garbage, and is reported as
    such, never raised to the caller. ``finite_only``: NaN and infinities are garbage too
    (for queries, like the summaries', that cannot produce them). ``into``: each series'
    labels are read into that label set, keeping only its labels.
    """
    if into is not None:
        return _vector_into(into, status, body, finite_only) or _into(into, parse_response(
            status, body, finite_only=finite_only))
    try:
        result_type, result, warnings = _envelope(status, body)
        labels, values = _samples(result_type, result, finite_only)
    except BackendFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the bytes make the reading raise is their fault
        raise _unreadable(status, exc) from None
    return QueryResult(result_type, tuple(labels), tuple(values), warnings)


class _Point(msgspec.Struct, array_like=True, gc=False):
    at: float
    value: float  # read from Prometheus' string ("0.5"; lax decoding) or a number


@functools.cache
def _vector_decoder(labels: type[LabelSet]) -> msgspec.json.Decoder[Any]:
    series = msgspec.defstruct("Series", [("metric", labels), ("value", _Point)], gc=False)
    data = msgspec.defstruct("Data", [("resultType", str), ("result", list[series])])  # type: ignore[valid-type]
    # Warnings and isPartial are read as they come: their presence sends the answer the
    # general way (:func:`_envelope` says what they mean).
    envelope = msgspec.defstruct("Envelope", [("status", str), ("data", data),
                                              ("warnings", msgspec.Raw, msgspec.Raw(b"[]")),
                                              ("isPartial", msgspec.Raw, msgspec.Raw(b"false"))])
    return msgspec.json.Decoder(envelope, strict=False)


#: What the general way reads as no warnings, and as not partial.
_NO_WARNINGS = frozenset({b"[]", b"null", b"false"})
_NOT_PARTIAL = b"false"


def _vector_into(labels: type[LabelSet], status: int, body: bytes, finite_only: bool) -> QueryResult | None:
    """A plain vector answer read straight into label sets, or None for any other (read
    the general way, which says what is wrong with it).

    Every series is two structs the garbage collector does not track, and the value's
    string is read as a float while reading the JSON: about 2.5 times faster than the
    general way at fleet scale, and nothing for the collector to scan.
    """
    if status != 200:
        return None
    try:
        envelope = _vector_decoder(labels).decode(body)
    except Exception:  # noqa: BLE001 - whatever the bytes make it raise, the general way reads them again
        return None
    data = envelope.data
    if (envelope.status != "success" or data.resultType != "vector"
            or bytes(envelope.warnings).strip() not in _NO_WARNINGS
            or bytes(envelope.isPartial).strip() != _NOT_PARTIAL):
        return None
    values = tuple(map(_ATTR_VALUE, map(_ATTR_VALUE, data.result)))  # each series' point's value
    if not all(map(math.isfinite, values)) and (finite_only or any(map(math.isnan, values))):
        return None  # garbage, or NaN samples to drop: the general way does both
    return QueryResult("vector", cast(_Labels, tuple(map(_SERIES_METRIC, data.result))), values)


_SERIES_METRIC = attrgetter("metric")
_ATTR_VALUE = attrgetter("value")


def _into(labels: type[LabelSet], result: QueryResult) -> QueryResult:
    """``result`` with its series' labels read into ``labels``."""
    fields = frozenset(labels.__struct_fields__)
    kept = tuple(labels(**{name: value for name, value in pairs.items() if name in fields})
                 for pairs in result.labels)
    return replace(result, labels=cast(_Labels, kept))


def _unreadable(status: int, exc: Exception) -> BackendFailure:
    return _failure("garbage" if status < 400 else "http_error",
                    f"unreadable answer ({type(exc).__name__}: {_snippet(str(exc))})", status)


def _envelope(status: int, body: bytes) -> tuple[str, Any, tuple[str, ...]]:
    """An answer's ``data.resultType``, ``data.result`` and warnings, once its envelope has
    been checked (an error envelope, a failed status, data missing: BackendFailure)."""
    try:
        # msgspec: reading the JSON is the largest cost of a summary at fleet scale, and
        # it reads it in half json's time (benchmarks/summary_scale.py, docs/BENCHMARKS.md).
        envelope = msgspec.json.decode(body)
    except msgspec.DecodeError as exc:  # bad UTF-8 included
        if status >= 400:
            raise _failure("http_error", f"HTTP {status}: {_snippet(body)}", status) from None
        if _looks_cut(body, exc):
            raise _failure("partial", f"the answer ends early after {len(body)} bytes", status) from None
        raise _failure("garbage", f"not JSON: {_snippet(body)}", status) from None
    if not isinstance(envelope, dict) or "status" not in envelope:
        kind: ErrorKind = "http_error" if status >= 400 else "garbage"
        raise _failure(kind, f"not a Prometheus API answer: {_snippet(body)}", status)
    if envelope["status"] == "error":
        raise _error_from_envelope(status, envelope)
    if envelope["status"] != "success" or status >= 400:
        raise _failure("http_error" if status >= 400 else "garbage",
                       f"HTTP {status} with status {_snippet(repr(envelope['status']))}", status)
    data = envelope.get("data")
    if not isinstance(data, dict) or "resultType" not in data or "result" not in data:
        raise _failure("partial", "the answer lacks data.resultType or data.result", status)
    result_type = data["resultType"]
    if not isinstance(result_type, str):
        raise TypeError(f"resultType must be a string, not {_snippet(repr(result_type))}")
    warnings = envelope.get("warnings") or []
    partial = envelope.get("isPartial", False)
    if not isinstance(warnings, list) or not isinstance(partial, bool):
        raise TypeError("warnings must be a list and isPartial a boolean")
    warnings = [str(warning)[:SNIPPET_CHARS * 2] for warning in warnings]
    if partial:  # VictoriaMetrics cluster: some storage nodes missing
        warnings.append("the backend marked the answer as partial (isPartial)")
    return result_type, data["result"], tuple(warnings)


@dataclass(frozen=True, slots=True)
class RuleGroup:
    """A recording rule group as the backend evaluates it."""

    name: str
    interval_s: float
    #: Unix seconds of its last evaluation on the backend's clock; None: not evaluated yet.
    last_evaluation: float | None
    #: Its records whose last evaluation succeeded.
    healthy: frozenset[str]


@dataclass(frozen=True, slots=True)
class RuleGroups:
    """The answer of ``/api/v1/rules?type=record``, and the backend's clock when it
    answered (its ``Date`` header; None without one)."""

    groups: tuple[RuleGroup, ...]
    backend_now: float | None


_RFC3339 = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)")


def _unix(timestamp: str) -> float | None:
    """Unix seconds of an RFC 3339 time as Go writes it (nanoseconds); None for Go's zero
    time (a rule not evaluated yet) or anything else."""
    match = _RFC3339.fullmatch(timestamp)
    if match is None:
        return None
    whole, fraction, zone = match.groups()
    moment = datetime.fromisoformat(whole + ("+00:00" if zone == "Z" else zone))
    if moment.year < 1970:
        return None
    return moment.timestamp() + float(fraction or 0.0)


def parse_rule_groups(status: int, body: bytes, date: str | None = None) -> RuleGroups:
    """The recording rule groups of a ``/api/v1/rules`` answer, or BackendFailure saying
    what is wrong with it (every reading error included, as :func:`parse_response`)."""
    try:
        envelope = msgspec.json.decode(body)
        if status >= 400 or envelope.get("status") != "success":
            raise _failure("http_error", f"HTTP {status}: {_snippet(body)}", status)
        groups = []
        for group in envelope["data"]["groups"]:
            healthy = frozenset(str(rule["name"]) for rule in group["rules"]
                                if rule.get("type", "recording") == "recording" and rule.get("health") == "ok")
            groups.append(RuleGroup(str(group["name"]), float(group["interval"]),
                                    _unix(str(group.get("lastEvaluation", ""))), healthy))
    except BackendFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the bytes make the reading raise is their fault
        raise _failure("garbage", f"not a rules answer ({type(exc).__name__}: {_snippet(str(exc))})",
                       status) from None
    backend_now = None
    if date:
        try:
            backend_now = parsedate_to_datetime(date).timestamp()
        except (TypeError, ValueError):
            backend_now = None
    return RuleGroups(tuple(groups), backend_now)



@dataclass(frozen=True, slots=True)
class RangeSeries:
    """One series of a range query's answer: its labels and its (Unix seconds, value)
    points, oldest first, NaN points left out (a gap: undefined there)."""

    labels: dict[str, str]
    points: tuple[tuple[float, float], ...]


@dataclass(frozen=True, slots=True)
class RangeResult:
    """A range query's answer (``/api/v1/query_range``)."""

    series: tuple[RangeSeries, ...]
    warnings: tuple[str, ...] = ()


def parse_range_response(status: int, body: bytes, *, finite_only: bool = False) -> RangeResult:
    """The answer of ``/api/v1/query_range``, or BackendFailure saying what is wrong with
    it: the envelope is checked as :func:`parse_response` checks it (the same errors and
    warnings), the points here, every reading error being garbage."""
    try:
        result_type, result, warnings = _envelope(status, body)
    except BackendFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever the bytes make the reading raise is their fault
        raise _unreadable(status, exc) from None
    if result_type != "matrix":
        raise _failure("garbage", f"a range query answered a {_snippet(result_type)}, not a matrix", status)
    try:
        series = []
        for entry in result:
            points = []
            for at, raw in entry["values"]:
                value = _number(raw)
                if finite_only and not math.isfinite(value):
                    raise ValueError(f"{_snippet(repr(raw))} is not a finite number")
                if not math.isnan(value):
                    points.append((float(at), value))
            series.append(RangeSeries(_label_pairs(entry["metric"]), tuple(points)))
    except Exception as exc:  # noqa: BLE001 - whatever the bytes make the reading raise is their fault
        raise _failure("garbage", f"unreadable range answer ({type(exc).__name__}: {_snippet(str(exc))})",
                       status) from None
    return RangeResult(tuple(series), warnings)

# --- the client ---------------------------------------------------------------------------


def _secret(value: str | SecretStr) -> str:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def _reason(exc: requests.RequestException) -> str:
    """The cause of a requests error, without urllib3's wrapping ("Max retries exceeded...")."""
    reason: object = exc.args[0] if exc.args else exc
    reason = getattr(reason, "reason", reason)  # urllib3's MaxRetryError carries the cause
    return str(reason).rpartition("): ")[2] or str(reason)


class _Connection(PrometheusConnect):
    """PrometheusConnect plus the call it lacks: an instant query's whole response."""

    def query_response(self, query: str, timeout_s: float, at: float | None = None) -> requests.Response:
        # The request custom_query sends (same session, headers, auth, TLS settings),
        # returned whole; POST keeps long queries out of URLs and access logs.
        backend_timeout_ms = max(1, int(timeout_s * BACKEND_TIMEOUT_SHARE * 1000))
        form = {"query": query, "timeout": f"{backend_timeout_ms}ms"}
        if at is not None:
            form["time"] = f"{at:.3f}"
        return self.request("POST", "/api/v1/query", timeout_s, data=form)

    def request(self, method: str, path: str, timeout_s: float, **options: Any) -> requests.Response:
        return self._session.request(
            method=method,
            url=f"{self.url}{path}",
            headers=self.headers,
            auth=self.auth,
            verify=self._session.verify,
            cert=self._session.cert,
            timeout=timeout_s,
            **options,
        )


Outcome = QueryResult | BackendError


# --- the store of answers ------------------------------------------------------------

#: What a sample costs beside its label values: its float, a pointer to it and one to its
#: labels; a str's header per label.
_SAMPLE_BYTES = sys.getsizeof(0.0) + 2 * struct.calcsize("P")
_STR_BYTES = sys.getsizeof("")


def result_nbytes(result: QueryResult) -> int:
    """An estimate of the memory ``result`` holds, a column at a time: floats, label dicts
    or label sets, and label values (ASCII: a byte a character). Label names are not
    counted: the JSON reader shares one str per distinct key of an answer."""
    labels = result.labels
    if not labels:
        return sys.getsizeof(()) * 2
    if isinstance(labels[0], LabelSet):  # one label set type per answer, one size
        strings, chars = held_values(cast(tuple[LabelSet, ...], labels))
        containers = len(labels) * sys.getsizeof(labels[0])
    else:
        values = list(chain.from_iterable(map(dict.values, cast(tuple[dict[str, str], ...], labels))))
        strings, chars = len(values), sum(map(len, values))
        containers = sum(map(sys.getsizeof, labels))
    return sys.getsizeof(()) * 2 + len(labels) * _SAMPLE_BYTES + containers + strings * _STR_BYTES + chars


#: What was asked: a query's text, and the label set its answer is read into, if one.
_Asked = tuple[str, type[LabelSet] | None]


class _Kept(NamedTuple):
    """A good answer as the store keeps it: served as fresh until ``fresh_until`` (on the
    backend's clock) to queries for the same instant ``at``, and as the last good answer
    after a failure, whatever its age or instant."""

    result: QueryResult
    fresh_until: float
    nbytes: int
    at: float | None = None


class PrometheusBackend:
    """Instant queries against one Prometheus-compatible backend.

    ``deadline_s`` bounds a whole :meth:`query_many` batch; answers are reused for
    ``cache_ttl_s`` (measured on ``clock``, which tests may replace); after a failure the
    last good answer of that query is served, marked stale. Both come from one store of
    at most ``max_cache_bytes``: an answer bigger than that is served and not kept.
    ``finite_only``: an answer holding NaN or an infinity is garbage (for queries that
    cannot produce one). Thread-safe.
    """

    def __init__(
        self,
        url: str,
        *,
        bearer_token: str | SecretStr | None = None,
        basic_auth: tuple[str, str | SecretStr] | None = None,
        verify_tls: bool | str = True,
        deadline_s: float = 2.0,
        cache_ttl_s: float = 10.0,
        max_workers: int = 8,
        ping_timeout_s: float = PING_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        finite_only: bool = False,
        max_cache_bytes: int = MAX_CACHED_BYTES,
    ) -> None:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"the backend URL must be http:// or https://, not {url!r}")
        if bearer_token is not None and basic_auth is not None:
            raise ValueError("give a bearer token or basic auth for the backend, not both")
        if deadline_s <= 0 or cache_ttl_s < 0 or max_workers < 1 or ping_timeout_s <= 0:
            raise ValueError("deadline_s and ping_timeout_s must be > 0, cache_ttl_s >= 0, max_workers >= 1")
        self.url = url.rstrip("/")
        parts = urlsplit(self.url)
        # Error messages reach the summary JSON: never with credentials from the URL.
        self._display_url = urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))
        self.deadline_s = deadline_s
        self.cache_ttl_s = cache_ttl_s
        self.ping_timeout_s = ping_timeout_s
        self.finite_only = finite_only
        # Credentials go as UTF-8 bytes (RFC 7617's charset="UTF-8", as curl and Go send
        # them): requests and http.client would encode a str as Latin-1 and raise on
        # anything beyond it, mid-request.
        self._headers: dict[str, str | bytes] = {"Accept": "application/json"}
        # A secret read from a file (settings' *_FILE) is read again when the file changes:
        # the header follows it, so a rotated Secret applies without a restart.
        self._bearer_token = bearer_token
        self._basic_auth = basic_auth
        self._authorize()
        self._verify = verify_tls
        self._executor = ThreadPoolExecutor(max_workers, thread_name_prefix="promql")
        self._local = threading.local()
        self._connections: list[_Connection] = []
        self._clock = clock
        self._lock = threading.Lock()  # guards _kept, _inflight and _connections
        # (text, label set) -> its last good answer
        self._kept: LRUCache[_Asked, _Kept] = bounded(LRUCache, max_entries=MAX_CACHED_QUERIES,
                                                   max_bytes=max_cache_bytes, nbytes=attrgetter("nbytes"))
        # (what was asked, instant) -> (request, its deadline)
        self._inflight: dict[tuple[_Asked, float | None], tuple[Future[Outcome], float]] = {}

    # --- queries ----------------------------------------------------------------------

    def query_many(self, queries: Mapping[str, str], deadline_s: float | None = None, *,
                   at: float | None = None, into: type[LabelSet] | None = None,
                   on_answer: Callable[[str, QueryResult], None] | None = None) -> BatchResult:
        """Run the named instant queries in parallel, all within ``deadline_s`` (by
        default the backend's), all evaluated at ``at`` (Unix seconds; the backend's
        "now" when None); never raises for anything the backend does. ``into``: the
        series' labels are read into that label set (app.summary.labelsets).

        ``on_answer(name, result)`` is called in the calling thread for each answer as it
        settles (fresh, cached or the last good one), the first while later ones are
        still on their way: the caller reads each answer while waiting for the rest."""
        deadline_s = deadline_s or self.deadline_s
        deadline = time.monotonic() + deadline_s
        batch = BatchResult({})
        pending: dict[Future[Outcome], list[str]] = {}
        for name, text in queries.items():
            cached = self._cached((text, into), at)
            if cached is not None:
                self._settle(batch, name, text, into, cached, on_answer)
            else:
                pending.setdefault(self._submit((text, into), deadline, at), []).append(name)
        try:
            for future in as_completed(pending, timeout=max(0.0, deadline - time.monotonic())):
                names = pending.pop(future)
                if future.cancelled():  # close() ran meanwhile
                    pending[future] = names
                    continue
                for name in names:
                    self._settle(batch, name, queries[name], into, future.result(), on_answer)
        except TimeoutError:
            pass
        for names in pending.values():
            for name in names:
                timeout = BackendError("timeout", f"no answer within the {deadline_s:g} s deadline")
                self._settle(batch, name, queries[name], into, timeout, on_answer)
        # In the order asked, whatever the order of arrival: the same answer every time.
        order = {name: index for index, name in enumerate(queries)}
        return BatchResult({name: batch.results[name] for name in queries if name in batch.results},
                           sorted(batch.errors, key=lambda error: order[error.query or ""]))

    @property
    def cached_bytes(self) -> int:
        """The bytes the kept answers are charged, at most ``max_cache_bytes``."""
        with self._lock:
            return int(self._kept.currsize)

    def _cached(self, asked: _Asked, at: float | None) -> QueryResult | None:
        """The answer to ``asked`` at ``at`` if it is fresh."""
        if self.cache_ttl_s <= 0:
            return None
        with self._lock:
            kept = self._kept.get(asked)
        fresh = kept is not None and kept.at == at and self._clock() < kept.fresh_until
        return kept.result if fresh and kept is not None else None

    def _submit(self, asked: _Asked, deadline: float, at: float | None) -> Future[Outcome]:
        # Concurrent batches asking for the same text at the same instant share one
        # request, unless its own deadline has passed (it is about to fail with a timeout).
        key = (asked, at)
        with self._lock:
            inflight = self._inflight.get(key)
            if inflight is not None and inflight[1] > time.monotonic():
                return inflight[0]
            future = self._executor.submit(self._run, asked, deadline, at)
            self._inflight[key] = (future, deadline)
        future.add_done_callback(lambda done: self._forget_inflight(key, done))
        return future

    def _forget_inflight(self, key: tuple[_Asked, float | None], future: Future[Outcome]) -> None:
        with self._lock:
            if self._inflight.get(key, (None,))[0] is future:
                del self._inflight[key]

    def _run(self, asked: _Asked, deadline: float, at: float | None) -> Outcome:
        remaining = deadline - time.monotonic()
        if remaining <= 0:  # queued behind slower queries until the deadline passed
            return BackendError("timeout", "not started before the deadline (all workers busy)")
        text, into = asked
        outcome = self._fetch(text, remaining, at, into)
        if isinstance(outcome, QueryResult):
            kept = _Kept(outcome, self._clock() + self.cache_ttl_s, result_nbytes(outcome) + sys.getsizeof(text), at)
            with self._lock:
                keep(self._kept, asked, kept)
        return outcome

    def _settle(self, batch: BatchResult, name: str, text: str, into: type[LabelSet] | None, outcome: Outcome,
                on_answer: Callable[[str, QueryResult], None] | None) -> None:
        """Add one query's outcome to ``batch``: its answer, or its error and its last good
        answer (stale), if any."""
        if isinstance(outcome, BackendError):
            batch.errors.append(replace(outcome, query=name))
            with self._lock:
                last = self._kept.get((text, into))
            if last is None:
                return
            outcome = replace(last.result, stale=True)
        batch.results[name] = outcome
        if outcome.warnings:
            batch.errors.append(BackendError("partial", "; ".join(outcome.warnings), name))
        if on_answer is not None:
            on_answer(name, outcome)

    # --- one request --------------------------------------------------------------------

    def _authorize(self) -> None:
        """The Authorization header of the current credentials (the headers dict is shared
        by every thread's client: one assignment, atomic)."""
        header: bytes | None = None
        if self._bearer_token is not None:
            header = b"Bearer " + _secret(self._bearer_token).encode("utf-8")
        elif self._basic_auth is not None:
            user, password = self._basic_auth
            header = b"Basic " + base64.b64encode(f"{user}:{_secret(password)}".encode())
        if header is not None and self._headers.get("Authorization") != header:
            self._headers["Authorization"] = header

    def _connection(self) -> _Connection:
        """This thread's client: requests.Session is not documented as thread-safe."""
        self._authorize()
        connection: _Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            session = requests.Session()
            # What requests reads from the environment at every request (proxies, a CA
            # bundle, ~/.netrc: a scan of os.environ and two file lookups each time, some 5%
            # of a summary's CPU at fleet scale) is read once, here, as it would read it.
            environment = session.merge_environment_settings(self.url, {}, None, self._verify, None)
            session.proxies, session.verify = environment["proxies"], environment["verify"]
            if "Authorization" not in self._headers:
                session.auth = requests.utils.get_netrc_auth(self.url)
            session.trust_env = False
            # With a session given, PrometheusConnect ignores disable_ssl and mounts its
            # HTTPAdapter (with our Retry) on the session for this URL.
            connection = _Connection(self.url, headers=self._headers, retry=NO_RETRY, session=session)
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    def _fetch(self, text: str, timeout_s: float, at: float | None = None,
               into: type[LabelSet] | None = None) -> Outcome:
        try:
            response = self._connection().query_response(text, timeout_s, at)
            return parse_response(response.status_code, response.content, finite_only=self.finite_only, into=into)
        except BackendFailure as failure:
            return failure.error
        except requests.RequestException as exc:
            return self._request_error(exc, timeout_s)

    def _request_error(self, exc: requests.RequestException, timeout_s: float) -> BackendError:
        if isinstance(exc, requests.ConnectTimeout):
            message = f"cannot reach {self._display_url}: connect timed out after {timeout_s:.2f} s"
            return BackendError("unreachable", message)
        if isinstance(exc, requests.Timeout):
            return BackendError("timeout", f"no answer within {timeout_s:.2f} s")
        if isinstance(exc, requests.exceptions.ChunkedEncodingError):
            return BackendError("partial", "the answer was cut off before its announced end")
        if isinstance(exc, requests.exceptions.ContentDecodingError):
            return BackendError("garbage", f"the answer's Content-Encoding does not decode: {_reason(exc)}")
        return BackendError("unreachable", f"cannot reach {self._display_url}: {_reason(exc)}")

    def recording_rules(self, timeout_s: float | None = None) -> RuleGroups | BackendError:
        """The recording rule groups the backend evaluates (``/api/v1/rules?type=record``),
        never cached; a backend without that API (VictoriaMetrics single-node) answers an
        error, which means "none"."""
        timeout_s = timeout_s or self.deadline_s
        try:
            response = self._connection().request("GET", "/api/v1/rules", timeout_s, params={"type": "record"})
            return parse_rule_groups(response.status_code, response.content, response.headers.get("Date"))
        except BackendFailure as failure:
            return failure.error
        except requests.RequestException as exc:
            return self._request_error(exc, timeout_s)

    def query_range(self, text: str, *, start: float, end: float, step_s: float,
                    timeout_s: float | None = None) -> RangeResult | BackendError:
        """``text`` evaluated every ``step_s`` from ``start`` to ``end`` (Unix seconds),
        within ``timeout_s`` (by default the deadline), never cached; never raises for
        anything the backend does."""
        timeout_s = timeout_s or self.deadline_s
        backend_timeout_ms = max(1, int(timeout_s * BACKEND_TIMEOUT_SHARE * 1000))
        form = {"query": text, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}",
                "timeout": f"{backend_timeout_ms}ms"}
        try:
            response = self._connection().request("POST", "/api/v1/query_range", timeout_s, data=form)
            return parse_range_response(response.status_code, response.content, finite_only=self.finite_only)
        except BackendFailure as failure:
            return failure.error
        except requests.RequestException as exc:
            return self._request_error(exc, timeout_s)

    def ping(self, timeout_s: float | None = None) -> BackendState:
        """Whether the backend answers ``vector(1)`` through /api/v1/query (which every
        compatible backend serves, unlike Prometheus' /-/ready), never cached."""
        started = time.monotonic()
        outcome = self._fetch("vector(1)", timeout_s or self.ping_timeout_s)
        latency_ms = (time.monotonic() - started) * 1000
        if isinstance(outcome, BackendError):
            return BackendState(False, latency_ms, outcome)
        if outcome.value() != 1.0:
            return BackendState(False, latency_ms, BackendError("garbage", f"vector(1) answered {outcome.samples!r}"))
        return BackendState(True, latency_ms)

    # --- lifecycle ----------------------------------------------------------------------

    def close(self) -> None:
        """Stop the workers and close every thread's connections."""
        self._executor.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"PrometheusBackend({self.url!r}, deadline_s={self.deadline_s:g}, cache_ttl_s={self.cache_ttl_s:g})"
