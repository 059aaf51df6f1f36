"""Who we share a conversation with, and keeping their records fresh.

A peer we have no link to may have moved (new address, new relay): the node looks up
their record again now and then, and announces again every topic they take part in
once it is newer, so the mesh dials them where they are now. The messenger uses the
same set to decide whose profile to keep and to whom ours goes.
"""

from __future__ import annotations

import logging
import sqlite3

from groups import history
from groups.conversation import Conversations
from groups.conversation_events import Conversation, ConversationKind
from groups.conversation_io import ConversationIO
from groups.directory import Directory
from mesh.errors import MeshError

__all__ = ["PeerRecords"]

log = logging.getLogger(__name__)


class PeerRecords:
    def __init__(self, me: str, conn: sqlite3.Connection, core: Conversations,
                 io: ConversationIO, directory: Directory) -> None:
        self.me = me
        self.conn = conn
        self.core = core
        self.io = io
        self.directory = directory
        self._refreshed: dict[str, float] = {}

    def of_interest(self, *, hidden: bool = True) -> set[str]:
        """Everyone we share a conversation with (group members, 1:1 peers); with
        ``hidden=False`` not the peers of hidden 1:1 topics, which any node that merely
        linked to us gets (for pairwise messages), so not a chat of ours."""
        users: set[str] = set()
        for conv in history.conversations(self.conn):
            if conv.left_at is not None:
                continue
            if conv.kind == ConversationKind.GROUP:
                users |= set(self.core.members(conv.topic))
            elif conv.peer and (hidden or conv.visible):
                users.add(conv.peer)
        users.discard(self.me)
        return users

    async def refresh_unreachable(self, linked: set[str], *, every: float = 300.0) -> int:
        """Look up again the records of peers we have no link to (each at most once per
        ``every`` seconds): their endpoints may have changed. Topics that include a peer
        whose record got newer are announced again. Returns how many records changed."""
        now = self.io.clock()
        changed = 0
        for user in sorted(self.of_interest() - linked):
            if now - self._refreshed.get(user, -every) < every:
                continue
            self._refreshed[user] = now
            before = self.directory.record(user)
            try:
                record = await self.directory.refresh(user, now)
            except MeshError as exc:
                log.info("record of %s not refreshed: %s", user, exc)
                continue
            if before is None or record.seq > before.seq:
                changed += 1
                self.announce(user)
        return changed

    def shared_with(self, user: str) -> list[Conversation]:
        """The conversations we are still in that ``user`` takes part in (groups where
        they are a member, 1:1 topics with them)."""
        return [conv for conv in history.conversations(self.conn)
                if conv.left_at is None
                and (conv.peer == user if conv.kind != ConversationKind.GROUP
                     else self.core.is_member(conv.topic, user))]

    def announce(self, user: str) -> None:
        """Announce again every topic ``user`` takes part in (we know where they are now)."""
        for conv in self.shared_with(user):
            if conv.kind == ConversationKind.GROUP:
                self.io.announce(conv.topic)
            else:
                self.io.announce_direct(conv.topic, user)
