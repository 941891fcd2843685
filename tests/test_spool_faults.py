"""The bridge spool and the hook spool under faults, through a real bridge process and real files.

Each scenario prints its row of the fault table: every event acknowledged (answered 200, or
committed to a spool file before the bridge started) is read back from where it went.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import sqlite3
import stat
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_intake import spool_document, write_spool_file

from bridge.codec import AvroCodec
from bridge.durable_spool import DurableSpool
from bridge.normalize import Normalizer
from bridge.sinks.file import read_events

from conftest import KAFKA_BOOTSTRAP, BridgeProcess, encoded, post, print_fault_row
from support import free_port, kafka_user_names, wait_for


def spool_with_events(path: Path, n: int, *, codec: AvroCodec | None = None) -> list[str]:
    """A spool file holding ``n`` events, as a bridge leaves it when the broker was away;
    returns their user names."""
    names = [f"spooled-{uuid.uuid4().hex[:8]}-{i}" for i in range(n)]
    normalizer = Normalizer()
    query = {"ip": "192.0.2.9", "login_method": "password", "protocol": "SSH", "status": "0"}

    async def fill() -> None:
        spool_codec = codec or AvroCodec()
        spool = DurableSpool(path, spool_codec, max_bytes=1 << 30, max_events=10**6)
        await spool.open()
        for name in names:
            await spool.put(encoded(normalizer.sftpgo(query, {"username": name}), spool_codec))
        await spool.close()

    asyncio.run(fill())
    return names


def read_users(events_dir: Path) -> list[str]:
    return [r["user"]["name"] for r in read_events(events_dir)]


def metric(url: str, series: str) -> float:
    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(series + " "):
                return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {series} on /metrics")


def _drained(bridge: BridgeProcess) -> None:
    wait_for(
        lambda: metric(bridge.url, 'login_audit_spool_events{spool="bridge"}'),
        lambda depth: depth == 0,
        timeout=60,
    )


# -- the bridge spool


@pytest.mark.slow
def test_a_spool_row_with_a_foreign_fingerprint_is_buried_and_the_rows_behind_it_delivered(
    bridge_factory: Callable[..., BridgeProcess],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: the replayer died on the first such row, silently, and nothing spooled after it
    was ever sent while /readyz said ready."""
    data = tmp_path / "data"
    names = spool_with_events(data / "spool.sqlite3", 10)
    foreign = b"\xc3\x01" + bytes.fromhex("00112233445566ff") + b"\x00" * 40
    with contextlib.closing(sqlite3.connect(data / "spool.sqlite3")) as db, db:
        db.execute(
            "INSERT INTO events (seq, event_id, source, spooled_ms, body)"
            " VALUES (0, 'foreign-row', 'sftpgo', 1700000000000, ?)",
            (foreign,),
        )
    bridge = bridge_factory(data_dir=str(data))
    _drained(bridge)
    delivered = read_users(data / "events")
    assert metric(bridge.url, "login_audit_spool_dead_letter_events") == 1
    assert metric(bridge.url, "login_audit_spool_dead_letters_total") == 1
    with contextlib.closing(sqlite3.connect(data / "spool.sqlite3")) as db:
        ((event_id, reason),) = db.execute("SELECT event_id, reason FROM dead_letters")
    assert event_id == "foreign-row"
    assert "00112233445566ff" in reason
    assert "moved to dead letters" in bridge.logs()
    print_fault_row(
        "bad spool row (unknown schema fingerprint)",
        sent=len(names) + 1,
        acknowledged=len(names),
        delivered=len(set(delivered) & set(names)),
        lost=len(set(names) - set(delivered)),
        duplicated=len(delivered) - len(set(delivered)),
        capsys=capsys,
    )
    assert sorted(delivered) == sorted(names)


@pytest.mark.slow
def test_events_spooled_before_a_schema_upgrade_are_delivered_after_it(
    bridge_factory: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    """The previous release wrote these rows without the (defaulted) http_request field."""
    schema = copy.deepcopy(AvroCodec().schema)
    schema["fields"] = [f for f in schema["fields"] if f["name"] != "http_request"]
    data = tmp_path / "data"
    names = spool_with_events(data / "spool.sqlite3", 5, codec=AvroCodec(schema))
    bridge = bridge_factory(data_dir=str(data))
    _drained(bridge)
    records = list(read_events(data / "events"))
    assert sorted(r["user"]["name"] for r in records) == sorted(names)
    assert {r["http_request"] for r in records} == {None}
    assert metric(bridge.url, "login_audit_spool_dead_letter_events") == 0


@pytest.mark.slow
def test_the_spool_gauges_are_true_from_start_up_while_the_sink_is_down(
    bridge_factory: Callable[..., BridgeProcess], tmp_path: Path
) -> None:
    """The sink never starts here (Kafka at a closed port), so the replayer never sends; the
    depth and oldest-age gauges still tell the truth, so the stale-spool alert can fire."""
    data = tmp_path / "data"
    spool_with_events(data / "spool.sqlite3", 3)
    bridge = bridge_factory(
        data_dir=str(data),
        sink="kafka",
        kafka_bootstrap_servers=f"127.0.0.1:{free_port()}",
        publish_timeout_seconds="1",
        auth_tokens="test-token",
    )
    assert metric(bridge.url, 'login_audit_spool_events{spool="bridge"}') == 3
    age = metric(bridge.url, 'login_audit_spool_oldest_age_seconds{spool="bridge"}')
    assert age > 0
    status, _, _ = post(_sftpgo_url(bridge, 0), b'{"username": "while-down"}')
    assert status == 200
    assert metric(bridge.url, 'login_audit_spool_events{spool="bridge"}') == 4
    wait_for(
        lambda: metric(bridge.url, 'login_audit_spool_oldest_age_seconds{spool="bridge"}'),
        lambda later: later > age,
        timeout=60,
    )
    assert metric(bridge.url, "login_audit_spool_bytes") > 0


def _sftpgo_url(bridge: BridgeProcess, index: int) -> str:
    return (
        f"{bridge.url}/v1/hooks/sftpgo?ip=192.0.2.{index % 250 + 1}"
        f"&login_method=password&protocol=SSH&status={index % 2}"
    )


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB tmpfs: a real full disk (ENOSPC), and one that can be given more room."""
    mount = tmp_path / "small-disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=1m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _grow(mount: Path) -> None:
    subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)


@pytest.mark.kafka
@pytest.mark.slow
def test_a_full_disk_under_the_spool_refuses_events_then_recovers_and_loses_nothing(
    bridge_factory: Callable[..., BridgeProcess],
    small_disk: Path,
    capsys: pytest.CaptureFixture[str],
    kafka_topic_prefix: Callable[[str], str],
) -> None:
    """Kafka away, so everything goes to the spool, on a disk that fills up: events get 503
    (never 200) while it is full, 200 again once it has room, and every acknowledged event
    reaches Kafka when the bridge comes back with Kafka reachable."""
    topic = kafka_topic_prefix("spool-disk-full")
    kafka = {
        "sink": "kafka",
        "kafka_topic_success": f"{topic}.success",
        "kafka_topic_failure": f"{topic}.failure",
        "kafka_topic_partitions": "1",
        "publish_timeout_seconds": "3",
        "spool_after_seconds": "1",
        "auth_tokens": "test-token",
        "data_dir": str(small_disk),
    }
    bridge = bridge_factory(**kafka, kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    sent, acknowledged, statuses = _send_until_refused(bridge, limit=20_000)
    assert statuses.get(503, 0) >= 10, statuses  # the full disk was hit, and answered 503
    assert set(statuses) <= {200, 503}, statuses
    assert "disk is full" in bridge.logs()
    _grow(small_disk)
    for i in range(50):  # room again: the spool takes events again, without a restart
        name = f"after-{uuid.uuid4().hex[:8]}-{i}"
        status, body, _ = post(_sftpgo_url(bridge, i), json.dumps({"username": name}).encode())
        sent += 1
        assert status == 200, body
        acknowledged.append(name)
    assert bridge.stop() == 0
    bridge.env["BRIDGE_KAFKA_BOOTSTRAP_SERVERS"] = KAFKA_BOOTSTRAP
    bridge.start()
    _drained(bridge)
    delivered = kafka_user_names(KAFKA_BOOTSTRAP, topic)
    lost = set(acknowledged) - set(delivered)
    print_fault_row(
        "disk full on the spool",
        sent=sent,
        acknowledged=len(acknowledged),
        delivered=len(set(delivered) & set(acknowledged)),
        lost=len(lost),
        duplicated=len(delivered) - len(set(delivered)),
        capsys=capsys,
    )
    assert lost == set()


def _send_until_refused(
    bridge: BridgeProcess, *, limit: int
) -> tuple[int, list[str], dict[int, int]]:
    """Sends from 4 clients until 20 answers in a row were refused (or ``limit`` is reached)."""
    acknowledged: list[str] = []
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    refused_in_a_row = 0
    counter = iter(range(limit))

    def client() -> None:
        nonlocal refused_in_a_row
        while refused_in_a_row < 20:
            with lock:
                index = next(counter, None)
            if index is None:
                return
            name = f"fill-{uuid.uuid4().hex[:8]}-{index}"
            body = json.dumps({"username": name}).encode()
            status, _, _ = post(_sftpgo_url(bridge, index), body)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    acknowledged.append(name)
                    refused_in_a_row = 0
                else:
                    refused_in_a_row += 1

    threads = [threading.Thread(target=client) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(300)
    return sum(statuses.values()), acknowledged, statuses


# -- the hook spool


def _poison(directory: Path, tmp_path: Path) -> list[str]:
    """Every kind of entry the intake must set aside, ahead of the real files; their names."""
    directory.mkdir(parents=True)
    entries = [directory / "0000000000001-1-dir.json", directory / "0000000000002-1-fifo.json"]
    entries[0].mkdir()
    os.mkfifo(entries[1])
    zero = directory / "0000000000003-1-devzero.json"
    zero.symlink_to("/dev/zero")
    outside = write_spool_file(tmp_path / "outside", 4, spool_document("read-through-a-link"))
    link = directory / outside.name
    link.symlink_to(outside)
    padded = json.dumps(spool_document("oversized")).encode() + b" " * (2 << 20)
    far_future = spool_document("far-future", received_ms=2**70)
    entries += [
        zero,
        link,
        write_spool_file(directory, 5, padded, label="oversized"),
        write_spool_file(directory, 6, far_future, label="far-future"),
        write_spool_file(directory, 7, b"{not json", label="not-json"),
    ]
    with contextlib.suppress(PermissionError):  # a /dev/zero of its own, where allowed
        device = directory / "0000000000008-1-chardev.json"
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 5))
        entries.append(device)
    return sorted(p.name for p in entries)


@pytest.mark.slow
def test_a_poisoned_hook_spool_is_taken_in_file_by_file(
    bridge_factory: Callable[..., BridgeProcess],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Before: the directory stopped every file behind it on every interval, the FIFO hung the
    intake for good, the link was followed, and 2**70 as received_ms hung the file sink."""
    directory = tmp_path / "hook-spool"
    poison = _poison(directory, tmp_path)
    names = [f"shim-{uuid.uuid4().hex[:8]}-{i}" for i in range(5)]
    for i, name in enumerate(names):
        write_spool_file(directory, 1_700_000_000_000 + i, spool_document(name))
    watchdog = threading.Timer(60, _release_fifo, (directory,))  # should the FIFO block after all
    watchdog.start()
    try:
        bridge = bridge_factory(hook_spool_dir=str(directory))
        wait_for(
            lambda: sorted(read_users(bridge.events_dir)),
            lambda u: len(u) >= len(names),
            timeout=60,
        )
        wait_for(
            lambda: metric(bridge.url, "login_audit_spool_rejected_total"),
            lambda n: n == len(poison),
            timeout=60,
        )
    finally:
        watchdog.cancel()
    delivered = read_users(bridge.events_dir)
    assert sorted(p.name for p in (directory / "rejected").iterdir()) == poison
    assert list(directory.glob("*.json")) == []
    assert (tmp_path / "outside").exists()
    print_fault_row(
        "hook-spool poison entries",
        sent=len(names) + len(poison),
        acknowledged=len(names),
        delivered=len(set(delivered) & set(names)),
        lost=len(set(names) - set(delivered)),
        duplicated=len(delivered) - len(set(delivered)),
        capsys=capsys,
    )
    assert sorted(delivered) == sorted(names)
    assert bridge.stop(signal.SIGTERM) == 0


def _release_fifo(directory: Path) -> None:
    name = "0000000000002-1-fifo.json"
    for fifo in (directory / name, directory / "rejected" / name):
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
