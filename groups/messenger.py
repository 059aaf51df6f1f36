"""The messenger: what a node does with the messages of its conversations.

It sits between the mesh (which moves opaque messages on topics) and the user's API.
Three entry points come from the mesh runtime: ``validate`` (before anything is stored
or forwarded), ``commit`` (store durably *and* process in one transaction, so a crash
can never leave a message stored but unprocessed), and ``acked`` (a peer committed one
of ours). The API calls the rest. The rules live in the sans-IO conversation core
(groups/conversation.py); this module decrypts, feeds the core, and has its effects
carried out (groups/conversation_io.py) in the same transaction. Group actions of our
user are in groups/membership.py; who we share conversations with, and keeping their
records fresh, in groups/peers.py.

Accepted means committed: every send stores the message (and its per-member delivery
states) in SQLite before it returns, and the mesh then carries it until each member's
node has it. Receipts (delivered, read) come back as small encrypted messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from groups import chat_actions, conversation_clock, history, profiles, safety_changes
from groups.conversation import Check, Conversations, pack_file
from groups.conversation_events import (
    ChatRow,
    Conversation,
    ConversationKind,
    DeliveryState,
    Effect,
    PairwiseKind,
)
from groups.conversation_io import AttachmentHooks, ConversationIO, EventSink, MeshPort
from groups.conversation_policy import OutboxBackoff, ReceiptPacer, receipt_batches
from groups.crypto import Crypto
from groups.directory import Directory
from groups.errors import (
    AheadOfChain,
    BadContent,
    DecryptError,
    DuplicateMessage,
    GroupsError,
    IdentityChanged,
    NotFound,
    Throttled,
    UnknownKey,
)
from groups.group import Op
from groups.membership import InviteInfo, Membership
from groups.messages import (
    DIRECT_CONTENTS,
    GROUP_CONTENTS,
    Content,
    Delete,
    Edit,
    Envelope,
    EnvelopeKind,
    FileRef,
    JoinRefused,
    JoinRequest,
    OpNotice,
    Profile,
    Reaction,
    Receipts,
    SenderKey,
    Text,
    Timer,
    Welcome,
    decode_content,
)
from groups.peers import PeerRecords
from groups.store import atomic
from mesh.errors import InvalidMessage, MeshError, NotYetValid, RemoteError
from mesh.gossip_state import Message
from mesh.identity import KeyPair

__all__ = ["AttachmentHooks", "EventSink", "MeshPort", "Messenger"]

log = logging.getLogger(__name__)

# A peer's ack of one of our messages (its node stored it) only moves the message's
# pending members to 'sent' (one tick). It is written with the next transaction of
# received messages (in a burst: the receipts that follow it), or this many seconds
# later, rather than in a commit (and fsync) of its own: a third of what the sender's
# node waited on per message (issue 13). An ack not yet written is an ack that came late.
ACK_WRITE_DELAY = 0.25


class Messenger:
    def __init__(self, identity: KeyPair, conn: Any, crypto: Crypto, directory: Directory,
                 mesh: MeshPort, events: EventSink, *, clock: Callable[[], float] = time.time,
                 invite_info: InviteInfo = lambda: ("", (), ())) -> None:
        self.identity = identity
        self.me = identity.user_id
        self.conn = conn
        self.crypto = crypto
        self.directory = directory
        self.mesh = mesh
        self.events = events
        self.core = Conversations(identity)
        self.io = ConversationIO(self.core, conn, crypto, directory, mesh, events, clock)
        self.mailbox = self.io.mailbox
        self.groups = Membership(self.core, self.io, invite_info)
        self.peers = PeerRecords(self.me, conn, self.core, self.io, directory)
        self._acked: dict[bytes, None] = {}  # our messages a peer stored, not yet written
        self._acked_timer: asyncio.TimerHandle | None = None

    @property
    def clock(self) -> Callable[[], float]:
        """The node's clock (one for the messenger and its adapter; tests set it)."""
        return self.io.clock

    @clock.setter
    def clock(self, clock: Callable[[], float]) -> None:
        self.io.clock = clock

    @property
    def attachments(self) -> AttachmentHooks | None:
        return self.io.attachments

    @attachments.setter
    def attachments(self, hooks: AttachmentHooks | None) -> None:
        self.io.attachments = hooks

    # -- start-up ----------------------------------------------------------------------

    def load(self) -> None:
        """Re-announce every conversation's topic after a (re)start."""
        for conv in history.conversations(self.conn):
            if conv.left_at is not None:
                continue
            if conv.kind == ConversationKind.GROUP:
                self.groups.load(conv.topic)
            else:
                self.announce_direct(conv.topic, conv.peer or "")
        self.io.outbox_wakeup.set()

    def announce_direct(self, topic: bytes, peer: str) -> None:
        self.io.announce_direct(topic, peer)

    def open_direct(self, peer: str, *, visible: bool) -> bytes:
        """The direct topic with ``peer``, created (and announced) if new."""
        return self.io.open_direct(peer, visible=visible)

    def peer_connected(self, peer: str) -> None:
        """A peer linked to us: let it talk to us 1:1 (its direct topic is ours too), and
        retry the pairwise messages waiting for it now: the link brought its record, and
        a meeting (over Bluetooth, say) may be short."""
        if peer != self.me:
            self.open_direct(peer, visible=False)
            self.io.outbox_wakeup.set()

    # -- the mesh's entry points ------------------------------------------------------------

    def validate(self, message: Message) -> None:
        """Cheap checks before a message is stored or forwarded; raise to refuse."""
        if message.seq > history.MAX_SEQ:
            raise InvalidMessage(f"seq beyond {history.MAX_SEQ}", "bad_seq")
        envelope = Envelope.decode(message.payload)
        conv = history.conversation(self.conn, message.topic)
        check = self.core.validate(conv, message.origin, envelope.kind, envelope.body)
        if check is Check.VERIFY_SEALED:
            try:
                self.crypto.verify_group_message(message.topic, message.origin, envelope.body,
                                                 now=self.clock())
            except UnknownKey:
                # The member's (new) sender key is still on its way to us: ask again
                # after it arrived (receiving it resyncs the topic).
                raise NotYetValid("sender key not here yet", "unknown_key") from None
            except Throttled:
                # Over the member's rate (groups.crypto.MemberBudget): a later offer
                # brings it again, when the member's budget has refilled.
                raise NotYetValid("member over its rate", "throttled") from None
            except AheadOfChain:
                # Too far ahead of the member's chain (groups.crypto.MAX_CHAIN_GAP): a
                # later offer brings it again, after the messages in between.
                raise NotYetValid("ahead of the member's chain", "ahead_of_chain") from None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Several ``commit`` calls in one SQLite transaction (mesh.runtime's batched
        commit hook): one fsync per burst; our publishes go out after it. The acks
        waiting to be written (``acked``) go in it too."""
        with self.io.transaction():
            self.write_acked()
            yield

    def commit(self, message: Message) -> bool:
        """Store and process a validated message atomically; False = refuse it (nothing
        stored), True = committed (now or before)."""
        mark = self.io.mark()
        try:
            with atomic(self.conn):
                if not self.mailbox.add(message, self.clock()):
                    return self.mailbox.has(message.msg_id)
                self.io.apply(self._process(message))
        except (RemoteError, GroupsError) as exc:
            self.io.discard_unpublished(mark)
            log.info("refused message %s from %s: %s", message.msg_id.hex()[:12],
                     message.origin, getattr(exc, "reason", type(exc).__name__))
            return False
        self.io.flush()
        return True

    def acked(self, topic: bytes, msg_id: bytes, peer: str) -> None:
        """A peer stored one of our messages: members still pending become 'sent',
        written with the next transaction or after ACK_WRITE_DELAY (write_acked)."""
        self._acked[msg_id] = None
        if self._acked_timer is None:
            self._acked_timer = asyncio.get_running_loop().call_later(ACK_WRITE_DELAY,
                                                                      self.write_acked)

    def write_acked(self) -> None:
        """Write the acks ``acked`` queued (inside the caller's transaction, if any);
        the node calls it once more before it closes its database."""
        if self._acked_timer is not None:
            self._acked_timer.cancel()
            self._acked_timer = None
        msg_ids, self._acked = list(self._acked), {}
        if not msg_ids:
            return
        with atomic(self.conn):
            for msg_id in msg_ids:
                row = history.chat_message(self.conn, msg_id)
                if row is None or row.sender != self.me:
                    continue
                states = {member: DeliveryState(s["state"])
                          for member, s in history.deliveries(self.conn, msg_id).items()}
                self.io.apply(self.core.hop_acked(msg_id, states))
        self.io.flush()  # inside a transaction: at its end

    # -- processing ----------------------------------------------------------------------

    def _process(self, message: Message) -> list[Effect]:
        envelope = Envelope.decode(message.payload)
        if message.origin == self.me:
            return []  # our own, coming back from a peer's mailbox: nothing to read
        if envelope.kind is EnvelopeKind.OP:
            return self.core.receive_op(message.topic, Op.decode(envelope.body))
        try:
            if envelope.kind is EnvelopeKind.SEALED:
                plaintext = self.crypto.decrypt_group(message.topic, message.origin,
                                                      envelope.body)
                allowed: tuple[type[Content], ...] = GROUP_CONTENTS
            else:
                plaintext = self.crypto.decrypt(message.origin, envelope.body, now=self.clock())
                allowed = DIRECT_CONTENTS
        except (DuplicateMessage, UnknownKey) as exc:
            # Signed by a member but not for us: sent before we joined, or under a key
            # we do not hold. Kept for others (we are their mailbox), never shown.
            history.note_undecrypted(self.conn, message.msg_id, exc.reason)
            return []
        except IdentityChanged as exc:
            history.note_undecrypted(self.conn, message.msg_id, exc.reason)
            self._identity_changed(exc, tell_again=True)
            return []
        except DecryptError:
            if envelope.kind is EnvelopeKind.SEALED:
                raise  # a relay swapped the body: refuse it, the real one will come
            history.note_undecrypted(self.conn, message.msg_id, "decrypt_failed")
            return []
        try:
            content = decode_content(plaintext, allowed)
        except BadContent:
            history.note_undecrypted(self.conn, message.msg_id, "bad_content")
            return []
        return self._handle(message, content)

    def _identity_changed(self, exc: IdentityChanged, *, tell_again: bool) -> None:
        """A peer showed another identity key than the one we trust: a safety line in
        every conversation we share with them (inside the caller's transaction), and
        the UI told after the commit - also when the key was noted before if
        ``tell_again`` (each message received under it), so the warning stays in view."""
        user_id = exc.user_id
        lines = safety_changes.record(
            self.conn, [conv.topic for conv in self.peers.shared_with(user_id)],
            user_id, exc.identity_key, self.clock())
        if lines or tell_again:
            self.io.after_commit(lambda: self.events.publish(
                "identity_changed",
                {"user_id": user_id, "changes": [line.to_json() for line in lines]}))

    def _handle(self, message: Message, content: Content) -> list[Effect]:
        core, origin, now = self.core, message.origin, self.clock()
        if isinstance(content, Text):
            conv = history.conversation(self.conn, message.topic)
            if conv is None:
                return []
            return core.receive_text(conv, origin, message.msg_id, message.seq, content,
                                     history.order_clock(self.conn, message.topic), now)
        if isinstance(content, Reaction | Edit | Delete | Timer):
            conv = history.conversation(self.conn, message.topic)
            if conv is None:
                return []
            if isinstance(content, Timer):
                return chat_actions.receive_timer(
                    conv, origin, content, history.timer_order(self.conn, conv.topic),
                    history.order_clock(self.conn, conv.topic), now)
            return chat_actions.receive_action(conv, origin, message.seq,
                                               history.chat_message(self.conn, content.target),
                                               content)
        if isinstance(content, Receipts):
            ours = history.own_messages(self.conn, message.topic, self.me,
                                        content.delivered + content.read)
            return core.receive_receipts(message.topic, origin, content, ours)
        if isinstance(content, SenderKey):
            return core.receive_sender_key(origin, content)
        if isinstance(content, Welcome):
            return core.receive_welcome(origin, content,
                                        history.load_ops(self.conn, content.group))
        if isinstance(content, JoinRequest):
            return core.receive_join_request(origin, content,
                                             self.crypto.identity_key_of(origin), now)
        if isinstance(content, JoinRefused):
            return core.receive_join_refused(origin, content)
        if isinstance(content, OpNotice):
            return core.receive_op_notice(origin, content)
        if isinstance(content, Profile):
            self._receive_profile(message, content)
        return []

    # -- profiles (groups/profiles.py) -------------------------------------------------------

    def _receive_profile(self, message: Message, content: Profile) -> None:
        """Keep the profile of anyone whose 1:1 topic is ours, hidden ones too: a peer
        who adds us sends it before their first message, which is when we would want to
        show their name (ours goes only to people we chat with: share_profile). One that
        breaks the rules of groups/profiles.py stores nothing."""
        if message.origin not in self.peers.of_interest():
            return
        try:
            changed = profiles.receive_profile(self.conn, message.origin, content,
                                               int(self.clock() * 1000))
        except BadContent:
            history.note_undecrypted(self.conn, message.msg_id, "bad_content")
            return
        if changed:  # told once committed, like every UI event (ConversationIO)
            self.io.after_commit(
                lambda who=message.origin: self.events.publish("profile", {"user_id": who}))

    def share_profile(self) -> int:
        """Owe our current profile to everyone we chat with who has not been sent it
        (a new member, a new contact, everyone after a change); run before every outbox
        pass. Returns how many were owed it now."""
        mine = profiles.own_content(self.conn, self.me)
        if mine is None:
            return 0
        due = profiles.unshared(self.conn, self.me, self.peers.of_interest(hidden=False))
        with atomic(self.conn):
            for peer in due:
                self.io.queue_pairwise(peer, PairwiseKind.PROFILE, content=mine.encode())
                profiles.mark_shared(self.conn, peer, mine.version)
        return len(due)

    # -- sending ---------------------------------------------------------------------------

    def send_text(self, topic: bytes, text: str, file: FileRef | None = None,
                  reply_to: bytes = b"") -> bytes:
        """Send a chat message (a reply to ``reply_to``, a message of this conversation,
        if given); returns its id once it is committed."""
        conv = history.conversation(self.conn, topic)
        now = self.clock()
        with atomic(self.conn):
            out = self.core.send_text(conv, text, file,
                                      history.order_clock(self.conn, topic) if conv else 0, now,
                                      reply_to, history.chat_message(self.conn, reply_to)
                                      if reply_to else None)
            self.io.apply(out.effects)
            content = out.content
            message = self._publish(self.core.sendable(conv), content.encode())
            row = ChatRow(message.msg_id, topic, self.me, message.seq, content.lamport,
                          content.sent_at, text, None if file is None else pack_file(file),
                          True, reply_to or None,
                          expires_at=chat_actions.expires_at(content.sent_at, content.expires,
                                                             now))
            history.insert_chat_message(self.conn, row)
            if file is not None and self.attachments is not None:
                self.attachments.announced(message.msg_id, topic, self.me, file)
            for member in out.recipients:
                history.set_delivery(self.conn, message.msg_id, member,
                                     DeliveryState.PENDING.value, now)
        self.io.flush()
        self.events.publish("message", self.describe(row))
        return message.msg_id

    def _publish(self, conv: Conversation, plaintext: bytes) -> Message:
        """Encrypt a content for the conversation and commit it as our mesh message
        (inside the caller's transaction)."""
        if conv.kind == ConversationKind.GROUP:
            envelope = Envelope(EnvelopeKind.SEALED, self.io.seal_group(conv.topic, plaintext))
        else:
            envelope = Envelope(EnvelopeKind.PAIRWISE,
                                self.crypto.encrypt(conv.peer or "", plaintext))
        return self.io.publish_own(conv.topic, envelope)

    def react(self, topic: bytes, message_id: bytes, emoji: str) -> None:
        """Our user's reaction to a message ("" takes it back)."""
        self._act(topic, Reaction(message_id, emoji))

    def edit(self, topic: bytes, message_id: bytes, text: str) -> None:
        self._act(topic, Edit(message_id, int(self.clock() * 1000), text))

    def delete(self, topic: bytes, message_id: bytes) -> None:
        """Delete one of our messages for everyone."""
        self._act(topic, Delete(message_id, int(self.clock() * 1000)))

    def _act(self, topic: bytes, action: Reaction | Edit | Delete) -> None:
        """Refused (typed error, nothing sent or stored) by the rule every member applies
        on receipt (groups/chat_actions.py); else sent, and applied here the same way."""
        with atomic(self.conn):
            conv = self.core.sendable(history.conversation(self.conn, topic))
            target = history.chat_message(self.conn, action.target)
            chat_actions.raise_problem(chat_actions.problem(conv, self.me, target, action))
            message = self._publish(conv, action.encode())
            self.io.apply(chat_actions.receive_action(conv, self.me, message.seq, target,
                                                      action))
        self.io.flush()

    def set_timer(self, topic: bytes, seconds: int) -> None:
        """Set the conversation's disappearing-messages timer for every member."""
        if type(seconds) is not int or not chat_actions.check_timer(seconds):
            chat_actions.raise_problem("bad_timer")
        now = self.clock()
        with atomic(self.conn):
            conv = self.core.sendable(history.conversation(self.conn, topic))
            clock = history.order_clock(self.conn, topic)
            content = Timer(conversation_clock.tick(clock, now), int(now * 1000), seconds)
            self._publish(conv, content.encode())
            self.io.apply(chat_actions.receive_timer(
                conv, self.me, content, history.timer_order(self.conn, topic), clock, now))
        self.io.flush()

    def sweep_expired(self) -> int:
        """Remove the disappearing messages whose time is up (attachments too); returns
        how many went. The node calls it periodically."""
        with atomic(self.conn):
            effects = chat_actions.expired(history.soonest_expiring(self.conn), self.clock())
            self.io.apply(effects)
        self.io.flush()
        return len(effects)

    def set_muted(self, topic: bytes, muted: bool) -> None:
        """Mute a conversation on this node (no notifications; nothing is sent)."""
        if history.conversation(self.conn, topic) is None:
            raise NotFound("no such conversation")
        with atomic(self.conn):
            history.set_muted(self.conn, topic, muted)

    def mark_read(self, topic: bytes, message_id: bytes) -> int:
        """Our user saw ``message_id`` and everything before it; returns how many were new."""
        target = history.chat_message(self.conn, message_id)
        if target is None or target.topic != topic:
            raise NotFound("no such message in this conversation")
        with atomic(self.conn):
            fresh = history.mark_seen(self.conn, history.unseen_up_to(
                self.conn, topic, self.me, (target.lamport, target.sender, target.seq)))
            for msg_id in fresh:
                history.owe_receipt(self.conn, msg_id, topic, "read")
        self.io.outbox_wakeup.set()
        return len(fresh)

    def flush_receipts(self) -> int:
        """Publish the receipts we owe, one batch per conversation; returns how many
        message ids they confirmed."""
        sent = 0
        for topic, (delivered, read) in history.due_receipts(self.conn).items():
            conv = history.conversation(self.conn, topic)
            if conv is None or conv.left_at is not None:
                with atomic(self.conn):
                    history.settle_receipts(self.conn, topic, delivered, read)
                continue
            for receipts in receipt_batches(delivered, read):
                content = receipts.encode()
                try:
                    with atomic(self.conn):
                        if conv.kind == ConversationKind.GROUP:
                            envelope = Envelope(EnvelopeKind.SEALED,
                                                self.io.seal_group(topic, content))
                        else:
                            envelope = Envelope(EnvelopeKind.PAIRWISE,
                                                self.crypto.encrypt(conv.peer or "", content))
                        self.io.publish_own(topic, envelope)
                        history.settle_receipts(self.conn, topic, receipts.delivered,
                                                receipts.read)
                except GroupsError as exc:
                    self.io.discard_unpublished()
                    log.warning("receipts for %s wait: %s", topic.hex()[:12], exc)
                    break
                self.io.flush()
                sent += len(receipts.delivered) + len(receipts.read)
        return sent

    # -- pairwise outbox -----------------------------------------------------------------

    async def run_outbox(self, stop: asyncio.Event) -> None:
        """Send owed pairwise messages and receipts until ``stop`` is set.

        Receipts are batched without delaying the first (conversation_policy.ReceiptPacer);
        sends that cannot go out yet are retried with a backoff (OutboxBackoff)."""
        loop = asyncio.get_running_loop()
        pacer, backoff = ReceiptPacer(), OutboxBackoff()
        wakeup = self.io.outbox_wakeup
        while not stop.is_set():
            wait = pacer.wait(loop.time())
            if wait > 0:
                await asyncio.sleep(wait)
            self.share_profile()
            wakeup.clear()
            pacer.started(loop.time())
            pending = await self._send_outbox()
            pacer.finished(self.flush_receipts())
            waiters = [asyncio.ensure_future(wakeup.wait()), asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=backoff.after_pass(pending),
                               return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    async def _send_outbox(self) -> bool:
        """One pass over the outbox; True if something is still waiting."""
        blocked: set[str] = set()
        for row_id, peer, kind, topic, content in history.owed_pairwise(self.conn):
            if peer in blocked:
                continue
            try:
                known = self.directory.record(peer) is not None
                await self.directory.ensure_session(peer, self.clock())
                if not known and self.directory.record(peer) is not None:
                    self.peers.announce(peer)  # now we know where to reach them
                with atomic(self.conn):
                    if content is not None and self.core.pairwise_due(
                            PairwiseKind(kind), topic, peer):
                        direct = self.open_direct(peer, visible=False)
                        envelope = Envelope(EnvelopeKind.PAIRWISE,
                                            self.crypto.encrypt(peer, content))
                        self.io.publish_own(direct, envelope)
                    history.settle_pairwise(self.conn, row_id)
            except MeshError as exc:
                self.io.discard_unpublished()
                if isinstance(exc, IdentityChanged):  # the bundle of a new session
                    with atomic(self.conn):
                        self._identity_changed(exc, tell_again=False)
                    self.io.flush()
                blocked.add(peer)
                history.pairwise_waits(self.conn, row_id, str(exc))
                log.info("pairwise message to %s waits: %s", peer, exc)
                continue
            self.io.flush()
        return bool(blocked)

    def apply_retention(self, max_age: float) -> int:
        """Stop keeping (and serving) mesh messages older than ``max_age`` seconds."""
        with atomic(self.conn):
            return self.mailbox.retire_older_than(self.clock() - max_age, self.me)

    # -- queries -----------------------------------------------------------------------

    def describe(self, row: ChatRow) -> dict[str, Any]:
        return self.io.describe(row)

    def messages(self, topic: bytes, limit: int = 200) -> list[dict[str, Any]]:
        """The newest ``limit`` messages, in display order."""
        return self.page(topic, limit)[0]

    def page(self, topic: bytes, limit: int = 200,
             before: history.Position | None = None) -> tuple[list[dict[str, Any]],
                                                              str | None]:
        """A page of ``limit`` messages before ``before`` (None: the newest), and the
        cursor of the page before it (None: this page reaches the first message)."""
        if history.conversation(self.conn, topic) is None:
            raise NotFound("no such conversation")
        rows = history.chat_messages(self.conn, topic, limit + 1, before)
        more = len(rows) > limit
        rows = rows[1:] if more else rows
        return ([self.describe(row) for row in rows],
                history.cursor_of(rows[0]) if more else None)

