"""The discovery HTTP API (DESIGN §3), as Tornado handlers over bootstrap.store.

Every request is rate-limited per client address and every body is size-limited
before it is read; every write is signed (mesh.discovery.signing_bytes) and refused
if stale or replayed. All checks run before the first write, so a refused request
stores nothing (except its nonce, which is what makes a replay detectable).
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tornado.web import Application, HTTPError, RequestHandler, stream_request_body

from bootstrap.openapi import openapi_document
from bootstrap.ratelimit import RateLimiter
from bootstrap.store import (
    MAX_PREKEYS,
    claim_prekey,
    count_prekeys,
    get_user,
    put_prekeys,
    remember_nonce,
    save_record,
)
from mesh.discovery import (
    HEADER_ID,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    NONCE_LEN,
    signing_bytes,
)
from mesh.encoding import FormatError, b64d
from mesh.errors import RecordError, SignatureError
from mesh.identity import PreKey, Record, parse_user_id, verify

__all__ = ["ApiError", "BootstrapConfig", "BootstrapContext", "make_app"]

MAX_PREKEYS_PER_REQUEST = 200


@dataclass(frozen=True)
class BootstrapConfig:
    body_limit: int = 64 * 1024
    max_skew: float = 300.0          # seconds a request timestamp may be off
    nonce_ttl: float = 900.0         # longer than the whole accepted skew window
    rate: float = 20.0               # requests per second per client address
    burst: int = 60


@dataclass
class BootstrapContext:
    """What every handler needs; built once by the server, passed via initialize()."""

    conn: sqlite3.Connection
    config: BootstrapConfig = field(default_factory=BootstrapConfig)
    clock: Callable[[], float] = time.time
    dht_address: tuple[str, int] | None = None
    limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.config.rate, self.config.burst)


class ApiError(HTTPError):
    """A refusal that becomes the JSON response {"error": code, "message": text}."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(status, reason=None)
        self.code, self.message = code, message
        self.headers = headers or {}


_GENERIC_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed",
                  413: "body_too_large", 429: "rate_limited"}


@stream_request_body
class ApiHandler(RequestHandler):
    """Base: JSON errors, rate limit, streamed and capped body, request signatures."""

    ctx: BootstrapContext

    def initialize(self, ctx: BootstrapContext) -> None:
        self.ctx = ctx
        self._chunks: list[bytes] = []
        self._size = 0

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.set_header("Cache-Control", "no-store")
        self.set_header("X-Content-Type-Options", "nosniff")

    def prepare(self) -> None:
        wait = self.ctx.limiter.check(self.request.remote_ip or "?", self.ctx.clock())
        if wait:
            raise ApiError(429, "rate_limited", "too many requests from this address",
                           {"Retry-After": RateLimiter.retry_after_header(wait)})
        length = self.request.headers.get("Content-Length")
        if length is not None:
            if not length.isdigit():
                raise ApiError(400, "bad_request", "invalid Content-Length")
            if int(length) > self.ctx.config.body_limit:
                raise ApiError(413, "body_too_large",
                               f"body is larger than {self.ctx.config.body_limit} bytes")

    def data_received(self, chunk: bytes) -> None:
        self._size += len(chunk)
        if self._size <= self.ctx.config.body_limit:
            self._chunks.append(chunk)

    @property
    def body(self) -> bytes:
        if self._size > self.ctx.config.body_limit:
            raise ApiError(413, "body_too_large",
                           f"body is larger than {self.ctx.config.body_limit} bytes")
        return b"".join(self._chunks)

    def json_body(self) -> dict[str, Any]:
        raw = self.body
        try:
            obj = json.loads(raw, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
        except (ValueError, RecursionError):
            raise ApiError(400, "malformed_json", "body is not valid JSON") from None
        if not isinstance(obj, dict):
            raise ApiError(400, "bad_request", "body must be a JSON object")
        return obj

    def authenticate(self, key: bytes | None = None) -> str:
        """Check the request signature; return the signer's user id.

        ``key`` is the identity key to verify against (registration carries it in the
        body); otherwise the signer must be a registered user.
        """
        headers = self.request.headers
        try:
            signer = parse_user_id(headers.get(HEADER_ID, ""))
            stamp = headers.get(HEADER_TIMESTAMP, "")
            if not stamp.isdigit() or len(stamp) > 12:
                raise FormatError("timestamp must be unix seconds")
            nonce = b64d(headers.get(HEADER_NONCE, ""), length=NONCE_LEN, field="nonce")
            signature = b64d(headers.get(HEADER_SIGNATURE, ""), length=64, field="signature")
        except FormatError as exc:
            raise ApiError(401, "unauthenticated",
                           f"missing or malformed signature headers ({exc})") from None
        now = self.ctx.clock()
        if abs(now - int(stamp)) > self.ctx.config.max_skew:
            raise ApiError(401, "stale_request",
                           "request timestamp is too far from the server's clock")
        if key is None:
            user = get_user(self.ctx.conn, signer)
            if user is None:
                raise ApiError(401, "unknown_signer", "the signer is not registered")
            key = user.identity_key
        message = signing_bytes(self.request.method or "", self.request.path, self.body,
                                int(stamp), nonce, signer)
        try:
            verify(key, message, signature)
        except SignatureError:
            raise ApiError(401, "bad_signature", "request signature does not verify") from None
        if not remember_nonce(self.ctx.conn, signer, nonce, now, self.ctx.config.nonce_ttl):
            raise ApiError(401, "replayed_request", "this request was already received")
        return signer

    def send_json(self, status: int, body: dict[str, Any] | str) -> None:
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
            message = exc.log_message if isinstance(exc, HTTPError) and exc.log_message \
                else self._reason
            code = _GENERIC_CODES.get(status_code, "internal_error" if status_code >= 500
                                      else "bad_request")
        self.finish(json.dumps({"error": code, "message": message}, separators=(",", ":")))


    def _allowed_methods(self) -> list[str]:
        return [m for m in self.SUPPORTED_METHODS
                if getattr(type(self), m.lower()) is not getattr(RequestHandler, m.lower())]


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate key")
    return obj


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _path_user(raw: str) -> str:
    try:
        return parse_user_id(raw)
    except FormatError:
        raise ApiError(400, "bad_user_id", "user id in the path must be 15 digits") from None


def _fields(obj: dict[str, Any], required: set[str], optional: set[str] = frozenset()) -> None:
    missing = required - obj.keys()
    unknown = obj.keys() - required - optional
    if missing:
        raise ApiError(400, "bad_request", f"missing field(s): {', '.join(sorted(missing))}")
    if unknown:
        raise ApiError(400, "bad_request", f"unknown field(s): {', '.join(sorted(unknown))}")


def _record(obj: Any) -> Record:
    try:
        return Record.from_json(obj)
    except RecordError as exc:
        raise ApiError(400, exc.reason, f"invalid record: {exc}") from None


def _prekeys(obj: Any) -> list[PreKey]:
    if not isinstance(obj, list):
        raise ApiError(400, "bad_request", "one_time_prekeys must be an array")
    if len(obj) > MAX_PREKEYS_PER_REQUEST:
        raise ApiError(400, "too_many_prekeys",
                       f"at most {MAX_PREKEYS_PER_REQUEST} prekeys per request")
    try:
        keys = [PreKey.from_json(item, field_name="one_time_prekeys[]") for item in obj]
    except FormatError as exc:
        raise ApiError(400, "bad_prekey", str(exc)) from None
    if len({k.id for k in keys}) != len(keys):
        raise ApiError(400, "bad_prekey", "duplicate prekey ids")
    return keys


class HealthHandler(ApiHandler):
    def get(self) -> None:
        dht = None
        if self.ctx.dht_address:
            dht = {"host": self.ctx.dht_address[0], "port": self.ctx.dht_address[1]}
        self.send_json(200, {"status": "ok", "api": "v1", "dht": dht})


class OpenApiHandler(ApiHandler):
    def get(self) -> None:
        self.send_json(200, openapi_document())


class UsersHandler(ApiHandler):
    def post(self) -> None:
        body = self.json_body()
        _fields(body, {"record", "one_time_prekeys"})
        record = _record(body["record"])
        prekeys = _prekeys(body["one_time_prekeys"])
        signer = self.authenticate(record.identity_key)
        if signer != record.user_id:
            raise ApiError(401, "signer_mismatch", "request must be signed by the record's key")
        existing = get_user(self.ctx.conn, record.user_id)
        if existing is not None and existing.identity_key != record.identity_key:
            raise ApiError(409, "id_taken",
                           "this id is registered to another key; generate a new identity")
        if existing is not None and record.seq <= existing.seq:
            raise ApiError(409, "stale_seq", f"record seq must be above {existing.seq}")
        held = count_prekeys(self.ctx.conn, record.user_id) if existing else 0
        if held + len(prekeys) > MAX_PREKEYS:
            raise ApiError(409, "too_many_prekeys", f"at most {MAX_PREKEYS} prekeys are held")
        conn = self.ctx.conn
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            save_record(conn, record, self.ctx.clock())
            put_prekeys(conn, record.user_id, prekeys)
        left = count_prekeys(conn, record.user_id)
        self.send_json(200 if existing else 201, {"id": record.user_id, "prekeys_left": left})


class UserHandler(ApiHandler):
    def get(self, raw_id: str) -> None:
        user = get_user(self.ctx.conn, _path_user(raw_id))
        if user is None:
            raise ApiError(404, "unknown_user", "no user with this id is registered")
        self.send_json(200, '{"record":' + user.record_json + "}")

    def put(self, raw_id: str) -> None:
        user_id = _path_user(raw_id)
        body = self.json_body()
        _fields(body, set(), {"record", "one_time_prekeys"})
        if not body:
            raise ApiError(400, "bad_request", "nothing to update")
        record = _record(body["record"]) if "record" in body else None
        prekeys = _prekeys(body.get("one_time_prekeys", []))
        existing = get_user(self.ctx.conn, user_id)
        if existing is None:
            raise ApiError(404, "unknown_user", "no user with this id is registered")
        signer = self.authenticate(existing.identity_key)
        if signer != user_id:
            raise ApiError(403, "forbidden", "only the user may update their record")
        if record is not None:
            if record.user_id != user_id or record.identity_key != existing.identity_key:
                raise ApiError(409, "id_taken", "record is for another id or key")
            if record.seq <= existing.seq:
                raise ApiError(409, "stale_seq", f"record seq must be above {existing.seq}")
        conn = self.ctx.conn
        if count_prekeys(conn, user_id) + len(prekeys) > MAX_PREKEYS:
            raise ApiError(409, "too_many_prekeys", f"at most {MAX_PREKEYS} prekeys are held")
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            if record is not None:
                save_record(conn, record, self.ctx.clock())
            put_prekeys(conn, user_id, prekeys)
        self.send_json(200, {"id": user_id, "prekeys_left": count_prekeys(conn, user_id)})


class BundleHandler(ApiHandler):
    def post(self, raw_id: str) -> None:
        user_id = _path_user(raw_id)
        if self.body.strip() not in (b"", b"{}"):
            raise ApiError(400, "bad_request", "bundle requests carry no body (or {})")
        self.authenticate()
        user = get_user(self.ctx.conn, user_id)
        if user is None:
            raise ApiError(404, "unknown_user", "no user with this id is registered")
        conn = self.ctx.conn
        with conn:
            conn.execute("BEGIN IMMEDIATE")
            prekey = claim_prekey(conn, user_id)
        if prekey is None:
            prekey_json = json.loads(user.record_json)["last_resort_prekey"]
        else:
            prekey_json = prekey.to_json()
        self.send_json(200, '{"record":' + user.record_json + ',"prekey":'
                       + json.dumps(prekey_json, separators=(",", ":")) + "}")


class NotFoundHandler(ApiHandler):
    def prepare(self) -> None:
        super().prepare()
        raise ApiError(404, "not_found", "no such endpoint")


def make_app(ctx: BootstrapContext) -> Application:
    user = r"/v1/users/([^/]+)"
    return Application(
        [
            (r"/v1/health", HealthHandler, {"ctx": ctx}),
            (r"/v1/openapi\.json", OpenApiHandler, {"ctx": ctx}),
            (r"/v1/users", UsersHandler, {"ctx": ctx}),
            (user, UserHandler, {"ctx": ctx}),
            (user + r"/bundle", BundleHandler, {"ctx": ctx}),
        ],
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
    )
