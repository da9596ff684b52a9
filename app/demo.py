"""Simulated gateway traffic, so a new user sees live numbers at once.

``DemoTraffic`` drives the same public helpers a gateway calls (``app.metrics``): upstream
calls with their outcome, tokens, credits, costs, API key use, cache hits and misses,
rate limits, database queries, HTTP requests on the gateway's own routes, and the
business gauges. Four providers have their own latency and error profiles; one of them,
``flakycloud``, degrades, fails and recovers on a cycle of ``demo_cycle_seconds``.

Time and randomness are injectable, so tests step it without sleeping.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.recording import Recorder
from app.scoring import Permit
from app.settings import Settings


@dataclass(frozen=True, slots=True)
class ProviderProfile:
    name: str
    models: tuple[str, ...]
    ttft_median_s: float
    tokens_per_s: float
    error_rate: float
    rate_limit_rate: float
    usd_per_1k_tokens: float


PROVIDERS = (
    ProviderProfile("openrouter", ("openai/gpt-4o", "anthropic/claude-sonnet-4", "meta-llama/llama-3.3-70b"),
                    0.45, 80.0, 0.01, 0.01, 0.006),
    ProviderProfile("anthropic", ("anthropic/claude-sonnet-4", "claude-haiku-4"), 0.6, 70.0, 0.005, 0.02, 0.009),
    ProviderProfile("cerebras", ("meta-llama/llama-3.3-70b", "qwen-3-32b"), 0.12, 900.0, 0.01, 0.03, 0.0008),
    ProviderProfile("flakycloud", ("qwen-3-32b", "mixtral-8x22b"), 0.5, 60.0, 0.01, 0.0, 0.002),
)
FLAKY = "flakycloud"
PROFILES = {profile.name: profile for profile in PROVIDERS}
#: Which providers serve a model; a model served by one provider is pinned to it.
MODEL_PROVIDERS: dict[str, tuple[str, ...]] = {}
for _profile in PROVIDERS:
    for _model in _profile.models:
        MODEL_PROVIDERS[_model] = (*MODEL_PROVIDERS.get(_model, ()), _profile.name)
MODELS = tuple(MODEL_PROVIDERS)
PLANS = (("free", "monthly"), ("pro", "monthly"), ("pro", "yearly"), ("enterprise", "yearly"))
USERS = tuple(f"user_{n:04d}" for n in range(200))
#: Share of requests from a client that sends random model names.
JUNK_SHARE = 0.01


@dataclass(frozen=True, slots=True)
class FlakyPhase:
    """What ``flakycloud`` does at a point of its cycle."""

    name: str
    latency_factor: float
    error_rate: float
    timeout_rate: float


def flaky_phase(position: float) -> FlakyPhase:
    """The phase at ``position`` in [0, 1) of the cycle: healthy, degraded, down, healthy."""
    if position < 0.35:
        return FlakyPhase("healthy", 1.0, 0.01, 0.0)
    if position < 0.55:
        return FlakyPhase("degraded", 4.0, 0.12, 0.03)
    if position < 0.75:
        return FlakyPhase("down", 1.0, 0.6, 0.35)
    return FlakyPhase("healthy", 1.0, 0.01, 0.0)


class DemoTraffic:
    """Generates ``demo_rate`` upstream calls per second through the recording helpers of
    ``telemetry``."""

    TICK_S = 0.1

    def __init__(
        self,
        settings: Settings,
        telemetry: Recorder,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.telemetry = telemetry
        self.rate = settings.demo_rate
        self.cycle_s = settings.demo_cycle_seconds
        self.clock = clock
        self.rng = rng or random.Random(20261122)
        self.started = clock()
        self._owed = 0.0

    def phase(self) -> FlakyPhase:
        return flaky_phase(((self.clock() - self.started) % self.cycle_s) / self.cycle_s)

    async def run(self) -> None:
        while True:
            self.tick(self.TICK_S)
            await asyncio.sleep(self.TICK_S)

    def tick(self, seconds: float) -> int:
        """Simulate ``seconds`` of traffic; returns how many upstream calls it made."""
        self._owed += self.rate * seconds
        calls = int(self._owed)
        self._owed -= calls
        for _ in range(calls):
            self.one_call()
        self._set_gauges()
        return calls

    def one_call(self) -> None:
        """One client request: pick a model, let the health tracker route it, call."""
        if self.rng.random() < JUNK_SHARE:
            self._junk_model_call()
            return
        tracker = self.telemetry.tracker
        model = self.rng.choice(MODELS)
        candidates = MODEL_PROVIDERS[model]  # in the operator's order of preference
        choice = tracker.choose(candidates)
        for provider in choice.order:
            if permit := tracker.allow(provider):
                break
        else:  # every circuit refused: the gateway answers 503 without calling upstream
            self.telemetry.record_routing_decision("panic")
            self.telemetry.record_http_request("POST", "/v1/chat/completions", 503, 0.001)
            return
        primary = provider == candidates[0]
        self.telemetry.record_routing_decision("panic" if choice.panic else "primary" if primary else "failover")
        self._upstream_call(PROFILES[provider], model, permit)

    def _junk_model_call(self) -> None:
        """A misbehaving client asking for made-up models: the provider answers 404, and
        the label cap keeps the model label bounded (``"other"`` past the cap)."""
        junk = "junk-" + "".join(self.rng.choices("abcdefghijklmnopqrstuvwxyz0123456789", k=10))
        self.telemetry.record_upstream_call("openrouter", junk, duration_s=0.08, status_code=404)
        self.telemetry.record_http_request("POST", "/v1/chat/completions", 404, 0.085)

    def _upstream_call(self, profile: ProviderProfile, model: str, permit: Permit) -> None:
        rng = self.rng
        stream = rng.random() < 0.6
        error_rate, timeout_rate, latency_factor = profile.error_rate, 0.0, 1.0
        if profile.name == FLAKY:
            phase = self.phase()
            error_rate, timeout_rate, latency_factor = phase.error_rate, phase.timeout_rate, phase.latency_factor
        ttft = rng.lognormvariate(math.log(profile.ttft_median_s * latency_factor), 0.5)
        output_tokens = int(rng.lognormvariate(math.log(250), 0.8)) + 1
        input_tokens = int(rng.lognormvariate(math.log(600), 1.0)) + 1
        duration = ttft + output_tokens / profile.tokens_per_s
        user = rng.choice(USERS)
        api_key = f"sk-demo-{user}"
        self.telemetry.record_api_key_usage(api_key, "attempt")
        roll = rng.random()
        status_code: int | None = None
        error: str | None = None
        headers: dict[str, str] | None = None
        if roll < timeout_rate:
            error, duration = "timeout", 30.0
        elif roll < timeout_rate + error_rate:
            status_code, duration = rng.choice((500, 502, 503)), ttft
        elif roll < timeout_rate + error_rate + profile.rate_limit_rate:
            status_code, duration = 429, 0.05
            headers = {"retry-after": str(rng.choice((1, 2, 5)))}
        succeeded = status_code is None and error is None
        if succeeded and rng.random() < 0.002:  # a provider bug: a negative usage count, dropped and counted
            input_tokens = -input_tokens
        self.telemetry.record_upstream_call(
            profile.name,
            model,
            duration_s=duration,
            status_code=status_code,
            error=error,
            ttft_s=ttft if stream and status_code is None and error is None else None,
            headers=headers,
            permit=permit,  # the outcome counts for the breaker period the call was admitted in
            input_tokens=input_tokens if succeeded else None,  # with a streamed call's time per output token
            output_tokens=output_tokens if succeeded else None,
        )
        http_status = 200 if status_code is None and error is None else (status_code or 504)
        # An upstream timeout surfaces in the gateway as an exception its handler raises.
        exception = TimeoutError("upstream read timed out") if error == "timeout" else None
        self.telemetry.record_http_request("POST", "/v1/chat/completions", http_status, duration + 0.004, exception)
        if succeeded:
            cost = (input_tokens + output_tokens) / 1000 * profile.usd_per_1k_tokens
            self.telemetry.record_provider_cost(profile.name, cost)
            self.telemetry.record_credits_used(profile.name, model, user, cost * 100, api_key=api_key)
            self.telemetry.record_api_key_usage(api_key, "success")
        else:
            self.telemetry.record_api_key_usage(api_key, "error")
        if rng.random() < 0.3:
            self.telemetry.record_cache_hit("responses")
        else:
            self.telemetry.record_cache_miss("responses")
        if rng.random() < 0.02:
            self.telemetry.record_rate_limited(rng.choice(("requests_per_minute", "tokens_per_minute")))
        self.telemetry.record_database_query("api_keys", "select", rng.lognormvariate(math.log(0.002), 0.6))

    def _set_gauges(self) -> None:
        rng = self.rng
        self.telemetry.set_active_api_keys("active", 180 + rng.randint(0, 5))
        self.telemetry.set_active_api_keys("inactive", 42)
        for index, (plan, cycle) in enumerate(PLANS):
            self.telemetry.set_active_subscriptions(plan, cycle, 10 * (4 - index) + 5)
        self.telemetry.set_trial_active("active", 17)
        self.telemetry.set_user_credit_balance("pro", 125_000.0)
        self.telemetry.set_user_credit_balance("free", 3_400.0)
        self.telemetry.set_active_connections("db", 8 + rng.randint(0, 4))
        self.telemetry.set_active_connections("provider", 20 + rng.randint(0, 10))
        self.telemetry.set_queue_size("completions", rng.randint(0, 6))
        self.telemetry.set_cache_size("responses", 48 * 1024 * 1024)
        self.telemetry.set_rate_limit_remaining("requests_per_minute", rng.randint(500, 1000))
