"""Browser tests: the built Vue app (webapp/dist) in Debian's Chromium, driven by
Playwright, against real node processes and a real bootstrap process.

The browser is always /usr/bin/chromium (never one Playwright downloads). Without it
the tests are skipped with the reason, except under ``CI=true``, where that fails the
run: CI must not pass by testing nothing. Each test's screenshots go to
``test-output/browser/<test>/`` (gitignored), on success and on failure.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ROOT
from tests.integration.messenger.conftest import Cluster, NodeProc, cluster, eventually

__all__ = ["CHROMIUM", "UiPage", "browser", "cluster", "drop_files", "eventually", "open_ui",
           "output_dir"]

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run",
                 "--disable-quic"]
DIST_INDEX = ROOT / "webapp" / "dist" / "index.html"
OUTPUT = ROOT / "test-output" / "browser"
VIEWPORT = {"width": 1180, "height": 760}
TIMEOUT_MS = 20_000

# Chromium reports a refused resource or a failed subresource (a missing icon too) as a
# console error: the app must log none, and in particular no CSP violation.


def _require_chromium() -> None:
    if CHROMIUM.exists():
        return
    reason = f"{CHROMIUM} is not installed (apt-get install chromium)"
    if os.environ.get("CI") == "true":
        pytest.fail(f"browser tests need Debian's Chromium under CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    """One headless Chromium per test module (each test gets fresh contexts)."""
    _require_chromium()
    if not DIST_INDEX.is_file():
        pytest.fail("webapp/dist is not built: run `make` (npm ci && npm run build in webapp/)",
                    pytrace=False)
    from playwright.sync_api import expect, sync_playwright

    expect.set_options(timeout=TIMEOUT_MS)

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                      headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture
def output_dir(request: pytest.FixtureRequest) -> Path:
    """test-output/browser/<test name>/, emptied first."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)
    path = OUTPUT / name
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


@dataclass
class UiPage:
    """One user's browser window (its own context: own cookie jar) on their node."""

    name: str
    node: NodeProc | None
    context: object
    page: object
    console_errors: list[str] = field(default_factory=list)

    def assert_labelled(self) -> None:
        """Every visible control has a name a screen reader can say."""
        unnamed = self.page.evaluate(_UNNAMED_JS)  # type: ignore[attr-defined]
        assert unnamed == [], f"controls without an accessible name: {unnamed}"

    def screenshot(self, folder: Path, what: str) -> Path:
        path = folder / f"{self.name}-{what}.png"
        self.page.screenshot(path=str(path))  # type: ignore[attr-defined]
        return path


@pytest.fixture
def open_ui(browser: object, output_dir: Path) -> Iterator[Callable[..., UiPage]]:
    """Open a node's UI from the URL it printed (fragment token -> cookie -> app) in a
    fresh browser context. Every page's console errors and uncaught exceptions are
    collected and must be empty at the end; screenshots of every open page are saved
    at teardown, whatever the outcome."""
    pages: list[UiPage] = []

    def open_(name: str, node: NodeProc, path: str = "/", *, viewport: dict[str, int] | None = None,
              color_scheme: str = "light", unlock: bool = True) -> UiPage:
        context = browser.new_context(  # type: ignore[attr-defined]
            viewport=viewport or VIEWPORT, device_scale_factor=1, locale="en-GB",
            permissions=["clipboard-read", "clipboard-write"], color_scheme=color_scheme)
        context.set_default_timeout(TIMEOUT_MS)
        page = context.new_page()
        ui = UiPage(name, node, context, page)

        def on_console(message: Any) -> None:
            if message.type == "error":
                ui.console_errors.append(f"{message.text} ({message.location.get('url', '')})")

        page.on("console", on_console)
        page.on("pageerror", lambda exc: ui.console_errors.append(f"uncaught: {exc}"))
        pages.append(ui)
        if unlock:
            page.goto(f"{node.url}{path}#token={node.token}")
            page.locator(".shell").wait_for()
            # The locked page's own requests answered 401 before the unlock: not the app's.
            ui.console_errors.clear()
        return ui

    try:
        yield open_
    finally:
        for ui in pages:
            try:
                ui.screenshot(output_dir, "final")
            except Exception as exc:
                print(f"no screenshot of {ui.name}: {exc}")
            ui.context.close()  # type: ignore[attr-defined]
    for ui in pages:
        assert not ui.console_errors, f"{ui.name}'s page logged errors: {ui.console_errors}"


_UNNAMED_JS = """() => {
  const controls = document.querySelectorAll("button, a[href], input, textarea, select");
  return [...controls].filter((el) => {
    if (el.closest("[aria-hidden=true]") || el.type === "hidden" || !el.getClientRects().length) {
      return false;
    }
    const byId = (el.getAttribute("aria-labelledby") || "").split(" ").filter(Boolean)
      .map((id) => (document.getElementById(id) || {}).textContent || "").join(" ");
    const label = [...(el.labels || [])].map((l) => l.textContent).join(" ");
    const name = [el.getAttribute("aria-label"), byId, label, el.textContent, el.title]
      .map((t) => (t || "").trim()).find(Boolean);
    return !name;
  }).map((el) => el.outerHTML.slice(0, 120));
}"""

_DROP_JS = """(files) => {
  const data = new DataTransfer();
  for (const f of files) {
    const body = f.text !== undefined ? [f.text] : [new Uint8Array(f.size)];
    data.items.add(new File(body, f.name, {type: f.type || "application/octet-stream"}));
  }
  const target = document.querySelector("section.chat");
  for (const type of ["dragenter", "dragover", "drop"]) {
    const init = {bubbles: true, cancelable: true, dataTransfer: data};
    target.dispatchEvent(new DragEvent(type, init));
  }
}"""


def drop_files(page: Any, *files: dict[str, Any]) -> None:
    """Drop files made in the page ({name, text} or {name, size}, optional type) on the
    open chat, as a drag from the desktop would."""
    page.evaluate(_DROP_JS, list(files))


# Keep the fixtures imported from the messenger tests visible to pytest and linters.
_ = (Cluster, cluster, eventually)
