"""The Bluetooth attachment limit as typed on the command line and sent to the API."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from groups.meetups import MiB, format_attachment_limit, parse_attachment_limit
from mesh.jsonapi import ApiError
from webapp.bluetooth_api import _limit


def test_words_and_sizes() -> None:
    assert parse_attachment_limit("all") is None
    assert parse_attachment_limit(" None ") == 0
    assert parse_attachment_limit("5") == 5 * MiB
    assert parse_attachment_limit("0.5") == MiB // 2
    for bad in ("", "some", "-1", "1025", "nan", "inf", "5 MiB"):
        with pytest.raises(ValueError):
            parse_attachment_limit(bad)
    assert [format_attachment_limit(v) for v in (None, 0, 7)] == ["all", "none", 7]


@given(st.text(max_size=20))
def test_any_text_parses_or_is_refused(text: str) -> None:
    try:
        limit = parse_attachment_limit(text)
    except ValueError:
        return
    assert limit is None or 0 <= limit <= 1024 * MiB


@given(st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
                 st.lists(st.integers(), max_size=2)))
def test_the_api_takes_only_words_and_mib(value: object) -> None:
    try:
        limit = _limit(value)
    except ApiError as exc:
        assert exc.status_code == 400
        return
    assert value in ("all", "none") or (type(value) in (int, float) and 0 <= value <= 1024)
    assert limit is None or 0 <= limit <= 1024 * MiB
