"""The crypto facade: Signal pairwise sessions, sender keys, safety numbers, attachments.

This package is the only place that imports python-axolotl or protobuf. It speaks bytes,
user IDs and snake_case, keeps every key in the node database (groups.store), and turns
every exception the libraries raise on hostile input into groups.errors at the boundary
(the pattern of httpx's map_httpcore_exceptions). The formats are written down in
docs/protocol.md §7. Callers import from here; the modules split it by responsibility:

- ``keystore``: python-axolotl's store interfaces over groups.store, the exception
  mapping and the one transaction every operation runs in;
- ``pairwise``: prekeys and pairwise Double Ratchet sessions;
- ``senderkeys``: group sender keys (distribution, envelope, receive bounds);
- ``symmetric``: safety numbers and attachment chunks (no axolotl);
- ``facade``: ``Crypto``, one user's crypto state, made of the two roles above.

Each public operation runs in one SAVEPOINT: a message that fails to decrypt changes
nothing (no chain advanced, no identity saved, no prekey used), and a caller can wrap
"decrypt and store the plaintext" in its own transaction so that both or neither land.
"""

from __future__ import annotations

import os
import sys

# python-axolotl's generated *_pb2 modules only load on protobuf's pure-Python backend.
# The backend is fixed the first time google.protobuf's api_implementation is imported,
# so an environment default is not enough once something else got there first. Python
# runs this file before any module of the package, so no axolotl import comes earlier.
_PB_ENV = "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"
if "google.protobuf.internal.api_implementation" in sys.modules:
    if sys.modules["google.protobuf.internal.api_implementation"].Type() != "python":
        raise ImportError(
            "google.protobuf was loaded with a native backend before groups.crypto; "
            f"python-axolotl needs {_PB_ENV}=python (import groups.crypto first or set it)")
else:
    os.environ[_PB_ENV] = "python"

from google.protobuf.internal import api_implementation as _pb_impl  # noqa: E402

if _pb_impl.Type() != "python":  # pragma: no cover - guarded above
    raise ImportError(f"python-axolotl needs {_PB_ENV}=python")

from groups.crypto.facade import Crypto  # noqa: E402
from groups.crypto.keystore import (  # noqa: E402
    DEVICE_ID,
    MAX_FORWARD_ITERATIONS,
    MAX_SKIPPED_KEYS,
    REGISTRATION_ID,
)
from groups.crypto.senderkeys import (  # noqa: E402
    MAX_CHAIN_GAP,
    SENDER_KEY_MAX_ITERATION,
    GroupMessageInfo,
    MemberBudget,
)
from groups.crypto.symmetric import (  # noqa: E402
    ATTACHMENT_CHUNK_SIZE,
    ATTACHMENT_FILE_ID_LEN,
    attachment_chunk_count,
    compare_safety_qr,
    decrypt_chunk,
    encrypt_chunk,
    new_attachment_key,
    safety_number,
    safety_number_qr,
)

__all__ = [
    "ATTACHMENT_CHUNK_SIZE",
    "ATTACHMENT_FILE_ID_LEN",
    "DEVICE_ID",
    "MAX_CHAIN_GAP",
    "MAX_FORWARD_ITERATIONS",
    "MAX_SKIPPED_KEYS",
    "REGISTRATION_ID",
    "SENDER_KEY_MAX_ITERATION",
    "Crypto",
    "GroupMessageInfo",
    "MemberBudget",
    "attachment_chunk_count",
    "compare_safety_qr",
    "decrypt_chunk",
    "encrypt_chunk",
    "new_attachment_key",
    "safety_number",
    "safety_number_qr",
]
