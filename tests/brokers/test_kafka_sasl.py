"""The Kafka sink and reader through the broker's SASL listener (SCRAM-SHA-512).

The test broker (scripts/brokers) listens for SASL_PLAINTEXT beside PLAINTEXT; each test makes
its own SCRAM user through the plain listener and removes it afterwards. Accepted credentials
create the topics, publish and read back; refused ones fail the sink's start as soon as the
broker says so, naming the refusal, instead of waiting out the publish timeout as "no answer".
"""

from __future__ import annotations

import asyncio
import os
import secrets
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from confluent_kafka import KafkaException, Producer
from confluent_kafka.admin import AdminClient

# confluent_kafka.admin re-exports these without declaring them (as NewTopic, see
# bridge/sinks/kafka.py); the type stubs name them here.
from confluent_kafka.admin._scram import (
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialDeletion,
    UserScramCredentialUpsertion,
)

from bridge.codec import AvroCodec
from bridge.consume import KafkaReader
from bridge.errors import SinkUnavailable
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.sinks.kafka import client_config

from .conftest import KafkaTopics, login_events, require_broker
from .test_kafka_sink import kafka_settings, kafka_sink, publish_and_read_back
from support import wait_for

pytestmark = [pytest.mark.kafka]

# Read at import: the suite's autouse fixture scrubs BRIDGE_* before each test.
KAFKA_SASL_BOOTSTRAP = os.environ.get("BRIDGE_TEST_KAFKA_SASL_BOOTSTRAP", "127.0.0.1:19094")
# Far longer than a refused start may take: a start that waits for it has not noticed.
PUBLISH_TIMEOUT = 60.0
NOTICED_WITHIN = 20.0


@pytest.fixture(scope="session")
def kafka_sasl_bootstrap(kafka_bootstrap: str) -> str:
    host, _, port = KAFKA_SASL_BOOTSTRAP.split(",")[0].rpartition(":")
    require_broker("Kafka's SASL listener", host, int(port))
    return KAFKA_SASL_BOOTSTRAP


def sasl_settings(
    bootstrap: str, topics: KafkaTopics, user: str, password: str, **overrides: Any
) -> Settings:
    return kafka_settings(
        bootstrap,
        topics,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username=user,
        kafka_sasl_password=password,
        **overrides,
    )


def refused_settings(bootstrap: str, topics: KafkaTopics, user: tuple[str, str]) -> Settings:
    """The user's name with a password that is not theirs, and a publish timeout long enough
    that a start or a tail waiting for it has not noticed the refusal."""
    return sasl_settings(
        bootstrap,
        topics,
        user[0],
        "not-" + secrets.token_urlsafe(12),
        publish_timeout_seconds=PUBLISH_TIMEOUT,
    )


def authenticates(bootstrap: str, user: str, password: str) -> bool:
    """Whether the broker lets this user in yet (a new credential reaches it shortly after the
    controller commits it)."""
    probe = Producer(
        {
            "bootstrap.servers": bootstrap,
            "security.protocol": "sasl_plaintext",
            "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user,
            "sasl.password": password,
        }
    )
    try:
        probe.list_topics(timeout=2)
    except KafkaException:
        return False
    return True


@pytest.fixture
def scram_user(kafka_bootstrap: str, kafka_sasl_bootstrap: str) -> Iterator[tuple[str, str]]:
    """(user, password) of a SCRAM-SHA-512 user that exists for this test only."""
    user = f"bridge-{uuid.uuid4().hex[:12]}"
    password = secrets.token_urlsafe(18)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096)
    made = admin.alter_user_scram_credentials(
        [UserScramCredentialUpsertion(user, info, password.encode())]
    )
    made[user].result(timeout=30)
    wait_for(
        lambda: authenticates(kafka_sasl_bootstrap, user, password),
        timeout=30,
        interval=0.5,
        what=f"the broker never let the new SCRAM user {user} in",
    )
    yield user, password
    gone = admin.alter_user_scram_credentials(
        [UserScramCredentialDeletion(user, ScramMechanism.SCRAM_SHA_512)]
    )
    gone[user].result(timeout=30)


def test_a_bridge_with_scram_credentials_creates_its_topics_publishes_and_reads_back(
    kafka_sasl_bootstrap: str,
    kafka_topics: KafkaTopics,
    scram_user: tuple[str, str],
    metrics: Metrics,
    codec: AvroCodec,
) -> None:
    user, password = scram_user
    settings = sasl_settings(kafka_sasl_bootstrap, kafka_topics, user, password)
    assert client_config(settings)["security.protocol"] == "sasl_plaintext"
    events = login_events(4)

    found = publish_and_read_back(settings, metrics, codec, events)

    assert sorted(m.key or "" for m in found) == sorted(e.event_id for e in events)


def test_a_kafka_that_refuses_the_bridges_password_fails_its_start_at_once_saying_so(
    kafka_sasl_bootstrap: str,
    kafka_topics: KafkaTopics,
    scram_user: tuple[str, str],
    metrics: Metrics,
    codec: AvroCodec,
) -> None:
    settings = refused_settings(kafka_sasl_bootstrap, kafka_topics, scram_user)
    sink = kafka_sink(settings, metrics, codec)

    async def scenario() -> SinkUnavailable:
        with pytest.raises(SinkUnavailable) as caught:
            await asyncio.wait_for(sink.start(), NOTICED_WITHIN)
        return caught.value

    error = asyncio.run(scenario())
    assert "refused the bridge's credentials" in str(error)
    assert "authentication" in str(error).lower()
    assert error.detail == "_AUTHENTICATION"
    assert settings.kafka_sasl_password is not None
    assert settings.kafka_sasl_password.get_secret_value() not in str(error)
    assert not sink.ready()


def test_a_tail_whose_password_kafka_refuses_fails_at_once_saying_so(
    kafka_sasl_bootstrap: str, kafka_topics: KafkaTopics, scram_user: tuple[str, str]
) -> None:
    settings = refused_settings(kafka_sasl_bootstrap, kafka_topics, scram_user)

    async def scenario() -> SinkUnavailable:
        with pytest.raises(SinkUnavailable) as caught:
            async with asyncio.timeout(NOTICED_WITHIN), KafkaReader(settings):
                pass
        return caught.value

    error = asyncio.run(scenario())
    assert "authentication" in str(error).lower()
    assert error.detail == "_AUTHENTICATION"
