"""app.client_internals, the one module that reads prometheus_client's internals, checked
against prometheus_client's public API on the installed version.

Each check compares what the seam reads with what ``collect()`` (in one process) or
``MultiProcessCollector`` (over a directory written by real processes) reports; a failure
names the internal that no longer matches. pyproject.toml allows the prometheus_client
versions this file passes on (``client_internals.TESTED_VERSIONS``).
"""

from __future__ import annotations
import __future__

import inspect
import json
import os
import shutil
import subprocess
import sys
import types
from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from app import client_internals as seam

ROOT = Path(__file__).resolve().parents[1]
VERSION = seam.installed_version()
GAUGE_MODES = ("all", "liveall", "min", "livemin", "max", "livemax", "sum", "livesum", "mostrecent", "livemostrecent")
LABELS = ("route", "status")


def agree(seam_value: Any, public_value: Any, internal: str) -> None:
    """The seam's reading equals the public API's, or the message names the internal."""
    assert seam_value == public_value, (
        f"prometheus_client {VERSION}: {internal} no longer reads what the public API reports "
        f"(seam {seam_value!r}, public {public_value!r}); update app/client_internals.py "
        f"(checked on {seam.TESTED_VERSIONS})"
    )


def samples(metric: Counter | Gauge | Histogram) -> list[Any]:
    return [sample for family in metric.collect() for sample in family.samples]


def value_of(metric: Counter | Gauge | Histogram, name: str, labels: dict[str, str]) -> float:
    found = [sample.value for sample in samples(metric) if sample.name == name and sample.labels == labels]
    assert len(found) == 1, f"{name}{labels} in collect(): {found}"
    return float(found[0])


# --- metrics recorded in one process (also run by the multiprocess workers) ---------------------


class Custom(Collector):
    def describe(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("custom_value", "custom")

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("custom_value", "custom", value=1.0)


def record(registry: CollectorRegistry, scale: float, modes: Iterable[str] = ("all",)) -> dict[str, Any]:
    """Metrics of every kind, labelled and unlabelled, with values (``scale`` varies them)."""
    metrics: dict[str, Any] = {
        "counter": Counter("ci_requests_total", "requests", LABELS, registry=registry),
        "plain_counter": Counter("ci_plain", "plain", registry=registry),
        "histogram": Histogram("ci_duration_seconds", "duration", LABELS[:1], buckets=(0.1, 1.0, 10.0),
                               registry=registry),
        "plain_histogram": Histogram("ci_plain_seconds", "plain", buckets=(0.5,), registry=registry),
    }
    for mode in modes:
        metrics[f"gauge_{mode}"] = Gauge(f"ci_gauge_{mode}", mode, LABELS[:1], multiprocess_mode=mode,
                                         registry=registry)
    metrics["counter"].labels("/a", "200").inc(2 * scale)
    metrics["counter"].labels("/b", "500").inc(scale)
    metrics["plain_counter"].inc(4 * scale)
    for value in (0.05, 0.5, 0.5, 5.0, 50.0):
        metrics["histogram"].labels("/a").observe(value * scale)
    metrics["histogram"].labels("/b").observe(0.2)
    metrics["plain_histogram"].observe(0.25 * scale)
    for mode in modes:
        metrics[f"gauge_{mode}"].labels("/a").set(3 * scale)
        metrics[f"gauge_{mode}"].labels("/b").set(scale)  # ("mostrecent" gauges do not inc)
    return metrics


def check_readers(registry: CollectorRegistry, metrics: dict[str, Any]) -> None:
    """Every reader of the seam against collect(), for the metrics of :func:`record`."""
    collectors = seam.registered_collectors(registry)
    for metric in metrics.values():
        assert metric in collectors, "registered_collectors: CollectorRegistry._collector_to_names lost a metric"
        missing = {sample.name for sample in samples(metric)} - set(collectors[metric])
        agree(missing, set(), "CollectorRegistry._collector_to_names (the names of a collector)")
    for metric in metrics.values():
        check_metric(metric)


def check_metric(metric: Counter | Gauge | Histogram) -> None:
    family = next(iter(metric.collect()))
    agree(seam.family_name(metric), family.name, f"{type(metric).__name__}._name")
    declared = metric.describe()[0]  # public: the family as registered, no samples
    agree(seam.family_name(metric), declared.name, f"{type(metric).__name__}._name")
    names = seam.label_names(metric)
    by_labels = seam.children(metric)
    public_keys = {tuple(sample.labels[name] for name in names) for sample in samples(metric)}
    agree(set(by_labels), public_keys, f"{type(metric).__name__}._metrics / ._labelnames (the children)")
    if not names:
        agree(by_labels, {(): metric}, "an unlabelled metric as its own child")
    for key, child in by_labels.items():
        labels = dict(zip(names, key, strict=True))
        if isinstance(metric, Histogram):
            check_histogram_child(metric, child, labels)
        else:
            sample_name = family.name + "_total" if isinstance(metric, Counter) else family.name
            public = value_of(metric, sample_name, labels)
            agree(seam.read_value(child), public, f"{type(metric).__name__} child ._value._value")
            agree(seam.read_cell(seam.value_cell(child)), public, f"{type(metric).__name__} child ._value")
            agree(seam.value_cell(child).get(), public, f"{type(metric).__name__} child ._value.get()")
            if isinstance(metric, Gauge):
                agree(seam.has_value_function(child), False, "Gauge ._child_samples (set_function)")


def check_histogram_child(metric: Histogram, child: Histogram, labels: dict[str, str]) -> None:
    name = seam.family_name(metric)
    public_buckets = [(sample.labels["le"], sample.value) for sample in samples(metric)
                      if sample.name == name + "_bucket"
                      and {k: v for k, v in sample.labels.items() if k != "le"} == labels]
    bounds = [seam.format_float(bound) for bound in seam.bucket_bounds(metric)]
    agree(bounds, [le for le, _ in public_buckets], "Histogram._upper_bounds (the le labels)")
    cells: Sequence[seam.ValueCell] = seam.bucket_cells(child)
    agree(len(cells), len(bounds), "Histogram child ._buckets (one cell per bound)")
    agree(list(accumulate(map(seam.read_cell, cells))), [value for _, value in public_buckets],
          "Histogram child ._buckets[i]._value")
    public_sum = value_of(metric, name + "_sum", labels)
    agree(seam.read_sum(child), public_sum, "Histogram child ._sum._value")
    agree(seam.sum_cell(child).get(), public_sum, "Histogram child ._sum")


def write_through_cells(metrics: dict[str, Any], scale: float) -> None:
    """What the HTTP stats do with several workers: write into the cells directly."""
    seam.value_cell(metrics["counter"].labels("/a", "200")).inc(3 * scale)
    child = metrics["histogram"].labels("/a")
    seam.sum_cell(child).inc(0.7 * scale)
    seam.bucket_cells(child)[1].inc(1)  # the (0.1, 1.0] bucket


# --- one process ---------------------------------------------------------------------------------


def test_the_installed_client_passes_the_import_check() -> None:
    seam.check_client()


def test_readers_agree_with_collect_for_every_kind_labelled_and_unlabelled() -> None:
    registry = CollectorRegistry()
    metrics = record(registry, 1.0, GAUGE_MODES)
    registry.register(custom := Custom())
    check_readers(registry, metrics)
    agree(seam.registered_collectors(registry)[custom], ["custom_value"],
          "CollectorRegistry._collector_to_names (a custom collector's names)")
    agree(seam.children(Counter("ci_unused", "no children yet", LABELS, registry=None)), {},
          "Counter._metrics of a parent without children")


def test_writes_into_the_cells_are_what_collect_reports() -> None:
    registry = CollectorRegistry()
    metrics = record(registry, 1.0)
    before_count = value_of(metrics["histogram"], "ci_duration_seconds_count", {"route": "/a"})
    write_through_cells(metrics, 1.0)
    agree(value_of(metrics["counter"], "ci_requests_total", {"route": "/a", "status": "200"}), 5.0,
          "Counter child ._value (inc through the cell)")
    agree(value_of(metrics["histogram"], "ci_duration_seconds_sum", {"route": "/a"}),
          0.05 + 0.5 + 0.5 + 5.0 + 50.0 + 0.7, "Histogram child ._sum (inc through the cell)")
    agree(value_of(metrics["histogram"], "ci_duration_seconds_bucket", {"route": "/a", "le": "1.0"}), 4.0,
          "Histogram child ._buckets (inc through a cell)")
    agree(value_of(metrics["histogram"], "ci_duration_seconds_count", {"route": "/a"}), before_count + 1,
          "Histogram child ._buckets (the count is the buckets' sum)")
    check_readers(registry, metrics)


def test_a_gauge_set_to_a_function_is_told_apart() -> None:
    gauge = Gauge("ci_function", "function", registry=None)
    gauge.set_function(lambda: 42.0)
    agree(seam.has_value_function(gauge), True, "Gauge._child_samples (set_function)")
    agree(value_of(gauge, "ci_function", {}), 42.0, "Gauge.set_function")
    labelled = Gauge("ci_function_labelled", "function", ["a"], registry=None)
    labelled.labels("x").set_function(lambda: 1.0)
    agree([seam.has_value_function(child) for child in seam.children(labelled).values()], [True],
          "Gauge child ._child_samples (set_function)")


def test_the_classes_without_created_samples_read_as_their_base() -> None:
    for base in (Counter, Histogram):
        made = seam.without_created(base)
        agree(issubclass(made, base), True, f"without_created({base.__name__})")
        plain, trimmed = base("ci_base", "base", ["a"], registry=None), made("ci_base", "base", ["a"], registry=None)
        for metric in (plain, trimmed):
            metric.labels("x")
            check_metric(metric)
        agree([s for s in samples(trimmed) if s.name.endswith("_created")], [],
              f"{base.__name__}._child_samples (without_created drops _created)")
        agree([(s.name, s.labels, s.value) for s in samples(trimmed)],
              [(s.name, s.labels, s.value) for s in samples(plain) if not s.name.endswith("_created")],
              f"{base.__name__}._child_samples (without_created keeps the rest)")
        agree((seam.reads_directly(plain), seam.reads_directly(trimmed)), (True, True), "reads_directly")
        # A plain one adds _created to its cells' values; the trimmed one yields them only.
        agree((seam.renders_values_only(plain), seam.renders_values_only(trimmed)), (False, True),
              f"{base.__name__}._child_samples (renders_values_only)")

    class Custom(Counter):
        pass

    agree(seam.reads_directly(Custom("ci_custom", "custom", registry=None)), False, "reads_directly of a subclass")
    agree(seam.renders_values_only(Custom("ci_custom", "custom", registry=None)), False,
          "renders_values_only of a subclass")
    gauge = Gauge("ci_values_only", "gauge", ["a"], registry=None)
    gauge.labels("x").set(2.5)
    agree(seam.renders_values_only(gauge), True, "Gauge._child_samples (a child's one value)")
    child_value = seam.read_value(seam.children(gauge)[("x",)])
    agree([(s.name, s.value) for s in samples(gauge)], [("ci_values_only", child_value)],
          "Gauge._child_samples (its cell's value only)")
    agree(seam.reads_directly(Custom), False, "reads_directly of a class")


def test_the_process_records_in_memory_unless_prometheus_client_saw_the_directory() -> None:
    agree(seam.multiprocess_enabled(), "PROMETHEUS_MULTIPROC_DIR" in os.environ or "prometheus_multiproc_dir"
          in os.environ, "values.ValueClass._multiprocess")


def test_a_moved_internal_is_named_with_the_tested_versions(monkeypatch: pytest.MonkeyPatch) -> None:
    class Moved(Counter):  # a fresh metric class: its first child is checked
        pass

    metric = Moved("ci_moved_total", "moved", ["a"], registry=None)
    del metric.labels("x")._value
    with pytest.raises(seam.UnsupportedClientError, match=r"Moved child \._value.*" + seam.TESTED_VERSIONS):
        seam.children(metric)
    with pytest.raises(seam.UnsupportedClientError, match=r"\._buckets"):
        seam.bucket_cells(types.SimpleNamespace())  # type: ignore[arg-type]
    with pytest.raises(seam.UnsupportedClientError, match=r"\._sum"):
        seam.sum_cell(types.SimpleNamespace())  # type: ignore[arg-type]
    with pytest.raises(seam.UnsupportedClientError, match=r"\._value"):
        seam.value_cell(types.SimpleNamespace())  # type: ignore[arg-type]

    monkeypatch.setattr(seam.values, "ValueClass", type("Renamed", (), {}))
    with pytest.raises(seam.UnsupportedClientError, match=r"values\.ValueClass\._multiprocess"):
        seam.check_client()
    monkeypatch.undo()

    class NoMap(CollectorRegistry):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._names = self.__dict__.pop("_collector_to_names")

    monkeypatch.setattr(seam, "CollectorRegistry", NoMap)
    with pytest.raises(seam.UnsupportedClientError, match=r"CollectorRegistry\._collector_to_names"):
        seam.check_client()


def test_every_function_of_the_seam_is_checked_here() -> None:
    source = Path(__file__).read_text()

    def imported(name: str, value: Any) -> bool:
        return inspect.ismodule(value) or (
            getattr(value, "__name__", None) == name and getattr(value, "__module__", None) != seam.__name__
        )

    public = [name for name, value in vars(seam).items()
              if not name.startswith("_") and not imported(name, value)
              and not isinstance(value, (types.UnionType, types.GenericAlias, __future__._Feature))]
    unchecked = [name for name in public if f"seam.{name}" not in source]
    assert not unchecked, f"functions of app.client_internals this test does not exercise: {unchecked}"


# --- several processes: a real multiprocess directory ------------------------------------------


def worker_main(scale: float) -> None:
    """Run in a process started with PROMETHEUS_MULTIPROC_DIR: record, check the readers
    against collect() over file-backed values, write through the cells, report."""
    registry = CollectorRegistry()
    metrics = record(registry, scale, GAUGE_MODES)
    check_readers(registry, metrics)
    write_through_cells(metrics, scale)
    check_readers(registry, metrics)
    print(json.dumps({"pid": os.getpid(), "multiprocess": seam.multiprocess_enabled()}))


def run_worker(directory: Path, scale: float) -> dict[str, Any]:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('client_internals_checks', {str(Path(__file__))!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
        f"module.worker_main({scale!r})\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, f"the multiprocess worker failed:\n{done.stderr[-4000:]}"
    report: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return report


@pytest.fixture(scope="module")
def directory(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    path = tmp_path_factory.mktemp("multiproc")
    reports = [run_worker(path, 1.0), run_worker(path, 2.0)]  # two processes, one after the other
    return path, reports


def public_samples(path: Path) -> set[tuple[str, frozenset[tuple[str, str]], float]]:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    return {(sample.name, frozenset(sample.labels.items()), sample.value)
            for family in registry.collect() for sample in family.samples}


def seam_samples(file: Path) -> set[tuple[str, frozenset[tuple[str, str]], float]]:
    """One file's entries as MultiProcessCollector reports them (its documented sums:
    buckets cumulative plus ``_count``, a pid label for the "all" gauges)."""
    kind, mode, pid = seam.file_name_parts(str(file))
    out: set[tuple[str, frozenset[tuple[str, str]], float]] = set()
    buckets: dict[tuple[str, str, frozenset[tuple[str, str]]], list[tuple[float, float]]] = defaultdict(list)
    for key, value, _timestamp in seam.read_file_entries(str(file)):
        metric_name, sample_name, labels, _help = seam.parse_key(key)
        if kind == "histogram" and sample_name.endswith("_bucket"):
            le = float(labels.pop("le"))
            buckets[(metric_name, sample_name, frozenset(labels.items()))].append((le, value))
            continue
        if kind == "gauge" and mode in ("all", "liveall"):
            labels["pid"] = pid
        out.add((sample_name, frozenset(labels.items()), value))
    for (metric_name, sample_name, labels), per_le in buckets.items():
        total = 0.0
        for le, value in sorted(per_le):
            total += value
            out.add((sample_name, labels | {("le", seam.format_float(le))}, total))
        out.add((metric_name + "_count", labels, total))
    return out


def test_the_workers_recorded_into_files(directory: tuple[Path, list[dict[str, Any]]]) -> None:
    _path, reports = directory
    agree([report["multiprocess"] for report in reports], [True, True], "values.ValueClass._multiprocess")


def test_each_file_reads_as_multiprocess_collector_reports_it(
    directory: tuple[Path, list[dict[str, Any]]], tmp_path: Path
) -> None:
    path, _reports = directory
    files = sorted(path.glob(seam.FILE_GLOB))
    assert files, "no file in the multiprocess directory"
    for file in files:
        alone = tmp_path / file.stem
        alone.mkdir()
        shutil.copy(file, alone / file.name)
        internal = f"the layout of {file.name} (mmap_dict: header, entries, key, value)"
        try:
            read = seam_samples(file)
        except Exception as exc:  # noqa: BLE001 - garbage keys: the layout moved, whatever it raises
            pytest.fail(f"prometheus_client {VERSION}: {internal} cannot be read: {exc!r}; update "
                        f"app/client_internals.py (checked on {seam.TESTED_VERSIONS})")
        agree(read, public_samples(alone), internal)


def test_the_whole_directory_sums_the_writes_of_both_workers(directory: tuple[Path, list[dict[str, Any]]]) -> None:
    path, _reports = directory
    public = {(name, labels): value for name, labels, value in public_samples(path)}
    # 2 + 3 written through the cell, times 1 then 2.
    agree(public[("ci_requests_total", frozenset({("route", "/a"), ("status", "200")}))], 15.0,
          "Counter child ._value (MmapedValue, written through the cell)")
    agree(public[("ci_duration_seconds_sum", frozenset({("route", "/a")}))],
          pytest.approx(3 * (0.05 + 0.5 + 0.5 + 5.0 + 50.0 + 0.7)), "Histogram child ._sum (MmapedValue)")


def test_file_names_keys_and_timestamps(directory: tuple[Path, list[dict[str, Any]]]) -> None:
    path, reports = directory
    pids = [str(report["pid"]) for report in reports]
    parts = {seam.file_name_parts(str(file)) for file in path.glob(seam.FILE_GLOB)}
    expected = {(kind, "", pid) for kind in ("counter", "histogram") for pid in pids}
    expected |= {("gauge", mode, pid) for mode in GAUGE_MODES for pid in pids}
    agree(parts, expected, "values.MultiProcessValue's file names (<type>[_<mode>]_<pid>.db)")
    live = {seam.file_name_parts(str(file))[1] for file in path.glob(seam.LIVE_GAUGE_FILE_GLOB)}
    agree(live, {mode for mode in GAUGE_MODES if mode.startswith("live")}, "the live gauges' file names")

    counter_keys = [key for file in path.glob("counter_*.db") for key, _v, _t in seam.read_file_entries(str(file))]
    metric_names = {seam.parse_key(key)[0] for key in counter_keys}
    agree(seam.file_metric_name("ci_requests_total", "counter") in metric_names, True,
          "mmap_key's family name of a counter (without _total)")
    agree(seam.file_metric_name("ci_plain", "counter") in metric_names, True, "mmap_key's family name")
    family_keys = [key for key in counter_keys if seam.parse_key(key)[0] == "ci_requests"]
    agree(all(key.startswith(seam.key_prefix("ci_requests")) for key in family_keys), True, "mmap_key's prefix")
    agree(any(key.startswith(seam.key_prefix("ci_request")) for key in counter_keys), False,
          "mmap_key's prefix (a family's name is closed)")

    by_pid: dict[str, dict[str, float]] = defaultdict(dict)
    for file in path.glob(seam.FILE_GLOB):
        kind, mode, pid = seam.file_name_parts(str(file))
        for key, _value, timestamp in seam.read_file_entries(str(file)):
            if mode.endswith("mostrecent"):
                by_pid[pid][key] = timestamp
            else:
                agree(timestamp, 0.0, f"the timestamp of an entry of {file.name} (mmap_dict: value, timestamp)")
    first, second = (by_pid[pid] for pid in pids)
    agree(bool(first) and all(0 < first[key] <= second[key] for key in first), True,
          "the timestamps of mostrecent gauges (mmap_dict: value, timestamp)")


def test_an_entry_being_written_is_left_for_the_next_scan(directory: tuple[Path, list[dict[str, Any]]]) -> None:
    path, _reports = directory
    file = next(iter(path.glob("counter_*.db")))
    with open(file, "rb") as handle:
        data, used = seam.read_used(handle)
    agree(len(data), used, "mmap_dict's header (the bytes used)")
    everything, end = seam.scan_entries(data, seam.FIRST_ENTRY_OFFSET, used)
    agree(end, used, "mmap_dict's entries (they end where the header says)")
    agree([key for key, _ in everything], [key for key, _v, _t in seam.read_file_entries(str(file))],
          "mmap_dict's entries")
    last_key, last_value_at = everything[-1]
    cut = last_value_at + 8  # the last entry's value half written
    head, resume_at = seam.scan_entries(data, seam.FIRST_ENTRY_OFFSET, cut)
    agree(head, everything[:-1], "mmap_dict's entries (an incomplete one is not read)")
    tail, end = seam.scan_entries(data, resume_at, used)
    agree(tail, [(last_key, last_value_at)], "mmap_dict's entries (resuming where a scan stopped)")
    agree(seam.read_entry_value(data, last_value_at)[0], seam.read_file_entries(str(file))[-1][1],
          "mmap_dict's value (two doubles: value, timestamp)")


def test_a_mapped_file_reads_each_value_and_timestamp_in_place(directory: tuple[Path, list[dict[str, Any]]]) -> None:
    path, _reports = directory
    for file in sorted(path.glob(seam.FILE_GLOB)):
        mapped = seam.map_file(str(file))
        assert mapped is not None, f"{file.name}: empty"
        with open(file, "rb") as handle:
            data, used = seam.read_used(handle)
        agree(seam.mapped_used(mapped), used, "mmap_dict's header, mapped (the bytes used)")
        agree(seam.file_used(str(file)), used, "mmap_dict's header (the bytes used)")
        found, _end = seam.scan_entries(mapped, seam.FIRST_ENTRY_OFFSET, seam.mapped_used(mapped))
        agree(found, seam.scan_entries(data, seam.FIRST_ENTRY_OFFSET, used)[0], "mmap_dict's entries, mapped")
        doubles = seam.file_values(mapped)
        in_place = [(key, doubles[seam.value_index(value_at)], doubles[seam.value_index(value_at) + 1])
                    for key, value_at in found]
        agree(in_place, seam.read_file_entries(str(file)),
              f"the layout of {file.name} (values 8-byte aligned doubles, the timestamp after the value)")
        indices = [seam.value_index(value_at) for _key, value_at in found]
        for some in (indices, indices[::-1], indices[::2], indices[-1:]):
            agree(list(seam.values_reader(some)(doubles)), [doubles[index] for index in some],
                  f"the layout of {file.name} (native doubles, read in one struct)")
        del doubles
        mapped.close()


def test_an_empty_file_is_not_mapped(tmp_path: Path) -> None:
    empty = tmp_path / "counter_1.db"
    empty.touch()
    agree(seam.map_file(str(empty)), None, "map_file of a file its writer has not sized yet")
