"""StreamFramer: 4-byte length prefix framing for byte streams (fuzzed)."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import LinkError
from mesh.link import MAX_MESSAGE, StreamFramer


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    bounds = [0, *points, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=300), max_size=10), st.lists(st.integers(0, 10**6)))
def test_messages_survive_any_split(messages, cuts):
    stream = b"".join(StreamFramer.frame(m) for m in messages)
    framer = StreamFramer(max_size=300)
    out: list[bytes] = []
    for piece in split(stream, cuts):
        out += framer.feed(piece)
    assert out == messages
    assert framer.buffered == 0


@settings(max_examples=500)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_arbitrary_bytes_raise_only_link_errors(pieces):
    framer = StreamFramer(max_size=100)
    for piece in pieces:
        try:
            for message in framer.feed(piece):
                assert len(message) <= 100
        except LinkError as exc:
            assert exc.reason == "frame_too_large"
            with pytest.raises(LinkError):  # the stream has lost sync for good
                framer.feed(b"")
            return
    assert framer.buffered < 4 + 100


def test_oversized_length_is_refused_before_the_body_arrives():
    framer = StreamFramer()
    with pytest.raises(LinkError) as info:
        framer.feed(struct.pack(">I", MAX_MESSAGE + 1))  # only the prefix so far
    assert info.value.reason == "frame_too_large"
    assert framer.buffered == 0


def test_largest_message_passes():
    framer = StreamFramer()
    body = b"\x01" * MAX_MESSAGE
    assert framer.feed(StreamFramer.frame(body)) == [body]


def test_partial_prefix_waits():
    framer = StreamFramer()
    assert framer.feed(b"\x00\x00") == []
    assert framer.feed(b"\x00\x02ab\x00") == [b"ab"]
    assert framer.buffered == 1
