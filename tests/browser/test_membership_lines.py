"""Membership in the chat (issue 16 items 4 and 8): system lines for joins, removals and
promotions, where a new member's history starts (instead of "No messages yet"), a
removed member's header keeping the group's name, and a removed member coming back
with a new invite while the invite made before the removal stays refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from .conftest import Cluster, UiPage, eventually

pytestmark = pytest.mark.browser

HISTORY_START = "You joined the group. Messages sent before you joined are not shared with you."


def lines(page: Page):
    return page.get_by_test_id("system-line")


def chat(page: Page):
    return page.get_by_test_id("message-scroller")


def test_system_lines_and_a_removed_member_rejoining(
        cluster: Cluster, open_ui: Callable[..., UiPage], output_dir: Path) -> None:
    alice, bob, carol = cluster.add("alice"), cluster.add("bob"), cluster.add("carol")
    for node, name in ((alice, "Alice"), (bob, "Bob"), (carol, "Carol")):
        node.ok("PUT", "/api/v1/profile", {"name": name})
    group = alice.create_group("Trip")
    bob.join(alice.invite(group))
    alice.send(group, "before carol came")
    carol.join(alice.invite(group))
    alice.ok("POST", f"/api/v1/groups/{group}/admins", {"id": carol.user_id})
    stale = alice.invite(group)

    # Carol joined late: her chat says where her history starts, not "No messages yet".
    c = open_ui("carol", carol, f"/g/{group}").page
    expect(lines(c).first).to_have_text(HISTORY_START)
    expect(lines(c).last).to_have_text("Alice made you an admin")  # names, not numbers
    expect(chat(c).get_by_text("No messages yet")).to_have_count(0)
    expect(chat(c).get_by_text("before carol came")).to_have_count(0)
    c.screenshot(path=str(output_dir / "carol-history-start.png"))

    # Bob is removed while he looks at the chat: the header keeps the group's name.
    bob_ui = open_ui("bob", bob, f"/g/{group}")
    b = bob_ui.page
    expect(chat(b).get_by_text("before carol came")).to_be_visible()
    assert alice.call("DELETE", f"/api/v1/groups/{group}/members/{bob.user_id}")[0] == 204
    expect(b.get_by_text("You are not (or no longer) in this group.")).to_be_visible()
    expect(b.get_by_role("heading", name="Trip")).to_be_visible()
    b.screenshot(path=str(output_dir / "bob-removed.png"))
    b.reload()  # and after a reload, from the node's list of groups we are out of
    expect(b.get_by_role("heading", name="Trip")).to_be_visible()
    expect(b.get_by_text("You are not (or no longer) in this group.")).to_be_visible()
    assert bob.ok("GET", "/api/v1/groups")["left_groups"] == [{"id": group, "name": "Trip"}]

    # The invite made before the removal does not bring him back; a new one does.
    frames: list[str] = []
    b.on("websocket", lambda ws: ws.on("framereceived", lambda frame: frames.append(str(frame))))
    b.goto(b.url.split("/g/")[0] + "/join")
    # The events socket is up ("ready" came) before the join: a refusal that comes at
    # once must not be published before the page listens (a loaded machine's click can
    # beat the socket).
    expect(b.locator(".conn.live")).to_have_count(1)

    def refusals() -> int:
        b.wait_for_timeout(100)  # Playwright hands over the frames only while called
        return sum("join_refused" in f for f in frames)

    b.get_by_label("Invite link").fill(stale)
    b.get_by_role("button", name="Join group").click()
    expect(b.get_by_role("main").get_by_role("alert")).to_contain_text(
        "removed from that group after this invite was made: ask an admin for a new invite")
    # Alice and Carol (a backup the invite names) both refuse: the screen says it
    # once, and the refusal that comes in after the answer adds no toast.
    eventually(lambda: refusals() >= 2, message="both refusals reached bob's page")
    expect(b.locator(".notice")).to_have_count(0)
    b.screenshot(path=str(output_dir / "bob-stale-invite.png"))
    # Chromium logs the refused request itself; that is the only console error.
    assert [e for e in bob_ui.console_errors if "403" not in e or "/api/v1/join" not in e] == []
    bob_ui.console_errors.clear()
    b.get_by_label("Invite link").fill(alice.invite(group))
    b.get_by_role("button", name="Join group").click()
    expect(b.get_by_role("heading", name="Trip")).to_be_visible()
    expect(lines(b).first).to_have_text(HISTORY_START)
    eventually(lambda: bob.user_id in alice.members(group), message="bob is back")
    alice.send(group, "welcome back, bob")
    expect(chat(b).get_by_text("welcome back, bob")).to_be_visible()
    b.screenshot(path=str(output_dir / "bob-rejoined.png"))

    # Alice's chat tells the whole story, between the messages, in order.
    a = open_ui("alice", alice, f"/g/{group}").page
    who_b, who_c = "Bob", "Carol"
    expect(lines(a)).to_have_text(["You created the group", f"{who_b} joined", f"{who_c} joined",
                                   f"You made {who_c} an admin", f"You removed {who_b}",
                                   f"{who_b} joined"])
    expect(chat(a).locator(".message").last).to_contain_text("welcome back, bob")
    order = a.locator(".message-list > li").evaluate_all(
        "items => items.map(i => i.textContent.trim())")
    first_message = next(i for i, t in enumerate(order) if "before carol came" in t)
    assert order.index(f"{who_b} joined") < first_message < order.index(f"{who_c} joined")
    assert "welcome back, bob" in order[-1]
    a.screenshot(path=str(output_dir / "alice-system-lines.png"))
