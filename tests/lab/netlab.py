"""A real NAT lab: Linux network namespaces, veth pairs, bridges and nftables (root only).

Why: reaching a friend behind a home router is decided by what real NAT does to real
packets (which port it picks, what it does with an unsolicited SYN), so scenarios run
real ``run.py`` processes in namespaces this module builds, never against mocks.

Quick start (the ``lab`` fixture of tests/lab/conftest.py builds a fresh ``Lab`` per
test and always tears it down, also on failure)::

    from tests.lab.netlab import Nat, Syn

    def test_across_routers(lab):
        boot = lab.public_host("boot", "198.51.100.10")      # on the "internet" bridge
        ra = lab.router("ra", "203.0.113.1", "10.1.0.0/24")   # masquerade, SYNs dropped
        rc = lab.router("rc", "203.0.113.3", "10.3.0.0/24",   # symmetric, SYNs reset
                        nat=Nat.SYMMETRIC, syn=Syn.RESET)
        alice = lab.host("alice", ra.lan)                    # 10.1.0.2, default via ra
        bootstrap = lab.popen(boot, *lab.run_py, "bootstrap", "--host", "0.0.0.0", ...)
        node = lab.start_node(alice, "--bootstrap", "http://198.51.100.10:8470")
        status, me = node.api("GET", "/me")                    # UI API inside alice's netns
        sock = lab.socket(alice)                               # a socket living in alice's netns
        lab.run(alice, "ip", "addr")                           # any command in a namespace

    def test_lan_only(lab):
        lan = lab.lan("home", "192.168.7.0/24")    # a switch: no router, no internet
        a, b = lab.host("alice", lan), lab.host("bob", lan)

Topology: one namespace ``<prefix>inet`` holds the bridge ``br0``; public hosts and the
routers' ``wan`` interfaces hang on it with a /24 address and an on-link default route,
so 198.51.100.0/24 and 203.0.113.0/24 reach each other directly. A router has ``wan``
and a LAN bridge ``lan`` (first address of its subnet), forwards with a ``policy drop``
forward chain (LAN to WAN, established/related and port-forwarded ``ct status dnat``
flows pass), masquerades (``random`` for symmetric NAT), and either drops unsolicited
SYNs to itself (``input`` chain: ``ct state new drop`` on wan) or lets the kernel answer
them with a reset. Its nat table has an empty ``prerouting`` chain (table ``ip nat``)
where port mappings add ``dnat`` rules. Hosts get ``eth0`` on a LAN, the next free
address, a default route via the router (or, on a router-less LAN, only the multicast
route 224.0.0.0/4 so mDNS works).

Every namespace is named ``pl<pid>-<n>-<label>``; ``sweep_stale()`` deletes those whose
pid is gone (crashed runs) and ends what still runs inside them.
"""

from __future__ import annotations

import ctypes
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from enum import Enum
from itertools import count
from pathlib import Path
from typing import Any

from tests.conftest import ROOT, Proc

CLONE_NEWNET = 0x40000000
_NAME = re.compile(r"^pl(\d+)-")
_runs = count(1)


class LabError(RuntimeError):
    """The lab could not be built or a command in it failed."""


class Nat(Enum):
    """How a router picks the public port of an outgoing flow."""

    ENDPOINT_INDEPENDENT = "masquerade"      # keeps the LAN port: same mapping per destination
    SYMMETRIC = "masquerade random"          # a new port per destination


class Syn(Enum):
    """What a router does with an unsolicited SYN to its public address."""

    DROP = "drop"       # silently, like most home routers (hole punching works)
    RESET = "reset"     # the kernel answers RST (a bare Linux router)


@dataclass(frozen=True)
class Namespace:
    """A network namespace of the lab and its main address."""

    name: str
    ip: str


@dataclass
class Lan:
    """An L2 segment: a bridge in ``ns`` (a router, or a switch of its own)."""

    ns: Namespace
    subnet: ipaddress.IPv4Network
    gateway: str | None
    hosts: Iterator[ipaddress.IPv4Address] = field(repr=False)

    def next_address(self) -> str:
        return str(next(self.hosts))


@dataclass(frozen=True)
class Router(Namespace):
    """A home router: ``ip`` is its public address, ``lan`` the network behind it."""

    lan: Lan
    nat: Nat
    syn: Syn


def unavailable() -> str | None:
    """Why this machine cannot build the lab, or None when it can."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces, nftables)"
    missing = [tool for tool in ("ip", "nft") if shutil.which(tool) is None]
    if missing:
        return f"the NAT lab needs {' and '.join(missing)} (apt-get install iproute2 nftables)"
    return None


def sh(*argv: str, stdin: str | None = None, timeout: float = 30.0) -> str:
    """Run a command, return its output; a failure raises LabError with its stderr."""
    done = subprocess.run(argv, input=stdin, capture_output=True, text=True, timeout=timeout,
                          check=False)
    if done.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def namespaces() -> list[str]:
    return [line.split()[0] for line in sh("ip", "netns", "list").splitlines() if line.strip()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _end_processes_in(name: str) -> None:
    """End what still runs in one of our namespaces (started by a lab, by pid)."""
    try:
        pids = [int(p) for p in sh("ip", "netns", "pids", name).split()]
    except LabError:
        return
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def delete_namespace(name: str) -> None:
    _end_processes_in(name)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def sweep_stale() -> list[str]:
    """Delete lab namespaces left by runs whose process is gone; return their names."""
    stale = [name for name in namespaces()
             if (m := _NAME.match(name)) and not _alive(int(m.group(1)))]
    for name in stale:
        delete_namespace(name)
    return stale


_libc = ctypes.CDLL(None, use_errno=True)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise LabError(f"setns failed: {os.strerror(err)}")


@contextmanager
def inside(ns: Namespace) -> Iterator[None]:
    """Run the block's socket calls in ``ns`` (this thread only; sockets made here stay)."""
    with open("/proc/thread-self/ns/net") as home, open(f"/run/netns/{ns.name}") as there:
        _setns(there.fileno())
        try:
            yield
        finally:
            _setns(home.fileno())


class _NsHTTPConnection(http.client.HTTPConnection):
    """HTTP to 127.0.0.1 of a namespace: the socket is created inside it."""

    def __init__(self, ns: Namespace, port: int, timeout: float) -> None:
        super().__init__("127.0.0.1", port, timeout=timeout)
        self._ns = ns

    def connect(self) -> None:
        with inside(self._ns):
            self.sock = socket.create_connection((self.host, self.port), self.timeout)


@dataclass
class LabNode:
    """A ``run.py node`` process in a namespace, with a client for its UI API."""

    ns: Namespace
    proc: Proc
    data_dir: Path
    ui_port: int
    token: str

    def api(self, method: str, path: str, body: Any = None,
            timeout: float = 30.0) -> tuple[int, Any]:
        """One request to ``/api/v1<path>``; returns (status, decoded JSON or None)."""
        conn = _NsHTTPConnection(self.ns, self.ui_port, timeout)
        headers = {"Authorization": f"Bearer {self.token}"}
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        try:
            conn.request(method, f"/api/v1{path}", body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        finally:
            conn.close()
        return response.status, (json.loads(raw) if raw else None)

    def wait_api(self, method: str, path: str, until: Any, timeout: float = 30.0,
                 body: Any = None) -> Any:
        """Poll an endpoint until ``until(answer)`` is true; return that answer."""
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            status, last = self.api(method, path, body)
            if status < 300 and until(last):
                return last
            time.sleep(0.2)
        raise AssertionError(f"{method} {path} never satisfied the condition; last: {last}")


class Lab:
    """Builds namespaces on demand and deletes all of them in ``close()``."""

    run_py = (sys.executable, str(ROOT / "run.py"))

    def __init__(self, workdir: Path) -> None:
        self.prefix = f"pl{os.getpid()}-{next(_runs)}-"
        self.workdir = workdir
        self.names: list[str] = []
        self._procs: list[Proc] = []
        self._inet: Namespace | None = None
        self._veths = count(1)

    # -- building ---------------------------------------------------------------------

    def namespace(self, label: str, ip: str = "") -> Namespace:
        name = self.prefix + label
        sh("ip", "netns", "add", name)
        self.names.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return Namespace(name, ip)

    def _veth(self, ns: Namespace, ifname: str, peer_ns: Namespace, bridge: str) -> None:
        """A veth ``ifname`` in ``ns`` whose peer is enslaved to ``bridge`` in ``peer_ns``."""
        peer = f"v{next(self._veths)}"
        sh("ip", "link", "add", ifname, "netns", ns.name, "type", "veth",
           "peer", "name", peer, "netns", peer_ns.name)
        sh("ip", "-n", peer_ns.name, "link", "set", peer, "master", bridge, "up")
        sh("ip", "-n", ns.name, "link", "set", ifname, "up")

    def _bridge(self, ns: Namespace, name: str, address: str | None = None) -> None:
        sh("ip", "-n", ns.name, "link", "add", name, "type", "bridge")
        sh("ip", "-n", ns.name, "link", "set", name, "up")
        if address:
            sh("ip", "-n", ns.name, "addr", "add", address, "dev", name)

    def internet(self) -> Namespace:
        """The namespace holding the internet bridge (made on first use)."""
        if self._inet is None:
            self._inet = self.namespace("inet")
            self._bridge(self._inet, "br0")
        return self._inet

    def _on_internet(self, ns: Namespace, ifname: str, ip: str) -> None:
        self._veth(ns, ifname, self.internet(), "br0")
        sh("ip", "-n", ns.name, "addr", "add", f"{ip}/24", "dev", ifname)
        sh("ip", "-n", ns.name, "route", "add", "default", "dev", ifname)

    def public_host(self, label: str, ip: str) -> Namespace:
        """A host with a public address on the internet bridge (bootstrap, relay)."""
        ns = self.namespace(label, ip)
        self._on_internet(ns, "eth0", ip)
        return ns

    def lan(self, label: str, subnet: str) -> Lan:
        """A switch of its own: hosts on it reach each other and nothing else."""
        net = ipaddress.ip_network(subnet)
        ns = self.namespace(label)
        self._bridge(ns, "lan")
        return Lan(ns, net, None, iter(net.hosts()))

    def router(self, label: str, public_ip: str, subnet: str, *,
               nat: Nat = Nat.ENDPOINT_INDEPENDENT, syn: Syn = Syn.DROP) -> Router:
        """A home router between the internet and a new LAN ``subnet``."""
        net = ipaddress.ip_network(subnet)
        hosts = iter(net.hosts())
        gateway = str(next(hosts))
        base = self.namespace(label, public_ip)
        self._on_internet(base, "wan", public_ip)
        self._bridge(base, "lan", f"{gateway}/{net.prefixlen}")
        sh("ip", "netns", "exec", base.name, "sysctl", "-q", "-w", "net.ipv4.ip_forward=1")
        sh("ip", "netns", "exec", base.name, "nft", "-f", "-",
           stdin=_router_rules(nat, syn))
        return Router(base.name, public_ip, Lan(base, net, gateway, hosts), nat, syn)

    def host(self, label: str, lan: Lan) -> Namespace:
        """A machine on ``lan`` with the next free address."""
        ip = lan.next_address()
        ns = self.namespace(label, ip)
        self._veth(ns, "eth0", lan.ns, "lan")
        sh("ip", "-n", ns.name, "addr", "add", f"{ip}/{lan.subnet.prefixlen}", "dev", "eth0")
        if lan.gateway:
            sh("ip", "-n", ns.name, "route", "add", "default", "via", lan.gateway)
        else:
            sh("ip", "-n", ns.name, "route", "add", "224.0.0.0/4", "dev", "eth0")
        return ns

    # -- using ------------------------------------------------------------------------

    def run(self, ns: Namespace, *argv: str, timeout: float = 30.0) -> str:
        """Run a command in ``ns`` to completion; return its output."""
        return sh("ip", "netns", "exec", ns.name, *argv, timeout=timeout)

    def popen(self, ns: Namespace, *argv: str) -> Proc:
        """Start a process in ``ns`` (output captured); it is ended in ``close()``."""
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        popen = subprocess.Popen(["ip", "netns", "exec", ns.name, *argv], cwd=ROOT,
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                 text=True, env=env)
        proc = Proc(popen)
        self._procs.append(proc)
        return proc

    def socket(self, ns: Namespace, kind: socket.SocketKind = socket.SOCK_STREAM
               ) -> socket.socket:
        """An IPv4 socket living in ``ns`` (usable from this process)."""
        with inside(ns):
            return socket.socket(socket.AF_INET, kind)

    def start_node(self, ns: Namespace, *args: str, label: str = "",
                   timeout: float = 30.0) -> LabNode:
        """``run.py node`` in ``ns`` with a fresh data dir and UI port; waits for its URL."""
        data_dir = self.workdir / (label or ns.name.removeprefix(self.prefix))
        proc = self.popen(ns, *self.run_py, "node", "--data-dir", str(data_dir),
                          "--ui-port", "0", *args)
        m = proc.wait_for(r"open http://127\.0\.0\.1:(\d+)/#token=(\S+)", timeout)
        return LabNode(ns, proc, data_dir, int(m.group(1)), m.group(2))

    def close(self) -> None:
        """End every process and delete every namespace this lab made."""
        for proc in reversed(self._procs):
            proc.stop()
        for name in reversed(self.names):
            delete_namespace(name)
        self.names.clear()
        self._procs.clear()

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _router_rules(nat: Nat, syn: Syn) -> str:
    drop_syn = 'iifname "wan" ct state new drop' if syn is Syn.DROP else ""
    return f"""
table ip nat {{
    chain prerouting {{ type nat hook prerouting priority dstnat; }}
    chain postrouting {{
        type nat hook postrouting priority srcnat;
        oifname "wan" {nat.value}
    }}
}}
table inet filter {{
    chain forward {{
        type filter hook forward priority filter; policy drop;
        ct state established,related accept
        ct status dnat accept
        iifname "lan" oifname "wan" accept
    }}
    chain input {{
        type filter hook input priority filter; policy accept;
        {drop_syn}
    }}
}}
"""
