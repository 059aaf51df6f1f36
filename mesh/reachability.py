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

import asyncio
import contextlib
import enum
import ipaddress
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPClientError, HTTPRequest

from mesh.addresses import AddressBook, Kind, endpoint_url, is_lan_ip
from mesh.errors import ReachabilityError, RemoteError
from mesh.httpfetch import fetch
from mesh.identity import KeyPair
from mesh.relay_client import RelayClient
from mesh.transport import LinkConnection, Transport

__all__ = [
    "DialBack",
    "Observed",
    "Reachability",
    "ReachabilityService",
    "Status",
    "parse_dialback",
    "parse_observed",
    "probe",
    "publish",
    "status_of",
]

log = logging.getLogger("parley.mesh.reachability")

PROBE_TIMEOUT = 10.0
RECHECK = 600.0   # a node's situation changes when the laptop moves: look again
RETRY = 30.0      # after a bootstrap that did not answer


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
        response = await fetch(client, request)
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


class ReachabilityService:
    """Keeps a node's AddressBook current and knows how others reach it.

    Every RECHECK seconds (RETRY after a failure) it asks the bootstrap for a dial-back
    on the mesh port and publishes the confirmed public address, or withdraws it. When
    the dial-back fails, or when relays were configured explicitly, it keeps relay
    reservations (RelayClient: the bootstrap and ``relays``), whose addresses go into the
    book as RELAY candidates; circuits arrive through ``accept_relayed``."""

    def __init__(self, identity: KeyPair, book: AddressBook, *, bootstrap: str | None,
                 mesh_port: int | None, relays: Sequence[str] = (),
                 accept_relayed: Callable[[Transport], LinkConnection | None],
                 recheck: float = RECHECK, retry: float = RETRY) -> None:
        self.book = book
        self.bootstrap = bootstrap or None
        self.mesh_port = mesh_port
        self.explicit_relays = bool(relays)
        candidates = [*relays, *([bootstrap] if bootstrap else [])]
        self.relays = RelayClient(identity, candidates, accept_relayed,
                                  on_change=lambda urls: book.set_kind(Kind.RELAY, urls))
        self.recheck, self.retry = recheck, retry
        self.checked = False
        self.last: DialBack | None = None
        self.problem = ""
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.explicit_relays:
            self.relays.start()
        if self.bootstrap is not None and self.mesh_port is not None and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.relays.close()

    def status(self) -> Status:
        return status_of(self.book, self.checked)

    def punch_addresses(self, port: int) -> tuple[str, ...]:
        """Our public "ip:port" for hole punching: the address the bootstrap saw, with
        the mesh port (a router that keeps ports maps it there). Empty when unknown or
        when the bootstrap is on our LAN."""
        if self.last is None or self.last.observed.behind_lan:
            return ()
        host = self.last.observed.address
        return (f"[{host}]:{port}" if ":" in host else f"{host}:{port}",)

    def to_json(self) -> dict[str, Any]:
        """The ``reachability`` object of the UI API (docs/api.md)."""
        relays = [{"relay": s.url, "state": s.state, "address": s.address,
                   "reason": s.reason} for s in self.relays.status.values()]
        return {**self.status().to_json(), "relay_status": relays, "problem": self.problem}

    async def _run(self) -> None:
        assert self.bootstrap is not None and self.mesh_port is not None
        while True:
            wait = self.recheck
            try:
                self.last = await probe(self.bootstrap, self.mesh_port)
            except RemoteError as exc:  # ReachabilityError too: nothing is published
                self.problem = f"{exc.reason}: {exc}"
                log.info("reachability check failed: %s", self.problem)
                wait = self.retry
            else:
                self.problem = ""
                self.checked = True
                publish(self.book, self.last)
                log.info("reachability: %s:%d %s (%s)", self.last.observed.address,
                         self.mesh_port, "reachable" if self.last.reachable else "unreachable",
                         self.last.detail)
                if not self.last.reachable:
                    self.relays.start()
            await asyncio.sleep(wait)
