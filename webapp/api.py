"""The node API under /api/v1 (docs/api.md): what the browser app and scripts call.

Handlers are thin: they parse and check input, call the node (groups/node.py), and turn
the groups and mesh error trees into JSON errors with the right status. The policy of
webapp.server.UiApiHandler (Host, Origin, token, content type, body size) runs first.
"""

from __future__ import annotations

import re
from typing import Any

from groups.errors import (
    GroupsError,
    IdentityChanged,
    InviteError,
    NoSession,
    NotFound,
    PermissionDenied,
)
from groups.invites import Invite, qr_svg
from groups.membership import INVITE_TTL
from mesh.dht_records import DhtError, RecordNotFound
from mesh.encoding import FormatError
from mesh.errors import DiscoveryRefused, DiscoveryUnavailable, MeshError, RecordError
from mesh.identity import parse_user_id
from mesh.jsonapi import ApiError, check_fields
from webapp.bluetooth_api import bluetooth_routes
from webapp.files import AttachmentMixin, UploadMixin
from webapp.server import API_PREFIX, UiApiHandler

__all__ = ["api_routes"]

_GROUP_ID = re.compile(r"^[0-9a-f]{32}$")
_MESSAGE_ID = re.compile(r"^[0-9a-f]{64}$")
MIN_INVITE_TTL = 1
MAX_INVITE_TTL = 30 * 24 * 3600.0
_STATUS_OF_REASON = {"text_too_long": 413, "empty_message": 400, "bad_name": 400,
                     "invite_malformed": 400, "file_too_large": 413, "empty_file": 400,
                     "bad_file_name": 400}


def to_api_error(exc: Exception) -> ApiError:
    """One place where the lower layers' typed errors become HTTP answers."""
    reason = getattr(exc, "reason", "error")
    if isinstance(exc, NotFound):
        return ApiError(404, "not_found", str(exc))
    if isinstance(exc, IdentityChanged):
        return ApiError(409, "identity_changed",
                        f"the safety number of {exc.user_id} changed; compare it before "
                        "you continue")
    if isinstance(exc, NoSession):
        return ApiError(409, "no_session", str(exc))
    if isinstance(exc, PermissionDenied | InviteError):
        return ApiError(_STATUS_OF_REASON.get(reason, 403), reason, str(exc))
    if isinstance(exc, DiscoveryRefused):
        status = 404 if exc.status == 404 else 502
        return ApiError(status, "unknown_user" if status == 404 else reason, str(exc))
    if isinstance(exc, RecordNotFound):
        return ApiError(404, "unknown_user", "no user with this id could be found")
    if isinstance(exc, DiscoveryUnavailable | DhtError):
        return ApiError(503, "discovery_unavailable",
                        "the bootstrap server (and the DHT) could not be reached")
    if isinstance(exc, RecordError):
        return ApiError(502, reason, f"a server sent a record that does not verify: {exc}")
    if isinstance(exc, FormatError):
        return ApiError(400, "bad_request", str(exc))
    return ApiError(500, "internal_error", "unexpected error")


class NodeHandler(UiApiHandler):
    """Maps the groups/mesh errors raised by a handler method to JSON answers."""

    # A 64 KiB text may grow sixfold as JSON (\u escapes of 6 bytes): room for it, so the
    # messenger, not the transport, tells the user what the limit is.
    body_limit = 512 * 1024

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, GroupsError | MeshError) and to_api_error(value).status_code < 500:
            return  # a refusal, answered with its reason
        super().log_exception(typ, value, tb)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, GroupsError | MeshError):
            mapped = to_api_error(exc)
            self.set_status(mapped.status_code)
            kwargs["exc_info"] = (ApiError, mapped, None)
            status_code = mapped.status_code
        super().write_error(status_code, **kwargs)

    def text_field(self) -> str:
        body = self.json_body()
        check_fields(body, {"text"})
        if not isinstance(body["text"], str):
            raise ApiError(400, "bad_request", "text must be a string")
        return body["text"]


def _group_id(raw: str) -> bytes:
    if not _GROUP_ID.match(raw):
        raise ApiError(400, "bad_group_id", "a group id is 32 hexadecimal characters")
    return bytes.fromhex(raw)


def _message_id(raw: Any) -> bytes:
    if not isinstance(raw, str) or not _MESSAGE_ID.match(raw):
        raise ApiError(400, "bad_message_id", "a message id is 64 hexadecimal characters")
    return bytes.fromhex(raw)


def _user_id(raw: Any) -> str:
    try:
        return parse_user_id(raw)
    except FormatError:
        raise ApiError(400, "bad_user_id", "a user id is 15 digits") from None


class MeHandler(NodeHandler):
    def get(self) -> None:
        me = self.node.me_info()
        self.send_json(200, me)


class ContactsHandler(NodeHandler):
    def get(self) -> None:
        self.send_json(200, {"contacts": self.node.contacts()})

    async def post(self) -> None:
        body = self.json_body()
        check_fields(body, {"id"})
        contact = await self.node.add_contact(_user_id(body["id"]))
        self.send_json(201, contact)


class ChatMessagesHandler(UploadMixin, NodeHandler):
    def get(self, raw_id: str) -> None:
        topic = self.node.chat_topic(_user_id(raw_id))
        self.send_json(200, {"messages": self.node.messenger.messages(topic)})

    async def post(self, raw_id: str) -> None:
        user_id = _user_id(raw_id)
        upload = self.upload()
        if upload is not None:
            topic = await self.node.open_chat(user_id)
            self.send_json(201, await self.send_upload(
                topic, upload, lambda text, ref: self.node.send_direct(user_id, text, ref)))
            return
        text = self.text_field()
        message_id = await self.node.send_direct(user_id, text)
        self.send_json(201, {"message_id": message_id.hex()})


class ChatReadHandler(NodeHandler):
    def post(self, raw_id: str) -> None:
        topic = self.node.chat_topic(_user_id(raw_id))
        self._read(topic)

    def _read(self, topic: bytes) -> None:
        body = self.json_body()
        check_fields(body, {"message_id"})
        count = self.node.messenger.mark_read(topic, _message_id(body["message_id"]))
        self.send_json(200, {"marked": count})


class GroupsHandler(NodeHandler):
    def get(self) -> None:
        self.send_json(200, {"groups": self.node.group_list()})

    def post(self) -> None:
        body = self.json_body()
        check_fields(body, {"name"})
        if not isinstance(body["name"], str):
            raise ApiError(400, "bad_request", "name must be a string")
        group_id = self.node.messenger.groups.create(body["name"])
        self.send_json(201, {"group_id": group_id.hex()})


class GroupHandler(NodeHandler):
    def get(self, raw_id: str) -> None:
        self.send_json(200, self.node.messenger.groups.info(_group_id(raw_id)))


class InvitesHandler(NodeHandler):
    def post(self, raw_id: str) -> None:
        body = self.json_body() if self.body.strip() else {}
        check_fields(body, (), {"ttl"})
        ttl = body.get("ttl", INVITE_TTL)
        if type(ttl) not in (int, float) or not MIN_INVITE_TTL <= ttl <= MAX_INVITE_TTL:
            raise ApiError(400, "bad_ttl", f"ttl is {MIN_INVITE_TTL} to {MAX_INVITE_TTL:.0f} "
                                           "seconds")
        invite = self.node.messenger.groups.invite(_group_id(raw_id), ttl)
        link = invite.to_link()
        self.send_json(201, {"invite": link, "expires": invite.expires, "qr_svg": qr_svg(link)})


class JoinHandler(NodeHandler):
    async def post(self) -> None:
        body = self.json_body()
        check_fields(body, {"invite"})
        invite = Invite.parse(body["invite"])
        await self.node.join_dht_contacts(invite.dht)
        group_id, joined = await self.node.messenger.groups.join(invite)
        self.send_json(200 if joined else 202, {"group_id": group_id.hex(), "joined": joined})


class MemberHandler(NodeHandler):
    def delete(self, raw_group: str, raw_user: str) -> None:
        self.node.messenger.groups.remove(_group_id(raw_group), _user_id(raw_user))
        self.set_status(204)
        self.finish()


class AdminsHandler(NodeHandler):
    def post(self, raw_group: str) -> None:
        body = self.json_body()
        check_fields(body, {"id"})
        self.node.messenger.groups.promote(_group_id(raw_group), _user_id(body["id"]))
        self.send_json(200, self.node.messenger.groups.info(_group_id(raw_group)))


class GroupMessagesHandler(UploadMixin, NodeHandler):
    def get(self, raw_id: str) -> None:
        group_id = _group_id(raw_id)
        self.node.messenger.groups.log_of(group_id)
        self.send_json(200, {"messages": self.node.messenger.messages(group_id)})

    async def post(self, raw_id: str) -> None:
        group_id = _group_id(raw_id)
        upload = self.upload()
        if upload is not None:
            self.node.messenger.groups.log_of(group_id)  # a group we are in, or 404
            self.send_json(201, await self.send_upload(
                group_id, upload,
                lambda text, ref: self.node.messenger.send_text(group_id, text, ref)))
            return
        message_id = self.node.messenger.send_text(group_id, self.text_field())
        self.send_json(201, {"message_id": message_id.hex()})


class GroupReadHandler(ChatReadHandler):
    def post(self, raw_id: str) -> None:  # type: ignore[override]
        group_id = _group_id(raw_id)
        self.node.messenger.groups.log_of(group_id)
        self._read(group_id)


class AttachmentHandler(AttachmentMixin, NodeHandler):
    """GET/HEAD /attachments/{id}: the file (webapp/files.py)."""


class AttachmentInfoHandler(NodeHandler):
    def get(self, raw_id: str) -> None:
        self.send_json(200, self.node.attachments.info(_attachment_id(raw_id)))


class TransfersHandler(NodeHandler):
    def get(self) -> None:
        self.send_json(200, self.node.attachments.stats())


def _attachment_id(raw: str) -> bytes:
    if not _MESSAGE_ID.match(raw):
        raise ApiError(400, "bad_attachment_id", "an attachment id is 64 hex characters")
    return bytes.fromhex(raw)


class SafetyHandler(NodeHandler):
    def get(self, raw_id: str) -> None:
        self.send_json(200, self.node.safety(_user_id(raw_id)))


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
        self.send_json(200, self.node.set_verified(_user_id(raw_id), bytes.fromhex(raw),
                                                   verified))


def api_routes() -> list[tuple[str, type[UiApiHandler]]]:
    p, gid, uid = API_PREFIX, r"([^/]+)", r"([^/]+)"
    return [
        (p + "/me", MeHandler),
        (p + "/contacts", ContactsHandler),
        (p + f"/chats/{uid}/messages", ChatMessagesHandler),
        (p + f"/chats/{uid}/read", ChatReadHandler),
        (p + "/groups", GroupsHandler),
        (p + f"/groups/{gid}", GroupHandler),
        (p + f"/groups/{gid}/invites", InvitesHandler),
        (p + f"/groups/{gid}/members/{uid}", MemberHandler),
        (p + f"/groups/{gid}/admins", AdminsHandler),
        (p + f"/groups/{gid}/messages", GroupMessagesHandler),
        (p + f"/groups/{gid}/read", GroupReadHandler),
        (p + "/join", JoinHandler),
        (p + f"/safety/{uid}", SafetyHandler),
        (p + f"/safety/{uid}/verified", VerifiedHandler),
        (p + r"/attachments/([^/]+)", AttachmentHandler),
        (p + r"/attachments/([^/]+)/info", AttachmentInfoHandler),
        (p + "/transfers", TransfersHandler),
        *bluetooth_routes(),
    ]

