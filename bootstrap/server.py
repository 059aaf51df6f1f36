"""Starting and stopping a bootstrap server (used by run.py, tests and benchmarks)."""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from bootstrap.api import BootstrapConfig, BootstrapContext, make_app
from bootstrap.observed import observed_routes
from bootstrap.store import open_store
from mesh.dht import DhtConfig, DhtNode, bind_udp
from mesh.errors import binding
from mesh.relay import RelayLimits
from mesh.relay_server import RelayService, relay_routes

__all__ = ["DEFAULT_RELAY", "BootstrapServer", "start_bootstrap"]

DEFAULT_RELAY = RelayLimits()


@dataclass
class BootstrapServer:
    ctx: BootstrapContext
    http: HTTPServer
    host: str
    port: int
    dht: DhtNode | None = None  # the mirror node, when started with a dht_port
    relay: RelayService | None = None  # the circuit relay, unless started without one

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        self.http.stop()
        if self.relay is not None:
            self.relay.stop()
        await self.http.close_all_connections()
        if self.dht is not None:
            await self.dht.stop()
        self.ctx.conn.close()


def start_bootstrap(host: str, port: int, db_path: str | os.PathLike[str],
                    config: BootstrapConfig | None = None, *, dht_port: int | None = None,
                    dht_config: DhtConfig | None = None,
                    relay: RelayLimits | None = DEFAULT_RELAY) -> BootstrapServer:
    """Open the database and listen; port 0 picks a free port (see ``.port``).

    With ``dht_port`` (UDP; 0 picks a free one) the server also runs a Kademlia node
    on the same host, tells clients its address in /v1/health and mirrors every record
    it accepts into the DHT. Unless ``relay`` is None it is also a circuit relay
    (mesh/relay_server.py) with those limits, at ws://HOST:PORT/relay. Must be called
    with an asyncio event loop running.
    """
    conn = open_store(db_path)
    ctx = BootstrapContext(conn, config or BootstrapConfig())
    # The handlers cap bodies at 64 KiB themselves (with a JSON 413); this is the
    # connection-level backstop for anything that slips past them.
    app = make_app(ctx)
    service = None if relay is None else RelayService(relay)
    # Added rules come before the catch-all 404 of make_app's application.
    app.add_handlers(r".*", observed_routes(ctx)
                     + ([] if service is None else relay_routes(service)))
    http = HTTPServer(app, max_body_size=1024 * 1024, idle_connection_timeout=60)
    sockets: list[socket.socket] = []
    dht = None
    try:
        with binding("tcp", port):
            sockets = bind_sockets(port, host)
        if dht_port is not None:
            udp = bind_udp(host, dht_port)
            dht = DhtNode(dht_config)
            dht.listen_socket(udp)
            ctx.dht_address = dht.address
            ctx.on_record = dht.mirror
    except BaseException:
        for sock in sockets:
            sock.close()
        conn.close()
        raise
    http.add_sockets(sockets)
    return BootstrapServer(ctx, http, host, sockets[0].getsockname()[1], dht, service)
