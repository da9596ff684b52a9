"""The recording helpers the gateway core calls on every request and upstream call.

They keep the seed's names and keyword arguments, so code written against it runs
unchanged. None of them raises into the caller on bad input: a number or a boolean
records as its text, a label value that is None, empty or of another type records as
``"unknown"`` (enums as their fallback), a
number that is not a finite, non-negative number a float can hold (``10**400`` is not)
is dropped and counted in ``gatewayz_recording_rejected_total{helper, reason}``. A helper
checks every number before it records anything, then keeps everything that is sane.

Cost: each helper is a dict lookup for the cached label child plus the prometheus_client
``inc``/``observe`` itself (see ``benchmarks/hot_path.py``).
"""

from __future__ import annotations

import math
import sys
from abc import ABC, abstractmethod
from collections.abc import Mapping
from time import perf_counter
from types import TracebackType
from typing import Any

from app.catalogue import UNKNOWN_VALUE
from app.genai import GenAISemconv
from app.http_stats import HttpStats
from app.registry import MAX_LABEL_LENGTH, MetricSet, safe_text
from app.scoring import HealthTracker, Permit, classify
from app.scoring.outcome import http_status, status_label
from app.topn import TopLists, key_fingerprint

#: The largest float: an int past it cannot be recorded (float() raises OverflowError).
_LARGEST = sys.float_info.max

# --- upstream calls ---------------------------------------------------------------------

#: The ``status`` label of every HTTP status, derived once from the outcome taxonomy
#: (app.scoring.outcome) so the hot path stays one dict lookup.
_STATUS_BY_CODE = {code: status_label(classify(code, None, None), code) for code in range(100, 600)}


def inference_status(status_code: int | None = None, error: BaseException | str | None = None) -> str:
    """The ``status`` label of an upstream call: success or its error category."""
    if status_code is None and error is None:  # a success that set no status: most calls
        return "success"
    if type(status_code) is not int:
        status_code = http_status(status_code)
    if status_code is None and error is not None:
        status_code = _status_code_of(error)
    if status_code is not None:
        if status_code < 400:
            return "success" if error is None else _status_of_error(error)
        label = _STATUS_BY_CODE.get(status_code)
        if label is not None:
            return label
        return status_label(classify(status_code, None, None), status_code)
    if error is None:
        return "success"
    return _status_of_error(error)


def _status_code_of(error: BaseException | str) -> int | None:
    """The HTTP status an exception carries (httpx, openai and requests style), if any."""
    code = getattr(error, "status_code", None)
    if code is None:
        response = getattr(error, "response", None)
        code = getattr(response, "status_code", None)
    return code if isinstance(code, int) and not isinstance(code, bool) else None


def _status_of_error(error: BaseException | str) -> str:
    """The label of an exception or error kind: the tracker's class of it (app.scoring.classify)."""
    return status_label(classify(None, error, None), None, error)


class _Timed(ABC):
    """Base of the timing context managers: subclasses record in ``finish``."""

    __slots__ = ("started",)

    def __enter__(self) -> Any:
        self.started = perf_counter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.finish(perf_counter() - self.started, exc)

    async def __aenter__(self) -> Any:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    @abstractmethod
    def finish(self, duration: float, exc: BaseException | None) -> None: ...


class InferenceCall(_Timed):
    """One upstream call being tracked by :meth:`Recorder.track_model_inference`.

    Mark what the block learned: ``call.first_token()`` when a stream yields its first
    token, ``call.usage(input_tokens, output_tokens)`` when the answer (or a stream's last
    chunk) reports its usage, ``call.status_code = resp.status_code`` and
    ``call.headers = resp.headers`` for a provider's answer, ``call.fail(...)`` for a
    failure that raised nothing.
    """

    __slots__ = ("recorder", "provider", "model", "name", "permit", "ttft_s", "status_code", "error",
                 "error_code", "headers", "operation", "input_tokens", "output_tokens", "_ended", "_usage_recorded")

    def __init__(self, recorder: Recorder, provider: Any, model: Any, permit: Permit | None = None,
                 operation: Any = None) -> None:
        self.recorder = recorder
        self.provider = provider
        self.model = model
        self.operation = operation
        self.started = 0.0
        # The provider as its labels (and the tracker) know it, cleaned once per call.
        self.name = name = recorder.provider_name(provider)
        self.permit = permit
        try:  # the call's load counts for choose() until record() ends it
            if permit is None:  # ask for the call's permit as it begins; record() returns it
                self.permit = recorder.tracker.begin(name)
            else:
                recorder.tracker.start(name)
        except Exception:  # noqa: BLE001 - health scoring must never break a gateway call
            recorder.reject("health_tracker", "tracker_error")
        self.ttft_s: float | None = None
        self.status_code: int | None = None
        self.error: BaseException | str | None = None
        self.error_code: str | None = None
        self.headers: Mapping[str, str] | None = None
        self.input_tokens: Any = None
        self.output_tokens: Any = None
        #: (status, duration, ttft) of the call once recorded without a usage: one given later
        #: is recorded at once, with its time per output token.
        self._ended: tuple[str, float, float | None] | None = None
        self._usage_recorded = False

    def first_token(self) -> None:
        if self.ttft_s is None:
            self.ttft_s = perf_counter() - self.started

    def usage(self, input_tokens: Any = None, output_tokens: Any = None) -> None:
        """The call's token usage (either may be None: not reported). Recorded once, when
        the call ends, with the time per output token of a streamed call; a later value
        replaces an earlier one. After the block, the first usage given is recorded at once."""
        if input_tokens is not None:
            self.input_tokens = input_tokens
        if output_tokens is not None:
            self.output_tokens = output_tokens
        ended = self._ended
        if ended is not None and not self._usage_recorded:
            self._usage_recorded = True
            recorder = self.recorder
            status, duration, ttft = ended
            recorder.record_usage(self.provider, self.model, self.name, self.operation, status, duration, ttft,
                                  recorder.tokens(self.input_tokens), recorder.tokens(self.output_tokens), late=True)

    def fail(
        self,
        status_code: int | None = None,
        *,
        error: BaseException | str | None = None,
        error_code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.status_code = status_code
        self.error = error if error is not None or status_code is not None else "unknown"
        self.error_code = error_code
        if headers is not None:
            self.headers = headers

    def finish(self, duration: float, exc: BaseException | None) -> None:
        # ``duration`` is perf_counter's own difference: finite and never negative.
        error = self.error
        if exc is not None and error is None:
            error = exc
            if self.ttft_s is not None and self.status_code is None:
                error = "stream_broken"  # it failed after streaming had started
        recorder = self.recorder
        ttft = self.ttft_s
        if ttft is not None:  # set by first_token(), or by the caller: checked
            ttft = recorder.amount(ttft, "record_time_to_first_token")
        given_in, given_out = self.input_tokens, self.output_tokens
        if given_in is None and given_out is None:
            status = recorder.record_call(self.provider, self.model, self.name, duration, self.status_code, error,
                                          ttft, self.headers, self.error_code, self.permit, None, None, self.operation)
            self._ended = (status, duration, ttft)
        else:
            self._usage_recorded = True
            recorder.record_call(self.provider, self.model, self.name, duration, self.status_code, error, ttft,
                                 self.headers, self.error_code, self.permit, recorder.tokens(given_in),
                                 recorder.tokens(given_out), self.operation)


class HttpRequest(_Timed):
    """A request tracked by :meth:`Recorder.track_http_request`; set ``status_code`` when known."""

    __slots__ = ("recorder", "method", "endpoint", "status_code")

    def __init__(self, recorder: Recorder, method: Any, endpoint: Any) -> None:
        self.recorder = recorder
        self.method = method.upper() if isinstance(method, str) else method
        self.endpoint = endpoint
        self.status_code: int | None = None

    def finish(self, duration: float, exc: BaseException | None) -> None:
        self.recorder.record_http_request(
            self.method, self.endpoint, self.status_code or (500 if exc else 200), duration, exc)


class DatabaseQuery(_Timed):
    __slots__ = ("recorder", "table", "operation")

    def __init__(self, recorder: Recorder, table: Any, operation: Any) -> None:
        self.recorder = recorder
        self.table = table
        self.operation = operation

    def finish(self, duration: float, exc: BaseException | None) -> None:
        self.recorder.record_database_query(self.table, self.operation, duration)


class Recorder:
    """The recording helpers, writing into one app's metric set, HTTP stats, health
    tracker and top-N tables (``app.telemetry.Telemetry`` is one; ``app.metrics`` calls
    the process's default one)."""

    def __init__(self, metrics: MetricSet, http_stats: HttpStats, tracker: HealthTracker,
                 top_lists: TopLists) -> None:
        self.metrics = metrics
        self.http_stats = http_stats
        self.tracker = tracker
        self.top_lists = top_lists
        self._requests = metrics["model_inference_requests_total"]
        self._inference_duration = metrics["model_inference_duration_seconds"]
        self._provider_response = metrics["provider_response_time_seconds"]
        self._ttft = metrics["gatewayz_time_to_first_token_seconds"]
        self._tpot = metrics["gatewayz_time_per_output_token_seconds"]
        self._tokens = metrics["tokens_used_total"]
        self._credits = metrics["credits_used_total"]
        self._cost = metrics["gatewayz_cost_by_provider"]
        self._api_key_usage = metrics["api_key_usage_total"]
        self._http_exceptions = metrics["http_exceptions_total"]
        self._db_queries = metrics["database_queries_total"]
        self._db_duration = metrics["database_query_duration_seconds"]
        self._cache_hits = metrics["cache_hits_total"]
        self._cache_misses = metrics["cache_misses_total"]
        self._rate_limited = metrics["rate_limited_requests_total"]
        self._routing = metrics["gatewayz_routing_decisions_total"]
        self._rejected = metrics["gatewayz_recording_rejected_total"]
        self._apdex = metrics["gatewayz_provider_apdex_total"]
        self._transitions = metrics["gatewayz_provider_circuit_transitions_total"]
        #: The OpenTelemetry GenAI instruments, when the settings ask for them (app.genai).
        self.genai: GenAISemconv | None = None
        # Counted where the move was caused: every process of a fleet makes the moves that
        # shared outcomes cause, and the counter is summed over them.
        tracker.add_listener(self._count_transition, remote=False)

    def reject(self, helper: str, reason: str) -> None:
        """Count a value a helper dropped."""
        self._rejected.child(helper, reason).inc()

    def amount(self, value: Any, helper: str, signed: bool = False) -> float | None:
        """``value`` as a finite (non-negative unless ``signed``) float, or None, counted."""
        # The common case, checked cheaply: int/float comparisons are exact, so this refuses
        # NaN, the infinities and ints no float can hold alike.
        if type(value) is float or type(value) is int:
            if (value >= 0 or signed) and -_LARGEST <= value <= _LARGEST:
                return value
        return self._checked_amount(value, helper, signed)

    def _checked_amount(self, value: Any, helper: str, signed: bool) -> float | None:
        """``amount`` for subclasses of int and float, and every value it refuses."""
        reason = "not_a_number"
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                reason = "too_large"
            except Exception:  # noqa: BLE001 - a subclass whose __float__ fails
                pass
            else:
                if not math.isfinite(number):
                    reason = "not_finite"
                elif number < 0 and not signed:
                    reason = "negative"
                else:
                    return number
        self.reject(helper, reason)
        return None

    def tokens(self, value: Any) -> float | None:
        """A token count as recorded (None: not reported, or refused and counted)."""
        return None if value is None else self.amount(value, "record_tokens_used")

    def provider_name(self, provider: Any) -> str:
        """``provider`` as the provider labels (and the health tracker) record it."""
        return self._provider_response.label_value("provider", provider)

    def _count_transition(self, provider: str, from_state: str, to_state: str, reason: str) -> None:
        self._transitions.child(provider, to_state).inc()

    # --- upstream calls ---------------------------------------------------------------

    def track_model_inference(
        self, provider: Any, model: Any, *, permit: Permit | None = None, operation: Any = None
    ) -> InferenceCall:
        """Time an upstream call and record its outcome; an exception in the block is a failure.

        ::

            with telemetry.track_model_inference("openrouter", "gpt-4o") as call:
                response = await client.post(...)
                call.status_code = response.status_code
                call.usage(usage.prompt_tokens, usage.completion_tokens)

        The call asks the health tracker for its permit as it begins and hands it back with
        its outcome; pass ``permit=`` when the gateway already took one with ``allow()``.
        ``operation`` is the GenAI operation (``gen_ai.operation.name``; ``chat`` if None).
        """
        return InferenceCall(self, provider, model, permit, operation)

    def record_upstream_call(
        self,
        provider: Any,
        model: Any,
        *,
        duration_s: Any,
        status_code: int | None = None,
        error: BaseException | str | None = None,
        ttft_s: Any = None,
        headers: Mapping[str, str] | None = None,
        error_code: str | None = None,
        permit: Permit | None = None,
        input_tokens: Any = None,
        output_tokens: Any = None,
        operation: Any = None,
    ) -> None:
        """Record one finished upstream call: counters, latency histograms and health.

        ``status_code`` is the provider's HTTP status (None with no error = success);
        ``error`` an exception or a kind ("timeout", "connection", "stream_broken");
        ``ttft_s`` the time to first token of a streamed call; ``headers`` the provider's
        response headers (rate-limit hints); ``error_code`` its error code
        (``insufficient_quota``); ``permit`` the call's permit from ``tracker.allow``, so the
        breaker counts the outcome for the period the call was admitted in;
        ``input_tokens`` and ``output_tokens`` its usage (recorded as by
        ``record_tokens_used``, and for a streamed call the time per output token);
        ``operation`` the GenAI operation (``chat`` if None).
        """
        duration = self.amount(duration_s, "track_model_inference")
        ttft = None if ttft_s is None else self.amount(ttft_s, "record_time_to_first_token")
        given_in = None if input_tokens is None else self.amount(input_tokens, "record_tokens_used")
        given_out = None if output_tokens is None else self.amount(output_tokens, "record_tokens_used")
        self.record_call(provider, model, self.provider_name(provider), duration,
                         status_code, error, ttft, headers, error_code, permit, given_in, given_out, operation)

    def record_call(
        self,
        provider: Any,
        model: Any,
        name: str,
        duration: float | None,
        status_code: int | None,
        error: BaseException | str | None,
        ttft: float | None,
        headers: Mapping[str, str] | None,
        error_code: str | None,
        permit: Permit | None,
        input_tokens: float | None = None,
        output_tokens: float | None = None,
        operation: Any = None,
    ) -> str:
        """``record_upstream_call`` once its numbers are checked (None: dropped) and ``name``,
        the provider as its labels record it, is known: one call deep, as it runs per call.
        Returns the call's inference status."""
        status = inference_status(status_code, error)
        self._requests.child(provider, model, status).inc()
        if duration is not None:
            self._inference_duration.child(provider, model).observe(duration)
            self._provider_response.child(provider).observe(duration)
        if ttft is not None:
            self._ttft.child(provider, model).observe(ttft)
        genai = self.genai
        if input_tokens is not None or output_tokens is not None:
            self.record_usage(provider, model, name, operation, status, duration, ttft, input_tokens, output_tokens)
        elif genai is not None:
            genai.record_call(name, model, operation, status, duration, ttft, None)
        # Feed the health tracker; its failures never reach the caller. Without the call's
        # permit one is asked for now: in half-open the outcome then counts only when a trial
        # permit is free, never in place of a trial still in flight.
        try:
            tracker = self.tracker
            if permit is None:
                permit = tracker.allow(name)
            zone = tracker.record(
                name,
                duration_s=duration if duration is not None else 0.0,
                status_code=status_code,
                error=error,
                ttft_s=ttft,
                headers=headers,
                error_code=error_code,
                permit=permit,
            )
        except Exception:  # noqa: BLE001 - health scoring must never break a gateway call
            self.reject("health_tracker", "tracker_error")
            return status
        if zone is not None:
            self._apdex.child(name, zone).inc()
        return status

    def record_usage(
        self,
        provider: Any,
        model: Any,
        name: str,
        operation: Any,
        status: str,
        duration: float | None,
        ttft: float | None,
        input_tokens: float | None,
        output_tokens: float | None,
        late: bool = False,
    ) -> None:
        """The tokens of a finished call (checked numbers) and, for a successful streamed call
        with at least two output tokens, its time per output token:
        (duration - time to first token) / (output tokens - 1). ``late``: the call itself was
        recorded before its usage came."""
        if input_tokens is not None:
            self._tokens.child(provider, model, "input").inc(input_tokens)
        tpot = None
        if output_tokens is not None:
            self._tokens.child(provider, model, "output").inc(output_tokens)
            if status == "success" and ttft is not None and duration is not None and output_tokens >= 2:
                tpot = (duration - ttft) / (output_tokens - 1)
                if tpot >= 0:
                    self._tpot.child(provider, model).observe(tpot)
                else:  # a first token after the call's end: the caller's clocks disagree
                    self.reject("time_per_output_token", "negative")
                    tpot = None
        genai = self.genai
        if genai is not None:
            genai.record_tokens(name, model, operation, input_tokens, output_tokens)
            if late:
                if tpot is not None:
                    genai.record_time_per_output_token(name, model, operation, tpot)
            else:
                genai.record_call(name, model, operation, status, duration, ttft, tpot)

    def record_time_to_first_token(self, provider: Any, model: Any, seconds: Any) -> None:
        value = self.amount(seconds, "record_time_to_first_token")
        if value is not None:
            self._ttft.child(provider, model).observe(value)

    def record_tokens_used(self, provider: Any, model: Any, input_tokens: Any, output_tokens: Any) -> None:
        """Count the tokens of one call; either count may be None (not reported)."""
        given_in = None if input_tokens is None else self.amount(input_tokens, "record_tokens_used")
        given_out = None if output_tokens is None else self.amount(output_tokens, "record_tokens_used")
        if given_in is not None:
            self._tokens.child(provider, model, "input").inc(given_in)
        if given_out is not None:
            self._tokens.child(provider, model, "output").inc(given_out)
        if self.genai is not None:
            self.genai.record_tokens(self.provider_name(provider), model, None, given_in, given_out)

    def record_credits_used(
        self, provider: Any, model: Any, user_id: Any, credits: Any, *, api_key: str | None = None
    ) -> None:
        """Count credits; ``user_id`` (and ``api_key``, fingerprinted) feed the top-N lists only."""
        amount = self.amount(credits, "record_credits_used")
        if amount is None:
            return
        self._credits.child(provider, model).inc(amount)
        if user_id is not None and user_id != "":
            self.top_lists.users_by_credits.add(_top_n_key(user_id), amount)
        if isinstance(api_key, str) and api_key:
            self.top_lists.keys_by_credits.add(key_fingerprint(api_key), amount)

    def record_provider_cost(self, provider: Any, cost_usd: Any) -> None:
        amount = self.amount(cost_usd, "record_provider_cost")
        if amount is not None:
            self._cost.child(provider).inc(amount)

    def record_api_key_usage(self, api_key: Any, status: Any = "success") -> None:
        """Count one use of an API key by outcome; the key only feeds the top-N, fingerprinted."""
        self._api_key_usage.child(status).inc()
        if isinstance(api_key, str) and api_key:
            self.top_lists.keys_by_requests.add(key_fingerprint(api_key), 1.0)

    def record_routing_decision(self, outcome: Any) -> None:
        """Count a routing decision: ``primary``, ``failover`` or ``panic``."""
        self._routing.child(outcome).inc()

    # --- HTTP, database, cache, rate limits ----------------------------------------------

    def track_http_request(self, method: Any, endpoint: Any) -> HttpRequest:
        """Time a request served outside the middleware; ``endpoint`` must be a route template."""
        return HttpRequest(self, method, endpoint)

    def record_http_request(
        self, method: Any, endpoint: Any, status_code: Any, duration_s: Any, exc: BaseException | None = None
    ) -> None:
        """Record one served HTTP request; ``endpoint`` must be a route template."""
        duration = self.amount(duration_s, "record_http_request")
        if duration is not None:
            self.http_stats.observe(method, endpoint, status_code, duration)
        if exc is not None:
            self.record_http_exception(method, endpoint, exc)

    def record_http_exception(self, method: Any, endpoint: Any, exc: BaseException) -> None:
        self._http_exceptions.child(method, endpoint, type(exc).__name__).inc()

    def track_database_query(self, table: Any, operation: Any) -> DatabaseQuery:
        """Time a database query: ``with telemetry.track_database_query("users", "select"): ...``."""
        return DatabaseQuery(self, table, operation)

    def record_database_query(self, table: Any, operation: Any, duration_s: Any) -> None:
        duration = self.amount(duration_s, "record_database_query")
        self._db_queries.child(table, operation).inc()
        if duration is not None:
            self._db_duration.child(table).observe(duration)

    def record_cache_hit(self, cache_name: Any) -> None:
        self._cache_hits.child(cache_name).inc()

    def record_cache_miss(self, cache_name: Any) -> None:
        self._cache_misses.child(cache_name).inc()

    def record_rate_limited(self, limit_type: Any) -> None:
        """Count a request refused by one of the gateway's own rate limits."""
        self._rate_limited.child(limit_type).inc()

    # --- gauges the gateway sets from its own state ----------------------------------------

    def _set_gauge(self, family: str, helper: str, labels: tuple[Any, ...], value: Any,
                   signed: bool = False) -> None:
        number = self.amount(value, helper, signed)
        if number is not None:
            self.metrics[family].child(*labels).set(number)

    def set_active_connections(self, connection_type: Any, count: Any) -> None:
        self._set_gauge("active_connections", "set_active_connections", (connection_type,), count)

    def set_queue_size(self, queue_name: Any, size: Any) -> None:
        self._set_gauge("queue_size", "set_queue_size", (queue_name,), size)

    def set_cache_size(self, cache_name: Any, size_bytes: Any) -> None:
        self._set_gauge("cache_size_bytes", "set_cache_size", (cache_name,), size_bytes)

    def set_rate_limit_remaining(self, limit_type: Any, remaining: Any) -> None:
        self._set_gauge("current_rate_limit", "set_rate_limit_remaining", (limit_type,), remaining)

    def set_active_api_keys(self, status: Any, count: Any) -> None:
        self._set_gauge("active_api_keys", "set_active_api_keys", (status,), count)

    def set_user_credit_balance(self, plan_type: Any, balance: Any) -> None:
        # A balance may be negative (an overdraft), unlike every other gauge here.
        self._set_gauge("user_credit_balance", "set_user_credit_balance", (plan_type,), balance, signed=True)

    def set_trial_active(self, status: Any, count: Any) -> None:
        self._set_gauge("trial_active", "set_trial_active", (status,), count)

    def set_active_subscriptions(self, plan: Any, billing_cycle: Any, count: Any) -> None:
        self._set_gauge("active_subscriptions", "set_active_subscriptions", (plan, billing_cycle), count)


def _top_n_key(user_id: Any) -> str:
    """A user id as the summary's top-N list shows it (JSON-safe, bounded)."""
    if type(user_id) is str and len(user_id) <= MAX_LABEL_LENGTH and user_id.isascii():
        return user_id
    try:
        return safe_text(user_id if isinstance(user_id, str) else str(user_id)) or UNKNOWN_VALUE
    except Exception:  # noqa: BLE001 - str() of a 5,000-digit int or of a broken object
        return UNKNOWN_VALUE
