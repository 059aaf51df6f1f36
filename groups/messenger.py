"""The messenger: what a node does with the messages of its conversations.

It sits between the mesh (which moves opaque messages on topics) and the user's API.
Three entry points come from the mesh runtime: ``validate`` (before anything is stored
or forwarded), ``commit`` (store durably *and* process in one transaction, so a crash
can never leave a message stored but unprocessed), and ``acked`` (a peer committed one
of ours). The API calls the rest. Group membership flows live in groups/membership.py.

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
from typing import Any, Protocol

import msgpack

from groups import conversation_clock, history
from groups.crypto import Crypto
from groups.directory import Directory
from groups.errors import (
    BadContent,
    DecryptError,
    DuplicateMessage,
    GroupsError,
    IdentityChanged,
    NotFound,
    PermissionDenied,
    UnknownKey,
)
from groups.history import ChatRow, Mailbox
from groups.membership import Membership
from groups.messages import (
    DIRECT_CONTENTS,
    GROUP_CONTENTS,
    MAX_TEXT_BYTES,
    Content,
    Envelope,
    EnvelopeKind,
    FileRef,
    JoinRefused,
    JoinRequest,
    OpNotice,
    Receipts,
    SenderKey,
    Text,
    Welcome,
    decode_content,
    direct_topic,
)
from groups.store import atomic
from mesh.errors import InvalidMessage, MeshError, RemoteError
from mesh.gossip_state import Message
from mesh.identity import KeyPair

__all__ = ["AttachmentHooks", "EventSink", "MeshPort", "Messenger"]

log = logging.getLogger(__name__)

OUTBOX_RETRY = (1.0, 60.0)   # backoff bounds for pairwise sends that cannot go out yet
# Receipts are batched by load: after a pass that sent n receipts the next pass waits
# n * RECEIPT_STEP (at most RECEIPT_BATCH), so one message is confirmed at once while a
# burst is confirmed in few, large batches.
RECEIPT_STEP = 0.005
RECEIPT_BATCH = 0.05


class MeshPort(Protocol):
    """What the messenger needs from the mesh runtime."""

    def publish(self, message: Message) -> None:
        """Disseminate one of our messages (already committed to the mailbox)."""

    def set_topic(self, topic: bytes, members: dict[str, list[str]]) -> None:
        """Share ``topic`` with these members (user id -> endpoints)."""

    def leave_topic(self, topic: bytes) -> None: ...

    def resync(self, topic: bytes) -> None:
        """Ask the topic's peers for what we lack (after a key arrived, say)."""


class EventSink(Protocol):
    def publish(self, event_type: str, data: dict[str, Any]) -> None: ...


class AttachmentHooks(Protocol):
    """What the messenger tells groups.attachments (set as ``Messenger.attachments``)."""

    def announced(self, message_id: bytes, topic: bytes, sender: str, file: FileRef) -> None:
        """A Text with ``file`` is being committed (called inside the transaction)."""

    def describe(self, message_id: bytes, file: bytes) -> dict[str, Any]:
        """The API's ``attachment`` of a message whose stored FileRef is ``file``."""


class Messenger:
    def __init__(self, identity: KeyPair, conn: Any, crypto: Crypto, directory: Directory,
                 mesh: MeshPort, events: EventSink, *, clock: Callable[[], float] = time.time,
                 invite_info: Callable[[], tuple[str, tuple[str, ...], tuple[str, ...]]] = (
                     lambda: ("", (), ())),
                 ) -> None:
        self.identity = identity
        self.me = identity.user_id
        self.conn = conn
        self.crypto = crypto
        self.directory = directory
        self.mesh = mesh
        self.events = events
        self.clock = clock
        self.mailbox = Mailbox(conn)
        self.groups = Membership(self, invite_info)
        self._outbox_wakeup = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unpublished: list[Message] = []
        self._after_flush: list[Callable[[], None]] = []
        self._in_transaction = False
        self._refreshed: dict[str, float] = {}
        self.attachments: AttachmentHooks | None = None

    def spawn(self, coro: Any) -> None:
        """Run a background coroutine, kept referenced until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def flush(self) -> None:
        """Hand our newly committed messages to the mesh (only ever after the commit),
        then run what had to wait for them (leaving a topic waits for our last op).
        Inside ``transaction()`` this waits for the transaction's end."""
        if self._in_transaction:
            return
        messages, self._unpublished = self._unpublished, []
        for message in messages:
            self.mesh.publish(message)
        actions, self._after_flush = self._after_flush, []
        for action in actions:
            action()

    def after_flush(self, action: Callable[[], None]) -> None:
        self._after_flush.append(action)

    def _discard_unpublished(self, mark: tuple[int, int] = (0, 0)) -> None:
        """The transaction that made them rolled back: they never happened. ``mark``
        keeps what earlier commits of an open ``transaction()`` made."""
        del self._unpublished[mark[0]:]
        del self._after_flush[mark[1]:]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Several ``commit`` calls in one SQLite transaction: one fsync for a burst of
        received messages (mesh.runtime acks them once it is over). What they make us
        publish goes out after it, as after a single commit; if the transaction fails,
        none of it happened."""
        if self._in_transaction:
            raise RuntimeError("transactions do not nest")
        self._in_transaction = True
        try:
            with atomic(self.conn):
                yield
        except BaseException:
            self._discard_unpublished()
            raise
        finally:
            self._in_transaction = False
        self.flush()

    # -- start-up ----------------------------------------------------------------------

    def load(self) -> None:
        """Re-announce every conversation's topic after a (re)start."""
        for conv in history.conversations(self.conn):
            if conv.left_at is not None:
                continue
            if conv.kind == "group":
                self.groups.load(conv.topic)
            else:
                self.announce_direct(conv.topic, conv.peer or "")
        self._outbox_wakeup.set()

    def announce_direct(self, topic: bytes, peer: str) -> None:
        self.mesh.set_topic(topic, {self.me: [], peer: self.directory.endpoints(peer)})

    def open_direct(self, peer: str, *, visible: bool) -> bytes:
        """The direct topic with ``peer``, created (and announced) if new."""
        topic = direct_topic(self.me, peer)
        known = history.conversation(self.conn, topic)
        if known is None or (visible and not known.visible):
            history.add_conversation(self.conn, topic, "direct", peer, self.clock(), peer,
                                     visible=visible)
        if known is None:
            self.announce_direct(topic, peer)
        return topic

    def peer_connected(self, peer: str) -> None:
        """A peer linked to us: let it talk to us 1:1 (its direct topic is ours too), and
        retry the pairwise messages waiting for it now: the link brought its record, and
        a meeting (over Bluetooth, say) may be short."""
        if peer != self.me:
            self.open_direct(peer, visible=False)
            self._outbox_wakeup.set()

    # -- the mesh's entry points ------------------------------------------------------------

    def validate(self, message: Message) -> None:
        """Cheap checks before a message is stored or forwarded; raise to refuse."""
        if message.seq > history.MAX_SEQ:
            raise InvalidMessage(f"seq beyond {history.MAX_SEQ}", "bad_seq")
        envelope = Envelope.decode(message.payload)
        conv = history.conversation(self.conn, message.topic)
        if conv is None or conv.left_at is not None:
            raise InvalidMessage("not a conversation of ours", "unknown_topic")
        if conv.kind == "direct":
            if envelope.kind is not EnvelopeKind.PAIRWISE or message.origin not in (
                    self.me, conv.peer):
                raise InvalidMessage("direct messages come from the two ends only", "bad_origin")
            return
        self.groups.validate(message, envelope)

    def commit(self, message: Message) -> bool:
        """Store and process a validated message atomically; False = refuse it (nothing
        stored), True = committed (now or before)."""
        mark = len(self._unpublished), len(self._after_flush)
        try:
            with atomic(self.conn):
                if not self.mailbox.add(message, self.clock()):
                    return self.mailbox.has(message.msg_id)
                self._process(message)
        except (RemoteError, GroupsError) as exc:
            self._discard_unpublished(mark)
            log.info("refused message %s from %s: %s", message.msg_id.hex()[:12],
                     message.origin, getattr(exc, "reason", type(exc).__name__))
            return False
        self.flush()
        return True

    def acked(self, topic: bytes, msg_id: bytes, peer: str) -> None:
        """A peer stored one of our messages: members still pending become 'sent'."""
        row = history.chat_message(self.conn, msg_id)
        if row is None or row.sender != self.me:
            return
        now = self.clock()
        changed = False
        with atomic(self.conn):
            for member, status in history.deliveries(self.conn, msg_id).items():
                if status["state"] == "pending":
                    changed |= history.set_delivery(self.conn, msg_id, member, "sent", now)
        if changed:
            self._delivery_event(row)

    # -- processing ----------------------------------------------------------------------

    def _process(self, message: Message) -> None:
        envelope = Envelope.decode(message.payload)
        if message.origin == self.me:
            return  # our own, coming back from a peer's mailbox: nothing to read
        if envelope.kind is EnvelopeKind.OP:
            self.groups.apply_op_message(message, envelope.body)
            return
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
            return
        except IdentityChanged as exc:
            history.note_undecrypted(self.conn, message.msg_id, exc.reason)
            self.events.publish("identity_changed", {"user_id": exc.user_id})
            return
        except DecryptError:
            if envelope.kind is EnvelopeKind.SEALED:
                raise  # a relay swapped the body: refuse it, the real one will come
            history.note_undecrypted(self.conn, message.msg_id, "decrypt_failed")
            return
        try:
            content = decode_content(plaintext, allowed)
        except BadContent:
            history.note_undecrypted(self.conn, message.msg_id, "bad_content")
            return
        self._handle(message, content)

    def _handle(self, message: Message, content: Content) -> None:
        if isinstance(content, Text):
            self._receive_text(message, content)
        elif isinstance(content, Receipts):
            self._receive_receipts(message, content)
        elif isinstance(content, SenderKey):
            self.groups.receive_sender_key(message.origin, content)
        elif isinstance(content, Welcome):
            self.groups.receive_welcome(message.origin, content)
        elif isinstance(content, JoinRequest):
            self.groups.receive_join_request(message.origin, content)
        elif isinstance(content, JoinRefused):
            self.groups.receive_join_refused(message.origin, content)
        elif isinstance(content, OpNotice):
            self.groups.receive_op_notice(message.origin, content)

    def _receive_text(self, message: Message, content: Text) -> None:
        conv = history.conversation(self.conn, message.topic)
        if conv is not None and conv.kind == "direct" and not conv.visible:
            self.open_direct(message.origin, visible=True)
        now = self.clock()
        last = history.order_clock(self.conn, message.topic)
        history.set_order_clock(self.conn, message.topic,
                                conversation_clock.observe(last, content.lamport, now))
        row = ChatRow(message.msg_id, message.topic, message.origin, message.seq,
                      conversation_clock.receive_value(content.lamport, now),
                      content.sent_at, content.text,
                      None if content.file is None else _pack_file(content.file), False)
        if history.insert_chat_message(self.conn, row):
            if content.file is not None and self.attachments is not None:
                self.attachments.announced(message.msg_id, message.topic, message.origin,
                                           content.file)
            history.owe_receipt(self.conn, message.msg_id, message.topic, "delivered")
            self.events.publish("message", self.describe(row))
            self._outbox_wakeup.set()

    def _receive_receipts(self, message: Message, content: Receipts) -> None:
        now = self.clock()
        for state, ids in (("delivered", content.delivered), ("read", content.read)):
            for msg_id in ids:
                row = history.chat_message(self.conn, msg_id)
                if row is None or row.sender != self.me or row.topic != message.topic:
                    continue
                if history.set_delivery(self.conn, msg_id, message.origin, state, now):
                    self._delivery_event(row)

    # -- sending ---------------------------------------------------------------------------

    def publish_own(self, topic: bytes, envelope: Envelope) -> Message:
        """Commit one of our messages to the mailbox (inside the caller's transaction);
        ``flush()`` after the commit hands it to the mesh."""
        seq = history.next_own_seq(self.conn, topic)
        message = Message(topic, self.me, seq, envelope.encode())
        self.mailbox.add(message, self.clock())
        self._unpublished.append(message)
        return message

    def send_text(self, topic: bytes, text: str, file: FileRef | None = None) -> bytes:
        """Send a chat message; returns its id once it is committed."""
        if not isinstance(text, str) or len(text.encode()) > MAX_TEXT_BYTES:
            raise PermissionDenied(f"a message holds at most {MAX_TEXT_BYTES} bytes of text",
                                   "text_too_long")
        if not text.strip() and file is None:
            raise PermissionDenied("a message needs text or a file", "empty_message")
        conv = history.conversation(self.conn, topic)
        if conv is None:
            raise NotFound("no such conversation")
        if conv.left_at is not None:
            raise PermissionDenied("you are no longer in this group", "not_member")
        now = self.clock()
        with atomic(self.conn):
            lamport = conversation_clock.tick(history.order_clock(self.conn, topic), now)
            history.set_order_clock(self.conn, topic, lamport)
            content = Text(lamport, int(now * 1000), text, file)
            if conv.kind == "group":
                recipients = self.groups.recipients(topic)
                envelope = Envelope(EnvelopeKind.SEALED,
                                    self.groups.encrypt(topic, content.encode()))
            else:
                recipients = [conv.peer or ""]
                envelope = Envelope(EnvelopeKind.PAIRWISE,
                                    self.crypto.encrypt(conv.peer or "", content.encode()))
                self.open_direct(conv.peer or "", visible=True)
            message = self.publish_own(topic, envelope)
            row = ChatRow(message.msg_id, topic, self.me, message.seq, lamport, content.sent_at,
                          text, None if file is None else _pack_file(file), True)
            history.insert_chat_message(self.conn, row)
            if file is not None and self.attachments is not None:
                self.attachments.announced(message.msg_id, topic, self.me, file)
            for member in recipients:
                history.set_delivery(self.conn, message.msg_id, member, "pending", now)
        self.flush()
        self.events.publish("message", self.describe(row))
        return message.msg_id

    def mark_read(self, topic: bytes, message_id: bytes) -> int:
        """Our user saw ``message_id`` and everything before it; returns how many were new."""
        target = history.chat_message(self.conn, message_id)
        if target is None or target.topic != topic:
            raise NotFound("no such message in this conversation")
        with atomic(self.conn):
            rows = [r for r in history.chat_messages(self.conn, topic, limit=10_000,
                                                     before_lamport=target.lamport + 1)
                    if r.sender != self.me and not r.seen]
            fresh = history.mark_seen(self.conn, [r.message_id for r in rows])
            for msg_id in fresh:
                history.owe_receipt(self.conn, msg_id, topic, "read")
        self._outbox_wakeup.set()
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
            for start in range(0, max(len(delivered), len(read)), 256):
                d, r = delivered[start:start + 256], read[start:start + 256]
                content = Receipts(tuple(d), tuple(r)).encode()
                try:
                    with atomic(self.conn):
                        if conv.kind == "group":
                            envelope = Envelope(EnvelopeKind.SEALED,
                                                self.groups.encrypt(topic, content))
                        else:
                            envelope = Envelope(EnvelopeKind.PAIRWISE,
                                                self.crypto.encrypt(conv.peer or "", content))
                        self.publish_own(topic, envelope)
                        history.settle_receipts(self.conn, topic, d, r)
                except GroupsError as exc:
                    self._discard_unpublished()
                    log.warning("receipts for %s wait: %s", topic.hex()[:12], exc)
                    break
                self.flush()
                sent += len(d) + len(r)
        return sent

    # -- pairwise outbox -----------------------------------------------------------------

    def queue_pairwise(self, peer: str, kind: str, *, topic: bytes | None = None,
                       content: bytes | None = None) -> None:
        """Durably owe ``peer`` a pairwise message (inside the caller's transaction).

        A sender key ("skey") is captured now, not when it is finally sent: a member
        added now must be able to read what we write from now on, even if the share
        only reaches them hours later (an offline meetup, say)."""
        if kind == "skey" and content is None and topic is not None:
            key = self.crypto.sender_key_distribution(topic, now=self.clock())
            content = SenderKey(topic, key).encode()
        self.conn.execute("INSERT INTO pairwise_outbox (peer, kind, topic, content, created_at) "
                          "VALUES (?, ?, ?, ?, ?)", (peer, kind, topic, content, int(self.clock())))
        self._outbox_wakeup.set()

    async def run_outbox(self, stop: asyncio.Event) -> None:
        """Send owed pairwise messages and receipts until ``stop`` is set.

        Receipts are batched without delaying the first: a pass runs at once after a
        quiet spell, and the busier the last pass, the longer the next one waits."""
        delay = OUTBOX_RETRY[0]
        loop = asyncio.get_running_loop()
        last_pass, window = -RECEIPT_BATCH, 0.0
        while not stop.is_set():
            since = loop.time() - last_pass
            if since < window:
                await asyncio.sleep(window - since)
            self._outbox_wakeup.clear()
            last_pass = loop.time()
            pending = await self._send_outbox()
            window = min(RECEIPT_BATCH, RECEIPT_STEP * self.flush_receipts())
            timeout = delay if pending else None
            delay = min(delay * 2, OUTBOX_RETRY[1]) if pending else OUTBOX_RETRY[0]
            waiters = [asyncio.ensure_future(self._outbox_wakeup.wait()),
                       asyncio.ensure_future(stop.wait())]
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()

    async def _send_outbox(self) -> bool:
        """One pass over the outbox; True if something is still waiting."""
        rows = self.conn.execute("SELECT id, peer, kind, topic, content FROM pairwise_outbox "
                                 "ORDER BY id").fetchall()
        blocked: set[str] = set()
        for row_id, peer, kind, topic, content in rows:
            if peer in blocked:
                continue
            try:
                known = self.directory.record(peer) is not None
                await self.directory.ensure_session(peer, self.clock())
                if not known and self.directory.record(peer) is not None:
                    self._announce_peer(peer)  # now we know where to reach them
                with atomic(self.conn):
                    if kind == "skey" and not self.groups.is_member(topic, peer):
                        content = None  # removed meanwhile: our key is not for them
                    if content is not None:
                        direct = self.open_direct(peer, visible=False)
                        envelope = Envelope(EnvelopeKind.PAIRWISE,
                                            self.crypto.encrypt(peer, content))
                        self.publish_own(direct, envelope)
                    self.conn.execute("DELETE FROM pairwise_outbox WHERE id = ?", (row_id,))
            except MeshError as exc:
                self._discard_unpublished()
                blocked.add(peer)
                self.conn.execute("UPDATE pairwise_outbox SET attempts = attempts + 1, "
                                  "last_error = ? WHERE id = ?", (str(exc)[:200], row_id))
                log.info("pairwise message to %s waits: %s", peer, exc)
                continue
            self.flush()
        return bool(blocked)

    def apply_retention(self, max_age: float) -> int:
        """Stop keeping (and serving) mesh messages older than ``max_age`` seconds."""
        with atomic(self.conn):
            return self.mailbox.retire_older_than(self.clock() - max_age, self.me)

    # -- records of peers we cannot reach ---------------------------------------------

    def peers_of_interest(self) -> set[str]:
        """Everyone we share a conversation with (group members, 1:1 peers)."""
        users: set[str] = set()
        for conv in history.conversations(self.conn):
            if conv.left_at is not None:
                continue
            if conv.kind == "group":
                users |= set(self.groups.log_of(conv.topic).state.members)
            elif conv.peer:
                users.add(conv.peer)
        users.discard(self.me)
        return users

    async def refresh_unreachable(self, linked: set[str], *, every: float = 300.0) -> int:
        """Look up again the records of peers we have no link to (each at most once per
        ``every`` seconds): their endpoints may have changed. Topics that include a peer
        whose record got newer are announced again. Returns how many records changed."""
        now = self.clock()
        changed = 0
        for user in sorted(self.peers_of_interest() - linked):
            if now - self._refreshed.get(user, -every) < every:
                continue
            self._refreshed[user] = now
            before = self.directory.record(user)
            try:
                record = await self.directory.refresh(user, now)
            except MeshError as exc:
                log.info("record of %s not refreshed: %s", user, exc)
                continue
            if before is None or record.seq > before.seq:
                changed += 1
                self._announce_peer(user)
        return changed

    def _announce_peer(self, user: str) -> None:
        for conv in history.conversations(self.conn):
            if conv.left_at is not None:
                continue
            if conv.kind == "group" and self.groups.is_member(conv.topic, user):
                self.groups.announce(conv.topic)
            elif conv.peer == user:
                self.announce_direct(conv.topic, user)

    # -- queries -----------------------------------------------------------------------

    def describe(self, row: ChatRow) -> dict[str, Any]:
        status = {m: s["state"] for m, s in history.deliveries(self.conn, row.message_id).items()}
        reasons = {m: s["reason"] for m, s in history.deliveries(self.conn, row.message_id).items()
                   if s["reason"]}
        out: dict[str, Any] = {
            "message_id": row.message_id.hex(), "conversation": row.topic.hex(),
            "sender": row.sender, "text": row.text,
            "attachment": None if row.file is None or self.attachments is None
            else self.attachments.describe(row.message_id, row.file),
            "sent_at": row.sent_at, "lamport": row.lamport, "seen": row.seen,
            "status": status if row.sender == self.me else {}}
        if reasons:
            out["errors"] = reasons
        return out

    def messages(self, topic: bytes, limit: int = 200) -> list[dict[str, Any]]:
        if history.conversation(self.conn, topic) is None:
            raise NotFound("no such conversation")
        return [self.describe(row) for row in history.chat_messages(self.conn, topic, limit)]

    def _delivery_event(self, row: ChatRow) -> None:
        self.events.publish("delivery", {"message_id": row.message_id.hex(),
                                         "conversation": row.topic.hex(),
                                         "status": self.describe(row)["status"]})


def _pack_file(file: FileRef) -> bytes:
    return msgpack.packb(file.to_msgpack(), use_bin_type=True)
