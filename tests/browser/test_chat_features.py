"""Chat features in Chromium between two real nodes (issue 16): a new member's first
message is last for everyone, reply, react, edit, delete for everyone, search,
disappearing messages, mute, the "New messages" divider and the notifications setting.
Screenshots of each screen go to test-output/browser/."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .conftest import Cluster, UiPage, eventually
from .test_chat_story import send

pytestmark = pytest.mark.browser


def chat(page: Page):
    return page.get_by_test_id("message-scroller")


def message(page: Page, text: str):
    return chat(page).locator(".message", has_text=text)


def action(page: Page, text: str, name: str) -> None:
    item = message(page, text)
    item.hover()
    item.get_by_role("button", name=name, exact=True).click()


_HIDDEN_TAB_JS = """() => {
  window.shown = [];
  window.Notification = class {
    constructor(title, options) { window.shown.push(`${title}: ${options.body}`); }
    static get permission() { return "granted"; }
  };
  Object.defineProperty(document, "visibilityState", { configurable: true, get: () => "hidden" });
}"""


def test_chat_features_between_two_nodes(
        cluster: Cluster, open_ui: Callable[..., UiPage], output_dir: Path) -> None:
    alice, bob = cluster.add("alice"), cluster.add("bob")
    group = alice.create_group("Club")
    alice.send(group, "one")
    bob.join(alice.invite(group))
    alice.send(group, "two")
    a = open_ui("alice", alice, f"/g/{group}").page
    b = open_ui("bob", bob, f"/g/{group}").page

    # Bob joined last: his first message is the last one for both, and the sidebar's.
    send(b, "hi all")
    for page in (a, b):
        expect(chat(page).locator(".message").last).to_contain_text("hi all")
    expect(a.locator(".conversations .conv-preview").first).to_contain_text("hi all")

    # Alice replies to it; Bob sees the quote.
    action(a, "hi all", "Reply")
    expect(a.get_by_test_id("compose-context")).to_contain_text("hi all")
    a.screenshot(path=str(output_dir / "alice-replying.png"))
    send(a, "welcome")
    quote = message(b, "welcome").get_by_test_id("quote")
    expect(quote).to_contain_text("hi all")

    # Bob reacts; Alice sees it, Bob changes it.
    action(b, "welcome", "React")
    message(b, "welcome").get_by_role("button", name="React with 👍").click()
    expect(message(a, "welcome").locator(".reaction")).to_have_text("👍")
    action(b, "welcome", "React")
    message(b, "welcome").get_by_role("button", name="React with ❤️").click()
    expect(message(a, "welcome").locator(".reaction")).to_have_text("❤️")
    b.screenshot(path=str(output_dir / "bob-reply-and-reaction.png"))

    # Alice edits her reply and deletes "two" for everyone. Escape first leaves an edit
    # as the ✕ does: the text goes, nothing is sent.
    box = a.get_by_label("Message (Enter sends")
    action(a, "welcome", "Edit")
    expect(box).to_have_value("welcome")
    box.press("Escape")
    expect(a.get_by_test_id("compose-context")).to_have_count(0)
    expect(box).to_have_value("")
    action(a, "welcome", "Edit")
    expect(a.get_by_test_id("compose-context")).to_contain_text("Editing")
    expect(box).to_have_value("welcome")
    box.fill("welcome, bob!")
    box.press("Enter")
    expect(message(b, "welcome, bob!").locator(".edited")).to_have_text("edited")
    a.once("dialog", lambda dialog: dialog.accept())
    action(a, "two", "Delete for everyone")
    expect(chat(b).get_by_text("This message was deleted.")).to_be_visible()
    expect(chat(b).get_by_text("two", exact=True)).to_have_count(0)
    b.screenshot(path=str(output_dir / "bob-edited-and-deleted.png"))

    # Search: Bob finds the edited text (not the old one) and opens the chat from it.
    b.get_by_test_id("search").fill("welc")
    result = b.get_by_test_id("search-result")
    expect(result).to_have_count(1)
    expect(result.locator("mark")).to_have_text("welcome")
    b.screenshot(path=str(output_dir / "bob-search.png"))
    b.get_by_test_id("search").fill("two")
    expect(b.get_by_text("No messages found.")).to_be_visible()
    b.get_by_test_id("search").fill("welcome")
    b.get_by_test_id("search-result").click()
    expect(b.get_by_test_id("search")).to_have_value("")

    # Disappearing messages: Bob sets a timer; both see the line; a message vanishes.
    b.get_by_test_id("timer-select").select_option("30")
    for page in (a, b):
        expect(chat(page).get_by_test_id("system-line").last).to_contain_text(
            "disappearing messages to 30 seconds")
    expect(a.get_by_test_id("timer-select")).to_have_value("30")
    a.screenshot(path=str(output_dir / "alice-timer-line.png"))
    a.reload()   # the lines are the node's, not only what this page saw
    expect(chat(a).get_by_test_id("system-line").last).to_contain_text(
        "disappearing messages to 30 seconds")
    bob.ok("POST", f"/api/v1/groups/{group}/settings", {"timer": 5})
    expect(a.get_by_test_id("timer-select")).to_have_value("5")
    send(a, "self-destructing")
    expect(message(b, "self-destructing")).to_be_visible()
    expect(message(b, "self-destructing").locator(".timer")).to_be_visible()
    for page in (a, b):
        expect(message(page, "self-destructing")).to_have_count(0, timeout=15_000)
    bob.ok("POST", f"/api/v1/groups/{group}/settings", {"timer": 0})

    # Mute (this node only): the bell, and a quiet badge in the list.
    a.get_by_test_id("mute").click()
    expect(a.get_by_test_id("mute")).to_have_attribute("aria-pressed", "true")
    expect(a.locator(".conversations .muted-mark")).to_be_visible()

    # Away from the chat, two messages arrive: the badge counts them (muted style) and
    # the chat opens with a "New messages" divider above them.
    a.get_by_role("link", name="Settings").click()
    bob.send(group, "are you there?")
    bob.send(group, "lunch at one")
    expect(a.locator(".unread.quiet")).to_contain_text("2")
    a.screenshot(path=str(output_dir / "alice-muted-badge.png"))
    a.context.grant_permissions(["notifications"])
    a.get_by_test_id("notifications").check()
    expect(a.get_by_test_id("notifications")).to_be_checked()
    a.screenshot(path=str(output_dir / "alice-notifications-setting.png"))
    a.locator(".conversations .conv").first.click()
    divider = a.get_by_test_id("new-divider")
    expect(divider).to_be_visible()
    after = a.locator(".message-list > li").evaluate_all(
        "items => items.map(i => i.textContent.trim())")
    at = after.index("New messages")
    assert "are you there?" in after[at + 1] and "lunch at one" in after[at + 2]
    a.screenshot(path=str(output_dir / "alice-new-messages-divider.png"))

    # Notifications: only while the tab is hidden, never for a muted chat. (The page's
    # Notification is replaced by a recorder: headless Chromium shows none.)
    a.evaluate(_HIDDEN_TAB_JS)
    bob.send(group, "while muted")
    expect(message(a, "while muted")).to_be_visible()
    a.get_by_test_id("mute").click()   # unmute
    expect(a.get_by_test_id("mute")).to_have_attribute("aria-pressed", "false")
    bob.send(group, "ping")
    expect(message(a, "ping")).to_be_visible()
    eventually(lambda: a.evaluate("window.shown.length") == 1, message="one notification")
    assert a.evaluate("window.shown")[0].endswith("in Club: ping")
    eventually(lambda: bob.ok("GET", f"/api/v1/groups/{group}/messages")["messages"][-1]
               ["sender"] == bob.user_id, message="bob's list ends with his message")
