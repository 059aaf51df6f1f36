"""The ordering value of chat messages: a bounded hybrid logical clock (sans-IO).

Every conversation keeps one clock value. A message we send gets
``max(wall clock in ms, last value + 1)``; a message we receive raises the clock to its
value, but never further than ``MAX_AHEAD_MS`` past our own wall clock. So a new
member's first message sorts after what it saw (as a Lamport clock would) and after
everything older by the wall clock (which a Lamport clock would not: its counter starts
low), and no peer can push the clock far into the future: a hostile value of 2^63-1 once
overflowed the counter and poisoned the conversation (issue 15, finding 1).

Display order is ``(value, sender, seq)``. Values are integers in ``0..MAX_ORDER``
(2^53 - 1: exact in JSON and JavaScript); see docs/protocol.md, "Contents".
"""

from __future__ import annotations

from groups.errors import Unsendable

__all__ = ["MAX_AHEAD_MS", "MAX_ORDER", "observe", "receive_value", "tick"]

MAX_ORDER = 2**53 - 1
MAX_AHEAD_MS = 5 * 60 * 1000


def _wall(now: float) -> int:
    return min(max(int(now * 1000), 0), MAX_ORDER)


def tick(last: int, now: float) -> int:
    """The value of a message we send at ``now`` after a clock at ``last``.

    The clock refuses rather than overflows; with receive values bounded by the wall
    clock it cannot get there short of 2^53 sends in a conversation."""
    value = max(_wall(now), last + 1)
    if value > MAX_ORDER:
        raise Unsendable("this conversation's clock is exhausted", "clock_exhausted")
    return value


def receive_value(remote: int, now: float) -> int:
    """The value a received message is stored (and sorted) with: its own, unless it
    claims to be from further ahead than MAX_AHEAD_MS, then the bound."""
    return min(remote, _wall(now) + MAX_AHEAD_MS, MAX_ORDER)


def observe(last: int, remote: int, now: float) -> int:
    """The clock after receiving a message with value ``remote``."""
    return max(last, receive_value(remote, now))
