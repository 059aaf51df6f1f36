"""Client for the bootstrap server's discovery API (docs/protocol.md, "Discovery").

The client trusts nothing it receives: every record is checked for ID derivation and
signatures, and must be the record of the ID that was asked for. Writes are signed
over method, path, body hash, timestamp and nonce (``signing_bytes``), which the
server module imports too, so both sides build the signed bytes from one function.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from mesh.encoding import b64e
from mesh.errors import DiscoveryRefused, DiscoveryUnavailable, FormatError, RecordError
from mesh.httpfetch import fetch
from mesh.identity import KeyPair, PreKey, Record, parse_user_id

__all__ = [
    "HEADER_ID",
    "HEADER_NONCE",
    "HEADER_POW",
    "HEADER_POW_BITS",
    "HEADER_PREKEYS_LEFT",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "MAX_POW_BITS",
    "MAX_POW_NONCE",
    "POW_DOMAIN",
    "REQUEST_DOMAIN",
    "Bundle",
    "DiscoveryClient",
    "check_pow",
    "sign_request",
    "signing_bytes",
    "solve_pow",
]

REQUEST_DOMAIN = b"parley/request/v1"
HEADER_ID = "Parley-Id"
HEADER_TIMESTAMP = "Parley-Timestamp"
HEADER_NONCE = "Parley-Nonce"
HEADER_SIGNATURE = "Parley-Signature"
NONCE_LEN = 16
# Registration proof of work (docs/protocol.md, "Registration cost").
POW_DOMAIN = b"parley/pow/v1"
HEADER_POW = "Parley-Pow"
HEADER_POW_BITS = "Parley-Pow-Bits"
HEADER_PREKEYS_LEFT = "Parley-Prekeys-Left"
MAX_POW_NONCE = 16   # bytes
# A client refuses to work for a server that asks for more: 2^28 hashes are ~3.5 min of
# one core here, a price no honest bootstrap should ask.
MAX_POW_BITS = 28


def signing_bytes(method: str, path: str, body: bytes, timestamp: int, nonce: bytes,
                  user_id: str) -> bytes:
    """What a write request's signature covers: a msgpack array with a domain tag."""
    return msgpack.packb([REQUEST_DOMAIN, method.upper(), path, hashlib.sha256(body).digest(),
                          timestamp, nonce, user_id], use_bin_type=True)


def sign_request(identity: KeyPair, method: str, path: str, body: bytes,
                 now: float) -> dict[str, str]:
    """The four headers that authenticate a write as coming from ``identity``."""
    nonce = os.urandom(NONCE_LEN)
    timestamp = int(now)
    sig = identity.sign(signing_bytes(method, path, body, timestamp, nonce, identity.user_id))
    return {HEADER_ID: identity.user_id, HEADER_TIMESTAMP: str(timestamp),
            HEADER_NONCE: b64e(nonce), HEADER_SIGNATURE: b64e(sig)}


def _pow_hasher(identity_key: bytes, timestamp: int) -> Any:
    return hashlib.sha256(msgpack.packb([POW_DOMAIN, identity_key, timestamp],
                                        use_bin_type=True))


def _pow_ok(digest: bytes, bits: int) -> bool:
    return int.from_bytes(digest, "big") >> (256 - bits) == 0


def check_pow(identity_key: bytes, timestamp: int, nonce: bytes, bits: int) -> bool:
    """True if SHA-256(msgpack([domain, identity_key, timestamp]) || nonce) starts with
    ``bits`` zero bits. Binding the identity key means one proof buys one identity; binding
    the request timestamp (which the server accepts only within its skew window) means
    proofs cannot be stockpiled for a later burst."""
    if not 0 < len(nonce) <= MAX_POW_NONCE:
        return False
    hasher = _pow_hasher(identity_key, timestamp)
    hasher.update(nonce)
    return _pow_ok(hasher.digest(), bits)


def solve_pow(identity_key: bytes, timestamp: int, bits: int) -> bytes:
    """The first 8-byte counter that satisfies ``check_pow`` (2^bits hashes on average,
    ~0.8 µs each here: 20 bits take about a second)."""
    base = _pow_hasher(identity_key, timestamp)
    counter = 0
    while True:
        nonce = counter.to_bytes(8, "big")
        hasher = base.copy()
        hasher.update(nonce)
        if _pow_ok(hasher.digest(), bits):
            return nonce
        counter += 1


@dataclass(frozen=True)
class Bundle:
    """What starts a Signal session: the peer's record and one prekey, a one-time
    prekey or, when those ran out, the record's last-resort prekey."""

    record: Record
    prekey: PreKey


class DiscoveryClient:
    """Async client for one bootstrap server; ``identity`` signs the writes.

    ``on_prekeys_left`` is called with our one-time prekey count on the server whenever
    a reply tells it (registration, update, and a header on our signed bundle claims),
    so the node can refill as soon as the server runs low instead of at its next check.
    """

    def __init__(self, base_url: str, identity: KeyPair, *, timeout: float = 10.0,
                 max_pow_bits: int = MAX_POW_BITS,
                 on_prekeys_left: Callable[[int], None] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.timeout = timeout
        self.max_pow_bits = max_pow_bits
        self.on_prekeys_left = on_prekeys_left
        self._http = AsyncHTTPClient()

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/v1/health")

    async def register(self, record: Record, one_time_prekeys: Sequence[PreKey]) -> int:
        """Register our record and prekeys; returns how many one-time prekeys it holds.

        A new identity must come with a proof of work: the server refuses the first try
        with 403 ``pow_required`` naming the difficulty, and we solve it (in a thread,
        about a second at the default 20 bits) and send again. The difficulty can rise
        meanwhile (others registered from our network); we follow it while it strictly
        rises, up to ``max_pow_bits``, so the loop is bounded.
        """
        body = {"record": record.to_json(),
                "one_time_prekeys": [p.to_json() for p in one_time_prekeys]}
        bits: int | None = None
        while True:
            try:
                reply = await self._call("POST", "/v1/users", body, signed=True, pow_bits=bits)
            except _PowRequired as exc:
                if exc.bits > self.max_pow_bits or (bits is not None and exc.bits <= bits):
                    raise DiscoveryRefused(403, "pow_required", f"the server refused our "
                                           f"proof or asks for {exc.bits} bits (we pay at "
                                           f"most {self.max_pow_bits})") from None
                bits = exc.bits
                continue
            return self._prekeys_left(reply)

    async def update(self, record: Record | None = None,
                     one_time_prekeys: Sequence[PreKey] = ()) -> int:
        """Publish a newer record and/or more prekeys; returns one-time prekeys held."""
        body: dict[str, Any] = {"one_time_prekeys": [p.to_json() for p in one_time_prekeys]}
        if record is not None:
            body["record"] = record.to_json()
        reply = await self._call("PUT", f"/v1/users/{self.identity.user_id}", body, signed=True)
        return self._prekeys_left(reply)

    async def lookup(self, user_id: str) -> Record:
        user_id = parse_user_id(user_id)
        reply = await self._call("GET", f"/v1/users/{user_id}")
        return _expect_record(reply.get("record"), user_id)

    async def claim_bundle(self, user_id: str) -> Bundle:
        user_id = parse_user_id(user_id)
        reply = await self._call("POST", f"/v1/users/{user_id}/bundle", {}, signed=True)
        record = _expect_record(reply.get("record"), user_id)
        try:
            raw = reply.get("prekey")
            is_last_resort = isinstance(raw, dict) and raw.get("id") == record.last_resort_prekey.id
            prekey = PreKey.from_json(raw, last_resort=is_last_resort)
        except FormatError as exc:
            raise RecordError(f"bundle prekey: {exc}") from None
        if is_last_resort and prekey != record.last_resort_prekey:
            raise RecordError("bundle's last-resort prekey differs from the signed record")
        return Bundle(record, prekey)

    def _prekeys_left(self, reply: dict[str, Any]) -> int:
        left = reply.get("prekeys_left")
        if type(left) is not int or left < 0:
            raise DiscoveryUnavailable("reply lacks prekeys_left")
        self._report_prekeys(left)
        return left

    def _report_prekeys(self, left: int) -> None:
        if self.on_prekeys_left is not None:
            self.on_prekeys_left(left)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                    signed: bool = False, pow_bits: int | None = None) -> dict[str, Any]:
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if signed:
            now = int(time.time())
            if pow_bits is not None:
                nonce = await asyncio.to_thread(solve_pow, self.identity.public, now, pow_bits)
                headers[HEADER_POW] = b64e(nonce)
            headers.update(sign_request(self.identity, method, path, data or b"", now))
        request = HTTPRequest(self.base_url + path, method=method, body=data, headers=headers,
                              request_timeout=self.timeout, connect_timeout=self.timeout,
                              follow_redirects=False)
        try:
            response = await fetch(self._http, request)
        except HTTPClientError as exc:
            if exc.response is None or exc.code >= 500 or exc.code < 400:
                raise DiscoveryUnavailable(f"{self.base_url}: {exc}") from None
            code, message = _error_body(exc.response.body)
            bits = exc.response.headers.get(HEADER_POW_BITS, "")
            if exc.code == 403 and code == "pow_required" and bits.isdigit() and len(bits) < 4:
                raise _PowRequired(int(bits)) from None
            raise DiscoveryRefused(exc.code, code, message) from None
        except OSError as exc:
            raise DiscoveryUnavailable(f"{self.base_url}: {exc}") from None
        left = response.headers.get(HEADER_PREKEYS_LEFT, "")
        if signed and left.isdigit() and len(left) < 10:
            self._report_prekeys(int(left))
        try:
            reply = json.loads(response.body)
        except ValueError:
            raise DiscoveryUnavailable(f"{self.base_url}: reply is not JSON") from None
        if not isinstance(reply, dict):
            raise DiscoveryUnavailable(f"{self.base_url}: reply is not a JSON object")
        return reply


class _PowRequired(Exception):
    """The server wants a registration proof of work of ``bits`` (never leaves here)."""

    def __init__(self, bits: int) -> None:
        super().__init__(bits)
        self.bits = bits


def _expect_record(obj: Any, user_id: str) -> Record:
    record = Record.from_json(obj)
    if record.user_id != user_id:
        raise RecordError(f"asked for {user_id}, got the record of {record.user_id}",
                          "wrong_record")
    return record


def _error_body(body: bytes) -> tuple[str, str]:
    try:
        obj = json.loads(body)
        return str(obj["error"])[:64], str(obj["message"])[:500]
    except (ValueError, KeyError, TypeError):
        return "unknown", body[:200].decode("utf-8", "replace")
