"""Links over real Tornado WebSockets on 127.0.0.1 (port 0)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.websocket import websocket_connect

from mesh import wire
from mesh.errors import DialError, LinkError
from mesh.link import MAX_MESSAGE
from mesh.websocket import SEND_BUFFER, dial
from tests.integration.mesh.conftest import StallProxy, wait_for
from tests.unit.mesh.test_link_helpers import Recorder, make_node

TOPIC = b"w" * 16
WMEM_MAX = int(Path("/proc/sys/net/core/wmem_max").read_text())


def chunk(i: int, size: int = wire.MAX_CHUNK_DATA) -> wire.Chunk:
    return wire.Chunk(b"f" * 32, i, bytes([i % 256]) * size)


async def test_two_links_establish_and_exchange_frames(mesh_server):
    srv = mesh_server()
    alice, rec = make_node(), Recorder()
    conn = await dial(srv.url, alice.identity, alice.record,
                      expected_peer=srv.node.user_id, **rec.kwargs())
    assert conn.peer == srv.node.record and conn.initiator and conn.established
    assert rec.established == [conn]
    await srv.recorder.until(lambda: srv.recorder.established)
    (inbound,) = srv.recorder.established
    assert inbound.peer == alice.record and not inbound.initiator
    assert inbound.link.handshake_hash == conn.link.handshake_hash

    frames = [wire.Publish(TOPIC, alice.user_id, i, b"p" * i) for i in range(1, 50)]
    for f in frames:
        conn.send(f)
    conn.send(chunk(3))
    inbound.send(wire.IHave(TOPIC, (b"i" * 32,)))
    await srv.recorder.until(lambda: len(srv.recorder.frames) == 50)
    assert [f for _, f in srv.recorder.frames] == [*frames, chunk(3)]
    await rec.until(lambda: rec.frames)
    assert rec.frames == [(conn, wire.IHave(TOPIC, (b"i" * 32,)))]

    inbound.close("duplicate", "testing")
    await rec.until(lambda: rec.closed)
    (closed_conn, event) = rec.closed[0]
    assert closed_conn is conn and (event.reason, event.by_peer) == ("duplicate", True)
    await conn.wait_closed()
    await inbound.wait_closed()
    assert srv.recorder.closed[0][1].by_peer is False


async def test_wrong_peer_is_refused(mesh_server):
    srv = mesh_server()
    alice = make_node()
    with pytest.raises(LinkError) as info:
        await dial(srv.url, alice.identity, alice.record, expected_peer="0" * 15)
    assert info.value.reason == "wrong_peer"
    await srv.recorder.until(lambda: srv.recorder.closed)
    event = srv.recorder.closed[0][1]
    assert (event.reason, event.by_peer) == ("wrong_peer", True)
    assert srv.recorder.established == []


async def test_unreachable_endpoint():
    with socket.socket() as s:  # a port that is certainly closed: bound, not listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        alice = make_node()
        with pytest.raises(DialError) as info:
            await dial(f"ws://127.0.0.1:{port}/mesh", alice.identity, alice.record,
                       connect_timeout=2)
    assert info.value.reason == "unreachable"


async def test_browser_origin_is_refused(mesh_server):
    srv = mesh_server()
    request = HTTPRequest(srv.url, headers={"Origin": "https://evil.example"})
    with pytest.raises(HTTPClientError) as info:
        await websocket_connect(request)
    assert info.value.code == 403
    assert srv.acceptor.connections == []


async def test_text_and_garbage_messages_close_the_link(mesh_server):
    srv = mesh_server()
    for message, reason in (("hello", "bad_frame"), (b"\xc1", "bad_frame"),
                            (b"\x00" * (MAX_MESSAGE + 10), None)):
        ws = await websocket_connect(srv.url, max_message_size=MAX_MESSAGE * 2)
        await ws.write_message(message, binary=isinstance(message, bytes))
        reply = await ws.read_message()
        if reason is None:  # over Tornado's max_message_size: the socket just drops
            assert reply is None
        else:
            assert wire.decode(reply) == wire.Close(reason, wire.decode(reply).message)
            assert wire.decode(reply).reason == reason
        ws.close()
    await wait_for(lambda: len(srv.recorder.closed) == 3)
    assert [e.reason for _, e in srv.recorder.closed] == ["bad_frame", "bad_frame",
                                                          "connection_lost"]


async def test_handshake_timeout_on_a_silent_client(mesh_server):
    srv = mesh_server(handshake_timeout=0.2)
    ws = await websocket_connect(srv.url)
    reply = await ws.read_message()
    assert wire.decode(reply).reason == "timeout"
    assert await ws.read_message() is None
    ws.close()


async def test_stalled_peer_is_dropped_without_stalling_others(mesh_server):
    limit = 2 * MAX_MESSAGE
    srv = mesh_server(max_queue_bytes=limit)
    proxy = StallProxy(srv.server.port)
    port = await proxy.start()
    try:
        slow_node, fast_node = make_node(), make_node()
        slow_rec, fast_rec = Recorder(), Recorder()
        slow = await dial(f"ws://127.0.0.1:{port}/mesh", slow_node.identity,
                          slow_node.record, **slow_rec.kwargs())
        fast = await dial(srv.url, fast_node.identity, fast_node.record, **fast_rec.kwargs())
        await wait_for(lambda: len(srv.recorder.established) == 2)
        by_peer = {c.peer_id: c for c in srv.recorder.established}
        to_slow, to_fast = by_peer[slow_node.user_id], by_peer[fast_node.user_id]
        proxy.stalled.set()

        sent = 0
        max_queued = 0
        async with asyncio.timeout(30):
            while not to_slow.closed:
                to_slow.send(chunk(sent))
                to_fast.send(chunk(sent))
                sent += 1
                max_queued = max(max_queued, to_slow.queued_bytes)
                await asyncio.sleep(0.002)
        assert to_slow.close_reason == "slow_peer"
        assert max_queued <= limit
        assert to_fast.established and to_fast.queued_bytes <= limit
        # The healthy peer got every chunk, in order, while the slow one was stuck.
        await fast_rec.until(lambda: len(fast_rec.frames) == sent)
        assert [f.index for _, f in fast_rec.frames] == list(range(sent))
        await to_slow.wait_closed()
        assert fast.established
    finally:
        await proxy.close()
        for conn in (slow, fast):
            conn.close()
            await conn.wait_closed()


async def test_keepalive_drops_a_peer_that_went_silent(mesh_server):
    """Tornado's WebSocket pings find a peer that stops answering at the TCP level."""
    srv = mesh_server()
    srv.server.app.settings.update(websocket_ping_interval=0.1, websocket_ping_timeout=0.1)
    proxy = StallProxy(srv.server.port)
    port = await proxy.start()
    try:
        node = make_node()
        conn = await dial(f"ws://127.0.0.1:{port}/mesh", node.identity, node.record,
                          ping_interval=0, ping_timeout=0)
        await wait_for(lambda: srv.recorder.established)
        proxy.stalled.set()
        await srv.recorder.until(lambda: srv.recorder.closed, within=15)
        assert srv.recorder.closed[0][1].reason == "connection_lost"
    finally:
        await proxy.close()
        conn.close()
        await conn.wait_closed()


async def test_both_ends_have_room_for_whole_chunk_messages(mesh_server):
    """Each link socket's send buffer holds several 256 KiB messages, not the 16 KiB
    autotuning starts with (the kernel doubles what is set, up to wmem_max)."""
    srv = mesh_server()
    alice = make_node()
    conn = await dial(srv.url, alice.identity, alice.record)
    await srv.recorder.until(lambda: srv.recorder.established)
    (inbound,) = srv.recorder.established
    expected = 2 * min(SEND_BUFFER, WMEM_MAX)
    sockets = [conn._transport._ws.protocol.stream.socket,
               inbound._transport._handler.ws_connection.stream.socket]
    assert [s.getsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF) for s in sockets] == \
        [expected, expected]
    assert expected >= 4 * wire.MAX_CHUNK_FRAME
    conn.close()
    await conn.wait_closed()
