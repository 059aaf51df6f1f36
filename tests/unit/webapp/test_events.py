"""EventHub with in-memory clients: fan-out, bounded queues, dropping, shutdown."""

from __future__ import annotations

import json
import math
from collections.abc import Callable

import pytest

from webapp.events import SHUTDOWN_CODE, SLOW_CLIENT_CODE, EventHub, encode_event


class MemoryClient:
    """An events socket whose writes complete only when the test says so."""

    def __init__(self, *, auto_flush: bool = True, gone: bool = False) -> None:
        self.auto_flush, self.gone = auto_flush, gone
        self.received: list[dict] = []
        self.unflushed: list[Callable[[], None]] = []
        self.dropped: tuple[int, str] | None = None
        self.closed: tuple[int, str] | None = None

    def send_text(self, text: str, on_flushed: Callable[[], None]) -> None:
        if self.gone:
            raise ConnectionResetError("gone")
        self.received.append(json.loads(text))
        if self.auto_flush:
            on_flushed()
        else:
            self.unflushed.append(on_flushed)

    def flush(self) -> None:
        while self.unflushed:
            self.unflushed.pop(0)()

    def drop(self, code: int, reason: str) -> None:
        self.dropped = (code, reason)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    @property
    def types(self) -> list[str]:
        return [m["type"] for m in self.received]


def test_attach_sends_ready_first() -> None:
    hub, client = EventHub(), MemoryClient()
    hub.attach(client)
    hub.attach(client)  # twice is once
    assert client.received == [{"type": "ready", "data": {}}]
    assert hub.clients == 1


def test_publish_fans_out_in_order() -> None:
    hub = EventHub()
    clients = [MemoryClient() for _ in range(3)]
    for client in clients:
        hub.attach(client)
    assert hub.publish("message", {"id": 1}) == 3
    assert hub.publish("receipt", [1, "two", None]) == 3
    for client in clients:
        assert client.received[1:] == [{"type": "message", "data": {"id": 1}},
                                       {"type": "receipt", "data": [1, "two", None]}]
    assert hub.published == 2


def test_publish_with_no_clients() -> None:
    assert EventHub().publish("x", None) == 0


def test_detach_stops_delivery() -> None:
    hub, a, b = EventHub(), MemoryClient(), MemoryClient()
    hub.attach(a)
    hub.attach(b)
    hub.detach(a)
    hub.detach(MemoryClient())  # unknown: ignored
    assert hub.publish("x", 1) == 1
    assert a.types == ["ready"] and b.types == ["ready", "x"]


@pytest.mark.parametrize("data", [{1, 2}, object(), math.nan, {"x": math.inf}])
def test_unserialisable_data_is_refused_before_sending(data: object) -> None:
    hub, client = EventHub(), MemoryClient()
    hub.attach(client)
    with pytest.raises((TypeError, ValueError)):
        hub.publish("bad", data)
    assert client.types == ["ready"]


@pytest.mark.parametrize("event_type", ["", None, 5])
def test_event_type_must_be_a_non_empty_string(event_type: object) -> None:
    with pytest.raises(ValueError):
        EventHub().publish(event_type, {})  # type: ignore[arg-type]


def test_encode_event_is_compact_strict_json() -> None:
    assert encode_event("t", {"a": "é"}) == '{"type":"t","data":{"a":"é"}}'


def test_client_over_message_limit_is_dropped_others_unaffected() -> None:
    hub = EventHub(max_queue_messages=5)
    slow, fast = MemoryClient(auto_flush=False), MemoryClient()
    hub.attach(slow)
    hub.attach(fast)
    for i in range(4):  # ready + 4 = 5 pending: at the limit, not over it
        assert hub.publish("n", i) == 2
    assert slow.dropped is None
    assert hub.publish("n", 4) == 1
    assert slow.dropped == (SLOW_CLIENT_CODE, "slow_client")
    assert hub.dropped == 1 and hub.clients == 1
    assert hub.publish("n", 5) == 1
    assert [m["data"] for m in fast.received[1:]] == [0, 1, 2, 3, 4, 5]
    assert len(slow.received) == 5  # nothing after the drop


def test_client_over_byte_limit_is_dropped() -> None:
    hub = EventHub(max_queue_bytes=1000)
    slow = MemoryClient(auto_flush=False)
    hub.attach(slow)
    assert hub.publish("big", "x" * 900) == 1
    assert hub.publish("big", "x" * 100) == 0
    assert slow.dropped is not None and hub.clients == 0


def test_byte_limit_counts_utf8_bytes() -> None:
    hub = EventHub(max_queue_bytes=len(encode_event("ready", {})) + 300)
    slow = MemoryClient(auto_flush=False)
    hub.attach(slow)
    assert hub.publish("t", "é" * 200) == 0  # 200 characters, 400 bytes
    assert slow.dropped is not None


def test_flushing_frees_the_queue() -> None:
    hub = EventHub(max_queue_messages=3)
    client = MemoryClient(auto_flush=False)
    hub.attach(client)
    for i in range(100):
        assert hub.publish("n", i) == 1
        client.flush()
    assert client.dropped is None and hub.dropped == 0
    assert len(client.received) == 101


def test_a_vanished_client_is_detached_quietly() -> None:
    hub = EventHub()
    gone, live = MemoryClient(), MemoryClient()
    hub.attach(gone)
    hub.attach(live)
    gone.gone = True
    assert hub.publish("x", 1) == 1
    assert hub.clients == 1 and hub.dropped == 0 and gone.dropped is None


def test_close_all() -> None:
    hub = EventHub()
    clients = [MemoryClient() for _ in range(2)]
    for client in clients:
        hub.attach(client)
    hub.close_all()
    assert all(c.closed == (SHUTDOWN_CODE, "shutdown") for c in clients)
    assert hub.clients == 0
    assert hub.publish("x", 1) == 0


@pytest.mark.parametrize("kwargs", [{"max_queue_messages": 0}, {"max_queue_bytes": 0}])
def test_limits_must_be_positive(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        EventHub(**kwargs)


def test_repr_is_short() -> None:
    assert repr(EventHub()) == "<EventHub clients=0 dropped=0>"
