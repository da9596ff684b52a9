"""app.topn: the bounded top-N tables, step by step against Space-Saving worked by hand
(keep the largest ``capacity`` once ``2 * capacity`` keys are held; a later key starts from
the largest value dropped so far, which is also its ``error``)."""

from __future__ import annotations

import pytest

from app.topn import TOP_N_CAPACITY, HeavyHitter, SpaceSaving, TopLists, key_fingerprint


def rows(table: SpaceSaving, n: int = 100) -> list[tuple[str, float, float]]:
    return [(hit.key, hit.value, hit.error) for hit in table.top(n)]


def test_fingerprints_are_blake2b_8_bytes_in_hex() -> None:
    assert key_fingerprint("sk-test-123") == "key_4c11fcb883d20595"
    assert key_fingerprint("") == "key_e4a6a0577479b2b4"


def test_a_key_utf8_cannot_encode_fingerprints_as_if_replaced() -> None:
    assert key_fingerprint("\ud800") == key_fingerprint("?") == "key_cd1a92efec30b7e9"


def test_capacity_is_at_least_one() -> None:
    with pytest.raises(ValueError, match="^capacity must be at least 1$"):
        SpaceSaving(0)
    with pytest.raises(ValueError):
        SpaceSaving(-3)
    table = SpaceSaving(1)
    assert table.capacity == 1
    table.add("a", 1.0)
    assert rows(table) == [("a", 1.0, 0.0)]


def test_values_of_a_key_add_up_exactly_below_the_capacity() -> None:
    table = SpaceSaving(3)
    for key, amount in (("a", 1.5), ("b", 4.0), ("a", 2.0), ("c", 0.25), ("a", 0.5)):
        table.add(key, amount)
    assert rows(table) == [("a", 4.0, 0.0), ("b", 4.0, 0.0), ("c", 0.25, 0.0)]
    assert table.top(1) == [HeavyHitter("a", 4.0, 0.0)]
    assert table.top(0) == []


def test_twice_the_capacity_keeps_the_largest_half_and_raises_the_floor() -> None:
    table = SpaceSaving(2)
    table.add("a", 5.0)
    table.add("b", 3.0)
    table.add("c", 1.0)
    assert len(rows(table)) == 3  # below 2 * capacity: nothing dropped
    table.add("d", 2.0)  # 4 keys: d (2) and c (1) dropped, the floor is 2
    assert rows(table) == [("a", 5.0, 0.0), ("b", 3.0, 0.0)]
    table.add("e", 1.0)  # starts from the floor: 2 + 1, of which 2 may be others'
    assert rows(table) == [("a", 5.0, 0.0), ("b", 3.0, 0.0), ("e", 3.0, 2.0)]
    table.add("a", 1.0)  # a key in the table just adds
    assert rows(table)[0] == ("a", 6.0, 0.0)
    table.add("c", 0.5)  # c comes back from the floor (2.5): 4 keys again, e (3) and c dropped
    assert rows(table) == [("a", 6.0, 0.0), ("b", 3.0, 0.0)]  # b came before e: kept on the tie
    table.add("f", 0.0)
    assert rows(table)[-1] == ("f", 3.0, 3.0)


def test_a_second_prune_raises_the_floor_to_the_largest_value_dropped() -> None:
    table = SpaceSaving(2)
    for key, amount in (("a", 10.0), ("b", 8.0), ("c", 1.0), ("d", 2.0)):
        table.add(key, amount)  # floor 2
    table.add("e", 4.0)  # 6, error 2
    table.add("f", 1.0)  # 3, error 2: 4 keys, prune: e (6) and f (3) dropped, floor 6
    assert rows(table) == [("a", 10.0, 0.0), ("b", 8.0, 0.0)]
    table.add("g", 0.5)
    assert rows(table)[-1] == ("g", 6.5, 6.0)


def test_the_floor_never_goes_down() -> None:
    table = SpaceSaving(2)
    for key, amount in (("a", 5.0), ("b", 4.0), ("c", 3.0), ("d", 1.0)):
        table.add(key, amount)  # prune: c and d dropped, floor 3
    table.add("e", -10.0)  # 3 - 10 = -7
    table.add("f", -20.0)  # 3 - 20 = -17: prune drops e and f, below the floor: it stays 3
    assert rows(table) == [("a", 5.0, 0.0), ("b", 4.0, 0.0)]
    table.add("g", 0.0)
    assert rows(table)[-1] == ("g", 3.0, 3.0)


def test_top_is_by_value_then_by_arrival() -> None:
    table = SpaceSaving(10)
    for key, amount in (("x", 1.0), ("y", 3.0), ("z", 2.0), ("w", 3.0)):
        table.add(key, amount)
    assert [hit.key for hit in table.top(3)] == ["y", "w", "z"]


def test_clear_forgets_keys_and_the_floor() -> None:
    table = SpaceSaving(1)
    table.add("a", 5.0)
    table.add("b", 3.0)  # floor 3
    table.clear()
    assert rows(table) == []
    table.add("c", 1.0)
    assert rows(table) == [("c", 1.0, 0.0)]


def test_top_lists_are_three_tables_of_the_capacity() -> None:
    lists = TopLists()
    tables = (lists.users_by_credits, lists.keys_by_credits, lists.keys_by_requests)
    assert [table.capacity for table in tables] == [TOP_N_CAPACITY] * 3 == [500] * 3
    assert len({id(table) for table in tables}) == 3
    lists.users_by_credits.add("u", 1.0)
    assert lists.keys_by_credits.top(5) == [] and lists.keys_by_requests.top(5) == []
    assert [table.capacity for table in (TopLists(7).users_by_credits, TopLists(7).keys_by_requests)] == [7, 7]
