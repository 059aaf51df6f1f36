"""mesh.malloc: freed chunk-sized buffers stay with the process (no page faults per chunk)."""

from __future__ import annotations

import ctypes.util
import json
import subprocess
import sys

import pytest

from mesh import malloc

# Read 200 messages of one attachment chunk each the way Tornado's IOStream does (64 KiB
# reads appended to a buffer, the message copied out, the buffer trimmed) and count
# the minor page faults that took.
_PROBE = """
import json, resource, sys
if sys.argv[1] == "tuned":
    from mesh import malloc
    assert malloc.tune()
MESSAGE = 256 * 1024 + 64

def read_message(buffer):
    for _ in range(4):
        buffer += bytearray(65536 + 16)
    message = bytes(memoryview(buffer)[:MESSAGE])
    del buffer[:MESSAGE]
    return message

buffer = bytearray()
for _ in range(20):
    read_message(buffer)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(200):
    read_message(buffer)
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before))
"""

glibc = pytest.mark.skipif(not sys.platform.startswith("linux")
                           or ctypes.util.find_library("c") is None,
                           reason="mallopt(3) is glibc's")


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], check=True,
                         capture_output=True, text=True)
    return json.loads(out.stdout)


@glibc
def test_tuned_allocator_reuses_freed_chunk_buffers() -> None:
    plain, tuned = _faults("plain"), _faults("tuned")
    # Untuned, glibc hands most of these buffers back to the kernel when they are
    # freed, so the next ones fault their pages in again (64 per 256 KiB).
    assert plain >= 200 * 32
    assert tuned < 200


@glibc
def test_tune_is_idempotent() -> None:
    assert malloc.tune()
    assert malloc.tune()
