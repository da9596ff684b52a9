"""The one module that reads prometheus_client's internals.

What it reads, and why:

* a registry's map of collectors to the names they expose (``CollectorRegistry._lock``,
  ``._collector_to_names``): the local summaries skip the collectors of families they do
  not read, as the registry's own ``restricted_registry()`` does;
* a Counter's, Gauge's or Histogram's name, label names, children (``_name``,
  ``_labelnames``, ``_lock``, ``_metrics``) and a histogram's bucket bounds
  (``_upper_bounds``): the summaries read about 33,000 samples every few seconds, and
  ``collect()`` would build a Sample tuple and a label dict for each;
* the value cells of a child (``_value`` of a counter or gauge, ``_sum`` and ``_buckets``
  of a histogram, each cell's current float in ``_value``): the local summaries read
  them in C loops (``attrgetter``), and with several workers the HTTP stats write each
  request straight into them, skipping ``inc``/``observe``'s per-call checks;
* whether the process records into files (``values.ValueClass._multiprocess``), decided
  by prometheus_client when it was imported;
* the multiprocess directory's files (``mmap_dict``'s layout, ``mmap_key``'s JSON key and
  ``values.MultiProcessValue``'s file names): the multiprocess collector reads each file
  incrementally and only the entries of the families asked for, where
  ``MultiProcessCollector`` parses every file in full on every scrape;
* ``utils.floatToGoString``: the text prometheus_client writes for a float (``le``
  labels), so the values read here are labelled exactly as ``collect()`` labels them;
* the values of the multiprocess files in place (:func:`file_values`): the entries' values
  are 8-byte aligned doubles, so the exporter reads a mapped file as an array of doubles
  and takes each series' value at the index it found once (:func:`value_index`);
* which metric classes yield exactly their cells' values (:func:`renders_values_only`): the
  scrape renderer formats those values itself instead of calling ``collect()``;
* a metric class's ``_child_samples`` (the samples of one child): a gauge set to a
  function replaces it per child, and :func:`without_created` overrides it to drop the
  ``_created`` samples of one set of metrics, where prometheus_client only offers a
  process-wide switch.

Checked on prometheus_client :data:`TESTED_VERSIONS` (``pyproject.toml`` allows only
those): ``tests/test_client_internals.py`` checks every function here against the public
API (``collect()``, ``MultiProcessCollector``) and names the internal that moved when one
does. At import this module checks that the attributes it reads exist, and raises
:class:`UnsupportedClientError` naming the missing one rather than an AttributeError deep
in a scrape; the attributes of children are checked on the first child of each metric
class seen (creating one here would write a series into the multiprocess files).

Hot paths keep their cost: the per-value readers (:data:`read_value`, :data:`read_sum`,
:data:`read_cell`) are ``operator.attrgetter`` objects, called from C loops.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Callable, Iterable, Sequence
from importlib.metadata import PackageNotFoundError, version
from operator import attrgetter, itemgetter
from typing import Any, BinaryIO, Protocol, TypeAlias, TypeVar, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, values
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

#: The prometheus_client versions tests/test_client_internals.py passes on (the range
#: of pyproject.toml).
TESTED_VERSIONS = "0.18.0 to 0.26.0"

ClientMetric: TypeAlias = Counter | Gauge | Histogram
LabelKey: TypeAlias = tuple[str, ...]


class UnsupportedClientError(RuntimeError):
    """The installed prometheus_client does not keep an internal where this module reads it."""

    def __init__(self, internal: str, detail: str = "") -> None:
        self.internal = internal
        super().__init__(
            f"prometheus_client {installed_version()}: {internal} is not where app.client_internals "
            f"reads it{': ' + detail if detail else ''}. It was checked on prometheus_client "
            f"{TESTED_VERSIONS}: install one of those, or update app/client_internals.py and "
            "tests/test_client_internals.py."
        )


def installed_version() -> str:
    try:
        return version("prometheus-client")
    except PackageNotFoundError:  # pragma: no cover - a vendored copy
        return "(unknown version)"


class ValueCell(Protocol):
    """One float of prometheus_client (``MutexValue``, or ``MmapedValue`` written through
    to the process's file): what ``Counter.inc`` and ``Histogram.observe`` write into."""

    def inc(self, amount: float) -> None: ...
    def set(self, value: float) -> None: ...
    def get(self) -> float: ...


# --- registries ------------------------------------------------------------------------------


def registered_collectors(registry: CollectorRegistry) -> dict[Collector, list[str]]:
    """Every collector of ``registry`` with the sample names it exposes, as registered
    (a copy, taken under the registry's lock)."""
    with registry._lock:
        return dict(registry._collector_to_names)


# --- Counter, Gauge, Histogram -----------------------------------------------------------------


_DIRECT_TYPES: set[type] = {Counter, Gauge, Histogram}


def reads_directly(collector: object) -> bool:
    """Whether the functions below read ``collector``: a Counter, Gauge or Histogram (or a
    class of :func:`without_created`), whose samples are its cells' values. Any other
    collector, another subclass included, is read through ``collect()``."""
    return type(collector) in _DIRECT_TYPES


#: Gauge, and the classes of :func:`without_created`: each child's samples are its cells'
#: values and nothing else (a plain Counter or Histogram adds ``_created``).
_VALUES_ONLY_TYPES: set[type] = {Gauge}


def renders_values_only(collector: object) -> bool:
    """Whether ``collector`` is read directly (:func:`reads_directly`) and its samples are
    exactly its cells' values: a gauge (unless a child is set to a function, see
    :func:`has_value_function`), or a counter or histogram of :func:`without_created`."""
    return type(collector) in _VALUES_ONLY_TYPES


def family_name(metric: ClientMetric) -> str:
    """The family name ``collect()`` reports (a counter's without ``_total``)."""
    name: str = metric._name
    return name


def label_names(metric: ClientMetric) -> LabelKey:
    return tuple(metric._labelnames)


_Metric = TypeVar("_Metric", bound=ClientMetric)


def children(metric: _Metric) -> dict[LabelKey, _Metric]:
    """The children of ``metric`` by their label values (a copy); an unlabelled metric is
    its own one child, under ``()``."""
    by_labels: dict[LabelKey, _Metric]
    if metric._labelnames:
        with metric._lock:
            # labels() keys each child, made of metric's own class, by a tuple of label values
            by_labels = cast("dict[LabelKey, _Metric]", metric._metrics.copy())
    else:
        by_labels = {(): metric}
    if by_labels and type(metric) not in _verified_children:
        _verify_child(metric, next(iter(by_labels.values())))
    return by_labels


def has_value_function(gauge: Gauge) -> bool:
    """Whether a gauge child's value is a function's (``set_function``): its cell is unused."""
    return "_child_samples" in vars(gauge)


def bucket_bounds(histogram: Histogram) -> tuple[float, ...]:
    """The upper bounds of a histogram's buckets, ``+Inf`` last."""
    return tuple(histogram._upper_bounds)


#: The text prometheus_client writes for a float (``le`` labels): "0.5", "1.0", "+Inf".
format_float: Callable[[float], str] = floatToGoString


# --- value cells ------------------------------------------------------------------------------


def value_cell(child: Counter | Gauge) -> ValueCell:
    """The cell a counter's or gauge's child keeps its value in (``inc`` writes it)."""
    try:
        return child._value  # type: ignore[no-any-return]
    except AttributeError:
        raise UnsupportedClientError(f"{type(child).__name__} child ._value") from None


def sum_cell(child: Histogram) -> ValueCell:
    """The cell a histogram child keeps its sum in."""
    try:
        return child._sum  # type: ignore[no-any-return]
    except AttributeError:
        raise UnsupportedClientError("Histogram child ._sum") from None


def bucket_cells(child: Histogram) -> Sequence[ValueCell]:
    """The cells of a histogram child's buckets, one per bound of :func:`bucket_bounds`,
    each counting its own bucket only (``collect()`` reports them cumulative)."""
    try:
        return child._buckets
    except AttributeError:
        raise UnsupportedClientError("Histogram child ._buckets") from None


# The current float of a cell, a counter's or gauge's child, a histogram child's sum: what
# get() returns, read without the cell's lock (one float read is atomic; a read across
# series is not atomic anyway, as collect() is not). Both value classes (in-process and
# multiprocess) keep it in ``_value``. Checked by children() on a metric class's first child.
read_cell: Callable[[ValueCell], float] = attrgetter("_value")
read_value: Callable[[Counter | Gauge], float] = attrgetter("_value._value")
read_sum: Callable[[Histogram], float] = attrgetter("_sum._value")

_verified_children: set[type] = set()


def _verify_child(metric: ClientMetric, child: ClientMetric) -> None:
    """Check once per metric class that its children keep their cells where the readers
    above look (the first read of a child, never in a loop)."""
    kind = type(metric).__name__
    if isinstance(metric, Histogram):
        cells = bucket_cells(child)  # type: ignore[arg-type]
        if len(cells) != len(metric._upper_bounds):
            raise UnsupportedClientError("Histogram child ._buckets", "not one cell per bound of ._upper_bounds")
        for name, cell in (("._sum", sum_cell(child)), ("._buckets[0]", cells[0])):  # type: ignore[arg-type]
            _verify_cell(cell, f"Histogram child {name}")
    else:
        _verify_cell(value_cell(child), f"{kind} child ._value")  # type: ignore[arg-type]
    _verified_children.add(type(metric))


def _verify_cell(cell: object, where: str) -> None:
    if not isinstance(getattr(cell, "_value", None), (float, int)):
        raise UnsupportedClientError(f"{where}._value", "the cell's current float")
    if not all(callable(getattr(cell, method, None)) for method in ("inc", "set", "get")):
        raise UnsupportedClientError(where, "a value cell with inc(), set() and get()")


# --- multiprocess mode ---------------------------------------------------------------------------


def multiprocess_enabled() -> bool:
    """Whether this process records into files: prometheus_client chose its value class
    when it was imported (``PROMETHEUS_MULTIPROC_DIR`` set then)."""
    return bool(values.ValueClass._multiprocess)


#: Every file of a multiprocess directory, and the files of live gauges (which
#: ``mark_process_dead`` removes).
FILE_GLOB = "*.db"
LIVE_GAUGE_FILE_GLOB = "gauge_live*_*.db"


def file_name_parts(path: str) -> tuple[str, str, str]:
    """(metric type, gauge multiprocess mode or "", process id) of a file:
    ``counter_<pid>.db``, ``gauge_<mode>_<pid>.db``."""
    parts = os.path.basename(path)[:-3].split("_")
    return parts[0], parts[1] if parts[0] == "gauge" else "", parts[-1]


def file_metric_name(name: str, kind: str) -> str:
    """The name the files key a family's entries by (counters lose ``_total``)."""
    if kind == "counter" and name.endswith("_total"):
        return name[: -len("_total")]
    return name


def parse_key(key: str) -> tuple[str, str, dict[str, str], str]:
    """(family name, sample name, labels, help) of a file entry's key."""
    metric_name, sample_name, labels, help_text = json.loads(key)
    return metric_name, sample_name, labels, help_text


def key_prefix(metric_name: str) -> str:
    """What every key of the family ``metric_name`` (as in :func:`file_metric_name`) starts with."""
    return json.dumps([metric_name])[:-1] + ","


# A file: a 4-byte int, the bytes used (header included), 4 bytes of padding, then entries
# of a 4-byte key length, the UTF-8 key padded to 8-byte alignment, and two doubles: the
# value and its timestamp (set by "mostrecent" gauges, else 0).
_INT = struct.Struct("i")
_VALUE = struct.Struct("dd")
#: Where the first entry of a file starts.
FIRST_ENTRY_OFFSET = 8
_DOUBLE_SIZE = 8
#: (value, timestamp) of the entry whose value is at an offset of :func:`scan_entries`.
read_entry_value: Callable[[bytes, int], tuple[float, float]] = _VALUE.unpack_from


def read_used(file: BinaryIO) -> tuple[bytes, int]:
    """The used bytes of an open file (it is preallocated: the rest is not read), and
    how many bytes its header says are used."""
    data = file.read(FIRST_ENTRY_OFFSET)
    used: int = _INT.unpack_from(data, 0)[0] if len(data) >= FIRST_ENTRY_OFFSET else 0
    return data + file.read(max(0, used - FIRST_ENTRY_OFFSET)), used


def scan_entries(data: bytes | mmap.mmap, start: int, used: int) -> tuple[list[tuple[str, int]], int]:
    """(key, offset of its value) of the complete entries between ``start`` (an entry's
    start, :data:`FIRST_ENTRY_OFFSET` at first) and ``used``, and where the next scan
    starts: an entry still being written is left for the next one."""
    found: list[tuple[str, int]] = []
    position = start
    while position < used:
        length = _INT.unpack_from(data, position)[0]
        value_at = position + 4 + length + (8 - (length + 4) % 8)
        if value_at + _VALUE.size > used:
            break
        key = data[position + 4 : position + 4 + length].decode("utf-8")
        found.append((key, value_at))
        position = value_at + _VALUE.size
    return found, position


def value_index(value_at: int) -> int:
    """The index in :func:`file_values` of the value at ``value_at`` (an offset of
    :func:`scan_entries`; its timestamp is at the next index). Entries are padded so that
    values start on 8 bytes."""
    return value_at // _DOUBLE_SIZE


def map_file(path: str) -> mmap.mmap | None:
    """The file at ``path`` mapped read-only (None while it is still empty: its writer
    sizes it right after creating it). Writers only append, so what is mapped stays valid."""
    with open(path, "rb") as file:
        if os.fstat(file.fileno()).st_size < FIRST_ENTRY_OFFSET:
            return None
        return mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)


def file_used(path: str) -> int:
    """How many bytes the header of the file at ``path`` says are used (0 if none yet)."""
    with open(path, "rb") as file:
        header = file.read(FIRST_ENTRY_OFFSET)
    used: int = _INT.unpack_from(header, 0)[0] if len(header) >= FIRST_ENTRY_OFFSET else 0
    return used


def mapped_used(mapped: mmap.mmap) -> int:
    """How many bytes the header of a mapped file says are used."""
    used: int = _INT.unpack_from(mapped, 0)[0]
    return used


def file_values(mapped: mmap.mmap) -> memoryview[float]:
    """A mapped file as doubles: the value of the entry at offset ``value_at`` is at
    ``value_index(value_at)``, its timestamp right after it."""
    return memoryview(mapped)[: len(mapped) - len(mapped) % _DOUBLE_SIZE].cast("d")


def values_reader(indices: Sequence[int]) -> Callable[[memoryview[float]], tuple[float, ...]]:
    """Reads the values at ``indices`` (of :func:`file_values`) of a mapped file, in that
    order, in one call: a struct that skips the bytes between them."""
    order = sorted(range(len(indices)), key=indices.__getitem__)
    parts, previous = ["d"], indices[order[0]]
    for position in order[1:]:
        gap = (indices[position] - previous - 1) * _DOUBLE_SIZE
        parts.append(f"{gap}xd" if gap else "d")
        previous = indices[position]
    unpack = struct.Struct("=" + "".join(parts)).unpack_from
    offset = indices[order[0]] * _DOUBLE_SIZE
    if order == list(range(len(indices))):
        return lambda values: unpack(values, offset)
    inverse = [0] * len(order)
    for place, position in enumerate(order):
        inverse[position] = place
    reorder = itemgetter(*inverse)  # two indices at least: a single one is in order
    return lambda values: reorder(unpack(values, offset))


def read_file_entries(path: str) -> list[tuple[str, float, float]]:
    """(key, value, timestamp) of every complete entry of one file."""
    with open(path, "rb") as file:
        data, used = read_used(file)
    found, _ = scan_entries(data, FIRST_ENTRY_OFFSET, used)
    return [(key, *read_entry_value(data, value_at)) for key, value_at in found]


# --- the import-time check ---------------------------------------------------------------------


def check_client() -> None:
    """Raise :class:`UnsupportedClientError` if an internal read here is missing: on
    objects made only for the check, which record nothing (no child, no file entry)."""
    if not isinstance(getattr(values.ValueClass, "_multiprocess", None), bool):
        raise UnsupportedClientError("values.ValueClass._multiprocess")
    registry = CollectorRegistry(auto_describe=False)
    for attribute in ("_lock", "_collector_to_names"):
        if not hasattr(registry, attribute):
            raise UnsupportedClientError(f"CollectorRegistry.{attribute}")
    if not isinstance(registry._collector_to_names, dict):
        raise UnsupportedClientError("CollectorRegistry._collector_to_names", "a dict of collector to names")
    probes: list[ClientMetric] = [
        Counter("client_internals_probe", "probe", ["label"], registry=None),
        Gauge("client_internals_probe", "probe", ["label"], registry=None),
        Histogram("client_internals_probe", "probe", ["label"], buckets=(1.0,), registry=None),
    ]
    for probe in probes:  # labelled parents: no value, so nothing written anywhere
        kind = type(probe).__name__
        for attribute in ("_name", "_labelnames", "_lock", "_metrics"):
            if not hasattr(probe, attribute):
                raise UnsupportedClientError(f"{kind}.{attribute}")
        if family_name(probe) != "client_internals_probe":
            raise UnsupportedClientError(f"{kind}._name", "the family name")
        if label_names(probe) != ("label",):
            raise UnsupportedClientError(f"{kind}._labelnames", "the label names")
        if not isinstance(probe._metrics, dict):
            raise UnsupportedClientError(f"{kind}._metrics", "a dict of label values to children")
        if not callable(getattr(type(probe), "_child_samples", None)):
            raise UnsupportedClientError(f"{kind}._child_samples", "the samples of one child")
    if tuple(getattr(probes[2], "_upper_bounds", ())) != (1.0, float("inf")):
        raise UnsupportedClientError("Histogram._upper_bounds", "the bucket bounds, +Inf last")
    try:
        from prometheus_client.mmap_dict import mmap_key
    except ImportError:
        raise UnsupportedClientError("mmap_dict.mmap_key", "the key of a file entry") from None
    key = mmap_key("probe", "probe_total", ["label"], ["value"], "help")
    if parse_key(key) != ("probe", "probe_total", {"label": "value"}, "help") or not key.startswith(
        key_prefix("probe")
    ):
        raise UnsupportedClientError("mmap_dict.mmap_key", "the key of a file entry")


check_client()


_MetricType = TypeVar("_MetricType", bound=type[Counter] | type[Histogram])


def without_created(metric_type: _MetricType) -> _MetricType:
    """A subclass of ``metric_type`` whose children yield no ``_created`` sample.

    ``*_created`` series double the series count of every counter and histogram, and no
    dashboard reads them. prometheus_client only offers a process-wide switch
    (``disable_created_metrics()``), which would turn them off in the host gateway's own
    metrics too; this overrides the per-child sample list instead.
    """

    def _child_samples(self: Any) -> Iterable[Any]:
        return tuple(sample for sample in metric_type._child_samples(self) if sample.name != "_created")

    made = type(metric_type.__name__, (metric_type,), {"_child_samples": _child_samples})
    _DIRECT_TYPES.add(made)  # its values are its cells', as its base's: read directly
    _VALUES_ONLY_TYPES.add(made)
    return made  # type: ignore[return-value]
