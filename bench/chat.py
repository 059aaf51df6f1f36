"""Chat history queries: ``python -m bench.chat [--messages N] [--quick]``.

A real node store (SQLite in WAL, groups/store.py) in a temporary directory, filled
with N chat messages of one conversation (texts of 8-40 words from a 2,000-word
vocabulary, every 20th with a file name), written through groups.history as the
messenger writes them (so the FTS5 index is maintained the same way). Measured in the
same run, each with its baseline:

- search: groups.history.search (FTS5, every word as a prefix) against a LIKE scan
  over the same texts (what the search would cost without the index);
- paging the whole history back from the newest page, 200 a page: the keyset cursor
  (groups.history.chat_messages ``before``) against LIMIT/OFFSET paging;
- storing a message: insert with its index entry against the insert alone
  (what the index costs a receiver per message);
- disappearing: removing 1,000 expired messages (row, reactions, index) in one
  transaction.

``--quick`` (2,000 messages) is the smoke run for the test suite.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from pathlib import Path

from groups import chat_actions, history
from groups.conversation_events import ChatRow
from groups.store import atomic, open_store

TOPIC = b"b" * 16
SENDERS = [f"{i:015d}" for i in range(1, 9)]
NOW_MS = 1_800_000_000_000


def words(rng: random.Random, vocabulary: list[str]) -> str:
    return " ".join(rng.choice(vocabulary) for _ in range(rng.randint(8, 40)))


def fill(conn, n: int, rng: random.Random, vocabulary: list[str], *,
         index: bool = True) -> float:
    """Insert n messages; seconds per message."""
    history.add_conversation(conn, TOPIC, "group", "Bench", NOW_MS / 1000)
    started = time.perf_counter()
    with atomic(conn):
        for i in range(n):
            file = None
            if i % 20 == 0:
                file = b"\x81\xa4name\xb0" + f"report-{i:05d}.pdf"[:16].encode().ljust(16)
            row = ChatRow(i.to_bytes(32, "big"), TOPIC, SENDERS[i % len(SENDERS)], i + 1,
                          NOW_MS + i, NOW_MS + i, words(rng, vocabulary), file, False,
                          expires_at=NOW_MS if i < 1000 else None)
            if index:
                history.insert_chat_message(conn, row)
            else:
                conn.execute("INSERT INTO chat_messages (message_id, topic, sender, seq, "
                             "lamport, sent_at, text, file, seen) VALUES (?,?,?,?,?,?,?,?,0)",
                             (row.message_id, row.topic, row.sender, row.seq, row.lamport,
                              row.sent_at, row.text, row.file))
    return (time.perf_counter() - started) / n


def timed(fn, repeat: int) -> float:
    """Median seconds of ``repeat`` calls."""
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def like_scan(conn, terms: list[str]) -> list:
    where = " AND ".join("text LIKE ?" for _ in terms)
    return conn.execute(f"SELECT message_id FROM chat_messages WHERE topic = ? AND {where} "
                        "LIMIT 50", (TOPIC, *[f"%{t}%" for t in terms])).fetchall()


def page_keyset(conn) -> int:
    count, before = 0, None
    while True:
        rows = history.chat_messages(conn, TOPIC, 200, before)
        count += len(rows)
        if len(rows) < 200:
            return count
        first = rows[0]
        before = (first.lamport, first.sender, first.seq)


def page_offset(conn) -> int:
    count, offset = 0, 0
    while True:
        rows = [history.chat_message(conn, r[0]) for r in conn.execute(
            "SELECT message_id FROM chat_messages WHERE topic = ? ORDER BY lamport DESC, "
            "sender DESC, seq DESC LIMIT 200 OFFSET ?", (TOPIC, offset))]
        count += len(rows)
        offset += 200
        if len(rows) < 200:
            return count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="2,000 messages (smoke run)")
    args = parser.parse_args()
    n = 2_000 if args.quick else args.messages
    rng = random.Random(7)
    vocabulary = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(
        rng.randint(3, 9))) for _ in range(2_000)]
    with tempfile.TemporaryDirectory() as tmp:
        conn = open_store(Path(tmp) / "node.db")
        per_insert = fill(conn, n, random.Random(1), vocabulary)
        bare = open_store(Path(tmp) / "bare.db")
        per_bare = fill(bare, n, random.Random(1), vocabulary, index=False)
        bare.close()
        queries = [[rng.choice(vocabulary)] for _ in range(10)] + \
            [[rng.choice(vocabulary), rng.choice(vocabulary)[:3]] for _ in range(10)]
        fts = statistics.median(timed(lambda q=q: history.search(conn, q, [TOPIC], 50), 5)
                                for q in queries)
        scan = statistics.median(timed(lambda q=q: like_scan(conn, q), 5) for q in queries)
        assert page_keyset(conn) == page_offset(conn) == n
        keyset = timed(lambda: page_keyset(conn), 3)
        offset = timed(lambda: page_offset(conn), 3)
        expiring = history.soonest_expiring(conn, 1000)
        started = time.perf_counter()
        with atomic(conn):
            for effect in chat_actions.expired(expiring, NOW_MS / 1000):
                history.remove_message(conn, effect.message_id)
        sweep = time.perf_counter() - started
        conn.close()
    pages = -(-n // 200)
    print(f"\n{n:,} messages in one conversation (SQLite WAL, synchronous=FULL)\n")
    print("| measure | Parley | baseline (same run) | ratio |")
    print("|---|---|---|---|")
    print(f"| search, median of 20 queries | {fts * 1e3:.2f} ms (FTS5) | "
          f"{scan * 1e3:.2f} ms (LIKE scan) | {scan / fts:.1f}× faster |")
    print(f"| page back through all history ({pages} pages of 200) | {keyset * 1e3:.1f} ms "
          f"(keyset cursor) | {offset * 1e3:.1f} ms (OFFSET) | {offset / keyset:.1f}× faster |")
    print(f"| store one message (one transaction for all) | {per_insert * 1e6:.0f} µs "
          f"(row + FTS5 entry) | {per_bare * 1e6:.0f} µs (row alone) | "
          f"{per_insert / per_bare:.1f}× the cost |")
    print(f"| remove 1,000 expired messages (one transaction) | {sweep * 1e3:.1f} ms | – | – |")


if __name__ == "__main__":
    main()
