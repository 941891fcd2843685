"""RabbitMQ operator mistakes against the real broker, with a user of the test's own.

A permission the bridge's user lacks must hold events in the spool until an operator grants it
(never bury them as dead letters), and a sink that cannot finish starting must close the
connection it opened, however often the service retries.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Callable

import aio_pika
import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.codec import AvroCodec, SingleObjectEncoder
from bridge.consume import RabbitMQReader
from bridge.errors import BridgeError, ConfigError, SinkUnavailable
from bridge.event import LoginEvent
from bridge.metrics import Metrics
from bridge.registry import ConfluentRegistryEncoder, RegistryClient
from bridge.settings import Settings
from bridge.sinks.rabbitmq import RabbitMQSink

from .conftest import RabbitMQUser
from conftest import BridgeProcess, encoded, post, print_fault_row
from support import free_port, wait_for

pytestmark = [pytest.mark.rabbitmq]

WAIT_SECONDS = 60.0
EVENTS = 3


def scrape(bridge: BridgeProcess) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    with urllib.request.urlopen(f"{bridge.url}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(bridge: BridgeProcess, name: str, **labels: str) -> float:
    return scrape(bridge).get((name, frozenset(labels.items())), 0.0)


def publish_errors(bridge: BridgeProcess) -> float:
    return sum(
        v for (name, _), v in scrape(bridge).items() if name == "login_audit_publish_errors_total"
    )


async def declare_exchange_and_queue(url: str, exchange: str, queue: str) -> None:
    """What the operator (here: guest) set up: the exchange and a queue bound to everything."""
    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        declared = await channel.declare_exchange(
            exchange, aio_pika.ExchangeType.TOPIC, durable=True
        )
        bound = await channel.declare_queue(queue, durable=True)
        await bound.bind(declared, routing_key="#")


async def read_queue(url: str, queue: str, count: int) -> list[str]:
    settings = Settings(sink="rabbitmq", rabbitmq_url=url)
    async with RabbitMQReader(settings, queue=queue) as reader:
        return [m.message_id or "" async for m in reader.events(limit=count, idle_timeout=5.0)]


@pytest.mark.slow
def test_a_missing_write_permission_keeps_events_spooled_until_it_is_granted(
    rabbitmq_url: str,
    rabbitmq_names: str,
    rabbitmq_user: RabbitMQUser,
    bridge_factory: Callable[..., BridgeProcess],
    capsys: pytest.CaptureFixture[str],
) -> None:
    async def scenario() -> None:
        queue = f"{rabbitmq_names}.failure"
        await declare_exchange_and_queue(rabbitmq_url, rabbitmq_names, queue)
        exchange_only = f"^{rabbitmq_names}$"
        rabbitmq_user.permit(configure=exchange_only, write="^$", read="^$")  # cannot publish
        bridge = bridge_factory(
            sink="rabbitmq",
            rabbitmq_url=rabbitmq_user.url,
            rabbitmq_exchange=rabbitmq_names,
            auth_tokens="test-token",
            publish_timeout_seconds="5",
        )
        acknowledged = []
        for number in range(EVENTS):
            query = f"ip=192.0.2.{number + 1}&login_method=password&protocol=SSH&status=0"
            body = json.dumps({"username": f"denied{number}"}).encode()
            status, answer, _ = await asyncio.to_thread(
                post, f"{bridge.url}/v1/hooks/sftpgo?{query}", body
            )
            assert status == 200, answer
            acknowledged.append(answer)

        # Each event failed at least once, and a replay failed after that: nothing was buried.
        await asyncio.to_thread(
            wait_for,
            lambda: (
                publish_errors(bridge) > EVENTS
                or value(bridge, "login_audit_spool_dead_letters_total") > 0
            ),
            timeout=WAIT_SECONDS,
            what="a replay that failed",
        )
        assert (
            value(
                bridge, "login_audit_publish_errors_total", sink="rabbitmq", reason="unauthorized"
            )
            >= 1
        )
        assert value(bridge, "login_audit_spool_dead_letters_total") == 0
        assert value(bridge, "login_audit_spool_events", spool="bridge") == EVENTS
        assert "ACCESS_REFUSED" in bridge.logs()

        rabbitmq_user.permit(configure=exchange_only, write=exchange_only, read="^$")
        await asyncio.to_thread(
            wait_for,
            lambda: value(bridge, "login_audit_spool_events", spool="bridge") == 0,
            timeout=WAIT_SECONDS,
            what="the spool drained after the grant",
        )
        delivered = await read_queue(rabbitmq_url, queue, EVENTS)

        assert value(bridge, "login_audit_spool_dead_letters_total") == 0
        assert len(set(delivered)) == EVENTS
        print_fault_row(
            "rabbitmq write permission missing, then granted",
            sent=EVENTS,
            acknowledged=len(acknowledged),
            delivered=len(set(delivered)),
            lost=EVENTS - len(set(delivered)),
            duplicated=len(delivered) - len(set(delivered)),
            capsys=capsys,
        )

    asyncio.run(scenario())


def test_a_channel_left_closed_by_refusals_is_replaced_once_permissions_return(
    rabbitmq_url: str,
    rabbitmq_names: str,
    rabbitmq_user: RabbitMQUser,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    """A refused publish closes the channel; aio-pika reopens it and declares the exchange
    again, and when that is refused too (the user lost its configure permission as well, or a
    second refused publish slipped into the reopening) it gives up, with the connection still
    up: nothing would reopen the channel, and every send failed for good."""

    async def scenario() -> None:
        queue = f"{rabbitmq_names}.failure"
        await declare_exchange_and_queue(rabbitmq_url, rabbitmq_names, queue)
        exchange_only = f"^{rabbitmq_names}$"
        rabbitmq_user.permit(configure=exchange_only, write="^$", read="^$")  # may not publish
        settings = Settings(
            sink="rabbitmq",
            rabbitmq_url=rabbitmq_user.url,
            rabbitmq_exchange=rabbitmq_names,
            publish_timeout_seconds=2,
        )
        sink = RabbitMQSink.from_settings(
            settings, encoder=SingleObjectEncoder(codec), metrics=metrics
        )
        events = make_events(4)
        async with sink:
            rabbitmq_user.permit(configure="^$", write="^$", read="^$")  # nor declare, now
            refused = await asyncio.gather(
                *(sink.send(encoded(e)) for e in events), return_exceptions=True
            )
            assert all(isinstance(r, SinkUnavailable) for r in refused)
            await asyncio.sleep(1.0)  # aio-pika's reopening is refused meanwhile

            rabbitmq_user.permit(configure=exchange_only, write=exchange_only, read="^$")
            for _ in range(20):  # as the replayer does: try again a little later
                outcomes = await asyncio.gather(
                    *(sink.send(encoded(e)) for e in events), return_exceptions=True
                )
                if all(o is None for o in outcomes):
                    break
                await asyncio.sleep(0.5)
            assert [o for o in outcomes if o is not None] == []
            # The connection given up on is closed, not left behind.
            assert await asyncio.to_thread(rabbitmq_user.connections_once_settled, 1) == 1
        assert len(set(await read_queue(rabbitmq_url, queue, 4))) == 4

    asyncio.run(scenario())


@pytest.mark.registry
@pytest.mark.parametrize("registry", ["down", "wrong-path"])
def test_a_sink_that_fails_to_prepare_closes_its_connection_every_time(
    rabbitmq_names: str,
    rabbitmq_user: RabbitMQUser,
    schema_registry_url: str,
    metrics: Metrics,
    codec: AvroCodec,
    registry: str,
) -> None:
    """The service retries start() while the registry is down (or refuses): 3 tries, 0 leaks."""

    async def scenario() -> None:
        rabbitmq_user.permit()
        url = {
            "down": f"http://127.0.0.1:{free_port()}/apis/ccompat/v7",
            "wrong-path": schema_registry_url.split("/apis/")[0],  # 404: a ConfigError
        }[registry]
        settings = Settings(
            sink="rabbitmq",
            rabbitmq_url=rabbitmq_user.url,
            rabbitmq_exchange=rabbitmq_names,
            publish_timeout_seconds=5,
        )
        encoder = ConfluentRegistryEncoder(codec, RegistryClient(url, timeout=2))
        sink = RabbitMQSink.from_settings(settings, encoder=encoder, metrics=metrics)

        expected = {"down": SinkUnavailable, "wrong-path": ConfigError}[registry]
        for _ in range(3):
            with pytest.raises(BridgeError, match="schema registry") as caught:
                await sink.start()
            assert type(caught.value) is expected  # a ConfigError stays one: the operator must act

        assert await asyncio.to_thread(rabbitmq_user.connections_once_settled, 0) == 0
        assert not sink.ready()

    asyncio.run(scenario())
