"""Several worker processes, one set of totals: prometheus_client's multiprocess mode.

With ``PROMETHEUS_MULTIPROC_DIR`` set before the process imports prometheus_client, every
metric value lives in a memory-mapped file of that directory, one file per process and
metric type (``counter_<pid>.db``, ``gauge_livesum_<pid>.db``, ...). Any process may read
the whole directory and sum it: that is how a scrape reports every worker exactly, and
how a worker killed with SIGKILL loses nothing it recorded (its files stay; a counter's
file is written before ``inc`` returns).

This module holds what the rest of the package needs of that mode:

* :data:`DIRECTORY`: the directory, or ``None`` in single-process mode;
* :class:`FilesCollector`: the directory's families (all of them, or one category's),
  summed as client_python documents, reading only the entries of the families asked for;
* :func:`prepare_directory` for the process that owns the directory (the console script,
  the gunicorn config), and :func:`mark_dead_processes` for the files of dead workers.
"""

from __future__ import annotations

import glob
import os
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from app import client_internals
from app.client_internals import FIRST_ENTRY_OFFSET, format_float, read_entry_value

#: prometheus_client's own variable, read the way prometheus_client reads it (once, at
#: import): the package cannot choose a mode prometheus_client did not choose.
ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"

#: Whether this process records into files (prometheus_client decided at its import).
ENABLED: bool = client_internals.multiprocess_enabled()
DIRECTORY: str | None = os.environ.get(ENV_VAR) if ENABLED else None


#: The name prometheus_client keys a family's file entries by (counters lose ``_total``).
file_metric_name = client_internals.file_metric_name


class _Entry:
    """What one file entry's key means, parsed once (keys never change; files only grow)."""

    __slots__ = ("metric_name", "help", "sample_name", "labels", "series", "le", "bucket_labels")

    def __init__(self, key: str) -> None:
        metric_name, sample_name, labels, help_text = client_internals.parse_key(key)
        self.metric_name: str = metric_name
        self.help: str = help_text
        self.sample_name: str = sample_name
        le = labels.pop("le", None) if sample_name.endswith("_bucket") else None
        bound = None if le is None else float(le)
        self.le: float | None = bound
        self.labels: dict[str, str] = labels
        self.bucket_labels = None if bound is None else {**labels, "le": format_float(bound)}
        #: The series a histogram bucket belongs to; the sample itself otherwise.
        self.series = (sample_name if le is None else metric_name,) + tuple(sorted(labels.items()))


class _File:
    """One process's file of one type: its entries, read incrementally. Entries are
    appended, never moved, so only the bytes past the last read are parsed again; the
    entries of families not asked for are skipped once, then never looked at."""

    __slots__ = ("path", "kind", "mode", "pid", "inode", "read_to", "entries")

    def __init__(self, path: str) -> None:
        self.path = path
        self.kind, self.mode, self.pid = client_internals.file_name_parts(path)
        self.inode = -1
        self.read_to = FIRST_ENTRY_OFFSET  # the header holds the used length
        self.entries: list[tuple[int, _Entry]] = []  # (offset of the value, entry)

    def read(self, prefixes: tuple[str, ...] | None) -> bytes:
        with open(self.path, "rb") as file:
            inode = os.fstat(file.fileno()).st_ino
            data, used = client_internals.read_used(file)  # preallocated: only what is used
        if inode != self.inode or used < self.read_to:  # a new file under the same name
            self.inode, self.read_to, self.entries = inode, FIRST_ENTRY_OFFSET, []
        # An entry being written is left for the next read.
        found, self.read_to = client_internals.scan_entries(data, self.read_to, used)
        self.entries.extend(
            (value_at, _Entry(key)) for key, value_at in found if prefixes is None or key.startswith(prefixes)
        )
        return data


class FilesCollector(Collector):
    """The families named in ``names`` (or every family), summed over every process's files.

    The sums follow client_python's ``MultiProcessCollector`` (counters and histograms
    summed, histogram buckets made cumulative, gauges by their multiprocess mode), but
    each file's keys are parsed once and kept, and a category's collector keeps only its
    own families' entries, so a scrape costs what it returns.
    """

    def __init__(self, path: str, families: Iterable[tuple[str, str]] | None = None) -> None:
        """``families``: (name, type) of the catalogue families to read; None: all."""
        self.path = path
        self._families = None if families is None else [
            (file_metric_name(name, kind), kind) for name, kind in families
        ]
        self._prefixes = (
            None if self._families is None
            else tuple(client_internals.key_prefix(name) for name, _ in self._families)
        )
        self._files: dict[str, _File] = {}
        self._lock = threading.Lock()

    def describe(self) -> Iterator[Metric]:
        # The registry learns the names without reading the files.
        for name, kind in self._families or ():
            yield Metric(name, "", kind)

    def collect(self) -> Iterator[Metric]:
        _reap_dead_processes(self.path)
        with self._lock:  # the file cache is shared by concurrent scrapes
            metrics = self._sum()
        yield from metrics.values()

    def _sum(self) -> dict[str, Metric]:
        paths = set(glob.glob(os.path.join(self.path, client_internals.FILE_GLOB)))
        for gone in set(self._files) - paths:
            del self._files[gone]
        values: dict[tuple[Any, ...], float] = {}
        newest: dict[tuple[Any, ...], float] = {}
        buckets: dict[tuple[Any, ...], dict[float, list[Any]]] = {}
        infos: dict[tuple[Any, ...], tuple[_Entry, str, dict[str, str]]] = {}
        for path in sorted(paths):
            file = self._files.get(path)
            if file is None:
                file = self._files[path] = _File(path)
            try:
                data = file.read(self._prefixes)
            except FileNotFoundError:  # a dead worker's live gauges, removed meanwhile
                continue
            kind, mode = file.kind, file.mode
            for value_at, entry in file.entries:
                value, timestamp = read_entry_value(data, value_at)
                if entry.le is not None:
                    per_le = buckets.setdefault(entry.series, {})
                    bucket = per_le.get(entry.le)
                    if bucket is None:
                        per_le[entry.le] = [value, entry.bucket_labels]
                    else:
                        bucket[0] += value
                    infos.setdefault(entry.series, (entry, kind, entry.labels))
                    continue
                series, labels = entry.series, entry.labels
                if kind == "gauge" and mode in ("all", "liveall"):  # one series per process
                    series = series + (("pid", file.pid),)
                    labels = {**labels, "pid": file.pid}
                current = values.get(series)
                if current is None:
                    values[series] = value
                    newest[series] = timestamp
                    infos[series] = (entry, kind, labels)
                elif kind != "gauge" or mode in ("sum", "livesum"):
                    values[series] = current + value
                elif mode in ("min", "livemin"):
                    values[series] = min(current, value)
                elif mode in ("max", "livemax"):
                    values[series] = max(current, value)
                elif mode in ("mostrecent", "livemostrecent") and timestamp > newest[series]:
                    values[series], newest[series] = value, timestamp
        metrics: dict[str, Metric] = {}

        def metric_of(entry: _Entry, kind: str) -> Metric:
            metric = metrics.get(entry.metric_name)
            if metric is None:
                metric = metrics[entry.metric_name] = Metric(entry.metric_name, entry.help, kind)
            return metric

        for series, value in values.items():
            entry, kind, labels = infos[series]
            metric_of(entry, kind).samples.append(Sample(entry.sample_name, labels, value))
        for series, per_le in buckets.items():
            entry, kind, _ = infos[series]
            metric = metric_of(entry, kind)
            cumulative = 0.0
            for le in sorted(per_le):
                value, labels = per_le[le]
                cumulative += value
                metric.samples.append(Sample(entry.sample_name, labels, cumulative))
            metric.samples.append(Sample(entry.metric_name + "_count", entry.labels, cumulative))
        return metrics


def prepare_directory(path: str) -> str:
    """Create ``path`` or empty it of a previous run's files; for the owning process only,
    before any worker starts (client_python: "wiped between runs")."""
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, client_internals.FILE_GLOB)):
        os.remove(stale)
    return path


def mark_dead_processes(path: str) -> list[int]:
    """``mark_process_dead`` for every process whose live-gauge files remain but which has
    ended: its in-flight requests and health views stop counting. Counters, histograms
    and non-live gauges of dead processes stay in the totals, as client_python intends."""
    dead: list[int] = []
    for file in glob.glob(os.path.join(path, client_internals.LIVE_GAUGE_FILE_GLOB)):
        pid_text = client_internals.file_name_parts(file)[2]
        if pid_text.isdigit() and not _alive(int(pid_text)):
            try:
                mark_process_dead(int(pid_text), path)  # type: ignore[no-untyped-call]
            except FileNotFoundError:  # another reader removed it first
                pass
            dead.append(int(pid_text))
    return dead


_reaped_at: dict[str, float] = {}


def _reap_dead_processes(path: str) -> None:
    """mark_dead_processes, at most once a second however many collectors read ``path``."""
    now = time.monotonic()
    if now - _reaped_at.get(path, -1.0) >= 1.0:
        _reaped_at[path] = now
        mark_dead_processes(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
