"""Shared helpers for link tests: identities with records, a pump between two sans-IO
links, and a recorder of what a LinkConnection reports.

Not tests themselves; imported by the unit and integration link tests.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from mesh.identity import LAST_RESORT_PREKEY_ID, KeyPair, PreKey, Record, SignedPreKey
from mesh.link import Closed, Event, Link
from mesh.transport import LinkConnection

__all__ = ["Node", "Recorder", "forged_record", "make_node", "pump"]


@dataclass(frozen=True)
class Node:
    identity: KeyPair
    record: Record

    @property
    def user_id(self) -> str:
        return self.record.user_id


def make_node(endpoints: tuple[str, ...] = (), now: float = 1_700_000_000) -> Node:
    identity = KeyPair.generate()
    spk = KeyPair.generate()
    record = Record.create(
        identity,
        signed_prekey=SignedPreKey(1, spk.public, identity.sign(spk.public)),
        last_resort_prekey=PreKey(LAST_RESORT_PREKEY_ID, KeyPair.generate().public),
        endpoints=endpoints, seq=1, now=now)
    return Node(identity, record)


def forged_record(claimed_id: str, signer: KeyPair, like: Record) -> Record:
    """A record claiming ``claimed_id`` but carrying (and signed by) ``signer``'s key."""
    unsigned = replace(like, user_id=claimed_id, identity_key=signer.public, signature=b"")
    return replace(unsigned, signature=signer.sign(unsigned.signing_bytes()))


Tamper = Callable[[str, int, bytes], list[bytes]]


def pump(a: Link, b: Link, now: float, tamper: Tamper | None = None,
         log: list[tuple[str, bytes]] | None = None) -> tuple[list[Event], list[Event]]:
    """Shuttle messages between two links until neither has anything to send.

    ``tamper(direction, index, message)`` ("a>b" or "b>a", index counted per direction)
    returns what is actually delivered, which lets tests drop, replay, reorder or
    rewrite messages like an active attacker. Returns the events each side produced.
    """
    ev_a: list[Event] = []
    ev_b: list[Event] = []
    counts = {"a>b": 0, "b>a": 0}
    for _ in range(1000):
        moved = False
        for src, dst, key in ((a, b, "a>b"), (b, a, "b>a")):
            for msg in src.data_to_send():
                moved = True
                if log is not None:
                    log.append((key, msg))
                out = tamper(key, counts[key], msg) if tamper else [msg]
                counts[key] += 1
                for m in out:
                    dst.receive_data(m, now)
        ev_a += a.events()
        ev_b += b.events()
        if not moved:
            return ev_a, ev_b
    raise AssertionError("links did not go quiet")


def closed(events: list[Event]) -> Closed:
    found = [e for e in events if isinstance(e, Closed)]
    assert len(found) == 1, events
    return found[0]


class Recorder:
    """Callbacks that record what a LinkConnection reports, with awaitable helpers."""

    def __init__(self) -> None:
        self.established: list[LinkConnection] = []
        self.frames: list[tuple[LinkConnection, Any]] = []
        self.closed: list[tuple[LinkConnection, Any]] = []
        self._changed = asyncio.Event()

    def kwargs(self) -> dict[str, Any]:
        return {"on_established": self.on_established, "on_frame": self.on_frame,
                "on_closed": self.on_closed}

    def on_established(self, conn: LinkConnection) -> None:
        self.established.append(conn)
        self._changed.set()

    def on_frame(self, conn: LinkConnection, frame: Any) -> None:
        self.frames.append((conn, frame))
        self._changed.set()

    def on_closed(self, conn: LinkConnection, event: Any) -> None:
        self.closed.append((conn, event))
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()
