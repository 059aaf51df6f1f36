"""What a new user tripped over (issue 16): a chat with pictures opens at its newest
message and stays there while pictures and files arrive, the open conversation keeps no
unread badge, a refused join is one toast in words, a file card reads well at phone
width and shows the download from its start, and group info speaks without jargon."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect

from tests.integration.attachments.conftest import upload, wait_complete

from .conftest import Cluster, NodeProc, UiPage, eventually
from .test_chat_story import make_png

pytestmark = pytest.mark.browser

PHONE = {"width": 390, "height": 800}
LONG_NAME = "archive-2024-summer-trip-photos-and-tickets-final.bin"

# How far the message list is from its bottom, once every picture in it has decoded.
_GAP_JS = """el => {
  const pending = [...el.querySelectorAll("img")].some(i => !i.complete || !i.naturalWidth);
  return pending ? null : el.scrollHeight - el.scrollTop - el.clientHeight;
}"""


def group_of_two(cluster: Cluster, name: str) -> tuple[NodeProc, NodeProc, str]:
    alice, bob = cluster.add("alice"), cluster.add("bob")
    group = alice.create_group(name)
    bob.join(alice.invite(group))
    return alice, bob, group


def skip_welcome(page: Page) -> None:
    page.get_by_role("button", name="Continue").click()


def gap_to_bottom(page: Page) -> float:
    scroller = page.get_by_test_id("message-scroller")
    return eventually(lambda: (g := scroller.evaluate(_GAP_JS)) is not None and [g],
                      message="every picture decoded")[0]


def at_bottom(page: Page) -> None:
    eventually(lambda: gap_to_bottom(page) < 2, timeout=10,
               message="the chat shows its newest message")


def badge(page: Page, name: str):
    return page.get_by_role("complementary", name="Conversations").get_by_role(
        "link", name=re.compile(name)).locator(".unread")


def test_a_chat_with_pictures_opens_and_stays_at_the_newest_message(
        cluster: Cluster, open_ui: Callable[..., UiPage], output_dir: Path) -> None:
    alice, bob, group = group_of_two(cluster, "Pictures")
    path = f"/api/v1/groups/{group}/messages"
    for i in range(4):  # pictures 480 px tall: the list is far taller than the window
        assert upload(alice, path, make_png(320, 480), f"photo-{i}.png", f"photo {i}")[0] == 201
        alice.send(group, f"text {i}")
    alice.send(group, "the newest message")

    ui = open_ui("bob", bob)
    page = ui.page
    skip_welcome(page)
    page.get_by_role("link", name=re.compile("Pictures")).click()
    expect(page.locator(".message").last).to_contain_text("the newest message")
    at_bottom(page)
    expect(page.locator(".message", has_text="the newest message")).to_be_in_viewport()

    # A picture arriving while Bob reads the bottom: still at the newest message once it
    # has loaded, and a file arriving leaves no unread badge on the open chat.
    assert upload(alice, path, make_png(320, 480), "late.png", "a late photo")[0] == 201
    expect(page.locator(".message").last.get_by_test_id("image-preview")).to_be_visible()
    at_bottom(page)
    status, reply = upload(alice, path, os.urandom(300_000), "notes.bin")
    assert status == 201
    wait_complete(bob, reply["attachment"]["id"])
    expect(page.locator(".message").last).to_contain_text("notes.bin")
    at_bottom(page)
    eventually(lambda: next(c for c in bob.ok("GET", "/api/v1/groups")["groups"]
                            if c["id"] == group)["unread"] == 0,
               message="the node counts nothing unread")
    page.wait_for_timeout(500)  # a late reload of the list must not bring the badge back
    expect(badge(page, "Pictures")).to_have_count(0)
    ui.screenshot(output_dir, "at-newest")

    # Scrolled up to read, Bob is not pulled down by a new message.
    page.get_by_test_id("message-scroller").evaluate("el => { el.scrollTop = 0; }")
    alice.send(group, "one more")
    expect(page.locator(".message").last).to_contain_text("one more")
    page.wait_for_timeout(300)
    assert page.get_by_test_id("message-scroller").evaluate("el => el.scrollTop") == 0

    # Group info counts the group's changes in words (no "Epoch 2"): an invite, a join.
    page.get_by_role("link", name="Group info").click()
    expect(page.get_by_test_id("membership-log")).to_contain_text(
        "2 changes since the group was created (invites, joins,")
    expect(page.get_by_text(re.compile(r"\bEpoch\b"))).to_have_count(0)


def test_a_refused_join_is_one_toast_in_words(
        cluster: Cluster, open_ui: Callable[..., UiPage], output_dir: Path) -> None:
    alice, bob = cluster.add("alice"), cluster.add("bob")
    carol = cluster.add("carol")
    group = alice.create_group("Once")
    invite = alice.invite(group)
    carol.join(invite)  # an invite works once

    ui = open_ui("bob", bob)
    page = ui.page
    skip_welcome(page)
    # A script of Bob's (the API, no join screen open) tries the used invite twice: the
    # node reports each refusal, the page shows one toast, in words.
    for _ in range(2):
        status, reply = bob.call("POST", "/api/v1/join", {"invite": invite})
        assert status == 403 and reply["error"] == "invite_invalid"
    toast = page.locator(".notice")
    expect(toast).to_have_count(1)
    expect(toast).to_have_text(re.compile(r"^Joining the group was refused\. That invite is not "
                                          r"valid \(it may have been used already\)\."))
    ui.screenshot(output_dir, "refused-toast")

    # On the join screen the refusal shows there, once, and adds no toast.
    page.get_by_role("button", name="Dismiss").click()
    expect(toast).to_have_count(0)
    page.get_by_role("link", name="Join", exact=True).click()
    page.get_by_label("Invite link").fill(invite)
    page.get_by_role("button", name="Join group").click()
    expect(page.get_by_role("alert")).to_have_text(
        "That invite is not valid (it may have been used already). Ask for a new one.")
    page.wait_for_timeout(500)
    expect(toast).to_have_count(0)
    assert "invite_invalid" not in page.locator("body").inner_text()
    # Chromium logs the refused request itself; that is the only console error.
    assert [e for e in ui.console_errors if "403" not in e or "/api/v1/join" not in e] == []
    ui.console_errors.clear()


_WATCH_JS = """() => {
  window.sawDownloading = [];
  new MutationObserver(() => {
    for (const el of document.querySelectorAll(".attachment .progress [role=status]")) {
      window.sawDownloading.push(el.textContent);
    }
  }).observe(document.body, {subtree: true, childList: true, characterData: true});
}"""


def test_a_file_card_at_phone_width(
        cluster: Cluster, open_ui: Callable[..., UiPage], output_dir: Path) -> None:
    alice, bob, group = group_of_two(cluster, "Files")
    ui = open_ui("bob-phone", bob, f"/g/{group}", viewport=PHONE)
    page = ui.page
    expect(page.get_by_role("heading", name="Files")).to_be_visible()
    page.evaluate(_WATCH_JS)

    size = 6 * 1024 * 1024
    status, reply = upload(alice, f"/api/v1/groups/{group}/messages", os.urandom(size), LONG_NAME)
    assert status == 201
    card = page.locator(".message", has_text="archive-2024").locator(".file-card")
    expect(card.get_by_role("link", name=f"Download {LONG_NAME}")).to_be_visible()

    # The receiver showed the download with its size from the announcement on.
    seen = page.evaluate("window.sawDownloading")
    assert any(re.fullmatch(r"Downloading [\d.]+ (B|KB|MB) of 6\.0 MB", t) for t in seen), seen

    # The whole name is readable (it wraps, nothing cut off), the kind is one short line
    # in words instead of "application/octet-stream" over three lines.
    name = card.locator(".file-name")
    expect(name).to_have_text(LONG_NAME)
    assert name.evaluate("el => el.scrollHeight <= el.clientHeight + 1 && "
                         "el.scrollWidth <= el.clientWidth + 1")
    meta = card.locator(".file-meta")
    expect(meta).to_have_text("6.0 MB · BIN file")
    line = meta.evaluate("el => parseFloat(getComputedStyle(el).lineHeight)")
    assert meta.bounding_box()["height"] < 1.5 * line
    assert card.bounding_box()["width"] <= PHONE["width"]
    expect(page.get_by_text("application/octet-stream")).to_have_count(0)
    ui.screenshot(output_dir, "file-card")
    assert reply["attachment"]["size"] == size
