"""The attachments table (schema version 3 in groups/schema.py): one row per announced
file. Plain repository functions, connection first; callers group writes with
groups.store.atomic. Which chunks are held is not here: it is what is on disk and
matches the hashes (groups/filestore.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import msgpack

from groups.errors import BadContent
from groups.messages import FileRef

__all__ = ["AttachmentRow", "AttachmentState", "all_rows", "insert_row", "load_row",
           "parse_file", "set_state"]


class AttachmentState(StrEnum):
    UPLOADING = "uploading"       # ours, being encrypted (events only; no message yet)
    DOWNLOADING = "downloading"
    COMPLETE = "complete"
    FAILED = "failed"


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


def all_rows(conn: Any) -> list[AttachmentRow]:
    return [_from_db(r) for r in conn.execute(f"SELECT {_COLUMNS} FROM attachments")]  # noqa: S608


def set_state(conn: Any, file_id: bytes, state: AttachmentState, bytes_done: int, *,
               mime: str | None = None, reason: str | None = None) -> None:
    conn.execute("UPDATE attachments SET state = ?, bytes_done = ?, reason = ?, "
                 "mime = COALESCE(?, mime) WHERE file_id = ?",
                 (state.value, bytes_done, reason, mime, file_id))


def delete_row(conn: Any, file_id: bytes, message_id: bytes) -> bool:
    """Forget the file announced by ``message_id`` (not one another message announced)."""
    cur = conn.execute("DELETE FROM attachments WHERE file_id = ? AND message_id = ?",
                       (file_id, message_id))
    return cur.rowcount == 1


def parse_file(blob: bytes) -> FileRef:
    """The FileRef stored with a chat message (messenger packs FileRef.to_msgpack())."""
    try:
        return FileRef.from_msgpack(msgpack.unpackb(blob, raw=False), "file")
    except (ValueError, TypeError, msgpack.UnpackException):
        raise BadContent("stored file reference does not parse") from None


def insert_row(conn: Any, file: FileRef, topic: bytes, message_id: bytes, sender: str,
               name: str, mime: str, state: AttachmentState, bytes_done: int,
               reason: str | None, now: float) -> None:
    conn.execute(
        "INSERT INTO attachments (file_id, topic, message_id, sender, name, mime, size, "
        "file_key, chunk_hashes, state, bytes_done, reason, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (file.file_id, topic, message_id, sender, name, mime, file.size, file.key,
         b"".join(file.chunk_hashes), state.value, bytes_done, reason, int(now)))
