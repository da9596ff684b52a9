"""Outcomes as one tracker tells them to the others: what every process replays.

Each process of a fleet keeps its own :class:`~app.scoring.tracker.HealthTracker` (the
hot path never waits for another process), and tells the others every outcome it
records: a call's result, a probe's, a ``Retry-After`` deadline. Every tracker replays the
others' outcomes through the same rules as its own (``HealthTracker.apply``), so all of
them reach the same verdicts: a trip, a cooldown or a recovery seen by one is seen by all,
as soon as its outcome arrives (``app.scoring.sharing`` carries them).

Times are on the host's monotonic clock (``time.monotonic`` is system-wide on Linux), so
processes of one host compare them as they are; a batch that crosses hosts carries its
sender's wall-minus-monotonic offset, and :func:`shifted` moves its times onto the
receiver's clock.

The binary form is length-prefixed and versioned; :func:`decode` refuses what it cannot
read (:class:`EventFormatError`) rather than replaying garbage.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from typing import NamedTuple

#: The kinds of outcome.
CALL, PROBE = 0, 1
#: The ``outcome`` of a CALL that announces a trial or retrial call as it is sent, before its
#: verdict: the other processes hold off theirs meanwhile. A CALL, so that readers which
#: predate it skip it as an outcome they do not know rather than the batch that holds it.
GRANTED = "granted"
#: The ``outcome`` of a CALL that tells the others a trial call announced earlier ended
#: without a verdict in its process (its permit voided: overtaken by a probe, or its
#: half-open period over): their hold on it is over. Its verdict, if any, goes as a call's.
VOIDED = "voided"

#: Bumped whenever the layout changes: a reader skips batches of another version.
VERSION = 1
#: kind, trial, at, issued, duration_s, latency_s, throttled_until, quota_until, then the
#: lengths of the five strings (provider, outcome, what, throttle_source, quota_reason).
_FIXED = struct.Struct("<BB6d5H")
#: Longest string kept: label values are cut at 200 characters, reasons are a few words.
MAX_TEXT = 400


class EventFormatError(ValueError):
    """Bytes that are not outcomes of this version."""


class SharedOutcome(NamedTuple):
    """One outcome, as recorded by the tracker that saw it."""

    kind: int  # CALL or PROBE
    provider: str
    outcome: str  # an Outcome value (or GRANTED, VOIDED) for a call; "success" or "unreached" for a probe
    at: float  # when it was recorded
    issued: float  # when the call was admitted, or the probe sent
    trial: bool = False  # a half-open trial call's verdict
    duration_s: float = 0.0
    latency_s: float = 0.0  # time to first token when streamed, else the duration
    what: str = ""  # a failure in a few words (the reason of a trip it may cause)
    throttled_until: float = -math.inf  # a throttled call's cooldown deadline
    throttle_source: str = ""
    quota_until: float = -math.inf  # a quota error's deadline
    quota_reason: str = ""


def _text(value: str) -> bytes:
    return value[:MAX_TEXT].encode("utf-8", "replace")


def encode(outcomes: list[SharedOutcome]) -> bytes:
    """``outcomes`` as one batch: version, count, then each outcome."""
    parts = [struct.pack("<BI", VERSION, len(outcomes))]
    for item in outcomes:
        texts = [_text(item.provider), _text(item.outcome), _text(item.what), _text(item.throttle_source),
                 _text(item.quota_reason)]
        parts.append(_FIXED.pack(item.kind, item.trial, item.at, item.issued, item.duration_s, item.latency_s,
                                 item.throttled_until, item.quota_until, *map(len, texts)))
        parts.extend(texts)
    return b"".join(parts)


def decode(data: bytes) -> list[SharedOutcome]:
    """The outcomes of one batch made by :func:`encode`."""
    try:
        version, count = struct.unpack_from("<BI", data, 0)
        if version != VERSION:
            raise EventFormatError(f"outcomes of version {version}, this reader knows {VERSION}")
        return list(_decoded(data, 5, count))
    except (struct.error, UnicodeDecodeError, ValueError, IndexError) as error:
        if isinstance(error, EventFormatError):
            raise
        raise EventFormatError(f"unreadable outcomes: {error}") from error


def _decoded(data: bytes, position: int, count: int) -> Iterator[SharedOutcome]:
    for _ in range(count):
        kind, trial, at, issued, duration, latency, throttled, quota, *lengths = _FIXED.unpack_from(data, position)
        position += _FIXED.size
        texts = []
        for length in lengths:
            end = position + length
            if end > len(data):
                raise EventFormatError("a batch cut short")
            texts.append(data[position:end].decode("utf-8"))
            position = end
        if kind not in (CALL, PROBE) or not texts[0]:
            raise EventFormatError(f"an outcome of unknown kind {kind} or without a provider")
        if not all(math.isfinite(value) for value in (at, issued, duration)):
            raise EventFormatError("an outcome whose times are not finite")
        provider, outcome, what, throttle_source, quota_reason = texts
        yield SharedOutcome(kind, provider, outcome, at, issued, bool(trial), duration, latency, what,
                            throttled, throttle_source, quota, quota_reason)
    if position != len(data):
        raise EventFormatError("bytes after the last outcome")


def shifted(outcomes: list[SharedOutcome], offset_s: float) -> list[SharedOutcome]:
    """``outcomes`` with their times moved by ``offset_s`` (another host's monotonic clock
    onto this one's: the difference of the two hosts' wall-minus-monotonic offsets)."""
    if offset_s == 0.0:
        return outcomes
    return [
        item._replace(at=item.at + offset_s, issued=item.issued + offset_s,
                      throttled_until=item.throttled_until + offset_s, quota_until=item.quota_until + offset_s)
        for item in outcomes
    ]
