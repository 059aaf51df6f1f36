"""Typing indicators and presence in the chat header (issue 16), between two nodes in
Chromium: "online" (header, member list), "… is typing…" while the other types (gone
when the message is sent), and the opt-out in Settings, after which the other sees
"last seen"."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import expect

from .conftest import Cluster, UiPage
from .test_chat_story import grouped

pytestmark = pytest.mark.browser


def test_typing_and_presence_in_the_header(
        cluster: Cluster, open_ui: Callable[..., UiPage], output_dir: Path) -> None:
    alice, bob = cluster.add("alice"), cluster.add("bob")
    group = alice.create_group("Trip")
    bob.join(alice.invite(group))
    alice.ok("POST", "/api/v1/contacts", {"id": bob.user_id})
    alice.ok("POST", f"/api/v1/chats/{bob.user_id}/messages", {"text": "psst"})

    a = open_ui("alice", alice, f"/g/{group}").page
    b = open_ui("bob", bob, f"/g/{group}").page
    subtitle = b.get_by_test_id("chat-subtitle")
    expect(subtitle).to_have_text("2 members, 1 online")

    box = a.get_by_label("Message (Enter sends")
    box.press_sequentially("on my way", delay=30)
    expect(subtitle).to_have_text(f"{grouped(alice.user_id)} is typing…")
    b.screenshot(path=str(output_dir / "bob-sees-typing.png"))
    box.press("Enter")
    expect(b.locator(".message", has_text="on my way")).to_be_visible()
    expect(subtitle).to_have_text("2 members, 1 online")

    # Group info says who is online.
    b.get_by_role("link", name="Group info").click()
    row = b.get_by_test_id("member-list").locator("li", has_text=grouped(alice.user_id))
    expect(row.get_by_test_id("member-presence")).to_have_text("online")
    b.screenshot(path=str(output_dir / "bob-group-info-online.png"))

    # The 1:1 chat says "online"; when Alice stops sharing, "last seen" instead.
    b.goto(b.url.split("/g/")[0] + f"/c/{alice.user_id}")
    expect(b.get_by_test_id("chat-subtitle")).to_have_text("online")
    b.screenshot(path=str(output_dir / "bob-sees-online.png"))
    a.goto(a.url.split("/g/")[0] + "/settings")
    share = a.get_by_test_id("share-presence")
    expect(share).to_be_checked()
    share.uncheck()
    expect(share).not_to_be_checked()
    a.screenshot(path=str(output_dir / "alice-presence-setting.png"))
    expect(b.get_by_test_id("chat-subtitle")).to_have_text(re.compile(r"^last seen \d\d:\d\d$"))
    b.screenshot(path=str(output_dir / "bob-sees-last-seen.png"))
    assert alice.ok("GET", "/api/v1/presence") == {"share": False}
