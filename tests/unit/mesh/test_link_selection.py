"""The ConnectionManager's pure choices: which peers to dial, which links to prune,
how long to back off."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.connections import backoff_delay, plan_dials, plan_prunes

T1, T2, T3 = b"1" * 16, b"2" * 16, b"3" * 16


def ids(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i:0{15 - len(prefix)}d}" for i in range(n)]


def test_small_topic_dials_every_dialable_member():
    members = ids("1", 12)  # 13 with ourselves: still a full mesh
    got = plan_dials({T1: members}, connected={members[0]}, pending={members[1]},
                     dialable=set(members[:-1]), rng=random.Random(1))
    assert got == members[2:-1]


def test_big_topic_is_topped_up_to_d_only_below_d_lo():
    members = ids("2", 13)  # 14 with ourselves: bounded
    rng = random.Random(1)
    assert len(plan_dials({T1: members}, connected=(), pending=(), dialable=members,
                          rng=rng)) == 6
    got = plan_dials({T1: members}, connected=members[:2], pending=members[2:3],
                     dialable=members, rng=rng)
    assert len(got) == 3 and not set(got) & set(members[:3])
    assert plan_dials({T1: members}, connected=members[:4], pending=(), dialable=members,
                      rng=rng) == []


def test_peers_sharing_topics_are_preferred():
    shared = ids("9", 5)
    t1 = shared + ids("3", 25)
    t2 = shared + ids("4", 25)
    got = plan_dials({T1: t1, T2: t2}, connected=(), pending=(), dialable=t1 + t2,
                     rng=random.Random(3))
    assert set(shared) <= set(got)
    assert len(got) == 6  # one dial set covers both topics


def test_prune_brings_a_crowded_topic_back_to_d_without_hurting_others():
    big = ids("5", 30)
    small = [big[0], big[1]]  # a small group shares two of the peers
    other = big[2:6] + ids("6", 20)  # a big topic that has only 4 links: keep them
    pruned = plan_prunes({T1: big, T2: small, T3: other}, connected=big[:16],
                         rng=random.Random(5))
    assert len(pruned) == 10  # 16 -> 6
    assert not set(pruned) & set(big[:6])


def test_backoff_is_full_jitter_with_a_cap():
    rng = random.Random(9)
    assert backoff_delay(0, rng) == 0.0
    for n in range(1, 80):
        assert 0.0 <= backoff_delay(n, rng, base=1.0, cap=60.0) <= min(60.0, 2 ** (n - 1))
    samples = [backoff_delay(3, rng, base=1.0, cap=60.0) for _ in range(2000)]
    assert 1.8 < sum(samples) / len(samples) < 2.2  # uniform on [0, 4)


peer_ids = st.sampled_from(ids("7", 30))
topic_sets = st.dictionaries(st.sampled_from([T1, T2, T3]),
                             st.lists(peer_ids, max_size=30, unique=True), max_size=3)


@settings(max_examples=300)
@given(topic_sets, st.sets(peer_ids), st.sets(peer_ids), st.sets(peer_ids),
       st.integers(0, 2**32))
def test_plans_respect_their_invariants(topics, connected, pending, dialable, seed):
    rng = random.Random(seed)
    dials = plan_dials(topics, connected=connected, pending=pending, dialable=dialable,
                       d_lo=2, d=3, full_mesh_max=5, rng=rng)
    assert set(dials) <= dialable - connected - pending
    assert set(dials) <= {p for m in topics.values() for p in m}
    prunes = plan_prunes(topics, connected=connected, d_lo=2, d=3, d_hi=4,
                         full_mesh_max=5, rng=rng)
    assert set(prunes) <= connected
    after = connected - set(prunes)
    for members in topics.values():
        before_n, after_n = len(set(members) & connected), len(set(members) & after)
        if len(members) + 1 <= 5:
            assert after_n == before_n  # small groups keep every link
        else:
            assert after_n >= min(before_n, 2)  # never pushed below d_lo
