"""A loopback DHT of real nodes for integration tests (not tests themselves)."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable, Iterator

import pytest

from mesh.dht import DhtConfig, DhtNode

__all__ = ["DhtNet", "no_errors_logged", "poll"]


class DhtNet:
    """Real DhtNodes on 127.0.0.1, port 0; stop_all() in teardown stops every one."""

    def __init__(self, config: DhtConfig | None = None) -> None:
        self.config = config or DhtConfig.loopback()
        self.nodes: list[DhtNode] = []

    async def add(self, count: int = 1, *, join: bool = True,
                  config: DhtConfig | None = None) -> list[DhtNode]:
        added = []
        for _ in range(count):
            node = DhtNode(config or self.config)
            await node.listen(0, "127.0.0.1")
            live = [n for n in self.nodes if n.running]
            self.nodes.append(node)
            if join and live:
                await node.join([live[0].address, random.choice(live).address])
            added.append(node)
        return added

    async def stop_all(self) -> None:
        for node in self.nodes:
            await node.stop()


async def poll(predicate: Callable[[], bool], within: float = 10.0, step: float = 0.02) -> None:
    """Wait for a condition nothing signals (integration tests only)."""
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110
            await asyncio.sleep(step)


@pytest.fixture
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Fail a test that logged an ERROR (a crashed task, a timeout logged as an error)."""
    yield
    errors = [f"{r.name}: {r.getMessage()}" for r in caplog.get_records("call")
              if r.levelno >= logging.ERROR]
    assert errors == []
