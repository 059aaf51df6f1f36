"""Profiles (groups/profiles.py): names and avatars checked like input from people, a
peer's bad profile refused whole with nothing stored, versions, nicknames, who still
needs our profile, and names that imitate others."""

from __future__ import annotations

import struct
import zlib

import msgpack
import pytest

from groups import profiles
from groups.errors import BadContent, PermissionDenied
from groups.messages import DIRECT_CONTENTS, GROUP_CONTENTS, Profile, decode_content
from groups.store import open_store

ME, BOB, EVE = "111111111111111", "222222222222222", "333333333333333"
NOW = 1_000


def png(extra: int = 0) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", 1, 1, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\x00\x10\x20\x30")) + chunk(b"tEXt", b"x" * extra)
            + chunk(b"IEND", b""))


@pytest.fixture
def conn():
    db = open_store(":memory:")
    yield db
    db.close()


def stored(conn) -> int:
    return conn.execute("SELECT COUNT(*) FROM profiles").fetchone()[0]


@pytest.mark.parametrize(("given", "kept"), [
    ("  Alice ", "Alice"), ("Ze\u0301lie", "Zélie"), ("👩\u200d💻 Dev", "👩\u200d💻 Dev"),
    ("x" * 64, "x" * 64), ("名前", "名前"),
])
def test_good_names(given: str, kept: str) -> None:
    assert profiles.check_name(given) == kept


@pytest.mark.parametrize(("given", "why"), [
    ("", "empty"), ("   ", "empty"), ("x" * 65, "at most 64 bytes"), ("é" * 33, "at most 64"),
    ("Al\nice", "control"), ("Al\x00ice", "control"), ("\u202eecilA", "formatting"),
    ("Ali\u200bce", "formatting"), ("Al\u2028ice", "control"), (None, "must be text"),
])
def test_bad_names_are_refused_with_a_reason(given: object, why: str) -> None:
    with pytest.raises(PermissionDenied, match=why) as refused:
        profiles.check_name(given)  # type: ignore[arg-type]
    assert refused.value.reason == "bad_name"


def test_avatars() -> None:
    assert profiles.check_avatar(png()) == "image/png"
    with pytest.raises(PermissionDenied) as big:
        profiles.check_avatar(png(32 * 1024))
    assert big.value.reason == "avatar_too_large"
    for junk in (b"GIF89a" + b"\x00" * 20, b"<svg onload=alert(1)>", b"\x00" * 100):
        with pytest.raises(PermissionDenied) as bad:
            profiles.check_avatar(junk)
        assert bad.value.reason == "bad_avatar"


def test_our_profile_is_stored_with_rising_versions(conn) -> None:
    first = profiles.set_own_profile(conn, ME, " Me ", b"", now_ms=1000)
    assert (first.name, first.version) == ("Me", 1000)
    second = profiles.set_own_profile(conn, ME, "Me again", png(), now_ms=900)  # clock back
    assert second.version == 1001 and second.avatar_mime == "image/png"
    assert profiles.own_content(conn, ME) == Profile(1001, "Me again", png())
    kept = profiles.set_own_profile(conn, ME, "Renamed", None, now_ms=2000)  # None: keep
    assert (kept.avatar, kept.version) == (png(), 2000)
    gone = profiles.set_own_profile(conn, ME, "Renamed", b"", now_ms=2000)
    assert (gone.avatar, gone.avatar_mime, gone.version) == (b"", "", 2001)


def test_refused_input_of_ours_stores_nothing(conn) -> None:
    for name, avatar in (("x" * 65, b""), ("ok", png(32 * 1024)), ("ok", b"not a picture")):
        with pytest.raises(PermissionDenied):
            profiles.set_own_profile(conn, ME, name, avatar, now_ms=1)
    assert stored(conn) == 0 and profiles.own_content(conn, ME) is None


def test_a_peer_profile_newer_replaces_older(conn) -> None:
    assert profiles.receive_profile(conn, BOB, Profile(5, "Bob", b""), NOW)
    assert not profiles.receive_profile(conn, BOB, Profile(5, "Bobby", b""), NOW)  # replay
    assert not profiles.receive_profile(conn, BOB, Profile(4, "Old Bob", b""), NOW)
    assert profiles.receive_profile(conn, BOB, Profile(6, "Robert", png()), NOW)
    row = profiles.load_profiles(conn)[BOB]
    assert (row.name, row.version, row.avatar_mime) == ("Robert", 6, "image/png")


@pytest.mark.parametrize("bad", [
    Profile(1, "Bob\u202e", b""), Profile(1, "", b""), Profile(1, " Bob", b""),
    Profile(1, "Bob", b"<svg/>"), Profile(1, "Bob", b"GIF89a" + b"\x00" * 9),
])
def test_a_bad_peer_profile_is_refused_whole(conn, bad: Profile) -> None:
    with pytest.raises(BadContent):
        profiles.receive_profile(conn, BOB, bad, NOW)
    assert stored(conn) == 0


@pytest.mark.parametrize("fields", [
    {"version": 1, "name": "x" * 65, "avatar": b""},          # name over 64 bytes
    {"version": 1, "name": "Bob", "avatar": b"\x00" * (32 * 1024 + 1)},
    {"version": -1, "name": "Bob", "avatar": b""},
    {"version": 1, "name": "Bob"},                            # a field missing
    {"version": 1, "name": b"Bob", "avatar": b""},            # wrong type
    {"version": 1, "name": "Bob", "avatar": b"", "x": 1},     # a field too many
])
def test_oversized_or_malformed_profile_contents_do_not_decode(fields: dict) -> None:
    data = msgpack.packb({"t": "profile", **fields}, use_bin_type=True)
    with pytest.raises(BadContent):
        decode_content(data, DIRECT_CONTENTS)


def test_profiles_travel_pairwise_only() -> None:
    data = Profile(1, "Bob", b"").encode()
    assert decode_content(data, DIRECT_CONTENTS) == Profile(1, "Bob", b"")
    with pytest.raises(BadContent):
        decode_content(data, GROUP_CONTENTS)


def test_who_still_needs_our_profile(conn) -> None:
    assert profiles.unshared(conn, ME, [BOB, EVE]) == []  # no profile yet: nothing owed
    mine = profiles.set_own_profile(conn, ME, "Me", b"", now_ms=10)
    assert profiles.unshared(conn, ME, [BOB, EVE, ME]) == [BOB, EVE]
    profiles.mark_shared(conn, BOB, mine.version)
    assert profiles.unshared(conn, ME, [BOB, EVE]) == [EVE]
    profiles.set_own_profile(conn, ME, "Me, renamed", b"", now_ms=20)
    assert profiles.unshared(conn, ME, [BOB, EVE]) == [BOB, EVE]
    profiles.mark_shared(conn, BOB, mine.version)  # an old send confirmed late: no step back
    assert profiles.unshared(conn, ME, [BOB]) == [BOB]


def test_nicknames(conn) -> None:
    assert profiles.set_nickname(conn, BOB, " Bobby ") == "Bobby"
    assert profiles.nicknames(conn) == {BOB: "Bobby"}
    with pytest.raises(PermissionDenied) as bad:
        profiles.set_nickname(conn, BOB, "x" * 65)
    assert bad.value.reason == "bad_nickname"
    assert profiles.nicknames(conn) == {BOB: "Bobby"}  # unchanged
    assert profiles.set_nickname(conn, BOB, "  ") == ""
    assert profiles.nicknames(conn) == {}


@pytest.mark.parametrize(("a", "b"), [
    ("Alice", "alice"), ("Alice", "Аlice"), ("Alice", "A l i c e"), ("Zoë", "Zoe"),
    ("Paypal", "PayPa1"), ("ｂｏｂ", "bob"), ("Olga", "0lga"),
])
def test_names_that_look_alike(a: str, b: str) -> None:
    assert profiles.skeleton(a) == profiles.skeleton(b)
    # Whoever had the name first is the original; the other one is marked.
    names = {BOB: a, EVE: b, ME: "Someone else"}
    assert profiles.lookalikes(names, {BOB: 10, EVE: 20}) == {EVE: BOB}
    assert profiles.lookalikes(names, {BOB: 30, EVE: 20}) == {BOB: EVE}


def test_our_name_and_nicknames_come_first() -> None:
    names = {ME: "Alice", BOB: "ALICE", EVE: "Bobby", "444444444444444": "B0bby"}
    since = {ME: -1, BOB: 5, EVE: -1, "444444444444444": 1}  # EVE: a nickname we gave
    assert profiles.lookalikes(names, since) == {BOB: ME, "444444444444444": EVE}


def test_different_names_are_not_marked() -> None:
    assert profiles.lookalikes({BOB: "Bob", EVE: "Eve", ME: "Bobby"}, {}) == {}
    assert profiles.lookalikes({BOB: "!!!", EVE: "???"}, {}) == {}  # nothing to compare


def test_a_name_keeps_the_time_it_was_first_stored(conn) -> None:
    assert profiles.receive_profile(conn, BOB, Profile(1, "Bob", b""), 100)
    assert profiles.receive_profile(conn, BOB, Profile(2, "Bob", png()), 200)  # same name
    assert profiles.load_profiles(conn)[BOB].named_at == 100
    assert profiles.receive_profile(conn, BOB, Profile(3, "Robert", b""), 300)
    assert profiles.load_profiles(conn)[BOB].named_at == 300
