"""Profiles and nicknames in the node API (docs/api.md, "Profiles"); the node's side is
groups/profiles.py.

``GET /profiles`` gives our profile and everyone's names (their own and our nicknames),
``PUT /profile`` sets ours (``{"name", "avatar"}``: the avatar as base64, null to
remove it, left out to keep it),
``GET /profiles/{id}/avatar`` serves an avatar picture, ``PUT /nicknames/{id}`` sets
or (with "") removes our nickname for someone.
"""

from __future__ import annotations

import base64
import binascii

from groups.messages import MAX_AVATAR_BYTES
from mesh.encoding import FormatError
from mesh.identity import parse_user_id
from mesh.jsonapi import ApiError, check_fields
from webapp.node_handler import NodeHandler
from webapp.server import API_PREFIX

__all__ = ["profile_routes"]

_AVATAR_B64 = 4 * -(-MAX_AVATAR_BYTES // 3)


def _user_id(raw: str) -> str:
    try:
        return parse_user_id(raw)
    except FormatError:
        raise ApiError(400, "bad_user_id", "a user id is 15 digits") from None


def _text(body: dict, name: str) -> str:
    if not isinstance(body[name], str):
        raise ApiError(400, "bad_request", f"{name} must be a string")
    return body[name]


def _avatar(body: dict) -> bytes | None:
    """Left out: keep ours (None); null or "": remove it (b""); else the base64 bytes."""
    if "avatar" not in body:
        return None
    encoded = body["avatar"]
    if encoded is None:
        return b""
    if not isinstance(encoded, str):
        raise ApiError(400, "bad_avatar", "avatar is base64 text or null")
    if len(encoded) > _AVATAR_B64:
        raise ApiError(413, "avatar_too_large",
                       f"an avatar may be at most {MAX_AVATAR_BYTES // 1024} KiB")
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, "bad_avatar", "avatar is not valid base64") from None


class ProfilesHandler(NodeHandler):
    def get(self) -> None:
        self.send_json(200, self.node.profiles())


class ProfileHandler(NodeHandler):
    body_limit = 64 * 1024   # a 32 KiB avatar as base64, and the name

    def get(self) -> None:
        self.send_json(200, self.node.profiles()["me"])

    def put(self) -> None:
        body = self.json_body()
        check_fields(body, {"name"}, {"avatar"})
        name = _text(body, "name")
        self.send_json(200, self.node.set_profile(name, _avatar(body)))


class AvatarHandler(NodeHandler):
    """An avatar picture; like attachments, never a document of our origin."""

    def get(self, raw: str) -> None:
        data, mime = self.node.avatar(_user_id(raw))
        self.set_header("Content-Type", mime)
        self.set_header("Content-Security-Policy", "default-src 'none'; sandbox")
        self.set_header("Cache-Control", "private, no-cache")
        self.finish(data)


class NicknameHandler(NodeHandler):
    body_limit = 1024

    def put(self, raw: str) -> None:
        user_id = _user_id(raw)
        body = self.json_body()
        check_fields(body, {"nickname"})
        self.send_json(200, {"id": user_id,
                             "nickname": self.node.set_nickname(user_id, _text(body, "nickname"))})


def profile_routes() -> list[tuple[str, type[NodeHandler]]]:
    p = API_PREFIX
    return [(p + "/profiles", ProfilesHandler), (p + "/profile", ProfileHandler),
            (p + r"/profiles/([^/]+)/avatar", AvatarHandler),
            (p + r"/nicknames/([^/]+)", NicknameHandler)]
