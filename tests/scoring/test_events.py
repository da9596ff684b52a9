"""The shared-outcome encoding (app.scoring.events): what one tracker tells the others.

The contract of the module: a batch is version, count, then each outcome; decoding gives
back exactly what was encoded (texts cut at MAX_TEXT characters); anything else (another
version, a cut batch, trailing bytes, an unknown kind, no provider, times that are not
finite, bytes that are not UTF-8) is refused with EventFormatError, never replayed.
"""

from __future__ import annotations

import math
import struct

import pytest

from app.scoring.events import (
    CALL,
    MAX_TEXT,
    PROBE,
    VERSION,
    EventFormatError,
    SharedOutcome,
    decode,
    encode,
    shifted,
)

#: Header: version (u8), count (u32). Each outcome: kind, trial (u8 each), six doubles, five
#: u16 string lengths = 2 + 48 + 10 = 60 bytes, then the strings.
HEADER = 5
FIXED = 60


def _call(**changes: object) -> SharedOutcome:
    item = SharedOutcome(CALL, "openrouter", "failure", 1000.5, 999.25, True, 1.5, 0.25, "server_error 500",
                         1010.0, "Retry-After", 1600.0, "quota exhausted (insufficient_quota)")
    return item._replace(**changes)


def test_the_kinds_and_the_version() -> None:
    assert (CALL, PROBE, VERSION) == (0, 1, 1)
    assert MAX_TEXT == 400


def test_an_empty_batch_is_its_version_and_a_zero_count() -> None:
    assert encode([]) == b"\x01\x00\x00\x00\x00"
    assert decode(b"\x01\x00\x00\x00\x00") == []


def test_a_batch_is_version_count_then_each_outcome_with_its_texts() -> None:
    item = _call(provider="p", outcome="success", what="", throttle_source="", quota_reason="")

    data = encode([item, item])

    assert data[:HEADER] == struct.pack("<BI", 1, 2)
    assert len(data) == HEADER + 2 * (FIXED + len("p") + len("success"))


def test_outcomes_round_trip_field_for_field() -> None:
    items = [
        _call(),
        SharedOutcome(PROBE, "anthropic", "unreached", 5.0, 4.5),
        _call(trial=False, throttled_until=-math.inf, quota_until=-math.inf, latency_s=math.inf, what="ünïcode ✓"),
    ]

    decoded = decode(encode(items))

    assert decoded == items
    assert decoded[0].trial is True and decoded[2].trial is False


def test_defaults_of_an_outcome_mean_no_deadline_and_no_verdict_words() -> None:
    item = SharedOutcome(PROBE, "p", "success", 1.0, 0.5)

    assert (item.trial, item.duration_s, item.latency_s, item.what) == (False, 0.0, 0.0, "")
    assert (item.throttled_until, item.throttle_source) == (-math.inf, "")
    assert (item.quota_until, item.quota_reason) == (-math.inf, "")


def test_texts_are_cut_at_max_text_characters() -> None:
    long = "x" * (MAX_TEXT + 50)
    item = _call(provider=long, outcome=long, what=long, throttle_source=long, quota_reason=long)

    (decoded,) = decode(encode([item]))

    cut = "x" * MAX_TEXT
    assert decoded == item._replace(provider=cut, outcome=cut, what=cut, throttle_source=cut, quota_reason=cut)


def test_a_text_of_exactly_max_text_characters_is_kept_whole() -> None:
    (decoded,) = decode(encode([_call(what="y" * MAX_TEXT)]))

    assert decoded.what == "y" * MAX_TEXT


def test_a_text_that_cannot_be_encoded_is_replaced_not_refused() -> None:
    (decoded,) = decode(encode([_call(what="bad \udcff surrogate")]))

    assert decoded.what == "bad ? surrogate"


# --- what decode refuses -----------------------------------------------------------------------


def _patched(data: bytes, offset: int, fmt: str, value: object) -> bytes:
    patched = bytearray(data)
    struct.pack_into(fmt, patched, offset, value)
    return bytes(patched)


@pytest.mark.parametrize("version", [0, 2, 255])
def test_another_version_is_refused_naming_both_versions(version: int) -> None:
    data = _patched(encode([_call()]), 0, "<B", version)

    with pytest.raises(EventFormatError, match=f"^outcomes of version {version}, this reader knows 1$"):
        decode(data)


@pytest.mark.parametrize("data", [b"", b"\x01", b"\x01\x00\x00\x00"])
def test_a_header_cut_short_is_refused(data: bytes) -> None:
    with pytest.raises(EventFormatError, match="^unreadable outcomes: "):
        decode(data)


def test_a_batch_cut_anywhere_is_refused() -> None:
    data = encode([_call(), _call(provider="other")])

    for end in range(HEADER + 1, len(data)):
        with pytest.raises(EventFormatError):
            decode(data[:end])


def test_a_batch_cut_inside_a_text_says_so() -> None:
    data = encode([_call()])

    with pytest.raises(EventFormatError, match="^a batch cut short$"):
        decode(data[:-1])


def test_a_count_larger_than_the_outcomes_is_refused() -> None:
    data = _patched(encode([_call()]), 1, "<I", 2)

    with pytest.raises(EventFormatError):
        decode(data)


@pytest.mark.parametrize("extra", [b"\x00", b"garbage"])
def test_bytes_after_the_last_outcome_are_refused(extra: bytes) -> None:
    with pytest.raises(EventFormatError, match="^bytes after the last outcome$"):
        decode(encode([_call()]) + extra)


def test_a_count_smaller_than_the_outcomes_is_refused() -> None:
    data = _patched(encode([_call(), _call()]), 1, "<I", 1)

    with pytest.raises(EventFormatError, match="^bytes after the last outcome$"):
        decode(data)


@pytest.mark.parametrize("kind", [2, 3, 255])
def test_an_unknown_kind_is_refused(kind: int) -> None:
    data = _patched(encode([_call()]), HEADER, "<B", kind)

    with pytest.raises(EventFormatError, match=f"^an outcome of unknown kind {kind} or without a provider$"):
        decode(data)


def test_an_outcome_without_a_provider_is_refused() -> None:
    with pytest.raises(EventFormatError, match=f"^an outcome of unknown kind {CALL} or without a provider$"):
        decode(encode([_call(provider="")]))


@pytest.mark.parametrize("field", ["at", "issued", "duration_s"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_times_that_are_not_finite_are_refused(field: str, value: float) -> None:
    with pytest.raises(EventFormatError, match="^an outcome whose times are not finite$"):
        decode(encode([_call(**{field: value})]))


def test_a_text_that_is_not_utf8_is_refused() -> None:
    data = bytearray(encode([_call(provider="pp")]))
    start = HEADER + FIXED
    data[start:start + 2] = b"\xff\xfe"

    with pytest.raises(EventFormatError, match="^unreadable outcomes: "):
        decode(bytes(data))


def test_event_format_error_is_a_value_error() -> None:
    assert issubclass(EventFormatError, ValueError)


# --- shifted ------------------------------------------------------------------------------------


def test_shifted_by_zero_is_the_same_list() -> None:
    items = [_call()]

    assert shifted(items, 0.0) is items


def test_shifted_moves_every_time_and_no_duration() -> None:
    (moved,) = shifted([_call()], 100.0)

    assert (moved.at, moved.issued, moved.throttled_until, moved.quota_until) == (1100.5, 1099.25, 1110.0, 1700.0)
    assert (moved.duration_s, moved.latency_s) == (1.5, 0.25)
    assert moved[1:3] == ("openrouter", "failure")


def test_shifted_back_keeps_no_deadline_as_no_deadline() -> None:
    (moved,) = shifted([SharedOutcome(PROBE, "p", "success", 50.0, 49.0)], -10.0)

    assert (moved.at, moved.issued) == (40.0, 39.0)
    assert moved.throttled_until == -math.inf and moved.quota_until == -math.inf
