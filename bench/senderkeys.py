"""Sender-key cost under a hostile member: ``python -m bench.senderkeys [--quick]``.

Issue 15 (finding 2): a modified client skipped its 1000-message rotation and jumped its
chain +2000 on 5 key ids; each receiver kept ~5 x 2000 skipped keys and spent ~100 ms of
CPU on every later message instead of ~2 ms. This replays that member against a receiver
set up as a node's (real key store: SQLite file, WAL, synchronous=FULL; each message
goes through the validate hook, ``verify_group_message``, then ``decrypt_group``), and
measures the receiver's CPU time (process time) and wall time per message:

- normal: an honest member's messages, in order (the baseline, same run);
- refused: the +2000 jumps, now beyond the rotation bound;
- not yet: a message MAX_CHAIN_GAP + 1 ahead of our chain, refused for now
  (AheadOfChain: the signature is checked, nothing derived);
- jump: the best jumping the gap allows: message after message exactly MAX_CHAIN_GAP
  ahead of our chain, up to the rotation bound on each key id (each derives that many
  chain steps: the worst single message);
- in flight: messages the attacker held back before jumping, read from the skipped
  keys afterwards (the ones the per-sender cap dropped are refused as duplicates);
- later: the attacker's next messages, with 5 states and the cap's 2000 skipped keys held;
- attack, all: every message of the attack above, averaged.

The per-member budget is on, as in a node, with its clock moved 10 s per key id (the
attacker spreads the attack out so as not to be throttled).
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from groups import crypto, store
from groups.crypto.senderchain import SenderChain
from groups.crypto.senderkeys import MAX_CHAIN_GAP, MAX_SENDER_KEY_STATES
from groups.errors import AheadOfChain, DecryptError
from mesh.identity import KeyPair

KEY_IDS = MAX_SENDER_KEY_STATES


@dataclass
class Member:
    identity: KeyPair
    conn: sqlite3.Connection
    crypto: crypto.Crypto
    user_id: str = field(init=False)

    def __post_init__(self) -> None:
        self.user_id = self.identity.user_id

    @classmethod
    def open(cls, path: Path, now: float) -> Member:
        identity, conn = KeyPair.generate(), store.open_store(path)
        return cls(identity, conn, crypto.Crypto(conn, identity, now=now))

    def jump(self, group: bytes, to: int) -> None:
        """The modified client: move its own chain to ``to`` without sending."""
        chain = self.chain(group)
        _, moved = chain.seed_for(to - 1, keep=0)
        with store.atomic(self.conn):
            store.update_sender_key_state(self.conn, group, self.user_id, chain.key_id,
                                          moved.iteration, moved.encode())

    def chain(self, group: bytes) -> SenderChain:
        key_id = store.sender_key_info(self.conn, group, self.user_id).key_id
        return SenderChain.decode(store.load_sender_key_state(self.conn, group, self.user_id,
                                                              key_id))


@dataclass
class Costs:
    """CPU and wall seconds of each message a receiver handled, and how many it refused."""

    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)
    refused: int = 0

    def add(self, other: Costs) -> Costs:
        return Costs(self.cpu + other.cpu, self.wall + other.wall, self.refused + other.refused)


class Receiver:
    def __init__(self, path: Path, now: float) -> None:
        self.member = Member.open(path, now)
        self.now = now

    def take(self, sender: str, group: bytes, messages: list[bytes]) -> Costs:
        costs = Costs()
        c = self.member.crypto
        for data in messages:
            cpu, wall = time.process_time(), time.perf_counter()
            try:
                c.verify_group_message(group, sender, data, now=self.now)
                c.decrypt_group(group, sender, data)
            except (DecryptError, AheadOfChain):
                costs.refused += 1
            costs.cpu.append(time.process_time() - cpu)
            costs.wall.append(time.perf_counter() - wall)
        return costs


def share(group: bytes, sender: Member, receiver: Receiver) -> None:
    dist = sender.crypto.rotate_sender_key(group, now=receiver.now)
    receiver.member.crypto.process_sender_key_distribution(group, sender.user_id, dist,
                                                           now=receiver.now)


def forged(sender: Member, group: bytes, template: bytes, iteration: int) -> bytes:
    """A message of ``sender``'s current key at ``iteration``, signed with its key."""
    chain = sender.chain(group)
    length = int.from_bytes(template[1:3], "big")
    body = template[3 + length:]
    header = crypto.senderkeys.SenderKeyMessage(
        chain.key_id, iteration, bytes(16),
        crypto.keystore.DjbECPrivateKey(chain.signing_private))
    raw = header.serialize()
    return b"\x01" + len(raw).to_bytes(2, "big") + raw + body


def run(tmp: Path, normal_count: int, held: int, later: int) -> dict[str, Costs]:
    now = time.time()
    receiver = Receiver(tmp / "receiver.db", now)
    honest, attacker = Member.open(tmp / "honest.db", now), Member.open(tmp / "attacker.db", now)
    group = os.urandom(16)

    def send(member: Member, n: int) -> list[bytes]:
        return [member.crypto.encrypt_group(group, os.urandom(200)) for _ in range(n)]

    share(group, honest, receiver)
    results = {"normal": receiver.take(honest.user_id, group, send(honest, normal_count))}
    refused, not_yet, jumps, flights = Costs(), Costs(), Costs(), []

    def position() -> int:  # where the receiver's chain for the attacker's key stands
        key_id = attacker.chain(group).key_id
        return store.sender_key_info(receiver.member.conn, group, attacker.user_id,
                                     key_id).iteration

    for _ in range(KEY_IDS):
        receiver.now += 10.0
        share(group, attacker, receiver)
        in_flight = send(attacker, held)
        refused = refused.add(receiver.take(attacker.user_id, group,
                                            [forged(attacker, group, in_flight[0], 2000)]))
        not_yet = not_yet.add(receiver.take(attacker.user_id, group, [forged(
            attacker, group, in_flight[0], position() + MAX_CHAIN_GAP + 1)]))
        while position() + MAX_CHAIN_GAP < crypto.SENDER_KEY_MAX_ITERATION - later:
            attacker.jump(group, position() + MAX_CHAIN_GAP)
            jumps = jumps.add(receiver.take(attacker.user_id, group, send(attacker, 1)))
        flights.append(in_flight)
    receiver.now += 10.0
    flight = Costs()
    for in_flight in flights:
        flight = flight.add(receiver.take(attacker.user_id, group, in_flight))
    results.update({
        "refused (+2000)": refused, f"not yet (+{MAX_CHAIN_GAP + 1})": not_yet,
        f"jump (+{MAX_CHAIN_GAP} each)": jumps, "in flight": flight,
        "later": receiver.take(attacker.user_id, group, send(attacker, later))})
    results["attack, all"] = refused.add(not_yet).add(jumps).add(flight) \
        .add(results["later"])
    return results


def table(results: dict[str, Costs]) -> str:
    base = statistics.mean(results["normal"].cpu)
    rows = ["| messages | count | refused | CPU ms / msg (mean) | CPU ms (max) "
            "| wall ms / msg (mean) | worst CPU / normal mean |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    for name, costs in results.items():
        rows.append(f"| {name} | {len(costs.cpu)} | {costs.refused} "
                    f"| {1e3 * statistics.mean(costs.cpu):.2f} | {1e3 * max(costs.cpu):.2f} "
                    f"| {1e3 * statistics.mean(costs.wall):.2f} "
                    f"| {max(costs.cpu) / base:.1f}x |")
    attack = results["attack, all"]
    rows.append("")
    jumps = next(costs for name, costs in results.items() if name.startswith("jump"))
    rows.append(f"Under the attack: mean {statistics.mean(attack.cpu) / base:.2f}x, worst "
                f"single message {max(attack.cpu) / base:.1f}x the normal CPU per message "
                f"(target: within 3x); the jumps {statistics.mean(jumps.cpu) / base:.2f}x "
                f"on average; the noise: the worst normal message "
                f"{max(results['normal'].cpu) / base:.1f}x.")
    return "\n".join(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--normal", type=int, default=300, help="honest messages (baseline)")
    parser.add_argument("--held", type=int, default=20,
                        help="messages held back before each jump")
    parser.add_argument("--later", type=int, default=20, help="attacker messages afterwards")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    args = parser.parse_args()
    if args.quick:
        args.normal, args.held, args.later = 40, 4, 4
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        results = run(Path(tmp), args.normal, args.held, args.later)
    print(table(results))


if __name__ == "__main__":
    main()
