"""The bridge's durable spool: a queue on disk of accepted events the sink has not taken yet.

SQLite in WAL mode with ``synchronous=FULL`` makes each committed transaction durable (fsync'd)
before ``put`` returns, and it is the well-kept embedded store for the job. Rows are kept in
arrival order (``seq``) and deleted only after the sink acknowledged them. Each event is stored
Avro-encoded (single-object, so the writer schema's fingerprint travels with it), and every
writer schema the spool has used is kept in its ``schemas`` table, so rows written before an
upgrade of the schema are still read (Avro schema resolution). A row that cannot be decoded at
all is handed to the replayer as :class:`Unreadable`, which moves it to ``dead_letters``.

The limits count what the spool really occupies on disk: the pages in use in the SQLite file
plus its write-ahead log, dead letters included (and dead letters count as events).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastavro import parse_schema

from bridge.codec import SINGLE_OBJECT_MAGIC, AvroCodec
from bridge.errors import MalformedInput, Overloaded, SinkUnavailable, SpoolInUse
from bridge.event import SOURCES, EncodedEvent, LoginEvent, Source
from bridge.groupcommit import GroupCommit

log = logging.getLogger(__name__)

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
CREATE TABLE IF NOT EXISTS schemas (
    fingerprint BLOB PRIMARY KEY,
    schema TEXT NOT NULL,
    first_used_ms INTEGER NOT NULL
);
"""
# How long a statement waits for another connection's lock (e.g. `dead-letters requeue`).
BUSY_TIMEOUT_SECONDS = 5.0
# The write-ahead log is counted in the limit, so keep it small next to the limit: checkpoint
# after about a sixteenth of it (SQLite's default, 1000 pages, would be 4 MB on a 1 MB spool).
_WAL_SHARE = 16


@dataclass(frozen=True, slots=True)
class Spooled:
    seq: int
    encoded: EncodedEvent

    @property
    def event(self) -> LoginEvent:
        return self.encoded.event


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A stored row that cannot be decoded (unknown writer schema, damaged body)."""

    seq: int
    event_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class DeadLetter:
    seq: int
    event_id: str
    source: str
    spooled_ms: int
    reason: str


class DurableSpool:
    """A bounded FIFO of events on disk; every method is safe to await from the event loop.

    All SQLite work runs in one worker thread at a time (a lock guards the connection), and
    concurrent ``put`` calls share a transaction, so a burst pays for one fsync, not one each.
    """

    def __init__(
        self,
        path: Path,
        codec: AvroCodec,
        *,
        max_bytes: int,
        max_events: int,
        busy_timeout: float = BUSY_TIMEOUT_SECONDS,
    ) -> None:
        self.path = path
        self._codec = codec
        self._max_bytes = max_bytes
        self._max_events = max_events
        self._busy_timeout = busy_timeout
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._writers: dict[bytes, Any] = {}  # fingerprint -> parsed writer schema
        self._commits = GroupCommit(
            self._insert,
            failures=(sqlite3.Error,),
            fail=lambda exc: SinkUnavailable(f"spool cannot store events: {exc}"),
        )
        self.depth = 0
        # Set on every commit, for the replayer waiting for work.
        self.arrived = asyncio.Event()
        self.dead_letters = 0
        self.size_bytes = 0  # on disk: pages in use plus the write-ahead log
        self._oldest_ms: int | None = None
        self._shrink_at = 0

    # -- lifecycle

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = _connect(self.path, self._busy_timeout)
        if int(db.execute("PRAGMA page_count").fetchone()[0]) == 0:
            # Possible only in a new file; lets a drained spool give its pages back to the
            # file system (see _shrink). Asked only then: even a no-op change takes a lock.
            db.execute("PRAGMA auto_vacuum=INCREMENTAL")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
        wal_pages = max(16, min(1000, self._max_bytes // page_size // _WAL_SHARE))
        db.execute(f"PRAGMA wal_autocheckpoint={wal_pages}")
        db.execute(f"PRAGMA journal_size_limit={wal_pages * page_size}")
        self._shrink_at = wal_pages  # free pages worth giving back
        db.executescript(_SCHEMA)
        self._writers = self._load_writer_schemas(db)
        self._db = db
        with self._lock:
            self._recount(db)

    def _load_writer_schemas(self, db: sqlite3.Connection) -> dict[bytes, Any]:
        """Records this codec's schema (once) and parses every schema the spool has used."""
        current = self._codec.fingerprint
        known = db.execute("SELECT 1 FROM schemas WHERE fingerprint = ?", (current,)).fetchone()
        if known is None:  # only then a write, so opening never waits for another writer
            db.execute(
                "INSERT OR IGNORE INTO schemas (fingerprint, schema, first_used_ms)"
                " VALUES (?, ?, ?)",
                (current, json.dumps(self._codec.schema), _now_ms()),
            )
        writers: dict[bytes, Any] = {current: self._codec.parsed}
        for fingerprint, text in db.execute("SELECT fingerprint, schema FROM schemas"):
            if bytes(fingerprint) in writers:
                continue
            try:
                writers[bytes(fingerprint)] = parse_schema(json.loads(text))
            except Exception as exc:  # its rows become dead letters, named below
                log.error("spool schema %s cannot be parsed: %s", bytes(fingerprint).hex(), exc)
        return writers

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
        events = self.depth + self.dead_letters
        return events >= self._max_events or self.size_bytes >= self._max_bytes

    async def put(self, encoded: EncodedEvent) -> None:
        """Returns once the event is committed to disk; raises Overloaded when the spool is full."""
        if self.full:
            raise Overloaded(
                f"spool is full ({self.depth} events, {self.dead_letters} dead letters, "
                f"{self.size_bytes} bytes on disk); retry later"
            )
        await self._commits.submit(encoded)
        self.arrived.set()

    def _insert(self, events: Sequence[EncodedEvent]) -> None:
        now = _now_ms()
        single_object = self._codec.single_object
        rows = [(e.event.event_id, e.event.source, now, single_object(e.datum)) for e in events]
        with self._lock:
            with self._transaction() as db:
                db.executemany(
                    "INSERT INTO events (event_id, source, spooled_ms, body) VALUES (?, ?, ?, ?)",
                    rows,
                )
            self.depth += len(rows)
            if self._oldest_ms is None:
                self._oldest_ms = now
            self.size_bytes = _disk_bytes(db, self.path)

    # -- reading and removing

    async def head(self, limit: int) -> list[Spooled | Unreadable]:
        """The oldest ``limit`` events, oldest first; rows that cannot be decoded as Unreadable."""
        return await asyncio.to_thread(self._head, limit)

    def _head(self, limit: int) -> list[Spooled | Unreadable]:
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT seq, event_id, source, body FROM events ORDER BY seq LIMIT ?", (limit,)
                )
                .fetchall()
            )
        return [self._read_row(seq, event_id, src, body) for seq, event_id, src, body in rows]

    def _read_row(self, seq: int, event_id: str, source: str, body: bytes) -> Spooled | Unreadable:
        try:
            record, whole = self._decode(body)
            event = LoginEvent(record=record, source=_source(source))
            if body[2:10] == self._codec.fingerprint and whole:
                datum = bytes(body[10:])
            else:
                # Written before a schema upgrade: the sink gets it in today's schema. Or bytes
                # past the record (never written by a bridge): sinks copy bodies as they are, and
                # in a file sink block they would make the records after it unreadable.
                if not whole:
                    log.warning("spooled event %s has bytes past its record: dropped", event_id)
                datum = self._codec.encode_datum(record)
        except Exception as exc:  # whatever is wrong with one row is its own problem
            return Unreadable(seq=seq, event_id=event_id, reason=f"cannot be decoded: {exc}")
        return Spooled(seq=seq, encoded=EncodedEvent(event=event, datum=datum))

    def _decode(self, body: bytes) -> tuple[dict[str, Any], bool]:
        if body[:2] != SINGLE_OBJECT_MAGIC:
            raise MalformedInput("not Avro single-object encoding (no C3 01 marker)")
        fingerprint = bytes(body[2:10])
        writer = self._writers.get(fingerprint)
        if writer is None:
            raise MalformedInput(
                f"written with schema fingerprint {fingerprint.hex()}, "
                "which is not in this spool's schemas table"
            )
        return self._codec.decode_datum_whole(body[10:], writer_schema=writer)

    async def remove(self, seqs: Sequence[int]) -> None:
        if seqs:
            await asyncio.to_thread(self._remove, list(seqs))

    def _remove(self, seqs: list[int]) -> None:
        marks = ",".join("?" * len(seqs))
        with self._lock:
            with self._transaction() as db:
                # placeholders only, never values
                db.execute(f"DELETE FROM events WHERE seq IN ({marks})", seqs)  # noqa: S608
                freed = db.execute("SELECT changes()").fetchone()[0]
            self.depth = max(0, self.depth - int(freed))
            self._oldest_ms = _first_spooled_ms(db)
            if self.depth == 0:
                self._shrink(db)
            self.size_bytes = _disk_bytes(db, self.path)

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

    async def bury(self, item: Spooled | Unreadable, reason: str) -> None:
        """Moves an event the sink refuses for good (or that cannot be read) out of the way,
        keeping it for an operator (``login-audit-bridge dead-letters``)."""
        await asyncio.to_thread(self._bury, item.seq, reason)

    def _bury(self, seq: int, reason: str) -> None:
        with self._lock, self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO dead_letters"
                " SELECT seq, event_id, source, spooled_ms, body, ? FROM events WHERE seq = ?",
                (reason, seq),
            )
            self.dead_letters += int(db.execute("SELECT changes()").fetchone()[0])
        self._remove([seq])

    async def refresh(self) -> None:
        """Counts again from the file: another process (the CLI) may have changed it."""
        await asyncio.to_thread(self._refresh)

    def _refresh(self) -> None:
        with self._lock:
            self._recount(self._connection())

    def _recount(self, db: sqlite3.Connection) -> None:
        self.depth = int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])
        self.dead_letters = int(db.execute("SELECT COUNT(*) FROM dead_letters").fetchone()[0])
        self._oldest_ms = _first_spooled_ms(db)
        self.size_bytes = _disk_bytes(db, self.path)

    @property
    def oldest_age_seconds(self) -> float:
        """Kept in memory, so it moves with the clock even while the file cannot be read."""
        if self._oldest_ms is None:
            return 0.0
        return max(0.0, time.time() - self._oldest_ms / 1000)

    # -- SQLite plumbing

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; on any error it is rolled back, so the next one can begin.

        SQLite rolls back by itself after some errors (a full disk) but not after all of them,
        and a transaction left open makes every later BEGIN fail.
        """
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise

    def _shrink(self, db: sqlite3.Connection) -> None:
        """Gives a drained spool's pages and log back to the file system (best effort), when
        there is enough to give: not after every late acknowledgement of a lone event."""
        free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
        if free < self._shrink_at:
            return
        try:
            # executescript steps each statement to the end; execute() would free one page only.
            db.executescript("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")
        except sqlite3.Error as exc:
            log.warning("spool %s not shrunk after draining: %s", self.path, exc)

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            raise SinkUnavailable("spool is not open")
        return self._db


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    return sqlite3.connect(
        path, timeout=busy_timeout, check_same_thread=False, isolation_level=None
    )


def _now_ms() -> int:
    return int(time.time() * 1000)


def _first_spooled_ms(db: sqlite3.Connection) -> int | None:
    # By seq, not MIN(spooled_ms): the primary key answers it without reading the table.
    row = db.execute("SELECT spooled_ms FROM events ORDER BY seq LIMIT 1").fetchone()
    return None if row is None else int(row[0])


def _disk_bytes(db: sqlite3.Connection, path: Path) -> int:
    """The file, its write-ahead log and shared-memory index, less the free pages in the file
    (reused before the file grows)."""
    page_size = int(db.execute("PRAGMA page_size").fetchone()[0])
    free = int(db.execute("PRAGMA freelist_count").fetchone()[0])
    files = sum(_file_size(Path(f"{path}{suffix}")) for suffix in ("", "-wal", "-shm"))
    return max(0, files - free * page_size)


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _source(value: str) -> Source:
    # Rows written before the column told sources apart read as SFTPGo's, the only source then.
    return next((source for source in SOURCES if source == value), "sftpgo")


# -- the dead letters, for the command line (works while the bridge runs: WAL allows it)


def holds_events(path: Path) -> bool:
    """Whether a spool not open here has events waiting to be sent (dead letters aside). One
    that cannot be read counts as holding some: the bridge that opens it says what is wrong."""
    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT EXISTS (SELECT 1 FROM events)").fetchone()
    except sqlite3.Error:
        return True
    return bool(row[0])


def list_dead_letters(path: Path) -> list[DeadLetter]:
    with contextlib.closing(_open_existing(path)) as db:
        rows = db.execute(
            "SELECT seq, event_id, source, spooled_ms, reason FROM dead_letters ORDER BY seq"
        ).fetchall()
    return [DeadLetter(*row) for row in rows]


def requeue_dead_letters(path: Path, event_ids: Sequence[str] | None) -> list[str]:
    """Moves dead letters (all, or those with these event ids) back to the head of the queue,
    in their original order; the replayer sends them again. Returns the ids moved."""
    with contextlib.closing(_open_existing(path)) as db:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute("CREATE TEMP TABLE chosen (seq INTEGER PRIMARY KEY)")
            if event_ids is None:
                db.execute("INSERT INTO chosen SELECT seq FROM dead_letters")
            else:
                db.executemany(
                    "INSERT OR IGNORE INTO chosen SELECT seq FROM dead_letters WHERE event_id = ?",
                    [(event_id,) for event_id in event_ids],
                )
            moved = [
                row[0]
                for row in db.execute(
                    "SELECT event_id FROM dead_letters WHERE seq IN (SELECT seq FROM chosen)"
                    " ORDER BY seq"
                )
            ]
            db.execute(
                "INSERT INTO events (seq, event_id, source, spooled_ms, body)"
                " SELECT seq, event_id, source, spooled_ms, body FROM dead_letters"
                " WHERE seq IN (SELECT seq FROM chosen)"
            )
            db.execute("DELETE FROM dead_letters WHERE seq IN (SELECT seq FROM chosen)")
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return moved


def _open_existing(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise FileNotFoundError(f"no spool at {path}")
    return _connect(path, BUSY_TIMEOUT_SECONDS)


# -- one process per spool


class SpoolLock:
    """An exclusive lock beside the spool (``spool.sqlite3.lock``): one process replays it.

    A serving bridge holds it for its lifetime and ``login-audit-bridge drain`` for the drain,
    so a drain run against the volume of a bridge that is still up (or two bridges given one
    data directory) is refused instead of sending the same events twice. ``flock`` is released
    by the kernel when the process dies, even by SIGKILL, so a crash leaves no stale lock. The
    file keeps the holder's pid, for the message the next one prints.
    """

    def __init__(self, spool_path: Path) -> None:
        self.path = Path(f"{spool_path}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        """Takes the lock or raises SpoolInUse naming the holder; never waits."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise SpoolInUse(
                f"spool {self.path.parent / self.path.stem} is in use by process {holder} "
                "(a running bridge or drain on this data directory)"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None

    def __enter__(self) -> SpoolLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
