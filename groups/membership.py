"""Our user's group actions and the API's group queries, on the conversation core.

Create, invite, join, remove, leave and promote: the core (groups/conversation.py)
checks each against the group's log and decides what it sets in motion (the op to
publish, sender keys to rotate and share, the removal notice); ``ConversationIO``
carries that out in one transaction and hands our op to the mesh after the commit.
Joining waits (a bounded time) for a member to answer our request.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable
from typing import Any

from groups import history
from groups.conversation import INVITE_TTL, Conversations
from groups.conversation_events import Effect
from groups.conversation_io import ConversationIO
from groups.group import GroupLog, Op
from groups.invites import Invite
from groups.store import atomic
from mesh.errors import DiscoveryUnavailable

__all__ = ["INVITE_TTL", "Membership"]

log = logging.getLogger(__name__)

InviteInfo = Callable[[], tuple[str, tuple[str, ...], tuple[str, ...]]]


class Membership:
    """The groups a node is in, as the API sees them.

    ``invite_info()`` returns (bootstrap URL, our endpoints, DHT contacts) for invites.
    """

    def __init__(self, core: Conversations, io: ConversationIO, invite_info: InviteInfo) -> None:
        self.core = core
        self.io = io
        self.invite_info = invite_info

    # -- queries --------------------------------------------------------------------------

    def load(self, topic: bytes) -> None:
        self.io.apply(self.core.load(topic, history.load_ops(self.io.conn, topic)))

    def log_of(self, group_id: bytes) -> GroupLog:
        return self.core.log_of(group_id)

    def is_member(self, group_id: bytes | None, user_id: str) -> bool:
        return self.core.is_member(group_id, user_id)

    def recipients(self, group_id: bytes) -> list[str]:
        return self.core.recipients(group_id)

    def announce(self, group_id: bytes) -> None:
        self.io.announce(group_id)

    def info(self, group_id: bytes) -> dict[str, Any]:
        state = self.log_of(group_id).state
        return {"group_id": group_id.hex(), "name": state.name, "epoch": state.epoch,
                "members": [{"id": m.user_id, "role": m.role.value,
                             "identity_key": m.identity_key.hex()}
                            for m in sorted(state.members.values(),
                                            key=lambda m: (m.since_epoch, m.user_id))]}

    # -- actions ----------------------------------------------------------------------------

    def _commit(self, effects: list[Effect]) -> None:
        """Apply the effects in one transaction, then hand our messages to the mesh."""
        try:
            with atomic(self.io.conn):
                self.io.apply(effects)
        except BaseException:
            self.io.discard_unpublished()
            raise
        self.io.flush()

    def create(self, name: str) -> bytes:
        group_id, effects = self.core.create(name, self.io.clock())
        self._commit(effects)
        return group_id

    def publish_op(self, group_id: bytes, op: Op) -> None:
        """Publish an op we made and signed (the actions below make theirs)."""
        self._commit(self.core.publish_op(group_id, op))

    def invite(self, group_id: bytes, ttl: float = INVITE_TTL) -> Invite:
        invite, effects = self.core.invite(group_id, os.urandom(16), self.io.clock(), ttl,
                                           self.invite_info())
        self._commit(effects)
        return invite

    def remove(self, group_id: bytes, user_id: str) -> None:
        """Remove a member, or (our own id) leave."""
        self._commit(self.core.remove(group_id, user_id, self.io.clock()))

    def promote(self, group_id: bytes, user_id: str) -> None:
        self._commit(self.core.promote(group_id, user_id, self.io.clock()))

    async def join(self, invite: Invite, wait: float = 20.0) -> tuple[bytes, bool]:
        """Ask the inviter to add us; (group id, joined) — joined is False when no
        answer came within ``wait`` seconds (the request stays queued and may still
        succeed)."""
        effects = self.core.join(invite, self.io.clock())
        if not effects:
            return invite.group_id, True
        try:
            await self.io.directory.ensure_session(invite.inviter, self.io.clock())
        except DiscoveryUnavailable as exc:
            # Offline (a Bluetooth meetup, say): the request waits in the outbox until a
            # link to the inviter brings their record.
            log.info("join request to %s queued until we meet: %s", invite.inviter, exc)
        future = asyncio.get_running_loop().create_future()
        self.io.joins[invite.group_id] = future
        self._commit(effects)
        try:
            return await asyncio.wait_for(asyncio.shield(future), wait), True
        except TimeoutError:
            return invite.group_id, False
        finally:
            if self.io.joins.get(invite.group_id) is future and future.done():
                del self.io.joins[invite.group_id]
