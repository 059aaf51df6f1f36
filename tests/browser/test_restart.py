"""A node restart does not lock its open tabs (the session secret is in the data dir),
and "Sign out everywhere" in Settings locks every browser of that node at once."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.integration.messenger.conftest import free_port

from .conftest import Cluster, UiPage

pytestmark = pytest.mark.browser

# While the node is down the page's reconnects fail; Chromium logs each one.
_DOWN = re.compile(r"ERR_CONNECTION_REFUSED|WebSocket connection to .* failed")


def test_a_restart_keeps_the_tab_working_until_signed_out_everywhere(
        cluster: Cluster, open_ui: Callable[..., UiPage], output_dir: Path) -> None:
    alice = cluster.add("alice", "--ui-port", str(free_port()))
    group = alice.create_group("Still here")
    tab = open_ui("alice", alice, f"/g/{group}")
    page = tab.page
    expect(page.get_by_role("heading", name="Still here")).to_be_visible()
    box = page.get_by_label("Message (Enter sends")
    box.fill("before the restart")
    box.press("Enter")
    expect(page.locator(".message .text")).to_have_text(["before the restart"])

    # The node stops and starts again on its data dir and UI port: a new token, the same
    # session. The tab notices, reconnects and keeps working, without the link.
    url, token = alice.url, alice.token
    alice.stop()
    expect(page.locator(".conn.offline")).to_be_visible()
    alice.start()
    assert alice.url == url and alice.token != token
    expect(page.locator(".conn.live")).to_be_visible(timeout=30_000)
    box.fill("after the restart")
    box.press("Enter")
    expect(page.locator(".message .text")).to_have_text(["before the restart", "after the restart"])
    assert alice.texts(group) == ["before the restart", "after the restart"]
    expect(page.get_by_role("heading", name="Parley is locked")).to_have_count(0)
    assert tab.console_errors and all(_DOWN.search(e) for e in tab.console_errors), \
        tab.console_errors
    tab.console_errors.clear()
    tab.screenshot(output_dir, "after-restart")

    # A second browser of Alice's; Settings in the first signs out every browser.
    other = open_ui("alice-laptop", alice, f"/g/{group}")
    expect(other.page.locator(".message .text")).to_have_count(2)
    page.get_by_role("link", name="Settings").click()
    page.get_by_role("button", name="Sign out everywhere").click()
    tab.screenshot(output_dir, "sign-out-everywhere")
    page.get_by_role("button", name="Sign out everywhere").click()
    for ui in (tab, other):
        expect(ui.page.get_by_role("heading", name="Parley is locked")).to_be_visible()
    # The locked pages' own probes were refused (401): expected, and nothing else.
    for ui in (tab, other):
        assert all("401" in e or _DOWN.search(e) for e in ui.console_errors), ui.console_errors
        ui.console_errors.clear()
    cookies = tab.context.cookies()
    assert not [c for c in cookies if c["name"] == f"parley_session_{alice.url.rsplit(':', 1)[1]}"]
    other_cookie = other.context.cookies()[0]
    status, _ = alice.call("GET", "/api/v1/me", token=None,
                           headers={"Cookie": f"{other_cookie['name']}={other_cookie['value']}"})
    assert status == 401
    # The printed link signs in again (the locked page it passes through answers 401).
    page.goto(f"{alice.url}/#token={alice.token}")
    expect(page.get_by_role("link", name="Settings")).to_be_visible()
    assert all("401" in e for e in tab.console_errors), tab.console_errors
    tab.console_errors.clear()
