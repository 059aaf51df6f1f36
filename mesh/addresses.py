"""Where a node can be reached (what it publishes) and in which order to dial others.

The node collects *candidates* from several sources: its LAN interfaces, the public
address a bootstrap observes (confirmed by a dial-back, mesh/reachability.py), port
mappings on the home router (UPnP / NAT-PMP), relay reservations
(mesh/relay_client.py) and addresses the user configured. ``AddressBook`` keeps them
and turns them into the record's ``endpoints`` (at most MAX_ENDPOINTS, best first);
``order_endpoints`` sorts another peer's endpoints for dialling: what worked before,
then LAN, then direct, then relayed, as ICE prefers host over server-reflexive over
relayed candidates (RFC 8445 §5.1.2).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import ifaddr

from mesh.identity import MAX_ENDPOINTS
from mesh.relay import is_relay_address

__all__ = [
    "AddressBook",
    "Candidate",
    "Kind",
    "endpoint_url",
    "is_lan_ip",
    "lan_addresses",
    "order_endpoints",
    "path_of",
]


class Kind(enum.Enum):
    """Where a candidate came from; the order is the publishing order."""

    CONFIGURED = "configured"   # --advertise: the user knows best
    MAPPED = "mapped"           # a port mapping on the home router
    PUBLIC = "public"           # the address a bootstrap observed
    LAN = "lan"                 # an address of one of our interfaces
    RELAY = "relay"             # a reservation on a circuit relay


_PUBLISH_ORDER = list(Kind)


@dataclass(frozen=True)
class Candidate:
    url: str
    kind: Kind
    confirmed: bool   # a dial-back reached it (only confirmed MAPPED/PUBLIC are published)


class AddressBook:
    """The node's candidates. Other components add and remove theirs; ``on_change``
    receives the new endpoint tuple whenever it changes (the node then re-signs and
    republishes its record). Not thread-safe: call from the event loop."""

    def __init__(self, on_change: Callable[[tuple[str, ...]], None] | None = None,
                 limit: int = MAX_ENDPOINTS) -> None:
        self.on_change = on_change
        self.limit = limit
        self._candidates: dict[str, Candidate] = {}
        self._published: tuple[str, ...] = ()

    def add(self, url: str, kind: Kind, confirmed: bool = False) -> None:
        """Add or update a candidate (``url`` as published: ws://host:port/path)."""
        self._candidates[url] = Candidate(url, kind, confirmed)
        self._changed()

    def remove(self, url: str) -> None:
        if self._candidates.pop(url, None) is not None:
            self._changed()

    def set_kind(self, kind: Kind, urls: Iterable[str], confirmed: bool = False) -> None:
        """Replace every candidate of ``kind`` at once (relays after a failover, LAN
        addresses after an interface change)."""
        for url in [u for u, c in self._candidates.items() if c.kind is kind]:
            del self._candidates[url]
        for url in urls:
            self._candidates[url] = Candidate(url, kind, confirmed)
        self._changed()

    def candidates(self, kind: Kind | None = None) -> list[Candidate]:
        return [c for c in self._candidates.values() if kind is None or c.kind is kind]

    def endpoints(self) -> tuple[str, ...]:
        """What to publish, best first, capped at ``limit``. Unconfirmed public or
        mapped addresses are left out: nobody could dial them. At least one relay
        address is kept when there is one, since LAN addresses alone do not reach
        anyone outside."""
        usable = [c for c in self._candidates.values()
                  if c.confirmed or c.kind not in (Kind.MAPPED, Kind.PUBLIC)]
        usable.sort(key=lambda c: _PUBLISH_ORDER.index(c.kind))
        chosen = usable[:self.limit]
        relays = [c for c in usable if c.kind is Kind.RELAY]
        if relays and not any(c.kind is Kind.RELAY for c in chosen):
            chosen[-1] = relays[0]
        return tuple(c.url for c in chosen)

    def _changed(self) -> None:
        endpoints = self.endpoints()
        if endpoints != self._published:
            self._published = endpoints
            if self.on_change is not None:
                self.on_change(endpoints)


def endpoint_url(host: str, port: int, path: str = "/mesh") -> str:
    host = f"[{host}]" if ":" in host else host
    return f"ws://{host}:{port}{path}"


# Addresses only reachable on a LAN. Not ipaddress's is_private, which also counts the
# documentation ranges (the NAT lab's "internet") and other special blocks as private.
_LAN_NETS = tuple(ipaddress.ip_network(n) for n in (
    "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
    "127.0.0.0/8", "fc00::/7", "fe80::/10", "::1/128"))


def is_lan_ip(address: str) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in _LAN_NETS if net.version == ip.version)


def _host_ip(url: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        host = urlsplit(url).hostname or ""
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def path_of(url: str) -> str:
    """How a link dialled to ``url`` travels: "relayed", "lan" or "direct"."""
    if is_relay_address(url):
        return "relayed"
    ip = _host_ip(url)
    return "lan" if ip is not None and is_lan_ip(str(ip)) else "direct"


_PATH_RANK = {"lan": 0, "direct": 1, "relayed": 2}


def order_endpoints(urls: Sequence[str], remembered: str | None = None) -> list[str]:
    """Dial order for a peer's endpoints: the one that worked last time, then LAN,
    then direct, then relayed; the peer's own order breaks ties."""
    ranked = sorted(range(len(urls)), key=lambda i: (
        urls[i] != remembered, _PATH_RANK[path_of(urls[i])], i))
    return [urls[i] for i in ranked]


def lan_addresses() -> list[str]:
    """IP addresses of our interfaces that others on a LAN could reach: no loopback,
    no link-local (they need a scope id nobody publishes)."""
    out: list[str] = []
    for adapter in ifaddr.get_adapters():
        for ip in adapter.ips:
            text = ip.ip if isinstance(ip.ip, str) else ip.ip[0]
            try:
                addr = ipaddress.ip_address(text)
            except ValueError:
                continue
            if not (addr.is_loopback or addr.is_link_local or addr.is_multicast):
                out.append(str(addr))
    return list(dict.fromkeys(out))
