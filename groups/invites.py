"""Invite links (``parley:invite/...``) and QR codes.

An invite tells a newcomer where to go (the group, the inviter and how to reach them,
a bootstrap server and a few DHT contacts) and carries a one-time secret. An admin's
INVITE op puts sha256(secret) and the expiry in the group's log, so any member can
redeem it for its bearer; the first redemption consumes it. The link is not signed:
a forged link can only lead someone into the forger's own group, and the inviter's
identity is proven by the link handshake when the joiner connects.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from typing import Any

import msgpack
import segno

from groups.errors import InviteError
from mesh.identity import MAX_ENDPOINTS

__all__ = ["INVITE_PREFIX", "Invite", "qr_svg"]

INVITE_PREFIX = "parley:invite/"
SECRET_LEN = 16
MAX_MEMBERS = 4
MAX_LINK = 4096
_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]{1,100}:[0-9]{1,5}$")
_URL = re.compile(r"^(https?|wss?)://[\x21-\x7e]{1,250}$")


@dataclass(frozen=True)
class Invite:
    group_id: bytes
    name: str
    inviter: str
    endpoints: tuple[str, ...]
    bootstrap: str
    secret: bytes
    expires: int
    dht: tuple[str, ...] = ()
    members: tuple[str, ...] = ()   # other members who can redeem it if the inviter is away

    def to_link(self) -> str:
        packed = msgpack.packb([1, self.group_id, self.name, self.inviter,
                                list(self.endpoints), self.bootstrap, self.secret,
                                self.expires, list(self.dht), list(self.members)],
                               use_bin_type=True)
        return INVITE_PREFIX + base64.urlsafe_b64encode(packed).rstrip(b"=").decode()

    @classmethod
    def parse(cls, link: Any) -> Invite:
        """Parse a pasted link strictly; InviteError("invite_malformed") otherwise.
        Whether it is still valid (expiry, use, removal) is the group log's call."""
        if not isinstance(link, str) or len(link) > MAX_LINK:
            raise InviteError("an invite is a parley:invite/ link", "invite_malformed")
        link = link.strip()
        if not link.startswith(INVITE_PREFIX):
            raise InviteError("an invite starts with parley:invite/", "invite_malformed")
        text = link[len(INVITE_PREFIX):]
        try:
            packed = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            (version, group_id, name, inviter, endpoints, bootstrap, secret, expires,
             dht, members) = msgpack.unpackb(packed, raw=False)
            invite = cls(group_id, name, inviter, tuple(endpoints), bootstrap, secret,
                         expires, tuple(dht), tuple(members))
            if version != 1 or not invite._valid():
                raise ValueError("field out of range")
        except (ValueError, TypeError, binascii.Error, msgpack.UnpackException):
            raise InviteError("this invite link is damaged or not a Parley invite",
                              "invite_malformed") from None
        return invite

    def _valid(self) -> bool:
        return (type(self.group_id) is bytes and len(self.group_id) == 16
                and type(self.name) is str and 0 < len(self.name) <= 100
                and type(self.inviter) is str and re.fullmatch(r"[0-9]{15}", self.inviter)
                is not None
                and len(self.endpoints) <= MAX_ENDPOINTS
                and all(type(e) is str and _URL.match(e) for e in self.endpoints)
                and type(self.bootstrap) is str
                and (self.bootstrap == "" or _URL.match(self.bootstrap) is not None)
                and type(self.secret) is bytes and len(self.secret) == SECRET_LEN
                and type(self.expires) is int and self.expires > 0
                and len(self.dht) <= 8
                and all(type(h) is str and _HOSTPORT.match(h) for h in self.dht)
                and len(self.members) <= MAX_MEMBERS
                and all(type(m) is str and re.fullmatch(r"[0-9]{15}", m) is not None
                        and m != self.inviter for m in self.members))


def qr_svg(text: str) -> str:
    """An SVG QR code (no scripts, no external references) for a link or number."""
    buffer = io.BytesIO()
    segno.make(text, error="m").save(buffer, kind="svg", scale=4, border=2, xmldecl=False,
                                     svgns=True, title=None)
    return buffer.getvalue().decode()
