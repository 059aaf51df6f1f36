"""Group membership as a signed, hash-chained log of ops (sans-IO).

Every change of membership is an Op signed by its author's identity key and chained to
the op before it; op n creates epoch n. Every member verifies every op against the
state the log had just before it, so nobody can add or remove members without the
right to (only admins add, remove and promote; anyone may leave; a member holding a
valid invite secret may add its bearer, because an admin's INVITE op authorised that).

Two admins acting at the same time fork the log. The rule that makes all members
converge: at each epoch the valid op with the smallest hash wins, and only its
descendants count. A node whose own op lost finds it in ``orphans()`` and may re-issue
it on top of the winner. See docs/protocol.md, "Groups".
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

import msgpack

from groups.errors import OpRejected, PermissionDenied
from mesh.errors import FormatError, SignatureError
from mesh.identity import KeyPair, user_id_for_key, verify

__all__ = ["GROUP_ID_LEN", "MAX_EVENTS", "GroupLog", "GroupState", "Member", "Op", "OpKind",
           "OpenInvite", "Role", "membership_events", "op_summary"]

GROUP_ID_LEN = 16
OP_DOMAIN = b"parley/group-op/v1"
MAX_NAME = 100
MAX_OPS = 10_000           # a group's log; beyond it ops are refused (re-create the group)
MAX_PENDING = 256          # ops whose parent we have not seen yet
MAX_TIME = 2**53 - 1       # bound of ``at`` and ``expires`` (unix seconds; exact everywhere)
ZERO = bytes(32)


class OpKind(StrEnum):
    CREATE = "create"
    ADD = "add"
    REMOVE = "remove"
    LEAVE = "leave"
    PROMOTE = "promote"
    INVITE = "invite"


class Role(StrEnum):
    ADMIN = "admin"
    MEMBER = "member"


@dataclass(frozen=True)
class Op:
    """One signed membership op. ``target``/``target_key`` name the member added,
    removed or promoted; ``secret`` is an invite's hash (INVITE) or the redeemed secret
    (ADD by invite); ``name`` is the group's name (CREATE)."""

    group_id: bytes
    epoch: int
    prev: bytes
    kind: OpKind
    author: str
    author_key: bytes
    at: int
    target: str = ""
    target_key: bytes = b""
    name: str = ""
    secret: bytes = b""
    expires: int = 0
    signature: bytes = field(default=b"", repr=False)

    def signing_bytes(self) -> bytes:
        return msgpack.packb([OP_DOMAIN, self.group_id, self.epoch, self.prev, self.kind.value,
                              self.author, self.author_key, self.at, self.target,
                              self.target_key, self.name, self.secret, self.expires],
                             use_bin_type=True)

    @property
    def hash(self) -> bytes:
        return hashlib.sha256(self.encode()).digest()

    def encode(self) -> bytes:
        return msgpack.packb([self.signing_bytes(), self.signature], use_bin_type=True)

    @classmethod
    def decode(cls, data: bytes) -> Op:
        """Strict parse (types, sizes, canonical form) and signature check; it does
        not check the op is allowed: GroupLog.add does that against the log."""
        try:
            if len(data) > 4096:
                raise FormatError("op too large")
            body, signature = msgpack.unpackb(data, raw=False)
            fields_ = msgpack.unpackb(body, raw=False)
            (domain, group_id, epoch, prev, kind, author, author_key, at, target, target_key,
             name, secret, expires) = fields_
            types = (bytes, bytes, int, bytes, str, str, bytes, int, str, bytes, str, bytes, int)
            if any(type(v) is not t for v, t in zip(fields_, types, strict=True)) or \
                    type(signature) is not bytes:
                raise FormatError("op field of the wrong type")
            if domain != OP_DOMAIN or len(group_id) != GROUP_ID_LEN or len(prev) != 32 \
                    or len(name) > MAX_NAME or len(secret) > 32 or len(signature) != 64 \
                    or not 0 <= epoch <= MAX_OPS or not 0 <= at <= MAX_TIME \
                    or not 0 <= expires <= MAX_TIME:
                raise FormatError("op field out of range")
            op = cls(group_id, epoch, prev, OpKind(kind), author, author_key, at, target,
                     target_key, name, secret, expires, signature)
            if op.encode() != data:
                raise FormatError("op is not canonically encoded")
            verify(author_key, op.signing_bytes(), signature)
        except SignatureError:
            raise OpRejected("op signature does not verify", "bad_signature") from None
        except (FormatError, ValueError, TypeError, msgpack.UnpackException) as exc:
            raise OpRejected(f"malformed op: {exc}", "bad_op") from None
        return op


@dataclass(frozen=True)
class Member:
    user_id: str
    identity_key: bytes
    role: Role
    since_epoch: int


@dataclass(frozen=True)
class OpenInvite:
    """An invite not redeemed yet: until when it works, and the epoch of its INVITE op
    (an invite made before a member's removal cannot bring that member back)."""

    expires: int   # unix seconds
    epoch: int


@dataclass(frozen=True)
class GroupState:
    """The group as of one epoch: an immutable snapshot."""

    group_id: bytes
    name: str
    epoch: int
    head: bytes
    members: dict[str, Member]
    removed: dict[str, int]          # user id -> epoch of its last removal or leave
    invites: dict[bytes, OpenInvite]  # sha256(secret) -> the open invite

    def is_admin(self, user_id: str) -> bool:
        member = self.members.get(user_id)
        return member is not None and member.role is Role.ADMIN

    def apply(self, op: Op) -> GroupState:
        """The state after ``op``, or OpRejected if the log does not allow it."""
        if op.group_id != self.group_id or op.epoch != self.epoch + 1 or op.prev != self.head:
            raise OpRejected("op does not follow this epoch", "wrong_epoch")
        author = self.members.get(op.author)
        if author is None:
            raise OpRejected(f"{op.author} is not a member", "not_member")
        if author.identity_key != op.author_key:
            raise OpRejected("op signed with a key that is not the member's", "bad_signature")
        members = dict(self.members)
        invites = dict(self.invites)
        removed = dict(self.removed)
        admin = author.role is Role.ADMIN
        kind = op.kind
        if kind is OpKind.ADD:
            if op.target in members:
                raise OpRejected(f"{op.target} is already a member", "already_member")
            if len(op.target_key) != 33 or _derive(op.target_key) != op.target:
                raise OpRejected("added member's key does not derive to its id", "bad_op")
            if op.secret:
                digest = hashlib.sha256(op.secret).digest()
                if digest not in invites:
                    raise OpRejected("no open invite with this secret", "invite_invalid")
                invite = invites[digest]
                if op.at > invite.expires:
                    raise OpRejected("the invite had expired", "invite_expired")
                if removed.get(op.target, -1) > invite.epoch:
                    raise OpRejected(f"{op.target} was removed after this invite was made; "
                                     "only a newer invite or an admin may re-add",
                                     "removed_member")
                del invites[digest]
            elif not admin:
                raise OpRejected("only admins add members", "not_admin")
            removed.pop(op.target, None)
            members[op.target] = Member(op.target, op.target_key, Role.MEMBER, op.epoch)
        elif kind is OpKind.REMOVE:
            if not admin:
                raise OpRejected("only admins remove members", "not_admin")
            if op.target not in members or op.target == op.author:
                raise OpRejected("target is not another member", "not_member")
            del members[op.target]
            removed[op.target] = op.epoch
        elif kind is OpKind.LEAVE:
            if op.target:
                raise OpRejected("leave has no target", "bad_op")
            del members[op.author]
            removed[op.author] = op.epoch
            _keep_an_admin(members)
        elif kind is OpKind.PROMOTE:
            if not admin:
                raise OpRejected("only admins promote", "not_admin")
            target = members.get(op.target)
            if target is None or target.role is Role.ADMIN:
                raise OpRejected("target is not a non-admin member", "not_member")
            members[op.target] = replace(target, role=Role.ADMIN)
        elif kind is OpKind.INVITE:
            if not admin:
                raise OpRejected("only admins create invites", "not_admin")
            if len(op.secret) != 32 or op.expires <= op.at:
                raise OpRejected("invite needs a 32-byte hash and a future expiry", "bad_op")
            invites[op.secret] = OpenInvite(op.expires, op.epoch)
        else:
            raise OpRejected("a group has one create op", "bad_op")
        return GroupState(self.group_id, self.name, op.epoch, op.hash, members, removed,
                          invites)


@functools.lru_cache(maxsize=4096)
def _derive(key: bytes) -> str:
    """user_id_for_key costs 5200 hashes; replaying a log re-derives the same keys."""
    try:
        return user_id_for_key(key)
    except FormatError:
        return ""


def _keep_an_admin(members: dict[str, Member]) -> None:
    """When the last admin leaves, the longest-standing member becomes admin, so a
    group is never left without anyone able to add or remove."""
    if members and not any(m.role is Role.ADMIN for m in members.values()):
        eldest = min(members.values(), key=lambda m: (m.since_epoch, m.user_id))
        members[eldest.user_id] = replace(eldest, role=Role.ADMIN)


def _genesis(op: Op) -> GroupState:
    if op.kind is not OpKind.CREATE or op.epoch != 0 or op.prev != ZERO or op.target \
            or not op.name or _derive(op.author_key) != op.author:
        raise OpRejected("not a valid create op", "bad_op")
    creator = Member(op.author, op.author_key, Role.ADMIN, 0)
    return GroupState(op.group_id, op.name, 0, op.hash, {op.author: creator}, {}, {})


class GroupLog:
    """All ops of one group we know, and the state of the winning chain."""

    def __init__(self, create: Op) -> None:
        self._genesis = _genesis(create)
        self._ops: dict[bytes, Op] = {create.hash: create}
        self._children: dict[bytes, set[bytes]] = {}
        self._pending: dict[bytes, Op] = {}
        self._chain: list[Op] = [create]
        self._states: list[GroupState] = [self._genesis]

    @classmethod
    def create(cls, identity: KeyPair, name: str, now: float) -> tuple[GroupLog, Op]:
        name = name.strip()
        if not 0 < len(name) <= MAX_NAME:
            raise PermissionDenied(f"a group name has 1 to {MAX_NAME} characters", "bad_name")
        op = _sign(identity, Op(os.urandom(GROUP_ID_LEN), 0, ZERO, OpKind.CREATE,
                                identity.user_id, identity.public, int(now), name=name))
        return cls(op), op

    @classmethod
    def from_ops(cls, encoded: Iterable[bytes]) -> GroupLog:
        """Rebuild from encoded ops (genesis first; the rest in any order)."""
        ops = [Op.decode(data) for data in encoded]
        if not ops:
            raise OpRejected("empty op log", "bad_op")
        log = cls(ops[0])
        for op in ops[1:]:
            log.add(op)
        return log

    @property
    def state(self) -> GroupState:
        return self._states[-1]

    @property
    def group_id(self) -> bytes:
        return self._genesis.group_id

    def chain(self) -> list[Op]:
        """The winning ops, genesis first: what a new member is sent."""
        return list(self._chain)

    def add(self, op: Op) -> bool:
        """Take an op from anywhere; True if the winning chain changed.

        Ops that do not verify or are not allowed where they attach raise OpRejected;
        an op whose parent is unknown is held (bounded) until the parent arrives.
        """
        if op.group_id != self.group_id:
            raise OpRejected("op of another group", "wrong_group")
        if op.hash in self._ops:
            return False
        if op.kind is OpKind.CREATE:
            raise OpRejected("a group has one create op", "bad_op")
        if len(self._ops) >= MAX_OPS:
            raise OpRejected("op log is full", "log_full")
        parent_state = self._state_at(op.prev)
        if parent_state is None:
            if op.prev not in self._ops:
                if len(self._pending) >= MAX_PENDING:
                    raise OpRejected("too many ops with unknown parents", "unknown_parent")
                self._pending[op.hash] = op
                return False
            # The parent is known but lost a fork: this op can never win; keep it.
            self._store(op)
            return False
        parent_state.apply(op)  # raises if not allowed there
        self._store(op)
        changed = self._recompute()
        for pending in [p for p in self._pending.values() if p.prev == op.hash]:
            del self._pending[pending.hash]
            with contextlib.suppress(OpRejected):  # a held op found invalid is dropped
                changed |= self.add(pending)
        return changed

    def orphans(self, author: str) -> list[Op]:
        """Ops by ``author`` that are known but not on the winning chain."""
        on_chain = {op.hash for op in self._chain}
        return [op for op in self._ops.values() if op.author == author
                and op.hash not in on_chain and op.kind is not OpKind.CREATE]

    def make_op(self, identity: KeyPair, kind: OpKind, now: float, *, target: str = "",
                target_key: bytes = b"", secret: bytes = b"", expires: int = 0) -> Op:
        """Build and sign an op at the head, checked against the state first, so a
        user who may not do something finds out here (PermissionDenied)."""
        state = self.state
        op = _sign(identity, Op(self.group_id, state.epoch + 1, state.head, kind,
                                identity.user_id, identity.public, int(now), target=target,
                                target_key=target_key, secret=secret, expires=expires))
        try:
            state.apply(op)
        except OpRejected as exc:
            raise PermissionDenied(str(exc), exc.reason) from None
        return op

    # -- internals -------------------------------------------------------------

    def _store(self, op: Op) -> None:
        self._ops[op.hash] = op
        self._children.setdefault(op.prev, set()).add(op.hash)

    def _state_at(self, op_hash: bytes) -> GroupState | None:
        for state in reversed(self._states):
            if state.head == op_hash:
                return state
        return None

    def _recompute(self) -> bool:
        """Walk from genesis taking, at each epoch, the smallest-hash valid child."""
        old_head = self.state.head
        chain, states = [self._chain[0]], [self._genesis]
        while True:
            best: tuple[bytes, Op, GroupState] | None = None
            for child_hash in self._children.get(states[-1].head, ()):
                child = self._ops[child_hash]
                try:
                    nxt = states[-1].apply(child)
                except OpRejected:
                    continue
                if best is None or child_hash < best[0]:
                    best = (child_hash, child, nxt)
            if best is None:
                break
            chain.append(best[1])
            states.append(best[2])
        self._chain, self._states = chain, states
        return self.state.head != old_head


def _sign(identity: KeyPair, op: Op) -> Op:
    return replace(op, signature=identity.sign(op.signing_bytes()))


# Ops a chat shows as system lines; invites are an admin's business, not the chat's.
_SHOWN = (OpKind.CREATE, OpKind.ADD, OpKind.REMOVE, OpKind.LEAVE, OpKind.PROMOTE)
MAX_EVENTS = 500   # the newest ones, for the API


def membership_events(log: GroupLog, me: str) -> list[dict[str, Any]]:
    """The winning chain's membership changes from the op that (last) added ``me`` on:
    what happened before we joined is not ours to see, as its messages are not. The
    first is our own add (or the group's creation), where our visible history starts."""
    chain = log.chain()
    start = max(op.epoch for op in chain
                if op.epoch == 0 or (op.kind is OpKind.ADD and op.target == me))
    shown = [op_summary(op) for op in chain[start:] if op.kind in _SHOWN]
    return shown[-MAX_EVENTS:]


def op_summary(op: Op) -> dict[str, Any]:
    """A JSON-friendly description of an op for the API and events."""
    return {"epoch": op.epoch, "kind": op.kind.value, "author": op.author,
            "target": op.target or None, "at": op.at}
