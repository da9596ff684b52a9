"""PromQL text of app.summary.promql: escaping and matchers (against real backends: test_backend)."""

from __future__ import annotations

import pytest

from app.summary.promql import Matcher, escape_label_value


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
