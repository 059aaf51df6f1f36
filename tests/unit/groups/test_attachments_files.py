"""Attachment storage (groups/filestore.py), type sniffing and names (groups/filetypes.py),
and the FileRef limits that keep them consistent (groups/messages.py)."""

from __future__ import annotations

import hashlib
import io
import os
import zipfile
from pathlib import Path

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from groups import crypto
from groups.errors import BadContent, ChunkError, PermissionDenied, StorageError
from groups.filestore import (
    MAX_OPEN_READERS,
    STRIDE,
    ChunkWriter,
    FileStore,
    sealed_length,
)
from groups.filetypes import (
    MAX_NAME_BYTES,
    check_upload_name,
    clean_name,
    settle_mime,
    sniff_file,
    sniff_mime,
)
from groups.messages import (
    FILE_CHUNK_SIZE,
    MAX_FILE_CHUNKS,
    MAX_FILE_SIZE,
    FileRef,
)

CHUNK = crypto.ATTACHMENT_CHUNK_SIZE


def test_limits_agree() -> None:
    assert FILE_CHUNK_SIZE == CHUNK
    assert MAX_FILE_CHUNKS == crypto.attachment_chunk_count(MAX_FILE_SIZE) == 100
    assert crypto.ATTACHMENT_FILE_ID_LEN == 32


def _ref(size: int, chunks: int, **changes: object) -> dict[str, object]:
    obj = {"id": bytes(32), "key": bytes(32), "size": size, "mime": "image/png",
           "name": "a.png", "h": [bytes(32)] * chunks}
    obj.update(changes)
    return obj


def test_file_refs_are_checked_strictly() -> None:
    ref = FileRef.from_msgpack(_ref(MAX_FILE_SIZE, 100), "f")
    assert ref.size == MAX_FILE_SIZE and len(ref.chunk_hashes) == 100
    assert "chunk_hashes" not in repr(ref)
    for bad in (_ref(MAX_FILE_SIZE + 1, 101),       # over 25 MiB
                _ref(0, 0),                          # empty
                _ref(CHUNK + 1, 1),                  # a hash short
                _ref(CHUNK, 2),                      # a hash too many
                _ref(10, 1, id=bytes(16)),           # a 16-byte file id
                _ref(10, 1, key=bytes(16)),
                _ref(10, 1, name="x" * 256),
                _ref(10, 1, h=[bytes(31)])):
        with pytest.raises(BadContent):
            FileRef.from_msgpack(bad, "f")


# Storage ---------------------------------------------------------------------------


def _stage(store: FileStore, tmp_path: Path, data: bytes) -> tuple[bytes, bytes, tuple]:
    source = tmp_path / "plain"
    source.write_bytes(data)
    file_id, key = os.urandom(32), crypto.new_attachment_key()
    seen: list[int] = []
    hashes = store.stage(source, file_id, key, len(data), seen.append)
    assert seen[-1] == len(data) and seen == sorted(seen)
    return file_id, key, hashes


def test_stage_encrypts_chunks_that_read_back(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    data = os.urandom(2 * CHUNK + 77)
    file_id, key, hashes = _stage(store, tmp_path, data)
    assert len(hashes) == 3
    on_disk = store.path(file_id).read_bytes()
    assert len(on_disk) == 2 * STRIDE + 77 + 16
    for index, digest in enumerate(hashes):
        sealed = store.read_chunk(file_id, index, sealed_length(len(data), index))
        assert on_disk[index * STRIDE:index * STRIDE + len(sealed)] == sealed
        assert hashlib.sha256(sealed).digest() == digest
        assert data[index * CHUNK:(index + 1) * CHUNK] not in sealed  # encrypted at rest
    plain = b"".join(store.plain_chunk(file_id, key, hashes, len(data), i) for i in range(3))
    assert plain == data
    assert store.has_all(file_id, len(data)) and not store.has_all(file_id, len(data) + 1)
    assert store.verified_chunks(file_id, hashes, len(data)) == {0, 1, 2}
    assert oct(store.path(file_id).stat().st_mode & 0o777) == "0o600"


def random_chunks(size: int) -> tuple[bytes, list[bytes], tuple[bytes, ...]]:
    """A file id, sealed-length random chunks for a file of ``size``, their hashes."""
    count = crypto.attachment_chunk_count(size)
    chunks = [os.urandom(sealed_length(size, i)) for i in range(count)]
    return os.urandom(32), chunks, tuple(hashlib.sha256(c).digest() for c in chunks)


def test_chunks_land_in_any_order_and_damage_is_found(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    size = 4 * CHUNK + 5
    file_id, chunks, hashes = random_chunks(size)
    for index in (4, 1, 2):                 # out of order, with holes (a sparse file)
        store.write_chunk(file_id, index, chunks[index])
    assert store.verified_chunks(file_id, hashes, size) == {1, 2, 4}
    assert store.has_all(file_id, size)     # long enough, but only hashes tell
    with open(store.path(file_id), "r+b") as f:   # bit rot in slot 2
        f.seek(2 * STRIDE + 100)
        f.write(b"\xff")
    store.close(file_id)
    assert store.verified_chunks(file_id, hashes, size) == {1, 4}
    with pytest.raises(StorageError):
        store.plain_chunk(file_id, crypto.new_attachment_key(), hashes, size, 2)
    with pytest.raises(StorageError):
        store.read_chunk(os.urandom(32), 0, 10)           # no such file
    store.sync(file_id)
    assert store.verified_chunks(file_id, hashes, size) == {1, 4}
    store.remove(file_id)
    assert not store.path(file_id).exists()
    assert store.verified_chunks(file_id, hashes, size) == set()


def test_a_reserved_file_is_allocated_but_holds_nothing(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    size = 3 * CHUNK + 7
    file_id, chunks, hashes = random_chunks(size)
    store.reserve(file_id, size)
    stat = store.path(file_id).stat()
    assert stat.st_size == 3 * STRIDE + sealed_length(size, 3)
    assert stat.st_blocks * 512 >= stat.st_size     # allocated, not a sparse hole
    assert store.verified_chunks(file_id, hashes, size) == set()   # zeros match nothing
    store.write_chunk(file_id, 2, chunks[2])
    store.reserve(file_id, size)                    # again (a resumed download): no harm
    assert store.verified_chunks(file_id, hashes, size) == {2}


def test_the_wrong_key_does_not_open_a_chunk(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    file_id, _, hashes = _stage(store, tmp_path, os.urandom(100))
    with pytest.raises(ChunkError):
        store.plain_chunk(file_id, crypto.new_attachment_key(), hashes, 100, 0)


def test_sweep_keeps_only_known_files(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    keep, _, _ = _stage(store, tmp_path, b"keep")
    orphan, _, _ = _stage(store, tmp_path, b"orphan")
    fd, upload = store.new_upload()
    os.close(fd)
    (store.root / "unrelated").mkdir()
    assert store.sweep([keep]) == 1
    assert store.path(keep).is_file() and not store.path(orphan).exists()
    assert not upload.exists() and (store.root / "unrelated").is_dir()


def test_stage_refuses_a_file_that_changed(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    source = tmp_path / "plain"
    source.write_bytes(os.urandom(CHUNK + 10))
    for claimed in (CHUNK + 9, CHUNK + 11, 2 * CHUNK + 1):
        file_id = os.urandom(32)
        with pytest.raises(StorageError):
            store.stage(source, file_id, crypto.new_attachment_key(), claimed)
        assert not store.path(file_id).exists()


# Types and names -------------------------------------------------------------------


def _zip(names: list[str], first: tuple[str, bytes] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        if first:
            archive.writestr(zipfile.ZipInfo(first[0]), first[1])
        for name in names:
            archive.writestr(name, b"x")
    return buffer.getvalue()


@pytest.mark.parametrize(("head", "name", "mime"), [
    (b"\x89PNG\r\n\x1a\n....", "cat.exe", "image/png"),
    (b"\xff\xd8\xff\xe0", "a.png", "image/jpeg"),
    (b"GIF89a", "", "image/gif"),
    (b"RIFF\x00\x00\x00\x00WEBPVP8 ", "", "image/webp"),
    (b"RIFF\x00\x00\x00\x00AVI LIST", "", "video/x-msvideo"),
    (b"RIFF\x00\x00\x00\x00WAVEfmt ", "", "audio/wav"),
    (b"\x00\x00\x00\x18ftypmp42", "clip.mov", "video/mp4"),
    (b"\x00\x00\x00\x14ftypqt  ", "", "video/quicktime"),
    (b"\x00\x00\x00\x18ftypheic", "", "image/heic"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x84webm", "", "video/webm"),
    (b"\x1a\x45\xdf\xa3\x9f\x42\x86\x81\x01\x42\x82\x88matroska", "", "video/x-matroska"),
    (b"ID3\x04", "", "audio/mpeg"),
    (b"\xff\xfb\x90\x00", "", "audio/mpeg"),
    (b"OggS\x00", "", "audio/ogg"),
    (b"%PDF-1.7\n", "doc.html", "application/pdf"),
    (b"{\\rtf1", "", "application/rtf"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "old.XLS", "application/vnd.ms-excel"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "old.bin", "application/x-ole-storage"),
    (b"<html><script>alert(1)</script>", "page.html", "text/plain"),   # never HTML
    (b"<svg xmlns='http://www.w3.org/2000/svg'/>", "x.svg", "text/plain"),  # never SVG
    (b"a,b\n1,2\n", "t.csv", "text/csv"),
    ("# Überschrift\n".encode(), "README.md", "text/markdown"),
    ("caf\u00e9".encode()[:-1], "cut.txt", "text/plain"),  # a head cut inside a character
    (b"\x00\x01\x02binary", "a.txt", "application/octet-stream"),
    (b"", "", "application/octet-stream"),
])
def test_sniffing(head: bytes, name: str, mime: str) -> None:
    assert sniff_mime(head, name) == mime


def test_zip_based_documents(tmp_path: Path) -> None:
    docx = _zip(["[Content_Types].xml", "word/document.xml"])
    odt = _zip(["content.xml"], ("mimetype", b"application/vnd.oasis.opendocument.text"))
    cases = {"a.docx": (docx, "application/vnd.openxmlformats-officedocument."
                               "wordprocessingml.document"),
             "a.odt": (odt, "application/vnd.oasis.opendocument.text"),
             "a.zip": (_zip(["x/y.txt"]), "application/zip"),
             "broken.docx": (docx[:200], "application/zip")}
    for name, (data, mime) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert sniff_file(tmp_path / name, name) == mime, name
    # A receiver only sees the first chunk: the sender's Office claim stands inside ZIP.
    ooxml = cases["a.docx"][1]
    assert settle_mime(ooxml, docx[:4096], "a.docx") == ooxml
    assert settle_mime("text/html", b"<html>", "a.html") == "text/plain"
    assert settle_mime("image/png", b"%PDF-", "a.png") == "application/pdf"


def test_names() -> None:
    assert check_upload_name("Ferien 2026 – Strand.mp4") == "Ferien 2026 – Strand.mp4"
    assert check_upload_name("what?.txt") == "what_.txt"
    assert check_upload_name("file") == "file"
    assert check_upload_name("cafe\u0301.txt") == "caf\u00e9.txt"   # NFC
    for bad in ("../x", "a/b", "a\\b", "a\x00b", "a\nb", "a\x7fb", "", "..", " . "):
        with pytest.raises(PermissionDenied) as info:
            check_upload_name(bad)
        assert info.value.reason == "bad_file_name"
    # A peer's name is cleaned, never refused.
    assert clean_name("../../etc/passwd") == "passwd"
    assert clean_name("C:\\Users\\me\\a.txt") == "a.txt"
    assert clean_name("\u202eevil\u200b.txt") == "evil.txt"  # format characters go
    assert clean_name("..") == clean_name("") == "file"
    long = "é" * 300 + ".jpeg"
    assert len(clean_name(long).encode()) <= MAX_NAME_BYTES
    assert clean_name(long).endswith("é.jpeg")


@given(st.text(max_size=400))
def test_clean_name_is_always_safe(name: str) -> None:
    cleaned = clean_name(name)
    assert cleaned and cleaned not in (".", "..")
    assert not any(c in cleaned for c in '/\\<>:"|?*')
    assert all(c.isprintable() for c in cleaned)
    assert len(cleaned.encode()) <= MAX_NAME_BYTES
    assert clean_name(cleaned) == cleaned
    packed = msgpack.packb(cleaned)
    assert msgpack.unpackb(packed) == cleaned


@given(st.binary(max_size=300), st.text(max_size=30))
def test_sniffing_never_fails(head: bytes, name: str) -> None:
    mime = sniff_mime(head, name)
    assert "/" in mime and not mime.startswith(("text/html", "image/svg"))


def test_the_chunk_writer_reports_each_batch_and_drains_on_close(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    reported: list = []
    writer = ChunkWriter(store, lambda fn, arg: fn(arg), reported.extend)
    file_id, size = os.urandom(32), 3 * CHUNK
    chunks = [os.urandom(sealed_length(size, i)) for i in range(3)]
    for index in (2, 0, 1):
        writer.put(file_id, index, chunks[index])
    blocked = b"\x00" * 32
    store.path(blocked).mkdir()                       # a file that cannot be opened
    writer.put(blocked, 0, b"x")
    writer.close()
    writer.close()                                    # twice is harmless
    ok = sorted((fid, i) for fid, i, err in reported if err is None)
    assert ok == [(file_id, 0), (file_id, 1), (file_id, 2)]
    hashes = tuple(hashlib.sha256(c).digest() for c in chunks)
    assert store.verified_chunks(file_id, hashes, size) == {0, 1, 2}
    failed = [(fid, err) for fid, _, err in reported if err is not None]
    assert len(failed) == 1 and isinstance(failed[0][1], StorageError)


def test_cached_readers_stay_bounded_and_close(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "files")
    files = []
    for _ in range(MAX_OPEN_READERS + 3):
        file_id, _, hashes = _stage(store, tmp_path, b"data")
        files.append((file_id, hashes))
    for file_id, hashes in files:
        sealed = store.read_chunk(file_id, 0, sealed_length(4, 0), cached=True)
        assert hashlib.sha256(sealed).digest() == hashes[0]
    assert len(store._readers) == MAX_OPEN_READERS
    assert files[0][0] not in store._readers and files[-1][0] in store._readers
    store.remove(files[-1][0])
    assert files[-1][0] not in store._readers
    with pytest.raises(StorageError):
        store.read_chunk(files[-1][0], 0, sealed_length(4, 0), cached=True)
    store.close()
    assert store._readers == {} and store._writers == {}
