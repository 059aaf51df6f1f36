"""``Crypto``: one user's crypto state over the node database, the object callers hold.

Its two roles live in their own modules (pairwise.PairwiseSessions: prekeys and Double
Ratchet sessions; senderkeys.SenderKeys: group sender keys) over one shared base
(keystore.CryptoBase: the connection, the axolotl store, one SAVEPOINT per operation),
so callers keep a single object while each part stays small enough to read.
"""

from __future__ import annotations

from groups.crypto.pairwise import PairwiseSessions
from groups.crypto.senderkeys import SenderKeys

__all__ = ["Crypto"]


class Crypto(PairwiseSessions, SenderKeys):
    """One user's crypto state: ``Crypto(conn, identity, now=)``.

    ``identity`` is the user's identity key pair (from the data directory); the store
    refuses to serve a database that was made for another identity.
    """
