"""The attachment download scheduler, sans-IO: which chunk to ask which peer for.

A receiver knows a file from its announcement (file id, size, the SHA-256 of every
encrypted chunk, who sent it) and learns nothing else about who holds what: there are
no "have" messages. It asks instead, and orders its questions so that they tend to
hit:

- every node fetches a file in its own **order**, a rotation of 0..count-1 starting at
  ``offset(node) = SHA-256("parley/chunk-order/v1" || file_id || node id) mod count``.
  The origin (the sender, who holds everything) is asked in *our* order; any other
  member is asked in *its* order, i.e. for the chunks it most likely fetched first.
  Members that start at different offsets hold different chunks early, so they can
  serve each other while the origin serves everyone;
- a peer that answers "unavailable" for the chunk at position p of its order is not
  asked for positions >= p until ``retry`` seconds have passed (it is still fetching);
- the origin, and a peer that already delivered a good chunk of the file, get up to
  ``window`` requests in flight; a peer not yet proven gets one probe at a time;
  ``window`` is also the cap per peer across all files. A peer that still has
  requests in flight is topped up only once ``batch`` (half the window) of its slots
  are free, so the adapter can ask for several chunks in one frame;
- a chunk whose length or hash is wrong marks its peer **bad** for that file: it is
  never asked again for it, and the chunk goes back to missing (another peer serves
  it). A request is given back, and the peer rests, once ``timeout`` passed both
  since it was sent and since that peer last answered anything: a peer on a slow
  link that is working through a full window is not taken for a silent one.

The adapter (groups/attachments.py) feeds it sources (linked members of the file's
conversation), frames and time, sends the Requests that ``poll`` returns, writes
ACCEPTed chunks to disk and then calls ``stored``. Time only comes in as ``now``.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum, IntEnum

from groups.crypto import ATTACHMENT_CHUNK_SIZE, attachment_chunk_count

__all__ = ["TAG_LEN", "ChunkState", "Request", "Transfers", "Verdict", "chunk_order",
           "cipher_length", "plain_length"]

TAG_LEN = 16  # AES-GCM tag on every encrypted chunk
WINDOW = 8
PROBE_WINDOW = 1
TIMEOUT = 10.0
RETRY = 0.05


class ChunkState(IntEnum):
    MISSING = 0
    REQUESTED = 1   # asked of exactly one peer
    STORING = 2     # verified, being written
    HELD = 3        # on disk, verified


class Verdict(Enum):
    ACCEPT = "accept"            # solicited and verified: store it, then call stored()
    BAD = "bad"                  # solicited but wrong: the peer is now avoided
    UNSOLICITED = "unsolicited"  # not asked of this peer (late, unknown file, bad index)


@dataclass(frozen=True)
class Request:
    peer: str
    file_id: bytes
    index: int


def plain_length(size: int, index: int) -> int:
    return min(ATTACHMENT_CHUNK_SIZE, size - index * ATTACHMENT_CHUNK_SIZE)


def cipher_length(size: int, index: int) -> int:
    return plain_length(size, index) + TAG_LEN


def chunk_order(file_id: bytes, node: str, count: int) -> list[int]:
    """The order in which ``node`` fetches the chunks of a file (see module docstring)."""
    digest = hashlib.sha256(b"parley/chunk-order/v1" + file_id + node.encode()).digest()
    offset = int.from_bytes(digest[:8], "big") % count
    return [(offset + k) % count for k in range(count)]


@dataclass
class _PeerView:
    """What we believe about one peer, for one file."""

    proven: bool = False
    bad: bool = False
    lacks_from: int | None = None   # position in the order we ask this peer in
    lacks_until: float = 0.0
    received: int = 0
    bad_chunks: int = 0
    unavailable: int = 0
    timeouts: int = 0


@dataclass
class _Download:
    file_id: bytes
    origin: str
    size: int
    hashes: tuple[bytes, ...]
    state: bytearray
    resumed: int
    inflight: dict[int, tuple[str, float]] = field(default_factory=dict)
    per_peer: Counter[str] = field(default_factory=Counter)
    views: dict[str, _PeerView] = field(default_factory=dict)
    sources: tuple[str, ...] = ()
    orders: dict[str, list[int]] = field(default_factory=dict)
    positions: dict[str, dict[int, int]] = field(default_factory=dict)
    # Per order: every position before it holds a chunk that is not MISSING, so a
    # pick starts there instead of at the head of the order.
    cursors: dict[str, int] = field(default_factory=dict)
    fetched: int = 0

    @property
    def count(self) -> int:
        return len(self.hashes)

    def order(self, node: str) -> list[int]:
        if node not in self.orders:
            self.orders[node] = chunk_order(self.file_id, node, self.count)
            self.positions[node] = {idx: pos for pos, idx in enumerate(self.orders[node])}
            self.cursors[node] = 0
        return self.orders[node]

    def set_missing(self, index: int) -> None:
        self.state[index] = ChunkState.MISSING
        for node, cursor in self.cursors.items():
            self.cursors[node] = min(cursor, self.positions[node][index])

    def held(self) -> int:
        return self.state.count(ChunkState.HELD)


class Transfers:
    """Downloads in progress for one node (``me``). Not thread-safe; one loop drives it."""

    def __init__(self, me: str, *, window: int = WINDOW, probe_window: int = PROBE_WINDOW,
                 batch: int | None = None, timeout: float = TIMEOUT,
                 retry: float = RETRY) -> None:
        if not 0 < probe_window <= window:
            raise ValueError("need 0 < probe_window <= window")
        batch = max(1, window // 2) if batch is None else batch
        if not 0 < batch <= window:
            raise ValueError("need 0 < batch <= window")
        self.me = me
        self.window, self.probe_window, self.batch = window, probe_window, batch
        self.timeout, self.retry = timeout, retry
        self._downloads: dict[bytes, _Download] = {}
        self._load: Counter[str] = Counter()   # requests in flight per peer, all files
        self._heard: dict[str, float] = {}     # when each peer last answered a request

    # -- files ------------------------------------------------------------------------

    def add(self, file_id: bytes, origin: str, size: int, hashes: Sequence[bytes],
            held: Iterable[int] = ()) -> None:
        """Start (or, after a restart, resume) fetching a file; ``held`` are the chunks
        already on disk and verified."""
        if file_id in self._downloads:
            return
        if len(hashes) != attachment_chunk_count(size) or size <= 0:
            raise ValueError("chunk hashes do not match the file size")
        state = bytearray(len(hashes))
        for index in held:
            state[index] = ChunkState.HELD
        self._downloads[file_id] = _Download(file_id, origin, size, tuple(hashes), state,
                                             resumed=state.count(ChunkState.HELD))

    def remove(self, file_id: bytes) -> None:
        dl = self._downloads.pop(file_id, None)
        if dl is not None:
            for peer, _ in dl.inflight.values():
                self._load[peer] -= 1

    def __contains__(self, file_id: bytes) -> bool:
        return file_id in self._downloads

    def files(self) -> list[bytes]:
        return list(self._downloads)

    def complete(self, file_id: bytes) -> bool:
        dl = self._downloads[file_id]
        return dl.held() == dl.count

    def holds(self, file_id: bytes, index: int) -> bool:
        dl = self._downloads[file_id]
        return 0 <= index < dl.count and dl.state[index] == ChunkState.HELD

    def bytes_done(self, file_id: bytes) -> int:
        dl = self._downloads[file_id]
        return sum(plain_length(dl.size, i) for i, s in enumerate(dl.state)
                   if s == ChunkState.HELD)

    def stats(self, file_id: bytes) -> dict[str, object]:
        """Where the chunks of this run came from (for the API and the tests)."""
        dl = self._downloads[file_id]
        return {"chunks": dl.count, "held": dl.held(), "resumed_chunks": dl.resumed,
                "fetched_chunks": dl.fetched, "in_flight": len(dl.inflight),
                "sources": {p: v.received for p, v in sorted(dl.views.items()) if v.received},
                "bad_chunks": {p: v.bad_chunks for p, v in sorted(dl.views.items())
                               if v.bad_chunks},
                "avoided": sorted(p for p, v in dl.views.items() if v.bad)}

    def set_sources(self, file_id: bytes, peers: Iterable[str]) -> None:
        """The peers we may ask for this file now (linked members of its conversation).
        Requests in flight to a peer that is no longer one are given back."""
        dl = self._downloads.get(file_id)
        if dl is None:
            return
        dl.sources = tuple(sorted(set(peers) - {self.me}))
        for index, (peer, _) in list(dl.inflight.items()):
            if peer not in dl.sources:
                self._release(dl, index, ChunkState.MISSING)

    def link_renewed(self, peer: str) -> None:
        """``peer`` has a new link: requests sent on the old one are lost with it, so
        they are given back now (not after ``timeout``) and asked again at once."""
        for dl in self._downloads.values():
            for index, (holder, _) in list(dl.inflight.items()):
                if holder == peer:
                    self._release(dl, index, ChunkState.MISSING)

    # -- asking -----------------------------------------------------------------------

    def poll(self, now: float) -> list[Request]:
        """Requests to send now, filling every source's window (see ``batch``); those
        for one peer and file come out next to each other."""
        out: list[Request] = []
        for dl in self._downloads.values():
            if dl.held() == dl.count:
                continue
            for peer in dl.sources:
                view = dl.views.setdefault(peer, _PeerView())
                if view.bad:
                    continue
                cap = self.window if (peer == dl.origin or view.proven) else self.probe_window
                free = min(self.window - self._load[peer], cap - dl.per_peer[peer])
                if free <= 0 or (self._load[peer] and free < min(self.batch, cap)):
                    continue
                while self._load[peer] < self.window and dl.per_peer[peer] < cap:
                    index = self._pick(dl, peer, view, now)
                    if index is None:
                        break
                    dl.state[index] = ChunkState.REQUESTED
                    dl.inflight[index] = (peer, now)
                    dl.per_peer[peer] += 1
                    self._load[peer] += 1
                    out.append(Request(peer, dl.file_id, index))
        return out

    def _asked_order(self, dl: _Download, peer: str) -> str:
        return self.me if peer == dl.origin else peer

    def _pick(self, dl: _Download, peer: str, view: _PeerView, now: float) -> int | None:
        owner = self._asked_order(dl, peer)
        order, state = dl.order(owner), dl.state
        pos = dl.cursors[owner]
        while pos < len(order) and state[order[pos]] != ChunkState.MISSING:
            pos += 1
        dl.cursors[owner] = pos
        limit = view.lacks_from if view.lacks_until > now else None
        if pos == len(order) or (limit is not None and pos >= limit):
            return None
        return order[pos]

    # -- answers ------------------------------------------------------------------------

    def receive(self, peer: str, file_id: bytes, index: int, data: bytes,
                now: float) -> Verdict:
        """A Chunk frame from ``peer``: check it was asked of that peer, then its length
        and hash. ACCEPT moves the chunk to STORING."""
        dl = self._downloads.get(file_id)
        if dl is None or not 0 <= index < dl.count or dl.inflight.get(index, ("",))[0] != peer:
            return Verdict.UNSOLICITED
        view = dl.views.setdefault(peer, _PeerView())
        if len(data) != cipher_length(dl.size, index) or \
                hashlib.sha256(data).digest() != dl.hashes[index]:
            view.bad, view.bad_chunks = True, view.bad_chunks + 1
            for other, (asked, _) in list(dl.inflight.items()):
                if asked == peer:
                    self._release(dl, other, ChunkState.MISSING)
            return Verdict.BAD
        self._release(dl, index, ChunkState.STORING)
        self._heard[peer] = now
        view.proven = True
        view.received += 1
        dl.fetched += 1
        return Verdict.ACCEPT

    def unavailable(self, peer: str, file_id: bytes, index: int, now: float) -> bool:
        """A ChunkUnavailable from ``peer``; False if we had not asked it that."""
        dl = self._downloads.get(file_id)
        if dl is None or dl.inflight.get(index, ("",))[0] != peer:
            return False
        self._release(dl, index, ChunkState.MISSING)
        self._heard[peer] = now
        view = dl.views.setdefault(peer, _PeerView())
        view.unavailable += 1
        dl.order(self._asked_order(dl, peer))
        pos = dl.positions[self._asked_order(dl, peer)][index]
        view.lacks_from = pos if view.lacks_until <= now or view.lacks_from is None \
            else min(pos, view.lacks_from)
        view.lacks_until = now + self.retry
        return True

    def stored(self, file_id: bytes, index: int) -> bool:
        """The chunk is on disk; True when that completed the file."""
        dl = self._downloads.get(file_id)
        if dl is None:
            return False
        dl.state[index] = ChunkState.HELD
        return dl.held() == dl.count

    def store_failed(self, file_id: bytes, index: int) -> None:
        dl = self._downloads.get(file_id)
        if dl is not None and dl.state[index] == ChunkState.STORING:
            dl.set_missing(index)

    def _release(self, dl: _Download, index: int, to: ChunkState) -> None:
        peer, _ = dl.inflight.pop(index)
        dl.per_peer[peer] -= 1
        self._load[peer] -= 1
        if to is ChunkState.MISSING:
            dl.set_missing(index)
        else:
            dl.state[index] = to

    # -- time ---------------------------------------------------------------------------

    def _deadline(self, peer: str, asked_at: float) -> float:
        return max(asked_at, self._heard.get(peer, asked_at)) + self.timeout

    def next_timer(self) -> float | None:
        """When handle_timer should run next: a request's deadline or a rest's end."""
        times = [self._deadline(peer, at) for dl in self._downloads.values()
                 for peer, at in dl.inflight.values()]
        times += [v.lacks_until for dl in self._downloads.values() if dl.held() < dl.count
                  for v in dl.views.values() if v.lacks_until]
        return min(times, default=None)

    def handle_timer(self, now: float) -> None:
        """Give back requests that timed out (their peer rests); end rests that are over.
        Call poll() afterwards."""
        for dl in self._downloads.values():
            for index, (peer, at) in list(dl.inflight.items()):
                if self._deadline(peer, at) <= now:
                    self._release(dl, index, ChunkState.MISSING)
                    view = dl.views.setdefault(peer, _PeerView())
                    view.timeouts += 1
                    view.lacks_from, view.lacks_until = 0, now + self.timeout
            for view in dl.views.values():
                if view.lacks_until and view.lacks_until <= now:
                    view.lacks_from, view.lacks_until = None, 0.0
