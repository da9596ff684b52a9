"""app.render: scrape bodies equal, parsed, to prometheus_client's own.

The oracle is prometheus_client: ``generate_latest`` (text 0.0.4) and its OpenMetrics
encoder over the same registry in one process, ``MultiProcessCollector`` over the same
multiprocess directory. Both outputs are parsed by prometheus_client's two parsers and
compared family by family: name, HELP, TYPE and every sample's name, labels and value.
The same renderer scrapes again after updates (new series, changed values, removed
children, dead processes), since what it keeps between scrapes is the point.
"""

from __future__ import annotations

import math
import os
import struct
import threading
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.openmetrics.parser import text_string_to_metric_families as parse_openmetrics
from prometheus_client.parser import text_string_to_metric_families as parse_text
from prometheus_client.utils import floatToGoString

from app.client_internals import without_created
from app.multiprocess import Directory, FilesCollector
from app.render import Renderer
from tests.conftest import promtool_check_metrics

CounterType = without_created(Counter)
HistogramType = without_created(Histogram)
GAUGE_MODES = ("all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent",
               "livemostrecent")

Value = tuple[bool, float]
Parsed = dict[str, tuple[str, str, list[tuple[str, tuple[tuple[str, str], ...], Value]]]]


def value_of(value: float) -> Value:
    """A value compared as floats compare (0.0 == -0.0), NaN equal to NaN."""
    return (True, 0.0) if math.isnan(value) else (False, float(value))


def parsed(body: bytes, openmetrics: bool) -> Parsed:
    """Family name -> (HELP, TYPE, sorted samples)."""
    families = (parse_openmetrics if openmetrics else parse_text)(body.decode())
    out: Parsed = {}
    for family in families:
        samples = sorted((sample.name, tuple(sorted(sample.labels.items())), value_of(sample.value))
                         for sample in family.samples)
        out[family.name] = (family.documentation, family.type, samples)
    return out


def assert_same(ours: Callable[[bool], bytes], theirs: Callable[[bool], bytes]) -> None:
    """Both formats: parsed, ours equals prometheus_client's (or both fail to parse)."""
    for openmetrics in (False, True):
        expected_body = theirs(openmetrics)
        body = ours(openmetrics)
        try:
            expected = parsed(expected_body, openmetrics)
        except ValueError:  # prometheus_client's own output refused by its parser: ours too
            with pytest.raises(ValueError):
                parsed(body, openmetrics)
            continue
        assert parsed(body, openmetrics) == expected, ("OpenMetrics" if openmetrics else "text 0.0.4")


def client_encoder(openmetrics: bool) -> Callable[[Any], bytes]:
    return openmetrics_latest if openmetrics else generate_latest  # type: ignore[no-any-return]


# --- strategies ----------------------------------------------------------------------------------

hostile_text = st.one_of(
    st.sampled_from(['"', "\\", "\n", '\\"', "a\\nb", "\\\\n", "}", "{", ",", "=", " ", "é", "日本", "🙂", "",
                     "\t", "\r", "#", "x y"]),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12),
)
label_values = st.tuples(hostile_text, hostile_text)
values = st.one_of(
    st.sampled_from([0.0, -0.0, 1.0, -1.0, 1e300, -1e300, 5e-324, 1234567.0, 0.1, math.nan, math.inf, -math.inf]),
    st.floats(allow_nan=True, allow_infinity=True),
)
counts = st.one_of(st.sampled_from([0.0, 1.0, 2.5, 1e300, 1e16, math.inf]),
                   st.floats(min_value=0, allow_nan=False, allow_infinity=False))
observations = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
bucket_sets = st.sampled_from([(0.1, 1.0, 10.0), (0.005, 0.5, 1234567.0, 5e9), (-1.0, 0.0, 1.0), (1.0,)])


@st.composite
def operations(draw: st.DrawFn, kinds: list[str]) -> list[tuple[int, tuple[str, str] | None, str, float]]:
    """(family, label values or None for an unlabelled family's own value, action, amount)."""
    ops = []
    for _ in range(draw(st.integers(0, 12))):
        index = draw(st.integers(0, len(kinds) - 1))
        kind = kinds[index]
        actions = ["set", "set", "remove", "clear"] if kind == "gauge" else ["add", "add", "remove"]
        action = draw(st.sampled_from(actions))
        amount = draw(values if kind == "gauge" else counts if kind == "counter" else observations)
        ops.append((index, draw(label_values), action, amount))
    return ops


# --- one process ---------------------------------------------------------------------------------


def make_metric(index: int, kind: str, labelled: bool, buckets: tuple[float, ...], registry: CollectorRegistry,
                help_text: str) -> Any:
    labels = ["a", "b_2"] if labelled else []
    name = f"render_{kind}_{index}"
    if kind == "counter":
        return CounterType(name + "_total", help_text, labels, registry=registry)
    if kind == "gauge":
        return Gauge(name, help_text, labels, registry=registry)
    return HistogramType(name + "_seconds", help_text, labels, buckets=buckets, registry=registry)


def apply(metrics: list[Any], labelled: list[bool], ops: list[tuple[int, tuple[str, str] | None, str, float]]) -> None:
    for index, labels, action, amount in ops:
        metric = metrics[index]
        if action == "clear":
            metric.clear() if labelled[index] else None
            continue
        if action == "remove":
            if labelled[index] and labels is not None:
                try:
                    metric.remove(*labels)
                except KeyError:
                    pass
            continue
        child = metric.labels(*labels) if labelled[index] and labels is not None else metric
        if isinstance(metric, Gauge):
            child.set(amount)
        elif isinstance(metric, Histogram):
            child.observe(amount)
        else:
            child.inc(amount)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), kinds=st.lists(st.sampled_from(["counter", "gauge", "histogram"]), min_size=1, max_size=4),
       help_text=hostile_text, buckets=bucket_sets)
def test_one_process_parses_to_prometheus_clients_samples_across_updates(
    data: st.DataObject, kinds: list[str], help_text: str, buckets: tuple[float, ...]
) -> None:
    registry = CollectorRegistry()
    labelled = [data.draw(st.booleans()) for _ in kinds]
    metrics = [make_metric(index, kind, labelled[index], buckets, registry, help_text)
               for index, kind in enumerate(kinds)]
    renderer = Renderer()
    for _round in range(3):  # the same renderer, scraping between updates
        apply(metrics, labelled, data.draw(operations(kinds)))
        assert_same(lambda om: renderer.render(registry, om), lambda om: client_encoder(om)(registry))


def test_text_body_is_byte_for_byte_prometheus_clients_for_finite_values() -> None:
    registry = CollectorRegistry()
    counter = CounterType("render_bytes_total", 'help with "quotes" \\ and\nnewline', ["a"], registry=registry)
    histogram = HistogramType("render_bytes_seconds", "h", ["a"], buckets=(0.1, 1.0), registry=registry)
    gauge = Gauge("render_bytes_gauge", "g", registry=registry)
    counter.labels('x"\\\n').inc(3)
    histogram.labels("y").observe(0.5)
    gauge.set(-2.5)
    renderer = Renderer()
    for _ in range(2):
        assert renderer.render(registry) == generate_latest(registry)
        assert renderer.render(registry, openmetrics=True) == openmetrics_latest(registry)


def test_new_series_changed_values_and_removed_children_show_in_the_next_scrape() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("render_next_scrape", "g", ["a"], registry=registry)
    renderer = Renderer()
    gauge.labels("one").set(1)
    assert b'render_next_scrape{a="one"} 1.0' in renderer.render(registry)
    gauge.labels("one").set(2)
    gauge.labels("two").set(3)
    body = renderer.render(registry)
    assert b'render_next_scrape{a="one"} 2.0' in body and b'render_next_scrape{a="two"} 3.0' in body
    gauge.remove("one")
    body = renderer.render(registry)
    assert b'a="one"' not in body and b'render_next_scrape{a="two"} 3.0' in body
    gauge.clear()
    assert renderer.render(registry) == generate_latest(registry)


def test_a_gauge_set_to_a_function_reads_the_function() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("render_function", "g", ["a"], registry=registry)
    renderer = Renderer()
    gauge.labels("x").set(1)
    renderer.render(registry)
    gauge.labels("x").set_function(lambda: 42.0)
    assert b'render_function{a="x"} 42.0' in renderer.render(registry)


def test_custom_and_plain_client_collectors_render_as_prometheus_client_does() -> None:
    registry = CollectorRegistry()
    Counter("render_plain_total", "with _created", ["a"], registry=registry).labels("x").inc()
    Histogram("render_plain_seconds", "with _created", registry=registry).observe(2)
    from prometheus_client.core import InfoMetricFamily, StateSetMetricFamily

    class Custom:
        def collect(self) -> list[Any]:
            info = InfoMetricFamily("render_build", "build", value={"version": "1"})
            state = StateSetMetricFamily("render_state", "state", value={"a": True, "b": False})
            return [info, state]

    registry.register(Custom())  # type: ignore[arg-type]
    renderer = Renderer()
    assert renderer.render(registry) == generate_latest(registry)
    assert renderer.render(registry, openmetrics=True) == openmetrics_latest(registry)


@pytest.mark.parametrize("names", [["render_filter_total"], ["render_filter_seconds_bucket"],
                                   ["render_filter_seconds_count", "render_filter_gauge"], ["render_missing"],
                                   ["render_filter_seconds_bucket", "render_filter_seconds_count",
                                    "render_filter_seconds_sum"], ["render_filter_empty"]])
def test_name_filter_keeps_what_a_restricted_registry_keeps(names: list[str]) -> None:
    registry = CollectorRegistry(auto_describe=True)
    CounterType("render_filter_total", "c", ["a"], registry=registry).labels("x").inc()
    HistogramType("render_filter_seconds", "h", ["a"], buckets=(1.0,), registry=registry).labels("y").observe(0.5)
    Gauge("render_filter_gauge", "g", registry=registry).set(7)
    Gauge("render_filter_empty", "no children", ["a"], registry=registry)
    renderer = Renderer()
    restricted = registry.restricted_registry(names)
    assert_same(lambda om: renderer.render(registry, om, names=names), lambda om: client_encoder(om)(restricted))


def test_concurrent_scrapes_while_recording_all_parse() -> None:
    registry = CollectorRegistry()
    counter = CounterType("render_threads_total", "c", ["a"], registry=registry)
    histogram = HistogramType("render_threads_seconds", "h", ["a"], registry=registry)
    renderer = Renderer()
    stop = threading.Event()
    errors: list[BaseException] = []

    def record() -> None:
        index = 0
        while not stop.is_set():
            counter.labels(str(index % 300)).inc()
            histogram.labels(str(index % 50)).observe(index % 7)
            if index % 97 == 0:
                counter.remove(str((index // 97) % 300)) if (str((index // 97) % 300),) in counter._metrics else None
            index += 1

    def scrape(openmetrics: bool) -> None:
        try:
            for _ in range(40):
                parsed(renderer.render(registry, openmetrics), openmetrics)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    recorder = threading.Thread(target=record)
    recorder.start()
    scrapers = [threading.Thread(target=scrape, args=(index % 2 == 1,)) for index in range(4)]
    for thread in scrapers:
        thread.start()
    for thread in scrapers:
        thread.join()
    stop.set()
    recorder.join()
    assert not errors, errors[0]
    assert renderer.render(registry) == generate_latest(registry)


def test_hostile_label_values_pass_promtool() -> None:
    registry = CollectorRegistry()
    gauge = Gauge("render_promtool", "values from callers", ["a"], registry=registry)
    for index, value in enumerate(['"', "\\", "a\nb", '\\"\n', "é 日本 🙂", "}{,=", ""]):
        gauge.labels(value).set(index)
    histogram = HistogramType("render_promtool_seconds", "h", ["a"], buckets=(0.1, 1234567.0), registry=registry)
    histogram.labels('x"\n').observe(3)
    Gauge("render_promtool_special", "special values", ["v"], registry=registry).labels("nan").set(math.nan)
    result = promtool_check_metrics(Renderer().render(registry).decode())
    assert result.returncode == 0, result.stdout + result.stderr


# --- several processes: files written as prometheus_client's multiprocess values write them --------


def write(directory: Path, kind: str, pid: int, key: str, value: float, timestamp: float = 0.0) -> None:
    """One value into a worker's file, as ``MultiProcessValue`` writes it."""
    name = f"{kind}_{pid}.db"
    mapped = MmapedDict(str(directory / name))
    try:
        mapped.write_value(key, value, timestamp)
    finally:
        mapped.close()


#: Processes that exist: the reader removes the live gauges of processes that do not.
LIVE_PIDS = (os.getpid(), os.getppid(), 1)


def file_kind(kind: str, mode: str) -> str:
    return f"gauge_{mode}" if kind == "gauge" else kind


@st.composite
def file_writes(draw: st.DrawFn) -> list[tuple[str, str, int, str, float, float]]:
    """(metric kind, gauge mode, pid, key, value, timestamp) writes of a few families."""
    writes = []
    families = draw(st.lists(st.tuples(st.sampled_from(["counter", "gauge", "histogram"]),
                                       st.sampled_from(GAUGE_MODES)), min_size=1, max_size=3))
    for _ in range(draw(st.integers(1, 14))):
        index = draw(st.integers(0, len(families) - 1))
        kind, mode = families[index]
        pid = draw(st.sampled_from(LIVE_PIDS))
        labels = draw(label_values)
        name = f"files_{kind}_{mode}_{index}" if kind == "gauge" else f"files_{kind}_{index}"  # a gauge has one mode
        help_text = f"help of {name}"
        if kind == "histogram":
            for le in (0.5, 1.0, math.inf):
                key = mmap_key(name, name + "_bucket", ["a", "b", "le"], [*labels, floatToGoString(le)], help_text)
                writes.append((kind, mode, pid, key, float(draw(st.integers(0, 5))), 0.0))
            key = mmap_key(name, name + "_sum", ["a", "b"], list(labels), help_text)
            writes.append((kind, mode, pid, key, draw(observations), 0.0))
            continue
        sample = name + "_total" if kind == "counter" else name
        key = mmap_key(name, sample, ["a", "b"], list(labels), help_text)
        amount = draw(counts if kind == "counter" else values)
        timestamp = draw(st.sampled_from([0.0, 1.0, 2.0, 1e9])) if mode.endswith("mostrecent") else 0.0
        writes.append((kind, mode, pid, key, amount, timestamp))
    return writes


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(rounds=st.lists(file_writes(), min_size=1, max_size=3), dead=st.sampled_from([None, *LIVE_PIDS[:2]]))
def test_files_parse_to_multiprocess_collectors_samples_across_updates(
    tmp_path_factory: pytest.TempPathFactory, rounds: list[list[tuple[str, str, int, str, float, float]]],
    dead: int | None,
) -> None:
    directory = tmp_path_factory.mktemp("files")
    ours = CollectorRegistry()
    ours.register(FilesCollector(str(directory)))
    theirs = CollectorRegistry()
    MultiProcessCollector(theirs, str(directory))
    renderer = Renderer()
    stamps: dict[tuple[str, int], float] = {}  # the timestamp each worker's file holds per key
    for number, writes in enumerate(rounds):
        for kind, mode, pid, key, value, timestamp in writes:
            write(directory, file_kind(kind, mode), pid, key, value, timestamp)
            if mode.endswith("mostrecent") and kind == "gauge":
                stamps[(key, pid)] = timestamp
        # Two workers' writes of one series at the same instant: either is the most recent
        # (MultiProcessCollector keeps the one of the file it happens to list first).
        held = [(key, stamp) for (key, _pid), stamp in stamps.items() if stamp]
        assume(len(held) == len(set(held)))
        if dead is not None and number == len(rounds) - 1:  # a dead worker's live gauges go (mark_process_dead)
            for path in directory.glob(f"gauge_live*_{dead}.db"):
                os.remove(path)
        assert_same(lambda om: renderer.render(ours, om), lambda om: client_encoder(om)(theirs))
        # collect() reports the same samples (the local summaries and the token efficiency read it)
        assert parsed(generate_latest(ours), False) == parsed(generate_latest(theirs), False)


def test_collectors_of_one_directory_share_it_and_each_reads_its_family(tmp_path: Path) -> None:
    for pid in (1, 2):
        write(tmp_path, "counter", pid, mmap_key("files_a", "files_a_total", ["x"], ["1"], "a"), 2.0)
        write(tmp_path, "gauge_livesum", pid, mmap_key("files_b", "files_b", [], [], "b"), 1.5)
    shared = Directory(str(tmp_path))
    registry = CollectorRegistry(auto_describe=True)
    registry.register(FilesCollector(shared, [("files_a_total", "counter")]))
    registry.register(FilesCollector(shared, [("files_b", "gauge")]))
    renderer = Renderer()
    body = renderer.render(registry)
    assert b'files_a_total{x="1"} 4.0' in body and b"files_b 3.0" in body
    only_b = renderer.render(registry, names=["files_b"])
    assert b"files_a" not in only_b and b"files_b 3.0" in only_b
    write(tmp_path, "counter", 3, mmap_key("files_a", "files_a_total", ["x"], ["2"], "a"), 5.0)  # a new worker
    write(tmp_path, "counter", 1, mmap_key("files_a", "files_a_total", ["x"], ["1"], "a"), 10.0)  # a new value
    body = renderer.render(registry)
    assert b'files_a_total{x="1"} 12.0' in body and b'files_a_total{x="2"} 5.0' in body


def test_the_renderer_does_not_keep_unregistered_collectors_alive() -> None:
    import gc
    import weakref

    renderer = Renderer()
    registry = CollectorRegistry()
    gauge = Gauge("render_forgotten", "g", ["a"], registry=registry)
    gauge.labels("x").set(1)
    renderer.render(registry)
    gone = weakref.ref(gauge)
    registry.unregister(gauge)
    del gauge
    gc.collect()
    assert gone() is None


def test_a_directory_emptied_and_written_again_reads_the_new_files(tmp_path: Path) -> None:
    from app.multiprocess import prepare_directory

    key = mmap_key("files_again", "files_again_total", ["x"], ["1"], "again")
    for index in range(3):
        write(tmp_path, "counter", LIVE_PIDS[0], mmap_key("files_again", "files_again_total", ["x"], [str(index)],
                                                          "again"), 50.0)
    registry = CollectorRegistry()
    registry.register(FilesCollector(str(tmp_path)))
    renderer = Renderer()
    assert b'files_again_total{x="2"} 50.0' in renderer.render(registry)
    prepare_directory(str(tmp_path))  # a new run: the same file name, maybe the same inode number
    write(tmp_path, "counter", LIVE_PIDS[0], key, 7.0)
    body = renderer.render(registry)
    assert b'files_again_total{x="1"} 7.0' in body and b'x="2"' not in body


# --- kept lines: a scrape writes again only the blocks whose values changed ---------------------

#: Values that are equal as floats yet written apart (0.0 and -0.0), never equal to
#: themselves (NaN, two payloads), and the rest of the edge.
_OTHER_NAN = struct.unpack("=d", struct.pack("=Q", 0x7FF8_0000_0000_0001))[0]
tricky_values = st.one_of(st.sampled_from([0.0, -0.0, math.nan, _OTHER_NAN, math.inf, -math.inf, 5e-324, 1.0, 0.5]),
                          st.floats(allow_nan=True, allow_infinity=True))

StrictValue = tuple[str, float]


def strict_value_of(value: float) -> StrictValue:
    """A value compared bit for bit but for NaN's payload: -0.0 apart from 0.0."""
    if math.isnan(value):
        return ("NaN", 0.0)
    return ("-" if math.copysign(1.0, value) < 0 else "+", value)


def strictly_parsed(body: bytes, openmetrics: bool) -> dict[str, list[tuple[str, tuple[tuple[str, str], ...],
                                                                           StrictValue]]]:
    families = (parse_openmetrics if openmetrics else parse_text)(body.decode())
    return {family.name: sorted((sample.name, tuple(sorted(sample.labels.items())), strict_value_of(sample.value))
                                for sample in family.samples) for family in families}


def assert_strictly_same(ours: Callable[[bool], bytes], theirs: Callable[[bool], bytes]) -> None:
    """As :func:`assert_same`, values compared by :func:`strict_value_of`."""
    for openmetrics in (False, True):
        body = ours(openmetrics)
        try:
            expected = strictly_parsed(theirs(openmetrics), openmetrics)
        except ValueError:  # prometheus_client's own output refused by its parser: ours too
            with pytest.raises(ValueError):
                strictly_parsed(body, openmetrics)
            continue
        assert strictly_parsed(body, openmetrics) == expected, ("OpenMetrics" if openmetrics else "text 0.0.4")


def files_readers(directory: Path) -> tuple[Callable[[bool], bytes], Callable[[bool], bytes]]:
    """Our render of the multiprocess files in ``directory`` (one renderer, kept across
    calls) and prometheus_client's, each by format (OpenMetrics or not)."""
    ours = CollectorRegistry()
    ours.register(FilesCollector(str(directory)))
    theirs = CollectorRegistry()
    MultiProcessCollector(theirs, str(directory))
    renderer = Renderer()
    return (lambda om: renderer.render(ours, om)), (lambda om: client_encoder(om)(theirs))


#: More series than one block of kept lines holds (app.render.BLOCK_VALUES is 256), so a
#: change lands in one block among several.
MANY = 300


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_kept_lines_follow_every_change_between_scrapes(data: st.DataObject) -> None:
    registry = CollectorRegistry()
    gauge = Gauge("render_kept_gauge", "g", ["a"], registry=registry)
    counter = CounterType("render_kept_total", "c", ["a"], registry=registry)
    histogram = HistogramType("render_kept_seconds", "h", ["a"], buckets=(0.1, 1.0, 10.0), registry=registry)
    for index in range(MANY):
        gauge.labels(str(index)).set(index % 3)
        counter.labels(str(index)).inc(index % 2)
        if index % 2 == 0:  # 150 children of 5 cells: 51 children a block
            histogram.labels(str(index)).observe(index / 100)
    renderer = Renderer()
    assert_strictly_same(lambda om: renderer.render(registry, om), lambda om: client_encoder(om)(registry))
    near_edges = st.one_of(st.sampled_from([0, 1, 50, 51, 255, 256, 257, MANY - 1]), st.integers(0, MANY - 1))
    for _round in range(3):
        changes = data.draw(st.lists(st.tuples(st.sampled_from(["set", "inc", "observe", "remove", "add"]), near_edges,
                                               tricky_values), max_size=12))
        for action, index, value in changes:
            label = str(index)
            if action == "set":
                gauge.labels(label).set(value)
            elif action == "inc" and value >= 0:
                counter.labels(label).inc(value)
            elif action == "observe" and 0 <= value < math.inf:  # a negative _sum: OpenMetrics refuses it
                histogram.labels(label).observe(value)
            elif action == "remove":
                for metric in (gauge, counter, histogram):
                    try:
                        metric.remove(label)
                    except KeyError:
                        pass
            elif action == "add":
                gauge.labels(f"new {label}").set(value)
        assert_strictly_same(lambda om: renderer.render(registry, om), lambda om: client_encoder(om)(registry))


@pytest.mark.parametrize(("first", "then"), [(0.0, -0.0), (-0.0, 0.0), (math.nan, _OTHER_NAN), (1.0, 1)])
def test_a_value_equal_to_the_last_one_but_written_apart_is_written_anew(first: float, then: float) -> None:
    registry = CollectorRegistry()
    gauge = Gauge("render_signed", "g", ["a"], registry=registry)
    renderer = Renderer()
    for index in range(MANY):
        gauge.labels(str(index)).set(first)
    renderer.render(registry)
    gauge.labels("300").set(then)
    assert renderer.render(registry) == generate_latest(registry)
    gauge.labels("300").set(first)
    assert renderer.render(registry) == generate_latest(registry)


def test_an_unchanged_registry_is_written_as_the_last_scrape_and_a_change_anywhere_shows() -> None:
    registry = CollectorRegistry()
    histogram = HistogramType("render_blocks_seconds", "h", ["a"], buckets=(0.1, 1.0), registry=registry)
    for index in range(MANY):
        histogram.labels(str(index)).observe(0.5)
    renderer = Renderer()
    first = renderer.render(registry)
    assert renderer.render(registry) == first == generate_latest(registry)
    for index in (0, 100, MANY - 1):  # a block at the start, in the middle, at the end
        histogram.labels(str(index)).observe(5.0)
        assert renderer.render(registry) == generate_latest(registry)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data(), mode=st.sampled_from(["all", "liveall", "max", "mostrecent"]))
def test_files_kept_lines_follow_every_change_between_scrapes(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, mode: str
) -> None:
    directory = tmp_path_factory.mktemp("kept")
    pid = LIVE_PIDS[0]
    gauge_keys = [mmap_key("files_kept", "files_kept", ["a"], [str(index)], "g") for index in range(MANY)]
    counter_keys = [mmap_key("files_kept_c", "files_kept_c_total", ["a"], [str(index)], "c") for index in range(MANY)]
    gauges = MmapedDict(str(directory / f"gauge_{mode}_{pid}.db"))
    counters = MmapedDict(str(directory / f"counter_{pid}.db"))
    try:
        for index in range(MANY):
            gauges.write_value(gauge_keys[index], float(index % 3), 1.0)
            counters.write_value(counter_keys[index], float(index % 2), 0.0)
        readers = files_readers(directory)
        assert_strictly_same(*readers)
        for _round in range(3):
            changes = data.draw(st.lists(st.tuples(st.booleans(), st.integers(0, MANY - 1), tricky_values),
                                         max_size=10))
            for is_gauge, index, value in changes:
                if is_gauge:
                    gauges.write_value(gauge_keys[index], value, 2.0 + _round)
                elif value >= 0:  # + 0.0: MultiProcessCollector's sum writes a lone -0.0 as 0.0
                    counters.write_value(counter_keys[index], value + 0.0, 0.0)
            assert_strictly_same(*readers)
    finally:
        gauges.close()
        counters.close()


def computed_by_prometheus_client(series: dict[tuple[str, str], float], openmetrics: bool) -> bytes:
    from prometheus_client.core import GaugeMetricFamily

    family = GaugeMetricFamily("render_computed", "computed at scrape time", labels=["provider", "model"])
    for labels, value in series.items():
        family.add_metric(list(labels), value)

    class Oracle:
        def collect(self) -> list[GaugeMetricFamily]:
            return [family]

    registry = CollectorRegistry()
    registry.register(Oracle())  # type: ignore[arg-type]
    return client_encoder(openmetrics)(registry)


@settings(max_examples=40, deadline=None)
@given(rounds=st.lists(st.dictionaries(st.tuples(hostile_text, hostile_text), tricky_values, max_size=8),
                       min_size=1, max_size=4))
def test_a_computed_gauge_follows_its_series_between_scrapes(rounds: list[dict[tuple[str, str], float]]) -> None:
    from app.render import ComputedGauge

    lines = ComputedGauge("render_computed", "computed at scrape time", ["provider", "model"])
    def ours(openmetrics: bool, series: dict[tuple[str, str], float]) -> bytes:
        text = lines.family_text(openmetrics, list(series.items()))
        return b"".join([text.header, *text.body]) + (b"# EOF\n" if openmetrics else b"")

    for series in rounds:  # the same lines, scraped as series come, go, move and change
        assert_strictly_same(partial(ours, series=series), partial(computed_by_prometheus_client, series))
