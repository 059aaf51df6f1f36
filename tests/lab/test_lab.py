"""The lab's routers behave as documented: NAT mapping, port choice, unsolicited SYNs."""

from __future__ import annotations

import socket
import subprocess

import pytest

from tests.lab.netlab import Lab, Namespace, Nat, Syn, namespaces, sweep_stale

SERVER_IP = "198.51.100.10"


def _listen(lab: Lab, ns: Namespace, ip: str) -> socket.socket:
    server = lab.socket(ns)
    server.bind((ip, 0))
    server.listen()
    server.settimeout(5)
    return server


def _observed_tcp(lab: Lab, client_ns: Namespace, server: socket.socket) -> tuple[str, int, int]:
    """Connect from ``client_ns``; return (seen address, seen port, local port)."""
    with lab.socket(client_ns) as client:
        client.settimeout(5)
        client.connect(server.getsockname())
        conn, (seen_ip, seen_port) = server.accept()
        conn.close()
        return seen_ip, seen_port, client.getsockname()[1]


def _observed_udp_ports(lab: Lab, client_ns: Namespace, server_ns: Namespace,
                        n: int) -> tuple[int, list[int]]:
    """One UDP socket in ``client_ns`` sends to ``n`` server ports; return the ports seen."""
    servers = []
    for _ in range(n):
        s = lab.socket(server_ns, socket.SOCK_DGRAM)
        s.bind((SERVER_IP, 0))
        s.settimeout(5)
        servers.append(s)
    with lab.socket(client_ns, socket.SOCK_DGRAM) as client:
        client.bind(("0.0.0.0", 0))
        seen = []
        for s in servers:
            client.sendto(b"hi", s.getsockname())
            _, (_, port) = s.recvfrom(16)
            seen.append(port)
            s.close()
        return client.getsockname()[1], seen


def test_endpoint_independent_nat_keeps_the_port_on_the_public_address(lab: Lab) -> None:
    srv = lab.public_host("srv", SERVER_IP)
    ra = lab.router("ra", "203.0.113.1", "10.1.0.0/24")
    alice = lab.host("alice", ra.lan)
    assert alice.ip == "10.1.0.2"
    with _listen(lab, srv, SERVER_IP) as server:
        seen_ip, seen_port, local_port = _observed_tcp(lab, alice, server)
    assert (seen_ip, seen_port) == ("203.0.113.1", local_port)
    local, seen = _observed_udp_ports(lab, alice, srv, 3)
    assert seen == [local] * 3


def test_symmetric_nat_picks_a_new_port_per_destination(lab: Lab) -> None:
    srv = lab.public_host("srv", SERVER_IP)
    rc = lab.router("rc", "203.0.113.3", "10.3.0.0/24", nat=Nat.SYMMETRIC)
    carol = lab.host("carol", rc.lan)
    _, seen = _observed_udp_ports(lab, carol, srv, 4)
    assert len(set(seen)) > 1, seen          # 4 equal random ports: p ~ 2^-42
    with _listen(lab, srv, SERVER_IP) as server:
        assert _observed_tcp(lab, carol, server)[0] == "203.0.113.3"


@pytest.mark.parametrize(("syn", "outcome"), [(Syn.DROP, TimeoutError),
                                              (Syn.RESET, ConnectionRefusedError)])
def test_unsolicited_syn_is_dropped_or_reset(lab: Lab, syn: Syn,
                                             outcome: type[OSError]) -> None:
    srv = lab.public_host("srv", SERVER_IP)
    router = lab.router("r", "203.0.113.1", "10.1.0.0/24", syn=syn)
    lab.host("alice", router.lan)
    with lab.socket(srv) as probe:
        probe.settimeout(1.0)
        with pytest.raises(outcome):
            probe.connect((router.ip, 40000))


def test_lan_without_router_reaches_only_itself(lab: Lab) -> None:
    lan = lab.lan("home", "192.168.7.0/24")
    alice, bob = lab.host("alice", lan), lab.host("bob", lan)
    with _listen(lab, bob, bob.ip) as server:
        assert _observed_tcp(lab, alice, server)[0] == alice.ip
    routes = lab.run(alice, "ip", "route")
    assert "224.0.0.0/4 dev eth0" in routes and "default" not in routes


def test_node_runs_inside_a_namespace_and_answers_its_api(lab: Lab) -> None:
    lan = lab.lan("home", "192.168.7.0/24")
    alice = lab.host("alice", lan)
    node = lab.start_node(alice, "--bootstrap", "http://127.0.0.1:9", "--no-dht")
    status, me = node.api("GET", "/me")
    assert status == 200 and len(me["id"]) == 15


def test_teardown_and_sweeper_leave_no_namespace(tmp_path) -> None:
    from tests.lab.netlab import delete_namespace, unavailable
    if unavailable():
        pytest.skip(unavailable())
    with Lab(tmp_path) as built:
        built.lan("home", "192.168.7.0/24")
        made = list(built.names)
        assert set(made) <= set(namespaces())
    assert not set(made) & set(namespaces())
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = f"pl{gone.pid}-1-x"
    subprocess.run(["ip", "netns", "add", stale], check=True)
    try:
        assert stale in sweep_stale()
        assert stale not in namespaces()
    finally:
        delete_namespace(stale)
