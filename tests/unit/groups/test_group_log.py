from __future__ import annotations

import contextlib
import hashlib
import os
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groups.errors import OpRejected, PermissionDenied
from groups.group import GroupLog, Op, OpKind, Role, membership_events
from mesh.identity import KeyPair

T0 = 1_800_000_000


@pytest.fixture(scope="module")
def people() -> dict[str, KeyPair]:
    return {name: KeyPair.generate() for name in ("alice", "bob", "carol", "dave", "eve")}


def add(log: GroupLog, author: KeyPair, new: KeyPair, now: float = T0) -> Op:
    op = log.make_op(author, OpKind.ADD, now, target=new.user_id, target_key=new.public)
    assert log.add(op)
    return op


def test_create_makes_the_creator_admin(people) -> None:
    log, op = GroupLog.create(people["alice"], "Trip", T0)
    state = log.state
    assert state.name == "Trip" and state.epoch == 0 and len(state.group_id) == 16
    assert state.members[people["alice"].user_id].role is Role.ADMIN
    assert GroupLog.from_ops([op.encode()]).state == state


def test_add_remove_leave_promote(people) -> None:
    a, b, c, d = (people[n] for n in ("alice", "bob", "carol", "dave"))
    log, _ = GroupLog.create(a, "Trip", T0)
    for p in (b, c, d):
        add(log, a, p)
    assert set(log.state.members) == {a.user_id, b.user_id, c.user_id, d.user_id}
    assert log.add(log.make_op(a, OpKind.PROMOTE, T0, target=b.user_id))
    assert log.state.is_admin(b.user_id)
    assert log.add(log.make_op(b, OpKind.REMOVE, T0, target=c.user_id))
    assert c.user_id not in log.state.members and c.user_id in log.state.removed
    assert log.add(log.make_op(d, OpKind.LEAVE, T0))
    assert log.state.epoch == 6
    # Every member rebuilding from the chain reaches the same state.
    rebuilt = GroupLog.from_ops([op.encode() for op in log.chain()])
    assert rebuilt.state == log.state


def test_non_admin_cannot_add_remove_promote_or_invite(people) -> None:
    a, b, c = people["alice"], people["bob"], people["carol"]
    log, _ = GroupLog.create(a, "Trip", T0)
    add(log, a, b)
    add(log, a, c)
    for kind, kw in [(OpKind.REMOVE, {"target": c.user_id}),
                     (OpKind.ADD, {"target": people["dave"].user_id,
                                   "target_key": people["dave"].public}),
                     (OpKind.PROMOTE, {"target": c.user_id}),
                     (OpKind.INVITE, {"secret": os.urandom(32), "expires": T0 + 60})]:
        with pytest.raises(PermissionDenied) as info:
            log.make_op(b, kind, T0, **kw)
        assert info.value.reason == "not_admin"


def test_forged_ops_from_peers_are_rejected(people) -> None:
    a, b, c = people["alice"], people["bob"], people["carol"]
    log, _ = GroupLog.create(a, "Trip", T0)
    add(log, a, b)
    head = log.state
    # Bob (not admin) signs a removal himself, bypassing make_op.
    from groups.group import _sign
    forged = _sign(b, Op(log.group_id, head.epoch + 1, head.head, OpKind.REMOVE, b.user_id,
                         b.public, T0, target=a.user_id))
    with pytest.raises(OpRejected) as info:
        log.add(Op.decode(forged.encode()))
    assert info.value.reason == "not_admin"
    # Carol (no member) claims to be alice: her key is not alice's.
    impostor = _sign(c, Op(log.group_id, head.epoch + 1, head.head, OpKind.ADD, a.user_id,
                           c.public, T0, target=c.user_id, target_key=c.public))
    with pytest.raises(OpRejected) as info:
        log.add(impostor)
    assert info.value.reason == "bad_signature"
    # A valid op with one byte flipped does not even decode.
    good = log.make_op(a, OpKind.ADD, T0, target=c.user_id, target_key=c.public).encode()
    with pytest.raises(OpRejected):
        Op.decode(good[:-3] + bytes([good[-3] ^ 1]) + good[-2:])
    assert log.state == head


def test_invites_are_one_time_and_expire(people) -> None:
    a, b, c, d = (people[n] for n in ("alice", "bob", "carol", "dave"))
    log, _ = GroupLog.create(a, "Trip", T0)
    add(log, a, b)
    secret = os.urandom(16)
    log.add(log.make_op(a, OpKind.INVITE, T0, secret=hashlib.sha256(secret).digest(),
                        expires=T0 + 3600))
    # Any member (bob, not an admin) may redeem it for its bearer.
    assert log.add(log.make_op(b, OpKind.ADD, T0 + 10, target=c.user_id, target_key=c.public,
                               secret=secret))
    with pytest.raises(PermissionDenied) as info:  # reused
        log.make_op(b, OpKind.ADD, T0 + 20, target=d.user_id, target_key=d.public,
                    secret=secret)
    assert info.value.reason == "invite_invalid"
    other = os.urandom(16)
    log.add(log.make_op(a, OpKind.INVITE, T0, secret=hashlib.sha256(other).digest(),
                        expires=T0 + 60))
    with pytest.raises(PermissionDenied) as info:  # expired
        log.make_op(b, OpKind.ADD, T0 + 61, target=d.user_id, target_key=d.public,
                    secret=other)
    assert info.value.reason == "invite_expired"
    with pytest.raises(PermissionDenied) as info:  # forged secret
        log.make_op(b, OpKind.ADD, T0, target=d.user_id, target_key=d.public,
                    secret=os.urandom(16))
    assert info.value.reason == "invite_invalid"


def test_removed_member_rejoins_only_by_a_newer_invite(people) -> None:
    a, c = people["alice"], people["carol"]
    log, _ = GroupLog.create(a, "Trip", T0)
    add(log, a, c)
    stale, fresh = os.urandom(16), os.urandom(16)
    log.add(log.make_op(a, OpKind.INVITE, T0, secret=hashlib.sha256(stale).digest(),
                        expires=T0 + 60))
    log.add(log.make_op(a, OpKind.REMOVE, T0, target=c.user_id))
    assert log.state.removed == {c.user_id: log.state.epoch}
    with pytest.raises(PermissionDenied) as info:  # made before the removal
        log.make_op(a, OpKind.ADD, T0, target=c.user_id, target_key=c.public, secret=stale)
    assert info.value.reason == "removed_member"
    log.add(log.make_op(a, OpKind.INVITE, T0, secret=hashlib.sha256(fresh).digest(),
                        expires=T0 + 60))
    log.add(log.make_op(a, OpKind.ADD, T0, target=c.user_id, target_key=c.public,
                        secret=fresh))
    assert c.user_id in log.state.members and c.user_id not in log.state.removed
    # Removed again: the stale invite is still open, and still does not bring her back.
    log.add(log.make_op(a, OpKind.REMOVE, T0, target=c.user_id))
    with pytest.raises(PermissionDenied) as info:
        log.make_op(a, OpKind.ADD, T0, target=c.user_id, target_key=c.public, secret=stale)
    assert info.value.reason == "removed_member"
    add(log, a, c)  # an admin may still re-add her explicitly
    assert c.user_id in log.state.members
    # Every member replaying the log agrees.
    assert GroupLog.from_ops(op.encode() for op in log.chain()).state == log.state


def test_last_admin_leaving_hands_over(people) -> None:
    a, b, c = people["alice"], people["bob"], people["carol"]
    log, _ = GroupLog.create(a, "Trip", T0)
    add(log, a, b)
    add(log, a, c)
    log.add(log.make_op(a, OpKind.LEAVE, T0))
    assert log.state.is_admin(b.user_id) and not log.state.is_admin(c.user_id)


def test_added_key_must_derive_to_the_id(people) -> None:
    a, b, c = people["alice"], people["bob"], people["carol"]
    log, _ = GroupLog.create(a, "Trip", T0)
    with pytest.raises(PermissionDenied):
        log.make_op(a, OpKind.ADD, T0, target=b.user_id, target_key=c.public)


def test_ops_out_of_order_are_held_until_their_parent_arrives(people) -> None:
    a, b, c = people["alice"], people["bob"], people["carol"]
    log, create = GroupLog.create(a, "Trip", T0)
    op1 = add(log, a, b)
    op2 = add(log, a, c)
    other = GroupLog(create)
    assert not other.add(op2)            # parent unknown: held
    assert other.add(op1)                # now both apply
    assert other.state == log.state


def test_concurrent_ops_converge_on_the_smallest_hash(people) -> None:
    a, b, c, d = (people[n] for n in ("alice", "bob", "carol", "dave"))
    log, _create = GroupLog.create(a, "Trip", T0)
    add(log, a, b)
    log.add(log.make_op(a, OpKind.PROMOTE, T0, target=b.user_id))
    base = [op.encode() for op in log.chain()]
    left, right = GroupLog.from_ops(base), GroupLog.from_ops(base)
    op_a = left.make_op(a, OpKind.ADD, T0, target=c.user_id, target_key=c.public)
    op_b = right.make_op(b, OpKind.ADD, T0, target=d.user_id, target_key=d.public)
    left.add(op_a)
    right.add(op_b)
    left.add(op_b)
    right.add(op_a)
    assert left.state == right.state
    winner = min(op_a, op_b, key=lambda op: op.hash)
    loser = op_b if winner is op_a else op_a
    assert left.chain()[-1] == winner
    assert left.orphans(loser.author) == [loser]
    # The loser re-issues on top of the winner; both end with all four members.
    reissued = left.make_op(people["alice" if loser is op_a else "bob"], OpKind.ADD, T0,
                            target=loser.target, target_key=loser.target_key)
    left.add(reissued)
    right.add(reissued)
    assert left.state == right.state and len(left.state.members) == 4


@settings(max_examples=30, deadline=None)
@given(st.randoms(use_true_random=False))
def test_any_delivery_order_converges(people, rnd: random.Random) -> None:
    """Ops made on three replicas with forks, delivered in random orders: all agree."""
    a, b = people["alice"], people["bob"]
    log, _create = GroupLog.create(a, "Trip", T0)
    add(log, a, b)
    log.add(log.make_op(a, OpKind.PROMOTE, T0, target=b.user_id))
    base = [op.encode() for op in log.chain()]
    replicas = [GroupLog.from_ops(base) for _ in range(3)]
    made = []
    for i in range(6):
        r = replicas[rnd.randrange(3)]
        author = rnd.choice([a, b])
        newcomer = KeyPair.generate()
        try:
            op = r.make_op(author, OpKind.ADD, T0 + i, target=newcomer.user_id,
                           target_key=newcomer.public)
        except PermissionDenied:
            continue
        r.add(op)
        made.append(op)
    for r in replicas:
        for op in rnd.sample(made, len(made)):
            with contextlib.suppress(OpRejected):
                r.add(op)
    assert replicas[0].state == replicas[1].state == replicas[2].state


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=400))
def test_op_decode_raises_only_op_rejected(data: bytes) -> None:
    with pytest.raises(OpRejected):
        Op.decode(data)


def test_membership_events_start_where_our_history_starts(people) -> None:
    a, b, c = people["alice"], people["bob"], people["carol"]
    log, _ = GroupLog.create(a, "Trip", T0)
    add(log, a, b)
    log.add(log.make_op(a, OpKind.INVITE, T0, secret=bytes(32), expires=T0 + 60))
    add(log, a, c)
    log.add(log.make_op(a, OpKind.PROMOTE, T0 + 1, target=c.user_id))
    log.add(log.make_op(a, OpKind.REMOVE, T0 + 2, target=b.user_id))
    kinds = [(e["kind"], e["target"]) for e in membership_events(log, a.user_id)]
    assert kinds == [("create", None), ("add", b.user_id), ("add", c.user_id),
                     ("promote", c.user_id), ("remove", b.user_id)]  # no invite line
    # Carol sees from her own add on: what came before is not hers to see.
    assert [e["kind"] for e in membership_events(log, c.user_id)] == ["add", "promote",
                                                                       "remove"]
    add(log, a, b)  # bob's history starts again at his latest add
    assert [(e["kind"], e["target"]) for e in membership_events(log, b.user_id)] == \
        [("add", b.user_id)]
