"""LAN discovery core (sans-IO): find known peers on this network, tell strangers nothing.

Why this shape: on a Wi-Fi with no internet, two friends must find each other without a
bootstrap, yet a stranger on that Wi-Fi must not learn who is there. A node announces
(over mDNS, see mesh/mdns.py) its LAN addresses, mesh port, the time epoch, and one short
tag per known peer. A tag is an HMAC under a key only that pair of users can compute: the
X25519 agreement of the announcer's identity key with the peer's (HKDF'd), over the
announcer's public key, the epoch and the announced addresses and port. A receiver
recomputes, for each peer it knows, the tag that peer would announce for it; a hit means
"this is probably that peer, at these addresses", and the node dials them: the link
handshake proves identity, so a false hit costs one failed dial.

A stranger sees random-looking tags that change every epoch (15 minutes), a count padded
up to 8, 16, 32 or 64, and the addresses it could see on the wire anyway. Binding the
addresses into the tag means a replayed announcement can only send a peer to the real
announcer. See docs/protocol.md, "LAN discovery".

Nothing here keeps state about what was heard: ``match`` is a pure function of the
announcement, the clock and our own peer list (plus a cache of our pair keys).
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mesh.errors import AnnouncementError
from mesh.identity import DJB_TYPE, PUBLIC_KEY_LEN, KeyPair

__all__ = [
    "EPOCH_SECONDS",
    "MAX_TAGS",
    "SERVICE_TYPE",
    "Announcement",
    "LanCore",
    "Match",
    "pair_key",
]

SERVICE_TYPE = "_parley._tcp.local."
VERSION = b"1"
EPOCH_SECONDS = 900
EPOCH_SLACK = 1               # epochs of clock difference we still accept
TAG_LEN = 8
MAX_TAGS = 64
TAGS_PER_STRING = 31          # a TXT string holds 255 bytes: "tN=" + 31 * 8
PAD_BUCKETS = (8, 16, 32, MAX_TAGS)
MAX_ADDRESSES = 8
MAX_EPOCH = 2**40
KEY_INFO = b"parley/lan-pair-key/v1"
TAG_DOMAIN = b"parley/lan-tag/v1"


def pair_key(identity: KeyPair, peer_public: bytes) -> bytes:
    """The key ``identity`` shares with ``peer_public`` (both 33-byte Curve25519 keys).

    Symmetric: both users get the same key. Raises AnnouncementError for a key that is
    malformed or of low order (an all-zero agreement anyone could compute)."""
    if len(peer_public) != PUBLIC_KEY_LEN or peer_public[0] != DJB_TYPE:
        raise AnnouncementError("a peer key must be 33 bytes starting with 0x05")
    try:
        shared = X25519PrivateKey.from_private_bytes(identity.private).exchange(
            X25519PublicKey.from_public_bytes(peer_public[1:]))
    except ValueError as exc:  # low-order point: the agreement would be public
        raise AnnouncementError(f"unusable peer key: {exc}") from None
    ends = b"".join(sorted((identity.public, peer_public)))
    return HKDF(hashes.SHA256(), 32, salt=None, info=KEY_INFO + ends).derive(shared)


def _tag(key: bytes, announcer: bytes, epoch: int, port: int,
         addresses: tuple[str, ...]) -> bytes:
    body = b"|".join((TAG_DOMAIN, announcer, str(epoch).encode(), str(port).encode(),
                      ",".join(addresses).encode()))
    return hmac.new(key, body, hashlib.sha256).digest()[:TAG_LEN]


def _check_address(text: str) -> str:
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise AnnouncementError(f"not an IP address: {text[:40]!r}") from None
    if addr.is_loopback or addr.is_unspecified or addr.is_multicast or (
            addr.version == 4 and addr == ipaddress.IPv4Address("255.255.255.255")):
        raise AnnouncementError(f"not a dialable LAN address: {addr}")
    return str(addr)


def _decimal(value: bytes | None, field: str, low: int, high: int) -> int:
    if value is None or not value.isdigit() or len(value) > 13 or (
            value.startswith(b"0") and value != b"0"):
        raise AnnouncementError(f"{field} must be a decimal number")
    number = int(value)
    if not low <= number <= high:
        raise AnnouncementError(f"{field} out of range")
    return number


@dataclass(frozen=True)
class Announcement:
    """What a node publishes in its TXT record (see docs/protocol.md, "LAN discovery")."""

    epoch: int
    port: int
    addresses: tuple[str, ...]
    tags: tuple[bytes, ...]

    def to_txt(self) -> dict[bytes, bytes]:
        props = {b"v": VERSION, b"e": str(self.epoch).encode(), b"p": str(self.port).encode(),
                 b"a": ",".join(self.addresses).encode()}
        for i in range(0, len(self.tags), TAGS_PER_STRING):
            props[b"t%d" % (i // TAGS_PER_STRING)] = b"".join(
                self.tags[i:i + TAGS_PER_STRING])
        return props

    @classmethod
    def from_txt(cls, props: Mapping[bytes, bytes | None]) -> Announcement:
        """Parse and check a TXT record; raises AnnouncementError. Unknown keys are
        ignored (DNS-SD's rule, so later versions can add some)."""
        if props.get(b"v") != VERSION:
            raise AnnouncementError("not a version 1 Parley announcement")
        epoch = _decimal(props.get(b"e"), "epoch", 0, MAX_EPOCH)
        port = _decimal(props.get(b"p"), "port", 1, 65535)
        raw_addresses = props.get(b"a") or b""
        try:
            texts = raw_addresses.decode("ascii").split(",")
        except UnicodeDecodeError:
            raise AnnouncementError("addresses must be ASCII") from None
        if not 1 <= len(texts) <= MAX_ADDRESSES:
            raise AnnouncementError(f"1 to {MAX_ADDRESSES} addresses expected")
        addresses = tuple(_check_address(t) for t in texts)
        if ",".join(addresses).encode() != raw_addresses:
            raise AnnouncementError("addresses not in canonical form")
        tags: list[bytes] = []
        for i in range(MAX_TAGS // TAGS_PER_STRING + 1):
            chunk = props.get(b"t%d" % i)
            if chunk is None:
                break
            if not chunk or len(chunk) % TAG_LEN or len(chunk) > TAGS_PER_STRING * TAG_LEN:
                raise AnnouncementError("a tag string must hold 1 to 31 tags of 8 bytes")
            tags += [chunk[j:j + TAG_LEN] for j in range(0, len(chunk), TAG_LEN)]
        if not tags or len(tags) > MAX_TAGS:
            raise AnnouncementError(f"1 to {MAX_TAGS} tags expected")
        return cls(epoch, port, addresses, tuple(tags))


@dataclass(frozen=True)
class Match:
    """An announcement that a known peer made: dial ``addresses`` on ``port``."""

    peer_id: str
    addresses: tuple[str, ...]
    port: int


class LanCore:
    """Builds our announcements and recognises our peers' ones.

    ``peers`` maps user id -> 33-byte identity key: the contacts and group members to be
    found by and to find. Pair keys are cached (one X25519 per peer, not per packet)."""

    def __init__(self, identity: KeyPair, *,
                 random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> None:
        self.identity = identity
        self._random = random_bytes
        self._keys: dict[bytes, bytes | None] = {}

    def epoch(self, now: float) -> int:
        return int(now // EPOCH_SECONDS)

    def _key(self, peer_public: bytes) -> bytes | None:
        if peer_public not in self._keys:
            try:
                self._keys[peer_public] = pair_key(self.identity, peer_public)
            except AnnouncementError:
                self._keys[peer_public] = None
        return self._keys[peer_public]

    def _keys_for(self, peers: Mapping[str, bytes]) -> dict[str, bytes]:
        wanted = set(peers.values())
        for stale in set(self._keys) - wanted:  # forget peers we no longer know
            del self._keys[stale]
        keys = {}
        for peer_id, public in peers.items():
            key = self._key(public)
            if key is not None and public != self.identity.public:
                keys[peer_id] = key
        return keys

    def announcement(self, now: float, port: int, addresses: tuple[str, ...],
                     peers: Mapping[str, bytes]) -> Announcement:
        """Our announcement for this epoch. Over MAX_TAGS peers, a window that moves
        each epoch picks whom to include, so everyone is announced every few epochs."""
        epoch = self.epoch(now)
        addresses = tuple(_check_address(a) for a in addresses)[:MAX_ADDRESSES]
        if not addresses:
            raise AnnouncementError("no LAN address to announce")
        keys = self._keys_for(peers)
        chosen = sorted(keys)
        if len(chosen) > MAX_TAGS:
            start = (epoch * MAX_TAGS) % len(chosen)
            chosen = (chosen + chosen)[start:start + MAX_TAGS]
        tags = [_tag(keys[p], self.identity.public, epoch, port, addresses) for p in chosen]
        size = next(b for b in PAD_BUCKETS if b >= len(tags))
        tags += [self._random(TAG_LEN) for _ in range(size - len(tags))]
        return Announcement(epoch, port, addresses, tuple(sorted(tags)))

    def match(self, announcement: Announcement, now: float,
              peers: Mapping[str, bytes]) -> list[Match]:
        """Which of ``peers`` made this announcement (at most one, barring a collision of
        64-bit tags). Announcements outside our epoch +-1 match nothing."""
        if abs(announcement.epoch - self.epoch(now)) > EPOCH_SLACK:
            return []
        heard = set(announcement.tags)
        found = []
        for peer_id, key in self._keys_for(peers).items():
            tag = _tag(key, peers[peer_id], announcement.epoch, announcement.port,
                       announcement.addresses)
            if tag in heard:
                found.append(Match(peer_id, announcement.addresses, announcement.port))
        return found
