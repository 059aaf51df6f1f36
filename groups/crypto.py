"""The crypto facade: Signal pairwise sessions, sender keys, safety numbers, attachments.

This is the only module that imports python-axolotl or protobuf. It speaks bytes,
user IDs and snake_case, keeps every key in the node database (groups.store), and
turns every exception the libraries raise on hostile input into groups.errors at the
boundary (the pattern of httpx's map_httpcore_exceptions). The formats are written
down in docs/protocol.md §7.

Each public operation runs in one SAVEPOINT: a message that fails to decrypt changes
nothing (no chain advanced, no identity saved, no prekey used), and a caller can wrap
"decrypt and store the plaintext" in its own transaction so that both or neither land.
"""

from __future__ import annotations

import os
import sys

# python-axolotl's generated *_pb2 modules only load on protobuf's pure-Python backend.
# The backend is fixed the first time google.protobuf's api_implementation is imported,
# so an environment default is not enough once something else got there first.
_PB_ENV = "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"
if "google.protobuf.internal.api_implementation" in sys.modules:
    if sys.modules["google.protobuf.internal.api_implementation"].Type() != "python":
        raise ImportError(
            "google.protobuf was loaded with a native backend before groups.crypto; "
            f"python-axolotl needs {_PB_ENV}=python (import groups.crypto first or set it)")
else:
    os.environ[_PB_ENV] = "python"

import hashlib  # noqa: E402
import hmac  # noqa: E402
import sqlite3  # noqa: E402
import struct  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import lru_cache  # noqa: E402
from typing import Any  # noqa: E402

from axolotl.axolotladdress import AxolotlAddress  # noqa: E402
from axolotl.duplicatemessagexception import DuplicateMessageException  # noqa: E402
from axolotl.ecc.curve import Curve  # noqa: E402
from axolotl.ecc.djbec import DjbECPrivateKey, DjbECPublicKey  # noqa: E402
from axolotl.ecc.eckeypair import ECKeyPair  # noqa: E402
from axolotl.groups.groupcipher import GroupCipher  # noqa: E402
from axolotl.groups.groupsessionbuilder import GroupSessionBuilder  # noqa: E402
from axolotl.groups.senderkeyname import SenderKeyName  # noqa: E402
from axolotl.groups.state.senderkeyrecord import SenderKeyRecord  # noqa: E402
from axolotl.groups.state.senderkeystate import SenderKeyState  # noqa: E402
from axolotl.groups.state.senderkeystore import SenderKeyStore  # noqa: E402
from axolotl.identitykey import IdentityKey  # noqa: E402
from axolotl.identitykeypair import IdentityKeyPair  # noqa: E402
from axolotl.invalidkeyexception import InvalidKeyException  # noqa: E402
from axolotl.invalidkeyidexception import InvalidKeyIdException  # noqa: E402
from axolotl.invalidmessageexception import InvalidMessageException  # noqa: E402
from axolotl.invalidversionexception import InvalidVersionException  # noqa: E402
from axolotl.legacymessageexception import LegacyMessageException  # noqa: E402
from axolotl.nosessionexception import NoSessionException  # noqa: E402
from axolotl.protocol.prekeywhispermessage import PreKeyWhisperMessage  # noqa: E402
from axolotl.protocol.senderkeydistributionmessage import (  # noqa: E402
    SenderKeyDistributionMessage,
)
from axolotl.protocol.senderkeymessage import SenderKeyMessage  # noqa: E402
from axolotl.protocol.whispermessage import WhisperMessage  # noqa: E402
from axolotl.sessionbuilder import SessionBuilder  # noqa: E402
from axolotl.sessioncipher import SessionCipher  # noqa: E402
from axolotl.state.identitykeystore import IdentityKeyStore  # noqa: E402
from axolotl.state.prekeybundle import PreKeyBundle  # noqa: E402
from axolotl.state.prekeyrecord import PreKeyRecord  # noqa: E402
from axolotl.state.prekeystore import PreKeyStore  # noqa: E402
from axolotl.state.sessionrecord import SessionRecord  # noqa: E402
from axolotl.state.sessionstate import SessionState  # noqa: E402
from axolotl.state.sessionstore import SessionStore  # noqa: E402
from axolotl.state.signedprekeyrecord import SignedPreKeyRecord  # noqa: E402
from axolotl.state.signedprekeystore import SignedPreKeyStore  # noqa: E402
from axolotl.state.storageprotos_pb2 import SenderKeyStateStructure  # noqa: E402
from axolotl.untrustedidentityexception import UntrustedIdentityException  # noqa: E402
from cryptography.exceptions import InvalidTag  # noqa: E402
from cryptography.hazmat.primitives.ciphers.aead import AESGCM  # noqa: E402
from google.protobuf.internal import api_implementation as _pb_impl  # noqa: E402
from google.protobuf.message import DecodeError  # noqa: E402

from groups import store  # noqa: E402
from groups._symmetric import (  # noqa: E402
    ATTACHMENT_CHUNK_SIZE,
    ATTACHMENT_FILE_ID_LEN,
    attachment_chunk_count,
    compare_safety_qr,
    decrypt_chunk,
    encrypt_chunk,
    new_attachment_key,
    safety_number,
    safety_number_qr,
)
from groups.errors import (  # noqa: E402
    BadBundle,
    BadDistribution,
    CryptoError,
    CryptoStoreError,
    CryptoUsageError,
    DuplicateMessage,
    FutureIteration,
    GroupsError,
    IdentityChanged,
    IdentityMismatch,
    InvalidCiphertext,
    MalformedMessage,
    NoSession,
    UnknownKey,
)
from mesh.errors import RecordError  # noqa: E402
from mesh.identity import (  # noqa: E402
    LAST_RESORT_PREKEY_ID,
    KeyPair,
    PreKey,
    Record,
    SignedPreKey,
    generate_prekeys,
    user_id_for_key,
)

if _pb_impl.Type() != "python":  # pragma: no cover - guarded above
    raise ImportError(f"python-axolotl needs {_PB_ENV}=python")

__all__ = [
    "ATTACHMENT_CHUNK_SIZE",
    "ATTACHMENT_FILE_ID_LEN",
    "DEVICE_ID",
    "MAX_FORWARD_ITERATIONS",
    "MAX_SKIPPED_KEYS",
    "REGISTRATION_ID",
    "Crypto",
    "GroupMessageInfo",
    "attachment_chunk_count",
    "compare_safety_qr",
    "decrypt_chunk",
    "encrypt_chunk",
    "new_attachment_key",
    "safety_number",
    "safety_number_qr",
]

DEVICE_ID = 1
# axolotl wants a registration id (Signal uses it to spot reinstalls). Ours is a constant:
# records do not carry one, and a per-user random number would only be a linkable tag.
REGISTRATION_ID = 1
MAX_FORWARD_ITERATIONS = 2000  # sender-key and ratchet messages at most this far ahead
MAX_SKIPPED_KEYS = 2000        # skipped message keys kept per chain
MAX_SENDER_KEY_STATES = 5      # states kept per (group, member), as libsignal
MAX_DISTRIBUTION_ITERATION = 2**31
GROUP_ID_LEN = 16

_GROUP_VERSION = 0x01
_GROUP_HEADER_MAX = 512  # a SenderKeyMessage around a 64-byte inner block is ~180 bytes
_GROUP_AAD = b"parley/group-body/v1"
_ZERO_NONCE = bytes(12)
_PAIRWISE_TYPES = (2, 3)  # axolotl CiphertextMessage WHISPER_TYPE, PREKEY_TYPE
_ARCHIVED_NEW_CHAIN_MAX = 32  # see _SessionCipher

# What the libraries raise on bytes they cannot parse, besides their own exceptions.
_PARSE_FAILURES = (DecodeError, ValueError, TypeError, IndexError, KeyError, AttributeError,
                   AssertionError, OverflowError, struct.error, RecursionError)


@contextmanager
def _mapped(invalid: type[CryptoError] = InvalidCiphertext,
            malformed: type[CryptoError] = MalformedMessage) -> Iterator[None]:
    """Turn library exceptions into ours (``invalid``: authentication failures)."""
    try:
        yield
    except GroupsError:
        raise
    except UntrustedIdentityException as exc:
        key = exc.getIdentityKey()
        raise IdentityChanged(str(exc.getName()), key.serialize()) from exc
    except DuplicateMessageException as exc:
        raise DuplicateMessage("message already received") from exc
    except (NoSessionException, InvalidKeyIdException) as exc:
        raise UnknownKey(f"no key for this message: {exc}") from exc
    except (InvalidMessageException, InvalidKeyException, InvalidTag) as exc:
        raise invalid(f"{invalid.__name__}: {exc}") from exc
    except (InvalidVersionException, LegacyMessageException, *_PARSE_FAILURES) as exc:
        raise malformed(f"cannot parse: {type(exc).__name__}") from exc


def _public(key: bytes) -> DjbECPublicKey:
    return Curve.decodePoint(bytearray(key), 0)


def _pair(pair: KeyPair) -> ECKeyPair:
    return ECKeyPair(_public(pair.public), DjbECPrivateKey(pair.private))


@lru_cache(maxsize=1024)
def _user_id(identity_key: bytes) -> str:
    return user_id_for_key(identity_key)


def _check_group_id(group_id: bytes) -> bytes:
    if not isinstance(group_id, bytes) or len(group_id) != GROUP_ID_LEN:
        raise CryptoUsageError(f"group id must be {GROUP_ID_LEN} bytes")
    return group_id


def _trim(messages: Any, limit: int = MAX_SKIPPED_KEYS) -> None:
    """Drop the oldest skipped message keys of a chain beyond ``limit``."""
    if len(messages) > limit:
        del messages[:len(messages) - limit]


class _AxolotlStore(IdentityKeyStore, PreKeyStore, SignedPreKeyStore, SessionStore,
                    SenderKeyStore):
    """python-axolotl's five store interfaces over groups.store (one connection)."""

    def __init__(self, conn: sqlite3.Connection, identity: KeyPair) -> None:
        self.conn = conn
        self.identity = identity
        self._identity_pair = IdentityKeyPair(IdentityKey(_public(identity.public)),
                                              DjbECPrivateKey(identity.private))
        self.now = 0.0  # set by Crypto before operations that create rows

    def __repr__(self) -> str:
        return f"_AxolotlStore({self.identity!r})"

    # IdentityKeyStore

    def getIdentityKeyPair(self) -> IdentityKeyPair:
        return self._identity_pair

    def getLocalRegistrationId(self) -> int:
        return REGISTRATION_ID

    def saveIdentity(self, recepientId, identityKey) -> None:
        store.save_identity(self.conn, recepientId, identityKey.serialize(), self.now)

    def isTrustedIdentity(self, recepientId, identityKey) -> bool:
        known = store.load_identity(self.conn, recepientId)
        return known is None or known == identityKey.serialize()

    # PreKeyStore

    def loadPreKey(self, preKeyId) -> PreKeyRecord:
        blob = store.load_prekey(self.conn, preKeyId)
        if blob is None:
            raise InvalidKeyIdException(f"no prekey {preKeyId}")
        return PreKeyRecord(serialized=blob)

    def storePreKey(self, preKeyId, preKeyRecord) -> None:
        store.store_prekey(self.conn, preKeyId, preKeyRecord.serialize(), self.now)

    def containsPreKey(self, preKeyId) -> bool:
        return store.contains_prekey(self.conn, preKeyId)

    def removePreKey(self, preKeyId) -> None:
        store.remove_prekey(self.conn, preKeyId, keep=LAST_RESORT_PREKEY_ID)

    # SignedPreKeyStore

    def loadSignedPreKey(self, signedPreKeyId) -> SignedPreKeyRecord:
        blob = store.load_signed_prekey(self.conn, signedPreKeyId)
        if blob is None:
            raise InvalidKeyIdException(f"no signed prekey {signedPreKeyId}")
        return SignedPreKeyRecord(serialized=blob)

    def loadSignedPreKeys(self) -> list[SignedPreKeyRecord]:
        return [SignedPreKeyRecord(serialized=b) for b in store.load_signed_prekeys(self.conn)]

    def storeSignedPreKey(self, signedPreKeyId, signedPreKeyRecord) -> None:
        store.store_signed_prekey(self.conn, signedPreKeyId, signedPreKeyRecord.serialize(),
                                  self.now)

    def containsSignedPreKey(self, signedPreKeyId) -> bool:
        return store.contains_signed_prekey(self.conn, signedPreKeyId)

    def removeSignedPreKey(self, signedPreKeyId) -> None:
        store.remove_signed_prekey(self.conn, signedPreKeyId)

    # SessionStore

    def loadSession(self, recepientId, deviceId) -> SessionRecord:
        blob = store.load_session(self.conn, recepientId, deviceId)
        return SessionRecord() if blob is None else SessionRecord(serialized=blob)

    def getSubDeviceSessions(self, recepientId) -> list[int]:
        return [d for d in store.session_device_ids(self.conn, recepientId) if d != DEVICE_ID]

    def storeSession(self, recepientId, deviceId, sessionRecord) -> None:
        for state in [sessionRecord.getSessionState(), *sessionRecord.getPreviousSessionStates()]:
            for chain in state.getStructure().receiverChains:
                _trim(chain.messageKeys)
        store.store_session(self.conn, recepientId, deviceId, sessionRecord.serialize())

    def containsSession(self, recepientId, deviceId) -> bool:
        return store.contains_session(self.conn, recepientId, deviceId)

    def deleteSession(self, recepientId, deviceId) -> None:
        store.delete_session(self.conn, recepientId, deviceId)

    def deleteAllSessions(self, recepientId) -> None:
        store.delete_all_sessions(self.conn, recepientId)

    # SenderKeyStore (a record = the ordered states of one (group, member))

    @staticmethod
    def _name(name: SenderKeyName) -> tuple[bytes, str]:
        return bytes.fromhex(name.getGroupId()), name.getSender().getName()

    def loadSenderKey(self, senderKeyName) -> SenderKeyRecord:
        record = SenderKeyRecord()
        for blob in store.load_sender_key_states(self.conn, *self._name(senderKeyName)):
            structure = SenderKeyStateStructure()
            structure.ParseFromString(blob)
            record.senderKeyStates.append(SenderKeyState(senderKeyStateStructure=structure))
        return record

    def storeSenderKey(self, senderKeyName, senderKeyRecord) -> None:
        rows: list[store.SenderKeyState] = []
        seen: set[int] = set()
        for state in senderKeyRecord.senderKeyStates:
            s = state.getStructure()
            if s.senderKeyId in seen:  # axolotl looks up the first state with an id
                continue
            seen.add(s.senderKeyId)
            _trim(s.senderMessageKeys)
            rows.append(store.SenderKeyState(
                s.senderKeyId, s.senderChainKey.iteration, bytes(s.senderSigningKey.public),
                bool(s.senderSigningKey.private), s.SerializeToString()))
        store.replace_sender_key_states(self.conn, *self._name(senderKeyName),
                                        rows[-MAX_SENDER_KEY_STATES:], self.now)


class _SessionCipher(SessionCipher):
    """axolotl's SessionCipher with a bound on the work a forged message can cause.

    Upstream tries the message against the current state and every archived one (up
    to 40), each time possibly opening a new receiving chain and walking it up to 2000
    steps (~45 ms in Python) before the MAC fails. Here an archived state is only tried
    if it already knows the message's ratchet key, or the message sits near the start
    of a new chain (counter <= 32), which is where a late reply on an old session is.
    """

    def decryptWithSessionRecord(self, sessionRecord: SessionRecord,
                                 cipherText: WhisperMessage) -> bytes:
        try:
            state = SessionState(sessionRecord.getSessionState())
            plaintext = self.decryptWithSessionState(state, cipherText)
            sessionRecord.setState(state)
            return plaintext
        except InvalidMessageException:
            pass
        ratchet_key = cipherText.getSenderRatchetKey()
        previous = sessionRecord.getPreviousSessionStates()
        for index, old in enumerate(previous):
            if (not old.hasReceiverChain(ratchet_key)
                    and cipherText.getCounter() > _ARCHIVED_NEW_CHAIN_MAX):
                continue
            try:
                promoted = SessionState(old)
                plaintext = self.decryptWithSessionState(promoted, cipherText)
            except InvalidMessageException:
                continue
            previous.pop(index)
            sessionRecord.promoteState(promoted)
            return plaintext
        raise InvalidMessageException("no session state accepts this message")


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
    with _mapped(malformed=MalformedMessage, invalid=MalformedMessage):
        message = SenderKeyMessage(serialized=header)
    return header, body, message


class Crypto:
    """One user's crypto state over the node database.

    ``identity`` is the user's identity key pair (from the data directory); the store
    refuses to serve a database that was made for another identity.
    """

    def __init__(self, conn: sqlite3.Connection, identity: KeyPair, *, now: float) -> None:
        self._conn = conn
        self._identity = identity
        self.user_id = identity.user_id
        self._store = _AxolotlStore(conn, identity)
        with store.atomic(conn):
            local = store.load_local_identity(conn)
            if local is None:
                store.save_local_identity(conn, identity.public, REGISTRATION_ID, now)
            elif local[0] != identity.public:
                raise CryptoStoreError("this database belongs to another identity key")

    def __repr__(self) -> str:
        return f"Crypto(user_id={self.user_id})"

    @contextmanager
    def _op(self, now: float | None = None) -> Iterator[None]:
        if now is not None:
            self._store.now = now
        with store.atomic(self._conn):
            yield

    # Prekeys (policy lives in groups.prekeys)

    def signed_prekey(self) -> SignedPreKey:
        """The current signed prekey, as it goes into our Record."""
        row = store.newest_signed_prekey(self._conn)
        if row is None:
            raise CryptoUsageError("no signed prekey yet: call ensure_prekeys()")
        record = SignedPreKeyRecord(serialized=row[1])
        return SignedPreKey(row[0], record.getKeyPair().getPublicKey().serialize(),
                            bytes(record.getSignature()))

    def signed_prekey_created_at(self) -> int:
        row = store.newest_signed_prekey(self._conn)
        if row is None:
            raise CryptoUsageError("no signed prekey yet: call ensure_prekeys()")
        return row[2]

    def last_resort_prekey(self) -> PreKey:
        blob = store.load_prekey(self._conn, LAST_RESORT_PREKEY_ID)
        if blob is None:
            raise CryptoUsageError("no last-resort prekey yet: call ensure_prekeys()")
        public = PreKeyRecord(serialized=blob).getKeyPair().getPublicKey().serialize()
        return PreKey(LAST_RESORT_PREKEY_ID, public)

    def ensure_prekeys(self, now: float) -> bool:
        """Create the signed and last-resort prekeys if missing; True if anything was made."""
        made = False
        with self._op(now):
            if store.newest_signed_prekey(self._conn) is None:
                self._new_signed_prekey(now)
                made = True
            if not store.contains_prekey(self._conn, LAST_RESORT_PREKEY_ID):
                pair = KeyPair.generate()
                self._store.storePreKey(LAST_RESORT_PREKEY_ID,
                                        PreKeyRecord(LAST_RESORT_PREKEY_ID, _pair(pair)))
                made = True
        return made

    def _new_signed_prekey(self, now: float) -> SignedPreKey:
        key_id = (store.next_counter(self._conn, "signed_prekey") - 1) % 0xFFFFFE + 1
        pair = KeyPair.generate()
        signature = self._identity.sign(pair.public)
        self._store.storeSignedPreKey(
            key_id, SignedPreKeyRecord(key_id, int(now * 1000), _pair(pair), signature))
        store.retire_signed_prekeys(self._conn, except_id=key_id, now=now)
        return SignedPreKey(key_id, pair.public, signature)

    def rotate_signed_prekey(self, now: float) -> SignedPreKey:
        """Make a new signed prekey; the old ones stay until purge_signed_prekeys()."""
        with self._op(now):
            return self._new_signed_prekey(now)

    def purge_signed_prekeys(self, now: float, grace: float) -> int:
        """Delete signed prekeys retired more than ``grace`` seconds ago."""
        with self._op(now):
            ids = store.retired_signed_prekeys_before(self._conn, now - grace)
            for key_id in ids:
                store.remove_signed_prekey(self._conn, key_id)
        return len(ids)

    def generate_one_time_prekeys(self, count: int, now: float) -> list[PreKey]:
        """Make and store ``count`` one-time prekeys; return their public halves."""
        with self._op(now):
            start = store.next_counter(self._conn, "prekey", step=count)
            out = []
            for public, pair in generate_prekeys((start - 1) % 0xFFFFFE + 1, count):
                self._store.storePreKey(public.id, PreKeyRecord(public.id, _pair(pair)))
                out.append(public)
        return out

    def one_time_prekeys_left(self) -> int:
        """How many one-time prekeys we hold privately (used or not by the server)."""
        return store.count_prekeys(self._conn, exclude=LAST_RESORT_PREKEY_ID)

    # Pairwise sessions

    def start_session(self, record: Record, prekey: PreKey, *, now: float) -> None:
        """Build a session to ``record``'s owner from a claimed bundle (X3DH as Alice).

        ``prekey`` is a one-time prekey or the record's last-resort prekey. The first
        message we encrypt is then a PreKeyWhisperMessage, later ones WhisperMessages.
        """
        try:
            record.verify()
        except RecordError as exc:
            raise BadBundle(f"bundle record does not verify: {exc}") from exc
        if record.user_id == self.user_id:
            raise CryptoUsageError("cannot start a session with ourselves")
        if prekey.id == LAST_RESORT_PREKEY_ID and prekey != record.last_resort_prekey:
            raise BadBundle("last-resort prekey does not match the signed record")
        self._process_bundle(record, prekey, now)

    def _process_bundle(self, record: Record, prekey: PreKey | None, now: float) -> None:
        spk = record.signed_prekey
        with self._op(now), _mapped(invalid=BadBundle, malformed=BadBundle):
            bundle = PreKeyBundle(
                REGISTRATION_ID, DEVICE_ID,
                None if prekey is None else prekey.id,
                None if prekey is None else _public(prekey.public_key),
                spk.id, _public(spk.public_key), spk.signature,
                IdentityKey(_public(record.identity_key)))
            SessionBuilder(self._store, self._store, self._store, self._store,
                           record.user_id, DEVICE_ID).processPreKeyBundle(bundle)

    def has_session(self, user_id: str) -> bool:
        return store.contains_session(self._conn, user_id, DEVICE_ID)

    def identity_key_of(self, user_id: str) -> bytes | None:
        """The identity key we trust for ``user_id`` (None: never met)."""
        return store.load_identity(self._conn, user_id)

    def trust_identity(self, user_id: str, identity_key: bytes, *, now: float) -> None:
        """Accept a changed identity key (after the user compared safety numbers)."""
        if _user_id(identity_key) != user_id:
            raise CryptoUsageError("identity key does not belong to this user id")
        with self._op(now):
            store.save_identity(self._conn, user_id, identity_key, now)

    def _cipher(self, user_id: str) -> SessionCipher:
        return _SessionCipher(self._store, self._store, self._store, self._store, user_id,
                             DEVICE_ID)

    def encrypt(self, user_id: str, plaintext: bytes) -> bytes:
        """Encrypt for one peer: type byte (3 prekey, 2 whisper) + axolotl message."""
        with self._op():
            if not store.contains_session(self._conn, user_id, DEVICE_ID):
                raise NoSession(f"no session with {user_id}: claim a bundle first")
            with _mapped(invalid=CryptoStoreError, malformed=CryptoStoreError):
                message = self._cipher(user_id).encrypt(bytes(plaintext))
                return bytes([message.getType()]) + message.serialize()

    def decrypt(self, user_id: str, data: bytes, *, now: float) -> bytes:
        """Decrypt a pairwise message from ``user_id`` (whose ID the caller authenticated)."""
        data = bytes(data)
        if len(data) < 2 or data[0] not in _PAIRWISE_TYPES:
            raise MalformedMessage("not a pairwise ciphertext")
        with self._op(now):
            cipher = self._cipher(user_id)
            if data[0] == 3:
                with _mapped(malformed=MalformedMessage, invalid=MalformedMessage):
                    message = PreKeyWhisperMessage(serialized=data[1:])
                    identity_key = message.getIdentityKey().serialize()
                if len(identity_key) != 33 or _user_id(identity_key) != user_id:
                    raise IdentityMismatch("prekey message identity is not the sender's")
                with _mapped():
                    return bytes(cipher.decryptPkmsg(message))
            with _mapped(malformed=MalformedMessage, invalid=MalformedMessage):
                whisper = WhisperMessage(serialized=data[1:])
            with _mapped():
                return bytes(cipher.decryptMsg(whisper))

    # Sender keys

    def _name(self, group_id: bytes, user_id: str) -> SenderKeyName:
        return SenderKeyName(_check_group_id(group_id).hex(), AxolotlAddress(user_id, DEVICE_ID))

    def sender_key_distribution(self, group_id: bytes, *, now: float) -> bytes:
        """Our sender key for the group as a distribution message (made if missing).

        It goes to each member over their pairwise session; a member who receives it
        can read our messages from the chain's current position on.
        """
        name = self._name(group_id, self.user_id)
        with self._op(now), _mapped(invalid=CryptoStoreError, malformed=CryptoStoreError):
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
        with _mapped(invalid=BadDistribution, malformed=BadDistribution):
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
            with _mapped(invalid=BadDistribution, malformed=BadDistribution):
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
            with _mapped(invalid=CryptoStoreError, malformed=CryptoStoreError):
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
        with _mapped():
            message.verifySignature(_public(info.signing_key))
        return GroupMessageInfo(message.getKeyId(), message.getIteration())

    def decrypt_group(self, group_id: bytes, sender_id: str, data: bytes) -> bytes:
        """Decrypt ``sender_id``'s group message; nothing changes unless it is valid."""
        if sender_id == self.user_id:
            raise CryptoUsageError("our own group messages are not decrypted")
        name = self._name(group_id, sender_id)
        header, body, message = _split_group(data)
        with self._op():
            self._checked(group_id, sender_id, message)
            with _mapped():
                inner = bytes(GroupCipher(self._store, name).decrypt(header))
            if len(inner) != 64:
                raise InvalidCiphertext("group header holds no body key")
            if not hmac.compare_digest(hashlib.sha256(body).digest(), inner[32:]):
                raise InvalidCiphertext("group body does not match its signed hash")
            with _mapped():
                return AESGCM(inner[:32]).decrypt(_ZERO_NONCE, body,
                                                  self._group_aad(group_id, sender_id))
