"""Who may see an attachment and whom chunks may be exchanged with: the members of
its conversation, as this node's membership log says (groups/membership.py).

- the local user sees attachments of conversations it is still in (``visible``);
- a chunk is served to a peer only if both we and the peer are current members
  (``may_serve``), answers remembered for ``memory`` seconds because the chunk
  exchange asks once per request;
- chunks are asked of the other members (``members``).
"""

from __future__ import annotations

from typing import Any

from groups import history
from groups.errors import GroupsError

__all__ = ["ConversationAccess"]


class ConversationAccess:
    def __init__(self, conn: Any, me: str, groups: Any, *, memory: float = 0.25) -> None:
        self.conn, self.me, self.groups = conn, me, groups
        self.memory = memory
        self._allowed: dict[tuple[bytes, str], bool] = {}
        self._until = 0.0

    def _conversation(self, topic: bytes) -> history.Conversation | None:
        conv = history.conversation(self.conn, topic)
        return None if conv is None or conv.left_at is not None else conv

    def visible(self, topic: bytes) -> bool:
        """Is ``topic`` a conversation our user is (still) in?"""
        conv = self._conversation(topic)
        return conv is not None and (conv.kind == "direct"
                                     or self.groups.is_member(topic, self.me))

    def members(self, topic: bytes) -> set[str]:
        """The other members of a conversation we are in (empty otherwise)."""
        conv = self._conversation(topic)
        if conv is None:
            return set()
        if conv.kind == "direct":
            return {conv.peer or ""}
        try:
            return set(self.groups.recipients(topic))
        except GroupsError:
            return set()

    def may_serve(self, topic: bytes, peer: str, now: float) -> bool:
        """Are we and ``peer`` both members of ``topic``? Remembered for ``memory``
        seconds: a membership change reaches the chunk exchange within that time."""
        if now >= self._until:
            self._allowed.clear()
            self._until = now + self.memory
        allowed = self._allowed.get((topic, peer))
        if allowed is None:
            conv = self._conversation(topic)
            if conv is None:
                allowed = False
            elif conv.kind == "direct":
                allowed = conv.peer == peer
            else:
                allowed = self.groups.is_member(topic, self.me) and \
                    self.groups.is_member(topic, peer)
            self._allowed[(topic, peer)] = allowed
        return allowed
