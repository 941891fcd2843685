"""An event that cannot be encoded fails alone: its neighbours stay acknowledged and readable."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from bridge.codec import AvroCodec
from bridge.encode import Encoder
from bridge.errors import InputError
from bridge.event import LoginEvent
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline
from bridge.sinks.file import FileSink, read_events

from conftest import print_fault_row

CODEC = AvroCodec()
# Every test here must finish; a future left unresolved shows up as this timeout, not a hang.
NO_HANG_SECONDS = 30


def _events(n: int) -> list[LoginEvent]:
    normalizer = Normalizer()
    query = {"ip": "192.0.2.1", "login_method": "password", "protocol": "SSH", "status": "1"}
    return [normalizer.sftpgo(query, {"username": f"user{i}"}) for i in range(n)]


def _unencodable() -> LoginEvent:
    """The record a hook-spool file with ``received_ms`` 2**70 used to produce: long overflows."""
    (event,) = _events(1)
    event.record["time"] = 2**70
    return event


def test_the_pipeline_refuses_an_unencodable_event_as_bad_input_before_any_sink_sees_it(
    tmp_path: Path,
) -> None:
    async def scenario() -> None:
        async with FileSink(tmp_path, CODEC) as sink:
            pipeline = Pipeline(sink=sink, metrics=Metrics(), encoder=Encoder(CODEC))
            with pytest.raises(InputError, match="cannot be encoded"):
                await pipeline.publish(_unencodable())

    asyncio.run(asyncio.wait_for(scenario(), NO_HANG_SECONDS))
    assert list(read_events(tmp_path)) == []


def test_an_unencodable_event_in_a_batch_fails_alone_and_every_neighbour_is_readable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _events(200)
    later = _events(20)
    bad = _unencodable()

    async def scenario() -> list[BaseException | None]:
        async with FileSink(tmp_path, CODEC) as sink:
            pipeline = Pipeline(sink=sink, metrics=Metrics(), encoder=Encoder(CODEC))
            batch = [*good[:100], bad, *good[100:]]
            results = await asyncio.gather(
                *(pipeline.publish(e) for e in batch), return_exceptions=True
            )
            for event in later:  # after the bad one, one at a time
                await pipeline.publish(event)
        return results

    results = asyncio.run(asyncio.wait_for(scenario(), NO_HANG_SECONDS))
    failed = [r for r in results if r is not None]
    assert len(failed) == 1 and isinstance(failed[0], InputError)
    readable = [r["metadata"]["uid"] for r in read_events(tmp_path)]
    acknowledged = {e.event_id for e in good + later}
    assert set(readable) == acknowledged
    print_fault_row(
        "unencodable event in a batch (file sink)",
        sent=len(good) + len(later) + 1,
        acknowledged=len(acknowledged),
        delivered=len(acknowledged & set(readable)),
        lost=len(acknowledged - set(readable)),
        duplicated=len(readable) - len(set(readable)),
        capsys=capsys,
    )
