"""The mesh package's error tree.

    MeshError
    ├── LocalError              misuse or a local resource problem (our fault)
    │   ├── KeyFileError        identity key file missing, unreadable or too open
    │   └── PortInUse           a port we were told to listen on is taken
    └── RemoteError             something another machine sent us is unacceptable
        ├── RecordError         a signed record that does not decode or verify
        ├── SignatureError      a signature that does not verify
        ├── AnnouncementError   a LAN (mDNS) announcement that does not parse
        ├── PortMapError        a NAT-PMP gateway refused, stayed silent or sent garbage
        └── DiscoveryError      the bootstrap server refused or failed a request
            ├── DiscoveryUnavailable   no answer (connection refused, timeout, 5xx)
            └── DiscoveryRefused       a 4xx with the server's error code

Remote errors carry a short machine-readable ``reason`` so that a link can close with
it and an API can show it; they never carry secrets.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

__all__ = [
    "AnnouncementError",
    "DiscoveryError",
    "DiscoveryRefused",
    "DiscoveryUnavailable",
    "KeyFileError",
    "LocalError",
    "MeshError",
    "PortInUse",
    "PortMapError",
    "RecordError",
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
