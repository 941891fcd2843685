"""The spool and the pipeline around it: nothing accepted is lost while the sink is away."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from bridge.codec import AvroCodec
from bridge.durable_spool import DurableSpool, Spooled
from bridge.errors import Overloaded, SinkRejected, SinkUnavailable
from bridge.event import EncodedEvent, LoginEvent
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline
from bridge.sinks.file import FileSink, read_events
from bridge.sinks.memory import MemorySink

from conftest import encoded, replayer

CODEC = AvroCodec()


def _events(n: int) -> list[LoginEvent]:
    normalizer = Normalizer()
    query = {"ip": "192.0.2.9", "login_method": "password", "protocol": "FTP", "status": "0"}
    return [normalizer.sftpgo(query, {"username": f"u{i}"}) for i in range(n)]


def _spool(path: Path, **limits: int) -> DurableSpool:
    return DurableSpool(
        path / "spool.sqlite3",
        CODEC,
        max_bytes=limits.get("max_bytes", 1 << 30),
        max_events=limits.get("max_events", 10**6),
    )


class GatedSink(MemorySink):
    """A sink whose sends wait until the test opens the gate: a slow broker."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def send(self, encoded: EncodedEvent) -> None:
        await self.gate.wait()
        await super().send(encoded)


def test_events_survive_a_reopen_in_arrival_order(tmp_path: Path) -> None:
    events = _events(5)

    async def scenario() -> list[str]:
        spool = _spool(tmp_path)
        await spool.open()
        await asyncio.gather(*(spool.put(encoded(e)) for e in events))
        await spool.close()
        again = _spool(tmp_path)
        await again.open()
        assert again.depth == 5
        head = await again.head(10)
        await again.close()
        return [item.event.event_id for item in head if isinstance(item, Spooled)]

    assert asyncio.run(scenario()) == [e.event_id for e in events]


def test_the_spool_file_is_sqlite_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = _spool(tmp_path)
        await spool.open()
        await spool.put(encoded(_events(1)[0]))
        await spool.close()

    asyncio.run(scenario())
    with sqlite3.connect(tmp_path / "spool.sqlite3") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 1


def test_a_full_spool_refuses_with_overloaded(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = _spool(tmp_path, max_events=2)
        await spool.open()
        for event in _events(2):
            await spool.put(encoded(event))
        with pytest.raises(Overloaded):
            await spool.put(encoded(_events(1)[0]))
        await spool.close()

    asyncio.run(scenario())


def test_a_down_sink_spools_and_the_replay_delivers_in_order_then_empties(tmp_path: Path) -> None:
    events = _events(20)

    async def scenario() -> None:
        sink, spool = MemorySink(), _spool(tmp_path)
        await sink.start()
        await spool.open()
        pipeline = Pipeline(sink=sink, metrics=Metrics(), spool=spool, spool_after=1)
        sink.fail_with = SinkUnavailable("broker down")
        for event in events[:10]:
            await pipeline.publish(event)  # returns: durable in the spool
        assert spool.depth == 10
        sink.fail_with = None
        for event in events[10:]:
            await pipeline.publish(event)  # queued behind the backlog
        assert sink.events == []
        assert await replayer(pipeline).replay_once()
        assert [e.event_id for e in sink.events] == [e.event_id for e in events]
        assert spool.depth == 0
        await spool.close()

    asyncio.run(scenario())


def test_a_slow_sink_hands_over_to_the_spool_and_a_late_ack_drops_the_copy(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        sink, spool = GatedSink(), _spool(tmp_path)
        await sink.start()
        await spool.open()
        pipeline = Pipeline(sink=sink, metrics=Metrics(), spool=spool, spool_after=0.05)
        (event,) = _events(1)
        await pipeline.publish(event)
        assert spool.depth == 1
        sink.gate.set()  # the broker acknowledges after all
        for _ in range(100):
            if spool.depth == 0:
                break
            await asyncio.sleep(0.02)
        assert spool.depth == 0
        assert [e.event_id for e in sink.events] == [event.event_id]
        await spool.close()

    asyncio.run(scenario())


def test_replay_keeps_events_while_the_sink_still_fails_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def scenario() -> None:
        sink, spool = MemorySink(), _spool(tmp_path)
        await sink.start()
        await spool.open()
        pipeline = Pipeline(sink=sink, metrics=Metrics(), spool=spool)
        sink.fail_with = SinkUnavailable("still down")
        for event in _events(3):
            await pipeline.publish(event)
        assert not await replayer(pipeline).replay_once()
        assert spool.depth == 3
        await spool.close()

    asyncio.run(scenario())
    assert "the memory sink took 0 of 3 spooled event(s); retrying after a pause: still down" in (
        caplog.text
    )


def test_an_event_the_sink_refuses_for_good_goes_to_dead_letters_and_unblocks(
    tmp_path: Path,
) -> None:
    metrics = Metrics()

    async def scenario() -> None:
        sink, spool = MemorySink(), _spool(tmp_path)
        await sink.start()
        await spool.open()
        pipeline = Pipeline(sink=sink, metrics=metrics, spool=spool)
        sink.fail_with = SinkRejected("record too large")
        await pipeline.publish(_events(1)[0])
        assert await replayer(pipeline).replay_once()
        assert spool.depth == 0
        await spool.close()

    asyncio.run(scenario())
    with sqlite3.connect(tmp_path / "spool.sqlite3") as db:
        assert db.execute("SELECT reason FROM dead_letters").fetchall() == [
            ("memory sink refused it: record too large",)
        ]
    assert metrics.registry.get_sample_value("login_audit_spool_dead_letters_total") == 1


def test_without_a_spool_a_failing_sink_is_an_error_for_the_caller() -> None:
    async def scenario() -> None:
        sink = MemorySink()
        await sink.start()
        sink.fail_with = SinkUnavailable("down")
        with pytest.raises(SinkUnavailable):
            await Pipeline(sink=sink, metrics=Metrics()).publish(_events(1)[0])

    asyncio.run(scenario())


# -- schema upgrades, unreadable rows, limits that count the disk, replay timing


def _older_codec() -> AvroCodec:
    """The schema as an earlier release had it: without the defaulted http_request field."""
    schema = copy.deepcopy(CODEC.schema)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "http_request"]
    return AvroCodec(schema)


def _insert_row(path: Path, body: bytes, *, event_id: str = "foreign-row") -> None:
    """Writes a row as another process would: straight into the file, ahead of the others."""
    with contextlib.closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "INSERT INTO events (seq, event_id, source, spooled_ms, body) VALUES (0, ?, ?, ?, ?)",
            (event_id, "sftpgo", int(time.time() * 1000), body),
        )


def test_rows_written_with_an_older_schema_are_read_after_an_upgrade(tmp_path: Path) -> None:
    events = _events(3)
    older = _older_codec()
    assert older.fingerprint != CODEC.fingerprint

    async def scenario() -> list[Any]:
        before = DurableSpool(tmp_path / "spool.sqlite3", older, max_bytes=1 << 30, max_events=100)
        await before.open()
        for event in events:
            await before.put(encoded(event, older))
        await before.close()
        after = _spool(tmp_path)  # the upgraded bridge: the current schema
        await after.open()
        head = await after.head(10)
        await after.close()
        return head

    head = asyncio.run(scenario())
    assert [item.event.event_id for item in head] == [e.event_id for e in events]
    assert [item.event.record["http_request"] for item in head] == [None, None, None]


def test_an_undecodable_row_goes_to_dead_letters_and_the_rows_behind_it_are_replayed(
    tmp_path: Path,
) -> None:
    metrics = Metrics()
    events = _events(3)
    foreign = b"\xc3\x01" + bytes(range(8)) + CODEC.encode_datum(events[0].record)

    async def put_all() -> None:
        spool = _spool(tmp_path)
        await spool.open()
        for event in events:
            await spool.put(encoded(event))
        await spool.close()

    async def replay() -> tuple[list[str], int]:
        sink, spool = MemorySink(), _spool(tmp_path)
        await sink.start()
        await spool.open()
        pipeline = Pipeline(sink=sink, metrics=metrics, spool=spool)
        assert await replayer(pipeline).replay_once()
        await spool.close()
        return [e.event_id for e in sink.events], spool.dead_letters

    asyncio.run(put_all())
    _insert_row(tmp_path / "spool.sqlite3", foreign)
    delivered, dead = asyncio.run(replay())
    assert delivered == [e.event_id for e in events]
    assert dead == 1
    with sqlite3.connect(tmp_path / "spool.sqlite3") as db:
        ((event_id, reason),) = db.execute("SELECT event_id, reason FROM dead_letters").fetchall()
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0
    assert event_id == "foreign-row"
    assert "0001020304050607" in reason  # names the fingerprint it does not know
    assert metrics.registry.get_sample_value("login_audit_spool_dead_letters_total") == 1


class SlowSink(MemorySink):
    """Acknowledges every send, after ``latency`` seconds: a broker slower than spool_after."""

    def __init__(self, latency: float) -> None:
        super().__init__()
        self.latency = latency
        self.attempts = 0

    async def send(self, encoded: EncodedEvent) -> None:
        self.attempts += 1
        await asyncio.sleep(self.latency)
        await super().send(encoded)


def test_replay_waits_for_the_publish_timeout_not_a_multiple_of_spool_after(
    tmp_path: Path,
) -> None:
    """With spool_after 0.05 s and a broker answering in 0.5 s, each event is sent once."""

    async def scenario() -> tuple[bool, int, int]:
        sink, spool = SlowSink(latency=0.5), _spool(tmp_path)
        await sink.start()
        await spool.open()
        pipeline = Pipeline(
            sink=sink, metrics=Metrics(), spool=spool, spool_after=0.05, publish_timeout=5
        )
        for event in _events(3):
            await spool.put(encoded(event))  # spooled while the broker was away
        replayed = await replayer(pipeline, publish_timeout=5).replay_once()
        await spool.close()
        return replayed, sink.attempts, len(sink.events)

    assert asyncio.run(scenario()) == (True, 3, 3)


def test_replay_gives_up_on_a_batch_the_sink_never_answers_and_keeps_every_event(
    tmp_path: Path,
) -> None:
    """One wait for the whole batch: at the publish timeout (and a second) each unanswered send
    is cancelled and counted as a timeout, and the events stay spooled for the next try."""
    metrics = Metrics()

    async def scenario() -> tuple[bool, int, int, float]:
        sink, spool = GatedSink(), _spool(tmp_path)  # the gate never opens
        await sink.start()
        await spool.open()
        pipeline = Pipeline(sink=sink, metrics=metrics, spool=spool, publish_timeout=0.05)
        for event in _events(3):
            await spool.put(encoded(event))
        started = time.monotonic()
        replayed = await replayer(pipeline, publish_timeout=0.05).replay_once()
        waited = time.monotonic() - started
        sink.gate.set()  # a cancelled send must not complete once the broker is back
        await asyncio.sleep(0.05)
        depth = spool.depth
        await spool.close()
        return replayed, depth, len(sink.events), waited

    replayed, depth, delivered, waited = asyncio.run(scenario())
    assert (replayed, depth, delivered) == (False, 3, 0)
    assert waited >= 1.05
    timeouts = {"sink": "memory", "reason": "timeout"}
    assert metrics.registry.get_sample_value("login_audit_publish_errors_total", timeouts) == 3


def test_replayed_events_are_counted_as_published_once_acknowledged(tmp_path: Path) -> None:
    metrics = Metrics()

    async def scenario() -> None:
        sink, spool = MemorySink(), _spool(tmp_path)
        await sink.start()
        await spool.open()
        pipeline = Pipeline(sink=sink, metrics=metrics, spool=spool)
        for event in _events(4):
            await spool.put(encoded(event))
        assert await replayer(pipeline).replay_once()
        await spool.close()

    asyncio.run(scenario())
    published = {"sink": "memory", "status": "failure"}
    assert metrics.registry.get_sample_value("login_audit_events_published_total", published) == 4


def test_the_size_limit_counts_the_sqlite_file_and_its_write_ahead_log(tmp_path: Path) -> None:
    """Filled until it refuses, the spool's files on disk stay within the limit (give or take
    the last transaction); counting only the event bodies let them reach 1.3-2.1 times it."""
    limit = 1024 * 1024

    async def fill() -> int:
        spool = _spool(tmp_path, max_bytes=limit)
        await spool.open()
        accepted = 0
        with contextlib.suppress(Overloaded):
            for event in _events(10_000):
                await spool.put(encoded(event))
                accepted += 1
        on_disk = _files_bytes(tmp_path)
        assert spool.size_bytes <= on_disk
        await spool.close()
        return accepted

    accepted = asyncio.run(fill())
    assert 500 < accepted < 10_000
    assert _files_bytes(tmp_path) <= limit + 64 * 1024


def _files_bytes(directory: Path) -> int:
    return sum(p.stat().st_size for p in directory.glob("spool.sqlite3*"))


def test_dead_letters_count_against_the_event_limit_and_are_counted_at_open(
    tmp_path: Path,
) -> None:
    metrics = Metrics()

    async def scenario() -> int:
        sink, spool = MemorySink(), _spool(tmp_path, max_events=3)
        await sink.start()
        await spool.open()
        pipeline = Pipeline(sink=sink, metrics=Metrics(), spool=spool)
        sink.fail_with = SinkRejected("record too large")
        for event in _events(2):
            await pipeline.publish(event)
        assert await replayer(pipeline).replay_once()  # both buried
        sink.fail_with = SinkUnavailable("down")
        await pipeline.publish(_events(1)[0])
        with pytest.raises(Overloaded):  # 1 waiting + 2 dead letters = the limit of 3
            await spool.put(encoded(_events(1)[0]))
        await spool.close()
        again = _spool(tmp_path, max_events=3)
        await again.open()
        metrics.watch_spool(again)
        await again.close()
        return again.dead_letters

    assert asyncio.run(scenario()) == 2
    assert metrics.registry.get_sample_value("login_audit_spool_dead_letter_events") == 2
    assert metrics.registry.get_sample_value("login_audit_spool_events", {"spool": "bridge"}) == 1


def test_a_put_blocked_by_another_writer_fails_alone_and_the_spool_keeps_working(
    tmp_path: Path,
) -> None:
    """Another process (the dead-letters command) holding the lock past the busy timeout makes
    that put fail with SinkUnavailable (a 503), and nothing else."""

    async def scenario() -> None:
        spool = DurableSpool(
            tmp_path / "spool.sqlite3", CODEC, max_bytes=1 << 30, max_events=100, busy_timeout=0.1
        )
        await spool.open()
        await spool.put(encoded(_events(1)[0]))
        other = sqlite3.connect(tmp_path / "spool.sqlite3", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(SinkUnavailable, match="locked"):
            await spool.put(encoded(_events(1)[0]))
        other.execute("ROLLBACK")
        other.close()
        await spool.put(encoded(_events(1)[0]))
        assert spool.depth == 2
        await spool.close()

    asyncio.run(scenario())


def test_the_gauges_read_the_spool_at_each_scrape_without_a_replayer(tmp_path: Path) -> None:
    metrics = Metrics()

    async def scenario() -> None:
        sink, spool = MemorySink(), _spool(tmp_path)  # the sink never starts: no replayer runs
        await spool.open()
        pipeline = Pipeline(sink=sink, metrics=metrics, spool=spool, spool_after=0.05)
        await pipeline.publish(_events(1)[0])
        await asyncio.sleep(0.2)
        await spool.close()

    asyncio.run(scenario())
    sample = metrics.registry.get_sample_value
    assert sample("login_audit_spool_events", {"spool": "bridge"}) == 1
    oldest_age = sample("login_audit_spool_oldest_age_seconds", {"spool": "bridge"})
    assert oldest_age is not None and oldest_age > 0.1
    spool_bytes = sample("login_audit_spool_bytes")
    assert spool_bytes is not None and spool_bytes > 0


def test_without_a_spool_a_sink_that_never_answers_fails_the_event_after_the_wait() -> None:
    metrics = Metrics()

    async def scenario() -> None:
        sink = GatedSink()  # its gate shut: the send waits until the test opens it
        await sink.start()
        pipeline = Pipeline(sink=sink, metrics=metrics, publish_timeout=0.05)
        with pytest.raises(SinkUnavailable, match=r"did not confirm the event within 1\.05 s"):
            await pipeline.publish(_events(1)[0])
        sink.gate.set()
        await asyncio.sleep(0.05)
        assert sink.events == []  # the send was given up on, not left to finish unseen

    asyncio.run(scenario())
    timeouts = metrics.registry.get_sample_value(
        "login_audit_publish_errors_total", {"sink": "memory", "reason": "timeout"}
    )
    assert timeouts == 1
    published = metrics.registry.get_sample_value(
        "login_audit_events_published_total", {"sink": "memory", "status": "failure"}
    )
    assert not published


def test_a_spooled_body_with_bytes_past_its_record_reaches_the_file_sink_as_the_record_alone(
    tmp_path: Path,
) -> None:
    # Sinks copy an event's encoded body as is (the file sink into its blocks). Bytes past the
    # record in a spooled row (never written by a bridge: a damaged or planted row) would make
    # every record after it in the block unreadable; the row is re-encoded from its record.
    events = _events(3)

    async def scenario() -> None:
        spool = _spool(tmp_path)
        await spool.open()
        for event in events:
            await spool.put(encoded(event))
        with contextlib.closing(sqlite3.connect(spool.path)) as db, db:
            seq, body = db.execute("SELECT seq, body FROM events ORDER BY seq LIMIT 1").fetchone()
            db.execute("UPDATE events SET body = ? WHERE seq = ?", (body + b"\x02\xff", seq))
        sink = FileSink(tmp_path / "files", CODEC)
        await sink.start()
        pipeline = Pipeline(sink=sink, metrics=Metrics(), spool=spool)
        assert await replayer(pipeline).replay_once()
        await sink.stop()
        await spool.close()

    asyncio.run(scenario())
    read = [record["metadata"]["uid"] for record in read_events(tmp_path / "files")]
    assert sorted(read) == sorted(e.event_id for e in events)
