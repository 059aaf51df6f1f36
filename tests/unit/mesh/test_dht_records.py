"""The DHT's sans-IO policy: keys, value checks, one-record-per-key storage, schedule."""

from __future__ import annotations

import hashlib

import msgpack
import pytest
import umsgpack
from hypothesis import given, settings
from hypothesis import strategies as st
from kademlia.utils import digest

from mesh.dht_records import (
    MAX_VALUE_BYTES,
    RECORD_TTL,
    PublishAction,
    PublishSchedule,
    RecordStorage,
    StoreOutcome,
    dht_digest,
    record_key,
    verify_value,
)
from mesh.dht_rpc import MAX_DATAGRAM
from mesh.errors import FormatError, RecordError
from tests.unit.mesh.dht_helpers import (
    bad_signature,
    forged_key,
    largest_record,
    make_record,
    next_record,
)

NOW = 1_800_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def alice():
    identity, record = make_record(now=NOW)
    return identity, record


@pytest.fixture(scope="module")
def bob():
    return make_record(now=NOW)[1]


# keys


def test_keys_are_sha256_of_the_domain_and_id_and_kademlias_digest_of_that() -> None:
    user_id = "165111482533427"
    assert record_key(user_id) == hashlib.sha256(b"parley-record165111482533427").digest()
    assert dht_digest(user_id) == digest(record_key(user_id))
    assert len(dht_digest(user_id)) == 20
    assert record_key("165 111 482 533 427") == record_key(user_id)
    with pytest.raises(FormatError):
        record_key("12345")


# verify_value


def test_verify_value_accepts_the_record_under_its_own_key(alice) -> None:
    _, record = alice
    assert verify_value(dht_digest(record.user_id), record.encode(), now=NOW) == record


@pytest.mark.parametrize("value", ["text", 7, None, [b"x"], {"value": b"x"}, b"",
                                   b"\x00" * (MAX_VALUE_BYTES + 1), bytearray(b"abc")])
def test_verify_value_refuses_what_is_not_bounded_bytes(alice, value) -> None:
    with pytest.raises(RecordError) as info:
        verify_value(dht_digest(alice[1].user_id), value, now=NOW)
    assert info.value.reason == "bad_value"


def test_verify_value_refuses_forgeries_and_stale_records(alice, bob) -> None:
    _, record = alice
    key = dht_digest(record.user_id)
    cases = {
        "wrong_key": bob.encode(),                       # a valid record of someone else
        "id_mismatch": forged_key(record).encode(),      # victim's id, attacker's key
        "bad_signature": bad_signature(record),          # seq raised, signature kept
        "bad_record": b"\x92\xc4\x01x\xc4\x01y",         # msgpack, not a record
    }
    for reason, value in cases.items():
        with pytest.raises(RecordError) as info:
            verify_value(key, value, now=NOW)
        assert info.value.reason == reason, reason
    with pytest.raises(RecordError) as info:
        verify_value(key, record.encode(), now=record.updated_at + RECORD_TTL + 1)
    assert info.value.reason == "stale_record"


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_verify_value_raises_only_record_errors_on_garbage(data: bytes) -> None:
    with pytest.raises(RecordError):
        verify_value(b"k" * 20, data, now=NOW)


def test_the_largest_record_stays_well_under_the_rpc_limit() -> None:
    record = largest_record(now=NOW)
    value = record.encode()
    assert verify_value(dht_digest(record.user_id), value, now=NOW) == record
    assert len(value) <= MAX_VALUE_BYTES
    # the STORE request rpcudp builds (it refuses > 8 KiB) and the find_value reply
    store = b"\x00" + b"m" * 20 + umsgpack.packb(["store", (b"n" * 20, b"k" * 20, value)])
    reply = b"\x01" + b"m" * 20 + msgpack.packb({"value": value}, use_bin_type=True)
    assert len(store) < 3000 < MAX_DATAGRAM
    assert len(reply) < 3000


# storage policy


def test_storage_keeps_one_verified_record_and_only_a_higher_seq_replaces_it(alice) -> None:
    identity, old = alice
    new = next_record(identity, old, endpoints=("ws://127.0.0.1:2/mesh",), now=NOW)
    key = dht_digest(old.user_id)
    storage = RecordStorage(Clock())
    assert storage.offer(key, old.encode()) is StoreOutcome.STORED
    assert storage.offer(key, old.encode()) is StoreOutcome.REFRESHED
    assert storage.offer(key, new.encode()) is StoreOutcome.STORED
    assert storage.offer(key, old.encode()) is StoreOutcome.KEPT_NEWER  # replayed old seq
    same_seq = next_record(identity, old, endpoints=("ws://127.0.0.1:3/mesh",), now=NOW)
    assert same_seq.seq == new.seq
    assert storage.offer(key, same_seq.encode()) is StoreOutcome.KEPT_NEWER
    assert storage[key] == new.encode()
    assert storage.record(key) == new
    assert len(storage) == 1


def test_forged_stores_never_replace_the_good_record(alice, bob) -> None:
    _, record = alice
    key = dht_digest(record.user_id)
    storage = RecordStorage(Clock())
    storage.offer(key, record.encode())
    for value in (bob.encode(), forged_key(record).encode(), bad_signature(record),
                  b"junk", "text", 5, b"\x00" * 5000):
        assert storage.offer(key, value) is StoreOutcome.REJECTED
        assert storage.get(key) == record.encode()
    assert storage.offer(b"short", record.encode()) is StoreOutcome.REJECTED
    assert storage.offer(dht_digest(bob.user_id), record.encode()) is StoreOutcome.REJECTED
    assert storage.last_rejection is not None
    assert len(storage) == 1


def test_records_expire_by_their_signed_age_and_refreshing_does_not_extend_that(alice) -> None:
    _, record = alice
    key = dht_digest(record.user_id)
    clock = Clock(record.updated_at + RECORD_TTL - 10)
    storage = RecordStorage(clock)
    assert storage.offer(key, record.encode()) is StoreOutcome.STORED
    clock.now += 5
    assert storage.offer(key, record.encode()) is StoreOutcome.REFRESHED
    clock.now += 6
    assert storage.get(key) is None
    assert list(storage) == []
    with pytest.raises(KeyError):
        storage[key]
    assert storage.offer(key, record.encode()) is StoreOutcome.REJECTED
    assert storage.last_rejection.reason == "stale_record"


def test_republish_candidates_are_entries_nobody_restored_lately(alice, bob) -> None:
    clock = Clock()
    storage = RecordStorage(clock)
    a, b = dht_digest(alice[1].user_id), dht_digest(bob.user_id)
    storage.offer(a, alice[1].encode())
    clock.now += 100
    storage.offer(b, bob.encode())
    assert storage.iter_older_than(50) == [(a, alice[1].encode())]
    storage.touch(a)
    assert storage.iter_older_than(50) == []
    clock.now += 60
    assert {k for k, _ in storage.iter_older_than(50)} == {a, b}


def test_storage_is_bounded_and_evicts_the_longest_unrefreshed() -> None:
    clock = Clock()
    storage = RecordStorage(clock, max_entries=3)
    records = [make_record(now=NOW)[1] for _ in range(4)]
    for record in records:
        clock.now += 1
        storage.offer(dht_digest(record.user_id), record.encode())
    assert len(storage) == 3
    assert storage.get(dht_digest(records[0].user_id)) is None
    assert storage.get(dht_digest(records[3].user_id)) == records[3].encode()


def test_full_verifications_are_rate_limited_per_sender() -> None:
    clock = Clock()
    storage = RecordStorage(clock, verify_rate=1.0, verify_burst=2.0)
    records = [make_record(now=NOW)[1] for _ in range(4)]

    def offer(record, source):
        return storage.offer(dht_digest(record.user_id), record.encode(), source=source)

    assert offer(records[0], "192.0.2.1") is StoreOutcome.STORED
    assert offer(records[1], "192.0.2.1") is StoreOutcome.STORED
    assert offer(records[2], "192.0.2.1") is StoreOutcome.REJECTED
    assert storage.last_rejection.reason == "rate_limited"
    assert offer(records[2], "192.0.2.2") is StoreOutcome.STORED  # another sender
    assert offer(records[0], "192.0.2.1") is StoreOutcome.REFRESHED  # no verification needed
    clock.now += 1
    assert offer(records[3], "192.0.2.1") is StoreOutcome.STORED


def test_storage_speaks_kademlias_istorage(alice) -> None:
    _, record = alice
    key = dht_digest(record.user_id)
    storage = RecordStorage(Clock())
    storage[key] = record.encode()
    assert storage[key] == record.encode()
    assert storage.get(key) == record.encode()
    assert storage.get(["unhashable"], "default") == "default"
    assert list(storage) == [(key, record.encode())]
    assert "1 records" in repr(storage)


@settings(max_examples=200, deadline=None)
@given(key=st.binary(min_size=20, max_size=20), value=st.one_of(
    st.binary(max_size=300), st.text(max_size=20), st.integers(), st.none()))
def test_storage_rejects_garbage_without_raising(key, value) -> None:
    storage = RecordStorage(Clock())
    assert storage.offer(key, value) is StoreOutcome.REJECTED
    assert len(storage) == 0


# publish schedule


def test_schedule_publishes_at_once_then_every_interval_and_retries_failures(alice) -> None:
    _, record = alice
    schedule = PublishSchedule(republish_interval=3600, retry_interval=30,
                               resign_after=86400)
    assert schedule.next_timer() is None
    schedule.set_record(record, NOW)
    assert schedule.next_timer() == NOW
    assert schedule.handle_timer(NOW - 1) is None
    step = schedule.handle_timer(NOW)
    assert step.action is PublishAction.PUBLISH and step.record == record
    assert schedule.handle_timer(NOW) is None  # in progress
    schedule.done(step, NOW + 1, ok=False)
    assert schedule.next_timer() == NOW + 31
    step = schedule.handle_timer(NOW + 31)
    schedule.done(step, NOW + 32, ok=True)
    assert schedule.next_timer() == NOW + 3632


def test_schedule_publishes_a_newer_record_at_once_even_mid_publish(alice) -> None:
    identity, record = alice
    schedule = PublishSchedule()
    schedule.set_record(record, NOW)
    step = schedule.handle_timer(NOW)
    newer = next_record(identity, record, now=NOW)
    schedule.set_record(newer, NOW + 1)
    schedule.done(step, NOW + 2, ok=True)  # the old step finishing does not delay it
    assert schedule.next_timer() == NOW + 1
    assert schedule.handle_timer(NOW + 2).record == newer


def test_schedule_refuses_older_or_foreign_records(alice, bob) -> None:
    identity, record = alice
    schedule = PublishSchedule()
    newer = next_record(identity, record, now=NOW)
    schedule.set_record(newer, NOW)
    schedule.set_record(newer, NOW)  # the same record again is fine
    with pytest.raises(RecordError):
        schedule.set_record(record, NOW)
    with pytest.raises(RecordError):
        schedule.set_record(bob, NOW)


def test_schedule_asks_for_a_fresh_signature_before_the_record_expires(alice) -> None:
    _, record = alice
    schedule = PublishSchedule(resign_after=86400)
    schedule.set_record(record, record.updated_at + 86400)
    step = schedule.handle_timer(record.updated_at + 86400)
    assert step.action is PublishAction.RESIGN
