"""Starting and stopping a bootstrap server (used by run.py, tests and benchmarks)."""

from __future__ import annotations

import os
from dataclasses import dataclass

from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets

from bootstrap.api import BootstrapConfig, BootstrapContext, make_app
from bootstrap.store import open_store

__all__ = ["BootstrapServer", "start_bootstrap"]


@dataclass
class BootstrapServer:
    ctx: BootstrapContext
    http: HTTPServer
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    async def stop(self) -> None:
        self.http.stop()
        await self.http.close_all_connections()
        self.ctx.conn.close()


def start_bootstrap(host: str, port: int, db_path: str | os.PathLike[str],
                    config: BootstrapConfig | None = None) -> BootstrapServer:
    """Open the database and listen; port 0 picks a free port (see ``.port``).

    Must be called with an asyncio event loop running (Tornado's IOLoop).
    """
    conn = open_store(db_path)
    ctx = BootstrapContext(conn, config or BootstrapConfig())
    # The handlers cap bodies at 64 KiB themselves (with a JSON 413); this is the
    # connection-level backstop for anything that slips past them.
    http = HTTPServer(make_app(ctx), max_body_size=1024 * 1024, idle_connection_timeout=60)
    sockets = bind_sockets(port, host)
    http.add_sockets(sockets)
    return BootstrapServer(ctx, http, host, sockets[0].getsockname()[1])
