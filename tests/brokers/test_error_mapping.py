"""Every error the broker libraries raise becomes one of ours; retriable unless it never works."""

from __future__ import annotations

import inspect
import ssl
from types import ModuleType
from typing import get_args

import aio_pika.exceptions
import aiormq.exceptions
import pamqp.exceptions
import pytest
from aiormq.abc import DeliveredMessage
from confluent_kafka import KafkaError, KafkaException
from pamqp.commands import Basic
from pamqp.header import ContentHeader

from bridge.codec import AvroCodec, SingleObjectEncoder
from bridge.errors import ConfigError, SinkError, SinkRejected, SinkUnavailable
from bridge.metrics import Metrics
from bridge.settings import Settings
from bridge.sinks import kafka, kafka_errors, rabbitmq


def librdkafka_codes() -> list[int]:
    codes = {
        value
        for name, value in vars(KafkaError).items()
        if name.lstrip("_").isupper() and isinstance(value, int)
    }
    return sorted(codes - {KafkaError.NO_ERROR})


def test_librdkafka_knows_more_than_a_hundred_error_codes() -> None:
    """Guards the next test against passing vacuously on an empty list."""
    assert len(librdkafka_codes()) > 100


def test_every_librdkafka_error_becomes_sink_unavailable_or_sink_rejected() -> None:
    labels = set(get_args(kafka_errors.Reason))
    for code in librdkafka_codes():
        err = KafkaError(code)
        ours = kafka_errors.to_sink_error(err)
        assert type(ours) in (SinkUnavailable, SinkRejected), err.name()
        assert ours.detail == err.name()
        assert kafka_errors.failure_reason(err) in labels, err.name()


@pytest.mark.parametrize(
    ("code", "expected", "reason"),
    [
        (KafkaError.MSG_SIZE_TOO_LARGE, SinkRejected, "too_large"),
        (KafkaError.RECORD_LIST_TOO_LARGE, SinkRejected, "too_large"),
        # A missing ACL is an operator's to grant: the events wait in the spool for it.
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, SinkUnavailable, "unauthorized"),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, SinkUnavailable, "unauthorized"),
        (KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED, SinkUnavailable, "unauthorized"),
        (KafkaError.GROUP_AUTHORIZATION_FAILED, SinkUnavailable, "unauthorized"),
        (KafkaError.DELEGATION_TOKEN_AUTHORIZATION_FAILED, SinkUnavailable, "unauthorized"),
        (KafkaError.INVALID_RECORD, SinkRejected, "rejected"),
        (KafkaError._TRANSPORT, SinkUnavailable, "transport"),
        (KafkaError._ALL_BROKERS_DOWN, SinkUnavailable, "transport"),
        (KafkaError.NOT_ENOUGH_REPLICAS, SinkUnavailable, "transport"),
        (KafkaError.NOT_LEADER_FOR_PARTITION, SinkUnavailable, "transport"),
        (KafkaError._MSG_TIMED_OUT, SinkUnavailable, "timeout"),
        (KafkaError.REQUEST_TIMED_OUT, SinkUnavailable, "timeout"),
        (KafkaError._QUEUE_FULL, SinkUnavailable, "queue_full"),
        (KafkaError.UNKNOWN_TOPIC_OR_PART, SinkUnavailable, "unknown_topic"),
        (KafkaError.SASL_AUTHENTICATION_FAILED, SinkUnavailable, "authentication"),
        (KafkaError._FATAL, SinkUnavailable, "fatal"),
    ],
)
def test_librdkafka_error_maps_to_a_specific_error_and_label(
    code: int, expected: type[SinkError], reason: str
) -> None:
    err = KafkaError(code)
    assert type(kafka_errors.to_sink_error(err)) is expected
    assert kafka_errors.failure_reason(err) == reason


def unstarted_kafka_sink() -> kafka.KafkaSink:
    """Building a sink connects nothing: enough to use its error translation."""
    codec = AvroCodec()
    encoder = SingleObjectEncoder(codec)
    return kafka.KafkaSink.from_settings(Settings(sink="kafka"), encoder=encoder, metrics=Metrics())


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        (KafkaError.POLICY_VIOLATION, ConfigError),  # the cluster's topic policy forbids these
        (KafkaError.INVALID_PARTITIONS, ConfigError),
        (KafkaError.INVALID_CONFIG, ConfigError),
        # Also what a cluster with a broker away answers (a rolling restart): retry.
        (KafkaError.INVALID_REPLICATION_FACTOR, SinkUnavailable),
        (KafkaError.TOPIC_AUTHORIZATION_FAILED, SinkUnavailable),
        (KafkaError.CLUSTER_AUTHORIZATION_FAILED, SinkUnavailable),
        (KafkaError.REQUEST_TIMED_OUT, SinkUnavailable),
    ],
)
def test_a_topic_creation_failure_is_a_config_error_only_when_settings_must_change(
    code: int, expected: type[Exception]
) -> None:
    sink = unstarted_kafka_sink()
    failure = KafkaException(KafkaError(code, "refused by the test"))
    with pytest.raises(expected, match=r"cannot create topic login-audit\.failure"):
        sink._raise_creation_error("login-audit.failure", failure)


def test_a_topic_that_already_exists_is_no_creation_failure() -> None:
    sink = unstarted_kafka_sink()
    failure = KafkaException(KafkaError(KafkaError.TOPIC_ALREADY_EXISTS))
    sink._raise_creation_error("login-audit.failure", failure)  # returns: nothing raised


def exception_classes(*modules: ModuleType) -> list[type[BaseException]]:
    found = {
        obj
        for module in modules
        for obj in vars(module).values()
        if inspect.isclass(obj) and issubclass(obj, BaseException)
    }
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


def returned_message() -> DeliveredMessage:
    frame = Basic.Return(
        reply_code=312,
        reply_text="NO_ROUTE",
        exchange="login-audit",
        routing_key="failure.sftpgo.ssh",
    )
    return DeliveredMessage(delivery=frame, header=ContentHeader(), body=b"", channel=None)  # type: ignore[arg-type]


def build(cls: type[BaseException]) -> BaseException:
    """An instance as the library would raise it (two classes need their frames)."""
    if issubclass(cls, aiormq.exceptions.PublishError):
        message = returned_message()
        return cls(message, message.delivery)
    if issubclass(cls, aiormq.exceptions.DeliveryError):
        return cls(None, Basic.Nack(delivery_tag=1))
    try:
        return cls("broker said no")
    except TypeError:
        return cls.__new__(cls)


RABBITMQ_EXCEPTIONS = exception_classes(aiormq.exceptions, aio_pika.exceptions, pamqp.exceptions)


def test_the_amqp_libraries_define_more_than_twenty_exceptions() -> None:
    assert len(RABBITMQ_EXCEPTIONS) > 20


@pytest.mark.parametrize("cls", RABBITMQ_EXCEPTIONS, ids=lambda cls: cls.__qualname__)
def test_every_amqp_exception_becomes_sink_unavailable_or_sink_rejected(
    cls: type[BaseException],
) -> None:
    exc = build(cls)
    ours = rabbitmq.to_sink_error(exc)
    assert type(ours) in (SinkUnavailable, SinkRejected)
    assert ours.message.startswith("rabbitmq: ")
    assert ours.detail == cls.__name__
    assert rabbitmq.classify(exc)[1] in set(get_args(rabbitmq.Reason))


def test_every_amqp_exception_is_caught_by_the_sink() -> None:
    """send() and start() catch BROKER_ERRORS; nothing the libraries raise slips past it."""
    libraries = ("aio_pika", "aiormq", "pamqp")
    uncaught = [
        c
        for c in RABBITMQ_EXCEPTIONS
        if c.__module__.split(".")[0] in libraries and not issubclass(c, rabbitmq.BROKER_ERRORS)
    ]
    assert uncaught == []


@pytest.mark.parametrize(
    ("exc", "expected", "reason"),
    [
        (build(aiormq.exceptions.PublishError), SinkUnavailable, "unroutable"),
        (build(aiormq.exceptions.DeliveryError), SinkUnavailable, "nacked"),
        # A permission an operator can grant: the events wait in the spool for it.
        (build(aiormq.exceptions.ChannelAccessRefused), SinkUnavailable, "unauthorized"),
        (build(aiormq.exceptions.ChannelPreconditionFailed), SinkRejected, "rejected"),
        (build(aiormq.exceptions.ChannelNotFoundEntity), SinkUnavailable, "not_found"),
        (build(aiormq.exceptions.ConnectionClosed), SinkUnavailable, "transport"),
        (build(aiormq.exceptions.ChannelInvalidStateError), SinkUnavailable, "transport"),
        (build(aiormq.exceptions.ProbableAuthenticationError), SinkUnavailable, "authentication"),
        (ConnectionRefusedError(111, "Connection refused"), SinkUnavailable, "transport"),
        (TimeoutError(), SinkUnavailable, "timeout"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else str(value),
)
def test_amqp_exception_maps_to_a_specific_error_and_label(
    exc: BaseException, expected: type[SinkError], reason: str
) -> None:
    assert rabbitmq.classify(exc) == (expected, reason)


def test_an_unroutable_message_error_names_the_routing_key() -> None:
    error = rabbitmq.to_sink_error(build(aiormq.exceptions.PublishError))
    assert "NO_ROUTE" in error.message
    assert "failure.sftpgo.ssh" in error.message


def test_a_failed_certificate_check_under_aiormqs_connection_error_is_its_own_reason() -> None:
    """aiormq raises AMQPConnectionError from the TLS error; the cause names the refusal."""
    checked = ssl.SSLCertVerificationError(
        1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed"
    )
    wrapped = aiormq.exceptions.AMQPConnectionError(*checked.args)
    wrapped.__cause__ = checked

    assert rabbitmq.classify(wrapped) == (SinkUnavailable, "certificate")
    assert rabbitmq.to_sink_error(wrapped).message.startswith("rabbitmq: certificate: ")


def test_a_brokers_alert_about_the_client_certificate_is_a_failed_certificate_check() -> None:
    alert = ssl.SSLError(
        1, "[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required"
    )
    alert.reason = "TLSV13_ALERT_CERTIFICATE_REQUIRED"
    other = ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER] wrong version number")
    other.reason = "WRONG_VERSION_NUMBER"

    assert rabbitmq.classify(alert)[1] == "certificate"
    assert rabbitmq.classify(other)[1] == "transport"
