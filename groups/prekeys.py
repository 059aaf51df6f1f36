"""Prekey and sender-key lifecycle policy: what to generate, when to rotate, what to publish.

groups.crypto holds the mechanism (keys in the database); this module decides. The
node (a later part) only does I/O around it, for example::

    update = initial_prekeys(crypto, now)
    record = build_record(identity, update, endpoints=..., seq=1, now=now)
    left = await discovery.register(record, update.one_time_prekeys)
    ...
    update = maintain_prekeys(crypto, now, server_left=left)   # every 15 min, and when low
    if update.record_changed or update.one_time_prekeys:
        left = await discovery.update(build_record(...) if update.record_changed else None,
                                      update.one_time_prekeys)

Everything takes ``now`` (seconds) and does no I/O besides the node database.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from groups.crypto import Crypto
from mesh.identity import KeyPair, PreKey, Record, SignedPreKey

__all__ = [
    "ONE_TIME_PREKEY_BATCH",
    "PREKEY_CHECK_INTERVAL",
    "REFILL_THRESHOLD",
    "RETIRED_SENDER_KEY_GRACE",
    "SENDER_KEY_MAX_AGE",
    "SENDER_KEY_MAX_MESSAGES",
    "SIGNED_PREKEY_GRACE",
    "SIGNED_PREKEY_LIFETIME",
    "PrekeyUpdate",
    "build_record",
    "initial_prekeys",
    "maintain_prekeys",
    "needs_refill",
    "refill_count",
    "sender_key_due",
    "signed_prekey_due",
]

DAY = 86400.0
ONE_TIME_PREKEY_BATCH = 100
# The bootstrap lets a user lose at most 30 one-time prekeys an hour (bursts of 30,
# docs/protocol.md "Prekey claims"): checking every 15 minutes and refilling below 40
# keeps some on the server even under a steady drain. Any signed reply that reports
# fewer than 40 wakes the check at once.
REFILL_THRESHOLD = 40
PREKEY_CHECK_INTERVAL = 15 * 60.0
SIGNED_PREKEY_LIFETIME = 7 * DAY
# A PreKeyWhisperMessage names the signed prekey it was built on and may arrive late
# (offline delivery); Signal keeps replaced signed prekeys for 30 days, so do we.
SIGNED_PREKEY_GRACE = 30 * DAY
SENDER_KEY_MAX_AGE = 7 * DAY
# Well inside the 2000-iteration window: a member who holds our distribution message
# can read any message of the current key, however many it missed.
SENDER_KEY_MAX_MESSAGES = 1000
# How long another member's replaced sender key stays readable for in-flight messages.
RETIRED_SENDER_KEY_GRACE = 3 * DAY


@dataclass(frozen=True)
class PrekeyUpdate:
    """What to publish: the two Record fields, and one-time prekeys to upload.

    ``record_changed`` means the Record's prekey fields changed since the last
    publication, so a new Record (higher seq) must go out.
    """

    signed_prekey: SignedPreKey
    last_resort_prekey: PreKey
    one_time_prekeys: tuple[PreKey, ...]
    record_changed: bool


def needs_refill(left: int) -> bool:
    """True when the bootstrap reports fewer than 40 one-time prekeys left."""
    return left < REFILL_THRESHOLD


def refill_count(left: int) -> int:
    """How many new one-time prekeys bring the server back to a full batch."""
    return max(0, ONE_TIME_PREKEY_BATCH - max(0, left))


def signed_prekey_due(created_at: float, now: float) -> bool:
    return now - created_at >= SIGNED_PREKEY_LIFETIME


def sender_key_due(crypto: Crypto, group_id: bytes, now: float) -> bool:
    """True when our sender key in the group is old or used enough to rotate."""
    sent, created_at = crypto.sender_key_age(group_id)
    return sent >= SENDER_KEY_MAX_MESSAGES or now - created_at >= SENDER_KEY_MAX_AGE


def initial_prekeys(crypto: Crypto, now: float) -> PrekeyUpdate:
    """Keys for the first registration: signed and last-resort prekeys (made once, kept
    across restarts) and a fresh batch of 100 one-time prekeys."""
    crypto.ensure_prekeys(now)
    return PrekeyUpdate(crypto.signed_prekey(), crypto.last_resort_prekey(),
                        tuple(crypto.generate_one_time_prekeys(ONE_TIME_PREKEY_BATCH, now)),
                        record_changed=True)


def maintain_prekeys(crypto: Crypto, now: float, *, server_left: int | None) -> PrekeyUpdate:
    """Rotate the signed prekey weekly, drop ones past their grace period, and refill
    one-time prekeys when the server holds fewer than 40 (``server_left`` None: unknown,
    no refill)."""
    changed = crypto.ensure_prekeys(now)
    if signed_prekey_due(crypto.signed_prekey_created_at(), now):
        crypto.rotate_signed_prekey(now)
        changed = True
    crypto.purge_signed_prekeys(now, SIGNED_PREKEY_GRACE)
    fresh: list[PreKey] = []
    if server_left is not None and needs_refill(server_left):
        fresh = crypto.generate_one_time_prekeys(refill_count(server_left), now)
    return PrekeyUpdate(crypto.signed_prekey(), crypto.last_resort_prekey(), tuple(fresh),
                        record_changed=changed)


def build_record(identity: KeyPair, update: PrekeyUpdate, *, endpoints: Iterable[str],
                 seq: int, now: float) -> Record:
    """Our signed Record with the prekey fields of ``update``."""
    return Record.create(identity, signed_prekey=update.signed_prekey,
                         last_resort_prekey=update.last_resort_prekey, endpoints=endpoints,
                         seq=seq, now=now)
