"""UiContext (what every UI handler needs) and the mixin that applies the request policy.

One UiContext is built per server by the composition root and handed to every handler
through ``initialize(ctx=...)``: there is no module-level state. The mixin is shared
by the JSON API handlers, the events WebSocket and the static file handlers, so every
response carries the same security headers and every request passes the same checks
(webapp/auth.py says which and why).
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tornado.web import HTTPError

from mesh.jsonapi import ApiError
from webapp.auth import (
    bearer_token,
    check_fetch_site,
    check_host,
    check_origin,
    check_resource_isolation,
    cookie_name,
    new_token,
    rotate_session_secret,
    security_headers,
    session_cookie_value,
    tokens_equal,
)
from webapp.events import EventHub

__all__ = ["DIST_DIR", "SIGNED_OUT", "JsonErrorMixin", "UiContext", "UiHandlerMixin"]

log = logging.getLogger("parley.webapp")

DIST_DIR = Path(__file__).resolve().parent / "dist"
_SECRET_RE = re.compile(r"[A-Za-z0-9_-]{32,}")
SIGNED_OUT = 4001  # events socket close code: the browser's session was revoked


@dataclass(eq=False)
class UiContext:
    """Collaborators and secrets of one UI server.

    ``token`` is the bearer token (also in ``<data-dir>/ui-token``), new at every
    start; ``session`` is the value of the browsers' session cookie, a separate secret
    so that the cookie jar never holds the token itself. With a ``data_dir`` it is
    derived from the session secret kept there (webapp/auth.py), so cookies survive a
    restart until ``sign_out_everywhere()``; without one it is random per process.
    Neither secret appears in the repr. (The node's API reaches its handlers through
    their own ``initialize``: see webapp/api.py.)
    """

    token: str = field(repr=False)
    port: int
    hub: EventHub = field(default_factory=EventHub)
    dist_dir: Path = DIST_DIR
    session: str = field(default_factory=new_token, repr=False)
    sockets: set[Any] = field(default_factory=set, repr=False)  # open events sockets
    data_dir: Path | None = None

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError("port must be the bound port (1-65535), not 0")
        for name in ("token", "session"):
            if not _SECRET_RE.fullmatch(getattr(self, name)):
                raise ValueError(f"{name} must be at least 32 urlsafe base64 characters")
        if tokens_equal(self.token, self.session):
            raise ValueError("the session secret must differ from the token")

    def sign_out_everywhere(self) -> None:
        """A new session secret: every browser's cookie stops working, now and after
        restarts, and their events sockets close (4001). Bearer clients keep theirs."""
        self.session = session_cookie_value(rotate_session_secret(self.data_dir)) \
            if self.data_dir is not None else new_token()
        for socket in list(self.sockets):
            if socket.by_cookie:
                socket.close(SIGNED_OUT, "signed out everywhere")

    @property
    def cookie_name(self) -> str:
        return cookie_name(self.port)

    @property
    def origin(self) -> str:
        """The origin the node prints (the browser may also use localhost:PORT)."""
        return f"http://127.0.0.1:{self.port}"

    def authenticated(self, authorization: str | None, cookie: str | None) -> bool:
        """Bearer token, else session cookie. A present Authorization header decides
        on its own: a wrong bearer token is refused even next to a good cookie."""
        if authorization is not None:
            return tokens_equal(bearer_token(authorization), self.token)
        return tokens_equal(cookie, self.session)


class UiHandlerMixin:
    """Security headers on every response, and ``guard()`` for ``prepare()``.

    Put it first in the bases of a RequestHandler subclass and set ``self.ctx`` in
    ``initialize`` before calling ``apply_security_headers()`` (Tornado sets default
    headers before ``initialize`` runs, when the context is not known yet).
    """

    ctx: UiContext
    request: Any

    def set_default_headers(self) -> None:
        super().set_default_headers()  # type: ignore[misc]
        if getattr(self, "ctx", None) is not None:
            self.apply_security_headers()

    def apply_security_headers(self) -> None:
        handler: Any = self
        handler.clear_header("Server")
        for name, value in security_headers(self.request.headers.get("Host"),
                                            self.ctx.port).items():
            handler.set_header(name, value)

    def authenticated(self) -> bool:
        handler: Any = self
        return self.ctx.authenticated(self.request.headers.get("Authorization"),
                                      handler.get_cookie(self.ctx.cookie_name))

    def require_auth(self) -> None:
        if not self.authenticated():
            raise ApiError(401, "unauthenticated",
                           "send Authorization: Bearer <token> or open the URL the "
                           "node printed", {"WWW-Authenticate": 'Bearer realm="parley"'})

    def guard(self, *, api: bool, auth: bool) -> str:
        """Check Host, Origin and the fetch metadata (API: same-origin only; pages:
        cross-site navigations only), then optionally the credentials; returns the
        validated Host. Raises ApiError (403/401)."""
        headers = self.request.headers
        host = check_host(headers.get("Host"), self.ctx.port)
        check_origin(headers.get("Origin"), host)
        if api:
            check_fetch_site(headers.get("Sec-Fetch-Site"))
        else:
            check_resource_isolation(headers.get("Sec-Fetch-Site"), headers.get("Sec-Fetch-Mode"))
        if auth:
            self.require_auth()
        return host

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        """Refusals are answers, not faults; other errors are logged with the path but
        never the query string or the request repr (a URL may carry a pasted token)."""
        if isinstance(value, ApiError):
            return
        where = f"{self.request.method} {self.request.path}"
        if isinstance(value, HTTPError):
            detail = value.log_message or value.reason or "refused"
            if value.log_message and value.args:
                detail = value.log_message % value.args  # StaticFileHandler: the path
            log.warning("%d %s: %s", value.status_code, where, detail)
        else:
            log.error("uncaught exception in %s", where, exc_info=(typ, value, tb))


class JsonErrorMixin:
    """JSON error bodies ({"error", "message"}) for handlers that are not JsonHandlers."""

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        handler: Any = self
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, ApiError):
            for name, value in exc.headers.items():
                handler.set_header(name, value)
            code, message = exc.code, exc.message
        else:
            code = {403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(
                status_code, "internal_error" if status_code >= 500 else "bad_request")
            message = handler._reason  # not log_message: it may echo the request path
        handler.set_header("Content-Type", "application/json")
        handler.set_header("Cache-Control", "no-store")
        handler.finish(json.dumps({"error": code, "message": message},
                                  separators=(",", ":")))
