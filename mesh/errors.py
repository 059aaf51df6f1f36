"""The mesh package's error tree (every error class of mesh/ lives here).

    MeshError
    ├── LocalError              misuse or a local resource problem (our fault)
    │   ├── KeyFileError        identity key file missing, unreadable or too open
    │   │   └── PassphraseError     it is protected and the passphrase is missing or wrong
    │   ├── PortInUse           a port we were told to listen on is taken
    │   ├── DatabaseError       a database file we cannot open or migrate
    │   ├── LinkUsageError      our own misuse of a link (send before the handshake, ...)
    │   ├── RadioError          the Bluetooth stack failed us
    │   │   └── BluetoothUnavailable   no extra, adapter or SDP: meetups cannot run here
    │   └── LinkRefused         the connection manager would not take another link
    ├── RemoteError             something another machine sent us is unacceptable
    │   ├── RecordError         a signed record that does not decode or verify
    │   ├── SignatureError      a signature that does not verify
    │   ├── FormatError         a value of the wrong type, length or spelling
    │   ├── FrameError          a frame that does not decode strictly (wire.py)
    │   ├── LinkError           the peer broke the link protocol (the Close reason)
    │   ├── DialError           an endpoint we dialled could not be reached or refused
    │   ├── InvalidMessage      a gossip message refused by the layer above
    │   │   └── NotYetValid     ... that may become acceptable later (a key is missing)
    │   ├── RelayRefused        a relay request refused (the reason goes back)
    │   ├── CircuitLimitExceeded   a relayed circuit used up its bytes or lifetime
    │   ├── ReachabilityError   a bootstrap's observed-address answer that does not parse
    │   ├── AnnouncementError   a LAN (mDNS) announcement that does not parse
    │   ├── PortMapError        a NAT-PMP gateway refused, stayed silent or sent garbage
    │   └── DiscoveryError      the bootstrap server refused or failed a request
    │       ├── DiscoveryUnavailable   no answer (connection refused, timeout, 5xx)
    │       └── DiscoveryRefused       a 4xx with the server's error code
    └── DhtError                the DHT mirror failed (``reason`` for APIs)
        ├── DhtUnavailable      not listening, no contacts, or nobody answered
        ├── RecordNotFound      nodes answered, none held a valid record
        └── ContactError        a DHT contact that is not a usable address and port

Remote errors carry a short machine-readable ``reason`` so that a link can close with
it and an API can show it; they never carry secrets.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

__all__ = [
    "AnnouncementError",
    "BluetoothUnavailable",
    "CircuitLimitExceeded",
    "ContactError",
    "DatabaseError",
    "DhtError",
    "DhtUnavailable",
    "DialError",
    "DiscoveryError",
    "DiscoveryRefused",
    "DiscoveryUnavailable",
    "FormatError",
    "FrameError",
    "InvalidMessage",
    "KeyFileError",
    "LinkError",
    "LinkRefused",
    "LinkUsageError",
    "LocalError",
    "MeshError",
    "NotYetValid",
    "PassphraseError",
    "PortInUse",
    "PortMapError",
    "RadioError",
    "ReachabilityError",
    "RecordError",
    "RecordNotFound",
    "RelayRefused",
    "RemoteError",
    "SignatureError",
    "binding",
]


class MeshError(Exception):
    """Base of every error the mesh package raises on purpose."""


class LocalError(MeshError):
    pass


class KeyFileError(LocalError):
    pass


class PassphraseError(KeyFileError):
    pass


class PortInUse(LocalError):
    """``protocol`` ("tcp" or "udp") ``port`` is taken; the CLI names the flag to change."""

    def __init__(self, protocol: str, port: int) -> None:
        super().__init__(f"{protocol.upper()} port {port} is already in use")
        self.protocol, self.port = protocol, port


@contextlib.contextmanager
def binding(protocol: str, port: int) -> Iterator[None]:
    """Turn "address already in use" while binding ``port`` into PortInUse."""
    try:
        yield
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            raise PortInUse(protocol, port) from None
        raise


class DatabaseError(LocalError):
    pass


class LinkUsageError(LocalError):
    """Our own misuse: sending before the handshake finished or after close, sending a
    handshake frame by hand, or a frame over its size limit."""


class RadioError(LocalError):
    """The Bluetooth stack failed us (no adapter, a scan or connect that failed);
    ``reason`` is a short code: not_installed, no_adapter, no_sdp, scan_failed,
    connect_failed."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class BluetoothUnavailable(RadioError):
    """Bluetooth meetups cannot run on this machine; the node runs on without them."""


class LinkRefused(LocalError):
    """The connection manager would not take another link (shutting down, or full)."""


class RemoteError(MeshError):
    """A peer or server sent something we refuse; ``reason`` is a stable short code."""

    reason = "protocol_error"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class RecordError(RemoteError):
    reason = "bad_record"


class SignatureError(RemoteError):
    reason = "bad_signature"


class FormatError(RemoteError):
    """A value from the network has the wrong type, length or spelling."""

    reason = "bad_format"


class FrameError(RemoteError):
    reason = "bad_frame"


class LinkError(RemoteError):
    """The peer broke the link protocol; ``reason`` is the code sent in Close.

    Codes (docs/protocol.md §4): frame_too_large, bad_frame, unknown_frame,
    not_canonical, bad_version, unexpected_frame, bad_key, transcript_mismatch,
    bad_record, impersonation, bad_signature, wrong_peer, self_link, decrypt_failed,
    replay, out_of_order, timeout.
    """

    reason = "protocol_error"


class DialError(RemoteError):
    """The dialled endpoint could not be reached or refused the WebSocket upgrade."""

    reason = "unreachable"


class InvalidMessage(RemoteError):
    """Raised by a validate hook for a message that must be neither stored nor forwarded."""

    reason = "invalid_message"


class NotYetValid(InvalidMessage):
    """Raised by a validate hook for a message it cannot check *yet* (the key that
    verifies it has not arrived). It is refused like any invalid message but not
    remembered as rejected, so a later offer (anti-entropy) can bring it again."""

    reason = "not_yet_valid"


class RelayRefused(RemoteError):
    """A relay request we refuse; ``reason`` is the code sent back. Codes:
    bad_request, bad_signature, wrong_relay, relay_full, rate_limited,
    no_reservation, peer_circuits_full, unknown_circuit, self_circuit."""

    reason = "bad_request"


class CircuitLimitExceeded(RemoteError):
    """A spliced circuit used up its byte budget or lifetime: close both sides."""

    reason = "circuit_limit"


class ReachabilityError(RemoteError):
    reason = "bad_observed"


class AnnouncementError(RemoteError):
    reason = "bad_announcement"


class PortMapError(RemoteError):
    reason = "bad_portmap"


class DiscoveryError(RemoteError):
    reason = "discovery_failed"


class DiscoveryUnavailable(DiscoveryError):
    reason = "discovery_unavailable"


class DiscoveryRefused(DiscoveryError):
    """The server answered 4xx; ``status`` and ``reason`` (its error code) say why."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}", reason)
        self.status = status


class DhtError(MeshError):
    """Base of the DHT's errors; ``reason`` is a stable short code for APIs."""

    reason = "dht_failed"


class DhtUnavailable(DhtError):
    """Not listening, no contacts, or no DHT node answered."""

    reason = "dht_unavailable"


class RecordNotFound(DhtError):
    """Nodes answered, but none held a valid, unexpired record for the ID."""

    reason = "record_not_found"


class ContactError(DhtError):
    """A DHT contact ("host:port") that is not a usable IP address and port."""

    reason = "bad_dht_contact"
