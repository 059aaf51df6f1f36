"""Outgoing HTTP requests whose caller may be cancelled (a node stopping mid-request).

Tornado's fetch future is cancelled with the task awaiting it, and the request's later
failure is then logged at ERROR, "Exception after Future was cancelled", with a
traceback: a node whose UI port was taken stopped while registering at its bootstrap
and printed that after its one-line error. Here the fetch is shielded and ends on its
own timeout; if the caller was cancelled, its outcome is read and dropped (asyncio
would otherwise log "Future exception was never retrieved").
"""

from __future__ import annotations

import asyncio
from typing import Any

from tornado.httpclient import AsyncHTTPClient, HTTPRequest, HTTPResponse

__all__ = ["fetch"]


async def fetch(client: AsyncHTTPClient, request: HTTPRequest | str,
                **options: Any) -> HTTPResponse:
    """``client.fetch(request, **options)``, cancellable without an error logged."""
    future = client.fetch(request, **options)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        future.add_done_callback(_drop_outcome)
        raise


def _drop_outcome(future: asyncio.Future[HTTPResponse]) -> None:
    if not future.cancelled():
        future.exception()
