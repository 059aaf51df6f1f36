"""What a node behind a router cannot see for itself: its public address, and whether
anyone outside can open a connection to it.

- ``GET /v1/observed`` answers the client's address and source port as this server
  sees them (like STUN's XOR-MAPPED-ADDRESS or libp2p identify's observedAddr).
- ``POST /v1/dialback`` {"port": P} makes the server open a TCP connection to the
  *requesting* address on port P and say whether it succeeded (like libp2p AutoNAT).
  It only ever dials the address the request came from, so it cannot be aimed at a
  third party; the connection is closed at once and carries no bytes.

"The client" is the address the API handlers use (ApiHandler.client_ip): behind a
``--trusted-proxy`` the address the proxy names, which is then also the one dialed back.
The proxy does not tell the client's source port, so /v1/observed answers port 0 there.

Both are rate-limited like the rest of the API and store nothing; bootstrap/openapi.py
documents them.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from bootstrap.api import ApiHandler, BootstrapContext
from mesh.jsonapi import ApiError, check_fields

__all__ = ["DIALBACK_TIMEOUT", "observed_routes"]

DIALBACK_TIMEOUT = 3.0


def _client(handler: ApiHandler) -> tuple[str, int]:
    """The client's address and, when the connection is its own (no proxy named it),
    its source port; else port 0."""
    address = handler.request.connection.context.address  # type: ignore[union-attr]
    if isinstance(address, tuple) and len(address) >= 2 \
            and handler.client_ip == handler.request.remote_ip:
        return handler.client_ip, int(address[1])
    return handler.client_ip, 0


class ObservedHandler(ApiHandler):
    def get(self) -> None:
        address, port = _client(self)
        self.send_json(200, {"address": address, "port": port})


class DialBackHandler(ApiHandler):
    async def post(self) -> None:
        body = self.json_body()
        check_fields(body, ["port"])
        port = body["port"]
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise ApiError(400, "bad_port", "port must be an integer in 1..65535")
        address, _ = _client(self)
        reachable, detail = await _try_connect(address, port)
        self.send_json(200, {"address": address, "port": port, "reachable": reachable,
                             "detail": detail})


async def _try_connect(address: str, port: int) -> tuple[bool, str]:
    try:
        async with asyncio.timeout(DIALBACK_TIMEOUT):
            _, writer = await asyncio.open_connection(address, port)
    except TimeoutError:
        return False, "timeout"
    except ConnectionRefusedError:
        return False, "refused"
    except OSError as exc:
        return False, type(exc).__name__
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True, "connected"


def observed_routes(ctx: BootstrapContext) -> list[Any]:
    return [(r"/v1/observed", ObservedHandler, {"ctx": ctx}),
            (r"/v1/dialback", DialBackHandler, {"ctx": ctx})]

