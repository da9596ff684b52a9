"""What a scrape skips because nothing changed since the last one, and that a change shows.

* a histogram's buckets are read only for children whose sum moved (``app.render``);
* the token efficiency is computed again only when a token count moved (``app.collectors``);
* a multiprocess directory is refreshed once per scrape, and a family's values read once per
  scrape (``app.multiprocess``); a histogram of the files writes only its changed blocks.

The oracle is prometheus_client, as in tests/test_render.py.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.mmap_dict import MmapedDict, mmap_key
from prometheus_client.utils import floatToGoString

from app import client_internals as seam
from app import render
from app.collectors import TokenEfficiencyCollector, counter_token_counts
from app.multiprocess import Directory, FilesCollector, _FamilyLines
from app.render import Renderer
from tests.test_render import LIVE_PIDS, MANY, assert_strictly_same, client_encoder, files_readers, tricky_values, write

HistogramType = seam.without_created(Histogram)
CounterType = seam.without_created(Counter)


def histogram_registry(children: int = MANY) -> tuple[CollectorRegistry, Any]:
    registry = CollectorRegistry()
    histogram = HistogramType("cached_seconds", "h", ["a"], buckets=(0.1, 1.0, 10.0), registry=registry)
    for index in range(children):
        histogram.labels(str(index)).observe(index / 100)
    return registry, histogram


def scraped_as_prometheus_client_does(renderer: Renderer, registry: CollectorRegistry) -> bool:
    return renderer.render(registry) == generate_latest(registry)


# --- a histogram's buckets, read when its sum moved ---------------------------------------------


@pytest.mark.parametrize(("sum_before", "observed"), [(0.0, 0.0), (0.0, -0.0), (1e20, 1.0), (1.0, 5e-324)])
def test_an_observation_that_leaves_the_sum_as_it_was_shows_in_the_next_scrape(sum_before: float,
                                                                               observed: float) -> None:
    registry, histogram = histogram_registry()
    child = histogram.labels("250")
    seam.sum_cell(child).set(sum_before)
    renderer = Renderer()
    renderer.render(registry)
    assert scraped_as_prometheus_client_does(renderer, registry)
    child.observe(observed)
    assert seam.read_sum(child) == sum_before  # the sum did not move: only its bucket tells
    assert scraped_as_prometheus_client_does(renderer, registry)
    assert scraped_as_prometheus_client_does(renderer, registry)


def test_a_scrape_between_an_observations_two_writes_is_completed_by_the_next() -> None:
    registry, histogram = histogram_registry()
    renderer = Renderer()
    renderer.render(registry)
    renderer.render(registry)
    child = histogram.labels("7")
    seam.sum_cell(child).inc(0.5)  # observe(0.5) writes the sum first...
    assert scraped_as_prometheus_client_does(renderer, registry)
    seam.bucket_cells(child)[1].inc(1)  # ...then the bucket, after that scrape read it
    assert scraped_as_prometheus_client_does(renderer, registry)
    assert scraped_as_prometheus_client_does(renderer, registry)


def test_a_bucket_written_without_its_sum_shows_within_a_full_read() -> None:
    """No writer does so (observe() and the HTTP stats write the sum first): the full read
    every FULL_READ_EVERY scrapes bounds how long it would take."""
    registry, histogram = histogram_registry()
    renderer = Renderer()
    renderer.render(registry)
    renderer.render(registry)
    seam.bucket_cells(histogram.labels("3"))[0].inc(1)
    for _scrape in range(render.FULL_READ_EVERY):
        if scraped_as_prometheus_client_does(renderer, registry):
            break
    else:
        pytest.fail("the bucket never showed")


def test_histogram_children_that_come_and_go_show_in_the_next_scrape() -> None:
    registry, histogram = histogram_registry()
    renderer = Renderer()
    renderer.render(registry)
    histogram.labels("new").observe(0.0)
    assert scraped_as_prometheus_client_does(renderer, registry)
    histogram.remove("5")
    histogram.remove("new")
    assert scraped_as_prometheus_client_does(renderer, registry)
    histogram.labels("5").observe(0.0)  # back, as a new child with the same labels
    assert scraped_as_prometheus_client_does(renderer, registry)
    histogram.clear()
    assert scraped_as_prometheus_client_does(renderer, registry)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rounds=st.lists(st.lists(st.tuples(st.integers(0, MANY - 1),
                                          st.sampled_from([0.0, -0.0, 5e-324, 0.05, 0.5, 5.0, 1e300])),
                                max_size=6), min_size=1, max_size=6))
def test_histogram_observations_between_scrapes_all_show(rounds: list[list[tuple[int, float]]]) -> None:
    registry, histogram = histogram_registry()
    renderer = Renderer()
    renderer.render(registry)
    for observations in rounds:
        for index, amount in observations:
            histogram.labels(str(index)).observe(amount)
        assert_strictly_same(lambda om: renderer.render(registry, om), lambda om: client_encoder(om)(registry))


# --- token efficiency, computed again when a count moved ----------------------------------------


def efficiency_as_it_was(keys: Iterable[tuple[str, ...]], counts: Iterable[float]
                         ) -> list[tuple[tuple[str, str], float]]:
    """The loop the collector ran before it kept its last result: the oracle."""
    inputs: dict[tuple[str, str], float] = {}
    outputs: dict[tuple[str, str], float] = {}
    for (provider, model, token_type), count in zip(keys, counts, strict=True):
        (inputs if token_type == "input" else outputs)[provider, model] = count
    return [(pair, outputs.get(pair, 0.0) / count) for pair, count in inputs.items() if count]


def bits_of(result: list[tuple[tuple[str, str], float]]) -> list[tuple[tuple[str, str], str]]:
    """A result compared bit for bit (NaN by its text)."""
    return [(pair, repr(value) if math.isnan(value) else float.hex(value)) for pair, value in result]


token_keys = st.tuples(st.sampled_from(["p1", "p2"]), st.sampled_from(["m1", "m2", "m3"]),
                       st.sampled_from(["input", "output", "input", "cached"]))
token_counts = st.one_of(st.sampled_from([0.0, -0.0, 1.0, 3.0, 1e300, 5e-324, math.inf, math.nan]),
                         st.floats(allow_nan=True, allow_infinity=True))


@settings(max_examples=150, deadline=None)
@given(rounds=st.lists(st.lists(st.tuples(token_keys, token_counts), max_size=10), min_size=1, max_size=6))
def test_token_efficiency_is_the_loops_result_as_counts_and_series_change(
    rounds: list[list[tuple[tuple[str, str, str], float]]]
) -> None:
    """Series in any order, repeated, without input or output, counts of 0 and -0.0: the
    result is the loop's, bit for bit, scrape after scrape."""
    state: dict[str, Any] = {}

    def source() -> tuple[Iterable[tuple[str, ...]], Iterable[float]]:
        return state["keys"], state["counts"]

    collector = TokenEfficiencyCollector(source)
    for series in rounds + rounds[:1]:  # and back to the first round's series
        state["keys"] = [key for key, _count in series]
        state["counts"] = [count for _key, count in series]
        expected = bits_of(efficiency_as_it_was(state["keys"], state["counts"]))
        assert bits_of(collector.efficiency()) == expected
        assert bits_of(collector.efficiency()) == expected  # unchanged: the last result


def efficiency_lines(body: bytes) -> dict[str, str]:
    found = {}
    for line in body.decode().splitlines():
        if line.startswith("gatewayz_token_efficiency{"):
            labels, value = line.rsplit(" ", 1)
            found[labels] = value
    return found


def test_token_efficiency_of_a_counter_follows_its_children_between_scrapes() -> None:
    registry = CollectorRegistry()
    tokens = CounterType("cached_tokens_total", "t", ["provider", "model", "token_type"], registry=registry)
    collector = TokenEfficiencyCollector(counter_token_counts(tokens))
    registry.register(collector)
    renderer = Renderer()
    tokens.labels("p", "m", "input").inc(100)
    tokens.labels("p", "m", "output").inc(50)
    assert efficiency_lines(renderer.render(registry)) == {'gatewayz_token_efficiency{model="m",provider="p"}': "0.5"}
    tokens.labels("p", "m", "output").inc(50)  # a count moved
    assert efficiency_lines(renderer.render(registry)) == {'gatewayz_token_efficiency{model="m",provider="p"}': "1.0"}
    tokens.labels("q", "m", "input").inc(10)  # a new pair, no output yet
    assert efficiency_lines(renderer.render(registry)) == {
        'gatewayz_token_efficiency{model="m",provider="p"}': "1.0",
        'gatewayz_token_efficiency{model="m",provider="q"}': "0.0",
    }
    tokens.remove("p", "m", "input")  # a removed child: its pair has no input any more
    assert efficiency_lines(renderer.render(registry)) == {'gatewayz_token_efficiency{model="m",provider="q"}': "0.0"}
    assert efficiency_lines(renderer.render(registry)) == efficiency_lines(generate_latest(registry))


# --- the multiprocess files: one refresh and one read per scrape --------------------------------


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """How many times the directory was listed and a family's values read."""
    calls = {"listed": 0, "read": 0}
    list_files, read_lines = Directory._list, _FamilyLines._read_lines

    def listing(self: Directory) -> None:
        calls["listed"] += 1
        list_files(self)

    def reading(self: _FamilyLines) -> Any:
        calls["read"] += 1
        return read_lines(self)

    monkeypatch.setattr(Directory, "_list", listing)
    monkeypatch.setattr(_FamilyLines, "_read_lines", reading)
    return calls


def token_key(provider: str, token_type: str) -> str:
    return mmap_key("tokens_used", "tokens_used_total", ["provider", "model", "token_type"],
                    [provider, "m", token_type], "t")


def test_a_scrape_refreshes_the_directory_once_and_reads_the_token_counts_once(
    tmp_path: Path, counted: dict[str, int]
) -> None:
    from app.collectors import register_files_collectors
    from app.registry import MetricSet

    write(tmp_path, "counter", LIVE_PIDS[0], token_key("p", "input"), 100.0)
    write(tmp_path, "counter", LIVE_PIDS[0], token_key("p", "output"), 25.0)
    metric_set = MetricSet(in_files=True)
    register_files_collectors(metric_set, str(tmp_path))
    registry = metric_set.all_registry
    renderer = metric_set.renderer
    body = renderer.render(registry)
    assert 'gatewayz_token_efficiency{model="m",provider="p"} 0.25' in body.decode()
    assert counted["listed"] == 1
    assert counted["read"] == 1  # tokens_used_total's lines, read for its family and the efficiency
    write(tmp_path, "counter", LIVE_PIDS[0], token_key("p", "output"), 50.0)  # a value moved
    write(tmp_path, "counter", LIVE_PIDS[1], token_key("q", "input"), 10.0)  # a new worker, a new series
    body = renderer.render(registry)
    assert 'gatewayz_token_efficiency{model="m",provider="p"} 0.5' in body.decode()
    assert 'gatewayz_token_efficiency{model="m",provider="q"} 0.0' in body.decode()
    assert 'tokens_used_total{model="m",provider="q",token_type="input"} 10.0' in body.decode()
    assert counted["listed"] == 2 and counted["read"] == 2
    # Outside of a scrape (collect(), the local summaries): every call refreshes and reads.
    readers = [collector for collector in seam.registered_collectors(registry) if isinstance(collector, FilesCollector)]
    for collector in readers[:3]:
        list(collector.collect())
    assert counted["listed"] == 5


def histogram_keys(name: str, labels: str) -> tuple[list[str], str]:
    buckets = [mmap_key(name, name + "_bucket", ["a", "le"], [labels, floatToGoString(le)], "h")
               for le in (0.5, 1.0, math.inf)]
    return buckets, mmap_key(name, name + "_sum", ["a"], [labels], "h")


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(data=st.data(), uneven=st.booleans())
def test_a_histogram_of_the_files_follows_every_change_between_scrapes(
    tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, uneven: bool
) -> None:
    directory = tmp_path_factory.mktemp("hist")
    files = {pid: MmapedDict(str(directory / f"histogram_{pid}.db")) for pid in LIVE_PIDS[:2]}
    keys = [histogram_keys("files_hist", str(index)) for index in range(MANY)]
    try:
        for pid, mapped in files.items():
            for index, (buckets, sum_key) in enumerate(keys):
                for number, key in enumerate(buckets):
                    if uneven and index == 7 and number == 1 and pid == LIVE_PIDS[0]:
                        continue  # one label set with a bucket less in a file: still summed right
                    mapped.write_value(key, float((index + number) % 3), 0.0)
                mapped.write_value(sum_key, index / 10, 0.0)
        readers = files_readers(directory)
        assert_strictly_same(*readers)
        for _round in range(3):
            changes = data.draw(st.lists(st.tuples(st.sampled_from(LIVE_PIDS[:2]), st.integers(0, MANY - 1),
                                                   st.integers(0, 3), tricky_values), max_size=8))
            for pid, index, cell, value in changes:
                buckets, sum_key = keys[index]
                if cell < 3:
                    files[pid].write_value(buckets[cell], float(abs(int(value))) if math.isfinite(value) else 1.0,
                                           0.0)
                elif not math.isnan(value) and value >= 0:  # a negative or NaN _sum: OpenMetrics refuses it
                    files[pid].write_value(sum_key, value + 0.0, 0.0)
            assert_strictly_same(*readers)
    finally:
        for mapped in files.values():
            mapped.close()


def test_lines_read_in_one_scrape_are_not_answered_in_the_next(tmp_path: Path) -> None:
    key = mmap_key("files_once", "files_once_total", ["x"], ["1"], "once")
    write(tmp_path, "counter", LIVE_PIDS[0], key, 1.0)
    collector = FilesCollector(str(tmp_path), [("files_once_total", "counter")])
    registry = CollectorRegistry()
    registry.register(collector)
    renderer = Renderer()
    seen: list[bytes] = []

    def scrapes() -> Iterator[None]:
        for value in (2.0, 3.0):
            seen.append(renderer.render(registry))
            write(tmp_path, "counter", LIVE_PIDS[0], key, value)
            yield

    for _ in scrapes():
        pass
    seen.append(renderer.render(registry))
    assert [body.split(b"\n")[2] for body in seen] == [
        b'files_once_total{x="1"} 1.0', b'files_once_total{x="1"} 2.0', b'files_once_total{x="1"} 3.0']
    assert collector.keyed(("x",)) == ([("1",)], [3.0])
