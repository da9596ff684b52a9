"""Outcomes shared between replicas through Redis (``GATEWAY_METRICS_REDIS_URL``).

Called only by the background thread of ``app.scoring.sharing`` (every ``interval_s``),
never on a call's path: ``publish`` hands this host's new outcomes to Redis and
``receive`` brings back the other hosts', each in one pipelined round trip.

Key layout (all under ``prefix``, so two gateways can share one Redis):

- ``{prefix}:outcomes:{host_id}``: a stream per host. Each entry is one batch of a
  process of that host: ``outcomes`` (``events.encode``), ``offset`` (the sender's
  ``time.time() - time.monotonic()``, to move its times onto the reader's clock),
  ``sender`` and ``seq`` (a token per channel and its batch number: a batch read twice,
  after a restart of Redis or a reset of the cursors, is applied once). Trimmed to about
  ``STREAM_MAXLEN`` entries, expires ``KEY_TTL_S`` after its host's last batch.
- ``{prefix}:hosts``: a sorted set of the hosts that published, scored by wall time:
  readers find the streams without SCAN. Members older than ``KEY_TTL_S`` are removed by
  every publisher; the key expires ``KEY_TTL_S`` after the last one.
- ``{prefix}:epoch``: a random token set by the first publisher after it is missing. A
  reader that sees it change (Redis restarted empty, or failed over to another server
  whose stream ids may be behind) reads every stream again from ``horizon_s`` ago.

The workers of one host share one stream (they learn each other's outcomes from their
files, ``app.scoring.sharing``), so a reader skips its own host's stream.

Failures: socket timeouts are short and redis-py retries nothing, so a call returns or
raises within about ``socket_timeout_s`` (twice that when a connection must be made, or a
new host's stream read); the thread counts what is raised, the tracker goes on deciding
alone, and the next call reconnects. Entries that are not batches of this format are
skipped and counted in ``garbage``.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from app.scoring.events import EventFormatError, SharedOutcome, decode, encode, shifted

#: A stream keeps about this many batches (trimmed approximately, in whole nodes, which
#: costs Redis nothing): at two batches a second per worker, minutes of history, far more
#: than ``horizon_s``.
STREAM_MAXLEN = 10_000
#: Every key expires this long after its last write: a replica gone for good leaves nothing
#: behind. Twice the reader's horizon, so no live outcome is lost to an expiry.
KEY_TTL_S = 120
#: A host is live (its stream read) while it published within this many seconds.
LIVE_S = 60.0
#: An idle publisher still says it is alive this often (hosts set and epoch).
HEARTBEAT_S = 10.0
#: Batches read per stream per round: at most this many entries of one host come back at
#: once; more wait for the next round (a reader behind catches up, never stalls).
READ_COUNT = 200
#: Outcomes per stream entry: a burst is cut into entries of at most this many, so one
#: round's read stays bounded in bytes too.
BATCH_MAX = 1000
#: Batches kept for the next publish after a failed one (seconds of outcomes at the
#: thread's pace; a longer outage drops the oldest: they would be stale when they arrive).
PENDING_MAX = 20
#: Outcomes kept from a receive that failed half-way (the newest, if ever more).
HELD_MAX = 50_000
#: A sender not heard from for this long is forgotten (its batch numbers).
SENDER_MEMORY_S = 600.0


@dataclass(slots=True, frozen=True)
class _Entry:
    fields: dict[Any, Any]
    count: int  # outcomes in it


@dataclass(slots=True)
class _Sender:
    seq: int
    seen_at: float


class RedisChannel:
    """One replica's end of the outcomes shared through Redis (see the module's doc)."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "gateway-metrics",
        host_id: str | None = None,
        interval_s: float = 0.5,
        socket_timeout_s: float = 0.25,
        horizon_s: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if not prefix:
            raise ValueError("the Redis key prefix must not be empty")
        self.prefix = prefix
        self.host_id = host_id or socket.gethostname()
        self.interval_s = interval_s
        self.horizon_s = horizon_s
        self.clock = clock
        self.wall_clock = wall_clock
        self._redis = redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_s,
            socket_connect_timeout=socket_timeout_s,
            # No retries, no backoff: a Redis that is down costs one timeout, not seconds
            # (redis-py 6+ retries 3 to 10 times with backoff by default).
            retry=Retry(NoBackoff(), 0),
            # A connection idle this long is checked (PING) before use; the thread calls
            # every interval_s, so this only fires after a pause.
            health_check_interval=max(10, math.ceil(4 * interval_s)),
            decode_responses=False,
        )
        self._stream_prefix = f"{prefix}:outcomes:".encode()
        self._own_stream = self._stream_prefix + self.host_id.encode()
        self._hosts_key = f"{prefix}:hosts"
        self._epoch_key = f"{prefix}:epoch"
        #: This channel's batches are told from others' (and from an earlier run's) by it.
        self._sender = os.urandom(8).hex().encode()
        self._seq = 0
        self._last_heartbeat = -math.inf
        self._pending: list[_Entry] = []
        #: Outcomes read by a receive that failed half-way, returned by the next one.
        self._held: list[SharedOutcome] = []
        #: Stream key -> the last entry id read from it.
        self._cursors: dict[bytes, bytes] = {}
        self._senders: dict[bytes, _Sender] = {}
        self._epoch: bytes | None = None
        # Counters, for status.
        self.sent = 0  # outcomes published
        self.dropped = 0  # outcomes never published (Redis down too long, or a key of the wrong type)
        self.batches_sent = 0
        self.received = 0  # outcomes returned by receive
        self.batches_received = 0
        self.garbage = 0  # entries (or replies) skipped as unreadable
        self.duplicates = 0  # batches read again and skipped
        self.resets = 0  # times the cursors started over (the epoch changed)
        self.peers = 0  # other live hosts at the last receive
        #: The live hosts, sorted, this one included, as of the last receive (empty while
        #: Redis cannot be read): the hosts take turns at half-open trials by this list.
        self.hosts: tuple[str, ...] = ()

    # --- keys ---------------------------------------------------------------------------

    def stream_key(self, host_id: str) -> str:
        return (self._stream_prefix + host_id.encode()).decode()

    @property
    def keys(self) -> list[str]:
        """The keys this channel writes."""
        return [self._own_stream.decode(), self._hosts_key, self._epoch_key]

    # --- publishing ---------------------------------------------------------------------

    def publish(self, outcomes: list[SharedOutcome]) -> None:
        """Add ``outcomes`` to this host's stream, in one pipelined round trip. Nothing to
        publish: only a heartbeat every ``HEARTBEAT_S`` (this host stays listed).

        Batches a failed round trip did not deliver go again (first, with their numbers, so
        a batch that did land is applied once) with the next call: up to ``PENDING_MAX``
        batches, the oldest dropped beyond (counted in ``dropped``)."""
        now = self.clock()
        if not outcomes and not self._pending and now - self._last_heartbeat < HEARTBEAT_S:
            return
        wall = self.wall_clock()
        offset = repr(wall - now).encode()
        entries = list(self._pending)
        for start in range(0, len(outcomes), BATCH_MAX):
            self._seq += 1
            chunk = outcomes[start:start + BATCH_MAX]
            entries.append(_Entry({b"outcomes": encode(chunk), b"offset": offset, b"sender": self._sender,
                                   b"seq": self._seq}, len(chunk)))
        pipe = self._redis.pipeline(transaction=False)
        for entry in entries:
            pipe.xadd(self._own_stream, entry.fields, maxlen=STREAM_MAXLEN, approximate=True)
        if entries:
            pipe.expire(self._own_stream, KEY_TTL_S)
        pipe.zadd(self._hosts_key, {self.host_id: wall})
        pipe.zremrangebyscore(self._hosts_key, "-inf", wall - KEY_TTL_S)
        pipe.expire(self._hosts_key, KEY_TTL_S)
        pipe.set(self._epoch_key, os.urandom(8).hex(), nx=True, ex=KEY_TTL_S)
        pipe.expire(self._epoch_key, KEY_TTL_S)
        try:
            replies = self._execute(pipe)
        except BaseException:
            kept = entries[-PENDING_MAX:]
            self.dropped += sum(entry.count for entry in entries[:-PENDING_MAX])
            self._pending = kept
            raise
        self._pending = []
        self._last_heartbeat = now
        for entry, reply in zip(entries, replies, strict=False):
            if not isinstance(reply, Exception):
                self.sent += entry.count
                self.batches_sent += 1
            else:
                self.dropped += entry.count  # a key of the wrong type: sending again would not help
        errors = [reply for reply in replies if isinstance(reply, Exception)]
        if errors:
            raise errors[0]

    # --- receiving ----------------------------------------------------------------------

    def receive(self) -> list[SharedOutcome]:
        """The other hosts' outcomes published since the last call, with their times on
        this host's monotonic clock. One pipelined round trip (two when a host appeared)."""
        wall = self.wall_clock()
        known = list(self._cursors)
        self.hosts = ()  # until this round has read them
        pipe = self._redis.pipeline(transaction=False)
        pipe.get(self._epoch_key)
        pipe.zrangebyscore(self._hosts_key, wall - LIVE_S, "+inf")
        for key in known:
            pipe.xread({key: self._cursors[key]}, count=READ_COUNT)
        replies = self._execute(pipe)
        epoch, hosts, reads = replies[0], replies[1], replies[2:]
        if isinstance(hosts, Exception):
            raise hosts  # not the set publishers write (a key of the wrong type): counted by the thread
        if not isinstance(epoch, bytes | None):
            self.garbage += 1
            epoch = self._epoch  # unreadable: no restart can be told from it
        received: list[SharedOutcome] = []
        for key, reply in zip(known, reads, strict=True):
            received.extend(self._entries(key, reply))
        live = self._live_streams(hosts)
        for key in set(self._cursors) - live:  # gone quiet: forget it (read from the horizon if back)
            del self._cursors[key]
        if epoch != self._epoch:
            # Redis restarted empty (or is another server): its ids may be behind the
            # cursors. Start over from the horizon; batches already applied are skipped.
            if self._epoch is not None or self._cursors:
                self.resets += 1
            self._epoch = epoch
            self._cursors.clear()
        new = sorted(live - set(self._cursors))
        self.peers = len(live)
        prefix = len(self._stream_prefix)
        self.hosts = tuple(sorted({key[prefix:].decode("utf-8", "replace") for key in live} | {self.host_id}))
        if new:
            since = self._horizon_id(wall)
            pipe = self._redis.pipeline(transaction=False)
            for key in new:
                pipe.xread({key: since}, count=READ_COUNT)
            try:
                replies = self._execute(pipe)
            except BaseException:
                # The new streams are read next time; what the first round trip brought
                # (its cursors moved on) comes back with the next call, never lost.
                self._held = (self._held + received)[-HELD_MAX:]
                raise
            for key, reply in zip(new, replies, strict=True):
                self._cursors[key] = since
                received.extend(self._entries(key, reply))
        self._forget_senders()
        if self._held:
            received, self._held = self._held + received, []
        self.received += len(received)
        return received

    def _live_streams(self, hosts: object) -> set[bytes]:
        if not isinstance(hosts, list):
            self.garbage += 1
            return set()
        own = self.host_id.encode()
        return {self._stream_prefix + host for host in hosts if isinstance(host, bytes) and host and host != own}

    def _horizon_id(self, wall: float) -> bytes:
        return f"{max(0, int((wall - self.horizon_s) * 1000))}-0".encode()

    def _entries(self, key: bytes, reply: Any) -> list[SharedOutcome]:
        """The outcomes of one stream's XREAD reply, moving its cursor past them."""
        if reply is None or reply == []:
            return []
        try:
            ((_name, raw),) = reply
            entries = list(raw)
        except (TypeError, ValueError):
            self.garbage += 1  # a reply of the wrong kind (WRONGTYPE: not a stream)
            return []
        outcomes: list[SharedOutcome] = []
        for entry in entries:
            try:
                entry_id, fields = entry
            except (TypeError, ValueError):
                self.garbage += 1
                continue
            if isinstance(entry_id, bytes):
                self._cursors[key] = entry_id
            batch = self._batch(fields)
            if batch is not None:
                outcomes.extend(batch)
        return outcomes

    def _batch(self, fields: object) -> list[SharedOutcome] | None:
        """One entry's outcomes on this host's clock; None when it is garbage or a batch
        applied already."""
        try:
            if not isinstance(fields, dict):
                raise TypeError(f"fields of type {type(fields).__name__}")
            data, sender, seq = fields[b"outcomes"], fields[b"sender"], int(fields[b"seq"])
            offset = float(fields[b"offset"])
            if not isinstance(data, bytes) or not isinstance(sender, bytes) or not math.isfinite(offset):
                raise TypeError("fields of the wrong kind")
            batch = decode(data)
        except (KeyError, TypeError, ValueError, EventFormatError):  # EventFormatError is a ValueError
            self.garbage += 1
            return None
        now = self.clock()
        known = self._senders.get(sender)
        if known is not None and seq <= known.seq:
            self.duplicates += 1
            return None
        self._senders[sender] = _Sender(seq, now)
        self.batches_received += 1
        return shifted(batch, offset - (self.wall_clock() - now))

    def _forget_senders(self) -> None:
        if len(self._senders) < 64:
            return
        cutoff = self.clock() - SENDER_MEMORY_S
        for sender in [s for s, seen in self._senders.items() if seen.seen_at < cutoff]:
            del self._senders[sender]

    # --- the connection -----------------------------------------------------------------

    def _execute(self, pipe: Any) -> list[Any]:
        """Run ``pipe``: its replies, an error reply in place (a key of the wrong type
        spoils one command, not the round). A connection that failed is dropped, so the
        next call starts on a new one."""
        try:
            return list(pipe.execute(raise_on_error=False))
        except BaseException:
            self._redis.connection_pool.disconnect()
            raise
        finally:
            pipe.reset()

    def close(self) -> None:
        self._redis.close()
        self._redis.connection_pool.disconnect()

    def __repr__(self) -> str:
        return f"<RedisChannel {self.prefix!r} host={self.host_id!r} peers={self.peers}>"
