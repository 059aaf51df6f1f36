"""Property: after a removal and the rotation it triggers, the removed member's stored
state decrypts none of the messages sent afterwards, while every current member reads
everything sent while they were in."""

from __future__ import annotations

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from groups.errors import DecryptError
from tests.unit.groups.helpers import NOW, make_user, new_group_id

POOL = 4

# A history: a list of (action, user index); senders are drawn at each step.
actions = st.lists(st.tuples(st.sampled_from(["add", "remove", "send", "send"]),
                             st.integers(0, POOL - 1)), min_size=1, max_size=25)


class Group:
    """The membership bookkeeping the group layer will do, driving groups.crypto."""

    def __init__(self, users) -> None:
        self.users = users
        self.gid = new_group_id()
        self.members: set[int] = set()
        self.now = NOW

    def add(self, i: int) -> None:
        newcomer = self.users[i]
        # A (re)joining member starts a fresh sender key: its old one may be known to
        # members removed in the meantime.
        newcomer.crypto.rotate_sender_key(self.gid, now=self.now)
        for m in self.members:  # existing members' current keys to the newcomer, and back
            member = self.users[m]
            newcomer.crypto.process_sender_key_distribution(
                self.gid, member.id, member.crypto.sender_key_distribution(self.gid, now=self.now),
                now=self.now)
            member.crypto.process_sender_key_distribution(
                self.gid, newcomer.id,
                newcomer.crypto.sender_key_distribution(self.gid, now=self.now), now=self.now)
        self.members.add(i)

    def remove(self, i: int) -> None:
        self.members.discard(i)
        self.now += 1
        # Nobody forgets the removed member's keys here: a removed member may be the
        # attacker and will have kept everything it ever received.
        for m in self.members:  # everyone left rotates and tells only those left
            sender = self.users[m]
            dist = sender.crypto.rotate_sender_key(self.gid, now=self.now)
            for o in self.members - {m}:
                self.users[o].crypto.process_sender_key_distribution(self.gid, sender.id, dist,
                                                                     now=self.now)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(history=actions)
# 0 is removed knowing 1's key; 1 leaves later and comes back: a stale key would leak.
@example(history=[("add", 0), ("add", 1), ("remove", 1), ("remove", 0), ("add", 1),
                  ("add", 2), ("send", 1)])
def test_removed_members_read_nothing_sent_after(history) -> None:
    users = [make_user() for _ in range(POOL)]
    group = Group(users)
    removed_at: dict[int, int] = {}
    for step, (action, i) in enumerate(history):
        if action == "add" and i not in group.members:
            group.add(i)
            removed_at.pop(i, None)
        elif action == "remove" and i in group.members:
            group.remove(i)
            removed_at[i] = step
        elif action == "send" and i in group.members:
            sender = users[i]
            payload = b"step %d" % step
            ct = sender.crypto.encrypt_group(group.gid, payload)
            for m in group.members - {i}:
                assert users[m].crypto.decrypt_group(group.gid, sender.id, ct) == payload
            for r in removed_at:
                outsider = users[r]
                try:
                    outsider.crypto.decrypt_group(group.gid, sender.id, ct)
                except DecryptError:
                    continue
                raise AssertionError(f"removed member {r} read a message sent after removal")
