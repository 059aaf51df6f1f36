"""Identity keys, 15-digit user IDs and signed records.

A user is an identity key pair (Curve25519, signatures by XEdDSA, exactly the keys
python-axolotl uses, so the same key signs records, link handshakes and Signal
prekeys). The 15-digit user ID is derived from the public key, which makes IDs
self-certifying: whoever serves a record for an ID cannot swap in another key
without the derivation failing. See docs/protocol.md, "Identity".
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import axolotl_curve25519 as _curve
import msgpack
from nacl.exceptions import CryptoError
from nacl.pwhash import argon2id
from nacl.secret import SecretBox

from mesh.encoding import b64d, b64e, require
from mesh.errors import (
    FormatError,
    KeyFileError,
    PassphraseError,
    RecordError,
    SignatureError,
)

__all__ = [
    "DJB_TYPE",
    "LAST_RESORT_PREKEY_ID",
    "MAX_ENDPOINTS",
    "KeyPair",
    "PreKey",
    "Record",
    "SignedPreKey",
    "display_user_id",
    "generate_prekeys",
    "identity_is_protected",
    "load_or_create_identity",
    "parse_user_id",
    "set_passphrase",
    "user_id_for_key",
    "verify",
]

DJB_TYPE = 0x05
PUBLIC_KEY_LEN = 33  # type byte 0x05 + 32 bytes, python-axolotl's serialisation
PRIVATE_KEY_LEN = 32
SIGNATURE_LEN = 64

ID_DOMAIN = b"parley/user-id/v1"
ID_ROUNDS = 5200
ID_MODULUS = 10**15

RECORD_DOMAIN = b"parley/record/v1"
LAST_RESORT_PREKEY_ID = 0xFFFFFF
MAX_PREKEY_ID = 0xFFFFFE
MAX_ENDPOINTS = 8
MAX_ENDPOINT_LEN = 255
MAX_SEQ = 2**63 - 1
MAX_RECORD_BYTES = 4096  # the largest legal record is about 2.5 KiB; DHT values cap at 8 KiB
_ENDPOINT_RE = re.compile(r"^wss?://[\x21-\x7e]{1,250}$")
_USER_ID_RE = re.compile(r"^[0-9]{15}$")

KEY_FILE = "identity.key"
# Key wrapping at rest: libsodium's "moderate" Argon2id cost (256 MiB, 3 passes; about
# a second here), stored in the file so that it can be raised later.
KDF_NAME = "argon2id13"
KDF_OPS = argon2id.OPSLIMIT_MODERATE
KDF_MEM = argon2id.MEMLIMIT_MODERATE


def _check_public_key(key: bytes, what: str = "public key") -> bytes:
    if len(key) != PUBLIC_KEY_LEN or key[0] != DJB_TYPE:
        raise FormatError(f"{what} must be 33 bytes starting with 0x05")
    return key


@dataclass(frozen=True, repr=False)
class KeyPair:
    """A Curve25519 key pair; ``public`` is the 33-byte serialised form."""

    public: bytes
    private: bytes

    def __repr__(self) -> str:  # never print the private half
        return f"KeyPair(public={self.public.hex()[:16]}…)"

    @classmethod
    def generate(cls) -> KeyPair:
        private = _curve.generatePrivateKey(os.urandom(32))
        return cls(bytes([DJB_TYPE]) + _curve.generatePublicKey(private), private)

    def sign(self, message: bytes) -> bytes:
        return _curve.calculateSignature(os.urandom(64), self.private, message)

    @functools.cached_property
    def user_id(self) -> str:  # 5200 hash rounds: worth keeping (the key never changes)
        return user_id_for_key(self.public)


def verify(public_key: bytes, message: bytes, signature: bytes) -> None:
    """Check an XEdDSA signature; raise SignatureError unless it holds."""
    if len(public_key) != PUBLIC_KEY_LEN or public_key[0] != DJB_TYPE:
        raise SignatureError("malformed public key")
    if len(signature) != SIGNATURE_LEN:
        raise SignatureError("malformed signature")
    if _curve.verifySignature(public_key[1:], message, signature) != 0:
        raise SignatureError("signature does not verify")


def user_id_for_key(public_key: bytes) -> str:
    """The 15-digit user ID: iterated, domain-separated SHA-512 of the public key.

    5200 rounds, as Signal's fingerprints use, make grinding keys for a chosen ID cost
    about 2^50 * 5200 hash calls.
    """
    _check_public_key(public_key)
    digest = ID_DOMAIN
    for _ in range(ID_ROUNDS):
        digest = hashlib.sha512(digest + public_key).digest()
    return f"{int.from_bytes(digest[:8], 'big') % ID_MODULUS:015d}"


def display_user_id(user_id: str) -> str:
    """'123456789012345' -> '123 456 789 012 345' (groups of three are read aloud easily)."""
    user_id = parse_user_id(user_id)
    return " ".join(user_id[i:i + 3] for i in range(0, 15, 3))


def parse_user_id(text: Any) -> str:
    """Accept an ID as typed by people (spaces or dashes between digits); return 15 digits."""
    if not isinstance(text, str):
        raise FormatError("user id must be a string of 15 digits")
    compact = text.replace(" ", "").replace("-", "")
    if not _USER_ID_RE.match(compact):
        raise FormatError("user id must be exactly 15 digits")
    return compact


@dataclass(frozen=True)
class PreKey:
    """A public prekey: a one-time prekey or the last-resort prekey."""

    id: int
    public_key: bytes

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "public_key": b64e(self.public_key)}

    @classmethod
    def from_json(cls, obj: Any, *, field_name: str = "prekey",
                  last_resort: bool = False) -> PreKey:
        obj = _exact_fields(obj, {"id", "public_key"}, field_name)
        key_id = require(obj["id"], int, f"{field_name}.id")
        if last_resort:
            if key_id != LAST_RESORT_PREKEY_ID:
                raise FormatError(f"{field_name}.id must be {LAST_RESORT_PREKEY_ID}")
        elif not 1 <= key_id <= MAX_PREKEY_ID:
            raise FormatError(f"{field_name}.id must be in 1..{MAX_PREKEY_ID}")
        public = b64d(obj["public_key"], length=PUBLIC_KEY_LEN, field=f"{field_name}.public_key")
        return cls(key_id, _check_public_key(public, f"{field_name}.public_key"))


@dataclass(frozen=True)
class SignedPreKey:
    """The medium-term prekey; its signature (by the identity key over the 33-byte
    public key) is the one python-axolotl's SessionBuilder checks."""

    id: int
    public_key: bytes
    signature: bytes

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "public_key": b64e(self.public_key),
                "signature": b64e(self.signature)}

    @classmethod
    def from_json(cls, obj: Any) -> SignedPreKey:
        obj = _exact_fields(obj, {"id", "public_key", "signature"}, "signed_prekey")
        key_id = require(obj["id"], int, "signed_prekey.id")
        if not 0 <= key_id <= MAX_PREKEY_ID:
            raise FormatError(f"signed_prekey.id must be in 0..{MAX_PREKEY_ID}")
        public = b64d(obj["public_key"], length=PUBLIC_KEY_LEN, field="signed_prekey.public_key")
        sig = b64d(obj["signature"], length=SIGNATURE_LEN, field="signed_prekey.signature")
        return cls(key_id, _check_public_key(public, "signed_prekey.public_key"), sig)


def generate_prekeys(start_id: int, count: int) -> list[tuple[PreKey, KeyPair]]:
    """Fresh one-time prekeys with consecutive IDs (wrapping inside 1..MAX_PREKEY_ID)."""
    out = []
    for i in range(count):
        key_id = (start_id - 1 + i) % MAX_PREKEY_ID + 1
        pair = KeyPair.generate()
        out.append((PreKey(key_id, pair.public), pair))
    return out


_RECORD_FIELDS = {"id", "identity_key", "signed_prekey", "last_resort_prekey", "endpoints",
                  "seq", "updated_at", "signature"}


@dataclass(frozen=True)
class Record:
    """A user's signed discovery record. Newer ``seq`` wins everywhere it is stored."""

    user_id: str
    identity_key: bytes
    signed_prekey: SignedPreKey
    last_resort_prekey: PreKey
    endpoints: tuple[str, ...]
    seq: int
    updated_at: int
    signature: bytes = field(repr=False)

    @classmethod
    def create(cls, identity: KeyPair, *, signed_prekey: SignedPreKey,
               last_resort_prekey: PreKey, endpoints: Iterable[str], seq: int,
               now: float) -> Record:
        unsigned = cls(identity.user_id, identity.public, signed_prekey, last_resort_prekey,
                       tuple(endpoints), seq, int(now), b"")
        unsigned._check_fields()
        return replace(unsigned, signature=identity.sign(unsigned.signing_bytes()))

    def signing_bytes(self) -> bytes:
        """The canonical encoding that the signature covers (a msgpack array in a
        fixed order behind a domain tag, so no map-ordering ambiguity exists)."""
        return msgpack.packb([
            RECORD_DOMAIN, self.user_id, self.identity_key,
            [self.signed_prekey.id, self.signed_prekey.public_key, self.signed_prekey.signature],
            [self.last_resort_prekey.id, self.last_resort_prekey.public_key],
            list(self.endpoints), self.seq, self.updated_at,
        ], use_bin_type=True)

    def _check_fields(self) -> None:
        if not _USER_ID_RE.match(self.user_id):
            raise RecordError("record id must be 15 digits")
        try:
            _check_public_key(self.identity_key, "identity_key")
        except FormatError as exc:
            raise RecordError(str(exc)) from None
        if self.last_resort_prekey.id != LAST_RESORT_PREKEY_ID:
            raise RecordError("last_resort_prekey.id must be 0xFFFFFF")
        if len(self.endpoints) > MAX_ENDPOINTS:
            raise RecordError(f"at most {MAX_ENDPOINTS} endpoints")
        for ep in self.endpoints:
            if not isinstance(ep, str) or len(ep) > MAX_ENDPOINT_LEN or not _ENDPOINT_RE.match(ep):
                raise RecordError("endpoint must be a ws:// or wss:// URL of printable ASCII")
        if not 1 <= self.seq <= MAX_SEQ:
            raise RecordError("seq must be a positive 63-bit integer")
        if not 0 <= self.updated_at <= MAX_SEQ:
            raise RecordError("updated_at must be a non-negative 63-bit integer")

    def verify(self) -> Record:
        """Check the ID derivation, both signatures and every field; return self."""
        self._check_fields()
        if user_id_for_key(self.identity_key) != self.user_id:
            raise RecordError("record id does not match its identity key", "id_mismatch")
        try:
            verify(self.identity_key, self.signing_bytes(), self.signature)
            verify(self.identity_key, self.signed_prekey.public_key, self.signed_prekey.signature)
        except SignatureError as exc:
            raise RecordError(f"record {exc}", "bad_signature") from None
        return self

    # JSON form (bootstrap API)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.user_id,
            "identity_key": b64e(self.identity_key),
            "signed_prekey": self.signed_prekey.to_json(),
            "last_resort_prekey": self.last_resort_prekey.to_json(),
            "endpoints": list(self.endpoints),
            "seq": self.seq,
            "updated_at": self.updated_at,
            "signature": b64e(self.signature),
        }

    @classmethod
    def from_json(cls, obj: Any) -> Record:
        """Decode and verify; any defect raises RecordError (never another exception)."""
        try:
            obj = _exact_fields(obj, _RECORD_FIELDS, "record")
            endpoints = require(obj["endpoints"], list, "record.endpoints")
            user_id = obj["id"]
            if not isinstance(user_id, str) or not _USER_ID_RE.match(user_id):
                raise FormatError("record id must be 15 digits")
            record = cls(
                user_id=user_id,
                identity_key=b64d(obj["identity_key"], length=PUBLIC_KEY_LEN,
                                  field="record.identity_key"),
                signed_prekey=SignedPreKey.from_json(obj["signed_prekey"]),
                last_resort_prekey=PreKey.from_json(obj["last_resort_prekey"],
                                                    field_name="last_resort_prekey",
                                                    last_resort=True),
                endpoints=tuple(endpoints),
                seq=require(obj["seq"], int, "record.seq"),
                updated_at=require(obj["updated_at"], int, "record.updated_at"),
                signature=b64d(obj["signature"], length=SIGNATURE_LEN, field="record.signature"),
            )
        except FormatError as exc:
            raise RecordError(str(exc)) from None
        return record.verify()

    # Binary form (links, DHT)

    def encode(self) -> bytes:
        return msgpack.packb([self.signing_bytes(), self.signature], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Record:
        """Inverse of encode(); strict (re-encoding must give the same bytes)."""
        try:
            if len(data) > MAX_RECORD_BYTES:
                raise RecordError(f"record is larger than {MAX_RECORD_BYTES} bytes")
            body, signature = msgpack.unpackb(data, raw=False)
            (domain, user_id, identity_key, (spk_id, spk_pub, spk_sig), (lr_id, lr_pub),
             endpoints, seq, updated_at) = msgpack.unpackb(body, raw=False)
            if domain != RECORD_DOMAIN:
                raise RecordError("unknown record domain")
            for value, kind in ((user_id, str), (identity_key, bytes), (spk_id, int),
                                (spk_pub, bytes), (spk_sig, bytes), (lr_id, int),
                                (lr_pub, bytes), (endpoints, list), (seq, int),
                                (updated_at, int), (signature, bytes)):
                require(value, kind, "record field")
            _check_public_key(spk_pub, "signed_prekey.public_key")
            _check_public_key(lr_pub, "last_resort_prekey.public_key")
            record = cls(user_id, identity_key, SignedPreKey(spk_id, spk_pub, spk_sig),
                         PreKey(lr_id, lr_pub), tuple(endpoints), seq, updated_at, signature)
            if record.encode() != data:
                raise RecordError("record encoding is not canonical")
        except RecordError:
            raise
        except (FormatError, ValueError, TypeError, msgpack.UnpackException) as exc:
            raise RecordError(f"malformed record: {type(exc).__name__}") from None
        return record.verify()

    def newer_than(self, other: Record | None) -> bool:
        return other is None or self.seq > other.seq


def _exact_fields(obj: Any, names: set[str], what: str) -> Mapping[str, Any]:
    if not isinstance(obj, dict):
        raise FormatError(f"{what} must be an object")
    missing = names - obj.keys()
    extra = obj.keys() - names
    if missing:
        raise FormatError(f"{what} lacks {', '.join(sorted(missing))}")
    if extra:
        raise FormatError(f"{what} has unknown fields {', '.join(sorted(map(str, extra)))}")
    return obj


# Key files


def load_or_create_identity(data_dir: Path, passphrase: bytes | None = None) -> KeyPair:
    """The user's identity key from ``<data_dir>/identity.key``, made on first use.

    The directory is forced to 0700 and the file written 0600 (atomically); a key
    file readable by others is refused, as ssh refuses such keys. With ``passphrase``
    the private key is stored wrapped (Argon2id, then XSalsa20-Poly1305), and an
    unprotected file is rewrapped with it; a protected file needs it
    (PassphraseError when missing or wrong, and then nothing is changed).
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data_dir, 0o700)
    path = data_dir / KEY_FILE
    if path.exists():
        pair, protected = _read_key_file(path, passphrase)
        if passphrase is not None and not protected:
            _write_key_file(path, pair, passphrase)
        return pair
    pair = KeyPair.generate()
    _write_key_file(path, pair, passphrase)
    return pair


def set_passphrase(data_dir: Path, pair: KeyPair, passphrase: bytes,
                   current: bytes | None = None) -> None:
    """Protect the key file of the running identity ``pair`` with ``passphrase``, or
    change it: a protected file needs ``current`` (PassphraseError when missing or
    wrong, and nothing is changed). Slow on purpose (Argon2id, twice when changing):
    call it from a thread."""
    path = Path(data_dir) / KEY_FILE
    stored, _ = _read_key_file(path, current)
    if stored != pair:
        raise KeyFileError(f"{path} holds another identity than the running one")
    _write_key_file(path, pair, passphrase)


def identity_is_protected(data_dir: Path) -> bool:
    """Whether ``<data_dir>/identity.key`` exists and needs a passphrase (so the CLI
    knows to ask for one)."""
    try:
        obj = msgpack.unpackb((Path(data_dir) / KEY_FILE).read_bytes(), raw=False)
    except (OSError, ValueError, msgpack.UnpackException):
        return False
    return isinstance(obj, dict) and obj.get("v") == 2


def _write_key_file(path: Path, pair: KeyPair, passphrase: bytes | None) -> None:
    if passphrase is None:
        obj: dict[str, Any] = {"v": 1, "public": pair.public, "private": pair.private}
    else:
        if not passphrase:
            raise PassphraseError("the passphrase is empty")
        salt = os.urandom(argon2id.SALTBYTES)
        key = argon2id.kdf(SecretBox.KEY_SIZE, passphrase, salt, opslimit=KDF_OPS,
                           memlimit=KDF_MEM)
        obj = {"v": 2, "public": pair.public, "kdf": KDF_NAME, "ops": KDF_OPS,
               "mem": KDF_MEM, "salt": salt, "box": bytes(SecretBox(key).encrypt(pair.private))}
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, msgpack.packb(obj, use_bin_type=True))
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _unwrap(obj: dict[str, Any], passphrase: bytes | None, path: Path) -> bytes:
    """The private key of a v2 key file. The KDF cost is read from the file but must
    lie within libsodium's bounds, so a doctored file cannot ask for 100 GB."""
    if obj.get("kdf") != KDF_NAME or type(obj.get("ops")) is not int \
            or type(obj.get("mem")) is not int or type(obj.get("box")) is not bytes \
            or not argon2id.OPSLIMIT_MIN <= obj["ops"] <= argon2id.OPSLIMIT_SENSITIVE \
            or not argon2id.MEMLIMIT_MIN <= obj["mem"] <= argon2id.MEMLIMIT_SENSITIVE \
            or type(obj.get("salt")) is not bytes or len(obj["salt"]) != argon2id.SALTBYTES:
        raise ValueError("unsupported key wrapping")
    if passphrase is None:
        raise PassphraseError(f"{path} is protected by a passphrase; give it with "
                              "--passphrase-file or start on a terminal")
    key = argon2id.kdf(SecretBox.KEY_SIZE, passphrase, obj["salt"], opslimit=obj["ops"],
                       memlimit=obj["mem"])
    try:
        return SecretBox(key).decrypt(obj["box"])
    except CryptoError:
        raise PassphraseError(f"wrong passphrase for {path}") from None


def _read_key_file(path: Path, passphrase: bytes | None) -> tuple[KeyPair, bool]:
    """The key pair, and whether the file is passphrase-protected."""
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        raise KeyFileError(f"{path} is accessible by other users (mode {mode:o}); "
                           "run chmod 600 on it")
    try:
        obj = msgpack.unpackb(path.read_bytes(), raw=False)
        public = obj["public"]
        if obj.get("v") == 2:
            private = _unwrap(obj, passphrase, path)
        elif obj.get("v") == 1:
            private = obj["private"]
        else:
            raise ValueError("unsupported key file")
        if len(private) != PRIVATE_KEY_LEN:
            raise ValueError("unsupported key file")
        _check_public_key(public)
    except (OSError, ValueError, TypeError, KeyError, FormatError,
            msgpack.UnpackException) as exc:
        raise KeyFileError(f"{path} is not a Parley identity key file ({exc})") from None
    pair = KeyPair(public, private)
    if bytes([DJB_TYPE]) + _curve.generatePublicKey(private) != public:
        raise KeyFileError(f"{path}: public key does not match private key")
    return pair, obj["v"] == 2
