"""Circuit relay core (sans-IO): reservations, circuits and their limits.

A node that nobody can dial (behind a home router) keeps a *reservation* on a
publicly reachable relay: a WebSocket to ``/relay`` on which it proved, by signing a
fresh challenge bound to the relay's address, that it holds the identity key of the
user id it reserves. It then publishes ``ws://RELAY/relay/<user_id>`` as one of its
endpoints. A dialer opens a WebSocket to that address; the relay asks the reserving
node (a ``connect`` message on the reservation) to open ``/relay/accept/<circuit>``
and splices the two WebSockets. The link handshake and sealed frames run end to end,
so the relay forwards opaque messages and learns only who talks to whom, when and how
much (docs/protocol.md §11). The shape follows libp2p circuit relay v2, with the STOP
stream replaced by a second outbound WebSocket from the reserving node.

This module does no I/O and reads no clock: the adapter (mesh/relay_server.py) feeds
messages, byte counts and ``now``, and gets back messages, refusals and delays.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Any

import msgpack

from mesh.errors import CircuitLimitExceeded, FormatError, RelayRefused, SignatureError
from mesh.identity import KeyPair, user_id_for_key, verify
from mesh.ratelimit import TokenBuckets

__all__ = [
    "CHALLENGE_LEN",
    "CIRCUIT_ID_LEN",
    "MAX_CONTROL_MESSAGE",
    "RELAY_PATH",
    "RESERVE_LABEL",
    "CircuitOpened",
    "Relay",
    "RelayLimits",
    "Reservation",
    "ReserveAnswer",
    "decode_control",
    "encode_control",
    "is_relay_address",
    "make_reserve",
    "message_type",
    "read_connect",
    "read_nonce",
    "read_reserved",
    "refusal",
    "relay_address",
    "relay_base",
    "reserve_signing_bytes",
]

RELAY_PATH = "/relay"
RESERVE_LABEL = b"parley/relay/v1 reserve"
CHALLENGE_LEN = 32
CIRCUIT_ID_LEN = 16
MAX_CONTROL_MESSAGE = 1024
RESERVE_BUCKETS_MAX = 65536   # addresses with a reservation-attempt bucket (LRU)
_RESERVE_URL_RE = re.compile(r"^wss?://([\x21-\x2e\x30-\x7e]+)/relay$")
_ADDRESS_RE = re.compile(r"^(wss?://[\x21-\x2e\x30-\x7e]+(?::[0-9]{1,5})?)/relay/([0-9]{15})$")


@dataclass(frozen=True)
class RelayLimits:
    """What one relay grants. libp2p's defaults (128 KiB and 2 minutes per circuit)
    only cover hole punching; Parley's relay also carries links that cannot be punched
    (symmetric NAT), so a circuit may last an hour and carry a few files."""

    max_reservations: int = 128
    reservation_ttl: float = 3600.0
    max_circuits: int = 256
    max_circuits_per_peer: int = 16
    circuit_lifetime: float = 3600.0
    circuit_bytes: int = 256 * 1024 * 1024      # both directions together
    circuit_rate: float = 4 * 1024 * 1024       # bytes per second, both directions
    circuit_burst: int = 2 * 1024 * 1024        # at least one whole link message
    accept_timeout: float = 10.0                # for the reserving node to answer
    reserve_rate: float = 1.0                   # reservation attempts per second per address
    reserve_burst: int = 10

    def __post_init__(self) -> None:
        if self.reservation_ttl < 1:
            raise ValueError("reservation_ttl is sent in whole seconds: at least 1")
        if self.circuit_burst < 300 * 1024:
            raise ValueError("circuit_burst must hold one whole attachment chunk message")


@dataclass(frozen=True)
class Reservation:
    user_id: str
    session: Any          # the adapter's handle on the reservation WebSocket
    expires: float


@dataclass(frozen=True)
class CircuitOpened:
    """A dialer wants ``target``: send ``message`` on ``session`` (its reservation)."""

    circuit_id: bytes
    session: Any
    message: bytes


@dataclass
class _Circuit:
    circuit_id: bytes
    target: str
    opened: float
    accepted: bool = False
    bytes: int = 0
    tokens: float = 0.0
    stamp: float = 0.0


@dataclass
class _Session:
    challenge: bytes
    host: str
    reserved: str | None = None


def reserve_signing_bytes(relay_url: str, challenge: bytes) -> bytes:
    """What a reserving node signs: the label, the relay's reservation URL as the node
    dialled it, and the relay's fresh challenge. The URL binds the proof to this relay
    (another relay cannot reuse it), the challenge to this connection (no replay)."""
    return RESERVE_LABEL + msgpack.packb([relay_url, challenge], use_bin_type=True)


def encode_control(kind: str, **fields: Any) -> bytes:
    return msgpack.packb({"t": kind, "v": 1, **fields}, use_bin_type=True)


def decode_control(data: bytes, kind: str, fields: dict[str, type]) -> dict[str, Any]:
    """Strictly decode one control message of type ``kind`` with exactly ``fields``."""
    if len(data) > MAX_CONTROL_MESSAGE:
        raise RelayRefused(f"control message of {len(data)} bytes exceeds "
                           f"{MAX_CONTROL_MESSAGE}", "bad_request")
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise RelayRefused(f"control message is not msgpack ({type(exc).__name__})",
                           "bad_request") from None
    if not isinstance(obj, dict) or obj.get("t") != kind or obj.get("v") != 1:
        raise RelayRefused(f"expected a version 1 {kind!r} message", "bad_request")
    if set(obj) != {"t", "v", *fields}:
        raise RelayRefused(f"{kind} message must have exactly the fields "
                           f"{sorted(fields)}", "bad_request")
    for name, kind_ in fields.items():
        value = obj[name]
        if not isinstance(value, kind_) or isinstance(value, bool):
            raise RelayRefused(f"{kind}.{name} must be {kind_.__name__}", "bad_request")
    return obj


def relay_base(url: str) -> str:
    """``ws://host:port`` of a relay given any URL on it (http:// bootstrap URLs too)."""
    for plain, ws in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(plain):
            url = ws + url[len(plain):]
    if not url.startswith(("ws://", "wss://")):
        raise ValueError(f"not a relay URL: {url!r}")
    scheme, rest = url.split("://", 1)
    return f"{scheme}://{rest.split('/', 1)[0]}"


def relay_address(base: str, user_id: str) -> str:
    """The endpoint a reserving node publishes: ``ws://relayhost:port/relay/<id>``."""
    return f"{relay_base(base)}{RELAY_PATH}/{user_id}"


def is_relay_address(url: str) -> bool:
    return _ADDRESS_RE.match(url) is not None


class Relay:
    """The relay's state. The adapter calls, per reservation WebSocket:
    ``open_session`` (send the returned challenge), ``reserve`` with the node's answer
    (send the returned message; close on RelayRefused), ``close_session`` when it ends;
    per dialer WebSocket: ``open_circuit`` (send ``CircuitOpened.message`` to its
    session); per accepting WebSocket: ``accept_circuit``; per forwarded message
    ``forward`` (wait the returned delay before reading more) and ``close_circuit``.
    ``expire(now)`` drops what timed out and returns the sessions and circuits to close."""

    def __init__(self, limits: RelayLimits | None = None) -> None:
        self.limits = limits or RelayLimits()
        self._sessions: dict[Any, _Session] = {}
        self._reservations: dict[str, Reservation] = {}
        self._circuits: dict[bytes, _Circuit] = {}
        self._buckets = TokenBuckets(self.limits.reserve_rate, self.limits.reserve_burst,
                                     max_keys=RESERVE_BUCKETS_MAX)
        self.relayed_bytes = 0

    # Reservations

    @property
    def reservations(self) -> dict[str, Reservation]:
        return dict(self._reservations)

    def open_session(self, session: Any, host: str, source: str, now: float) -> bytes:
        """A node connected to ``/relay`` via ``host`` (the Host header it used) from
        address ``source``. Returns the challenge message; RelayRefused when this
        address asks too often (checked before any signature work)."""
        self._take_token(source, now)
        challenge = os.urandom(CHALLENGE_LEN)
        self._sessions[session] = _Session(challenge, host)
        return encode_control("challenge", nonce=challenge)

    def reserve(self, session: Any, data: bytes, now: float) -> tuple[Reservation, bytes]:
        """Check a reserve message; return the reservation and the answer to send."""
        state = self._sessions.get(session)
        if state is None:
            raise RelayRefused("no challenge was issued on this connection", "bad_request")
        msg = decode_control(data, "reserve", {"key": bytes, "relay": str, "sig": bytes})
        relay_url = msg["relay"]
        bound = _RESERVE_URL_RE.match(relay_url)
        if bound is None or bound.group(1) != state.host:
            raise RelayRefused(f"reservation is for {relay_url!r}, this relay is {state.host}",
                               "wrong_relay")
        try:
            user_id = user_id_for_key(msg["key"])
            verify(msg["key"], reserve_signing_bytes(relay_url, state.challenge), msg["sig"])
        except (FormatError, SignatureError) as exc:
            raise RelayRefused(f"reservation proof does not verify: {exc}",
                               "bad_signature") from None
        if state.reserved is not None and state.reserved != user_id:
            raise RelayRefused("one reservation per connection", "bad_request")
        old = self._reservations.get(user_id)
        if old is None and len(self._reservations) >= self.limits.max_reservations:
            raise RelayRefused(f"relay holds its limit of {self.limits.max_reservations} "
                               "reservations", "relay_full")
        # A newer proof for the same id wins (a node reconnecting after a lost link).
        if old is not None and old.session is not session and old.session in self._sessions:
            self._sessions[old.session].reserved = None
        state.challenge = os.urandom(CHALLENGE_LEN)  # a renewal signs a new challenge
        state.reserved = user_id
        reservation = Reservation(user_id, session, now + self.limits.reservation_ttl)
        self._reservations[user_id] = reservation
        answer = encode_control("reserved", ttl=int(self.limits.reservation_ttl),
                                nonce=state.challenge,
                                circuit_bytes=self.limits.circuit_bytes,
                                circuit_lifetime=int(self.limits.circuit_lifetime))
        return reservation, answer

    def close_session(self, session: Any) -> list[bytes]:
        """The reservation WebSocket ended. Returns pending circuits to drop."""
        state = self._sessions.pop(session, None)
        if state is None or state.reserved is None:
            return []
        res = self._reservations.get(state.reserved)
        if res is not None and res.session is session:
            del self._reservations[state.reserved]
        dropped = [c.circuit_id for c in self._circuits.values()
                   if c.target == state.reserved and not c.accepted]
        for cid in dropped:
            del self._circuits[cid]
        return dropped

    # Circuits

    def open_circuit(self, target: str, source: str, now: float) -> CircuitOpened:
        res = self._reservations.get(target)
        if res is None or res.expires <= now:
            raise RelayRefused(f"no reservation for {target}", "no_reservation")
        if len(self._circuits) >= self.limits.max_circuits:
            raise RelayRefused(f"relay carries its limit of {self.limits.max_circuits} "
                               "circuits", "relay_full")
        if sum(c.target == target for c in self._circuits.values()) \
                >= self.limits.max_circuits_per_peer:
            raise RelayRefused(f"{target} has {self.limits.max_circuits_per_peer} circuits",
                               "peer_circuits_full")
        cid = os.urandom(CIRCUIT_ID_LEN)
        self._circuits[cid] = _Circuit(cid, target, now, tokens=self.limits.circuit_burst,
                                       stamp=now)
        return CircuitOpened(cid, res.session, encode_control("connect", circuit=cid.hex()))

    def accept_circuit(self, circuit_hex: str, now: float) -> bytes:
        """The reserving node opened ``/relay/accept/<circuit>``. Whoever knows the
        random circuit id (sent only on the authenticated reservation) may accept it;
        even a thief of the id could not pass as the reserving node, because the
        end-to-end link handshake proves the identity the dialer expects."""
        try:
            cid = bytes.fromhex(circuit_hex)
        except ValueError:
            cid = b""
        circuit = self._circuits.get(cid)
        if circuit is None or circuit.accepted or len(cid) != CIRCUIT_ID_LEN:
            raise RelayRefused("no circuit waits under that id", "unknown_circuit")
        circuit.accepted = True
        circuit.stamp = now
        return cid

    def forward(self, cid: bytes, size: int, now: float) -> float:
        """Count ``size`` bytes crossing circuit ``cid``; return how long the adapter
        should wait before reading more (the rate limit), or raise when over budget."""
        circuit = self._circuits.get(cid)
        if circuit is None:
            raise CircuitLimitExceeded("circuit is closed", "unknown_circuit")
        limits = self.limits
        if now - circuit.opened >= limits.circuit_lifetime:
            raise CircuitLimitExceeded(f"circuit lived {limits.circuit_lifetime:.0f} s",
                                       "circuit_expired")
        if circuit.bytes + size > limits.circuit_bytes:
            raise CircuitLimitExceeded(f"circuit carried {limits.circuit_bytes} bytes",
                                       "circuit_bytes")
        circuit.bytes += size
        self.relayed_bytes += size
        circuit.tokens = min(float(limits.circuit_burst),
                             circuit.tokens + (now - circuit.stamp) * limits.circuit_rate)
        circuit.stamp = now
        circuit.tokens -= size
        return 0.0 if circuit.tokens >= 0 else -circuit.tokens / limits.circuit_rate

    def close_circuit(self, cid: bytes) -> None:
        self._circuits.pop(cid, None)

    def circuit_count(self) -> int:
        return len(self._circuits)

    # Time

    def next_timer(self) -> float | None:
        times = [r.expires for r in self._reservations.values()]
        times += [c.opened + self.limits.accept_timeout for c in self._circuits.values()
                  if not c.accepted]
        times += [c.opened + self.limits.circuit_lifetime for c in self._circuits.values()]
        return min(times, default=None)

    def expire(self, now: float) -> tuple[list[Any], list[bytes]]:
        """Drop expired reservations and circuits; return (sessions, circuits) to close."""
        sessions = [r.session for r in self._reservations.values() if r.expires <= now]
        for session in sessions:
            self.close_session(session)
        circuits = [c.circuit_id for c in self._circuits.values()
                    if now - c.opened >= self.limits.circuit_lifetime
                    or (not c.accepted and now - c.opened >= self.limits.accept_timeout)]
        for cid in circuits:
            del self._circuits[cid]
        self._buckets.forget_full(now)
        return sessions, circuits

    def _take_token(self, source: str, now: float) -> None:
        if not self._buckets.take(source, 1, now):
            raise RelayRefused("too many reservation attempts from this address",
                               "rate_limited")


@dataclass(frozen=True)
class ReserveAnswer:
    """What the reserving node learns from ``reserved``: how long the reservation
    lasts, the challenge to sign for renewing it, and what each circuit may carry."""

    ttl: int
    nonce: bytes
    circuit_bytes: int
    circuit_lifetime: int


# The reserving node's side (sans-IO too): build and read control messages.

def make_reserve(identity: KeyPair, relay_url: str, challenge_message: bytes) -> bytes:
    """Answer a ``challenge`` (or the nonce of a ``reserved``, for renewal)."""
    challenge = read_nonce(challenge_message)
    return encode_control("reserve", key=identity.public, relay=relay_url,
                          sig=identity.sign(reserve_signing_bytes(relay_url, challenge)))


def message_type(message: bytes) -> str:
    """The ``t`` of a control message (RelayRefused if it is not one)."""
    try:
        obj = msgpack.unpackb(message, raw=False, strict_map_key=True)
    except (ValueError, TypeError, msgpack.UnpackException):
        raise RelayRefused("control message is not msgpack", "bad_request") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("t"), str) \
            or len(message) > MAX_CONTROL_MESSAGE:
        raise RelayRefused("control message is not a small typed map", "bad_request")
    return str(obj["t"])


def read_nonce(message: bytes) -> bytes:
    """The challenge in a ``challenge`` or ``reserved`` message."""
    if message_type(message) == "challenge":
        nonce = decode_control(message, "challenge", {"nonce": bytes})["nonce"]
    else:
        nonce = read_reserved(message).nonce
    if len(nonce) != CHALLENGE_LEN:
        raise RelayRefused("challenge has the wrong length", "bad_request")
    return nonce


def read_reserved(message: bytes) -> ReserveAnswer:
    """Parse the relay's answer to ``reserve``; RelayRefused carries its refusal."""
    if message_type(message) == "refused":
        refusal = decode_control(message, "refused", {"reason": str, "message": str})
        raise RelayRefused(refusal["message"][:256], refusal["reason"][:64])
    fields = {"ttl": int, "nonce": bytes, "circuit_bytes": int, "circuit_lifetime": int}
    msg = decode_control(message, "reserved", fields)
    return ReserveAnswer(msg["ttl"], msg["nonce"], msg["circuit_bytes"],
                         msg["circuit_lifetime"])


def read_connect(message: bytes) -> str:
    """The circuit id (hex) in a ``connect`` message."""
    cid = decode_control(message, "connect", {"circuit": str})["circuit"]
    if not re.fullmatch(f"[0-9a-f]{{{2 * CIRCUIT_ID_LEN}}}", cid):
        raise RelayRefused("connect carries a malformed circuit id", "bad_request")
    return cid


def refusal(exc: RelayRefused) -> bytes:
    return encode_control("refused", reason=exc.reason, message=str(exc)[:256])

