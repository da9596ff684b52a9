"""Several worker processes, one set of totals: prometheus_client's multiprocess mode.

With ``PROMETHEUS_MULTIPROC_DIR`` set before the process imports prometheus_client, every
metric value lives in a memory-mapped file of that directory, one file per process and
metric type (``counter_<pid>.db``, ``gauge_livesum_<pid>.db``, ...). Any process may read
the whole directory and sum it: that is how a scrape reports every worker exactly, and
how a worker killed with SIGKILL loses nothing it recorded (its files stay; a counter's
file is written before ``inc`` returns).

This module holds what the rest of the package needs of that mode:

* :data:`DIRECTORY`: the directory, or ``None`` in single-process mode;
* :class:`Directory`: the directory's files, mapped, each entry's key parsed once;
* :class:`FilesCollector`: the directory's families (all of them, or one family), summed
  as client_python documents; a scrape reads each series' value where its file keeps it;
* :func:`prepare_directory` for the process that owns the directory (the console script,
  the gunicorn config), and :func:`mark_dead_processes` for the files of dead workers.
"""

from __future__ import annotations

import glob
import mmap
import operator
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import accumulate
from typing import Any

from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from app import client_internals, render
from app.client_internals import FIRST_ENTRY_OFFSET, format_float

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


class _MappedFile:
    """One process's file of one type, mapped: its entries are parsed once (entries are
    appended, never moved, so only the bytes past the last scan are read again), and a
    scrape reads their values in place."""

    __slots__ = ("path", "inode", "kind", "mode", "pid", "mapped", "values", "read_to", "entries")

    def __init__(self, path: str, inode: int) -> None:
        self.path = path
        self.inode = inode
        self.kind, self.mode, self.pid = client_internals.file_name_parts(path)
        self.mapped: mmap.mmap | None = None
        #: The mapped bytes as doubles (client_internals.file_values).
        self.values: memoryview[float] = memoryview(b"").cast("d")
        self.read_to = FIRST_ENTRY_OFFSET  # the header holds the used length
        #: family name (as the files key it) -> (index of the value in ``values``, entry)
        self.entries: dict[str, list[tuple[int, _Entry]]] = {}

    def refresh(self) -> None:
        """Map what the file has grown to and parse the entries added since the last call
        (an entry still being written is left for the next one)."""
        if self.mapped is None or client_internals.mapped_used(self.mapped) > len(self.mapped):
            mapped = client_internals.map_file(self.path)
            if mapped is None:
                return
            self.mapped, self.values = mapped, client_internals.file_values(mapped)
        used = min(client_internals.mapped_used(self.mapped), len(self.mapped))
        if used <= self.read_to:
            return
        found, self.read_to = client_internals.scan_entries(self.mapped, self.read_to, used)
        for key, value_at in found:
            entry = _Entry(key)
            self.entries.setdefault(entry.metric_name, []).append((client_internals.value_index(value_at), entry))


class Directory:
    """The files of one multiprocess directory, mapped and parsed once, shared by the
    collectors of its families. Use it with its ``lock`` held (scrapes may run at once)."""

    #: A directory changed this recently is listed again even if its mtime did not move
    #: (a file created within the filesystem's timestamp granularity of the last listing).
    RECENT_NS = 2_000_000_000
    #: Seconds between two searches for dead processes' live gauges.
    REAP_INTERVAL_S = 1.0

    def __init__(self, path: str) -> None:
        self.path = path
        self.lock = threading.RLock()
        self._files: dict[str, _MappedFile] = {}
        self._sorted: list[_MappedFile] = []
        self._listed_mtime = -1
        self._reaped_at = float("-inf")
        #: The scrape (render.current_scrape) the files were last refreshed for.
        self._refreshed_for: object | None = None

    def refresh(self) -> list[_MappedFile]:
        """Every file, sorted by path, with the entries written so far: once per scrape
        (``render.current_scrape``), however many collectors of the directory it renders;
        at every call outside of one."""
        scrape = render.current_scrape()
        if scrape is not None and scrape is self._refreshed_for:
            return self._sorted
        self._refreshed_for = None  # a failed refresh is tried again by the next collector
        now = time.monotonic()
        if now - self._reaped_at >= self.REAP_INTERVAL_S:
            self._reaped_at = now
            mark_dead_processes(self.path)
        self._list()
        for file in self._sorted:
            try:
                file.refresh()
            except FileNotFoundError:  # a dead worker's live gauges, removed meanwhile
                continue
        self._refreshed_for = scrape
        return self._sorted

    def _list(self) -> None:
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            mtime = -1
        if mtime == self._listed_mtime and time.time_ns() - mtime > self.RECENT_NS:
            return
        files: dict[str, _MappedFile] = {}
        for path in glob.glob(os.path.join(self.path, client_internals.FILE_GLOB)):
            try:
                inode = os.stat(path).st_ino
            except FileNotFoundError:
                continue
            known = self._files.get(path)
            if known is not None and known.inode == inode and not self._replaced(known):
                files[path] = known
            else:
                files[path] = _MappedFile(path, inode)
        self._files, self._sorted, self._listed_mtime = files, [files[path] for path in sorted(files)], mtime

    @staticmethod
    def _replaced(file: _MappedFile) -> bool:
        """Whether a new file took the place (and the freed inode number) of one read before:
        it uses fewer bytes than were read of the old one (files only grow)."""
        try:
            return client_internals.file_used(file.path) < file.read_to
        except FileNotFoundError:
            return True


#: How the values of one series in several files combine: counters and histograms (and
#: "sum" gauges) add up; "min" and "max" gauges keep the least and the greatest.
_COMBINE: dict[str, Callable[[float, float], float]] = {
    "sum": operator.add, "livesum": operator.add, "min": min, "livemin": min, "max": max, "livemax": max,
}
_PER_PROCESS_MODES = ("all", "liveall")
_MOST_RECENT_MODES = ("mostrecent", "livemostrecent")


def _getter(indices: list[int]) -> Callable[[Any], tuple[float, ...]]:
    """Reads the values at ``indices`` of a sequence in one C call, always as a tuple."""
    if len(indices) == 1:
        index = indices[0]
        return lambda values: (values[index],)
    return operator.itemgetter(*indices)


class _FamilyLines:
    """One family's series over the files that hold it, laid out once per set of entries.

    Its *cells* are the series as the files key them (summed across files by the family's
    combination rule); they are grouped by the files that hold them, so a group's values
    are read with one ``itemgetter`` per file and combined with one ``map``. Histogram
    buckets are made cumulative per label set, and ``_count`` is the last bucket, as
    ``MultiProcessCollector`` does.
    """

    __slots__ = ("signature", "kind", "mode", "metric", "headers", "_files", "_groups", "_combine",
                 "_prefixes", "_samples", "_order", "_sets", "_shape", "_recent", "_read", "_prefix_of", "_texts",
                 "_keys")

    def __init__(self, name: str, sources: list[tuple[_MappedFile, list[tuple[int, _Entry]]]],
                 signature: tuple[Any, ...], previous: _FamilyLines | None) -> None:
        self.signature = signature
        first_file, first_entries = sources[0]
        self.kind, self.mode = first_file.kind, first_file.mode
        help_text = first_entries[0][1].help
        self.metric: Metric
        self.headers: dict[bool, bytes]
        if previous is not None and previous.metric.documentation == help_text and previous.kind == self.kind:
            self.metric, self.headers = previous.metric, previous.headers
        else:
            self.metric = Metric(name, help_text, self.kind)
            self.headers = {
                openmetrics: render.header(self.metric, openmetrics) for openmetrics in (False, True)
            }
        self._prefix_of: dict[Any, bytes] = {} if previous is None else previous._prefix_of
        self._texts: render.ValueTexts = render.ValueTexts() if previous is None else previous._texts
        self._texts.limit = max(render.ValueTexts.LIMIT, sum(len(entries) for _file, entries in sources))
        self._files = [file for file, _ in sources]
        per_process = self.kind == "gauge" and self.mode in _PER_PROCESS_MODES
        self._combine = _COMBINE.get(self.mode if self.kind == "gauge" else "sum", operator.add)
        # cell key -> ([(file number, value index)], entry, labels of its line)
        cells: dict[Any, tuple[list[tuple[int, int]], _Entry, dict[str, str]]] = {}
        for number, (file, entries) in enumerate(sources):
            for index, entry in entries:
                if entry.le is not None:
                    key: Any = (entry.series, entry.le)
                elif per_process:
                    key = (entry.series, file.pid)
                else:
                    key = entry.series
                cell = cells.get(key)
                if cell is None:
                    labels = entry.labels
                    if entry.bucket_labels is not None:
                        labels = entry.bucket_labels
                    elif self.kind == "gauge":  # MultiProcessCollector's pid label, kept for "all"
                        labels = {**labels, "pid": file.pid} if per_process else labels
                    cell = cells[key] = ([], entry, labels)
                cell[0].append((number, index))
        groups: dict[tuple[int, ...], list[Any]] = {}
        for key, (places, _entry, _labels) in cells.items():
            groups.setdefault(tuple(number for number, _ in places), []).append(key)
        self._groups: list[tuple[tuple[int, ...], list[Callable[[Any], tuple[float, ...]]]]] = []
        ordered_keys: list[Any] = []
        index_in = {key: dict(places) for key, (places, _entry, _labels) in cells.items()}
        for numbers, keys in groups.items():
            getters = [client_internals.values_reader([index_in[key][number] for key in keys]) for number in numbers]
            self._groups.append((numbers, getters))
            ordered_keys.extend(keys)
        self._recent: list[tuple[bytes, list[tuple[int, int]], tuple[str, dict[str, str]]]] | None = None
        self._sets: list[tuple[int, int]] = []
        #: A histogram's (buckets, other cells) of each label set, when all have the same.
        self._shape: tuple[int, int] | None = None
        #: The scrape (render.current_scrape) lines() last read for, and what it read.
        self._read: tuple[object, tuple[list[bytes], list[float], list[tuple[str, dict[str, str]]]]] | None = None
        self._order: Callable[[Any], tuple[float, ...]] | None = None
        prefix_of: dict[Any, bytes] = {}

        def prefix(key: Any, sample_name: str, labels: dict[str, str]) -> bytes:
            text = self._prefix_of.get(key)
            if text is None:
                text = render.line_prefix(sample_name, labels.items())
            prefix_of[key] = text
            return text

        self._prefixes: list[bytes] = []
        self._samples: list[tuple[str, dict[str, str]]] = []
        if self.kind == "gauge" and self.mode in _MOST_RECENT_MODES:
            self._recent = [(prefix(key, cells[key][1].sample_name, cells[key][2]), cells[key][0],
                             (cells[key][1].sample_name, cells[key][2])) for key in cells]
        elif self.kind == "histogram":
            position = {key: number for number, key in enumerate(ordered_keys)}
            by_set: dict[tuple[Any, ...], tuple[list[Any], list[Any]]] = {}
            for key in cells:
                entry = cells[key][1]
                buckets, others = by_set.setdefault(tuple(sorted(entry.labels.items())), ([], []))
                (buckets if entry.le is not None else others).append(key)
            order: list[int] = []
            for set_key, (buckets, others) in by_set.items():
                buckets.sort(key=lambda key: cells[key][1].le or 0.0)
                for key in buckets:
                    entry, labels = cells[key][1], cells[key][2]
                    self._prefixes.append(prefix(key, name + "_bucket", labels))
                    self._samples.append((name + "_bucket", labels))
                if buckets:
                    labels = cells[buckets[0]][1].labels
                    self._prefixes.append(prefix(("count", set_key), name + "_count", labels))
                    self._samples.append((name + "_count", labels))
                for key in others:
                    entry, labels = cells[key][1], cells[key][2]
                    self._prefixes.append(prefix(key, entry.sample_name, labels))
                    self._samples.append((entry.sample_name, labels))
                order.extend(position[key] for key in buckets + others)
                self._sets.append((len(buckets), len(others)))
            self._order = _getter(order)
            if len(set(self._sets)) == 1 and self._sets[0][0]:  # every label set has the same cells
                self._shape = self._sets[0]
        else:
            for key in ordered_keys:
                entry, labels = cells[key][1], cells[key][2]
                self._prefixes.append(prefix(key, entry.sample_name, labels))
                self._samples.append((entry.sample_name, labels))
        self._prefix_of = prefix_of
        self._keys: dict[tuple[str, ...], list[tuple[str, ...]]] = {}

    def _cell_values(self) -> list[float]:
        values: list[float] = []
        combine = self._combine
        for numbers, getters in self._groups:
            combined: Any = None
            for number, getter in zip(numbers, getters, strict=True):
                read = getter(self._files[number].values)
                combined = read if combined is None else list(map(combine, combined, read))
            values.extend(combined)
        return values

    def lines(self) -> tuple[list[bytes], list[float], list[tuple[str, dict[str, str]]]]:
        """(prefixes, values, (sample name, labels)) of the family's lines now: read once
        per scrape (``render.current_scrape``: its text, and the token efficiency from the
        token counts), at every call outside of one."""
        scrape = render.current_scrape()
        if scrape is not None and self._read is not None and self._read[0] is scrape:
            return self._read[1]
        read = self._read_lines()
        self._read = None if scrape is None else (scrape, read)
        return read

    def _read_lines(self) -> tuple[list[bytes], list[float], list[tuple[str, dict[str, str]]]]:
        if self._recent is not None:
            return self._most_recent()
        values = self._cell_values()
        if self._order is None:
            return self._prefixes, values, self._samples
        ordered = self._order(values)
        lines: list[float] = []
        extend, append = lines.extend, lines.append
        start = 0
        for number, (buckets, others) in enumerate(self._sets):
            if number and not number % render.CHILDREN_PER_SLICE:
                render.pause()  # the GIL to a worker's event loop now and then (render.LINES_PER_SLICE)
            if buckets:
                cumulative = list(accumulate(ordered[start : start + buckets]))
                extend(cumulative)
                append(cumulative[-1])
            extend(ordered[start + buckets : start + buckets + others])
            start += buckets + others
        return self._prefixes, lines, self._samples

    def _most_recent(self) -> tuple[list[bytes], list[float], list[tuple[str, dict[str, str]]]]:
        """A "mostrecent" gauge: each series' value of the latest write (by its timestamp);
        a series never set (timestamp 0 everywhere) is left out, as MultiProcessCollector does."""
        prefixes: list[bytes] = []
        values: list[float] = []
        samples: list[tuple[str, dict[str, str]]] = []
        assert self._recent is not None
        for prefix, places, sample in self._recent:
            newest, value = 0.0, None
            for number, index in places:
                file_values = self._files[number].values
                if file_values[index + 1] > newest:
                    newest, value = file_values[index + 1], file_values[index]
            if value is not None:
                prefixes.append(prefix)
                values.append(value)
                samples.append(sample)
        return prefixes, values, samples

    def keyed(self, label_names: tuple[str, ...]) -> tuple[list[tuple[str, ...]], list[float]]:
        """(the values of ``label_names`` of each line, each line's value)."""
        _prefixes, values, samples = self.lines()
        keys = self._keys.get(label_names) if self._recent is None else None
        if keys is None:
            keys = [tuple(labels[name] for name in label_names) for _name, labels in samples]
            if self._recent is None:
                self._keys[label_names] = keys
        return keys, values

    def text(self, openmetrics: bool) -> render.FamilyText:
        body: list[bytes]
        if self._shape is not None:
            body = self._histogram_text(*self._shape)
        else:
            prefixes, values, _ = self.lines()
            body = render.join_lines(prefixes, values, self._texts)
        return render.FamilyText(_sample_names(self.metric), self.headers[openmetrics], body)

    def _histogram_text(self, buckets: int, others: int) -> list[bytes]:
        """A histogram's lines from its cells (each label set's buckets, then its other
        cells): the blocks of label sets whose cells are bit for bit the last scrape's are
        its text; only the others' buckets are made cumulative and written."""
        assert self._order is not None
        raw = self._order(self._cell_values())
        cells, lines_per_set = buckets + others, buckets + 1 + others
        prefixes = self._prefixes

        def write(start: int, end: int, text_of: Callable[[float], bytes]) -> bytes:
            values = render.histogram_values(raw[start:end], buckets, cells, others)
            first = start // cells * lines_per_set
            return render.write_lines(prefixes[first : first + len(values)], values, text_of)

        per_block = max(1, render.BLOCK_VALUES // cells) * cells
        return render.kept_text(self._texts, prefixes, raw, per_block, write)

    def collected(self) -> Metric:
        metric = Metric(self.metric.name, self.metric.documentation, self.metric.type)
        _prefixes, values, samples = self.lines()
        metric.samples = [Sample(name, labels, value) for (name, labels), value in zip(samples, values, strict=True)]
        return metric


def _sample_names(metric: Metric) -> frozenset[str]:
    if metric.type == "counter":
        return frozenset({metric.name + "_total"})
    if metric.type == "histogram":
        return frozenset({metric.name + "_bucket", metric.name + "_count", metric.name + "_sum"})
    return frozenset({metric.name})


class FilesCollector(Collector):
    """The families named in ``names`` (or every family), summed over every process's files.

    The sums follow client_python's ``MultiProcessCollector`` (counters and histograms
    summed, histogram buckets made cumulative, gauges by their multiprocess mode), but
    each file's keys are parsed once and kept, and each family's lines are laid out once:
    a scrape reads the values at their known places in the mapped files and formats them
    (:meth:`family_texts`, for ``app.render.Renderer``), and a category's collectors read
    only their own families. Collectors of one directory share its :class:`Directory`.
    """

    def __init__(self, path: str | Directory, families: Iterable[tuple[str, str]] | None = None) -> None:
        """``families``: (name, type) of the catalogue families to read; None: all."""
        self.directory = path if isinstance(path, Directory) else Directory(path)
        self.path = self.directory.path
        self._families = None if families is None else [
            (file_metric_name(name, kind), kind) for name, kind in families
        ]
        self._lines: dict[str, _FamilyLines] = {}

    def describe(self) -> Iterator[Metric]:
        # The registry learns the names without reading the files.
        for name, kind in self._families or ():
            yield Metric(name, "", kind)

    def collect(self) -> Iterator[Metric]:
        with self.directory.lock:  # the files and the layouts are shared by concurrent scrapes
            metrics = [lines.collected() for lines in self._current()]
        yield from metrics

    def family_texts(self, openmetrics: bool) -> list[render.FamilyText]:
        with self.directory.lock:
            return [lines.text(openmetrics) for lines in self._current()]

    def keyed(self, label_names: tuple[str, ...]) -> tuple[list[tuple[str, ...]], list[float]]:
        """Every line's values of ``label_names`` and its value (no Sample built): for
        families computed from these (token efficiency from the token counts)."""
        keys: list[tuple[str, ...]] = []
        values: list[float] = []
        with self.directory.lock:
            for lines in self._current():
                more_keys, more_values = lines.keyed(label_names)
                keys += more_keys
                values += more_values
        return keys, values

    def _current(self) -> list[_FamilyLines]:
        files = self.directory.refresh()
        if self._families is None:
            names = sorted({name for file in files for name in file.entries})
        else:
            names = [name for name, _ in self._families]
        current: list[_FamilyLines] = []
        kept: dict[str, _FamilyLines] = {}
        for name in names:
            sources = [(file, file.entries[name]) for file in files if name in file.entries]
            if not sources:
                continue
            signature = tuple((file.path, file.inode, len(entries)) for file, entries in sources)
            lines = self._lines.get(name)
            if lines is None or lines.signature != signature:
                lines = _FamilyLines(name, sources, signature, lines)
            kept[name] = lines
            current.append(lines)
        self._lines = kept
        return current


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


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
