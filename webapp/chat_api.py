"""Chat features in the node API (docs/api.md, "Chat features"): paging, replies,
reactions, edits, deletes for everyone, disappearing messages, mute and search.

Routes name a conversation as the other handlers do: ``/groups/{group id}`` or
``/chats/{user id}``. The rules are the node's (groups/chat_actions.py): these
handlers parse, check types and bounds of the body, and call NodeApi.
"""

from __future__ import annotations

import re
from typing import Any

from mesh.errors import FormatError
from mesh.identity import parse_user_id
from mesh.jsonapi import ApiError, check_fields
from webapp.node_handler import NodeHandler
from webapp.server import API_PREFIX

__all__ = ["MAX_PAGE", "ConversationHandler", "chat_routes", "group_id_arg", "message_id_arg",
           "page_args", "reply_to_arg", "user_id_arg"]

MAX_PAGE = 500
MAX_QUERY_CHARS = 200
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_GROUP_ID = re.compile(r"^[0-9a-f]{32}$")


def group_id_arg(raw: str) -> bytes:
    if not _GROUP_ID.match(raw):
        raise ApiError(400, "bad_group_id", "a group id is 32 hexadecimal characters")
    return bytes.fromhex(raw)


def user_id_arg(raw: Any) -> str:
    try:
        return parse_user_id(raw)
    except FormatError:
        raise ApiError(400, "bad_user_id", "a user id is 15 digits") from None


def message_id_arg(raw: Any, code: str = "bad_message_id", what: str = "message") -> bytes:
    if not isinstance(raw, str) or not _HEX64.match(raw):
        raise ApiError(400, code, f"a {what} id is 64 hexadecimal characters")
    return bytes.fromhex(raw)


def reply_to_arg(body: dict[str, Any]) -> bytes:
    """The optional ``reply_to`` of a new message (b"": not a reply)."""
    raw = body.get("reply_to")
    return b"" if raw is None else message_id_arg(raw, "bad_reply_to")


def page_args(handler: NodeHandler) -> tuple[int, str | None]:
    """``?limit=`` (1..500, default 200) and ``?before=`` (a cursor) of GET …/messages."""
    raw = handler.get_query_argument("limit", "200")
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_PAGE:
        raise ApiError(400, "bad_limit", f"limit is 1 to {MAX_PAGE}")
    before = handler.get_query_argument("before", None)
    if before is not None and len(before) > 64:
        raise ApiError(400, "bad_cursor", "before is a cursor from an earlier answer")
    return int(raw), before


class ConversationHandler(NodeHandler):
    """Handlers of one conversation's routes (the body limit of a send, for an edit)."""

    def topic(self, kind: str, raw_id: str) -> bytes:
        """The conversation of a ``/groups/{id}`` or ``/chats/{user id}`` route (404 if
        we are not in it)."""
        if kind == "groups":
            return self.node.group_topic(group_id_arg(raw_id))
        return self.node.chat_topic(user_id_arg(raw_id))


class MessageHandler(ConversationHandler):
    """PATCH ``{"text"}``: edit one of our messages; DELETE: delete it for everyone;
    GET: the message."""

    def get(self, kind: str, raw_id: str, raw_message: str) -> None:
        self.send_json(200, self.node.message(self.topic(kind, raw_id),
                                              message_id_arg(raw_message)))

    def patch(self, kind: str, raw_id: str, raw_message: str) -> None:
        topic, message_id = self.topic(kind, raw_id), message_id_arg(raw_message)
        body = self.json_body()
        check_fields(body, {"text"})
        if not isinstance(body["text"], str):
            raise ApiError(400, "bad_request", "text must be a string")
        self.node.edit(topic, message_id, body["text"])
        self.send_json(200, self.node.message(topic, message_id))

    def delete(self, kind: str, raw_id: str, raw_message: str) -> None:
        topic, message_id = self.topic(kind, raw_id), message_id_arg(raw_message)
        self.node.delete(topic, message_id)
        self.send_json(200, self.node.message(topic, message_id))


class ReactionHandler(ConversationHandler):
    """PUT ``{"emoji"}``: our reaction (replaces the one before); DELETE: take it back."""

    body_limit = 1024

    def put(self, kind: str, raw_id: str, raw_message: str) -> None:
        body = self.json_body()
        check_fields(body, {"emoji"})
        if not isinstance(body["emoji"], str) or not body["emoji"]:
            raise ApiError(400, "bad_emoji", "emoji must be one emoji")
        self._react(kind, raw_id, raw_message, body["emoji"])

    def delete(self, kind: str, raw_id: str, raw_message: str) -> None:
        self._react(kind, raw_id, raw_message, "")

    def _react(self, kind: str, raw_id: str, raw_message: str, emoji: str) -> None:
        topic, message_id = self.topic(kind, raw_id), message_id_arg(raw_message)
        self.node.react(topic, message_id, emoji)
        self.send_json(200, self.node.message(topic, message_id))


class SettingsHandler(ConversationHandler):
    """POST ``{"timer": seconds}`` (disappearing messages, for every member) and/or
    ``{"muted": bool}`` (this node only)."""

    body_limit = 256

    def post(self, kind: str, raw_id: str) -> None:
        topic = self.topic(kind, raw_id)
        body = self.json_body()
        check_fields(body, (), {"timer", "muted"})
        if "muted" in body and type(body["muted"]) is not bool:
            raise ApiError(400, "bad_request", "muted must be true or false")
        if "timer" in body and type(body["timer"]) is not int:
            raise ApiError(400, "bad_timer", "timer is a whole number of seconds")
        if "timer" in body:
            self.node.set_timer(topic, body["timer"])
        if "muted" in body:
            self.node.set_muted(topic, body["muted"])
        conv = next(c for c in self.node.conversations() if c["id"] == topic.hex())
        self.send_json(200, {"timer": conv["timer"], "muted": conv["muted"]})


class SearchHandler(NodeHandler):
    """GET ``?q=words&limit=n``: full-text search over this node's history."""

    def get(self) -> None:
        query = self.get_query_argument("q", "")
        if not query.strip() or len(query) > MAX_QUERY_CHARS:
            raise ApiError(400, "bad_query", f"q is 1 to {MAX_QUERY_CHARS} characters")
        raw = self.get_query_argument("limit", "50")
        if not raw.isdigit() or not 1 <= int(raw) <= 200:
            raise ApiError(400, "bad_limit", "limit is 1 to 200")
        self.send_json(200, {"results": self.node.search(query, int(raw))})


def chat_routes() -> list[tuple[str, type[NodeHandler]]]:
    p, conv, mid = API_PREFIX, r"/(groups|chats)/([^/]+)", r"/messages/([^/]+)"
    return [(p + conv + mid, MessageHandler),
            (p + conv + mid + "/reaction", ReactionHandler),
            (p + conv + "/settings", SettingsHandler),
            (p + "/search", SearchHandler)]

