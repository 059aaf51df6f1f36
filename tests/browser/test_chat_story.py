"""Alice and Bob use Parley through the browser app only: create a group, invite, join,
chat, share a picture, and watch the ticks move from delivered to read."""

from __future__ import annotations

import os
import re
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import ROOT

from .conftest import Cluster, UiPage, drop_files, eventually

pytestmark = pytest.mark.browser

SCREENSHOT = ROOT / "docs" / "screenshots" / "chat.png"


PACKING_LIST = "map\ntickets\nsandwiches\n"


def make_png(width: int = 160, height: int = 96) -> bytes:
    """A small RGB gradient PNG, built by hand (no imaging library needed)."""
    rows = b"".join(
        b"\x00" + b"".join(bytes((x * 255 // width, y * 255 // height, 180)) for x in range(width))
        for y in range(height))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def grouped(user_id: str) -> str:
    return " ".join(user_id[i:i + 3] for i in range(0, 15, 3))


def send(page: Page, text: str) -> None:
    box = page.get_by_label("Message (Enter sends")
    box.fill(text)
    box.press("Enter")


def bubble(page: Page, text: str):
    return page.locator(".message", has=page.locator(".text", has_text=text))


def test_alice_and_bob_chat_in_a_group(cluster: Cluster, open_ui: Callable[..., UiPage],
                                       output_dir: Path, tmp_path: Path) -> None:
    alice_node, bob_node = cluster.add("alice"), cluster.add("bob")
    for node, name in ((alice_node, "Alice"), (bob_node, "Bob")):  # Settings: test_names.py
        node.ok("PUT", "/api/v1/profile", {"name": name})
    alice, bob = open_ui("alice", alice_node), open_ui("bob", bob_node)
    a, b = alice.page, bob.page

    # First start: each sees their own ID, grouped for reading, and moves on.
    for ui in (alice, bob):
        expect(ui.page.get_by_test_id("my-id")).to_have_text(grouped(ui.node.user_id))
        ui.page.get_by_role("button", name="Continue").click()

    # Alice creates "Trip" and copies the invite link with the copy button.
    a.get_by_role("link", name="New group").click()
    a.get_by_label("Group name").fill("Trip")
    a.get_by_role("button", name="Create group").click()
    link_box = a.get_by_label("Link", exact=True)
    expect(link_box).to_have_value(re.compile(r"^parley:invite/[A-Za-z0-9_-]+$"))
    a.get_by_role("button", name="Copy invite link").click()
    expect(a.get_by_text("Copied")).to_be_visible()
    invite = a.evaluate("navigator.clipboard.readText()")
    assert invite == link_box.input_value()
    qr = a.get_by_alt_text("QR code of the invite link")
    expect(qr).to_be_visible()
    assert qr.evaluate("img => img.src.startsWith('blob:') && img.naturalWidth > 0")

    # Bob joins with it and lands in the group's chat.
    b.get_by_role("link", name="Join", exact=True).click()
    b.get_by_label("Invite link").fill(invite)
    b.get_by_role("button", name="Join group").click()
    expect(b.get_by_role("heading", name="Trip")).to_be_visible()

    # Both see each other in the member list (roles too).
    for ui, other in ((bob, alice_node), (alice, bob_node)):
        ui.page.get_by_role("complementary", name="Conversations").get_by_role(
            "link", name=re.compile("Trip")).click()
        ui.page.get_by_role("link", name="Group info").click()
        members = ui.page.get_by_test_id("member-list")
        expect(members).to_contain_text(grouped(other.user_id))
        expect(members).to_contain_text(grouped(ui.node.user_id))
        expect(members.locator("li", has_text=grouped(alice_node.user_id))).to_contain_text("admin")
        ui.page.go_back()
        expect(ui.page.get_by_role("heading", name="Trip")).to_be_visible()

    # They exchange text; Shift+Enter makes a new line, Enter sends.
    send(a, "Hello Bob, the trip is on!")
    expect(bubble(b, "Hello Bob, the trip is on!")).to_be_visible()
    box = b.get_by_label("Message (Enter sends")
    box.fill("Great!")
    box.press("Shift+Enter")
    box.type("I'll bring the map.")
    box.press("Enter")
    reply = bubble(a, "I'll bring the map.")
    expect(reply.locator(".text")).to_have_text("Great!\nI'll bring the map.")

    # Ticks: with Bob away from the chat, Alice's next message reaches "delivered";
    # when Bob opens the chat it becomes "read" (per member in the breakdown too).
    b.get_by_role("link", name="Group info").click()
    send(a, "Meet at the station at 9?")
    ticks = bubble(a, "Meet at the station at 9?").locator(".ticks")
    expect(ticks).to_have_attribute("data-status", "delivered")
    b.go_back()
    expect(bubble(b, "Meet at the station at 9?")).to_be_visible()
    expect(ticks).to_have_attribute("data-status", "read")
    ticks.click()
    breakdown = bubble(a, "Meet at the station at 9?").get_by_role(
        "region", name="Delivery per member")
    expect(breakdown.locator(f'[data-member="{bob_node.user_id}"]')).to_have_attribute(
        "data-state", "read")

    # Alice sends a PNG with the attach button: Bob sees the preview, Alice's ticks
    # reach delivered then read (Bob is looking at the chat).
    png = tmp_path / "station.png"
    png.write_bytes(make_png())
    a.get_by_test_id("file-input").set_input_files(str(png))
    expect(a.get_by_role("list", name="Files to send")).to_contain_text("station.png")
    a.get_by_label("Message (Enter sends").fill("Here is the map")
    a.get_by_role("button", name="Send", exact=True).click()
    preview = b.locator(".message", has_text="Here is the map").get_by_test_id("image-preview")
    expect(preview).to_be_visible(timeout=30_000)
    eventually(lambda: preview.evaluate("img => img.complete && img.naturalWidth") == 160,
               message="Bob's browser decoded the picture")
    own = a.locator(".message", has_text="Here is the map")
    expect(own.get_by_test_id("image-preview")).to_be_visible()
    expect(own.locator(".ticks")).to_have_attribute("data-status", re.compile("delivered|read"))
    expect(own.locator(".ticks")).to_have_attribute("data-status", "read")

    # Bob drops a document on the chat: Alice gets a card with its size and downloads it.
    drop_files(b, {"name": "packing-list.txt", "text": PACKING_LIST, "type": "text/plain"})
    expect(b.get_by_role("list", name="Files to send")).to_contain_text("packing-list.txt")
    b.get_by_role("button", name="Send", exact=True).click()
    card = a.locator(".message", has_text="packing-list.txt")
    download = card.get_by_role("link", name="Download packing-list.txt")
    expect(download).to_be_visible(timeout=30_000)
    expect(card).to_contain_text(f"{len(PACKING_LIST)} B")
    with a.expect_download() as info:
        download.click()
    saved = tmp_path / "downloaded.txt"
    info.value.save_as(saved)
    assert saved.read_text() == PACKING_LIST
    assert info.value.suggested_filename == "packing-list.txt"

    # The conversation list follows: last message first.
    for page in (a, b):
        expect(page.locator(".conv-preview")).to_contain_text("File: packing-list.txt")

    alice.assert_labelled()
    bob.assert_labelled()

    # Each sees the other's name on their messages, not a number.
    expect(bubble(a, "I'll bring the map.").locator(".sender")).to_have_text("Bob")
    expect(bubble(b, "Meet at the station at 9?").locator(".sender")).to_have_text("Alice")

    # Screenshots of both windows (the fixture saves the final state as well).
    alice.screenshot(output_dir, "chat")
    bob.screenshot(output_dir, "chat")
    if not SCREENSHOT.exists() or os.environ.get("PARLEY_UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(output_dir / "alice-chat.png", SCREENSHOT)

    # Nothing went through anything but the UI: the API agrees with the screens.
    group_id = alice_node.ok("GET", "/api/v1/groups")["groups"][0]["id"]
    assert bob_node.members(group_id) == {alice_node.user_id, bob_node.user_id}
