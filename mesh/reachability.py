"""Is this node reachable from the internet, and how (AutoNAT-style)?

The node asks a bootstrap for the address it sees (``GET /v1/observed``) and to dial
it back on its mesh port (``POST /v1/dialback``). A successful dial-back means the
mesh port is open from outside (a public address, a forwarded or mapped port): the
node publishes ``ws://OBSERVED:PORT/mesh`` as a confirmed candidate. Otherwise it is
behind a router and relies on relay reservations. The answers are checked: a reply
that is not an address, or names an address nobody could dial (loopback, multicast,
unspecified), is refused (ReachabilityError) and nothing is published from it. A
bootstrap can still lie with a well-formed public address; the worst it achieves is
an endpoint that does not answer, which dialers pass over (mesh/addresses.py).
"""

from __future__ import annotations

import enum
import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from mesh.addresses import AddressBook, Kind, endpoint_url, is_lan_ip
from mesh.errors import RemoteError

__all__ = [
    "DialBack",
    "Observed",
    "Reachability",
    "ReachabilityError",
    "Status",
    "parse_dialback",
    "parse_observed",
    "probe",
    "publish",
    "status_of",
]

PROBE_TIMEOUT = 10.0


class ReachabilityError(RemoteError):
    reason = "bad_observed"


class Reachability(enum.Enum):
    UNKNOWN = "unknown"      # not checked yet, or no bootstrap answered
    PUBLIC = "public"        # reachable directly at a confirmed address
    RELAYED = "relayed"      # behind a router, reachable through relays
    LAN_ONLY = "lan_only"    # neither: only machines on the same LAN can reach us


@dataclass(frozen=True)
class Observed:
    address: str
    port: int

    @property
    def behind_lan(self) -> bool:
        """The bootstrap itself is on our LAN: it saw a private address."""
        return is_lan_ip(self.address)


@dataclass(frozen=True)
class DialBack:
    observed: Observed
    reachable: bool
    detail: str


def _address(value: Any) -> str:
    if not isinstance(value, str) or len(value) > 64:
        raise ReachabilityError("observed address must be an IP address string")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ReachabilityError(f"observed address {value[:64]!r} is not an IP address") \
            from None
    if ip.is_loopback or ip.is_unspecified or ip.is_multicast or ip.is_link_local \
            or ip.is_reserved:
        raise ReachabilityError(f"observed address {ip} cannot be anyone's address")
    return str(ip)


def _port(value: Any, low: int = 0) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= 65535:
        raise ReachabilityError("observed port must be an integer in 0..65535")
    return value


def parse_observed(obj: Any) -> Observed:
    if not isinstance(obj, dict) or set(obj) != {"address", "port"}:
        raise ReachabilityError("observed answer must be {address, port}")
    return Observed(_address(obj["address"]), _port(obj["port"]))


def parse_dialback(obj: Any, port: int) -> DialBack:
    if not isinstance(obj, dict) or set(obj) != {"address", "port", "reachable", "detail"}:
        raise ReachabilityError("dial-back answer must be {address, port, reachable, detail}")
    if _port(obj["port"], 1) != port:
        raise ReachabilityError(f"dial-back tried port {obj['port']}, we asked for {port}")
    if not isinstance(obj["reachable"], bool) or not isinstance(obj["detail"], str):
        raise ReachabilityError("dial-back reachable must be a boolean, detail a string")
    return DialBack(Observed(_address(obj["address"]), port), obj["reachable"],
                    obj["detail"][:64])


async def probe(bootstrap: str, mesh_port: int, *,
                within: float = PROBE_TIMEOUT) -> DialBack:
    """Ask ``bootstrap`` (http://host:port) to dial us back on ``mesh_port``.
    Raises ReachabilityError for a bad answer, RemoteError("unreachable") when the
    bootstrap cannot be asked."""
    client = AsyncHTTPClient()
    request = HTTPRequest(f"{bootstrap.rstrip('/')}/v1/dialback", method="POST",
                          body=json.dumps({"port": mesh_port}),
                          headers={"Content-Type": "application/json"},
                          connect_timeout=within, request_timeout=within)
    try:
        response = await client.fetch(request)
        obj = json.loads(response.body)
    except (HTTPClientError, OSError, ValueError) as exc:
        raise RemoteError(f"cannot ask {bootstrap} for a dial-back: {exc}",
                          "unreachable") from None
    return parse_dialback(obj, mesh_port)


def publish(book: AddressBook, result: DialBack, path: str = "/mesh") -> None:
    """Record what a dial-back showed: a confirmed public candidate when it got
    through, none otherwise (an earlier one is withdrawn)."""
    url = endpoint_url(result.observed.address, result.observed.port, path)
    book.set_kind(Kind.PUBLIC, [url] if result.reachable else [], confirmed=True)


@dataclass(frozen=True)
class Status:
    """What the UI shows under Settings: how others reach us."""

    state: Reachability
    public: tuple[str, ...]
    relays: tuple[str, ...]
    lan: tuple[str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"state": self.state.value, "public": list(self.public),
                "relays": list(self.relays), "lan": list(self.lan)}


def status_of(book: AddressBook, checked: bool) -> Status:
    def urls(*kinds: Kind) -> tuple[str, ...]:
        return tuple(c.url for c in book.candidates() if c.kind in kinds
                     and (c.confirmed or c.kind in (Kind.LAN, Kind.RELAY, Kind.CONFIGURED)))

    public = urls(Kind.PUBLIC, Kind.MAPPED, Kind.CONFIGURED)
    relays, lan = urls(Kind.RELAY), urls(Kind.LAN)
    if public:
        state = Reachability.PUBLIC
    elif relays:
        state = Reachability.RELAYED
    elif checked:
        state = Reachability.LAN_ONLY
    else:
        state = Reachability.UNKNOWN
    return Status(state, public, relays, lan)
