"""app.summary.promql: escaping and matchers (against real backends: test_backend), reading a
packed answer, and figures summed from finer ones."""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.catalogue import Category
from app.summary.labelsets import LabelSet, label_set
from app.summary.promql import (
    INFERENCE_RECORD,
    PACK_LABEL,
    SUMMARY_QUERIES,
    TPOT_RECORD,
    Matcher,
    active_groups,
    buckets,
    current,
    derive,
    escape_label_value,
    packed_promql,
    packs_for,
    rate,
    unpack,
)


def test_escaping_covers_backslash_quote_newline() -> None:
    assert escape_label_value('a\\b"c\nd') == 'a\\\\b\\"c\\nd'


def test_matcher_escapes_its_value() -> None:
    assert Matcher("model", "=", 'x"} or vector(1) or {y="').promql() == 'model="x\\"} or vector(1) or {y=\\""'


def test_matcher_refuses_a_bad_label_name() -> None:
    with pytest.raises(ValueError, match="label name"):
        Matcher('v"} or vector(1) or {x', "=", "value")


def test_matcher_refuses_an_unknown_operator() -> None:
    with pytest.raises(ValueError, match="operator"):
        Matcher("v", "==", "value")  # type: ignore[arg-type]


def test_text_that_is_not_unicode_is_refused() -> None:
    with pytest.raises(ValueError, match="surrogate"):
        escape_label_value("bad \udc80 byte")


# --- reading a packed answer ----------------------------------------------------------------

_PACK = [rate("calls", "model_inference_requests_total", "provider", "model", "status"),
         buckets("latency", "model_inference_duration_seconds", "provider"),
         rate("cpu", "process_cpu_seconds_total"),
         current("keys", "active_api_keys", "status", aggregate="max")]


def _series(query: str, **labels: str) -> dict[str, str]:
    return {PACK_LABEL: query, **labels}


def test_unpack_keys_each_query_by_its_labels_in_the_answers_order() -> None:
    labels = [_series("calls", provider="p", model="m", status="success"), _series("cpu"),
              _series("keys", status="active"), _series("calls", provider="p", model="n", status="server_error")]
    results = unpack(labels, [3.0, 0.5, 42.0, 1.0], _PACK)
    assert list(results["calls"].items()) == [(("p", "m", "success"), 3.0), (("p", "n", "server_error"), 1.0)]
    assert results["cpu"] == {(): 0.5}
    assert results["keys"] == {("active",): 42.0}
    assert results["latency"] == {}


def test_unpack_reads_a_missing_label_as_empty() -> None:
    labels = [_series("calls", provider="p", status="success"), _series("calls", provider="p", model="m")]
    assert unpack(labels, [1.0, 2.0], _PACK)["calls"] == {("p", "", "success"): 1.0, ("p", "m", ""): 2.0}


def test_unpack_ignores_series_of_other_queries() -> None:
    labels = [_series("unknown", provider="p"), {"provider": "p"}]
    assert all(result == {} for result in unpack(labels, [1.0, 2.0], _PACK).values())


def test_unpack_keeps_the_bucket_groups_with_observations() -> None:
    labels = [_series("latency", le=le, provider=provider) for provider in ("busy", "idle") for le in ("1.0", "+Inf")]
    assert unpack(labels, [1.0, 2.0, 0.0, 0.0], _PACK)["latency"] == {("1.0", "busy"): 1.0, ("+Inf", "busy"): 2.0}


def test_recorded_quantiles_read_without_observations_keep_their_groups() -> None:
    # Idle groups answer no quantile (``> -Inf`` drops their NaN): every group is active.
    result = {("q0.5", "a", "m"): 0.2, ("q0.95", "a", "m"): 0.9, ("q0.5", "b", "n"): 0.1}
    assert active_groups(result) == result
    # Beside the observations, a group whose +Inf did not grow is idle.
    observed = {**result, ("+Inf", "a", "m"): 3.0, ("+Inf", "b", "n"): 0.0}
    assert active_groups(observed) == {key: value for key, value in observed.items() if key[1] == "a"}


_LABEL_VALUES = st.sampled_from(["a", "b", "c"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["calls", "latency", "cpu", "keys", "other"]),
                          st.dictionaries(st.sampled_from(["provider", "model", "status", "le"]), _LABEL_VALUES),
                          st.floats(allow_nan=False, min_value=0, max_value=100)), max_size=40))
def test_unpack_reads_as_one_sample_at_a_time_would(answer: list[tuple[str, dict[str, str], float]]) -> None:
    _unpack_reads_as_one_sample_at_a_time_would(answer, lambda pairs: pairs)


_ALL_LABELS = label_set(frozenset({PACK_LABEL, "provider", "model", "status", "le"}))
#: Lacks a label a query sums by: that label reads as empty.
_SOME_LABELS = label_set(frozenset({PACK_LABEL, "provider", "model", "le"}))


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["calls", "latency", "cpu", "keys", "other"]),
                          st.dictionaries(st.sampled_from(["provider", "model", "status", "le"]), _LABEL_VALUES),
                          st.floats(allow_nan=False, min_value=0, max_value=100)), max_size=40),
       st.sampled_from([_ALL_LABELS, _SOME_LABELS]))
def test_unpack_reads_label_sets_as_it_reads_their_labels(answer: list[tuple[str, dict[str, str], float]],
                                                          into: type[LabelSet]) -> None:
    fields = set(into.__struct_fields__)
    _unpack_reads_as_one_sample_at_a_time_would(
        answer, lambda pairs: into(**{name: value for name, value in pairs.items() if name in fields}), fields)


def _unpack_reads_as_one_sample_at_a_time_would(answer: list[tuple[str, dict[str, str], float]],
                                                read: Callable[[dict[str, str]], Mapping[str, str]],
                                                kept: Container[str] | None = None) -> None:
    """``read``: each series' labels as unpack gets them, keeping the labels in ``kept`` (all: None)."""
    labels = [_series(query, **pairs) for query, pairs, _ in answer]
    values = [value for _, _, value in answer]
    expected: dict[str, dict[tuple[str, ...], float]] = {query.name: {} for query in _PACK}
    by_name = {query.name: query for query in _PACK}
    for pairs, value in zip(labels, values, strict=True):
        query = by_name.get(pairs[PACK_LABEL])
        if query is not None:
            key = tuple(pairs.get(name, "") if kept is None or name in kept else "" for name in query.by)
            expected[query.name][key] = value
    expected["latency"] = active_groups(expected["latency"])
    results = unpack([read(pairs) for pairs in labels], values, _PACK)
    assert {name: list(result.items()) for name, result in results.items()} == \
        {name: list(result.items()) for name, result in expected.items()}


# --- figures summed from finer ones ---------------------------------------------------------


def test_derive_sums_the_finer_figure_in_its_order() -> None:
    finer = buckets("per_model", "model_inference_duration_seconds", "provider", "model")
    result = {("1.0", "p", "m"): 0.1, ("+Inf", "p", "m"): 0.2, ("1.0", "q", "m"): 0.7, ("+Inf", "q", "n"): 0.3}
    per_le = derive(buckets("all", "model_inference_duration_seconds"), finer, result)
    assert list(per_le.items()) == [(("1.0",), 0.1 + 0.7), (("+Inf",), 0.2 + 0.3)]
    by_provider = derive(rate("by_provider", "x_total", "provider", "le"), finer, result)
    assert by_provider == {("p", "1.0"): 0.1, ("p", "+Inf"): 0.2, ("q", "1.0"): 0.7, ("q", "+Inf"): 0.3}
    assert derive(rate("total", "x_total"), finer, result) == {(): 0.1 + 0.2 + 0.7 + 0.3}


_INFERENCE = next(query for query in SUMMARY_QUERIES[Category.MODELS] if query.name == "inference_buckets")
_TPOT = next(query for query in SUMMARY_QUERIES[Category.MODELS] if query.name == "tpot_buckets")


def test_a_query_by_model_travels_alone_and_the_others_with_their_category() -> None:
    packs = packs_for(list(Category))
    for name, pack in packs.items():
        by_model = [query for query in pack if "model" in query.by]
        assert by_model == [] or (pack == by_model and [query.name for query in pack] == [name])
    names = [query.name for pack in packs.values() for query in pack]
    assert len(names) == len(set(names))  # each query once
    assert "models" not in packs  # every figure of it is by model
    assert {"calls_per_second", "inference_buckets", "tokens_total"} <= set(packs)
    assert [query.name for query in packs["system"]] == [query.name for query in SUMMARY_QUERIES[Category.SYSTEM]]


def test_per_model_buckets_read_as_recorded_quantiles_leave_the_fleet_figure_to_its_own_record() -> None:
    everything = list(Category)
    asked = {query.name for pack in packs_for(everything).values() for query in pack}
    assert "inference_buckets" in asked and "inference_buckets_all" not in asked  # summed in Python
    recorded = frozenset({"inference_buckets", "inference_buckets_all"})
    asked = {query.name for pack in packs_for(everything, recorded).values() for query in pack}
    assert {"inference_buckets", "inference_buckets_all"} <= asked  # quantiles do not add up
    assert "ttft_buckets_all" not in asked  # its per-model buckets still read raw


def test_recorded_quantiles_come_under_le() -> None:
    text = _INFERENCE.recorded_promql((Matcher("job", "=", "gw"),))
    parts = text.split(" or ")
    assert parts[1] == ('label_replace(max by (provider, model) '
                        '(job_provider_model:model_inference_duration_seconds:p95_rate5m{job="gw"}) > -Inf, '
                        '"le", "q0.95", "", "")')
    # The observations are not read: nothing of the models table needs them.
    assert len(parts) == 3 and INFERENCE_RECORD.records == tuple(record for _, record in INFERENCE_RECORD.quantiles)


def test_recorded_quantiles_come_beside_the_observations_a_figure_needs() -> None:
    # The output speed is the observations (+Inf) over the sum.
    text = _TPOT.recorded_promql((Matcher("job", "=", "gw"),))
    parts = text.split(" or ")
    assert parts[0] == ('sum by (le, provider, model) (max by (job, provider, model, le) '
                        '(job_provider_model_le:gatewayz_time_per_output_token_seconds_bucket:rate5m'
                        '{job="gw",le="+Inf"}))')
    assert len(parts) == 3 and TPOT_RECORD.records == (
        TPOT_RECORD.record, *(record for _, record in TPOT_RECORD.quantiles))


def test_a_query_alone_travels_as_it_is() -> None:
    assert packed_promql([_INFERENCE], 300) == _INFERENCE.promql(300)
    answer = unpack([{"le": "+Inf", "provider": "a", "model": "m"}], [2.0], [_INFERENCE])
    assert answer == {"inference_buckets": {("+Inf", "a", "m"): 2.0}}


