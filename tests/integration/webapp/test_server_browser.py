"""The unlock flow and the CSP in a real browser (Debian's headless Chromium).

Chromium loads the URL the node prints, runs the locked page's unlock script (fragment
-> POST /api/v1/session -> cookie -> reload) and then a stand-in for the Vite build
that reports what the browser allowed. Chromium is driven directly (--dump-dom), so
this needs no Playwright; it is skipped where no Chromium is installed.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from .test_server_helpers import Ui

pytestmark = pytest.mark.browser

CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)

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


async def dump_dom(url: str, profile: Path) -> str:
    if CHROMIUM is None:
        pytest.skip("no Chromium installed")
    args = ["--headless", "--disable-gpu", "--no-first-run", "--disable-extensions",
            f"--user-data-dir={profile}", "--virtual-time-budget=5000", "--dump-dom", url]
    if os.geteuid() == 0:
        args.insert(0, "--no-sandbox")  # Chromium refuses to sandbox as root
    proc = await asyncio.create_subprocess_exec(
        CHROMIUM, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        async with asyncio.timeout(60):
            out, _ = await proc.communicate()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    return out.decode("utf-8", "replace")


async def test_printed_url_unlocks_the_app(start_ui: Callable[..., Ui], dist: Path,
                                           tmp_path: Path) -> None:
    ui = start_ui(dist_dir=dist)
    dom = await dump_dom(ui.server.url, tmp_path / "profile")
    match = re.search(r'<div id="app">([^<]*)</div>', dom)
    assert match, dom[:2000]
    assert match.group(1).split() == [
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
    dom = await dump_dom(ui.server.origin + "/", tmp_path / "profile")
    assert "Parley is locked" in dom
    assert "No access key was given." in dom
    assert "loading" not in dom


async def test_a_wrong_token_does_not_unlock(start_ui: Callable[..., Ui], dist: Path,
                                             tmp_path: Path) -> None:
    ui = start_ui(dist_dir=dist)
    dom = await dump_dom(ui.server.origin + "/#token=" + "A" * 43, tmp_path / "profile")
    assert "Parley is locked" in dom
    assert "not valid" in dom
