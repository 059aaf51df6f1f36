"""The simulator at scale: the real engines on 1,000 nodes with loss and churn.

Bounds (docs/protocol.md §6, "Simulated behaviour"). With 1% frame loss and
20% of the nodes crashing and restarting while 20 active members send 60 messages:
every node up at the end holds every message, delivered exactly once per engine and in
per-origin order; the median node gets no duplicate and nobody more than d_hi (12); an
author's first message costs at most 3.5 copies per node (fanout_new = 3 seeds its
tree), later ones at most 1.3 (1.000x without loss or churn, see the second test);
first copies travel at most 10 hops at the median and 30 at worst.
"""

from __future__ import annotations

from mesh.gossip_state import Params
from mesh.sim import run_scenario


def test_thousand_nodes_with_loss_and_churn_all_converge() -> None:
    r = run_scenario(nodes=1000, messages=60, senders=20, loss=0.01, churn=0.2, seed=1)
    assert (r.nodes, r.messages, r.alive) == (1000, 60, 1000)
    assert r.missing == 0
    assert r.exactly_once and r.order_ok
    assert r.dup_median == 0 and r.dup_repeat_median == 0
    assert r.dup_max <= Params().d_hi
    assert r.copies_first <= 3.5
    assert r.copies_repeat <= 1.3
    assert r.hops_median <= 10 and r.hops_max <= 30
    assert r.frames["lost"] > 0  # loss really happened


def test_without_loss_or_churn_every_later_message_is_one_copy_per_node() -> None:
    # A parent swap (a digest far ahead of the eager copy) can cross one push already
    # in flight: at most one extra copy, rarely.
    r = run_scenario(nodes=300, messages=40, senders=8, loss=0.0, churn=0.0, seed=2)
    assert r.missing == 0 and r.exactly_once and r.order_ok
    assert r.copies_repeat <= 1.005 and r.dup_repeat_max <= 1


def test_runs_are_deterministic() -> None:
    one = run_scenario(nodes=60, messages=10, seed=5)
    two = run_scenario(nodes=60, messages=10, seed=5)
    assert one == two
    assert one.missing == 0
