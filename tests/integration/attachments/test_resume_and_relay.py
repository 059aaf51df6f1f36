"""Durability and availability: a receiver killed mid-transfer resumes with what it had;
a file outlives its sender going offline; 1:1 chats carry files; ranges for videos."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import time

from tornado.httpclient import HTTPRequest
from tornado.websocket import WebSocketClientConnection, websocket_connect

from tests.integration.attachments.conftest import (
    Cluster,
    MiB,
    download,
    eventually,
    group_of,
    info,
    sha256,
    upload,
    wait_complete,
)


def _pid(node) -> int:
    assert node.proc is not None
    return node.proc.popen.pid


def test_killed_receiver_resumes_without_refetching(cluster: Cluster) -> None:
    (alice, bob), group = group_of(cluster, ["alice", "bob"])
    data = os.urandom(25 * MiB)
    status, reply = upload(alice, f"/api/v1/groups/{group}/messages", data, "big.bin")
    assert status == 201, reply
    file_id = reply["attachment"]["id"]

    def started() -> bool:
        status, reply = bob.call("GET", f"/api/v1/attachments/{file_id}/info")
        return status == 200 and reply["bytes_done"] > 0
    eventually(started, interval=0.005, message="bob has a first chunk")
    os.kill(_pid(alice), signal.SIGSTOP)   # freeze the only source: bob stops mid-way
    try:
        time.sleep(0.5)                    # chunks already on the wire land
        before = info(bob, file_id)
        held = before["transfer"]["held"]
        assert before["state"] == "downloading" and 0 < held < 100, before
        bob.kill9()
    finally:
        os.kill(_pid(alice), signal.SIGCONT)
    bob.start()
    after = wait_complete(bob, file_id)["transfer"]
    assert after["resumed_chunks"] >= held, (held, after)
    assert after["fetched_chunks"] == 100 - after["resumed_chunks"], after
    status, _, body = download(bob, file_id)
    assert status == 200 and sha256(body) == sha256(data)

    # Stopped between its last chunk and the database saying "complete": on restart
    # every chunk verifies, nothing is fetched, and the file completes.
    bob.stop()
    with sqlite3.connect(bob.data_dir / "node.db") as conn:
        conn.execute("UPDATE attachments SET state = 'downloading', bytes_done = 0")
    conn.close()
    bob.start()
    again = wait_complete(bob, file_id)["transfer"]
    assert (again["resumed_chunks"], again["fetched_chunks"]) == (100, 0), again


def test_others_complete_from_a_receiver_when_the_sender_is_gone(cluster: Cluster) -> None:
    (alice, bob, carol), group = group_of(cluster, ["alice", "bob", "carol"])
    carol.stop()
    data = os.urandom(10 * MiB + 12345)
    status, reply = upload(alice, f"/api/v1/groups/{group}/messages", data, "notes.txt.gz")
    assert status == 201, reply
    file_id = reply["attachment"]["id"]
    wait_complete(bob, file_id)
    alice.stop()
    carol.start()
    done = wait_complete(carol, file_id)
    assert done["transfer"]["sources"] == {bob.user_id: 41}, done["transfer"]
    assert done["name"] == "notes.txt.gz" and done["sender"] == alice.user_id
    status, _, body = download(carol, file_id)
    assert status == 200 and sha256(body) == sha256(data)
    assert info(bob, file_id)["served"] == {carol.user_id: 41}


async def events_of(node) -> WebSocketClientConnection:
    ws = await websocket_connect(HTTPRequest(
        node.url.replace("http", "ws") + "/api/v1/events",
        headers={"Authorization": f"Bearer {node.token}"}))
    assert json.loads(await ws.read_message())["type"] == "ready"
    return ws


async def collect(ws: WebSocketClientConnection, until) -> list[dict]:
    events: list[dict] = []
    async with asyncio.timeout(30):
        while not events or not until(events[-1]):
            events.append(json.loads(await ws.read_message()))
    ws.close()
    return events


async def test_video_in_a_chat_with_events_and_range_requests(cluster: Cluster) -> None:
    alice, bob = cluster.add("alice"), cluster.add("bob")
    alice.ok("POST", "/api/v1/contacts", {"id": bob.user_id})
    sender_events, receiver_events = await events_of(alice), await events_of(bob)
    video = b"\x00\x00\x00\x18ftypmp42\x00\x00\x00\x00mp42isom" + os.urandom(3 * MiB)
    status, reply = upload(alice, f"/api/v1/chats/{bob.user_id}/messages", video,
                           "Ferien 2026 – Strand.mp4", caption="look")
    assert status == 201, reply
    file_id = reply["attachment"]["id"]
    assert reply["attachment"]["mime"] == "video/mp4"

    def complete(event: dict) -> bool:
        return event["type"] == "attachment" and event["data"]["state"] == "complete"
    got = await collect(receiver_events, complete)
    message = next(e["data"] for e in got if e["type"] == "message")
    assert message["attachment"]["id"] == file_id and message["text"] == "look"
    progress = [e["data"] for e in got if e["type"] == "attachment"]
    assert progress[0]["state"] == "downloading" and progress[-1]["state"] == "complete"
    assert progress[-1]["bytes_done"] == progress[-1]["size"] == len(video)
    assert [p["bytes_done"] for p in progress] == sorted(p["bytes_done"] for p in progress)
    assert {p["message_id"] for p in progress} == {message["message_id"]}
    sent = await collect(sender_events, lambda e: e["type"] == "message")
    uploading = [e["data"] for e in sent if e["type"] == "attachment"]
    assert uploading and all(u["state"] == "uploading" and u["message_id"] is None
                             for u in uploading)
    assert uploading[-1]["bytes_done"] == len(video)
    done = wait_complete(bob, file_id)
    assert done["mime"] == "video/mp4" and done["name"] == "Ferien 2026 – Strand.mp4"
    chat = bob.ok("GET", f"/api/v1/chats/{alice.user_id}/messages")["messages"]
    assert [m["attachment"]["id"] for m in chat if m["attachment"]] == [file_id]

    status, headers, body = download(bob, file_id)
    assert status == 200 and body == video
    assert headers["Content-Type"] == "video/mp4" and headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Disposition"] == (
        "inline; filename=\"Ferien 2026 _ Strand.mp4\"; "
        "filename*=UTF-8''Ferien%202026%20%E2%80%93%20Strand.mp4")
    assert "sandbox" in headers["Content-Security-Policy"]
    size = len(video)
    for spec, start, end in (("bytes=0-99", 0, 100),
                             ("bytes=262100-262200", 262100, 262201),   # across chunks
                             ("bytes=524288-", 524288, size),
                             ("bytes=1048570-1310730", 1048570, 1310731),  # 3 chunks
                             ("bytes=-1000", size - 1000, size),
                             (f"bytes=600000-{size + 5000}", 600000, size)):
        status, headers, body = download(bob, file_id, {"Range": spec})
        assert status == 206, spec
        assert body == video[start:end], spec
        assert headers["Content-Range"] == f"bytes {start}-{end - 1}/{size}", spec
        assert headers["Content-Length"] == str(end - start)
    status, headers, _ = download(bob, file_id, {"Range": f"bytes={size}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
    status, _, body = download(bob, file_id, {"Range": "bytes=0-1,5-6"})  # several: whole
    assert status == 200 and body == video
    # Malformed ranges (issue 15 finding 6) are clear answers, not a 500: non-ASCII
    # digits are no range (the whole file), an over-long number is just large.
    status, _, body = download(bob, file_id, {"Range": "bytes=\u00b2-\u00b3"})
    assert status == 200 and body == video
    status, headers, _ = download(bob, file_id, {"Range": "bytes=" + "9" * 5000 + "-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{size}"
    status, _, body = download(bob, file_id, {"Range": "bytes=0-" + "9" * 5000})
    assert status == 206 and body == video
