"""The file sink: Avro container files per status, fsync'd, rotated, readable by any Avro reader."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path
from typing import Any, cast

import fastavro
import pytest
from fastavro.write import Writer

from bridge.codec import AvroCodec
from bridge.errors import SinkUnavailable
from bridge.event import LoginEvent
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.sinks.file import BLOCK_BYTES, FileSink, _write_blocks, event_files, read_events

from conftest import encoded, mediawiki_events, sftpgo_events

CODEC = AvroCodec()


def _events(n: int, *, offset: int = 0) -> list[LoginEvent]:
    normalizer = Normalizer()
    return [
        normalizer.sftpgo(
            {
                "ip": "192.0.2.1",
                "login_method": "password",
                "protocol": "SSH",
                "status": str(i % 2),
            },
            {"username": f"user{i}"},
        )
        for i in range(offset, offset + n)
    ]


async def _write(directory: Path, events: list[LoginEvent], *, retain_seconds: float = 0) -> None:
    async with FileSink(directory, CODEC, retain_seconds=retain_seconds) as sink:
        await asyncio.gather(*(sink.send(encoded(e)) for e in events))


def test_events_are_split_by_status_into_plain_avro_files(tmp_path: Path) -> None:
    events = _events(10)
    asyncio.run(_write(tmp_path, events))
    (success_file,) = event_files(tmp_path, "success")
    with success_file.open("rb") as handle:
        # fastavro types a record as any Avro value; these files hold records of our schema.
        names = [cast("dict[str, Any]", r)["user"]["name"] for r in fastavro.reader(handle)]
    assert names == [f"user{i}" for i in range(1, 10, 2)]
    assert [r["status"] for r in read_events(tmp_path, "failure")] == ["Failure"] * 5


def test_every_concurrent_send_is_on_disk_when_it_returns(tmp_path: Path) -> None:
    events = _events(500)

    async def scenario() -> None:
        sink = FileSink(tmp_path, CODEC)
        await sink.start()
        await asyncio.gather(*(sink.send(encoded(e)) for e in events))
        # Read while the sink is still open: what send() acknowledged must already be there.
        on_disk = {r["metadata"]["uid"] for r in read_events(tmp_path)}
        assert on_disk == {e.event_id for e in events}
        await sink.stop()

    asyncio.run(scenario())


def test_files_rotate_by_size(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with FileSink(tmp_path, CODEC, rotate_bytes=65536) as sink:
            for event in _events(400):
                await sink.send(encoded(event))

    asyncio.run(scenario())
    assert len(event_files(tmp_path)) > 2
    assert len(list(read_events(tmp_path))) == 400


def test_files_rotate_by_age(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with FileSink(tmp_path, CODEC, rotate_seconds=0.05) as sink:
            for event in _events(4):
                await sink.send(encoded(event))
                await asyncio.sleep(0.1)

    asyncio.run(scenario())
    assert len(event_files(tmp_path)) == 4


def test_a_restart_starts_new_files_and_keeps_the_old_ones(tmp_path: Path) -> None:
    asyncio.run(_write(tmp_path, _events(3)))
    asyncio.run(_write(tmp_path, _events(3)))
    assert len(list(read_events(tmp_path))) == 6


def test_a_torn_last_block_stops_reading_without_losing_earlier_events(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with FileSink(tmp_path, CODEC) as sink:
            for event in _events(6):
                await sink.send(encoded(event))

    asyncio.run(scenario())
    for path in event_files(tmp_path):
        data = path.read_bytes()
        path.write_bytes(data[:-30])  # a crash in the middle of the last block
    assert len(list(read_events(tmp_path))) == 4


def test_send_after_stop_is_refused_as_unavailable(tmp_path: Path) -> None:
    async def scenario() -> None:
        sink = FileSink(tmp_path, CODEC)
        await sink.start()
        await sink.stop()
        with pytest.raises(SinkUnavailable):
            await sink.send(encoded(_events(1)[0]))

    asyncio.run(scenario())


def test_unwritable_directory_is_refused_at_start(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")

    async def scenario() -> None:
        with pytest.raises(SinkUnavailable, match="cannot create"):
            await FileSink(blocker / "events", CODEC).start()

    asyncio.run(scenario())


def test_retention_deletes_the_oldest_closed_files_past_the_size_limit(tmp_path: Path) -> None:
    metrics = Metrics()

    async def scenario() -> None:
        sink = FileSink(tmp_path, CODEC, rotate_bytes=65536, retain_bytes=200_000, metrics=metrics)
        async with sink:
            for batch in range(40):  # one fsync'd block per batch; rotation past 64 KiB
                await asyncio.gather(
                    *(sink.send(encoded(e)) for e in _events(40, offset=batch * 40))
                )

    asyncio.run(scenario())
    files = event_files(tmp_path)
    # Each file is rotated just past 64 KiB, so the limit leaves at most 3 full ones plus the
    # newest, and the newest events are the ones kept.
    assert sum(p.stat().st_size for p in files) <= 200_000 + 2 * 70_000
    deleted = metrics.registry.get_sample_value(
        "login_audit_file_sink_files_deleted_total", {"reason": "size"}
    )
    assert deleted is not None and deleted >= 5
    names = [r["user"]["name"] for r in read_events(tmp_path)]
    assert f"user{40 * 40 - 1}" in names and "user0" not in names


def test_retention_deletes_closed_files_older_than_the_age_limit(tmp_path: Path) -> None:
    old = tmp_path / "success" / "login-audit-success-20200101T000000000000Z.avro"
    old.parent.mkdir(parents=True)
    asyncio.run(_write(tmp_path, _events(4)))
    (kept,) = event_files(tmp_path, "success")
    old.write_bytes(kept.read_bytes())
    os.utime(old, (0, 0))

    asyncio.run(_write(tmp_path, _events(2), retain_seconds=3600))
    assert not old.exists()
    assert kept.exists()


def _every_source_event() -> list[LoginEvent]:
    normalizer = Normalizer()
    return sftpgo_events(normalizer) + mediawiki_events(normalizer) + _events(40)


@pytest.mark.parametrize("block_bytes", [BLOCK_BYTES, 2000])
def test_blocks_of_encoded_bodies_are_the_bytes_fastavro_writes_for_the_records(
    block_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The sink writes the bodies bridge.encode made (Writer.write_block) instead of encoding
    # each record again (Writer.write): the files must not differ by a byte, blocks included.
    monkeypatch.setattr("bridge.sinks.file.BLOCK_BYTES", block_bytes)
    events = _every_source_event()
    marker = os.urandom(16)
    by_records, by_bodies = io.BytesIO(), io.BytesIO()
    records = Writer(by_records, CODEC.parsed, sync_interval=block_bytes, sync_marker=marker)
    for event in events:
        records.write(event.record)
    records.flush()
    bodies = Writer(by_bodies, CODEC.parsed, sync_interval=block_bytes, sync_marker=marker)
    _write_blocks(bodies, [encoded(e).datum for e in events])
    bodies.flush()
    assert by_bodies.getvalue() == by_records.getvalue()
    by_bodies.seek(0)
    blocks = list(fastavro.block_reader(by_bodies))
    assert len(blocks) > (1 if block_bytes < BLOCK_BYTES else 0)
    assert sum(block.num_records for block in blocks) == len(events)
