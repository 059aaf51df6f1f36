"""A node that lies about chunks: ``python -m tests.integration.attachments.liar node ...``.

It is a normal Parley node (same arguments as ``run.py``) except that it answers every
ChunkRequest for a file it knows with random bytes of the right length, as a member
with a broken or hostile node would. Honest nodes must notice (the hash does not
match), avoid it for that file, and fetch the chunk elsewhere.
"""

from __future__ import annotations

import os
import sys

import run
from groups.attachments import AttachmentService, LinkPort
from groups.transfer import cipher_length
from mesh import wire


def lie(self: AttachmentService, peer: str, link: LinkPort, file_id: bytes,
        index: int) -> wire.Frame:
    row = self._rows.get(file_id)
    if row is None or not 0 <= index < row.count:
        return wire.ChunkUnavailable(file_id, index)
    self.counters["lies"] += 1
    return wire.Chunk(file_id, index, os.urandom(cipher_length(row.size, index)))


if __name__ == "__main__":
    AttachmentService._answer = lie  # type: ignore[method-assign]
    sys.exit(run.main(sys.argv[1:]))
