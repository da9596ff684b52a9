"""Scrape bodies at the cost of formatting their values, or less.

A :class:`Renderer` writes a registry in the Prometheus text format 0.0.4 or in
OpenMetrics 1.0. The line prefix of each series (its sample name and escaped labels) is
rendered once, the first time the series is scraped, and kept; a scrape then reads the
values and formats only them, and only those that changed: each family keeps the lines of
its last scrape in blocks (:func:`kept_text`), and a block whose values are bit for bit the
last scrape's (``-0.0`` apart from ``0.0``, NaN by its bits) is reused as it was written; the
blocks are the body's pieces (:meth:`Renderer.chunks`), joined once or gzipped one by one.
The values are read from:

* a Gauge, or a Counter or Histogram of ``without_created`` (the catalogue's families),
  through ``app.client_internals``: its children are compared with the last scrape's (one
  identity check per child), so a new or removed child shows in the next scrape; a
  histogram's buckets are read only for the children whose sum moved
  (:meth:`_MetricLines._histogram_text`);
* a collector that renders itself (:class:`RendersItself`): the multiprocess files'
  ``FilesCollector``, which reads each series' value at a known offset of a worker's file,
  and computed families with many series (token efficiency, through :class:`ComputedGauge`);
* any other collector (process, platform and GC collectors, HTTP stats, the small computed
  families) through ``collect()``, each line's prefix looked up by its name and labels;
  families of other types (info, stateset...) or with timestamps or exemplars are written
  by prometheus_client's own encoder.

HELP and TYPE lines are prometheus_client's (its encoder renders each family once, without
samples); a value is ``repr(value)``, which parses to the same float as prometheus_client's
``floatToGoString``, or exactly its text for NaN and the infinities. The ``name[]`` filter
keeps what prometheus_client's ``restricted_registry()`` keeps: the families of the wanted
sample names, through ``collect()`` when only some of a family's samples are wanted. The
body is built as bytes (prefixes and value texts are kept UTF-8), so no scrape encodes it.
A scrape runs in a thread beside the gateway's event loop: it works in slices and lets go
of the GIL between them (:func:`pause`). What several collectors read, a scrape reads once
(:func:`current_scrape`): a multiprocess directory's listing, the token counts.
"""

from __future__ import annotations

import math
import re
import struct
import threading
import time
import weakref
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from itertools import accumulate, chain, compress
from operator import is_not, or_
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import generate_latest as text_encoder
from prometheus_client.metrics_core import Metric
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_encoder
from prometheus_client.registry import Collector

from app import client_internals as seam

#: prometheus_client's encoders: a collector (anything with ``collect()``) to bytes.
Encoder = Callable[[Any], bytes]

#: Names every format writes as they are (prometheus_client escapes others by the negotiated
#: scheme): families with other names are rendered by its encoder.
_LEGACY_METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LEGACY_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_EOF = b"# EOF\n"


def escape_label_value(value: str) -> str:
    """A label value as both formats write it: backslash, newline and quote escaped."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def line_prefix(sample_name: str, labels: Iterable[tuple[str, str]]) -> bytes:
    """What a sample's line holds before its value, UTF-8: the name and the labels
    (sorted by name, as prometheus_client writes them), then a space."""
    pairs = sorted(labels)
    if not pairs:
        return (sample_name + " ").encode()
    text = ",".join(f'{name}="{escape_label_value(value)}"' for name, value in pairs)
    return f"{sample_name}{{{text}}} ".encode()


#: The bits of ``-0.0``: the one float equal to another (``0.0``) with another text.
_NEGATIVE_ZERO = struct.pack("=d", -0.0)
_POSITIVE_ZERO_TEXT = b"0.0\n"
_NEGATIVE_ZERO_TEXT = b"-0.0\n"


def _has_negative_zero(bits: bytes) -> bool:
    """Whether the doubles of ``bits`` hold a ``-0.0`` (its bytes found at a double's start)."""
    at = bits.find(_NEGATIVE_ZERO)
    while at > 0 and at % 8:
        at = bits.find(_NEGATIVE_ZERO, at + 1)
    return at >= 0


class ValueTexts(dict[float, bytes]):
    """One family's texts: the text of each value with its line's end, remembered, and the
    family's sample lines as the last scrape wrote them (:func:`join_lines`).

    Most values of a scrape are the last scrape's (idle series, bucket counts): the lines of
    a block whose values are bit for bit the last scrape's are reused as they were, and a
    changed block's values mostly cost one dict lookup (a C call through ``map``) instead of
    a float's ``repr``. A value's text is its ``repr``, which parses to the float
    prometheus_client's ``floatToGoString`` writes, or exactly that function's text for NaN
    and the infinities. Values equal as floats share a text (``1`` and ``1.0``), but for
    ``-0.0``: it equals ``0.0`` as a key, so a block holding it is written by
    :meth:`signed`."""

    __slots__ = ("limit", "kept")

    #: Texts kept at least (a family keeps up to one per line): past its limit the memo
    #: starts over, so values that never repeat (histogram sums) cannot grow it forever.
    LIMIT = 4096

    def __init__(self, limit: int = LIMIT) -> None:
        super().__init__()
        self.limit = limit
        #: The family's lines of the last scrape (None: none yet, or not kept).
        self.kept: KeptLines | None = None

    def __missing__(self, value: float) -> bytes:
        if value == 0:  # 0.0 keeps its own text; -0.0 (equal to it) never comes here but through signed()
            text = _POSITIVE_ZERO_TEXT
            value = 0.0
        else:
            text = ((repr(float(value)) if math.isfinite(value) else seam.format_float(value)) + "\n").encode()
        if len(self) >= self.limit:
            self.clear()
        self[value] = text
        return text

    def signed(self, value: float) -> bytes:
        """The text of ``value``, ``-0.0`` apart from ``0.0``."""
        if value == 0 and math.copysign(1.0, value) < 0:
            return _NEGATIVE_ZERO_TEXT
        return self[value]


@dataclass(slots=True)
class KeptLines:
    """A family's sample lines as one scrape wrote them: the layout they were written for,
    the bits of the values they were written from, and the lines of each block of values
    (a block's text is the same object from scrape to scrape while its values are)."""

    layout: Sequence[bytes]
    per_block: int
    bits: bytes
    pieces: list[bytes]


#: Values per block of kept lines: a changed value costs its block's lines again (about
#: 25 KB of text), an unchanged block a comparison of its values' bits (2 KB).
BLOCK_VALUES = 256
#: How long a scrape keeps the GIL at most between two pauses, where it has the chance.
#: A scrape runs in a thread beside the event loop that serves the gateway, and a thread
#: waiting for the GIL gets it only when the holder lets go: at a pause, or after the
#: interpreter's switch interval (5 ms), and never inside a C call. So a scrape works in
#: slices (blocks of lines, slices of reads, one collector) and pauses between them once this
#: long has passed: the loop waits for the GIL about a slice's time, not a whole scrape's.
SLICE_S = 0.001
#: Lines' worth of work between two calls of :func:`pause` (which decides whether to pause):
#: a C loop keeps the GIL to its end.
LINES_PER_SLICE = 4096
#: Histogram children whose values are read between two such calls (16 lines each at most).
CHILDREN_PER_SLICE = LINES_PER_SLICE // 16
#: Values read in one C loop (a read costs a small fraction of a line's writing).
READS_PER_SLICE = 4 * LINES_PER_SLICE
#: A histogram's scrapes between two that read every cell (the others read the buckets of
#: the children whose sum moved: ``_MetricLines._histogram_text``).
FULL_READ_EVERY = 64

_last_pause = threading.local()
_scrape = threading.local()


def current_scrape() -> object | None:
    """The scrape this thread is rendering (an object of its own, for what a scrape reads
    once however many collectors ask: a multiprocess directory's listing), or None outside
    of :meth:`Renderer.chunks`."""
    token: object | None = getattr(_scrape, "token", None)
    return token


def pause() -> None:
    """Let go of the GIL for a moment if this thread has worked a slice (:data:`SLICE_S`)
    since its last pause: a thread waiting for it (the event loop) takes it then. Otherwise
    nothing, so callers call it between any two slices of work."""
    now = time.perf_counter()
    if now - getattr(_last_pause, "at", 0.0) >= SLICE_S:
        time.sleep(0)  # releases the GIL; a waiting thread takes it
        _last_pause.at = time.perf_counter()


#: Writes the lines of the values from ``start`` to ``end`` (indices of the values compared),
#: each value's text by the function given (``ValueTexts.__getitem__`` or ``.signed``).
BlockWriter = Callable[[int, int, Callable[[float], bytes]], bytes]


def write_lines(prefixes: Sequence[bytes], values: Iterable[float], text_of: Callable[[float], bytes]) -> bytes:
    """The sample lines of ``prefixes`` (from :func:`line_prefix`) with ``values``."""
    return b"".join(chain.from_iterable(zip(prefixes, map(text_of, values), strict=True)))


def kept_text(texts: ValueTexts, layout: Sequence[bytes], values: Sequence[float], per_block: int,
              write: BlockWriter) -> list[bytes]:
    """The lines of ``values`` in blocks of ``per_block`` values, one piece per block, each
    written by ``write`` unless its values are bit for bit those the same ``layout`` (a list
    of line prefixes) was last written with: then it is the last scrape's piece. ``values``
    are what the lines are made from (a histogram's cells and sums, its lines cumulative
    counts). The pieces are not joined (the body is, once, or gzip reads them one by one);
    the list returned is the family's kept one: not to be changed."""
    count = len(values)
    try:
        bits = array("d", values).tobytes()
    except (TypeError, OverflowError):  # not all floats (a custom collector's ints beyond a double)
        texts.kept = None
        return [write(0, count, texts.signed)]
    kept = texts.kept
    if kept is not None and not (kept.per_block == per_block and len(kept.bits) == len(bits)
                                 and (kept.layout is layout or kept.layout == layout)):
        kept = None  # written for other lines: every block is written
    if kept is not None and kept.bits == bits:
        kept.layout = layout
        return kept.pieces
    pieces: list[bytes] = []
    for number, start in enumerate(range(0, count, per_block)):
        end = min(start + per_block, count)
        block_bits = bits[start * 8 : end * 8]
        if kept is not None and kept.bits[start * 8 : end * 8] == block_bits:
            pieces.append(kept.pieces[number])
        else:
            pause()
            pieces.append(write(start, end, texts.signed if _has_negative_zero(block_bits) else texts.__getitem__))
    texts.kept = KeptLines(layout, per_block, bits, pieces)
    return pieces


def histogram_values(raw: Sequence[float], buckets: int, cells: int, kept: int) -> list[float]:
    """The values of a histogram's lines from its cells, ``cells`` per child (``buckets``
    bucket cells first): the buckets made cumulative, ``_count`` (the last of them), then
    the first ``kept`` of the child's other cells (its sum, where it has one)."""
    values: list[float] = []
    extend, append = values.extend, values.append
    for at in range(0, len(raw), cells):
        cumulative = list(accumulate(raw[at : at + buckets]))
        extend(cumulative)
        append(cumulative[-1])
        extend(raw[at + buckets : at + buckets + kept])
    return values


def join_lines(prefixes: Sequence[bytes], values: Sequence[float], texts: ValueTexts) -> list[bytes]:
    """The sample lines of ``prefixes`` (from :func:`line_prefix`) with ``values``, one
    line per value, in pieces (:func:`kept_text`); ``texts`` keeps them for the next scrape
    of the same family."""

    def write(start: int, end: int, text_of: Callable[[float], bytes]) -> bytes:
        return write_lines(prefixes[start:end], values[start:end], text_of)

    return kept_text(texts, prefixes, values, BLOCK_VALUES, write)


def header(metric: Metric, openmetrics: bool) -> bytes:
    """The HELP, TYPE (and UNIT) lines of ``metric`` (its samples are ignored), as
    prometheus_client's encoder writes them."""
    bare = Metric(metric.name, metric.documentation, metric.type, metric.unit)
    encoder: Encoder = openmetrics_encoder if openmetrics else text_encoder
    return encoder(_Families([bare])).removesuffix(_EOF)


@dataclass(frozen=True, slots=True)
class FamilyText:
    """One family of a scrape body: its header lines and its sample lines."""

    #: The sample names its lines may carry (what the ``name[]`` filter matches).
    sample_names: frozenset[str]
    header: bytes
    #: Its sample lines, in pieces (blocks of lines kept from scrape to scrape): the body
    #: is ``b"".join(body)``.
    body: Sequence[bytes]


class RendersItself(Protocol):
    """A collector that writes its own families' lines (``FilesCollector``)."""

    def family_texts(self, openmetrics: bool) -> list[FamilyText] | None:
        """Its families, or None to be rendered through ``collect()`` this time."""


class _Families:
    """Metrics already collected, as an encoder reads a registry."""

    def __init__(self, metrics: list[Metric]) -> None:
        self._metrics = metrics

    def collect(self) -> list[Metric]:
        return self._metrics


def _names_are_legacy(family: str, labels: Iterable[str]) -> bool:
    return _LEGACY_METRIC_NAME.match(family) is not None and all(
        _LEGACY_LABEL_NAME.match(label) is not None for label in labels
    )


class _MetricLines:
    """The kept lines of one Gauge, Counter or Histogram: a prefix per sample line, in the
    order of ``collect()``, rebuilt when the children change."""

    __slots__ = ("name", "kind", "sample_names", "headers", "_label_names", "_le", "_has_sum",
                 "_children", "_prefixes", "_cells", "_sum_cells", "_sums", "_moved", "_scrapes",
                 "_by_labels", "_texts", "_read", "_lock")

    def __init__(self, metric: seam.ClientMetric) -> None:
        described = next(iter(metric.describe()))
        # Not the metric itself: the renderer keeps this per metric, in a weak dictionary.
        self.name = seam.family_name(metric)
        self.kind: str = described.type
        name = described.name
        self.headers = {False: header(described, False), True: header(described, True)}
        self._label_names = seam.label_names(metric)
        self._le: list[str] = []
        self._has_sum = False
        if isinstance(metric, Histogram):
            bounds = seam.bucket_bounds(metric)
            self._le = [seam.format_float(bound) for bound in bounds]
            self._has_sum = bounds[0] >= 0  # prometheus_client writes no _sum below 0
            self.sample_names = frozenset({name + "_bucket", name + "_count", name + "_sum"})
        else:
            self.sample_names = frozenset({name + "_total" if self.kind == "counter" else name})
        self._children: list[Any] = []
        self._prefixes: list[bytes] = []
        self._cells: list[seam.ValueCell] = []
        #: A histogram's sum cells, the sums the last scrape read (kept: see _histogram_text),
        #: which of them had moved then (None: unknown), and how many scrapes it had.
        self._sum_cells: list[seam.ValueCell] = []
        self._sums: list[float] = []
        self._moved: list[bool] | None = None
        self._scrapes = 0
        #: label values -> that child's prefixes, kept while the child exists
        self._by_labels: dict[seam.LabelKey, list[bytes]] = {}
        self._texts = ValueTexts()
        #: A counter's or gauge's (scrape, label values, values) of its last read in a scrape.
        self._read: tuple[object, Iterable[seam.LabelKey], list[float]] | None = None
        self._lock = threading.Lock()

    def read_in(self, scrape: object | None) -> tuple[Iterable[seam.LabelKey], list[float]] | None:
        """(label values, values) of its children as ``scrape`` read them, if it did."""
        read = self._read
        if scrape is None or read is None or read[0] is not scrape:
            return None
        return read[1], read[2]

    def family_texts(self, metric: seam.ClientMetric, openmetrics: bool) -> list[FamilyText] | None:
        with self._lock:
            by_labels = seam.children(metric)
            children: list[Any] = list(by_labels.values())
            if children != self._children:  # identity first: equal unless a child came or went
                self._rebuild(by_labels, children)
            if self.kind == "histogram":
                body = self._histogram_text()
            elif self.kind == "gauge" and any(map(seam.has_value_function, children)):
                return None  # a function's value: collect() calls it
            else:
                values = list(map(seam.read_cell, self._cells))
                scrape = current_scrape()
                self._read = None if scrape is None else (scrape, by_labels.keys(), values)
                body = join_lines(self._prefixes, values, self._texts)
        return [FamilyText(self.sample_names, self.headers[openmetrics], body)]

    def _rebuild(self, by_labels: dict[seam.LabelKey, Any], children: list[Any]) -> None:
        kept: dict[seam.LabelKey, list[bytes]] = {}
        prefixes: list[bytes] = []
        for key in by_labels:
            lines = self._by_labels.get(key)
            if lines is None:
                lines = self._child_prefixes(key)
            kept[key] = lines
            prefixes.extend(lines)
        self._by_labels, self._prefixes, self._children = kept, prefixes, children
        self._texts.limit = max(ValueTexts.LIMIT, len(prefixes))
        if self.kind == "histogram":
            # Each child's bucket cells then its sum's, in the order of its lines.
            self._cells = [cell for child in children for cell in (*seam.bucket_cells(child), seam.sum_cell(child))]
            self._sum_cells = list(map(seam.sum_cell, children))
            self._moved = None  # every cell is read at the next scrape
        else:  # a child keeps its cell: read in place, one attribute (read_value is two)
            self._cells = list(map(seam.value_cell, children))

    def _child_prefixes(self, key: seam.LabelKey) -> list[bytes]:
        labels = list(zip(self._label_names, key, strict=True))
        name = self.name
        if self.kind == "histogram":
            lines = [line_prefix(name + "_bucket", [*labels, ("le", le)]) for le in self._le]
            lines.append(line_prefix(name + "_count", labels))
            if self._has_sum:
                lines.append(line_prefix(name + "_sum", labels))
            return lines
        return [line_prefix(name + "_total" if self.kind == "counter" else name, labels)]

    def _histogram_text(self) -> list[bytes]:
        """The lines of every child from its cells: the blocks of children whose cells are
        unchanged are the last scrape's; the others' buckets are made cumulative (``_count``
        is the last one) and written.

        A child's buckets are read only if its sum moved since the last scrape but one:
        ``observe()`` (and the HTTP stats, which write the cells) adds to the sum before the
        bucket, and a float cell's addition always stores a new float object, so a sum that
        is the very object the last scrape read (kept alive here) means no observation
        since, even of 0 or of an amount too small to change the sum. A child whose sum
        moved in the last scrape is read once more: that scrape may have read its sum
        between an observation's two writes. Every :data:`FULL_READ_EVERY` scrapes, and
        whenever a sum is not a float, every cell is read."""
        cells_per_child = len(self._le) + 1
        per_block = max(1, BLOCK_VALUES // cells_per_child) * cells_per_child
        sums = list(map(seam.read_cell, self._sum_cells))
        last_sums, last_moved, kept = self._sums, self._moved, self._texts.kept
        self._sums, self._scrapes = sums, self._scrapes + 1
        if (kept is None or last_moved is None or kept.layout is not self._prefixes or kept.per_block != per_block
                or len(last_sums) != len(sums) or self._scrapes % FULL_READ_EVERY == 0
                or not set(map(type, sums)) <= {float}):
            # Every cell read; the next scrape reads again the children whose sum moved (all of
            # them after a change of children: the last sums were other children's).
            known = last_moved is not None and len(last_sums) == len(sums)
            self._moved = list(map(is_not, sums, last_sums)) if known else [True] * len(sums)
            return self._histogram_read_all(cells_per_child, per_block)
        moved = list(map(is_not, sums, last_sums))
        self._moved = moved
        children_per_block = per_block // cells_per_child
        blocks = sorted({child // children_per_block
                         for child in compress(range(len(sums)), map(or_, moved, last_moved))})
        written: dict[int, tuple[bytes, bytes]] = {}
        for number in blocks:
            start, end = number * per_block, min((number + 1) * per_block, len(self._cells))
            pause()
            raw = list(map(seam.read_cell, self._cells[start:end]))
            try:
                block_bits = array("d", raw).tobytes()
            except (TypeError, OverflowError):
                return self._histogram_read_all(cells_per_child, per_block)
            if block_bits != kept.bits[start * 8 : end * 8]:
                text_of = self._texts.signed if _has_negative_zero(block_bits) else self._texts.__getitem__
                written[number] = (block_bits, self._histogram_lines(raw, start // cells_per_child, text_of))
        if not written:
            return kept.pieces
        bits, pieces = bytearray(kept.bits), list(kept.pieces)
        for number, (block_bits, piece) in written.items():
            bits[number * per_block * 8 : number * per_block * 8 + len(block_bits)] = block_bits
            pieces[number] = piece
        self._texts.kept = KeptLines(self._prefixes, per_block, bytes(bits), pieces)
        return pieces

    def _histogram_read_all(self, cells_per_child: int, per_block: int) -> list[bytes]:
        """:meth:`_histogram_text` from every cell, compared bit for bit with the last scrape's."""
        raw: list[float] = []
        for start in range(0, len(self._cells), READS_PER_SLICE):  # C loops, a pause between two
            pause()
            raw.extend(map(seam.read_cell, self._cells[start : start + READS_PER_SLICE]))

        def write(start: int, end: int, text_of: Callable[[float], bytes]) -> bytes:
            return self._histogram_lines(raw[start:end], start // cells_per_child, text_of)

        return kept_text(self._texts, self._prefixes, raw, per_block, write)

    def _histogram_lines(self, raw: list[float], first_child: int, text_of: Callable[[float], bytes]) -> bytes:
        """The lines of the children whose cells (buckets then sum, each child's) are ``raw``,
        from the child numbered ``first_child``."""
        buckets, has_sum = len(self._le), self._has_sum
        values = histogram_values(raw, buckets, buckets + 1, int(has_sum))
        first = first_child * (buckets + 1 + has_sum)
        return write_lines(self._prefixes[first : first + len(values)], values, text_of)


class ComputedGauge:
    """The lines of a gauge computed at scrape time from (label values, value) pairs (a
    computed collector's ``family_texts``): each label set's prefix is kept while it is
    reported, so a scrape formats values only."""

    __slots__ = ("metric", "_label_names", "_headers", "_prefixes", "_keys", "_layout", "_texts", "_lock")

    def __init__(self, name: str, documentation: str, label_names: Sequence[str]) -> None:
        self.metric = Metric(name, documentation, "gauge")
        self._label_names = tuple(label_names)
        self._headers = {openmetrics: header(self.metric, openmetrics) for openmetrics in (False, True)}
        self._prefixes: dict[tuple[str, ...], bytes] = {}
        #: The label values of the last scrape's lines, in order, and their prefixes.
        self._keys: list[tuple[str, ...]] = []
        self._layout: list[bytes] = []
        self._texts = ValueTexts()
        self._lock = threading.Lock()

    def family_text(self, openmetrics: bool, series: Iterable[tuple[tuple[str, ...], float]]) -> FamilyText:
        columns = list(zip(*series, strict=True))  # C loops: (label values...), (values...)
        keys: list[tuple[str, ...]] = list(columns[0]) if columns else []
        values: list[float] = list(columns[1]) if columns else []
        return self.columns_text(openmetrics, keys, values)

    def columns_text(self, openmetrics: bool, keys: Sequence[tuple[str, ...]], values: Sequence[float]) -> FamilyText:
        """:meth:`family_text` of the series' label values and values, as two columns (the
        same list of keys as the last scrape's costs one identity check per key)."""
        keys = keys if isinstance(keys, list) else list(keys)
        with self._lock:
            if keys != self._keys:  # a series came or went (or the order moved)
                name, label_names, kept = self.metric.name, self._label_names, self._prefixes
                self._prefixes = {
                    key: kept.get(key) or line_prefix(name, zip(label_names, key, strict=True)) for key in keys
                }
                self._keys, self._layout = keys, [self._prefixes[key] for key in keys]
            body = join_lines(self._layout, values, self._texts)
        return FamilyText(frozenset({self.metric.name}), self._headers[openmetrics], body)


#: The types whose samples both encoders write as they come (no ``_created``, ``_gsum`` or
#: ``_gcount`` family moved apart, no name changed): others go to prometheus_client's encoder.
_PLAIN_TYPES = frozenset({"counter", "gauge", "histogram", "summary", "unknown"})
_MOVED_SUFFIXES = ("_created", "_gsum", "_gcount")


class _CollectedLines:
    """The kept prefixes of a collector read through ``collect()`` (the HTTP stats, the
    computed families): its samples are built at each scrape, but each line's prefix is
    looked up by (name, labels) rather than escaped again."""

    __slots__ = ("plain", "_prefixes", "_headers", "_texts", "_lock")

    def __init__(self) -> None:
        #: False once it yielded a family the encoder must write: it goes there from then on.
        self.plain = True
        self._prefixes: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}
        self._headers: dict[tuple[str, str, str, str, bool], bytes] = {}
        #: Each family's texts (its kept lines are its own), by family name.
        self._texts: dict[str, ValueTexts] = {}
        self._lock = threading.Lock()

    def family_texts(self, collector: Collector, openmetrics: bool) -> list[FamilyText] | None:
        """Its families as text, or None when one of them is not plain (prometheus_client's
        encoder writes those)."""
        if not self.plain:
            return None
        metrics = list(collector.collect())
        with self._lock:
            texts: list[FamilyText] = []
            seen: dict[tuple[str, tuple[tuple[str, str], ...]], bytes] = {}
            for metric in metrics:
                text = self._family(metric, openmetrics, seen)
                if text is None:
                    self.plain = False
                    return None
                texts.append(text)
            self._prefixes = seen  # only the series that still exist are kept
            if len(self._texts) > len(metrics):  # families it no longer yields
                names = {metric.name for metric in metrics}
                self._texts = {name: kept for name, kept in self._texts.items() if name in names}
        return texts

    def _family(self, metric: Metric, openmetrics: bool,
                seen: dict[tuple[str, tuple[tuple[str, str], ...]], bytes]) -> FamilyText | None:
        if metric.type not in _PLAIN_TYPES or not _LEGACY_METRIC_NAME.match(metric.name):
            return None
        kept = self._prefixes
        prefixes: list[bytes] = []
        values: list[float] = []
        moved = tuple(metric.name + suffix for suffix in _MOVED_SUFFIXES)
        for sample in metric.samples:
            key = (sample.name, tuple(sample.labels.items()))
            prefix = kept.get(key)
            if prefix is None:
                if sample.name in moved or not _names_are_legacy(sample.name, sample.labels):
                    return None
                prefix = line_prefix(sample.name, sample.labels.items())
            if sample.timestamp is not None or sample.exemplar is not None or sample.native_histogram is not None:
                return None
            seen[key] = prefix
            prefixes.append(prefix)
            values.append(sample.value)
        header_key = (metric.name, metric.documentation, metric.type, metric.unit, openmetrics)
        text = self._headers.get(header_key)
        if text is None:
            text = self._headers[header_key] = header(metric, openmetrics)
        names = frozenset(sample.name for sample in metric.samples)
        texts = self._texts.get(metric.name)
        if texts is None:
            texts = self._texts[metric.name] = ValueTexts()
        return FamilyText(names, text, join_lines(prefixes, values, texts))


class Renderer:
    """Scrape bodies of registries, keeping each series' line prefix between scrapes.

    One renderer may serve several registries that share collectors (``/metrics`` and the
    category endpoints): what it keeps is per collector. Concurrent scrapes are safe; each
    family's lines are guarded by a lock of their own.
    """

    def __init__(self) -> None:
        self._lines: weakref.WeakKeyDictionary[Any, _MetricLines | _CollectedLines] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def render(
        self,
        registry: CollectorRegistry,
        openmetrics: bool = False,
        encoder: Encoder | None = None,
        names: Sequence[str] = (),
    ) -> bytes:
        """``registry`` in OpenMetrics or the text format (restricted to the families of the
        sample names in ``names`` when given); ``encoder`` renders what prometheus_client
        must (prometheus_client's, as ``choose_encoder`` picked it)."""
        return b"".join(self.chunks(registry, openmetrics, encoder, names))

    def chunks(
        self,
        registry: CollectorRegistry,
        openmetrics: bool = False,
        encoder: Encoder | None = None,
        names: Sequence[str] = (),
    ) -> list[bytes]:
        """What :meth:`render` joins: the body in pieces (a family's header, its lines...),
        for a writer that need not join them (gzip)."""
        if encoder is None:
            encoder = openmetrics_encoder if openmetrics else text_encoder
        outer = current_scrape()
        _scrape.token = object()
        try:
            return self._chunks(registry, openmetrics, encoder, frozenset(names) if names else None)
        finally:
            _scrape.token = outer

    def _chunks(self, registry: CollectorRegistry, openmetrics: bool, encoder: Encoder,
                wanted: frozenset[str] | None) -> list[bytes]:
        chunks: list[bytes] = []
        for collector, registered in seam.registered_collectors(registry).items():
            if wanted is not None and wanted.isdisjoint(registered):
                continue
            pause()  # between two collectors, each a slice of work
            texts = self._texts(collector, openmetrics, wanted is None)
            if texts is not None and wanted is not None and not all(text.sample_names <= wanted for text in texts):
                texts = None  # some of its samples only: restricted as prometheus_client does
            if texts is None:
                chunks.append(self._encoded(list(collector.collect()), encoder, openmetrics, wanted))
                continue
            for text in texts:
                if wanted is None or any(text.body):  # a restricted registry drops empty families
                    chunks.append(text.header)
                    chunks.extend(text.body)
        if openmetrics:
            chunks.append(_EOF)
        return chunks

    def _texts(self, collector: Collector, openmetrics: bool, whole: bool) -> list[FamilyText] | None:
        """The families of ``collector`` as text, or None: collected for the encoder."""
        renders_itself = getattr(collector, "family_texts", None)
        if renders_itself is not None:
            texts: list[FamilyText] | None = renders_itself(openmetrics)
            return texts
        lines = self._lines_of(collector)
        if lines is None or (isinstance(lines, _CollectedLines) and not whole):
            return None
        return lines.family_texts(collector, openmetrics)  # type: ignore[arg-type]

    def values_read(self, metric: seam.ClientMetric) -> tuple[Iterable[seam.LabelKey], list[float]] | None:
        """(label values, values) of the children of a Counter or Gauge of ``without_created``
        as this thread's current scrape read them, if it did (a family computed from
        another reads it once per scrape: the token efficiency); None otherwise."""
        try:
            lines = self._lines.get(metric)
        except TypeError:  # not weakly referenceable
            return None
        return lines.read_in(current_scrape()) if isinstance(lines, _MetricLines) else None

    def _lines_of(self, collector: Collector) -> _MetricLines | _CollectedLines | None:
        try:
            return self._lines[collector]
        except KeyError:
            pass
        except TypeError:  # not weakly referenceable: collect() every time
            return None
        lines: _MetricLines | _CollectedLines = _CollectedLines()
        if seam.renders_values_only(collector):
            metric: seam.ClientMetric = collector  # type: ignore[assignment]
            if _names_are_legacy(seam.family_name(metric), seam.label_names(metric)):
                lines = _MetricLines(metric)
        with self._lock:
            return self._lines.setdefault(collector, lines)

    @staticmethod
    def _encoded(metrics: list[Metric], encoder: Encoder, openmetrics: bool, wanted: frozenset[str] | None) -> bytes:
        if wanted is not None:
            restricted = []
            for metric in metrics:
                samples = [sample for sample in metric.samples if sample.name in wanted]
                if samples:
                    kept = Metric(metric.name, metric.documentation, metric.type)
                    kept.samples = samples
                    restricted.append(kept)
            metrics = restricted
        body = encoder(_Families(metrics))
        return body.removesuffix(_EOF) if openmetrics else body
