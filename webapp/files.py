"""Uploads and downloads of attachments for the node API (docs/api.md, "Attachments").

``UploadMixin`` lets a messages endpoint also take ``multipart/form-data`` with a
``file`` field (and an optional ``text`` caption). The body is parsed as it streams in
(webapp.multipart) and the file part goes straight to a private temporary file in
``<data-dir>/files/uploads``: a node never holds an upload in memory. A declared body
larger than the limit is refused at once with 413 ``file_too_large``; a body without
Content-Length is counted and refused the same way once it is past the limit. The
temporary file is deleted when the request ends, whatever happened.

``AttachmentHandler`` serves a complete file decrypted, chunk by chunk, with its type,
a Content-Disposition, and single byte ranges (so browsers can seek in videos).
"""

from __future__ import annotations

import contextlib
import os
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from groups.attachments import MAX_FILE_SIZE, AttachmentState
from groups.crypto import ATTACHMENT_CHUNK_SIZE
from groups.errors import ChunkError, StorageError
from groups.filetypes import check_upload_name
from groups.messages import MAX_TEXT_BYTES, FileRef
from groups.node_api import NodeApi
from mesh.jsonapi import ApiError
from webapp.auth import MULTIPART_TYPE, media_type
from webapp.errors import MultipartError
from webapp.multipart import (
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_header_params,
)

__all__ = ["MULTIPART_SLACK", "AttachmentMixin", "Upload", "UploadMixin", "parse_range"]

MULTIPART_SLACK = 64 * 1024   # room for the caption and the part headers
_FILE_ID = re.compile(r"^[0-9a-f]{64}$")
_RANGE_SPEC = re.compile(r"([0-9]*)-([0-9]*)")
_INLINE = ("image/", "video/", "audio/")
# A file is shown by the browser only as the media it is; nothing in it may run.
_FILE_CSP = "default-src 'none'; img-src 'self'; media-src 'self'; style-src 'unsafe-inline'; " \
            "sandbox"


@dataclass(frozen=True)
class Upload:
    """A received file part, on disk, the caption that came with it and the message it
    replies to (``reply_to``: b"" for none)."""

    path: Path
    name: str
    size: int
    caption: str
    reply_to: bytes = b""


class _UploadSink:
    """Feeds the body to the parser; the ``file`` part to a file, ``text`` to memory.
    Never raises (Tornado would drop the connection): the first problem is kept in
    ``error`` and the rest of the body is ignored."""

    def __init__(self, parser: MultipartParser, fd: int, path: Path) -> None:
        self.parser, self.fd, self.path = parser, fd, path
        self.error: ApiError | None = None
        self.size = 0
        self.name: str | None = None
        self.text = bytearray()
        self.reply_to = bytearray()
        self._current: str | None = None
        self._seen: set[str] = set()
        self.taken = False

    def feed(self, data: bytes) -> None:
        if self.error is not None:
            return
        try:
            for event in self.parser.feed(data):
                self._on(event)
        except MultipartError as exc:
            self._fail(ApiError(400, "bad_multipart", f"malformed multipart body: {exc}"))
        except OSError as exc:
            self._fail(ApiError(507, "storage_full", f"could not store the upload: "
                                                     f"{exc.strerror}"))

    def _on(self, event: Any) -> None:
        if isinstance(event, PartStart):
            if event.name not in ("file", "text", "reply_to") or event.name in self._seen:
                raise MultipartError(f"unexpected or repeated field {event.name!r}")
            self._seen.add(event.name)
            self._current = event.name
            if event.name == "file":
                if event.filename is None:
                    raise MultipartError("the file field has no filename")
                self.name = event.filename
        elif isinstance(event, PartData):
            if self._current == "file":
                self.size += len(event.data)
                if self.size > MAX_FILE_SIZE:
                    self._fail(ApiError(413, "file_too_large",
                                        f"a file may be at most {MAX_FILE_SIZE} bytes (25 MiB)"))
                    return
                view = memoryview(event.data)
                while view:
                    view = view[os.write(self.fd, view):]
            elif self._current == "reply_to":
                self.reply_to += event.data
                if len(self.reply_to) > 64:
                    self._fail(ApiError(400, "bad_reply_to", "reply_to is a message id"))
            else:
                self.text += event.data
                if len(self.text) > MAX_TEXT_BYTES:
                    self._fail(ApiError(413, "text_too_long",
                                        f"a caption holds at most {MAX_TEXT_BYTES} bytes"))
        elif isinstance(event, PartEnd):
            self._current = None

    def _fail(self, error: ApiError) -> None:
        self.error = error
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)  # give the disk space back now

    def result(self) -> Upload:
        if self.error is None:
            try:
                self.parser.close()
            except MultipartError as exc:
                self.error = ApiError(400, "bad_multipart", f"malformed multipart body: {exc}")
        if self.error is not None:
            raise self.error
        if self.name is None:
            raise ApiError(400, "bad_request", "missing field: file")
        try:
            caption = bytes(self.text).decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError(400, "bad_request", "text must be UTF-8") from None
        reply_to = bytes(self.reply_to).decode("ascii", "replace")
        if reply_to and not re.fullmatch(r"[0-9a-f]{64}", reply_to):
            raise ApiError(400, "bad_reply_to", "reply_to is a message id (64 hex characters)")
        return Upload(self.path, unicodedata.normalize("NFC", self.name), self.size, caption,
                      bytes.fromhex(reply_to))

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.fd)
        with contextlib.suppress(OSError):
            self.path.unlink()


class UploadMixin:
    """For a NodeHandler whose POST also takes an upload (put it first in the bases).
    In ``post``: ``upload = self.upload()`` is None for a JSON body."""

    accept_multipart = True
    request: Any
    node: NodeApi
    body_limit: int

    def _is_multipart(self) -> bool:
        return self.request.method == "POST" and \
            media_type(self.request.headers.get("Content-Type")) == MULTIPART_TYPE

    def prepare(self) -> None:
        self._sink: _UploadSink | None = None
        if self._is_multipart():
            self.body_limit = MAX_FILE_SIZE + MULTIPART_SLACK
        super().prepare()  # type: ignore[misc]
        if self._is_multipart():
            _, params = _content_type_params(self.request.headers.get("Content-Type", ""))
            try:
                parser = MultipartParser(params.get("boundary", ""))
            except MultipartError as exc:
                raise ApiError(400, "bad_multipart", str(exc)) from None
            fd, path = self.node.new_upload()
            self._sink = _UploadSink(parser, fd, path)

    def check_content_length(self) -> None:
        if self._is_multipart():
            length = self.request.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > self.body_limit:
                raise ApiError(413, "file_too_large",
                               f"a file may be at most {MAX_FILE_SIZE} bytes (25 MiB)")
        super().check_content_length()  # type: ignore[misc]

    def data_received(self, chunk: bytes) -> None:
        if self._sink is not None:
            self._sink.feed(chunk)
        else:
            super().data_received(chunk)  # type: ignore[misc]

    def upload(self) -> Upload | None:
        """The upload of this request (None for JSON); ApiError if it is refused."""
        if self._sink is None:
            return None
        self._sink.taken = True
        upload = self._sink.result()
        if upload.size == 0:
            raise ApiError(400, "empty_file", "the file is empty")
        check_upload_name(upload.name)
        return upload

    async def send_upload(self, topic: bytes, upload: Upload,
                          send: Callable[[str, FileRef], Any]) -> dict[str, Any]:
        """Encrypt the upload into the store and send it with ``send(caption, file_ref)``
        (which returns the message id); the staged chunks go if the send fails."""
        node = self.node
        try:
            ref = await node.stage_upload(topic, upload.path, check_upload_name(upload.name),
                                          upload.size)
        finally:
            self._drop_upload()  # the plaintext goes before the answer does
        try:
            message_id = send(upload.caption, ref)
            if hasattr(message_id, "__await__"):
                message_id = await message_id
        except BaseException:
            node.discard_attachment(ref.file_id)
            raise
        return {"message_id": message_id.hex(), "attachment": node.attachment_info(ref.file_id)}

    def _drop_upload(self) -> None:
        if getattr(self, "_sink", None) is not None:
            self._sink.discard()  # type: ignore[union-attr]
            self._sink = None

    def send_error(self, status_code: int = 500, **kwargs: Any) -> None:
        self._drop_upload()  # a refused upload is gone before the client hears of it
        super().send_error(status_code, **kwargs)  # type: ignore[misc]

    def on_finish(self) -> None:
        self._drop_upload()
        super().on_finish()  # type: ignore[misc]

    def on_connection_close(self) -> None:
        # A client that went away mid-upload leaves nothing behind; once post() has the
        # upload, on_finish (which always follows) removes it.
        sink = getattr(self, "_sink", None)
        if sink is not None and not sink.taken:
            self._drop_upload()
        super().on_connection_close()  # type: ignore[misc]


def _content_type_params(value: str) -> tuple[str, dict[str, str]]:
    try:
        return parse_header_params(value)
    except MultipartError as exc:
        raise ApiError(400, "bad_multipart", str(exc)) from None


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` -> (start, end exclusive), or None to send the whole file
    (no header, a syntax we ignore, or several ranges). ApiError 416 if it cannot be
    satisfied. Only ASCII digits are digits here (``str.isdigit`` also takes "²",
    which ``int`` refuses), and a number of any length is read without ``int`` ever
    seeing more than 19 digits: one beyond any file's size is just that."""
    if not header:
        return None
    unit, _, spec = header.partition("=")
    if unit.strip().lower() != "bytes" or "," in spec:
        return None
    match = _RANGE_SPEC.fullmatch(spec.strip())
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if first == "":
        if last == "" or _number(last) == 0:
            raise _unsatisfiable(size)
        return max(0, size - _number(last)), size
    start = _number(first)
    if last != "" and _number(last) < start:
        return None  # not a valid range-spec: the header is ignored (RFC 9110 14.2)
    if start >= size:
        raise _unsatisfiable(size)
    return start, size if last == "" else min(size, _number(last) + 1)


def _number(digits: str) -> int:
    """ASCII digits -> int; anything past 2^63 (no file is that large) reads as 2^63."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= 18 else 2**63


def _unsatisfiable(size: int) -> ApiError:
    return ApiError(416, "range_not_satisfiable", f"the file has {size} bytes",
                    {"Content-Range": f"bytes */{size}"})


def _disposition(mime: str, name: str) -> str:
    kind = "inline" if mime.startswith(_INLINE) else "attachment"
    fallback = "".join(c if 0x20 <= ord(c) < 0x7F and c not in '"\\%' else "_" for c in name)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class AttachmentMixin:
    """GET (and HEAD) ``/api/v1/attachments/{id}``: the decrypted file, if complete."""

    node: NodeApi
    request: Any

    async def get(self, raw_id: str) -> None:
        await self._serve(raw_id, body=True)

    async def head(self, raw_id: str) -> None:
        await self._serve(raw_id, body=False)

    async def _serve(self, raw_id: str, *, body: bool) -> None:
        handler: Any = self
        if not _FILE_ID.match(raw_id):
            raise ApiError(400, "bad_attachment_id", "an attachment id is 64 hex characters")
        row = self.node.attachment(bytes.fromhex(raw_id))
        if row.state is not AttachmentState.COMPLETE:
            raise ApiError(409, "attachment_incomplete",
                           "the file is not here yet" if row.state is not
                           AttachmentState.FAILED else "the file could not be received")
        span = parse_range(self.request.headers.get("Range"), row.size)
        start, end = span or (0, row.size)
        handler.set_status(206 if span else 200)
        if span:
            handler.set_header("Content-Range", f"bytes {start}-{end - 1}/{row.size}")
        mime = row.mime + ("; charset=utf-8" if row.mime.startswith("text/") else "")
        handler.set_header("Content-Type", mime)
        handler.set_header("Content-Disposition", _disposition(row.mime, row.name))
        handler.set_header("Content-Security-Policy", _FILE_CSP)
        handler.set_header("Accept-Ranges", "bytes")
        handler.set_header("Cache-Control", "private, no-store")
        handler.set_header("Content-Length", str(end - start))
        if not body:
            handler.finish()
            return
        sent = 0
        for index in range(start // ATTACHMENT_CHUNK_SIZE,
                           (end - 1) // ATTACHMENT_CHUNK_SIZE + 1):
            try:
                plain = await self.node.read_attachment(row, index)
            except (StorageError, ChunkError) as exc:
                if sent == 0:
                    raise ApiError(409, "attachment_incomplete",
                                   f"the file is damaged here and is fetched again: {exc}"
                                   ) from None
                handler.request.connection.close()  # the headers are out: cut it short
                return
            base = index * ATTACHMENT_CHUNK_SIZE
            piece = plain[max(start - base, 0):min(end - base, len(plain))]
            handler.write(piece)
            sent += len(piece)
            await handler.flush()
        handler.finish()
