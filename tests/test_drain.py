"""An acknowledged event survives its pod: drained on SIGTERM, or by `drain` from the volume left.

The Kafka tests stop and start a broker on purpose, so they run a Kafka of their own (other
ports, its own run directory, through scripts/brokers' overridable variables) and never touch
the shared one. Each scenario sends events while that Kafka is down (every one is answered
2xx from the spool), stops the bridge, brings Kafka back, runs the drain path, reads the topic
back and prints its row of the fault table.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bridge.codec import AvroCodec
from bridge.durable_spool import DurableSpool, SpoolLock
from bridge.errors import SpoolInUse
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline
from bridge.sinks.file import event_files, read_file
from bridge.sinks.memory import MemorySink

from conftest import BIN, BridgeProcess, encoded, post, print_fault_row
from support import OwnKafka, free_port, own_kafka_instance

N_EVENTS = 40


@pytest.fixture
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnKafka]:
    """Stopped at first; whatever a test did, it is stopped again afterwards (by its pid file)."""
    with own_kafka_instance(tmp_path_factory.mktemp("own-kafka")) as kafka:
        yield kafka


def _kafka_bridge(
    factory: Callable[..., BridgeProcess], kafka: OwnKafka, topic: str, **extra: str
) -> BridgeProcess:
    return factory(
        sink="kafka",
        kafka_bootstrap_servers=kafka.bootstrap,
        kafka_topic_success=f"{topic}.success",
        kafka_topic_failure=f"{topic}.failure",
        kafka_topic_partitions="1",
        publish_timeout_seconds="2",
        spool_after_seconds="1",
        auth_tokens="test-token",
        **extra,
    )


def _send(bridge: BridgeProcess, names: list[str]) -> dict[str, str]:
    """Sends one login per name; returns name -> event id of those answered 200."""
    acknowledged = {}
    for index, name in enumerate(names):
        url = (
            f"{bridge.url}/v1/hooks/sftpgo?ip=192.0.2.{index % 250 + 1}"
            f"&login_method=password&protocol=SSH&status={index % 2}"
        )
        status, body, _ = post(url, json.dumps({"username": name}).encode())
        if status == 200:
            acknowledged[name] = body["event_id"]
    return acknowledged


def _spooled(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "spool.sqlite3") as db:
        return int(db.execute("SELECT COUNT(*) FROM events").fetchone()[0])


def _drain(data_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "login-audit-bridge"), "drain", "--data-dir", str(data_dir), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def _report(
    scenario: str,
    names: list[str],
    acknowledged: dict[str, str],
    delivered: list[str],
    capsys: pytest.CaptureFixture[str],
) -> int:
    lost = set(acknowledged) - set(delivered)
    print_fault_row(
        scenario,
        sent=len(names),
        acknowledged=len(acknowledged),
        delivered=len(set(delivered)),
        lost=len(lost),
        duplicated=len(delivered) - len(set(delivered)),
        capsys=capsys,
    )
    return len(lost)


@pytest.mark.kafka
def test_pod_deleted_while_the_broker_is_down_leaves_a_spool_the_drain_command_delivers(
    bridge_factory: Callable[..., BridgeProcess],
    own_kafka: OwnKafka,
    capsys: pytest.CaptureFixture[str],
) -> None:
    topic = f"drain-{uuid.uuid4().hex[:8]}"
    names = [f"{topic}-{i}" for i in range(N_EVENTS)]
    bridge = _kafka_bridge(bridge_factory, own_kafka, topic, shutdown_drain_seconds="1")
    acknowledged = _send(bridge, names)
    assert len(acknowledged) == N_EVENTS  # answered from the spool: the broker is down
    assert bridge.stop() == 0
    assert "40 event(s) stay in the spool" in bridge.logs()
    assert _spooled(bridge.data_dir) == N_EVENTS

    # The pod is gone; a one-off drain Job mounts its volume. The broker is still away:
    # it says so and exits nonzero, leaving every event on the volume.
    failed = _drain(bridge.data_dir, bridge.env, "--timeout", "3")
    assert failed.returncode == 4, failed.stderr
    assert "40 event(s) stay spooled: keep the volume" in failed.stderr
    assert _spooled(bridge.data_dir) == N_EVENTS

    own_kafka.start()
    done = _drain(bridge.data_dir, bridge.env, "--timeout", "60")
    assert done.returncode == 0, done.stderr
    line = json.loads(done.stdout.splitlines()[0])
    assert (line["delivered"], line["left"], line["error"]) == (N_EVENTS, 0, None)
    assert _spooled(bridge.data_dir) == 0
    delivered = own_kafka.user_names(topic)
    lost = _report("pod deleted while the broker is down", names, acknowledged, delivered, capsys)
    assert lost == 0


@pytest.mark.kafka
def test_scaled_down_with_a_backlog_the_bridge_drains_it_before_exiting(
    bridge_factory: Callable[..., BridgeProcess],
    own_kafka: OwnKafka,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """SIGTERM while the spool holds a backlog and the broker is (back) within the grace
    period: the bridge sends everything before it exits, leaving nothing on the volume."""
    topic = f"drain-{uuid.uuid4().hex[:8]}"
    names = [f"{topic}-{i}" for i in range(N_EVENTS)]
    bridge = _kafka_bridge(bridge_factory, own_kafka, topic, shutdown_drain_seconds="90")
    acknowledged = _send(bridge, names)
    assert len(acknowledged) == N_EVENTS
    assert bridge.process is not None
    bridge.process.terminate()  # the StatefulSet scaled down: SIGTERM, then the grace period
    own_kafka.start()  # the broker returns while the bridge is draining
    assert bridge.stop(timeout=120) == 0
    assert _spooled(bridge.data_dir) == 0
    assert f"spool drained at shutdown: {N_EVENTS} event(s) sent" in bridge.logs()
    delivered = own_kafka.user_names(topic)
    lost = _report("scaled down with a backlog", names, acknowledged, delivered, capsys)
    assert lost == 0


def _admin_get(url: str) -> tuple[int, str] | None:
    """(status, body) of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, refused.read().decode()
    except OSError:
        return None


@pytest.mark.kafka
def test_while_the_bridge_drains_at_shutdown_its_admin_port_still_answers(
    bridge_factory: Callable[..., BridgeProcess], own_kafka: OwnKafka
) -> None:
    """The hook listeners stop on SIGTERM; /readyz (503, stopping) and /metrics (the spool's
    depth) keep answering until the drain is done, so an operator can watch it."""
    topic = f"drain-{uuid.uuid4().hex[:8]}"
    bridge = _kafka_bridge(bridge_factory, own_kafka, topic, shutdown_drain_seconds="90")
    acknowledged = _send(bridge, [f"{topic}-{i}" for i in range(5)])
    assert len(acknowledged) == 5  # spooled: the broker is down
    assert bridge.process is not None and bridge.admin_url is not None
    bridge.process.terminate()
    deadline = time.monotonic() + 20
    while "draining 5 spooled event(s)" not in bridge.logs() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)  # well into the drain, which waits for the broker
    assert bridge.process.poll() is None
    assert _admin_get(f"{bridge.url}/healthz") is None  # the hook port closed first
    ready = _admin_get(f"{bridge.admin_url}/readyz")
    assert ready is not None and ready[0] == 503 and json.loads(ready[1])["error"] == "stopping"
    scraped = _admin_get(f"{bridge.admin_url}/metrics")
    assert scraped is not None and scraped[0] == 200
    assert 'login_audit_spool_events{spool="bridge"} 5.0' in scraped[1]
    own_kafka.start()
    assert bridge.stop(timeout=120) == 0
    assert _spooled(bridge.data_dir) == 0
    assert sorted(own_kafka.user_names(topic)) == sorted(acknowledged)


@pytest.mark.kafka
def test_sigterm_after_sigterm_never_kills_a_bridge_while_it_drains_and_flushes(
    bridge_factory: Callable[..., BridgeProcess], own_kafka: OwnKafka
) -> None:
    """An impatient caller repeats SIGTERM every 20 ms from the first to the exit: none of them
    may end the process with the default action (exit -15) between the listeners' stop, the
    drain and the sink's flush; the bridge drains everything and exits 0."""
    topic = f"drain-{uuid.uuid4().hex[:8]}"
    bridge = _kafka_bridge(bridge_factory, own_kafka, topic, shutdown_drain_seconds="90")
    acknowledged = _send(bridge, [f"{topic}-{i}" for i in range(N_EVENTS)])
    assert len(acknowledged) == N_EVENTS
    process = bridge.process
    assert process is not None
    process.terminate()
    # The broker starts in the background while the signals go on: the drain cannot end before
    # it is up, so SIGTERMs are sure to land in the drain (started after the repeats, the drain
    # could be over before the next one came, and the test proved nothing).
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        starting = pool.submit(own_kafka.start)
        deadline = time.monotonic() + 120
        while process.poll() is None and time.monotonic() < deadline:
            process.terminate()
            time.sleep(0.02)
        starting.result()  # the broker did start: a drain left undone is the bridge's doing
    assert bridge.stop(timeout=5) == 0
    assert _spooled(bridge.data_dir) == 0
    logs = bridge.logs()
    assert "already stopping" in logs
    assert "Logging error" not in logs  # a handler logging inside logging's own write


def test_sigterm_while_a_bridge_without_a_spool_waits_for_its_broker_stops_it_cleanly(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    """Without a spool the bridge waits for its sink before it serves; SIGTERM then (a rollout
    giving up on a pod that never turned ready) is a stop, not a death by the default action
    (exit -15, unlogged, nothing cleaned up)."""
    bridge = bridge_factory(
        sink="kafka",
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",  # nothing listens there
        spool_enabled="false",
        publish_timeout_seconds="60",
    )
    assert bridge.process is not None
    # Its admin port answers /healthz while it waits (bridge_factory waited for that).
    time.sleep(0.5)
    assert bridge.process.poll() is None
    assert " serving on " not in bridge.logs()
    # Well before the publish timeout: the wait for the broker ends with the stop.
    assert bridge.stop(timeout=20) == 0
    logs = bridge.logs()
    assert "received SIGTERM while starting: stopping" in logs
    assert "login-audit-bridge stopped" in logs


def test_drain_refuses_a_spool_a_running_bridge_holds(bridge: BridgeProcess) -> None:
    done = _drain(bridge.data_dir, bridge.env, "--timeout", "5")
    assert done.returncode == 5, done.stderr
    assert bridge.process is not None
    assert f"is in use by process {bridge.process.pid}" in done.stderr


def test_a_second_bridge_on_the_same_data_directory_is_refused(bridge: BridgeProcess) -> None:
    """Two processes replaying one spool would send every event twice: the second exits 3."""
    assert bridge.process is not None
    env = bridge.env | {"BRIDGE_PORT": str(free_port()), "BRIDGE_ADMIN_PORT": str(free_port())}
    second = subprocess.run(
        [str(BIN / "login-audit-bridge"), "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert second.returncode == 3, second.stderr
    assert f"is in use by process {bridge.process.pid}" in second.stderr


def test_a_spool_lock_is_exclusive_and_released_with_its_holder(tmp_path: Path) -> None:
    path = tmp_path / "spool.sqlite3"
    with SpoolLock(path), pytest.raises(SpoolInUse, match=f"in use by process {os.getpid()}"):
        SpoolLock(path).acquire()
    with SpoolLock(path):
        pass


def test_drain_delivers_the_spool_of_a_worker_the_smaller_workers_count_no_longer_runs(
    tmp_path: Path,
) -> None:
    """`serve --workers 4` then `--workers 2` leaves workers/3's spool to nobody: drain sends
    it to the sink (here the file sink) and empties it."""
    data_dir = tmp_path / "data"
    stranded = data_dir / "workers" / "3" / "spool.sqlite3"
    normalizer = Normalizer()
    events = [
        normalizer.sftpgo(
            {"ip": "192.0.2.1", "login_method": "password", "protocol": "SSH", "status": "1"},
            {"username": f"stranded-{i}"},
        )
        for i in range(5)
    ]

    async def spool_them() -> None:
        spool = DurableSpool(stranded, AvroCodec(), max_bytes=10**8, max_events=1000)
        await spool.open()
        for event in events:
            await spool.put(encoded(event))
        await spool.close()

    asyncio.run(spool_them())
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    done = _drain(data_dir, env, "--sink", "file")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["delivered"] == 5
    names = [r["user"]["name"] for p in event_files(data_dir / "events") for r in read_file(p)]
    assert names == [f"stranded-{i}" for i in range(5)]
    with sqlite3.connect(stranded) as db:
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0


def test_readiness_turns_503_once_the_bridge_is_stopping() -> None:
    sink = MemorySink()
    asyncio.run(sink.start())
    pipeline = Pipeline(sink=sink, metrics=Metrics())
    assert pipeline.unready() is None
    pipeline.stopping = True
    assert pipeline.unready() == ("stopping", "the bridge is shutting down")
