"""What an upstream call's result means for the provider's health, decided in one place."""

from __future__ import annotations

import email.utils
import re
from collections.abc import Mapping
from enum import StrEnum


class Outcome(StrEnum):
    SUCCESS = "success"  # includes the caller's own 4xx: the provider did its job
    FAILURE = "failure"  # 5xx, a stream broken after its first token, an unexpected error
    UNREACHED = "unreached"  # timeout, connection error, 408/502/503/504: failed, not reached
    THROTTLED = "throttled"  # 429 or "overloaded": not an error, a cooldown
    QUOTA = "quota"  # 429 with quota or credit exhausted: out for longer
    CREDENTIAL = "credential"  # 401/403: our key, not the provider's health
    NOT_FOUND = "not_found"  # 404: a missing model, not the provider's health
    CANCELLED = "cancelled"  # our side gave up (client gone, task cancelled): no verdict


#: Error codes providers send with a 429 when the account, not the moment, is the limit.
QUOTA_CODES = frozenset({"insufficient_quota", "billing_hard_limit_reached", "billing_not_active",
                         "credit_balance_too_low", "quota_exceeded", "insufficient_credits"})
_UNREACHED_ERRORS = ("timeout", "timedout", "connect", "network", "unreachable", "refused", "reset")


def classify(status_code: int | None, error: BaseException | str | None, error_code: str | None) -> Outcome:
    if status_code is not None and not isinstance(status_code, bool) and isinstance(status_code, int):
        if status_code == 429 or status_code == 529:  # 529: Anthropic's "overloaded"
            return Outcome.QUOTA if _is_quota(error_code) else Outcome.THROTTLED
        if status_code in (401, 403):
            return Outcome.CREDENTIAL
        if status_code == 404:
            return Outcome.NOT_FOUND
        if status_code in (408, 502, 503, 504):  # timed out, or its front could not reach it
            return Outcome.UNREACHED
        if status_code >= 500:
            return Outcome.FAILURE
        if status_code >= 400 or error is None:
            return Outcome.SUCCESS
    if error is None:
        return Outcome.SUCCESS
    name = (error if isinstance(error, str) else type(error).__name__).lower()
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
    if isinstance(retry_after_s, int | float) and not isinstance(retry_after_s, bool) and (seconds := _seconds(float(retry_after_s))) is not None:
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
