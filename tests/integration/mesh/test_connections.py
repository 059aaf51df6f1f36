"""ConnectionManager over real WebSockets on 127.0.0.1: dedup, backoff, topic bounds."""

from __future__ import annotations

import asyncio
import itertools
import random

import pytest

from mesh import wire
from mesh.connections import D_HI, D_LO, backoff_delay
from mesh.errors import LinkError
from mesh.websocket import dial
from tests.integration.mesh.conftest import wait_for
from tests.unit.mesh.test_link_helpers import make_node

TOPIC = b"c" * 16


def members(*nodes) -> dict[str, list[str]]:
    return {n.user_id: [n.url] for n in nodes}


def links_of(m) -> set[str]:
    return set(m.manager.links())


async def settle(nodes, condition, within: float = 15.0, stable: float = 0.3) -> None:
    """Wait until ``condition()`` holds and keeps holding for ``stable`` seconds."""
    async with asyncio.timeout(within):
        while True:
            await wait_for(condition, within=within)
            await asyncio.sleep(stable)
            if condition():
                return


async def test_two_managers_link_once_and_carry_frames(managed):
    a, b = managed(), managed()
    a.manager.set_topic(TOPIC, members(a, b))
    b.manager.set_topic(TOPIC, members(a, b))
    await settle([a, b], lambda: links_of(a) == {b.user_id} and links_of(b) == {a.user_id})
    a.manager.link_for(b.user_id).send(wire.Graft(TOPIC))
    await wait_for(lambda: b.frames)
    assert b.frames == [(a.user_id, wire.Graft(TOPIC))]
    assert a.manager.topic_links(TOPIC) == [b.user_id]


@pytest.mark.parametrize("attempt", range(3))
async def test_simultaneous_dial_yields_exactly_one_link(managed, attempt):
    a, b = managed(), managed()
    a.manager.set_topic(TOPIC, members(a, b))  # both dial at once
    b.manager.set_topic(TOPIC, members(a, b))

    def one_link() -> bool:
        la, lb = a.manager.link_for(b.user_id), b.manager.link_for(a.user_id)
        return (links_of(a) == {b.user_id} and links_of(b) == {a.user_id}
                and la.link.handshake_hash == lb.link.handshake_hash)

    await settle([a, b], one_link)
    assert all(x.outcome == "ok" for x in [*a.manager.attempts, *b.manager.attempts])
    assert len(a.manager.attempts) == len(b.manager.attempts) == 1  # both really dialled
    kept = a.manager.link_for(b.user_id)
    lower = min(a.user_id, b.user_id)
    assert kept.initiator == (a.user_id == lower)  # dialled by the lower user id
    for side in (a, b):
        # Every link reported up was either kept or reported down as a duplicate.
        assert len(side.ups) - len(side.downs) == 1
        assert {reason for _, reason in side.downs} <= {"duplicate"}
        assert side.ups[-1].established


async def test_reconnect_backs_off_while_the_server_is_down(managed):
    base, cap, seed = 0.05, 0.4, 7
    a = managed(rng=random.Random(seed), backoff_base=base, backoff_cap=cap,
                dial_options={"connect_timeout": 1.0})
    b_node = make_node()
    b = managed(b_node)
    port = b.server.port
    a.manager.set_topic(TOPIC, members(b))
    await wait_for(lambda: a.manager.link_for(b.user_id) is not None)
    loop = asyncio.get_running_loop()
    down_at: list[float] = []
    a.manager.on_link_closed = lambda conn, reason: (a.downs.append((conn, reason)),
                                                     down_at.append(loop.time()))

    await b.stop()  # the peer's process goes away
    await wait_for(lambda: a.downs)
    await wait_for(lambda: len([x for x in a.manager.attempts if x.outcome != "ok"]) >= 5)
    b2 = managed(b_node, port=port)  # ... and comes back on the same port
    await wait_for(lambda: a.manager.link_for(b.user_id) is not None, within=cap + 5)
    assert a.downs[0][1] == "shutdown"

    failed = [x for x in a.manager.attempts if x.outcome != "ok"][:5]
    assert {x.outcome for x in failed} == {"unreachable"}
    expected = random.Random(seed)
    times = [down_at[0], *(x.at for x in failed)]
    for n, (t0, t1) in enumerate(itertools.pairwise(times), start=1):
        delay = backoff_delay(n, expected, base, cap)
        assert delay - 0.01 <= t1 - t0 <= delay + 0.3, (n, t1 - t0, delay)
    assert a.manager.link_for(b.user_id).peer == b2.node.record


async def test_topic_of_20_members_stays_within_bounds(managed):
    nodes = [managed() for _ in range(20)]
    everyone = members(*nodes)
    for n in nodes:
        n.manager.set_topic(TOPIC, everyone)

    by_id = {n.user_id: n for n in nodes}

    def symmetric() -> bool:
        return all(n.user_id in links_of(by_id[p]) for n in nodes for p in links_of(n))

    def bounded() -> bool:
        counts = [len(n.manager.topic_links(TOPIC)) for n in nodes]
        return all(D_LO <= c <= D_HI for c in counts)

    # A link one side has closed stays in the other's table until the close arrives, so
    # the mesh counts as settled only once both views agree.
    await settle(nodes, lambda: bounded() and symmetric(), within=30, stable=0.5)
    print("links per node:", sorted(len(links_of(n)) for n in nodes),
          "closed:", sorted(r for n in nodes for _, r in n.downs))
    edges = {frozenset((n.user_id, p)) for n in nodes for p in links_of(n)}
    assert len(edges) < 20 * 19 // 2  # not everyone with everyone
    assert symmetric()
    # And the mesh is connected, so gossip can reach every member.
    reach, todo = set(), [nodes[0].user_id]
    while todo:
        p = todo.pop()
        if p not in reach:
            reach.add(p)
            todo += links_of(by_id[p])
    assert reach == set(by_id)


async def test_small_group_is_a_full_mesh(managed):
    nodes = [managed() for _ in range(5)]
    for n in nodes:
        n.manager.set_topic(TOPIC, members(*nodes))
    await settle(nodes, lambda: all(len(links_of(n)) == 4 for n in nodes))


async def test_link_from_a_stranger_is_closed_after_grace(managed):
    a = managed(orphan_grace=0.2, tick=0.05)
    stranger = make_node()
    closed = []
    conn = await dial(a.url, stranger.identity, stranger.record,
                      on_closed=lambda c, e: closed.append(e))
    await wait_for(lambda: a.manager.links().keys() == {stranger.user_id})
    await wait_for(lambda: closed)
    assert (closed[0].reason, closed[0].by_peer) == ("surplus", True)
    await conn.wait_closed()


async def test_inbound_links_beyond_the_cap_are_refused(managed):
    a = managed(max_links=1)
    first, second = make_node(), make_node()
    conn = await dial(a.url, first.identity, first.record)
    with pytest.raises(LinkError) as info:
        await dial(a.url, second.identity, second.record)
    assert info.value.reason == "connection_lost"
    assert conn.established
    conn.close()
    await conn.wait_closed()
