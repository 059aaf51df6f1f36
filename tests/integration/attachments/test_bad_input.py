"""Bad uploads and downloads through the node API: each gets a clear error, stores
nothing (no chunk, no row, no temporary file, no message), and the node keeps serving."""

from __future__ import annotations

import http.client
import socket
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from tests.integration.attachments.conftest import (
    Cluster,
    MiB,
    NodeProc,
    download,
    eventually,
    group_of,
    multipart,
    upload,
    wait_complete,
)


def stored(node: NodeProc) -> tuple[int, list[str], list[str]]:
    """(attachment rows, chunk directories, leftover uploads) of a node."""
    conn = sqlite3.connect(node.data_dir / "node.db")
    try:
        rows = conn.execute("SELECT COUNT(*) FROM attachments").fetchone()[0]
    finally:
        conn.close()
    files = Path(node.data_dir) / "files"
    return (rows, sorted(p.name for p in files.iterdir() if p.name != "uploads"),
            sorted(p.name for p in (files / "uploads").iterdir()))


def refused(node: NodeProc, status: int, error: str, reply: tuple[int, dict]) -> None:
    assert reply[0] == status and reply[1]["error"] == error and reply[1]["message"], reply


@pytest.fixture
def pair(cluster: Cluster) -> tuple[NodeProc, NodeProc, str]:
    (alice, bob), group = group_of(cluster, ["alice", "bob"])
    return alice, bob, group


def test_refused_uploads_store_nothing(pair) -> None:
    alice, _bob, group = pair
    path = f"/api/v1/groups/{group}/messages"
    before = stored(alice), len(alice.messages(group))

    # 25 MiB + 1 byte: counted as it streams in (Content-Length leaves room for headers).
    refused(alice, 413, "file_too_large", upload(alice, path, bytes(25 * MiB + 1)))
    refused(alice, 400, "empty_file", upload(alice, path, b""))
    for name in ("../../etc/passwd", "a/b.txt", "a\\b.txt", "bell\x07.txt", "nul\x00.txt",
                 "tab\there.txt", "", " . "):
        refused(alice, 400, "bad_file_name", upload(alice, path, b"data", name))
    # A truncated body (no closing boundary), a part without a name, two files, junk.
    body, ctype = multipart({"file": ("a.txt", b"hello")})
    for raw in (body[:-30], body.replace(b'name="file"; ', b""),
                body.replace(b"--\r\n", b"\r\n") + body.split(b"\r\n", 1)[1],
                b"not multipart at all"):
        refused(alice, 400, "bad_multipart",
                alice.call("POST", path, raw=raw, headers={"Content-Type": ctype}))
    refused(alice, 400, "bad_multipart", alice.call(
        "POST", path, raw=body, headers={"Content-Type": "multipart/form-data"}))
    caption_only, ctype = multipart({"text": (None, b"caption only")})
    refused(alice, 400, "bad_request", alice.call("POST", path, raw=caption_only,
                                                  headers={"Content-Type": ctype}))
    # A group we are not in (unknown id here) and a chat with an unknown user.
    refused(alice, 404, "not_found", upload(alice, "/api/v1/groups/" + "ab" * 16 +
                                            "/messages", b"data"))
    assert stored(alice) == before[0] and len(alice.messages(group)) == before[1]
    assert alice.ok("GET", "/api/v1/me")["id"] == alice.user_id


def test_oversized_declared_body_is_refused_before_it_is_sent(pair) -> None:
    alice, _bob, group = pair
    url = urlsplit(alice.url)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
    try:
        conn.putrequest("POST", f"/api/v1/groups/{group}/messages")
        conn.putheader("Authorization", f"Bearer {alice.token}")
        conn.putheader("Content-Type", "multipart/form-data; boundary=x")
        conn.putheader("Content-Length", str(26_214_400 + 65 * 1024 + 1))
        conn.endheaders()           # not one byte of the body
        response = conn.getresponse()
        assert response.status == 413 and b"file_too_large" in response.read()
    finally:
        conn.close()


def test_client_gone_mid_upload_leaves_nothing(pair) -> None:
    alice, _bob, group = pair
    before = stored(alice)
    body, ctype = multipart({"file": ("half.bin", bytes(3 * MiB))})
    url = urlsplit(alice.url)
    with socket.create_connection((url.hostname, url.port)) as sock:
        sock.sendall((f"POST /api/v1/groups/{group}/messages HTTP/1.1\r\n"
                      f"Host: 127.0.0.1:{url.port}\r\nAuthorization: Bearer {alice.token}\r\n"
                      f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
                     + body[:len(body) // 2])
        # The half-written temporary file exists while the request is open ...
        eventually(lambda: stored(alice)[2], message="the upload is being received")
    # ... and goes when the client does.
    eventually(lambda: stored(alice) == before, message="the half upload is removed")
    assert alice.ok("GET", "/api/v1/me")["registered"]


def test_attachments_of_others_conversations_are_not_found(pair, cluster: Cluster) -> None:
    alice, bob, group = pair
    status, reply = upload(alice, f"/api/v1/groups/{group}/messages", b"%PDF-1.7\n" + bytes(999),
                           "minutes.pdf")
    assert status == 201 and reply["attachment"]["mime"] == "application/pdf", reply
    file_id = reply["attachment"]["id"]
    wait_complete(bob, file_id)
    status, headers, _ = download(bob, file_id)
    assert status == 200 and headers["Content-Type"] == "application/pdf"
    assert headers["Content-Disposition"].startswith("attachment;")  # never shown inline

    mallory = cluster.add("mallory")
    for node in (mallory, bob):
        if node is bob:  # bob is removed: the group's files are no longer his to open
            alice.ok("DELETE", f"/api/v1/groups/{group}/members/{bob.user_id}")
            eventually(lambda: bob.call("GET", f"/api/v1/groups/{group}")[0] == 404,
                       message="bob learns he was removed")
        for path in (f"/api/v1/attachments/{file_id}", f"/api/v1/attachments/{file_id}/info"):
            status, reply = node.call("GET", path)
            assert (status, reply["error"]) == (404, "not_found"), (node.name, path, reply)
        refused(node, 404, "not_found",
                upload(node, f"/api/v1/groups/{group}/messages", b"data"))
    for bad in ("xyz", "ab" * 31, "AB" * 32):
        status, reply = alice.call("GET", f"/api/v1/attachments/{bad}")
        assert (status, reply["error"]) == (400, "bad_attachment_id"), bad
