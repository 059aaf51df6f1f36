"""Group sender keys: distribution, the Parley group envelope, and what a member may cost.

Part of the groups.crypto package (import from there); see docs/protocol.md §7,
"Sender keys (groups)" and "Bounds and limits". The chain state and its storage format
are groups.crypto.senderchain; python-axolotl supplies the wire messages (SenderKeyMessage,
SenderKeyDistributionMessage, with their XEdDSA signatures), the message-key derivation
and the CBC cipher. Its GroupCipher and GroupSessionBuilder are not used: they load and
re-serialize every state of a member, skipped keys and all, for each message.

What one member can make us do is bounded (issue 15, finding 2):

- a key is good for SENDER_KEY_MAX_ITERATION messages (the 1000 after which members
  rotate, plus a margin): a message or distribution beyond that is refused before any
  state is read;
- a message may be at most MAX_CHAIN_GAP iterations ahead of our chain for its key, so
  one message derives at most that many chain steps: one further ahead gets
  AheadOfChain, which the gossip validate hook turns into "not yet valid" (nothing
  stored or derived; offered again once the messages in between moved the chain on:
  a member's messages reach us in its order when we catch up);
- a message loads and rewrites only the state its key id names;
- skipped message keys are capped per sender across all of its states (MAX_SKIPPED_KEYS);
- a token bucket per member (MemberBudget), charged in verify_group_message, the gossip
  validate hook, with the work a message asks for: a member over its budget gets
  Throttled, which the hook turns into "not yet valid", so the message comes again later.

Each message's signature is checked once on a member (issue 13: the second check was
~18% of a receiver's CPU): verify_group_message remembers the exact signed header and
the key it verified against (VerifiedHeaders, in memory, bounded), and decrypt_group,
called moments later for the same message, skips the check only for a header and key
byte-for-byte equal to a remembered pair; anything else is verified again.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sqlite3
from collections import OrderedDict
from dataclasses import dataclass

from axolotl.ecc.djbec import DjbECPrivateKey
from axolotl.groups.ratchet.sendermessagekey import SenderMessageKey
from axolotl.protocol.senderkeydistributionmessage import SenderKeyDistributionMessage
from axolotl.protocol.senderkeymessage import SenderKeyMessage
from axolotl.sessioncipher import AESCipher
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from groups import store
from groups.crypto.keystore import MAX_SKIPPED_KEYS, CryptoBase, mapped, public_key
from groups.crypto.senderchain import SenderChain, skipped_in_received
from groups.errors import (
    AheadOfChain,
    BadDistribution,
    CryptoStoreError,
    CryptoUsageError,
    FutureIteration,
    InvalidCiphertext,
    MalformedMessage,
    NoSession,
    Throttled,
    UnknownKey,
)
from mesh.identity import KeyPair
from mesh.ratelimit import TokenBuckets

__all__ = [
    "GROUP_ID_LEN",
    "MAX_CHAIN_GAP",
    "MAX_SENDER_KEY_STATES",
    "MEMBER_BURST",
    "MEMBER_RATE",
    "SENDER_KEY_MAX_ITERATION",
    "GroupMessageInfo",
    "MemberBudget",
    "SenderKeys",
    "VerifiedHeaders",
]

GROUP_ID_LEN = 16
# Iterations 0..1023 of a key: groups.prekeys rotates ours after 1000 messages
# (SENDER_KEY_MAX_MESSAGES), so an honest member never comes near the end.
SENDER_KEY_MAX_ITERATION = 1024
MAX_SENDER_KEY_STATES = 5  # states kept per (group, member), as libsignal
# How far ahead of our chain (for its key) a message may be: the chain steps one message
# can make us derive. bench.senderkeys: a message at the gap costs 1.6-1.9x an in-order
# one (128: 2.4-2.7x, too near the 3x target; 1023, the rotation bound alone: 5-7x).
# Honest messages are further ahead only while we catch up, and then the ones in
# between arrive first.
MAX_CHAIN_GAP = 64
# The per-member budget, in messages: a message costs 1, plus 1 for every
# CHAIN_STEPS_PER_MESSAGE chain steps it makes us derive (measured by bench.senderkeys:
# one step costs about 1/STEPS of an in-order message).
MEMBER_RATE = 50.0     # per second, sustained
MEMBER_BURST = 1000.0  # at once (a backlog after being offline, a file announced ...)
MEMBER_BUDGETS_MAX = 65536  # members with a bucket (least recently charged dropped)
CHAIN_STEPS_PER_MESSAGE = 256
# Headers verified but not yet decrypted that we remember: the validate hook and the
# commit of one loop pass are a few hundred messages apart at most; one forgotten is
# simply verified again.
VERIFIED_HEADERS_MAX = 1024

_GROUP_VERSION = 0x01
_GROUP_HEADER_MAX = 512  # a SenderKeyMessage around a 64-byte inner block is ~180 bytes
_GROUP_AAD = b"parley/group-body/v1"
_ZERO_NONCE = bytes(12)


def _check_group_id(group_id: bytes) -> bytes:
    if not isinstance(group_id, bytes) or len(group_id) != GROUP_ID_LEN:
        raise CryptoUsageError(f"group id must be {GROUP_ID_LEN} bytes")
    return group_id


def _group_aad(group_id: bytes, sender_id: str) -> bytes:
    return _GROUP_AAD + group_id + sender_id.encode("ascii")


class MemberBudget:
    """A token bucket per member, fed ``now`` by the caller (no clock inside).

    ``take(member, cost, now)`` spends ``cost`` tokens if the member has them; buckets
    refill at ``rate`` per second up to ``burst``. A cost above the burst counts as the
    burst, so every message can pass once the bucket is full. Only members whose
    messages carry a valid signature get here, so the buckets are bounded by the
    groups' members (and by MEMBER_BUDGETS_MAX: mesh.ratelimit.TokenBuckets).
    """

    def __init__(self, rate: float = MEMBER_RATE, burst: float = MEMBER_BURST) -> None:
        if rate <= 0 or burst < 1:
            raise CryptoUsageError("rate must be > 0 and burst >= 1")
        self.rate, self.burst = rate, burst
        self._buckets = TokenBuckets(rate, burst, max_keys=MEMBER_BUDGETS_MAX)

    def take(self, member: str, cost: float, now: float) -> bool:
        return self._buckets.take(member, min(cost, self.burst), now)


class VerifiedHeaders:
    """Signed headers whose signature we checked, each with the key that checked it.

    A signature's validity is a function of (key, signed bytes) alone, so a pair seen
    valid once needs no second look. Bounded: the oldest pair goes first; ``take``
    forgets a pair when it is used (each message is decrypted once).
    """

    def __init__(self, limit: int = VERIFIED_HEADERS_MAX) -> None:
        if limit < 1:
            raise CryptoUsageError("limit must be >= 1")
        self.limit = limit
        self._pairs: OrderedDict[tuple[bytes, bytes], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pairs)

    def add(self, signing_key: bytes, header: bytes) -> None:
        self._pairs[(signing_key, header)] = None
        self._pairs.move_to_end((signing_key, header))
        while len(self._pairs) > self.limit:
            self._pairs.popitem(last=False)

    def take(self, signing_key: bytes, header: bytes) -> bool:
        """True (and forgotten) if this exact header was verified with this exact key."""
        if (signing_key, header) not in self._pairs:
            return False
        del self._pairs[(signing_key, header)]
        return True


@dataclass(frozen=True)
class GroupMessageInfo:
    """What a verified group message claims: which sender key and which position."""

    key_id: int
    iteration: int


def _split_group(data: bytes) -> tuple[bytes, SenderKeyMessage]:
    """Group envelope -> (body, parsed header); see docs/protocol.md §7."""
    if not isinstance(data, bytes | bytearray | memoryview):
        raise MalformedMessage("group ciphertext must be bytes")
    data = bytes(data)
    if len(data) < 3 or data[0] != _GROUP_VERSION:
        raise MalformedMessage("not a Parley group ciphertext (v1)")
    length = int.from_bytes(data[1:3], "big")
    if not 0 < length <= _GROUP_HEADER_MAX or len(data) < 3 + length:
        raise MalformedMessage("group ciphertext header length out of range")
    header, body = data[3:3 + length], data[3 + length:]
    with mapped(malformed=MalformedMessage, invalid=MalformedMessage):
        message = SenderKeyMessage(serialized=header)
    return body, message


class SenderKeys(CryptoBase):
    """Our sender key in each group and the members' keys we hold (a role of Crypto)."""

    def __init__(self, conn: sqlite3.Connection, identity: KeyPair, *, now: float) -> None:
        super().__init__(conn, identity, now=now)
        self.member_budget = MemberBudget()
        self.verified_headers = VerifiedHeaders()

    # Our own key

    def _own_chain(self, group_id: bytes) -> SenderChain | None:
        info = store.sender_key_info(self._conn, _check_group_id(group_id), self.user_id)
        if info is None or not info.own:
            return None
        blob = store.load_sender_key_state(self._conn, group_id, self.user_id, info.key_id)
        return None if blob is None else SenderChain.decode(blob)

    def sender_key_distribution(self, group_id: bytes, *, now: float) -> bytes:
        """Our sender key for the group as a distribution message (made if missing).

        It goes to each member over their pairwise session; a member who receives it
        can read our messages from the chain's current position on.
        """
        with self._op(now):
            chain = self._own_chain(group_id)
            if chain is None:
                signing = KeyPair.generate()
                chain = SenderChain(int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF, 0,
                                    os.urandom(32), signing.public, signing.private)
                self._add(group_id, self.user_id, chain, own=True, now=now)
        with mapped(invalid=CryptoStoreError, malformed=CryptoStoreError):
            return SenderKeyDistributionMessage(chain.key_id, chain.iteration, chain.chain_key,
                                                public_key(chain.signing_public)).serialize()

    def _add(self, group_id: bytes, sender_id: str, chain: SenderChain, *, own: bool,
             now: float) -> None:
        store.add_sender_key_state(
            self._conn, group_id, sender_id,
            store.SenderKeyState(chain.key_id, chain.iteration, chain.signing_public, own,
                                 chain.encode()),
            keep=MAX_SENDER_KEY_STATES, now=now)

    def rotate_sender_key(self, group_id: bytes, *, now: float) -> bytes:
        """Replace our sender key (new key id) and return its distribution message.

        Called on every removal or leave and when sender_key_due(); the old key is
        deleted at once (we never decrypt our own messages).
        """
        with self._op(now):
            store.delete_sender_keys(self._conn, _check_group_id(group_id), self.user_id)
            return self.sender_key_distribution(group_id, now=now)

    def sender_key_age(self, group_id: bytes) -> tuple[int, int]:
        """(messages sent, created_at) of our current sender key in the group."""
        info = store.sender_key_info(self._conn, _check_group_id(group_id), self.user_id)
        if info is None or not info.own:
            raise NoSession("no sender key of ours in this group")
        return info.iteration, info.created_at

    def encrypt_group(self, group_id: bytes, plaintext: bytes) -> bytes:
        """Encrypt for every member holding our sender key (envelope v1, see docs)."""
        with self._op():
            chain = self._own_chain(group_id)
            if chain is None:
                raise NoSession("no sender key of ours in this group")
            if chain.iteration >= SENDER_KEY_MAX_ITERATION:
                raise NoSession(f"our sender key is used up ({SENDER_KEY_MAX_ITERATION} "
                                "messages): rotate it")
            key = os.urandom(32)
            body = AESGCM(key).encrypt(_ZERO_NONCE, bytes(plaintext),
                                       _group_aad(group_id, self.user_id))
            seed, moved = chain.next_seed()
            with mapped(invalid=CryptoStoreError, malformed=CryptoStoreError):
                message_key = SenderMessageKey(chain.iteration, seed)
                ciphertext = AESCipher(message_key.getCipherKey(), message_key.getIv()) \
                    .encrypt(key + hashlib.sha256(body).digest())
                header = SenderKeyMessage(chain.key_id, chain.iteration, ciphertext,
                                          DjbECPrivateKey(chain.signing_private)).serialize()
            store.update_sender_key_state(self._conn, group_id, self.user_id, chain.key_id,
                                          moved.iteration, moved.encode())
        return bytes([_GROUP_VERSION]) + len(header).to_bytes(2, "big") + header + body

    # Members' keys

    def process_sender_key_distribution(self, group_id: bytes, sender_id: str, data: bytes, *,
                                        now: float) -> None:
        """Accept ``sender_id``'s sender key (received over our pairwise session).

        A new key id retires that member's older keys: they remain readable for
        in-flight messages until purge_retired_sender_keys().
        """
        _check_group_id(group_id)
        if sender_id == self.user_id:
            raise BadDistribution("a distribution message claims to be our own")
        with mapped(invalid=BadDistribution, malformed=BadDistribution):
            message = SenderKeyDistributionMessage(serialized=bytes(data))
            key_id, iteration = message.getId(), message.getIteration()
            chain_key = bytes(message.getChainKey())
            signing_key = message.getSignatureKey().serialize()
        if len(chain_key) != 32 or len(signing_key) != 33:
            raise BadDistribution("sender key has wrong key lengths")
        if not 0 <= iteration < SENDER_KEY_MAX_ITERATION or not 0 <= key_id < 2**32:
            raise BadDistribution("sender key id or iteration out of range")
        with self._op(now):
            known = store.sender_key_info(self._conn, group_id, sender_id, key_id)
            if known is not None:
                if known.signing_key != signing_key:
                    raise BadDistribution("sender key id reused with another signing key")
                return  # a resend of a key we have: our chain position is newer
            self._add(group_id, sender_id, SenderChain(key_id, iteration, chain_key,
                                                       signing_key), own=False, now=now)
            store.retire_sender_keys(self._conn, group_id, sender_id, except_key_id=key_id,
                                     now=now)

    def forget_sender(self, group_id: bytes, sender_id: str | None = None) -> None:
        """Drop a removed member's sender keys (or, with None, every key of the group)."""
        with self._op():
            store.delete_sender_keys(self._conn, _check_group_id(group_id), sender_id)

    def purge_retired_sender_keys(self, now: float, grace: float) -> int:
        with self._op(now):
            return store.purge_retired_sender_keys(self._conn, now - grace)

    @staticmethod
    def _parse(group_id: bytes, data: bytes) -> tuple[bytes, SenderKeyMessage]:
        """Envelope -> (body, header), refused before any state is read if the header
        is beyond the rotation bound."""
        _check_group_id(group_id)
        body, message = _split_group(data)
        if not 0 <= message.getIteration() < SENDER_KEY_MAX_ITERATION:
            raise FutureIteration(f"iteration beyond the rotation bound "
                                  f"({SENDER_KEY_MAX_ITERATION} messages per key)")
        return body, message

    def verify_group_message(self, group_id: bytes, sender_id: str, data: bytes, *,
                             now: float) -> GroupMessageInfo:
        """Check a group message's sender-key signature, and charge its member's budget.

        For the gossip validate hook: relays call it before they store or forward.
        The body is bound to the signed header by a hash that only members who
        decrypt can check, so decrypt_group stays the final word. After the signature
        (so nobody can spend another member's budget), a message more than
        MAX_CHAIN_GAP iterations ahead of our chain gets AheadOfChain; otherwise it
        costs 1, plus the chain steps it will make decrypt_group derive, and gets
        Throttled if the member has not that much left (nothing is charged for either).
        The verified header is remembered (verified_headers) so that decrypt_group need
        not check it again.
        """
        _body, message = self._parse(group_id, data)
        info = store.sender_key_info(self._conn, group_id, sender_id, message.getKeyId())
        if info is None:
            raise UnknownKey("no sender key with this id from this member")
        with mapped():
            message.verifySignature(public_key(info.signing_key))
        steps = max(0, message.getIteration() - info.iteration)
        if steps > MAX_CHAIN_GAP:
            raise AheadOfChain(f"iteration {message.getIteration()} is {steps} ahead of our "
                               f"chain (at most {MAX_CHAIN_GAP}): the messages between "
                               "come first")
        self.verified_headers.add(info.signing_key, message.serialize())
        if not self.member_budget.take(sender_id, 1 + steps / CHAIN_STEPS_PER_MESSAGE, now):
            raise Throttled(f"{sender_id} is over its rate of group messages")
        return GroupMessageInfo(message.getKeyId(), message.getIteration())

    def decrypt_group(self, group_id: bytes, sender_id: str, data: bytes) -> bytes:
        """Decrypt ``sender_id``'s group message; nothing changes unless it is valid."""
        if sender_id == self.user_id:
            raise CryptoUsageError("our own group messages are not decrypted")
        with self._op():
            body, message = self._parse(group_id, data)
            blob = store.load_sender_key_state(self._conn, group_id, sender_id,
                                               message.getKeyId())
            if blob is None:
                raise UnknownKey("no sender key with this id from this member")
            chain = SenderChain.decode(blob)
            if not self.verified_headers.take(chain.signing_public, message.serialize()):
                with mapped():
                    message.verifySignature(public_key(chain.signing_public))
            ahead = message.getIteration() > chain.iteration
            seed, moved = chain.seed_for(message.getIteration(), keep=self._skipped_room(
                group_id, sender_id, chain) if ahead else MAX_SKIPPED_KEYS)
            with mapped(malformed=InvalidCiphertext):
                message_key = SenderMessageKey(message.getIteration(), seed)
                inner = AESCipher(message_key.getCipherKey(), message_key.getIv()) \
                    .decrypt(message.getCipherText())
            if len(inner) != 64:
                raise InvalidCiphertext("group header holds no body key")
            if not hmac.compare_digest(hashlib.sha256(body).digest(), inner[32:]):
                raise InvalidCiphertext("group body does not match its signed hash")
            with mapped():
                plaintext = AESGCM(inner[:32]).decrypt(_ZERO_NONCE, body,
                                                       _group_aad(group_id, sender_id))
            store.update_sender_key_state(self._conn, group_id, sender_id, chain.key_id,
                                          moved.iteration, moved.encode())
            return plaintext

    def _skipped_room(self, group_id: bytes, sender_id: str, chain: SenderChain) -> int:
        """How many skipped keys ``chain`` may hold: MAX_SKIPPED_KEYS less those of the
        sender's other states (their sizes tell, nothing is loaded)."""
        sizes = store.sender_key_state_sizes(self._conn, group_id, sender_id)
        others = sum(skipped_in_received(size) for key_id, size in sizes.items()
                     if key_id != chain.key_id)
        return MAX_SKIPPED_KEYS - others
