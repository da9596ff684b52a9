"""Series labels decoded into fixed fields, for answers of tens of thousands of series.

A summary at fleet scale reads some 6,000 series in one answer, and a JSON object per
series' labels is a dict the garbage collector tracks: three tracked containers per series
(its object, its labels, its value) make CPython collect dozens of times while one answer
is read, promote the answer to the oldest generation, and run a full collection of the
whole heap every summary or two (benchmarks/summary_scale.py; docs/BENCHMARKS.md). The
summary's own queries group by a few labels known in advance (app.summary.promql), so
their answers are decoded (app.summary.backend) into a :class:`LabelSet` of those labels
alone: an immutable struct the collector does not track, holding strings only, so it
cannot be part of a reference cycle.

A label set reads as a mapping of the labels it holds (a label its series lacks, or one
it does not keep, is absent, as in Prometheus, where an empty value means no label), and
its labels are attributes, which :func:`app.summary.promql.unpack` reads a column at a time.
"""

from __future__ import annotations

import functools
import keyword
from collections.abc import ItemsView, Iterator, KeysView, Mapping, Sequence, ValuesView
from typing import cast

import msgspec


class LabelSet(msgspec.Struct, frozen=True, gc=False):
    """The base of the label sets :func:`label_set` makes; never decoded itself."""

    def __getitem__(self, name: str) -> str:
        value = getattr(self, name, "") if name in self.__struct_fields__ else ""
        if not value:
            raise KeyError(name)
        return value

    def __iter__(self) -> Iterator[str]:
        return (name for name in self.__struct_fields__ if getattr(self, name))

    def __len__(self) -> int:
        return sum(1 for _ in self)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and bool(self.get(name))

    def get(self, name: str, default: str | None = None) -> str | None:
        try:
            return self[name]
        except KeyError:
            return default

    def keys(self) -> KeysView[str]:
        return KeysView(self)  # a registered Mapping

    def items(self) -> ItemsView[str, str]:
        return ItemsView(self)

    def values(self) -> ValuesView[str]:
        return ValuesView(self)


Mapping.register(LabelSet)


@functools.cache
def label_set(names: frozenset[str]) -> type[LabelSet]:
    """The label set holding the labels ``names`` (each a Python identifier that is no
    keyword and no attribute of :class:`LabelSet`); one type per set of names."""
    refused = sorted(name for name in names
                     if not name.isidentifier() or keyword.iskeyword(name) or hasattr(LabelSet, name))
    if refused:
        raise ValueError(f"label names a label set cannot hold as fields: {refused}")
    fields = [(name, str, "") for name in sorted(names)]
    # A label it does not hold fails the decoding: the answer is read the general way,
    # which checks every label (app.summary.backend.parse_response).
    return cast(type[LabelSet], msgspec.defstruct("Labels", fields, bases=(LabelSet,), frozen=True, gc=False,
                                                  forbid_unknown_fields=True))


_ENCODER = msgspec.json.Encoder()
#: How an empty label value is written in a label set's JSON. Inside a JSON string every
#: quote is escaped, so these bytes can only be a field's name ending and an empty value.
_EMPTY_VALUE = b'":""'


def held_values(sets: Sequence[LabelSet]) -> tuple[int, int]:
    """How many non-empty label values ``sets`` (of one label set type) hold, and their
    characters (exact for values without JSON escapes, more otherwise), from one JSON
    encoding of them all: an answer's tens of thousands of values are counted in C, not
    read one attribute at a time (a few milliseconds a summary at fleet scale)."""
    if not sets:
        return 0, 0
    names = type(sets[0]).__struct_fields__
    encoded = _ENCODER.encode(sets)
    # ``[`` ``]`` and a comma between sets; per set ``{`` ``}``, a comma between fields
    # and each field's ``"name":""`` around its value.
    framing = 1 + len(sets) * (2 + len(names) + sum(len(name) + 5 for name in names))
    values = len(sets) * len(names) - encoded.count(_EMPTY_VALUE)
    return values, len(encoded) - framing
