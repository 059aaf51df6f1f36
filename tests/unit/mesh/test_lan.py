"""LAN discovery core: known peers recognise each other, strangers and garbage get nothing."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mesh.errors import AnnouncementError
from mesh.identity import KeyPair
from mesh.lan import EPOCH_SECONDS, MAX_TAGS, Announcement, LanCore, Match, pair_key

NOW = 1_800_000_000.0
ADDRS = ("192.168.7.2",)

alice, bob, carol, mallory = (KeyPair.generate() for _ in range(4))


@functools.cache
def uid(kp: KeyPair) -> str:
    return kp.user_id   # 5200 rounds of SHA-512: once per key


def peers(*pairs: KeyPair) -> dict[str, bytes]:
    return {uid(kp): kp.public for kp in pairs}


def announce(who: KeyPair, known: dict[str, bytes], now: float = NOW,
             port: int = 4242, addresses: tuple[str, ...] = ADDRS) -> Announcement:
    return LanCore(who).announcement(now, port, addresses, known)


def test_pair_key_is_the_same_from_both_sides_and_differs_per_pair() -> None:
    assert pair_key(alice, bob.public) == pair_key(bob, alice.public)
    assert pair_key(alice, bob.public) != pair_key(alice, carol.public)


def test_a_known_peer_is_recognised_with_its_addresses() -> None:
    ann = announce(alice, peers(bob, carol))
    assert LanCore(bob).match(ann, NOW, peers(alice, carol)) == [
        Match(uid(alice), ADDRS, 4242)]


def test_a_txt_round_trip_keeps_the_match() -> None:
    ann = announce(alice, peers(bob))
    parsed = Announcement.from_txt(ann.to_txt())
    assert parsed == ann
    assert LanCore(bob).match(parsed, NOW, peers(alice))[0].peer_id == uid(alice)


def test_strangers_and_the_announcer_itself_match_nothing() -> None:
    ann = announce(alice, peers(bob))
    # mallory knows alice's public key (and id) but shares no pair key with her.
    assert LanCore(mallory).match(ann, NOW, peers(alice, bob)) == []
    # carol knows alice, but alice did not announce carol.
    assert LanCore(carol).match(ann, NOW, peers(alice)) == []
    # alice hears her own announcement: the tags are directional.
    assert LanCore(alice).match(ann, NOW, peers(bob)) == []


def test_tags_rotate_per_epoch_and_old_ones_stop_matching() -> None:
    now, later = announce(alice, peers(bob)), announce(alice, peers(bob),
                                                       now=NOW + EPOCH_SECONDS)
    assert not set(now.tags) & set(later.tags)
    core = LanCore(bob)
    assert core.match(now, NOW + EPOCH_SECONDS, peers(alice))          # one epoch of slack
    assert core.match(now, NOW + 2 * EPOCH_SECONDS, peers(alice)) == []  # replay too late


def test_changed_addresses_or_port_break_the_tag() -> None:
    ann = announce(alice, peers(bob))
    core = LanCore(bob)
    moved = Announcement(ann.epoch, ann.port, ("192.168.7.66",), ann.tags)
    reported = Announcement(ann.epoch, 4243, ann.addresses, ann.tags)
    assert core.match(moved, NOW, peers(alice)) == []
    assert core.match(reported, NOW, peers(alice)) == []


def test_the_tag_count_is_padded_to_a_bucket() -> None:
    assert len(announce(alice, {}).tags) == 8
    assert len(announce(alice, peers(bob)).tags) == 8
    many = {uid(kp): kp.public for kp in (KeyPair.generate() for _ in range(9))}
    assert len(announce(alice, many).tags) == 16


def test_over_max_tags_a_moving_window_announces_everyone_in_turn() -> None:
    crowd = [KeyPair.generate() for _ in range(MAX_TAGS + 6)]
    known = {uid(kp): kp.public for kp in crowd}
    seen: set[str] = set()
    for epoch in range(3):
        ann = announce(alice, known, now=NOW + epoch * EPOCH_SECONDS)
        assert len(ann.tags) == MAX_TAGS
        for kp in crowd:
            if LanCore(kp).match(ann, NOW + epoch * EPOCH_SECONDS, peers(alice)):
                seen.add(uid(kp))
    assert seen == set(known)


def test_a_low_order_peer_key_is_skipped() -> None:
    zero = bytes([5]) + bytes(32)
    with pytest.raises(AnnouncementError):
        pair_key(alice, zero)
    ann = announce(alice, {"000000000000001": zero, **peers(bob)})
    assert LanCore(bob).match(ann, NOW, peers(alice))


@pytest.mark.parametrize("props", [
    {},
    {b"v": b"2", b"e": b"1", b"p": b"1", b"a": b"10.0.0.1", b"t0": b"x" * 8},
    {b"v": b"1", b"e": b"x", b"p": b"1", b"a": b"10.0.0.1", b"t0": b"x" * 8},
    {b"v": b"1", b"e": b"01", b"p": b"1", b"a": b"10.0.0.1", b"t0": b"x" * 8},
    {b"v": b"1", b"e": b"1", b"p": b"0", b"a": b"10.0.0.1", b"t0": b"x" * 8},
    {b"v": b"1", b"e": b"1", b"p": b"70000", b"a": b"10.0.0.1", b"t0": b"x" * 8},
    {b"v": b"1", b"e": b"1", b"p": b"1", b"a": None, b"t0": b"x" * 8},
    {b"v": b"1", b"e": b"1", b"p": b"1", b"a": b"127.0.0.1", b"t0": b"x" * 8},
    {b"v": b"1", b"e": b"1", b"p": b"1", b"a": b"224.0.0.251", b"t0": b"x" * 8},
    {b"v": b"1", b"e": b"1", b"p": b"1", b"a": b"0.0.0.0", b"t0": b"x" * 8},
    {b"v": b"1", b"e": b"1", b"p": b"1", b"a": b"example.org", b"t0": b"x" * 8},
    {b"v": b"1", b"e": b"1", b"p": b"1", b"a": b"010.0.0.1", b"t0": b"x" * 8},
    {b"v": b"1", b"e": b"1", b"p": b"1", b"a": b",".join([b"10.0.0.1"] * 9),
     b"t0": b"x" * 8},
    {b"v": b"1", b"e": b"1", b"p": b"1", b"a": b"10.0.0.1"},
    {b"v": b"1", b"e": b"1", b"p": b"1", b"a": b"10.0.0.1", b"t0": b"x" * 7},
    {b"v": b"1", b"e": b"1", b"p": b"1", b"a": b"10.0.0.1", b"t0": b"x" * 256},
    {b"v": b"1", b"e": b"1", b"p": b"1", b"a": b"10.0.0.1",
     **{b"t%d" % i: b"x" * 248 for i in range(3)}},
])
def test_malformed_txt_records_are_refused(props: dict[bytes, bytes | None]) -> None:
    with pytest.raises(AnnouncementError):
        Announcement.from_txt(props)


_txt_keys = st.sampled_from([b"v", b"e", b"p", b"a", b"t0", b"t1", b"t2", b"x"])


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_txt_keys, st.one_of(st.none(), st.binary(max_size=300)), max_size=8))
def test_fuzzed_txt_records_parse_or_raise_announcement_error(
        props: dict[bytes, bytes | None]) -> None:
    core = LanCore(bob)
    try:
        ann = Announcement.from_txt(props)
    except AnnouncementError:
        return
    assert Announcement.from_txt(ann.to_txt()) == ann
    assert core.match(ann, NOW, peers(alice)) == []   # random tags match no one


def test_matching_garbage_keeps_nothing_about_the_sender() -> None:
    core = LanCore(bob)
    core.match(announce(mallory, peers(carol)), NOW, peers(alice))
    core.match(announce(alice, peers(bob)), NOW, peers(alice))
    assert set(core._keys) == {alice.public}   # only our own peers' pair keys


async def test_a_flood_of_service_names_is_bounded() -> None:
    from zeroconf import ServiceStateChange

    from mesh.mdns import MAX_PENDING, MAX_PRESENT, LanDiscovery

    disc = LanDiscovery(LanCore(bob), 4242, peers=dict, on_match=lambda m: None,
                        addresses=lambda: ADDRS)
    for i in range(MAX_PRESENT * 4):   # not started: resolving finds no zeroconf, and ends
        disc._on_change(None, "_parley._tcp.local.", f"x{i}._parley._tcp.local.",
                        ServiceStateChange.Added)
    assert len(disc._present) == MAX_PRESENT and len(disc._tasks) == MAX_PENDING
    await disc.close()
    assert not disc._tasks
