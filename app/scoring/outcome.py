"""What an upstream call's result means, decided in one place: the outcome taxonomy.

Every consumer derives from it: the health tracker's verdicts, the inference ``status``
label (app.recording), the summaries' and the fleet formula's status sets (app.summary).
"Error rate" means one thing everywhere: (failed + unreached) / the calls the score
counts (``ERRORS`` over ``SCORED``); throttled calls and the caller's faults are not errors.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Iterable, Mapping
from enum import StrEnum


class Outcome(StrEnum):
    SUCCESS = "success"
    CLIENT_ERROR = "client_error"  # the caller's fault (4xx but 429): the provider did its job
    CREDENTIAL = "credential"  # 401/403, the caller's fault too: our key, not the provider's health
    NOT_FOUND = "not_found"  # 404, the caller's fault too: a missing model, not the provider's health
    FAILURE = "failure"  # 5xx, a stream broken after its first token, an unexpected error
    UNREACHED = "unreached"  # timeout, connection error, 408/502/503/504: failed, not reached
    THROTTLED = "throttled"  # 429 or "overloaded": not an error, a cooldown
    QUOTA = "quota"  # 429 with quota or credit exhausted: out for longer
    CANCELLED = "cancelled"  # our side gave up (client gone, task cancelled): no verdict


#: The numerator of every error rate the service shows.
ERRORS = frozenset({Outcome.FAILURE, Outcome.UNREACHED})
#: The caller's fault (SPEC: 4xx but 429); the summary shows their share beside the error rate.
CALLER_FAULTS = frozenset({Outcome.CLIENT_ERROR, Outcome.CREDENTIAL, Outcome.NOT_FOUND})
THROTTLES = frozenset({Outcome.THROTTLED, Outcome.QUOTA})
#: The calls the health score (and so every error rate) counts: a provider that answered,
#: or should have. Throttles are cooldowns, 401/403/404 are tracked apart with their own
#: reasons, and a cancelled call has no verdict.
SCORED = frozenset({Outcome.SUCCESS, Outcome.CLIENT_ERROR, Outcome.FAILURE, Outcome.UNREACHED})

#: The inference ``status`` label each outcome records as (SPEC section 2: the error
#: categories of reference/002, plus timeout and unknown). An unreached call that timed
#: out records as "timeout" instead (:func:`status_label`); "unknown" is a cancelled call.
STATUS_LABELS: dict[Outcome, str] = {
    Outcome.SUCCESS: "success",
    Outcome.CLIENT_ERROR: "invalid_request_error",
    Outcome.CREDENTIAL: "authentication_error",
    Outcome.NOT_FOUND: "not_found_error",
    Outcome.FAILURE: "server_error",
    Outcome.UNREACHED: "service_unavailable",
    Outcome.THROTTLED: "rate_limit_error",
    Outcome.QUOTA: "rate_limit_error",
    Outcome.CANCELLED: "unknown",
}
TIMEOUT_LABEL = "timeout"
_TIMEOUT_CODES = (408, 504)  # request timeout, gateway timeout: reached nothing in time
_UNREACHED_CODES = (408, 502, 503, 504)  # timed out, or its front could not reach it
#: A status label passed as the error names its own outcome (``error="service_unavailable"``);
#: "rate_limit_error" is left to the rate-limit rule, which tells a quota apart.
_OUTCOME_OF_LABEL = {label: outcome for outcome, label in STATUS_LABELS.items()
                     if outcome not in (Outcome.SUCCESS, Outcome.CANCELLED, *THROTTLES)}


def status_label(outcome: Outcome, status_code: int | None = None, error: BaseException | str | None = None) -> str:
    """The inference ``status`` label of a call classified as ``outcome``."""
    if outcome is Outcome.UNREACHED:
        name = "" if error is None else (error if isinstance(error, str) else type(error).__name__).lower()
        if status_code in _TIMEOUT_CODES or "timeout" in name or "timedout" in name:
            return TIMEOUT_LABEL
    return STATUS_LABELS[outcome]


def status_labels(outcomes: Iterable[Outcome]) -> frozenset[str]:
    """Every ``status`` label calls of these outcomes record as (for PromQL status sets)."""
    outcomes = frozenset(outcomes)
    labels = {STATUS_LABELS[outcome] for outcome in outcomes}
    if Outcome.UNREACHED in outcomes:
        labels.add(TIMEOUT_LABEL)
    return frozenset(labels)


#: Error codes providers send with a 429 when the account, not the moment, is the limit.
QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active",
                         "credit_balance_too_low", "quota_exceeded", "insufficient_credits"})
_UNREACHED_ERRORS = ("timeout", "timedout", "connect", "network", "unreachable", "refused", "reset")


def http_status(value: object) -> int | None:
    """``value`` as an HTTP status code: an int as it is, an integral float or a string of
    digits (``500.0``, ``"503"``: what loosely typed clients hand over) as its int, else None."""
    if type(value) is int:
        return value
    if isinstance(value, float) and value.is_integer() and 100 <= value < 1000:
        return int(value)
    if isinstance(value, str) and len(value.strip()) == 3 and value.strip().isdigit():
        return int(value)
    return None


def classify(status_code: int | None, error: BaseException | str | None, error_code: str | None) -> Outcome:
    if type(status_code) is not int:
        status_code = http_status(status_code)
    if status_code is not None:
        if status_code == 429 or status_code == 529:  # 529: Anthropic's "overloaded"
            return Outcome.QUOTA if _is_quota(error_code) else Outcome.THROTTLED
        if status_code in (401, 403):
            return Outcome.CREDENTIAL
        if status_code == 404:
            return Outcome.NOT_FOUND
        if status_code in _UNREACHED_CODES:
            return Outcome.UNREACHED
        if status_code >= 500:
            return Outcome.FAILURE
        if status_code >= 400:
            return Outcome.CLIENT_ERROR
        if error is None:
            return Outcome.SUCCESS
    if error is None:
        return Outcome.SUCCESS
    name = (error if isinstance(error, str) else type(error).__name__).lower()
    if name in _OUTCOME_OF_LABEL:
        return _OUTCOME_OF_LABEL[name]
    if name in ("cancellederror", "cancelled", "generatorexit"):
        return Outcome.CANCELLED
    if "overloaded" in name or "ratelimit" in name or "rate_limit" in name:
        return Outcome.QUOTA if _is_quota(error_code) else Outcome.THROTTLED
    if any(word in name for word in _UNREACHED_ERRORS):
        return Outcome.UNREACHED
    return Outcome.FAILURE


def _is_quota(error_code: str | None) -> bool:
    return isinstance(error_code, str) and (error_code.lower() in QUOTA_CODES or "billing" in error_code.lower())


# --- rate-limit hints ----------------------------------------------------------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


#: A hint past a day is no rate limit we can honour (the cooldown is capped far below it).
_LONGEST_HINT_S = 86_400.0


def _seconds(value: float) -> float | None:
    """A usable wait: finite, not negative, at most a day; None otherwise."""
    return value if 0.0 <= value <= _LONGEST_HINT_S else None  # NaN fails both comparisons


def parse_duration(text: str) -> float | None:
    """OpenAI's reset format (``1s``, ``6m0s``, ``20ms``, ``1h2m``) or plain seconds;
    None for anything else, and for NaN, negative or absurdly long waits."""
    text = text.strip().lower()
    try:
        return _seconds(float(text))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        return None
    return _seconds(sum(float(number) * _UNIT_S[unit] for number, unit in parts))


def retry_hint(
    headers: Mapping[str, str] | None, retry_after_s: float | None, now_wall: float
) -> tuple[float, str] | None:
    """The longest usable wait the provider asked for, in seconds, and which hint said so.
    A hint that cannot be read (NaN, negative, huge, garbage) is skipped, never the rest."""
    hints: list[tuple[float, str]] = []
    if isinstance(retry_after_s, int | float) and not isinstance(retry_after_s, bool):
        if (seconds := _seconds(float(retry_after_s))) is not None:
            hints.append((seconds, "Retry-After"))
    lowered = {str(k).lower(): str(v) for k, v in (headers or {}).items()}
    if "retry-after" in lowered:
        value = lowered["retry-after"].strip()
        seconds = parse_duration(value)
        if seconds is None:
            try:
                seconds = _seconds(email.utils.parsedate_to_datetime(value).timestamp() - now_wall)
            except (TypeError, ValueError, IndexError, OverflowError):
                seconds = None
        if seconds is not None:
            hints.append((seconds, "Retry-After"))
    if "retry-after-ms" in lowered:
        try:
            seconds = _seconds(float(lowered["retry-after-ms"]) / 1000.0)
        except ValueError:
            seconds = None
        if seconds is not None:
            hints.append((seconds, "retry-after-ms"))
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        if name in lowered:
            seconds = parse_duration(lowered[name])
            if seconds is not None:
                hints.append((seconds, name))
    return max(hints) if hints else None
