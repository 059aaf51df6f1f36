"""Client for the bootstrap server's discovery API (docs/protocol.md, "Discovery").

The client trusts nothing it receives: every record is checked for ID derivation and
signatures, and must be the record of the ID that was asked for. Writes are signed
over method, path, body hash, timestamp and nonce (``signing_bytes``), which the
server module imports too, so both sides build the signed bytes from one function.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgpack
from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from mesh.encoding import FormatError, b64e
from mesh.errors import DiscoveryRefused, DiscoveryUnavailable, RecordError
from mesh.identity import KeyPair, PreKey, Record, parse_user_id

__all__ = [
    "HEADER_ID",
    "HEADER_NONCE",
    "HEADER_SIGNATURE",
    "HEADER_TIMESTAMP",
    "REQUEST_DOMAIN",
    "Bundle",
    "DiscoveryClient",
    "sign_request",
    "signing_bytes",
]

REQUEST_DOMAIN = b"parley/request/v1"
HEADER_ID = "Parley-Id"
HEADER_TIMESTAMP = "Parley-Timestamp"
HEADER_NONCE = "Parley-Nonce"
HEADER_SIGNATURE = "Parley-Signature"
NONCE_LEN = 16


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


@dataclass(frozen=True)
class Bundle:
    """What starts a Signal session: the peer's record and one prekey, a one-time
    prekey or, when those ran out, the record's last-resort prekey."""

    record: Record
    prekey: PreKey


class DiscoveryClient:
    """Async client for one bootstrap server; ``identity`` signs the writes."""

    def __init__(self, base_url: str, identity: KeyPair, *, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.identity = identity
        self.timeout = timeout
        self._http = AsyncHTTPClient()

    async def health(self) -> dict[str, Any]:
        return await self._call("GET", "/v1/health")

    async def register(self, record: Record, one_time_prekeys: Sequence[PreKey]) -> int:
        """Register our record and prekeys; returns how many one-time prekeys it holds."""
        body = {"record": record.to_json(),
                "one_time_prekeys": [p.to_json() for p in one_time_prekeys]}
        reply = await self._call("POST", "/v1/users", body, signed=True)
        return _prekeys_left(reply)

    async def update(self, record: Record | None = None,
                     one_time_prekeys: Sequence[PreKey] = ()) -> int:
        """Publish a newer record and/or more prekeys; returns one-time prekeys held."""
        body: dict[str, Any] = {"one_time_prekeys": [p.to_json() for p in one_time_prekeys]}
        if record is not None:
            body["record"] = record.to_json()
        reply = await self._call("PUT", f"/v1/users/{self.identity.user_id}", body, signed=True)
        return _prekeys_left(reply)

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

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                    signed: bool = False) -> dict[str, Any]:
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        if signed:
            headers.update(sign_request(self.identity, method, path, data or b"", time.time()))
        request = HTTPRequest(self.base_url + path, method=method, body=data, headers=headers,
                              request_timeout=self.timeout, connect_timeout=self.timeout,
                              follow_redirects=False)
        try:
            response = await self._http.fetch(request)
        except HTTPClientError as exc:
            if exc.response is None or exc.code >= 500 or exc.code < 400:
                raise DiscoveryUnavailable(f"{self.base_url}: {exc}") from None
            code, message = _error_body(exc.response.body)
            raise DiscoveryRefused(exc.code, code, message) from None
        except OSError as exc:
            raise DiscoveryUnavailable(f"{self.base_url}: {exc}") from None
        try:
            reply = json.loads(response.body)
        except ValueError:
            raise DiscoveryUnavailable(f"{self.base_url}: reply is not JSON") from None
        if not isinstance(reply, dict):
            raise DiscoveryUnavailable(f"{self.base_url}: reply is not a JSON object")
        return reply


def _expect_record(obj: Any, user_id: str) -> Record:
    record = Record.from_json(obj)
    if record.user_id != user_id:
        raise RecordError(f"asked for {user_id}, got the record of {record.user_id}",
                          "wrong_record")
    return record


def _prekeys_left(reply: dict[str, Any]) -> int:
    left = reply.get("prekeys_left")
    if type(left) is not int or left < 0:
        raise DiscoveryUnavailable("reply lacks prekeys_left")
    return left


def _error_body(body: bytes) -> tuple[str, str]:
    try:
        obj = json.loads(body)
        return str(obj["error"])[:64], str(obj["message"])[:500]
    except (ValueError, KeyError, TypeError):
        return "unknown", body[:200].decode("utf-8", "replace")
