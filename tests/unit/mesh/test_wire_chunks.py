"""The attachment frames' encoding: a request names 1 to 16 chunks of one file."""

from __future__ import annotations

import msgpack
import pytest

from mesh import wire
from mesh.errors import FrameError

FILE = bytes(range(32))


def raw(indices: object) -> bytes:
    return msgpack.packb({"t": "chunk?", "v": wire.PROTOCOL_VERSION, "file_id": FILE,
                          "indices": indices}, use_bin_type=True)


def test_a_request_for_several_chunks_round_trips() -> None:
    frame = wire.ChunkRequest(FILE, (7, 0, 99))
    assert wire.decode(wire.encode(frame)) == frame
    assert wire.encode(frame) == raw([7, 0, 99])


@pytest.mark.parametrize("indices, problem", [
    ([], "fewer than 1"),
    (list(range(wire.MAX_REQUEST_CHUNKS + 1)), "more than 16"),
    ([1, -1], "non-negative"),
    ([1, "2"], "integer"),
    (3, "array"),
])
def test_bad_requests_are_refused(indices: object, problem: str) -> None:
    with pytest.raises(FrameError, match=problem):
        wire.decode(raw(indices))


def test_the_largest_request_decodes() -> None:
    indices = tuple(range(wire.MAX_REQUEST_CHUNKS))
    assert wire.decode(raw(list(indices))) == wire.ChunkRequest(FILE, indices)
