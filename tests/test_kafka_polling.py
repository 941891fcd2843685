"""When the Kafka sink serves librdkafka's delivery reports (bridge.sinks.kafka._Client).

The reports wait in librdkafka's queue until ``poll()`` runs them on the loop. The producer here
only counts those calls: what is under test is the schedule, not Kafka (the broker tests send
through a real one).
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from confluent_kafka import Producer

from bridge.sinks.kafka import BUSY_POLL_SECONDS, _Client


class CountingProducer:
    def __init__(self) -> None:
        self.polls = 0
        self.in_flight = 1

    def poll(self, timeout: float) -> int:
        assert timeout == 0  # never blocks the loop
        self.polls += 1
        return 0

    def flush(self, timeout: float) -> int:
        return 0

    def __len__(self) -> int:
        return self.in_flight


def _client(producer: CountingProducer) -> _Client:
    def on_fatal(generation: int, err: Any) -> None:
        raise AssertionError(f"no fatal error here: {err}")

    return _Client(cast(Producer, producer), 1, on_fatal, asyncio.get_running_loop())


def test_each_produced_batch_serves_the_queued_reports_without_waiting_for_the_timer() -> None:
    async def scenario() -> tuple[int, int, int]:
        producer = CountingProducer()
        client = _client(producer)
        client.kick()  # a batch went out
        at_once = producer.polls
        client.kick()  # the next turn's batch, the short timer not due yet
        next_batch = producer.polls
        await asyncio.sleep(BUSY_POLL_SECONDS * 5)  # the timer polls while messages are out
        await client.close(1.0)
        return at_once, next_batch, producer.polls

    at_once, next_batch, later = asyncio.run(scenario())
    assert (at_once, next_batch) == (1, 2)
    assert later > next_batch


def test_a_closed_client_leaves_the_last_reports_to_its_flush() -> None:
    async def scenario() -> int:
        producer = CountingProducer()
        client = _client(producer)
        await client.close(1.0)
        client.kick()  # a batch produced while the sink closes
        return producer.polls

    assert asyncio.run(scenario()) == 0
