"""`run.py bootstrap` ports (issue 15, finding 7): the DHT defaults to the HTTP port
number on UDP, and a port in use is one line naming the flag, exit code 2."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

from tests.conftest import ROOT


def run_bootstrap(*args: str, db: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "run.py"), "bootstrap", "--db", str(db),
                           *args], capture_output=True, text=True, timeout=60, check=False)


def test_udp_port_in_use(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        # The DHT's UDP port defaults to --port: the HTTP port is free, the UDP one not.
        result = run_bootstrap("--port", str(port), db=tmp_path / "b.db")
    assert result.returncode == 2
    assert result.stderr == (f"run.py bootstrap: UDP port {port} is already in use; choose "
                             "another with --dht-port (0 picks a free one)\n")
    assert result.stdout == ""


def test_tcp_port_in_use(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_bootstrap("--port", str(port), "--no-dht", db=tmp_path / "b.db")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"run.py bootstrap: TCP port {port} is already in use; choose another with --port "
        "(0 picks a free one)"]


def test_bad_trusted_proxy(tmp_path: Path) -> None:
    result = run_bootstrap("--port", "0", "--trusted-proxy", "proxy.example",
                           db=tmp_path / "b.db")
    assert result.returncode == 2
    assert result.stderr.startswith("run.py bootstrap: bad trusted proxy: ")
    assert len(result.stderr.splitlines()) == 1


def test_dht_port_defaults_to_the_http_port(run_py, tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port free on TCP; UDP is checked by the server
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = run_py("bootstrap", "--port", str(port), "--db", str(tmp_path / "b.db"))
    proc.wait_for(rf"listening on http://127\.0\.0\.1:{port} .*DHT on udp {port}\b")
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/health", timeout=10) as reply:
        assert json.loads(reply.read())["dht"] == {"host": "127.0.0.1", "port": port}
    assert proc.stop() == 0
