"""Settings: the Bluetooth meetups card on a node asked for Bluetooth on a machine
that cannot do it (no adapter here, or no extra): it says why, and its switch and
attachment limit reach the node."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests.integration.messenger.conftest import NodeProc, eventually

from .conftest import UiPage

pytestmark = pytest.mark.browser


def test_bluetooth_card(open_ui: Callable[..., UiPage], tmp_path: Path,
                        output_dir: Path) -> None:
    node = NodeProc("solo", tmp_path / "solo", "", extra=("--bluetooth", "--no-dht"))
    node.start(ready="")
    try:
        reason = node.ok("GET", "/api/v1/bluetooth")["reason"]
        ui = open_ui("solo", node)
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
        expect(card).to_contain_text("Off.")
        expect(card.get_by_role("button", name="Switch on")).to_be_visible()
        shown = eventually(lambda: (s := node.ok("GET", "/api/v1/bluetooth"))
                           and not s["enabled"] and s, message="switched off")
        assert shown["attachments"] == 5 * 1024 * 1024
        assert node.ok("GET", "/api/v1/me")["bluetooth"] == {
            "available": False, "enabled": False, "running": False}
    finally:
        node.stop()
