"""Profiles: a display name and a small avatar that each user sets, shared end-to-end
encrypted with the people they chat with, and a local nickname per contact.

A profile travels as a pairwise ``Profile`` content (groups/messages.py), so only the
peers we share a conversation with ever see it, as with Signal profiles. Every change
gets a higher ``version``; a peer keeps the newest it received. Who still needs our
current profile is a table (``profile_shared``), so a member added later, or one who was
offline, gets it from the outbox like any other pairwise message.

Names are shown to people, so they are checked like input from people: NFC, trimmed,
1-64 bytes of UTF-8, no control or formatting characters (bidi overrides among them,
which could make a name read differently from what it is); a zero-width joiner is kept
for emoji sequences. A peer's profile that breaks a rule is refused whole (BadContent)
and nothing of it is stored. Avatars are PNG, JPEG or WebP (sniffed) up to 32 KiB.

Names are not unique: anyone can call themselves "Alice". ``lookalikes`` marks a person
whose name reads like the name of someone who had it first (by our own clock: when we
stored that name, never the sender's claim), like ours, or like a nickname we gave,
after folding case, width, accents and common homoglyphs, so the UI can warn, as
Signal's "review requests" do.
"""

from __future__ import annotations

import sqlite3
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass

from groups.errors import BadContent, PermissionDenied
from groups.filetypes import sniff_mime
from groups.messages import MAX_AVATAR_BYTES, Profile
from groups.messages import MAX_PROFILE_NAME_BYTES as MAX_NAME_BYTES
from groups.store import atomic

__all__ = [
    "AVATAR_TYPES",
    "MAX_AVATAR_BYTES",
    "MAX_NAME_BYTES",
    "ProfileRow",
    "check_avatar",
    "check_name",
    "load_profiles",
    "lookalikes",
    "mark_shared",
    "nicknames",
    "own_content",
    "receive_profile",
    "set_nickname",
    "set_own_profile",
    "skeleton",
    "unshared",
]

AVATAR_TYPES = frozenset({"image/png", "image/jpeg", "image/webp"})
_ZWJ = "\u200d"
# Letters from other scripts (and digits) that look like Latin ones, folded before names
# are compared (a small part of Unicode's confusables.txt: what fits in a name field).
_HOMOGLYPHS = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "х": "x", "у": "y", "і": "i",
    "ј": "j", "ѕ": "s", "ԁ": "d", "һ": "h", "ӏ": "l", "ԛ": "q", "ԝ": "w", "к": "k",
    "м": "m", "н": "h", "т": "t", "в": "b", "ɡ": "g", "α": "a", "ο": "o", "ρ": "p",
    "ν": "v", "ι": "i", "κ": "k", "τ": "t", "υ": "u", "χ": "x", "0": "o", "1": "l",
    "|": "l", "5": "s", "$": "s", "@": "a",
})


@dataclass(frozen=True)
class ProfileRow:
    user_id: str
    name: str
    avatar: bytes        # empty: none
    avatar_mime: str     # "" without an avatar
    version: int
    named_at: int        # our clock (ms) when we stored this name: who had a name first


def check_name(text: str, *, reason: str = "bad_name") -> str:
    """The name as stored (NFC, trimmed), or PermissionDenied(reason) saying why not."""
    if not isinstance(text, str):
        raise PermissionDenied("a name must be text", reason)
    name = unicodedata.normalize("NFC", text).strip()
    if not name:
        raise PermissionDenied("a name cannot be empty", reason)
    if len(name.encode()) > MAX_NAME_BYTES:
        raise PermissionDenied(f"a name may be at most {MAX_NAME_BYTES} bytes of UTF-8 "
                               f"(this one is {len(name.encode())})", reason)
    bad = [c for c in name if c != _ZWJ and (unicodedata.category(c) in ("Cc", "Cf", "Zl",
                                                                         "Zp", "Cs", "Co"))]
    if bad:
        raise PermissionDenied(f"a name cannot hold control or formatting characters "
                               f"(U+{ord(bad[0]):04X})", reason)
    return name


def check_avatar(data: bytes) -> str:
    """The avatar's MIME type (sniffed), or PermissionDenied: too large or not a picture."""
    if len(data) > MAX_AVATAR_BYTES:
        raise PermissionDenied(f"an avatar may be at most {MAX_AVATAR_BYTES // 1024} KiB "
                               f"(this one is {len(data)} bytes)", "avatar_too_large")
    mime = sniff_mime(data[:4096])
    if mime not in AVATAR_TYPES:
        raise PermissionDenied("an avatar must be a PNG, JPEG or WebP picture", "bad_avatar")
    return mime


def skeleton(name: str) -> str:
    """What a name looks like, for comparing: compatibility-folded, case-folded, accents
    and homoglyphs mapped to Latin letters, spaces and punctuation dropped."""
    folded = unicodedata.normalize("NFKD", name.casefold())
    letters = "".join(c for c in folded if not unicodedata.combining(c))
    return "".join(c for c in letters.translate(_HOMOGLYPHS) if c.isalnum())


def lookalikes(names: dict[str, str], since: dict[str, int]) -> dict[str, str]:
    """user -> the user whose name theirs imitates: among names that look the same, the
    one held longest (smallest ``since``; ties by id) is the original, the others are
    marked. Give ourselves and the people we nicknamed -1: their names came first."""
    by_look: dict[str, list[str]] = {}
    for user, name in names.items():
        if look := skeleton(name):
            by_look.setdefault(look, []).append(user)
    marked: dict[str, str] = {}
    for users in by_look.values():
        original, *others = sorted(users, key=lambda u: (since.get(u, -1), u))
        marked.update(dict.fromkeys(others, original))
    return marked


# -- storage (tables of groups/schema.py, version 7) ----------------------------------------


def load_profiles(conn: sqlite3.Connection) -> dict[str, ProfileRow]:
    rows = conn.execute("SELECT user_id, name, avatar, avatar_mime, version, named_at "
                        "FROM profiles")
    return {r[0]: ProfileRow(r[0], r[1], r[2] or b"", r[3] or "", r[4], r[5]) for r in rows}


def nicknames(conn: sqlite3.Connection) -> dict[str, str]:
    return dict(conn.execute("SELECT user_id, nickname FROM nicknames").fetchall())


def set_own_profile(conn: sqlite3.Connection, me: str, name: str, avatar: bytes | None,
                    now_ms: int) -> ProfileRow:
    """Check and store our profile with a new version (``avatar`` None keeps the one we
    have, ``b""`` removes it); every peer is owed it again."""
    name = check_name(name)
    old = load_profiles(conn).get(me)
    if avatar is None:
        avatar = old.avatar if old else b""
    mime = check_avatar(avatar) if avatar else ""
    row = ProfileRow(me, name, avatar, mime, max(now_ms, old.version + 1 if old else 0),
                     _named_at(old, name, now_ms))
    with atomic(conn):
        _store(conn, row)
    return row


def own_content(conn: sqlite3.Connection, me: str) -> Profile | None:
    row = load_profiles(conn).get(me)
    return None if row is None else Profile(row.version, row.name, row.avatar)


def receive_profile(conn: sqlite3.Connection, origin: str, content: Profile,
                    now_ms: int) -> bool:
    """Keep a peer's profile if it is newer than the one we have; True if it changed.
    A name or avatar that breaks the rules refuses the whole profile (BadContent)."""
    try:
        name = check_name(content.name)
        mime = check_avatar(content.avatar) if content.avatar else ""
    except PermissionDenied as exc:
        raise BadContent(f"profile of {origin} refused: {exc}") from None
    if name != content.name:
        raise BadContent(f"profile of {origin} refused: the name is not in stored form")
    old = load_profiles(conn).get(origin)
    if old is not None and old.version >= content.version:
        return False
    with atomic(conn):
        _store(conn, ProfileRow(origin, name, content.avatar, mime, content.version,
                                _named_at(old, name, now_ms)))
    return True


def _named_at(old: ProfileRow | None, name: str, now_ms: int) -> int:
    """A name keeps the time we first stored it; a new name starts now."""
    return old.named_at if old is not None and old.name == name else now_ms


def set_nickname(conn: sqlite3.Connection, user_id: str, nickname: str) -> str:
    """Our own name for someone, never shared; "" removes it."""
    with atomic(conn):
        if not nickname.strip():
            conn.execute("DELETE FROM nicknames WHERE user_id = ?", (user_id,))
            return ""
        name = check_name(nickname, reason="bad_nickname")
        conn.execute("INSERT INTO nicknames (user_id, nickname) VALUES (?, ?) ON CONFLICT "
                     "(user_id) DO UPDATE SET nickname = excluded.nickname", (user_id, name))
    return name


def unshared(conn: sqlite3.Connection, me: str, peers: Iterable[str]) -> list[str]:
    """The peers that have not been sent our current profile yet."""
    row = conn.execute("SELECT version FROM profiles WHERE user_id = ?", (me,)).fetchone()
    if row is None:
        return []
    shared = dict(conn.execute("SELECT user_id, version FROM profile_shared").fetchall())
    return sorted(p for p in set(peers) - {me} if shared.get(p, -1) < row[0])


def mark_shared(conn: sqlite3.Connection, peer: str, version: int) -> None:
    conn.execute("INSERT INTO profile_shared (user_id, version) VALUES (?, ?) ON CONFLICT "
                 "(user_id) DO UPDATE SET version = MAX(version, excluded.version)",
                 (peer, version))


def _store(conn: sqlite3.Connection, row: ProfileRow) -> None:
    conn.execute("INSERT INTO profiles (user_id, name, avatar, avatar_mime, version, named_at) "
                 "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET "
                 "name = excluded.name, avatar = excluded.avatar, "
                 "avatar_mime = excluded.avatar_mime, version = excluded.version, "
                 "named_at = excluded.named_at",
                 (row.user_id, row.name, row.avatar or None, row.avatar_mime or None,
                  row.version, row.named_at))
