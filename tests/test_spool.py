"""The spool and the pipeline around it: nothing accepted is lost while the sink is away."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from bridge.codec import AvroCodec
from bridge.errors import Overloaded, SinkRejected, SinkUnavailable
from bridge.event import LoginEvent
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline
from bridge.sinks.memory import MemorySink
from bridge.spool import Spool

CODEC = AvroCodec()


def _events(n: int) -> list[LoginEvent]:
    normalizer = Normalizer()
    query = {"ip": "192.0.2.9", "login_method": "password", "protocol": "FTP", "status": "0"}
    return [normalizer.sftpgo(query, {"username": f"u{i}"}) for i in range(n)]


def _spool(path: Path, **limits: int) -> Spool:
    return Spool(
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

    async def send(self, event: LoginEvent) -> None:
        await self.gate.wait()
        await super().send(event)


def test_events_survive_a_reopen_in_arrival_order(tmp_path: Path) -> None:
    events = _events(5)

    async def scenario() -> list[str]:
        spool = _spool(tmp_path)
        await spool.open()
        await asyncio.gather(*(spool.put(e) for e in events))
        await spool.close()
        again = _spool(tmp_path)
        await again.open()
        assert again.depth == 5
        head = await again.head(10)
        await again.close()
        return [item.event.event_id for item in head]

    assert asyncio.run(scenario()) == [e.event_id for e in events]


def test_the_spool_file_is_sqlite_in_wal_mode_with_full_sync(tmp_path: Path) -> None:
    async def scenario() -> None:
        spool = _spool(tmp_path)
        await spool.open()
        await spool.put(_events(1)[0])
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
            await spool.put(event)
        with pytest.raises(Overloaded):
            await spool.put(_events(1)[0])
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
        assert await pipeline.replay_once()
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


def test_replay_keeps_events_while_the_sink_still_fails(tmp_path: Path) -> None:
    async def scenario() -> None:
        sink, spool = MemorySink(), _spool(tmp_path)
        await sink.start()
        await spool.open()
        pipeline = Pipeline(sink=sink, metrics=Metrics(), spool=spool)
        sink.fail_with = SinkUnavailable("still down")
        for event in _events(3):
            await pipeline.publish(event)
        assert not await pipeline.replay_once()
        assert spool.depth == 3
        await spool.close()

    asyncio.run(scenario())


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
        assert await pipeline.replay_once()
        assert spool.depth == 0
        await spool.close()

    asyncio.run(scenario())
    with sqlite3.connect(tmp_path / "spool.sqlite3") as db:
        assert db.execute("SELECT reason FROM dead_letters").fetchall() == [("record too large",)]
    assert metrics.registry.get_sample_value("login_audit_spool_dead_letters_total") == 1


def test_without_a_spool_a_failing_sink_is_an_error_for_the_caller() -> None:
    async def scenario() -> None:
        sink = MemorySink()
        await sink.start()
        sink.fail_with = SinkUnavailable("down")
        with pytest.raises(SinkUnavailable):
            await Pipeline(sink=sink, metrics=Metrics()).publish(_events(1)[0])

    asyncio.run(scenario())
