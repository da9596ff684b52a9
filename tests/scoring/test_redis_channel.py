"""RedisChannel against Debian's real redis-server: replicas exchange outcomes, each
skipping its own host; times move onto the reader's clock; keys expire and a prefix
keeps two gateways apart; garbage is skipped and counted; Redis killed, hung, answering
garbage or restarted empty never holds a caller, and sharing resumes by itself.

Every wait is polled under a bound; every redis-server is killed in ``finally``.
"""

from __future__ import annotations

import math
import socket
import statistics
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from app.scoring import Circuit, HealthConfig, HealthTracker
from app.scoring.events import CALL, PROBE, SharedOutcome, encode
from app.scoring.redis_channel import KEY_TTL_S, RedisChannel
from app.scoring.sharing import TURN_ROUNDS, Sharing, turn_place
from tests.scoring.fake_clock import FakeClock
from tests.support.redis_server import RedisServer, redis_server

#: What "quickly" means for a call on a dead or hung Redis: the socket timeout is 0.25 s
#: (a connection attempt and a read can each take it); generous for a loaded CI box.
FAIL_FAST_S = 1.0


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def channels() -> Iterator[Callable[..., RedisChannel]]:
    made: list[RedisChannel] = []

    def make(url: str, host_id: str, **kwargs: Any) -> RedisChannel:
        channel = RedisChannel(url, host_id=host_id, **kwargs)
        made.append(channel)
        return channel

    yield make
    for channel in made:
        channel.close()


def outcome(provider: str = "openai", what: str = "", result: str = "success") -> SharedOutcome:
    now = time.monotonic()
    return SharedOutcome(CALL, provider, result, now, now - 0.2, duration_s=0.2, latency_s=0.1, what=what)


def same(received: list[SharedOutcome], sent: list[SharedOutcome], tolerance: float = 0.01) -> None:
    """``received`` are ``sent`` with times moved by less than ``tolerance`` (the two
    channels' offsets, read a few microseconds apart)."""
    assert [(item.provider, item.outcome, item.what) for item in received] == [
        (item.provider, item.outcome, item.what) for item in sent]
    for got, want in zip(received, sent, strict=True):
        assert got.at == pytest.approx(want.at, abs=tolerance)
        assert got.issued == pytest.approx(want.issued, abs=tolerance)


def poll(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Seconds until ``predicate()`` held; fails after ``timeout``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)
    return time.monotonic() - start


def timed(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    start = time.monotonic()
    try:
        call()
    except Exception as error:  # noqa: BLE001 - the test looks at what was raised
        return time.monotonic() - start, error
    return time.monotonic() - start, None


# --- sharing --------------------------------------------------------------------------------


def test_two_hosts_exchange_outcomes_within_one_round(server: RedisServer, prefix: str, channels) -> None:
    a = channels(server.url, "host-a", prefix=prefix)
    b = channels(server.url, "host-b", prefix=prefix)
    assert a.receive() == [] and b.receive() == []
    first = [outcome("openai", what="timeout"), SharedOutcome(PROBE, "anthropic", "unreached", time.monotonic(),
                                                              time.monotonic() - 1)]
    a.publish(first)
    same(b.receive(), first)  # b learns of host-a and reads its stream in the same call
    second = [outcome("cerebras", result="server_error")]
    a.publish(second)
    b.publish([outcome("groq")])
    same(b.receive(), second)
    same(a.receive(), [outcome("groq")], tolerance=1.0)
    assert b.receive() == [] and a.receive() == []  # nothing read twice
    assert (a.sent, a.received, b.sent, b.received) == (3, 1, 1, 3)
    assert a.peers == b.peers == 1 and a.garbage == b.garbage == 0
    assert a.hosts == b.hosts == ("host-a", "host-b")  # the list the hosts take turns by


def test_hosts_are_unknown_while_redis_cannot_be_read(prefix: str, channels) -> None:
    with socket.socket() as spare:
        spare.bind(("127.0.0.1", 0))
        port = spare.getsockname()[1]
    channel = channels(f"redis://127.0.0.1:{port}/0", "host-a", prefix=prefix)
    with pytest.raises(redis.RedisError):
        channel.receive()
    assert channel.hosts == ()  # each host decides alone: no turn to wait for


def test_round_trip_figures(server: RedisServer, prefix: str, channels) -> None:
    """Measured, printed: one publish and one receive against a local Redis."""
    a = channels(server.url, "host-a", prefix=prefix)
    b = channels(server.url, "host-b", prefix=prefix)
    batch = [outcome(f"provider-{i % 7}") for i in range(50)]
    a.publish(batch)
    b.receive()
    publish_s, receive_s = [], []
    for _ in range(50):
        publish_s.append(timed(lambda: a.publish(batch))[0])
        receive_s.append(timed(b.receive)[0])
    assert b.received == 51 * 50
    print(f"\npublish of 50 outcomes: median {statistics.median(publish_s) * 1000:.2f} ms, "
          f"max {max(publish_s) * 1000:.2f} ms; receive: median {statistics.median(receive_s) * 1000:.2f} ms, "
          f"max {max(receive_s) * 1000:.2f} ms")
    assert statistics.median(publish_s) < 0.05 and statistics.median(receive_s) < 0.05


def test_own_host_is_not_read_back(server: RedisServer, prefix: str, channels) -> None:
    a = channels(server.url, "host-a", prefix=prefix)
    a_worker2 = channels(server.url, "host-a", prefix=prefix)  # another worker of host-a
    c = channels(server.url, "host-c", prefix=prefix)
    a.publish([outcome("openai")])
    assert a.receive() == []
    assert a_worker2.receive() == []  # the workers of a host learn each other's outcomes from their files
    assert len(c.receive()) == 1


def test_times_move_onto_the_readers_clock(server: RedisServer, prefix: str, channels) -> None:
    # host-a's wall clock reads 100 s ahead of host-b's for the same monotonic time: its
    # outcomes happened 100 s later on host-b's monotonic clock than their numbers say.
    a = channels(server.url, "host-a", prefix=prefix, wall_clock=lambda: time.time() + 100.0)
    b = channels(server.url, "host-b", prefix=prefix)
    sent = SharedOutcome(CALL, "openai", "throttled", 1000.0, 999.0, throttled_until=1030.0)
    a.publish([sent])
    (got,) = b.receive()
    assert (got.at, got.issued, got.throttled_until) == (pytest.approx(1100.0, abs=0.01),
                                                         pytest.approx(1099.0, abs=0.01),
                                                         pytest.approx(1130.0, abs=0.01))
    assert got.quota_until == -math.inf  # no deadline stays no deadline


def test_keys_expire_and_a_prefix_separates_gateways(server: RedisServer, prefix: str, channels) -> None:
    client = server.client()
    a = channels(server.url, "host-a", prefix=prefix)
    other_gateway = channels(server.url, "host-b", prefix=prefix + "-other")
    same_gateway = channels(server.url, "host-b", prefix=prefix)
    a.publish([outcome()])
    keys = sorted(key.decode() for key in client.keys(prefix + ":*"))
    assert keys == sorted(a.keys) == [f"{prefix}:epoch", f"{prefix}:hosts", f"{prefix}:outcomes:host-a"]
    for key in keys:
        assert 0 < client.ttl(key) <= KEY_TTL_S, key
    assert other_gateway.receive() == []
    assert len(same_gateway.receive()) == 1
    assert client.keys(prefix + "-other:*") == []  # a reader writes nothing
    client.close()


def test_garbage_in_redis_is_skipped_and_counted(server: RedisServer, prefix: str, channels) -> None:
    client = server.client()
    b = channels(server.url, "host-b", prefix=prefix)
    x = channels(server.url, "host-x", prefix=prefix)
    x.publish([outcome("first")])
    assert len(b.receive()) == 1
    stream = x.stream_key("host-x")
    offset = repr(time.time() - time.monotonic())
    client.xadd(stream, {"foo": "bar"})  # a foreign entry
    client.xadd(stream, {"outcomes": b"\x01junk", "offset": offset, "sender": "s", "seq": 1})  # EventFormatError
    client.xadd(stream, {"outcomes": encode([outcome()]), "offset": "nan", "sender": "s", "seq": 2})
    client.xadd(stream, {"outcomes": encode([outcome()]), "offset": offset, "sender": "s", "seq": "x"})
    client.set(b.stream_key("host-y"), "not a stream")  # a key of the wrong type
    client.zadd(f"{prefix}:hosts", {"host-y": time.time(), b"\xff\x00": time.time()})
    x.publish([outcome("after")])
    got = b.receive()
    assert [item.provider for item in got] == ["after"]
    assert b.garbage == 5  # 4 entries and the stream of the wrong type
    x.publish([outcome("later")])
    assert [item.provider for item in b.receive()] == ["later"]  # the garbage is behind the cursor now
    client.close()


def test_ids_going_backwards_start_over_without_replaying(server: RedisServer, prefix: str, channels) -> None:
    """Redis restarted empty on a server whose clock is behind: the new entries' ids are
    below the reader's cursor. The epoch key tells, and the reader starts over from the
    horizon; batches it applied before are not applied again."""
    client = server.client()
    a = channels(server.url, "host-a", prefix=prefix)
    b = channels(server.url, "host-b", prefix=prefix)
    a.publish([outcome("before")])
    assert len(b.receive()) == 1
    for key in a.keys:
        client.delete(key)  # "restarted empty"
    behind_ms = int(time.time() * 1000) - 5000
    offset = repr(time.time() - time.monotonic())
    client.xadd(a.stream_key("host-a"), {"outcomes": encode([outcome("behind")]), "offset": offset,
                                         "sender": "other-worker", "seq": 1}, id=f"{behind_ms}-0")
    a.publish([outcome("new")])  # registers host-a and a new epoch
    got = [item.provider for item in b.receive()]
    assert sorted(got) == ["behind", "new"]
    assert b.resets == 1
    a.publish([outcome("next")])
    assert [item.provider for item in b.receive()] == ["next"]
    client.close()


def test_a_receive_failing_half_way_loses_nothing(server: RedisServer, prefix: str, channels,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A new host's stream is read in a second round trip; when that one fails, what the
    first brought is returned by the next call, and the new stream is read then."""
    a = channels(server.url, "host-a", prefix=prefix)
    b = channels(server.url, "host-b", prefix=prefix)
    c = channels(server.url, "host-c", prefix=prefix)
    a.publish([outcome("a0")])
    assert len(b.receive()) == 1
    a.publish([outcome("a1")])
    c.publish([outcome("c1")])
    execute = b._execute
    calls = []

    def second_fails(pipe: Any) -> list[Any]:
        calls.append(pipe)
        if len(calls) == 2:
            raise redis.ConnectionError("dropped")
        return execute(pipe)

    monkeypatch.setattr(b, "_execute", second_fails)
    with pytest.raises(redis.ConnectionError):
        b.receive()
    assert sorted(item.provider for item in b.receive()) == ["a1", "c1"]
    assert b.receive() == []


# --- Redis down, hung, garbage, restarted -------------------------------------------------


@pytest.fixture
def own_server() -> Iterator[RedisServer]:
    """A redis-server of the test's own, to kill and restart."""
    with redis_server() as running:
        yield running


def test_redis_killed_fails_fast_and_resumes_when_restarted_empty(own_server: RedisServer, prefix: str,
                                                                  channels) -> None:
    a = channels(own_server.url, "host-a", prefix=prefix)
    b = channels(own_server.url, "host-b", prefix=prefix)
    a.publish([outcome("before")])
    assert len(b.receive()) == 1
    own_server.kill()
    lost = outcome("during the outage")
    times = []
    for batch in ([lost], [], []):
        for call in (lambda: a.publish(batch), b.receive):  # noqa: B023 - called in this iteration
            elapsed, error = timed(call)
            assert isinstance(error, redis.ConnectionError) and elapsed < FAIL_FAST_S, (elapsed, error)
            times.append(elapsed)
    print(f"\nRedis killed: each call raised after at most {max(times) * 1000:.1f} ms")
    own_server.start()  # same port, empty

    got: list[SharedOutcome] = []

    def resumed() -> bool:
        for channel in (a, b):
            try:
                channel.publish([])
                if channel is b:
                    got.extend(b.receive())
            except redis.RedisError:
                pass
        return bool(got)

    elapsed = poll(resumed, 5.0, "sharing to resume after the restart")
    assert [item.provider for item in got] == ["during the outage"]  # kept, and sent once Redis was back
    a.publish([outcome("after")])
    assert [item.provider for item in b.receive()] == ["after"]
    print(f"\nsharing resumed {elapsed * 1000:.0f} ms after Redis came back empty")


def test_hung_redis_fails_fast(own_server: RedisServer, prefix: str, channels) -> None:
    a = channels(own_server.url, "host-a", prefix=prefix)
    b = channels(own_server.url, "host-b", prefix=prefix)
    a.publish([outcome()])
    b.receive()
    own_server.pause()
    times = []
    try:
        for call in (lambda: a.publish([outcome("during")]), b.receive, b.receive, lambda: a.publish([])):
            elapsed, error = timed(call)
            assert isinstance(error, redis.TimeoutError | redis.ConnectionError), error
            assert elapsed < FAIL_FAST_S, elapsed
            times.append(elapsed)
    finally:
        own_server.resume()
    print(f"\nhung Redis: each call raised after at most {max(times) * 1000:.0f} ms")
    got: list[SharedOutcome] = []

    def receives() -> bool:
        try:
            got.extend(b.receive())
        except redis.RedisError:
            return False
        return True

    poll(receives, 5.0, "the channel to work again")
    a.publish([outcome("after")])
    got.extend(b.receive())
    # The batch sent while Redis hung landed when it woke (its reply never came) or went
    # again with the next publish: either way, sent with its number, it is applied once.
    assert [item.provider for item in got] == ["during", "after"]


@pytest.mark.parametrize("answer", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"", b"$99999999\r\nabc"])
def test_a_server_answering_garbage_or_nothing_fails_fast(answer: bytes, prefix: str, channels) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    stop = threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        listener.settimeout(0.05)
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            held.append(conn)
            if answer:
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        url = f"redis://127.0.0.1:{listener.getsockname()[1]}/0"
        a = channels(url, "host-a", prefix=prefix)
        times = []
        for call in (lambda: a.publish([outcome()]), a.receive, a.receive):
            elapsed, error = timed(call)
            assert isinstance(error, redis.RedisError), error
            assert elapsed < FAIL_FAST_S, elapsed
            times.append(elapsed)
        print(f"\nanswer {answer[:12]!r}: {type(error).__name__} after at most {max(times) * 1000:.0f} ms")
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


# --- end to end: two replicas -------------------------------------------------------------


def test_a_trip_on_one_replica_is_refused_by_the_other_within_one_second(server: RedisServer, prefix: str,
                                                                          channels) -> None:
    """Two replicas, each a HealthTracker with a RedisChannel driven as the sharing thread
    drives it (every 0.5 s: publish what it recorded, apply what it receives), their
    rounds half an interval apart. Replica A trips just after its own round (the worst
    case for its publish); B must refuse the provider within 1 s of real time."""
    interval = 0.5
    replicas = []
    for host in ("replica-a", "replica-b"):
        tracker = HealthTracker()
        tracker.share_outcomes()
        replicas.append((tracker, channels(server.url, host, prefix=prefix, interval_s=interval)))
    (tracker_a, channel_a), (tracker_b, channel_b) = replicas

    def round_of(tracker: HealthTracker, channel: RedisChannel) -> None:
        channel.publish(tracker.take_outcomes())
        tracker.apply(channel.receive())

    for tracker, channel in replicas:  # both know each other before the incident
        round_of(tracker, channel)
    start = time.monotonic()
    schedule = [(start + interval, 0), (start + interval / 2, 1)]  # next round of A, of B
    round_of(tracker_a, channel_a)
    for _ in range(tracker_a.config.consecutive_failures):
        tracker_a.record("openai", duration_s=0.05, status_code=503)
    tripped = time.monotonic()
    assert not tracker_a.allow("openai")
    assert tracker_b.allow("openai")
    deadline = tripped + 3.0
    refused_after = None
    while time.monotonic() < deadline:
        schedule.sort()
        due, index = schedule[0]
        while time.monotonic() < due:
            if not tracker_b.allow("openai"):
                break
            time.sleep(0.005)
        if not tracker_b.allow("openai"):
            refused_after = time.monotonic() - tripped
            break
        round_of(*replicas[index])
        schedule[0] = (due + interval, index)
    assert refused_after is not None, "replica B never refused the provider"
    print(f"\nthe trip reached the other replica in {refused_after * 1000:.0f} ms "
          f"(rounds every {interval:g} s, half an interval apart)")
    assert refused_after < 1.0
    assert tracker_b.status("openai").circuit.value == "open"


def test_replicas_take_turns_at_a_trial_through_redis(server: RedisServer, prefix: str, channels) -> None:
    """Three replicas, each a tracker with a RedisChannel and a Sharing driven round by
    round on one fake clock (real Redis, simulated time): after a trip, when the cooldown
    is over, the replica whose turn it is sends the one trial; the others hold off through
    their turns, as long as the announced trial is out; its verdict counts everywhere."""
    clock = FakeClock()
    config = HealthConfig(open_cooldown_s=5.0, max_cooldown_s=10.0, trials_at_once=1)
    interval = 0.1
    replicas = {}
    for host in ("replica-a", "replica-b", "replica-c"):
        tracker = HealthTracker(config, clock=clock, wall_clock=clock.wall)
        channel = channels(server.url, host, prefix=prefix, interval_s=interval, clock=clock,
                           wall_clock=clock.wall)
        sharing = Sharing(tracker, [channel], clock=clock)
        sharing.attach()
        replicas[host] = (tracker, sharing)

    def rounds() -> None:
        for _ in range(2):
            for _, sharing in replicas.values():
                sharing.sync_once(force=True)

    rounds()
    tracker_a = replicas["replica-a"][0]
    for _ in range(config.consecutive_failures):
        tracker_a.record("openai", duration_s=0.05, status_code=503, permit=tracker_a.allow("openai"))
    rounds()
    assert {tracker.status("openai").circuit for tracker, _ in replicas.values()} == {Circuit.OPEN}
    hosts = tuple(sorted(replicas))
    cycle = tracker_a._providers["openai"].breaker.trips
    first, *others = sorted(replicas, key=lambda host: turn_place(hosts, host, "openai", cycle))
    clock.advance(config.open_cooldown_s)
    assert not any(replicas[host][0].allow("openai") for host in others)
    trial = replicas[first][0].allow("openai")
    assert trial and trial.trial
    rounds()
    clock.advance(len(replicas) * TURN_ROUNDS * interval)  # every turn has come
    assert not any(replicas[host][0].allow("openai") for host in others)
    replicas[first][0].record("openai", duration_s=0.2, status_code=200, permit=trial)
    rounds()
    for tracker, _ in replicas.values():
        assert "1 of 3 passed" in " ".join(tracker.status("openai").reasons)
    for _, sharing in replicas.values():
        sharing.stop()
