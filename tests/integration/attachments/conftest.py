"""Attachments between real node processes, driven through the node API only.

Reuses the messenger's NodeProc / Cluster (a bootstrap process and ``python run.py node``
processes) and adds what files need: multipart uploads, downloads with ranges, the
transfer statistics of ``/attachments/{id}/info`` and peak memory from /proc."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import urllib.error
import urllib.request
from typing import Any

import pytest

from tests.integration.messenger.conftest import Cluster, NodeProc, cluster, eventually

__all__ = ["Cluster", "NodeProc", "cluster", "download", "eventually", "group_of", "info",
           "multipart", "peak_rss", "rss", "sha256", "upload", "wait_complete"]

MiB = 1024 * 1024
_ = cluster  # the fixture, re-exported for the tests of this directory


def multipart(fields: dict[str, tuple[str | None, bytes]], boundary: str | None = None
              ) -> tuple[bytes, str]:
    """A multipart/form-data body: name -> (filename or None, content)."""
    boundary = boundary or "----parley" + secrets.token_hex(12)
    out = bytearray()
    for name, (filename, content) in fields.items():
        out += f"--{boundary}\r\n".encode()
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += f"Content-Disposition: {disposition}\r\n".encode()
        if filename is not None:
            out += b"Content-Type: application/octet-stream\r\n"
        out += b"\r\n" + content + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


def upload(node: NodeProc, path: str, data: bytes, name: str = "file.bin",
           caption: str | None = None) -> tuple[int, Any]:
    fields: dict[str, tuple[str | None, bytes]] = {"file": (name, data)}
    if caption is not None:
        fields["text"] = (None, caption.encode())
    body, content_type = multipart(fields)
    return node.call("POST", path, raw=body, headers={"Content-Type": content_type})


def info(node: NodeProc, attachment_id: str) -> dict[str, Any]:
    return node.ok("GET", f"/api/v1/attachments/{attachment_id}/info")


def wait_complete(node: NodeProc, attachment_id: str, timeout: float = 60.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        status, reply = node.call("GET", f"/api/v1/attachments/{attachment_id}/info")
        return reply if status == 200 and reply["state"] == "complete" else None
    return eventually(done, timeout=timeout, interval=0.05,
                      message=f"{node.name} has the whole file")


def download(node: NodeProc, attachment_id: str, headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(f"{node.url}/api/v1/attachments/{attachment_id}",
                                     headers={"Authorization": f"Bearer {node.token}",
                                              **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _status_kib(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


def rss(node: NodeProc) -> int:
    """Resident memory of the node process now, in bytes."""
    assert node.proc is not None
    return _status_kib(node.proc.popen.pid, "VmRSS") * 1024


def peak_rss(node: NodeProc) -> int:
    """Peak resident memory of the node process so far (VmHWM), in bytes."""
    assert node.proc is not None
    return _status_kib(node.proc.popen.pid, "VmHWM") * 1024


def group_of(cluster: Cluster, names: list[str]) -> tuple[list[NodeProc], str]:
    """Start ``names`` (the first creates the group), everyone joined and linked."""
    nodes = [cluster.add(n) for n in names]
    group = nodes[0].create_group("files")
    for node in nodes[1:]:
        assert node.join(nodes[0].invite(group)) == group
    everyone = {n.user_id for n in nodes}
    for node in nodes:
        eventually(lambda node=node: node.members(group) == everyone,
                   message=f"{node.name} sees everyone")
    return nodes, group


@pytest.fixture
def random_file() -> bytes:
    return os.urandom(25 * MiB)


def json_of(body: bytes) -> Any:
    return json.loads(body) if body else None
