"""The health tracker's settings, each default with the reason for its number."""

from __future__ import annotations

from pydantic import BaseModel, Field, model_validator


class HealthConfig(BaseModel):
    """How provider health is scored, when a circuit opens and how throttling works."""

    #: availability, 1 - error rate, latency score (SPEC section 5).
    weights: tuple[float, float, float] = (0.4, 0.3, 0.3)
    #: Sliding window of calls per provider. A minute holds enough calls to judge a busy
    #: provider (Finagle's failure accrual looks at 30 s) and forgets an incident soon.
    window_s: float = Field(60.0, gt=0)
    #: Apdex T. LLM calls are measured to the first token when streamed and to the end
    #: otherwise; 2 s is a slow first token and a quick short completion. Tolerating is
    #: 4T = 8 s, past which users give up on an interactive answer.
    apdex_threshold_s: float = Field(2.0, gt=0)
    apdex_thresholds: dict[str, float] = Field(default_factory=dict, description="per provider")
    healthy_score: float = Field(0.8, ge=0, le=1)
    degraded_score: float = Field(0.5, ge=0, le=1)

    # Circuit breaker.
    #: Envoy's and Finagle's number: 5 failures in a row open the circuit, whatever the rate.
    consecutive_failures: int = Field(5, ge=1)
    #: Finagle's success-rate accrual opens below 80% success with at least 5 calls;
    #: resilience4j's default failure-rate threshold is 50%. We open at 50% failed of at
    #: least 10 calls: a provider failing half its calls costs users more than a failover.
    failure_rate: float = Field(0.5, gt=0, le=1)
    min_calls: int = Field(10, ge=1)
    #: How long a tripped circuit stays open before one trial call may go. LiteLLM cools a
    #: deployment down for 5 s (DEFAULT_COOLDOWN_TIME_SECONDS); Envoy ejects a host for
    #: 30 s x its ejections, capped at 300 s (base_ejection_time, max_ejection_time). Envoy
    #: needs the long ejection because an ejected host simply comes back when it ends; our
    #: half-open state lets one trial call through instead, so a short cooldown costs a dead
    #: provider one call, and a recovered one is found within seconds.
    open_cooldown_s: float = Field(5.0, gt=0)
    #: Each failed trial doubles the cooldown up to this cap: a dead provider costs about six
    #: calls a minute (a trial that times out holds its permit longer), and a recovered one
    #: is taken back within 10 s plus one call. Doubled step by step, never as a power.
    max_cooldown_s: float = Field(10.0, gt=0)
    #: Trial calls that must pass, one after another, before the circuit closes: three in a
    #: row is a recovery, not luck (resilience4j lets 10 through; a few keep a thundering
    #: herd off a provider that is just back).
    half_open_trials: int = Field(3, ge=1)
    #: A circuit closed after half-open is on probation for this long: a failure sends it
    #: back to half-open, where one trial call decides at once between noise and relapse,
    #: and the cooldown of a relapse goes on doubling from where it was instead of
    #: starting afresh. A flapping provider is caught by its first failure and kept out
    #: longer each time, as Envoy's ejection multiplier only comes down while a host stays
    #: healthy. A minute: the sliding window, so the failures that opened the circuit have
    #: left the score by the time the provider is judged afresh.
    probation_s: float = Field(60.0, ge=0)
    #: Once a trial let through by a probe has failed, the provider answers probes but fails
    #: calls (a partial failure, a rising error rate): one passed probe ends its cooldowns
    #: no more, until the circuit closes, but probes that pass without a failure for this
    #: long still do. 2 s is three probes in a row at the 1 s unhealthy interval: a
    #: provider failing half its calls passes them one time in eight, a recovered one
    #: within 2 s. Several hosts probing make the run longer in probes, not in seconds.
    misled_probe_run_s: float = Field(2.0, ge=0)
    #: Trial calls in flight at once in half-open: one, so a provider still down costs one
    #: failed call per cooldown, never a burst.
    trials_at_once: int = Field(1, ge=1)
    #: A trial permit not handed back within this long is presumed lost (the call ended
    #: without being recorded), like resilience4j's maximum wait in half-open. 300 s is
    #: the longest an LLM call is timed (the top inference bucket).
    trial_timeout_s: float = Field(300.0, gt=0)
    #: resilience4j's slow-call idea: this share of calls slower than slow_call_s marks the
    #: provider degraded (not open: slow answers are still answers).
    slow_call_s: float = Field(10.0, gt=0)
    slow_call_rate: float = Field(0.5, gt=0, le=1)

    # Rate limits.
    #: A 429 keeps a provider out at least 1 s and at most 300 s, whatever its hints say.
    throttle_min_s: float = Field(1.0, gt=0)
    throttle_max_s: float = Field(300.0, gt=0)
    #: Exhausted quota or credit is not a burst: out for 10 minutes or until a probe succeeds.
    quota_cooldown_s: float = Field(600.0, gt=0)

    #: Scores this close rank as equals, so load and latency decide between them.
    tie_band: float = Field(0.05, ge=0, le=1)
    #: Time constant of the peak-EWMA of time to first token (Finagle uses 10 s).
    ewma_tau_s: float = Field(10.0, gt=0)

    @model_validator(mode="after")
    def _check(self) -> HealthConfig:
        if abs(sum(self.weights) - 1.0) > 1e-6 or min(self.weights) < 0:
            raise ValueError("weights must be three non-negative numbers summing to 1")
        if self.degraded_score > self.healthy_score:
            raise ValueError("degraded_score must not exceed healthy_score")
        if self.max_cooldown_s < self.open_cooldown_s or self.throttle_max_s < self.throttle_min_s:
            raise ValueError("a maximum is below its minimum")
        return self

    def apdex_threshold(self, provider: str) -> float:
        return self.apdex_thresholds.get(provider, self.apdex_threshold_s)
