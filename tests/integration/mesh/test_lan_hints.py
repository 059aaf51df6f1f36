"""ConnectionManager hints (LAN announcements): tried first, and they end a backoff."""

from __future__ import annotations

import socket

from tests.integration.mesh.conftest import wait_for

TOPIC = b"h" * 16


def _dead_url() -> str:
    with socket.socket() as s:   # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        return f"ws://127.0.0.1:{s.getsockname()[1]}/mesh"


async def test_a_hint_reaches_a_peer_whose_record_is_stale_at_once(managed):
    a = managed(backoff_base=60.0, backoff_cap=60.0, dial_options={"connect_timeout": 1.0})
    b = managed()
    a.manager.set_topic(TOPIC, {b.user_id: [_dead_url()]})
    await wait_for(lambda: any(x.outcome == "unreachable" for x in a.manager.attempts))
    assert a.manager.link_for(b.user_id) is None      # and a minute of backoff ahead
    a.manager.set_hints(b.user_id, [b.url])
    await wait_for(lambda: any(x.outcome == "ok" for x in a.manager.attempts), within=5)
    assert [x.url for x in a.manager.attempts if x.outcome == "ok"] == [b.url]
    assert a.manager.link_for(b.user_id) is not None


async def test_a_hint_alone_makes_a_member_without_endpoints_dialable(managed):
    a, b = managed(), managed()
    a.manager.set_topic(TOPIC, {b.user_id: []})
    a.manager.set_hints(a.user_id, [b.url])            # a hint about ourselves: ignored
    a.manager.set_hints(b.user_id, [b.url])
    await wait_for(lambda: a.manager.link_for(b.user_id) is not None, within=5)
