"""The unlock flow and the CSP in a real browser (Debian's headless Chromium).

Chromium loads the URL the node prints, runs the locked page's unlock script (fragment
-> POST /api/v1/session -> cookie -> reload) and then a stand-in for the Vite build
that reports what the browser allowed. Playwright drives /usr/bin/chromium and waits
for the page's own report (a --dump-dom snapshot raced the page's network calls); it is
skipped where no Chromium is installed, except under CI=true, where that fails.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from .test_server_helpers import Ui

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]


APP_JS = """
const out = [];
out.push("hash:" + (location.hash === "" ? "gone" : "present"));
out.push("title:" + document.title);
const session = await fetch("/api/v1/session");
out.push("session:" + session.status);
out.push("cookie-visible:" + (document.cookie.includes("parley_session") ? "yes" : "no"));
await new Promise((resolve) => {
  const ws = new WebSocket(`ws://${location.host}/api/v1/events`);
  ws.onmessage = (e) => { out.push("ws:" + JSON.parse(e.data).type); ws.close(); resolve(); };
  ws.onerror = () => { out.push("ws:error"); resolve(); };
});
try { new Function("return 1")(); out.push("eval:allowed"); }
catch (e) { out.push("eval:blocked"); }
document.getElementById("app").textContent = out.join(" ");
"""


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "assets").mkdir(parents=True)
    (root / "index.html").write_text(
        '<!doctype html><html><head><meta charset="utf-8"><title>app</title>'
        '<script type="module" crossorigin src="/assets/index-0f1e2d.js"></script>'
        "<script>document.title = 'inline-ran';</script>"
        '</head><body><div id="app">loading</div></body></html>')
    (root / "assets" / "index-0f1e2d.js").write_text(APP_JS)
    return root


async def page_text(url: str, ready: str) -> str:
    """The page's body text once it contains ``ready``. Polled from here over CDP:
    Playwright's wait_for_function evaluates in the page, which our CSP forbids."""
    if not os.path.exists(CHROMIUM):  # noqa: ASYNC240 - one stat before a browser start
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHROMIUM} is missing under CI", pytrace=False)
        pytest.skip(f"{CHROMIUM} is not installed")
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(url)
            text = ""
            for _ in range(200):
                text = await page.inner_text("body")
                if ready in text:
                    return text
                await asyncio.sleep(0.1)
            raise AssertionError(f"{ready!r} never appeared; the page says: {text!r}")
        finally:
            await browser.close()


async def test_printed_url_unlocks_the_app(start_ui: Callable[..., Ui], dist: Path,
                                           tmp_path: Path) -> None:
    ui = start_ui(dist_dir=dist)
    text = await page_text(ui.server.url, "eval:")
    assert text.split() == [
        "hash:gone",             # the token left the address bar and history
        "title:app",             # the inline script did not run
        "session:200",           # the cookie came with the same-origin fetch
        "cookie-visible:no",     # HttpOnly
        "ws:ready",              # the events socket accepted cookie + Origin
        "eval:blocked",          # no 'unsafe-eval'
    ]


async def test_without_the_token_the_browser_sees_the_locked_page(
        start_ui: Callable[..., Ui], dist: Path, tmp_path: Path) -> None:
    ui = start_ui(dist_dir=dist)
    text = await page_text(ui.server.origin + "/", "No access key")
    assert "Parley is locked" in text
    assert "loading" not in text


async def test_a_wrong_token_does_not_unlock(start_ui: Callable[..., Ui], dist: Path,
                                             tmp_path: Path) -> None:
    ui = start_ui(dist_dir=dist)
    text = await page_text(ui.server.origin + "/#token=" + "A" * 43, "not valid")
    assert "Parley is locked" in text
