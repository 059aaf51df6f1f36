"""Authenticated, encrypted links over any framed pipe (sans-IO).

A Link is fed whole messages from a framed transport (a WebSocket message, or one
length-prefixed record from StreamFramer over a byte stream such as RFCOMM) and hands
back messages to send and events. It does no I/O and reads no clock: adapters pass
``now`` in and schedule ``next_timer()``.

Handshake (docs/protocol.md §4 has the exact bytes)::

    initiator                                    responder
    Hello(versions, e_i)            -- clear -->
                                    <-- clear -- Hello((chosen,), e_r)
                                    <-- sealed - Auth(record_r, sig_r)   [hs key r2i]
    Auth(record_i, sig_i)           -- sealed -> [hs key i2r]
    ... data frames, sealed under per-direction data keys, counters from 0 ...

Both ephemerals and both Hellos (so the offered and chosen versions) go into the
transcript hash that salts every key and that each side signs with its identity key;
a tampered Hello, a replayed Auth or a downgraded version offer therefore fails to
authenticate. Auth travels encrypted, so a passive observer learns neither identity
(as in Noise XX). Decrypting the peer's Auth is key confirmation. Every failure closes
the link with a short reason code (LinkError.reason) sent in a Close frame.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections import deque
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mesh import wire
from mesh.errors import (
    FrameError,
    LinkError,
    LinkUsageError,
    RecordError,
    RemoteError,
    SignatureError,
)
from mesh.identity import KeyPair, Record, verify

__all__ = [
    "COUNTER_LEN",
    "HANDSHAKE_TIMEOUT",
    "MAX_HANDSHAKE_MESSAGE",
    "MAX_MESSAGE",
    "PEER_FAULT_REASONS",
    "SEAL_OVERHEAD",
    "SUPPORTED_VERSIONS",
    "Closed",
    "Established",
    "Event",
    "FrameReceived",
    "Link",
    "State",
    "StreamFramer",
]

SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
HANDSHAKE_TIMEOUT = 10.0

COUNTER_LEN = 8
TAG_LEN = 16
SEAL_OVERHEAD = COUNTER_LEN + TAG_LEN
MAX_HANDSHAKE_MESSAGE = 8 * 1024
MAX_MESSAGE = wire.MAX_CHUNK_FRAME + SEAL_OVERHEAD
MAX_COUNTER = 2**64 - 1

PROTOCOL_LABEL = b"parley/link/v1"
SIG_LABEL_RESPONDER = b"parley/link/v1 responder signature"
SIG_LABEL_INITIATOR = b"parley/link/v1 initiator signature"
INFO_HS_I2R = b"parley/link/v1 handshake i2r"
INFO_HS_R2I = b"parley/link/v1 handshake r2i"
INFO_DATA_I2R = b"parley/link/v1 data i2r"
INFO_DATA_R2I = b"parley/link/v1 data r2i"

# Every reason a link closes with because of what the peer sent (or failed to send).
PEER_FAULT_REASONS = frozenset({
    "frame_too_large", "bad_frame", "unknown_frame", "not_canonical", "bad_version",
    "unexpected_frame", "bad_key", "transcript_mismatch", "bad_record", "impersonation",
    "bad_signature", "wrong_peer", "self_link", "decrypt_failed", "replay", "out_of_order",
    "timeout",
})

_REASON_OK = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_")


class State(enum.Enum):
    AWAIT_HELLO = "await_hello"
    AWAIT_AUTH = "await_auth"
    ESTABLISHED = "established"
    CLOSED = "closed"


class Role(enum.Enum):
    INITIATOR = "initiator"
    RESPONDER = "responder"


@dataclass(frozen=True)
class Established:
    """The handshake finished; ``peer`` is the verified record the peer showed."""

    peer: Record


@dataclass(frozen=True)
class FrameReceived:
    frame: wire.Frame


@dataclass(frozen=True)
class Closed:
    """The link is over. ``by_peer`` is True when the peer sent Close (or the transport
    died); False when we closed it, locally or because the peer misbehaved."""

    reason: str
    message: str
    by_peer: bool


Event = Established | FrameReceived | Closed

_CONTROL = {"hello", "auth", "close", "ping", "pong"}
_PAYLOAD = frozenset(cls.TYPE for cls in wire.Frame.__subclasses__()) - _CONTROL

# Rule: every (role, state, frame type) not in this table is "unexpected_frame".
# Close is accepted in every open state; payload frames only once established.
_TRANSITIONS: dict[tuple[Role, State, str], State] = {
    (Role.INITIATOR, State.AWAIT_HELLO, "hello"): State.AWAIT_AUTH,
    (Role.RESPONDER, State.AWAIT_HELLO, "hello"): State.AWAIT_AUTH,
    (Role.INITIATOR, State.AWAIT_AUTH, "auth"): State.ESTABLISHED,
    (Role.RESPONDER, State.AWAIT_AUTH, "auth"): State.ESTABLISHED,
    **{(role, state, "close"): State.CLOSED
       for role in Role for state in (State.AWAIT_HELLO, State.AWAIT_AUTH, State.ESTABLISHED)},
    **{(role, State.ESTABLISHED, t): State.ESTABLISHED
       for role in Role for t in (*_PAYLOAD, "ping", "pong")},
}


def _hkdf(dh: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(dh)


def _sha256(*parts: bytes) -> bytes:
    return hashlib.sha256(b"".join(parts)).digest()


def _transcript(hello_i: bytes, hello_r: bytes) -> bytes:
    return _sha256(PROTOCOL_LABEL, struct.pack(">I", len(hello_i)), hello_i,
                   struct.pack(">I", len(hello_r)), hello_r)


class _Direction:
    """One direction of sealing: AES-256-GCM with a counter nonce. The key itself is
    not kept as an attribute, so no repr or traceback can show it."""

    __slots__ = ("_aead", "counter")

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self.counter = 0

    def __repr__(self) -> str:
        return f"_Direction(counter={self.counter})"

    @staticmethod
    def _nonce(header: bytes) -> bytes:
        return b"\x00\x00\x00\x00" + header

    def seal(self, plaintext: bytes) -> bytes:
        if self.counter >= MAX_COUNTER:
            raise LinkUsageError("counter exhausted; open a new link")
        header = struct.pack(">Q", self.counter)
        self.counter += 1
        return header + self._aead.encrypt(self._nonce(header), plaintext, header)

    def open(self, data: bytes, fail_reason: str) -> bytes:
        if len(data) < SEAL_OVERHEAD:
            raise LinkError(f"sealed message of {len(data)} bytes is too short", "bad_frame")
        header = data[:COUNTER_LEN]
        try:  # a view, not a slice: a chunk's 256 KiB are not copied before decrypting
            plaintext = self._aead.decrypt(self._nonce(header), memoryview(data)[COUNTER_LEN:],
                                           header)
        except InvalidTag:
            raise LinkError("sealed message does not authenticate", fail_reason) from None
        (counter,) = struct.unpack(">Q", header)
        if counter < self.counter:
            raise LinkError(f"counter {counter} already seen (expected {self.counter})",
                            "replay")
        if counter > self.counter:
            raise LinkError(f"counter {counter} skips ahead (expected {self.counter})",
                            "out_of_order")
        self.counter += 1
        return plaintext


class Link:
    """One end of a link. Construct, then loop: feed ``receive_data``, drain
    ``data_to_send()`` and ``next_event()``, and call ``handle_timer`` at ``next_timer()``.

    ``identity``/``record`` are ours; ``expected_peer`` (a user id) makes the link fail
    with "wrong_peer" if the authenticated peer is someone else. ``keepalive`` (seconds)
    makes the link send Ping when idle and close with "timeout" after 3x that without
    hearing anything; transports with their own keepalive (WebSocket) leave it None.
    """

    def __init__(self, identity: KeyPair, record: Record, *, initiator: bool, now: float,
                 expected_peer: str | None = None,
                 handshake_timeout: float = HANDSHAKE_TIMEOUT,
                 keepalive: float | None = None,
                 versions: tuple[int, ...] = SUPPORTED_VERSIONS) -> None:
        if record.identity_key != identity.public:
            raise LinkUsageError("record does not belong to this identity")
        if not versions or len(versions) > 8:
            raise LinkUsageError("offer between 1 and 8 versions")
        self._identity = identity
        self._record = record
        self.role = Role.INITIATOR if initiator else Role.RESPONDER
        self.expected_peer = expected_peer
        self._versions = tuple(sorted(set(versions), reverse=True))
        self._state = State.AWAIT_HELLO
        self._deadline: float | None = now + handshake_timeout
        self._keepalive = keepalive
        self._last_recv = self._last_sent = now
        self._events: deque[Event] = deque()
        self._outgoing: list[bytes] = []
        self._ephemeral = X25519PrivateKey.generate()
        self._send: _Direction | None = None
        self._recv: _Direction | None = None
        # An initiator on the data keys keeps the responder's handshake key until the
        # responder shows it switched too (see _close_before_switch).
        self._hs_recv: _Direction | None = None
        self._dh = b""
        self._hash = b""
        self._hello_sent = b""
        self.peer: Record | None = None
        self.version: int | None = None
        self.close_reason: str | None = None
        if initiator:
            self._hello_sent = self._emit_clear(
                wire.Hello(self._versions, self._ephemeral.public_key().public_bytes_raw()),
                now)

    def __repr__(self) -> str:
        peer = self.peer.user_id if self.peer else None
        return f"<Link {self.role.value} {self._state.value} peer={peer}>"

    # Public surface

    @property
    def state(self) -> State:
        return self._state

    @property
    def initiator(self) -> bool:
        return self.role is Role.INITIATOR

    @property
    def handshake_hash(self) -> bytes:
        """The final transcript hash once established (a channel binding; not secret)."""
        if self._state is not State.ESTABLISHED:
            raise LinkUsageError("no handshake hash before the link is established")
        return self._hash

    def receive_data(self, data: bytes, now: float) -> None:
        """Process one whole message from the pipe. Never raises for what the peer
        sent: a protocol violation closes the link (queues Close, emits Closed)."""
        if self._state is State.CLOSED:
            return
        self._last_recv = now
        try:
            frame, raw = self._open(bytes(data))
            self._dispatch(frame, raw, now)
        except RemoteError as exc:
            self._fail(exc.reason, str(exc), now)

    def next_event(self) -> Event | None:
        return self._events.popleft() if self._events else None

    def events(self) -> list[Event]:
        """All pending events, oldest first."""
        out = list(self._events)
        self._events.clear()
        return out

    def data_to_send(self) -> list[bytes]:
        """Messages to write to the pipe, in order, each as one framed message."""
        out, self._outgoing = self._outgoing, []
        return out

    def send(self, frame: wire.Frame, now: float | None = None) -> None:
        """Queue a payload frame (anything but Hello/Auth/Close/Ping/Pong)."""
        if self._state is not State.ESTABLISHED:
            raise LinkUsageError(f"cannot send on a link in state {self._state.value}")
        if frame.TYPE not in _PAYLOAD:
            raise LinkUsageError(f"{frame.TYPE} frames are the link's own business")
        self._emit_sealed(frame, now)

    def close(self, reason: str = "normal", message: str = "", now: float | None = None) -> None:
        """Close from our side: queue a Close frame and emit Closed(by_peer=False).
        ``reason`` is a short lowercase code such as "normal", "slow_peer", "duplicate"."""
        if not reason or len(reason) > 64 or not set(reason) <= _REASON_OK:
            raise LinkUsageError("reason must be 1-64 chars of [a-z0-9_]")
        if self._state is not State.CLOSED:
            self._fail(reason, message, now)

    def connection_lost(self, message: str = "") -> None:
        """The transport ended without a Close frame."""
        if self._state is not State.CLOSED:
            self._set_closed("connection_lost", message or "transport closed", by_peer=True)

    def next_timer(self) -> float | None:
        """When ``handle_timer`` must next be called (absolute, same clock as ``now``)."""
        if self._state is State.CLOSED:
            return None
        if self._state is not State.ESTABLISHED:
            return self._deadline
        if self._keepalive is None:
            return None
        return min(self._last_sent + self._keepalive, self._last_recv + 3 * self._keepalive)

    def handle_timer(self, now: float) -> None:
        if self._state is State.CLOSED:
            return
        if self._state is not State.ESTABLISHED:
            if self._deadline is not None and now >= self._deadline:
                self._fail("timeout", "handshake did not complete in time", now)
            return
        if self._keepalive is None:
            return
        if now >= self._last_recv + 3 * self._keepalive:
            self._fail("timeout", "peer silent for too long", now)
        elif now >= self._last_sent + self._keepalive:
            self._emit_sealed(wire.Ping(b""), now)

    # Receiving

    def _open(self, data: bytes) -> tuple[wire.Frame, bytes]:
        """Return the frame and its plaintext encoding (needed for the transcript)."""
        established = self._state is State.ESTABLISHED
        limit = MAX_MESSAGE if established else MAX_HANDSHAKE_MESSAGE
        if len(data) > limit:
            raise LinkError(f"message of {len(data)} bytes exceeds {limit}", "frame_too_large")
        if self._recv is None:
            return wire.decode(data, max_size=MAX_HANDSHAKE_MESSAGE), data
        try:
            plain = self._recv.open(data, "decrypt_failed" if established
                                    else "transcript_mismatch")
        except LinkError:
            close = self._close_before_switch(data, established)
            if close is not None:
                return close, data
            raise
        self._hs_recv = None  # the peer is on our keys: nothing older can follow
        return wire.decode(plain, max_size=wire.MAX_CHUNK_FRAME), plain

    def _close_before_switch(self, data: bytes, established: bool) -> wire.Close | None:
        """A Close the peer sealed before it could be on our current keys, else None.
        During the handshake a peer that could not derive keys closes in clear. Once
        established, an initiator (on the data keys since it sent its Auth) may still
        get a Close under the responder's handshake key: the responder closed (shutting
        down, its handshake deadline, "busy") before our Auth reached it, and cannot
        derive the data keys without it. Only a Close is let through either way."""
        try:
            if not established:
                frame = wire.decode(data, max_size=MAX_HANDSHAKE_MESSAGE)
            elif self._hs_recv is not None:
                frame = wire.decode(self._hs_recv.open(data, "decrypt_failed"),
                                    max_size=MAX_HANDSHAKE_MESSAGE)
            else:
                return None
        except (FrameError, LinkError):
            return None
        return frame if isinstance(frame, wire.Close) else None

    def _dispatch(self, frame: wire.Frame, raw: bytes, now: float) -> None:
        nxt = _TRANSITIONS.get((self.role, self._state, frame.TYPE))
        if nxt is None:
            raise LinkError(f"{frame.TYPE} frame not allowed in state {self._state.value}",
                            "unexpected_frame")
        if isinstance(frame, wire.Close):
            self._set_closed(frame.reason, frame.message, by_peer=True)
        elif isinstance(frame, wire.Hello):
            self._on_hello(frame, raw, now)
        elif isinstance(frame, wire.Auth):
            self._on_auth(frame, raw, now)
        elif isinstance(frame, wire.Ping):
            self._emit_sealed(wire.Pong(frame.data), now)
        elif not isinstance(frame, wire.Pong):
            self._events.append(FrameReceived(frame))
        if self._state is not State.CLOSED:
            self._state = nxt

    def _on_hello(self, hello: wire.Hello, raw: bytes, now: float) -> None:
        if self.role is Role.RESPONDER:
            common = set(hello.versions) & set(self._versions)
            if not common:
                raise LinkError(f"no common version in {list(hello.versions)}", "bad_version")
            self.version = max(common)
        else:
            if len(hello.versions) != 1 or hello.versions[0] not in self._versions:
                raise LinkError(f"responder chose {list(hello.versions)}, "
                                f"not one of {list(self._versions)}", "bad_version")
            self.version = hello.versions[0]
        try:
            self._dh = self._ephemeral.exchange(X25519PublicKey.from_public_bytes(hello.ephemeral))
        except ValueError:
            raise LinkError("peer ephemeral key is a low-order point", "bad_key") from None
        if self.role is Role.INITIATOR:
            self._hash = _transcript(self._hello_sent, raw)
            self._send = _Direction(_hkdf(self._dh, self._hash, INFO_HS_I2R))
            self._recv = _Direction(_hkdf(self._dh, self._hash, INFO_HS_R2I))
            return
        mine = wire.Hello((self.version,), self._ephemeral.public_key().public_bytes_raw())
        hello_r = self._emit_clear(mine, now)
        self._hash = _transcript(raw, hello_r)
        self._send = _Direction(_hkdf(self._dh, self._hash, INFO_HS_R2I))
        self._recv = _Direction(_hkdf(self._dh, self._hash, INFO_HS_I2R))
        auth = self._emit_sealed(self._make_auth(SIG_LABEL_RESPONDER), now)
        self._hash = _sha256(self._hash, auth)

    def _on_auth(self, auth: wire.Auth, raw: bytes, now: float) -> None:
        if self.role is Role.INITIATOR:
            peer = self._check_auth(auth, SIG_LABEL_RESPONDER + self._hash)
            self._hash = _sha256(self._hash, raw)
            mine = self._emit_sealed(self._make_auth(SIG_LABEL_INITIATOR), now)
            self._hash = _sha256(self._hash, mine)
            self._hs_recv = self._recv
            self._send = _Direction(_hkdf(self._dh, self._hash, INFO_DATA_I2R))
            self._recv = _Direction(_hkdf(self._dh, self._hash, INFO_DATA_R2I))
        else:
            signed = SIG_LABEL_INITIATOR + self._hash
            self._hash = _sha256(self._hash, raw)
            # Data keys first, so that a refusal below reaches an initiator that has
            # already switched to them.
            self._send = _Direction(_hkdf(self._dh, self._hash, INFO_DATA_R2I))
            self._recv = _Direction(_hkdf(self._dh, self._hash, INFO_DATA_I2R))
            peer = self._check_auth(auth, signed)
        self._dh = b""
        self._ephemeral = None  # type: ignore[assignment]  # forward secrecy: forget it
        self._deadline = None
        self.peer = peer
        self._events.append(Established(peer))

    def _make_auth(self, label: bytes) -> wire.Auth:
        return wire.Auth(self._record.encode(), self._identity.sign(label + self._hash))

    def _check_auth(self, auth: wire.Auth, signed: bytes) -> Record:
        try:
            record = Record.decode(auth.record)
        except RecordError as exc:
            if exc.reason == "id_mismatch":
                raise LinkError("peer's record claims a user id its key does not derive",
                                "impersonation") from None
            raise LinkError(f"peer's record is invalid: {exc}", "bad_record") from None
        try:
            verify(record.identity_key, signed, auth.signature)
        except SignatureError:
            raise LinkError("handshake signature does not verify under the key of "
                            f"{record.user_id}", "bad_signature") from None
        if record.identity_key == self._identity.public:
            raise LinkError("peer is ourselves", "self_link")
        if self.expected_peer is not None and record.user_id != self.expected_peer:
            raise LinkError(f"expected {self.expected_peer}, peer is {record.user_id}",
                            "wrong_peer")
        return record

    # Sending

    def _emit_clear(self, frame: wire.Frame, now: float | None) -> bytes:
        data = wire.encode(frame)
        self._outgoing.append(data)
        if now is not None:
            self._last_sent = now
        return data

    def _emit_sealed(self, frame: wire.Frame, now: float | None) -> bytes:
        """Seal and queue one frame; return its plaintext encoding."""
        assert self._send is not None
        try:
            plain = wire.encode(frame)
        except FrameError as exc:
            raise LinkUsageError(str(exc)) from None
        self._outgoing.append(self._send.seal(plain))
        if now is not None:
            self._last_sent = now
        return plain

    def _fail(self, reason: str, message: str, now: float | None) -> None:
        close = wire.Close(reason[:64], message[:256])
        if self._send is not None:
            self._emit_sealed(close, now)
        else:
            self._emit_clear(close, now)
        self._set_closed(close.reason, close.message, by_peer=False)

    def _set_closed(self, reason: str, message: str, *, by_peer: bool) -> None:
        self._state = State.CLOSED
        self.close_reason = reason
        self._deadline = None
        self._dh = b""
        self._events.append(Closed(reason, message, by_peer))


class StreamFramer:
    """Length-prefixed framing for byte streams (RFCOMM, TCP): each message is a
    4-byte big-endian length followed by that many bytes. A length above ``max_size``
    raises LinkError("frame_too_large") before any of the body is buffered; after an
    error the framer stays broken (the stream has lost sync)."""

    PREFIX = 4

    def __init__(self, max_size: int = MAX_MESSAGE) -> None:
        self.max_size = max_size
        self._buffer = bytearray()
        self._error: LinkError | None = None

    @staticmethod
    def frame(message: bytes) -> bytes:
        if len(message) > 0xFFFFFFFF:
            raise LinkUsageError("message too large to frame")
        return struct.pack(">I", len(message)) + message

    def feed(self, data: bytes) -> list[bytes]:
        """Add bytes read from the stream; return the messages now complete."""
        if self._error is not None:
            raise self._error
        self._buffer += data
        out: list[bytes] = []
        while len(self._buffer) >= self.PREFIX:
            (size,) = struct.unpack_from(">I", self._buffer)
            if size > self.max_size:
                self._buffer.clear()
                self._error = LinkError(f"stream frame of {size} bytes exceeds "
                                        f"{self.max_size}", "frame_too_large")
                raise self._error
            end = self.PREFIX + size
            if len(self._buffer) < end:
                break
            out.append(bytes(self._buffer[self.PREFIX:end]))
            del self._buffer[:end]
        return out

    @property
    def buffered(self) -> int:
        return len(self._buffer)
