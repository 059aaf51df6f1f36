"""Attachments: files up to 25 MiB, announced in a message, pulled in encrypted chunks.

The sender encrypts a file into 256 KiB AES-256-GCM chunks under a fresh key
(groups.filestore), and a Text message carries a FileRef: file id, key, size, MIME
type, name and the SHA-256 of every encrypted chunk, inside the sender-key (or
pairwise) encryption. Nothing of the file rides the gossip. Each receiver pulls the
chunks from linked members of the conversation that hold them, with ChunkRequest /
Chunk / ChunkUnavailable frames (mesh.wire), checks every chunk against its announced
hash before it writes it, and serves what it holds to the others. groups.transfer
decides whom to ask for what; this module is its adapter (links, disk, timers, events);
groups.attachment_rows holds the table and groups.filestore the chunks.

Chunks are served only to members of the file's conversation; anyone else gets the
same ChunkUnavailable as for a file that does not exist. See
docs/protocol.md §9.
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
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from groups.attachment_access import ConversationAccess
from groups.attachment_rows import (
    AttachmentRow,
    AttachmentState,
    all_rows,
    delete_row,
    insert_row,
    load_row,
    parse_file,
    set_state,
)
from groups.crypto import ATTACHMENT_FILE_ID_LEN, attachment_chunk_count, new_attachment_key
from groups.errors import BadContent, ChunkError, NotFound, PermissionDenied, StorageError
from groups.filestore import ChunkWriter, FileStore, StallMeter, Written, sealed_length
from groups.filetypes import OCTET_STREAM, SNIFF_BYTES, clean_name, settle_mime, sniff_file
from groups.messages import MAX_FILE_SIZE, FileRef
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
SLOW_WRITE = 0.02                   # a chunk write slower than this ...
SLOW_DISK_HOLD = 5.0                # ... sends writes to the writer thread this long
_MIME = re.compile(r"^[a-z0-9][a-z0-9.+-]{0,40}/[a-z0-9][a-z0-9.+-]{0,80}$")


class LinkPort(Protocol):
    """What the service needs of a link (mesh.transport.LinkConnection)."""

    closed: bool
    queued_bytes: int

    def send(self, frame: wire.Frame) -> None: ...


class AttachmentService:
    """One node's attachments: the messenger's hooks, the chunk exchange, the API's
    queries. ``links()`` returns the established links by peer id (MeshRuntime.links)."""

    def __init__(self, messenger: Messenger, files_dir: Path,
                 links: Callable[[], Mapping[str, LinkPort]], *,
                 may_move: Callable[[str, int], bool] = lambda peer, size: True,
                 transfers: Transfers | None = None) -> None:
        self.m = messenger
        self.conn = messenger.conn
        self.me = messenger.me
        self.store = FileStore(files_dir)
        self.core = transfers or Transfers(self.me)
        self.access = ConversationAccess(self.conn, self.me, messenger.groups)
        self.links = links
        # May a file of this many bytes move over our link to this peer? (Bluetooth
        # links can be limited by size: groups/meetups.py.)
        self.may_move = may_move
        self.counters: Counter[str] = Counter()
        self._rows: dict[bytes, AttachmentRow] = {}
        self._served: dict[bytes, Counter[str]] = {}
        self._finished: dict[bytes, dict[str, Any]] = {}
        self._settled: dict[bytes, str] = {}   # complete, not yet fsynced: file -> mime
        self._sources_due = 0.0
        self._writer: ChunkWriter | None = None
        self._stalls = StallMeter()  # used on the loop's thread only
        self._slow_until = 0.0
        self._last_event: dict[bytes, float] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._closed = False

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Forget half-staged uploads, check what is on disk, resume downloads."""
        rows = all_rows(self.conn)
        await asyncio.to_thread(self.store.sweep, [r.file_id for r in rows])
        for row in rows:
            self._rows[row.file_id] = row
            if row.state is AttachmentState.COMPLETE and not await asyncio.to_thread(
                    self.store.has_all, row.file_id, row.size):
                log.warning("attachment %s lost chunks on disk; fetching them again",
                            row.file_id.hex()[:12])
                row = self._demote(row)
            if row.state is AttachmentState.DOWNLOADING:
                held = await asyncio.to_thread(self.store.verified_chunks, row.file_id,
                                               row.hashes, row.size)
                self._resume(row, held)
        self._pump(refresh=True)

    def _resume(self, row: AttachmentRow, held: set[int]) -> None:
        """Fetch what is missing; a file whose chunks are all here already (the node
        stopped between the last chunk and the database saying so) just finishes."""
        self.core.add(row.file_id, row.sender, row.size, row.hashes, held)
        self.store.reserve(row.file_id, row.size)
        if self.core.complete(row.file_id):
            self._spawn(self._finish(row.file_id))

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = self._timer_at = None
        if self._writer is not None:
            await asyncio.to_thread(self._writer.close)
        if self._tasks:  # work in threads cannot be cancelled: let it land
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._stalls.close()
        self.store.close()

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
        insert_row(self.conn, file, topic, message_id, sender, clean_name(file.name), mime,
                   state, file.size if own else 0, None if consistent else "bad_reference",
                   self.m.clock())
        asyncio.get_running_loop().call_soon(self._activate, file.file_id)

    def _activate(self, file_id: bytes) -> None:
        row = load_row(self.conn, file_id)
        if row is None or self._closed:
            return  # the transaction that announced it was rolled back
        self._rows[file_id] = row
        if row.state is AttachmentState.DOWNLOADING:
            self.core.add(file_id, row.sender, row.size, row.hashes)
            self.store.reserve(file_id, row.size)
            self._event(row, force=True)
            self._pump(refresh=True)

    def forget(self, message_id: bytes, blob: bytes) -> bytes | None:
        """The message that announced the file was deleted or disappeared (inside the
        transaction): its row goes; returns the file id whose chunks ``drop`` deletes
        once the transaction is committed (None: nothing of it is ours to delete)."""
        try:
            file_id = parse_file(blob).file_id
        except BadContent:
            return None
        return file_id if delete_row(self.conn, file_id, message_id) else None

    def drop(self, file_id: bytes) -> None:
        """After the commit that forgot the file: stop fetching it, delete its chunks."""
        self.core.remove(file_id)
        self._rows.pop(file_id, None)
        self._settled.pop(file_id, None)
        self.store.remove(file_id)

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

    def _effective(self, row: AttachmentRow) -> AttachmentRow:
        """The row as the user sees it: complete as soon as every chunk is verified."""
        mime = self._settled.get(row.file_id)
        if mime is None or row.state is not AttachmentState.DOWNLOADING:
            return row
        return replace(row, state=AttachmentState.COMPLETE, mime=mime, bytes_done=row.size)

    def _describe_row(self, row: AttachmentRow) -> dict[str, Any]:
        row = self._effective(row)
        done = row.bytes_done if row.file_id not in self.core or row.file_id in self._settled \
            else self.core.bytes_done(row.file_id)
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

        last = [0]

        def progress(done: int) -> None:  # from the staging thread; every 2 MiB and the end
            if done == size or done - last[0] >= 2 * 1024 * 1024:
                last[0] = done
                loop.call_soon_threadsafe(self.m.events.publish, "attachment",
                                          {**base, "bytes_done": done})

        hashes = await asyncio.to_thread(self.store.stage, upload, file_id, key, size, progress)
        return FileRef(file_id, key, size, mime, name, hashes)

    def discard(self, file_id: bytes) -> None:
        """Drop a staged file whose message was not sent."""
        if load_row(self.conn, file_id) is None:
            self.store.remove(file_id)

    # -- the API's queries -----------------------------------------------------------------

    def get(self, file_id: bytes) -> AttachmentRow:
        """An attachment of a conversation we are in (else NotFound, whether or not it
        exists)."""
        row = load_row(self.conn, file_id)
        if row is None or not self.access.visible(row.topic):
            raise NotFound("no such attachment")
        return self._effective(row)

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
                                           row.hashes, row.size, index)
        except (StorageError, ChunkError):
            if row.state is AttachmentState.COMPLETE:
                self._demote(row)
                self._resume_later(row.file_id)
            raise

    # -- the mesh's entry points -------------------------------------------------------------

    def link_up(self, peer: str) -> None:
        self.core.link_renewed(peer)
        self._pump(refresh=True)

    def on_frame(self, peer: str, frame: wire.Frame) -> None:
        """A non-gossip frame from a linked peer (MeshRuntime's on_other_frame)."""
        if isinstance(frame, wire.ChunkRequest):
            link = self.links().get(peer)
            if link is not None:
                for index in dict.fromkeys(frame.indices):  # each once, in the order asked
                    self._send(link, self._answer(peer, link, frame.file_id, index))
        elif isinstance(frame, wire.Chunk):
            self._receive(peer, frame)
        elif isinstance(frame, wire.ChunkUnavailable):
            now = self._now()
            if self.core.unavailable(peer, frame.file_id, frame.index, now):
                self.counters["unavailable"] += 1
                self._pump()
                self._rearm(now, now + self.core.retry)  # the rest just begun ends then
            else:
                self.counters["unsolicited"] += 1

    def _answer(self, peer: str, link: LinkPort, file_id: bytes, index: int) -> wire.Frame:
        """The chunk, or ChunkUnavailable: the same answer whether the file is unknown,
        the peer may not have it, or we lack the chunk (no oracle for outsiders)."""
        no = wire.ChunkUnavailable(file_id, index)
        row = self._rows.get(file_id)
        if row is None or not 0 <= index < row.count \
                or not self.access.may_serve(row.topic, peer, self._now()) \
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
        try:  # unchecked: the receiver checks the hash (and avoids us if it is wrong)
            data = self.store.read_chunk(file_id, index, sealed_length(row.size, index),
                                         cached=True)
        except StorageError as exc:
            log.warning("attachment %s: %s", file_id.hex()[:12], exc)
            if row.state is AttachmentState.COMPLETE:
                self._demote(row)
                self._resume_later(file_id)
            return no
        self.counters["served"] += 1
        self._served.setdefault(file_id, Counter())[peer] += 1
        return wire.Chunk(file_id, index, data)

    def _receive(self, peer: str, frame: wire.Chunk) -> None:
        verdict = self.core.receive(peer, frame.file_id, frame.index, frame.data, self._now())
        if verdict is Verdict.ACCEPT:
            self._store(frame.file_id, frame.index, frame.data)
        elif verdict is Verdict.BAD:
            self.counters["bad_chunks"] += 1
            log.info("peer %s sent a chunk of %s that does not match its hash; asking others",
                     peer, frame.file_id.hex()[:12])
        else:
            self.counters["unsolicited"] += 1
        self._pump()

    def _store(self, file_id: bytes, index: int, data: bytes) -> None:
        """Write a verified chunk: on the loop while the disk is quick (a page-cache
        write takes ~50 µs; a writer thread would cost more in hand-offs), through the
        writer thread for SLOW_DISK_HOLD seconds after a write was blocked for over
        SLOW_WRITE (an fsync elsewhere on the filesystem can stall writes for tens of
        milliseconds). Blocked, not merely slow (StallMeter): on a busy machine
        preemption alone makes a 50 µs write take tens of milliseconds of wall time,
        and the thread's hand-offs then cost CPU for nothing (on the loaded 2-vCPU
        machine a fifth of a receiver's Python time went to them)."""
        now = self._now()
        if now < self._slow_until:
            if self._writer is None:
                self._writer = ChunkWriter(self.store,
                                           asyncio.get_running_loop().call_soon_threadsafe,
                                           self._written)
            self._writer.put(file_id, index, data)
            return
        mark = self._stalls.start()
        try:
            self.store.write_chunk(file_id, index, data)
            error = None
        except StorageError as exc:
            error = exc
        if self._stalls.blocked(mark) > SLOW_WRITE:
            self._slow_until = now + SLOW_DISK_HOLD
        self._written([(file_id, index, error)], pump=False)

    def _written(self, done: list[Written], *, pump: bool = True) -> None:
        """The writer thread stored these verified chunks (or could not)."""
        if self._closed:
            return
        for file_id, index, error in done:
            if file_id not in self.core:
                continue
            if error is not None:
                log.warning("attachment %s: %s", file_id.hex()[:12], error)
                self.core.store_failed(file_id, index)
                continue
            self.counters["stored"] += 1
            if self.core.stored(file_id, index):
                self._spawn(self._finish(file_id))
            else:
                self._event(self._rows[file_id])
        if pump:
            self._pump()

    async def _finish(self, file_id: bytes) -> None:
        """Every chunk is verified and written: the file is complete for the user and
        its peers at once; the database says so once the file is fsynced (a crash in
        between leaves a download whose chunks all verify on restart)."""
        row = self._rows.get(file_id)
        if row is None:
            return   # forgotten (its message deleted) since
        try:
            head = self.store.plain_chunk(file_id, row.key, row.hashes, row.size,
                                          0)[:SNIFF_BYTES]
            state, mime, reason = AttachmentState.COMPLETE, settle_mime(row.mime, head,
                                                                        row.name), None
            self._settled[file_id] = mime
            self._event(row, force=True)
            await asyncio.to_thread(self.store.sync, file_id)
        except ChunkError:  # the sender announced chunks its own key does not open
            state, mime, reason = AttachmentState.FAILED, None, "undecryptable"
        except StorageError as exc:  # the disk lost or broke a chunk: find out which
            log.warning("attachment %s: %s", file_id.hex()[:12], exc)
            self._settled.pop(file_id, None)
            self.core.remove(file_id)
            self._resume_later(file_id)
            return
        self._finished[file_id] = self.core.stats(file_id)
        self._settled.pop(file_id, None)
        self.core.remove(file_id)
        if self._closed or file_id not in self._rows:
            return
        with atomic(self.conn):
            set_state(self.conn, file_id, state, row.size if reason is None else 0,
                      mime=mime, reason=reason)
        self._rows[file_id] = load_row(self.conn, file_id) or row
        self._event(self._rows[file_id], force=True)

    def _demote(self, row: AttachmentRow) -> AttachmentRow:
        with atomic(self.conn):
            set_state(self.conn, row.file_id, AttachmentState.DOWNLOADING, 0)
        row = load_row(self.conn, row.file_id) or row
        self._rows[row.file_id] = row
        return row

    def _resume_later(self, file_id: bytes) -> None:
        async def resume() -> None:
            row = self._rows.get(file_id)
            if row is None:
                return
            held = await asyncio.to_thread(self.store.verified_chunks, file_id, row.hashes,
                                           row.size)
            if file_id not in self.core and not self._closed:
                self._resume(row, held)
                self._pump(refresh=True)
        if file_id not in self.core:
            self._spawn(resume())

    # -- plumbing --------------------------------------------------------------------------

    def _now(self) -> float:
        return asyncio.get_running_loop().time()

    def _send(self, link: LinkPort, frame: wire.Frame) -> None:
        with contextlib.suppress(MeshError):  # the link went down meanwhile
            link.send(frame)

    def _sources(self, row: AttachmentRow, links: Mapping[str, LinkPort]) -> list[str]:
        return [p for p in self.access.members(row.topic) if p in links
                and not links[p].closed and self.may_move(p, row.size)]

    def _pump(self, *, refresh: bool = False) -> None:
        """Send what the scheduler asks for and re-arm the timer. Who is reachable (links
        and membership) is looked up again when ``refresh`` is asked or every TICK/2,
        not for every frame."""
        if self._closed:
            return
        now = self._now()
        links = self.links()
        if refresh or now >= self._sources_due:
            self._sources_due = now + TICK / 2
            for file_id in self.core.files():
                self.core.set_sources(file_id, self._sources(self._rows[file_id], links))
        asks: dict[tuple[str, bytes], list[int]] = {}
        for request in self.core.poll(now):
            asks.setdefault((request.peer, request.file_id), []).append(request.index)
        for (peer, file_id), indices in asks.items():
            link = links.get(peer)
            if link is None:
                continue  # the next refresh gives the requests back
            self.counters["requested"] += len(indices)
            for at in range(0, len(indices), wire.MAX_REQUEST_CHUNKS):
                self._send(link, wire.ChunkRequest(
                    file_id, tuple(indices[at:at + wire.MAX_REQUEST_CHUNKS])))
        self._rearm(now)

    def _rearm(self, now: float, due: float | None = None) -> None:
        """Make sure the timer runs by ``due`` (by default within TICK while anything
        downloads). Only a rest that a ``chunk!`` starts needs an earlier wake-up, and
        that caller names it; request timeouts are seconds long, so checking them every
        TICK is soon enough and spares working out the next deadline for every frame."""
        if due is None:
            if not self.core.files():
                return
            due = now + TICK
        if self._timer_at is not None and self._timer_at <= due:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = due
        self._timer = asyncio.get_running_loop().call_at(due, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        if self._closed:
            return
        now = self._now()
        self.core.handle_timer(now)
        self._pump()
        due = self.core.next_timer()
        if due is not None:
            self._rearm(now, due)

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
