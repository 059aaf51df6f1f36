"""Happy-eyeballs dialling over real WebSockets on 127.0.0.1: a stalled endpoint does
not hold a link up, the winner is remembered, and each link knows its path."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from tests.integration.mesh.conftest import wait_for

TOPIC = b"h" * 16


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[int]:
    """A port that accepts TCP connections and never answers (a firewall eating the
    upgrade); yields the port."""
    held: list[asyncio.StreamWriter] = []

    def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()


async def test_a_stalled_first_endpoint_does_not_delay_the_link_long(managed):
    async with black_hole() as port:
        b = managed()
        a = managed(stagger=0.25, dial_options={"connect_timeout": 30.0})
        stalled = f"ws://127.0.0.1:{port}/mesh"
        a.manager.set_topic(TOPIC, {b.user_id: [stalled, b.url]})
        loop = asyncio.get_running_loop()
        started = loop.time()
        await wait_for(lambda: a.manager.link_for(b.user_id) is not None, within=5.0)
        assert loop.time() - started < 2.0  # not the stalled endpoint's 30 s
        conn = a.manager.link_for(b.user_id)
        assert conn.endpoint == b.url
        assert a.manager.link_paths() == {b.user_id: "lan"}
        await wait_for(lambda: b.manager.link_paths() == {a.user_id: "lan"})
        await wait_for(lambda: a.manager._peer(b.user_id).remembered == b.url)
        # The cancelled attempt is not reported as a link; the winner's was "ok".
        assert [x.outcome for x in a.manager.attempts] == ["ok"]


async def test_all_endpoints_failing_backs_off(managed):
    a = managed(stagger=0.05, backoff_base=0.05, backoff_cap=0.1)
    dead = [f"ws://127.0.0.1:{p}/mesh" for p in (1, 2)]
    a.manager.set_topic(TOPIC, {"123456789012345": dead})
    await wait_for(lambda: len(a.manager.attempts) >= 4)
    assert {x.url for x in a.manager.attempts} == set(dead)
    assert all(x.outcome == "unreachable" for x in a.manager.attempts)
