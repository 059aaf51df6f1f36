"""Group flows on top of the membership log: create, invite, join, remove, leave,
promote, and the sender-key distribution and rotation that membership changes imply.

Rules that make removal mean something: when anyone leaves or is removed, every
remaining member makes a new sender key and sends it, pairwise, to the remaining
members only; the removed member's keys are dropped and the topic stops being shared
with them. Keys also rotate by age and use (groups.prekeys.sender_key_due).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from groups import history
from groups.errors import (
    InviteError,
    NotFound,
    OpRejected,
    PermissionDenied,
    Throttled,
    UnknownKey,
)
from groups.group import GroupLog, GroupState, Op, OpKind, Role
from groups.invites import MAX_MEMBERS, Invite
from groups.messages import (
    Envelope,
    EnvelopeKind,
    JoinRefused,
    JoinRequest,
    OpNotice,
    SenderKey,
    Welcome,
)
from groups.prekeys import sender_key_due
from groups.store import atomic
from mesh.errors import DiscoveryUnavailable, InvalidMessage, MeshError, NotYetValid
from mesh.gossip_state import Message

if TYPE_CHECKING:
    from groups.messenger import Messenger

__all__ = ["INVITE_TTL", "Membership"]

log = logging.getLogger(__name__)

INVITE_TTL = 7 * 24 * 3600.0


class Membership:
    """The groups a node is in: their logs, and what changes to them set in motion.

    ``invite_info()`` returns (bootstrap URL, our endpoints, DHT contacts) for invites.
    """

    def __init__(self, messenger: Messenger,
                 invite_info: Callable[[], tuple[str, tuple[str, ...], tuple[str, ...]]]) -> None:
        self.m = messenger
        self.invite_info = invite_info
        self._logs: dict[bytes, GroupLog] = {}
        self._joins: dict[bytes, asyncio.Future[bytes]] = {}

    # -- state --------------------------------------------------------------------------

    def load(self, topic: bytes) -> None:
        self._logs[topic] = GroupLog.from_ops(history.load_ops(self.m.conn, topic))
        self.announce(topic)

    def log_of(self, group_id: bytes) -> GroupLog:
        group = self._logs.get(group_id)
        if group is None or not self.is_member(group_id, self.m.me):
            raise NotFound("no such group")
        return group

    def is_member(self, group_id: bytes | None, user_id: str) -> bool:
        group = self._logs.get(group_id or b"")
        return group is not None and user_id in group.state.members

    def recipients(self, group_id: bytes) -> list[str]:
        return sorted(u for u in self.log_of(group_id).state.members if u != self.m.me)

    def announce(self, group_id: bytes) -> None:
        """Tell the mesh who shares this topic and where they are; look up members we
        have no record of yet (their endpoints) in the background."""
        members = self._logs[group_id].state.members
        self.m.mesh.set_topic(group_id, {u: self.m.directory.endpoints(u) for u in members})
        unknown = [u for u in members if u != self.m.me and self.m.directory.record(u) is None]
        if unknown:
            self.m.spawn(self._refresh_then_announce(group_id, unknown))

    async def _refresh_then_announce(self, group_id: bytes, users: list[str]) -> None:
        for user in users:
            try:
                await self.m.directory.refresh(user, self.m.clock())
            except MeshError as exc:  # a failed lookup only delays the link
                log.info("no record for member %s yet: %s", user, exc)
        if self.is_member(group_id, self.m.me):
            members = self._logs[group_id].state.members
            self.m.mesh.set_topic(group_id,
                                  {u: self.m.directory.endpoints(u) for u in members})

    def encrypt(self, group_id: bytes, plaintext: bytes) -> bytes:
        """Encrypt with our sender key, rotating it first when it is due by age or use."""
        now = self.m.clock()
        if sender_key_due(self.m.crypto, group_id, now):
            self.m.crypto.rotate_sender_key(group_id, now=now)
            for member in self.recipients(group_id):
                self.m.queue_pairwise(member, "skey", topic=group_id)
        return self.m.crypto.encrypt_group(group_id, plaintext)

    def info(self, group_id: bytes) -> dict[str, Any]:
        state = self.log_of(group_id).state
        return {"group_id": group_id.hex(), "name": state.name, "epoch": state.epoch,
                "members": [{"id": m.user_id, "role": m.role.value,
                             "identity_key": m.identity_key.hex()}
                            for m in sorted(state.members.values(),
                                            key=lambda m: (m.since_epoch, m.user_id))]}

    # -- validation and ops from the mesh -------------------------------------------------

    def validate(self, message: Message, envelope: Envelope) -> None:
        group = self._logs.get(message.topic)
        if group is None:
            raise InvalidMessage("not a group of ours", "unknown_topic")
        if envelope.kind is EnvelopeKind.OP:
            op = Op.decode(envelope.body)
            if op.group_id != message.topic or op.author != message.origin:
                raise InvalidMessage("op does not match its message", "bad_op")
        elif envelope.kind is EnvelopeKind.SEALED:
            if message.origin in group.state.removed:
                raise InvalidMessage(f"{message.origin} is no longer a member", "not_member")
            if message.origin not in group.state.members:
                # Perhaps added by an op that has not reached us yet (anti-entropy
                # sends by origin): ask again once membership changes.
                raise NotYetValid(f"{message.origin} is not a member (yet)", "not_member")
            try:
                self.m.crypto.verify_group_message(message.topic, message.origin,
                                                   envelope.body, now=self.m.clock())
            except UnknownKey:
                # The member's (new) sender key is still on its way to us: ask again
                # after it arrived (receive_sender_key resyncs the topic).
                raise NotYetValid("sender key not here yet", "unknown_key") from None
            except Throttled:
                # Over the member's rate (groups.crypto.MemberBudget): a later offer
                # brings it again, when the member's budget has refilled.
                raise NotYetValid("member over its rate", "throttled") from None
        else:
            raise InvalidMessage("pairwise envelope on a group topic", "bad_envelope")

    def apply_op_message(self, message: Message, body: bytes) -> None:
        self._apply(message.topic, Op.decode(body))

    def _apply(self, group_id: bytes, op: Op) -> None:
        group = self._logs[group_id]
        before = group.state
        changed = group.add(op)  # OpRejected: the commit is refused, nothing stored
        history.add_op(self.m.conn, group_id, op.hash, op.epoch, op.encode())
        if changed:
            self._changed(group_id, before, group.state)

    def _changed(self, group_id: bytes, before: GroupState, after: GroupState) -> None:
        me, now = self.m.me, self.m.clock()
        added = after.members.keys() - before.members.keys()
        removed = before.members.keys() - after.members.keys()
        if me not in after.members:
            history.mark_left(self.m.conn, group_id, now)
            self.m.crypto.forget_sender(group_id)
            # After our own LEAVE (if this is it) went out on the topic.
            self.m.after_flush(lambda: self.m.mesh.leave_topic(group_id))
            self.m.events.publish("group", {"group_id": group_id.hex(), "event": "left",
                                            "epoch": after.epoch})
            return
        for user in sorted(added - {me}):
            self.m.queue_pairwise(user, "skey", topic=group_id)
        if removed:
            self.m.crypto.rotate_sender_key(group_id, now=now)
            for user in sorted(after.members.keys() - {me}):
                self.m.queue_pairwise(user, "skey", topic=group_id)
            for user in removed:
                self.m.crypto.forget_sender(group_id, user)
                self.m.conn.execute(
                    "UPDATE deliveries SET state = 'failed', reason = 'no longer a member' "
                    "WHERE member = ? AND state IN ('pending', 'sent') AND message_id IN "
                    "(SELECT message_id FROM chat_messages WHERE topic = ?)", (user, group_id))
        self.announce(group_id)
        if added:  # their messages refused before this op can be fetched now
            self.m.after_flush(lambda: self.m.mesh.resync(group_id))
        self.m.events.publish("group", {"group_id": group_id.hex(), "event": "members",
                                        "epoch": after.epoch})

    # -- local actions -----------------------------------------------------------------

    def create(self, name: str) -> bytes:
        group, op = GroupLog.create(self.m.identity, name, self.m.clock())
        group_id = group.group_id
        with atomic(self.m.conn):
            history.add_conversation(self.m.conn, group_id, "group", group.state.name,
                                     self.m.clock())
            history.add_op(self.m.conn, group_id, op.hash, op.epoch, op.encode())
            self.m.crypto.sender_key_distribution(group_id, now=self.m.clock())
        self._logs[group_id] = group
        self.announce(group_id)
        return group_id

    def _publish_op(self, group_id: bytes, op: Op, notify: str | None = None) -> None:
        """Commit our op (as a mesh message, and to the log) and send it out."""
        with atomic(self.m.conn):
            self.m.publish_own(group_id, Envelope(EnvelopeKind.OP, op.encode()))
            if notify is not None:
                self.m.queue_pairwise(notify, "op", content=OpNotice(group_id,
                                                                     op.encode()).encode())
            self._apply(group_id, op)
        self.m.flush()

    def invite(self, group_id: bytes, ttl: float = INVITE_TTL) -> Invite:
        group = self.log_of(group_id)
        secret = os.urandom(16)
        expires = int(self.m.clock() + ttl)
        op = group.make_op(self.m.identity, OpKind.INVITE, self.m.clock(),
                           secret=hashlib.sha256(secret).digest(), expires=expires)
        self._publish_op(group_id, op)
        bootstrap, endpoints, dht = self.invite_info()
        others = sorted(group.state.members.values(), key=lambda m: (m.role is not Role.ADMIN,
                                                                     m.since_epoch))
        backups = tuple(m.user_id for m in others if m.user_id != self.m.me)[:MAX_MEMBERS]
        return Invite(group_id, group.state.name, self.m.me, endpoints, bootstrap, secret,
                      expires, dht, backups)

    def remove(self, group_id: bytes, user_id: str) -> None:
        group = self.log_of(group_id)
        if user_id == self.m.me:
            self._publish_op(group_id, group.make_op(self.m.identity, OpKind.LEAVE,
                                                     self.m.clock()))
            return
        if user_id not in group.state.members:
            raise NotFound("no such member")
        op = group.make_op(self.m.identity, OpKind.REMOVE, self.m.clock(), target=user_id)
        self._publish_op(group_id, op, notify=user_id)

    def promote(self, group_id: bytes, user_id: str) -> None:
        group = self.log_of(group_id)
        if user_id not in group.state.members:
            raise NotFound("no such member")
        self._publish_op(group_id, group.make_op(self.m.identity, OpKind.PROMOTE,
                                                 self.m.clock(), target=user_id))

    async def join(self, invite: Invite, wait: float = 20.0) -> tuple[bytes, bool]:
        """Ask the inviter to add us; (group id, joined) — joined is False when no
        answer came within ``wait`` seconds (the request stays queued and may still
        succeed)."""
        if invite.expires < self.m.clock():
            raise InviteError("this invite has expired", "invite_expired")
        if invite.inviter == self.m.me:
            raise InviteError("this is your own invite", "own_invite")
        if self.is_member(invite.group_id, self.m.me):
            return invite.group_id, True
        try:
            await self.m.directory.ensure_session(invite.inviter, self.m.clock())
        except DiscoveryUnavailable as exc:
            # Offline (a Bluetooth meetup, say): the request waits in the outbox until a
            # link to the inviter brings their record.
            log.info("join request to %s queued until we meet: %s", invite.inviter, exc)
        future = asyncio.get_running_loop().create_future()
        self._joins[invite.group_id] = future
        request = JoinRequest(invite.group_id, invite.secret).encode()
        with atomic(self.m.conn):
            # The inviter, and the members the invite names in case the inviter is away:
            # whoever answers first adds us (the log keeps one of concurrent adds).
            for member in (invite.inviter, *invite.members):
                if member != self.m.me:
                    self.m.open_direct(member, visible=False)
                    self.m.queue_pairwise(member, "join", content=request)
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait), True
        except TimeoutError:
            return invite.group_id, False
        finally:
            if self._joins.get(invite.group_id) is future and future.done():
                del self._joins[invite.group_id]

    # -- pairwise contents ---------------------------------------------------------------

    def receive_join_request(self, origin: str, content: JoinRequest) -> None:
        group = self._logs.get(content.group)
        key = self.m.crypto.identity_key_of(origin)
        reason = None
        if group is None or not self.is_member(content.group, self.m.me):
            reason = "unknown_group"
        elif key is None:
            reason = "unknown_identity"
        elif origin in group.state.members:
            reason = None  # already in: just send the welcome again
        else:
            try:
                op = group.make_op(self.m.identity, OpKind.ADD, self.m.clock(), target=origin,
                                   target_key=key, secret=content.secret)
            except PermissionDenied as exc:
                reason = exc.reason
            else:
                self.m.publish_own(content.group, Envelope(EnvelopeKind.OP, op.encode()))
                self._apply(content.group, op)
        if reason is not None:
            self.m.queue_pairwise(origin, "join-no",
                                  content=JoinRefused(content.group, reason).encode())
            return
        ops = tuple(op.encode() for op in self._logs[content.group].chain())
        self.m.queue_pairwise(origin, "welcome", content=Welcome(content.group, ops).encode())

    def receive_welcome(self, origin: str, content: Welcome) -> None:
        if self.is_member(content.group, self.m.me):
            return
        try:
            group = GroupLog.from_ops(content.ops)
        except OpRejected as exc:
            log.info("ignored a welcome from %s: %s", origin, exc)
            return
        state = group.state
        if group.group_id != content.group or self.m.me not in state.members \
                or origin not in state.members:
            log.info("ignored a welcome from %s that does not add us", origin)
            return
        now = self.m.clock()
        history.add_conversation(self.m.conn, content.group, "group", state.name, now)
        for op in group.chain():
            history.add_op(self.m.conn, content.group, op.hash, op.epoch, op.encode())
        # A fresh key on every (re)join: an old one may be known to members removed since.
        self.m.crypto.rotate_sender_key(content.group, now=now)
        self._logs[content.group] = group
        for user in sorted(state.members.keys() - {self.m.me}):
            self.m.queue_pairwise(user, "skey", topic=content.group)
        self.announce(content.group)
        future = self._joins.pop(content.group, None)
        if future is not None and not future.done():
            future.set_result(content.group)
        self.m.events.publish("group", {"group_id": content.group.hex(), "event": "joined",
                                        "epoch": state.epoch})

    def receive_join_refused(self, origin: str, content: JoinRefused) -> None:
        future = self._joins.pop(content.group, None)
        if future is not None and not future.done():
            future.set_exception(InviteError(f"{origin} refused the invite: {content.reason}",
                                             content.reason))
        self.m.events.publish("join_refused", {"group_id": content.group.hex(),
                                               "by": origin, "reason": content.reason})

    def receive_sender_key(self, origin: str, content: SenderKey) -> None:
        """Keep a member's sender key; it may arrive before the op that adds them or
        the welcome that adds us, so it is not tied to what we know of the group yet."""
        self.m.crypto.process_sender_key_distribution(content.group, origin, content.key,
                                                      now=self.m.clock())
        if content.group in self._logs:
            self.m.mesh.resync(content.group)

    def receive_op_notice(self, origin: str, content: OpNotice) -> None:
        if content.group in self._logs:
            op = Op.decode(content.op)
            if op.author == origin:
                self._apply(content.group, op)
