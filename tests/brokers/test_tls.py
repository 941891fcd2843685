"""The Kafka and RabbitMQ sinks and readers through the brokers' TLS listeners.

The test brokers (scripts/brokers) listen for TLS beside their plain ports, with a certificate of
a CA made for their run directory, and each requires a client certificate of that CA. A bridge
given that CA and a client certificate publishes and reads back. A certificate check that fails
on either side ends the sink's start (and a reader's) as soon as the handshake says so, naming
the certificate, instead of waiting out the publish timeout as "no answer".
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aio_pika
import pytest
import trustme
from yarl import URL

from bridge.codec import AvroCodec
from bridge.consume import KafkaReader, RabbitMQReader
from bridge.errors import SinkUnavailable
from bridge.event import LoginEvent
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.sinks.base import Sink
from bridge.sinks.kafka import client_config

from .conftest import KafkaTopics, rabbitmqctl, require_broker
from .test_kafka_sink import eventually, kafka_settings, kafka_sink, publish_and_read_back, read_all
from .test_rabbitmq_sink import rabbitmq_settings, rabbitmq_sink
from conftest import encoded
from support import SecretVolume, skip_or_fail, tls_secret

# Read at import: the suite's autouse fixture scrubs BRIDGE_* before each test.
KAFKA_SSL_BOOTSTRAP = os.environ.get("BRIDGE_TEST_KAFKA_SSL_BOOTSTRAP", "127.0.0.1:19095")
RABBITMQ_TLS_URL = os.environ.get(
    "BRIDGE_TEST_RABBITMQ_TLS_URL", "amqps://guest:guest@127.0.0.1:5674/"
)
TLS_DIR = os.environ.get("BRIDGE_TEST_TLS_DIR")
# Far longer than a refused start may take: a start that waits for it has not noticed.
PUBLISH_TIMEOUT = 60.0
NOTICED_WITHIN = 20.0


@dataclass(frozen=True)
class ClientFiles:
    """A CA bundle to check the broker with, and the client's certificate and key."""

    ca: Path
    certificate: Path
    key: Path


@pytest.fixture(scope="session")
def brokers_tls() -> ClientFiles:
    """The CA of the test brokers' TLS listeners and a client certificate it signed."""
    if TLS_DIR is None:
        skip_or_fail(
            "BRIDGE_TEST_TLS_DIR is not set: run scripts/brokers start, then "
            'eval "$(scripts/brokers env)"'
        )
    folder = Path(str(TLS_DIR))
    files = ClientFiles(folder / "ca.pem", folder / "client.pem", folder / "client.key")
    missing = [str(p) for p in (files.ca, files.certificate, files.key) if not p.is_file()]
    if missing:
        skip_or_fail(f"the test brokers' TLS files are missing: {', '.join(missing)}")
    return files


@pytest.fixture
def strangers(tmp_path: Path) -> ClientFiles:
    """A CA the brokers never heard of, and a client certificate it signed for 127.0.0.1."""
    ca = trustme.CA()
    issued = ca.issue_cert("127.0.0.1", "localhost")
    files = ClientFiles(tmp_path / "ca.pem", tmp_path / "client.pem", tmp_path / "client.key")
    ca.cert_pem.write_to_path(str(files.ca))
    issued.cert_chain_pems[0].write_to_path(str(files.certificate))
    issued.private_key_pem.write_to_path(str(files.key))
    return files


@pytest.fixture
def brokers_ca(brokers_tls: ClientFiles) -> trustme.CA:
    """The test brokers' CA, to issue client certificates they accept."""
    key = brokers_tls.ca.parent / "ca.key"
    return trustme.CA.from_pem(brokers_tls.ca.read_bytes(), key.read_bytes())


@pytest.fixture
def expired(brokers_tls: ClientFiles, brokers_ca: trustme.CA, tmp_path: Path) -> ClientFiles:
    """A client certificate of the brokers' own CA that expired yesterday."""
    now = datetime.now(UTC)
    issued = brokers_ca.issue_cert(
        "bridge-client", not_before=now - timedelta(days=30), not_after=now - timedelta(days=1)
    )
    files = ClientFiles(brokers_tls.ca, tmp_path / "expired.pem", tmp_path / "expired.key")
    issued.cert_chain_pems[0].write_to_path(str(files.certificate))
    issued.private_key_pem.write_to_path(str(files.key))
    return files


@pytest.fixture(scope="session")
def kafka_ssl_bootstrap(kafka_bootstrap: str) -> str:
    host, _, port = KAFKA_SSL_BOOTSTRAP.split(",")[0].rpartition(":")
    require_broker("Kafka's SSL listener", host, int(port))
    return KAFKA_SSL_BOOTSTRAP


@pytest.fixture(scope="session")
def rabbitmq_tls_url(rabbitmq_url: str) -> str:
    url = URL(RABBITMQ_TLS_URL)
    require_broker("RabbitMQ's TLS listener", url.host or "127.0.0.1", url.port or 5671)
    return RABBITMQ_TLS_URL


def kafka_tls_settings(
    bootstrap: str, topics: KafkaTopics, ca: Path, client: ClientFiles, **overrides: Any
) -> Settings:
    return kafka_settings(
        bootstrap,
        topics,
        kafka_security_protocol="SSL",
        kafka_ssl_ca_location=ca,
        kafka_ssl_certificate_location=client.certificate,
        kafka_ssl_key_location=client.key,
        **overrides,
    )


def rabbitmq_tls_settings(
    url: str, exchange: str, ca: Path, client: ClientFiles, **overrides: Any
) -> Settings:
    return rabbitmq_settings(
        url,
        exchange,
        rabbitmq_ssl_ca_file=ca,
        rabbitmq_ssl_certfile=client.certificate,
        rabbitmq_ssl_keyfile=client.key,
        **overrides,
    )


# Which side meets a stranger's certificate. Each ends the wait at once, naming the certificate
# and what OpenSSL said.
DISTRUSTED_BROKER = "the-bridge-does-not-trust-the-brokers-certificate"
REFUSED_CLIENT = "the-broker-refuses-the-bridges-client-certificate"
EXPIRED_CLIENT = "the-broker-refuses-the-bridges-expired-client-certificate"


def mismatched(
    side: str, ours: ClientFiles, strangers: ClientFiles, expired: ClientFiles | None = None
) -> tuple[Path, ClientFiles]:
    """The CA the bridge checks the broker with, and the client certificate it shows."""
    if side == DISTRUSTED_BROKER:
        return strangers.ca, ours
    if side == EXPIRED_CLIENT:
        assert expired is not None
        return ours.ca, expired
    return ours.ca, strangers


@dataclass(frozen=True)
class TlsBroker:
    """One broker's TLS listener as the refusal tests meet it, and what each says."""

    name: str  # the sink's, as its log lines and the renewals metric name it
    settings: Callable[..., Settings]  # (ca, client, **overrides), on the test's own names
    sink: Callable[[Settings, Metrics, AvroCodec], Sink]
    reader: Callable[[Settings], Any]  # an async context manager: tail's reader
    refused: str  # how a failed certificate check starts the sink's error
    reader_refused: str  # and the reader's
    openssl_says: dict[str, str]  # by side: what OpenSSL's reason, quoted, says
    reader_detail: str  # the reader's error's detail when it does not trust the broker
    secret: str | None  # the user and password in the broker's URL: never in an error
    # Settings under which every event sent has somewhere to go without a reader (RabbitMQ's
    # mandatory publish needs a bound queue).
    routed: dict[str, Any]


@pytest.fixture(
    params=[
        pytest.param("kafka", marks=pytest.mark.kafka),
        pytest.param("rabbitmq", marks=pytest.mark.rabbitmq),
    ]
)
def tls_broker(request: pytest.FixtureRequest) -> TlsBroker:
    """Each broker in turn; only that broker's fixtures are asked for."""
    if request.param == "kafka":
        bootstrap: str = request.getfixturevalue("kafka_ssl_bootstrap")
        topics: KafkaTopics = request.getfixturevalue("kafka_topics")
        return TlsBroker(
            name="kafka",
            settings=lambda ca, client, **more: kafka_tls_settings(
                bootstrap, topics, ca, client, **more
            ),
            sink=kafka_sink,
            reader=KafkaReader,
            refused=f"kafka: TLS with {bootstrap} failed its certificate check: ",
            reader_refused="kafka: _SSL: ",
            openssl_says={
                DISTRUSTED_BROKER: "certificate verify failed",
                REFUSED_CLIENT: "alert bad certificate",
                # Java answers a client certificate it cannot validate with alert 46, whatever
                # the reason.
                EXPIRED_CLIENT: "alert certificate unknown",
            },
            reader_detail="_SSL",
            secret=None,
            routed={},
        )
    url: str = request.getfixturevalue("rabbitmq_tls_url")
    exchange: str = request.getfixturevalue("rabbitmq_names")
    return TlsBroker(
        name="rabbitmq",
        settings=lambda ca, client, **more: rabbitmq_tls_settings(
            url, exchange, ca, client, **more
        ),
        sink=rabbitmq_sink,
        reader=RabbitMQReader,
        refused="rabbitmq: certificate: ",
        reader_refused="rabbitmq: certificate: ",
        openssl_says={
            DISTRUSTED_BROKER: "certificate verify failed",
            REFUSED_CLIENT: "alert unknown ca",
            EXPIRED_CLIENT: "alert certificate expired",
        },
        reader_detail="AMQPConnectionError",
        secret=f"{URL(url).user}:{URL(url).password}",
        routed={
            "rabbitmq_declare_queues": True,
            "rabbitmq_queue_success": f"{exchange}.success",
            "rabbitmq_queue_failure": f"{exchange}.failure",
        },
    )


def refusal(opening: Callable[[], Awaitable[Any]]) -> SinkUnavailable:
    """The SinkUnavailable that ``opening()`` (a sink's start, a reader's entry) raises within
    NOTICED_WITHIN seconds, far sooner than the publish timeout it was given."""

    async def scenario() -> SinkUnavailable:
        with pytest.raises(SinkUnavailable) as caught:
            await asyncio.wait_for(opening(), NOTICED_WITHIN)
        return caught.value

    return asyncio.run(scenario())


# -- certificates renewed on disk: client files on a Secret volume, swapped as the kubelet does


def client_files(ca: trustme.CA, name: str = "bridge-client") -> dict[str, bytes]:
    return tls_secret(ca.issue_cert("bridge-client", common_name=name))


def files_of(client: ClientFiles) -> dict[str, bytes]:
    return {"tls.crt": client.certificate.read_bytes(), "tls.key": client.key.read_bytes()}


def on_a_volume(root: Path, ca: Path, files: dict[str, bytes]) -> tuple[SecretVolume, ClientFiles]:
    volume = SecretVolume(root, files)
    return volume, ClientFiles(ca, volume / "tls.crt", volume / "tls.key")


def kafka_renewal_settings(bootstrap: str, topics: KafkaTopics, client: ClientFiles) -> Settings:
    # The sink looks at its files with the producer's statistics: both at a test's pace.
    return kafka_tls_settings(
        bootstrap,
        topics,
        client.ca,
        client,
        tls_renewal_check_seconds=0.1,
        kafka_statistics_interval_ms=100,
    )


def renewals(metrics: Metrics, files: str, result: str) -> float:
    labels = {"files": files, "result": result}
    name = "login_audit_tls_certificate_renewals_total"
    return metrics.registry.get_sample_value(name, labels) or 0


# -- both brokers


@pytest.mark.parametrize("side", [DISTRUSTED_BROKER, REFUSED_CLIENT, EXPIRED_CLIENT])
def test_a_failed_certificate_check_ends_the_sinks_start_at_once_naming_it(
    side: str,
    tls_broker: TlsBroker,
    brokers_tls: ClientFiles,
    strangers: ClientFiles,
    expired: ClientFiles,
    metrics: Metrics,
    codec: AvroCodec,
) -> None:
    ca, client = mismatched(side, brokers_tls, strangers, expired)
    settings = tls_broker.settings(ca, client, publish_timeout_seconds=PUBLISH_TIMEOUT)
    sink = tls_broker.sink(settings, metrics, codec)

    error = refusal(sink.start)

    assert str(error).startswith(tls_broker.refused)
    assert tls_broker.openssl_says[side] in str(error)
    if tls_broker.secret is not None:
        assert tls_broker.secret not in str(error)
    assert not sink.ready()


def test_a_tail_that_does_not_trust_the_brokers_certificate_fails_at_once_naming_it(
    tls_broker: TlsBroker, brokers_tls: ClientFiles, strangers: ClientFiles
) -> None:
    ca, client = mismatched(DISTRUSTED_BROKER, brokers_tls, strangers)
    settings = tls_broker.settings(ca, client, publish_timeout_seconds=PUBLISH_TIMEOUT)

    error = refusal(tls_broker.reader(settings).__aenter__)

    assert str(error).startswith(tls_broker.reader_refused)
    assert "certificate verify failed" in str(error)
    assert error.detail == tls_broker.reader_detail


def test_client_files_that_change_and_do_not_load_leave_the_sink_sending_with_those_before(
    tls_broker: TlsBroker,
    brokers_tls: ClientFiles,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    ours = files_of(brokers_tls)
    volume, client = on_a_volume(tmp_path / "tls", brokers_tls.ca, ours)
    # Kafka's sink looks at its files with the producer's statistics: both at a test's pace.
    settings = tls_broker.settings(
        client.ca,
        client,
        tls_renewal_check_seconds=0.1,
        kafka_statistics_interval_ms=100,
        **tls_broker.routed,
    )
    events = make_events(2)

    async def scenario() -> None:
        async with tls_broker.sink(settings, metrics, codec) as sink:
            await sink.send(encoded(events[0]))
            # The certificate renewed, its key not written yet: a pair that does not match.
            volume.update({**ours, "tls.key": client_files(trustme.CA())["tls.key"]})
            await eventually(lambda: renewals(metrics, tls_broker.name, "failed") >= 1)
            await sink.send(encoded(events[1]))  # acknowledged: the files before still serve

    with caplog.at_level(logging.WARNING, logger=f"bridge.sinks.{tls_broker.name}"):
        asyncio.run(scenario())
    assert f"{tls_broker.name}: {client.ca}, {client.certificate}, {client.key} changed but " in (
        caplog.text
    )
    assert "do not load" in caplog.text and "with the files loaded before" in caplog.text


# -- each broker's publish and read back


@pytest.mark.kafka
def test_a_bridge_with_a_client_certificate_publishes_to_kafka_over_tls_and_reads_back(
    kafka_ssl_bootstrap: str,
    kafka_topics: KafkaTopics,
    brokers_tls: ClientFiles,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    settings = kafka_tls_settings(kafka_ssl_bootstrap, kafka_topics, brokers_tls.ca, brokers_tls)
    assert client_config(settings)["security.protocol"] == "ssl"
    events = make_events(4)

    found = publish_and_read_back(settings, metrics, codec, events)

    assert sorted(m.key or "" for m in found) == sorted(e.event_id for e in events)


@pytest.mark.kafka
def test_a_kafka_client_certificate_renewed_on_disk_is_used_by_a_new_producer(
    kafka_ssl_bootstrap: str,
    kafka_topics: KafkaTopics,
    brokers_tls: ClientFiles,
    brokers_ca: trustme.CA,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # librdkafka reads its certificate files only when a producer is made: one made before a
    # renewal shows the old certificate at every reconnect, and once that expires the brokers
    # refuse it. First a stranger's certificate, to see the new producer really use the files,
    # then one of the brokers' CA again.
    volume, client = on_a_volume(tmp_path / "tls", brokers_tls.ca, client_files(brokers_ca))
    settings = kafka_renewal_settings(kafka_ssl_bootstrap, kafka_topics, client)
    events = make_events(2)

    async def scenario() -> None:
        async with kafka_sink(settings, metrics, codec) as sink:
            await sink.send(encoded(events[0]))
            volume.update(client_files(trustme.CA()))
            await eventually(lambda: renewals(metrics, "kafka", "renewed") == 1)
            await eventually(lambda: "a broker connection was refused" in caplog.text)
            volume.update(client_files(brokers_ca))
            await eventually(lambda: renewals(metrics, "kafka", "renewed") == 2)
            await sink.send(encoded(events[1]))

    with caplog.at_level(logging.INFO, logger="bridge.sinks.kafka"):
        asyncio.run(scenario())
    found = asyncio.run(read_all(settings, len(events)))

    assert sorted(m.key or "" for m in found) == sorted(e.event_id for e in events)
    assert (
        f"kafka: {client.ca}, {client.certificate}, {client.key} changed: a new producer"
        in caplog.text
    )


@pytest.mark.rabbitmq
def test_a_rabbitmq_client_certificate_renewed_on_disk_is_shown_when_the_connection_is_remade(
    rabbitmq_tls_url: str,
    rabbitmq_url: str,
    rabbitmq_names: str,
    brokers_tls: ClientFiles,
    brokers_ca: trustme.CA,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
    tmp_path: Path,
) -> None:
    # The broker checks a client certificate in the handshake only: the connection open at a
    # renewal keeps working, but aio-pika's reconnect after the broker closed it would have
    # shown the certificate loaded at start, expired by then. The broker names the certificate
    # of each connection (peer_cert_subject).
    before = client_files(brokers_ca, "bridge-before")
    volume, client = on_a_volume(tmp_path / "tls", brokers_tls.ca, before)
    # Durable queues of the test's own: closing every connection deletes a reader's own queue.
    settings = rabbitmq_tls_settings(
        rabbitmq_tls_url,
        rabbitmq_names,
        brokers_tls.ca,
        client,
        tls_renewal_check_seconds=0.1,
        rabbitmq_declare_queues=True,
        rabbitmq_queue_success=f"{rabbitmq_names}.success",
        rabbitmq_queue_failure=f"{rabbitmq_names}.failure",
    )
    events = make_events(2)

    def shown() -> str:
        return rabbitmqctl("list_connections", "peer_cert_subject")

    async def scenario() -> int:
        async with rabbitmq_sink(settings, metrics, codec) as sink:
            await sink.send(encoded(events[0]))
            assert "CN=bridge-before" in shown()
            volume.update(client_files(brokers_ca, "bridge-after"))
            await eventually(lambda: renewals(metrics, "rabbitmq", "renewed") == 1)
            rabbitmqctl("close_all_connections", "certificate renewal test")
            await eventually(lambda: "CN=bridge-after" in shown())
            await sink.send(encoded(events[1]))  # confirmed by the broker
        async with await aio_pika.connect(rabbitmq_url) as connection:
            channel = await connection.channel()
            counts = [
                (
                    await channel.declare_queue(f"{rabbitmq_names}.{status}", passive=True)
                ).declaration_result.message_count
                for status in ("success", "failure")
            ]
        return sum(c or 0 for c in counts)

    assert asyncio.run(scenario()) == len(events)


@pytest.mark.rabbitmq
def test_a_bridge_with_a_client_certificate_publishes_to_rabbitmq_over_tls_and_reads_back(
    rabbitmq_tls_url: str,
    rabbitmq_names: str,
    brokers_tls: ClientFiles,
    metrics: Metrics,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
) -> None:
    settings = rabbitmq_tls_settings(rabbitmq_tls_url, rabbitmq_names, brokers_tls.ca, brokers_tls)
    events = make_events(4)

    async def scenario() -> None:
        async with (
            rabbitmq_sink(settings, metrics, codec) as sink,
            RabbitMQReader(settings) as reader,
        ):
            for event in events:
                await sink.send(encoded(event))
            found = [m async for m in reader.events(limit=len(events), idle_timeout=10)]
        assert [m.message_id for m in found] == [e.event_id for e in events]

    asyncio.run(scenario())
