"""Store-carry-forward over Bluetooth meetups, with socket pairs standing in for RFCOMM.

A and C have no internet at all (no bootstrap, no DHT, no WebSocket mesh); B has a
WebSocket listener but no bootstrap either. The three form a group at meetups, then:
A and B meet (with the line dropped halfway through a 5 MiB attachment, then again),
B meets C over WebSocket, and A and B meet once more.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from pathlib import Path

from groups.node import Node
from tests.integration.bluetooth.conftest import Relay, meet, texts, until

MiB = 1024 * 1024


async def join_at_meetup(joiner: Node, admin: Node, group: bytes) -> None:
    """The admin shows an invite; the joiner redeems it while they are linked over
    the stand-in (the joiner's request waits in its outbox until then). The meeting
    ends once each holds the other's sender key."""
    invite = admin.messenger.groups.invite(group)
    join = asyncio.create_task(joiner.messenger.groups.join(invite, wait=20))
    async with meet(joiner, admin) as meeting:
        await meeting.established()
        assert await join == (group, True)
        await until(lambda: holds_key(admin, group, joiner) and holds_key(joiner, group, admin),
                    what="the joiner and the admin swap sender keys")


def holds_key(node: Node, group: bytes, sender: Node) -> bool:
    return node.conn.execute("SELECT 1 FROM sender_keys WHERE group_id = ? AND sender = ?",
                             (group, sender.user_id)).fetchone() is not None


def status(node: Node, group: bytes, text: str) -> dict[str, str]:
    [message] = [m for m in node.messenger.messages(group) if m["text"] == text]
    return message["status"]


async def plain_file(node: Node, file_id: bytes) -> bytes:
    row = node.attachments.get(file_id)
    return b"".join([await node.attachments.read_plain(row, i) for i in range(row.count)])


async def test_history_is_carried_both_ways_and_onwards(nodes, tmp_path: Path) -> None:
    a = await nodes("a")                  # no internet
    b = await nodes("b", mesh_port=0)     # reachable over WebSocket, but not by A
    c = await nodes("c")                  # no internet for now
    group = a.messenger.groups.create("hike")

    # The group forms at meetups: B and C redeem A's invites; B hears of C from A;
    # B and C meet once (their keys are exchanged).
    await join_at_meetup(b, a, group)
    await join_at_meetup(c, a, group)
    async with meet(a, b) as meeting:
        await meeting.established()
        await until(lambda: b.messenger.groups.info(group)["epoch"]
                    == a.messenger.groups.info(group)["epoch"], what="B hears of C")
    async with meet(b, c) as meeting:
        await meeting.established()
        await until(lambda: holds_key(b, group, c) and holds_key(c, group, b),
                    what="B and C swap sender keys")
        b.messenger.send_text(group, "see you, C")
        c.messenger.send_text(group, "see you, B")
        await until(lambda: "see you, C" in texts(c, group), what="C reads B")
        await until(lambda: "see you, B" in texts(b, group), what="B reads C")
    await c.stop()

    # Apart: A writes, with a 5 MiB photo; B writes too.
    a.messenger.send_text(group, "a1: at the summit")
    a.messenger.send_text(group, "a2: coming down")
    photo = os.urandom(5 * MiB)
    upload = tmp_path / "summit.jpg"
    upload.write_bytes(photo)
    ref = await a.attachments.stage(group, upload, "summit.jpg", len(photo))
    a.messenger.send_text(group, "a3: the view", ref)
    b.messenger.send_text(group, "b1: at the hut")
    carried = ["a1: at the summit", "a2: coming down", "a3: the view"]

    # A and B meet, and move apart halfway through the photo.
    relay = Relay(cut_after=2 * MiB)
    async with meet(a, b, relay) as meeting:
        await meeting.established()
        await asyncio.wait_for(relay.cut.wait(), 20)
    for text in carried:
        assert text in texts(b, group)
    await asyncio.sleep(1.0)  # apart for a while (B's scheduler notices A is gone)
    partial = b.attachments.info(ref.file_id)
    assert partial["state"] == "downloading"
    assert 0 < partial["bytes_done"] < len(photo)

    # They meet again: the photo resumes where it stopped; B's message reaches A.
    async with meet(b, a) as meeting:
        await meeting.established()
        done = await until(lambda: b.attachments.info(ref.file_id)["state"] == "complete"
                           and b.attachments.info(ref.file_id), what="B has the photo")
        await until(lambda: "b1: at the hut" in texts(a, group), what="A reads B")
        await until(lambda: all(status(a, group, t).get(b.user_id) == "delivered"
                                for t in carried), what="B's receipts reach A")
    assert done["transfer"]["fetched_chunks"] == done["transfer"]["chunks"]  # none twice
    assert done["transfer"]["sources"] == {a.user_id: done["transfer"]["chunks"]}
    assert hashlib.sha256(await plain_file(b, ref.file_id)).digest() == \
        hashlib.sha256(photo).digest()
    # B stored it: "sent" for C, whom nobody has reached yet (an ack is written with
    # the next transaction or within groups.messenger.ACK_WRITE_DELAY).
    await until(lambda: all(status(a, group, t)[c.user_id] == "sent" for t in carried),
                what="B's acks are written at A")

    # C comes online and meets B over WebSocket: A's messages and photo reach C.
    c = await nodes("c", mesh_port=0)
    await until(lambda: all(t in texts(c, group) for t in [*carried, "b1: at the hut"]),
                what="C reads what B carried")
    assert c.runtime.links()[b.user_id].endpoint is not None  # a dialled WebSocket
    await until(lambda: c.attachments.info(ref.file_id)["state"] == "complete",
                what="C has the photo")
    assert hashlib.sha256(await plain_file(c, ref.file_id)).digest() == \
        hashlib.sha256(photo).digest()
    c.messenger.send_text(group, "c1: got it all")
    await until(lambda: status(b, group, "b1: at the hut").get(c.user_id) == "delivered",
                what="C's receipts reach B")
    await until(lambda: "c1: got it all" in texts(b, group), what="B has C's message")

    # A and B meet again: C's receipts and message reach A.
    async with meet(a, b) as meeting:
        await meeting.established()
        await until(lambda: all(status(a, group, t)[c.user_id] == "delivered"
                                for t in carried), what="A sees C's receipts")
        await until(lambda: "c1: got it all" in texts(a, group), what="A reads C")

    # A never had a WebSocket link: it listens nowhere, and every dial it tried failed.
    assert a.runtime.server is None and a.record is not None and a.record.endpoints == ()
    assert all(attempt.outcome != "ok" for attempt in a.runtime.manager.attempts)
    shown = a.meetups.status()
    assert group.hex() in shown["groups"]
    assert b.user_id in {peer["id"] for peer in shown["nearby"]}
