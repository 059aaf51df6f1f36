"""How others reach this node, and how each link travels, in the browser (issue 14
item 2), between two real nodes on loopback in Chromium: Settings states the node's
reachability in words (whatever the API reports on this machine), with its addresses
and what LAN discovery and port mapping do in a details list; a linked member and a
contact show a path badge that says in words the path the API reports."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from .conftest import Cluster, NodeProc, UiPage, eventually

pytestmark = pytest.mark.browser

LOOPBACK = ("--mesh-host", "127.0.0.1")   # test traffic stays on loopback
PHONE = {"width": 390, "height": 760}
PATH_WORDS = {
    "lan": "Linked over your local network",
    "direct": "Linked directly over the internet",
    "hole_punched": "Linked directly through both routers (hole-punched)",
    "relayed": "Linked through a relay: it sees who talks to whom, never what is said",
}
OFF_WORDS = {"not_on_lan": "off: the node listens on this computer only (loopback)"}


def headline(reach: dict[str, Any]) -> str:
    """The sentence the card must show for this ``me.reachability``."""
    host = lambda url: urlsplit(url).netloc  # noqa: E731 - as the app shows an address
    if reach["state"] == "public":
        return f"Reachable directly at {host(reach['public'][0])}"
    if reach["state"] == "relayed":
        return f"Behind a router — reachable through relay {host(reach['relays'][0])}"
    if reach["state"] == "lan_only":
        return "Only on this local network"
    if reach["problem"]:
        return "Not checked yet: the bootstrap server could not check this node"
    return "Checking…"


def settled(node: NodeProc) -> dict[str, Any]:
    """``me.reachability`` once its first check is over (worked or failed)."""
    return eventually(lambda: (r := node.ok("GET", "/api/v1/me")["reachability"])
                      and (r["state"] != "unknown" or r["problem"]) and r,
                      message="a reachability check")


def assert_header_fits(page: Any) -> None:
    """The chat header stays within a phone-width window: nothing cut off on the right
    (it was 413 px wide at 390, the Safety number button half outside)."""
    header = page.locator(".view-header")
    width, right = header.evaluate("h => [h.scrollWidth, h.getBoundingClientRect().right]")
    assert width <= PHONE["width"] and right <= PHONE["width"], (
        f"chat header {width} px wide, right edge at {right} px")
    safety = header.get_by_role("link", name="Safety number")
    expect(safety).to_be_in_viewport(ratio=1)
    box = safety.bounding_box()
    assert box is not None and box["x"] + box["width"] <= PHONE["width"], box


def member_path(node: NodeProc, group: str, user_id: str) -> str | None:
    members = node.ok("GET", f"/api/v1/groups/{group}")["members"]
    return next(m["path"] for m in members if m["id"] == user_id)


def test_settings_says_how_others_reach_us_and_badges_say_each_path(
        cluster: Cluster, open_ui: Callable[..., UiPage], output_dir: Path) -> None:
    alice, bob = cluster.add("alice", *LOOPBACK), cluster.add("bob", *LOOPBACK)
    group = alice.create_group("Paths")
    bob.join(alice.invite(group))
    alice.ok("POST", "/api/v1/contacts", {"id": bob.user_id})
    alice.ok("POST", f"/api/v1/chats/{bob.user_id}/messages", {"text": "which way?"})

    ui = open_ui("alice", alice, "/settings")
    page = ui.page
    reach = settled(alice)
    card = page.get_by_test_id("reachability")
    expect(card.get_by_role("heading")).to_have_text("How others reach you")
    expect(page.get_by_test_id("reach-state")).to_have_text(headline(reach))
    card.get_by_text("Addresses and what the node is doing").click()
    details = page.get_by_test_id("reach-details")
    for url in reach["lan"]:
        expect(details).to_contain_text(urlsplit(url).netloc)
    lan, mapping = reach["lan_discovery"], reach["port_mapping"]
    assert (lan["reason"], mapping["reason"]) == ("not_on_lan", "not_on_lan")
    expect(page.get_by_test_id("lan-discovery")).to_have_text(OFF_WORDS["not_on_lan"])
    expect(page.get_by_test_id("port-mapping")).to_have_text(OFF_WORDS["not_on_lan"])
    ui.assert_labelled()
    card.scroll_into_view_if_needed()
    ui.screenshot(output_dir, "settings-reachability")
    page.set_viewport_size(PHONE)
    card.scroll_into_view_if_needed()
    ui.screenshot(output_dir, "settings-reachability-phone")
    width = page.evaluate("document.scrollingElement.scrollWidth")
    assert width <= PHONE["width"], f"Settings scrolls sideways at phone width: {width} px"

    # The member list: Bob's badge names the path Alice's node reports for their link.
    path = eventually(lambda: member_path(alice, group, bob.user_id), message="a link to bob")
    page.set_viewport_size({"width": 1180, "height": 760})
    page.goto(f"{alice.url}/g/{group}/info")
    bob_row = page.get_by_test_id("member-list").locator("li", has=page.get_by_text(
        " ".join(bob.user_id[i:i + 3] for i in range(0, 15, 3))))
    badge = bob_row.get_by_test_id("path-badge")
    expect(badge).to_have_attribute("data-path", path)
    expect(badge).to_have_attribute("title", PATH_WORDS[path])
    expect(badge.locator(".visually-hidden")).to_have_text(PATH_WORDS[path])
    expect(page.get_by_test_id("member-list").get_by_test_id("path-badge")).to_have_count(1)
    ui.assert_labelled()
    ui.screenshot(output_dir, "member-path-badge")

    # The 1:1 chat header (the app asks GET /links; /contacts says the same); only the dot
    # at phone width.
    contact_path = next(c["path"] for c in alice.ok("GET", "/api/v1/contacts")["contacts"]
                        if c["id"] == bob.user_id)
    assert contact_path == path == alice.ok("GET", "/api/v1/links")["links"][bob.user_id]
    page.goto(f"{alice.url}/c/{bob.user_id}")
    header_badge = page.locator(".view-header").get_by_test_id("path-badge")
    expect(header_badge).to_have_attribute("data-path", path)
    expect(header_badge).to_contain_text(PATH_WORDS[path])
    ui.screenshot(output_dir, "chat-header-path")
    page.set_viewport_size(PHONE)
    expect(header_badge.locator(".short")).to_be_hidden()
    expect(header_badge).to_be_visible()
    assert_header_fits(page)
    ui.screenshot(output_dir, "chat-header-path-phone")

    # Bob goes: his badge says so, in words, without a reload.
    bob.stop()
    expect(header_badge).to_have_attribute("data-path", "none", timeout=30_000)
    expect(header_badge).to_have_attribute(
        "title", "Not connected now: messages wait and go out when a link comes up")
    assert_header_fits(page)
    ui.screenshot(output_dir, "chat-header-not-connected-phone")


def test_a_relayed_link_and_the_relay_in_settings(
        cluster: Cluster, open_ui: Callable[..., UiPage], output_dir: Path) -> None:
    """Two nodes nobody can dial directly (their one direct endpoint goes nowhere) link
    through the bootstrap's relay: Bob's badge says "Relayed", and Settings lists the
    relay address and the reservation held there."""
    behind = ("--advertise", "ws://192.0.2.1:9/mesh", "--relay-via", cluster.bootstrap_url,
              *LOOPBACK)
    alice, bob = cluster.add("alice", *behind), cluster.add("bob", *behind)
    group = alice.create_group("Relayed")
    bob.join(alice.invite(group))
    assert eventually(lambda: member_path(alice, group, bob.user_id)) == "relayed"

    ui = open_ui("alice", alice, f"/g/{group}/info", viewport=PHONE)
    page = ui.page
    badges = page.get_by_test_id("member-list").get_by_test_id("path-badge")
    expect(badges).to_have_count(1)  # Bob's; our own row has none, not even at first
    badge = badges.first
    expect(badge).to_have_attribute("data-path", "relayed")
    expect(badge).to_have_text(f"Relayed{PATH_WORDS['relayed']}")
    ui.screenshot(output_dir, "member-relayed-phone")

    reach = alice.ok("GET", "/api/v1/me")["reachability"]
    relay = reach["relay_status"][0]
    assert relay["state"] == "reserved"
    page.goto(f"{alice.url}/settings")
    expect(page.get_by_test_id("reach-state")).to_have_text(headline(reach))
    page.get_by_text("Addresses and what the node is doing").click()
    details = page.get_by_test_id("reach-details")
    expect(details).to_contain_text(f"Relay{urlsplit(reach['relays'][0]).netloc}")
    expect(details).to_contain_text(f"{urlsplit(relay['relay']).netloc}: holding a reservation")
    expect(page.get_by_test_id("port-mapping")).to_have_text(
        "off: the node was given its public address at start")
    details.scroll_into_view_if_needed()
    ui.assert_labelled()
    ui.screenshot(output_dir, "settings-relay-phone")
