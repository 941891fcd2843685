"""`serve --workers N`: N worker processes on one port, each with its own data directory."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge import handoff
from bridge.cli import Exit
from bridge.codec import AvroCodec
from bridge.durable_spool import DurableSpool
from bridge.normalize import Normalizer
from bridge.settings import load_settings
from bridge.sinks.file import read_events
from bridge.workers import usable_cpus, worker_count, worker_settings

from conftest import BIN, SERVING, BridgeProcess, encoded, post
from support import free_port

pytestmark = pytest.mark.slow

HOOK = "/v1/hooks/sftpgo?ip=198.51.100.7&login_method=password&protocol=SSH&status=0"
WAIT_SECONDS = 20.0


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def names(events_dir: Path) -> list[str]:
    if not events_dir.exists():
        return []
    return [r["user"]["name"] for r in read_events(events_dir)]


def test_serve_workers_2_answers_on_one_port_takes_in_the_hook_spool_once_and_stops_cleanly(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    bridge = bridge_factory(start=False, auth_tokens="test-token", workers="2")
    spooled = {f"spooled{i}" for i in range(3)}
    for i, user in enumerate(sorted(spooled)):
        document = {
            "format": handoff.FORMAT,
            "received_ms": int(time.time() * 1000),
            "query": {"ip": "192.0.2.7", "login_method": "password", "protocol": "SSH"}
            | {"status": "0"},
            "user": {"username": user, "id": 7},
        }
        assert handoff.write(
            str(bridge.data_dir / "hook-spool"), 1000 + i, json.dumps(document).encode()
        )
    bridge.start()
    assert bridge.process is not None
    workers = children_of(bridge.process.pid)
    assert len(workers) == 2
    first, second = bridge.data_dir / "events", bridge.data_dir / "workers" / "1" / "events"
    # Each request on a new connection: the kernel spreads them over the sockets of the workers
    # listening by then. The first may answer before the second has bound its socket, so send
    # (at least 40, at most 1,000) until both have stored some.
    sent: set[str] = set()
    deadline = time.monotonic() + WAIT_SECONDS
    while len(sent) < 40 or (
        not names(second) and len(sent) < 1000 and time.monotonic() < deadline
    ):
        user = f"posted{len(sent)}"
        status, _, _ = post(f"{bridge.url}{HOOK}", json.dumps({"username": user}).encode())
        assert status == 200
        sent.add(user)
    deadline = time.monotonic() + WAIT_SECONDS
    while spooled - set(names(first)) and time.monotonic() < deadline:
        time.sleep(0.1)
    in_first, in_second = names(first), names(second)
    assert sent <= set(in_first) | set(in_second)
    assert sent & set(in_first) and sent & set(in_second)  # both workers answered
    # Only worker 0 takes in the hook spool, and each spooled login becomes one event.
    assert sorted(n for n in in_first if n in spooled) == sorted(spooled)
    assert not spooled & set(in_second)
    # `tail` on the data directory shows what every worker stored, not only worker 0.
    tail = subprocess.run(
        [str(BIN / "login-audit-bridge"), "tail", "--data-dir", str(bridge.data_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    tailed = {json.loads(line)["user"]["name"] for line in tail.stdout.splitlines()}
    assert sent | spooled <= tailed
    assert bridge.stop() == Exit.OK
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)


def running(pid: int) -> bool:
    """Not exited: a worker orphaned by `serve`'s death stays a zombie until init reaps it."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def test_killed_serve_leaves_no_worker_running_and_no_socket_directory(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    bridge = bridge_factory(auth_tokens="test-token", workers="2")
    assert bridge.process is not None
    workers = children_of(bridge.process.pid)
    assert len(workers) == 2
    argv = Path(f"/proc/{workers[0]}/cmdline").read_bytes().decode().split("\0")
    sockets = Path(argv[argv.index("--worker-sockets") + 1])
    # bridge_factory waited for both workers to serve: one signalled before that cleans up
    # nothing (BridgeProcess.wait_until_workers_serve).
    assert sorted(p.name for p in sockets.iterdir()) == ["0.sock", "1.sock"]
    bridge.process.kill()
    bridge.process.wait()
    deadline = time.monotonic() + WAIT_SECONDS
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(running, workers))
    assert not sockets.exists()


def test_killed_serve_whose_workers_still_start_leaves_no_socket_directory(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    """Workers still starting (here: waiting for a broker, without a spool) when `serve` is
    killed get SIGTERM from its death and stop through their clean-up, removing their sockets;
    before, the signal's default action ended them and the sockets stayed under /tmp."""
    bridge = bridge_factory(
        start=False,
        auth_tokens="test-token",
        workers="2",
        sink="kafka",
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",  # nothing listens there
        spool_enabled="false",
        publish_timeout_seconds="6",
    )
    process = bridge.launch()
    deadline = time.monotonic() + WAIT_SECONDS
    while len(children_of(process.pid)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    workers = children_of(process.pid)
    assert len(workers) == 2
    argv = Path(f"/proc/{workers[0]}/cmdline").read_bytes().decode().split("\0")
    sockets = Path(argv[argv.index("--worker-sockets") + 1])
    # Each worker binds its socket before it waits for the sink, which takes seconds here.
    while len(list(sockets.glob("*.sock"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(p.name for p in sockets.iterdir()) == ["0.sock", "1.sock"]
    assert SERVING not in bridge.logs()
    process.kill()
    process.wait()
    deadline = time.monotonic() + WAIT_SECONDS
    while any(map(running, workers)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(map(running, workers))
    assert not sockets.exists()
    assert bridge.logs().count("received SIGTERM while starting: stopping") == 2


def spool_events(spool_path: Path, users: list[str]) -> None:
    """Stores events in a spool as a bridge whose sink was down would have."""
    normalizer = Normalizer()

    async def store() -> None:
        spool = DurableSpool(spool_path, AvroCodec(), max_bytes=10**8, max_events=1000)
        await spool.open()
        for user in users:
            query = {"ip": "192.0.2.1", "login_method": "password", "protocol": "SSH"}
            await spool.put(encoded(normalizer.sftpgo(query | {"status": "1"}, {"username": user})))
        await spool.close()

    asyncio.run(store())


def test_a_spool_holding_events_beyond_the_worker_count_gets_its_worker_started(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    """A run with 2 workers after one with 4 (or on a machine with fewer CPUs): worker 2's spool
    still holds events, which only worker 2 replays, so worker 2 runs too; worker 3's spool is
    empty and gets none."""
    bridge = bridge_factory(start=False, auth_tokens="test-token", workers="2")
    holding = bridge.data_dir / "workers" / "2" / "spool.sqlite3"
    holding.parent.mkdir(parents=True)
    spool_events(holding, ["left-0", "left-1"])
    empty = bridge.data_dir / "workers" / "3" / "spool.sqlite3"
    empty.parent.mkdir(parents=True)
    spool_events(empty, [])
    bridge.start()
    assert bridge.process is not None
    assert len(children_of(bridge.process.pid)) == 3
    replayed = bridge.data_dir / "workers" / "2" / "events"
    deadline = time.monotonic() + WAIT_SECONDS
    while len(names(replayed)) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(names(replayed)) == ["left-0", "left-1"]
    assert bridge.stop() == Exit.OK
    assert f"starting 3 workers rather than 2: {holding} still hold(s) events" in bridge.logs()
    with sqlite3.connect(holding) as db:
        assert db.execute("SELECT COUNT(*) FROM events").fetchone()[0] == 0


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as reply:
            return int(reply.status), bytes(reply.read())
    except urllib.error.HTTPError as reply:
        return reply.code, reply.read()


def received(exposition: bytes) -> dict[str, float]:
    """login_audit_events_received_total per worker label."""
    counts: dict[str, float] = {}
    for family in text_string_to_metric_families(exposition.decode()):
        for sample in family.samples:
            if sample.name == "login_audit_events_received_total":
                worker = sample.labels["worker"]
                counts[worker] = counts.get(worker, 0) + sample.value
    return counts


def test_with_2_workers_the_admin_port_answers_metrics_and_readiness_for_both(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    bridge = bridge_factory(auth_tokens="test-token", workers="2")
    assert bridge.process is not None
    first, second = bridge.data_dir / "events", bridge.data_dir / "workers" / "1" / "events"
    sent = 0
    deadline = time.monotonic() + WAIT_SECONDS
    while sent < 20 or (not names(second) and sent < 1000 and time.monotonic() < deadline):
        status, _, _ = post(f"{bridge.url}{HOOK}", json.dumps({"username": f"u{sent}"}).encode())
        assert status == 200
        sent += 1
    status, body = get(f"{bridge.admin_url}/metrics")
    assert status == 200
    counts = received(body)
    # Each worker's own count, labelled with its number, and together every event sent.
    assert counts == {"0": len(names(first)), "1": len(names(second))}
    assert sum(counts.values()) == sent
    assert b'login_audit_worker_up{worker="1"} 1.0' in body
    status, body = get(f"{bridge.admin_url}/readyz")
    assert (status, json.loads(body)["workers"]) == (200, 2)

    # A worker that cannot answer (stopped here) makes the group unready, and the scrape says
    # which worker is missing instead of failing.
    worker_1 = max(children_of(bridge.process.pid))
    os.kill(worker_1, signal.SIGSTOP)
    try:
        status, body = get(f"{bridge.admin_url}/readyz")
        assert status == 503
        assert json.loads(body)["error"] == "worker_unreachable"
        status, body = get(f"{bridge.admin_url}/metrics")
        assert status == 200
        assert b'login_audit_worker_up{worker="1"} 0.0' in body
        assert set(received(body)) == {"0"}
    finally:
        os.kill(worker_1, signal.SIGCONT)
    assert get(f"{bridge.admin_url}/readyz")[0] == 200
    assert bridge.stop() == Exit.OK


def test_by_default_serve_runs_one_worker_per_usable_cpu(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    bridge = bridge_factory(auth_tokens="test-token", workers="0")
    assert bridge.process is not None
    cpus = usable_cpus()
    assert len(children_of(bridge.process.pid)) == (cpus if cpus > 1 else 0)
    assert bridge.stop() == Exit.OK


def test_usable_cpus_respects_a_cgroup_v2_or_v1_cpu_quota(tmp_path: Path) -> None:
    affinity = len(os.sched_getaffinity(0))

    def v2(text: str) -> int:
        root = tmp_path / f"v2-{len(list(tmp_path.iterdir()))}"
        root.mkdir()
        (root / "cpu.max").write_text(text)
        return usable_cpus(root)

    def v1(quota: str, period: str = "100000") -> int:
        root = tmp_path / f"v1-{len(list(tmp_path.iterdir()))}"
        (root / "cpu").mkdir(parents=True)
        (root / "cpu" / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        (root / "cpu" / "cpu.cfs_period_us").write_text(f"{period}\n")
        return usable_cpus(root)

    assert v2("50000 100000\n") == 1  # half a CPU still runs one worker
    assert v2(f"{100000 * affinity + 1} 100000\n") == affinity  # never more than affinity
    assert v2("max 100000\n") == affinity
    assert v1("50000") == 1
    assert v1("-1") == affinity
    assert v2("garbage") == affinity  # unreadable: no quota, not a crash
    assert v1("100000", period="0") == affinity
    assert usable_cpus(tmp_path / "no-cgroup") == affinity


def test_the_default_worker_count_is_the_usable_cpus_or_one_on_port_0(tmp_path: Path) -> None:
    assert load_settings(data_dir=tmp_path).workers == 0
    assert worker_count(load_settings(data_dir=tmp_path, port=8080)) == usable_cpus()
    assert worker_count(load_settings(data_dir=tmp_path, port=0)) == 1
    assert worker_count(load_settings(data_dir=tmp_path, port=8080, workers=3)) == 3


def test_each_worker_has_its_own_data_dir_and_only_the_first_the_admin_port(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, admin_port=9101, workers=3)
    first, third = worker_settings(settings, 0), worker_settings(settings, 2)
    assert (first.data_dir, first.admin_port, first.hook_spool_path) == (
        tmp_path,
        9101,
        tmp_path / "hook-spool",
    )
    assert (third.data_dir, third.admin_port, third.uds) == (tmp_path / "workers" / "2", None, None)
    assert third.hook_spool_path == tmp_path / "workers" / "2" / "hook-spool"
    assert third.spool_path != first.spool_path
    assert first.reuse_port and third.reuse_port and first.workers == third.workers == 1
    assert usable_cpus() >= 1
