"""Fault tests against the real brokers: every event answered 2xx is delivered, whatever fails.

Each scenario sends N events with unique user names through a real bridge process while
something breaks (Kafka stopped and started, RabbitMQ stopped and started, the bridge killed
with SIGKILL and restarted), then reads the topic or queue back and prints
sent / acknowledged / delivered / lost / duplicated. Lost must be 0; duplicates are allowed
(delivery is at-least-once).
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from bridge.consume import RabbitMQReader
from bridge.settings import Settings

from conftest import KAFKA_BOOTSTRAP, REPO, BridgeProcess, post, print_fault_row
from support import kafka_user_names, skip_or_fail

N_EVENTS = 300
CLIENTS = 4
DRAIN_TIMEOUT = 180.0
RABBITMQ = os.environ.get("BRIDGE_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5673/")


def brokers(command: str) -> None:
    """Stops or starts a broker through the script that started it (scripts/brokers)."""
    subprocess.run(
        [str(REPO / "scripts/brokers"), command], check=True, timeout=240, stdout=subprocess.DEVNULL
    )


@pytest.fixture(autouse=True)
def managed_brokers() -> None:
    """These tests stop and start brokers, so they need the ones scripts/brokers runs."""
    status = subprocess.run(
        [str(REPO / "scripts/brokers"), "status"], capture_output=True, text=True, check=False
    )
    running = "kafka     running" in status.stdout and "rabbitmq  running" in status.stdout
    if not running:
        skip_or_fail("fault tests need brokers started by scripts/brokers start")


@dataclass
class Tally:
    sent: int = 0
    acknowledged: dict[str, str] = field(default_factory=dict)  # user name -> event id
    lock: threading.Lock = field(default_factory=threading.Lock)


def _send_all(
    bridge: BridgeProcess, names: list[str], tally: Tally, between: Callable[[int], None]
) -> None:
    """Sends every name once from CLIENTS threads; `between(i)` runs as event i is reached."""
    queue = iter(enumerate(names))
    queue_lock = threading.Lock()

    def client() -> None:
        while True:
            with queue_lock:
                item = next(queue, None)
            if item is None:
                return
            index, name = item
            between(index)
            url = (
                f"{bridge.url}/v1/hooks/sftpgo?ip=192.0.2.{index % 250 + 1}"
                f"&login_method=password&protocol=SSH&status={index % 2}"
            )
            status, body = _post_like_sftpgo(url, json.dumps({"username": name}).encode())
            with tally.lock:
                tally.sent += 1
                if status == 200:
                    tally.acknowledged[name] = body["event_id"]

    threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)


def _post_like_sftpgo(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    """SFTPGo's HTTP hook retries connection errors, 429 and 5xx three times (2, 4, 8 s);
    the waits here are shorter to keep the test brief."""
    for wait in (0.5, 1.0, 2.0, None):
        try:
            status, answer, _ = post(url, body)
        except (OSError, http.client.HTTPException):
            # Refused, or cut off mid-answer by the kill: SFTPGo sees a connection error too.
            status, answer = 0, {}
        if status == 200 or (400 <= status < 500 and status != 429) or wait is None:
            return status, answer
        time.sleep(wait)
    raise AssertionError("unreachable")


def _once(action: Callable[[], None]) -> Callable[[], None]:
    done = threading.Event()
    lock = threading.Lock()

    def run() -> None:
        with lock:
            if not done.is_set():
                done.set()
                action()

    return run


def _spool_depth(bridge: BridgeProcess) -> float:
    with urllib.request.urlopen(f"{bridge.url}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith('login_audit_spool_events{spool="bridge"}'):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no spool gauge on /metrics")


def _wait_drained(bridge: BridgeProcess) -> None:
    deadline = time.monotonic() + DRAIN_TIMEOUT
    while _spool_depth(bridge) > 0:
        assert time.monotonic() < deadline, "the spool did not drain"
        time.sleep(0.5)


def _report(
    scenario: str, tally: Tally, delivered: list[str], capsys: pytest.CaptureFixture[str]
) -> tuple[int, int]:
    counts = Counter(delivered)
    lost = sorted(set(tally.acknowledged) - set(counts))
    duplicated = sum(n - 1 for n in counts.values() if n > 1)
    print_fault_row(
        scenario,
        sent=tally.sent,
        acknowledged=len(tally.acknowledged),
        delivered=len(counts),
        lost=len(lost),
        duplicated=duplicated,
        capsys=capsys,
    )
    return len(lost), duplicated


def _kafka_bridge(factory: Callable[..., BridgeProcess], topic: str, **extra: str) -> BridgeProcess:
    return factory(
        sink="kafka",
        kafka_bootstrap_servers=KAFKA_BOOTSTRAP,
        kafka_topic_success=f"{topic}.success",
        kafka_topic_failure=f"{topic}.failure",
        kafka_topic_partitions="1",
        publish_timeout_seconds="6",
        spool_after_seconds="1",
        auth_tokens="test-token",
        **extra,
    )


@pytest.fixture
def names() -> Iterator[list[str]]:
    run = uuid.uuid4().hex[:8]
    yield [f"fault-{run}-{i}" for i in range(N_EVENTS)]


def _run_scenario(
    bridge: BridgeProcess,
    names: list[str],
    faults: dict[int, Callable[[], None]],
    *,
    recover: Callable[[], None],
) -> Tally:
    """Sends every name, firing each fault once when its event index is reached."""
    fired = {index: _once(action) for index, action in faults.items()}
    tally = Tally()
    try:
        _send_all(bridge, names, tally, lambda i: fired[i]() if i in fired else None)
    finally:
        recover()  # never leave a broker stopped for the tests that follow
    _wait_drained(bridge)
    return tally


@pytest.mark.kafka
@pytest.mark.slow
def test_kafka_stopped_and_started_mid_stream_loses_nothing(
    bridge_factory: Callable[..., BridgeProcess],
    names: list[str],
    capsys: pytest.CaptureFixture[str],
    kafka_topic_prefix: Callable[[str], str],
) -> None:
    topic = kafka_topic_prefix("fault-kafka")
    bridge = _kafka_bridge(bridge_factory, topic)
    start = _once(lambda: brokers("start-kafka"))
    faults = {N_EVENTS // 3: lambda: brokers("stop-kafka"), 2 * N_EVENTS // 3: start}
    tally = _run_scenario(bridge, names, faults, recover=start)
    delivered = kafka_user_names(KAFKA_BOOTSTRAP, topic)
    lost, _ = _report("kafka stopped mid-stream", tally, delivered, capsys)
    assert len(tally.acknowledged) == N_EVENTS  # the spool took every event while Kafka was away
    assert lost == 0


@pytest.mark.rabbitmq
@pytest.mark.slow
def test_rabbitmq_stopped_and_started_mid_stream_loses_nothing(
    bridge_factory: Callable[..., BridgeProcess],
    names: list[str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = uuid.uuid4().hex[:8]
    queues = [f"fault-{run}.success", f"fault-{run}.failure"]
    bridge = bridge_factory(
        sink="rabbitmq",
        rabbitmq_url=RABBITMQ,
        rabbitmq_exchange=f"fault-{run}",
        rabbitmq_declare_queues="true",
        rabbitmq_queue_success=queues[0],
        rabbitmq_queue_failure=queues[1],
        publish_timeout_seconds="6",
        spool_after_seconds="1",
        auth_tokens="test-token",
    )
    start = _once(lambda: brokers("start-rabbitmq"))
    faults = {N_EVENTS // 3: lambda: brokers("stop-rabbitmq"), 2 * N_EVENTS // 3: start}
    tally = _run_scenario(bridge, names, faults, recover=start)
    lost, _ = _report("rabbitmq stopped mid-stream", tally, _rabbitmq_names(run, queues), capsys)
    assert len(tally.acknowledged) == N_EVENTS
    assert lost == 0


def _rabbitmq_names(run: str, queues: list[str]) -> list[str]:
    settings = Settings(rabbitmq_url=RABBITMQ, rabbitmq_exchange=f"fault-{run}")

    async def read() -> list[str]:
        found: list[str] = []
        for queue in queues:
            async with RabbitMQReader(settings, queue=queue) as reader:
                async for event in reader.events(idle_timeout=3):
                    assert event.record is not None, event.error
                    found.append(event.record["user"]["name"])
        return found

    return asyncio.run(read())


@pytest.mark.kafka
@pytest.mark.slow
def test_bridge_killed_with_sigkill_mid_stream_loses_nothing_it_acknowledged(
    bridge_factory: Callable[..., BridgeProcess],
    names: list[str],
    capsys: pytest.CaptureFixture[str],
    kafka_topic_prefix: Callable[[str], str],
) -> None:
    topic = kafka_topic_prefix("fault-kill")
    bridge = _kafka_bridge(bridge_factory, topic)

    def kill_and_restart() -> None:
        bridge.stop(signal.SIGKILL)
        bridge.start()

    # Kafka is away around the kill, so the kill finds acknowledged events only in the spool.
    start = _once(lambda: brokers("start-kafka"))
    faults = {
        N_EVENTS // 4: lambda: brokers("stop-kafka"),
        N_EVENTS // 2: kill_and_restart,
        3 * N_EVENTS // 4: start,
    }
    tally = _run_scenario(bridge, names, faults, recover=start)
    lost, _ = _report(
        "bridge SIGKILL mid-stream", tally, kafka_user_names(KAFKA_BOOTSTRAP, topic), capsys
    )
    assert len(tally.acknowledged) >= N_EVENTS - CLIENTS * 2  # only requests cut by the kill
    assert lost == 0
