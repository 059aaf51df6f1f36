"""Keys at rest from the browser (issue 15): the first-run screen offers to protect the
identity key with a passphrase and Settings changes it, through GET/POST /passphrase;
a mistyped repeat or a wrong current passphrase is said in words and changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import msgpack
import pytest
from playwright.sync_api import expect

from tests.integration.messenger.conftest import NodeProc

from .conftest import UiPage

pytestmark = pytest.mark.browser


@pytest.fixture
def solo(tmp_path: Path) -> Iterator[NodeProc]:
    """Started before (so stopped after) the browser pages."""
    node = NodeProc("solo", tmp_path / "solo", "", extra=("--no-dht",))
    node.start(ready="")
    yield node
    node.stop()


def key_file(node: NodeProc) -> dict:
    return msgpack.unpackb((node.data_dir / "identity.key").read_bytes())


def test_set_and_change_the_passphrase(solo: NodeProc, open_ui: Callable[..., UiPage],
                                       output_dir: Path) -> None:
    ui = open_ui("solo", solo)
    page = ui.page
    page.get_by_text("Protect your key with a passphrase (optional)").click()
    card = page.get_by_role("region", name="Passphrase")
    expect(card.get_by_test_id("passphrase-state")).to_contain_text("without a passphrase")
    ui.assert_labelled()
    card.get_by_label("Passphrase", exact=True).fill("correct horse")
    card.get_by_label("Type it again").fill("correct hose")
    card.get_by_role("button", name="Set passphrase").click()
    expect(card.get_by_role("alert")).to_have_text(
        "The two passphrases differ: type the same one twice.")
    assert key_file(solo)["v"] == 1
    card.get_by_label("Type it again").fill("correct horse")
    card.get_by_role("button", name="Set passphrase").click()
    expect(card.get_by_role("status")).to_have_text(
        "Your key is now protected by this passphrase.")
    expect(card.get_by_test_id("passphrase-state")).to_contain_text("is protected")
    ui.screenshot(output_dir, "welcome-passphrase-set")
    assert key_file(solo)["v"] == 2
    assert solo.ok("GET", "/api/v1/passphrase") == {"protected": True}

    page.get_by_role("button", name="Continue").click()
    page.get_by_role("link", name="Settings").click()
    card = page.get_by_role("region", name="Passphrase")
    card.get_by_label("Current passphrase").fill("wrong horse")
    card.get_by_label("New passphrase").fill("battery staple")
    card.get_by_label("Type it again").fill("battery staple")
    before = key_file(solo)
    card.get_by_role("button", name="Change passphrase").click()
    expect(card.get_by_role("alert")).to_have_text(
        "That is not your current passphrase: nothing was changed.")
    assert key_file(solo) == before
    # The refused request itself is Chromium's console line; nothing else may be.
    assert [e for e in ui.console_errors if "403" not in e or "/api/v1/passphrase" not in e] \
        == [], ui.console_errors
    ui.console_errors.clear()
    ui.assert_labelled()
    ui.screenshot(output_dir, "settings-wrong-current")
    card.get_by_label("Current passphrase").fill("correct horse")
    card.get_by_role("button", name="Change passphrase").click()
    expect(card.get_by_role("status")).to_have_text("Passphrase changed.")
    expect(card.get_by_role("alert")).to_have_count(0)
    assert key_file(solo)["salt"] != before["salt"]
    ui.screenshot(output_dir, "settings-passphrase-changed")
