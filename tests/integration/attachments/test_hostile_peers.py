"""Peers that misbehave in the chunk exchange: a member that sends wrong chunks, and a
stranger that asks for chunks and sends junk. Each is met with a clear refusal or is
ignored; nothing of it is stored, and the node keeps serving."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time

from groups.transfer import cipher_length
from mesh import wire
from mesh.websocket import dial
from tests.conftest import ROOT, Proc
from tests.integration.attachments.conftest import (
    Cluster,
    MiB,
    NodeProc,
    download,
    eventually,
    group_of,
    info,
    sha256,
    upload,
    wait_complete,
)
from tests.integration.messenger import conftest as messenger_conftest
from tests.unit.mesh.test_link_helpers import make_node


def _start_liar(*args: str) -> Proc:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    popen = subprocess.Popen([sys.executable, "-m", "tests.integration.attachments.liar",
                              *args], cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env)
    return Proc(popen)


class LiarProc(NodeProc):
    """A NodeProc running tests/integration/attachments/liar.py instead of run.py."""

    def start(self, **kwargs):  # type: ignore[override]
        saved = messenger_conftest.start_run_py
        messenger_conftest.start_run_py = _start_liar
        try:
            return super().start(**kwargs)
        finally:
            messenger_conftest.start_run_py = saved


def test_a_lying_member_is_avoided_and_the_chunk_fetched_elsewhere(cluster: Cluster) -> None:
    (alice, bob), group = group_of(cluster, ["alice", "bob"])
    liar = cluster.nodes["liar"] = LiarProc("liar", cluster.base / "liar",
                                            cluster.bootstrap_url).start()
    assert liar.join(alice.invite(group)) == group
    everyone = {alice.user_id, bob.user_id, liar.user_id}
    eventually(lambda: bob.members(group) == everyone)
    eventually(lambda: liar.members(group) == everyone)
    time.sleep(1.0)  # links settle: bob must be linked to the liar when the file comes

    data = os.urandom(4 * MiB)
    status, reply = upload(alice, f"/api/v1/groups/{group}/messages", data, "report.bin")
    assert status == 201, reply
    file_id = reply["attachment"]["id"]
    transfer = wait_complete(bob, file_id)["transfer"]
    assert transfer["bad_chunks"] == {liar.user_id: 1}, transfer
    assert transfer["avoided"] == [liar.user_id]
    assert liar.user_id not in transfer["sources"]
    assert sum(transfer["sources"].values()) == 16
    status, _, body = download(bob, file_id)
    assert status == 200 and sha256(body) == sha256(data)
    assert bob.ok("GET", "/api/v1/transfers")["bad_chunks"] == 1
    # The liar's own download is honest and completes too.
    wait_complete(liar, file_id)


async def test_strangers_get_nothing_and_junk_frames_are_ignored(cluster: Cluster) -> None:
    (alice, bob), group = group_of(cluster, ["alice", "bob"])
    status, reply = upload(alice, f"/api/v1/groups/{group}/messages", os.urandom(MiB), "x.bin")
    assert status == 201, reply
    file_id = bytes.fromhex(reply["attachment"]["id"])
    wait_complete(bob, file_id.hex())
    before = alice.ok("GET", "/api/v1/transfers")

    stranger = make_node(now=time.time())
    frames: list[wire.Frame] = []
    arrived = asyncio.Event()

    def on_frame(_conn: object, frame: wire.Frame) -> None:
        if isinstance(frame, wire.Chunk | wire.ChunkUnavailable):
            frames.append(frame)
            arrived.set()

    conn = await dial(f"ws://127.0.0.1:{alice.mesh_port}/mesh", stranger.identity,
                      stranger.record, on_frame=on_frame)
    try:
        unknown = os.urandom(32)
        # A real file of a group the stranger is not in (index 0 twice: answered
        # once), indexes out of range, and a file that does not exist.
        conn.send(wire.ChunkRequest(file_id, (0, 4, 0, 2**40)))
        conn.send(wire.ChunkRequest(unknown, (0,)))
        asked = [(file_id, 0), (file_id, 4), (file_id, 2**40), (unknown, 0)]
        # Chunks nobody asked for: an unknown file, an index out of range, a real index.
        conn.send(wire.Chunk(unknown, 0, os.urandom(100)))
        conn.send(wire.Chunk(file_id, 99_999, b"x"))
        conn.send(wire.Chunk(file_id, 1, os.urandom(cipher_length(MiB, 1))))
        conn.send(wire.ChunkUnavailable(file_id, 3))
        async with asyncio.timeout(10):
            while len(frames) < len(asked):
                arrived.clear()
                await arrived.wait()
        # The same answer whether the file exists or not: no oracle for outsiders.
        assert frames == [wire.ChunkUnavailable(fid, index) for fid, index in asked]
        after = alice.ok("GET", "/api/v1/transfers")
        assert after["served"] == before["served"]
        assert after["refused"] - before["refused"] == 4
        assert after["unsolicited"] - before["unsolicited"] == 4
        assert not conn.closed  # junk is ignored, not fatal
    finally:
        conn.close()
        await conn.wait_closed()
    assert info(alice, file_id.hex())["served"] == {bob.user_id: 4}
    assert alice.ok("GET", "/api/v1/me")["id"] == alice.user_id
