"""The discovery HTTP API (DESIGN §3), as Tornado handlers over bootstrap.store.

Every request is rate-limited per client address (the socket's, or what a trusted
proxy says) and every body is size-limited before it is read; every write is signed
(mesh.discovery.signing_bytes) and refused if stale or replayed. A new identity brings
a proof of work whose price rises with registrations from its address and network
(bootstrap.limits); bundle claims spend one-time prekeys only within per-claimer and
per-target budgets. All checks run before the first write, so a refused request
stores nothing (except its nonce, which is what makes a replay detectable).
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tornado.web import Application

from bootstrap.limits import (
    ClaimBudget,
    ForwardedError,
    Network,
    RegistrationQuota,
    client_address,
    parse_trusted_proxies,
)
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
    HEADER_POW,
    HEADER_POW_BITS,
    HEADER_PREKEYS_LEFT,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    MAX_POW_BITS,
    MAX_POW_NONCE,
    NONCE_LEN,
    check_pow,
    signing_bytes,
)
from mesh.encoding import b64d
from mesh.errors import FormatError, RecordError, SignatureError
from mesh.identity import PreKey, Record, parse_user_id, verify
from mesh.jsonapi import ApiError, JsonHandler, check_fields

__all__ = ["BootstrapConfig", "BootstrapContext", "make_app"]

MAX_PREKEYS_PER_REQUEST = 200
SHARED_ADDRESS_FACTOR = 10  # an address may carry this many clients' worth of requests
_SIGNER = re.compile(r"[0-9]{15}")


@dataclass(frozen=True)
class BootstrapConfig:
    body_limit: int = 64 * 1024
    max_skew: float = 300.0          # seconds a request timestamp may be off
    nonce_ttl: float = 900.0         # longer than the whole accepted skew window
    rate: float = 20.0               # requests per second per client address
    burst: int = 60
    # Addresses or networks of reverse proxies whose X-Real-IP / X-Forwarded-For
    # name the client; nobody else's are believed.
    trusted_proxies: tuple[str, ...] = ()
    pow_bits: int = 20               # a new identity's proof of work (~1 s of one core)
    registrations_per_subscriber: float = 4.0   # at the base price, per IPv4 / IPv6 /64
    registrations_per_network: float = 16.0     # ... per IPv4 /24 / IPv6 /48
    max_extra_pow_bits: int = 4      # the price doubles per doubling; past 16x: refused
    claims_per_claimer: int = 100    # one-time prekeys a claimer may take per hour
    claims_per_target: int = 30      # one-time prekeys a target may lose per hour
    claims_per_pair: int = 1         # ... one claimer may take of one target per day

    def __post_init__(self) -> None:
        try:
            parse_trusted_proxies(self.trusted_proxies)
        except ValueError as exc:
            raise ValueError(f"bad trusted proxy: {exc}") from None
        if not 0 <= self.pow_bits <= MAX_POW_BITS:
            raise ValueError(f"proof-of-work bits must be 0..{MAX_POW_BITS}")


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
    limiter: RateLimiter = field(init=False)          # per (address, claimed signer)
    address_limiter: RateLimiter = field(init=False)  # per address, all signers together
    proxies: tuple[Network, ...] = field(init=False)
    quota: RegistrationQuota = field(init=False)
    claims: ClaimBudget = field(init=False)

    def __post_init__(self) -> None:
        cfg = self.config
        self.limiter = RateLimiter(cfg.rate, cfg.burst)
        self.address_limiter = RateLimiter(cfg.rate * SHARED_ADDRESS_FACTOR,
                                           cfg.burst * SHARED_ADDRESS_FACTOR)
        self.proxies = parse_trusted_proxies(cfg.trusted_proxies)
        self.quota = RegistrationQuota(
            base_bits=cfg.pow_bits, per_subscriber=cfg.registrations_per_subscriber,
            per_network=cfg.registrations_per_network, max_extra_bits=cfg.max_extra_pow_bits)
        self.claims = ClaimBudget(per_claimer=cfg.claims_per_claimer,
                                  per_target=cfg.claims_per_target, per_pair=cfg.claims_per_pair)


@dataclass(frozen=True)
class _SignedHeaders:
    signer: str
    timestamp: int
    nonce: bytes
    signature: bytes


class ApiHandler(JsonHandler):
    """Base: per-address rate limit, capped body, request signatures."""

    ctx: BootstrapContext

    def initialize(self, ctx: BootstrapContext) -> None:  # type: ignore[override]
        super().initialize()
        self.ctx = ctx
        self.body_limit = ctx.config.body_limit

    def prepare(self) -> None:
        try:
            self.client_ip = client_address(self.request.remote_ip or "?",
                                            self.request.headers, self.ctx.proxies)
        except ForwardedError as exc:
            raise ApiError(400, "bad_forwarded_for", str(exc)) from None
        # Requests naming a signer get their own bucket at the address (the signature is
        # checked later; a forged id only spends that id's bucket at the forger's own
        # address), so users behind one NAT are not throttled by a neighbour's flood
        # unless it exceeds SHARED_ADDRESS_FACTOR times one client's rate.
        signer = self.request.headers.get(HEADER_ID, "")
        key = f"{self.client_ip} {signer}" if _SIGNER.fullmatch(signer) else self.client_ip
        now = self.ctx.clock()
        wait = max(self.ctx.limiter.check(key, now),
                   self.ctx.address_limiter.check(self.client_ip, now))
        if wait:
            raise ApiError(429, "rate_limited", "too many requests from this address",
                           {"Retry-After": RateLimiter.retry_after_header(wait)})
        self.check_content_length()

    def _accepted(self, record: Record) -> None:
        if self.ctx.on_record is not None:
            self.ctx.on_record(record)

    def signed_headers(self) -> _SignedHeaders:
        """The signature headers, well-formed and fresh (not yet verified)."""
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
        if abs(self.ctx.clock() - int(stamp)) > self.ctx.config.max_skew:
            raise ApiError(401, "stale_request",
                           "request timestamp is too far from the server's clock")
        return _SignedHeaders(signer, int(stamp), nonce, signature)

    def authenticate(self, key: bytes | None = None,
                     signed: _SignedHeaders | None = None) -> str:
        """Check the request signature; return the signer's user id.

        ``key`` is the identity key to verify against (registration carries it in the
        body); otherwise the signer must be a registered user, and the reply tells them
        how many one-time prekeys they have left (``Parley-Prekeys-Left``).
        """
        signed = signed or self.signed_headers()
        signer = signed.signer
        if key is None:
            user = get_user(self.ctx.conn, signer)
            if user is None:
                raise ApiError(401, "unknown_signer", "the signer is not registered")
            key = user.identity_key
        message = signing_bytes(self.request.method or "", self.request.path, self.body,
                                signed.timestamp, signed.nonce, signer)
        try:
            verify(key, message, signed.signature)
        except SignatureError:
            raise ApiError(401, "bad_signature", "request signature does not verify") from None
        now = self.ctx.clock()
        if not remember_nonce(self.ctx.conn, signer, signed.nonce, now,
                              self.ctx.config.nonce_ttl):
            raise ApiError(401, "replayed_request", "this request was already received")
        self.set_header(HEADER_PREKEYS_LEFT, str(count_prekeys(self.ctx.conn, signer)))
        return signer

    def check_pow(self, identity_key: bytes, signed: _SignedHeaders) -> None:
        """A new identity pays for itself: refused (429) when its address and network
        registered too many lately, else it must carry a proof of work at the price
        of the moment (403 ``pow_required`` with ``Parley-Pow-Bits`` otherwise)."""
        now = self.ctx.clock()
        bits = self.ctx.quota.required_bits(self.client_ip, now)
        if bits is None:
            wait = self.ctx.quota.retry_after(self.client_ip, now)
            raise ApiError(429, "registration_quota",
                           "too many new identities from this network lately",
                           {"Retry-After": RateLimiter.retry_after_header(wait)})
        if bits == 0:
            return
        try:
            nonce = b64d(self.request.headers.get(HEADER_POW, ""), field="proof of work")
        except FormatError:
            nonce = b""
        if not (0 < len(nonce) <= MAX_POW_NONCE
                and check_pow(identity_key, signed.timestamp, nonce, bits)):
            raise ApiError(403, "pow_required",
                           f"a new identity needs a {bits}-bit proof of work "
                           f"(header {HEADER_POW}, see docs/protocol.md)",
                           {HEADER_POW_BITS: str(bits)})


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
        signed = self.signed_headers()
        if signed.signer != record.user_id:
            raise ApiError(401, "signer_mismatch", "request must be signed by the record's key")
        existing = get_user(self.ctx.conn, record.user_id)
        if existing is None:
            self.check_pow(record.identity_key, signed)
        self.authenticate(record.identity_key, signed)
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
        if existing is None:
            self.ctx.quota.record(self.client_ip, self.ctx.clock())
        left = count_prekeys(conn, record.user_id)
        self.set_header(HEADER_PREKEYS_LEFT, str(left))
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
        left = count_prekeys(conn, user_id)
        self.set_header(HEADER_PREKEYS_LEFT, str(left))
        self.send_json(200, {"id": user_id, "prekeys_left": left})
        if record is not None:
            self._accepted(record)


class BundleHandler(ApiHandler):
    def post(self, raw_id: str) -> None:
        user_id = _path_user(raw_id)
        if self.body.strip() not in (b"", b"{}"):
            raise ApiError(400, "bad_request", "bundle requests carry no body (or {})")
        claimer = self.authenticate()
        user = get_user(self.ctx.conn, user_id)
        if user is None:
            raise ApiError(404, "unknown_user", "no user with this id is registered")
        conn, now, budget = self.ctx.conn, self.ctx.clock(), self.ctx.claims
        prekey = None
        if budget.allows(claimer, user_id, now):
            with conn:
                conn.execute("BEGIN IMMEDIATE")
                prekey = claim_prekey(conn, user_id)
            if prekey is not None:
                budget.spend(claimer, user_id, now)
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
