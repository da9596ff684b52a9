"""The named query catalogue of the summaries, and its PromQL.

Every figure of a summary comes from a few :class:`Query` objects: a rate or a current
value of one catalogue family, summed (or maxed) by a few labels. Quantiles are computed
from the rates of a histogram's buckets (``sum by (le, ...)``) with Prometheus'
``histogram_quantile`` algorithm (app.summary.quantiles), so one query gives every percentile at
every grouping, and ratios are divided in the service. The same ``Query`` object
renders to PromQL for a Prometheus-compatible backend (:meth:`Query.promql`) and is
evaluated from this process's own registry snapshots in local mode
(``app.summary.snapshots``), so both sources mean the same thing by construction. Docs, rules
and dashboards draw on this module too.

Nothing from a request reaches PromQL as text: windows are integers, categories are an
enum, and label values are escaped by :func:`escape_label_value` (a :class:`Matcher`
takes any value).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from itertools import groupby
from operator import attrgetter, itemgetter, methodcaller
from typing import Literal

from app.catalogue import FAMILIES, Category
from app.registry import has_surrogates
from app.scoring.outcome import CALLER_FAULTS, ERRORS, SCORED, THROTTLES, Outcome, status_labels
from app.summary.labelsets import LabelSet
from app.summary.quantiles import Result, quantile_le

#: The inference ``status`` values of each outcome class of app.scoring.outcome: every
#: error rate is ERROR_STATUSES over SCORED_STATUSES, in the summaries, the fleet formula
#: and the docs alike.
ERROR_STATUSES = status_labels(ERRORS)
UNREACHED_STATUSES = status_labels({Outcome.UNREACHED})
SCORED_STATUSES = status_labels(SCORED)
THROTTLED_STATUSES = status_labels(THROTTLES)
CALLER_FAULT_STATUSES = status_labels(CALLER_FAULTS)


class Kind(StrEnum):
    RATE = "rate"  # per-second rate of a counter (or a histogram's buckets/_sum) over the window
    CURRENT = "current"  # the value now (gauges; counter totals)


MatchOp = Literal["=", "!=", "=~", "!~"]
_MATCH_OPS = frozenset(("=", "!=", "=~", "!~"))
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# Backslash, quote and newline must be escaped in a PromQL string. Other control
# characters are escaped so the query stays readable in logs, and U+FFFD because
# Prometheus' lexer takes it for an invalid UTF-8 byte ("invalid UTF-8 rune", 2.42).
_ESCAPES: dict[int, str] = {
    **{code: f"\\u{code:04x}" for code in (*range(0x20), 0x7F, 0xFFFD)},
    ord("\\"): "\\\\",
    ord('"'): '\\"',
    ord("\n"): "\\n",
    ord("\r"): "\\r",
    ord("\t"): "\\t",
}


def escape_label_value(value: str) -> str:
    """``value`` as the inside of a double-quoted PromQL string, matching it exactly
    (Prometheus and VictoriaMetrics). ValueError for text that is not valid Unicode."""
    if has_surrogates(value):
        raise ValueError("a label value must be valid Unicode text (it holds a lone surrogate)")
    return value.translate(_ESCAPES)


@dataclass(frozen=True, slots=True)
class Matcher:
    """A label matcher, ``label="value"``: safe for any value (ValueError for a label
    name or operator PromQL does not have)."""

    label: str
    op: MatchOp
    value: str

    def __post_init__(self) -> None:
        if not _LABEL_NAME.fullmatch(self.label):
            raise ValueError(f"not a label name: {self.label!r}")
        if self.op not in _MATCH_OPS:
            raise ValueError(f"not a label matcher operator: {self.op!r}")

    def promql(self) -> str:
        return f'{self.label}{self.op}"{escape_label_value(self.value)}"'


@dataclass(frozen=True, slots=True)
class Recorded:
    """A recording rule's series that holds a query's figure for one window, by ``job``
    and ``labels`` (deploy/prometheus/rules/recording.yml): ``sum by (job, *labels)`` of
    the query's rate over ``window_s``, or of its current values (``window_s`` None: a
    total, the same for every window)."""

    record: str
    labels: tuple[str, ...]
    window_s: int | None = 300
    #: A bucket record's quantiles recorded per group, (q, record): read instead of its
    #: buckets. Quantiles do not add up across jobs: these are read only while one job
    #: holds them (app.summary.rules).
    quantiles: tuple[tuple[float, str], ...] = ()
    #: With quantiles: the ``+Inf`` bucket is read too, for a figure that needs the
    #: observations (the output speed of time per output token).
    observations: bool = False

    @property
    def records(self) -> tuple[str, ...]:
        """Every record this figure reads."""
        quantiles = tuple(record for _, record in self.quantiles)
        return (self.record, *quantiles) if self.observations or not quantiles else quantiles


@dataclass(frozen=True, slots=True)
class Query:
    """One figure of a summary, by the labels in ``by``."""

    name: str
    kind: Kind
    #: A sample name: ``x_total``, a gauge, ``h_bucket``, ``h_sum``.
    metric: str
    by: tuple[str, ...] = ()
    matchers: tuple[Matcher, ...] = ()
    #: How series of several instances combine: "sum" for per-process figures, "max" for
    #: gauges every replica reports identically (business state read from the database).
    aggregate: Literal["sum", "max"] = "sum"
    #: Bucket queries: only groups with observations in the window. An idle model's
    #: buckets are all zero (its quantiles undefined), and a gateway has many idle models.
    #: Applied to the answer (:func:`active_groups`), so PromQL reads no ``_count`` beside
    #: the ``+Inf`` bucket that holds the same number.
    active_only: bool = False
    #: The recorded series that hold this figure precomputed, if the shipped rules have one.
    recorded: Recorded | None = None

    def selector(self, suffix: str = "", extra: tuple[Matcher, ...] = ()) -> str:
        return _selector(f"{self.metric}{suffix}", (*self.matchers, *extra))

    def promql(self, window_s: int, extra: tuple[Matcher, ...] = ()) -> str:
        """The PromQL of this query over ``window_s``; ``extra`` matchers narrow every
        selector (``job="gateway-metrics"`` when other apps export the same names)."""
        by = ", ".join(self.by)
        inner = self.selector("", extra)
        if self.kind is Kind.RATE:
            inner = f"rate({inner}[{duration(window_s)}])"
        if self.aggregate == "sum":
            inner = one_per_instance(self.metric, inner)
        return f"{self.aggregate} by ({by}) ({inner})" if by else f"{self.aggregate}({inner})"

    def covered(self, window_s: int) -> bool:
        """Whether a recorded series holds this figure over ``window_s``."""
        return (self.recorded is not None and self.recorded.window_s in (None, window_s)
                and not self.matchers)

    def reads_quantiles(self, recorded: frozenset[str]) -> bool:
        """Whether this query's answer holds recorded quantiles rather than buckets, when
        the queries named in ``recorded`` read their recorded series."""
        return self.name in recorded and self.recorded is not None and bool(self.recorded.quantiles)

    def recorded_promql(self, extra: tuple[Matcher, ...] = ()) -> str:
        """The PromQL of this query read from its recorded series (see :meth:`covered`).

        A recorded series already sums the instances of one job, each once. ``max by
        (job, <its labels>)`` keeps one copy of each where several answer (Prometheus
        replicas behind Thanos differ in their external labels only), and the jobs are
        summed: the rules are read only when no instance is scraped by two of the jobs
        holding the series (app.summary.rules), so that sum counts every instance once,
        as :func:`one_per_instance` does for the raw series.
        """
        assert self.recorded is not None, f"{self.name} has no recorded series"
        recorded = self.recorded
        by = ", ".join(self.by)
        if recorded.quantiles:
            # Each quantile of every group, under ``le`` (app.summary.quantiles.quantile_le),
            # and the observations (``+Inf``) if wanted: a few series per group, not 13
            # buckets. ``> -Inf`` drops the NaN of idle groups, so only groups with
            # observations answer, as :func:`active_groups` keeps of the buckets.
            groups = ", ".join(label for label in self.by if label != "le")
            parts = [f'label_replace(max by ({groups}) ({_selector(record, extra)}) > -Inf, '
                     f'"le", "{quantile_le(q)}", "", "")' for q, record in recorded.quantiles]
            if recorded.observations:
                selector = _selector(recorded.record, (*extra, Matcher("le", "=", "+Inf")))
                parts.insert(0, f"sum by ({by}) (max by ({', '.join(('job', *recorded.labels))}) ({selector}))")
            return " or ".join(parts)
        copies = f"max by ({', '.join(('job', *recorded.labels))}) ({_selector(recorded.record, extra)})"
        return f"{self.aggregate} by ({by}) ({copies})" if by else f"{self.aggregate}({copies})"


def _selector(metric: str, matchers: Iterable[Matcher]) -> str:
    inner = ",".join(m.promql() for m in matchers)
    return f"{metric}{{{inner}}}" if inner else metric


def active_groups(result: Result) -> Result:
    """A bucket query's result, keyed (le, *labels), without the groups that had no
    observations in the window (their ``+Inf`` bucket did not grow). Recorded quantiles
    read without their ``+Inf`` bucket answer only for groups with observations."""
    idle = {key[1:] for key, value in result.items() if key[0] == "+Inf" and not value > 0}
    return {key: value for key, value in result.items() if key[1:] not in idle} if idle else result


def one_per_instance(metric: str, inner: str) -> str:
    """``inner`` with one series per instance and label set, before anything sums it.

    One instance is often scraped by several jobs (``/metrics`` and a category endpoint,
    two Prometheus replicas behind Thanos): their copies of a series differ only in
    ``job`` and the target's own labels, and summing them would count the instance twice.
    The copies are the same numbers, so the largest stands for all. Catalogue families
    keep exactly their own labels; a name outside the catalogue drops ``job`` alone.
    In local mode a registry holds each series once, so there is nothing to do.
    """
    labels = _SERIES_LABELS.get(metric)
    if labels is None:
        return f"max without (job) ({inner})"
    return f"max by ({', '.join(('instance', *labels))}) ({inner})"


#: prometheus_client's process collector: no labels of its own.
RUNTIME_SAMPLES = ("process_start_time_seconds", "process_resident_memory_bytes", "process_cpu_seconds_total",
                   "process_open_fds")
_SERIES_LABELS: dict[str, tuple[str, ...]] = {
    sample: family.label_names + (("le",) if sample.endswith("_bucket") else ())
    for family in FAMILIES
    for sample in family.sample_names
}
_SERIES_LABELS.update(dict.fromkeys(RUNTIME_SAMPLES, ()))


def duration(seconds: int) -> str:
    """A PromQL duration: ``5m`` for 300, ``90s`` for 90."""
    seconds = int(seconds)
    return f"{seconds // 60}m" if seconds % 60 == 0 else f"{seconds}s"


def rate(name: str, metric: str, *by: str, matchers: tuple[Matcher, ...] = (),
         recorded: Recorded | None = None) -> Query:
    return Query(name, Kind.RATE, metric, by, matchers, recorded=recorded)


def current(name: str, metric: str, *by: str, aggregate: Literal["sum", "max"] = "sum",
            matchers: tuple[Matcher, ...] = (), recorded: Recorded | None = None) -> Query:
    return Query(name, Kind.CURRENT, metric, by, matchers, aggregate=aggregate, recorded=recorded)


def buckets(name: str, histogram: str, *by: str, recorded: Recorded | None = None) -> Query:
    """The rate of a histogram's buckets by ``le`` and ``by``: every quantile of every
    coarser grouping follows from it (app.summary.quantiles), so one query serves p50/p95/p99.
    Grouped by labels, only the groups with observations in the window are kept."""
    return Query(name, Kind.RATE, f"{histogram}_bucket", ("le", *by), active_only=bool(by), recorded=recorded)


#: The recorded series the summaries read (deploy/prometheus/rules/recording.yml).
CALLS_RECORD = Recorded("job_provider_model_status:model_inference_requests:rate5m", ("provider", "model", "status"))


def _per_model_buckets(histogram: str, *qs: float, observations: bool = False) -> Recorded:
    """A histogram's bucket rates per model and the quantiles ``qs`` per model, recorded."""
    quantiles = tuple((q, f"job_provider_model:{histogram}:p{round(q * 100)}_rate5m") for q in qs)
    return Recorded(f"job_provider_model_le:{histogram}_bucket:rate5m", ("provider", "model", "le"),
                    quantiles=quantiles, observations=observations)


def _fleet_buckets(histogram: str) -> Recorded:
    """A histogram's bucket rates summed over every provider and model, recorded."""
    return Recorded(f"job_le:{histogram}_bucket:rate5m", ("le",))


#: The per-model percentiles the summaries show (app.summary.models.ModelSummary).
INFERENCE_RECORD = _per_model_buckets("model_inference_duration_seconds", 0.5, 0.95, 0.99)
TTFT_RECORD = _per_model_buckets("gatewayz_time_to_first_token_seconds", 0.5, 0.95)
TPOT_RECORD = _per_model_buckets("gatewayz_time_per_output_token_seconds", 0.5, 0.95, observations=True)
INFERENCE_FLEET_RECORD = _fleet_buckets("model_inference_duration_seconds")
TTFT_FLEET_RECORD = _fleet_buckets("gatewayz_time_to_first_token_seconds")
TPOT_FLEET_RECORD = _fleet_buckets("gatewayz_time_per_output_token_seconds")
TPOT_SUM_RECORD = Recorded("job_provider_model:gatewayz_time_per_output_token_seconds_sum:rate5m",
                           ("provider", "model"))
PROVIDER_LATENCY_RECORD = Recorded("job_provider_le:provider_response_time_seconds_bucket:rate5m", ("provider", "le"))
HTTP_RECORD = Recorded("job_endpoint_le:http_request_duration_seconds_bucket:rate5m", ("endpoint", "le"))
CREDITS_RECORD = Recorded("job_provider_model:credits_used:rate5m", ("provider", "model"))
#: Totals: as many series as the rates above, read for every window.
CALLS_TOTAL_RECORD = Recorded("job_provider_model:model_inference_requests_total:sum", ("provider", "model"), None)
TOKENS_TOTAL_RECORD = Recorded("job_provider_model_token_type:tokens_used_total:sum",
                               ("provider", "model", "token_type"), None)
CREDITS_TOTAL_RECORD = Recorded("job:credits_used_total:sum", (), None)
#: The fleet health's calls by provider and status over the tracker's default minute.
FLEET_CALLS_RECORD = Recorded("job_provider_status:model_inference_requests:rate1m", ("provider", "status"), 60)

_CALLS = rate("calls_per_second", "model_inference_requests_total", "provider", "model", "status",
              recorded=CALLS_RECORD)
_INFERENCE = buckets("inference_buckets", "model_inference_duration_seconds", "provider", "model",
                     recorded=INFERENCE_RECORD)
_TTFT = buckets("ttft_buckets", "gatewayz_time_to_first_token_seconds", "provider", "model", recorded=TTFT_RECORD)
_TPOT = buckets("tpot_buckets", "gatewayz_time_per_output_token_seconds", "provider", "model", recorded=TPOT_RECORD)
#: With the +Inf bucket of _TPOT (the observations), the mean time per output token, whose
#: inverse is a model's ``output_tokens_per_second`` (app.summary.models).
_TPOT_SUM = rate("tpot_sum", "gatewayz_time_per_output_token_seconds_sum", "provider", "model",
                 recorded=TPOT_SUM_RECORD)
_TOKENS = current("tokens_total", "tokens_used_total", "provider", "model", "token_type",
                  recorded=TOKENS_TOTAL_RECORD)
_COST = current("cost_usd", "gatewayz_cost_by_provider", "provider")

#: The summary's queries, by category. Names are the keys app.summary.figures reads results by.
SUMMARY_QUERIES: dict[Category, tuple[Query, ...]] = {
    Category.PROVIDERS: (
        _CALLS,
        buckets("provider_latency_buckets", "provider_response_time_seconds", "provider",
                recorded=PROVIDER_LATENCY_RECORD),
        rate("provider_latency_sum", "provider_response_time_seconds_sum", "provider"),
        _COST,
    ),
    Category.MODELS: (
        _CALLS,
        current("calls_total", "model_inference_requests_total", "provider", "model", recorded=CALLS_TOTAL_RECORD),
        _INFERENCE,
        _TTFT,
        _TPOT,
        _TPOT_SUM,
        _TOKENS,
    ),
    Category.BUSINESS: (
        current("api_keys", "active_api_keys", "status", aggregate="max"),
        current("subscriptions", "active_subscriptions", "plan", "billing_cycle", aggregate="max"),
        current("trials", "trial_active", "status", aggregate="max"),
        _TOKENS,
        current("credits_total", "credits_used_total", recorded=CREDITS_TOTAL_RECORD),
        rate("credits_per_second", "credits_used_total", recorded=CREDITS_RECORD),
        _COST,
    ),
    Category.PERFORMANCE: (
        rate("http_per_second", "http_requests_total", "status_code"),
        buckets("http_buckets", "http_request_duration_seconds", recorded=HTTP_RECORD),
        # Overall only, unless the models category came along: then the sums of its
        # per-model buckets (DERIVED), which are many series, read once.
        buckets("inference_buckets_all", "model_inference_duration_seconds", recorded=INFERENCE_FLEET_RECORD),
        buckets("ttft_buckets_all", "gatewayz_time_to_first_token_seconds", recorded=TTFT_FLEET_RECORD),
        buckets("tpot_buckets_all", "gatewayz_time_per_output_token_seconds", recorded=TPOT_FLEET_RECORD),
        buckets("database_buckets", "database_query_duration_seconds"),
        current("in_flight", "http_requests_in_flight"),
        rate("cache_hits_per_second", "cache_hits_total"),
        rate("cache_misses_per_second", "cache_misses_total"),
        rate("rate_limited_per_second", "rate_limited_requests_total"),
    ),
    Category.SYSTEM: (
        current("process_start_time", "process_start_time_seconds", aggregate="max"),
        current("resident_memory_bytes", "process_resident_memory_bytes"),
        rate("cpu_seconds_per_second", "process_cpu_seconds_total"),
        current("open_fds", "process_open_fds"),
        current("connections", "active_connections", "type"),
        current("queues", "queue_size", "queue_name"),
        current("http_requests_total", "http_requests_total"),
        rate("exceptions_per_second", "http_exceptions_total"),
        current("label_overflows_total", "gatewayz_label_overflow_total"),
        current("rejected_inputs_total", "gatewayz_recording_rejected_total"),
    ),
}

#: Figures that are sums of a finer figure over the same series and window: when both are
#: wanted, only the finer one is asked for and the coarser is summed from it in Python
#: (:func:`derive`), so no series is read twice for one summary; unless the finer one is
#: read as recorded quantiles, which do not add up. coarse -> finer.
DERIVED: dict[str, str] = {
    "inference_buckets_all": "inference_buckets",
    "ttft_buckets_all": "ttft_buckets",
    "tpot_buckets_all": "tpot_buckets",
    "fleet_calls": "calls_per_second",  # when the summary's window is the tracker's
}


def derive(coarse: Query, finer: Query, result: Result) -> Result:
    """``coarse``'s result summed from ``finer``'s (whose ``by`` holds all of coarse's)."""
    positions = [finer.by.index(label) for label in coarse.by]
    groups: Iterable[tuple[str, ...]]
    if not positions:
        groups = [()] * len(result)
    elif len(positions) == 1:
        groups = zip(map(itemgetter(positions[0]), result))
    else:
        groups = map(itemgetter(*positions), result)
    summed: Result = {}
    for group, value in zip(groups, result.values(), strict=True):
        summed[group] = summed.get(group, 0.0) + value
    return summed


#: The label that tells the queries of a packed request apart.
PACK_LABEL = "summary_query"


def packed_promql(queries: list[Query], window_s: int, extra: tuple[Matcher, ...] = (),
                  recorded: frozenset[str] = frozenset()) -> str:
    """Several queries as one PromQL request: each one's series tagged with its name.

    Every query is one backend round trip and about a millisecond of the client's CPU,
    so a category's queries travel together (:func:`packs_for`); the backend evaluates
    them in one request and :func:`unpack` splits the answer. The series cannot collide:
    each carries its query's name in PACK_LABEL. A query alone is sent as it is: every
    series is its. Queries named in ``recorded`` read their recorded series.
    """
    texts = [query.recorded_promql(extra) if query.name in recorded else query.promql(window_s, extra)
             for query in queries]
    if len(queries) == 1:
        return texts[0]
    return " or ".join(f'label_replace({text}, "{PACK_LABEL}", "{query.name}", "", "")'
                       for query, text in zip(queries, texts, strict=True))


def unpack(labels: Sequence[Mapping[str, str]], values: Sequence[float], queries: list[Query]) -> dict[str, Result]:
    """The answer to :func:`packed_promql` (its samples' labels and values, in the
    answer's order), as each query's result. Labels read into a label set
    (app.summary.labelsets; the summaries' own: app.summary.service.PACKED_LABELS) are read as its
    attributes, a column at a time."""
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} label sets for {len(values)} values")
    if len(queries) == 1:  # sent as it is (:func:`packed_promql`)
        return {queries[0].name: _result(queries[0], labels, values)}
    rows: dict[str, tuple[list[Mapping[str, str]], list[float]]] = {query.name: ([], []) for query in queries}
    # The backend answers each query's series together (``or`` keeps its operands' order):
    # the answer is cut at each change of name, a slice at a time, not a sample at a time.
    start = 0
    names = map(attrgetter(PACK_LABEL) if _read_into_sets(labels) else methodcaller("get", PACK_LABEL, ""), labels)
    for name, run in groupby(names):
        end = start + len(list(run))
        row = rows.get(name)
        if row is not None:
            row[0].extend(labels[start:end])
            row[1].extend(values[start:end])
        start = end
    return {query.name: _result(query, *rows[query.name]) for query in queries}


def _result(query: Query, labels: Sequence[Mapping[str, str]], values: Sequence[float]) -> Result:
    result = dict(zip(_keys(query.by, labels), values, strict=True))
    return active_groups(result) if query.active_only else result


def _read_into_sets(labels: Sequence[Mapping[str, str]]) -> bool:
    return bool(labels) and isinstance(labels[0], LabelSet)


def _keys(by: tuple[str, ...], labels: Sequence[Mapping[str, str]]) -> Iterable[tuple[str, ...]]:
    """Each series' values of the labels ``by`` ("" for one it lacks), in order."""
    if not by:
        return [()] * len(labels)
    getter = attrgetter(*by) if _read_into_sets(labels) else itemgetter(*by)
    try:
        # The loop in C. A label missing somewhere: KeyError; one a label set does not
        # hold: AttributeError.
        keys = list(map(getter, labels))
    except (KeyError, AttributeError):
        return [tuple(pairs.get(name, "") for name in by) for pairs in labels]
    return list(zip(keys)) if len(by) == 1 else keys


def packs_for(categories: list[Category], recorded: frozenset[str] = frozenset()) -> dict[str, list[Query]]:
    """The queries of ``categories`` as packs, each query in one pack, and none whose
    figure is summed from another one of them (DERIVED). ``recorded``: the queries read
    from their recorded series.

    A category's queries travel together (named after the category), but for those by
    model: each travels alone, named after itself. At fleet scale they hold most of a
    summary's series (providers x models), and Prometheus evaluates a request on one core:
    apart, the backend evaluates them side by side (benchmarks/summary_scale.py)."""
    summable = {query.name for query in queries_for(categories) if not query.reads_quantiles(recorded)}
    packs: dict[str, list[Query]] = {}
    seen: set[str] = set()
    for category in categories:
        pack = [query for query in SUMMARY_QUERIES[category]
                if query.name not in seen and DERIVED.get(query.name) not in summable]
        seen.update(query.name for query in pack)
        together = []
        for query in pack:
            if "model" in query.by:
                packs[query.name] = [query]
            else:
                together.append(query)
        if together:
            packs[category.value] = together
    return packs


def queries_for(categories: list[Category]) -> list[Query]:
    """The queries the categories need, each once (categories share some)."""
    unique = {query.name: query for category in categories for query in SUMMARY_QUERIES[category]}
    return list(unique.values())


def status_matcher(statuses: frozenset[str]) -> Matcher:
    return Matcher("status", "=~", "|".join(sorted(statuses)))


def error_rate_promql(window_s: int, *by: str) -> str:
    """The upstream error rate as PromQL: (failed + unreached) / the calls the score counts,
    by ``by``; the same figure as the summaries' ``error_rate`` and the health score's."""
    metric = "model_inference_requests_total"
    errors = rate("errors", metric, *by, matchers=(status_matcher(ERROR_STATUSES),))
    scored = rate("scored", metric, *by, matchers=(status_matcher(SCORED_STATUSES),))
    return f"{errors.promql(window_s)}\n  / {scored.promql(window_s)}"
