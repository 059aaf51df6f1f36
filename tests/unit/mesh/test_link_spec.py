"""docs/protocol.md §4, re-implemented from the text with plain primitives
(hashlib, cryptography, mesh.identity.verify) and checked against a real Link, so
that the document and the code cannot drift apart."""

from __future__ import annotations

import hashlib
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from mesh import wire
from mesh.identity import Record, verify
from mesh.link import Link
from tests.unit.mesh.test_link_helpers import make_node


def u32(n: int) -> bytes:
    return struct.pack(">I", n)


def th0(m1: bytes, m2: bytes) -> bytes:
    return hashlib.sha256(b"parley/link/v1" + u32(len(m1)) + m1 + u32(len(m2)) + m2).digest()


def hkdf(dh: bytes, salt: bytes, info: str) -> bytes:
    return HKDF(hashes.SHA256(), 32, salt, info.encode()).derive(dh)


def open_sealed(key: bytes, n: int, message: bytes) -> bytes:
    header = struct.pack(">Q", n)
    assert message[:8] == header
    return AESGCM(key).decrypt(b"\x00" * 4 + header, message[8:], header)


def test_key_schedule_vector():
    """The vector printed in the document."""
    ei = X25519PrivateKey.from_private_bytes(bytes(range(1, 33)))
    er = X25519PrivateKey.from_private_bytes(bytes(range(33, 65)))
    m1 = wire.encode(wire.Hello((1,), ei.public_key().public_bytes_raw()))
    m2 = wire.encode(wire.Hello((1,), er.public_key().public_bytes_raw()))
    assert m1.hex() == ("84a174a568656c6c6fa17601a876657273696f6e739101a9657068656d6572616c"
                        "c42007a37cbc142093c8b755dc1b10e86cb426374ad16aa853ed0bdfc0b2b86d1c7c")
    dh = ei.exchange(er.public_key())
    assert dh.hex() == "a84dc7c3c8f058b1b2dc4cd1e9b5dc0a7987f88b6a9564cde3391fc421159e77"
    t0 = th0(m1, m2)
    assert t0.hex() == "301f570663493a3e697183e849216a21da42e5960c29c102d77d98549438bd87"
    assert hkdf(dh, t0, "parley/link/v1 handshake i2r").hex() == (
        "7786da12d88b3e0ca7b2880d8c8aafb20fbce8a5676a9f9456856baa0fbbf564")
    k = hkdf(dh, t0, "parley/link/v1 handshake r2i")
    assert k.hex() == "8356fbf3c0297f6cfd291afd011a26838811c1ff18661160521c2d4a7143cd48"
    ping = wire.encode(wire.Ping(b"abc"))
    sealed = AESGCM(k).encrypt(bytes(12), ping, bytes(8))
    assert (bytes(8) + sealed).hex() == (
        "0000000000000000d9155b511342ea60e240d57e756799adea2b940466323817eb37982645b83e9c"
        "43208d7985")


def test_a_real_handshake_follows_the_document():
    alice, bob = make_node(), make_node()
    i = Link(alice.identity, alice.record, initiator=True, now=0)
    r = Link(bob.identity, bob.record, initiator=False, now=0)
    e_i = X25519PrivateKey.from_private_bytes(i._ephemeral.private_bytes_raw())

    (m1,) = i.data_to_send()
    hello_i = wire.decode(m1)
    assert hello_i.versions == (1,) and len(hello_i.ephemeral) == 32
    r.receive_data(m1, 0)
    m2, m3 = r.data_to_send()
    hello_r = wire.decode(m2)
    assert hello_r.versions == (1,)

    dh = e_i.exchange(X25519PublicKey.from_public_bytes(hello_r.ephemeral))
    t0 = th0(m1, m2)
    a_r = open_sealed(hkdf(dh, t0, "parley/link/v1 handshake r2i"), 0, m3)
    auth_r = wire.decode(a_r)
    assert Record.decode(auth_r.record) == bob.record
    verify(bob.identity.public, b"parley/link/v1 responder signature" + t0, auth_r.signature)
    t1 = hashlib.sha256(t0 + a_r).digest()

    i.receive_data(m2, 0)
    i.receive_data(m3, 0)
    (m4,) = i.data_to_send()
    a_i = open_sealed(hkdf(dh, t0, "parley/link/v1 handshake i2r"), 0, m4)
    auth_i = wire.decode(a_i)
    assert Record.decode(auth_i.record) == alice.record
    verify(alice.identity.public, b"parley/link/v1 initiator signature" + t1, auth_i.signature)
    t2 = hashlib.sha256(t1 + a_i).digest()

    r.receive_data(m4, 0)
    assert i.handshake_hash == r.handshake_hash == t2
    for n in range(3):
        i.send(wire.Graft(bytes([n]) * 16))
        (data,) = i.data_to_send()
        plain = open_sealed(hkdf(dh, t2, "parley/link/v1 data i2r"), n, data)
        assert wire.decode(plain) == wire.Graft(bytes([n]) * 16)
    r.send(wire.Prune(b"p" * 16))
    (data,) = r.data_to_send()
    assert wire.decode(open_sealed(hkdf(dh, t2, "parley/link/v1 data r2i"), 0, data)) == (
        wire.Prune(b"p" * 16))
    r.close("normal", "bye")
    (data,) = r.data_to_send()
    assert wire.decode(open_sealed(hkdf(dh, t2, "parley/link/v1 data r2i"), 1, data)) == (
        wire.Close("normal", "bye"))
