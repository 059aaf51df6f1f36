"""Shared fixtures: real servers on free loopback ports, always stopped afterwards."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bootstrap.api import BootstrapConfig
from bootstrap.server import BootstrapServer, start_bootstrap

ROOT = Path(__file__).resolve().parent.parent
GENEROUS = BootstrapConfig(rate=10_000, burst=10_000, pow_bits=8, claims_per_claimer=10_000,
                           claims_per_target=10_000, claims_per_pair=10_000)


@pytest.fixture
async def bootstrap_server(tmp_path: Path) -> AsyncIterator[BootstrapServer]:
    """An in-process bootstrap server on a free port with generous limits and a cheap
    proof of work (tests/integration/bootstrap/test_abuse.py tests the real ones)."""
    server = start_bootstrap("127.0.0.1", 0, tmp_path / "bootstrap.db", GENEROUS)
    try:
        yield server
    finally:
        await server.stop()


@dataclass
class Proc:
    """A ``python run.py ...`` child process and the lines it printed so far."""

    popen: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    _reader: threading.Thread | None = None

    def wait_for(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        regex = re.compile(pattern)
        for line in self.lines:
            if m := regex.search(line):
                return m
        while time.monotonic() < deadline:
            line = self.popen.stdout.readline() if self.popen.stdout else ""
            if not line:
                if self.popen.poll() is not None:
                    break
                continue
            self.lines.append(line)
            if m := regex.search(line):
                return m
        raise AssertionError(f"{pattern!r} not printed; output so far:\n{''.join(self.lines)}")

    def keep_reading(self) -> None:
        """From now on collect the output in ``lines`` in the background (after the
        last ``wait_for``): a child that logs more than a pipe holds while nobody reads
        would block on its next write."""
        stdout = self.popen.stdout
        if stdout is not None and self._reader is None:
            self._reader = threading.Thread(target=lambda: self.lines.extend(stdout),
                                            daemon=True)
            self._reader.start()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        if self._reader is not None:
            self._reader.join(timeout)  # the child is gone: its output ends
        if self.popen.stdout:
            self.popen.stdout.close()
        return self.popen.returncode


def on_loopback(args: tuple[str, ...]) -> tuple[str, ...]:
    """A node's arguments with its mesh on 127.0.0.1 unless they say otherwise: run.py
    listens on every interface by default and then announces itself over mDNS and asks
    the router for a port mapping, traffic tests must not send beyond loopback (the NAT
    lab's namespaces test those)."""
    command = args[0] if args and not args[0].startswith("-") else "all"
    if command in ("node", "all") and "--mesh-host" not in args:
        return (*args, "--mesh-host", "127.0.0.1")
    return args


def start_run_py(*args: str) -> Proc:
    """Start ``python run.py <args>`` with its output captured line by line (a node's
    mesh stays on loopback unless ``--mesh-host`` is given: ``on_loopback``)."""
    args = on_loopback(args)
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    popen = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             env=env)
    return Proc(popen)


@pytest.fixture
def run_py() -> Iterator[Callable[..., Proc]]:
    """Start ``python run.py <args>``; every process is stopped at teardown."""
    procs: list[Proc] = []

    def start(*args: str) -> Proc:
        proc = start_run_py(*args)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.stop()
