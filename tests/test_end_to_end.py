"""Every SFTPGo vector through a real bridge, both modes: right events, no secret anywhere."""

from __future__ import annotations

import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bridge.event import UNKNOWN_USER
from bridge.sinks.file import read_events

from conftest import BIN, BridgeProcess, post, secret_strings, sftpgo_vectors, vector_body
from ocsf import assert_ocsf

VECTORS = sftpgo_vectors()


def _deliver(vector: dict[str, Any], bridge: BridgeProcess, token: str) -> None:
    """As SFTPGo would: an HTTP POST, or the hook program with exactly the vector's environment."""
    if vector["mode"] == "http":
        url = f"{bridge.url}/v1/hooks/sftpgo?{vector['raw_query']}"
        assert post(url, vector_body(vector), token=token)[0] == 200
        return
    env = dict(vector["env"]) | {
        "LOGIN_AUDIT_HOOK_URL": bridge.url,
        "LOGIN_AUDIT_HOOK_TOKEN": token,
        "LOGIN_AUDIT_HOOK_SPOOL_DIR": str(bridge.data_dir / "hook-spool"),
    }
    run = subprocess.run(
        [str(BIN / "login-audit-hook")],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0


def _all_bytes(directory: Path) -> bytes:
    return b"".join(p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file())


def test_every_vector_arrives_as_expected_and_no_secret_reaches_sink_or_logs(
    bridge_factory: Callable[..., BridgeProcess],
) -> None:
    # Every plain user field the operator could name (the secret-bearing ones, filesystem,
    # virtual_folders, filters, are refused at start: tests/test_settings.py).
    bridge = bridge_factory(
        auth_tokens="e2e-token",
        sftpgo_user_fields="email,role,groups,description,additional_info,status,home_dir",
    )
    for vector in VECTORS:
        _deliver(vector, bridge, "e2e-token")
    records = list(read_events(bridge.events_dir))
    assert len(records) == len(VECTORS)
    seen = {(r["src_endpoint"]["ip"], r["user"]["name"]): r for r in records}
    for vector in VECTORS:
        expected = vector["expected"]
        record = seen[(expected["ip"], expected["username"] or UNKNOWN_USER)]
        assert_ocsf(record)  # HTTP mode, through the real bridge: strict OCSF
        assert record["status"] == expected["status"].capitalize()
        assert record["dst_endpoint"]["svc_name"] == expected["protocol"]
        assert record["unmapped"]["sftpgo.login_method"] == expected["login_method"]
    assert bridge.stop() == 0
    everything = _all_bytes(bridge.data_dir)  # event files, spool leftovers and the log
    secrets = [s for v in VECTORS for s in secret_strings(v)]
    assert secrets
    assert [s for s in secrets if s.encode() in everything] == []


def test_spooled_hook_events_are_taken_in_at_start_and_deleted(
    bridge_factory: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    spool = tmp_path / "hook-spool"
    program = [v for v in VECTORS if v["mode"] == "program"]
    for vector in program:  # no bridge yet: every event must be spooled
        env = dict(vector["env"]) | {
            "LOGIN_AUDIT_HOOK_URL": "http://127.0.0.1:9",
            "LOGIN_AUDIT_HOOK_SPOOL_DIR": str(spool),
        }
        subprocess.run([str(BIN / "login-audit-hook")], env=env, check=True, timeout=30)
    assert len(list(spool.glob("*.json"))) == len(program)
    spooled = _all_bytes(spool)
    assert [s for v in program for s in secret_strings(v) if s.encode() in spooled] == []

    bridge = bridge_factory(hook_spool_dir=str(spool))
    deadline = time.monotonic() + 20
    while list(spool.glob("*.json")) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert list(spool.glob("*.json")) == []
    names = sorted(r["user"]["name"] for r in read_events(bridge.events_dir))
    assert names == sorted(v["expected"]["username"] or UNKNOWN_USER for v in program)


def test_an_unusable_spool_file_is_moved_aside_and_counted(
    bridge_factory: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    spool = tmp_path / "hook-spool"
    spool.mkdir()
    (spool / "0000000000001-1-aa.json").write_text('{"format": "something else"}')
    bridge = bridge_factory(hook_spool_dir=str(spool))
    deadline = time.monotonic() + 20
    while not (spool / "rejected").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [p.name for p in (spool / "rejected").iterdir()] == ["0000000000001-1-aa.json"]
    with urllib.request.urlopen(f"{bridge.url}/metrics", timeout=10) as reply:
        assert "login_audit_spool_rejected_total 1.0" in reply.read().decode()
