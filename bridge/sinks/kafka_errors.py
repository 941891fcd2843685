"""librdkafka's errors in the bridge's terms: which are final, which wait in the spool, and why.

Every librdkafka error code maps to one of our errors (a test walks all of them): a code known to
refuse this very message for good becomes SinkRejected; anything else, unknown codes included,
stays retriable, because an audit event is better kept in the spool than dropped.
"""

from __future__ import annotations

from typing import Literal

from confluent_kafka import KafkaError

from bridge.errors import SinkError, SinkRejected, SinkUnavailable

# The `reason` label of login_audit_publish_errors_total for this sink: a bounded set.
Reason = Literal[
    "timeout",
    "queue_full",
    "too_large",
    "unauthorized",
    "authentication",
    "unknown_topic",
    "fatal",
    "rejected",
    "transport",
    "not_started",
    "internal",
]

_TOO_LARGE = {
    KafkaError.MSG_SIZE_TOO_LARGE,
    KafkaError.INVALID_MSG_SIZE,
    KafkaError.RECORD_LIST_TOO_LARGE,
}
# A missing ACL: retriable, because an operator can grant it; the events wait in the spool,
# counted as reason="unauthorized", instead of being buried as dead letters.
_UNAUTHORIZED = {
    KafkaError.TOPIC_AUTHORIZATION_FAILED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED,
    KafkaError.TRANSACTIONAL_ID_AUTHORIZATION_FAILED,
    KafkaError.GROUP_AUTHORIZATION_FAILED,
    KafkaError.DELEGATION_TOKEN_AUTHORIZATION_FAILED,
}
# The broker or client refuses this very message, or this topic, for good: replaying it from
# the spool would fail the same way forever.
_REJECTED = _TOO_LARGE | {
    KafkaError.INVALID_RECORD,
    KafkaError.INVALID_TIMESTAMP,
    KafkaError.TOPIC_EXCEPTION,
    KafkaError.POLICY_VIOLATION,
    KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT,
    KafkaError._INVALID_ARG,
    KafkaError._KEY_SERIALIZATION,
    KafkaError._VALUE_SERIALIZATION,
}
_AUTHENTICATION = {KafkaError._AUTHENTICATION, KafkaError.SASL_AUTHENTICATION_FAILED}
_TIMEOUT = {KafkaError._MSG_TIMED_OUT, KafkaError._TIMED_OUT, KafkaError.REQUEST_TIMED_OUT}
_UNKNOWN_TOPIC = {
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._UNKNOWN_TOPIC,
    KafkaError._UNKNOWN_PARTITION,
}
# Creating topics fails this way only when the settings cannot work on this cluster. Not
# INVALID_REPLICATION_FACTOR: a cluster with a broker away (a rolling restart) answers it too,
# so it is retried, with a hint in the message for a cluster that is simply too small.
BAD_TOPIC_SETTINGS = {
    KafkaError.INVALID_PARTITIONS,
    KafkaError.INVALID_CONFIG,
    KafkaError.POLICY_VIOLATION,
}


def failure_reason(err: KafkaError) -> Reason:
    """The metric label for a librdkafka error."""
    code = err.code()
    if code in _TIMEOUT:
        return "timeout"
    if code == KafkaError._QUEUE_FULL:
        return "queue_full"
    if code in _TOO_LARGE:
        return "too_large"
    if code in _UNAUTHORIZED:
        return "unauthorized"
    if code in _AUTHENTICATION:
        return "authentication"
    if code in _UNKNOWN_TOPIC:
        return "unknown_topic"
    if code == KafkaError._FATAL or err.fatal():
        return "fatal"
    if code in _REJECTED:
        return "rejected"
    return "transport"


def to_sink_error(err: KafkaError) -> SinkError:
    """Our error for a librdkafka error: rejected for good, or unavailable (spool and retry).

    Anything not known to be permanent is retriable: an audit event is better kept in the spool
    than dropped because a broker answered with an error we did not foresee.
    """
    text = f"kafka: {err.name()}: {err.str()}"
    if err.code() in _REJECTED:
        return SinkRejected(text, detail=err.name())
    return SinkUnavailable(text, detail=err.name())
