"""The conversation core's adapter: SQLite, crypto, the mesh and the UI.

``ConversationIO`` carries out the effects groups/conversation.py decides, in order,
inside the caller's transaction (groups.store.atomic), and holds what only exists on
the running node: our messages committed but not yet handed to the mesh and what must
wait for the commit too (UI events, leaving a topic, answers to waiting joins), all
carried out by ``flush()`` after it and dropped by a rollback; background lookups; the
futures of joins in progress. It decides nothing itself.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from groups import chat_actions, history
from groups.conversation import Conversations
from groups.conversation_events import (
    AcceptSenderKey,
    Announce,
    Changed,
    ChatRow,
    DeleteText,
    EditText,
    Effect,
    FailDeliveries,
    ForgetSenderKeys,
    HoldAction,
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
    RemoveMessage,
    Resync,
    RevealDirect,
    RotateSenderKey,
    SetClock,
    SetDelivery,
    SetReaction,
    SetTimer,
    StartGroup,
    StoreOp,
    StoreText,
)
from groups.crypto import Crypto
from groups.directory import Directory
from groups.errors import InviteError
from groups.history import Mailbox
from groups.messages import Envelope, EnvelopeKind, FileRef, SenderKey, direct_topic
from groups.prekeys import sender_key_due
from groups.store import atomic
from mesh.errors import MeshError
from mesh.gossip_state import Message

__all__ = ["AttachmentHooks", "ConversationIO", "EventSink", "MeshPort"]

log = logging.getLogger(__name__)


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

    def forget(self, message_id: bytes, file: bytes) -> bytes | None:
        """The message was deleted or disappeared (inside the transaction): the file
        id whose chunks ``drop`` deletes after the commit, if any."""

    def drop(self, file_id: bytes) -> None:
        """After the commit: stop fetching the file and delete its chunks on disk."""


class ConversationIO:
    def __init__(self, core: Conversations, conn: sqlite3.Connection, crypto: Crypto,
                 directory: Directory, mesh: MeshPort, events: EventSink,
                 clock: Callable[[], float]) -> None:
        self.core = core
        self.me = core.me
        self.conn = conn
        self.crypto = crypto
        self.directory = directory
        self.mesh = mesh
        self.events = events
        self.clock = clock
        self.mailbox = Mailbox(conn)
        self.held = chat_actions.HeldActions()
        self.attachments: AttachmentHooks | None = None
        self.outbox_wakeup = asyncio.Event()
        self.joins: dict[bytes, asyncio.Future[bytes]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._unpublished: list[Message] = []
        self._after_flush: list[Callable[[], None]] = []
        self._in_transaction = False

    # -- after the commit -----------------------------------------------------------------

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

    def after_commit(self, action: Callable[[], None]) -> None:
        """Run ``action`` at the next ``flush()``: UI events and answers to waiting joins
        tell of what was committed, so they wait for the commit (and vanish with a
        rollback)."""
        self._after_flush.append(action)

    def mark(self) -> tuple[int, int]:
        """Where a commit inside an open ``transaction()`` starts (see discard)."""
        return len(self._unpublished), len(self._after_flush)

    def discard_unpublished(self, mark: tuple[int, int] = (0, 0)) -> None:
        """The transaction that made them rolled back: they never happened. ``mark``
        keeps what earlier commits of an open ``transaction()`` made."""
        del self._unpublished[mark[0]:]
        del self._after_flush[mark[1]:]

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Several commits in one SQLite transaction: one fsync for a burst of received
        messages (mesh.runtime acks them once it is over). What they make us publish
        goes out after it, as after a single commit; if it fails, none of it happened."""
        if self._in_transaction:
            raise RuntimeError("transactions do not nest")
        self._in_transaction = True
        try:
            with atomic(self.conn):
                yield
        except BaseException:
            self.discard_unpublished()
            raise
        finally:
            self._in_transaction = False
        self.flush()

    def spawn(self, coro: Any) -> None:
        """Run a background coroutine, kept referenced until it ends."""
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- effects --------------------------------------------------------------------------

    def apply(self, effects: Iterable[Effect]) -> None:
        """Carry out the core's decisions, in order (inside the caller's transaction)."""
        conn, now = self.conn, self.clock()
        delivered: dict[bytes, None] = {}   # messages whose delivery states moved
        for effect in effects:
            match effect:
                case StartGroup(topic, name):
                    history.add_conversation(conn, topic, "group", name, now)
                case StoreOp(topic, op):
                    history.add_op(conn, topic, op.hash, op.epoch, op.encode())
                case PublishOp(topic, op):
                    self.publish_own(topic, Envelope(EnvelopeKind.OP, op.encode()))
                case MarkLeft(topic):
                    history.mark_left(conn, topic, now)
                case Announce(topic):
                    self.announce(topic)
                case LeaveTopic(topic):
                    self.after_commit(lambda t=topic: self.mesh.leave_topic(t))
                case Resync(topic):
                    self.after_commit(lambda t=topic: self.mesh.resync(t))
                case MakeSenderKey(topic):
                    self.crypto.sender_key_distribution(topic, now=now)
                case RotateSenderKey(topic):
                    self.crypto.rotate_sender_key(topic, now=now)
                case ForgetSenderKeys(topic, sender):
                    self.crypto.forget_sender(topic, sender)
                case AcceptSenderKey(topic, sender, key):
                    self.crypto.process_sender_key_distribution(topic, sender, key, now=now)
                case OpenDirect(peer):
                    self.open_direct(peer, visible=False)
                case RevealDirect(peer):
                    self.open_direct(peer, visible=True)
                case OwePairwise(peer, kind, topic, content):
                    self.queue_pairwise(peer, kind, topic=topic, content=content)
                case SetClock(topic, value):
                    history.set_order_clock(conn, topic, value)
                case StoreText(row, file):
                    self._store_text(row, file)
                case OweReceipt(message_id, topic, kind):
                    history.owe_receipt(conn, message_id, topic, kind.value)
                    self.outbox_wakeup.set()
                case SetDelivery(message_id, member, state):
                    if history.set_delivery(conn, message_id, member, state.value, now):
                        delivered[message_id] = None
                case FailDeliveries(topic, member, reason):
                    history.fail_deliveries(conn, topic, member, reason)
                case Notify(event, data):
                    self.after_commit(lambda e=event, d=data: self.events.publish(e, d))
                case JoinSettled(topic, refused):
                    self.after_commit(lambda t=topic, r=refused: self._settle_join(t, r))
                case SetReaction(message_id, member, emoji, seq):
                    history.set_reaction(conn, message_id, member, emoji, seq)
                case EditText(message_id, text, edited_at, seq):
                    history.edit_message(conn, message_id, text, edited_at, seq)
                case DeleteText(message_id, seq):
                    self._forget_file(message_id, history.delete_message(conn, message_id, seq))
                case HoldAction() as held:
                    self.held.hold(held.action.target, held, now)
                case RemoveMessage(message_id, topic):
                    self._forget_file(message_id, history.remove_message(conn, message_id))
                    removed = {"message_id": message_id.hex(), "conversation": topic.hex()}
                    self.after_commit(lambda d=removed: self.events.publish("message_removed", d))
                    self._show_again(history.replies_to(conn, topic, message_id))
                case SetTimer(topic, seconds, order, author, sent_at, current):
                    history.add_timer_change(conn, topic, order, author, seconds,
                                             sent_at)
                    if current:
                        history.set_timer(conn, topic, seconds, order)
                case Changed(message_id):
                    changed = history.chat_message(conn, message_id)
                    if changed is not None:   # and the replies that quote it
                        self._show_again([changed, *history.replies_to(conn, changed.topic,
                                                                       message_id)])
        for message_id in delivered:
            row = history.chat_message(conn, message_id)
            if row is not None:  # the states alone: describe() would read reactions too
                status = {m: s["state"] for m, s in history.deliveries(conn, message_id).items()
                          } if row.sender == self.me else {}
                self.after_commit(lambda r=row, s=status: self.events.publish(
                    "delivery", {"message_id": r.message_id.hex(), "conversation": r.topic.hex(),
                                 "status": s}))

    def _store_text(self, row: ChatRow, file: FileRef | None) -> None:
        if history.insert_chat_message(self.conn, row):
            if file is not None and self.attachments is not None:
                self.attachments.announced(row.message_id, row.topic, row.sender, file)
            described = self.describe(row)
            self.after_commit(lambda: self.events.publish("message", described))
            conv = history.conversation(self.conn, row.topic)
            for held in self.held.release(row.message_id, self.clock()):
                if conv is not None:   # the reactions or edits that came before it
                    self.apply(chat_actions.receive_action(conv, held.origin, held.seq, row,
                                                           held.action))

    def _show_again(self, rows: list[ChatRow]) -> None:
        """These messages changed (or the original they quote did): show them anew."""
        for row in rows:
            described = self.describe(row)
            self.after_commit(lambda d=described: self.events.publish("message_changed", d))

    def _forget_file(self, message_id: bytes, file: bytes | None) -> None:
        """A deleted or vanished message's file: its chunks go once the change is
        committed (a rollback keeps them)."""
        if file is None or self.attachments is None:
            return
        file_id = self.attachments.forget(message_id, file)
        if file_id is not None:
            hooks = self.attachments
            self.after_commit(lambda: hooks.drop(file_id))

    def _settle_join(self, topic: bytes, refused: tuple[str, str] | None) -> None:
        future = self.joins.pop(topic, None)
        if future is None or future.done():
            return
        if refused is None:
            future.set_result(topic)
        else:
            who, reason = refused
            future.set_exception(InviteError(f"{who} refused the invite: {reason}", reason))

    # -- our messages -----------------------------------------------------------------------

    def publish_own(self, topic: bytes, envelope: Envelope) -> Message:
        """Commit one of our messages to the mailbox (inside the caller's transaction);
        ``flush()`` after the commit hands it to the mesh."""
        seq = history.next_own_seq(self.conn, topic)
        message = Message(topic, self.me, seq, envelope.encode())
        self.mailbox.add(message, self.clock())
        self._unpublished.append(message)
        return message

    def seal_group(self, topic: bytes, plaintext: bytes) -> bytes:
        """Encrypt with our sender key, rotated first when it is due by age or use."""
        self.apply(self.core.seal(topic, sender_key_due(self.crypto, topic, self.clock())))
        return self.crypto.encrypt_group(topic, plaintext)

    def queue_pairwise(self, peer: str, kind: PairwiseKind, *, topic: bytes | None = None,
                       content: bytes | None = None) -> None:
        """Durably owe ``peer`` a pairwise message (inside the caller's transaction).

        A sender key is captured now, not when it is finally sent: a member added now
        must be able to read what we write from now on, even if the share only reaches
        them hours later (an offline meetup, say)."""
        if kind is PairwiseKind.SENDER_KEY and content is None and topic is not None:
            key = self.crypto.sender_key_distribution(topic, now=self.clock())
            content = SenderKey(topic, key).encode()
        history.owe_pairwise(self.conn, peer, kind.value, topic, content, self.clock())
        self.outbox_wakeup.set()

    # -- topics -------------------------------------------------------------------------------

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

    def announce(self, topic: bytes) -> None:
        """Tell the mesh who shares this group's topic and where they are; look up
        members we have no record of yet (their endpoints) in the background."""
        members = self.core.members(topic)
        self.mesh.set_topic(topic, {u: self.directory.endpoints(u) for u in members})
        unknown = [u for u in members if u != self.me and self.directory.record(u) is None]
        if unknown:
            self.spawn(self._refresh_then_announce(topic, unknown))

    async def _refresh_then_announce(self, topic: bytes, users: list[str]) -> None:
        for user in users:
            try:
                await self.directory.refresh(user, self.clock())
            except MeshError as exc:  # a failed lookup only delays the link
                log.info("no record for member %s yet: %s", user, exc)
        if self.core.is_member(topic, self.me):
            self.mesh.set_topic(topic, {u: self.directory.endpoints(u)
                                        for u in self.core.members(topic)})

    # -- what the UI reads ----------------------------------------------------------------------

    def describe(self, row: ChatRow) -> dict[str, Any]:
        states = history.deliveries(self.conn, row.message_id)
        reasons = {m: s["reason"] for m, s in states.items() if s["reason"]}
        out: dict[str, Any] = {
            "message_id": row.message_id.hex(), "conversation": row.topic.hex(),
            "sender": row.sender, "text": row.text,
            "attachment": None if row.file is None or self.attachments is None
            else self.attachments.describe(row.message_id, row.file),
            "sent_at": row.sent_at, "lamport": row.lamport, "seen": row.seen,
            "status": {m: s["state"] for m, s in states.items()} if row.sender == self.me
            else {},
            "cursor": history.cursor_of(row),
            "reply_to": None if row.reply_to is None else self._quote(row),
            "reactions": history.reactions(self.conn, row.message_id),
            "edited_at": row.edited_at, "deleted": row.deleted,
            "expires_at": row.expires_at}
        if reasons:
            out["errors"] = reasons
        return out

    def _quote(self, row: ChatRow) -> dict[str, Any]:
        """What a reply shows of its original: ``available`` False when this node does
        not have it (sent before we joined, deleted, disappeared)."""
        reply_to = row.reply_to or b""
        original = history.chat_message(self.conn, reply_to)
        if original is None or original.topic != row.topic or original.deleted:
            return {"message_id": reply_to.hex(), "available": False}
        return {"message_id": reply_to.hex(), "available": True, "sender": original.sender,
                "text": original.text[:200],
                "file_name": None if original.file is None else history.file_name(original.file)}
