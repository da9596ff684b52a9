"""The outcome taxonomy (SPEC sections 2 and 5), rule by rule: how a call's status code,
exception and error code classify, which ``status`` label each outcome records as, how
loosely typed status codes are read, and how rate-limit hints are parsed and weighed.

Expected values are read off the contract: "failed = 5xx, timeout, connection error", "a
429 is not an error", "other 4xx are the caller's fault", the status labels of reference/002
plus timeout and unknown, and the hint formats OpenAI and Anthropic send.
"""

from __future__ import annotations

import asyncio
import email.utils
import math

import pytest

from app.scoring import Outcome, classify, parse_duration, retry_hint
from app.scoring.outcome import (
    CALLER_FAULTS,
    ERRORS,
    QUOTA_CODES,
    SCORED,
    STATUS_LABELS,
    THROTTLES,
    http_status,
    status_label,
    status_labels,
)

NOW_WALL = 1_700_000_000.0  # 2023-11-14 22:13:20 UTC


# --- the sets every error rate derives from --------------------------------------------------


def test_errors_are_failed_and_unreached_calls_only() -> None:
    assert ERRORS == {Outcome.FAILURE, Outcome.UNREACHED}


def test_the_callers_faults_are_4xx_but_429() -> None:
    assert CALLER_FAULTS == {Outcome.CLIENT_ERROR, Outcome.CREDENTIAL, Outcome.NOT_FOUND}


def test_throttles_are_the_rate_limit_and_the_quota() -> None:
    assert THROTTLES == {Outcome.THROTTLED, Outcome.QUOTA}


def test_the_score_counts_answers_and_failures_but_no_throttle_credential_or_cancel() -> None:
    assert SCORED == {Outcome.SUCCESS, Outcome.CLIENT_ERROR, Outcome.FAILURE, Outcome.UNREACHED}


# --- status codes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status_code", "outcome"),
    [
        (100, Outcome.SUCCESS), (200, Outcome.SUCCESS), (204, Outcome.SUCCESS), (304, Outcome.SUCCESS),
        (399, Outcome.SUCCESS),
        (400, Outcome.CLIENT_ERROR), (402, Outcome.CLIENT_ERROR), (405, Outcome.CLIENT_ERROR),
        (499, Outcome.CLIENT_ERROR),
        (401, Outcome.CREDENTIAL), (403, Outcome.CREDENTIAL),
        (404, Outcome.NOT_FOUND),
        (408, Outcome.UNREACHED), (502, Outcome.UNREACHED), (503, Outcome.UNREACHED), (504, Outcome.UNREACHED),
        (500, Outcome.FAILURE), (505, Outcome.FAILURE), (520, Outcome.FAILURE), (599, Outcome.FAILURE),
        (429, Outcome.THROTTLED), (529, Outcome.THROTTLED),
    ],
)
def test_status_code_alone_classifies(status_code: int, outcome: Outcome) -> None:
    assert classify(status_code, None, None) is outcome


@pytest.mark.parametrize(("status_code", "outcome"),
                         [("503", Outcome.UNREACHED), (" 500 ", Outcome.FAILURE), (429.0, Outcome.THROTTLED),
                          (404.0, Outcome.NOT_FOUND), ("200", Outcome.SUCCESS)])
def test_a_loosely_typed_status_code_classifies_as_its_number(status_code: object, outcome: Outcome) -> None:
    assert classify(status_code, None, None) is outcome  # type: ignore[arg-type]


def test_an_unreadable_status_code_leaves_the_error_to_decide() -> None:
    assert classify("oops", None, None) is Outcome.SUCCESS  # type: ignore[arg-type]
    assert classify("oops", "ReadTimeout", None) is Outcome.UNREACHED  # type: ignore[arg-type]


def test_a_success_code_with_an_error_is_judged_by_the_error() -> None:
    # A 200 whose stream broke, or whose connection dropped mid-body.
    assert classify(200, "stream_broken", None) is Outcome.FAILURE
    assert classify(200, "ConnectionResetError", None) is Outcome.UNREACHED
    assert classify(200, asyncio.CancelledError(), None) is Outcome.CANCELLED


def test_an_error_status_code_wins_over_the_error_text() -> None:
    assert classify(500, "ReadTimeout", None) is Outcome.FAILURE
    assert classify(400, "ReadTimeout", None) is Outcome.CLIENT_ERROR
    assert classify(503, "stream_broken", None) is Outcome.UNREACHED


# --- http_status ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [(503, 503), (7, 7), (500.0, 500), (100.0, 100), (999.0, 999), ("503", 503), (" 429 ", 429), ("200\n", 200)],
)
def test_http_status_reads_ints_integral_floats_and_three_digits(value: object, expected: int) -> None:
    result = http_status(value)

    assert result == expected
    assert type(result) is int


@pytest.mark.parametrize(
    "value",
    [None, True, 99.0, 1000.0, 500.5, math.nan, math.inf, "50", "5000", "5o3", "", "   ", "+50", b"503", [503]],
)
def test_http_status_refuses_what_is_no_status_code(value: object) -> None:
    assert http_status(value) is None


# --- exceptions and error texts ---------------------------------------------------------------


class ConnectError(Exception):
    pass


class NetworkError(Exception):
    pass


class HostUnreachable(Exception):
    pass


class ConnectionRefused(Exception):
    pass


class PeerReset(Exception):
    pass


class RequestTimedOut(Exception):
    pass


class Overloaded(Exception):
    pass


@pytest.mark.parametrize(
    "error",
    [TimeoutError(), "ReadTimeout", "timeout", RequestTimedOut(), "timedout", ConnectError(), "connect",
     NetworkError(), "network", HostUnreachable(), "unreachable", ConnectionRefused(), "refused", PeerReset(),
     "reset", "service_unavailable", "SERVICE_UNAVAILABLE"],
)
def test_a_call_that_never_reached_the_provider_is_unreached(error: BaseException | str) -> None:
    assert classify(None, error, None) is Outcome.UNREACHED


@pytest.mark.parametrize(
    ("error", "outcome"),
    [("server_error", Outcome.FAILURE), ("invalid_request_error", Outcome.CLIENT_ERROR),
     ("authentication_error", Outcome.CREDENTIAL), ("not_found_error", Outcome.NOT_FOUND),
     ("Not_Found_Error", Outcome.NOT_FOUND), ("service_unavailable", Outcome.UNREACHED)],
)
def test_a_status_label_passed_as_the_error_names_its_own_outcome(error: str, outcome: Outcome) -> None:
    assert classify(None, error, None) is outcome


@pytest.mark.parametrize("error", ["success", "unknown"])
def test_labels_of_no_failure_are_not_read_as_their_outcome(error: str) -> None:
    # "success" or "unknown" passed as an *error* is an unexpected error, not a success or a cancel.
    assert classify(None, error, None) is Outcome.FAILURE


@pytest.mark.parametrize("error", [asyncio.CancelledError(), "CancelledError", "cancelled", "Cancelled",
                                   GeneratorExit()])
def test_our_side_giving_up_is_cancelled(error: BaseException | str) -> None:
    assert classify(None, error, None) is Outcome.CANCELLED


@pytest.mark.parametrize("error", ["cancelled by user", "not cancelled", "generator"])
def test_only_the_exact_cancel_names_are_cancelled(error: str) -> None:
    assert classify(None, error, None) is Outcome.FAILURE


@pytest.mark.parametrize("error", [Overloaded(), "overloaded_error", "RateLimitError", "rate_limit_error",
                                   "RATE_LIMIT"])
def test_rate_limit_and_overloaded_errors_throttle(error: BaseException | str) -> None:
    assert classify(None, error, None) is Outcome.THROTTLED


@pytest.mark.parametrize("error", [ValueError("bad"), RuntimeError(), KeyError("x"), "stream_broken", "boom"])
def test_any_other_error_is_a_failure(error: BaseException | str) -> None:
    assert classify(None, error, None) is Outcome.FAILURE


# --- quota ------------------------------------------------------------------------------------


@pytest.mark.parametrize("error_code", sorted(QUOTA_CODES))
def test_every_quota_code_makes_a_429_a_quota_error(error_code: str) -> None:
    assert classify(429, None, error_code) is Outcome.QUOTA
    assert classify(429, None, error_code.upper()) is Outcome.QUOTA


def test_the_quota_codes_are_the_providers_account_limits() -> None:
    assert QUOTA_CODES == {"insufficient_quota", "billing_hard_limit_reached", "billing_not_active",
                           "credit_balance_too_low", "quota_exceeded", "insufficient_credits"}


@pytest.mark.parametrize("error_code", ["billing_cycle_ended", "account_Billing_issue", "BILLING"])
def test_any_billing_code_is_a_quota_error(error_code: str) -> None:
    assert classify(429, None, error_code) is Outcome.QUOTA
    assert classify(529, None, error_code) is Outcome.QUOTA
    assert classify(None, "RateLimitError", error_code) is Outcome.QUOTA


@pytest.mark.parametrize("error_code", [None, "", "rate_limit_exceeded", "tokens", "quota"])
def test_other_codes_leave_a_429_a_burst(error_code: str | None) -> None:
    assert classify(429, None, error_code) is Outcome.THROTTLED
    assert classify(None, "overloaded", error_code) is Outcome.THROTTLED


def test_a_quota_code_does_not_make_a_non_429_a_quota_error() -> None:
    assert classify(500, None, "insufficient_quota") is Outcome.FAILURE
    assert classify(200, None, "insufficient_quota") is Outcome.SUCCESS


# --- status labels ----------------------------------------------------------------------------


def test_every_outcome_has_a_status_label_of_reference_002() -> None:
    assert STATUS_LABELS == {
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


@pytest.mark.parametrize(
    ("status_code", "error", "label"),
    [(408, None, "timeout"), (504, None, "timeout"), (None, "ReadTimeout", "timeout"),
     (None, TimeoutError(), "timeout"),
     (None, "Request TimedOut", "timeout"), (None, RequestTimedOut(), "timeout"), (502, None, "service_unavailable"),
     (503, None, "service_unavailable"), (None, ConnectError(), "service_unavailable"),
     (None, "connect", "service_unavailable"), (None, None, "service_unavailable"),
     (503, "ReadTimeout", "timeout")],
)
def test_an_unreached_call_that_timed_out_records_as_timeout(
    status_code: int | None, error: BaseException | str | None, label: str
) -> None:
    assert status_label(Outcome.UNREACHED, status_code, error) == label


@pytest.mark.parametrize("outcome", [o for o in Outcome if o is not Outcome.UNREACHED])
def test_only_unreached_calls_record_as_timeout(outcome: Outcome) -> None:
    assert status_label(outcome, 504, "ReadTimeout") == STATUS_LABELS[outcome]
    assert status_label(outcome) == STATUS_LABELS[outcome]


@pytest.mark.parametrize(
    ("outcomes", "labels"),
    [({Outcome.FAILURE, Outcome.UNREACHED}, {"server_error", "service_unavailable", "timeout"}),
     ({Outcome.UNREACHED}, {"service_unavailable", "timeout"}),
     ({Outcome.FAILURE}, {"server_error"}),
     ({Outcome.THROTTLED, Outcome.QUOTA}, {"rate_limit_error"}),
     ({Outcome.SUCCESS, Outcome.CANCELLED}, {"success", "unknown"}),
     (set(), set())],
)
def test_status_labels_of_a_set_of_outcomes(outcomes: set[Outcome], labels: set[str]) -> None:
    result = status_labels(iter(outcomes))  # any iterable, read once

    assert result == labels
    assert isinstance(result, frozenset)


# --- rate-limit hints -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("0", 0.0), ("0s", 0.0), ("0.5", 0.5), ("1s", 1.0), ("1S", 1.0), ("20ms", 0.02), ("1.5m", 90.0),
     ("1h", 3600.0), ("2h", 7200.0), ("1h1m1s", 3661.0), ("1m500ms", 60.5), ("24h", 86_400.0),
     ("86400", 86_400.0), (" 3s ", 3.0)],
)
def test_parse_duration_reads_each_unit(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["86400.5", "86401", "25h", "1441m", "-0.5", "1h 2m", "1s2", "2d", "m", "1.s",
                                  "ms5", "1s!", "x1s"])
def test_parse_duration_refuses_over_a_day_negative_and_malformed(text: str) -> None:
    assert parse_duration(text) is None


def _date(offset_s: float) -> str:
    return email.utils.formatdate(NOW_WALL + offset_s, usegmt=True)


@pytest.mark.parametrize(
    ("headers", "retry_after_s", "hint"),
    [
        (None, None, None),
        ({}, None, None),
        (None, 3, (3.0, "Retry-After")),
        (None, 0.5, (0.5, "Retry-After")),
        (None, 0, (0.0, "Retry-After")),
        ({"Retry-After": "7"}, None, (7.0, "Retry-After")),
        ({"RETRY-AFTER": " 7 "}, None, (7.0, "Retry-After")),
        ({"retry-after": _date(30)}, None, (30.0, "Retry-After")),
        ({"retry-after-ms": "1500"}, None, (1.5, "retry-after-ms")),
        ({"Retry-After-Ms": "250"}, None, (0.25, "retry-after-ms")),
        ({"x-ratelimit-reset-requests": "6m0s"}, None, (360.0, "x-ratelimit-reset-requests")),
        ({"x-ratelimit-reset-tokens": "20ms"}, None, (0.02, "x-ratelimit-reset-tokens")),
        ({"x-ratelimit-reset-tokens": "2"}, None, (2.0, "x-ratelimit-reset-tokens")),
        ({"retry-after": "2", "retry-after-ms": "5000"}, 3, (5.0, "retry-after-ms")),
        ({"retry-after": "9", "x-ratelimit-reset-requests": "8s"}, 1, (9.0, "Retry-After")),
        ({"retry-after": "1", "x-ratelimit-reset-requests": "1s", "x-ratelimit-reset-tokens": "1m"}, None,
         (60.0, "x-ratelimit-reset-tokens")),
        (None, 40, (40.0, "Retry-After")),
        ({"retry-after": "4"}, 40.0, (40.0, "Retry-After")),
        ({"other": "99"}, None, None),
    ],
)
def test_retry_hint_is_the_longest_usable_wait_and_its_source(
    headers: dict[str, str] | None, retry_after_s: float | None, hint: tuple[float, str] | None
) -> None:
    result = retry_hint(headers, retry_after_s, NOW_WALL)

    if hint is None:
        assert result is None
    else:
        assert result is not None
        assert result[0] == pytest.approx(hint[0], abs=1e-9)
        assert result[1] == hint[1]


@pytest.mark.parametrize("retry_after_s", [True, False, math.nan, -1.0, math.inf, 86_400.5, "7"])
def test_an_unusable_retry_after_argument_gives_no_hint(retry_after_s: object) -> None:
    assert retry_hint(None, retry_after_s, NOW_WALL) is None  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "headers",
    [{"retry-after": _date(-30)}, {"retry-after": "Mon, 99 Foo 2023"}, {"retry-after": "soon"},
     {"retry-after": ""}, {"retry-after": _date(86_400 + 60)}, {"retry-after-ms": "soon"},
     {"retry-after-ms": "-5"}, {"retry-after-ms": "nan"}, {"retry-after-ms": "86400001"},
     {"x-ratelimit-reset-requests": "never"}, {"x-ratelimit-reset-tokens": "-1s"}],
)
def test_an_unusable_header_gives_no_hint(headers: dict[str, str]) -> None:
    assert retry_hint(headers, None, NOW_WALL) is None


def test_retry_after_ms_up_to_a_day_is_usable() -> None:
    assert retry_hint({"retry-after-ms": "86400000"}, None, NOW_WALL) == (86_400.0, "retry-after-ms")


def test_an_http_date_is_read_against_the_given_wall_clock() -> None:
    date = _date(120)

    hint_now = retry_hint({"retry-after": date}, None, NOW_WALL)
    hint_later = retry_hint({"retry-after": date}, None, NOW_WALL + 100)

    assert hint_now is not None and hint_now[0] == pytest.approx(120.0)
    assert hint_later is not None and hint_later[0] == pytest.approx(20.0)


def test_an_unusable_hint_is_skipped_never_the_others() -> None:
    headers = {"retry-after": "soon", "retry-after-ms": "nan", "x-ratelimit-reset-requests": "bad",
               "x-ratelimit-reset-tokens": "4s"}

    assert retry_hint(headers, math.nan, NOW_WALL) == (4.0, "x-ratelimit-reset-tokens")


def test_header_names_and_values_of_any_type_are_read_as_text() -> None:
    assert retry_hint({"Retry-After": 12}, None, NOW_WALL) == (12.0, "Retry-After")  # type: ignore[dict-item]
