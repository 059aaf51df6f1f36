"""The same link over a byte stream (a socket pair standing in for RFCOMM), framed
with StreamFramer by mesh.transport.StreamTransport."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from mesh import wire
from mesh.transport import LinkConnection, StreamTransport
from tests.unit.mesh.test_link_helpers import Recorder, make_node


async def open_pair() -> tuple[tuple, tuple]:
    a, b = socket.socketpair()
    return await asyncio.open_connection(sock=a), await asyncio.open_connection(sock=b)


async def test_link_over_a_stream_socket_pair():
    (ra, wa), (rb, wb) = await open_pair()
    alice, bob = make_node(), make_node()
    rec_a, rec_b = Recorder(), Recorder()
    ca = LinkConnection(alice.identity, alice.record, initiator=True,
                        expected_peer=bob.user_id, **rec_a.kwargs())
    cb = LinkConnection(bob.identity, bob.record, initiator=False, **rec_b.kwargs())
    ta, tb = StreamTransport(ra, wa), StreamTransport(rb, wb)
    ca.attach(ta)
    cb.attach(tb)
    readers = [asyncio.create_task(ta.pump(ca)), asyncio.create_task(tb.pump(cb))]
    try:
        assert await ca.wait_established() == bob.record
        assert await cb.wait_established() == alice.record
        big = wire.Chunk(b"f" * 32, 0, b"z" * wire.MAX_CHUNK_DATA)
        ca.send(big)
        cb.send(wire.Prune(b"p" * 16))
        await rec_b.until(lambda: rec_b.frames)
        await rec_a.until(lambda: rec_a.frames)
        assert rec_b.frames == [(cb, big)] and rec_a.frames == [(ca, wire.Prune(b"p" * 16))]
        ca.close("normal")
        await rec_b.until(lambda: rec_b.closed)
        assert rec_b.closed[0][1].by_peer and rec_b.closed[0][1].reason == "normal"
    finally:
        for conn in (ca, cb):
            conn.close()
        await asyncio.gather(ca.wait_closed(), cb.wait_closed())
        for t in readers:
            t.cancel()
        await asyncio.gather(*readers, return_exceptions=True)


async def test_oversized_stream_frame_closes_the_link():
    (ra, wa), (rb, wb) = await open_pair()
    bob = make_node()
    rec = Recorder()
    cb = LinkConnection(bob.identity, bob.record, initiator=False, **rec.kwargs())
    tb = StreamTransport(rb, wb)
    cb.attach(tb)
    reader = asyncio.create_task(tb.pump(cb))
    try:
        wa.write(b"\xff\xff\xff\xff")  # claims a 4 GiB frame
        await rec.until(lambda: rec.closed)
        assert rec.closed[0][1].reason == "frame_too_large"
        frame = await ra.readexactly(4)
        close = await ra.readexactly(int.from_bytes(frame, "big"))
        assert wire.decode(close).reason == "frame_too_large"  # told in clear: no keys yet
    finally:
        cb.close()
        wa.close()
        await cb.wait_closed()
        with contextlib.suppress(Exception):
            await reader
