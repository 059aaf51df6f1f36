"""Serving the browser app (webapp/dist, the Vite build) and the built-in pages.

- ``/_ui/*``: the few public files of webapp/static (the locked page's stylesheet, its
  unlock script, the icon). They hold no secrets and must load before the user is
  signed in. ``/favicon.ico``, which browsers and tools ask for unprompted, is the same
  SVG icon (a 404 there was a logged warning on every page load).
- everything else (not ``/api/``): the app. Without a valid session cookie (or bearer
  token) any path answers 401 with the locked page, which tells the user to open the
  URL the node printed; the app itself is never served to an unauthenticated browser.
  Signed in, files come from webapp/dist; unknown paths without a file extension get
  index.html (client-side routes); if there is no build yet, a "UI not built" page.

Hashed files under ``/assets/`` are cached for a year (``immutable``: a new build has
new names); everything else, index.html first, is ``no-store`` so a rebuilt app and a
revoked session take effect at once.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tornado.web import StaticFileHandler

from webapp.context import JsonErrorMixin, UiContext, UiHandlerMixin

__all__ = [
    "LOCKED_PAGE",
    "NOT_BUILT_PAGE",
    "PUBLIC_PREFIX",
    "STATIC_DIR",
    "AppHandler",
    "FaviconHandler",
    "PublicStaticHandler",
    "static_routes",
]

STATIC_DIR = Path(__file__).resolve().parent / "static"
PUBLIC_PREFIX = "/_ui/"
LOCKED_PAGE = "locked.html"
NOT_BUILT_PAGE = "not-built.html"
FAVICON = "favicon.svg"
IMMUTABLE = "private, max-age=31536000, immutable"
NO_STORE = "no-store"


class PublicStaticHandler(UiHandlerMixin, JsonErrorMixin, StaticFileHandler):
    """``/_ui/<file>`` from webapp/static: Host and Origin checked, no credentials."""

    def initialize(self, ctx: UiContext) -> None:  # type: ignore[override]
        super().initialize(path=str(STATIC_DIR))
        self.ctx = ctx
        self.apply_security_headers()

    def prepare(self) -> None:
        self.guard(api=False, auth=False)

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")


class FaviconHandler(PublicStaticHandler):
    """``/favicon.ico``: the SVG icon of webapp/static, served as image/svg+xml."""

    async def get(self, path: str, include_body: bool = True) -> None:
        await super().get(FAVICON, include_body)


class AppHandler(UiHandlerMixin, JsonErrorMixin, StaticFileHandler):
    """The app from ``ctx.dist_dir``, or the locked / not-built page."""

    def initialize(self, ctx: UiContext) -> None:  # type: ignore[override]
        super().initialize(path=str(ctx.dist_dir), default_filename="index.html")
        self.ctx = ctx
        self.apply_security_headers()

    def prepare(self) -> None:
        self.guard(api=False, auth=False)
        if not self.authenticated():
            self.set_header("WWW-Authenticate", 'Bearer realm="parley"')
            self._send_page(401, LOCKED_PAGE)

    async def get(self, path: str, include_body: bool = True) -> None:
        if not (self.ctx.dist_dir / "index.html").is_file():
            self._send_page(200, NOT_BUILT_PAGE)
            return
        await super().get(self._route(path), include_body)

    def _route(self, path: str) -> str:
        """Client-side routes (no file extension, no such file) get index.html."""
        if not path or path.endswith("/"):
            return path
        last = path.rsplit("/", 1)[-1]
        if "." in last or os.path.exists(os.path.join(self.root, path)):
            return path  # a real file, or a missing one that should be a 404
        return "index.html"

    def set_extra_headers(self, path: str) -> None:
        # StaticFileHandler only sets Cache-Control for versioned URLs; decide here.
        cache = IMMUTABLE if path.startswith("assets/") else NO_STORE
        self.set_header("Cache-Control", cache)

    def compute_etag(self) -> str | None:
        # The built-in pages are not files of the app: no ETag (and no 304) for them.
        return super().compute_etag() if getattr(self, "absolute_path", None) else None

    def _send_page(self, status: int, name: str) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", NO_STORE)
        self.finish((STATIC_DIR / name).read_bytes())


def static_routes(ctx: UiContext) -> list[tuple[str, type, dict[str, Any]]]:
    """Routes to mount after every API route (the last one matches everything)."""
    return [
        (PUBLIC_PREFIX + r"(.+)", PublicStaticHandler, {"ctx": ctx}),
        (r"/favicon\.ico()", FaviconHandler, {"ctx": ctx}),
        (r"/(.*)", AppHandler, {"ctx": ctx}),
    ]
