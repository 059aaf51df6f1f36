"""Group commits: with a ``transaction`` hook, MeshRuntime commits the messages of one
loop pass together and acks none of them before that transaction is over.

Two mesh-level nodes on 127.0.0.1 (real links, real Tornado); the receiver's store is a
MemoryStore behind a journal that, like SQLite, makes a transaction's commits land all
at once when it ends, or not at all when it fails.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from mesh.gossip_state import Acked, Deliver, Event, Message, Params
from mesh.memstore import MemoryStore
from mesh.runtime import MeshHooks, MeshRuntime
from tests.unit.mesh.test_link_helpers import make_node

TOPIC = b"group-commit-topic-1"
FAST = Params(ihave_interval=0.05, graft_timeout=0.25, iwant_timeout=0.4, heartbeat=0.2,
              sync_interval=0.3, sync_grace=0.1, sub_backoff=1.0, ack_delay=0.02)
MANAGER = {"tick": 0.2, "backoff_base": 0.1, "backoff_cap": 1.0}


@dataclass
class Journal:
    store: MemoryStore = field(default_factory=MemoryStore)
    staged: list[Message] | None = None
    transactions: list[int] = field(default_factory=list)
    durable: set[bytes] = field(default_factory=set)
    fail_next: bool = False

    def commit(self, message: Message) -> bool:
        assert self.staged is not None, "a received message was committed outside a transaction"
        self.staged.append(message)
        return True

    @contextmanager
    def transaction(self) -> Iterator[None]:
        self.staged = []
        try:
            yield
            if self.fail_next:
                self.fail_next = False
                raise OSError("the disk is full")
            for message in self.staged:
                self.store.add(message)
                self.durable.add(message.msg_id)
            self.transactions.append(len(self.staged))
        finally:
            self.staged = None


@dataclass
class Pair:
    sender: MeshRuntime
    receiver: MeshRuntime
    journal: Journal
    acked: list[bytes]
    early_acks: list[bytes]
    delivered: list[Message]


@pytest.fixture
async def pair() -> AsyncIterator[Pair]:
    a, b = make_node(), make_node()
    journal = Journal()
    acked: list[bytes] = []
    early: list[bytes] = []
    delivered: list[Message] = []

    def on_sender_event(event: Event) -> None:
        if isinstance(event, Acked):
            acked.append(event.msg_id)
            if event.msg_id not in journal.durable:
                early.append(event.msg_id)

    def on_receiver_event(event: Event) -> None:
        if isinstance(event, Deliver):
            delivered.append(event.message)

    sender_store = MemoryStore()
    sender = MeshRuntime(a.identity, a.record, sender_store, params=FAST,
                         rng=random.Random(1), manager_options=MANAGER)
    receiver = MeshRuntime(b.identity, b.record, journal.store, params=FAST,
                           rng=random.Random(2), manager_options=MANAGER)
    receiver_port = receiver.start(MeshHooks(
        commit=journal.commit, validate=lambda m: None, on_event=on_receiver_event,
        transaction=journal.transaction))
    sender.start(MeshHooks(commit=sender_store.add, validate=lambda m: None,
                           on_event=on_sender_event))
    try:
        receiver.join(TOPIC, {a.user_id: []})
        sender.join(TOPIC, {b.user_id: [f"ws://127.0.0.1:{receiver_port}/mesh"]})
        await until(lambda: sender.engine.mesh(TOPIC) and receiver.engine.mesh(TOPIC), 10)
        yield Pair(sender, receiver, journal, acked, early, delivered)
    finally:
        await sender.close()
        await receiver.close()


async def until(predicate: Callable[[], object], within: float) -> None:
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - state of two runtimes
            await asyncio.sleep(0.01)


async def test_a_burst_is_committed_in_few_transactions_and_acked_after_them(pair):
    sent = [pair.sender.publish(TOPIC, b"burst %03d" % i) for i in range(50)]
    ids = [m.msg_id for m in sent]
    await until(lambda: set(ids) <= set(pair.acked), 10)

    assert pair.early_acks == []
    assert sum(pair.journal.transactions) == 50
    assert len(pair.journal.transactions) <= 10, pair.journal.transactions
    assert [m.msg_id for m in pair.delivered] == ids  # once each, in order


async def test_a_failed_transaction_acks_nothing_and_the_messages_come_again(pair, caplog):
    pair.journal.fail_next = True
    sent = [pair.sender.publish(TOPIC, b"lost %d" % i) for i in range(5)]
    ids = [m.msg_id for m in sent]
    await until(lambda: pair.receiver.engine.stats["abandoned"] >= 1, 10)
    assert not pair.journal.durable & set(ids)
    assert "could not commit" in caplog.text and "the disk is full" in caplog.text

    await until(lambda: set(ids) <= set(pair.acked), 10)  # anti-entropy brings them again
    assert pair.early_acks == []
    assert set(ids) <= pair.journal.durable
    assert [m.msg_id for m in pair.delivered] == ids
