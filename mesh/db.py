"""Opening SQLite databases with versioned schemas, shared by the bootstrap server and
the node's store (both may only depend on mesh).

Modelled on magic-wormhole-mailbox-server's database.py: a new database is created
atomically (built under a temporary name, then renamed), an existing one is backed up
before any migration, and every connection runs with WAL and foreign keys on.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Sequence
from pathlib import Path

from mesh.errors import DatabaseError

__all__ = ["open_db"]


def _configure(conn: sqlite3.Connection, wal: bool) -> None:
    conn.execute("PRAGMA foreign_keys = ON")
    if wal:
        conn.execute("PRAGMA journal_mode = WAL")
        # NORMAL is durable across process crashes in WAL mode; FULL also survives power
        # loss at the cost of an fsync per commit, which acknowledged messages deserve.
        conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA busy_timeout = 5000")


def _version(conn: sqlite3.Connection) -> int:
    try:
        row = conn.execute("SELECT version FROM schema_version").fetchone()
    except sqlite3.OperationalError:
        return 0
    return row[0] if row else 0


def _migrate(conn: sqlite3.Connection, migrations: Sequence[str], start: int) -> None:
    for version in range(start, len(migrations)):
        with conn:
            conn.executescript("BEGIN;" + migrations[version])
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (version + 1,))


def open_db(path: str | os.PathLike[str], migrations: Sequence[str]) -> sqlite3.Connection:
    """Open (creating or migrating) a database whose schema is ``migrations``.

    ``migrations[0]`` creates version 1 and must create the ``schema_version`` table;
    ``migrations[n]`` takes version n to n+1. ``":memory:"`` is accepted for tests.
    Autocommit mode (isolation_level=None): callers group writes with ``with conn:``
    after an explicit BEGIN, so a commit is exactly where they say.
    """
    target = len(migrations)
    if str(path) == ":memory:":
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        _configure(conn, wal=False)
        _migrate(conn, migrations, 0)
        return conn

    path = Path(path)
    if not path.exists():
        tmp = path.with_name(path.name + ".new")
        for leftover in (tmp, Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
            leftover.unlink(missing_ok=True)
        conn = sqlite3.connect(tmp, isolation_level=None)
        _configure(conn, wal=False)
        _migrate(conn, migrations, 0)
        conn.close()
        os.replace(tmp, path)

    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    _configure(conn, wal=True)
    version = _version(conn)
    if version > target:
        conn.close()
        raise DatabaseError(f"{path} has schema version {version}, newer than this "
                            f"program's {target}; upgrade Parley")
    if version < target:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        backup = path.with_name(f"{path.name}.v{version}.bak")
        shutil.copy2(path, backup)
        _migrate(conn, migrations, version)
    return conn
