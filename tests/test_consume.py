"""KafkaReader's own life cycle, apart from any broker (tests/brokers reads real topics)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from bridge.consume import KafkaReader
from bridge.settings import Settings


class _Consumer:
    def __init__(self) -> None:
        self.closed = False

    def close(self) -> None:
        self.closed = True


def test_a_reader_cancelled_while_its_consumer_is_made_closes_that_consumer() -> None:
    """Ctrl-C during the thread that makes the consumer: the thread goes on and makes it, and
    the reader closes it before the cancellation goes on, instead of leaving it open."""
    reader = KafkaReader(Settings(sink="kafka"))
    entered, release = threading.Event(), threading.Event()
    made = _Consumer()

    def new_consumer() -> _Consumer:
        entered.set()
        release.wait(10)
        return made

    reader._new_consumer = new_consumer  # type: ignore[assignment,method-assign]

    async def scenario() -> None:
        opening = asyncio.ensure_future(reader.__aenter__())
        assert await asyncio.to_thread(entered.wait, 10)
        opening.cancel()
        await asyncio.sleep(0)  # the cancellation reaches the wait before the consumer exists
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await opening

    asyncio.run(scenario())
    assert made.closed
