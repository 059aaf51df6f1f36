"""Settings: the Bluetooth meetups card on a node asked for Bluetooth on a machine
that cannot do it (no adapter here, or no extra): it says why, and its switch and
attachment limit reach the node."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.integration.messenger.conftest import NodeProc, eventually

from .conftest import UiPage

pytestmark = pytest.mark.browser


@pytest.fixture
def solo(tmp_path: Path) -> Iterator[NodeProc]:
    """A node asked for Bluetooth; set up before (so stopped after) the browser pages,
    whose reconnect attempts to a stopped node would be console errors."""
    node = NodeProc("solo", tmp_path / "solo", "", extra=("--bluetooth", "--no-dht"))
    node.start(ready="")
    yield node
    node.stop()


def test_bluetooth_card(solo: NodeProc, open_ui: Callable[..., UiPage],
                        output_dir: Path) -> None:
    reason = solo.ok("GET", "/api/v1/bluetooth")["reason"]
    ui = open_ui("solo", solo)
    page = ui.page
    page.get_by_role("button", name="Continue").click()
    page.get_by_role("link", name="Settings").click()
    card = page.get_by_role("region", name="Bluetooth meetups")
    expect(card).to_contain_text("Switched on, but not running.")
    expect(card).to_contain_text("make bluetooth" if reason == "not_installed"
                                 else "No Bluetooth adapter" if reason == "no_adapter"
                                 else "bluetoothd")
    expect(card).to_contain_text("Nobody seen in the last 15 minutes.")
    expect(card).to_contain_text("No group has synced over Bluetooth yet.")
    ui.assert_labelled()
    ui.screenshot(output_dir, "bluetooth-on")

    card.get_by_label("Attachments over Bluetooth").select_option("5")
    expect(card).to_contain_text("Files larger than 5.0 MB wait for the internet.")
    card.get_by_role("button", name="Switch off").click()
    # One sentence with its space ("Off. The Bluetooth extra…"), and Settings gives no
    # second, different reason for the same state.
    status = card.get_by_test_id("bluetooth-status")
    expect(status).to_have_text(re.compile(r"^Off\. [A-Z]"))
    expect(page.get_by_text("no adapter found")).to_have_count(0)
    expect(card.get_by_role("button", name="Switch on")).to_be_visible()
    shown = eventually(lambda: (s := solo.ok("GET", "/api/v1/bluetooth"))
                       and not s["enabled"] and s, message="switched off")
    assert shown["attachments"] == 5 * 1024 * 1024
    assert solo.ok("GET", "/api/v1/me")["bluetooth"] == {
        "available": False, "enabled": False, "running": False}
