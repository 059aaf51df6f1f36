"""Attachments: files up to 25 MiB, announced in a message, pulled in encrypted chunks.

The sender encrypts a file into 256 KiB AES-256-GCM chunks under a fresh key
(groups.filestore), and a Text message carries a FileRef: file id, key, size, MIME
type, name and the SHA-256 of every encrypted chunk, inside the sender-key (or
pairwise) encryption. Nothing of the file rides the gossip. Each receiver pulls the
chunks from linked members of the conversation that hold them, with ChunkRequest /
Chunk / ChunkUnavailable frames (mesh.wire), checks every chunk against its announced
hash before it writes it, and serves what it holds to the others. groups.transfer
decides whom to ask for what; this module is its adapter (links, disk threads, timers,
events) and the attachments' table.

Chunks are served only to members of the file's conversation; anyone else gets the
same ChunkUnavailable as for a file that does not exist. See
docs/parts/attachments-protocol.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import msgpack

from groups import history
from groups.crypto import ATTACHMENT_FILE_ID_LEN, attachment_chunk_count, new_attachment_key
from groups.errors import ChunkError, GroupsError, NotFound, PermissionDenied
from groups.filestore import FileStore, StorageError
from groups.filetypes import OCTET_STREAM, SNIFF_BYTES, clean_name, settle_mime, sniff_file
from groups.messages import MAX_FILE_SIZE, BadContent, FileRef
from groups.store import atomic
from groups.transfer import Transfers, Verdict
from mesh import wire
from mesh.errors import MeshError

if TYPE_CHECKING:
    from groups.messenger import Messenger

__all__ = ["MAX_FILE_SIZE", "AttachmentRow", "AttachmentService", "AttachmentState",
           "LinkPort"]

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 0.25            # seconds between progress events of one file
TICK = 0.5                          # while downloading: notice lost links this often
SERVE_QUEUE_LIMIT = 2 * 1024 * 1024  # bytes queued on a link beyond which we say "busy"
_MIME = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,40}/[a-z0-9][a-z0-9.+-]{0,80}$")


class AttachmentState(StrEnum):
    UPLOADING = "uploading"       # ours, being encrypted (events only; no message yet)
    DOWNLOADING = "downloading"
    COMPLETE = "complete"
    FAILED = "failed"


class LinkPort(Protocol):
    """What the service needs of a link (mesh.websocket.LinkConnection)."""

    closed: bool
    queued_bytes: int

    def send(self, frame: wire.Frame) -> None: ...


@dataclass(frozen=True)
class AttachmentRow:
    file_id: bytes
    topic: bytes
    message_id: bytes
    sender: str
    name: str
    mime: str
    size: int
    key: bytes = field(repr=False)
    hashes: tuple[bytes, ...] = field(repr=False)
    state: AttachmentState
    bytes_done: int
    reason: str | None

    @property
    def count(self) -> int:
        return len(self.hashes)


_COLUMNS = ("file_id, topic, message_id, sender, name, mime, size, file_key, chunk_hashes, "
            "state, bytes_done, reason")


def _from_db(row: tuple[Any, ...]) -> AttachmentRow:
    blob = bytes(row[8])
    hashes = tuple(blob[i:i + 32] for i in range(0, len(blob), 32))
    return AttachmentRow(bytes(row[0]), bytes(row[1]), bytes(row[2]), row[3], row[4], row[5],
                         row[6], bytes(row[7]), hashes, AttachmentState(row[9]), row[10], row[11])


def load_row(conn: Any, file_id: bytes) -> AttachmentRow | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM attachments WHERE file_id = ?",  # noqa: S608
                       (file_id,)).fetchone()
    return _from_db(row) if row else None


def _all_rows(conn: Any) -> list[AttachmentRow]:
    return [_from_db(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM attachments")]  # noqa: S608


def _set_state(conn: Any, file_id: bytes, state: AttachmentState, bytes_done: int, *,
               mime: str | None = None, reason: str | None = None) -> None:
    conn.execute("UPDATE attachments SET state = ?, bytes_done = ?, reason = ?, "
                 "mime = COALESCE(?, mime) WHERE file_id = ?",
                 (state.value, bytes_done, reason, mime, file_id))


def parse_file(blob: bytes) -> FileRef:
    """The FileRef stored with a chat message (messenger packs FileRef.to_msgpack())."""
    try:
        return FileRef.from_msgpack(msgpack.unpackb(blob, raw=False), "file")
    except (ValueError, TypeError, msgpack.UnpackException):
        raise BadContent("stored file reference does not parse") from None


class AttachmentService:
    """One node's attachments: the messenger's hooks, the chunk exchange, the API's
    queries. ``links()`` returns the established links by peer id (MeshRuntime.links)."""

    def __init__(self, messenger: Messenger, files_dir: Path,
                 links: Callable[[], Mapping[str, LinkPort]], *,
                 transfers: Transfers | None = None) -> None:
        self.m = messenger
        self.conn = messenger.conn
        self.me = messenger.me
        self.store = FileStore(files_dir)
        self.core = transfers or Transfers(self.me)
        self.links = links
        # Set by the node: may a file of this many bytes move over our link to this
        # peer? (Bluetooth links can be limited by size: groups/meetups.py.)
        self.may_move: Callable[[str, int], bool] = lambda peer, size: True
        self.counters: Counter[str] = Counter()
        self._rows: dict[bytes, AttachmentRow] = {}
        self._served: dict[bytes, Counter[str]] = {}
        self._finished: dict[bytes, dict[str, Any]] = {}
        self._last_event: dict[bytes, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Forget half-staged uploads, check what is on disk, resume downloads."""
        rows = _all_rows(self.conn)
        await asyncio.to_thread(self.store.sweep, [r.file_id for r in rows])
        for row in rows:
            self._rows[row.file_id] = row
            if row.state is AttachmentState.COMPLETE and not await asyncio.to_thread(
                    self.store.has_chunks, row.file_id, row.count):
                log.warning("attachment %s lost chunks on disk; fetching them again",
                            row.file_id.hex()[:12])
                row = self._demote(row)
            if row.state is AttachmentState.DOWNLOADING:
                held = await asyncio.to_thread(self.store.verified_chunks, row.file_id,
                                               row.hashes)
                self.core.add(row.file_id, row.sender, row.size, row.hashes, held)
        self._pump()

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        if self._tasks:  # disk writes in threads cannot be cancelled: let them land
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- the messenger's hooks (inside its transactions) ---------------------------------

    def announced(self, message_id: bytes, topic: bytes, sender: str, file: FileRef) -> None:
        """A committed Text carries ``file`` (ours or a peer's): record it in the same
        transaction; the download starts once the transaction is over."""
        if load_row(self.conn, file.file_id) is not None:
            return  # announced before; describe() tells a conflicting reuse apart
        own = sender == self.me
        consistent = len(file.chunk_hashes) == attachment_chunk_count(file.size)
        state = AttachmentState.COMPLETE if own else (
            AttachmentState.DOWNLOADING if consistent else AttachmentState.FAILED)
        mime = file.mime if _MIME.match(file.mime) else OCTET_STREAM
        self.conn.execute(
            "INSERT INTO attachments (file_id, topic, message_id, sender, name, mime, size, "
            "file_key, chunk_hashes, state, bytes_done, reason, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (file.file_id, topic, message_id, sender, clean_name(file.name), mime, file.size,
             file.key, b"".join(file.chunk_hashes), state.value, file.size if own else 0,
             None if consistent else "bad_reference", int(self.m.clock())))
        asyncio.get_running_loop().call_soon(self._activate, file.file_id)

    def _activate(self, file_id: bytes) -> None:
        row = load_row(self.conn, file_id)
        if row is None or self._closed:
            return  # the transaction that announced it was rolled back
        self._rows[file_id] = row
        if row.state is AttachmentState.DOWNLOADING:
            self.core.add(file_id, row.sender, row.size, row.hashes)
            self._event(row, force=True)
            self._pump()

    def describe(self, message_id: bytes, blob: bytes) -> dict[str, Any]:
        """The ``attachment`` of an API message."""
        try:
            ref = parse_file(blob)
        except BadContent:
            return {"id": None, "name": "file", "mime": OCTET_STREAM, "size": 0,
                    "state": AttachmentState.FAILED.value, "bytes_done": 0}
        row = load_row(self.conn, ref.file_id)
        out = {"id": ref.file_id.hex(), "name": clean_name(ref.name), "mime": OCTET_STREAM,
               "size": ref.size, "state": AttachmentState.FAILED.value, "bytes_done": 0}
        if row is not None and (row.message_id == message_id or (
                row.key == ref.key and row.hashes == ref.chunk_hashes)):
            out.update(self._describe_row(row))
        return out

    def _describe_row(self, row: AttachmentRow) -> dict[str, Any]:
        done = self.core.bytes_done(row.file_id) if row.file_id in self.core else row.bytes_done
        return {"id": row.file_id.hex(), "name": row.name, "mime": row.mime, "size": row.size,
                "state": row.state.value, "bytes_done": done}

    # -- sending ---------------------------------------------------------------------------

    async def stage(self, topic: bytes, upload: Path, name: str, size: int) -> FileRef:
        """Encrypt an uploaded plaintext file of ``size`` bytes (``name`` already
        checked) into the store; the FileRef goes into the message. discard() it if the
        message is not sent."""
        if size == 0:
            raise PermissionDenied("the file is empty", "empty_file")
        if size > MAX_FILE_SIZE:
            raise PermissionDenied(f"a file may be at most {MAX_FILE_SIZE} bytes (25 MiB)",
                                   "file_too_large")
        mime = await asyncio.to_thread(sniff_file, upload, name)
        file_id, key = os.urandom(ATTACHMENT_FILE_ID_LEN), new_attachment_key()
        loop = asyncio.get_running_loop()
        base = {"id": file_id.hex(), "conversation": topic.hex(), "message_id": None,
                "state": AttachmentState.UPLOADING.value, "size": size}

        def progress(done: int) -> None:
            loop.call_soon_threadsafe(self.m.events.publish, "attachment",
                                      {**base, "bytes_done": done})

        hashes = await asyncio.to_thread(self.store.stage, upload, file_id, key, size, progress)
        return FileRef(file_id, key, size, mime, name, hashes)

    def discard(self, file_id: bytes) -> None:
        """Drop a staged file whose message was not sent."""
        if load_row(self.conn, file_id) is None:
            self.store.remove(file_id)

    # -- the API's queries -----------------------------------------------------------------

    def _visible(self, topic: bytes) -> bool:
        conv = history.conversation(self.conn, topic)
        if conv is None or conv.left_at is not None:
            return False
        return conv.kind == "direct" or self.m.groups.is_member(topic, self.me)

    def get(self, file_id: bytes) -> AttachmentRow:
        """An attachment of a conversation we are in (else NotFound, whether or not it
        exists)."""
        row = load_row(self.conn, file_id)
        if row is None or not self._visible(row.topic):
            raise NotFound("no such attachment")
        return row

    def info(self, file_id: bytes) -> dict[str, Any]:
        row = self.get(file_id)
        transfer = self.core.stats(file_id) if file_id in self.core else \
            self._finished.get(file_id)
        return {**self._describe_row(row), "conversation": row.topic.hex(),
                "message_id": row.message_id.hex(), "sender": row.sender,
                "transfer": transfer, "served": dict(self._served.get(file_id, {}))}

    def stats(self) -> dict[str, Any]:
        return {**{k: self.counters[k] for k in (
                    "served", "refused", "busy", "unsolicited", "bad_chunks", "requested",
                    "unavailable", "stored")},
                "downloading": len(self.core.files())}

    async def read_plain(self, row: AttachmentRow, index: int) -> bytes:
        """Chunk ``index`` of a complete file, decrypted (in a thread)."""
        try:
            return await asyncio.to_thread(self.store.plain_chunk, row.file_id, row.key,
                                           row.hashes, index)
        except (StorageError, ChunkError):
            if row.state is AttachmentState.COMPLETE:
                self._demote(row)
                self._resume_later(row.file_id)
            raise

    # -- the mesh's entry points -------------------------------------------------------------

    def link_up(self, peer: str) -> None:
        self._pump()

    def on_frame(self, peer: str, frame: wire.Frame) -> None:
        """A non-gossip frame from a linked peer (MeshRuntime's on_other_frame)."""
        if isinstance(frame, wire.ChunkRequest):
            link = self.links().get(peer)
            if link is not None:
                self._send(link, self._answer(peer, link, frame.file_id, frame.index))
        elif isinstance(frame, wire.Chunk):
            self._receive(peer, frame)
        elif isinstance(frame, wire.ChunkUnavailable):
            if self.core.unavailable(peer, frame.file_id, frame.index, self._now()):
                self.counters["unavailable"] += 1
                self._pump()
            else:
                self.counters["unsolicited"] += 1

    def _answer(self, peer: str, link: LinkPort, file_id: bytes, index: int) -> wire.Frame:
        """The chunk, or ChunkUnavailable: the same answer whether the file is unknown,
        the peer may not have it, or we lack the chunk (no oracle for outsiders)."""
        no = wire.ChunkUnavailable(file_id, index)
        row = self._rows.get(file_id)
        if row is None or not 0 <= index < row.count or not self._may_serve(row.topic, peer) \
                or not self.may_move(peer, row.size):
            self.counters["refused"] += 1
            return no
        holds = row.state is AttachmentState.COMPLETE or (
            file_id in self.core and self.core.holds(file_id, index))
        if not holds:
            return no
        if link.queued_bytes > SERVE_QUEUE_LIMIT:
            self.counters["busy"] += 1
            return no
        try:
            data = self.store.read_chunk(file_id, index, row.hashes[index])
        except StorageError as exc:
            log.warning("attachment %s: %s", file_id.hex()[:12], exc)
            if row.state is AttachmentState.COMPLETE:
                self._demote(row)
                self._resume_later(file_id)
            return no
        self.counters["served"] += 1
        self._served.setdefault(file_id, Counter())[peer] += 1
        return wire.Chunk(file_id, index, data)

    def _may_serve(self, topic: bytes, peer: str) -> bool:
        conv = history.conversation(self.conn, topic)
        if conv is None or conv.left_at is not None:
            return False
        if conv.kind == "direct":
            return conv.peer == peer
        return self.m.groups.is_member(topic, self.me) and self.m.groups.is_member(topic, peer)

    def _receive(self, peer: str, frame: wire.Chunk) -> None:
        verdict = self.core.receive(peer, frame.file_id, frame.index, frame.data, self._now())
        if verdict is Verdict.ACCEPT:
            self._spawn(self._store(frame.file_id, frame.index, frame.data))
        elif verdict is Verdict.BAD:
            self.counters["bad_chunks"] += 1
            log.info("peer %s sent a chunk of %s that does not match its hash; asking others",
                     peer, frame.file_id.hex()[:12])
        else:
            self.counters["unsolicited"] += 1
        self._pump()

    async def _store(self, file_id: bytes, index: int, data: bytes) -> None:
        try:
            await asyncio.to_thread(self.store.write_chunk, file_id, index, data)
        except StorageError as exc:
            log.warning("attachment %s: %s", file_id.hex()[:12], exc)
            self.core.store_failed(file_id, index)
            self._pump()
            return
        if file_id not in self.core or self._closed:
            return
        self.counters["stored"] += 1
        if self.core.stored(file_id, index):
            await self._finish(file_id)
        else:
            self._event(self._rows[file_id])
        self._pump()

    async def _finish(self, file_id: bytes) -> None:
        row = self._rows[file_id]
        try:
            head = (await asyncio.to_thread(self.store.plain_chunk, file_id, row.key,
                                            row.hashes, 0))[:SNIFF_BYTES]
            await asyncio.to_thread(self.store.sync, file_id)
            state, mime, reason = AttachmentState.COMPLETE, settle_mime(row.mime, head,
                                                                        row.name), None
        except ChunkError:  # the sender announced chunks its own key does not open
            state, mime, reason = AttachmentState.FAILED, None, "undecryptable"
        except StorageError:
            return  # read_chunk dropped the damaged chunk; the next pump refetches it
        self._finished[file_id] = self.core.stats(file_id)
        self.core.remove(file_id)
        with atomic(self.conn):
            _set_state(self.conn, file_id, state, row.size if reason is None else 0,
                       mime=mime, reason=reason)
        self._rows[file_id] = load_row(self.conn, file_id) or row
        self._event(self._rows[file_id], force=True)

    def _demote(self, row: AttachmentRow) -> AttachmentRow:
        with atomic(self.conn):
            _set_state(self.conn, row.file_id, AttachmentState.DOWNLOADING, 0)
        row = load_row(self.conn, row.file_id) or row
        self._rows[row.file_id] = row
        return row

    def _resume_later(self, file_id: bytes) -> None:
        async def resume() -> None:
            row = self._rows[file_id]
            held = await asyncio.to_thread(self.store.verified_chunks, file_id, row.hashes)
            if file_id not in self.core and not self._closed:
                self.core.add(file_id, row.sender, row.size, row.hashes, held)
                self._pump()
        if file_id not in self.core:
            self._spawn(resume())

    # -- plumbing --------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _send(self, link: LinkPort, frame: wire.Frame) -> None:
        with contextlib.suppress(MeshError):  # the link went down meanwhile
            link.send(frame)

    def _sources(self, row: AttachmentRow, links: Mapping[str, LinkPort]) -> list[str]:
        conv = history.conversation(self.conn, row.topic)
        if conv is None or conv.left_at is not None:
            return []
        if conv.kind == "direct":
            members = {conv.peer or ""}
        else:
            try:
                members = set(self.m.groups.recipients(row.topic))
            except GroupsError:
                return []
        return [p for p in members if p in links and not links[p].closed
                and self.may_move(p, row.size)]

    def _pump(self) -> None:
        """Tell the scheduler who is reachable, send what it asks, re-arm the timer."""
        if self._closed:
            return
        now = self._now()
        links = self.links()
        for file_id in self.core.files():
            self.core.set_sources(file_id, self._sources(self._rows[file_id], links))
        for request in self.core.poll(now):
            self.counters["requested"] += 1
            self._send(links[request.peer], wire.ChunkRequest(request.file_id, request.index))
        self._rearm(now)

    def _rearm(self, now: float) -> None:
        due = self.core.next_timer()
        if self.core.files():
            due = min(due if due is not None else now + TICK, now + TICK)
        if due is None or (self._timer_at is not None and self._timer_at <= due):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = asyncio.get_running_loop().call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if self._closed:
            return
        self.core.handle_timer(self._now())
        self._pump()

    def _event(self, row: AttachmentRow, *, force: bool = False) -> None:
        """Progress for the UI, at most every PROGRESS_INTERVAL per file (state changes
        always go out)."""
        now = time.monotonic()
        if not force and now - self._last_event.get(row.file_id, 0.0) < PROGRESS_INTERVAL:
            return
        self._last_event[row.file_id] = now
        described = self._describe_row(row)
        self.m.events.publish("attachment", {
            "id": described["id"], "conversation": row.topic.hex(),
            "message_id": row.message_id.hex(), "state": described["state"],
            "bytes_done": described["bytes_done"], "size": row.size})
