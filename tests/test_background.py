"""Background tasks: a failure is logged, counted and restarted, /readyz says so meanwhile, and a
configuration error found at start-up ends the process with the config exit code.

The supervisor alone runs here in-process; the real causes run through a real bridge process:
the Apicurio registry answering 404 (a wrong URL), and the spool file locked by another process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from test_spool_faults import read_users, spool_with_events

from bridge.cli import Exit
from bridge.errors import ConfigError
from bridge.metrics import Metrics
from bridge.supervisor import Supervisor

from conftest import KAFKA_BOOTSTRAP, BridgeProcess, print_fault_row
from support import skip_or_fail, wait_for

REGISTRY = os.environ.get(
    "BRIDGE_TEST_SCHEMA_REGISTRY_URL", "http://127.0.0.1:18081/apis/ccompat/v7"
)


def _fast(metrics: Metrics) -> Supervisor:
    return Supervisor(metrics, restart_min=0.05, restart_max=0.1, stable_after=0.3)


def test_a_failing_task_is_logged_with_its_traceback_counted_restarted_and_marks_not_ready(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = Metrics()
    runs: list[asyncio.Event] = []

    async def flaky() -> None:
        runs.append(asyncio.Event())
        runs[-1].set()
        if len(runs) <= 2:
            raise RuntimeError("a bug in the task")
        await asyncio.sleep(3600)

    async def scenario() -> tuple[str | None, str | None]:
        supervisor = _fast(metrics)
        supervisor.start("replay", flaky)
        await asyncio.sleep(0)
        down = supervisor.problem  # failed once, waiting to restart
        await asyncio.sleep(1.0)  # restarted twice; the third run has lasted past stable_after
        up = supervisor.problem
        await supervisor.stop()
        return down, up

    down, up = asyncio.run(scenario())
    assert len(runs) == 3
    assert down == "background task replay is down: RuntimeError: a bug in the task"
    assert up is None
    sample = metrics.registry.get_sample_value
    assert sample("login_audit_background_task_failures_total", {"task": "replay"}) == 2
    assert sample("login_audit_background_task_up", {"task": "replay"}) == 1
    failures = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(failures) == 2
    assert all(r.exc_info is not None and r.exc_info[0] is RuntimeError for r in failures)


def test_an_expected_failure_is_logged_without_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def locked() -> None:
        raise sqlite3.OperationalError("database is locked")

    async def scenario() -> None:
        supervisor = _fast(Metrics())
        supervisor.start("replay", locked)
        await asyncio.sleep(0.2)
        await supervisor.stop()

    with caplog.at_level(logging.ERROR):
        asyncio.run(scenario())
    failures = [r for r in caplog.records if r.getMessage().startswith("background task replay")]
    assert failures
    message = "background task replay failed: OperationalError: database is locked"
    assert failures[0].getMessage() == message
    assert all(r.exc_info is None for r in failures)


def test_a_configuration_error_is_not_restarted_but_handed_over_as_fatal() -> None:
    metrics = Metrics()
    runs: list[int] = []

    async def refused() -> None:
        runs.append(1)
        raise ConfigError("schema registry answered 404")

    async def scenario() -> ConfigError:
        supervisor = _fast(metrics)
        supervisor.start("sink-start", refused)
        fatal = await asyncio.wait_for(supervisor.fatal_error(), 5)
        await asyncio.sleep(0.3)  # a restart would have happened by now
        await supervisor.stop()
        return fatal

    assert asyncio.run(scenario()).message == "schema registry answered 404"
    assert runs == [1]
    failures = metrics.registry.get_sample_value(
        "login_audit_background_task_failures_total", {"task": "sink-start"}
    )
    assert failures == 1


# -- real causes, through a real bridge process


def _require_registry() -> None:
    try:
        with urllib.request.urlopen(f"{REGISTRY}/subjects", timeout=5):
            return
    except OSError:
        skip_or_fail("no Schema Registry: run LOGIN_AUDIT_REGISTRY=1 scripts/brokers start")


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.parametrize("spool", ["true", "false"])
def test_a_registry_answering_404_at_start_ends_the_bridge_with_the_config_exit_code(
    bridge_factory: Callable[..., BridgeProcess],
    spool: str,
    kafka_topic_prefix: Callable[[str], str],
) -> None:
    """A wrong registry URL is an operator's mistake: with the spool on, the bridge used to
    answer 200 into a spool that never drained; now it logs why, counts it, and exits 3."""
    _require_registry()
    topic = kafka_topic_prefix("config-exit")
    bridge = bridge_factory(
        start=False,
        sink="kafka",
        kafka_bootstrap_servers=KAFKA_BOOTSTRAP,
        kafka_topic_success=f"{topic}.success",
        kafka_topic_failure=f"{topic}.failure",
        kafka_topic_partitions="1",
        schema_registry_url=f"{REGISTRY}/not-the-registry",
        spool_enabled=spool,
        log_format="text",
    )
    process = bridge.launch()
    try:
        code = process.wait(timeout=90)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    logs = bridge.logs()
    assert code == Exit.CONFIG, logs
    assert "answered 404" in logs
    assert "login-audit-bridge: schema registry" in logs  # the last word, on stderr
    if spool == "true":
        assert "background task sink-start stopped on a configuration error" in logs


@pytest.mark.slow
def test_a_spool_locked_by_another_process_fails_the_replay_which_recovers_once_released(
    bridge_factory: Callable[..., BridgeProcess],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Another process holds the spool's write lock past the busy timeout: the replayer fails
    to remove what it sent, /readyz turns 503 naming it, the failure is counted; once the lock
    is released it restarts, and every spooled event is delivered (some twice)."""
    data = tmp_path / "data"
    users = spool_with_events(data / "spool.sqlite3", 20)
    holder = sqlite3.connect(data / "spool.sqlite3", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        bridge = bridge_factory(data_dir=str(data), auth_tokens="test-token")
        _, body = wait_for(lambda: _readyz(bridge), lambda r: r[0] == 503, timeout=60)
        assert body["error"] == "task_down"
        assert (
            "background task replay is down: OperationalError: database is locked"
            in body["message"]
        )
        assert _metric(bridge, 'login_audit_background_task_failures_total{task="replay"}') >= 1
        assert _metric(bridge, 'login_audit_background_task_up{task="replay"}') == 0
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    wait_for(lambda: _readyz(bridge)[0], lambda s: s == 200, timeout=90)
    wait_for(
        lambda: _metric(bridge, 'login_audit_spool_events{spool="bridge"}'),
        lambda d: d == 0,
        timeout=60,
    )
    delivered = read_users(data / "events")
    print_fault_row(
        "spool locked by another process",
        sent=len(users),
        acknowledged=len(users),
        delivered=len(set(delivered) & set(users)),
        lost=len(set(users) - set(delivered)),
        duplicated=len(delivered) - len(set(delivered)),
        capsys=capsys,
    )
    assert set(users) <= set(delivered)


def _readyz(bridge: BridgeProcess) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"{bridge.url}/readyz", timeout=10) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _metric(bridge: BridgeProcess, series: str) -> float:
    with urllib.request.urlopen(f"{bridge.url}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {series} on /metrics")
