"""A changed safety number stays in the chat (issue 16, item 8): the node stores a line
in every conversation shared with that person, at its place among the messages; the
page shows it live once, and again after a reload and after a restart of the node."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from mesh.identity import KeyPair
from tests.integration.messenger.conftest import NodeProc

from .conftest import Cluster, UiPage, eventually

pytestmark = pytest.mark.browser

CHANGED = "The safety number of Bob changed"


def forget_sessions(node: NodeProc, peer: str, *, other_key: bytes | None = None) -> None:
    """Edit a stopped node's database: drop its session with ``peer`` and, with
    ``other_key``, pin that key for ``peer`` instead of the real one. IDs are
    self-certifying, so a real change needs a 50-bit collision or a damaged store;
    this is the state such a node would be in, and bob's next session meets it."""
    conn = sqlite3.connect(node.data_dir / "node.db")
    with conn:
        conn.execute("DELETE FROM sessions WHERE user_id = ?", (peer,))
        if other_key is not None:
            conn.execute("UPDATE identities SET identity_key = ? WHERE user_id = ?",
                         (other_key, peer))
    conn.close()


def chat(page: Page):
    return page.get_by_test_id("message-scroller")


def order_of(page: Page) -> list[str]:
    return page.locator(".message-list > li").evaluate_all(
        "items => items.map(i => i.textContent.trim())")


def test_a_changed_safety_number_stays_in_the_chat(
        cluster: Cluster, open_ui: Callable[..., UiPage], output_dir: Path) -> None:
    alice, bob = cluster.add("alice"), cluster.add("bob")
    for node, name in ((alice, "Alice"), (bob, "Bob")):
        node.ok("PUT", "/api/v1/profile", {"name": name})
    group = alice.create_group("Trip")
    bob.join(alice.invite(group))
    eventually(lambda: alice.members(group) == {alice.user_id, bob.user_id})
    bob.send(group, "before the change")
    eventually(lambda: "before the change" in alice.texts(group))
    alice.ok("POST", f"/api/v1/chats/{bob.user_id}/messages", {"text": "hi bob"})
    eventually(lambda: any(m["text"] == "hi bob" for m in bob.ok(
        "GET", f"/api/v1/chats/{alice.user_id}/messages")["messages"]))

    for node in (alice, bob):
        node.stop()
    forget_sessions(alice, bob.user_id, other_key=KeyPair.generate().public)
    forget_sessions(bob, alice.user_id)
    alice.start()
    ui = open_ui("alice", alice, f"/g/{group}")
    a = ui.page
    expect(chat(a).get_by_text("before the change")).to_be_visible()

    # Bob's next pairwise message starts a new session under his real key: alice's node
    # refuses to trust it silently and the open chat shows the line as it happens.
    bob.start()
    bob.ok("POST", f"/api/v1/chats/{alice.user_id}/messages", {"text": "new phone?"})
    lines = a.get_by_test_id("system-line").filter(has_text=CHANGED)
    expect(lines).to_have_count(1)
    stored = alice.ok("GET", f"/api/v1/groups/{group}/messages")["safety_changes"]
    assert [(s["conversation"], s["user"]) for s in stored] == [(group, bob.user_id)]
    direct = alice.ok("GET", f"/api/v1/chats/{bob.user_id}/messages")["safety_changes"]
    assert [s["user"] for s in direct] == [bob.user_id]
    alice.send(group, "after the change")
    expect(chat(a).get_by_text("after the change")).to_be_visible()

    def in_place() -> None:
        order = order_of(a)
        line = next(i for i, t in enumerate(order) if t == CHANGED)
        before = next(i for i, t in enumerate(order) if "before the change" in t)
        after = next(i for i, t in enumerate(order) if "after the change" in t)
        assert before < line < after, order

    in_place()
    a.reload()  # the page's memory is gone: the line comes from the node, once
    expect(chat(a).get_by_text("after the change")).to_be_visible()
    expect(lines).to_have_count(1)
    in_place()
    a.screenshot(path=str(output_dir / "alice-safety-line.png"))
    a.goto(a.url.split("/g/")[0] + f"/c/{bob.user_id}")  # and in the 1:1 chat, after hi
    expect(chat(a).get_by_text("hi bob")).to_be_visible()
    expect(lines).to_have_count(1)
    assert order_of(a)[-1] == CHANGED
    a.goto("about:blank")  # a page left on the stopped node would log its failed requests

    alice.stop()
    alice.start(ready="")
    assert alice.ok("GET", f"/api/v1/groups/{group}/messages")["safety_changes"] == stored
