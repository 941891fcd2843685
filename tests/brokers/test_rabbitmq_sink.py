"""The RabbitMQ sink against a real broker: routing keys, message properties, refusals."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aio_pika
import aiormq.exceptions
import pytest
from yarl import URL

from bridge.codec import CONTENT_TYPE, AvroCodec, SingleObjectEncoder
from bridge.consume import RabbitMQReader, tail_broker
from bridge.errors import SinkUnavailable
from bridge.event import LoginEvent
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.settings import Settings
from bridge.sinks.rabbitmq import RabbitMQSink

from conftest import encoded
from support import free_port

pytestmark = [pytest.mark.rabbitmq]

WAIT_SECONDS = 10.0


def rabbitmq_settings(url: str, exchange: str, **overrides: Any) -> Settings:
    return Settings(sink="rabbitmq", rabbitmq_url=url, rabbitmq_exchange=exchange, **overrides)


def rabbitmq_sink(settings: Settings, metrics: Metrics, codec: AvroCodec) -> RabbitMQSink:
    return RabbitMQSink.from_settings(settings, encoder=SingleObjectEncoder(codec), metrics=metrics)


def test_each_message_is_persistent_and_routed_by_status_source_and_protocol(
    rabbitmq_url: str,
    rabbitmq_names: str,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
    decoded: Callable[[dict[str, Any]], dict[str, Any]],
) -> None:
    async def scenario() -> None:
        settings = rabbitmq_settings(rabbitmq_url, rabbitmq_names)
        events = make_events(6)  # no_auth_tried over SSH, SFTPGo FTP/DAV/HTTP/SSH, one MediaWiki
        async with (
            rabbitmq_sink(settings, metrics, codec) as sink,
            RabbitMQReader(settings) as reader,
        ):
            for event in events:
                await sink.send(encoded(event))
            found = [m async for m in reader.events(limit=len(events), idle_timeout=WAIT_SECONDS)]

        assert [m.routing_key for m in found] == [
            "failure.sftpgo.ssh",
            "success.sftpgo.ftp",
            "success.sftpgo.dav",
            "failure.sftpgo.http",
            "success.sftpgo.ssh",
            "success.mediawiki.mediawiki",
        ]
        for message, event in zip(found, events, strict=True):
            assert message.message_id == event.event_id
            assert message.content_type == CONTENT_TYPE
            assert message.persistent is True
            assert message.headers == {
                "source": event.source,
                "schema": f"CRC-64-AVRO:{codec.fingerprint_hex}",
                "event-status": event.status,
            }
            assert message.record == decoded(event.record)

    asyncio.run(scenario())


def test_an_unroutable_event_fails_as_unavailable_so_it_is_spooled_and_counted(
    rabbitmq_url: str,
    rabbitmq_names: str,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    """No queue is bound to the exchange: the broker returns the mandatory message."""

    async def scenario() -> None:
        settings = rabbitmq_settings(rabbitmq_url, rabbitmq_names, rabbitmq_declare_queues=False)
        async with rabbitmq_sink(settings, metrics, codec) as sink:
            with pytest.raises(SinkUnavailable, match=r"unroutable.*NO_ROUTE") as caught:
                await sink.send(encoded(make_events(1)[0]))
            assert sink.ready()  # a returned message does not break the channel

        assert isinstance(caught.value.__cause__, aiormq.exceptions.PublishError)
        assert (
            metrics.registry.get_sample_value(
                "login_audit_publish_errors_total", {"sink": "rabbitmq", "reason": "unroutable"}
            )
            == 1
        )

    asyncio.run(scenario())


def test_sends_of_one_unroutable_event_in_flight_together_all_fail(
    rabbitmq_url: str,
    rabbitmq_names: str,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    """aiormq matches a returned message to its publish by message_id (the event id): with the
    same event in flight twice (a replay while the first send waits), a return must not be
    taken by the other send and leave the returned one looking confirmed."""

    async def scenario() -> None:
        settings = rabbitmq_settings(rabbitmq_url, rabbitmq_names, rabbitmq_declare_queues=False)
        event = make_events(1)[0]
        async with rabbitmq_sink(settings, metrics, codec) as sink:
            results = await asyncio.gather(
                *(sink.send(encoded(event)) for _ in range(20)), return_exceptions=True
            )

        assert [type(r).__name__ for r in results] == ["SinkUnavailable"] * 20
        assert all("NO_ROUTE" in str(r) for r in results)

    asyncio.run(scenario())


def test_sends_of_one_event_in_flight_together_publish_it_once(
    rabbitmq_url: str,
    rabbitmq_names: str,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    """A send that finds the same event unconfirmed waits for that publish and shares its
    confirmation: the event is durable once, not queued twice."""

    async def scenario() -> None:
        settings = rabbitmq_settings(
            rabbitmq_url,
            rabbitmq_names,
            rabbitmq_declare_queues=True,
            rabbitmq_queue_success=f"{rabbitmq_names}.success",
            rabbitmq_queue_failure=f"{rabbitmq_names}.failure",
        )
        event = make_events(1)[0]  # a failure
        async with rabbitmq_sink(settings, metrics, codec) as sink:
            await asyncio.gather(*(sink.send(encoded(event)) for _ in range(5)))

        connection = await aio_pika.connect(rabbitmq_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue(f"{rabbitmq_names}.failure", passive=True)
            assert queue.declaration_result.message_count == 1

    asyncio.run(scenario())


def test_a_dotted_protocol_is_routed_as_one_word(
    rabbitmq_url: str, rabbitmq_names: str, metrics: Metrics, codec: AvroCodec
) -> None:
    """A consumer bound to ``failure.sftpgo.*`` sees an event whose protocol holds a dot."""

    async def scenario() -> None:
        settings = rabbitmq_settings(rabbitmq_url, rabbitmq_names)
        query = {"ip": "192.0.2.9", "login_method": "password", "protocol": "SSH.v2", "status": "0"}
        event = Normalizer(sftpgo_user_fields=("username",)).sftpgo(query, {"username": "bob"})
        async with (
            rabbitmq_sink(settings, metrics, codec) as sink,
            RabbitMQReader(settings, binding_key="failure.sftpgo.*") as reader,
        ):
            await sink.send(encoded(event))
            found = [m async for m in reader.events(limit=1, idle_timeout=WAIT_SECONDS)]
        assert [m.routing_key for m in found] == ["failure.sftpgo.ssh_v2"]

    asyncio.run(scenario())


def test_declared_queues_take_only_their_status(
    rabbitmq_url: str,
    rabbitmq_names: str,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    async def scenario() -> None:
        settings = rabbitmq_settings(
            rabbitmq_url,
            rabbitmq_names,
            rabbitmq_declare_queues=True,
            rabbitmq_queue_success=f"{rabbitmq_names}.success",
            rabbitmq_queue_failure=f"{rabbitmq_names}.failure",
        )
        events = make_events(7)
        async with rabbitmq_sink(settings, metrics, codec) as sink:
            await asyncio.gather(*(sink.send(encoded(e)) for e in events))

        connection = await aio_pika.connect(rabbitmq_url)
        async with connection:
            channel = await connection.channel()
            counts = {}
            for status in ("success", "failure"):
                queue = await channel.declare_queue(f"{rabbitmq_names}.{status}", passive=True)
                counts[status] = queue.declaration_result.message_count
        assert counts == {"success": 4, "failure": 3}

    asyncio.run(scenario())


def test_a_temporary_reader_sees_only_its_binding_key(
    rabbitmq_url: str,
    rabbitmq_names: str,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    async def scenario() -> None:
        settings = rabbitmq_settings(rabbitmq_url, rabbitmq_names)
        events = make_events(7)
        async with (
            rabbitmq_sink(settings, metrics, codec) as sink,
            RabbitMQReader(settings, binding_key="success.#") as successes,
            RabbitMQReader(settings, binding_key="failure.#") as failures,
        ):
            await asyncio.gather(*(sink.send(encoded(e)) for e in events))
            found = {
                status: [m async for m in reader.events(limit=5, idle_timeout=2.0)]
                for status, reader in (("success", successes), ("failure", failures))
            }
        for status, messages in found.items():
            assert sorted(m.message_id or "" for m in messages) == sorted(
                e.event_id for e in events if e.status == status
            )
        assert (len(found["success"]), len(found["failure"])) == (4, 3)

    asyncio.run(scenario())


def test_a_message_that_does_not_decode_is_yielded_with_the_reason(
    rabbitmq_url: str,
    rabbitmq_names: str,
) -> None:
    async def scenario() -> None:
        settings = rabbitmq_settings(rabbitmq_url, rabbitmq_names)
        async with RabbitMQReader(settings) as reader:
            connection = await aio_pika.connect(rabbitmq_url)
            async with connection:
                channel = await connection.channel()
                exchange = await channel.get_exchange(rabbitmq_names)
                await exchange.publish(aio_pika.Message(b"not avro"), routing_key="failure.x.y")
            found = [m async for m in reader.events(limit=1, idle_timeout=WAIT_SECONDS)]
        assert len(found) == 1
        assert found[0].record is None
        assert found[0].error == "MalformedInput: not Avro single-object encoding (no C3 01 marker)"

    asyncio.run(scenario())


def test_cli_tail_follows_only_the_chosen_status(
    rabbitmq_url: str,
    rabbitmq_names: str,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    async def scenario() -> None:
        settings = rabbitmq_settings(
            rabbitmq_url,
            rabbitmq_names,
            rabbitmq_declare_queues=True,
            rabbitmq_queue_success=f"{rabbitmq_names}.success",
            rabbitmq_queue_failure=f"{rabbitmq_names}.failure",
        )

        def tail_three() -> list[dict[str, Any]]:
            stream = tail_broker(settings, source="rabbitmq", status="failure", follow=True)
            return [record for record, _ in zip(stream, range(3), strict=False)]

        sent: list[LoginEvent] = []
        async with rabbitmq_sink(settings, metrics, codec) as sink:
            # tail binds its temporary queue in its own thread and sees only later events, so
            # events keep coming (each round: successes and failures) until it has three.
            tailing = asyncio.ensure_future(asyncio.to_thread(tail_three))
            async with asyncio.timeout(WAIT_SECONDS):
                while not tailing.done():
                    round_ = make_events(4)  # one failure (no_auth_tried), then user1..user3
                    await asyncio.gather(*(sink.send(encoded(e)) for e in round_))
                    sent.extend(round_)
                    await asyncio.sleep(0.05)
            records = tailing.result()

        failures = {e.event_id for e in sent if e.status == "failure"}
        assert len(records) == 3
        assert {r["metadata"]["uid"] for r in records} <= failures
        assert {r["status"] for r in records} == {"Failure"}

    asyncio.run(scenario())


def test_start_fails_as_unavailable_when_the_broker_is_unreachable(
    metrics: Metrics,
    codec: AvroCodec,
) -> None:
    async def scenario() -> None:
        settings = Settings(
            sink="rabbitmq",
            rabbitmq_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/",
            publish_timeout_seconds=1,
        )
        sink = rabbitmq_sink(settings, metrics, codec)
        with pytest.raises(
            SinkUnavailable, match=r"no connection to amqp://guest:\*\*\*@127.0.0.1"
        ):
            await sink.start()
        assert not sink.ready()

    asyncio.run(scenario())


def test_wrong_credentials_fail_start_as_unavailable_without_retrying(
    rabbitmq_url: str,
    metrics: Metrics,
    codec: AvroCodec,
) -> None:
    async def scenario() -> None:
        wrong = str(URL(rabbitmq_url).with_user("login-audit-nobody").with_password("wrong"))
        sink = rabbitmq_sink(Settings(sink="rabbitmq", rabbitmq_url=wrong), metrics, codec)
        with pytest.raises(SinkUnavailable, match=r"authentication.*ACCESS_REFUSED"):
            await sink.start()

    asyncio.run(scenario())
