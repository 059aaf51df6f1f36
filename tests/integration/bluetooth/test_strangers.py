"""Who gets what over a Bluetooth meetup: strangers nothing beyond the handshake, an
invitee only while an invite is open, and attachments only up to the size limit."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from groups import history
from groups.meetups import ADMIT_GRACE
from groups.messages import direct_topic
from tests.integration.bluetooth.conftest import Relay, meet, texts, until


async def test_a_stranger_learns_nothing_beyond_the_handshake(nodes) -> None:
    a = await nodes("a")
    stranger = await nodes("s")
    group = a.messenger.groups.create("private")
    a.messenger.send_text(group, "the plans")
    # The stranger welcomes anyone (it holds an open invite of its own), so only A's
    # rules decide what happens.
    own = stranger.messenger.groups.create("stranger's")
    stranger.messenger.groups.invite(own)

    relay = Relay()
    async with meet(stranger, a, relay) as meeting:       # the stranger connects
        assert meeting.cx is not None and meeting.cy is not None
        await asyncio.wait_for(meeting.cy.wait_closed(), 10)
        await asyncio.wait_for(meeting.cx.wait_closed(), 10)
        await until(lambda: len(relay.records["y>x"]) == 3, what="A's last record")
        await asyncio.sleep(0.3)                           # anything after it would show
    assert meeting.cy.close_event is not None and meeting.cy.close_event.reason == "stranger"
    assert meeting.cx.close_event is not None
    assert (meeting.cx.close_event.reason, meeting.cx.close_event.by_peer) == ("stranger", True)
    # A said Hello, showed its record (Auth), and closed: three records, nothing else.
    assert len(relay.records["y>x"]) == 3
    assert a.meetups.refused == 1
    # Nothing of A's groups reached the stranger, and A kept nothing of the stranger.
    assert history.conversation(stranger.conn, group) is None
    assert stranger.conn.execute("SELECT COUNT(*) FROM mesh_messages WHERE origin = ?",
                                 (a.user_id,)).fetchone()[0] == 0
    assert a.directory.record(stranger.user_id) is None
    assert history.conversation(a.conn, direct_topic(a.user_id, stranger.user_id)) is None
    assert stranger.user_id not in a.runtime.links()
    nearby = a.meetups.status()["nearby"]
    assert [(p["id"], p["member"], p["linked"]) for p in nearby] == \
        [(stranger.user_id, False, False)]


async def test_an_invitee_is_welcome_only_while_the_invite_is_open(nodes) -> None:
    a = await nodes("a")
    newcomer = await nodes("n")
    group = a.messenger.groups.create("club")
    a.messenger.groups.invite(group, ttl=2)   # someone may come to redeem it
    theirs = newcomer.messenger.groups.create("newcomer's")
    newcomer.messenger.groups.invite(theirs)  # so that only A's rules decide

    async with meet(newcomer, a) as meeting:
        await meeting.established()           # admitted: A expects its invitee
        assert meeting.cy is not None and not meeting.cy.closed
        a.meetups.recheck(time.time())
        assert not meeting.cy.closed
        # The newcomer never redeems it; once it expired, the link ends after the grace.
        a.meetups.recheck(time.time() + 3)
        assert not meeting.cy.closed
        a.meetups.recheck(time.time() + 3 + ADMIT_GRACE)
        await asyncio.wait_for(meeting.cy.wait_closed(), 10)
        assert meeting.cy.close_reason == "stranger"
    assert history.conversation(newcomer.conn, group) is None


async def test_attachments_over_bluetooth_can_be_limited(nodes, tmp_path: Path) -> None:
    a = await nodes("a")
    b = await nodes("b", bluetooth_attachments=1024 * 1024)   # files up to 1 MiB
    group = a.messenger.groups.create("photos")
    invite = a.messenger.groups.invite(group)
    join = asyncio.create_task(b.messenger.groups.join(invite, wait=20))
    small, big = os.urandom(300_000), os.urandom(1_500_000)
    async with meet(b, a) as meeting:
        await meeting.established()
        assert await join == (group, True)
        refs = {}
        for name, data in (("small.bin", small), ("big.bin", big)):
            path = tmp_path / name
            path.write_bytes(data)
            refs[name] = await a.attachments.stage(group, path, name, len(data))
            a.messenger.send_text(group, name, refs[name])
        await until(lambda: {"small.bin", "big.bin"} <= set(texts(b, group)),
                    what="B has both messages")
        await until(lambda: b.attachments.info(refs["small.bin"].file_id)["state"]
                    == "complete", what="the small file came over Bluetooth")
        await asyncio.sleep(1.0)
        big_info = b.attachments.info(refs["big.bin"].file_id)
        assert big_info["state"] == "downloading" and big_info["bytes_done"] == 0
        assert b.attachments.stats()["requested"] == b.attachments.stats()["stored"]
    shown = b.meetups.status()
    assert shown["attachments"] == 1024 * 1024
    assert a.meetups.status()["attachments"] == "all"
