"""The streaming multipart parser (webapp/multipart.py) and Range parsing
(webapp/files.py): any split of a body gives the same parts; malformed bodies raise."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mesh.jsonapi import ApiError
from webapp.errors import MultipartError
from webapp.files import parse_range
from webapp.multipart import (
    Finished,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_header_params,
)

BOUNDARY = "----parleyBoundary7MA4YWxkTrZu0gW"


def body(parts: list[tuple[str, str | None, bytes]], boundary: str = BOUNDARY) -> bytes:
    out = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'
        if filename is not None:
            disposition += f'; filename="{filename}"'
        out += (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
                f"Content-Type: application/octet-stream\r\n\r\n").encode() + content + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def parse(data: bytes, cuts: list[int] | None = None, boundary: str = BOUNDARY) -> list:
    """Feed ``data`` split at ``cuts``; merge adjacent data events for comparison."""
    parser = MultipartParser(boundary)
    events: list = []
    start = 0
    for cut in [*sorted(set(cuts or [])), len(data)]:
        events += parser.feed(data[start:cut])
        start = cut
    parser.close()
    merged: list = []
    for event in events:
        if isinstance(event, PartData) and merged and isinstance(merged[-1], PartData):
            merged[-1] = PartData(merged[-1].data + event.data)
        else:
            merged.append(event)
    return merged


def test_parts_come_out_in_order() -> None:
    data = body([("text", None, "grüß dich".encode()), ("file", "a b.png", b"\x00\r\n--x\r")])
    assert parse(data) == [PartStart("text", None, "application/octet-stream"),
                           PartData("grüß dich".encode()), PartEnd(),
                           PartStart("file", "a b.png", "application/octet-stream"),
                           PartData(b"\x00\r\n--x\r"), PartEnd(), Finished()]


@given(content=st.binary(max_size=3000), text=st.binary(max_size=200),
       cuts=st.lists(st.integers(0, 4000), max_size=12))
def test_any_split_gives_the_same_parts(content: bytes, text: bytes, cuts: list[int]) -> None:
    data = body([("file", "f.bin", content), ("text", None, text)])
    events = parse(data, [c for c in cuts if c <= len(data)])
    files = [e for e in events if isinstance(e, PartData)]
    got = [f.data for f in files]
    assert got == [x for x in (content, text) if x]


@given(content=st.binary(max_size=500))
def test_content_that_looks_like_a_boundary(content: bytes) -> None:
    tricky = content + b"\r\n--" + BOUNDARY[:-1].encode() + b"\r\n--" + BOUNDARY.encode()[:5]
    data = body([("file", "f", tricky)])
    assert [e.data for e in parse(data, [7, 100, 101]) if isinstance(e, PartData)] == [tricky]


def test_a_preamble_and_an_epilogue_are_ignored() -> None:
    data = b"preamble\r\n" + body([("file", "f", b"x")]) + b"epilogue"
    assert PartData(b"x") in parse(data)


def test_filename_forms() -> None:
    def name_of(disposition: str) -> str | None:
        data = (f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\nx\r\n"
                f"--{BOUNDARY}--").encode()
        return parse(data)[0].filename
    assert name_of('form-data; name="file"; filename="C:\\dir\\a.txt"') == "C:\\dir\\a.txt"
    assert name_of('form-data; name="file"; filename="say \\"hi\\".txt"') == 'say "hi".txt'
    assert name_of("form-data; name=file; filename=plain.txt") == "plain.txt"
    assert name_of("form-data; name=\"file\"; filename=\"x\"; "
                   "filename*=UTF-8''%E2%82%AC%20rates.pdf") == "€ rates.pdf"
    assert name_of('form-data; name="text"') is None


@pytest.mark.parametrize("data", [
    b"",                                                            # nothing at all
    f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\nxx".encode(),
    f"--{BOUNDARY}\r\n".encode(),                                   # no part headers yet
])
def test_truncated_bodies(data: bytes) -> None:
    parser = MultipartParser(BOUNDARY)
    parser.feed(data)
    with pytest.raises(MultipartError):
        parser.close()


@pytest.mark.parametrize("data", [
    f"--{BOUNDARY}\r\n\r\nno headers\r\n--{BOUNDARY}--".encode(),
    f"--{BOUNDARY}\r\nContent-Type: text/plain\r\n\r\nx\r\n--{BOUNDARY}--".encode(),
    f"--{BOUNDARY}\r\nContent-Disposition: attachment; name=\"a\"\r\n\r\nx".encode(),
    f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx".encode(),
    f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"a\r\n\r\nx".encode(),
    f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=a; name=b\r\n\r\nx".encode(),
    f"--{BOUNDARY}\r\nno colon here\r\n\r\nx".encode(),
    f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"\xff\"\r\n\r\n".encode("latin-1"),
    f"--{BOUNDARY}junk\r\n".encode(),
    b"x" * 10_000,                                                 # no boundary anywhere
    f"--{BOUNDARY}\r\n".encode() + b"X-A: b\r\n" * 2000,           # endless headers
    f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"a\"\r\n\r\n"
    f"x\r\n--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"a\"; "
    f"filename*=latin-1''x\r\n\r\n".encode(),
])
def test_malformed_bodies(data: bytes) -> None:
    parser = MultipartParser(BOUNDARY)
    with pytest.raises(MultipartError):
        parser.feed(data)
        parser.close()


def test_too_many_parts() -> None:
    data = body([("f", None, b"x")] * 17)
    with pytest.raises(MultipartError):
        MultipartParser(BOUNDARY).feed(data)


@pytest.mark.parametrize("boundary", ["", "a" * 71, "bad\x00", "ends with space "])
def test_bad_boundaries(boundary: str) -> None:
    with pytest.raises(MultipartError):
        MultipartParser(boundary)


@given(st.binary(max_size=2000), st.lists(st.integers(0, 2000), max_size=6))
def test_junk_never_escapes_as_another_error(data: bytes, cuts: list[int]) -> None:
    parser = MultipartParser(BOUNDARY)
    try:
        start = 0
        for cut in [*sorted(c for c in cuts if c <= len(data)), len(data)]:
            parser.feed(data[start:cut])
            start = cut
        parser.close()
    except MultipartError:
        pass


def test_header_params() -> None:
    assert parse_header_params('multipart/form-data; boundary="a b"; x=1') == \
        ("multipart/form-data", {"boundary": "a b", "x": "1"})
    assert parse_header_params("text/plain") == ("text/plain", {})
    for bad in ('a; b', 'a; b="open', 'a; b="x"y', 'a; b@=1'):
        with pytest.raises(MultipartError):
            parse_header_params(bad)


# Ranges -------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "expected"), [
    (None, None), ("", None),
    ("bytes=0-99", (0, 100)), ("bytes=100-", (100, 1000)), ("bytes=-10", (990, 1000)),
    ("bytes=-5000", (0, 1000)), ("bytes=900-5000", (900, 1000)), ("bytes=999-999", (999, 1000)),
    ("bytes=0-1,3-4", None),          # several ranges: the whole file instead
    ("bytes=5-1", None),              # invalid: ignored
    ("items=0-1", None), ("bytes=a-b", None), ("bytes=0", None), ("bytes=--1", None),
    # Issue 15 finding 6: these gave a 500. Non-ASCII digits are no digits (ignored) ...
    ("bytes=\u00b2-\u00b3", None), ("bytes=0-\u00b9", None), ("bytes=\u0661-\u0662", None),
    # ... and a number of any length is just a large number.
    ("bytes=0-" + "9" * 5000, (0, 1000)), ("bytes=-" + "9" * 5000, (0, 1000)),
    ("bytes=" + "0" * 5000 + "7-8", (7, 9)), ("bytes=0-" + "0" * 30, (0, 1)),
])
def test_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=-0",
                                    "bytes=" + "9" * 5000 + "-", "bytes=-" + "0" * 40])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(ApiError) as info:
        parse_range(header, 1000)
    assert info.value.status_code == 416
    assert info.value.headers == {"Content-Range": "bytes */1000"}
