"""Issue 15, finding 2: a member must not be able to make another member's node slow
through its sender keys. The attack is replayed with the real classes: a modified client
that skips its rotation and jumps its chain ahead on several key ids."""

from __future__ import annotations

import os

import pytest

from groups import prekeys, store
from groups.crypto import (
    MAX_CHAIN_GAP,
    MAX_SKIPPED_KEYS,
    SENDER_KEY_MAX_ITERATION,
    MemberBudget,
)
from groups.crypto.senderchain import SenderChain, skipped_in_received
from groups.crypto.senderkeys import CHAIN_STEPS_PER_MESSAGE, MAX_SENDER_KEY_STATES
from groups.errors import (
    AheadOfChain,
    BadDistribution,
    CryptoStoreError,
    DuplicateMessage,
    FutureIteration,
    InvalidCiphertext,
    Throttled,
)
from tests.unit.groups.helpers import NOW, User, make_user, new_group_id, share_sender_keys
from tests.unit.groups.test_groups import forge_header, join, split

# python-axolotl's own classes serve as the reference. They are imported inside the tests:
# at the top, import sorting would put them before groups.crypto, which has to choose
# the protobuf backend they need first.


def chain_of(user: User, group: bytes, sender: str, key_id: int) -> SenderChain:
    return SenderChain.decode(store.load_sender_key_state(user.conn, group, sender, key_id))


def own_chain(user: User, group: bytes) -> SenderChain:
    key_id = store.sender_key_info(user.conn, group, user.identity.user_id).key_id
    return chain_of(user, group, user.identity.user_id, key_id)


def jump(user: User, group: bytes, to: int) -> None:
    """What the modified client does: move its own chain to ``to`` without sending."""
    chain = own_chain(user, group)
    _, moved = chain.seed_for(to - 1, keep=0)
    store.update_sender_key_state(user.conn, group, user.identity.user_id, chain.key_id,
                                  moved.iteration, moved.encode())


def key_id(user: User, group: bytes) -> int:
    return store.sender_key_info(user.conn, group, user.identity.user_id).key_id


def skipped_total(user: User, group: bytes, sender: str) -> int:
    sizes = store.sender_key_state_sizes(user.conn, group, sender)
    return sum(chain_of(user, group, sender, k).skipped_count for k in sizes)


def test_chain_derivation_is_libsignals() -> None:
    from axolotl.groups.ratchet.senderchainkey import SenderChainKey

    chain_key = os.urandom(32)
    ours = SenderChain(7, 0, chain_key, b"\x05" + bytes(32))
    theirs = SenderChainKey(0, bytearray(chain_key))
    for _ in range(5):
        seed, ours = ours.next_seed()
        assert seed == bytes(theirs.getSenderMessageKey().getSeed())
        theirs = theirs.getNext()
    seed, _ = SenderChain(7, 0, chain_key, b"\x05" + bytes(32)).seed_for(4, keep=10)
    assert seed == bytes(SenderChainKey(0, bytearray(chain_key)).getNext().getNext().getNext()
                         .getNext().getSenderMessageKey().getSeed())


def test_state_layout_round_trips_and_bad_blobs_are_store_errors() -> None:
    chain = SenderChain(2**32 - 1, 5, os.urandom(32), b"\x05" + os.urandom(32),
                        os.urandom(32))
    _, moved = chain.seed_for(9, keep=100)
    assert SenderChain.decode(moved.encode()) == moved
    assert moved.skipped_count == 4 and "skipped=4" in repr(moved)
    assert skipped_in_received(len(SenderChain(1, 0, bytes(32), bytes(33), b"",
                                               moved.skipped).encode())) == 4
    for bad in (b"\x02", moved.encode()[:-1], b"\x02" + bytes(73) + b"\x07", b"\xff\xff"):
        with pytest.raises(CryptoStoreError):
            SenderChain.decode(bad)


def test_state_in_the_old_protobuf_format_is_read_and_rewritten() -> None:
    """Databases written before this layout hold axolotl's SenderKeyStateStructure."""
    from axolotl.groups.state.senderkeystate import SenderKeyState
    from axolotl.protocol.senderkeydistributionmessage import SenderKeyDistributionMessage

    alice, bob = make_user(), make_user()
    group = new_group_id()
    dist = SenderKeyDistributionMessage(
        serialized=alice.crypto.sender_key_distribution(group, now=NOW))
    cts = [alice.crypto.encrypt_group(group, b"%d" % i) for i in range(4)]
    old = SenderKeyState(dist.getId(), dist.getIteration(), dist.getChainKey(),
                         dist.getSignatureKey())
    chain = old.getSenderChainKey()
    old.addSenderMessageKey(chain.getSenderMessageKey())  # iteration 0 was skipped
    old.setSenderChainKey(chain.getNext().getNext())      # and 1 was read
    blob = old.getStructure().SerializeToString()
    store.add_sender_key_state(bob.conn, group, alice.id, store.SenderKeyState(
        dist.getId(), 2, dist.getSignatureKey().serialize(), False, blob), keep=5, now=NOW)
    assert bob.crypto.decrypt_group(group, alice.id, cts[3]) == b"3"
    assert bob.crypto.decrypt_group(group, alice.id, cts[0]) == b"0"
    with pytest.raises(DuplicateMessage):
        bob.crypto.decrypt_group(group, alice.id, cts[1])
    assert store.load_sender_key_state(bob.conn, group, alice.id, dist.getId())[0] == 0x02
    assert bob.crypto.decrypt_group(group, alice.id, cts[2]) == b"2"


def test_the_attack_is_refused_and_later_messages_stay_cheap() -> None:
    """Mallory skips her rotation and jumps +2000 on 5 key ids: refused before anything
    is read or stored. Jumping 300 ahead on each (5 x 300 skipped keys held, inside both
    bounds), her later messages cost bob what anyone's do."""
    alice, bob, mallory = make_user(), make_user(), make_user()
    group = new_group_id()
    share_sender_keys(group, [alice, bob, mallory])
    for _ in range(MAX_SENDER_KEY_STATES):
        dist = mallory.crypto.rotate_sender_key(group, now=NOW)
        bob.crypto.process_sender_key_distribution(group, mallory.id, dist, now=NOW)
        _, body = split(mallory.crypto.encrypt_group(group, b"hi"))
        chain = own_chain(mallory, group)
        beyond = join(forge_header(chain.key_id, 2000, bytes(16), chain.signing_private),
                      body)
        for check in (bob.crypto.decrypt_group,
                      lambda g, s, d: bob.crypto.verify_group_message(g, s, d, now=NOW)):
            with pytest.raises(FutureIteration):
                check(group, mallory.id, beyond)
        assert chain_of(bob, group, mallory.id, chain.key_id).iteration == 0
        jump(mallory, group, 300)
        assert bob.crypto.decrypt_group(group, mallory.id,
                                        mallory.crypto.encrypt_group(group, b"far")) == b"far"
    assert len(store.sender_key_state_sizes(bob.conn, group, mallory.id)) \
        == MAX_SENDER_KEY_STATES
    assert skipped_total(bob, group, mallory.id) == MAX_SENDER_KEY_STATES * 300

    def states_read(sender: User, n: int = 15) -> list[int]:
        """Per message: the bytes of sender-key state bob's node reads (SQLite trace)."""
        reads: list[int] = []
        bob.conn.set_trace_callback(lambda sql: reads.append(1)
                                    if "SELECT state FROM sender_keys" in sql else None)
        try:
            sizes = []
            for _ in range(n):
                ct = sender.crypto.encrypt_group(group, b"x" * 100)
                reads.clear()
                bob.crypto.verify_group_message(group, sender.id, ct, now=NOW)
                assert bob.crypto.decrypt_group(group, sender.id, ct) == b"x" * 100
                sizes.append(len(reads))
            return sizes
        finally:
            bob.conn.set_trace_callback(None)

    # A later message costs what anyone's does: it reads the one state its key id
    # names (not all five), kept in our layout (read by offsets, never parsed whole);
    # python-axolotl parsed a protobuf of every skipped key per message (~50x).
    assert states_read(mallory) == states_read(alice) == [1] * 15
    for key_id in store.sender_key_state_sizes(bob.conn, group, mallory.id):
        assert store.load_sender_key_state(bob.conn, group, mallory.id, key_id)[0] == 0x02


def test_skipped_keys_are_capped_per_sender_across_states() -> None:
    alice, bob = make_user(), make_user()
    group = new_group_id()
    share_sender_keys(group, [alice, bob])
    firsts = []
    for _ in range(3):
        dist = alice.crypto.rotate_sender_key(group, now=NOW)
        bob.crypto.process_sender_key_distribution(group, alice.id, dist, now=NOW)
        firsts.append(alice.crypto.encrypt_group(group, b"first"))
        jump(alice, group, SENDER_KEY_MAX_ITERATION - 1)
        assert bob.crypto.decrypt_group(group, alice.id,
                                        alice.crypto.encrypt_group(group, b"last")) == b"last"
        assert skipped_total(bob, group, alice.id) <= MAX_SKIPPED_KEYS
    # The first state's 1023 skipped keys and the newest 977 of the second's fill the
    # cap (the oldest of a state go first); the third has no room left.
    sizes = store.sender_key_state_sizes(bob.conn, group, alice.id)
    assert sorted(chain_of(bob, group, alice.id, k).skipped_count for k in sizes) \
        == [0, 0, 977, 1023]
    assert bob.crypto.decrypt_group(group, alice.id, firsts[0]) == b"first"
    for dropped in firsts[1:]:
        with pytest.raises(DuplicateMessage):
            bob.crypto.decrypt_group(group, alice.id, dropped)


def test_distribution_and_own_key_respect_the_rotation_bound() -> None:
    from axolotl.protocol.senderkeydistributionmessage import SenderKeyDistributionMessage

    alice, bob = make_user(), make_user()
    group = new_group_id()
    assert prekeys.SENDER_KEY_MAX_MESSAGES < SENDER_KEY_MAX_ITERATION  # honest never hit it
    dist = SenderKeyDistributionMessage(
        serialized=alice.crypto.sender_key_distribution(group, now=NOW))
    late = SenderKeyDistributionMessage(dist.getId(), SENDER_KEY_MAX_ITERATION,
                                        dist.getChainKey(), dist.getSignatureKey())
    with pytest.raises(BadDistribution):
        bob.crypto.process_sender_key_distribution(group, alice.id, late.serialize(), now=NOW)
    assert store.sender_key_info(bob.conn, group, alice.id) is None


def test_decrypt_reads_only_the_state_its_key_id_names() -> None:
    alice, bob = make_user(), make_user()
    group = new_group_id()
    share_sender_keys(group, [alice, bob])
    old_id = store.sender_key_info(alice.conn, group, alice.id).key_id
    dist = alice.crypto.rotate_sender_key(group, now=NOW)
    bob.crypto.process_sender_key_distribution(group, alice.id, dist, now=NOW)
    # The retired state is unreadable now: a decrypt that loaded it would fail.
    store.update_sender_key_state(bob.conn, group, alice.id, old_id, 0, b"\x02junk")
    assert bob.crypto.decrypt_group(group, alice.id,
                                    alice.crypto.encrypt_group(group, b"new")) == b"new"


def test_member_budget_is_a_token_bucket_fed_now() -> None:
    budget = MemberBudget(rate=2.0, burst=3.0)
    assert all(budget.take("m", 1, NOW) for _ in range(3))
    assert not budget.take("m", 1, NOW)
    assert budget.take("other", 3, NOW)  # one member's spending is not another's
    assert not budget.take("m", 1, NOW + 0.4)
    assert budget.take("m", 1, NOW + 0.5)
    assert budget.take("m", 3, NOW + 100)  # refilled up to the burst, and no more
    assert not budget.take("m", 1, NOW + 100)
    assert budget.take("m", 50, NOW + 102)  # a cost above the burst is the burst


def test_verify_charges_the_members_budget_after_the_signature() -> None:
    alice, bob, carol = make_user(), make_user(), make_user()
    group = new_group_id()
    share_sender_keys(group, [alice, bob, carol])
    bob.crypto.member_budget = MemberBudget(rate=1.0, burst=2.0)
    header, body = split(alice.crypto.encrypt_group(group, b"0"))
    forged = join(header[:-1] + bytes([header[-1] ^ 1]), body)
    for _ in range(5):  # forgeries in alice's name cost her nothing
        with pytest.raises(InvalidCiphertext):
            bob.crypto.verify_group_message(group, alice.id, forged, now=NOW)
    cts = [alice.crypto.encrypt_group(group, b"%d" % i) for i in range(3)]
    bob.crypto.decrypt_group(group, alice.id, join(header, body))
    for ct in cts[:2]:  # the validate hook, then the commit
        bob.crypto.verify_group_message(group, alice.id, ct, now=NOW)
        bob.crypto.decrypt_group(group, alice.id, ct)
    with pytest.raises(Throttled) as info:
        bob.crypto.verify_group_message(group, alice.id, cts[2], now=NOW)
    assert info.value.reason == "throttled"
    bob.crypto.verify_group_message(group, carol.id,
                                    carol.crypto.encrypt_group(group, b"c"), now=NOW)
    bob.crypto.verify_group_message(group, alice.id, cts[2], now=NOW + 1)
    bob.crypto.decrypt_group(group, alice.id, cts[2])
    # A message ahead costs its chain steps too (MAX_CHAIN_GAP steps: 1 + 64/256): with
    # a little less than that, one message passes and it does not.
    jump(alice, group, chain_of(bob, group, alice.id, key_id(alice, group)).iteration
         + MAX_CHAIN_GAP)
    ahead = alice.crypto.encrypt_group(group, b"ahead")
    later = NOW + 1 + (1 + MAX_CHAIN_GAP / CHAIN_STEPS_PER_MESSAGE) - 0.05
    with pytest.raises(Throttled):
        bob.crypto.verify_group_message(group, alice.id, ahead, now=later)
    bob.crypto.verify_group_message(group, alice.id, cts[0], now=later)


def test_a_message_far_ahead_waits_for_the_ones_between() -> None:
    """One message derives at most MAX_CHAIN_GAP chain steps: one further ahead is
    refused for now (nothing derived, stored or charged) and read once the messages in
    between moved bob's chain on, as they do when he catches up on a backlog."""
    alice, bob = make_user(), make_user()
    group = new_group_id()
    share_sender_keys(group, [alice, bob])
    bob.crypto.member_budget = MemberBudget(rate=1.0, burst=3.0)
    backlog = [alice.crypto.encrypt_group(group, b"%d" % i) for i in range(MAX_CHAIN_GAP + 2)]
    state = store.load_sender_key_state(bob.conn, group, alice.id, key_id(alice, group))
    for _ in range(5):  # offered again and again: it costs alice's budget nothing
        with pytest.raises(AheadOfChain) as info:
            bob.crypto.verify_group_message(group, alice.id, backlog[-1], now=NOW)
        assert info.value.reason == "ahead_of_chain"
    assert store.load_sender_key_state(bob.conn, group, alice.id, key_id(alice, group)) \
        == state
    # The first of the backlog moves the chain on: the last is exactly the gap ahead now,
    # and is read at once (its chain steps cost a quarter of a message); the ones
    # in between come from the skipped keys.
    bob.crypto.verify_group_message(group, alice.id, backlog[0], now=NOW)
    assert bob.crypto.decrypt_group(group, alice.id, backlog[0]) == b"0"
    bob.crypto.verify_group_message(group, alice.id, backlog[-1], now=NOW)
    assert bob.crypto.decrypt_group(group, alice.id, backlog[-1]) \
        == b"%d" % (MAX_CHAIN_GAP + 1)
    assert chain_of(bob, group, alice.id, key_id(alice, group)).skipped_count == MAX_CHAIN_GAP
    for i, ct in enumerate(backlog[1:-1], start=1):
        bob.crypto.verify_group_message(group, alice.id, ct, now=NOW + i)
        assert bob.crypto.decrypt_group(group, alice.id, ct) == b"%d" % i
