"""The suite's own hygiene on the shared test broker: a test's topics go with it."""

from __future__ import annotations

import time

import pytest
from confluent_kafka.cimpl import NewTopic

from .conftest import KafkaTopics
from support import delete_kafka_topics

pytestmark = [pytest.mark.kafka]


def test_deleting_a_prefix_removes_its_topics_and_keeps_every_other(
    kafka_bootstrap: str, kafka_topics: KafkaTopics
) -> None:
    ours = [f"{kafka_topics.prefix}.doomed.a", f"{kafka_topics.prefix}.doomed.b"]
    kept = f"{kafka_topics.prefix}.kept"
    created = kafka_topics.admin.create_topics([NewTopic(t, 1, 1) for t in [*ours, kept]])
    for future in created.values():
        future.result(30)

    delete_kafka_topics(kafka_bootstrap, f"{kafka_topics.prefix}.doomed")

    # Deletion is accepted before every broker's metadata shows it.
    deadline = time.monotonic() + 30
    while True:
        listed = set(kafka_topics.admin.list_topics(timeout=10).topics)
        if not listed & set(ours) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert not listed & set(ours)
    assert kept in listed  # the fixture's own teardown deletes it
