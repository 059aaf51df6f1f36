"""Bluetooth meetups: links over RFCOMM, and the stream adapter they run on.

Two layers, the lower one usable without any Bluetooth at all:

1. **Stream links.** ``open_stream_link(sock, adopt)`` runs the ordinary link
   (mesh.link: handshake, sealing, frames) over any connected stream socket, each link
   message carried as one StreamFramer record (4-byte big-endian length, then the
   message). ``adopt`` registers the link where WebSocket links live
   (ConnectionManager.adopt), so gossip, anti-entropy and attachments run over it
   unchanged. An ``admit`` hook sees the verified peer the moment the handshake ends
   and may close the link before anything else is said; an ``observe`` hook sees every
   frame that arrives. The tests drive this layer over ``socket.socketpair()``
   standing in for RFCOMM; they never claim to test radio.

2. **The radio.** ``BluetoothService`` advertises an SDP record with SERVICE_UUID on
   an RFCOMM server socket, scans for nearby devices advertising it every
   SCAN_INTERVAL seconds, connects to them, and hands every connected socket (either
   direction) to its ``on_socket`` callback. Of two devices that see each other, the
   one with the lower Bluetooth address connects at once; the other connects only
   if, one scan later, it still has no link to that device (asymmetric visibility).
   PyBluez calls block, so they run in a worker thread; ``PyBluezRadio`` is the
   only code that imports ``bluetooth`` (PyPI: PyBluez-updated), and only when asked.

Protocol details (UUID, SDP record, framing, who connects): docs/protocol.md §10.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from mesh import wire
from mesh.errors import BluetoothUnavailable, LinkRefused, RadioError
from mesh.transport import LinkConnection, StreamTransport, Transport

__all__ = [
    "CONNECT_TIMEOUT",
    "INQUIRY_DURATION",
    "INSTALL_HINT",
    "SCAN_INTERVAL",
    "SERVICE_NAME",
    "SERVICE_UUID",
    "STREAM_KEEPALIVE",
    "Availability",
    "BluetoothService",
    "Listener",
    "PyBluezRadio",
    "Radio",
    "Sighting",
    "StreamLink",
    "open_stream_link",
    "probe",
]

log = logging.getLogger("parley.mesh.bluetooth")

# The Parley service class UUID: fixed for protocol version 1 (docs/protocol.md §10).
SERVICE_UUID = "22a77070-6cc1-48ab-96f1-d5d9c27990d3"
SERVICE_NAME = "Parley"
SERVICE_DESCRIPTION = "Parley mesh link (length-prefixed link frames over RFCOMM)"
SCAN_INTERVAL = 60.0        # seconds between inquiries (each takes ~10 s of radio time)
INQUIRY_DURATION = 8        # in units of 1.28 s, as HCI counts it: ~10 s
CONNECT_TIMEOUT = 20.0      # RFCOMM connect (paging a phone can take a while)
# RFCOMM has no keepalive of its own (WebSocket links use WebSocket pings): the link
# pings after this many idle seconds and gives up after three times as long.
STREAM_KEEPALIVE = 15.0
INSTALL_HINT = ("install the optional extra with `make bluetooth` (PyPI PyBluez-updated; "
                "needs Debian's libbluetooth-dev to build)")

T = TypeVar("T")


@dataclass(frozen=True)
class Availability:
    available: bool
    reason: str | None = None   # not_installed | no_adapter | no_sdp
    message: str = ""


# -- 1. links over a connected stream socket -------------------------------------------


Admit = Callable[[LinkConnection], str | None]
Observe = Callable[[LinkConnection, wire.Frame], None]


@dataclass(eq=False)
class StreamLink:
    """A LinkConnection running over a stream socket, and the task reading it."""

    conn: LinkConnection
    transport: StreamTransport
    task: asyncio.Task[None]
    address: str | None = None   # the Bluetooth address, when it is a radio link
    opened_at: float = field(default_factory=time.time)

    def close(self, reason: str = "normal") -> None:
        self.conn.close(reason)

    async def wait_closed(self) -> None:
        await self.conn.wait_closed()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self.task)


async def open_stream_link(sock: socket.socket,
                           adopt: Callable[[Transport], LinkConnection | None], *,
                           admit: Admit | None = None, observe: Observe | None = None,
                           address: str | None = None) -> StreamLink:
    """Run a link over the connected stream socket ``sock`` (it is ours from now on).

    ``adopt(transport)`` returns an attached LinkConnection (ConnectionManager.adopt,
    which decides who speaks first), or None to refuse (LinkRefused). ``admit(conn)``
    runs once the handshake has verified the peer and before anyone else hears of the
    link: a returned reason closes it at once, so a refused peer learns nothing beyond
    the handshake. ``observe(conn, frame)`` sees each frame before the registry does.
    """
    sock.setblocking(False)
    try:
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    transport = StreamTransport(reader, writer)
    conn = adopt(transport)
    if conn is None:
        transport.abort()
        raise LinkRefused("the connection manager refused another link")
    _hook(conn, admit, observe)
    task = asyncio.get_running_loop().create_task(transport.pump(conn))
    return StreamLink(conn, transport, task, address)


def _hook(conn: LinkConnection, admit: Admit | None, observe: Observe | None) -> None:
    """Put ``admit`` in front of the registry's on_established and ``observe`` in
    front of its on_frame. Nothing has been read yet, so no event can slip past."""
    established, on_frame = conn.on_established, conn.on_frame

    def admitted(c: LinkConnection) -> None:
        reason = admit(c) if admit is not None else None
        if reason is not None:
            c.close(reason, "")
        elif established is not None:
            established(c)

    def observed(c: LinkConnection, frame: wire.Frame) -> None:
        if observe is not None:
            observe(c, frame)
        if on_frame is not None:
            on_frame(c, frame)

    conn.on_established = admitted
    conn.on_frame = observed


# -- 2. the radio ----------------------------------------------------------------------


@dataclass(frozen=True)
class Sighting:
    """A nearby device that advertises the Parley service on RFCOMM ``channel``."""

    address: str
    channel: int


class Listener(Protocol):
    """An advertised, listening RFCOMM server socket (non-blocking)."""

    address: str   # our own adapter's address

    def fileno(self) -> int: ...

    def accept(self) -> tuple[socket.socket, str]:
        """A connected socket and the peer's address; BlockingIOError if none waits."""


class Radio(Protocol):
    """The blocking Bluetooth calls BluetoothService makes, each in a worker thread
    (PyBluezRadio in production). Failures raise RadioError."""

    def open(self) -> Listener: ...

    def scan(self) -> list[Sighting]: ...

    def connect(self, address: str, channel: int) -> socket.socket: ...

    def close(self) -> None: ...


OnSocket = Callable[[socket.socket, bool, str], Awaitable[None]]


class BluetoothService:
    """Advertise, scan, connect, accept. ``on_socket(sock, initiator, address)`` runs
    a link over each connected socket and returns when it is over.

    ``nearby`` maps the address of every device seen advertising Parley (or linked to
    us) to when it was last seen (``clock()`` seconds); ``active`` holds the addresses
    with a link running now.
    """

    def __init__(self, radio: Radio, on_socket: OnSocket, *,
                 scan_interval: float = SCAN_INTERVAL,
                 clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None) -> None:
        self.radio = radio
        self.on_socket = on_socket
        self.scan_interval = scan_interval
        self.clock = clock
        self.rng = rng or random.Random()
        self.address: str | None = None
        self.nearby: dict[str, float] = {}
        self.active: Counter[str] = Counter()
        self.scans = 0
        self._seen: Counter[str] = Counter()
        self._dialing: set[str] = set()
        self._listener: Listener | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._scan_task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def running(self) -> bool:
        return self._listener is not None and not self._closed

    async def start(self) -> None:
        """Open, advertise and start scanning; BluetoothUnavailable if this machine
        cannot (no extra, no adapter, no SDP server)."""
        loop = asyncio.get_running_loop()
        self._executor = ThreadPoolExecutor(max_workers=2,
                                            thread_name_prefix="parley-bluetooth")
        try:
            self._listener = await self._blocking(self.radio.open)
        except BaseException:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
            raise
        self.address = self._listener.address.upper()
        loop.add_reader(self._listener.fileno(), self._accept_ready)
        self._scan_task = loop.create_task(self._scan_loop())
        log.info("Bluetooth meetups on: %s advertises Parley (%s)", self.address, SERVICE_UUID)

    async def close(self) -> None:
        """Stop advertising and scanning; links running over sockets end with
        their tasks (cancelled here)."""
        self._closed = True
        if self._listener is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._listener.fileno())
        tasks = [t for t in (self._scan_task, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._executor is not None:
            if self._listener is not None:
                with contextlib.suppress(RadioError):
                    await self._blocking(self.radio.close)
            # A scan in progress cannot be interrupted; do not wait for it.
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        self._listener = None

    # internals

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        assert self._executor is not None
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _accept_ready(self) -> None:
        while self._listener is not None and not self._closed:
            try:
                sock, address = self._listener.accept()
            except BlockingIOError:
                return
            except (OSError, RadioError) as exc:
                log.info("Bluetooth accept failed: %s", exc)
                return
            self._spawn(self._run_socket(sock, False, address.upper()))

    async def _run_socket(self, sock: socket.socket, initiator: bool, address: str) -> None:
        self.active[address] += 1
        self.nearby[address] = self.clock()
        try:
            await self.on_socket(sock, initiator, address)
        except Exception:
            log.exception("Bluetooth link with %s failed", address)
        finally:
            self.active[address] -= 1
            if self.active[address] <= 0:
                del self.active[address]
            self.nearby[address] = self.clock()

    def _should_dial(self, address: str) -> bool:
        """The lower address connects; the higher one only once it has seen the other
        twice without a link (the other may not see us)."""
        return self.address is None or self.address < address or self._seen[address] >= 2

    async def _scan_loop(self) -> None:
        while not self._closed:
            try:
                sightings = await self._blocking(self.radio.scan)
            except RadioError as exc:
                log.info("Bluetooth scan failed: %s", exc)
                sightings = []
            self.scans += 1
            now = self.clock()
            for seen in sightings:
                address = seen.address.upper()
                if address == self.address:
                    continue
                self.nearby[address] = now
                self._seen[address] += 1
                if address in self.active or address in self._dialing:
                    continue
                if self._should_dial(address):
                    self._dialing.add(address)
                    self._spawn(self._dial(address, seen.channel))
            await asyncio.sleep(self.scan_interval * self.rng.uniform(0.8, 1.2))

    async def _dial(self, address: str, channel: int) -> None:
        try:
            try:
                sock = await self._blocking(self.radio.connect, address, channel)
            except RadioError as exc:
                log.info("Bluetooth connect to %s failed: %s", address, exc)
                return
            self._seen[address] = 0
            await self._run_socket(sock, True, address)
        finally:
            self._dialing.discard(address)


def _import_pybluez() -> Any:
    try:
        import bluetooth  # the optional extra, imported only when asked for
    except ImportError:
        raise BluetoothUnavailable(f"PyBluez is not installed: {INSTALL_HINT}",
                                   "not_installed") from None
    return bluetooth


def _pybluez_errors(bt: Any) -> tuple[type[BaseException], ...]:
    """PyBluez raises BluetoothError (an OSError) or, from its C module, _bluetooth.error."""
    errors: list[type[BaseException]] = [OSError, bt.BluetoothError]
    with contextlib.suppress(ImportError):
        import bluetooth._bluetooth as low
        errors.append(low.error)
    return tuple(errors)


def _to_socket(bt_sock: Any) -> socket.socket:
    """A stdlib socket on the same RFCOMM connection (asyncio needs one; this Python
    may lack AF_BLUETOOTH, but a socket made from a descriptor needs no family)."""
    fd = os.dup(bt_sock.fileno())
    bt_sock.close()
    sock = socket.socket(fileno=fd)
    sock.setblocking(False)
    return sock


class _PyBluezListener:
    def __init__(self, server: Any, address: str, errors: tuple[type[BaseException], ...]
                 ) -> None:
        self._server, self.address, self._errors = server, address, errors

    def fileno(self) -> int:
        return int(self._server.fileno())

    def accept(self) -> tuple[socket.socket, str]:
        try:
            client, (address, _channel) = self._server.accept()
        except self._errors as exc:
            if getattr(exc, "errno", None) in (11, 35) or "temporarily" in str(exc).lower():
                raise BlockingIOError from None
            raise RadioError(f"accept failed: {exc}", "connect_failed") from None
        return _to_socket(client), str(address)


class PyBluezRadio:
    """The Radio over PyBluez (BlueZ on Linux). Constructing it imports the extra:
    BluetoothUnavailable("not_installed") when it is missing."""

    def __init__(self, *, uuid: str = SERVICE_UUID, name: str = SERVICE_NAME,
                 inquiry: int = INQUIRY_DURATION,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        self.bt = _import_pybluez()
        self.errors = _pybluez_errors(self.bt)
        self.uuid, self.name = uuid, name
        self.inquiry, self.connect_timeout = inquiry, connect_timeout
        self._server: Any = None

    def local_address(self) -> str:
        try:
            self.bt.BluetoothSocket(self.bt.RFCOMM).close()
        except self.errors as exc:
            raise BluetoothUnavailable(f"this system has no Bluetooth ({_describe(exc)})",
                                       "no_adapter") from None
        try:
            return str(self.bt.read_local_bdaddr()[0]).upper()
        except self.errors as exc:
            raise BluetoothUnavailable(f"no Bluetooth adapter found ({_describe(exc)})",
                                       "no_adapter") from None

    def open(self) -> Listener:
        bt = self.bt
        address = self.local_address()
        try:
            server = bt.BluetoothSocket(bt.RFCOMM)
            server.bind(("", bt.PORT_ANY))
            server.listen(4)
        except self.errors as exc:
            raise BluetoothUnavailable(f"cannot listen on RFCOMM ({_describe(exc)})",
                                       "no_adapter") from None
        try:
            bt.advertise_service(server, self.name, service_id=self.uuid,
                                 service_classes=[self.uuid, bt.SERIAL_PORT_CLASS],
                                 profiles=[bt.SERIAL_PORT_PROFILE],
                                 description=SERVICE_DESCRIPTION)
        except self.errors as exc:
            server.close()
            raise BluetoothUnavailable(
                f"cannot register the Parley SDP service ({_describe(exc)}); BlueZ's "
                "bluetoothd must run with --compat", "no_sdp") from None
        server.setblocking(False)
        self._server = server
        return _PyBluezListener(server, address, self.errors)

    def scan(self) -> list[Sighting]:
        try:
            addresses = self.bt.discover_devices(duration=self.inquiry, flush_cache=True,
                                                 lookup_names=False)
        except self.errors as exc:
            raise RadioError(f"inquiry failed ({_describe(exc)})", "scan_failed") from None
        found: list[Sighting] = []
        for address in addresses:
            try:
                services = self.bt.find_service(uuid=self.uuid, address=address)
            except self.errors:
                continue
            for service in services:
                port = service.get("port")
                if service.get("protocol") == "RFCOMM" and type(port) is int \
                        and 1 <= port <= 30:
                    found.append(Sighting(str(address).upper(), port))
                    break
        return found

    def connect(self, address: str, channel: int) -> socket.socket:
        bt = self.bt
        sock = None
        try:
            sock = bt.BluetoothSocket(bt.RFCOMM)
            sock.settimeout(self.connect_timeout)
            sock.connect((address, channel))
            return _to_socket(sock)
        except self.errors as exc:
            if sock is not None:
                with contextlib.suppress(*self.errors):
                    sock.close()
            raise RadioError(f"cannot connect to {address} ({_describe(exc)})",
                             "connect_failed") from None

    def close(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(*self.errors):
                self.bt.stop_advertising(server)
            with contextlib.suppress(*self.errors):
                server.close()


def _describe(exc: BaseException) -> str:
    args = getattr(exc, "args", ())
    if len(args) >= 2 and isinstance(args[1], str):
        return f"{args[1]} [errno {args[0]}]"
    return str(exc) or type(exc).__name__


def probe() -> Availability:
    """Can Bluetooth meetups run here? Imports the extra and asks for the adapter's
    address (blocking, but quick); never raises."""
    try:
        PyBluezRadio().local_address()
    except BluetoothUnavailable as exc:
        return Availability(False, exc.reason, str(exc))
    return Availability(True)
