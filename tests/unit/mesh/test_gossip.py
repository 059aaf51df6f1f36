"""Gossip engine: eager push, prune, IHAVE batching, GRAFT+IWANT, seen-cache, validate
hook, full mesh, mesh bounds, topic privacy, and the commit-before-ack rule."""

from __future__ import annotations

import pytest

from mesh import wire
from mesh.errors import InvalidMessage, LocalError
from mesh.gossip import GossipEngine
from mesh.gossip_state import Commit, Deliver, EdgeState, Message, Params
from mesh.memstore import MemoryStore
from tests.unit.mesh.test_gossip_helpers import OTHER, TOPIC, build, phantoms, publish_ids, sent

P = Params()


def test_eager_push_relays_along_the_mesh_once() -> None:
    net, (a, b, c) = build(3, links=[(0, 1), (1, 2)])
    assert b.engine.mesh(TOPIC) == {a.id, c.id}
    m = net.publish(a.id, TOPIC, b"hello")
    net.run(net.now)  # zero latency: the push needs no timer
    assert c.store.has(m.msg_id) and b.store.has(m.msg_id)
    assert publish_ids(net, a, b) == [m.msg_id]
    assert publish_ids(net, b, c) == [m.msg_id]
    assert publish_ids(net, b, a) == [] and publish_ids(net, c, b) == []  # never back
    assert (b.hops[m.msg_id], c.hops[m.msg_id]) == (1, 2)
    assert [d.msg_id for d in c.deliveries] == [m.msg_id]


def test_duplicate_prunes_that_origin_on_that_edge_only() -> None:
    net, (a, b, c) = build(3)
    net.publish(a.id, TOPIC, b"one")
    net.run(net.now + 1)
    # b and c both got it from a and relayed it to each other: two duplicates, and each
    # asks the other to stop pushing a's messages.
    assert b.engine.edge_state(TOPIC, c.id, a.id) is EdgeState.LAZY
    assert c.engine.edge_state(TOPIC, b.id, a.id) is EdgeState.LAZY
    assert sent(net, wire.Prune) == [wire.Prune(TOPIC, (a.id,))] * 2
    assert a.engine.edge_state(TOPIC, b.id, a.id) is EdgeState.EAGER
    assert b.engine.edge_state(TOPIC, c.id, b.id) is EdgeState.EAGER  # other origins untouched
    t = net.now
    m2 = net.publish(a.id, TOPIC, b"two")
    net.run(net.now + 1)
    assert sorted(publish_ids(net, since=t)) == [m2.msg_id, m2.msg_id]  # a->b, a->c only
    assert b.copies[m2.msg_id] == c.copies[m2.msg_id] == 1
    assert m2.msg_id in sent(net, wire.IHave, b, c, since=t)[0].ids  # lazy for a: digest
    # b's messages grow their own tree: a and c both relay b's first message to each
    # other once, then b's later messages go out with no duplicate at all.
    t = net.now
    net.publish(b.id, TOPIC, b"b one")
    net.run(net.now + 1)
    assert sent(net, wire.Prune, since=t) == [wire.Prune(TOPIC, (b.id,))] * 2
    t = net.now
    m4 = net.publish(b.id, TOPIC, b"b two")
    net.run(net.now + 1)
    assert sorted(publish_ids(net, since=t)) == [m4.msg_id, m4.msg_id]
    assert sent(net, wire.Prune, since=t) == []
    assert a.engine.edge_state(TOPIC, b.id, a.id) is EdgeState.EAGER  # a's tree intact


def test_ihave_digests_are_batched_per_interval() -> None:
    net, (a, b, c) = build(3)
    net.publish(a.id, TOPIC, b"warm-up")
    net.run(net.now + 1)  # b-c is lazy now
    t = net.now
    ids = [net.publish(a.id, TOPIC, b"m%d" % i).msg_id for i in range(5)]
    net.run(t + P.ihave_interval / 2)
    assert sent(net, wire.IHave, b, c, since=t) == []  # held back for the batch
    net.run(t + P.ihave_interval)
    digests = sent(net, wire.IHave, b, c, since=t)
    assert len(digests) == 1 and list(digests[0].ids) == ids
    net.run(t + 5)
    assert sent(net, wire.IWant, since=t) == []  # c had them all: nothing fetched
    assert sent(net, wire.Graft, since=t) == []


def test_missing_message_is_fetched_by_iwant_and_its_origin_grafted() -> None:
    net, (a, b, c) = build(3)
    net.publish(a.id, TOPIC, b"warm-up")
    net.run(net.now + 1)
    assert b.engine.edge_state(TOPIC, c.id, a.id) is EdgeState.LAZY
    net.drop = lambda s, d, f: isinstance(f, wire.Publish) and (s, d) == (a.id, c.id)
    t = net.now
    m = net.publish(a.id, TOPIC, b"lost on a->c")
    net.run(t + P.ihave_interval + P.graft_timeout - 0.01)
    assert not c.store.has(m.msg_id)  # digest seen, still waiting for the eager copy
    assert sent(net, wire.IWant, c, since=t) == []
    net.run(t + 3)
    assert c.store.has(m.msg_id) and c.hops[m.msg_id] == 2
    (ihave_t,) = [x[0] for x in net.log if x[0] >= t and isinstance(x[3], wire.IHave)
                  and (x[1], x[2]) == (b.id, c.id)]
    (iwant_t,) = [x[0] for x in net.log if x[0] >= t and isinstance(x[3], wire.IWant)]
    assert iwant_t >= ihave_t + P.graft_timeout
    assert sent(net, wire.IWant, c, b, since=t) == [wire.IWant((m.msg_id,))]
    assert sent(net, wire.Graft, c, b, since=t) == [wire.Graft(TOPIC, (a.id,))]
    assert b.engine.edge_state(TOPIC, c.id, a.id) is EdgeState.EAGER  # b now feeds c
    # Next time a's push to c is the duplicate: c prunes a on a->c instead.
    t = net.now
    net.drop = None
    net.publish(a.id, TOPIC, b"after the graft")
    net.run(t + 1)
    prunes = [(s, d, f) for at, s, d, f, _ in net.log if isinstance(f, wire.Prune) and at >= t]
    assert prunes in ([(c.id, a.id, wire.Prune(TOPIC, (a.id,)))],
                      [(c.id, b.id, wire.Prune(TOPIC, (a.id,)))])


def _engine(peers: list[str]) -> tuple[GossipEngine, MemoryStore]:
    """One engine with ``peers`` up and meshed on TOPIC (a big topic)."""
    store = MemoryStore()
    eng = GossipEngine("100000000000001", store, lambda m: None)
    eng.join(TOPIC, ["100000000000001", *peers, *phantoms(20)], 0.0)
    for peer in peers:
        eng.peer_up(peer, 0.0)
        eng.receive(peer, wire.Subscribe((TOPIC,)), 0.0)
    eng.take_frames()
    return eng, store


def _frames(eng: GossipEngine) -> list[tuple[str, wire.Frame]]:
    return [(s.peer, s.frame) for s in eng.take_frames()
            if not isinstance(s.frame, wire.SyncSummary)]


def test_iwant_falls_back_to_the_next_announcer() -> None:
    b, d = "100000000000002", "100000000000004"
    eng, store = _engine([b, d])
    m = Message(TOPIC, phantoms(1)[0], 1, b"hard to get")
    eng.receive(b, wire.IHave(TOPIC, (m.msg_id,)), 1.0)
    eng.receive(d, wire.IHave(TOPIC, (m.msg_id,)), 1.1)
    eng.handle_timer(1.0 + P.graft_timeout - 0.01)
    assert _frames(eng) == []
    eng.handle_timer(1.0 + P.graft_timeout)
    assert _frames(eng) == [(b, wire.IWant((m.msg_id,)))]
    t = 1.0 + P.graft_timeout + P.iwant_timeout
    eng.handle_timer(t)  # b did not answer
    assert _frames(eng) == [(d, wire.IWant((m.msg_id,)))]
    eng.receive(d, m.to_frame(), t + 0.1)
    (commit,) = eng.take_events()
    store.add(commit.message)
    eng.committed(m.msg_id, t + 0.1)
    assert _frames(eng)[0] == (d, wire.Graft(TOPIC, (m.origin,)))  # d's branch had it
    eng.handle_timer(t + 5)
    assert (d, wire.Ack((m.msg_id,))) in _frames(eng)
    # d's copy was asked for: no PRUNE when b's late copy turns up, but b is acked.
    eng.receive(b, m.to_frame(), t + 6)
    eng.handle_timer(t + 7)
    assert [f for _, f in _frames(eng) if isinstance(f, wire.Prune)] == []


def test_announcers_that_leave_are_replaced_at_once_and_given_up_at_last() -> None:
    b, d = "100000000000002", "100000000000004"
    eng, _ = _engine([b, d])
    m = Message(TOPIC, phantoms(1)[0], 1, b"x")
    eng.receive(b, wire.IHave(TOPIC, (m.msg_id,)), 1.0)
    eng.receive(d, wire.IHave(TOPIC, (m.msg_id,)), 1.0)
    eng.handle_timer(1.0 + P.graft_timeout)
    assert (b, wire.IWant((m.msg_id,))) in _frames(eng)
    eng.peer_down(b, 2.0)  # asked peer gone: the next one is asked without waiting
    assert eng.next_timer() == 2.0
    eng.handle_timer(2.0)
    assert (d, wire.IWant((m.msg_id,))) in _frames(eng)
    eng.handle_timer(2.0 + P.iwant_timeout)
    assert eng.stats["missing_given_up"] == 1  # anti-entropy will have to find it


def test_seen_cache_expires_but_the_store_still_deduplicates() -> None:
    net, (a, b) = build(2)
    m = net.publish(a.id, TOPIC, b"old news")
    net.run(net.now + 1)
    assert b.engine.seen_count() == 1
    net.run(net.now + P.seen_ttl - 2)
    assert b.engine.seen_count() == 1
    net.run(net.now + 2 * P.heartbeat + 2)
    assert b.engine.seen_count() == 0
    net.deliver(a.id, b.id, m.to_frame())  # a stale copy comes round again
    net.run(net.now + 1)
    assert b.delivered[m.msg_id] == 1 and b.engine.seen_count() == 0
    assert m.msg_id in sent(net, wire.Ack, b, a, since=net.now - 1)[0].ids  # still acked


def test_validate_hook_rejection_stores_forwards_and_acks_nothing() -> None:
    def validate(message: Message) -> None:
        if message.payload.startswith(b"forged"):
            raise InvalidMessage("bad signature")

    net, (a, b, c) = build(3, links=[(0, 1), (1, 2)], validate=validate)
    t = net.now
    m = net.publish(a.id, TOPIC, b"forged payload")
    net.run(t + 5)
    assert not b.store.has(m.msg_id) and not c.store.has(m.msg_id)
    assert [(r.msg_id, r.from_peer, r.reason) for r in b.rejected] == [
        (m.msg_id, a.id, "invalid_message")]
    assert [x for x in net.log if x[0] >= t and x[1] == b.id
            and not isinstance(x[3], wire.SyncSummary)] == []  # no Publish, IHave or Ack
    assert b.delivered == {}
    assert m.msg_id in a.engine.sync.unacked(b.id)
    # An offer of the rejected id later does not make b fetch it again.
    net.deliver(a.id, b.id, wire.IHave(TOPIC, (m.msg_id,)))
    net.run(net.now + 5)
    assert sent(net, wire.IWant, b, since=t) == []
    ok = net.publish(a.id, TOPIC, b"genuine")
    net.run(net.now + 1)
    assert c.store.has(ok.msg_id)


def test_small_group_is_a_full_mesh_with_direct_push_from_the_author() -> None:
    net, nodes = build(5, big=False)
    assert all(n.engine.is_full_mesh(TOPIC) for n in nodes)
    assert all(len(n.engine.mesh(TOPIC)) == 4 for n in nodes)
    for i in range(4):
        author = nodes[i]
        t = net.now
        m = net.publish(author.id, TOPIC, b"direct %d" % i)
        net.run(t + 2)
        for n in nodes:
            if n is not author:
                assert n.copies[m.msg_id] == 1 and n.hops[m.msg_id] == 1
        pubs = [(s, d) for at, s, d, f, _ in net.log if at >= t and isinstance(f, wire.Publish)]
        assert sorted(pubs) == sorted((author.id, n.id) for n in nodes if n is not author)
    assert sent(net, wire.Prune) == [] and sent(net, wire.Graft) == []


def test_full_mesh_member_cut_off_from_the_author_is_fed_by_a_relay() -> None:
    pairs = [(i, j) for i in range(5) for j in range(i + 1, 5) if (i, j) != (0, 4)]
    net, nodes = build(5, big=False, links=pairs)
    author, cut = nodes[0], nodes[4]
    t = net.now
    m = net.publish(author.id, TOPIC, b"via a relay")
    net.run(t + 3)
    assert cut.store.has(m.msg_id) and cut.hops[m.msg_id] == 2
    (iwant,) = [(d, f) for at, s, d, f, _ in net.log
                if at >= t and s == cut.id and isinstance(f, wire.IWant)]
    relay = iwant[0]
    # Fetched by digest once, then that relay is asked to push the author's messages.
    assert sent(net, wire.Graft, since=t) == [wire.Graft(TOPIC, (author.id,))]
    assert sent(net, wire.Graft, cut, net.nodes[relay], since=t)
    t = net.now
    m2 = net.publish(author.id, TOPIC, b"pushed by the relay now")
    net.run(t + 0.01)
    assert cut.store.has(m2.msg_id) and sent(net, wire.IWant, since=t) == []
    # The author's link comes up: its direct push makes the relay's copy the duplicate.
    net.connect(author.id, cut.id)
    net.run(net.now + 1)
    t = net.now
    net.publish(author.id, TOPIC, b"direct again")
    net.run(t + 1)
    assert sent(net, wire.Prune, cut, since=t) == [wire.Prune(TOPIC, (author.id,))]
    t = net.now
    m4 = net.publish(author.id, TOPIC, b"one copy")
    net.run(t + 1)
    assert cut.copies[m4.msg_id] == 1 and cut.hops[m4.msg_id] == 1


def test_mesh_is_bounded_by_d_hi_and_refusals_are_explicit() -> None:
    n = 16
    net, nodes = build(n, links=[(0, i) for i in range(1, n)])
    hub = nodes[0]
    assert len(hub.engine.mesh(TOPIC)) == P.d_hi
    meshed = [x for x in nodes[1:] if hub.id in x.engine.mesh(TOPIC)]
    assert len(meshed) == P.d_hi
    refused = sent(net, wire.Unsubscribe, hub)
    assert len(refused) == n - 1 - P.d_hi
    for x in nodes[1:]:
        assert (hub.id in x.engine.mesh(TOPIC)) == (x.id in hub.engine.mesh(TOPIC))


def test_stranger_learns_nothing_and_is_not_served() -> None:
    net, (a, b, x) = build(3, links=[(0, 1)])
    net.topics[TOPIC] = net.topics[TOPIC] - {x.id}
    net.stop(x.id)
    net.start(x.id)  # x is no member now and joined nothing
    net.stop(a.id)
    net.start(a.id)
    net.connect(a.id, b.id)
    net.connect(a.id, x.id)
    net.run(net.now + 1)
    assert sent(net, wire.Subscribe, a, x) == []  # we never name our topics to x
    m = net.publish(a.id, TOPIC, b"members only")
    net.run(net.now + 1)
    t = net.now
    net.deliver(x.id, a.id, wire.Subscribe((TOPIC, OTHER)))
    net.deliver(x.id, a.id, wire.IWant((m.msg_id,)))
    net.deliver(x.id, a.id, wire.Publish(TOPIC, x.id, 1, b"spam"))
    net.deliver(x.id, a.id, wire.SyncSummary(TOPIC, {}))
    net.run(t + 2)
    # Same refusal for a topic a is in and one it has never heard of.
    assert sent(net, wire.Unsubscribe, a, x, since=t) == [wire.Unsubscribe((TOPIC, OTHER))]
    assert [f for f in sent(net, wire.Frame, a, x, since=t)
            if not isinstance(f, wire.Unsubscribe)] == []
    assert len(a.store) == 1


def test_nothing_is_acked_or_forwarded_before_the_commit() -> None:
    me, left, right = "100000000000001", "100000000000002", "100000000000003"
    store = MemoryStore()
    eng = GossipEngine(me, store, lambda m: None)
    eng.join(TOPIC, [me, left, right, *phantoms(20)], 0.0)
    for peer in (left, right):
        eng.peer_up(peer, 0.0)
        eng.receive(peer, wire.Subscribe((TOPIC,)), 0.0)
    eng.take_frames()
    frame = wire.Publish(TOPIC, left, 1, b"payload")
    eng.receive(left, frame, 1.0)
    (event,) = eng.take_events()
    assert isinstance(event, Commit) and event.from_peer == left
    eng.handle_timer(1.5)
    assert [s for s in eng.take_frames()
            if isinstance(s.frame, wire.Ack | wire.Publish | wire.IHave)] == []
    with pytest.raises(LocalError):
        eng.committed(b"\0" * 32, 1.5)
    store.add(event.message)
    eng.committed(event.message.msg_id, 1.5)
    assert [(s.peer, s.frame) for s in eng.take_frames()] == [(right, frame)]
    assert [type(e) for e in eng.take_events()] == [Deliver]
    eng.handle_timer(1.5 + P.ack_delay)
    assert [(s.peer, s.frame) for s in eng.take_frames()] == [
        (left, wire.Ack((event.message.msg_id,)))]


def test_out_of_order_arrivals_are_delivered_in_seq_order() -> None:
    net, (a, b) = build(2)
    origin = phantoms(1)[0]
    frames = [wire.Publish(TOPIC, origin, s, b"s%d" % s) for s in (1, 2, 3)]
    for f in (frames[2], frames[1]):
        net.deliver(a.id, b.id, f)
    assert b.deliveries == []  # 2 and 3 are committed but wait for 1
    assert b.store.head(TOPIC, origin) == 0
    net.deliver(a.id, b.id, frames[0])
    assert [m.seq for m in b.deliveries] == [1, 2, 3]
    assert b.order_ok


def test_seq_zero_is_rejected() -> None:
    net, (a, b) = build(2)
    net.deliver(a.id, b.id, wire.Publish(TOPIC, a.id, 0, b"x"))
    assert [r.reason for r in b.rejected] == ["bad_seq"] and len(b.store) == 0


def test_engine_guards_its_api() -> None:
    eng = GossipEngine("100000000000001", MemoryStore(), lambda m: None)
    eng.join(TOPIC, [], 0.0)
    with pytest.raises(LocalError):
        eng.join(TOPIC, [], 0.0)
    with pytest.raises(LocalError):
        eng.receive("100000000000002", wire.Graft(TOPIC), 0.0)  # not up
    eng.peer_up("100000000000002", 0.0)
    with pytest.raises(LocalError):
        eng.peer_up("100000000000002", 0.0)
    with pytest.raises(LocalError):
        eng.receive("100000000000002", wire.Ping(b""), 0.0)
    not_ours = Message(TOPIC, "100000000000002", 1, b"x")
    with pytest.raises(LocalError):
        eng.publish(not_ours, 0.0)
    with pytest.raises(LocalError):
        eng.publish(Message(TOPIC, "100000000000001", 1, b"x"), 0.0)  # not committed


def test_timers_back_off_after_a_false_alarm_and_recover() -> None:
    b, d = "100000000000002", "100000000000004"
    eng, _ = _engine([b, d])
    origin = phantoms(1)[0]
    m1 = Message(TOPIC, origin, 1, b"slow, not lost")
    eng.receive(b, wire.IHave(TOPIC, (m1.msg_id,)), 1.0)
    eng.handle_timer(1.0 + P.graft_timeout)
    assert (b, wire.IWant((m1.msg_id,))) in _frames(eng)
    eng.receive(d, m1.to_frame(), 1.7)  # the eager copy was merely late
    assert eng.stretch > 1.0 and eng.stats["false_alarms"] == 1
    stretched = eng.stretch
    m2 = Message(TOPIC, origin, 2, b"next")
    eng.receive(b, wire.IHave(TOPIC, (m2.msg_id,)), 2.0)
    eng.handle_timer(2.0 + P.graft_timeout)
    assert (b, wire.IWant((m2.msg_id,))) not in _frames(eng)  # waits longer now
    eng.handle_timer(2.0 + P.graft_timeout * stretched)
    assert (b, wire.IWant((m2.msg_id,))) in _frames(eng)
    for now in range(4, 60):  # quiet heartbeats bring the timers back
        eng.handle_timer(float(now))
    assert eng.stretch == 1.0


def test_digests_of_a_message_go_to_at_most_lazy_fanout_peers() -> None:
    peers = [f"10000000000001{i}" for i in range(7)]
    eng, store = _engine(peers)
    origin = phantoms(1)[0]
    for seq in (1, 2):
        m = Message(TOPIC, origin, seq, b"x%d" % seq)
        eng.receive(peers[0], m.to_frame(), float(seq))
        (commit,) = eng.take_events()
        store.add(commit.message)
        eng.committed(m.msg_id, float(seq))
        eng.handle_timer(seq + P.ihave_interval)
        frames = _frames(eng)
        eng.take_events()
        if seq == 1:  # an unseen origin: pushed to fanout_new peers, digests to 3 more
            assert len([p for p, f in frames if isinstance(f, wire.Publish)]) == P.fanout_new
            for p in peers[1:]:  # now everyone gets this origin elsewhere
                eng.receive(p, wire.Prune(TOPIC, (origin,)), seq + 0.5)
    digests = [p for p, f in frames if isinstance(f, wire.IHave)]
    assert [f for _, f in frames if isinstance(f, wire.Publish)] == []
    assert len(digests) == P.lazy_fanout and set(digests) <= set(peers[1:])


def test_graft_timer_learns_how_late_eager_copies_trail_digests() -> None:
    b, d = "100000000000002", "100000000000004"
    eng, store = _engine([b, d])
    origin = phantoms(1)[0]
    for seq in range(1, 11):  # digests from b, eager copies from d 0.5 s later
        m = Message(TOPIC, origin, seq, b"m%d" % seq)
        t = 10.0 * seq
        eng.receive(b, wire.IHave(TOPIC, (m.msg_id,)), t)
        eng.receive(d, m.to_frame(), t + 0.5)
        (commit,) = eng.take_events()
        store.add(commit.message)
        eng.committed(m.msg_id, t + 0.5)
        eng.take_events()
    assert eng.stats["sent_iwant"] == 0 and eng.stretch == 1.0
    m = Message(TOPIC, origin, 11, b"late again")
    eng.receive(b, wire.IHave(TOPIC, (m.msg_id,)), 200.0)
    eng.handle_timer(200.0 + P.graft_timeout)
    assert [f for _, f in _frames(eng) if isinstance(f, wire.IWant)] == []  # waits longer
    eng.handle_timer(203.0)
    assert (b, wire.IWant((m.msg_id,))) in _frames(eng)
