"""Prekeys published through a real bootstrap server (127.0.0.1, port 0), sessions built
from the bundles it hands out: one-time prekeys first, the last-resort prekey after."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from bootstrap.store import count_prekeys
from groups import prekeys
from groups.node import Node, NodeConfig
from mesh.discovery import DiscoveryClient
from mesh.identity import LAST_RESORT_PREKEY_ID
from tests.unit.groups.helpers import User, make_user


async def registered(url: str) -> tuple[User, DiscoveryClient]:
    """A user known to the server (claims are signed by registered users only)."""
    user = make_user(now=time.time())
    client = DiscoveryClient(url, user.identity)
    update = prekeys.initial_prekeys(user.crypto, time.time())
    await client.register(prekeys.build_record(user.identity, update, endpoints=(), seq=1,
                                               now=time.time()), ())
    return user, client


async def test_publish_claim_refill_and_start_sessions(bootstrap_server) -> None:
    now = time.time()
    bob = make_user(now=now)
    bob_client = DiscoveryClient(bootstrap_server.url, bob.identity)
    update = prekeys.initial_prekeys(bob.crypto, now)
    record = prekeys.build_record(bob.identity, update, endpoints=(), seq=1, now=now)
    left = await bob_client.register(record, update.one_time_prekeys)
    assert left == prekeys.ONE_TIME_PREKEY_BATCH
    assert not prekeys.needs_refill(left)

    # 85 session starts with bob (each a fresh session replacing the last): the server
    # hands out one-time prekeys.
    alice, alice_client = await registered(bootstrap_server.url)
    claimed = []
    for _ in range(85):
        bundle = await alice_client.claim_bundle(bob.id)
        alice.crypto.start_session(bundle.record, bundle.prekey, now=now)
        first = alice.crypto.encrypt(bob.id, b"hi bob")
        assert bob.crypto.decrypt(alice.id, first, now=now) == b"hi bob"
        claimed.append(bundle.prekey.id)
    assert LAST_RESORT_PREKEY_ID not in claimed and len(set(claimed)) == 85
    assert bob.crypto.one_time_prekeys_left() == 15  # used ones are deleted locally too

    left = await bob_client.update()
    assert left == 15 and prekeys.needs_refill(left)
    refill = prekeys.maintain_prekeys(bob.crypto, now, server_left=left)
    assert not refill.record_changed
    assert await bob_client.update(one_time_prekeys=refill.one_time_prekeys) == 100

    # Drain the rest: then sessions start from the last-resort prekey in the record.
    for _ in range(100):
        assert (await alice_client.claim_bundle(bob.id)).prekey.id != LAST_RESORT_PREKEY_ID
    late, late_client = await registered(bootstrap_server.url)
    bundle = await late_client.claim_bundle(bob.id)
    assert bundle.prekey.id == LAST_RESORT_PREKEY_ID == bundle.record.last_resort_prekey.id
    late.crypto.start_session(bundle.record, bundle.prekey, now=now)
    assert bob.crypto.decrypt(late.id, late.crypto.encrypt(bob.id, b"x"), now=now) == b"x"

    # A weekly rotation publishes a new record; new sessions use the new signed prekey.
    rotated = prekeys.maintain_prekeys(bob.crypto, now + 7 * 86400, server_left=0)
    assert rotated.record_changed and len(rotated.one_time_prekeys) == 100
    newer = prekeys.build_record(bob.identity, rotated, endpoints=(), seq=2, now=now)
    assert await bob_client.update(newer, rotated.one_time_prekeys) == 100
    last, last_client = await registered(bootstrap_server.url)
    bundle = await last_client.claim_bundle(bob.id)
    assert bundle.record.signed_prekey == rotated.signed_prekey
    last.crypto.start_session(bundle.record, bundle.prekey, now=now)
    assert bob.crypto.decrypt(last.id, last.crypto.encrypt(bob.id, b"new"), now=now) == b"new"


async def test_a_node_refills_as_soon_as_a_reply_says_it_runs_low(bootstrap_server,
                                                                   tmp_path) -> None:
    """Drained below 40 between its 15-minute checks, a node refills the moment any
    signed reply tells it the count (here: the reply to its own bundle claim)."""
    config = NodeConfig(data_dir=tmp_path / "n", bootstrap=bootstrap_server.url,
                        dht_port=None, mesh_port=0)
    node = await Node.start(config, events=_NoEvents())
    try:
        conn = bootstrap_server.ctx.conn
        await until_held(conn, node.user_id, prekeys.ONE_TIME_PREKEY_BATCH)
        drainer, drainer_client = await registered(bootstrap_server.url)
        for _ in range(70):  # the fixture's claim budgets are generous
            await drainer_client.claim_bundle(node.user_id)
        assert count_prekeys(conn, node.user_id) == 30
        assert node.client is not None
        await node.client.claim_bundle(drainer.id)  # its reply carries "30 left"
        await until_held(conn, node.user_id, prekeys.ONE_TIME_PREKEY_BATCH)
    finally:
        await node.stop()


async def until_held(conn: Any, user_id: str, count: int) -> None:
    deadline = time.monotonic() + 20
    while count_prekeys(conn, user_id) < count:
        assert time.monotonic() < deadline, f"the server did not get {count} prekeys in 20 s"
        await asyncio.sleep(0.05)


class _NoEvents:
    def publish(self, event_type: str, data: dict[str, Any]) -> None:
        """This test watches the bootstrap's database, not the UI's events."""
