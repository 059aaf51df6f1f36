"""Crypto throughput: ``python -m bench.crypto [--quick]``.

Group (sender-key) and pairwise (Double Ratchet) encrypt/decrypt in messages/s for
1 KiB and 1 MiB payloads, and attachment chunk encryption in MB/s, each next to a
floor measured in the same run with `cryptography` alone:

- group:    AES-256-CBC (PKCS7) + one Ed25519 signature / verification per message
- pairwise: AES-256-CBC (PKCS7) + one HMAC-SHA256 per message (what a ratchet message
            needs at least)
- chunks:   raw AES-256-GCM over the same 256 KiB chunks

Our side runs with its real key store: a SQLite file in WAL mode with synchronous=FULL,
so every message commits its ratchet state (one fsync) before it returns, as a node does.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from groups import crypto, store
from mesh.identity import KeyPair, Record

KIB, MIB = 1024, 1024 * 1024


def rate(fn: Callable[[int], object], n: int) -> float:
    """Operations per second of fn(i) for i in range(n)."""
    started = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - started)


def cbc_encrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return enc.update(padder.update(data) + padder.finalize()) + enc.finalize()


def cbc_decrypt(key: bytes, iv: bytes, data: bytes) -> bytes:
    dec = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
    unpadder = padding.PKCS7(128).unpadder()
    return unpadder.update(dec.update(data) + dec.finalize()) + unpadder.finalize()


def floors(payload: bytes, n: int) -> dict[str, float]:
    key, iv = os.urandom(32), os.urandom(16)
    signer = Ed25519PrivateKey.generate()
    public = signer.public_key()
    mac_key = os.urandom(32)
    ct = cbc_encrypt(key, iv, payload)
    sig = signer.sign(ct)
    tag = hmac.new(mac_key, ct, hashlib.sha256).digest()

    def group_enc(_: int) -> None:
        signer.sign(cbc_encrypt(key, iv, payload))

    def group_dec(_: int) -> None:
        public.verify(sig, ct)
        cbc_decrypt(key, iv, ct)

    def pair_enc(_: int) -> None:
        hmac.new(mac_key, cbc_encrypt(key, iv, payload), hashlib.sha256).digest()

    def pair_dec(_: int) -> None:
        if not hmac.compare_digest(hmac.new(mac_key, ct, hashlib.sha256).digest(), tag):
            raise AssertionError
        cbc_decrypt(key, iv, ct)

    return {"group encrypt": rate(group_enc, n), "group decrypt": rate(group_dec, n),
            "pairwise encrypt": rate(pair_enc, n), "pairwise decrypt": rate(pair_dec, n)}


def user(path: Path, now: float) -> tuple[KeyPair, crypto.Crypto]:
    identity = KeyPair.generate()
    c = crypto.Crypto(store.open_store(path), identity, now=now)
    c.ensure_prekeys(now)
    return identity, c


def ours(tmp: Path, payload: bytes, n: int) -> dict[str, float]:
    now = time.time()
    _, alice = user(tmp / f"a{len(payload)}.db", now)
    b_id, bob = user(tmp / f"b{len(payload)}.db", now)
    record = Record.create(b_id, signed_prekey=bob.signed_prekey(),
                           last_resort_prekey=bob.last_resort_prekey(), endpoints=(), seq=1,
                           now=now)
    alice.start_session(record, bob.generate_one_time_prekeys(1, now)[0], now=now)
    bob.decrypt(alice.user_id, alice.encrypt(bob.user_id, b"hi"), now=now)
    alice.decrypt(bob.user_id, bob.encrypt(alice.user_id, b"hi"), now=now)
    group = os.urandom(16)
    bob.process_sender_key_distribution(group, alice.user_id,
                                        alice.sender_key_distribution(group, now=now), now=now)

    out: dict[str, float] = {}
    sealed: list[bytes] = []
    out["pairwise encrypt"] = rate(
        lambda _: sealed.append(alice.encrypt(bob.user_id, payload)), n)
    out["pairwise decrypt"] = rate(lambda i: bob.decrypt(alice.user_id, sealed[i], now=now), n)
    sealed.clear()
    out["group encrypt"] = rate(lambda _: sealed.append(alice.encrypt_group(group, payload)), n)
    # A receiver verifies a message only up to MAX_CHAIN_GAP ahead of its chain, which
    # decryption moves on: verify and decrypt a gap's worth at a time, timing each apart.
    spent = {"group verify (relay)": 0.0, "group decrypt": 0.0}
    for start in range(0, n, crypto.MAX_CHAIN_GAP):
        window = sealed[start:start + crypto.MAX_CHAIN_GAP]
        spent["group verify (relay)"] += len(window) / rate(
            lambda i, w=window: bob.verify_group_message(group, alice.user_id, w[i], now=now),
            len(window))
        spent["group decrypt"] += len(window) / rate(
            lambda i, w=window: bob.decrypt_group(group, alice.user_id, w[i]), len(window))
    out.update({name: n / seconds for name, seconds in spent.items()})
    return out


def chunks(n: int) -> tuple[float, float]:
    """MB/s of encrypt_chunk and of raw AES-256-GCM over 256 KiB chunks."""
    key, file_id = crypto.new_attachment_key(), os.urandom(crypto.ATTACHMENT_FILE_ID_LEN)
    chunk = os.urandom(crypto.ATTACHMENT_CHUNK_SIZE)
    gcm = AESGCM(key)
    mb = crypto.ATTACHMENT_CHUNK_SIZE / 1e6
    ours_rate = rate(lambda i: crypto.encrypt_chunk(key, file_id, i, n, chunk), n) * mb
    raw_rate = rate(lambda i: gcm.encrypt(i.to_bytes(12, "big"), chunk, None), n) * mb
    return ours_rate, raw_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    args = parser.parse_args()
    scale = 4 if args.quick else 1
    rows: list[tuple[str, str, float, float | None]] = []
    with tempfile.TemporaryDirectory() as tmp:
        for size, label, n in ((KIB, "1 KiB", 400 // scale), (MIB, "1 MiB", 60 // scale)):
            payload = os.urandom(size)
            floor = floors(payload, n)
            mine = ours(Path(tmp), payload, n)
            for op in ("group encrypt", "group decrypt", "group verify (relay)",
                       "pairwise encrypt", "pairwise decrypt"):
                rows.append((op, label, mine[op], floor.get(op)))
    ours_mb, raw_mb = chunks(4000 // scale)

    print("| operation | payload | Parley msg/s | floor msg/s | Parley / floor |")
    print("|---|---|---:|---:|---:|")
    for op, label, mine_rate, floor_rate in rows:
        if floor_rate is None:
            print(f"| {op} | {label} | {mine_rate:,.0f} | - | - |")
        else:
            print(f"| {op} | {label} | {mine_rate:,.0f} | {floor_rate:,.0f} "
                  f"| {mine_rate / floor_rate:.0%} |")
    print(f"| attachment chunk encrypt | 256 KiB | {ours_mb:,.0f} MB/s | {raw_mb:,.0f} MB/s "
          f"| {ours_mb / raw_mb:.0%} |")


if __name__ == "__main__":
    main()
