"""mDNS / DNS-SD adapter for LAN discovery (python-zeroconf), around mesh/lan.py's core.

Why an adapter: the core decides what to announce and who matched; this module only
puts the announcement on the LAN as a ``_parley._tcp`` service (a random instance and
host name per registration, never the user id), browses for others, and hands a match
to ``on_match``. What strangers announce is parsed, found to match no one, and dropped:
no state is kept about it beyond the instance names zeroconf currently sees.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import secrets
import time
from collections.abc import Callable, Coroutine, Mapping
from typing import Any

from zeroconf import IPVersion, ServiceStateChange, Zeroconf
from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

from mesh.addresses import lan_addresses
from mesh.errors import AnnouncementError
from mesh.lan import EPOCH_SECONDS, SERVICE_TYPE, Announcement, LanCore, Match

__all__ = ["LanDiscovery", "lan_ipv4_addresses"]

log = logging.getLogger(__name__)

RESOLVE_TIMEOUT_MS = 3000
CHECK_INTERVAL = 30.0   # how often our peer list and addresses are compared to what we announce
MAX_PRESENT = 256       # service names remembered (to look at again when our peers change)
MAX_PENDING = 32        # resolutions in flight: a flood of names waits its turn or is dropped


def lan_ipv4_addresses() -> tuple[str, ...]:
    """Our interfaces' LAN-dialable IPv4 addresses (zeroconf runs IPv4 only here)."""
    return tuple(a for a in lan_addresses() if ipaddress.ip_address(a).version == 4)


class LanDiscovery:
    """Announce ourselves and recognise known peers on the LAN.

    ``peers()`` returns user id -> identity key of everyone we may link with (contacts,
    group members); ``on_match`` gets each recognised announcement, possibly repeatedly.
    """

    def __init__(self, core: LanCore, port: int, *,
                 peers: Callable[[], Mapping[str, bytes]],
                 on_match: Callable[[Match], None],
                 addresses: Callable[[], tuple[str, ...]] = lan_ipv4_addresses,
                 clock: Callable[[], float] = time.time,
                 check_interval: float = CHECK_INTERVAL) -> None:
        self.core, self.port = core, port
        self._peers, self._on_match = peers, on_match
        self._addresses, self._clock = addresses, clock
        self._check_interval = check_interval
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._announced: tuple[object, ...] | None = None
        self._present: set[str] = set()
        self._known: frozenset[str] = frozenset()
        self._tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        self._zc = AsyncZeroconf(ip_version=IPVersion.V4Only)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, SERVICE_TYPE,
                                            handlers=[self._on_change])
        self._loop = asyncio.get_running_loop().create_task(self._run())

    async def close(self) -> None:
        tasks = [t for t in (self._loop, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._browser is not None:
            await self._browser.async_cancel()
        if self._zc is not None:
            if self._info is not None:
                with contextlib.suppress(Exception):  # best effort: a goodbye packet
                    await self._zc.async_unregister_service(self._info)
            await self._zc.async_close()

    async def _run(self) -> None:
        while True:
            await self._update()
            now = self._clock()
            to_epoch = EPOCH_SECONDS - now % EPOCH_SECONDS
            await asyncio.sleep(min(self._check_interval, to_epoch + 0.5))

    async def _update(self) -> None:
        peers = dict(self._peers())
        known = frozenset(peers)
        if known != self._known:   # someone new may already be announcing: look again
            self._known = known
            for name in list(self._present):
                self._spawn(self._resolve(name))
        await self._announce(peers)

    async def _announce(self, peers: Mapping[str, bytes]) -> None:
        async with self._lock:
            await self._register(peers)

    async def _register(self, peers: Mapping[str, bytes]) -> None:
        assert self._zc is not None
        now = self._clock()
        addresses = self._addresses()
        state = (self.core.epoch(now), addresses, tuple(sorted(peers.items())))
        if state == self._announced:
            return
        try:
            announcement = self.core.announcement(now, self.port, addresses, peers)
        except AnnouncementError as exc:  # no LAN address (yet)
            log.debug("not announcing on the LAN: %s", exc)
            return
        label = secrets.token_hex(8)
        info = AsyncServiceInfo(
            SERVICE_TYPE, f"{label}.{SERVICE_TYPE}", port=self.port,
            properties=announcement.to_txt(), server=f"{label}.local.",
            addresses=[ipaddress.ip_address(a).packed for a in announcement.addresses])
        if self._info is not None:
            await self._zc.async_unregister_service(self._info)
        self._info = info
        await self._zc.async_register_service(info)
        self._announced = state
        log.debug("announced on the LAN: %d tags, %s", len(announcement.tags),
                  ", ".join(announcement.addresses))

    def _on_change(self, zeroconf: Zeroconf, service_type: str, name: str,
                   state_change: ServiceStateChange) -> None:
        if state_change is ServiceStateChange.Removed:
            self._present.discard(name)
            return
        if len(self._present) < MAX_PRESENT:
            self._present.add(name)
        self._spawn(self._resolve(name))

    async def _resolve(self, name: str) -> None:
        if self._zc is None or (self._info is not None and name == self._info.name):
            return
        info = AsyncServiceInfo(SERVICE_TYPE, name)
        if not await info.async_request(self._zc.zeroconf, RESOLVE_TIMEOUT_MS):
            return
        try:
            announcement = Announcement.from_txt(info.properties)
        except AnnouncementError as exc:
            log.debug("ignored a LAN announcement: %s", exc)
            return
        for match in self.core.match(announcement, self._clock(), self._peers()):
            self._on_match(match)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if len(self._tasks) >= MAX_PENDING:
            coro.close()
            log.debug("too many LAN announcements to look at: one dropped")
            return
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
