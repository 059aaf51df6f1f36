"""NodeApi: everything a UI (webapp/api.py) may ask of a node, and nothing more.

The handlers of the node API get one NodeApi through ``initialize()`` and call only
its methods; they never reach into the node's parts. Methods take and return plain
values (ids as str/bytes, JSON-ready dicts) and raise the groups and mesh error trees,
which webapp/api.py turns into HTTP answers. State-changing methods commit before they
return (accepted = durable).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from groups import history, profiles, safety_changes
from groups import store as node_store
from groups.attachment_rows import AttachmentRow
from groups.crypto import safety_number, safety_number_qr
from groups.errors import NotFound, PermissionDenied
from groups.group import membership_events
from groups.invites import Invite, qr_svg
from groups.membership import INVITE_TTL
from groups.messages import FileRef, direct_topic
from groups.node import Node
from mesh.addresses import Kind
from mesh.identity import display_user_id, identity_is_protected, set_passphrase

__all__ = ["NodeApi"]


class NodeApi:
    def __init__(self, node: Node) -> None:
        self._node = node
        self._messenger = node.messenger
        self._groups = node.messenger.groups
        self._attachments = node.attachments
        self._meetups = node.meetups
        self.user_id = node.user_id

    # -- me, contacts, safety numbers --------------------------------------------------

    def me(self) -> dict[str, Any]:
        node = self._node
        dht = node.dht
        return {"id": self.user_id, "display_id": display_user_id(self.user_id),
                "identity_key": node.identity.public.hex(),
                "safety_qr": qr_svg(f"parley:user/{self.user_id}/{node.identity.public.hex()}"),
                "endpoints": list(node.record.endpoints),
                "bootstrap": node.config.bootstrap,
                "registered": node.client is not None and node.registered.is_set(),
                "storage_bytes": self.storage_bytes(),
                "bluetooth": self._meetups.summary(),
                "reachability": self.reachability(),
                "dht": None if dht is None else {
                    "joined": node.dht_joined,
                    "peers": dht.routing_table_size() if dht.running else 0}}

    def reachability(self) -> dict[str, Any]:
        """``me.reachability``: how others reach us (mesh/reachability.py), the mapped
        address apart, and what LAN discovery and port mapping are doing, so Settings
        can say it in words (docs/api.md)."""
        node = self._node
        mapped = [c.url for c in node.addresses.candidates(Kind.MAPPED)]
        return {**node.reachability.to_json(), "mapped": mapped,
                "lan_discovery": self._lan_discovery(), "port_mapping": self._port_mapping()}

    def _lan_discovery(self) -> dict[str, str]:
        node = self._node
        if node.lan is not None:
            return {"state": "on", "reason": ""}
        return {"state": "off",
                "reason": "disabled" if not node.config.lan_discovery else "not_on_lan"}

    def _port_mapping(self) -> dict[str, Any]:
        node, config = self._node, self._node.config
        mapper = node.portmap
        if mapper is None:
            reason = ("disabled" if not config.port_mapping else "advertised" if config.advertise
                      else "no_bootstrap" if not config.bootstrap else "not_on_lan")
            return {"state": "off", "reason": reason, "method": "", "address": None,
                    "problem": ""}
        state = "mapped" if mapper.url else "failed" if mapper.problem else "trying"
        return {"state": state, "reason": "", "method": mapper.method, "address": mapper.url,
                "problem": mapper.problem}

    def passphrase_status(self) -> dict[str, Any]:
        return {"protected": identity_is_protected(self._node.data_dir)}

    async def set_passphrase(self, passphrase: str, current: str | None) -> dict[str, Any]:
        """Protect (or re-protect) the identity key file; PassphraseError when the
        current passphrase is missing or wrong. Argon2id runs in a thread."""
        node = self._node
        await asyncio.to_thread(set_passphrase, node.data_dir, node.identity,
                                passphrase.encode(), None if current is None else current.encode())
        return {"protected": True}

    def storage_bytes(self) -> int:
        """What this node keeps on disk (database, its WAL, attachment chunks)."""
        total = 0
        for path in Path(self._node.data_dir).rglob("*"):
            with contextlib.suppress(OSError):
                if path.is_file():
                    total += path.stat().st_size
        return total

    def links(self) -> dict[str, str]:
        """How each established link travels now, by peer user id (docs/api.md): one
        cheap answer for every path badge on a screen."""
        return self._node.runtime.manager.link_paths()

    def contacts(self) -> list[dict[str, Any]]:
        paths = self._node.runtime.manager.link_paths()
        return [{"id": uid, "display_id": display_user_id(uid),
                 "conversation": direct_topic(self.user_id, uid).hex(),
                 "path": paths.get(uid)}
                for uid in self._node.directory.contacts()]

    async def add_contact(self, user_id: str) -> dict[str, Any]:
        if user_id == self.user_id:
            raise NotFound("that is your own id")
        directory = self._node.directory
        record = await directory.refresh(user_id, time.time())
        directory.remember(record, time.time(), contact=True)
        await directory.ensure_session(user_id, time.time())
        with node_store.atomic(self._node.conn):
            topic = self._messenger.open_direct(user_id, visible=True)
        self._messenger.announce_direct(topic, user_id)
        return {"id": user_id, "display_id": display_user_id(user_id),
                "conversation": topic.hex()}

    def safety(self, user_id: str) -> dict[str, Any]:
        node = self._node
        key = node.crypto.identity_key_of(user_id)
        if key is None:
            record = node.directory.record(user_id)
            if record is None:
                raise NotFound("no key known for this user yet")
            key = record.identity_key
        number = safety_number(node.identity.public, key)
        return {"id": user_id, "safety_number": number, "identity_key": key.hex(),
                "verified": node.directory.is_verified(user_id, key),
                "qr_svg": qr_svg(safety_number_qr(node.identity.public, key))}

    def set_verified(self, user_id: str, identity_key: bytes, verified: bool) -> dict[str, Any]:
        """Our user compared the safety number in person (for exactly this key)."""
        current = self.safety(user_id)
        if bytes.fromhex(current["identity_key"]) != identity_key:
            raise PermissionDenied("the key changed since you compared it; compare again",
                                   "key_mismatch")
        self._node.directory.set_verified(user_id, identity_key, verified)
        return self.safety(user_id)

    # -- profiles and nicknames (groups/profiles.py) ----------------------------------------

    def profiles(self) -> dict[str, Any]:
        """Our profile and what we know of everyone else's: the name they chose, our
        nickname for them, whether they have an avatar (its version), and ``lookalike``:
        someone else whose shown name reads like theirs (ours included)."""
        conn = self._node.conn
        rows, nicks = profiles.load_profiles(conn), profiles.nicknames(conn)
        shown = {user: nicks.get(user) or row.name for user, row in rows.items()}
        shown.update(nicks)
        since = {user: row.named_at for user, row in rows.items()}
        since.update(dict.fromkeys([*nicks, self.user_id], -1))  # first by definition
        marked = profiles.lookalikes(shown, since)
        mine = rows.get(self.user_id)
        people = {}
        for user in sorted((set(rows) | set(nicks)) - {self.user_id}):
            row = rows.get(user)
            people[user] = {"name": row.name if row else None, "nickname": nicks.get(user),
                            "avatar": row.version if row and row.avatar else None,
                            "lookalike": marked.get(user)}
        return {"me": {"name": mine.name if mine else None,
                       "avatar": mine.version if mine and mine.avatar else None},
                "people": people}

    def set_profile(self, name: str, avatar: bytes | None) -> dict[str, Any]:
        """Check and keep our profile (``avatar`` None: keep ours, ``b""``: none); every
        contact and group member is sent it."""
        with node_store.atomic(self._node.conn):
            profiles.set_own_profile(self._node.conn, self.user_id, name, avatar,
                                     int(time.time() * 1000))
            self._messenger.share_profile()
        self._messenger.events.publish("profile", {"user_id": self.user_id})
        return self.profiles()["me"]

    def avatar(self, user_id: str) -> tuple[bytes, str]:
        row = profiles.load_profiles(self._node.conn).get(user_id)
        if row is None or not row.avatar:
            raise NotFound("no avatar for this user")
        return row.avatar, row.avatar_mime

    def set_nickname(self, user_id: str, nickname: str) -> str:
        """Our own name for someone (never shared); "" removes it."""
        with node_store.atomic(self._node.conn):
            kept = profiles.set_nickname(self._node.conn, user_id, nickname)
        self._messenger.events.publish("profile", {"user_id": user_id})
        return kept

    # -- 1:1 chats -----------------------------------------------------------------------

    def chat_topic(self, user_id: str) -> bytes:
        """The 1:1 topic with ``user_id``; NotFound unless we chat with them."""
        topic = direct_topic(self.user_id, user_id)
        if history.conversation(self._node.conn, topic) is None:
            raise NotFound("no chat with this user; add them as a contact first")
        return topic

    async def open_chat(self, user_id: str) -> bytes:
        """The 1:1 topic with ``user_id``, adding the contact first if needed."""
        topic = direct_topic(self.user_id, user_id)
        if history.conversation(self._node.conn, topic) is None \
                or not self._node.crypto.has_session(user_id):
            await self.add_contact(user_id)
        return topic

    # -- groups ------------------------------------------------------------------------

    def conversations(self) -> list[dict[str, Any]]:
        """Groups and 1:1 chats we are in, each with its last message and unread count."""
        conn = self._node.conn
        out = []
        for conv in history.conversations(conn):
            if not conv.visible or conv.left_at is not None:
                continue
            rows = history.chat_messages(conn, conv.topic, limit=1)
            out.append({"id": conv.topic.hex(), "kind": conv.kind, "name": conv.name,
                        "peer": conv.peer, "muted": conv.muted, "timer": conv.timer,
                        "unread": history.unread_count(conn, conv.topic, self.user_id),
                        "last_message": self._messenger.describe(rows[-1]) if rows else None})
        return out

    def left_groups(self) -> list[dict[str, Any]]:
        """Groups we left or were removed from: their names stay known to us (a chat
        still open on one is titled by it)."""
        return [{"id": conv.topic.hex(), "name": conv.name}
                for conv in history.conversations(self._node.conn)
                if conv.kind == "group" and conv.left_at is not None]

    def create_group(self, name: str) -> bytes:
        return self._groups.create(name)

    def group_topic(self, group_id: bytes) -> bytes:
        """``group_id`` if we are in that group; NotFound otherwise."""
        self._groups.log_of(group_id)
        return group_id

    def group_info(self, group_id: bytes) -> dict[str, Any]:
        """The group, each member with the path of our link to them (None: no link),
        and its membership changes since we (last) joined (the chat's system lines)."""
        info = self._groups.info(group_id)
        paths = self._node.runtime.manager.link_paths()
        return {**info, "members": [{**m, "path": paths.get(m["id"])}
                                    for m in info["members"]],
                "events": membership_events(self._groups.log_of(group_id), self.user_id)}

    def invite(self, group_id: bytes, ttl: float = INVITE_TTL) -> Invite:
        return self._groups.invite(group_id, ttl)

    async def join(self, invite: Invite) -> tuple[bytes, bool]:
        """Redeem an invite: (group id, joined now) - False: the request waits for a
        member to come online. The invite's DHT contacts are tried first."""
        await self._node.join_dht_contacts(invite.dht)
        return await self._groups.join(invite)

    def remove_member(self, group_id: bytes, user_id: str) -> None:
        self._groups.remove(group_id, user_id)

    def promote(self, group_id: bytes, user_id: str) -> dict[str, Any]:
        self._groups.promote(group_id, user_id)
        return self._groups.info(group_id)

    # -- messages (both kinds of conversation, by topic) -------------------------------------

    def messages(self, topic: bytes, limit: int = 200,
                 before: str | None = None) -> dict[str, Any]:
        """A page of messages in display order and the cursor of the page before it
        (None: none). ``before``: a cursor from an earlier answer (NotFound if bad)."""
        position = None if before is None else history.parse_cursor(before)
        if before is not None and position is None:
            raise NotFound("no such cursor")
        messages, older = self._messenger.page(topic, limit, position)
        return {"messages": messages, "before": older,
                "timer_changes": history.timer_changes(self._node.conn, topic),
                "safety_changes": [line.to_json() for line in
                                   safety_changes.changes(self._node.conn, topic)]}

    def send_text(self, topic: bytes, text: str, file: FileRef | None = None,
                  reply_to: bytes = b"") -> bytes:
        return self._messenger.send_text(topic, text, file, reply_to)

    def react(self, topic: bytes, message_id: bytes, emoji: str) -> None:
        self._messenger.react(topic, message_id, emoji)

    def edit(self, topic: bytes, message_id: bytes, text: str) -> None:
        self._messenger.edit(topic, message_id, text)

    def delete(self, topic: bytes, message_id: bytes) -> None:
        self._messenger.delete(topic, message_id)

    def set_timer(self, topic: bytes, seconds: int) -> None:
        self._messenger.set_timer(topic, seconds)

    def set_muted(self, topic: bytes, muted: bool) -> None:
        self._messenger.set_muted(topic, muted)

    def message(self, topic: bytes, message_id: bytes) -> dict[str, Any]:
        row = history.chat_message(self._node.conn, message_id)
        if row is None or row.topic != topic:
            raise NotFound("no such message in this conversation")
        return self._messenger.describe(row)

    def search(self, query: str, limit: int = 50) -> list[dict[str, Any]]:
        """Messages of the conversations shown whose text or file name has every word
        of ``query`` (as a word prefix), best first, each with a snippet."""
        conn = self._node.conn
        topics = [c.topic for c in history.conversations(conn)
                  if c.visible and c.left_at is None]
        terms = query.split()[:16]
        return [{"message": self._messenger.describe(row), "snippet": snippet}
                for row, snippet in history.search(conn, terms, topics, limit)]

    def mark_read(self, topic: bytes, message_id: bytes) -> int:
        return self._messenger.mark_read(topic, message_id)

    # -- typing and presence (ephemeral: groups/presence.py) ---------------------------

    def typing(self, topic: bytes, typing: bool) -> None:
        """Our user types (or stopped typing) in ``topic``: linked members are told."""
        self._node.presence.typing(topic, typing)

    def presence(self, topic: bytes) -> dict[str, Any]:
        return self._node.presence.conversation(topic)

    def presence_settings(self) -> dict[str, Any]:
        return {"share": self._node.presence.core.share}

    def set_presence_sharing(self, share: bool) -> dict[str, Any]:
        self._node.presence.set_share(share)
        return self.presence_settings()

    # -- attachments -------------------------------------------------------------------

    def new_upload(self) -> tuple[int, Path]:
        """A private file (fd, path) to stream an upload's plaintext into."""
        return self._attachments.store.new_upload()

    async def stage_upload(self, topic: bytes, path: Path, name: str, size: int) -> FileRef:
        """Encrypt an uploaded file into the chunk store, ready to be sent in ``topic``."""
        return await self._attachments.stage(topic, path, name, size)

    def discard_attachment(self, file_id: bytes) -> None:
        self._attachments.discard(file_id)

    def attachment(self, file_id: bytes) -> AttachmentRow:
        return self._attachments.get(file_id)

    async def read_attachment(self, row: AttachmentRow, index: int) -> bytes:
        """Chunk ``index`` of a complete file, decrypted and checked."""
        return await self._attachments.read_plain(row, index)

    def attachment_info(self, file_id: bytes) -> dict[str, Any]:
        return self._attachments.info(file_id)

    def transfer_stats(self) -> dict[str, Any]:
        return self._attachments.stats()

    # -- Bluetooth ---------------------------------------------------------------------

    def bluetooth(self) -> dict[str, Any]:
        return self._meetups.status()

    def set_bluetooth_attachments(self, limit: int | None) -> None:
        self._meetups.set_attachments_limit(limit)

    async def set_bluetooth_enabled(self, enabled: bool) -> None:
        await self._meetups.set_enabled(enabled)
