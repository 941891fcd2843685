"""`serve --workers N`: N worker processes on one port, each with its own data directory."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from bridge import handoff
from bridge.cli import Exit
from bridge.settings import load_settings
from bridge.sinks.file import read_events
from bridge.workers import usable_cpus, worker_settings

from conftest import BIN, BridgeProcess, post

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


def test_a_spool_no_worker_of_this_run_owns_is_named_in_a_warning(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    """After a run with 3 workers, a run with 2 leaves worker 2's spool alone: it must say so."""
    bridge = bridge_factory(start=False, auth_tokens="test-token", workers="2")
    orphan = bridge.data_dir / "workers" / "2" / "spool.sqlite3"
    orphan.parent.mkdir(parents=True)
    orphan.write_bytes(b"")
    bridge.start()
    assert bridge.stop() == Exit.OK
    assert f"{orphan} belongs to no worker of this run (2 workers)" in bridge.logs()


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
