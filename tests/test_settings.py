"""Settings: read from BRIDGE_* and a TOML file, validated with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bridge.errors import ConfigError
from bridge.settings import load_settings


def test_defaults_listen_on_loopback_with_the_file_sink() -> None:
    settings = load_settings()
    assert (settings.host, settings.port, settings.sink) == ("127.0.0.1", 8080, "file")
    assert settings.events_dir == Path("login-audit-data/events")
    assert settings.sftpgo_user_fields == ("username", "id")


def test_comma_separated_variables_become_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_AUTH_TOKENS", "one, two")
    monkeypatch.setenv("BRIDGE_SFTPGO_USER_FIELDS", "role,groups")
    settings = load_settings()
    assert [t.get_secret_value() for t in settings.auth_tokens] == ["one", "two"]
    assert settings.sftpgo_user_fields == ("role", "groups")


def test_secrets_are_masked_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_AUTH_TOKENS", "tok-SECRET-1")
    monkeypatch.setenv("BRIDGE_RABBITMQ_URL", "amqp://u:pw-SECRET-2@127.0.0.1/")
    text = repr(load_settings()) + str(load_settings())
    assert "SECRET" not in text


def test_a_bad_value_is_reported_with_its_variable_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_PORT", "eighty")
    with pytest.raises(ConfigError, match="BRIDGE_PORT"):
        load_settings()


@pytest.mark.parametrize(
    "name", ["BRIDGE_KAFKA_TOPIC_PARTITIONS", "BRIDGE_KAFKA_TOPIC_REPLICATION"]
)
@pytest.mark.parametrize("value", ["0", "-2"])
def test_a_topic_count_must_be_positive_or_the_brokers_default(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=f"{name}.*-1 for the broker's default"):
        load_settings()


def test_created_topics_take_the_brokers_partitions_and_replication_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load_settings()
    assert (settings.kafka_topic_partitions, settings.kafka_topic_replication) == (-1, -1)
    monkeypatch.setenv("BRIDGE_KAFKA_TOPIC_PARTITIONS", "6")
    assert load_settings().kafka_topic_partitions == 6


def test_an_unknown_bridge_variable_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_SINKK", "kafka")
    with pytest.raises(ConfigError, match="BRIDGE_SINKK"):
        load_settings()


def test_toml_file_is_read_and_environment_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text('sink = "rabbitmq"\nport = 9000\nsftpgo_user_fields = ["role"]\n')
    monkeypatch.setenv("BRIDGE_CONFIG", str(config))
    monkeypatch.setenv("BRIDGE_PORT", "9001")
    settings = load_settings()
    assert (settings.sink, settings.port, settings.sftpgo_user_fields) == (
        "rabbitmq",
        9001,
        ("role",),
    )


def test_unknown_key_in_the_toml_file_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="prot"):
        load_settings(config_file=config)


def test_missing_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_settings(config_file=tmp_path / "absent.toml")


def test_tls_key_without_certificate_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_TLS_KEYFILE", "/etc/key.pem")
    with pytest.raises(ConfigError, match="tls_certfile and tls_keyfile go together"):
        load_settings()


def test_sasl_mechanism_needs_a_sasl_protocol(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BRIDGE_KAFKA_SASL_MECHANISM", "PLAIN")
    with pytest.raises(ConfigError, match="SASL"):
        load_settings()


def test_test_suite_broker_variables_are_not_mistaken_for_settings(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("BRIDGE_TEST_KAFKA_BOOTSTRAP", "127.0.0.1:19092")
    assert load_settings().sink == "file"


@pytest.mark.parametrize("fields", ["email,password", "Password", "role,filters", "access_secret"])
def test_a_secret_field_in_the_user_allow_list_is_refused_by_name(
    fields: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BRIDGE_SFTPGO_USER_FIELDS", fields)
    secret = fields.split(",")[-1]
    with pytest.raises(ConfigError, match=rf"BRIDGE_SFTPGO_USER_FIELDS\): .*names {secret}\b"):
        load_settings()
