"""Quantiles from histogram bucket rates, exactly as Prometheus' ``histogram_quantile``.

Both sources of a summary fetch the rates of a histogram's buckets by ``le`` and a few
labels (``sum by (le, provider, model) (rate(x_bucket[5m]))``); :func:`quantiles_by` sums
them to any coarser grouping and interpolates, so p50, p95 and p99 per model, per
provider and overall all come from one query.
"""

from __future__ import annotations

import bisect
import functools
import math
from collections.abc import Callable, Mapping

#: Group label values -> value, as a query result (NaN: undefined in the window).
Result = dict[tuple[str, ...], float]


def quantiles_by(
    bucket_rates: Mapping[tuple[str, ...], float],
    q: float,
    group: Callable[[tuple[str, ...]], tuple[str, ...]] = lambda key: (),
) -> Result:
    """``histogram_quantile(q, sum by (le, group) (...))`` over rates keyed (le, *labels)."""
    return many_quantiles_by(bucket_rates, (q,), group)[q]


def many_quantiles_by(
    bucket_rates: Mapping[tuple[str, ...], float],
    qs: tuple[float, ...],
    group: Callable[[tuple[str, ...]], tuple[str, ...]] = lambda key: (),
) -> dict[float, Result]:
    """Several quantiles of the same grouping, grouping the buckets and accumulating each
    group's counts once.

    A quantile already computed for a group (its key's ``le`` is :func:`quantile_le`, a
    recording rule's ``histogram_quantile``) is taken as it is; one that ``group`` merges
    with another group's is undefined (NaN), since quantiles do not add up.
    """
    groups: dict[tuple[str, ...], dict[float, float]] = {}
    given: dict[float, dict[tuple[str, ...], float]] = {}
    wanted = {quantile_le(q): q for q in qs}
    bounds: dict[str, float | None] = {}  # this answer's few distinct ``le`` values
    for key, value in bucket_rates.items():
        le = key[0]
        bound = bounds[le] if le in bounds else bounds.setdefault(le, _bound(le))
        if bound is None:
            if le in wanted:
                computed = given.setdefault(wanted[le], {})
                coarse = group(key[1:])
                computed[coarse] = math.nan if coarse in computed else value
            continue  # otherwise not a bucket: a backend answering nonsense
        coarse = group(key[1:])
        buckets = groups.get(coarse)
        if buckets is None:
            buckets = groups[coarse] = {}
        buckets[bound] = buckets.get(bound, 0.0) + value
    by_q: dict[float, Result] = {q: {} for q in qs}
    # Groups with no quantile defined (a recording rule's group holds its lone ``+Inf``
    # bucket beside its quantiles) take each quantile's undefined value in one go.
    undefined: list[tuple[str, ...]] = []
    for coarse, buckets in groups.items():
        cumulative = _cumulative(buckets)
        if cumulative is None:
            undefined.append(coarse)
            continue
        for q in qs:
            by_q[q][coarse] = _quantile(q, cumulative)
    for q in qs:
        by_q[q].update(dict.fromkeys(undefined, _quantile(q, None)))
        by_q[q].update(given.get(q, {}))
    return by_q


def quantile_le(q: float) -> str:
    """The ``le`` under which a bucket query's result holds its group's ``q`` quantile,
    computed already (app.summary.promql reads it from a recording rule)."""
    return f"q{q:g}"


def observations_by(
    bucket_rates: Mapping[tuple[str, ...], float],
    group: Callable[[tuple[str, ...]], tuple[str, ...]] = lambda key: (),
) -> Result:
    """Observations per second by group: the ``+Inf`` bucket, i.e. ``rate(x_count)``."""
    counts: Result = {}
    for (le, *labels), value in bucket_rates.items():
        if _bound(le) == math.inf:
            key = group(tuple(labels))
            counts[key] = counts.get(key, 0.0) + value
    return counts


#: Longer ``le`` values are parsed each time rather than cached: every bound an exporter
#: writes (``0.005``, ``2.5e+06``, ``+Inf``) is far shorter, and the 1,024 cached ones stay
#: a few hundred kB whatever labels a backend sends.
MAX_CACHED_BOUND_CHARS = 32


def _bound(le: str) -> float | None:
    """A bucket's upper bound; None when ``le`` is not a number."""
    return _cached_bound(le) if len(le) <= MAX_CACHED_BOUND_CHARS else _parse_bound(le)


def _parse_bound(le: str) -> float | None:
    try:
        return float(le)
    except (TypeError, ValueError):
        return None


_cached_bound = functools.lru_cache(maxsize=1024)(_parse_bound)


def histogram_quantile(q: float, buckets: dict[float, float]) -> float:
    """Prometheus' ``histogram_quantile`` over cumulative ``{upper bound: count}``.

    NaN when there are no observations, as in Prometheus (promql/quantile.go).
    """
    return _quantile(q, _cumulative(buckets))


#: A histogram's bounds in increasing order and its counts made non-decreasing; None when
#: no quantile is defined (fewer than two buckets, or no ``+Inf`` one).
Cumulative = tuple[list[float], list[float]] | None


def _cumulative(buckets: dict[float, float]) -> Cumulative:
    if len(buckets) < 2:
        return None
    bounds = sorted(buckets)
    if bounds[-1] != math.inf:
        return None
    counts = [buckets[bound] for bound in bounds]
    for index in range(1, len(counts)):  # counts must not decrease (scrape races)
        if counts[index] < counts[index - 1]:
            counts[index] = counts[index - 1]
    return bounds, counts


def _quantile(q: float, cumulative: Cumulative) -> float:
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    if cumulative is None:
        return math.nan
    bounds, counts = cumulative
    observations = counts[-1]
    if observations == 0:
        return math.nan
    rank = q * observations
    index = bisect.bisect_left(counts, rank)
    if index == len(bounds) - 1:
        return bounds[-2]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    start = 0.0 if index == 0 else bounds[index - 1]
    end = bounds[index]
    below = 0.0 if index == 0 else counts[index - 1]
    in_bucket = counts[index] - below
    if in_bucket == 0:  # q = 0 over an empty first bucket: 0/0, NaN in Prometheus too
        return math.nan
    return start + (end - start) * ((rank - below) / in_bucket)
