"""The groups package's error tree.

    GroupsError (mesh.errors.MeshError)
    └── CryptoError
        ├── CryptoUsageError     (LocalError)  a call that can never work: bad group id,
        │                                      decrypting our own sender-key message ...
        ├── CryptoStoreError     (LocalError)  the key database belongs to another identity
        │                                      or holds a record we cannot read
        ├── NoSession            (LocalError)  encrypting to a peer or group we have no
        │                                      session / own sender key for
        ├── IdentityChanged      (RemoteError) a peer's identity key differs from the one
        │                                      we trusted: shown as "safety number changed"
        ├── BadBundle            (RemoteError) a prekey bundle we cannot build a session from
        ├── BadDistribution      (RemoteError) a sender-key distribution message we refuse
        ├── Throttled            (RemoteError) a member's messages are over its rate limit:
        │                                      refused for now, fine to offer again later
        ├── AheadOfChain         (RemoteError) a group message too far ahead of our chain:
        │                                      refused until the messages between arrive
        └── DecryptError         (RemoteError) a ciphertext we refuse
            ├── MalformedMessage    it does not parse
            ├── InvalidCiphertext   MAC, signature, padding or body hash do not check out
            ├── IdentityMismatch    the identity key inside does not derive to the sender's ID
            ├── UnknownKey          no session, sender key or prekey with the id it names
            ├── DuplicateMessage    already decrypted (or its key was dropped)
            ├── FutureIteration     claims an iteration too far ahead of our chain
            └── ChunkError          an attachment chunk that does not authenticate
    └── GroupError
        ├── OpRejected        (RemoteError) a membership op that does not verify or is
        │                                   not allowed by the log (reason says which)
        ├── BadContent        (RemoteError) an envelope or decrypted content that does
        │                                   not parse strictly or breaks a bound
        ├── PermissionDenied  (LocalError)  our user may not do that (not an admin ...)
        │   └── Unsendable                  what our user asked to send cannot be encoded
        │                                   within the protocol's bounds (too long, the
        │                                   conversation's clock exhausted ...)
        ├── InviteError       (RemoteError) an invite that is malformed, forged, expired,
        │                                   already used, or for someone removed
        └── NotFound          (LocalError)  no such group, member or message here
    └── StorageError          (LocalError)  the disk refused or lost an attachment chunk

Everything python-axolotl, protobuf or `cryptography` raises on hostile bytes is turned
into one of these at the groups.crypto boundary; remote errors carry a stable ``reason``
(mesh.errors.RemoteError) and never a secret.
"""

from __future__ import annotations

from mesh.errors import LocalError, MeshError, RemoteError

__all__ = [
    "AheadOfChain",
    "BadBundle",
    "BadContent",
    "BadDistribution",
    "ChunkError",
    "CryptoError",
    "CryptoStoreError",
    "CryptoUsageError",
    "DecryptError",
    "DuplicateMessage",
    "FutureIteration",
    "GroupError",
    "GroupsError",
    "IdentityChanged",
    "IdentityMismatch",
    "InvalidCiphertext",
    "InviteError",
    "MalformedMessage",
    "NoSession",
    "NotFound",
    "OpRejected",
    "PermissionDenied",
    "StorageError",
    "Throttled",
    "UnknownKey",
    "Unsendable",
]


class GroupsError(MeshError):
    """Base of every error the groups package raises on purpose."""


class CryptoError(GroupsError):
    """Base of the errors of groups.crypto."""


class CryptoUsageError(CryptoError, LocalError):
    pass


class CryptoStoreError(CryptoError, LocalError):
    pass


class NoSession(CryptoError, LocalError):
    """Nothing to encrypt with: claim a bundle / create the sender key first."""


class IdentityChanged(CryptoError, RemoteError):
    """The peer presented an identity key other than the one we trusted.

    Never accepted silently; the UI shows "safety number changed" and only an explicit
    ``Crypto.trust_identity`` (after the user compared the new number) moves on.
    """

    reason = "identity_changed"

    def __init__(self, user_id: str, identity_key: bytes) -> None:
        super().__init__(f"identity key of {user_id} changed")
        self.user_id = user_id
        self.identity_key = identity_key  # public: safe to show and compare


class BadBundle(CryptoError, RemoteError):
    reason = "bad_bundle"


class BadDistribution(CryptoError, RemoteError):
    reason = "bad_sender_key"


class Throttled(CryptoError, RemoteError):
    """A member sent more (or costlier) messages than its rate limit allows just now.

    Nothing is wrong with the message itself: a validate hook refuses it *for now*
    (mesh.errors.NotYetValid), so anti-entropy offers it again later.
    """

    reason = "throttled"


class AheadOfChain(CryptoError, RemoteError):
    """A group message more than MAX_CHAIN_GAP iterations ahead of our chain for its key.

    Reading it would make us derive every key in between at once. Nothing is wrong with
    it otherwise: the validate hook refuses it *for now* (mesh.errors.NotYetValid), and
    anti-entropy offers it again once the messages in between have moved the chain on.
    """

    reason = "ahead_of_chain"


class DecryptError(CryptoError, RemoteError):
    reason = "decrypt_failed"


class MalformedMessage(DecryptError):
    reason = "malformed_ciphertext"


class InvalidCiphertext(DecryptError):
    reason = "invalid_ciphertext"


class IdentityMismatch(DecryptError):
    reason = "identity_mismatch"


class UnknownKey(DecryptError):
    reason = "unknown_key"


class DuplicateMessage(DecryptError):
    reason = "duplicate"


class FutureIteration(DecryptError):
    reason = "too_far_ahead"


class ChunkError(DecryptError):
    reason = "bad_chunk"


class GroupError(GroupsError):
    """Base of the errors of the membership log, invites and the messenger."""


class OpRejected(GroupError, RemoteError):
    reason = "op_rejected"


class PermissionDenied(GroupError, LocalError):
    def __init__(self, message: str, reason: str = "forbidden") -> None:
        super().__init__(message)
        self.reason = reason


class BadContent(GroupError, RemoteError):
    reason = "bad_content"


class Unsendable(PermissionDenied):
    """Refused before anything is encrypted or stored: the user sees why."""


class InviteError(GroupError, RemoteError):
    reason = "bad_invite"


class NotFound(GroupError, LocalError):
    pass


class StorageError(GroupsError, LocalError):
    """A chunk is missing or damaged on disk, or the disk refused a write."""
