"""Attachment chunks on disk, encrypted with the file's key: blocking I/O, run in threads.

Layout under ``<data-dir>/files`` (mode 0700):

    <file id hex>/<index>     chunk ``index`` exactly as it travels: AES-256-GCM
                              ciphertext + tag (groups.crypto.encrypt_chunk)
    <file id hex>/<index>.tmp a chunk being written
    uploads/                  plaintext of uploads while they are received (deleted
                              as soon as they are encrypted or refused)

A chunk is written to ``.tmp``, fsynced, then renamed: a chunk file that exists is
complete. Whether it is *right* is checked against the announced SHA-256 whenever it is
trusted anew: when a restarted node resumes a download (``verified_chunks``) and every
time a chunk is served or decrypted. So a torn write after a power cut costs a
re-download, never a wrong byte. No file ever exists in plaintext except an upload
between its last byte and its encryption; finished files are their chunks.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from groups.crypto import (
    ATTACHMENT_CHUNK_SIZE,
    attachment_chunk_count,
    decrypt_chunk,
    encrypt_chunk,
)
from groups.errors import GroupsError
from mesh.errors import LocalError

__all__ = ["FileStore", "StorageError"]

_HEX_ID = re.compile(r"^[0-9a-f]{64}$")
_CHUNK_NAME = re.compile(r"^(0|[1-9][0-9]{0,5})$")


class StorageError(GroupsError, LocalError):
    """A chunk is missing or damaged on disk, or the disk refused a write."""


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uploads = self.root / "uploads"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.uploads.mkdir(mode=0o700, exist_ok=True)

    def directory(self, file_id: bytes) -> Path:
        return self.root / file_id.hex()

    def chunk_path(self, file_id: bytes, index: int) -> Path:
        return self.directory(file_id) / str(index)

    # -- chunks --------------------------------------------------------------------------

    def write_chunk(self, file_id: bytes, index: int, data: bytes) -> None:
        """Store one encrypted chunk durably and atomically (tmp, fsync, rename)."""
        directory = self.directory(file_id)
        try:
            directory.mkdir(mode=0o700, exist_ok=True)
            tmp = directory / f"{index}.tmp"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, directory / str(index))
        except OSError as exc:
            raise StorageError(f"could not store chunk {index}: {exc.strerror}") from None

    def read_chunk(self, file_id: bytes, index: int, expected_hash: bytes) -> bytes:
        """One encrypted chunk, checked against its announced hash."""
        try:
            data = self.chunk_path(file_id, index).read_bytes()
        except OSError:
            raise StorageError(f"chunk {index} is not here") from None
        if hashlib.sha256(data).digest() != expected_hash:
            with contextlib.suppress(OSError):
                self.chunk_path(file_id, index).unlink()
            raise StorageError(f"chunk {index} was damaged on disk and is gone")
        return data

    def has_chunks(self, file_id: bytes, count: int) -> bool:
        """Every chunk file is there (a cheap check for files recorded complete)."""
        return all(self.chunk_path(file_id, i).is_file() for i in range(count))

    def verified_chunks(self, file_id: bytes, hashes: tuple[bytes, ...]) -> set[int]:
        """The chunks on disk that match their hashes; damaged ones and leftovers of
        interrupted writes are deleted."""
        held: set[int] = set()
        directory = self.directory(file_id)
        if not directory.is_dir():
            return held
        for entry in directory.iterdir():
            index = int(entry.name) if _CHUNK_NAME.match(entry.name) else -1
            if 0 <= index < len(hashes):
                with contextlib.suppress(StorageError):
                    self.read_chunk(file_id, index, hashes[index])
                    held.add(index)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
        return held

    def sync(self, file_id: bytes) -> None:
        """Make the renames of a finished file durable (one directory fsync)."""
        _fsync_dir(self.directory(file_id))

    def remove(self, file_id: bytes) -> None:
        shutil.rmtree(self.directory(file_id), ignore_errors=True)

    def sweep(self, keep: Iterable[bytes]) -> int:
        """At start-up: delete chunk directories no attachment row names (an upload that
        crashed before its message was committed) and leftover uploads."""
        known = {file_id.hex() for file_id in keep}
        removed = 0
        for entry in self.root.iterdir():
            if entry.is_dir() and _HEX_ID.match(entry.name) and entry.name not in known:
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        for entry in self.uploads.iterdir():
            with contextlib.suppress(OSError):
                entry.unlink()
        return removed

    # -- uploads -------------------------------------------------------------------------

    def new_upload(self) -> tuple[int, Path]:
        """An open, private, empty file for an incoming upload: (fd, path)."""
        fd, name = tempfile.mkstemp(prefix="upload-", dir=self.uploads)
        return fd, Path(name)

    def stage(self, source: Path, file_id: bytes, key: bytes, size: int,
              progress: Callable[[int], None] | None = None) -> tuple[bytes, ...]:
        """Encrypt the plaintext file ``source`` (``size`` bytes) into chunks of
        ``file_id``, one chunk in memory at a time; return the chunk hashes."""
        count = attachment_chunk_count(size)
        hashes = []
        try:
            with source.open("rb") as f:
                for index in range(count):
                    expected = min(ATTACHMENT_CHUNK_SIZE, size - index * ATTACHMENT_CHUNK_SIZE)
                    plain = f.read(expected)
                    if len(plain) != expected:
                        raise StorageError("the upload changed while it was encrypted")
                    sealed = encrypt_chunk(key, file_id, index, count, plain)
                    hashes.append(hashlib.sha256(sealed).digest())
                    self.write_chunk(file_id, index, sealed)
                    if progress is not None:
                        progress(index * ATTACHMENT_CHUNK_SIZE + len(plain))
                if f.read(1):
                    raise StorageError("the upload changed while it was encrypted")
        except OSError as exc:
            self.remove(file_id)
            raise StorageError(f"could not read the upload: {exc.strerror}") from None
        except BaseException:
            self.remove(file_id)
            raise
        self.sync(file_id)
        return tuple(hashes)

    def plain_chunk(self, file_id: bytes, key: bytes, hashes: tuple[bytes, ...],
                    index: int) -> bytes:
        """Chunk ``index`` decrypted (checked against its hash and its GCM tag)."""
        sealed = self.read_chunk(file_id, index, hashes[index])
        return decrypt_chunk(key, file_id, index, len(hashes), sealed)
