"""python-axolotl's store interfaces over groups.store, and the boundary every call
into the library passes: ``mapped`` turns the library's exceptions into groups.errors,
``CryptoBase.op`` runs an operation in one SAVEPOINT.

Part of the groups.crypto package (import from there); see docs/protocol.md §7.
"""

from __future__ import annotations

import sqlite3
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache

from axolotl.duplicatemessagexception import DuplicateMessageException
from axolotl.ecc.curve import Curve
from axolotl.ecc.djbec import DjbECPrivateKey, DjbECPublicKey
from axolotl.ecc.eckeypair import ECKeyPair
from axolotl.identitykey import IdentityKey
from axolotl.identitykeypair import IdentityKeyPair
from axolotl.invalidkeyexception import InvalidKeyException
from axolotl.invalidkeyidexception import InvalidKeyIdException
from axolotl.invalidmessageexception import InvalidMessageException
from axolotl.invalidversionexception import InvalidVersionException
from axolotl.legacymessageexception import LegacyMessageException
from axolotl.nosessionexception import NoSessionException
from axolotl.state.identitykeystore import IdentityKeyStore
from axolotl.state.prekeyrecord import PreKeyRecord
from axolotl.state.prekeystore import PreKeyStore
from axolotl.state.sessionstore import SessionStore
from axolotl.state.signedprekeyrecord import SignedPreKeyRecord
from axolotl.state.signedprekeystore import SignedPreKeyStore
from axolotl.untrustedidentityexception import UntrustedIdentityException
from cryptography.exceptions import InvalidTag
from google.protobuf.message import DecodeError

from groups import store
from groups.crypto.sessionrecord import StoredSessionRecord
from groups.errors import (
    CryptoError,
    CryptoStoreError,
    DuplicateMessage,
    GroupsError,
    IdentityChanged,
    InvalidCiphertext,
    MalformedMessage,
    UnknownKey,
)
from mesh.identity import LAST_RESORT_PREKEY_ID, KeyPair, user_id_for_key

__all__ = [
    "DEVICE_ID",
    "MAX_FORWARD_ITERATIONS",
    "MAX_SKIPPED_KEYS",
    "REGISTRATION_ID",
    "AxolotlStore",
    "CryptoBase",
    "key_pair",
    "mapped",
    "public_key",
    "user_id_of",
]

DEVICE_ID = 1
# axolotl wants a registration id (Signal uses it to spot reinstalls). Ours is a constant:
# records do not carry one, and a per-user random number would only be a linkable tag.
REGISTRATION_ID = 1
MAX_FORWARD_ITERATIONS = 2000  # ratchet messages at most this far ahead (axolotl's bound)
MAX_SKIPPED_KEYS = 2000        # skipped message keys kept per peer / per sender

# What the libraries raise on bytes they cannot parse, besides their own exceptions.
_PARSE_FAILURES = (DecodeError, ValueError, TypeError, IndexError, KeyError, AttributeError,
                   AssertionError, OverflowError, struct.error, RecursionError)


@contextmanager
def mapped(invalid: type[CryptoError] = InvalidCiphertext,
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


def public_key(key: bytes) -> DjbECPublicKey:
    return Curve.decodePoint(bytearray(key), 0)


def key_pair(pair: KeyPair) -> ECKeyPair:
    return ECKeyPair(public_key(pair.public), DjbECPrivateKey(pair.private))


@lru_cache(maxsize=1024)
def user_id_of(identity_key: bytes) -> str:
    return user_id_for_key(identity_key)


class AxolotlStore(IdentityKeyStore, PreKeyStore, SignedPreKeyStore, SessionStore):
    """python-axolotl's store interfaces over groups.store (one connection).

    Sender keys are not among them: groups.crypto.senderkeys keeps those itself.
    """

    def __init__(self, conn: sqlite3.Connection, identity: KeyPair) -> None:
        self.conn = conn
        self.identity = identity
        self._identity_pair = IdentityKeyPair(IdentityKey(public_key(identity.public)),
                                              DjbECPrivateKey(identity.private))
        self.now = 0.0  # set by Crypto before operations that create rows

    def __repr__(self) -> str:
        return f"AxolotlStore({self.identity!r})"

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

    def loadSession(self, recepientId, deviceId) -> StoredSessionRecord:
        blob = store.load_session(self.conn, recepientId, deviceId)
        return StoredSessionRecord() if blob is None else StoredSessionRecord.decode(blob)

    def getSubDeviceSessions(self, recepientId) -> list[int]:
        return [d for d in store.session_device_ids(self.conn, recepientId) if d != DEVICE_ID]

    def storeSession(self, recepientId, deviceId, sessionRecord) -> None:
        # Every record axolotl stores is one it loaded from us (SessionBuilder and
        # SessionCipher both load first), so its skipped keys came along.
        store.store_session(self.conn, recepientId, deviceId,
                            sessionRecord.encode(MAX_SKIPPED_KEYS))

    def containsSession(self, recepientId, deviceId) -> bool:
        return store.contains_session(self.conn, recepientId, deviceId)

    def deleteSession(self, recepientId, deviceId) -> None:
        store.delete_session(self.conn, recepientId, deviceId)

    def deleteAllSessions(self, recepientId) -> None:
        store.delete_all_sessions(self.conn, recepientId)


class CryptoBase:
    """What every part of ``Crypto`` shares: the connection, the axolotl store over it,
    and ``_op``, the SAVEPOINT each public operation runs in.

    ``identity`` is the user's identity key pair (from the data directory); the store
    refuses to serve a database that was made for another identity.
    """

    def __init__(self, conn: sqlite3.Connection, identity: KeyPair, *, now: float) -> None:
        self._conn = conn
        self._identity = identity
        self.user_id = identity.user_id
        self._store = AxolotlStore(conn, identity)
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
