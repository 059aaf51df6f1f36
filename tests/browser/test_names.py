"""Names instead of numbers: Alice sets her name and picture in Settings; Bob sees names
on senders, receipts, the member list and the 1:1 title (IDs still in sight), a member
who copies Alice's name is marked, and Bob's nickname for Alice is his alone."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .conftest import Cluster, NodeProc, UiPage, eventually
from .test_chat_story import make_png

pytestmark = pytest.mark.browser


def grouped(user_id: str) -> str:
    return " ".join(user_id[i:i + 3] for i in range(0, 15, 3))


def name_at(node: NodeProc, user_id: str) -> str | None:
    person = node.ok("GET", "/api/v1/profiles")["people"].get(user_id) or {}
    return person.get("name")


def bubble(page: Page, text: str):
    return page.locator(".message", has=page.locator(".text", has_text=text))


def test_names_replace_numbers(cluster: Cluster, open_ui: Callable[..., UiPage],
                               output_dir: Path, tmp_path: Path) -> None:
    alice, bob, carol = cluster.add("alice"), cluster.add("bob"), cluster.add("carol")
    group = alice.create_group("Trip")
    bob.join(alice.invite(group))
    carol.join(alice.invite(group))

    # Bob gives his name on the welcome screen.
    b_ui = open_ui("bob", bob)
    b = b_ui.page
    b.get_by_label("Your name (optional)").fill("Bob")
    b_ui.screenshot(output_dir, "welcome-name")
    b.get_by_role("button", name="Continue").click()
    expect(b.get_by_role("heading", name="Pick a conversation")).to_be_visible()
    assert bob.ok("GET", "/api/v1/profiles")["me"] == {"name": "Bob", "avatar": None}

    # Alice sets her name and a picture in Settings.
    a_ui = open_ui("alice", alice)
    a = a_ui.page
    a.get_by_role("button", name="Continue").click()
    a.get_by_role("link", name="Settings").click()
    profile = a.get_by_role("region", name="Your profile")
    profile.get_by_label("Your name").fill("Alice")
    picture = tmp_path / "me.png"
    picture.write_bytes(make_png(300, 200))
    profile.locator("input[type=file]").set_input_files(str(picture))
    expect(profile.get_by_alt_text("Your new picture")).to_be_visible()
    profile.get_by_role("button", name="Save profile").click()
    expect(profile.get_by_role("status")).to_contain_text("Saved.")
    a_ui.assert_labelled()
    a_ui.screenshot(output_dir, "profile")
    mine = alice.ok("GET", "/api/v1/profiles")["me"]
    assert mine["name"] == "Alice" and mine["avatar"]
    eventually(lambda: name_at(bob, alice.user_id) == "Alice", message="Bob has Alice's name")

    # Carol takes a name that reads like Alice's.
    carol.ok("PUT", "/api/v1/profile", {"name": "A1ice"})
    eventually(lambda: name_at(bob, carol.user_id) == "A1ice", message="Bob has Carol's name")
    alice.send(group, "Hi all, tickets are booked")
    carol.send(group, "Alice here, new phone: send me the door code")

    # Bob's chat: senders by name, the copy marked; his receipts name people too.
    b.goto(f"{bob.url}/g/{group}")
    expect(bubble(b, "tickets are booked").locator(".sender")).to_have_text("Alice")
    fake = bubble(b, "door code").locator(".sender")
    expect(fake).to_contain_text("A1ice")
    mark = fake.get_by_test_id("lookalike")
    expect(mark).to_have_attribute("aria-label", re.compile(
        rf"A1ice \({grouped(carol.user_id)}\) has a name like that of Alice "
        rf"\({grouped(alice.user_id)}\): check the ID"))
    expect(bubble(b, "tickets are booked").get_by_test_id("lookalike")).to_have_count(0)
    box = b.get_by_label("Message (Enter sends")
    box.fill("Which Alice is which?")
    box.press("Enter")
    ticks = bubble(b, "Which Alice is which?").locator(".ticks")
    expect(ticks).to_have_attribute("data-status", re.compile("delivered|read"))
    ticks.click()
    receipts = bubble(b, "Which Alice is which?").get_by_role("region", name="Delivery per member")
    expect(receipts.locator(f'[data-member="{alice.user_id}"]')).to_contain_text("Alice:")
    expect(receipts.locator(f'[data-member="{carol.user_id}"]')).to_contain_text("A1ice")
    expect(b.locator(".messages")).not_to_contain_text(grouped(alice.user_id))
    b_ui.screenshot(output_dir, "chat-with-names")

    # The member list: names, with each ID under it, and the mark.
    b.get_by_role("link", name="Group info").click()
    members = b.get_by_test_id("member-list")
    for node, name in ((alice, "Alice"), (bob, "Bob"), (carol, "A1ice")):
        row = members.locator("li", has_text=grouped(node.user_id))
        expect(row.locator(".member-name")).to_contain_text(name)
    expect(members.locator("li", has_text=grouped(carol.user_id)).get_by_test_id("lookalike")
           ).to_have_count(1)
    expect(members.locator("li", has_text=grouped(alice.user_id)).locator("img.picture")
           ).to_be_visible()
    b_ui.screenshot(output_dir, "members-with-names")

    # Carol writes to Bob 1:1: the conversation list marks her chat too, and only hers.
    carol.ok("POST", f"/api/v1/chats/{bob.user_id}/messages", {"text": "it is me, Alice"})
    chats = b.locator(".conversations")
    fake_chat = chats.get_by_role("link", name=re.compile(r"^Chat with A1ice"))
    expect(fake_chat.get_by_test_id("lookalike")).to_have_attribute("aria-label", re.compile(
        rf"A1ice \({grouped(carol.user_id)}\) has a name like that of Alice "))
    expect(fake_chat.get_by_test_id("lookalike")).to_be_visible()
    expect(chats.get_by_test_id("lookalike")).to_have_count(1)
    b_ui.screenshot(output_dir, "lookalike-in-list")

    # A 1:1 chat is titled by name, its ID in the subtitle; the contact screen shows the
    # ID and takes Bob's nickname, which only Bob sees.
    alice_row = members.locator("li", has_text=grouped(alice.user_id))
    alice_row.get_by_role("link", name="Message").click()
    expect(b.get_by_role("heading", name="Alice", exact=True)).to_be_visible()
    expect(b.locator(".view-header")).to_contain_text(grouped(alice.user_id))
    b.get_by_role("link", name="Safety number").click()
    expect(b.get_by_test_id("contact-id")).to_have_text(grouped(alice.user_id))
    b.get_by_label("Your nickname for them").fill("Mum")
    b.get_by_role("button", name="Save nickname").click()
    expect(b.get_by_text("Saved: only you see this name.")).to_be_visible()
    expect(b.get_by_role("heading", name=re.compile("You and Mum"))).to_be_visible()
    b_ui.assert_labelled()
    b_ui.screenshot(output_dir, "nickname")
    b.go_back()
    expect(b.get_by_role("heading", name="Mum", exact=True)).to_be_visible()
    assert alice.ok("GET", "/api/v1/profiles")["me"]["name"] == "Alice"
    assert name_at(carol, alice.user_id) == "Alice"

