"""An invite can be redeemed by another member when the inviter is away."""

from __future__ import annotations

from groups.invites import Invite
from tests.integration.messenger.conftest import Cluster, eventually


def test_join_through_another_member_while_the_inviter_is_offline(cluster: Cluster) -> None:
    alice, bob, carol = (cluster.add(n) for n in ("alice", "bob", "carol"))
    group = alice.create_group("Relay")
    bob.join(alice.invite(group))
    eventually(lambda: bob.user_id in alice.members(group))
    link = alice.invite(group)
    assert Invite.parse(link).members == (bob.user_id,)
    alice.stop()
    assert carol.join(link) == group  # bob redeemed it
    eventually(lambda: carol.members(group) == {alice.user_id, bob.user_id, carol.user_id})
    carol.send(group, "hi bob")
    eventually(lambda: "hi bob" in bob.texts(group))
    alice.start()
    eventually(lambda: "hi bob" in alice.texts(group), message="alice catches up on return")
