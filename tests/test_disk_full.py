"""A full disk under the file sink: nothing acknowledged is lost, and nothing after it is torn.

The bridge runs as a real process; its file-size limit (RLIMIT_FSIZE, set from outside with
prlimit) stands in for a full disk: writes past it fail with EFBIG half-way through a block,
exactly as ENOSPC does. The limit is then lifted, as an operator freeing space would.
"""

from __future__ import annotations

import resource
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from bridge.sinks.file import event_files, read_events

from conftest import BridgeProcess, post, print_fault_row

QUERY = "ip=192.0.2.7&login_method=password&protocol=SSH&status=1"
DRAIN_SECONDS = 60


def _send(bridge: BridgeProcess, names: list[str]) -> dict[str, str]:
    """Posts one login per name from 8 threads; returns name -> event id of the 200s."""

    def one(name: str) -> tuple[str, int, str]:
        body = b'{"username":"%s"}' % name.encode()
        status, answer, _ = post(f"{bridge.url}/v1/hooks/sftpgo?{QUERY}", body)
        return name, status, str(answer.get("event_id", ""))

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, names))
    assert {status for _, status, _ in results} <= {200, 503}
    return {name: event_id for name, status, event_id in results if status == 200}


def _spool_depth(bridge: BridgeProcess) -> float:
    with urllib.request.urlopen(f"{bridge.url}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith('login_audit_spool_events{spool="bridge"}'):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def _wait_until(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + DRAIN_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "the bridge did not catch up"
        time.sleep(0.2)


@pytest.mark.slow
@pytest.mark.parametrize("spool", ["true", "false"], ids=["spool on", "spool off"])
def test_events_acknowledged_after_a_full_disk_are_readable(
    bridge_factory: Callable[..., BridgeProcess],
    spool: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    bridge = bridge_factory(auth_tokens="test-token", spool_enabled=spool, log_level="warning")
    assert bridge.process is not None
    pid = bridge.process.pid
    acknowledged = _send(bridge, [f"before{i}" for i in range(50)])
    (current,) = event_files(bridge.events_dir, "success")
    # Room for a few more events in the open file, then EFBIG half-way through a block.
    resource.prlimit(pid, resource.RLIMIT_FSIZE, (current.stat().st_size + 3000, -1))
    try:
        acknowledged |= _send(bridge, [f"full{i}" for i in range(200)])
    finally:
        resource.prlimit(pid, resource.RLIMIT_FSIZE, (-1, -1))
    acknowledged |= _send(bridge, [f"after{i}" for i in range(50)])
    assert all(name in acknowledged for name in (f"after{i}" for i in range(50)))
    _wait_until(lambda: _spool_depth(bridge) == 0)

    readable = [r["user"]["name"] for r in read_events(bridge.events_dir)]
    lost = set(acknowledged) - set(readable)
    print_fault_row(
        f"disk full under the file sink ({'spool on' if spool == 'true' else 'spool off'})",
        sent=300,
        acknowledged=len(acknowledged),
        delivered=len(set(acknowledged) & set(readable)),
        lost=len(lost),
        duplicated=len(readable) - len(set(readable)),
        capsys=capsys,
    )
    assert not lost, f"acknowledged but unreadable: {sorted(lost)[:10]}"
    assert "torn block" not in bridge.logs()
