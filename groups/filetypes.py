"""What a file is (sniffed from its bytes) and what it may be called (a safe name).

The MIME type of an attachment decides how the browser treats it when the node serves
it, so it is never taken from the sender's file name or Content-Type header: it is read
from the content's magic numbers. The name only refines a type *within* the family the
content already proved (an OLE2 container named ``.xls`` is an Excel sheet; a ZIP is
only a Word document if its directory holds ``word/``). Nothing is ever sniffed as
HTML, SVG or XML: such files are served as ``text/plain`` (and with ``nosniff``), so a
file can never run script in the UI's origin.

Names are shown to people and put in Content-Disposition headers, never used as paths
(chunks live under the file id). An uploaded name with a path separator or a control
character is refused (``check_upload_name``); a name from a peer is cleaned instead
(``clean_name``), because a message cannot be refused for its attachment's name.
"""

from __future__ import annotations

import contextlib
import unicodedata
import zipfile
from pathlib import Path

from groups.errors import PermissionDenied

__all__ = [
    "MAX_NAME_BYTES",
    "OCTET_STREAM",
    "SNIFF_BYTES",
    "check_upload_name",
    "clean_name",
    "settle_mime",
    "sniff_file",
    "sniff_mime",
]

SNIFF_BYTES = 4096
MAX_NAME_BYTES = 255
OCTET_STREAM = "application/octet-stream"

_OLE2 = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"
_OLE2_BY_EXT = {"doc": "application/msword", "xls": "application/vnd.ms-excel",
                "ppt": "application/vnd.ms-powerpoint", "msg": "application/vnd.ms-outlook"}
_OOXML = {"word/": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
          "xl/": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
          "ppt/": "application/vnd.openxmlformats-officedocument.presentationml.presentation"}
_ZIP_MIMETYPE_PREFIXES = ("application/vnd.oasis.opendocument.", "application/epub+zip")
_TEXT_BY_EXT = {"csv": "text/csv", "md": "text/markdown", "markdown": "text/markdown"}
_FTYP = {b"qt  ": "video/quicktime", b"M4A ": "audio/mp4", b"M4B ": "audio/mp4",
         b"3gp4": "video/3gpp", b"3gp5": "video/3gpp", b"3gp6": "video/3gpp",
         b"3g2a": "video/3gpp2", b"heic": "image/heic", b"heix": "image/heic",
         b"mif1": "image/heif", b"msf1": "image/heif", b"avif": "image/avif"}
_SIMPLE = [  # (offset, magic, type): checked in order
    (0, b"\x89PNG\r\n\x1a\n", "image/png"),
    (0, b"\xff\xd8\xff", "image/jpeg"),
    (0, b"GIF87a", "image/gif"),
    (0, b"GIF89a", "image/gif"),
    (0, b"BM", "image/bmp"),
    (0, b"II*\x00", "image/tiff"),
    (0, b"MM\x00*", "image/tiff"),
    (0, b"%PDF-", "application/pdf"),
    (0, b"{\\rtf", "application/rtf"),
    (0, b"fLaC", "audio/flac"),
    (0, b"ID3", "audio/mpeg"),
    (0, b"OggS", "audio/ogg"),
    (0, b"7z\xbc\xaf\x27\x1c", "application/x-7z-compressed"),
    (0, b"\x1f\x8b", "application/gzip"),
    (0, b"Rar!\x1a\x07", "application/vnd.rar"),
]
_RIFF = {b"WEBP": "image/webp", b"WAVE": "audio/wav", b"AVI ": "video/x-msvideo"}
_FORBIDDEN_IN_NAMES = set('<>:"|?*')   # Windows cannot store them; we replace them
_SEPARATORS = ("/", "\\")


def _ext(name: str) -> str:
    stem, dot, ext = name.rpartition(".")
    return ext.lower() if dot and stem else ""


def sniff_mime(head: bytes, name: str = "", zip_names: tuple[str, ...] = ()) -> str:
    """The MIME type of a file whose first bytes are ``head`` (SNIFF_BYTES of them or
    the whole file). ``zip_names`` are the entries of a ZIP file's central directory,
    which tell Office documents from plain archives."""
    for offset, magic, mime in _SIMPLE:
        if head[offset:offset + len(magic)] == magic:
            return mime
    if head[:4] == b"RIFF" and head[8:12] in _RIFF:
        return _RIFF[head[8:12]]
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return _FTYP.get(brand, "video/mp4" if brand.isascii() else OCTET_STREAM)
    if head[:4] == b"\x1a\x45\xdf\xa3":  # EBML: Matroska, or WebM if its DocType says so
        return "video/webm" if b"webm" in head[:64] else "video/x-matroska"
    if len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE6 in (0xE2,):  # MPEG audio frame
        return "audio/mpeg"
    if head[:4] == b"PK\x03\x04":
        return _zip_type(head, zip_names)
    if head[:8] == _OLE2:
        return _OLE2_BY_EXT.get(_ext(name), "application/x-ole-storage")
    if _is_text(head):
        return _TEXT_BY_EXT.get(_ext(name), "text/plain")
    return OCTET_STREAM


def _zip_type(head: bytes, names: tuple[str, ...]) -> str:
    # ODF and EPUB store an uncompressed "mimetype" entry first (offset 30 + 8 = 38).
    if head[30:38] == b"mimetype":
        declared = head[38:38 + 80].split(b"PK", 1)[0].decode("ascii", "replace")
        if declared.startswith(_ZIP_MIMETYPE_PREFIXES) and declared.isprintable():
            return declared
    for prefix, mime in _OOXML.items():
        if any(n.startswith(prefix) for n in names):
            return mime
    return "application/zip"


def _is_text(head: bytes) -> bool:
    if not head:
        return False
    for cut in range(4):  # the head may end inside a multi-byte character
        try:
            text = head[:len(head) - cut].decode("utf-8")
        except UnicodeDecodeError:
            continue
        return all(c.isprintable() or c in "\t\n\r\f" for c in text)
    return False


def sniff_file(path: Path, name: str = "") -> str:
    """sniff_mime for a file on disk; reads its head and, for ZIPs, the directory (both
    bounded reads: never the whole file)."""
    with path.open("rb") as f:
        head = f.read(SNIFF_BYTES)
    names: tuple[str, ...] = ()
    if head[:4] == b"PK\x03\x04":
        with contextlib.suppress(zipfile.BadZipFile, OSError, ValueError, EOFError), \
                zipfile.ZipFile(path) as archive:
            names = tuple(archive.namelist()[:10_000])
    return sniff_mime(head, name, names)


def _fit(name: str) -> str:
    """Cut a name to MAX_NAME_BYTES of UTF-8, keeping its extension."""
    if len(name.encode()) <= MAX_NAME_BYTES:
        return name
    stem, dot, ext = name.rpartition(".")
    if not dot or len(ext.encode()) > 16:
        stem, ext = name, ""
    budget = MAX_NAME_BYTES - len(ext.encode()) - len(dot)
    cut = stem.encode()[:budget].decode("utf-8", "ignore")
    return cut + (dot + ext if ext else "")


def clean_name(name: str) -> str:
    """A displayable, header-safe version of any name (a peer's, say): the last path
    component, no control or format characters, every kind of space a plain space, no
    characters Windows refuses, NFC, at most
    MAX_NAME_BYTES of UTF-8, never empty, never "." or ".."."""
    name = unicodedata.normalize("NFC", name)
    for sep in _SEPARATORS:
        name = name.rsplit(sep, 1)[-1]
    name = "".join("_" if c in _FORBIDDEN_IN_NAMES else
                   " " if unicodedata.category(c)[0] == "Z" else c
                   for c in name if unicodedata.category(c)[0] != "C")
    name = name.strip().strip(".").strip()
    return _fit(name) or "file"


def check_upload_name(name: str) -> str:
    """The name of an upload as it will be announced, or PermissionDenied
    (``bad_file_name``) for a name with a path separator or a control character: a
    browser never sends those, so they come from a crafted request."""
    if not name or any(sep in name for sep in _SEPARATORS) or any(
            unicodedata.category(c) == "Cc" for c in name):
        raise PermissionDenied("a file name may not contain / \\ or control characters",
                               "bad_file_name")
    cleaned = clean_name(name)
    if cleaned == "file" and name.strip(" .") != "file":
        raise PermissionDenied("that file name is empty once cleaned", "bad_file_name")
    return cleaned


def settle_mime(claimed: str, head: bytes, name: str) -> str:
    """The type to serve a *received* file as, once complete: what its first bytes say,
    refined by the sender's claim only inside that family (a ZIP may be a Word file; the
    sender's node looked at the ZIP directory, we only see the first chunk)."""
    sniffed = sniff_mime(head, name)
    if sniffed == "application/zip" and claimed in _OOXML.values():
        return claimed
    return sniffed
