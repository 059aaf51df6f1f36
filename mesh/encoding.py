"""Strict codecs shared by every wire format: canonical base64 and checked JSON fields.

Strictness matters because the same bytes are signed and verified on different
machines: a decoder that accepted two spellings of one value would let a relay
change a message without breaking its signature.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from mesh.errors import FormatError

__all__ = ["b64d", "b64e", "require"]


def b64e(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def b64d(text: Any, *, length: int | None = None, max_length: int | None = None,
         field: str = "value") -> bytes:
    """Decode canonical standard base64 (padded, no whitespace) or raise FormatError."""
    if not isinstance(text, str):
        raise FormatError(f"{field} must be a base64 string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise FormatError(f"{field} is not valid base64") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise FormatError(f"{field} is not canonical base64")
    if length is not None and len(data) != length:
        raise FormatError(f"{field} must be {length} bytes, not {len(data)}")
    if max_length is not None and len(data) > max_length:
        raise FormatError(f"{field} is longer than {max_length} bytes")
    return data


def require(obj: Any, kind: type, field: str) -> Any:
    """Return obj if it is exactly of ``kind`` (bool is not an int here), else raise."""
    if kind is int and isinstance(obj, bool):
        raise FormatError(f"{field} must be an integer")
    if not isinstance(obj, kind):
        raise FormatError(f"{field} must be of type {kind.__name__}")
    return obj
