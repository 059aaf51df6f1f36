"""The sans-IO half of the DHT mirror: keys, value checks, storage policy, contacts.

Nothing here touches a socket or a clock: time comes in as ``now`` (unix seconds),
which lets the unit tests drive expiry, eviction and the publish schedule with a fake
clock. mesh/dht.py is the adapter that puts these on the `kademlia` package's UDP
protocol. See docs/protocol.md, "DHT".

Why verify in storage and not only at lookup: a node that kept whatever a STORE RPC
brought would let anyone overwrite a good record with a forged or replayed one, and
every lookup through that node would then have to find the good copy elsewhere. So a
node keeps at most one value per key, the verified record with the highest seq, and a
STORE that does not beat it changes nothing.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

import msgpack
from kademlia.storage import IStorage

from mesh.errors import (
    ContactError,
    RecordError,
)
from mesh.identity import MAX_RECORD_BYTES, RECORD_DOMAIN, Record, parse_user_id
from mesh.ratelimit import TokenBuckets

__all__ = [
    "DHT_KEY_DOMAIN",
    "KEY_LEN",
    "MAX_CONTACTS",
    "MAX_VALUE_BYTES",
    "RECORD_TTL",
    "PublishAction",
    "PublishSchedule",
    "PublishStep",
    "RecordStorage",
    "StoreOutcome",
    "dht_digest",
    "format_dht_contact",
    "parse_dht_contact",
    "parse_dht_contacts",
    "record_key",
    "verify_value",
]

DHT_KEY_DOMAIN = b"parley-record"
KEY_LEN = 20                       # Kademlia's keyspace: 160 bits (SHA-1 digests)
MAX_VALUE_BYTES = MAX_RECORD_BYTES  # 4096: half of rpcudp's 8 KiB request limit
RECORD_TTL = 7 * 24 * 3600         # a record older than this (by its signed updated_at) is dead
MAX_CONTACTS = 8                   # DHT contacts carried in an invite
MAX_CONTACT_LEN = 64               # "[" + 45-char IPv6 + "]:" + 5 digits fits


# Keys and values


def record_key(user_id: str) -> bytes:
    """The application key: SHA-256("parley-record" || user id as ASCII)."""
    return hashlib.sha256(DHT_KEY_DOMAIN + parse_user_id(user_id).encode()).digest()


def dht_digest(user_id: str) -> bytes:
    """The 160-bit Kademlia key: SHA-1 of the application key, which is exactly what the
    `kademlia` package's ``Server.set(record_key(id), ...)`` would use (kademlia.utils.digest)."""
    return hashlib.sha1(record_key(user_id)).digest()  # noqa: S324 -- Kademlia's keyspace


def _peek(value: bytes) -> tuple[str, int, int]:
    """(user_id, seq, updated_at) without verifying: cheap filters run before the
    expensive ID derivation (5200 SHA-512 rounds) and signature checks."""
    try:
        body, _signature = msgpack.unpackb(value, raw=False)
        fields = msgpack.unpackb(body, raw=False)
        domain, user_id, seq, updated_at = fields[0], fields[1], fields[6], fields[7]
    except (ValueError, TypeError, IndexError, msgpack.UnpackException):
        raise RecordError("value is not a record") from None
    if domain != RECORD_DOMAIN or not isinstance(user_id, str) or type(seq) is not int \
            or type(updated_at) is not int:
        raise RecordError("value is not a record")
    return user_id, seq, updated_at


def _check_bytes(value: Any) -> bytes:
    if type(value) is not bytes:
        raise RecordError("DHT value must be bytes", "bad_value")
    if not 0 < len(value) <= MAX_VALUE_BYTES:
        raise RecordError(f"DHT value must be 1..{MAX_VALUE_BYTES} bytes", "bad_value")
    return value


def _check_fresh(updated_at: int, now: float, ttl: float) -> None:
    if now - updated_at > ttl:
        raise RecordError("record is older than the DHT's time to live", "stale_record")


def verify_value(key: bytes, value: Any, *, now: float, ttl: float = RECORD_TTL) -> Record:
    """A value fetched from (or stored into) the DHT under ``key``, fully checked.

    Type and size first, then that it is the record of the ID the key belongs to, that
    it has not expired, and only then Record.decode (strict canonical form, ID
    derivation, both signatures). Raises RecordError with a reason code otherwise.
    """
    value = _check_bytes(value)
    user_id, _seq, updated_at = _peek(value)
    try:
        if dht_digest(user_id) != key:
            raise RecordError("record is stored under another ID's key", "wrong_key")
    except ValueError:  # FormatError: not 15 digits
        raise RecordError("record id must be 15 digits") from None
    _check_fresh(updated_at, now, ttl)
    return Record.decode(value)


# Storage policy


class StoreOutcome(Enum):
    STORED = "stored"          # new key, or a newer seq replaced the old record
    REFRESHED = "refreshed"    # the very record we hold, received again
    KEPT_NEWER = "kept_newer"  # we hold the same or a higher seq; the offer was dropped
    REJECTED = "rejected"      # not a valid, fresh record for this key (or rate limited)

    @property
    def holds_offer(self) -> bool:
        """Whether the node now holds this record or a newer one (the STORE reply)."""
        return self is not StoreOutcome.REJECTED


@dataclass
class _Entry:
    record: Record
    value: bytes
    stored_at: float  # last time this exact value arrived (or was republished by us)


class RecordStorage(IStorage):
    """kademlia's storage interface, keeping one verified record per key.

    ``clock`` gives unix seconds. A value is held until its record's signed
    ``updated_at`` is ``ttl`` seconds old (so replicas republishing each other cannot
    keep a dead record alive), and at most ``max_entries`` keys are held (the entry
    refreshed longest ago is evicted first).
    """

    def __init__(self, clock: Any, *, ttl: float = RECORD_TTL, max_entries: int = 10_000,
                 verify_rate: float = 100.0, verify_burst: float = 200.0) -> None:
        self.clock = clock
        self.ttl = ttl
        self.max_entries = max_entries
        self._data: OrderedDict[bytes, _Entry] = OrderedDict()  # oldest stored_at first
        # A forged STORE costs its sender one UDP packet and us ~2.5 ms of SHA-512:
        # full verifications are budgeted per source address.
        self._budget = TokenBuckets(verify_rate, verify_burst)
        self.last_rejection: RecordError | None = None

    def offer(self, key: Any, value: Any, source: str | None = None) -> StoreOutcome:
        """Consider a value for ``key``; never raises (the reason of the last refusal is
        kept in ``last_rejection`` for tests and debug logs)."""
        now = self.clock()
        try:
            if type(key) is not bytes or len(key) != KEY_LEN:
                raise RecordError("DHT key must be 20 bytes", "bad_key")
            value = _check_bytes(value)
            user_id, seq, updated_at = _peek(value)
            try:
                if dht_digest(user_id) != key:
                    raise RecordError("record is stored under another ID's key", "wrong_key")
            except ValueError:
                raise RecordError("record id must be 15 digits") from None
            _check_fresh(updated_at, now, self.ttl)
            held = self._live(key, now)
            if held is not None:
                if held.value == value:
                    held.stored_at = now
                    self._data.move_to_end(key)
                    return StoreOutcome.REFRESHED
                if held.record.seq >= seq:
                    return StoreOutcome.KEPT_NEWER
            if source is not None and not self._budget.take(source, 1, now):
                raise RecordError("too many records to verify from this address", "rate_limited")
            record = Record.decode(value)
        except RecordError as exc:
            self.last_rejection = exc
            return StoreOutcome.REJECTED
        self._data[key] = _Entry(record, value, now)
        self._data.move_to_end(key)
        while len(self._data) > self.max_entries:
            self._data.popitem(last=False)
        return StoreOutcome.STORED

    def record(self, key: bytes) -> Record | None:
        entry = self._live(key, self.clock())
        return entry.record if entry else None

    def _live(self, key: bytes, now: float) -> _Entry | None:
        entry = self._data.get(key)
        if entry is not None and now - entry.record.updated_at > self.ttl:
            del self._data[key]
            return None
        return entry

    def cull(self) -> None:
        now = self.clock()
        for key in [k for k, e in self._data.items() if now - e.record.updated_at > self.ttl]:
            del self._data[key]

    def touch(self, key: bytes) -> None:
        """Mark a value as just republished by us (restarts its republish timer)."""
        entry = self._data.get(key)
        if entry is not None:
            entry.stored_at = self.clock()
            self._data.move_to_end(key)

    # kademlia.storage.IStorage

    def __setitem__(self, key: bytes, value: Any) -> None:
        self.offer(key, value)

    def __getitem__(self, key: bytes) -> bytes:
        entry = self._live(key, self.clock())
        if entry is None:
            raise KeyError(key)
        return entry.value

    def get(self, key: Any, default: Any = None) -> Any:
        if type(key) is not bytes:
            return default
        entry = self._live(key, self.clock())
        return entry.value if entry else default

    def iter_older_than(self, seconds_old: float) -> list[tuple[bytes, bytes]]:
        self.cull()
        limit = self.clock() - seconds_old
        return [(k, e.value) for k, e in self._data.items() if e.stored_at <= limit]

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        self.cull()
        return iter([(k, e.value) for k, e in self._data.items()])

    def __len__(self) -> int:
        self.cull()
        return len(self._data)

    def __repr__(self) -> str:
        return f"RecordStorage({len(self._data)} records)"


# Contacts carried in invites


def parse_dht_contact(text: Any) -> tuple[str, int]:
    """'192.0.2.7:8471' or '[2001:db8::7]:8471' -> (ip, port).

    IP literals only (the kademlia package cannot use host names and an invite should
    not make the joiner resolve names an inviter chose); no unspecified or multicast
    addresses, port 1..65535.
    """
    if not isinstance(text, str) or not 0 < len(text) <= MAX_CONTACT_LEN:
        raise ContactError("DHT contact must be a short 'host:port' string")
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit() or len(port_text) > 5:
        raise ContactError(f"DHT contact {text!r} lacks a port")
    port = int(port_text)
    if not 0 < port < 65536 or port_text != str(port):
        raise ContactError(f"DHT contact {text!r}: port must be 1..65535")
    bracketed = host.startswith("[") and host.endswith("]")
    try:
        ip = ipaddress.ip_address(host[1:-1] if bracketed else host)
    except ValueError:
        raise ContactError(f"DHT contact {text!r}: host must be an IP address") from None
    if (ip.version == 6) != bracketed:
        raise ContactError(f"DHT contact {text!r}: IPv6 addresses go in brackets")
    if ip.is_unspecified or ip.is_multicast:
        raise ContactError(f"DHT contact {text!r}: not a unicast address")
    return str(ip), port


def parse_dht_contacts(obj: Any) -> list[tuple[str, int]]:
    """An invite's ``dht`` list: at most 8 contacts, each parse_dht_contact'ed,
    duplicates dropped (order kept)."""
    if not isinstance(obj, list):
        raise ContactError("DHT contacts must be a list")
    if len(obj) > MAX_CONTACTS:
        raise ContactError(f"at most {MAX_CONTACTS} DHT contacts")
    out: list[tuple[str, int]] = []
    for item in obj:
        contact = parse_dht_contact(item)
        if contact not in out:
            out.append(contact)
    return out


def format_dht_contact(host: str, port: int) -> str:
    """Inverse of parse_dht_contact (validates on the way out too)."""
    text = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    ip, port = parse_dht_contact(text)
    return f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}"


# Publishing our own record


class PublishAction(Enum):
    PUBLISH = "publish"  # store the record at the k closest nodes
    RESIGN = "resign"    # the record is getting old: sign a fresh one (seq + 1) first


@dataclass(frozen=True)
class PublishStep:
    action: PublishAction
    record: Record


class PublishSchedule:
    """When a node (re)publishes its own record.

    At once when the record is set or changes; then every ``republish_interval`` (so
    the k closest nodes are refreshed as they churn); after a failed attempt, again in
    ``retry_interval``; and once the record is ``resign_after`` old it asks for a fresh
    signature, since records expire ``RECORD_TTL`` after their updated_at everywhere.
    """

    def __init__(self, *, republish_interval: float = 3600.0, retry_interval: float = 30.0,
                 resign_after: float = 24 * 3600.0) -> None:
        self.republish_interval = republish_interval
        self.retry_interval = retry_interval
        self.resign_after = resign_after
        self.record: Record | None = None
        self._due: float | None = None

    def set_record(self, record: Record, now: float) -> None:
        if self.record is not None and record.user_id != self.record.user_id:
            raise RecordError("a node publishes only its own record", "wrong_record")
        if self.record is not None and not record.newer_than(self.record) \
                and record != self.record:
            raise RecordError("the new record's seq must be higher", "stale_seq")
        self.record = record
        self._due = now

    def next_timer(self) -> float | None:
        return self._due

    def handle_timer(self, now: float) -> PublishStep | None:
        if self.record is None or self._due is None or now < self._due:
            return None
        self._due = None  # until done() or set_record()
        if now - self.record.updated_at >= self.resign_after:
            return PublishStep(PublishAction.RESIGN, self.record)
        return PublishStep(PublishAction.PUBLISH, self.record)

    def done(self, step: PublishStep, now: float, ok: bool) -> None:
        """``step`` (from handle_timer) finished; ``ok``: at least one node took it.

        If a newer record was set meanwhile, its immediate publication stays due."""
        if step.record is self.record:
            self._due = now + (self.republish_interval if ok else self.retry_interval)
