"""The Kafka and RabbitMQ sinks and readers through the brokers' TLS listeners.

The test brokers (scripts/brokers) listen for TLS beside their plain ports, with a certificate of
a CA made for their run directory, and each requires a client certificate of that CA. A bridge
given that CA and a client certificate publishes and reads back. A certificate check that fails
on either side ends the sink's start (and a reader's) as soon as the handshake says so, naming
the certificate, instead of waiting out the publish timeout as "no answer".
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trustme
from yarl import URL

from bridge.codec import AvroCodec
from bridge.consume import KafkaReader, RabbitMQReader
from bridge.errors import SinkUnavailable
from bridge.event import LoginEvent
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.sinks.kafka import client_config

from .conftest import KafkaTopics, require_broker
from .test_kafka_sink import kafka_sink
from .test_rabbitmq_sink import rabbitmq_sink
from conftest import encoded
from support import skip_or_fail

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
    return Settings(
        sink="kafka",
        kafka_bootstrap_servers=bootstrap,
        kafka_topic_success=topics.success,
        kafka_topic_failure=topics.failure,
        kafka_security_protocol="SSL",
        kafka_ssl_ca_location=ca,
        kafka_ssl_certificate_location=client.certificate,
        kafka_ssl_key_location=client.key,
        **overrides,
    )


def rabbitmq_tls_settings(
    url: str, exchange: str, ca: Path, client: ClientFiles, **overrides: Any
) -> Settings:
    return Settings(
        sink="rabbitmq",
        rabbitmq_url=url,
        rabbitmq_exchange=exchange,
        rabbitmq_ssl_ca_file=ca,
        rabbitmq_ssl_certfile=client.certificate,
        rabbitmq_ssl_keyfile=client.key,
        **overrides,
    )


# Which side meets a stranger's certificate. Each ends the wait at once, naming the certificate
# and what OpenSSL said.
DISTRUSTED_BROKER = "the-bridge-does-not-trust-the-brokers-certificate"
REFUSED_CLIENT = "the-broker-refuses-the-bridges-client-certificate"


def mismatched(side: str, ours: ClientFiles, strangers: ClientFiles) -> tuple[Path, ClientFiles]:
    """The CA the bridge checks the broker with, and the client certificate it shows."""
    return (strangers.ca, ours) if side == DISTRUSTED_BROKER else (ours.ca, strangers)


def refusal(opening: Callable[[], Awaitable[Any]]) -> SinkUnavailable:
    """The SinkUnavailable that ``opening()`` (a sink's start, a reader's entry) raises within
    NOTICED_WITHIN seconds, far sooner than the publish timeout it was given."""

    async def scenario() -> SinkUnavailable:
        with pytest.raises(SinkUnavailable) as caught:
            await asyncio.wait_for(opening(), NOTICED_WITHIN)
        return caught.value

    return asyncio.run(scenario())


# -- Kafka


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

    async def scenario() -> None:
        async with kafka_sink(settings, metrics, codec) as sink:
            for event in events:
                await sink.send(encoded(event))
        async with KafkaReader(settings) as reader:
            found = [e async for e in reader.events(limit=len(events), idle_timeout=15)]
        assert sorted(m.key or "" for m in found) == sorted(e.event_id for e in events)

    asyncio.run(scenario())


@pytest.mark.parametrize(
    ("side", "openssl_says"),
    [(DISTRUSTED_BROKER, "certificate verify failed"), (REFUSED_CLIENT, "alert bad certificate")],
    ids=[DISTRUSTED_BROKER, REFUSED_CLIENT],
)
def test_a_failed_certificate_check_ends_the_kafka_sinks_start_at_once_naming_it(
    side: str,
    openssl_says: str,
    kafka_ssl_bootstrap: str,
    kafka_topics: KafkaTopics,
    brokers_tls: ClientFiles,
    strangers: ClientFiles,
    metrics: Metrics,
    codec: AvroCodec,
) -> None:
    ca, client = mismatched(side, brokers_tls, strangers)
    settings = kafka_tls_settings(
        kafka_ssl_bootstrap, kafka_topics, ca, client, publish_timeout_seconds=PUBLISH_TIMEOUT
    )
    sink = kafka_sink(settings, metrics, codec)

    error = refusal(sink.start)

    assert str(error).startswith(f"kafka: TLS with {kafka_ssl_bootstrap} failed its certificate")
    assert openssl_says in str(error)
    assert not sink.ready()


def test_a_kafka_tail_that_does_not_trust_the_brokers_certificate_fails_at_once_naming_it(
    kafka_ssl_bootstrap: str,
    kafka_topics: KafkaTopics,
    brokers_tls: ClientFiles,
    strangers: ClientFiles,
) -> None:
    ca, client = mismatched(DISTRUSTED_BROKER, brokers_tls, strangers)
    settings = kafka_tls_settings(
        kafka_ssl_bootstrap, kafka_topics, ca, client, publish_timeout_seconds=PUBLISH_TIMEOUT
    )

    error = refusal(KafkaReader(settings).__aenter__)

    assert "certificate verify failed" in str(error)
    assert error.detail == "_SSL"


# -- RabbitMQ


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


@pytest.mark.parametrize(
    ("side", "openssl_says"),
    [(DISTRUSTED_BROKER, "certificate verify failed"), (REFUSED_CLIENT, "alert unknown ca")],
    ids=[DISTRUSTED_BROKER, REFUSED_CLIENT],
)
def test_a_failed_certificate_check_ends_the_rabbitmq_sinks_start_at_once_naming_it(
    side: str,
    openssl_says: str,
    rabbitmq_tls_url: str,
    rabbitmq_names: str,
    brokers_tls: ClientFiles,
    strangers: ClientFiles,
    metrics: Metrics,
    codec: AvroCodec,
) -> None:
    ca, client = mismatched(side, brokers_tls, strangers)
    settings = rabbitmq_tls_settings(
        rabbitmq_tls_url, rabbitmq_names, ca, client, publish_timeout_seconds=PUBLISH_TIMEOUT
    )
    sink = rabbitmq_sink(settings, metrics, codec)

    error = refusal(sink.start)

    assert str(error).startswith("rabbitmq: certificate: ")
    assert openssl_says in str(error)
    assert "guest:guest" not in str(error)
    assert not sink.ready()


def test_a_rabbitmq_tail_that_does_not_trust_the_brokers_certificate_fails_at_once_naming_it(
    rabbitmq_tls_url: str,
    rabbitmq_names: str,
    brokers_tls: ClientFiles,
    strangers: ClientFiles,
) -> None:
    ca, client = mismatched(DISTRUSTED_BROKER, brokers_tls, strangers)
    settings = rabbitmq_tls_settings(
        rabbitmq_tls_url, rabbitmq_names, ca, client, publish_timeout_seconds=PUBLISH_TIMEOUT
    )

    error = refusal(RabbitMQReader(settings).__aenter__)

    assert str(error).startswith("rabbitmq: certificate: ")
    assert "certificate verify failed" in str(error)
