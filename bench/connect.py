"""Connecting across home routers: ``python -m bench.connect [--mib 25] [--quick]``.

Needs root (the NAT lab of tests/lab/netlab.py: network namespaces, nftables); without
it the benchmark says so and skips. Per pair of routers (endpoint-independent or
symmetric NAT; unsolicited SYNs dropped or answered with a reset), a fresh lab with a
bootstrap that is also a relay on the lab's internet and two real ``run.py node``
processes, one behind each router:

- **first message**: seconds from starting both node processes to the first text
  arriving (registration, relay reservation, invite, join and the message itself all
  included; no link exists before);
- **upgrade**: seconds from that first message until the link is hole-punched to a
  direct one (or "stays relayed" after 20 s);
- **file**: a ``--mib`` MiB attachment from one node to the other over whatever path
  the link ended on: MiB/s from upload to the receiver's ``complete``, and for relayed
  transfers the relay's (bootstrap process's) CPU seconds per MiB relayed.

The baseline is the same run's other path: the first pair (routers that drop SYNs)
ends hole-punched, the second (routers that reset SYNs) stays relayed, so their file
rows compare direct and relayed transfers of the same file on the same lab. The
relay's rate limit (4 MiB/s per circuit by default) bounds the relayed rows.
``--quick`` (1 MiB, the two pairs only) is the smoke run the test suite makes.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.lab.natkit import (
    behind_router,
    bootstrap_proc,
    download,
    group_of,
    me,
    paths,
    send,
    start_bootstrap,
    upload,
    wait_text,
)
from tests.lab.netlab import Lab, Nat, Syn, sweep_stale, unavailable

BOOT_IP = "198.51.100.10"
UPGRADE_WAIT = 20.0
QUICK_UPGRADE_WAIT = 3.0  # a punch that works takes ~0.1 s; the quick run only smoke-tests
MiB = 1024 * 1024


@dataclass(frozen=True)
class Pair:
    label: str
    a: tuple[Nat, Syn]
    b: tuple[Nat, Syn]


EI, SYM = Nat.ENDPOINT_INDEPENDENT, Nat.SYMMETRIC
PAIRS = (
    Pair("EI+drop / EI+drop", (EI, Syn.DROP), (EI, Syn.DROP)),
    Pair("EI+reset / EI+reset", (EI, Syn.RESET), (EI, Syn.RESET)),
    Pair("EI+drop / symmetric+drop", (EI, Syn.DROP), (SYM, Syn.DROP)),
    Pair("symmetric / symmetric", (SYM, Syn.DROP), (SYM, Syn.DROP)),
)


@dataclass(frozen=True)
class Result:
    pair: str
    first_message: float
    upgrade: float | None
    path: str
    mib_per_s: float
    relay_cpu_per_mib: float | None


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_pair(pair: Pair, mib: int, workdir: Path, upgrade_wait: float) -> Result:
    with Lab(workdir) as lab:
        boot = start_bootstrap(lab, BOOT_IP)
        relay_pid = bootstrap_proc(lab, BOOT_IP).popen.pid
        started = time.monotonic()
        alice = behind_router(lab, "alice", 1, nat=pair.a[0], syn=pair.a[1])
        bob = behind_router(lab, "bob", 2, nat=pair.b[0], syn=pair.b[1])
        group = group_of([alice, bob])
        send(alice, group, "first")
        wait_text(bob, group, "first")
        first = time.monotonic() - started
        bob_id = me(bob)["id"]
        upgrade = None
        deadline = time.monotonic() + upgrade_wait
        while time.monotonic() < deadline:
            if paths(alice, group)[bob_id] == "hole_punched":
                upgrade = time.monotonic() - started - first
                break
            time.sleep(0.1)
        path = paths(alice, group)[bob_id]
        content = os.urandom(mib * MiB)
        cpu0 = _cpu_seconds(relay_pid)
        t0 = time.monotonic()
        attachment = upload(alice, group, "bench.bin", content)["attachment"]["id"]
        bob.wait_api("GET", f"/attachments/{attachment}/info",
                     lambda info: info["state"] == "complete", timeout=300)
        elapsed = time.monotonic() - t0
        cpu = _cpu_seconds(relay_pid) - cpu0
        assert download(bob, attachment) == content
        del boot
        return Result(pair.label, first, upgrade, path, mib / elapsed,
                      cpu / mib if path == "relayed" else None)


def table(results: list[Result], mib: int) -> str:
    rows = ["| routers (alice / bob) | first message (s) | upgrade to direct (s) | "
            f"link for the file | {mib} MiB file (MiB/s) | relay CPU (s/MiB) |",
            "|---|---:|---:|---|---:|---:|"]
    for r in results:
        upgrade = f"{r.upgrade:.2f}" if r.upgrade is not None else "stays relayed"
        cpu = f"{r.relay_cpu_per_mib:.4f}" if r.relay_cpu_per_mib is not None else "–"
        rows.append(f"| {r.pair} | {r.first_message:.1f} | {upgrade} | {r.path} | "
                    f"{r.mib_per_s:.1f} | {cpu} |")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=25, help="file size in MiB")
    parser.add_argument("--quick", action="store_true",
                        help="1 MiB, two router pairs, 3 s for an upgrade (the test "
                             "suite's smoke run)")
    args = parser.parse_args()
    reason = unavailable()
    if reason is not None:
        print(f"bench.connect needs the NAT lab ({reason}): skipped")
        return
    sweep_stale()
    mib = 1 if args.quick else args.mib
    pairs = PAIRS[:2] if args.quick else PAIRS
    results = []
    with tempfile.TemporaryDirectory(prefix="parley-connect-") as tmp:
        for i, pair in enumerate(pairs):
            workdir = Path(tmp) / str(i)
            workdir.mkdir()
            results.append(run_pair(pair, mib, workdir,
                                    QUICK_UPGRADE_WAIT if args.quick else UPGRADE_WAIT))
    print(table(results, mib))


if __name__ == "__main__":
    main()
