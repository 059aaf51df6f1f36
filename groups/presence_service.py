"""Typing and presence on the running node: the thin adapter of groups/presence.py.

It sends the core's signals over the links the mesh runtime holds at that moment (no
link, no signal: nothing is queued), tells the core who may signal what (members of
the conversation; for presence, our contacts and fellow members), pushes what it
believes to the UI as ``typing`` and ``presence`` events, and keeps the one setting
(share or not) in ``<data-dir>/presence.json``. A tick notices links that went away.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from groups import history
from groups.conversation_events import ConversationKind
from groups.errors import NotFound
from groups.messages import direct_topic
from groups.messenger import EventSink, Messenger
from groups.presence import HEARTBEAT, Online, Presence, Send, Typing
from mesh.transport import LinkConnection
from mesh.wire import Signal

__all__ = ["PresenceService"]

log = logging.getLogger(__name__)

TICK = 2.0   # how soon a closed link shows as "offline"
SETTINGS_FILE = "presence.json"


class PresenceService:
    def __init__(self, messenger: Messenger, links: Callable[[], dict[str, LinkConnection]],
                 events: EventSink, data_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self.m = messenger
        self.links = links
        self.events = events
        self.clock = clock
        self.path = data_dir / SETTINGS_FILE
        self.core = Presence(share=self._load())
        self._linked: set[str] = set()

    # -- who may hear what ---------------------------------------------------------------

    def people(self) -> set[str]:
        """Our contacts and fellow members: the ones presence is shared with."""
        users: set[str] = set()
        for conv in history.conversations(self.m.conn):
            if conv.left_at is not None:
                continue
            if conv.kind == ConversationKind.GROUP:
                if self.m.groups.is_member(conv.topic, self.m.me):
                    users |= set(self.m.core.members(conv.topic))
            elif conv.peer and conv.visible:
                users.add(conv.peer)
        users.discard(self.m.me)
        return users

    def _members(self, topic: bytes) -> list[str]:
        """The others in conversation ``topic``; NotFound if it is not ours."""
        conv = history.conversation(self.m.conn, topic)
        if conv is None or conv.left_at is not None:
            raise NotFound("no such conversation")
        if conv.kind == ConversationKind.GROUP:
            return self.m.groups.recipients(topic)
        return [conv.peer] if conv.peer and topic == direct_topic(self.m.me, conv.peer) else []

    def _allowed(self, peer: str, frame: Signal) -> bool:
        if not frame.topic:
            return peer in self.people()
        try:
            return peer in self._members(frame.topic)
        except NotFound:
            return False

    # -- the runtime's calls ---------------------------------------------------------------

    def on_frame(self, peer: str, frame: Signal) -> None:
        event = self.core.receive(peer, frame, lambda: self._allowed(peer, frame), self.clock())
        self._show(event)
        self._send(self.core.answer(event))

    def link_up(self, peer: str) -> None:
        if peer in self.people():
            self._linked.add(peer)
            self._send(self.core.linked(peer))

    async def run(self, stop: asyncio.Event) -> None:
        """Every TICK: notice closed links, and tell people we share a conversation with
        since the link came up (a new member) that we are here; every HEARTBEAT, tell
        everyone again (that is how fresh "last seen" is)."""
        last_beat = self.clock()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), TICK)
            now = self.clock()
            beat = now - last_beat >= HEARTBEAT
            if beat:
                last_beat = now
            self.tick(now, beat=beat)

    def tick(self, now: float, *, beat: bool) -> None:
        links = set(self.links())
        for peer in sorted(self._linked - links):
            self._show(self.core.unlinked(peer, now))
        self.core.forget(links)
        ours = self.people() & links
        fresh = ours if beat else ours - self._linked
        self._linked = ours
        self._send(self.core.heartbeat(sorted(fresh)))

    # -- the API's calls -----------------------------------------------------------------

    def typing(self, topic: bytes, typing: bool) -> None:
        linked = self.links()
        peers = [p for p in self._members(topic) if p in linked]
        self._send(self.core.typing(topic, peers, typing, self.clock()))

    def conversation(self, topic: bytes) -> dict[str, Any]:
        """Who is typing in ``topic`` and each other member's presence."""
        members = self._members(topic)
        linked = self.links()
        return {"share": self.core.share,
                "typing": self.core.typing_in(topic, self.clock()),
                "presence": {u: self.core.status(u, u in linked) for u in members}}

    def set_share(self, share: bool) -> None:
        self._send(self.core.set_share(share, sorted(self.people() & set(self.links()))))
        self._save()

    # -- plumbing ------------------------------------------------------------------------

    def _send(self, sends: list[Send]) -> None:
        links = self.links()
        for send in sends:
            link = links.get(send.peer)
            if link is not None:
                link.send(send.frame)

    def _show(self, event: Typing | Online | None) -> None:
        if isinstance(event, Typing):
            self.events.publish("typing", {"conversation": event.topic.hex(),
                                           "user_id": event.user, "typing": event.typing})
        elif isinstance(event, Online):
            self.events.publish("presence", {"user_id": event.user, "online": event.online,
                                             "last_seen": int(event.at * 1000)})

    def _load(self) -> bool:
        try:
            data = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return True
        return not (isinstance(data, dict) and data.get("share") is False)

    def _save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        try:
            tmp.write_text(json.dumps({"share": self.core.share}))
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("cannot save %s: %s", self.path, exc)
