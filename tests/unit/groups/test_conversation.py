"""The conversation core on its own: no sockets, no SQLite, no sleeps.

Each test feeds ``Conversations`` objects inputs and a time, and reads the effects they
decide. ``route`` plays the adapter and the network for the few effects that carry a
message to another member (ops, welcomes, join requests, removal notices).
"""

from __future__ import annotations

import pytest

from groups.conversation import NOTICE_BYTES, Check, Conversations
from groups.conversation_events import (
    Announce,
    Conversation,
    FailDeliveries,
    ForgetSenderKeys,
    JoinSettled,
    LeaveTopic,
    MakeSenderKey,
    MarkLeft,
    Notify,
    OpenDirect,
    OwePairwise,
    PairwiseKind,
    PublishOp,
    Resync,
    RotateSenderKey,
    StartGroup,
    StoreOp,
)
from groups.errors import InviteError, NotFound, PermissionDenied
from groups.group import OpKind
from groups.messages import (
    DIRECT_CONTENTS,
    MAX_NOTICE_OPS,
    EnvelopeKind,
    JoinRequest,
    OpNotice,
    Welcome,
    decode_content,
)
from mesh.errors import InvalidMessage, NotYetValid
from mesh.identity import KeyPair

NOW = 1_700_000_000.0


def node() -> Conversations:
    return Conversations(KeyPair.generate())


def of(effects: list, kind: type) -> list:
    return [e for e in effects if isinstance(e, kind)]


def group_conv(topic: bytes, left: bool = False) -> Conversation:
    return Conversation(topic, "group", None, "Club", 0, 1 if left else None, True)


def route(effects: list, nodes: dict[str, Conversations], sender: Conversations,
          now: float = NOW) -> None:
    """Deliver what the effects send: our ops to every other member holding the log,
    pairwise contents to their peer (the adapter and the mesh, in a few lines)."""
    for effect in effects:
        if isinstance(effect, PublishOp):
            for other in nodes.values():
                if other is not sender and other.is_member(effect.topic, other.me):
                    route(other.receive_op(effect.topic, effect.op), nodes, other, now)
        elif isinstance(effect, OwePairwise) and effect.content is not None:
            peer = nodes[effect.peer]
            content = decode_content(effect.content, DIRECT_CONTENTS)
            if isinstance(content, Welcome):
                out = peer.receive_welcome(sender.me, content)
            elif isinstance(content, JoinRequest):
                out = peer.receive_join_request(sender.me, content,
                                                sender.identity.public, now)
            elif isinstance(content, OpNotice):
                out = peer.receive_op_notice(sender.me, content)
            else:
                continue
            route(out, nodes, peer, now)


@pytest.fixture
def club() -> tuple[bytes, dict[str, Conversations]]:
    """alice (admin) with bob and carol, joined by invite, all logs in step."""
    alice, bob, carol = node(), node(), node()
    nodes = {n.me: n for n in (alice, bob, carol)}
    topic, _ = alice.create("Club", NOW)
    for joiner in (bob, carol):
        invite, effects = alice.invite(topic, joiner.me.encode()[:16].ljust(16, b"!"), NOW,
                                       3600, ("", (), ()))
        route(effects, nodes, alice)
        route(joiner.join(invite, NOW), nodes, joiner)
    return topic, nodes


def test_create_starts_a_group_with_our_key_and_announces_it() -> None:
    alice = node()
    topic, effects = alice.create("Club", NOW)
    assert [type(e) for e in effects] == [StartGroup, StoreOp, MakeSenderKey, Announce]
    assert alice.log_of(topic).state.name == "Club"
    assert alice.members(topic) == [alice.me]


def test_join_by_invite_adds_the_joiner_and_shares_keys_both_ways() -> None:
    alice, bob = node(), node()
    nodes = {alice.me: alice, bob.me: bob}
    topic, _ = alice.create("Club", NOW)
    invite, _ = alice.invite(topic, b"s" * 16, NOW, 3600, ("", (), ()))
    request = bob.join(invite, NOW)
    assert request[0] == OpenDirect(alice.me)
    assert of(request, OwePairwise)[0].kind is PairwiseKind.JOIN
    answer = alice.receive_join_request(bob.me, decode_content(
        of(request, OwePairwise)[0].content, DIRECT_CONTENTS), bob.identity.public, NOW)
    assert [e.kind for e in of(answer, OwePairwise)] == [PairwiseKind.SENDER_KEY,
                                                          PairwiseKind.WELCOME]
    assert Resync(topic) in answer  # bob's messages refused before the add come now
    route(answer, nodes, alice)
    assert bob.members(topic) == alice.members(topic) == sorted([alice.me, bob.me])
    # A second join is a no-op; an expired or own invite is refused.
    assert bob.join(invite, NOW) == []
    with pytest.raises(InviteError):
        bob.join(invite, invite.expires + 1)
    with pytest.raises(InviteError):
        alice.join(invite, NOW)


def test_welcome_rotates_our_key_settles_the_join_and_shares_with_everyone(club) -> None:
    topic, nodes = club
    dave = node()
    alice = next(iter(nodes.values()))
    invite, effects = alice.invite(topic, b"d" * 16, NOW, 3600, ("", (), ()))
    route(effects, nodes, alice)
    ask = dave.join(invite, NOW)
    answer = alice.receive_join_request(dave.me, decode_content(
        of(ask, OwePairwise)[0].content, DIRECT_CONTENTS), dave.identity.public, NOW)
    welcome = decode_content(of(answer, OwePairwise)[-1].content, DIRECT_CONTENTS)
    effects = dave.receive_welcome(alice.me, welcome)
    assert RotateSenderKey(topic) in effects and JoinSettled(topic) in effects
    assert {e.peer for e in of(effects, OwePairwise)} == set(nodes)
    assert dave.receive_welcome(alice.me, welcome) == []  # already in


def test_join_request_for_an_unknown_group_or_identity_is_refused_pairwise(club) -> None:
    topic, nodes = club
    alice = next(iter(nodes.values()))
    stranger = node()
    for request, key, reason in [(JoinRequest(bytes(16), b"x" * 16), b"k", "unknown_group"),
                                 (JoinRequest(topic, b"x" * 16), None, "unknown_identity"),
                                 (JoinRequest(topic, b"x" * 16), stranger.identity.public,
                                  "invite_invalid")]:
        [refusal] = alice.receive_join_request(stranger.me, request, key, NOW)
        assert refusal.kind is PairwiseKind.JOIN_REFUSED
        assert decode_content(refusal.content, DIRECT_CONTENTS).reason == reason


def test_removal_rotates_shares_with_the_rest_and_tells_the_removed_member(club) -> None:
    topic, nodes = club
    alice, bob, carol = nodes.values()
    effects = alice.remove(topic, carol.me, NOW)
    assert isinstance(effects[0], PublishOp) and effects[0].op.kind is OpKind.REMOVE
    notice = effects[1]
    assert notice.peer == carol.me and notice.kind is PairwiseKind.OPS
    assert RotateSenderKey(topic) in effects
    assert {e.peer for e in of(effects, OwePairwise)
            if e.kind is PairwiseKind.SENDER_KEY} == {bob.me}
    assert ForgetSenderKeys(topic, carol.me) in effects
    assert FailDeliveries(topic, carol.me, "no longer a member") in effects
    # Carol's node learns from the notice alone: it leaves the topic and refuses sends.
    learned = carol.receive_op_notice(alice.me, decode_content(notice.content,
                                                               DIRECT_CONTENTS))
    assert MarkLeft(topic) in learned and LeaveTopic(topic) in learned
    assert ForgetSenderKeys(topic) in learned
    with pytest.raises(PermissionDenied) as info:
        carol.send_text(group_conv(topic), "still here?", None, 0, NOW)
    assert info.value.reason == "not_member"
    with pytest.raises(NotFound):
        carol.log_of(topic)


def test_removed_member_that_missed_ops_still_learns_of_its_removal(club) -> None:
    """Issue 15, finding 10: the removal notice carries the ops before it, so a member
    that missed some (offline, or the topic already stopped being shared with it)
    can link the removal to its log."""
    topic, nodes = club
    alice, bob, carol = nodes.values()
    # Carol misses two ops (her links were down): an invite and a promotion.
    missed = alice.invite(topic, b"m" * 16, NOW, 3600, ("", (), ()))[1]
    missed += alice.promote(topic, bob.me, NOW)
    route(missed, {alice.me: alice, bob.me: bob}, alice)
    effects = alice.remove(topic, carol.me, NOW)
    notice = decode_content(of(effects, OwePairwise)[0].content, DIRECT_CONTENTS)
    assert len(notice.ops) == 4   # from the op that added carol to her removal
    assert carol.is_member(topic, carol.me)
    learned = carol.receive_op_notice(alice.me, notice)
    assert not carol.is_member(topic, carol.me)
    assert Notify("group", {"group_id": topic.hex(), "event": "left",
                            "epoch": alice.log_of(topic).state.epoch}) in learned


def test_a_late_welcome_does_not_undo_a_removal(club) -> None:
    """Every member an invite names answers the join request. Bob's answer to carol's
    came only after alice had removed carol (an integration run caught it: carol's node
    took the welcome and counted itself in again). Merged with the ops carol holds, it
    no longer adds her: ignored, in this session and after a restart (ops from the
    store). A welcome made after a new invite still brings her back."""
    topic, nodes = club
    alice, bob, carol = nodes.values()
    late = bob.receive_join_request(carol.me, JoinRequest(topic, b"x" * 16),
                                    carol.identity.public, NOW)
    stale = decode_content(of(late, OwePairwise)[-1].content, DIRECT_CONTENTS)
    assert isinstance(stale, Welcome)
    route(alice.remove(topic, carol.me, NOW), nodes, alice)
    assert not carol.is_member(topic, carol.me)
    assert carol.receive_welcome(bob.me, stale) == []
    assert not carol.is_member(topic, carol.me)
    held = [op.encode() for op in alice.log_of(topic).chain()]  # what carol's store has
    restarted = Conversations(carol.identity)
    assert restarted.receive_welcome(bob.me, stale, held) == []
    assert not restarted.is_member(topic, carol.me)
    # Re-invited: alice's welcome carries the removal and the new add.
    route(alice.invite(topic, b"n" * 16, NOW, 3600, ("", (), ()))[1], nodes, alice)
    answer = alice.receive_join_request(carol.me, JoinRequest(topic, b"n" * 16),
                                        carol.identity.public, NOW)
    fresh = decode_content(of(answer, OwePairwise)[-1].content, DIRECT_CONTENTS)
    assert JoinSettled(topic) in restarted.receive_welcome(alice.me, fresh, held)
    assert restarted.is_member(topic, carol.me)


def test_removal_notice_is_bounded_and_ignored_from_non_members(club) -> None:
    topic, nodes = club
    alice, _, carol = nodes.values()
    for i in range(2 * MAX_NOTICE_OPS):
        alice.invite(topic, bytes([i % 256]) * 16, NOW, 3600, ("", (), ()))
    notice = decode_content(of(alice.remove(topic, carol.me, NOW), OwePairwise)[0].content,
                            DIRECT_CONTENTS)
    assert len(notice.ops) == MAX_NOTICE_OPS and sum(map(len, notice.ops)) <= NOTICE_BYTES
    assert node().receive_op_notice(alice.me, notice) == []   # not our group
    assert carol.receive_op_notice(node().me, notice) == []   # not from a member


def test_leave_forgets_the_group_after_our_op_went_out(club) -> None:
    topic, nodes = club
    _, bob, _ = nodes.values()
    effects = bob.remove(topic, bob.me, NOW)
    assert effects[0].op.kind is OpKind.LEAVE
    assert effects.index(LeaveTopic(topic)) > 0 and MarkLeft(topic) in effects
    assert not bob.is_member(topic, bob.me)


def test_validate_refuses_what_a_member_may_not_send(club) -> None:
    topic, nodes = club
    alice, bob, carol = nodes.values()
    conv = group_conv(topic)
    assert bob.validate(conv, alice.me, EnvelopeKind.SEALED, b"") is Check.VERIFY_SEALED
    with pytest.raises(NotYetValid):
        bob.validate(conv, node().me, EnvelopeKind.SEALED, b"")
    route(alice.remove(topic, carol.me, NOW), nodes, alice)
    with pytest.raises(InvalidMessage) as info:
        bob.validate(conv, carol.me, EnvelopeKind.SEALED, b"")
    assert info.value.reason == "not_member" and not isinstance(info.value, NotYetValid)
    op = alice.log_of(topic).chain()[-1]
    with pytest.raises(InvalidMessage, match="does not match"):
        bob.validate(conv, bob.me, EnvelopeKind.OP, op.encode())
    assert bob.validate(conv, alice.me, EnvelopeKind.OP, op.encode()) is Check.ACCEPT
    for bad_conv, kind, reason in [(None, EnvelopeKind.SEALED, "unknown_topic"),
                                   (group_conv(topic, left=True), EnvelopeKind.SEALED,
                                    "unknown_topic"),
                                   (conv, EnvelopeKind.PAIRWISE, "bad_envelope")]:
        with pytest.raises(InvalidMessage) as info:
            bob.validate(bad_conv, alice.me, kind, b"")
        assert info.value.reason == reason


def test_direct_topic_takes_pairwise_messages_from_its_two_ends_only() -> None:
    alice, bob = node(), node()
    conv = Conversation(b"d" * 16, "direct", bob.me, bob.me, 0, None, False)
    assert alice.validate(conv, bob.me, EnvelopeKind.PAIRWISE, b"") is Check.ACCEPT
    for origin, kind in [(node().me, EnvelopeKind.PAIRWISE), (bob.me, EnvelopeKind.SEALED)]:
        with pytest.raises(InvalidMessage) as info:
            alice.validate(conv, origin, kind, b"")
        assert info.value.reason == "bad_origin"


def test_only_admins_act_and_only_on_members(club) -> None:
    topic, nodes = club
    _, bob, carol = nodes.values()
    with pytest.raises(PermissionDenied) as info:
        bob.remove(topic, carol.me, NOW)
    assert info.value.reason == "not_admin"
    alice = next(iter(nodes.values()))
    with pytest.raises(NotFound):
        alice.remove(topic, node().me, NOW)
    with pytest.raises(NotFound):
        alice.promote(topic, node().me, NOW)


def test_removed_member_whose_add_lost_a_fork_still_learns_of_its_removal() -> None:
    """Two members answered carol's join request at once; her welcome came from the one
    whose add lost the fork, so her log lacks the winning add the removal builds on."""
    alice, bob, carol = node(), node(), node()
    nodes = {n.me: n for n in (alice, bob, carol)}
    topic, _ = alice.create("Club", NOW)
    invite, effects = alice.invite(topic, b"b" * 16, NOW, 3600, ("", (), ()))
    route(effects, nodes, alice)
    route(bob.join(invite, NOW), nodes, bob)
    invite, effects = alice.invite(topic, b"c" * 16, NOW, 3600, ("", (), ()))
    route(effects, nodes, alice)
    request = JoinRequest(topic, b"c" * 16)
    answers = {n.me: n.receive_join_request(carol.me, request, carol.identity.public, NOW)
               for n in (alice, bob)}
    adds = {me: of(effects, PublishOp)[0].op for me, effects in answers.items()}
    loser = max(adds, key=lambda me: adds[me].hash)
    welcome = decode_content(of(answers[loser], OwePairwise)[-1].content, DIRECT_CONTENTS)
    assert carol.receive_welcome(loser, welcome)
    winner = min(adds, key=lambda me: adds[me].hash)
    nodes[loser].receive_op(topic, adds[winner])  # the admins converge on the winner
    assert alice.log_of(topic).chain()[-1] == adds[winner]
    assert carol.log_of(topic).chain()[-1] == adds[loser]
    notice = decode_content(of(alice.remove(topic, carol.me, NOW), OwePairwise)[0].content,
                            DIRECT_CONTENTS)
    carol.receive_op_notice(alice.me, notice)
    assert not carol.is_member(topic, carol.me)
