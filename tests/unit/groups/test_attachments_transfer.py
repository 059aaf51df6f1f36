"""The sans-IO download scheduler (groups/transfer.py) with a fake clock and an
in-memory swarm: who is asked for what, bad and late answers, timeouts, resume."""

from __future__ import annotations

import hashlib
import itertools
import os
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from groups.crypto import ATTACHMENT_CHUNK_SIZE, attachment_chunk_count
from groups.transfer import (
    ChunkState,
    Request,
    Transfers,
    Verdict,
    chunk_order,
    cipher_length,
    plain_length,
)

FILE = bytes(range(32))
ORIGIN = "100000000000000"


def fake_file(size: int) -> tuple[list[bytes], tuple[bytes, ...]]:
    """Stand-in encrypted chunks of the right lengths and their hashes."""
    chunks = [os.urandom(cipher_length(size, i)) for i in range(attachment_chunk_count(size))]
    return chunks, tuple(hashlib.sha256(c).digest() for c in chunks)


@dataclass
class Swarm:
    """Receivers with a Transfers core each, the origin holding everything, and a
    network that answers requests from what each node holds, in rounds."""

    size: int
    receivers: list[str]
    liars: set[str] = field(default_factory=set)
    now: float = 0.0

    def __post_init__(self) -> None:
        self.chunks, self.hashes = fake_file(self.size)
        self.count = len(self.chunks)
        self.cores = {r: Transfers(r) for r in self.receivers}
        self.held: dict[str, set[int]] = {r: set() for r in self.receivers}
        self.held[ORIGIN] = set(range(self.count))
        for liar in self.liars:
            self.held[liar] = set(range(self.count))
        self.served: dict[tuple[str, str], int] = {}
        for core in self.cores.values():
            core.add(FILE, ORIGIN, self.size, self.hashes)
            core.set_sources(FILE, [ORIGIN, *self.receivers, *self.liars])

    def round(self) -> None:
        """Everyone asks; every request is answered (1 ms later on the fake clock)."""
        requests = [(r, q) for r, core in self.cores.items() for q in core.poll(self.now)]
        self.now += 0.001
        for asker, q in requests:
            core = self.cores[asker]
            if q.index not in self.held[q.peer]:
                core.unavailable(q.peer, FILE, q.index, self.now)
                continue
            data = os.urandom(len(self.chunks[q.index])) if q.peer in self.liars \
                else self.chunks[q.index]
            verdict = core.receive(q.peer, FILE, q.index, data, self.now)
            if verdict is Verdict.ACCEPT:
                self.served[(asker, q.peer)] = self.served.get((asker, q.peer), 0) + 1
                core.stored(FILE, q.index)
                self.held[asker].add(q.index)
        for core in self.cores.values():
            due = core.next_timer()
            if due is not None and due <= self.now:
                core.handle_timer(self.now)

    def run(self, rounds: int = 10_000) -> None:
        for _ in range(rounds):
            if all(c.complete(FILE) for c in self.cores.values()):
                return
            self.round()
            due = [c.next_timer() for c in self.cores.values() if c.next_timer() is not None]
            if due and not any(c._load[p] for c in self.cores.values() for p in c._load):
                self.now = max(self.now, min(due))  # nothing in flight: skip ahead
        raise AssertionError("the swarm did not finish")


def test_a_swarm_finishes_and_receivers_serve_each_other() -> None:
    swarm = Swarm(25 * 1024 * 1024, ["200000000000000", "300000000000000", "400000000000000"])
    swarm.run()
    for r, core in swarm.cores.items():
        assert swarm.held[r] == set(range(100))
        assert core.bytes_done(FILE) == 25 * 1024 * 1024
        stats = core.stats(FILE)
        assert stats["fetched_chunks"] == 100 and sum(stats["sources"].values()) == 100
    from_peers = sum(n for (_, peer), n in swarm.served.items() if peer != ORIGIN)
    assert from_peers > 0, swarm.served
    assert sum(n for (_, p), n in swarm.served.items() if p == ORIGIN) < 300


def test_windows_are_respected() -> None:
    core = Transfers("200000000000000", window=3, probe_window=1)
    _, hashes = fake_file(10 * ATTACHMENT_CHUNK_SIZE)
    core.add(FILE, ORIGIN, 10 * ATTACHMENT_CHUNK_SIZE, hashes)
    core.set_sources(FILE, [ORIGIN, "300000000000000", "200000000000000"])
    requests = core.poll(0.0)
    per_peer: dict[str, int] = {}
    for q in requests:
        per_peer[q.peer] = per_peer.get(q.peer, 0) + 1
    # The origin gets a full window, an unproven peer one probe; never ourselves.
    assert per_peer == {ORIGIN: 3, "300000000000000": 1}
    assert len({q.index for q in requests}) == 4
    assert core.poll(0.0) == []  # nothing more until answers come
    # The origin is asked in our order, the other peer in its own.
    mine = chunk_order(FILE, "200000000000000", 10)
    assert [q.index for q in requests if q.peer == ORIGIN] == mine[:3]
    theirs = chunk_order(FILE, "300000000000000", 10)
    assert [q.index for q in requests if q.peer != ORIGIN] == \
        [next(i for i in theirs if i not in mine[:3])]


def test_a_busy_peer_is_topped_up_in_batches() -> None:
    me = "200000000000000"
    core = Transfers(me, window=8, batch=4)
    chunks, hashes = fake_file(40 * ATTACHMENT_CHUNK_SIZE)
    core.add(FILE, ORIGIN, 40 * ATTACHMENT_CHUNK_SIZE, hashes)
    core.set_sources(FILE, [ORIGIN])
    first = core.poll(0.0)
    assert [q.index for q in first] == chunk_order(FILE, me, 40)[:8]
    for n, q in enumerate(first[:4]):
        assert core.receive(ORIGIN, FILE, q.index, chunks[q.index], 0.1) is Verdict.ACCEPT
        core.stored(FILE, q.index)
        # Fewer than `batch` free slots: wait, so the next request carries several.
        assert core.poll(0.1) == [] if n < 3 else len(core.poll(0.1)) == 4
    # A peer with nothing in flight is asked at once, even for a single chunk.
    solo = Transfers(me, window=8)  # batch: half the window
    _, one = fake_file(ATTACHMENT_CHUNK_SIZE)
    solo.add(FILE, ORIGIN, ATTACHMENT_CHUNK_SIZE, one)
    solo.set_sources(FILE, [ORIGIN])
    assert solo.poll(0.0) == [Request(ORIGIN, FILE, 0)]
    with pytest.raises(ValueError):
        Transfers(me, window=4, batch=5)


def test_orders_are_rotations_that_differ_by_node() -> None:
    orders = {n: chunk_order(FILE, n, 100) for n in ("1", "2", "3", "4")}
    for order in orders.values():
        assert sorted(order) == list(range(100))
        assert all((b - a) % 100 == 1 for a, b in itertools.pairwise(order))
    assert len({o[0] for o in orders.values()}) > 1


def test_a_lying_peer_is_avoided_and_the_chunk_fetched_elsewhere() -> None:
    liar = "900000000000000"
    swarm = Swarm(9 * ATTACHMENT_CHUNK_SIZE + 5, ["200000000000000"], liars={liar})
    swarm.run()
    stats = swarm.cores["200000000000000"].stats(FILE)
    assert stats["bad_chunks"] == {liar: 1} and stats["avoided"] == [liar]
    assert stats["sources"] == {ORIGIN: 10}


def test_wrong_length_is_bad_too_and_frees_every_request_to_that_peer() -> None:
    core = Transfers("200000000000000", window=4)
    chunks, hashes = fake_file(5 * ATTACHMENT_CHUNK_SIZE)
    core.add(FILE, ORIGIN, 5 * ATTACHMENT_CHUNK_SIZE, hashes)
    core.set_sources(FILE, [ORIGIN])
    first, *others = core.poll(0.0)
    assert len(others) == 3
    assert core.receive(ORIGIN, FILE, first.index, chunks[first.index][:-1], 0.1) is Verdict.BAD
    # Its other requests were given back: late answers are unsolicited now.
    q = others[0]
    assert core.receive(ORIGIN, FILE, q.index, chunks[q.index], 0.2) is Verdict.UNSOLICITED
    assert core.poll(0.3) == [] and not core.complete(FILE)  # the only source is avoided


def test_unsolicited_answers() -> None:
    core = Transfers("200000000000000")
    chunks, hashes = fake_file(2 * ATTACHMENT_CHUNK_SIZE)
    core.add(FILE, ORIGIN, 2 * ATTACHMENT_CHUNK_SIZE, hashes)
    core.set_sources(FILE, [ORIGIN, "300000000000000"])
    asked = {q.index: q.peer for q in core.poll(0.0)}
    index = next(i for i, p in asked.items() if p == ORIGIN)
    for peer, fid, idx in (("300000000000000", FILE, index),   # asked of someone else
                           (ORIGIN, bytes(32), index),          # unknown file
                           (ORIGIN, FILE, 2), (ORIGIN, FILE, -1)):  # out of range
        assert core.receive(peer, fid, idx, chunks[index], 0.1) is Verdict.UNSOLICITED
        assert core.unavailable(peer, fid, idx, 0.1) is False
    assert core.receive(ORIGIN, FILE, index, chunks[index], 0.1) is Verdict.ACCEPT
    assert core.receive(ORIGIN, FILE, index, chunks[index], 0.1) is Verdict.UNSOLICITED
    assert core.stats(FILE)["held"] == 0  # accepted is not held until stored
    assert not core.stored(FILE, index)
    assert core.holds(FILE, index) and core.bytes_done(FILE) == ATTACHMENT_CHUNK_SIZE


def test_unavailable_rests_the_peer_from_that_position_on() -> None:
    peer = "300000000000000"
    core = Transfers("200000000000000", retry=0.5)
    _, hashes = fake_file(8 * ATTACHMENT_CHUNK_SIZE)
    core.add(FILE, ORIGIN, 8 * ATTACHMENT_CHUNK_SIZE, hashes)
    core.set_sources(FILE, [peer])
    (probe,) = core.poll(0.0)
    order = chunk_order(FILE, peer, 8)
    assert probe.index == order[0]
    assert core.unavailable(peer, FILE, probe.index, 0.1)
    assert core.poll(0.2) == []          # resting: positions >= 0 of its order
    assert core.next_timer() == pytest.approx(0.6)
    core.handle_timer(0.6)
    assert core.poll(0.6) == [Request(peer, FILE, order[0])]


def test_timeouts_give_requests_back_and_rest_the_peer() -> None:
    core = Transfers("200000000000000", timeout=5.0)
    chunks, hashes = fake_file(ATTACHMENT_CHUNK_SIZE)
    core.add(FILE, ORIGIN, ATTACHMENT_CHUNK_SIZE, hashes)
    core.set_sources(FILE, [ORIGIN])
    assert core.poll(0.0) == [Request(ORIGIN, FILE, 0)]
    assert core.next_timer() == 5.0
    core.handle_timer(4.9)
    assert core.stats(FILE)["in_flight"] == 1
    core.handle_timer(5.0)
    assert core.stats(FILE)["in_flight"] == 0
    assert core.receive(ORIGIN, FILE, 0, chunks[0], 5.1) is Verdict.UNSOLICITED  # too late
    assert core.poll(5.1) == []                    # resting for `timeout`
    core.handle_timer(10.0)
    assert core.poll(10.0) == [Request(ORIGIN, FILE, 0)]


def test_a_slow_peer_that_keeps_answering_is_not_timed_out() -> None:
    """Eight chunks queued on a link that moves one every 6 s: the last waits 48 s,
    but its peer is plainly working, so nothing is given back."""
    core = Transfers("200000000000000", window=8, timeout=10.0)
    chunks, hashes = fake_file(8 * ATTACHMENT_CHUNK_SIZE)
    core.add(FILE, ORIGIN, 8 * ATTACHMENT_CHUNK_SIZE, hashes)
    core.set_sources(FILE, [ORIGIN])
    asked = core.poll(0.0)
    assert len(asked) == 8
    for n, q in enumerate(asked, start=1):
        now = 6.0 * n
        core.handle_timer(now)
        assert core.receive(ORIGIN, FILE, q.index, chunks[q.index], now) is Verdict.ACCEPT
        core.stored(FILE, q.index)
    assert core.complete(FILE)
    assert core.stats(FILE)["fetched_chunks"] == 8


def test_lost_sources_give_their_requests_back() -> None:
    core = Transfers("200000000000000")
    _, hashes = fake_file(4 * ATTACHMENT_CHUNK_SIZE)
    core.add(FILE, ORIGIN, 4 * ATTACHMENT_CHUNK_SIZE, hashes)
    core.set_sources(FILE, [ORIGIN])
    assert len(core.poll(0.0)) == 4
    core.set_sources(FILE, ["300000000000000"])
    assert core.stats(FILE)["in_flight"] == 0
    assert [q.peer for q in core.poll(0.1)] == ["300000000000000"]


def test_a_renewed_link_gives_its_requests_back_at_once() -> None:
    core = Transfers("200000000000000", timeout=10.0)
    _, hashes = fake_file(4 * ATTACHMENT_CHUNK_SIZE)
    core.add(FILE, ORIGIN, 4 * ATTACHMENT_CHUNK_SIZE, hashes)
    core.set_sources(FILE, [ORIGIN])
    first = core.poll(0.0)
    assert len(first) == 4
    core.link_renewed(ORIGIN)  # the link flapped: those requests died with it
    assert core.stats(FILE)["in_flight"] == 0
    assert sorted(q.index for q in core.poll(0.2)) == sorted(q.index for q in first)


def test_resume_never_asks_for_what_is_held() -> None:
    core = Transfers("200000000000000")
    chunks, hashes = fake_file(6 * ATTACHMENT_CHUNK_SIZE)
    core.add(FILE, ORIGIN, 6 * ATTACHMENT_CHUNK_SIZE, hashes, held={0, 2, 4})
    core.add(FILE, ORIGIN, 6 * ATTACHMENT_CHUNK_SIZE, hashes)   # a second add is a no-op
    core.set_sources(FILE, [ORIGIN])
    asked = sorted(q.index for q in core.poll(0.0))
    assert asked == [1, 3, 5]
    for index in asked:
        assert core.receive(ORIGIN, FILE, index, chunks[index], 0.1) is Verdict.ACCEPT
    assert not core.stored(FILE, 1) and not core.stored(FILE, 3)
    core.store_failed(FILE, 5)                        # the disk said no: ask again
    assert [q.index for q in core.poll(0.2)] == [5]
    assert core.receive(ORIGIN, FILE, 5, chunks[5], 0.3) is Verdict.ACCEPT
    assert core.stored(FILE, 5)
    stats = core.stats(FILE)
    assert stats["resumed_chunks"] == 3 and stats["fetched_chunks"] == 4
    core.remove(FILE)
    assert FILE not in core and core.files() == [] and core._load[ORIGIN] == 0


def test_bad_arguments() -> None:
    core = Transfers("200000000000000")
    with pytest.raises(ValueError):
        core.add(FILE, ORIGIN, ATTACHMENT_CHUNK_SIZE + 1, (bytes(32),))
    with pytest.raises(ValueError):
        Transfers("x", window=1, probe_window=2)
    assert plain_length(ATTACHMENT_CHUNK_SIZE + 1, 1) == 1
    assert cipher_length(ATTACHMENT_CHUNK_SIZE + 1, 0) == ATTACHMENT_CHUNK_SIZE + 16


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["recv", "bad", "unav", "timer", "drop", "late"]),
                          st.integers(0, 20)), max_size=60))
def test_invariants_under_any_sequence(steps) -> None:
    """Whatever happens, in-flight bookkeeping stays consistent and windows hold."""
    peers = [ORIGIN, "300000000000000", "400000000000000"]
    core = Transfers("200000000000000", window=3, timeout=1.0, retry=0.1)
    size = 7 * ATTACHMENT_CHUNK_SIZE + 9
    chunks, hashes = fake_file(size)
    core.add(FILE, ORIGIN, size, hashes)
    core.set_sources(FILE, peers)
    now, sent = 0.0, []
    for action, n in steps:
        now += 0.05
        sent += core.poll(now)
        if action == "timer":
            core.handle_timer(now + n / 10)
        elif action == "drop":
            core.set_sources(FILE, peers[: 1 + n % 3])
        elif sent:
            q = sent.pop(n % len(sent))
            if action == "unav":
                core.unavailable(q.peer, FILE, q.index, now)
            else:
                data = chunks[q.index] if action != "bad" else os.urandom(len(chunks[q.index]))
                if action == "late":
                    now += 2.0
                    core.handle_timer(now)
                if core.receive(q.peer, FILE, q.index, data, now) is Verdict.ACCEPT:
                    core.stored(FILE, q.index)
        dl = core._downloads[FILE]
        assert sum(dl.per_peer.values()) == len(dl.inflight)
        assert all(core._load[p] == dl.per_peer[p] <= 3 for p in peers)
        assert all(dl.state[i] == ChunkState.REQUESTED for i in dl.inflight)
        assert dl.state.count(ChunkState.REQUESTED) == len(dl.inflight)
