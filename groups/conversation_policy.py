"""When the outbox sends (sans-IO): receipt batching and the retry backoff.

Time is a parameter: the adapter (Messenger.run_outbox) asks how long to wait and
sleeps; the policy itself never does.
"""

from __future__ import annotations

from collections.abc import Sequence

from groups.messages import Receipts

__all__ = ["OUTBOX_RETRY", "RECEIPT_BATCH", "RECEIPT_STEP", "OutboxBackoff", "ReceiptPacer",
           "receipt_batches"]

OUTBOX_RETRY = (1.0, 60.0)   # backoff bounds for pairwise sends that cannot go out yet
# Receipts are batched by load: after a pass that sent n receipts the next pass waits
# n * RECEIPT_STEP (at most RECEIPT_BATCH), so one message is confirmed at once while a
# burst is confirmed in few, large batches.
RECEIPT_STEP = 0.005
RECEIPT_BATCH = 0.05
RECEIPTS_PER_BATCH = 256    # ids per list (a Receipts content holds up to MAX_RECEIPT_IDS)


class ReceiptPacer:
    """How long the next outbox pass waits, given how busy the last one was."""

    def __init__(self) -> None:
        self._last_pass = float("-inf")
        self._window = 0.0

    def wait(self, now: float) -> float:
        """Seconds to wait before the next pass may start (0: start now)."""
        return max(0.0, self._window - (now - self._last_pass))

    def started(self, now: float) -> None:
        self._last_pass = now

    def finished(self, receipts_sent: int) -> None:
        self._window = min(RECEIPT_BATCH, RECEIPT_STEP * receipts_sent)


class OutboxBackoff:
    """Retry pairwise messages that could not go out (no session, no link yet):
    1 s, doubling to 60 s while something waits; back to 1 s once all went."""

    def __init__(self) -> None:
        self._delay = OUTBOX_RETRY[0]

    def after_pass(self, pending: bool) -> float | None:
        """How long to wait for a wake-up before the next pass (None: until woken)."""
        if not pending:
            self._delay = OUTBOX_RETRY[0]
            return None
        timeout = self._delay
        self._delay = min(self._delay * 2, OUTBOX_RETRY[1])
        return timeout


def receipt_batches(delivered: Sequence[bytes], read: Sequence[bytes]) -> list[Receipts]:
    """The receipts owed in one conversation, as contents of at most 256 ids a list."""
    step = RECEIPTS_PER_BATCH
    return [Receipts(tuple(delivered[i:i + step]), tuple(read[i:i + step]))
            for i in range(0, max(len(delivered), len(read)), step)]
