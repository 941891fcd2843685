"""`login-audit-bridge dead-letters`: list the events the sink refused for good, send them again.

The dead letters are made by a real refusal (a sink raising SinkRejected while replaying), then
a real bridge process starts on that spool, counts them, and sends them once requeued by the
command, run as a separate process while the bridge runs.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from test_spool_faults import metric, read_users

from bridge.cli import Exit
from bridge.codec import AvroCodec
from bridge.durable_spool import DurableSpool
from bridge.errors import SinkRejected
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline
from bridge.sinks.memory import MemorySink

from conftest import BIN, BridgeProcess, encoded, replayer
from support import wait_for

QUERY = {"ip": "192.0.2.9", "login_method": "password", "protocol": "SSH", "status": "0"}


def _dead_letters(path: Path, names: list[str]) -> list[str]:
    """Spools one event per name and has a sink refuse them all for good; their event ids."""
    events = [Normalizer().sftpgo(QUERY, {"username": name}) for name in names]

    async def refuse() -> None:
        spool = DurableSpool(path, AvroCodec(), max_bytes=1 << 30, max_events=1000)
        await spool.open()
        sink = MemorySink()
        await sink.start()
        for event in events:
            await spool.put(encoded(event))
        sink.fail_with = SinkRejected("message too large for the topic")
        assert await replayer(Pipeline(sink=sink, metrics=Metrics(), spool=spool)).replay_once()
        assert spool.dead_letters == len(events)
        await spool.close()

    asyncio.run(refuse())
    return [e.event_id for e in events]


def _cli(bridge: BridgeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "login-audit-bridge"), "dead-letters", *args],
        env=bridge.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_dead_letters_are_counted_at_start_listed_and_sent_again_once_requeued(
    bridge_factory: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    names = ["refused-a", "refused-b", "refused-c"]
    ids = _dead_letters(data / "spool.sqlite3", names)
    bridge = bridge_factory(data_dir=str(data))
    assert metric(bridge.url, "login_audit_spool_dead_letter_events") == 3
    assert "3 spooled event(s) are dead letters" in bridge.logs()

    listed = _cli(bridge, "list")
    assert listed.returncode == Exit.OK, listed.stderr
    lines = [json.loads(line) for line in listed.stdout.splitlines()]
    assert [line["event_id"] for line in lines] == ids
    assert {line["reason"] for line in lines} == {
        "memory sink refused it: message too large for the topic"
    }

    one = _cli(bridge, "requeue", ids[1])
    assert one.returncode == Exit.OK, one.stderr
    wait_for(lambda: read_users(data / "events"), lambda users: users == ["refused-b"], timeout=60)
    wait_for(
        lambda: metric(bridge.url, "login_audit_spool_dead_letter_events"),
        lambda n: n == 2,
        timeout=60,
    )

    rest = _cli(bridge, "requeue", "--all")
    assert rest.returncode == Exit.OK, rest.stderr
    assert "requeued 2 dead letter(s)" in rest.stderr
    wait_for(
        lambda: sorted(read_users(data / "events")),
        lambda users: users == sorted(names),
        timeout=60,
    )
    wait_for(
        lambda: metric(bridge.url, "login_audit_spool_dead_letter_events"),
        lambda n: n == 0,
        timeout=60,
    )
    assert _cli(bridge, "list").stdout == ""


def test_requeue_of_an_unknown_id_says_so_and_fails(
    bridge_factory: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    _dead_letters(data / "spool.sqlite3", ["refused"])
    bridge = bridge_factory(start=False, data_dir=str(data))
    done = _cli(bridge, "requeue", "no-such-event")
    assert done.returncode == Exit.FAILURE
    assert "no dead letter with id no-such-event" in done.stderr
    assert len(_cli(bridge, "list").stdout.splitlines()) == 1


def test_dead_letters_without_a_spool_file_says_where_it_looked(
    bridge_factory: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    bridge = bridge_factory(start=False, data_dir=str(tmp_path / "nothing-here"))
    done = _cli(bridge, "list")
    assert done.returncode == Exit.FAILURE
    assert f"no spool at {tmp_path / 'nothing-here' / 'spool.sqlite3'}" in done.stderr
