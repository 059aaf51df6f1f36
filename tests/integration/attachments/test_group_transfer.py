"""25 MiB to a group of four real node processes: everyone gets the same bytes, from
more than one peer, in bounded memory."""

from __future__ import annotations

import os
import time

from tests.integration.attachments.conftest import (
    Cluster,
    MiB,
    download,
    group_of,
    info,
    peak_rss,
    rss,
    sha256,
    upload,
    wait_complete,
)


def test_25_mib_reaches_a_group_of_four_from_several_peers(cluster: Cluster) -> None:
    (alice, *receivers), group = group_of(cluster, ["alice", "bob", "carol", "dave"])
    data = os.urandom(25 * MiB)
    idle = {n.name: rss(n) for n in receivers}
    started = time.monotonic()
    status, reply = upload(alice, f"/api/v1/groups/{group}/messages", data, "holiday.bin",
                           caption="the whole trip")
    assert status == 201, reply
    file_id = reply["attachment"]["id"]
    assert reply["attachment"]["state"] == "complete"
    assert reply["attachment"]["bytes_done"] == reply["attachment"]["size"] == len(data)
    stats = {n.name: wait_complete(n, file_id) for n in receivers}
    print(f"25 MiB to 3 receivers in {time.monotonic() - started:.2f} s (upload included)")

    # Memory: a receiver never holds the file (measured before anyone reads it back).
    peaks = {n.name: (peak_rss(n) - idle[n.name]) / MiB for n in receivers}
    print("peak memory over idle while receiving (MiB):", peaks)
    assert all(p < 12.5 for p in peaks.values()), peaks

    for node in receivers:
        status, headers, body = download(node, file_id)
        assert status == 200 and sha256(body) == sha256(data), node.name
        assert headers["Content-Type"] == "application/octet-stream"
        assert headers["Content-Disposition"].startswith('attachment; filename="holiday.bin"')
        message = next(m for m in node.messages(group) if m["attachment"])
        assert message["text"] == "the whole trip" and message["sender"] == alice.user_id
        assert message["attachment"] == {"id": file_id, "name": "holiday.bin",
                                         "mime": "application/octet-stream",
                                         "size": len(data), "state": "complete",
                                         "bytes_done": len(data)}

    sources = {name: s["transfer"]["sources"] for name, s in stats.items()}
    print("chunks per source:", sources)
    for s in stats.values():
        assert sum(s["transfer"]["sources"].values()) == s["transfer"]["chunks"] == 100
        assert s["transfer"]["resumed_chunks"] == 0 and not s["transfer"]["bad_chunks"]
    # Receivers also served each other: someone pulled from a peer that is not alice.
    assert any(set(src) - {alice.user_id} for src in sources.values()), sources
    served = info(alice, file_id)["served"]
    assert sum(served.values()) < 300, "alice sent fewer than three whole copies"
