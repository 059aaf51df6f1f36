"""The node API under /api/v1 (docs/api.md): what the browser app and scripts call.

Handlers are thin: they parse and check input, call the node's NodeApi (given to each
through ``initialize``; groups/node_api.py), and let webapp/node_handler.py turn the
groups and mesh error trees into JSON errors with the right status. The policy of
webapp.server.UiApiHandler (Host, Origin, token, content type, body size) runs first.
"""

from __future__ import annotations

import re

from groups.invites import Invite, qr_svg
from groups.membership import INVITE_TTL
from groups.node_api import NodeApi
from mesh.errors import PassphraseError
from mesh.jsonapi import ApiError, check_fields
from webapp.bluetooth_api import bluetooth_routes
from webapp.chat_api import (
    ConversationHandler,
    chat_routes,
    group_id_arg,
    message_id_arg,
    page_args,
    reply_to_arg,
    user_id_arg,
)
from webapp.files import AttachmentMixin, UploadMixin
from webapp.node_handler import NodeHandler
from webapp.profiles_api import profile_routes
from webapp.server import API_PREFIX, Route

__all__ = ["api_routes"]

MIN_INVITE_TTL = 1
MAX_INVITE_TTL = 30 * 24 * 3600.0
MAX_PASSPHRASE = 1024
class MeHandler(NodeHandler):
    def get(self) -> None:
        me = self.node.me()
        self.send_json(200, me)


class ContactsHandler(NodeHandler):
    def get(self) -> None:
        self.send_json(200, {"contacts": self.node.contacts()})

    async def post(self) -> None:
        body = self.json_body()
        check_fields(body, {"id"})
        contact = await self.node.add_contact(user_id_arg(body["id"]))
        self.send_json(201, contact)


class LinksHandler(NodeHandler):
    def get(self) -> None:
        self.send_json(200, {"links": self.node.links()})


class ChatMessagesHandler(UploadMixin, NodeHandler):
    def get(self, raw_id: str) -> None:
        topic = self.node.chat_topic(user_id_arg(raw_id))
        self.send_json(200, self.node.messages(topic, *page_args(self)))

    async def post(self, raw_id: str) -> None:
        user_id = user_id_arg(raw_id)
        upload = self.upload()
        if upload is not None:
            topic = await self.node.open_chat(user_id)
            self.send_json(201, await self.send_upload(
                topic, upload,
                lambda text, ref: self.node.send_text(topic, text, ref, upload.reply_to)))
            return
        text, reply_to = self.text_field(), reply_to_arg(self.json_body())
        topic = await self.node.open_chat(user_id)
        message_id = self.node.send_text(topic, text, None, reply_to)
        self.send_json(201, {"message_id": message_id.hex()})


class ChatReadHandler(NodeHandler):
    def post(self, raw_id: str) -> None:
        topic = self.node.chat_topic(user_id_arg(raw_id))
        self._read(topic)

    def _read(self, topic: bytes) -> None:
        body = self.json_body()
        check_fields(body, {"message_id"})
        count = self.node.mark_read(topic, message_id_arg(body["message_id"]))
        self.send_json(200, {"marked": count})


class GroupsHandler(NodeHandler):
    def get(self) -> None:
        self.send_json(200, {"groups": self.node.conversations(),
                             "left_groups": self.node.left_groups()})

    def post(self) -> None:
        body = self.json_body()
        check_fields(body, {"name"})
        if not isinstance(body["name"], str):
            raise ApiError(400, "bad_request", "name must be a string")
        group_id = self.node.create_group(body["name"])
        self.send_json(201, {"group_id": group_id.hex()})


class GroupHandler(NodeHandler):
    def get(self, raw_id: str) -> None:
        self.send_json(200, self.node.group_info(group_id_arg(raw_id)))


class InvitesHandler(NodeHandler):
    def post(self, raw_id: str) -> None:
        body = self.json_body() if self.body.strip() else {}
        check_fields(body, (), {"ttl"})
        ttl = body.get("ttl", INVITE_TTL)
        if type(ttl) not in (int, float) or not MIN_INVITE_TTL <= ttl <= MAX_INVITE_TTL:
            raise ApiError(400, "bad_ttl", f"ttl is {MIN_INVITE_TTL} to {MAX_INVITE_TTL:.0f} "
                                           "seconds")
        invite = self.node.invite(group_id_arg(raw_id), ttl)
        link = invite.to_link()
        self.send_json(201, {"invite": link, "expires": invite.expires, "qr_svg": qr_svg(link)})


class JoinHandler(NodeHandler):
    async def post(self) -> None:
        body = self.json_body()
        check_fields(body, {"invite"})
        invite = Invite.parse(body["invite"])
        group_id, joined = await self.node.join(invite)
        self.send_json(200 if joined else 202, {"group_id": group_id.hex(), "joined": joined})


class MemberHandler(NodeHandler):
    def delete(self, raw_group: str, raw_user: str) -> None:
        self.node.remove_member(group_id_arg(raw_group), user_id_arg(raw_user))
        self.set_status(204)
        self.finish()


class AdminsHandler(NodeHandler):
    def post(self, raw_group: str) -> None:
        body = self.json_body()
        check_fields(body, {"id"})
        self.send_json(200, self.node.promote(group_id_arg(raw_group), user_id_arg(body["id"])))


class GroupMessagesHandler(UploadMixin, NodeHandler):
    def get(self, raw_id: str) -> None:
        group_id = self.node.group_topic(group_id_arg(raw_id))
        self.send_json(200, self.node.messages(group_id, *page_args(self)))

    async def post(self, raw_id: str) -> None:
        group_id = group_id_arg(raw_id)
        upload = self.upload()
        if upload is not None:
            self.node.group_topic(group_id)  # a group we are in, or 404
            self.send_json(201, await self.send_upload(
                group_id, upload,
                lambda text, ref: self.node.send_text(group_id, text, ref, upload.reply_to)))
            return
        message_id = self.node.send_text(group_id, self.text_field(),
                                         None, reply_to_arg(self.json_body()))
        self.send_json(201, {"message_id": message_id.hex()})


class GroupReadHandler(ChatReadHandler):
    """Marking read is local: it is also allowed in a group we have just left or been
    removed from (the page may still show its messages; no receipt goes out for it).
    The message must be in that group's history we hold, else 404."""

    def post(self, raw_id: str) -> None:  # type: ignore[override]
        self._read(group_id_arg(raw_id))


class PresenceHandler(ConversationHandler):
    """/groups/{id}/presence and /chats/{id}/presence. GET: who is typing there and the
    others' presence; POST ``{"typing": bool}``: our user types (or stopped).
    Ephemeral: nothing of it is stored."""

    body_limit = 256

    def get(self, kind: str, raw_id: str) -> None:
        self.send_json(200, self.node.presence(self.topic(kind, raw_id)))

    def post(self, kind: str, raw_id: str) -> None:
        body = self.json_body()
        check_fields(body, {"typing"})
        if type(body["typing"]) is not bool:
            raise ApiError(400, "bad_request", "typing must be true or false")
        self.node.typing(self.topic(kind, raw_id), body["typing"])
        self.set_status(204)
        self.finish()


class PresenceSettingsHandler(NodeHandler):
    body_limit = 256

    def get(self) -> None:
        self.send_json(200, self.node.presence_settings())

    def post(self) -> None:
        body = self.json_body()
        check_fields(body, {"share"})
        if type(body["share"]) is not bool:
            raise ApiError(400, "bad_request", "share must be true or false")
        self.send_json(200, self.node.set_presence_sharing(body["share"]))


class PassphraseHandler(NodeHandler):
    """The identity key's passphrase (docs/protocol.md, "Keys at rest")."""

    body_limit = 4096

    def get(self) -> None:
        self.send_json(200, self.node.passphrase_status())

    async def post(self) -> None:
        body = self.json_body()
        check_fields(body, {"passphrase"}, {"current"})
        phrase, current = body["passphrase"], body.get("current")
        if not isinstance(phrase, str) or not 1 <= len(phrase) <= MAX_PASSPHRASE \
                or not (current is None or isinstance(current, str)):
            raise ApiError(400, "bad_passphrase",
                           f"passphrase must be 1 to {MAX_PASSPHRASE} characters")
        try:
            self.send_json(200, await self.node.set_passphrase(phrase, current))
        except PassphraseError:
            raise ApiError(403, "wrong_passphrase", "the current passphrase is missing "
                           "or wrong; nothing was changed") from None


class AttachmentHandler(AttachmentMixin, NodeHandler):
    """GET/HEAD /attachments/{id}: the file (webapp/files.py)."""


class AttachmentInfoHandler(NodeHandler):
    def get(self, raw_id: str) -> None:
        self.send_json(200, self.node.attachment_info(_attachment_id(raw_id)))


class TransfersHandler(NodeHandler):
    def get(self) -> None:
        self.send_json(200, self.node.transfer_stats())


def _attachment_id(raw: str) -> bytes:
    return message_id_arg(raw, "bad_attachment_id", "attachment")


class SafetyHandler(NodeHandler):
    def get(self, raw_id: str) -> None:
        self.send_json(200, self.node.safety(user_id_arg(raw_id)))


class VerifiedHandler(NodeHandler):
    """Mark a contact's safety number as compared in person (or take that back). The
    body names the key that was compared, so a key that changed meanwhile is refused."""

    def post(self, raw_id: str) -> None:
        self._set(raw_id, True)

    def delete(self, raw_id: str) -> None:
        self._set(raw_id, False)

    def _set(self, raw_id: str, verified: bool) -> None:
        body = self.json_body()
        check_fields(body, {"identity_key"})
        raw = body["identity_key"]
        if not isinstance(raw, str) or not re.fullmatch(r"05[0-9a-f]{64}", raw):
            raise ApiError(400, "bad_request", "identity_key is 66 hexadecimal characters")
        self.send_json(200, self.node.set_verified(user_id_arg(raw_id), bytes.fromhex(raw),
                                                   verified))


def api_routes(node: NodeApi) -> list[Route]:
    """The node API's routes, each handler given ``node`` (and the server's UiContext)."""
    p, gid, uid = API_PREFIX, r"([^/]+)", r"([^/]+)"
    routes: list[tuple[str, type[NodeHandler]]] = [
        (p + "/me", MeHandler),
        (p + "/passphrase", PassphraseHandler),
        (p + "/contacts", ContactsHandler),
        (p + "/links", LinksHandler),
        (p + f"/chats/{uid}/messages", ChatMessagesHandler),
        (p + f"/chats/{uid}/read", ChatReadHandler),
        (p + "/groups", GroupsHandler),
        (p + f"/groups/{gid}", GroupHandler),
        (p + f"/groups/{gid}/invites", InvitesHandler),
        (p + f"/groups/{gid}/members/{uid}", MemberHandler),
        (p + f"/groups/{gid}/admins", AdminsHandler),
        (p + f"/groups/{gid}/messages", GroupMessagesHandler),
        (p + f"/groups/{gid}/read", GroupReadHandler),
        (p + f"/(groups|chats)/{gid}/presence", PresenceHandler),
        (p + "/presence", PresenceSettingsHandler),
        (p + "/join", JoinHandler),
        (p + f"/safety/{uid}", SafetyHandler),
        (p + f"/safety/{uid}/verified", VerifiedHandler),
        (p + r"/attachments/([^/]+)", AttachmentHandler),
        (p + r"/attachments/([^/]+)/info", AttachmentInfoHandler),
        (p + "/transfers", TransfersHandler),
        *chat_routes(),
        *bluetooth_routes(),
        *profile_routes(),
    ]
    return [(pattern, handler, {"node": node}) for pattern, handler in routes]

