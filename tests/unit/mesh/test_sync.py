"""Anti-entropy and acks: bounded catch-up batches, one download per message from many
peers, re-offer and implied acks after a reconnect, periodic repair, churn."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh import wire
from mesh.gossip_state import Message, Params
from mesh.sim import Network
from tests.unit.mesh.test_gossip_helpers import TOPIC, build, phantoms, publish_ids, sent

P = Params()
AUTHOR = phantoms(1)[0]


def _history(count: int, origin: str = AUTHOR) -> list[Message]:
    return [Message(TOPIC, origin, s, b"history %d" % s) for s in range(1, count + 1)]


def test_catch_up_runs_in_bounded_batches_and_in_order() -> None:
    net, (a, b) = build(2, links=[])
    history = _history(600)
    for m in history:
        a.store.add(m)
    net.connect(a.id, b.id)
    net.run(net.now + 5)
    assert all(b.store.has(m.msg_id) for m in history)
    offers = [len(f.ids) for f in sent(net, wire.IHave, a, b)]
    assert offers == [P.sync_batch, P.sync_batch, 600 - 2 * P.sync_batch]
    assert max(len(f.ids) for f in sent(net, wire.IWant, b, a)) <= P.sync_batch
    # initial summary plus one per further batch
    assert len(sent(net, wire.SyncSummary, b, a)) == math.ceil(600 / P.sync_batch)
    assert [m.seq for m in b.deliveries] == list(range(1, 601))
    assert sent(net, wire.Graft) == []  # offers are fetched, not grafted
    assert b.copies.total() == 600


def test_catching_up_from_several_peers_downloads_each_message_once() -> None:
    net, nodes = build(4, links=[(0, 1), (0, 2), (1, 2)])
    history = _history(300)
    for src in nodes[:3]:
        for m in history:
            src.store.add(m)
    late = nodes[3]
    for src in nodes[:3]:
        net.connect(src.id, late.id)
    net.run(net.now + 10)
    assert all(late.store.has(m.msg_id) for m in history)
    assert sorted(publish_ids(net, dst=late)) == sorted(m.msg_id for m in history)
    assert len(sent(net, wire.IHave, dst=late)) >= 3  # all three offered


def test_unacked_message_is_reoffered_after_reconnect_and_then_acked() -> None:
    net, (a, b) = build(2)
    net.drop = lambda s, d, f: isinstance(f, wire.Publish)
    m = net.publish(a.id, TOPIC, b"in flight when the link died")
    net.run(net.now + 0.01)
    assert a.engine.sync.unacked(b.id) == {m.msg_id}
    net.disconnect(a.id, b.id)
    net.drop = None
    net.run(net.now + 1)
    assert a.engine.sync.unacked(b.id) == {m.msg_id}  # kept across the outage
    t = net.now
    net.connect(a.id, b.id)
    net.run(t + 2)
    assert b.store.has(m.msg_id)
    assert m.msg_id in sent(net, wire.IHave, a, b, since=t)[0].ids  # re-offered
    assert m.msg_id in sent(net, wire.Ack, b, a, since=t)[0].ids
    assert a.engine.sync.unacked(b.id) == set()
    assert [(e.msg_id, e.peer) for e in a.acked] == [(m.msg_id, b.id)]


def test_lost_ack_is_implied_by_the_next_summary_without_resending() -> None:
    net, (a, b) = build(2)
    net.drop = lambda s, d, f: isinstance(f, wire.Ack)
    m = net.publish(a.id, TOPIC, b"stored, ack lost")
    net.run(net.now + 1)
    assert b.store.has(m.msg_id) and a.engine.sync.unacked(b.id) == {m.msg_id}
    assert a.acked == []
    net.disconnect(a.id, b.id)
    net.drop = None
    t = net.now
    net.connect(a.id, b.id)
    net.run(t + 2)
    assert a.engine.sync.unacked(b.id) == set()
    assert [(e.msg_id, e.peer) for e in a.acked] == [(m.msg_id, b.id)]
    assert publish_ids(net, a, b, since=t) == []  # nothing sent twice


def test_only_our_own_messages_raise_acked_events() -> None:
    net, (a, b, c) = build(3, links=[(0, 1), (1, 2)])
    m = net.publish(a.id, TOPIC, b"relayed by b")
    net.run(net.now + 1)
    assert [e.msg_id for e in a.acked] == [m.msg_id]
    assert b.acked == [] and b.engine.sync.unacked(c.id) == set()  # c acked b's relay


def test_periodic_anti_entropy_repairs_a_silent_loss() -> None:
    net, (a, b) = build(2)
    net.drop = lambda s, d, f: isinstance(f, wire.Publish | wire.IHave)
    t = net.now
    m = net.publish(a.id, TOPIC, b"lost without a trace")
    net.run(t + 1)
    net.drop = None
    assert not b.store.has(m.msg_id)
    net.run(t + P.sync_interval * 1.2 + P.sync_grace + 1)
    assert b.store.has(m.msg_id)
    assert sent(net, wire.Graft) == []


def test_restarted_node_catches_up_on_what_it_missed() -> None:
    net, nodes = build(4)
    first = [net.publish(nodes[0].id, TOPIC, b"before %d" % i) for i in range(5)]
    net.run(net.now + 2)
    victim = nodes[3]
    net.stop(victim.id)
    during = [net.publish(nodes[i % 3].id, TOPIC, b"during %d" % i) for i in range(30)]
    net.run(net.now + 2)
    t = net.now
    net.start(victim.id)
    for other in nodes[:3]:
        net.connect(victim.id, other.id)
    net.run(net.now + 5)
    assert all(victim.store.has(m.msg_id) for m in first + during)
    assert all(victim.delivered[m.msg_id] == 1 for m in first + during)
    assert sorted(publish_ids(net, dst=victim, since=t)) == sorted(m.msg_id for m in during)
    assert victim.order_ok


def test_summary_is_ignored_from_a_peer_outside_the_topic() -> None:
    net, (a, b) = build(2)
    for m in _history(3):
        a.store.add(m)
    net.topics[TOPIC] = net.topics[TOPIC] - {b.id}
    a.engine.update_members(TOPIC, net.topics[TOPIC], net.now)
    t = net.now
    net.deliver(b.id, a.id, wire.SyncSummary(TOPIC, {}))
    net.run(t + 1)
    assert sent(net, wire.IHave, a, b, since=t) == []


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 7), loss=st.sampled_from([0, 0.05, 0.2]),
       count=st.integers(1, 12), big=st.booleans())
def test_random_delivery_orders_converge(seed: int, n: int, loss: float, count: int,
                                         big: bool) -> None:
    """Whatever the latencies, loss and interleaving, every node ends with every
    message, delivered exactly once and in per-origin order."""
    net = Network(seed=seed, latency=(0.0, 0.3), loss=loss, wire_check=True)
    nodes = net.add_nodes(n)
    net.add_topic(TOPIC, [x.id for x in nodes] + (phantoms(20) if big else []))
    for x in nodes:
        net.start(x.id)
    order = list(range(n))
    net.rng.shuffle(order)
    for i in range(1, n):  # a random spanning tree plus a few extra edges
        net.connect(nodes[order[i]].id, nodes[order[net.rng.randrange(i)]].id)
    for _ in range(n // 2):
        net.connect(net.rng.choice(nodes).id, net.rng.choice(nodes).id)
    net.run(1.0)
    published = []
    for _ in range(count):
        net.run(net.now + net.rng.uniform(0, 0.5))
        published.append(net.publish(net.rng.choice(nodes).id, TOPIC, b"p"))
    ids = [m.msg_id for m in published]
    assert net.run_until(lambda: all(x.store.has(i) for x in nodes for i in ids),
                         step=1.0, limit=10 * P.sync_interval)
    for x in nodes:
        assert x.order_ok
        assert dict(x.delivered) == dict.fromkeys(ids, 1)


def test_a_gap_in_an_origins_sequence_is_asked_for_after_the_grace() -> None:
    net, (a, b) = build(2)
    t = net.now
    payload = b"lost, and no digest either"
    lost = {Message(TOPIC, a.id, 1, payload).msg_id}
    net.drop = lambda s, d, f: (isinstance(f, wire.Publish) and wire.message_id(
        f.topic, f.origin, f.seq, f.payload) in lost) or (
        isinstance(f, wire.IHave) and bool(lost & set(f.ids)))
    net.publish(a.id, TOPIC, payload)
    net.run(t + 0.1)
    m2 = net.publish(a.id, TOPIC, b"arrives first")
    net.run(t + 0.2)
    assert b.store.has(m2.msg_id) and b.deliveries == []  # held back behind the gap
    lost.clear()
    net.run(t + P.sync_grace + 0.5)
    assert [m.seq for m in b.deliveries] == [1, 2]
    assert sent(net, wire.SyncSummary, b, a, since=t + 0.2)  # b asked for it
