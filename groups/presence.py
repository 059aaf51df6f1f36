"""Typing indicators and presence (sans-IO): ephemeral signals between linked nodes.

"Typing in this conversation" and "online" ride a link as wire.Signal frames, only to
the members of that conversation (or, for presence, to the people we share one with)
to whom we hold a link at that moment. They are never stored, forwarded or acked: a
lost one is simply not shown, and a typing indicator expires by itself. ``Presence``
decides what to send and what to believe, given ``now``; groups/presence_service.py
carries it out on the running node.

Limits: we send "typing" for one conversation at most every TYPING_EVERY seconds (the
app repeats it while the user types), receivers drop it after TYPING_TTL seconds
without a repeat, and take at most RATE signals a second from a peer (burst BURST);
the rest are dropped and counted. A user who turns sharing off sends neither, and (as
with "last seen" in other messengers) is shown no one else's either.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mesh.ratelimit import TokenBuckets
from mesh.wire import Signal

__all__ = ["BURST", "HEARTBEAT", "RATE", "TYPING_EVERY", "TYPING_TTL", "Online", "Presence",
           "Send", "Typing"]

TYPING = "typing"
ONLINE = "online"
TYPING_EVERY = 2.0    # below the app's 2.5 s repeat, so each repeat goes out
TYPING_TTL = 6.0
HEARTBEAT = 60.0     # "online" is repeated this often: last seen is that fresh
RATE = 4.0
BURST = 12.0


@dataclass(frozen=True)
class Send:
    peer: str
    frame: Signal


@dataclass(frozen=True)
class Typing:
    """For the UI: ``user`` is (or stopped) typing in conversation ``topic``."""

    topic: bytes
    user: str
    typing: bool


@dataclass(frozen=True)
class Online:
    """For the UI: ``user`` came online or went away (``at``: when we heard it)."""

    user: str
    online: bool
    at: float


@dataclass
class Presence:
    """One node's view: what it told whom, and what it heard from whom."""

    share: bool = True
    dropped: int = 0   # signals refused (not ours to hear, or over the rate)
    _sent_typing: dict[bytes, float] = field(default_factory=dict)   # topic -> when
    _typing: dict[tuple[bytes, str], float] = field(default_factory=dict)  # -> until
    _online: dict[str, bool] = field(default_factory=dict)
    _heard: dict[str, float] = field(default_factory=dict)   # user -> last signal
    _buckets: TokenBuckets = field(default_factory=lambda: TokenBuckets(RATE, BURST, 65536))

    # -- what we send -----------------------------------------------------------------

    def typing(self, topic: bytes, peers: list[str], typing: bool, now: float) -> list[Send]:
        """Our user types (or stopped) in ``topic``, whose linked members are ``peers``."""
        if not self.share:
            return []
        last = self._sent_typing.get(topic)
        if typing:
            if last is not None and now - last < TYPING_EVERY:
                return []
            self._sent_typing[topic] = now
        else:
            if last is None:
                return []
            del self._sent_typing[topic]
        return [Send(peer, Signal(topic, TYPING, typing)) for peer in peers]

    def linked(self, peer: str) -> list[Send]:
        """A link to someone we share a conversation with came up."""
        return [Send(peer, Signal(b"", ONLINE, True))] if self.share else []

    def answer(self, event: Typing | Online | None) -> list[Send]:
        """Someone just came online for us: tell them we are here too. Our own "online"
        may have reached them before they knew us as a member (they dropped it); this
        repairs that at once instead of at the next heartbeat. It cannot ping-pong:
        only a change answers, and a repeat is no change."""
        if isinstance(event, Online) and event.online:
            return self.linked(event.user)
        return []

    def heartbeat(self, peers: list[str]) -> list[Send]:
        return [s for peer in peers for s in self.linked(peer)]

    def set_share(self, share: bool, peers: list[str]) -> list[Send]:
        """Sharing switched on (say we are here) or off (say we are gone, forget all)."""
        if share == self.share:
            return []
        self.share = share
        if share:
            return self.heartbeat(peers)
        self._sent_typing.clear()
        self._typing.clear()
        self._online.clear()
        return [Send(peer, Signal(b"", ONLINE, False)) for peer in peers]

    # -- what we hear ---------------------------------------------------------------------

    def receive(self, peer: str, frame: Signal, allowed: Callable[[], bool],
                now: float) -> Typing | Online | None:
        """A signal from linked ``peer``; ``allowed()`` says whether the peer is a
        member of the conversation it names (or, for presence, someone we share one
        with), asked only once the rate allows the signal, so a flood costs no lookups.
        None: nothing to show (refused, over the rate, or sharing is off)."""
        if not self._buckets.take(peer, 1, now) or frame.kind not in (TYPING, ONLINE) \
                or (frame.kind == TYPING) != bool(frame.topic) or not allowed():
            self.dropped += 1
            return None
        if not self.share:
            return None
        self._heard[peer] = now
        if frame.kind == ONLINE:
            changed = self._online.get(peer) != frame.on
            self._online[peer] = frame.on
            return Online(peer, frame.on, now) if changed else None
        key = (frame.topic, peer)
        was = self._typing.get(key, 0.0) > now
        if frame.on:
            self._typing[key] = now + TYPING_TTL
        else:
            self._typing.pop(key, None)
        return Typing(frame.topic, peer, frame.on) if was != frame.on else None

    def unlinked(self, peer: str, now: float) -> Online | None:
        """The link to ``peer`` is gone: it is not online, nor typing, any more (last
        seen stays what we last heard)."""
        for key in [k for k in self._typing if k[1] == peer]:
            del self._typing[key]
        return Online(peer, False, now) if self._online.pop(peer, False) else None

    def forget(self, linked: Iterable[str]) -> None:
        """Drop the rate state of peers no longer linked (strangers come and go)."""
        self._buckets.retain(linked)

    # -- queries ------------------------------------------------------------------------

    def typing_in(self, topic: bytes, now: float) -> list[str]:
        return sorted(user for (t, user), until in self._typing.items()
                      if t == topic and until > now)

    def status(self, user: str, linked: bool) -> dict[str, object]:
        """``{"online": bool | None, "last_seen": ms | None}``; None: not shared."""
        if not self.share:
            return {"online": None, "last_seen": None}
        heard = self._heard.get(user)
        return {"online": linked and self._online.get(user, False),
                "last_seen": None if heard is None else int(heard * 1000)}
