"""The conversation core (sans-IO): the rules of a node's groups and chats.

``Conversations`` holds the membership logs of our groups and decides, for each input
(a message the mesh committed, an action of our user) and the time ``now``, what
follows: rows to write, keys to make or drop, pairwise messages owed, mesh calls and UI
events, as a list of effects (groups/conversation_events.py). It reads and writes no
database, socket or timer; the adapter (groups/conversation_io.py) loads its state,
feeds it and applies its effects in one transaction, as mesh/runtime.py does for the
gossip engine.

Rules that make removal mean something: when anyone leaves or is removed, every
remaining member makes a new sender key and shares it, pairwise, with the remaining
members only; the removed member's keys are dropped and the topic stops being shared
with them, and the remover sends the removed member the ops that removed it, pairwise,
so that its node learns it and refuses further sends. Keys also rotate by age and use
(groups.prekeys.sender_key_due, decided by the adapter, which holds the keys).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

import msgpack

from groups import chat_actions, conversation_clock
from groups.conversation_events import (
    AcceptSenderKey,
    Announce,
    ChatRow,
    Conversation,
    ConversationKind,
    DeliveryState,
    Effect,
    FailDeliveries,
    ForgetSenderKeys,
    JoinSettled,
    LeaveTopic,
    MakeSenderKey,
    MarkLeft,
    Notify,
    OpenDirect,
    OwePairwise,
    OweReceipt,
    PairwiseKind,
    PublishOp,
    ReceiptKind,
    Resync,
    RevealDirect,
    RotateSenderKey,
    SetClock,
    SetDelivery,
    StartGroup,
    StoreOp,
    StoreText,
)
from groups.errors import InviteError, NotFound, OpRejected, PermissionDenied, Unsendable
from groups.group import GroupLog, GroupState, Op, OpKind, Role
from groups.invites import MAX_MEMBERS, Invite
from groups.messages import (
    MAX_NOTICE_OPS,
    MAX_TEXT_BYTES,
    EnvelopeKind,
    FileRef,
    JoinRefused,
    JoinRequest,
    OpNotice,
    Receipts,
    SenderKey,
    Text,
    Welcome,
)
from mesh.errors import InvalidMessage, NotYetValid
from mesh.identity import KeyPair

__all__ = ["INVITE_TTL", "Check", "Conversations", "OutgoingText", "pack_file"]

log = logging.getLogger(__name__)

INVITE_TTL = 7 * 24 * 3600.0
NOTICE_BYTES = 48 * 1024   # the removal notice stays well inside a mesh message


class Check(Enum):
    """What ``Conversations.validate`` leaves to the adapter."""

    ACCEPT = "accept"
    VERIFY_SEALED = "verify_sealed"   # check the sender-key signature (crypto holds the keys)


@dataclass(frozen=True)
class OutgoingText:
    """A text our user sends: its content and who must receive it."""

    content: Text
    recipients: tuple[str, ...]
    effects: tuple[Effect, ...]


class Conversations:
    """One node's groups (their logs) and the rules of its conversations."""

    def __init__(self, identity: KeyPair) -> None:
        self.identity = identity
        self.me = identity.user_id
        self._logs: dict[bytes, GroupLog] = {}

    # -- state --------------------------------------------------------------------------

    def load(self, topic: bytes, ops: Iterable[bytes]) -> list[Effect]:
        self._logs[topic] = GroupLog.from_ops(ops)
        return [Announce(topic)]

    def log_of(self, topic: bytes) -> GroupLog:
        group = self._logs.get(topic)
        if group is None or self.me not in group.state.members:
            raise NotFound("no such group")
        return group

    def is_member(self, topic: bytes | None, user_id: str) -> bool:
        group = self._logs.get(topic or b"")
        return group is not None and user_id in group.state.members

    def members(self, topic: bytes) -> list[str]:
        """Everyone the topic is shared with (empty once we are out)."""
        group = self._logs.get(topic)
        return sorted(group.state.members) if group is not None else []

    def recipients(self, topic: bytes) -> list[str]:
        return sorted(u for u in self.log_of(topic).state.members if u != self.me)

    # -- what the mesh hands us ----------------------------------------------------------

    def validate(self, conv: Conversation | None, origin: str, kind: EnvelopeKind,
                 body: bytes) -> Check:
        """Cheap checks before a message is stored or forwarded; raise to refuse."""
        if conv is None or conv.left_at is not None:
            raise InvalidMessage("not a conversation of ours", "unknown_topic")
        if conv.kind == ConversationKind.DIRECT:
            if kind is not EnvelopeKind.PAIRWISE or origin not in (self.me, conv.peer):
                raise InvalidMessage("direct messages come from the two ends only", "bad_origin")
            return Check.ACCEPT
        group = self._logs.get(conv.topic)
        if group is None:
            raise InvalidMessage("not a group of ours", "unknown_topic")
        if kind is EnvelopeKind.OP:
            op = Op.decode(body)
            if op.group_id != conv.topic or op.author != origin:
                raise InvalidMessage("op does not match its message", "bad_op")
            return Check.ACCEPT
        if kind is not EnvelopeKind.SEALED:
            raise InvalidMessage("pairwise envelope on a group topic", "bad_envelope")
        if origin in group.state.removed:
            raise InvalidMessage(f"{origin} is no longer a member", "not_member")
        if origin not in group.state.members:
            # Perhaps added by an op that has not reached us yet (anti-entropy sends by
            # origin): ask again once membership changes.
            raise NotYetValid(f"{origin} is not a member (yet)", "not_member")
        return Check.VERIFY_SEALED

    def receive_op(self, topic: bytes, op: Op) -> list[Effect]:
        """An op from the topic or a notice; OpRejected: refuse it, nothing stored."""
        group = self._logs[topic]
        before = group.state
        changed = group.add(op)
        effects: list[Effect] = [StoreOp(topic, op)]
        if changed:
            effects += self._changed(topic, before, group.state)
        return effects

    def _changed(self, topic: bytes, before: GroupState, after: GroupState) -> list[Effect]:
        me = self.me
        if me not in after.members:
            return [MarkLeft(topic), ForgetSenderKeys(topic), LeaveTopic(topic),
                    Notify("group", {"group_id": topic.hex(), "event": "left",
                                     "epoch": after.epoch})]
        added = after.members.keys() - before.members.keys()
        removed = before.members.keys() - after.members.keys()
        effects: list[Effect] = [OwePairwise(user, PairwiseKind.SENDER_KEY, topic)
                                 for user in sorted(added - {me})]
        if removed:
            effects.append(RotateSenderKey(topic))
            effects += [OwePairwise(user, PairwiseKind.SENDER_KEY, topic)
                        for user in sorted(after.members.keys() - {me})]
            for user in sorted(removed):
                effects += [ForgetSenderKeys(topic, user),
                            FailDeliveries(topic, user, "no longer a member")]
        effects.append(Announce(topic))
        if added:  # their messages refused before this op can be fetched now
            effects.append(Resync(topic))
        effects.append(Notify("group", {"group_id": topic.hex(), "event": "members",
                                        "epoch": after.epoch}))
        return effects

    def receive_text(self, conv: Conversation, origin: str, message_id: bytes, seq: int,
                     content: Text, clock: int, now: float) -> list[Effect]:
        """A text: store it at its bounded ordering value, owe a delivered receipt."""
        effects: list[Effect] = []
        if conv.kind == ConversationKind.DIRECT and not conv.visible:
            effects.append(RevealDirect(origin))
        file = content.file
        expires = chat_actions.expires_at(content.sent_at, content.expires, now)
        row = ChatRow(message_id, conv.topic, origin, seq,
                      conversation_clock.receive_value(content.lamport, now), content.sent_at,
                      content.text, None if file is None else pack_file(file), False,
                      content.reply_to or None, expires_at=expires)
        clock_effect = SetClock(conv.topic, conversation_clock.observe(clock, content.lamport,
                                                                       now))
        receipt = OweReceipt(message_id, conv.topic, ReceiptKind.DELIVERED)
        if expires is not None and expires <= int(now * 1000):
            return [*effects, clock_effect, receipt]   # arrived after its time: never shown
        return [*effects, clock_effect, StoreText(row, file), receipt]

    def receive_receipts(self, topic: bytes, origin: str, content: Receipts,
                         ours: frozenset[bytes]) -> list[Effect]:
        """``ours``: which of the ids are messages we sent in ``topic`` (others are
        ignored: a member confirms only what was sent to it)."""
        return [SetDelivery(message_id, origin, DeliveryState(kind))
                for kind, ids in ((ReceiptKind.DELIVERED, content.delivered),
                                  (ReceiptKind.READ, content.read))
                for message_id in ids if message_id in ours]

    @staticmethod
    def hop_acked(message_id: bytes, states: dict[str, DeliveryState]) -> list[Effect]:
        """A peer stored one of our messages: every member still pending is 'sent'."""
        return [SetDelivery(message_id, member, DeliveryState.SENT)
                for member, state in states.items() if state is DeliveryState.PENDING]

    def receive_sender_key(self, origin: str, content: SenderKey) -> list[Effect]:
        """Keep a member's sender key; it may arrive before the op that adds them or
        the welcome that adds us, so it is not tied to what we know of the group yet."""
        effects: list[Effect] = [AcceptSenderKey(content.group, origin, content.key)]
        if content.group in self._logs:
            effects.append(Resync(content.group))
        return effects

    def receive_op_notice(self, origin: str, content: OpNotice) -> list[Effect]:
        """Ops sent pairwise by a member (to a member it removed): applied in order;
        one the log refuses is skipped, the others still count."""
        group = self._logs.get(content.group)
        if group is None or origin not in group.state.members:
            return []
        effects: list[Effect] = []
        for encoded in content.ops:
            try:
                effects += self.receive_op(content.group, Op.decode(encoded))
            except OpRejected as exc:
                log.info("skipped an op of a notice from %s: %s", origin, exc)
        return effects

    def receive_join_request(self, origin: str, content: JoinRequest, origin_key: bytes | None,
                             now: float) -> list[Effect]:
        group = self._logs.get(content.group)
        reason = None
        effects: list[Effect] = []
        if group is None or not self.is_member(content.group, self.me):
            reason = "unknown_group"
        elif origin_key is None:
            reason = "unknown_identity"
        elif origin not in group.state.members:  # (a member gets the welcome again)
            try:
                op = group.make_op(self.identity, OpKind.ADD, now, target=origin,
                                   target_key=origin_key, secret=content.secret)
            except PermissionDenied as exc:
                reason = exc.reason
            else:
                effects = [PublishOp(content.group, op), *self.receive_op(content.group, op)]
        if reason is not None:
            return [OwePairwise(origin, PairwiseKind.JOIN_REFUSED,
                                content=JoinRefused(content.group, reason).encode())]
        ops = tuple(op.encode() for op in self._logs[content.group].chain())
        welcome = Welcome(content.group, ops).encode()
        return [*effects, OwePairwise(origin, PairwiseKind.WELCOME, content=welcome)]

    def receive_welcome(self, origin: str, content: Welcome,
                        known: Iterable[bytes] = ()) -> list[Effect]:
        """``known``: the ops of this group we hold (stored; kept after we left or were
        removed). A welcome can be older than they are: every member an invite names
        answers the join request, and a late answer may come after a removal. Merged
        with what we know, such a welcome no longer adds us and is ignored, where taken
        alone it put a removed member back into the group on its own node."""
        if self.is_member(content.group, self.me):
            return []
        try:
            group = GroupLog.from_ops(content.ops)
        except OpRejected as exc:
            log.info("ignored a welcome from %s: %s", origin, exc)
            return []
        if group.group_id != content.group:
            log.info("ignored a welcome from %s for another group", origin)
            return []
        held = self._logs.get(content.group)
        for op in (*(Op.decode(encoded) for encoded in known), *(held.chain() if held else ())):
            try:
                group.add(op)
            except OpRejected as exc:  # ours, refused by the merged log (full, say)
                log.info("an op we hold does not fit a welcome from %s: %s", origin, exc)
        state = group.state
        if self.me not in state.members or origin not in state.members:
            log.info("ignored a welcome from %s that does not add us", origin)
            return []
        self._logs[content.group] = group
        # A fresh key on every (re)join: an old one may be known to members removed since.
        return [StartGroup(content.group, state.name),
                *(StoreOp(content.group, op) for op in group.chain()),
                RotateSenderKey(content.group),
                *(OwePairwise(user, PairwiseKind.SENDER_KEY, content.group)
                  for user in sorted(state.members.keys() - {self.me})),
                Announce(content.group),
                JoinSettled(content.group),
                Notify("group", {"group_id": content.group.hex(), "event": "joined",
                                 "epoch": state.epoch})]

    def receive_join_refused(self, origin: str, content: JoinRefused) -> list[Effect]:
        return [JoinSettled(content.group, (origin, content.reason)),
                Notify("join_refused", {"group_id": content.group.hex(), "by": origin,
                                        "reason": content.reason})]

    # -- what our user does ----------------------------------------------------------------

    def create(self, name: str, now: float) -> tuple[bytes, list[Effect]]:
        group, op = GroupLog.create(self.identity, name, now)
        topic = group.group_id
        self._logs[topic] = group
        return topic, [StartGroup(topic, group.state.name), StoreOp(topic, op),
                       MakeSenderKey(topic), Announce(topic)]

    def publish_op(self, topic: bytes, op: Op,
                   notify: OwePairwise | None = None) -> list[Effect]:
        """Our own op: published on the topic, sent pairwise to ``notify``'s peer too,
        and applied to our log."""
        return [PublishOp(topic, op), *([notify] if notify else []),
                *self.receive_op(topic, op)]

    def invite(self, topic: bytes, secret: bytes, now: float, ttl: float,
               info: tuple[str, tuple[str, ...], tuple[str, ...]]) -> tuple[Invite, list[Effect]]:
        """``info``: (bootstrap URL, our endpoints, DHT contacts) to put in the invite."""
        group = self.log_of(topic)
        expires = int(now + ttl)
        op = group.make_op(self.identity, OpKind.INVITE, now,
                           secret=hashlib.sha256(secret).digest(), expires=expires)
        effects = self.publish_op(topic, op)
        bootstrap, endpoints, dht = info
        others = sorted(group.state.members.values(), key=lambda m: (m.role is not Role.ADMIN,
                                                                     m.since_epoch))
        backups = tuple(m.user_id for m in others if m.user_id != self.me)[:MAX_MEMBERS]
        return Invite(topic, group.state.name, self.me, endpoints, bootstrap, secret,
                      expires, dht, backups), effects

    def remove(self, topic: bytes, user_id: str, now: float) -> list[Effect]:
        """Remove a member (or, for ourselves, leave). The removed member gets the op,
        with the ops before it that it may have missed, pairwise: the topic is no longer
        shared with it, so this is how its node learns. They start at the op that added
        it, as the winning chain has it: the member may hold another one (two members
        answered its join request at once, and the other's add won the fork)."""
        group = self.log_of(topic)
        if user_id == self.me:
            return self.publish_op(topic, group.make_op(self.identity, OpKind.LEAVE, now))
        member = group.state.members.get(user_id)
        if member is None:
            raise NotFound("no such member")
        op = group.make_op(self.identity, OpKind.REMOVE, now, target=user_id)
        tail = [o.encode() for o in group.chain() if o.epoch >= member.since_epoch]
        ops = [op.encode()]
        for encoded in reversed(tail):
            if len(ops) >= MAX_NOTICE_OPS or sum(map(len, ops)) + len(encoded) > NOTICE_BYTES:
                break
            ops.insert(0, encoded)
        notice = OwePairwise(user_id, PairwiseKind.OPS,
                             content=OpNotice(topic, tuple(ops)).encode())
        return self.publish_op(topic, op, notice)

    def promote(self, topic: bytes, user_id: str, now: float) -> list[Effect]:
        group = self.log_of(topic)
        if user_id not in group.state.members:
            raise NotFound("no such member")
        return self.publish_op(topic, group.make_op(self.identity, OpKind.PROMOTE, now,
                                                    target=user_id))

    def join(self, invite: Invite, now: float) -> list[Effect]:
        """Ask the inviter, and the members the invite names in case the inviter is
        away, to add us: whoever answers first does (the log keeps one of concurrent
        adds). Empty when we are in already."""
        if invite.expires < now:
            raise InviteError("this invite has expired", "invite_expired")
        if invite.inviter == self.me:
            raise InviteError("this is your own invite", "own_invite")
        if self.is_member(invite.group_id, self.me):
            return []
        request = JoinRequest(invite.group_id, invite.secret).encode()
        effects: list[Effect] = []
        for member in (invite.inviter, *invite.members):
            if member != self.me:
                effects += [OpenDirect(member),
                            OwePairwise(member, PairwiseKind.JOIN, content=request)]
        return effects

    def send_text(self, conv: Conversation | None, text: str, file: FileRef | None,
                  clock: int, now: float, reply_to: bytes = b"",
                  reply_target: ChatRow | None = None) -> OutgoingText:
        """Check a text our user sends and give it its ordering value (a reply's after
        its target's, as the clock has seen the target) and the conversation's timer.
        A reply names a message of this conversation that is here (``reply_target``)."""
        if not isinstance(text, str) or len(text.encode()) > MAX_TEXT_BYTES:
            raise Unsendable(f"a message holds at most {MAX_TEXT_BYTES} bytes of text",
                             "text_too_long")
        if not text.strip() and file is None:
            raise Unsendable("a message needs text or a file", "empty_message")
        conv = self.sendable(conv)
        if reply_to and (reply_target is None or reply_target.topic != conv.topic
                         or reply_target.deleted):
            raise NotFound("the message you reply to is not in this conversation")
        value = conversation_clock.tick(clock, now)
        content = Text(value, int(now * 1000), text, file, reply_to, conv.timer)
        if conv.kind == ConversationKind.GROUP:
            return OutgoingText(content, tuple(self.recipients(conv.topic)),
                                (SetClock(conv.topic, value),))
        peer = conv.peer or ""
        return OutgoingText(content, (peer,), (SetClock(conv.topic, value), RevealDirect(peer)))

    def sendable(self, conv: Conversation | None) -> Conversation:
        """The conversation, if our user may still send to it (else NotFound or
        PermissionDenied)."""
        if conv is None:
            raise NotFound("no such conversation")
        if conv.left_at is not None or (conv.kind == ConversationKind.GROUP
                                        and not self.is_member(conv.topic, self.me)):
            raise PermissionDenied("you are no longer in this group", "not_member")
        return conv

    def seal(self, topic: bytes, key_due: bool) -> list[Effect]:
        """Before encrypting to the group: a key due by age or use is rotated first
        and the new one shared with every other member."""
        if not key_due:
            return []
        return [RotateSenderKey(topic), *(OwePairwise(u, PairwiseKind.SENDER_KEY, topic)
                                          for u in self.recipients(topic))]

    def pairwise_due(self, kind: PairwiseKind, topic: bytes | None, peer: str) -> bool:
        """Whether an owed pairwise message still goes out: a sender key is not for a
        member removed since it was queued."""
        return kind is not PairwiseKind.SENDER_KEY or self.is_member(topic, peer)


def pack_file(file: FileRef) -> bytes:
    """The stored form of a message's file reference (chat_messages.file)."""
    return msgpack.packb(file.to_msgpack(), use_bin_type=True)
