"""The files processes of one host share (app.scoring.sharing): HostChannel's outcome files
and FileTrialGate's trial slots, rule by rule, in one process.

The contract (the module's and docs/WORKERS.md's): each process appends length-prefixed
batches to a file of its own under ``<directory>/health/``, held locked while it lives; a
reader reads the others' files from where it stopped, skips what it cannot read and counts
it, drops outcomes older than its horizon unless they carry a deadline still running, and
deletes files long idle whose writer is gone. A trial gate holds at most ``limit`` live
slots per provider, a slot counting until its deadline or until its holder is gone.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import math
import os
import struct
import time
from pathlib import Path

import pytest

import app.scoring.sharing as sharing_module
from app.scoring.events import CALL, SharedOutcome, decode, encode
from app.scoring.sharing import FileTrialGate, HostChannel, health_directory
from tests.scoring.fake_clock import FakeClock

LENGTH = struct.Struct("<I")
_real_write = os.write  # before any test replaces it


def outcome(at: float, provider: str = "p", **changes: object) -> SharedOutcome:
    return SharedOutcome(CALL, provider, "failure", at, at, duration_s=0.1, latency_s=0.1, what="x")._replace(
        **changes)


def records(path: str) -> list[list[SharedOutcome]]:
    """The batches of an outcome file, as written."""
    data = Path(path).read_bytes()
    batches, position = [], 0
    while position < len(data):
        (length,) = LENGTH.unpack_from(data, position)
        batches.append(decode(data[position + LENGTH.size:position + LENGTH.size + length]))
        position += LENGTH.size + length
    return batches


def locked(path: str) -> bool:
    """Whether another open file holds a lock on ``path`` (as another process would see it)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


# --- the directory -----------------------------------------------------------------------------


def test_the_health_directory_is_made_under_the_shared_one(tmp_path: Path) -> None:
    path = health_directory(str(tmp_path))

    assert path == str(tmp_path / "health")
    assert os.path.isdir(path)
    assert health_directory(str(tmp_path)) == path  # made once, found after


# --- writing ---------------------------------------------------------------------------------------


def test_nothing_to_publish_makes_no_file(tmp_path: Path, clock: FakeClock) -> None:
    channel = HostChannel(str(tmp_path), pid=7, clock=clock)

    channel.publish([])

    assert channel.path == ""
    assert os.listdir(tmp_path / "health") == []
    assert channel.sent == 0


def test_a_process_writes_a_file_of_its_own_and_holds_it_locked(tmp_path: Path, clock: FakeClock) -> None:
    channel = HostChannel(str(tmp_path), pid=7, clock=clock)

    channel.publish([outcome(clock())])

    name = os.path.basename(channel.path)
    assert name.startswith("outcomes-7-") and name.endswith("-000001.bin")
    assert len(name.split("-")[2]) == 8  # a random token of 4 bytes in hex
    assert os.path.dirname(channel.path) == str(tmp_path / "health")
    assert locked(channel.path)
    assert records(channel.path) == [[outcome(clock())]]
    assert channel.sent == 1

    channel.close()

    assert channel.path == ""
    assert not locked(str(tmp_path / "health" / name))  # closed: as if gone


def test_two_channels_of_one_pid_write_two_files(tmp_path: Path, clock: FakeClock) -> None:
    first, second = HostChannel(str(tmp_path), pid=7, clock=clock), HostChannel(str(tmp_path), pid=7, clock=clock)
    first.publish([outcome(clock(), "a")])
    second.publish([outcome(clock(), "b")])

    assert first.path != second.path
    assert [item.provider for item in first.receive()] == ["b"]
    assert [item.provider for item in second.receive()] == ["a"]


def test_outcomes_go_in_records_of_at_most_batch_outcomes(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharing_module, "BATCH_OUTCOMES", 2)
    channel = HostChannel(str(tmp_path), pid=7, clock=clock)
    items = [outcome(clock(), f"p{index}") for index in range(5)]

    channel.publish(items)

    assert [len(batch) for batch in records(channel.path)] == [2, 2, 1]
    assert [item for batch in records(channel.path) for item in batch] == items
    assert channel.sent == 5


def test_a_record_holds_up_to_1024_outcomes() -> None:
    assert sharing_module.BATCH_OUTCOMES == 1024


def test_a_closed_channel_writes_a_new_file_when_used_again(tmp_path: Path, clock: FakeClock) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    reader = HostChannel(str(tmp_path), pid=8, clock=clock)
    writer.publish([outcome(clock(), "a")])
    first = writer.path
    writer.close()

    writer.publish([outcome(clock(), "b")])

    assert writer.path.endswith("-000002.bin") and writer.path != first
    assert [item.provider for item in reader.receive()] == ["a", "b"]


def test_a_file_past_rotate_bytes_is_followed_by_a_new_one(tmp_path: Path, clock: FakeClock) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock, rotate_bytes=200)
    writer.publish([outcome(clock())])  # 5 + 4 + 60 + 1 + 7 + 1 = 78 bytes
    first = writer.path
    writer.publish([outcome(clock())])  # 156
    assert writer.path == first
    writer.publish([outcome(clock())])  # 234: past 200 after this one
    assert writer.path == first

    writer.publish([outcome(clock())])

    assert writer.path.endswith("-000002.bin")
    assert len(records(first)) == 3


def test_a_rotated_file_is_deleted_rotated_keep_s_later(tmp_path: Path, clock: FakeClock) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock, rotate_bytes=10)
    writer.publish([outcome(clock())])
    first = writer.path
    writer.publish([outcome(clock())])  # rotated: deleted 60 s from now
    clock.advance(59.9)
    writer.publish([outcome(clock())])
    assert os.path.exists(first)

    clock.advance(0.1)
    writer.publish([outcome(clock())])

    assert not os.path.exists(first)
    assert sharing_module.ROTATED_KEEP_S == 60.0


def test_a_file_deleted_under_its_writer_is_replaced_at_the_next_sweep(tmp_path: Path, clock: FakeClock) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    writer.publish([outcome(clock(), "a")])
    os.unlink(writer.path)  # the directory emptied by its owner

    writer.receive()  # sweeps: its file is gone, readers would never see what it writes
    writer.publish([outcome(clock(), "b")])

    reader = HostChannel(str(tmp_path), pid=8, clock=clock)
    assert [item.provider for item in reader.receive()] == ["b"]


def test_writes_failing_keep_at_most_rotate_bytes_of_records(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock, rotate_bytes=200)
    writer.publish([outcome(clock(), "first")])

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    for index in range(4):  # 4 records of 77 bytes: 308 > 200, the oldest two go
        with pytest.raises(OSError):
            writer.publish([outcome(clock(), f"p{index}")])
    monkeypatch.undo()
    writer.publish([])

    reader = HostChannel(str(tmp_path), pid=8, clock=clock)
    assert [item.provider for item in reader.receive()] == ["first", "p2", "p3"]
    assert (writer.sent, writer.dropped) == (3, 2)


def test_a_file_that_cannot_be_opened_keeps_the_records_for_later(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    real_open = os.open

    def refuse(path: str, *args: object, **kwargs: object) -> int:
        raise OSError(24, "Too many open files")

    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(OSError):
        writer.publish([outcome(clock(), "a")])
    monkeypatch.setattr(os, "open", real_open)

    writer.publish([outcome(clock(), "b")])

    assert [item.provider for batch in records(writer.path) for item in batch] == ["a", "b"]


# --- reading ---------------------------------------------------------------------------------------


def test_a_reader_reads_every_other_file_once_in_name_order(tmp_path: Path, clock: FakeClock) -> None:
    reader = HostChannel(str(tmp_path), pid=1, clock=clock)
    reader.publish([outcome(clock(), "own")])
    later, earlier = HostChannel(str(tmp_path), pid=3, clock=clock), HostChannel(str(tmp_path), pid=2, clock=clock)
    later.publish([outcome(clock(), "three")])
    earlier.publish([outcome(clock(), "two")])

    assert [item.provider for item in reader.receive()] == ["two", "three"]  # never its own
    assert reader.receive() == []
    earlier.publish([outcome(clock(), "two again")])
    assert [item.provider for item in reader.receive()] == ["two again"]


def test_other_files_in_the_directory_are_not_outcomes(tmp_path: Path, clock: FakeClock) -> None:
    reader = HostChannel(str(tmp_path), pid=1, clock=clock)
    good = LENGTH.pack(len(encode([outcome(clock())]))) + encode([outcome(clock())])
    (tmp_path / "health" / "outcomes-2-00000000-000001.tmp").write_bytes(good)
    (tmp_path / "health" / "other-2-00000000-000001.bin").write_bytes(good)

    assert reader.receive() == []
    assert reader.garbage == 0


@pytest.mark.parametrize(("age_s", "kept"), [(60.0, True), (60.5, False)])
def test_outcomes_older_than_the_horizon_are_dropped_and_counted(
    tmp_path: Path, clock: FakeClock, age_s: float, kept: bool
) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    writer.publish([outcome(clock())])
    clock.advance(age_s)
    reader = HostChannel(str(tmp_path), pid=8, clock=clock, horizon_s=60.0)

    assert len(reader.receive()) == int(kept)
    assert reader.too_old == int(not kept)


@pytest.mark.parametrize(("field", "until", "kept"), [("throttled_until", 1100.5, True),
                                                      ("throttled_until", 1100.0, False),
                                                      ("quota_until", 1100.5, True),
                                                      ("quota_until", 1100.0, False)])
def test_an_old_outcome_whose_deadline_still_runs_is_kept(
    tmp_path: Path, clock: FakeClock, field: str, until: float, kept: bool
) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    writer.publish([outcome(clock(), outcome="throttled", **{field: until})])
    clock.advance(100.0)  # now 1100: 100 s old, past the 60 s horizon
    reader = HostChannel(str(tmp_path), pid=8, clock=clock, horizon_s=60.0)

    assert len(reader.receive()) == int(kept)


def test_without_a_horizon_everything_is_read(tmp_path: Path, clock: FakeClock) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    writer.publish([outcome(clock())])
    clock.advance(10_000.0)

    reader = HostChannel(str(tmp_path), pid=8, clock=clock, horizon_s=None)

    assert len(reader.receive()) == 1
    assert reader.too_old == 0


def test_the_default_horizon_is_the_default_window(tmp_path: Path, clock: FakeClock) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    writer.publish([outcome(clock())])
    clock.advance(60.5)

    assert HostChannel(str(tmp_path), pid=8, clock=clock).receive() == []


def test_a_record_cut_short_waits_for_its_end(tmp_path: Path, clock: FakeClock) -> None:
    reader = HostChannel(str(tmp_path), pid=1, clock=clock)
    path = tmp_path / "health" / "outcomes-2-00000000-000001.bin"
    batch = encode([outcome(clock())])
    whole = LENGTH.pack(len(batch)) + batch
    path.write_bytes(whole[:3])  # not even a whole length
    assert reader.receive() == []
    with path.open("ab") as file:
        file.write(whole[3:-1])
    assert reader.receive() == []

    with path.open("ab") as file:
        file.write(whole[-1:])

    assert reader.receive() == [outcome(clock())]
    assert reader.garbage == 0


def test_a_record_of_max_record_bytes_is_waited_for_and_a_longer_one_is_garbage(
    tmp_path: Path, clock: FakeClock
) -> None:
    reader = HostChannel(str(tmp_path), pid=1, clock=clock)
    waiting = tmp_path / "health" / "outcomes-2-00000000-000001.bin"
    garbage = tmp_path / "health" / "outcomes-3-00000000-000001.bin"
    waiting.write_bytes(LENGTH.pack(sharing_module.MAX_RECORD) + b"x" * 10)
    garbage.write_bytes(LENGTH.pack(sharing_module.MAX_RECORD + 1) + b"x" * 10)

    assert reader.receive() == []

    assert reader.garbage == 1
    assert reader.last_garbage.startswith("outcomes-3-00000000-000001.bin: a record of 33554433 bytes")
    assert sharing_module.MAX_RECORD == 32 * 2**20


def test_a_record_that_does_not_decode_is_skipped_and_named(tmp_path: Path, clock: FakeClock) -> None:
    reader = HostChannel(str(tmp_path), pid=1, clock=clock)
    path = tmp_path / "health" / "outcomes-2-00000000-000001.bin"
    good = encode([outcome(clock())])
    path.write_bytes(LENGTH.pack(5) + b"\x02\x00\x00\x00\x00" + LENGTH.pack(len(good)) + good)

    assert reader.receive() == [outcome(clock())]

    assert reader.garbage == 1
    assert reader.last_garbage == ("outcomes-2-00000000-000001.bin: outcomes of version 2, this reader knows 1")


def test_a_closed_reader_goes_on_from_where_it_stopped(tmp_path: Path, clock: FakeClock) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    reader = HostChannel(str(tmp_path), pid=8, clock=clock)
    writer.publish([outcome(clock(), "a")])
    assert [item.provider for item in reader.receive()] == ["a"]
    reader.close()
    writer.publish([outcome(clock(), "b")])

    assert [item.provider for item in reader.receive()] == ["b"]


def test_a_deleted_file_is_forgotten_and_one_of_the_same_name_read_from_its_start(
    tmp_path: Path, clock: FakeClock
) -> None:
    reader = HostChannel(str(tmp_path), pid=8, clock=clock)
    path = tmp_path / "health" / "outcomes-2-00000000-000001.bin"
    batch = encode([outcome(clock(), "a")])
    path.write_bytes(LENGTH.pack(len(batch)) + batch)
    assert [item.provider for item in reader.receive()] == ["a"]
    path.unlink()
    assert reader.receive() == []

    batch = encode([outcome(clock(), "b")])
    path.write_bytes(LENGTH.pack(len(batch)) + batch)

    assert [item.provider for item in reader.receive()] == ["b"]


# --- sweeping --------------------------------------------------------------------------------------


def _age(path: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(path, (then, then))


def test_a_file_long_idle_fully_read_and_whose_writer_is_gone_is_deleted(tmp_path: Path, clock: FakeClock) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    writer.publish([outcome(clock())])
    path = writer.path
    writer.close()  # its writer is gone
    reader = HostChannel(str(tmp_path), pid=8, clock=clock, horizon_s=60.0)
    reader.receive()  # reads it (and sweeps: too fresh to go)
    _age(path, 120.0 + 60.0 + 5)  # idle past STALE_AFTER_S plus the horizon
    clock.advance(9.9)
    reader.receive()
    assert os.path.exists(path)  # a sweep every 10 s only

    clock.advance(0.1)
    reader.receive()

    assert not os.path.exists(path)


def test_a_file_idle_less_than_stale_after_s_plus_the_horizon_stays(tmp_path: Path, clock: FakeClock) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    writer.publish([outcome(clock())])
    writer.close()
    reader = HostChannel(str(tmp_path), pid=8, clock=clock, horizon_s=60.0)
    reader.receive()
    _age(writer_path := [str(p) for p in (tmp_path / "health").iterdir()][0], 120.0 + 60.0 - 5)
    clock.advance(10.0)

    reader.receive()

    assert os.path.exists(writer_path)


def test_a_file_whose_writer_is_alive_is_never_swept(tmp_path: Path, clock: FakeClock) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    writer.publish([outcome(clock())])
    reader = HostChannel(str(tmp_path), pid=8, clock=clock)
    reader.receive()
    _age(writer.path, 10_000.0)
    clock.advance(10.0)

    reader.receive()

    assert os.path.exists(writer.path)


def test_a_file_not_read_to_its_end_is_never_swept(tmp_path: Path, clock: FakeClock) -> None:
    reader = HostChannel(str(tmp_path), pid=8, clock=clock)
    path = tmp_path / "health" / "outcomes-2-00000000-000001.bin"
    path.write_bytes(b"\x01\x02")  # a length cut short: never fully read
    reader.receive()
    _age(str(path), 10_000.0)
    clock.advance(10.0)

    reader.receive()

    assert path.exists()


# --- the trial gate --------------------------------------------------------------------------------


def test_a_gate_grants_up_to_limit_live_slots(tmp_path: Path) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)
    try:
        assert gate.acquire("p", 10.0, 40.0, 2)
        assert gate.acquire("p", 11.0, 41.0, 2)
        assert not gate.acquire("p", 12.0, 42.0, 2)
        assert gate.held("p", 12.0) == 2
        assert gate.acquire("q", 12.0, 42.0, 2)  # another provider, another file
        assert gate.path("p") != gate.path("q")
    finally:
        gate.close()


def test_a_slot_counts_until_its_deadline(tmp_path: Path) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)
    try:
        assert gate.acquire("p", 10.0, 40.0, 1)
        assert not gate.acquire("p", 39.9, 69.9, 1)
        assert (gate.held("p", 39.9), gate.held("p", 40.0)) == (1, 0)
        assert gate.acquire("p", 40.0, 70.0, 1)
        assert gate.reaped == 0
    finally:
        gate.close()


def test_the_slots_are_shared_by_every_gate_of_the_directory(tmp_path: Path) -> None:
    first, second = FileTrialGate(str(tmp_path), pid=7), FileTrialGate(str(tmp_path), pid=8)
    try:
        assert first.acquire("p", 10.0, 40.0, 1)
        assert not second.acquire("p", 10.0, 40.0, 1)
        assert second.held("p", 10.0) == 1
        second.release("p", 10.0)  # not its slot: stays
        assert first.held("p", 10.0) == 1
        first.release("p", 11.0)  # not this permit's slot: stays
        assert first.held("p", 10.0) == 1

        first.release("p", 10.0)

        assert second.acquire("p", 12.0, 42.0, 1)
    finally:
        first.close()
        second.close()


def test_a_slot_of_a_closed_gate_is_reaped_when_the_slots_are_full(tmp_path: Path) -> None:
    first, second = FileTrialGate(str(tmp_path), pid=7), FileTrialGate(str(tmp_path), pid=8)
    try:
        assert first.acquire("p", 10.0, 300.0, 2)
        assert second.acquire("p", 10.0, 300.0, 2)
        first.close()  # as if killed: its owner file is no longer locked
        assert second.held("p", 11.0) == 2  # still counted while the slots are not full

        assert second.acquire("p", 11.0, 300.0, 2)

        assert second.reaped == 1
        assert not second.acquire("p", 12.0, 300.0, 2)  # its own two are live
        assert second.reaped == 1
    finally:
        second.close()


def test_a_gate_owns_a_locked_owner_file_until_closed(tmp_path: Path) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)
    owners = [name for name in os.listdir(tmp_path / "health") if name.startswith("owner-7-")]

    assert len(owners) == 1 and len(owners[0]) == len("owner-7-") + 8
    assert locked(str(tmp_path / "health" / owners[0]))

    gate.close()

    assert not any(name.startswith("owner-") for name in os.listdir(tmp_path / "health"))
    gate.close()  # twice: harmless


def test_a_closed_gate_used_again_owns_a_file_again(tmp_path: Path) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)
    gate.close()

    assert gate.acquire("p", 10.0, 40.0, 1)

    try:
        owners = [name for name in os.listdir(tmp_path / "health") if name.startswith("owner-7-")]
        assert len(owners) == 1 and locked(str(tmp_path / "health" / owners[0]))
    finally:
        gate.close()


def test_a_new_gate_sweeps_the_owner_files_of_gates_gone(tmp_path: Path) -> None:
    directory = tmp_path / "health"
    directory.mkdir()
    (directory / "owner-99-0000abcd").write_bytes(b"")  # nobody holds it
    (directory / "owner-98-0000abcd.1234.tmp").write_bytes(b"")  # being made: left alone
    alive = FileTrialGate(str(tmp_path), pid=7)

    gate = FileTrialGate(str(tmp_path), pid=8)

    try:
        names = sorted(os.listdir(directory))
        assert "owner-99-0000abcd" not in names
        assert "owner-98-0000abcd.1234.tmp" in names
        assert sum(name.startswith("owner-7-") for name in names) == 1  # alive: kept
    finally:
        alive.close()
        gate.close()


def test_release_and_held_of_a_provider_never_seen_are_harmless(tmp_path: Path) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)
    try:
        gate.release("new", 1.0)
        assert gate.held("new", 0.0) == 0
    finally:
        gate.close()


def test_a_release_retries_a_busy_file_a_few_times(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)
    other = os.open(gate.path("p"), os.O_RDWR | os.O_CREAT)
    slept: list[float] = []
    try:
        assert gate.acquire("p", 10.0, 40.0, 1)
        fcntl.flock(other, fcntl.LOCK_EX)

        def unlock_after_two_tries(seconds: float) -> None:
            slept.append(seconds)
            if len(slept) == 2:
                fcntl.flock(other, fcntl.LOCK_UN)

        monkeypatch.setattr(sharing_module.time, "sleep", unlock_after_two_tries)
        gate.release("p", 10.0)  # third try gets it

        assert slept == [0.0002, 0.0002]
        assert gate.held("p", 10.0) == 0
        assert gate.busy == 0
    finally:
        os.close(other)
        gate.close()


def test_slots_are_pid_owner_issued_deadline_records(tmp_path: Path) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)
    try:
        gate.acquire("p", 10.5, 40.25, 3)
        gate.acquire("p", 11.0, 41.0, 3)
        data = Path(gate.path("p")).read_bytes()

        slots = [struct.unpack_from("<IIdd", data, offset) for offset in range(0, len(data), 24)]
        assert len(data) == 48
        assert [(pid, issued, deadline) for pid, _, issued, deadline in slots] == [(7, 10.5, 40.25), (7, 11.0, 41.0)]
        gate.release("p", 10.5)
        assert len(Path(gate.path("p")).read_bytes()) == 24  # truncated to what is left
    finally:
        gate.close()


def test_a_torn_slot_at_the_end_of_the_file_is_ignored(tmp_path: Path) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)
    try:
        gate.acquire("p", 10.0, 40.0, 2)
        with open(gate.path("p"), "ab") as file:
            file.write(b"\x01" * 10)

        assert gate.held("p", 10.0) == 1
        assert gate.acquire("p", 11.0, 41.0, 2)
        assert len(Path(gate.path("p")).read_bytes()) == 48
    finally:
        gate.close()


def test_the_sweep_constants() -> None:
    assert (sharing_module.STALE_AFTER_S, sharing_module.SWEEP_EVERY_S) == (120.0, 10.0)
    assert sharing_module.ROTATE_BYTES == 8 * 2**20
    assert math.isclose(sharing_module.INTERVAL_S, 0.025)


# --- descriptors, modes and odd names --------------------------------------------------------------


def _open_descriptors(directory: Path) -> int:
    """This process's descriptors open on files under ``directory`` (deleted ones too): the
    test's own, whatever other threads of the process open or close meanwhile."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):  # closed since it was listed
            count += os.readlink(f"/proc/self/fd/{fd}").startswith(f"{directory}/")
    return count


def test_files_are_made_readable_by_every_process_and_writable_by_their_owner(tmp_path: Path,
                                                                              clock: FakeClock) -> None:
    old_umask = os.umask(0o022)
    try:
        channel = HostChannel(str(tmp_path), pid=7, clock=clock)
        channel.publish([outcome(clock())])
        gate = FileTrialGate(str(tmp_path), pid=7)
        gate.acquire("p", 10.0, 40.0, 1)
        modes = {name.split("-")[0]: os.stat(tmp_path / "health" / name).st_mode & 0o777
                 for name in os.listdir(tmp_path / "health")}
        gate.close()
        channel.close()
    finally:
        os.umask(old_umask)

    assert modes == {"outcomes": 0o644, "owner": 0o644, "trials": 0o644}


def test_a_gate_opens_each_providers_file_once(tmp_path: Path) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)
    try:
        gate.acquire("p", 10.0, 40.0, 5)
        before = _open_descriptors(tmp_path)
        for step in range(5):
            gate.acquire("p", 11.0 + step, 41.0, 5)
            gate.release("p", 11.0 + step)
            gate.held("p", 12.0)

        assert _open_descriptors(tmp_path) == before
    finally:
        gate.close()


def test_a_trial_file_is_named_for_a_12_byte_hash_of_any_provider_name(tmp_path: Path) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)
    try:
        names = {os.path.basename(gate.path(provider)) for provider in ("p", "q", "bad \udcff name")}

        assert len(names) == 3
        assert all(name.startswith("trials-") and len(name) == len("trials-") + 24 for name in names)
        assert gate.acquire("bad \udcff name", 10.0, 40.0, 1)
    finally:
        gate.close()


def test_a_gate_made_without_a_pid_writes_its_own(tmp_path: Path) -> None:
    gate = FileTrialGate(str(tmp_path))
    try:
        assert gate.acquire("p", 10.0, 40.0, 1)
        (pid, _, _, _), = [struct.unpack_from("<IIdd", Path(gate.path("p")).read_bytes())]
        assert pid == os.getpid()
        assert any(name.startswith(f"owner-{os.getpid()}-") for name in os.listdir(tmp_path / "health"))
    finally:
        gate.close()


def test_a_refused_acquire_still_drops_the_expired_slots(tmp_path: Path) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)
    try:
        gate.acquire("p", 10.0, 20.0, 2)
        gate.acquire("p", 15.0, 300.0, 2)

        assert not gate.acquire("p", 25.0, 300.0, 1)  # one live slot: full at a limit of 1

        assert len(Path(gate.path("p")).read_bytes()) == 24  # the one that expired at 20 is gone
    finally:
        gate.close()


def test_every_busy_refusal_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)
    other = os.open(gate.path("p"), os.O_RDWR | os.O_CREAT)
    slept: list[float] = []
    monkeypatch.setattr(sharing_module.time, "sleep", slept.append)
    try:
        fcntl.flock(other, fcntl.LOCK_EX)
        assert not gate.acquire("p", 10.0, 40.0, 1)
        assert not gate.acquire("p", 11.0, 41.0, 1)
        assert gate.busy == 2

        gate.release("p", 10.0)  # three tries, two short sleeps between them, then gives up

        assert gate.busy == 3
        assert slept == [0.0002, 0.0002]
    finally:
        os.close(other)
        gate.close()


@pytest.mark.parametrize("error", [PermissionError(13, "EACCES"), BlockingIOError(11, "EAGAIN"),
                                   OSError(11, "EAGAIN as a plain OSError")])
def test_a_lock_held_elsewhere_reads_as_busy_whatever_the_error_says(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: OSError
) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)
    real_flock = fcntl.flock

    def held_elsewhere(fd: int, operation: int) -> None:
        if operation & fcntl.LOCK_NB:
            raise error
        real_flock(fd, operation)

    try:
        monkeypatch.setattr(sharing_module.fcntl, "flock", held_elsewhere)
        assert not gate.acquire("p", 10.0, 40.0, 1)
        assert gate.busy == 1
    finally:
        monkeypatch.undo()
        gate.close()


def test_any_other_locking_error_is_raised(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)

    def broken(fd: int, operation: int) -> None:
        raise OSError(9, "Bad file descriptor")

    try:
        monkeypatch.setattr(sharing_module.fcntl, "flock", broken)
        with pytest.raises(OSError, match="Bad file descriptor"):
            gate.acquire("p", 10.0, 40.0, 1)
    finally:
        monkeypatch.undo()
        gate.close()


def test_a_writer_whose_file_was_deleted_lets_its_descriptor_go(tmp_path: Path, clock: FakeClock) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    writer.publish([outcome(clock())])
    before = _open_descriptors(tmp_path)
    os.unlink(writer.path)

    writer.receive()  # sweeps: its own file is gone

    assert writer.path == ""
    assert _open_descriptors(tmp_path) == before - 1


def test_failed_writes_keep_up_to_exactly_rotate_bytes(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sharing_module, "BATCH_OUTCOMES", 1)
    record = LENGTH.size + len(encode([outcome(clock(), "p0")]))
    writer = HostChannel(str(tmp_path), pid=7, clock=clock, rotate_bytes=2 * record)

    def full(fd: int, data: bytes) -> int:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OSError):
        writer.publish([outcome(clock(), f"p{index}") for index in range(5)])  # five records at once
    monkeypatch.setattr(os, "write", _real_write)
    writer.publish([])

    reader = HostChannel(str(tmp_path), pid=8, clock=clock)
    assert [item.provider for item in reader.receive()] == ["p3", "p4"]  # two records fit exactly
    assert (writer.sent, writer.dropped) == (2, 3)



def test_a_write_cut_short_leaves_no_current_file(tmp_path: Path, clock: FakeClock,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    writer.publish([outcome(clock(), "first")])
    monkeypatch.setattr(os, "write", lambda fd, data: _real_write(fd, bytes(data)[:10]))

    with pytest.raises(OSError):
        writer.publish([outcome(clock(), "second")])

    assert writer.path == ""  # the cut file was left; the next record starts a new one


def test_a_channel_made_without_a_pid_names_its_file_for_its_process(tmp_path: Path, clock: FakeClock) -> None:
    channel = HostChannel(str(tmp_path), clock=clock)
    assert channel.pid == os.getpid()

    channel.publish([outcome(clock())])

    assert os.path.basename(channel.path).startswith(f"outcomes-{os.getpid()}-")
    assert (channel.garbage, channel.last_garbage, channel.too_old, channel.dropped) == (0, "", 0, 0)
    channel.close()


def test_a_file_of_exactly_rotate_bytes_is_full(tmp_path: Path, clock: FakeClock) -> None:
    record = LENGTH.size + len(encode([outcome(clock())]))
    writer = HostChannel(str(tmp_path), pid=7, clock=clock, rotate_bytes=record)
    writer.publish([outcome(clock())])
    first = writer.path

    writer.publish([outcome(clock())])

    assert writer.path != first


def test_a_write_cut_short_says_how_much_landed(tmp_path: Path, clock: FakeClock,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    record = LENGTH.size + len(encode([outcome(clock())]))
    monkeypatch.setattr(os, "write", lambda fd, data: _real_write(fd, bytes(data)[:10]))

    with pytest.raises(OSError) as raised:
        writer.publish([outcome(clock())])

    assert raised.value.errno == errno.ENOSPC
    assert raised.value.strerror == f"10 of {record} bytes written: a new file next time"


def test_a_retired_file_already_gone_is_no_error(tmp_path: Path, clock: FakeClock) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock, rotate_bytes=10)
    writer.publish([outcome(clock())])
    first = writer.path
    writer.publish([outcome(clock())])  # rotated: the first is to go in 60 s
    os.unlink(first)  # someone else deleted it already
    clock.advance(60.0)

    writer.publish([outcome(clock())])

    assert writer.sent == 3


def test_a_record_of_no_bytes_is_garbage_at_once(tmp_path: Path, clock: FakeClock) -> None:
    reader = HostChannel(str(tmp_path), pid=1, clock=clock)
    (tmp_path / "health" / "outcomes-2-00000000-000001.bin").write_bytes(LENGTH.pack(0))

    assert reader.receive() == []

    assert reader.garbage == 1


def test_a_sweep_leaves_the_writers_own_file_alone(tmp_path: Path, clock: FakeClock) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    writer.publish([outcome(clock())])
    own = writer.path

    writer.receive()  # sweeps
    writer.publish([outcome(clock())])

    assert writer.path == own
    assert len(records(own)) == 2


def test_without_a_horizon_a_file_idle_past_stale_after_s_is_swept(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    writer.publish([outcome(clock())])
    path = writer.path
    writer.close()
    reader = HostChannel(str(tmp_path), pid=8, clock=clock, horizon_s=None)
    monkeypatch.setattr(sharing_module.time, "time", lambda: 1_700_000_120.0)
    os.utime(path, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))  # idle exactly 120 s

    reader.receive()

    assert not os.path.exists(path)


@pytest.mark.parametrize(("idle_s", "swept"), [(180.0, True), (179.5, False)])
def test_a_file_is_stale_once_idle_for_stale_after_s_plus_the_horizon(
    tmp_path: Path, clock: FakeClock, monkeypatch: pytest.MonkeyPatch, idle_s: float, swept: bool
) -> None:
    writer = HostChannel(str(tmp_path), pid=7, clock=clock)
    writer.publish([outcome(clock())])
    path = writer.path
    writer.close()
    reader = HostChannel(str(tmp_path), pid=8, clock=clock, horizon_s=60.0)
    monkeypatch.setattr(sharing_module.time, "time", lambda: 1_700_000_000.0 + idle_s)
    os.utime(path, ns=(1_700_000_000 * 10**9, 1_700_000_000 * 10**9))

    reader.receive()

    assert os.path.exists(path) is not swept


def test_a_sweep_goes_past_a_file_it_keeps_to_the_stale_ones(tmp_path: Path, clock: FakeClock) -> None:
    fresh = HostChannel(str(tmp_path), pid=1, clock=clock)  # "outcomes-1-..." is read first
    fresh.publish([outcome(clock())])
    fresh.close()
    stale = HostChannel(str(tmp_path), pid=2, clock=clock)
    stale.publish([outcome(clock())])
    stale_path = stale.path
    stale.close()
    reader = HostChannel(str(tmp_path), pid=9, clock=clock)
    reader.receive()
    _age(stale_path, 10_000.0)
    clock.advance(10.0)

    reader.receive()

    names = sorted(p.name.split("-")[1] for p in (tmp_path / "health").iterdir() if p.name.startswith("outcomes-"))
    assert names == ["1"]


def test_a_forked_child_writes_a_file_of_its_own_and_skips_what_its_parent_holds(
    tmp_path: Path, clock: FakeClock
) -> None:
    channel = HostChannel(str(tmp_path), clock=clock)  # no pid given: follows the process
    other = HostChannel(str(tmp_path), pid=1, clock=clock)
    other.publish([outcome(clock(), "other")])
    channel.publish([outcome(clock(), "parent")])
    assert [item.provider for item in channel.receive()] == ["other"]
    other.publish([outcome(clock(), "unread")])  # in a file the parent reads, not read yet
    HostChannel(str(tmp_path), pid=2, clock=clock).publish([outcome(clock(), "fresh")])  # a file it never read
    parent_path = channel.path
    first_read, first_write = os.pipe()
    second_read, second_write = os.pipe()
    go_read, go_write = os.pipe()

    def child_says(read_end: int) -> str:
        with os.fdopen(read_end, "rb") as pipe:
            return pipe.read().decode()

    child = os.fork()
    if child == 0:  # the child: report through pipes, wait for its parent, never return into pytest
        try:
            got = sorted(item.provider for item in channel.receive())
            before = channel.path  # no file of its own yet
            channel.publish([outcome(clock(), "child")])
            report = f"{os.getpid()}|{got}|{before!r}|{os.path.basename(channel.path)}"
        except BaseException as error:  # noqa: BLE001 - reported to the parent
            report = repr(error)
        os.write(first_write, report.encode())
        os.close(first_write)
        os.read(go_read, 1)
        try:
            report = str([item.provider for item in channel.receive()])
        except BaseException as error:  # noqa: BLE001 - reported to the parent
            report = repr(error)
        os.write(second_write, report.encode())
        os.close(second_write)
        os.read(go_read, 1)
        os._exit(0)
    os.close(first_write)
    os.close(second_write)
    try:
        child_pid, got, before, name = child_says(first_read).split("|")

        assert child_pid == str(child)
        # What its parent had read or written is in the tracker it inherited; the rest is news.
        assert got == "['fresh', 'unread']"
        assert before == "''"
        assert name.startswith(f"outcomes-{child}-")
        assert channel.path == parent_path and locked(parent_path)  # the parent's file stays its own
        assert sorted(item.provider for item in channel.receive()) == ["child", "fresh", "unread"]

        channel.publish([outcome(clock(), "parent after the fork")])
        os.write(go_write, b"x")
        assert child_says(second_read) == "['parent after the fork']"  # the parent's file, followed

        channel.close()  # the parent's writer goes while the child lives: its file is unlocked
        assert not locked(parent_path)
    finally:
        os.write(go_write, b"xx")
        os.waitpid(child, 0)
        os.close(go_write)
        os.close(go_read)



def test_closing_a_gate_whose_owner_file_was_deleted_is_no_error(tmp_path: Path) -> None:
    gate = FileTrialGate(str(tmp_path), pid=7)
    for name in os.listdir(tmp_path / "health"):
        os.unlink(tmp_path / "health" / name)  # the directory emptied by its owner

    gate.close()

    assert gate.acquire("p", 10.0, 40.0, 1)  # used again: alive again
    gate.close()


def test_a_turn_is_placed_for_any_provider_name(tmp_path: Path) -> None:
    hosts = ("host-a", "host-b", "host-c")

    places = sorted(sharing_module.turn_place(hosts, host, "bad \udcff name", 4) for host in hosts)

    assert places == [0, 1, 2]
