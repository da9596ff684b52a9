"""app.summary.labelsets: series labels read into fixed fields."""

from __future__ import annotations

import gc
from collections.abc import Mapping

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.summary.labelsets import held_values, label_set

Labels = label_set(frozenset({"provider", "model", "le"}))


def test_a_label_set_reads_as_the_mapping_of_the_labels_it_holds() -> None:
    labels = msgspec.json.decode(b'{"provider": "p", "model": ""}', type=Labels)
    assert isinstance(labels, Mapping) and dict(labels) == {"provider": "p"}
    assert (labels["provider"], labels.get("model"), labels.get("le", "-")) == ("p", None, "-")
    assert ("provider" in labels, "model" in labels, "job" in labels, len(labels)) == (True, False, False, 1)
    assert (list(labels.keys()), list(labels.values())) == (["provider"], ["p"])
    assert list(labels.items()) == [("provider", "p")]
    for absent in ("model", "job"):
        with pytest.raises(KeyError):
            labels[absent]


def test_a_label_set_is_one_type_per_set_of_names_and_untracked() -> None:
    assert label_set(frozenset({"le", "model", "provider"})) is Labels
    labels = Labels(provider="p")
    assert not gc.is_tracked(labels) and labels.get("model") is None
    with pytest.raises(AttributeError):
        setattr(labels, "provider", "q")  # noqa: B010 - a field unknown to the type checker


def test_a_series_with_a_label_the_set_does_not_hold_is_not_read_into_it() -> None:
    with pytest.raises(msgspec.ValidationError, match="job"):
        msgspec.json.decode(b'{"provider": "p", "job": "j"}', type=Labels)


@pytest.mark.parametrize("name", ["get", "keys", "items", "values", "class", "not-a-name", "__len__"])
def test_names_that_cannot_be_fields_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="cannot hold"):
        label_set(frozenset({"provider", name}))


_VALUES = st.text(max_size=6)
_SETS = st.lists(st.builds(Labels, provider=_VALUES, model=_VALUES, le=_VALUES), max_size=8)


@settings(max_examples=300, deadline=None)
@given(_SETS)
def test_held_values_are_counted_from_the_sets_encoding(sets: list[msgspec.Struct]) -> None:
    values = [value for labels in sets for value in msgspec.structs.astuple(labels) if value]
    counted, chars = held_values(sets)  # type: ignore[arg-type]
    assert counted == len(values)
    # A value JSON writes with escapes (a quote, a control character) or in several UTF-8
    # bytes counts as more characters than it has: an estimate that errs on the high side.
    plain = all(value.isascii() and value.isprintable() and '"' not in value and "\\" not in value
                for value in values)
    assert chars == sum(map(len, values)) if plain else chars >= sum(map(len, values))
