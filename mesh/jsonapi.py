"""JSON-over-HTTP plumbing shared by the bootstrap API and the node's UI API.

Both are small JSON APIs that must refuse bad input the same careful way: bodies are
capped before they are read, JSON is parsed strictly (no duplicate keys, no NaN), and
every refusal is the JSON object {"error": code, "message": text} with a 4xx status.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from tornado.web import HTTPError, RequestHandler, stream_request_body

__all__ = ["ApiError", "JsonHandler", "check_fields"]

_GENERIC_CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden",
                  404: "not_found", 405: "method_not_allowed", 413: "body_too_large",
                  429: "rate_limited"}


class ApiError(HTTPError):
    """A refusal that becomes the JSON response {"error": code, "message": text}."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, reason=None)
        self.code, self.message = code, message
        self.headers = headers or {}


@stream_request_body
class JsonHandler(RequestHandler):
    """Base handler: capped streamed body, strict JSON, JSON errors, no caching."""

    body_limit = 64 * 1024

    def initialize(self, **_: Any) -> None:
        self._chunks: list[bytes] = []
        self._size = 0

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def check_content_length(self) -> None:
        """Refuse a declared oversized body before reading it (call from prepare)."""
        length = self.request.headers.get("Content-Length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, "bad_request", "invalid Content-Length")
            if int(length) > self.body_limit:
                raise ApiError(413, "body_too_large",
                               f"body is larger than {self.body_limit} bytes")

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.body_limit:
            self._chunks.append(chunk)

    @property
    def body(self) -> bytes:
        if self._size > self.body_limit:
            raise ApiError(413, "body_too_large", f"body is larger than {self.body_limit} bytes")
        return b"".join(self._chunks)

    def json_body(self) -> dict[str, Any]:
        try:
            obj = json.loads(self.body, object_pairs_hook=_no_duplicates,
                             parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise ApiError(400, "malformed_json", "body is not valid JSON") from None
        if not isinstance(obj, dict):
            raise ApiError(400, "bad_request", "body must be a JSON object")
        return obj

    def send_json(self, status: int, body: Any) -> None:
        """Send ``body`` (or an already serialised JSON string) with ``status``."""
        self.set_status(status)
        self.finish(body if isinstance(body, str) else json.dumps(body, separators=(",", ":")))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if not isinstance(value, ApiError):  # refusals are answers, not server faults
            super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if status_code == 405:
            self.set_header("Allow", ", ".join(self._allowed_methods()))
        if isinstance(exc, ApiError):
            for name, value in exc.headers.items():
                self.set_header(name, value)
            code, message = exc.code, exc.message
        else:
            if isinstance(exc, HTTPError) and exc.log_message:
                # Tornado's HTTPError keeps "%s" placeholders and their args apart.
                message = exc.log_message % exc.args if exc.args else exc.log_message
            else:
                message = self._reason
            code = _GENERIC_CODES.get(status_code, "internal_error" if status_code >= 500
                                      else "bad_request")
        self.finish(json.dumps({"error": code, "message": message}, separators=(",", ":")))

    def _allowed_methods(self) -> list[str]:
        return [m for m in self.SUPPORTED_METHODS
                if getattr(type(self), m.lower()) is not getattr(RequestHandler, m.lower())]


def check_fields(obj: dict[str, Any], required: Iterable[str],
                 optional: Iterable[str] = ()) -> None:
    """Refuse a JSON object with missing or unknown fields (400 bad_request)."""
    required, optional = set(required), set(optional)
    missing = required - obj.keys()
    unknown = obj.keys() - required - optional
    if missing:
        raise ApiError(400, "bad_request", f"missing field(s): {', '.join(sorted(missing))}")
    if unknown:
        raise ApiError(400, "bad_request",
                       f"unknown field(s): {', '.join(sorted(map(str, unknown)))}")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")
