"""Prekeys and pairwise sessions (libsignal v3 X3DH and Double Ratchet).

Part of the groups.crypto package (import from there); see docs/protocol.md §7,
"Prekeys" and "Pairwise sessions". The prekey lifecycle policy lives in groups.prekeys.
"""

from __future__ import annotations

from axolotl.duplicatemessagexception import DuplicateMessageException
from axolotl.ecc.ec import ECPublicKey
from axolotl.identitykey import IdentityKey
from axolotl.invalidmessageexception import InvalidMessageException
from axolotl.kdf.messagekeys import MessageKeys
from axolotl.protocol.prekeywhispermessage import PreKeyWhisperMessage
from axolotl.protocol.whispermessage import WhisperMessage
from axolotl.ratchet.chainkey import ChainKey
from axolotl.sessionbuilder import SessionBuilder
from axolotl.sessioncipher import SessionCipher
from axolotl.state.prekeybundle import PreKeyBundle
from axolotl.state.prekeyrecord import PreKeyRecord
from axolotl.state.sessionstate import SessionState
from axolotl.state.signedprekeyrecord import SignedPreKeyRecord

from groups import store
from groups.crypto.keystore import (
    DEVICE_ID,
    MAX_FORWARD_ITERATIONS,
    REGISTRATION_ID,
    CryptoBase,
    key_pair,
    mapped,
    public_key,
    user_id_of,
)
from groups.crypto.sessionrecord import StoredSessionRecord, add_skipped, take_skipped
from groups.errors import (
    BadBundle,
    CryptoStoreError,
    CryptoUsageError,
    IdentityMismatch,
    MalformedMessage,
    NoSession,
)
from mesh.errors import RecordError
from mesh.identity import (
    LAST_RESORT_PREKEY_ID,
    KeyPair,
    PreKey,
    Record,
    SignedPreKey,
    generate_prekeys,
)

__all__ = ["PairwiseSessions"]

_PAIRWISE_TYPES = (2, 3)  # axolotl CiphertextMessage WHISPER_TYPE, PREKEY_TYPE
_ARCHIVED_NEW_CHAIN_MAX = 32  # see _SessionCipher


class _SessionCipher(SessionCipher):
    """axolotl's SessionCipher with bounds on the work a peer's message can cause.

    Upstream tries the message against the current state and every archived one (up
    to 40), each time possibly opening a new receiving chain and walking it up to 2000
    steps (~45 ms in Python) before the MAC fails. Here an archived state is only tried
    if it already knows the message's ratchet key, or the message sits near the start
    of a new chain (counter <= 32), which is where a late reply on an old session is.

    Skipped message keys live beside the record (sessionrecord.StoredSessionRecord),
    not in it: each attempt works on its own copy (``self._skipped``), which replaces
    the record's only when the message decrypts, as the state copies do.
    """

    _skipped = b""

    def decryptWithSessionRecord(self, sessionRecord: StoredSessionRecord,
                                 cipherText: WhisperMessage) -> bytes:
        try:
            self._skipped = sessionRecord.skipped
            state = SessionState(sessionRecord.getSessionState())
            plaintext = self.decryptWithSessionState(state, cipherText)
            sessionRecord.setState(state)
            sessionRecord.skipped = self._skipped
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
                self._skipped = sessionRecord.skipped
                promoted = SessionState(old)
                plaintext = self.decryptWithSessionState(promoted, cipherText)
            except InvalidMessageException:
                continue
            previous.pop(index)
            sessionRecord.promoteState(promoted)
            sessionRecord.skipped = self._skipped
            return plaintext
        raise InvalidMessageException("no session state accepts this message")

    def getOrCreateMessageKeys(self, sessionState: SessionState, their_ephemeral: ECPublicKey,
                               chainKey: ChainKey, counter: int) -> MessageKeys:
        """Upstream's, with the skipped keys kept in ``self._skipped``."""
        ratchet_key = bytes(their_ephemeral.serialize())
        if chainKey.getIndex() > counter:
            found = take_skipped(self._skipped, ratchet_key, counter)
            if found is None:
                raise DuplicateMessageException(f"old counter {counter}, key gone")
            keys, self._skipped = found
            return keys
        if counter - chainKey.getIndex() > MAX_FORWARD_ITERATIONS:
            raise InvalidMessageException(f"over {MAX_FORWARD_ITERATIONS} messages ahead")
        passed = []
        while chainKey.getIndex() < counter:
            passed.append(chainKey.getMessageKeys())
            chainKey = chainKey.getNextChainKey()
        self._skipped = add_skipped(self._skipped, ratchet_key, passed)
        sessionState.setReceiverChainKey(their_ephemeral, chainKey.getNextChainKey())
        return chainKey.getMessageKeys()


class PairwiseSessions(CryptoBase):
    """Our prekeys and the Double Ratchet session with each peer (a role of Crypto)."""

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
                                        PreKeyRecord(LAST_RESORT_PREKEY_ID, key_pair(pair)))
                made = True
        return made

    def _new_signed_prekey(self, now: float) -> SignedPreKey:
        key_id = (store.next_counter(self._conn, "signed_prekey") - 1) % 0xFFFFFE + 1
        pair = KeyPair.generate()
        signature = self._identity.sign(pair.public)
        self._store.storeSignedPreKey(
            key_id, SignedPreKeyRecord(key_id, int(now * 1000), key_pair(pair), signature))
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
                self._store.storePreKey(public.id, PreKeyRecord(public.id, key_pair(pair)))
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
        with self._op(now), mapped(invalid=BadBundle, malformed=BadBundle):
            bundle = PreKeyBundle(
                REGISTRATION_ID, DEVICE_ID,
                None if prekey is None else prekey.id,
                None if prekey is None else public_key(prekey.public_key),
                spk.id, public_key(spk.public_key), spk.signature,
                IdentityKey(public_key(record.identity_key)))
            SessionBuilder(self._store, self._store, self._store, self._store,
                           record.user_id, DEVICE_ID).processPreKeyBundle(bundle)

    def has_session(self, user_id: str) -> bool:
        return store.contains_session(self._conn, user_id, DEVICE_ID)

    def identity_key_of(self, user_id: str) -> bytes | None:
        """The identity key we trust for ``user_id`` (None: never met)."""
        return store.load_identity(self._conn, user_id)

    def trust_identity(self, user_id: str, identity_key: bytes, *, now: float) -> None:
        """Accept a changed identity key (after the user compared safety numbers)."""
        if user_id_of(identity_key) != user_id:
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
            with mapped(invalid=CryptoStoreError, malformed=CryptoStoreError):
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
                with mapped(malformed=MalformedMessage, invalid=MalformedMessage):
                    message = PreKeyWhisperMessage(serialized=data[1:])
                    identity_key = message.getIdentityKey().serialize()
                if len(identity_key) != 33 or user_id_of(identity_key) != user_id:
                    raise IdentityMismatch("prekey message identity is not the sender's")
                with mapped():
                    return bytes(cipher.decryptPkmsg(message))
            with mapped(malformed=MalformedMessage, invalid=MalformedMessage):
                whisper = WhisperMessage(serialized=data[1:])
            with mapped():
                return bytes(cipher.decryptMsg(whisper))
