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

from tornado.web import Application

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
from mesh.jsonapi import ApiError, JsonHandler, check_fields

__all__ = ["BootstrapConfig", "BootstrapContext", "make_app"]

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
    # Called with every record the API accepted (after it is committed and answered);
    # the server points it at DhtNode.mirror, which returns at once (a background task).
    on_record: Callable[[Record], None] | None = None
    limiter: RateLimiter = field(init=False)

    def __post_init__(self) -> None:
        self.limiter = RateLimiter(self.config.rate, self.config.burst)


class ApiHandler(JsonHandler):
    """Base: per-address rate limit, capped body, request signatures."""

    ctx: BootstrapContext

    def initialize(self, ctx: BootstrapContext) -> None:  # type: ignore[override]
        super().initialize()
        self.ctx = ctx
        self.body_limit = ctx.config.body_limit

    def prepare(self) -> None:
        wait = self.ctx.limiter.check(self.request.remote_ip or "?", self.ctx.clock())
        if wait:
            raise ApiError(429, "rate_limited", "too many requests from this address",
                           {"Retry-After": RateLimiter.retry_after_header(wait)})
        self.check_content_length()

    def _accepted(self, record: Record) -> None:
        if self.ctx.on_record is not None:
            self.ctx.on_record(record)

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

def _path_user(raw: str) -> str:
    try:
        return parse_user_id(raw)
    except FormatError:
        raise ApiError(400, "bad_user_id", "user id in the path must be 15 digits") from None


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
        check_fields(body, {"record", "one_time_prekeys"})
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
        self._accepted(record)


class UserHandler(ApiHandler):
    def get(self, raw_id: str) -> None:
        user = get_user(self.ctx.conn, _path_user(raw_id))
        if user is None:
            raise ApiError(404, "unknown_user", "no user with this id is registered")
        self.send_json(200, '{"record":' + user.record_json + "}")

    def put(self, raw_id: str) -> None:
        user_id = _path_user(raw_id)
        body = self.json_body()
        check_fields(body, (), {"record", "one_time_prekeys"})
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
        if record is not None:
            self._accepted(record)


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
