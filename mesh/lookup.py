"""Finding a user's record: the bootstrap first, the DHT when it fails (DESIGN §3).

``Discovery`` is what the layers above call. In ``auto`` mode it asks the bootstrap
server and falls back to the DHT when the server is unreachable, slow, refuses, or
serves a record that does not verify; ``dht`` asks only the DHT, ``bootstrap`` only
the server. Both sources are verified the same way (ID derivation and signatures),
and when both answer the higher seq wins. Nothing is cached here, so a forged or
stale record can never stick.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from enum import Enum
from typing import Any
from urllib.parse import urlsplit

from mesh.dht import DhtNode
from mesh.dht_records import parse_dht_contact
from mesh.discovery import Bundle, DiscoveryClient
from mesh.errors import (
    ContactError,
    DhtError,
    DiscoveryError,
    DiscoveryRefused,
    DiscoveryUnavailable,
    RecordError,
    RecordNotFound,
)
from mesh.identity import Record, parse_user_id

__all__ = ["Discovery", "DiscoveryMode", "bootstrap_dht_contact"]


class DiscoveryMode(Enum):
    AUTO = "auto"            # bootstrap first, DHT on failure or timeout
    BOOTSTRAP = "bootstrap"  # no DHT (--no-dht)
    DHT = "dht"              # DHT only (--discovery dht)


class Discovery:
    """Record lookups over a bootstrap client and/or a DHT node."""

    def __init__(self, *, bootstrap: DiscoveryClient | None = None,
                 dht: DhtNode | None = None, mode: DiscoveryMode = DiscoveryMode.AUTO,
                 bootstrap_timeout: float = 5.0) -> None:
        if (mode is not DiscoveryMode.DHT and bootstrap is None and
                (mode is DiscoveryMode.BOOTSTRAP or dht is None)):
            raise ValueError(f"{mode.value} discovery needs a bootstrap client")
        if mode is DiscoveryMode.DHT and dht is None:
            raise ValueError("dht discovery needs a DHT node")
        self.bootstrap = bootstrap if mode is not DiscoveryMode.DHT else None
        self.dht = dht if mode is not DiscoveryMode.BOOTSTRAP else None
        self.mode = mode
        self.bootstrap_timeout = bootstrap_timeout

    async def lookup(self, user_id: str, *, identity_key: bytes | None = None,
                     newer_than: int = 0) -> Record:
        """The newest verified record for ``user_id``.

        ``identity_key``: only accept records with this key (a contact we already
        know). ``newer_than``: a seq the caller already has and found useless (its
        endpoints did not answer); a bootstrap answer not above it sends the lookup on
        to the DHT as well. Raises RecordNotFound when a source answered but none had
        a valid record, DiscoveryUnavailable when no source answered at all.
        """
        user_id = parse_user_id(user_id)
        found: list[Record] = []
        errors: list[Exception] = []
        if self.bootstrap is not None:
            try:
                record = await self._from_bootstrap(user_id)
                if identity_key is not None and record.identity_key != identity_key:
                    raise RecordError("the bootstrap's record carries another key", "wrong_key")
                found.append(record)
            except (DiscoveryError, RecordError, TimeoutError) as exc:
                errors.append(exc)
        if self.dht is not None and (not found or found[0].seq <= newer_than):
            try:
                found.append(await self.dht.lookup(user_id, identity_key=identity_key))
            except DhtError as exc:
                errors.append(exc)
        if found:
            return max(found, key=lambda r: r.seq)
        raise _no_record(user_id, errors)

    async def bundle(self, user_id: str, *, identity_key: bytes | None = None) -> Bundle:
        """What starts a session: the bootstrap's bundle (with a one-time prekey) if it
        answers, otherwise the DHT record with its last-resort prekey (DESIGN §2)."""
        user_id = parse_user_id(user_id)
        if self.bootstrap is not None:
            try:
                async with asyncio.timeout(self.bootstrap_timeout):
                    bundle = await self.bootstrap.claim_bundle(user_id)
                if identity_key is not None and bundle.record.identity_key != identity_key:
                    raise RecordError("the bootstrap's record carries another key", "wrong_key")
                return bundle
            except (DiscoveryError, RecordError, TimeoutError):
                if self.dht is None:
                    raise
        assert self.dht is not None
        record = await self.dht.lookup(user_id, identity_key=identity_key)
        return Bundle(record, record.last_resort_prekey)

    async def _from_bootstrap(self, user_id: str) -> Record:
        assert self.bootstrap is not None
        async with asyncio.timeout(self.bootstrap_timeout):
            return await self.bootstrap.lookup(user_id)


def _no_record(user_id: str, errors: list[Exception]) -> Exception:
    """RecordNotFound if some source answered (a 404, a bad record, an empty DHT
    lookup); DiscoveryUnavailable if every source was unreachable."""
    answered = [e for e in errors
                if isinstance(e, DiscoveryRefused | RecordError | RecordNotFound)]
    summary = "; ".join(f"{type(e).__name__}: {e}" for e in errors) or "no source configured"
    if answered or not errors:
        return RecordNotFound(f"no valid record for {user_id} ({summary})")
    return DiscoveryUnavailable(f"no discovery source answered for {user_id} ({summary})")


async def bootstrap_dht_contact(client: DiscoveryClient) -> tuple[str, int] | None:
    """The bootstrap's DHT node as an (ip, port) to join through, from /v1/health.

    An unspecified host (the server listens on all addresses) means the host the
    client reached the server at; a host name is resolved. None when the server runs
    no DHT node; ContactError when it advertises something unusable.
    """
    health: dict[str, Any] = await client.health()
    dht = health.get("dht")
    if dht is None:
        return None
    if not isinstance(dht, dict) or not isinstance(dht.get("host"), str) \
            or type(dht.get("port")) is not int:
        raise ContactError("the bootstrap's health reply has a malformed dht address")
    host, port = dht["host"], dht["port"]
    try:
        if ipaddress.ip_address(host).is_unspecified:
            host = urlsplit(client.base_url).hostname or ""
    except ValueError:
        raise ContactError(f"the bootstrap advertises a DHT host that is no IP: {host!r}") \
            from None
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, port,
                                                                 type=socket.SOCK_DGRAM)
        except OSError as exc:
            raise ContactError(f"cannot resolve the bootstrap's host {host!r}: {exc}") \
                from None
        host = infos[0][4][0]
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return parse_dht_contact(text)
