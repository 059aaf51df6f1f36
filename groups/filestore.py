"""Attachment chunks on disk, encrypted with the file's key.

Layout under ``<data-dir>/files`` (mode 0700):

    <file id hex>.chunks   every chunk exactly as it travels (AES-256-GCM ciphertext +
                           16-byte tag, groups.crypto.encrypt_chunk), chunk i at offset
                           i * (256 KiB + 16); the file is sparse while it downloads
    uploads/               plaintext of uploads while they are received (deleted as soon
                           as they are encrypted or refused)

Which chunks a node holds is never written down: it is what is on disk *and* matches
the announced SHA-256. A download in memory knows; a restarted node finds out again by
hashing each slot (``verified_chunks``, about 30 ms for 25 MiB). So a chunk needs no
rename, no per-chunk fsync and no database row to be safe: a write torn by a crash or
a power cut simply fails its hash and is fetched again, and nothing a node acknowledged
depends on it. A finished file is fsynced once before it is recorded complete.

An earlier layout (one file per chunk, tmp + fsync + rename each) cost more CPU and
wall time on the receiving node than the whole transfer does now; see
docs/performance.md.

No file exists in plaintext except an upload between its last byte and its encryption.
Chunk reads (one 256 KiB pread from the page cache) run on the event loop, and so do
chunk writes while they are quick (about 50 µs). An fsync elsewhere on the filesystem
can stall a write for tens of milliseconds, which on the loop would stall every link:
after such a write, groups.attachments sends writes to ``ChunkWriter``, one thread that
writes in batches, for a while. Whole-file work (staging, verifying, fsync) runs in
threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from groups.crypto import (
    ATTACHMENT_CHUNK_SIZE,
    attachment_chunk_count,
    decrypt_chunk,
    encrypt_chunk,
)
from groups.errors import StorageError

__all__ = ["MAX_OPEN_READERS", "STRIDE", "ChunkWriter", "FileStore", "StallMeter", "Written",
           "sealed_length"]

TAG = 16
MAX_OPEN_READERS = 16
STRIDE = ATTACHMENT_CHUNK_SIZE + TAG
_CHUNKS_FILE = re.compile(r"^([0-9a-f]{64})\.chunks$")


def sealed_length(size: int, index: int) -> int:
    """Length of encrypted chunk ``index`` of a file of ``size`` plaintext bytes."""
    return min(ATTACHMENT_CHUNK_SIZE, size - index * ATTACHMENT_CHUNK_SIZE) + TAG


class FileStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uploads = self.root / "uploads"
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.uploads.mkdir(mode=0o700, exist_ok=True)
        self._writers: dict[bytes, int] = {}
        self._lock = threading.Lock()
        self._readers: dict[bytes, int] = {}   # the loop's open files for serving

    def path(self, file_id: bytes) -> Path:
        return self.root / f"{file_id.hex()}.chunks"

    # -- chunks --------------------------------------------------------------------------

    def _writer(self, file_id: bytes) -> int:
        with self._lock:  # the loop and the writer thread may both write a file
            fd = self._writers.get(file_id)
            if fd is None:
                fd = self._writers[file_id] = os.open(self.path(file_id),
                                                      os.O_RDWR | os.O_CREAT, 0o600)
            return fd

    def reserve(self, file_id: bytes, size: int) -> None:
        """Allocate the whole chunk file before its chunks arrive: filling a file the
        filesystem has already allocated costs less per page than growing it (ext4's
        delayed allocation: about a fifth of a receiver's kernel time on loopback).
        Unfilled slots read as zeros, which match no chunk hash. Where the filesystem
        cannot allocate ahead, or is full, the writes themselves report it."""
        count = attachment_chunk_count(size)
        with contextlib.suppress(OSError):
            os.posix_fallocate(self._writer(file_id), 0,
                               (count - 1) * STRIDE + sealed_length(size, count - 1))

    def write_chunk(self, file_id: bytes, index: int, data: bytes) -> None:
        """Put one encrypted chunk in its slot (to the page cache; see ``sync``)."""
        try:
            fd = self._writer(file_id)
            view, offset = memoryview(data), index * STRIDE
            while view:
                written = os.pwrite(fd, view, offset)
                view, offset = view[written:], offset + written
        except OSError as exc:
            raise StorageError(f"could not store chunk {index}: {exc.strerror}") from None

    def read_chunk(self, file_id: bytes, index: int, length: int, *,
                   cached: bool = False) -> bytes:
        """The encrypted chunk in slot ``index`` (``length`` bytes), unchecked: readers
        check its hash (receivers) or its tag (decryption). ``cached`` keeps the file
        open for the next read; only the event loop's thread may ask for that."""
        fd = self._readers.pop(file_id, None) if cached else None
        try:
            if fd is None:
                fd = os.open(self.path(file_id), os.O_RDONLY)
        except OSError:
            raise StorageError(f"chunk {index} is not here") from None
        try:
            data = os.pread(fd, length, index * STRIDE)
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"could not read chunk {index}: {exc.strerror}") from None
        if cached:
            self._readers[file_id] = fd  # most recently used last
            while len(self._readers) > MAX_OPEN_READERS:
                os.close(self._readers.pop(next(iter(self._readers))))
        else:
            os.close(fd)
        if len(data) != length:
            raise StorageError(f"chunk {index} is not here")
        return data

    def has_all(self, file_id: bytes, size: int) -> bool:
        """The file is as long as all its chunks (a cheap check for complete files)."""
        count = attachment_chunk_count(size)
        expected = (count - 1) * STRIDE + sealed_length(size, count - 1)
        try:
            return self.path(file_id).stat().st_size >= expected
        except OSError:
            return False

    def verified_chunks(self, file_id: bytes, hashes: tuple[bytes, ...], size: int) -> set[int]:
        """The slots whose content matches its announced hash (one chunk in memory at a
        time)."""
        held: set[int] = set()
        try:
            with self.path(file_id).open("rb") as f:
                for index, digest in enumerate(hashes):
                    f.seek(index * STRIDE)
                    data = f.read(sealed_length(size, index))
                    if hashlib.sha256(data).digest() == digest:
                        held.add(index)
        except OSError:
            pass
        return held

    def sync(self, file_id: bytes) -> None:
        """Make a finished file durable (one fsync) and let go of its writer."""
        with self._lock:
            fd = self._writers.pop(file_id, None)
        try:
            if fd is None:
                fd = os.open(self.path(file_id), os.O_RDONLY)
            os.fsync(fd)
        except OSError as exc:
            raise StorageError(f"could not sync the file: {exc.strerror}") from None
        finally:
            if fd is not None:
                os.close(fd)

    def close(self, file_id: bytes | None = None) -> None:
        """Close the files held open for one file id (or all): at shutdown, or when it
        is removed."""
        for table in (self._writers, self._readers):
            for key in [file_id] if file_id is not None else list(table):
                with self._lock:
                    fd = table.pop(key, None)
                if fd is not None:
                    with contextlib.suppress(OSError):
                        os.close(fd)

    def remove(self, file_id: bytes) -> None:
        self.close(file_id)
        with contextlib.suppress(OSError):
            self.path(file_id).unlink()

    def sweep(self, keep: Iterable[bytes]) -> int:
        """At start-up: delete chunk files no attachment row names (an upload that
        crashed before its message was committed) and leftover uploads."""
        known = {file_id.hex() for file_id in keep}
        removed = 0
        for entry in self.root.iterdir():
            match = _CHUNKS_FILE.match(entry.name)
            if match and match.group(1) not in known:
                with contextlib.suppress(OSError):
                    entry.unlink()
                    removed += 1
        for entry in self.uploads.iterdir():
            with contextlib.suppress(OSError):
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        return removed

    # -- uploads -------------------------------------------------------------------------

    def new_upload(self) -> tuple[int, Path]:
        """An open, private, empty file for an incoming upload: (fd, path)."""
        fd, name = tempfile.mkstemp(prefix="upload-", dir=self.uploads)
        return fd, Path(name)

    def stage(self, source: Path, file_id: bytes, key: bytes, size: int,
              progress: Callable[[int], None] | None = None) -> tuple[bytes, ...]:
        """Encrypt the plaintext file ``source`` (``size`` bytes) into the chunks of
        ``file_id``, one chunk in memory at a time; fsync; return the chunk hashes."""
        count = attachment_chunk_count(size)
        hashes = []
        try:
            self.reserve(file_id, size)
            with source.open("rb") as f:
                for index in range(count):
                    expected = sealed_length(size, index) - TAG
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
            self.sync(file_id)
        except OSError as exc:
            self.remove(file_id)
            raise StorageError(f"could not read the upload: {exc.strerror}") from None
        except BaseException:
            self.remove(file_id)
            raise
        return tuple(hashes)

    def plain_chunk(self, file_id: bytes, key: bytes, hashes: tuple[bytes, ...], size: int,
                    index: int) -> bytes:
        """Chunk ``index`` decrypted, checked against its hash and its GCM tag."""
        sealed = self.read_chunk(file_id, index, sealed_length(size, index))
        if hashlib.sha256(sealed).digest() != hashes[index]:
            raise StorageError(f"chunk {index} was damaged on disk")
        return decrypt_chunk(key, file_id, index, len(hashes), sealed)


class StallMeter:
    """How long the calling thread was blocked (neither running nor waiting for a CPU)
    since ``start()``: wall time less what ``/proc/thread-self/schedstat`` counts as run
    and run-queue time. Tells a disk that stalls a write apart from a busy machine
    that merely preempted it: with more runnable processes than cores, a 50 µs write
    can take tens of milliseconds of wall time. Where schedstat cannot be read, all of
    the wall time counts as blocked. One meter per thread (the file names the thread
    that opened it); ``close`` releases it."""

    def __init__(self, schedstat: str = "/proc/thread-self/schedstat") -> None:
        self._path = schedstat
        self._fd: int | None = None
        self._usable = True

    def _scheduled(self) -> int | None:
        """Nanoseconds this thread has run or waited for a CPU (None: unknown)."""
        if not self._usable:
            return None
        try:
            if self._fd is None:
                self._fd = os.open(self._path, os.O_RDONLY)
            run, wait = os.pread(self._fd, 64, 0).split()[:2]
            return int(run) + int(wait)
        except (OSError, ValueError):
            self._usable = False
            return None

    def start(self) -> tuple[float, int | None]:
        return time.perf_counter(), self._scheduled()

    def blocked(self, mark: tuple[float, int | None]) -> float:
        """Seconds blocked since ``mark`` (from ``start``)."""
        wall = time.perf_counter() - mark[0]
        before = mark[1]
        after = self._scheduled() if before is not None else None
        if before is None or after is None:
            return wall
        return max(0.0, wall - (after - before) / 1e9)

    def close(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None


Written = tuple[bytes, int, "StorageError | None"]   # (file id, index, error or None)


class ChunkWriter:
    """Writes chunks to a FileStore in one background thread and reports each batch
    with ``post(on_done, [(file_id, index, error or None), ...])``; ``post`` is the
    event loop's call_soon_threadsafe. Chunks of one file are written in the order they
    were put."""

    def __init__(self, store: FileStore, post: Callable[..., object],
                 on_done: Callable[[list[Written]], None]) -> None:
        self.store, self._post, self._on_done = store, post, on_done
        self._queue: queue.SimpleQueue[tuple[bytes, int, bytes] | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def put(self, file_id: bytes, index: int, data: bytes) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="parley-chunks",
                                            daemon=True)
            self._thread.start()
        self._queue.put((file_id, index, data))

    def close(self) -> None:
        """Write what is queued, then stop (blocks: call it in a thread)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            with contextlib.suppress(queue.Empty):
                while len(batch) < 64:
                    batch.append(self._queue.get_nowait())
            done: list[Written] = []
            for item in batch:
                if item is None:
                    continue
                file_id, index, data = item
                try:
                    self.store.write_chunk(file_id, index, data)
                    done.append((file_id, index, None))
                except StorageError as exc:
                    done.append((file_id, index, exc))
            if done:
                with contextlib.suppress(RuntimeError):  # the loop is gone: we are, too
                    self._post(self._on_done, done)
            if None in batch:
                return

