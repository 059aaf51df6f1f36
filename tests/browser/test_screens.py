"""The other screens, used as a person would: add a contact by ID and chat 1:1 (unread
count, read receipt), compare safety numbers on both sides, settings, a join link that
only fills the form, promote, remove and leave in group info."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .conftest import Cluster, UiPage

pytestmark = pytest.mark.browser


def grouped(user_id: str) -> str:
    return " ".join(user_id[i:i + 3] for i in range(0, 15, 3))


def sidebar(page: Page):  # a Playwright Locator
    return page.get_by_role("complementary", name="Conversations")


def skip_welcome(page: Page) -> None:
    page.get_by_role("button", name="Continue").click()
    expect(page.get_by_role("heading", name="Pick a conversation")).to_be_visible()


def test_contacts_safety_numbers_settings_and_group_admin(
        cluster: Cluster, open_ui: Callable[..., UiPage], output_dir: Path) -> None:
    alice_node, bob_node = cluster.add("alice"), cluster.add("bob")
    alice, bob = open_ui("alice", alice_node), open_ui("bob", bob_node)
    a, b = alice.page, bob.page
    skip_welcome(a)
    skip_welcome(b)

    # Bob adds Alice by her ID (typed with spaces, as she would read it out) and writes.
    sidebar(b).get_by_role("link", name="Add contact").click()
    b.get_by_label("Their Parley ID").fill("12345")
    b.get_by_role("button", name="Add contact").click()
    expect(b.get_by_role("alert")).to_have_text("A Parley ID has 15 digits.")
    b.get_by_label("Their Parley ID").fill(grouped(alice_node.user_id))
    b.get_by_role("button", name="Add contact").click()
    expect(b.get_by_role("heading", name=grouped(alice_node.user_id))).to_be_visible()
    box = b.get_by_label("Message (Enter sends")
    box.fill("Hi Alice, it's Bob")
    box.press("Enter")

    # Alice sees a new 1:1 chat with one unread message, opens it; Bob's tick turns "read".
    chat = sidebar(a).get_by_role("link", name=re.compile(grouped(bob_node.user_id)))
    expect(chat.locator(".unread")).to_contain_text("1 unread")
    expect(chat).to_contain_text("Hi Alice, it's Bob")
    chat.click()
    expect(a.locator(".message .text")).to_have_text(["Hi Alice, it's Bob"])
    expect(chat.locator(".unread")).to_have_count(0)
    expect(b.locator(".message .ticks")).to_have_attribute("data-status", "read")

    # Safety numbers: both screens show the same 60 digits in 12 blocks, and a QR code.
    a.get_by_role("link", name="Safety number").click()
    b.get_by_role("link", name="Safety number").click()
    numbers = []
    for page in (a, b):
        blocks = page.get_by_test_id("safety-number").locator(".block")
        expect(blocks).to_have_count(12)
        numbers.append("".join(blocks.all_text_contents()))
        expect(page.get_by_alt_text("QR code of the safety number")).to_be_visible()
    assert numbers[0] == numbers[1] and re.fullmatch(r"\d{60}", numbers[0])
    assert numbers[0] == alice_node.ok("GET", f"/api/v1/safety/{bob_node.user_id}")["safety_number"]
    # Alice marks it verified (it stays so after a reload), Bob has not.
    a.get_by_role("button", name="Mark as verified").click()
    expect(a.get_by_test_id("verified")).to_have_text("✓ Verified: you compared this number")
    a.reload()
    expect(a.get_by_test_id("verified")).to_have_text("✓ Verified: you compared this number")
    expect(b.get_by_test_id("verified")).to_have_text("Not verified yet")
    assert alice_node.ok("GET", f"/api/v1/safety/{bob_node.user_id}")["verified"] is True
    alice.screenshot(output_dir, "safety")
    alice.assert_labelled()

    # Settings show the bootstrap server this node uses.
    a.get_by_role("link", name="Settings").click()
    expect(a.get_by_text(cluster.bootstrap_url, exact=True)).to_be_visible()
    storage = a.locator("dt", has_text="Storage used").locator("xpath=following-sibling::dd[1]")
    expect(storage).to_have_text(re.compile(r"^\d+(\.\d)? (KB|MB)$"))
    expect(a.get_by_text(alice_node.user_id[:3] + " ")).not_to_have_count(0)
    alice.assert_labelled()

    # A join link in the address only fills the form: nothing happens until "Join group".
    group = alice_node.create_group("Book club")
    invite = alice_node.invite(group)
    b.goto(f"{bob_node.url}/join?invite={urllib.parse.quote(invite, safe='')}")
    expect(b.get_by_label("Invite link")).to_have_value(invite)
    assert bob_node.ok("GET", "/api/v1/groups")["groups"][0]["kind"] == "direct"
    b.get_by_role("button", name="Join group").click()
    expect(b.get_by_role("heading", name="Book club")).to_be_visible()

    # Group info: Alice makes Bob an admin (Bob's screen follows), then removes him.
    a.goto(f"{alice_node.url}/g/{group}/info")
    members = a.get_by_test_id("member-list")
    bob_row = members.locator("li", has_text=grouped(bob_node.user_id))
    expect(bob_row).to_be_visible()
    b.get_by_role("link", name="Group info").click()
    b_bob_row = b.get_by_test_id("member-list").locator("li", has_text=grouped(bob_node.user_id))
    expect(b_bob_row).not_to_contain_text("admin")
    alice.assert_labelled()
    bob_row.get_by_role("button", name="Make admin").click()
    expect(bob_row).to_contain_text("admin")
    expect(b_bob_row).to_contain_text("admin")
    bob_row.get_by_role("button", name="Remove").click()
    bob_row.get_by_role("button", name="Remove").click()  # confirm
    expect(members.locator("li")).to_have_count(1)
    expect(b.get_by_role("main").get_by_role("status")).to_have_text(
        "You are no longer a member of this group.")
    expect(sidebar(b).get_by_role("link", name=re.compile("Book club"))).to_have_count(0)
    assert group not in {g["id"] for g in bob_node.ok("GET", "/api/v1/groups")["groups"]}



def test_leaving_a_group(cluster: Cluster, open_ui: Callable[..., UiPage]) -> None:
    node = cluster.add("alice")
    group = node.create_group("Book club")
    ui = open_ui("alice", node, f"/g/{group}/info")
    page = ui.page
    page.get_by_role("button", name="Leave group").click()
    page.get_by_role("button", name="Leave", exact=True).click()
    expect(page.get_by_role("heading", name="Pick a conversation")).to_be_visible()
    expect(sidebar(page).get_by_role("link", name=re.compile("Book club"))).to_have_count(0)
    assert node.ok("GET", "/api/v1/groups")["groups"] == []


def test_an_unreachable_contact_is_shown_as_offline(cluster: Cluster,
                                                    open_ui: Callable[..., UiPage]) -> None:
    alice_node, bob_node = cluster.add("alice"), cluster.add("bob")
    bob_node.stop()  # registered, then gone
    # A chat with someone we never wrote to is a draft until the first message.
    ui = open_ui("alice", alice_node, f"/c/{bob_node.user_id}")
    page = ui.page
    expect(page.get_by_text("Say hello")).to_be_visible()
    page.get_by_label("Message (Enter sends").fill("Are you there?")
    page.get_by_label("Message (Enter sends").press("Enter")
    chat = sidebar(page).get_by_role("link", name=re.compile(grouped(bob_node.user_id)))
    expect(chat).to_be_visible()
    ticks = page.locator(".message", has_text="Are you there?").locator(".ticks")
    expect(ticks).to_have_attribute("data-status", "pending")
    expect(page.get_by_test_id("peer-offline")).to_contain_text("They seem to be offline",
                                                                 timeout=15_000)
    ticks.click()
    expect(page.get_by_role("region", name="Delivery per member")).to_contain_text(
        "waiting (offline or not reached yet)")
