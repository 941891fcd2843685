"""The bridge's durable spool: accepted events the sink has not acknowledged yet, in SQLite.

SQLite in WAL mode with ``synchronous=FULL`` makes each committed transaction durable (fsync'd)
before ``put`` returns, and it is the well-kept embedded store for the job. Rows are kept in
arrival order (``seq``) and deleted only after the sink acknowledged them. Each event is stored
Avro-encoded (single-object, so the writer schema's fingerprint travels with it).
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.codec import AvroCodec
from bridge.errors import Overloaded, SinkUnavailable
from bridge.event import LoginEvent, Source
from bridge.groupcommit import GroupCommit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    source TEXT NOT NULL,
    spooled_ms INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_id ON events (event_id);
CREATE TABLE IF NOT EXISTS dead_letters (
    seq INTEGER PRIMARY KEY,
    event_id TEXT NOT NULL,
    source TEXT NOT NULL,
    spooled_ms INTEGER NOT NULL,
    body BLOB NOT NULL,
    reason TEXT NOT NULL
);
"""


@dataclass(frozen=True, slots=True)
class Spooled:
    seq: int
    event: LoginEvent


class Spool:
    """A bounded FIFO of events on disk; every method is safe to await from the event loop.

    All SQLite work runs in one worker thread at a time (a lock guards the connection), and
    concurrent ``put`` calls share a transaction, so a burst pays for one fsync, not one each.
    """

    def __init__(self, path: Path, codec: AvroCodec, *, max_bytes: int, max_events: int) -> None:
        self.path = path
        self._codec = codec
        self._max_bytes = max_bytes
        self._max_events = max_events
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._commits = GroupCommit(
            self._insert,
            failures=(sqlite3.Error,),
            fail=lambda exc: SinkUnavailable(f"spool cannot store events: {exc}"),
        )
        self.depth = 0
        self.size_bytes = 0

    # -- lifecycle

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.executescript(_SCHEMA)
        row = db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM events").fetchone()
        self.depth, self.size_bytes = int(row[0]), int(row[1])
        self._db = db

    async def close(self) -> None:
        await self._commits.idle()
        await asyncio.to_thread(self._close)

    def _close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- writing

    @property
    def busy(self) -> bool:
        """True while events are spooled or on their way into the spool."""
        return self.depth > 0 or self._commits.busy

    @property
    def full(self) -> bool:
        return self.depth >= self._max_events or self.size_bytes >= self._max_bytes

    async def put(self, event: LoginEvent) -> None:
        """Returns once the event is committed to disk; raises Overloaded when the spool is full."""
        if self.full:
            raise Overloaded(
                f"spool is full ({self.depth} events, {self.size_bytes} bytes); retry later"
            )
        await self._commits.submit(event)

    def _insert(self, events: Sequence[LoginEvent]) -> None:
        now = int(time.time() * 1000)
        rows = [(e.event_id, e.source, now, self._codec.encode(e.record)) for e in events]
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO events (event_id, source, spooled_ms, body) VALUES (?, ?, ?, ?)", rows
            )
            db.execute("COMMIT")
        self.depth += len(rows)
        self.size_bytes += sum(len(row[3]) for row in rows)

    # -- reading and removing

    async def head(self, limit: int) -> list[Spooled]:
        """The oldest ``limit`` events, oldest first."""
        return await asyncio.to_thread(self._head, limit)

    def _head(self, limit: int) -> list[Spooled]:
        with self._lock:
            rows = (
                self._connection()
                .execute("SELECT seq, source, body FROM events ORDER BY seq LIMIT ?", (limit,))
                .fetchall()
            )
        return [
            Spooled(seq=seq, event=LoginEvent(record=self._codec.decode(body), source=_source(src)))
            for seq, src, body in rows
        ]

    async def remove(self, seqs: Sequence[int]) -> None:
        if seqs:
            await asyncio.to_thread(self._remove, list(seqs))

    def _remove(self, seqs: list[int]) -> None:
        marks = ",".join("?" * len(seqs))
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            where = f"WHERE seq IN ({marks})"  # placeholders only, never values
            freed = db.execute(
                f"SELECT COUNT(*), COALESCE(SUM(LENGTH(body)), 0) FROM events {where}",  # noqa: S608
                seqs,
            ).fetchone()
            db.execute(f"DELETE FROM events {where}", seqs)  # noqa: S608
            db.execute("COMMIT")
        self.depth -= int(freed[0])
        self.size_bytes -= int(freed[1])

    async def remove_event(self, event_id: str) -> None:
        """Drops an event that the sink acknowledged after all (a late acknowledgement)."""
        await asyncio.to_thread(self._remove_event, event_id)

    def _remove_event(self, event_id: str) -> None:
        with self._lock:
            rows = (
                self._connection()
                .execute("SELECT seq FROM events WHERE event_id = ?", (event_id,))
                .fetchall()
            )
        if rows:
            self._remove([row[0] for row in rows])

    async def bury(self, item: Spooled, reason: str) -> None:
        """Moves an event the sink refuses for good out of the way, keeping it for an operator."""
        await asyncio.to_thread(self._bury, item.seq, reason)

    def _bury(self, seq: int, reason: str) -> None:
        with self._lock:
            db = self._connection()
            db.execute("BEGIN IMMEDIATE")
            db.execute(
                "INSERT OR REPLACE INTO dead_letters"
                " SELECT seq, event_id, source, spooled_ms, body, ? FROM events WHERE seq = ?",
                (reason, seq),
            )
            db.execute("COMMIT")
        self._remove([seq])

    async def oldest_age_seconds(self) -> float:
        return await asyncio.to_thread(self._oldest_age)

    def _oldest_age(self) -> float:
        with self._lock:
            row = self._connection().execute("SELECT MIN(spooled_ms) FROM events").fetchone()
        return 0.0 if row[0] is None else max(0.0, time.time() - row[0] / 1000)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise SinkUnavailable("spool is not open")
        return self._db


def _source(value: str) -> Source:
    return "mediawiki" if value == "mediawiki" else "sftpgo"
