"""A streaming multipart/form-data parser (RFC 7578), sans-IO.

Tornado's parse_multipart_form_data wants the whole body in memory; an upload of 25 MiB
must go to disk as it arrives instead. ``MultipartParser.feed(data)`` takes the body in
pieces of any size and returns events: ``PartStart`` (the part's name, file name and
type), ``PartData`` (bytes of its content, in order), ``PartEnd``, and ``Finished`` once
the closing delimiter was read. Anything malformed raises MultipartError; ``close()``
raises it too if the body ended before the closing delimiter (a truncated upload).

Held in memory at any time: the part headers being read (at most ``max_header_bytes``)
and less than one delimiter's worth of content.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum

from webapp.errors import MultipartError

__all__ = ["Finished", "MultipartParser", "PartData", "PartEnd", "PartStart",
           "parse_header_params"]

_BOUNDARY = re.compile(r"^[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]$")
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


@dataclass(frozen=True)
class PartStart:
    name: str
    filename: str | None
    content_type: str | None


@dataclass(frozen=True)
class PartData:
    data: bytes


@dataclass(frozen=True)
class PartEnd:
    pass


@dataclass(frozen=True)
class Finished:
    pass


Event = PartStart | PartData | PartEnd | Finished


def parse_header_params(value: str) -> tuple[str, dict[str, str]]:
    """``form-data; name="file"; filename="a.png"`` -> ("form-data", {...}). Parameter
    names are lower-cased; in quoted strings only ``\\"`` and ``\\\\`` are escapes (browsers
    send other backslashes as they are, e.g. in Windows paths); a parameter named twice,
    or a quote left open, is an error."""
    head, _, rest = value.partition(";")
    kind = head.strip().lower()
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t;":
            i += 1
        if i >= n:
            break
        eq = rest.find("=", i)
        if eq < 0:
            raise MultipartError("a header parameter has no value")
        key = rest[i:eq].strip().lower()
        if not _TOKEN.match(key):
            raise MultipartError("a header parameter has a bad name")
        i = eq + 1
        if i < n and rest[i] == '"':
            out, i = [], i + 1
            while True:
                if i >= n:
                    raise MultipartError("a quoted header parameter is not closed")
                ch = rest[i]
                if ch == "\\" and i + 1 < n and rest[i + 1] in '"\\':
                    out.append(rest[i + 1])
                    i += 2
                elif ch == '"':
                    i += 1
                    break
                else:
                    out.append(ch)
                    i += 1
            val = "".join(out)
            while i < n and rest[i] in " \t":
                i += 1
            if i < n and rest[i] != ";":
                raise MultipartError("junk after a quoted header parameter")
        else:
            end = rest.find(";", i)
            end = n if end < 0 else end
            val = rest[i:end].strip()
            i = end
        if key in params:
            raise MultipartError(f"header parameter {key!r} given twice")
        params[key] = val
    return kind, params


def _rfc5987(value: str) -> str:
    """Decode ``UTF-8''name%20here`` (RFC 5987 ext-value, as in ``filename*``)."""
    charset, _, rest = value.partition("'")
    _, _, encoded = rest.partition("'")
    if charset.lower() != "utf-8":
        raise MultipartError("filename* must be UTF-8")
    raw = bytearray()
    i = 0
    while i < len(encoded):
        if encoded[i] == "%":
            try:
                raw.append(int(encoded[i + 1:i + 3], 16))
            except ValueError:
                raise MultipartError("bad percent escape in filename*") from None
            i += 3
        else:
            raw += encoded[i].encode()
            i += 1
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MultipartError("filename* is not UTF-8") from None


class _State(Enum):
    PREAMBLE = 1
    AFTER_DELIMITER = 2
    HEADERS = 3
    BODY = 4
    DONE = 5


class MultipartParser:
    def __init__(self, boundary: str, *, max_header_bytes: int = 8192,
                 max_parts: int = 16) -> None:
        if not _BOUNDARY.match(boundary):
            raise MultipartError("missing or invalid multipart boundary")
        self._dash = b"--" + boundary.encode("ascii")
        self._delimiter = b"\r\n" + self._dash
        self._buf = bytearray()
        self._state = _State.PREAMBLE
        self._max_header = max_header_bytes
        self._parts_left = max_parts

    @property
    def finished(self) -> bool:
        return self._state is _State.DONE

    def feed(self, data: bytes) -> list[Event]:
        if self._state is _State.DONE:
            return []  # the epilogue is ignored (RFC 2046)
        self._buf += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        if self._state is not _State.DONE:
            raise MultipartError("the body ended before the closing boundary (truncated?)")

    def _step(self, events: list[Event]) -> bool:
        """Advance as far as the buffer allows; True if another step may progress."""
        buf = self._buf
        if self._state is _State.PREAMBLE:
            if buf.startswith(self._dash):
                del buf[:len(self._dash)]
            else:
                at = buf.find(self._delimiter)
                if at < 0:
                    if len(buf) > self._max_header:
                        raise MultipartError("no multipart boundary where one was expected")
                    return False
                del buf[:at + len(self._delimiter)]
            self._state = _State.AFTER_DELIMITER
            return True
        if self._state is _State.AFTER_DELIMITER:
            stripped = buf.lstrip(b" \t")  # transport padding
            if len(stripped) < 2:
                if len(buf) > 64:
                    raise MultipartError("junk after a boundary")
                return False
            if stripped[:2] == b"--":
                self._state = _State.DONE
                events.append(Finished())
                buf.clear()
                return False
            if stripped[:2] != b"\r\n":
                raise MultipartError("junk after a boundary")
            del buf[:len(buf) - len(stripped) + 2]
            self._state = _State.HEADERS
            return True
        if self._state is _State.HEADERS:
            if buf[:2] == b"\r\n":
                raise MultipartError("a part has no headers")
            end = buf.find(b"\r\n\r\n")
            if end < 0:
                if len(buf) > self._max_header:
                    raise MultipartError("part headers are too long")
                return False
            if end > self._max_header:
                raise MultipartError("part headers are too long")
            head = bytes(buf[:end])
            del buf[:end + 4]
            events.append(self._part_start(head))
            self._state = _State.BODY
            return True
        if self._state is _State.BODY:
            at = buf.find(self._delimiter)
            if at >= 0:
                if at:
                    events.append(PartData(bytes(buf[:at])))
                del buf[:at + len(self._delimiter)]
                events.append(PartEnd())
                self._state = _State.AFTER_DELIMITER
                return True
            keep = len(self._delimiter) - 1
            if len(buf) > keep:
                events.append(PartData(bytes(buf[:len(buf) - keep])))
                del buf[:len(buf) - keep]
            return False
        return False

    def _part_start(self, head: bytes) -> PartStart:
        self._parts_left -= 1
        if self._parts_left < 0:
            raise MultipartError("too many parts")
        try:
            text = head.decode("utf-8")
        except UnicodeDecodeError:
            raise MultipartError("part headers are not UTF-8") from None
        headers: dict[str, str] = {}
        for line in text.split("\r\n"):
            name, colon, value = line.partition(":")
            name = name.strip().lower()
            if not colon or not _TOKEN.match(name) or "\r" in value or "\n" in value:
                raise MultipartError("malformed part header")
            if name in headers:
                raise MultipartError(f"part header {name!r} given twice")
            headers[name] = value.strip()
        if "content-disposition" not in headers:
            raise MultipartError("a part has no Content-Disposition")
        kind, params = parse_header_params(headers["content-disposition"])
        if kind != "form-data" or "name" not in params:
            raise MultipartError("a part is not form-data with a name")
        filename = params.get("filename")
        if "filename*" in params:
            filename = _rfc5987(params["filename*"])
        return PartStart(params["name"], filename, headers.get("content-type"))
