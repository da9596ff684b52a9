"""Processes of one host acting as one breaker: their outcomes shared, their trials counted together.

Every process keeps its own :class:`~app.scoring.tracker.HealthTracker`, and ``allow``
never waits for another process. A :class:`Sharing` thread, every 25 ms, takes what its
tracker recorded (``take_outcomes``), publishes it on its channels, and replays what the
other processes published (``apply``): a trip, a ``Retry-After`` or a recovery seen by one
worker is seen by all within two rounds (50 ms; the spec allows 100 ms).

- :class:`HostChannel` carries outcomes between the processes that share a directory (the
  ``PROMETHEUS_MULTIPROC_DIR``): each appends length-prefixed batches to a file of its
  own under ``<directory>/health/`` and reads the others' files from where it stopped.
- :class:`FileTrialGate` counts half-open trial permits across those processes: one small
  file per provider holds the slots taken, under a non-blocking ``flock``; a slot frees
  itself at its permit's deadline, or at once when its holder is gone (killed or closed).
- Any other channel (Redis, across hosts) plugs in through :class:`Channel`. Such a
  channel is slower than the trials it would have to count, so hosts take turns instead
  (:func:`turn_place`): when a trial is due, the host whose turn it is sends it and
  announces it; the next waits long enough to have heard.

Times are the host's monotonic clock: ``CLOCK_MONOTONIC`` is system-wide on Linux, so the
processes of one host (outside distinct time namespaces) compare them as they are.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import math
import os
import struct
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from app.scoring.events import EventFormatError, SharedOutcome, decode, encode
from app.scoring.tracker import HealthTracker, TrialGate

#: Subdirectory of the shared directory holding the outcome files and the trial slots.
SUBDIR = "health"
#: A record: its length, then one batch of :func:`app.scoring.events.encode`.
_LENGTH = struct.Struct("<I")
#: Past this size a process starts a new outcome file (8 MiB: ~90 000 outcomes).
ROTATE_BYTES = 8 * 2**20
#: A rotated-out file is deleted this long after its successor started: readers poll every
#: 50 ms, so they have long read it.
ROTATED_KEEP_S = 60.0
#: Outcomes per record, so a record stays far below MAX_RECORD whatever the texts hold.
BATCH_OUTCOMES = 1024
#: A length prefix above this is garbage: the rest of that file is skipped, not waited for.
MAX_RECORD = 32 * 2**20
#: A file idle for this long past the horizon whose writer is gone is deleted by a reader.
STALE_AFTER_S = 120.0
#: How often a reader looks for such files.
SWEEP_EVERY_S = 10.0

_OUTCOMES_PREFIX = "outcomes-"
_OUTCOMES_SUFFIX = ".bin"
_TRIALS_PREFIX = "trials-"
_OWNER_PREFIX = "owner-"


def health_directory(directory: str) -> str:
    """``<directory>/health``, created if needed."""
    path = os.path.join(directory, SUBDIR)
    os.makedirs(path, exist_ok=True)
    return path


def _token() -> str:
    return os.urandom(4).hex()


def _try_lock(fd: int, operation: int) -> bool:
    """``flock(operation | LOCK_NB)``: False when another holds it, never waits."""
    try:
        fcntl.flock(fd, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def _holder_gone(path: str) -> bool:
    """Whether nobody holds a lock on ``path`` (its writer or owner is gone): a process holds
    its own file locked while alive, and the kernel drops the lock when it dies, whatever
    its pid namespace. A file that vanished is gone too."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return True
    try:
        return _try_lock(fd, fcntl.LOCK_SH)
    finally:
        os.close(fd)  # drops the shared lock just taken, if any


# --- channels ---------------------------------------------------------------------------


class Channel(Protocol):
    """A way to tell the other processes this one's outcomes and hear theirs.

    ``publish`` and ``receive`` may raise (an ``OSError``, a Redis error): :class:`Sharing`
    counts it and goes on. A channel may also have an ``interval_s`` attribute (its own
    cadence: Redis every 0.5 s; outcomes wait in a batch until then), and counters shown
    by :meth:`Sharing.status`: ``garbage`` (records it could not read and skipped) and
    ``dropped`` (outcomes it gave up sending).

    ``publish`` is called on every round of the channel, with an empty list when there is
    nothing new (a channel may send a heartbeat, or what a failed round left). What it
    could not send is its own to keep and send again: :class:`Sharing` hands every outcome
    over once."""

    name: str

    def publish(self, outcomes: list[SharedOutcome]) -> None: ...

    def receive(self) -> list[SharedOutcome]: ...

    def close(self) -> None: ...


@runtime_checkable
class HostsAware(Protocol):
    """A channel that crosses hosts and knows which are live (``RedisChannel``)."""

    host_id: str
    #: The live hosts, sorted, this one included; empty while unknown (not read yet, or
    #: the channel is failing: each host then decides alone).
    hosts: tuple[str, ...]


@dataclass(slots=True)
class _Reader:
    fd: int
    offset: int = 0


class HostChannel:
    """Outcomes shared through files between the processes of one host.

    Each process appends records ``[u32 length][events.encode(batch)]`` with one
    ``os.write`` on an ``O_APPEND`` descriptor to a file of its own,
    ``<directory>/health/outcomes-<pid>-<token>-<sequence>.bin`` (one writer per file, held
    locked while open), starting a new file past ``rotate_bytes`` and deleting its older
    files ``ROTATED_KEEP_S`` later. ``receive`` reads every other file from where it
    stopped: only the new bytes, only when the size grew; a record cut short waits for the
    next call. A file seen for the first time is read from its start, but outcomes older
    than ``horizon_s`` (the tracker's window) are dropped, unless they carry a throttle or
    quota deadline still running: a process that starts late learns the last window and
    nothing older. A record that does not decode is skipped and counted (``garbage``).
    """

    name = "host"
    interval_s: float | None = None  # every round of Sharing

    def __init__(
        self,
        directory: str,
        *,
        pid: int | None = None,
        horizon_s: float | None = 60.0,
        clock: Callable[[], float] = time.monotonic,
        rotate_bytes: int = ROTATE_BYTES,
    ) -> None:
        self.directory = health_directory(directory)
        self._pid_given = pid is not None
        self.pid = os.getpid() if pid is None else pid
        self.horizon_s = horizon_s
        self.clock = clock
        self.rotate_bytes = rotate_bytes
        self._lock = threading.Lock()
        self._token = _token()
        self._sequence = 0
        self._fd: int | None = None
        self._path = ""
        self._written = 0
        self._retired: list[tuple[float, str]] = []  # (delete at, path) of own rotated files
        self._readers: dict[str, _Reader] = {}
        self._last_sweep = -math.inf
        #: Records not written yet (a failed write): (bytes, outcomes), sent first next time.
        self._unsent: list[tuple[bytes, int]] = []
        #: Outcomes written; outcomes dropped unsent (writes failing past ``rotate_bytes``).
        self.sent = 0
        self.dropped = 0
        #: Records that did not decode (or a file's garbage tail), skipped.
        self.garbage = 0
        self.last_garbage = ""
        #: Outcomes dropped for being older than the horizon.
        self.too_old = 0

    # --- writing ------------------------------------------------------------------------

    @property
    def path(self) -> str:
        """This process's current outcome file ('' before its first publication)."""
        return self._path

    def _own_prefix(self) -> str:
        return f"{_OUTCOMES_PREFIX}{self.pid}-{self._token}-"

    def _check_fork(self) -> None:
        """A child forked after the channel was made writes a file of its own, and reads
        its parent's from their end (what they hold is in the tracker it inherited)."""
        if self._pid_given or os.getpid() == self.pid:
            return
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # the parent's lock stays the parent's
        parent = self._own_prefix()
        self._fd, self._path, self._written, self._retired = None, "", 0, []
        self.pid, self._token = os.getpid(), _token()
        for name in os.listdir(self.directory):
            if name.startswith(parent) and name not in self._readers:
                with contextlib.suppress(OSError):
                    fd = os.open(os.path.join(self.directory, name), os.O_RDONLY | os.O_CLOEXEC)
                    self._readers[name] = _Reader(fd, os.fstat(fd).st_size)

    def _open(self) -> int:
        self._sequence += 1
        path = os.path.join(self.directory, f"{self._own_prefix()}{self._sequence:06d}{_OUTCOMES_SUFFIX}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held while we write it: we are alive
        except OSError:
            os.close(fd)
            raise
        self._fd, self._path, self._written = fd, path, os.fstat(fd).st_size
        return fd

    def _rotate(self) -> None:
        """Start a new file; the current one is deleted ``ROTATED_KEEP_S`` from now."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._retired.append((self.clock() + ROTATED_KEEP_S, self._path))
        self._fd, self._path, self._written = None, "", 0

    def _fd_lost(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._fd, self._path, self._written = None, "", 0

    def _delete_retired(self) -> None:
        now = self.clock()
        while self._retired and self._retired[0][0] <= now:
            _, path = self._retired.pop(0)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)

    def publish(self, outcomes: list[SharedOutcome]) -> None:
        """Append ``outcomes`` to this process's file, one ``os.write`` per record (up to
        ``BATCH_OUTCOMES`` outcomes each). Records a failed write did not land go first with
        the next call (up to ``rotate_bytes`` of them, the oldest dropped beyond, counted in
        ``dropped``); a record cut short by the failure is written whole to a new file."""
        with self._lock:
            for start in range(0, len(outcomes), BATCH_OUTCOMES):
                chunk = outcomes[start:start + BATCH_OUTCOMES]
                batch = encode(chunk)
                self._unsent.append((_LENGTH.pack(len(batch)) + batch, len(chunk)))
            if not self._unsent:
                return
            self._check_fork()
            self._delete_retired()
            while self._unsent:
                if self._fd is not None and self._written >= self.rotate_bytes:
                    self._rotate()
                fd = self._fd if self._fd is not None else self._open_or_keep()
                record, count = self._unsent[0]
                try:
                    done = os.write(fd, record)
                except OSError:  # nothing written (a write that fails writes nothing)
                    self._trim_unsent()
                    raise
                self._written += done
                if done != len(record):  # a full disk took part of it: that file is cut
                    self._rotate()  # its readers wait on the cut record for good, harmlessly
                    self._trim_unsent()
                    raise OSError(errno.ENOSPC, f"{done} of {len(record)} bytes written: a new file next time")
                self._unsent.pop(0)
                self.sent += count

    def _open_or_keep(self) -> int:
        try:
            return self._open()
        except OSError:
            self._trim_unsent()
            raise

    def _trim_unsent(self) -> None:
        size = sum(len(record) for record, _ in self._unsent)
        while self._unsent and size > self.rotate_bytes:
            record, count = self._unsent.pop(0)
            size -= len(record)
            self.dropped += count

    # --- reading ------------------------------------------------------------------------

    def receive(self) -> list[SharedOutcome]:
        """The other processes' outcomes published since the last call, in file order."""
        with self._lock:
            self._check_fork()
            own = self._own_prefix()
            names = {
                entry for entry in os.listdir(self.directory)
                if entry.startswith(_OUTCOMES_PREFIX) and entry.endswith(_OUTCOMES_SUFFIX)
                and not entry.startswith(own)
            }
            for gone in [name for name in self._readers if name not in names]:
                fd = self._readers.pop(gone).fd
                if fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(fd)
            received: list[SharedOutcome] = []
            now = self.clock()
            for name in sorted(names):
                self._read(name, received, now)
            if now - self._last_sweep >= SWEEP_EVERY_S:
                self._last_sweep = now
                self._sweep()
        return received

    def _read(self, name: str, received: list[SharedOutcome], now: float) -> None:
        reader = self._readers.get(name)
        if reader is None or reader.fd < 0:
            try:
                fd = os.open(os.path.join(self.directory, name), os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                return
            if reader is None:
                reader = self._readers[name] = _Reader(fd)
            else:
                reader.fd = fd
        size = os.fstat(reader.fd).st_size
        if size - reader.offset < _LENGTH.size:
            return  # nothing new (the common case: one fstat)
        data = os.pread(reader.fd, size - reader.offset, reader.offset)
        position = 0
        while position + _LENGTH.size <= len(data):
            (length,) = _LENGTH.unpack_from(data, position)
            if length > MAX_RECORD:
                self._skip(f"{name}: a record of {length} bytes: the rest of the file is skipped")
                position = len(data)
                break
            end = position + _LENGTH.size + length
            if end > len(data):
                break  # being written: the rest comes with the next call
            try:
                batch = decode(data[position + _LENGTH.size:end])
            except EventFormatError as error:
                self._skip(f"{name}: {error}")
            else:
                if self.horizon_s is None:
                    received.extend(batch)
                else:
                    horizon = now - self.horizon_s
                    for item in batch:  # a deadline still running is news however old its call
                        if item.at >= horizon or item.throttled_until > now or item.quota_until > now:
                            received.append(item)
                        else:
                            self.too_old += 1
            position = end
        reader.offset += position

    def _skip(self, error: str) -> None:
        self.garbage += 1
        self.last_garbage = error

    def _sweep(self) -> None:
        """Delete the outcome files, long idle and fully read, whose writer is gone (a
        process killed, or stopped long ago), and the owner files of gates gone."""
        if self._path and not os.path.exists(self._path):
            self._fd_lost()  # the directory was emptied under us: readers would never see it
        idle_for = STALE_AFTER_S + (self.horizon_s or 0.0)
        wall = time.time()
        for name, reader in list(self._readers.items()):
            if reader.fd < 0:
                continue
            try:
                stat = os.fstat(reader.fd)
            except OSError:
                continue
            if reader.offset < stat.st_size or wall - stat.st_mtime < idle_for:
                continue
            path = os.path.join(self.directory, name)
            if _holder_gone(path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
                os.close(self._readers.pop(name).fd)

    def close(self) -> None:
        """Close the files (this process's stay for the others to read; they are swept
        once idle). A later ``publish`` or ``receive`` opens them again."""
        with self._lock:
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)
                self._fd, self._path, self._written = None, "", 0
            for reader in self._readers.values():
                if reader.fd >= 0:
                    with contextlib.suppress(OSError):
                        os.close(reader.fd)
                reader.fd = -1  # the offset stays: reopened, a file goes on from there


# --- trial gate ---------------------------------------------------------------------------

#: A trial slot: owner pid, owner token (its owner file), issued, deadline.
_SLOT = struct.Struct("<IIdd")
_MAX_SLOTS = 256


class FileTrialGate:
    """Half-open trial permits counted across the processes sharing ``directory``
    (implements :class:`app.scoring.tracker.TrialGate`).

    One file per provider, ``<directory>/health/trials-<hash>``, holds the slots taken:
    (pid, owner, issued, deadline), times on the host's monotonic clock. ``acquire`` never
    waits: while another process holds the file's lock it refuses at once. A slot counts
    until its deadline, or until its owner is gone: each gate holds its own owner file
    locked while it lives (the kernel drops the lock of a killed process), so a slot of a
    process killed with SIGKILL is freed by the next ``acquire`` that finds the slots full.
    """

    def __init__(self, directory: str, *, pid: int | None = None) -> None:
        self.directory = health_directory(directory)
        self.pid = os.getpid() if pid is None else pid
        self._lock = threading.Lock()
        self._fds: dict[str, int] = {}
        self._owner = int.from_bytes(os.urandom(4), "little")
        self._owner_fd: int | None = None
        self._owner_path = self._owner_file(self.pid, self._owner)
        #: Acquires refused because another process held the file's lock at that moment.
        self.busy = 0
        #: Slots freed because their holder was gone before their deadline.
        self.reaped = 0
        self._claim_owner()
        self._sweep_owners()

    def _owner_file(self, pid: int, owner: int) -> str:
        return os.path.join(self.directory, f"{_OWNER_PREFIX}{pid}-{owner:08x}")

    def _claim_owner(self) -> None:
        """Create the owner file locked: made under a temporary name and renamed once
        locked, so no sweeper ever sees it unlocked."""
        temporary = f"{self._owner_path}.{_token()}.tmp"
        fd = os.open(temporary, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)  # a new file nobody else has: at once
        os.rename(temporary, self._owner_path)
        self._owner_fd = fd

    def _sweep_owners(self) -> None:
        for name in os.listdir(self.directory):
            if name.startswith(_OWNER_PREFIX) and not name.endswith(".tmp"):
                path = os.path.join(self.directory, name)
                if path != self._owner_path and _holder_gone(path):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)

    def path(self, provider: str) -> str:
        digest = hashlib.blake2b(provider.encode("utf-8", "replace"), digest_size=12).hexdigest()
        return os.path.join(self.directory, f"{_TRIALS_PREFIX}{digest}")

    def _fd(self, provider: str) -> int:
        fd = self._fds.get(provider)
        if fd is None:
            fd = self._fds[provider] = os.open(self.path(provider), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        return fd

    @contextlib.contextmanager
    def _locked(self, provider: str, tries: int) -> Iterator[int | None]:
        """The provider's file descriptor under its lock, or None when another process
        still held it after ``tries`` quick attempts."""
        with self._lock:  # flock is per open file: the threads of this process queue here
            fd = self._fd(provider)
            for attempt in range(tries):
                if _try_lock(fd, fcntl.LOCK_EX):
                    break
                if attempt + 1 < tries:
                    time.sleep(0.0002)
            else:
                yield None
                return
            try:
                yield fd
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    @staticmethod
    def _slots(fd: int) -> list[tuple[int, int, float, float]]:
        data = os.pread(fd, _SLOT.size * _MAX_SLOTS, 0)
        usable = len(data) - len(data) % _SLOT.size
        return [_SLOT.unpack_from(data, offset) for offset in range(0, usable, _SLOT.size)]

    @staticmethod
    def _write(fd: int, slots: list[tuple[int, int, float, float]]) -> None:
        data = b"".join(_SLOT.pack(*slot) for slot in slots)
        os.pwrite(fd, data, 0)
        os.ftruncate(fd, len(data))

    def acquire(self, provider: str, issued: float, deadline: float, limit: int) -> bool:
        """Take a trial slot for a permit issued at ``issued`` (now) that expires at
        ``deadline``: True when fewer than ``limit`` slots are live, False otherwise or when
        another process holds the file right now."""
        if self._owner_fd is None:  # closed, then used again: alive again
            self._claim_owner()
        with self._locked(provider, 1) as fd:
            if fd is None:
                self.busy += 1
                return False
            slots = self._slots(fd)
            live = [slot for slot in slots if slot[3] > issued]
            if len(live) >= limit:  # full: are their holders all still there?
                held = [slot for slot in live if slot[1] == self._owner or not self._gone(slot)]
                self.reaped += len(live) - len(held)
                live = held
            granted = len(live) < limit
            if granted:
                live.append((self.pid & 0xFFFFFFFF, self._owner, issued, deadline))
            if granted or len(live) != len(slots):
                self._write(fd, live)
            return granted

    def _gone(self, slot: tuple[int, int, float, float]) -> bool:
        return _holder_gone(self._owner_file(slot[0], slot[1]))

    def release(self, provider: str, issued: float) -> None:
        """Give back this process's slot for the permit issued at ``issued``. If another
        process holds the file through a few quick tries, the slot stays until its
        deadline."""
        with self._locked(provider, 3) as fd:
            if fd is None:
                self.busy += 1
                return
            slots = self._slots(fd)
            kept = [slot for slot in slots if not (slot[1] == self._owner and slot[2] == issued)]
            if len(kept) != len(slots):
                self._write(fd, kept)

    def held(self, provider: str, now: float) -> int:
        """Slots live at ``now`` (whoever holds them), read without the lock: for status."""
        with self._lock:
            return sum(1 for slot in self._slots(self._fd(provider)) if slot[3] > now)

    def close(self) -> None:
        """Close the files and drop the owner file: this gate's slots still out are freed
        by the next acquire that finds the slots full."""
        with self._lock:
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds.clear()
            if self._owner_fd is not None:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self._owner_path)
                os.close(self._owner_fd)
                self._owner_fd = None


# --- the sharing thread -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChannelStatus:
    """One channel as ``/ready`` and the health answer show it."""

    name: str
    ok: bool  # its last round went through
    last_error: str | None  # the last failure, as text
    last_error_at: float | None  # when (wall clock, seconds since the epoch)
    errors: int  # rounds that failed
    sent: int  # outcomes published (the channel's count when it keeps one)
    received: int  # outcomes received and applied
    garbage: int  # records it could not read and skipped
    dropped: int  # outcomes it gave up sending (failing too long)
    pending: int  # outcomes waiting for its next round (a channel of a slower cadence)


#: Rounds of Sharing. An outcome waits up to a round in its process's outbox, then up to a
#: round of the reader's: 25 ms keeps the worst case near 50 ms, inside the 100 ms the
#: spec allows with room for scheduling; an idle round costs 20-40 us (0.1% of a core).
INTERVAL_S = 0.025
#: A host's turn at a due trial lasts this many rounds of the channel that crosses hosts:
#: one for the first host's announcement to leave, one for it to be read, one to spare.
TURN_ROUNDS = 3


def turn_place(hosts: Sequence[str], host: str, provider: str, cycle: int) -> int:
    """Where ``host`` comes among ``hosts`` (the live hosts, sorted, the same list on every
    host) when ``provider``'s trial of ``cycle`` is due: the first place goes round the
    hosts from cycle to cycle and differs from provider to provider (a hash of both), so
    no host leads them all. 0 when the host is alone or not listed."""
    if len(hosts) < 2 or host not in hosts:
        return 0
    digest = hashlib.blake2b(f"{provider}\0{cycle}".encode("utf-8", "replace"), digest_size=8).digest()
    first = int.from_bytes(digest, "little") % len(hosts)
    return (hosts.index(host) - first) % len(hosts)
#: Called on every failed round of a channel: its name and the exception.
ErrorHook = Callable[[str, BaseException], None]
#: Outcomes kept for a channel that keeps failing to publish; the oldest go first.
MAX_PENDING = 100_000


@dataclass(slots=True)
class _ChannelState:
    channel: Channel
    interval_s: float | None  # its own cadence; None: every round
    next_at: float = -math.inf
    pending: list[SharedOutcome] | None = None
    ok: bool = True
    last_error: str | None = None
    last_error_at: float | None = None
    errors: int = 0
    sent: int = 0
    received: int = 0


class Sharing:
    """Shares ``tracker``'s outcomes on ``channels`` and replays theirs, every ``interval_s``.

    ``start`` makes the tracker keep its outcomes (``share_outcomes``), installs ``gate`` as
    its trial gate and starts a daemon thread; ``stop`` publishes what is left on every
    channel, joins it, and closes the channels and the gate (the tracker then counts its
    trials alone). A channel that fails (OSError, a Redis error: any exception) is counted,
    kept as its last error with its time and used again next round (what it could not send
    is its own to keep: every outcome is handed to it once); the tracker goes on deciding
    alone meanwhile. A channel with an ``interval_s`` of its own is used at that
    cadence, the outcomes waiting for it batched meanwhile."""

    def __init__(
        self,
        tracker: HealthTracker,
        channels: list[Channel],
        *,
        interval_s: float = INTERVAL_S,
        gate: TrialGate | None = None,
        on_error: ErrorHook | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.tracker = tracker
        self.gate = gate
        self.interval_s = interval_s
        self.on_error = on_error
        self.clock = clock
        self._channels = [
            _ChannelState(channel, getattr(channel, "interval_s", None)) for channel in channels
        ]
        #: The channel that crosses hosts (it knows them), if any: hosts take turns at trials.
        self._across: HostsAware | None = next(
            (channel for channel in channels if isinstance(channel, HostsAware)), None)
        self._lock = threading.Lock()  # one round at a time (the thread's, a test's, stop's)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        #: Rounds that raised outside any channel (applying, taking): counted, never fatal.
        self.failed_rounds = 0

    @property
    def channels(self) -> list[Channel]:
        return [state.channel for state in self._channels]

    def attach(self) -> None:
        """Make the tracker one of the fleet: it keeps its outcomes for the channels, counts
        its trials on the gate, and takes turns with the other hosts (``start`` does this,
        then runs the rounds on its thread)."""
        self.tracker.share_outcomes()
        if self.gate is not None:
            self.tracker.trial_gate = self.gate
        if self._across is not None:
            self.tracker.turn = self._turn

    def _turn(self, provider: str, cycle: int) -> float:
        """Seconds this host waits past a due trial of ``provider`` (see ``turn_place``)."""
        channel = self._across
        if channel is None:
            return 0.0
        place = turn_place(channel.hosts, channel.host_id, provider, cycle)
        return place * TURN_ROUNDS * float(getattr(channel, "interval_s", None) or self.interval_s)

    def start(self) -> None:
        """Start sharing: from now on the tracker keeps its outcomes for the channels."""
        if self._thread is not None:
            return
        self.attach()
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, name="health-sharing", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(self.interval_s):
            try:
                self.sync_once()
            except Exception:  # noqa: BLE001 - the thread must outlive any one bad round
                self.failed_rounds += 1

    def stop(self, timeout: float = 5.0) -> None:
        """Publish what is left on every channel, stop the thread and close the channels."""
        thread, self._thread = self._thread, None
        self._stopping.set()
        if thread is not None:
            thread.join(timeout)
        if self.gate is not None and self.tracker.trial_gate is self.gate:
            self.tracker.trial_gate = None
        if self.tracker.turn == self._turn:
            self.tracker.turn = None
        try:
            self.sync_once(force=True)
        finally:
            for state in self._channels:
                with contextlib.suppress(Exception):
                    state.channel.close()
            close = getattr(self.gate, "close", None)
            if close is not None:
                with contextlib.suppress(Exception):
                    close()

    def sync_once(self, *, force: bool = False) -> int:
        """One round: publish the tracker's new outcomes on every channel due (every one
        with ``force``), receive from them, apply what came. Returns the outcomes applied."""
        with self._lock:
            outcomes = self.tracker.take_outcomes()
            now = self.clock()
            received: list[SharedOutcome] = []
            for state in self._channels:
                if state.pending is None:
                    state.pending = list(outcomes)
                else:
                    state.pending.extend(outcomes)
                    if len(state.pending) > MAX_PENDING:
                        del state.pending[:len(state.pending) - MAX_PENDING]
                if state.interval_s is not None:
                    if not force and now < state.next_at:
                        continue
                    state.next_at = now + state.interval_s
                received.extend(self._round(state))
            if len(received) > 1:
                received.sort(key=lambda item: item.at)  # several senders: in the order they happened
            if received:
                self.tracker.apply(received)
            return len(received)

    def _round(self, state: _ChannelState) -> list[SharedOutcome]:
        channel = state.channel
        pending, state.pending = state.pending or [], None  # handed over once: the channel keeps what fails
        try:
            channel.publish(pending)
            state.sent += len(pending)
            got = channel.receive()
        except Exception as error:  # noqa: BLE001 - a channel's failure leaves the tracker alone
            state.ok = False
            state.errors += 1
            state.last_error = f"{type(error).__name__}: {error}"
            state.last_error_at = time.time()
            if self.on_error is not None:
                with contextlib.suppress(Exception):
                    self.on_error(channel.name, error)
            return []
        state.ok = True
        state.received += len(got)
        return got

    def status(self) -> list[ChannelStatus]:
        """Every channel's state, for ``/ready`` and the health answer."""
        return [
            ChannelStatus(
                name=state.channel.name, ok=state.ok, last_error=state.last_error, last_error_at=state.last_error_at,
                errors=state.errors, sent=int(getattr(state.channel, "sent", state.sent)), received=state.received,
                garbage=int(getattr(state.channel, "garbage", 0)), dropped=int(getattr(state.channel, "dropped", 0)),
                pending=len(state.pending or []),
            )
            for state in self._channels
        ]
