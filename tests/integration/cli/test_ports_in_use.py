"""A node whose port is taken says which port and which option in one line and exits
with code 2, no traceback (issue 15 finding 7): real ``run.py`` processes against
ports held by this test."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import start_run_py


@pytest.fixture
def held() -> Iterator[tuple[int, socket.socket, socket.socket]]:
    """A port number taken for TCP (listening) and for UDP on 127.0.0.1."""
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", 0))
    tcp.listen()
    port = tcp.getsockname()[1]
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.bind(("127.0.0.1", port))
    except OSError:
        tcp.close()
        pytest.skip("the UDP port of the same number is taken by someone else")
    yield port, tcp, udp
    tcp.close()
    udp.close()


def refused(*args: str) -> list[str]:
    proc = start_run_py(*args, "--log-level", "WARNING")
    code = proc.popen.wait(60)
    proc.wait_for(r"in use", timeout=5)
    output = [line for line in proc.lines if line.strip()]
    proc.stop()
    assert code == 2, output
    return output


@pytest.mark.parametrize(("flag", "protocol"), [
    ("--ui-port", "TCP"), ("--mesh-port", "TCP"), ("--dht-port", "UDP")])
def test_a_node_port_in_use_is_one_line_and_exit_code_2(tmp_path: Path, held, flag: str,
                                                        protocol: str) -> None:
    port = held[0]
    ports = {"--ui-port": "0", "--mesh-port": "0", "--dht-port": "0", flag: str(port)}
    output = refused("node", "--data-dir", str(tmp_path / "n"), "--bootstrap",
                     "http://127.0.0.1:9", *(x for kv in ports.items() for x in kv))
    assert output == [f"run.py node: {protocol} port {port} is already in use; choose "
                      f"another with {flag} (0 picks a free one)\n"]


def test_the_embedded_bootstrap_port_in_use_is_one_line_and_exit_code_2(
        tmp_path: Path, held) -> None:
    port = held[0]
    output = refused("--data-dir", str(tmp_path / "n"), "--bootstrap-port", str(port),
                     "--ui-port", "0", "--mesh-port", "0")
    assert output == [f"run.py all: TCP port {port} is already in use; choose another "
                      "with --bootstrap-port (0 picks a free one)\n"]
