"""The simulator at scale: the real engines on 1,000 nodes with loss and churn.

Bounds (docs/parts/gossip-protocol.md, "Simulated behaviour"): with 1% frame loss and
20% of the nodes crashing and restarting while 50 messages go out, every node up at the
end holds every message, delivered exactly once and in per-origin order; the median
node gets no duplicate of a message, the 99th percentile at most 8 and nobody more
than d_hi (an all-eager mesh before the first PRUNEs is the worst case: one copy per
mesh edge); on average at most 1.5 full copies per node and message; the eager tree's
median depth at most 25 hops and its deepest branch at most 80.
"""

from __future__ import annotations

from mesh.gossip_state import Params
from mesh.sim import run_scenario


def test_thousand_nodes_with_loss_and_churn_all_converge() -> None:
    r = run_scenario(nodes=1000, messages=50, loss=0.01, churn=0.2, seed=1)
    assert (r.nodes, r.messages, r.alive) == (1000, 50, 1000)
    assert r.missing == 0
    assert r.exactly_once and r.order_ok
    assert r.duplicates_median == 0
    assert r.duplicates_p99 <= 8
    assert r.duplicates_max <= Params().d_hi
    assert r.copies_mean <= 1.5
    assert r.hops_median <= 25 and r.hops_max <= 80
    assert r.frames["lost"] > 0  # loss really happened


def test_runs_are_deterministic() -> None:
    one = run_scenario(nodes=60, messages=10, seed=5)
    two = run_scenario(nodes=60, messages=10, seed=5)
    assert one == two
    assert one.missing == 0
