"""Group sender keys: distribution, the Parley group envelope, receive bounds.

Part of the groups.crypto package (import from there); see docs/protocol.md §7,
"Sender keys (groups)".
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass

from axolotl.axolotladdress import AxolotlAddress
from axolotl.groups.groupcipher import GroupCipher
from axolotl.groups.groupsessionbuilder import GroupSessionBuilder
from axolotl.groups.senderkeyname import SenderKeyName
from axolotl.protocol.senderkeydistributionmessage import SenderKeyDistributionMessage
from axolotl.protocol.senderkeymessage import SenderKeyMessage
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from groups import store
from groups.crypto.keystore import (
    DEVICE_ID,
    MAX_FORWARD_ITERATIONS,
    CryptoBase,
    mapped,
    public_key,
)
from groups.errors import (
    BadDistribution,
    CryptoStoreError,
    CryptoUsageError,
    FutureIteration,
    InvalidCiphertext,
    MalformedMessage,
    NoSession,
    UnknownKey,
)

__all__ = ["GROUP_ID_LEN", "GroupMessageInfo", "SenderKeys"]

MAX_DISTRIBUTION_ITERATION = 2**31
GROUP_ID_LEN = 16

_GROUP_VERSION = 0x01
_GROUP_HEADER_MAX = 512  # a SenderKeyMessage around a 64-byte inner block is ~180 bytes
_GROUP_AAD = b"parley/group-body/v1"
_ZERO_NONCE = bytes(12)


def _check_group_id(group_id: bytes) -> bytes:
    if not isinstance(group_id, bytes) or len(group_id) != GROUP_ID_LEN:
        raise CryptoUsageError(f"group id must be {GROUP_ID_LEN} bytes")
    return group_id


@dataclass(frozen=True)
class GroupMessageInfo:
    """What a verified group message claims: which sender key and which position."""

    key_id: int
    iteration: int


def _split_group(data: bytes) -> tuple[bytes, bytes, SenderKeyMessage]:
    """Group envelope -> (header, body, parsed header); see crypto-protocol.md."""
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
    return header, body, message


class SenderKeys(CryptoBase):
    """Our sender key in each group and the members' keys we hold (a role of Crypto)."""

    def _name(self, group_id: bytes, user_id: str) -> SenderKeyName:
        return SenderKeyName(_check_group_id(group_id).hex(), AxolotlAddress(user_id, DEVICE_ID))

    def sender_key_distribution(self, group_id: bytes, *, now: float) -> bytes:
        """Our sender key for the group as a distribution message (made if missing).

        It goes to each member over their pairwise session; a member who receives it
        can read our messages from the chain's current position on.
        """
        name = self._name(group_id, self.user_id)
        with self._op(now), mapped(invalid=CryptoStoreError, malformed=CryptoStoreError):
            return GroupSessionBuilder(self._store).create(name).serialize()

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

    def process_sender_key_distribution(self, group_id: bytes, sender_id: str, data: bytes, *,
                                        now: float) -> None:
        """Accept ``sender_id``'s sender key (received over our pairwise session).

        A new key id retires that member's older keys: they remain readable for
        in-flight messages until purge_retired_sender_keys().
        """
        if sender_id == self.user_id:
            raise BadDistribution("a distribution message claims to be our own")
        name = self._name(group_id, sender_id)
        with mapped(invalid=BadDistribution, malformed=BadDistribution):
            message = SenderKeyDistributionMessage(serialized=bytes(data))
            key_id, iteration = message.getId(), message.getIteration()
            chain_key = bytes(message.getChainKey())
            signing_key = message.getSignatureKey().serialize()
        if len(chain_key) != 32 or len(signing_key) != 33:
            raise BadDistribution("sender key has wrong key lengths")
        if iteration >= MAX_DISTRIBUTION_ITERATION:
            raise BadDistribution("sender key iteration out of range")
        with self._op(now):
            known = store.sender_key_info(self._conn, group_id, sender_id, key_id)
            if known is not None:
                if known.signing_key != signing_key:
                    raise BadDistribution("sender key id reused with another signing key")
                return  # a resend of a key we have: our chain position is newer
            with mapped(invalid=BadDistribution, malformed=BadDistribution):
                GroupSessionBuilder(self._store).process(name, message)
            store.retire_sender_keys(self._conn, group_id, sender_id, except_key_id=key_id,
                                     now=now)

    def forget_sender(self, group_id: bytes, sender_id: str | None = None) -> None:
        """Drop a removed member's sender keys (or, with None, every key of the group)."""
        with self._op():
            store.delete_sender_keys(self._conn, _check_group_id(group_id), sender_id)

    def purge_retired_sender_keys(self, now: float, grace: float) -> int:
        with self._op(now):
            return store.purge_retired_sender_keys(self._conn, now - grace)

    def encrypt_group(self, group_id: bytes, plaintext: bytes) -> bytes:
        """Encrypt for every member holding our sender key (envelope v1, see docs)."""
        name = self._name(group_id, self.user_id)
        with self._op():
            info = store.sender_key_info(self._conn, group_id, self.user_id)
            if info is None or not info.own:
                raise NoSession("no sender key of ours in this group")
            key = os.urandom(32)
            body = AESGCM(key).encrypt(_ZERO_NONCE, bytes(plaintext),
                                       self._group_aad(group_id, self.user_id))
            inner = key + hashlib.sha256(body).digest()
            with mapped(invalid=CryptoStoreError, malformed=CryptoStoreError):
                header = GroupCipher(self._store, name).encrypt(inner)
        return bytes([_GROUP_VERSION]) + len(header).to_bytes(2, "big") + header + body

    @staticmethod
    def _group_aad(group_id: bytes, sender_id: str) -> bytes:
        return _GROUP_AAD + group_id + sender_id.encode("ascii")

    def _checked(self, group_id: bytes, sender_id: str,
                 message: SenderKeyMessage) -> store.SenderKeyInfo:
        """The stored state a message names, refusing it cheaply if it is out of reach.

        python-axolotl's GroupCipher tests ``current - iteration > 2000`` (inverted), so
        a message far ahead would make it walk the hash chain up to 2^32 steps: the
        window is enforced here, before the cipher sees the message.
        """
        info = store.sender_key_info(self._conn, group_id, sender_id, message.getKeyId())
        if info is None:
            raise UnknownKey("no sender key with this id from this member")
        if message.getIteration() - info.iteration > MAX_FORWARD_ITERATIONS:
            raise FutureIteration(f"iteration is more than {MAX_FORWARD_ITERATIONS} ahead")
        return info

    def verify_group_message(self, group_id: bytes, sender_id: str,
                             data: bytes) -> GroupMessageInfo:
        """Check a group message's sender-key signature without using it up.

        For the gossip validate hook: relays call it before they store or forward.
        The body is bound to the signed header by a hash that only members who
        decrypt can check, so decrypt_group stays the final word.
        """
        _check_group_id(group_id)
        _header, _body, message = _split_group(data)
        info = self._checked(group_id, sender_id, message)
        with mapped():
            message.verifySignature(public_key(info.signing_key))
        return GroupMessageInfo(message.getKeyId(), message.getIteration())

    def decrypt_group(self, group_id: bytes, sender_id: str, data: bytes) -> bytes:
        """Decrypt ``sender_id``'s group message; nothing changes unless it is valid."""
        if sender_id == self.user_id:
            raise CryptoUsageError("our own group messages are not decrypted")
        name = self._name(group_id, sender_id)
        header, body, message = _split_group(data)
        with self._op():
            self._checked(group_id, sender_id, message)
            with mapped():
                inner = bytes(GroupCipher(self._store, name).decrypt(header))
            if len(inner) != 64:
                raise InvalidCiphertext("group header holds no body key")
            if not hmac.compare_digest(hashlib.sha256(body).digest(), inner[32:]):
                raise InvalidCiphertext("group body does not match its signed hash")
            with mapped():
                return AESGCM(inner[:32]).decrypt(_ZERO_NONCE, body,
                                                  self._group_aad(group_id, sender_id))
