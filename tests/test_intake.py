"""Taking in the hook shim's spool directory: each file on its own, nothing hostile followed.

Real files in a temporary directory, the intake in this process with an in-memory sink (a real
bridge process takes in a poisoned spool in tests/test_spool_faults.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bridge import handoff
from bridge.codec import AvroCodec
from bridge.durable_spool import DurableSpool
from bridge.errors import SinkUnavailable
from bridge.event import EncodedEvent
from bridge.intake import HandoffIntake
from bridge.metrics import Metrics
from bridge.normalize import Normalizer
from bridge.pipeline import Pipeline
from bridge.sinks.memory import MemorySink

from conftest import replayer

QUERY = {"ip": "192.0.2.7", "login_method": "password", "protocol": "SSH", "status": "0"}


def spool_document(user: str, *, received_ms: Any = None) -> dict[str, Any]:
    """What the shim writes (bridge/shim.py, _spool)."""
    return {
        "format": handoff.FORMAT,
        "received_ms": int(time.time() * 1000) if received_ms is None else received_ms,
        "query": QUERY,
        "user": {"username": user, "id": 7},
    }


def write_spool_file(
    directory: Path, order: int, document: dict[str, Any] | bytes, *, label: str = "shim"
) -> Path:
    """A spool file named as the shim names them; ``order`` sets its place in the queue."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{order:013d}-{os.getpid()}-{label}.json"
    raw = document if isinstance(document, bytes) else json.dumps(document).encode()
    path.write_bytes(raw)
    return path


class Intake:
    """The intake wired as the service wires it, with a memory sink."""

    def __init__(self, directory: Path, *, spool: DurableSpool | None = None) -> None:
        self.metrics = Metrics()
        self.sink = MemorySink()
        self.pipeline = Pipeline(sink=self.sink, metrics=self.metrics, spool=spool)
        self.hook_spool = HandoffIntake(
            directory, normalizer=Normalizer(), pipeline=self.pipeline, metrics=self.metrics
        )

    @property
    def users(self) -> list[str]:
        return [e.record["user"]["name"] for e in self.sink.events]

    @property
    def rejected(self) -> float:
        value = self.metrics.registry.get_sample_value("login_audit_spool_rejected_total")
        return value or 0.0

    def drain(self) -> int:
        async def run() -> int:
            await self.sink.start()
            return await asyncio.wait_for(self.hook_spool.drain(), 20)

        return asyncio.run(run())


def rejected_names(directory: Path) -> list[str]:
    return sorted(p.name for p in (directory / "rejected").iterdir())


def test_a_directory_named_like_a_spool_file_is_set_aside_and_the_files_behind_it_taken(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "hook-spool"
    blocker = directory / "0000000000001-1-dir.json"
    blocker.mkdir(parents=True)
    write_spool_file(directory, 2, spool_document("behind-the-directory"))
    intake = Intake(directory)
    assert intake.drain() == 1
    assert intake.users == ["behind-the-directory"]
    assert rejected_names(directory) == [blocker.name]
    assert intake.rejected == 1


def test_a_symlink_is_never_followed(tmp_path: Path) -> None:
    """A link to a valid spool document elsewhere is set aside, the document is not read."""
    elsewhere = write_spool_file(tmp_path / "elsewhere", 1, spool_document("not-from-the-shim"))
    directory = tmp_path / "hook-spool"
    directory.mkdir()
    link = directory / elsewhere.name
    link.symlink_to(elsewhere)
    write_spool_file(directory, 2, spool_document("real"))
    intake = Intake(directory)
    assert intake.drain() == 1
    assert intake.users == ["real"]
    assert rejected_names(directory) == [link.name]
    assert (directory / "rejected" / link.name).is_symlink()
    assert elsewhere.exists()


def test_a_symlink_to_dev_zero_is_set_aside_without_reading_it(tmp_path: Path) -> None:
    directory = tmp_path / "hook-spool"
    directory.mkdir()
    (directory / "0000000000001-1-zero.json").symlink_to("/dev/zero")
    write_spool_file(directory, 2, spool_document("real"))
    intake = Intake(directory)
    assert intake.drain() == 1
    assert intake.users == ["real"]
    assert rejected_names(directory) == ["0000000000001-1-zero.json"]


def test_a_fifo_never_blocks_the_intake(tmp_path: Path) -> None:
    directory = tmp_path / "hook-spool"
    directory.mkdir()
    fifo = directory / "0000000000001-1-fifo.json"
    os.mkfifo(fifo)
    write_spool_file(directory, 2, spool_document("behind-the-fifo"))
    intake = Intake(directory)
    stuck = (fifo, directory / "rejected" / fifo.name)
    # Should the open block after all, this lets the test fail instead of hanging.
    watchdog = threading.Timer(25, _release_readers, stuck)
    watchdog.start()
    try:
        assert intake.drain() == 1
    finally:
        watchdog.cancel()
    assert intake.users == ["behind-the-fifo"]
    assert rejected_names(directory) == [fifo.name]


def _release_readers(*fifos: Path) -> None:
    """Lets a reader stuck opening a FIFO go on (the intake before this fix blocked there)."""
    for fifo in fifos:
        with contextlib.suppress(OSError):
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))


def test_a_character_device_is_set_aside_without_reading_it(tmp_path: Path) -> None:
    directory = tmp_path / "hook-spool"
    directory.mkdir()
    device = directory / "0000000000001-1-zero.json"
    try:
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero's numbers
    except PermissionError:
        pytest.skip("creating a device node needs CAP_MKNOD")
    write_spool_file(directory, 2, spool_document("real"))
    intake = Intake(directory)
    assert intake.drain() == 1
    assert intake.users == ["real"]
    assert rejected_names(directory) == [device.name]


def test_a_file_over_the_size_cap_is_set_aside_even_when_it_is_a_valid_document(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "hook-spool"
    padded = json.dumps(spool_document("padded")).encode() + b" " * (2 << 20)  # the cap: 1 MiB
    big = write_spool_file(directory, 1, padded)
    write_spool_file(directory, 2, spool_document("real"))
    intake = Intake(directory)
    assert intake.drain() == 1
    assert intake.users == ["real"]
    assert rejected_names(directory) == [big.name]


@pytest.mark.parametrize("received_ms", [2**70, -1, True, 1.5e12, "1700000000000"])
def test_a_received_time_out_of_range_or_of_the_wrong_type_is_set_aside(
    tmp_path: Path, received_ms: Any
) -> None:
    directory = tmp_path / "hook-spool"
    bad = write_spool_file(directory, 1, spool_document("bad-time", received_ms=received_ms))
    write_spool_file(directory, 2, spool_document("real"))
    intake = Intake(directory)
    assert intake.drain() == 1
    assert intake.users == ["real"]
    assert rejected_names(directory) == [bad.name]


def test_a_full_bridge_spool_pauses_the_intake_which_keeps_running_and_resumes(
    tmp_path: Path,
) -> None:
    """Overloaded (the bridge's spool full, the sink down) is a pause, not the intake's end."""
    directory = tmp_path / "hook-spool"
    for order in range(3):
        write_spool_file(directory, order, spool_document(f"user{order}"))

    async def scenario() -> tuple[list[str], list[str], bool]:
        spool = DurableSpool(
            tmp_path / "spool.sqlite3", AvroCodec(), max_bytes=1 << 30, max_events=1
        )
        await spool.open()
        intake = Intake(directory, spool=spool)
        await intake.sink.start()
        intake.sink.fail_with = SinkUnavailable("broker down")
        task = asyncio.create_task(intake.hook_spool.run(0.05))
        for _ in range(100):  # one file goes to the spool, which is then full
            if spool.depth == 1:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # several more intervals against a full spool
        waiting = sorted(p.name for p in directory.glob("*.json"))
        intake.sink.fail_with = None
        assert await replayer(
            intake.pipeline
        ).replay_once()  # the broker is back: the spool empties
        for _ in range(100):
            if not list(directory.glob("*.json")) or task.done():
                break
            await asyncio.sleep(0.05)
        running = not task.done()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await spool.close()
        return waiting, intake.users, running

    waiting, users, running = asyncio.run(scenario())
    assert running
    assert len(waiting) == 2
    assert sorted(users) == ["user0", "user1", "user2"]
    assert not (directory / "rejected").exists()


def test_a_file_named_with_digits_int_refuses_does_not_stop_a_paused_intake(
    tmp_path: Path,
) -> None:
    """str.isdigit() accepts "²": the oldest-file age read the name of a planted
    "²-…json" as a time and raised while the sink was down, ending the intake each time."""
    directory = tmp_path / "hook-spool"
    directory.mkdir()
    (directory / "²-1-planted.json").write_text(json.dumps(spool_document("planted")))

    async def scenario() -> tuple[bool, list[str]]:
        intake = Intake(directory)
        await intake.sink.start()
        intake.sink.fail_with = SinkUnavailable("broker down")
        task = asyncio.create_task(intake.hook_spool.run(0.05))
        await asyncio.sleep(0.3)  # several passes against the unavailable sink
        running = not task.done()
        intake.sink.fail_with = None
        for _ in range(100):
            if intake.users or task.done():
                break
            await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        return running, intake.users

    running, users = asyncio.run(scenario())
    assert running
    assert users == ["planted"]
    assert handoff.received_ms_from_name(directory / "²-1-planted.json") is None


class BuggySink(MemorySink):
    """Raises something no sink should (a bug) for one user's events."""

    async def send(self, encoded: EncodedEvent) -> None:
        if encoded.event.record["user"]["name"] == "trips-a-bug":
            raise RuntimeError("a bug in the sink")
        await super().send(encoded)


def test_an_unexpected_error_on_one_file_is_logged_counted_and_set_aside_after_three(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "hook-spool"
    buggy = write_spool_file(directory, 1, spool_document("trips-a-bug"))
    intake = Intake(directory)
    intake.sink = BuggySink()
    intake.pipeline.sink = intake.sink
    for round_ in range(3):
        write_spool_file(directory, 10 + round_, spool_document(f"fine{round_}"))
        assert intake.drain() == 1  # the file behind it goes through every time
    assert intake.users == ["fine0", "fine1", "fine2"]
    assert rejected_names(directory) == [buggy.name]
    failures = intake.metrics.registry.get_sample_value(
        "login_audit_background_task_failures_total", {"task": "hook-spool"}
    )
    assert failures == 3
    logged = [r for r in caplog.records if "failed unexpectedly" in r.getMessage()]
    assert len(logged) == 3
    assert all(r.exc_info is not None and r.exc_info[0] is RuntimeError for r in logged)
