"""Settings become the client options librdkafka and aio-pika need, and librdkafka accepts them."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest
from confluent_kafka import Producer
from prometheus_client import CollectorRegistry

from bridge.errors import ConfigError
from bridge.settings import Settings
from bridge.sinks.kafka import delivery_timeout_ms, producer_config
from bridge.sinks.kafka_stats import KafkaStatistics
from bridge.sinks.rabbitmq import redacted, ssl_context

SYSTEM_CA = Path("/etc/ssl/certs/ca-certificates.crt")
# Nothing listens there: a producer built in these tests connects nowhere.
NOWHERE = "127.0.0.1:9"


def accepted_by_librdkafka(config: dict[str, object]) -> bool:
    """librdkafka checks every option's name and value when a client is created."""
    producer = Producer(config)
    producer.flush(0)
    return True


def test_producer_waits_for_all_in_sync_replicas_and_is_idempotent() -> None:
    config = producer_config(Settings(kafka_compression="zstd", kafka_linger_ms=5))
    assert config["acks"] == "all"
    assert config["enable.idempotence"] is True
    assert config["compression.type"] == "zstd"
    assert config["linger.ms"] == 5
    assert config["security.protocol"] == "plaintext"


@pytest.mark.parametrize(("publish_timeout", "expected_ms"), [(10.0, 9000), (1.0, 500), (0.5, 250)])
def test_librdkafka_gives_up_on_a_message_before_send_stops_waiting(
    publish_timeout: float, expected_ms: int
) -> None:
    assert delivery_timeout_ms(publish_timeout) == expected_ms
    config = producer_config(Settings(publish_timeout_seconds=publish_timeout))
    assert config["message.timeout.ms"] == expected_ms


def test_scram_over_tls_is_configured_and_accepted() -> None:
    settings = Settings(
        kafka_bootstrap_servers=NOWHERE,
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="bridge",
        kafka_sasl_password="s3cret-pass",
        kafka_ssl_ca_location=SYSTEM_CA,
    )
    config = producer_config(settings)
    assert config["security.protocol"] == "sasl_ssl"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert config["sasl.username"] == "bridge"
    assert config["sasl.password"] == "s3cret-pass"
    assert config["ssl.ca.location"] == str(SYSTEM_CA)
    assert accepted_by_librdkafka(config)


def test_oauthbearer_uses_librdkafkas_oidc_client_credentials_flow() -> None:
    settings = Settings(
        kafka_bootstrap_servers=NOWHERE,
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="OAUTHBEARER",
        kafka_oauth_token_endpoint_url="http://127.0.0.1:9/token",
        kafka_oauth_client_id="bridge",
        kafka_oauth_client_secret="client-secret",
        kafka_oauth_scope="kafka",
    )
    config = producer_config(settings)
    assert config["sasl.mechanism"] == "OAUTHBEARER"
    assert config["sasl.oauthbearer.method"] == "oidc"
    assert config["sasl.oauthbearer.token.endpoint.url"] == "http://127.0.0.1:9/token"
    assert config["sasl.oauthbearer.client.id"] == "bridge"
    assert config["sasl.oauthbearer.client.secret"] == "client-secret"
    assert config["sasl.oauthbearer.scope"] == "kafka"
    assert accepted_by_librdkafka(config)


def test_plain_sasl_without_a_password_is_a_config_error() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="PLAIN",
        kafka_sasl_username="bridge",
    )
    with pytest.raises(ConfigError, match="kafka_sasl_password"):
        producer_config(settings)


def test_oauthbearer_without_a_token_endpoint_is_a_config_error() -> None:
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_mechanism="OAUTHBEARER",
        kafka_oauth_client_id="bridge",
        kafka_oauth_client_secret="x",
    )
    with pytest.raises(ConfigError, match="kafka_oauth_token_endpoint_url"):
        producer_config(settings)


def test_default_settings_are_accepted_by_librdkafka() -> None:
    assert accepted_by_librdkafka(producer_config(Settings(kafka_bootstrap_servers=NOWHERE)))


def test_rabbitmq_tls_files_without_amqps_are_a_config_error() -> None:
    settings = Settings(
        rabbitmq_url="amqp://guest:guest@127.0.0.1:5672/", rabbitmq_ssl_ca_file=SYSTEM_CA
    )
    with pytest.raises(ConfigError, match="amqps://"):
        ssl_context(settings)


def test_rabbitmq_amqps_verifies_the_broker_against_the_configured_ca() -> None:
    settings = Settings(
        rabbitmq_url="amqps://guest:guest@127.0.0.1:5671/", rabbitmq_ssl_ca_file=SYSTEM_CA
    )
    context = ssl_context(settings)
    assert context is not None
    assert context.verify_mode == ssl.CERT_REQUIRED
    assert context.check_hostname is True
    assert len(context.get_ca_certs()) > 10


def test_rabbitmq_plain_amqp_uses_no_tls() -> None:
    assert ssl_context(Settings(rabbitmq_url="amqp://guest:guest@127.0.0.1:5672/")) is None


def test_rabbitmq_missing_client_certificate_is_a_config_error(tmp_path: Path) -> None:
    settings = Settings(
        rabbitmq_url="amqps://127.0.0.1/", rabbitmq_ssl_certfile=tmp_path / "missing.pem"
    )
    with pytest.raises(ConfigError, match="rabbitmq TLS files"):
        ssl_context(settings)


def test_rabbitmq_url_password_is_hidden_in_messages() -> None:
    assert redacted("amqp://bridge:hunter2@127.0.0.1:5672/") == "amqp://bridge:***@127.0.0.1:5672/"


# A statistics document as librdkafka emits it (trimmed to the fields the collector reads).
STATS = {
    "msg_cnt": 7,
    "msg_size": 2048,
    "brokers": {
        "127.0.0.1:19092/bootstrap": {
            "nodeid": -1,
            "nodename": "127.0.0.1:19092",
            "state": "UP",
            "rtt": {"avg": 0},
        },
        "127.0.0.1:19092/1": {
            "nodeid": 1,
            "nodename": "127.0.0.1:19092",
            "state": "UP",
            "rtt": {"avg": 2500},
        },
        "127.0.0.1:19094/2": {
            "nodeid": 2,
            "nodename": "127.0.0.1:19094",
            "state": "DOWN",
            "rtt": {"avg": 0},
        },
    },
}


def test_librdkafka_statistics_become_prometheus_samples() -> None:
    from confluent_kafka import KafkaError

    registry = CollectorRegistry()
    statistics = KafkaStatistics()
    registry.register(statistics)
    statistics.observe(STATS)
    statistics.count_error(KafkaError(KafkaError._TRANSPORT))
    statistics.count_error(KafkaError(KafkaError._TRANSPORT))
    statistics.count_error(KafkaError(KafkaError._ALL_BROKERS_DOWN))

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("login_audit_kafka_queue_messages") == 7
    assert sample("login_audit_kafka_queue_bytes") == 2048
    assert sample("login_audit_kafka_broker_rtt_seconds", broker="127.0.0.1:19092") == 0.0025
    assert sample("login_audit_kafka_broker_up", broker="127.0.0.1:19092") == 1
    assert sample("login_audit_kafka_broker_up", broker="127.0.0.1:19094") == 0
    assert sample("login_audit_kafka_errors_total", type="transport") == 2
    assert sample("login_audit_kafka_errors_total", type="all_brokers_down") == 1
