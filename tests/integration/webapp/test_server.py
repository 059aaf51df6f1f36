"""The UI server's pages, static files and security headers over real HTTP."""

from __future__ import annotations

import json
from collections.abc import Callable
from html.parser import HTMLParser
from pathlib import Path

import pytest
from tornado.web import RequestHandler

from webapp.context import UiContext
from webapp.server import UiApiHandler, make_ui_app

from .test_server_helpers import Ui

SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}


def csp_directives(response) -> dict[str, list[str]]:
    policy = response.headers["Content-Security-Policy"]
    out: dict[str, list[str]] = {}
    for part in policy.split(";"):
        name, *values = part.split()
        assert name not in out, f"duplicate directive {name}"
        out[name] = values
    return out


def assert_secure_headers(response, host: str) -> None:
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, name
    csp = csp_directives(response)
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["img-src"] == ["'self'", "blob:", "data:"]
    assert csp["media-src"] == ["'self'", "blob:"]
    assert csp["connect-src"] == ["'self'", f"ws://{host}"]
    assert csp["object-src"] == ["'none'"]
    assert csp["base-uri"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert csp["form-action"] == ["'self'"]
    assert "unsafe-inline" not in response.headers["Content-Security-Policy"]
    assert "unsafe-eval" not in response.headers["Content-Security-Policy"]
    assert "Server" not in response.headers


class PageAudit(HTMLParser):
    """Collects what a strict CSP would block or what we reference."""

    def __init__(self) -> None:
        super().__init__()
        self.inline_scripts = 0
        self.inline_styles = 0
        self.handlers: list[str] = []
        self.script_srcs: list[str] = []
        self.style_hrefs: list[str] = []
        self._in_script = False
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        self.handlers += [name for name, _ in attrs if name.startswith("on")]
        if "style" in attr:
            self.inline_styles += 1
        if tag == "style":
            self.inline_styles += 1
        if tag == "script":
            if attr.get("src"):
                self.script_srcs.append(attr["src"] or "")
            self._in_script = True
        if tag == "link" and attr.get("rel") == "stylesheet":
            self.style_hrefs.append(attr.get("href") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1
        self.text.append(data)


def audit(body: bytes) -> PageAudit:
    parser = PageAudit()
    parser.feed(body.decode("utf-8"))
    return parser


# Locked and not-built pages


async def test_locked_page_without_auth(ui: Ui) -> None:
    response = await ui.fetch("/")
    assert response.code == 401
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    assert response.headers["Cache-Control"] == "no-store"
    assert_secure_headers(response, ui.host)
    page = audit(response.body)
    assert page.inline_scripts == 0 and page.inline_styles == 0 and not page.handlers
    assert page.script_srcs == ["/_ui/unlock.js"]
    text = " ".join(page.text)
    assert "locked" in text and "printed" in text
    # The page's own files load without credentials, under the same headers.
    for src in page.script_srcs + page.style_hrefs:
        asset = await ui.fetch(src)
        assert asset.code == 200, src
        assert_secure_headers(asset, ui.host)


@pytest.mark.parametrize("path", ["/index.html", "/assets/app.js", "/chats/123", "/_nope"])
async def test_every_app_path_is_locked_without_auth(ui: Ui, path: str) -> None:
    response = await ui.fetch(path)
    assert response.code == 401
    assert b"Parley is locked" in response.body


async def test_not_built_page_when_there_is_no_dist(ui: Ui) -> None:
    cookie = await ui.login()
    response = await ui.fetch("/", headers={"Cookie": cookie})
    assert response.code == 200
    assert b"not built" in response.body
    assert_secure_headers(response, ui.host)
    page = audit(response.body)
    assert page.inline_scripts == 0 and page.inline_styles == 0 and not page.script_srcs


async def test_locked_page_head(ui: Ui) -> None:
    response = await ui.fetch("/", method="HEAD")
    assert response.code == 401
    assert response.body == b""


# The built app


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text(
        '<!doctype html><html><head><script type="module" src="/assets/index-1a2b3c.js">'
        "</script></head><body><div id=app></div></body></html>")
    (root / "assets" / "index-1a2b3c.js").write_text("console.log('app');\n")
    (tmp_path / "secret.txt").write_text("outside dist")
    return root


async def test_app_is_served_when_signed_in(start_ui: Callable[..., Ui], dist: Path) -> None:
    ui = start_ui(dist_dir=dist)
    cookie = {"Cookie": await ui.login()}
    index = await ui.fetch("/", headers=cookie)
    assert index.code == 200
    assert b'<div id=app>' in index.body
    assert index.headers["Cache-Control"] == "no-store"
    assert index.headers["Content-Type"].startswith("text/html")
    assert_secure_headers(index, ui.host)

    asset = await ui.fetch("/assets/index-1a2b3c.js", headers=cookie)
    assert asset.code == 200
    assert asset.headers["Cache-Control"] == "private, max-age=31536000, immutable"
    assert asset.headers["Content-Type"].startswith(("application/javascript", "text/javascript"))
    assert_secure_headers(asset, ui.host)



async def test_the_icon_is_public(start_ui: Callable[..., Ui], dist: Path) -> None:
    """Browsers ask for /favicon.ico by themselves, before and after signing in: it is
    the SVG icon, not a 404 (which was a logged warning on every page load)."""
    ui = start_ui(dist_dir=dist)
    for path in ("/favicon.ico", "/_ui/favicon.svg"):
        icon = await ui.fetch(path)
        assert icon.code == 200, path
        assert icon.headers["Content-Type"] == "image/svg+xml"
        assert icon.body.startswith(b"<svg")
        assert_secure_headers(icon, ui.host)


async def test_client_side_routes_get_index(start_ui: Callable[..., Ui], dist: Path) -> None:
    ui = start_ui(dist_dir=dist)
    cookie = {"Cookie": await ui.login()}
    for path in ("/chats/42", "/settings"):
        response = await ui.fetch(path, headers=cookie)
        assert response.code == 200, path
        assert b'<div id=app>' in response.body
    missing = await ui.fetch("/assets/missing-123.js", headers=cookie)
    assert missing.code == 404


@pytest.mark.parametrize("path", ["/../secret.txt", "/%2e%2e/secret.txt",
                                  "/assets/../../secret.txt", "/assets/%2E%2E/%2E%2E/secret.txt"])
async def test_no_escape_from_dist(start_ui: Callable[..., Ui], dist: Path, path: str) -> None:
    ui = start_ui(dist_dir=dist)
    response = await ui.fetch(path, headers={"Cookie": await ui.login()})
    assert response.code == 403
    assert b"outside dist" not in response.body


async def test_bearer_also_opens_the_app(start_ui: Callable[..., Ui], dist: Path) -> None:
    ui = start_ui(dist_dir=dist)
    assert (await ui.fetch("/", headers=ui.bearer)).code == 200


@pytest.mark.parametrize("path", ["/", "/_ui/unlock.js", "/assets/index-1a2b3c.js"])
async def test_other_sites_cannot_load_our_files(start_ui: Callable[..., Ui], dist: Path,
                                                path: str) -> None:
    ui = start_ui(dist_dir=dist)
    cookie = await ui.login()
    for site in ("cross-site", "same-site"):
        embedded = await ui.fetch(path, headers={"Cookie": cookie, "Sec-Fetch-Site": site,
                                                 "Sec-Fetch-Mode": "no-cors"})
        assert embedded.code == 403, (path, site)
    navigated = await ui.fetch(path, headers={"Cookie": cookie, "Sec-Fetch-Site": "same-site",
                                              "Sec-Fetch-Mode": "navigate"})
    assert navigated.code == 200
    own = await ui.fetch(path, headers={"Cookie": cookie, "Sec-Fetch-Site": "same-origin",
                                        "Sec-Fetch-Mode": "cors"})
    assert own.code == 200


# Headers on API responses


async def test_api_responses_carry_security_headers(ui: Ui) -> None:
    for headers in ({}, ui.bearer):
        response = await ui.fetch("/api/v1/ping", headers=headers)
        assert_secure_headers(response, ui.host)
        assert response.headers["Cache-Control"] == "no-store"
    not_found = await ui.fetch("/api/v1/missing", headers=ui.bearer)
    assert not_found.code == 404
    assert_secure_headers(not_found, ui.host)


async def test_csp_names_the_host_the_browser_used(ui: Ui) -> None:
    host = f"localhost:{ui.port}"
    response = await ui.fetch("/api/v1/ping", headers={"Host": host, **ui.bearer})
    assert_secure_headers(response, host)
    refused = await ui.fetch("/api/v1/ping", headers={"Host": "evil.example", **ui.bearer})
    assert csp_directives(refused)["connect-src"] == ["'self'", f"ws://127.0.0.1:{ui.port}"]


# Building and binding


async def test_binds_loopback_only(ui: Ui) -> None:
    sockets = list(ui.server.http._sockets.values())
    assert sockets
    assert {s.getsockname()[0] for s in sockets} == {"127.0.0.1"}
    assert ui.server.port == sockets[0].getsockname()[1] != 0


def _context() -> UiContext:
    return UiContext(token="t" * 43, port=8080)


class Unguarded(RequestHandler):
    def get(self) -> None:
        self.write("secrets")


class Fine(UiApiHandler):
    def initialize(self, ctx: UiContext, extra: int = 0) -> None:  # type: ignore[override]
        super().initialize(ctx)
        self.extra = extra

    def get(self) -> None:
        self.send_json(200, {})


def test_make_ui_app_refuses_unguarded_handlers() -> None:
    with pytest.raises(TypeError):
        make_ui_app(_context(), [(r"/api/v1/raw", Unguarded, {})])


def test_make_ui_app_refuses_routes_outside_the_api() -> None:
    with pytest.raises(ValueError):
        make_ui_app(_context(), [(r"/admin", Fine, {})])


def test_make_ui_app_passes_ctx_and_extra_kwargs() -> None:
    ctx = _context()
    app = make_ui_app(ctx, [(r"/api/v1/fine", Fine, {"extra": 1})])
    rules = [r for r in app.wildcard_router.rules if r.target is Fine]
    assert rules and rules[0].target_kwargs == {"extra": 1, "ctx": ctx}
    assert json.dumps(app.settings["websocket_ping_interval"])
