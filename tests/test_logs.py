"""librdkafka's repeated lines: the first logged, the repeats counted, not one line per attempt."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator

import pytest

from bridge.logs import RepeatSuppressor

from conftest import BridgeProcess
from support import free_port

REFUSED = (
    "FAIL [login-audit-bridge#producer-{n}] [thrd:127.0.0.1:1/bootstrap]: 127.0.0.1:1/bootstrap: "
    "Connect to ipv4#127.0.0.1:1 failed: Connection refused (after {ms}ms in state CONNECT)"
)


@pytest.fixture(autouse=True)
def root_at_info() -> Iterator[None]:
    """Below debug, as a bridge runs by default (another test may leave the root at debug)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.INFO)
    yield
    root.setLevel(level)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def record(message: str, level: int = logging.ERROR) -> logging.LogRecord:
    return logging.LogRecord("bridge.sinks.kafka.librdkafka", level, __file__, 1, message, (), None)


def test_repeats_within_the_window_are_left_out_and_counted_on_the_next_line_through() -> None:
    clock = Clock()
    suppress = RepeatSuppressor(60.0, clock=clock)
    first = record(REFUSED.format(n=1, ms=0))
    assert suppress.filter(first)
    assert first.getMessage() == REFUSED.format(n=1, ms=0)
    for ms in range(40):  # the timing differs, the producer's number too: still the same line
        clock.now += 1.0
        assert not suppress.filter(record(REFUSED.format(n=1 + ms % 3, ms=ms)))
    clock.now += 21.0  # 61 s after the first
    later = record(REFUSED.format(n=4, ms=1))
    assert suppress.filter(later)
    assert later.getMessage() == (
        REFUSED.format(n=4, ms=1) + " (40 identical line(s) not logged in the 60 s before)"
    )
    clock.now += 61.0  # nothing left out since: no count
    quiet = record(REFUSED.format(n=4, ms=0))
    assert suppress.filter(quiet)
    assert quiet.getMessage() == REFUSED.format(n=4, ms=0)


def test_lines_that_differ_otherwise_or_in_level_all_go_through() -> None:
    suppress = RepeatSuppressor(60.0, clock=Clock())
    other_broker = REFUSED.format(n=1, ms=0).replace("127.0.0.1:1", "127.0.0.1:2")
    lines = [
        record(REFUSED.format(n=1, ms=0)),
        record(other_broker),
        record(REFUSED.format(n=1, ms=0), level=logging.WARNING),
        record("ERROR [login-audit-bridge#producer-1]: 1/1 brokers are down"),
    ]
    assert all(suppress.filter(line) for line in lines)


def test_only_the_latest_lines_are_remembered() -> None:
    suppress = RepeatSuppressor(60.0, clock=Clock(), max_kept=2)
    assert suppress.filter(record("a"))
    assert suppress.filter(record("b"))
    assert suppress.filter(record("c"))  # "a" forgotten
    assert not suppress.filter(record("c"))
    assert suppress.filter(record("a"))


def test_a_bridge_whose_broker_is_away_logs_the_refused_connection_once_not_per_attempt(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    """librdkafka tries again every few tens of milliseconds while the sink starts: 20 to 40
    identical ERROR lines a second before, for as long as the broker was away."""
    bridge = bridge_factory(
        sink="kafka",
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",  # nothing listens there
        publish_timeout_seconds="1",
        log_level="info",  # at debug, every line goes through
    )
    deadline = time.monotonic() + 20
    while bridge.logs().count("spooling meanwhile") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert bridge.stop() == 0
    logs = [json.loads(line) for line in bridge.logs().splitlines()]
    starts = [r for r in logs if "spooling meanwhile" in r["message"]]
    assert len(starts) >= 2  # two producers tried, and failed, to connect
    refused = [
        r
        for r in logs
        if r["logger"] == "bridge.sinks.kafka.librdkafka" and "Connection refused" in r["message"]
    ]
    assert len(refused) == 1
    assert refused[0]["level"] == "ERROR"


def test_at_debug_level_every_repeated_line_goes_through() -> None:
    logging.getLogger().setLevel(logging.DEBUG)  # put back by root_at_info
    suppress = RepeatSuppressor(60.0, clock=Clock())
    assert all(suppress.filter(record(REFUSED.format(n=1, ms=0))) for _ in range(3))


def test_a_bridge_whose_rabbitmq_is_away_logs_the_clients_failed_connect_once_not_per_attempt(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    """aiormq logs an ERROR and aio-pika an INFO at every attempt, about one each 1.3 s."""
    bridge = bridge_factory(
        sink="rabbitmq",
        rabbitmq_url=f"amqp://guest:guest@127.0.0.1:{free_port()}/",  # nothing listens there
        log_level="info",
    )
    deadline = time.monotonic() + 20
    while bridge.logs().count("unreachable") < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert bridge.stop() == 0
    logs = [json.loads(line) for line in bridge.logs().splitlines()]
    attempts = [
        r for r in logs if r["logger"] == "bridge.sinks.rabbitmq" and "unreachable" in r["message"]
    ]
    assert len(attempts) >= 3
    for name in ("aiormq.connection", "aio_pika.robust_connection"):
        assert len([r for r in logs if r["logger"] == name]) == 1, name
