"""Fixtures of the broker tests: where the real brokers are, fresh names, and login events.

The brokers come from `scripts/brokers start`; `scripts/brokers env` prints the two variables
read here. They are read at import, before the suite's autouse fixture scrubs BRIDGE_*.
Without a broker a test skips on a laptop and fails in CI.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from yarl import URL

from bridge.codec import AvroCodec
from bridge.event import LoginEvent
from bridge.mediawiki import MediaWikiLogin
from bridge.metrics import Metrics
from bridge.normalize import Normalizer

from conftest import KAFKA_BOOTSTRAP, REPO
from support import delete_kafka_topics, reachable, skip_or_fail

RABBITMQ_URL = os.environ.get("BRIDGE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5673/")
PROTOCOLS = ("SSH", "FTP", "DAV", "HTTP")


def require_broker(name: str, host: str, port: int) -> None:
    """Skips (fails in CI) unless something listens where the broker should be."""
    if reachable(host, port):
        return
    skip_or_fail(
        f"{name} is not reachable at {host}:{port}: run scripts/brokers start "
        '(and eval "$(scripts/brokers env)" if it uses other ports)'
    )


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    host, _, port = KAFKA_BOOTSTRAP.split(",")[0].rpartition(":")
    require_broker("Kafka", host, int(port))
    return KAFKA_BOOTSTRAP


@pytest.fixture(scope="session")
def rabbitmq_url() -> str:
    url = URL(RABBITMQ_URL)
    require_broker("RabbitMQ", url.host or "127.0.0.1", url.port or 5672)
    return RABBITMQ_URL


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture(scope="session")
def codec() -> AvroCodec:
    return AvroCodec()


@pytest.fixture
def unique() -> str:
    """A fresh name part, so tests never see each other's topics, exchanges or queues."""
    return f"test-{uuid.uuid4().hex[:12]}"


def sftpgo_event(
    normalizer: Normalizer, *, ok: bool, protocol: str, name: str, number: int
) -> LoginEvent:
    query = {
        "ip": f"192.0.2.{number % 250 + 1}",
        "login_method": "password",
        "protocol": protocol,
        "status": "1" if ok else "0",
    }
    return normalizer.sftpgo(query, {"username": name, "id": number})


def mediawiki_event(normalizer: Normalizer, *, ok: bool, number: int) -> LoginEvent:
    login = MediaWikiLogin(
        format="login-audit-bridge.mediawiki.v1",
        status="PASS" if ok else "FAIL",
        username=f"Wiki{number}",
        canonical_username=f"Wiki{number}" if ok else None,
        message_key=None if ok else "wrongpassword",
        ip="2001:db8::1",
        request_id=f"req-{number}",
        wiki_id="testwiki",
        time=1_700_000_000_000 + number,
        mw_version="1.39.17",
    )
    return normalizer.mediawiki(login)


def no_auth_tried_event(normalizer: Normalizer) -> LoginEvent:
    """An SFTPGo client that disconnected before authenticating: a failure without a user name."""
    query = {
        "ip": "198.51.100.7",
        "login_method": "no_auth_tried",
        "protocol": "SSH",
        "status": "0",
    }
    return normalizer.sftpgo(query, {"username": ""})


def login_events(count: int) -> list[LoginEvent]:
    """``count`` valid events: both statuses, both sources, four protocols, one without a name."""
    normalizer = Normalizer(sftpgo_user_fields=("username", "id"))
    events = [no_auth_tried_event(normalizer)]
    for number in range(1, count):
        ok = number % 3 != 0
        if number % 5 == 0:
            events.append(mediawiki_event(normalizer, ok=ok, number=number))
        else:
            protocol = PROTOCOLS[number % len(PROTOCOLS)]
            events.append(
                sftpgo_event(
                    normalizer, ok=ok, protocol=protocol, name=f"user{number}", number=number
                )
            )
    return events


@pytest.fixture
def make_events() -> Callable[[int], list[LoginEvent]]:
    return login_events


def as_decoded(codec: AvroCodec, record: dict[str, Any]) -> dict[str, Any]:
    """The record as a reader of the schema sees it (timestamps become datetimes)."""
    return codec.decode(codec.encode(record))


@pytest.fixture
def decoded(codec: AvroCodec) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda record: as_decoded(codec, record)


@dataclass
class KafkaTopics:
    """The test's own topic names; every topic starting with ``prefix`` is deleted afterwards."""

    prefix: str
    admin: Any

    @property
    def success(self) -> str:
        return f"{self.prefix}.success"

    @property
    def failure(self) -> str:
        return f"{self.prefix}.failure"


@pytest.fixture
def kafka_topics(kafka_bootstrap: str, unique: str) -> Iterator[KafkaTopics]:
    from confluent_kafka.admin import AdminClient

    topics = KafkaTopics(prefix=unique, admin=AdminClient({"bootstrap.servers": kafka_bootstrap}))
    yield topics
    delete_kafka_topics(kafka_bootstrap, unique)


@pytest.fixture
def rabbitmq_names(rabbitmq_url: str, unique: str) -> Iterator[str]:
    """The test's exchange name; it and the queues ``<name>.success|failure`` go afterwards."""
    yield unique
    asyncio.run(_delete_rabbitmq_names(rabbitmq_url, unique))


async def _delete_rabbitmq_names(url: str, name: str) -> None:
    import aio_pika

    connection = await aio_pika.connect(url)
    async with connection:
        channel = await connection.channel()
        await channel.exchange_delete(name)
        for queue in (f"{name}.success", f"{name}.failure"):
            await channel.queue_delete(queue)


SCHEMA_REGISTRY_URL = os.environ.get(
    "BRIDGE_TEST_SCHEMA_REGISTRY_URL", "http://127.0.0.1:18081/apis/ccompat/v7"
)


@pytest.fixture(scope="session")
def schema_registry_url() -> str:
    """The Apicurio Registry of `scripts/brokers start-registry`, its Confluent-compatible API."""
    url = URL(SCHEMA_REGISTRY_URL)
    require_broker("The Schema Registry", url.host or "127.0.0.1", url.port or 80)
    return SCHEMA_REGISTRY_URL


# -- a RabbitMQ user of the test's own, through rabbitmqctl on the node scripts/brokers runs


def rabbitmqctl(*args: str) -> str:
    run = subprocess.run(
        [str(REPO / "scripts/brokers"), "rabbitmqctl", "--quiet", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if run.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {run.stderr.strip()}")
    return run.stdout


@dataclass
class RabbitMQUser:
    """A user of the shared RabbitMQ that only this test uses: its permissions and connections."""

    name: str
    url: str

    def permit(self, *, configure: str = ".*", write: str = ".*", read: str = ".*") -> None:
        rabbitmqctl("set_permissions", "-p", "/", self.name, configure, write, read)

    def connections(self) -> int:
        rows = rabbitmqctl("list_connections", "--no-table-headers", "user")
        return sum(1 for row in rows.splitlines() if row.strip() == self.name)

    def connections_once_settled(self, expected: int, timeout: float = 15.0) -> int:
        """The connection count once it equals ``expected``, or whatever it is after ``timeout``.

        The broker drops a closed connection a moment after the client's close returns.
        """
        deadline = time.monotonic() + timeout
        count = self.connections()
        while count != expected and time.monotonic() < deadline:
            time.sleep(0.5)
            count = self.connections()
        return count


@pytest.fixture
def rabbitmq_user(rabbitmq_url: str, unique: str) -> Iterator[RabbitMQUser]:
    """A fresh user without permissions (call ``permit``); closed and deleted afterwards."""
    try:
        rabbitmqctl("add_user", unique, password := secrets.token_hex(12))
    except (RuntimeError, OSError) as exc:
        skip_or_fail(f"needs rabbitmqctl on the RabbitMQ node of scripts/brokers: {exc}")
    url = URL(rabbitmq_url).with_user(unique).with_password(password)
    yield RabbitMQUser(name=unique, url=str(url))
    rabbitmqctl("close_all_user_connections", unique, "test over")
    rabbitmqctl("delete_user", unique)
