"""The embedded default sink: Avro object container files, one stream per status, fsync'd.

Layout: ``<directory>/<status>/login-audit-<status>-<UTC time>.avro``. A file is never appended
to after a restart, so a block torn by a crash can only be the last one of an older file, and
:func:`read_events` stops there (it was never acknowledged). Any Avro tool reads the files.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any, ClassVar

import fastavro
from fastavro.write import Writer

from bridge.codec import AvroCodec
from bridge.errors import SinkUnavailable
from bridge.event import LoginEvent, Status
from bridge.groupcommit import GroupCommit
from bridge.metrics import Metrics
from bridge.sinks.base import Sink

log = logging.getLogger(__name__)

STATUSES: tuple[Status, ...] = ("success", "failure")


@dataclass
class _Stream:
    """The open file of one status."""

    path: Path
    handle: IO[bytes]
    writer: Writer
    opened: float = field(default_factory=time.monotonic)


class FileSink(Sink):
    """Writes each batch of events, flushes and fsyncs, then resolves the batch's sends.

    Concurrent sends share one fsync (group commit): while one batch is on its way to disk the
    next one gathers, so throughput grows with concurrency instead of paying an fsync each.
    """

    name: ClassVar[str] = "file"

    def __init__(
        self,
        directory: Path,
        codec: AvroCodec,
        *,
        rotate_bytes: int = 64 * 1024 * 1024,
        rotate_seconds: float = 3600.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.directory = directory
        self._metrics = metrics
        self._codec = codec
        self._rotate_bytes = rotate_bytes
        self._rotate_seconds = rotate_seconds
        self._streams: dict[Status, _Stream] = {}
        self._commits = GroupCommit(self._write_batch, failures=(OSError,), fail=self._io_failure)
        self._open = False

    async def start(self) -> None:
        try:
            for status in STATUSES:
                (self.directory / status).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkUnavailable(f"cannot create {self.directory}: {exc.strerror}") from exc
        self._open = True
        log.info("file sink writing to %s", self.directory)

    async def stop(self) -> None:
        self._open = False
        await self._commits.idle()
        for stream in self._streams.values():
            stream.handle.close()
        self._streams.clear()

    def ready(self) -> bool:
        return self._open

    async def send(self, event: LoginEvent) -> None:
        if not self._open:
            raise SinkUnavailable("file sink is not started")
        await self._commits.submit(event)

    def _io_failure(self, exc: Exception) -> Exception:
        if self._metrics is not None:
            self._metrics.publish_errors.labels(self.name, "io").inc()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return SinkUnavailable(f"cannot write events: {reason}")

    def _write_batch(self, events: list[LoginEvent]) -> None:
        """Runs in a worker thread; only one batch is ever in flight."""
        touched: set[Status] = set()
        for event in events:
            stream = self._stream(event.status)
            stream.writer.write(event.record)
            touched.add(event.status)
        for status in touched:
            stream = self._streams[status]
            stream.writer.flush()
            stream.handle.flush()
            os.fsync(stream.handle.fileno())

    def _stream(self, status: Status) -> _Stream:
        stream = self._streams.get(status)
        if stream is not None and not self._due_for_rotation(stream):
            return stream
        if stream is not None:
            stream.writer.flush()
            stream.handle.flush()
            os.fsync(stream.handle.fileno())
            stream.handle.close()
        stream = self._open_stream(status)
        self._streams[status] = stream
        return stream

    def _due_for_rotation(self, stream: _Stream) -> bool:
        return (
            stream.handle.tell() >= self._rotate_bytes
            or time.monotonic() - stream.opened >= self._rotate_seconds
        )

    def _open_stream(self, status: Status) -> _Stream:
        folder = self.directory / status
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        path = folder / f"login-audit-{status}-{stamp}.avro"
        handle = path.open("xb")
        # Each flush writes one block; sync_interval only caps how large a batch's block grows.
        writer = Writer(handle, self._codec.parsed, codec="null", sync_interval=1024 * 1024)
        writer.flush()
        _fsync_directory(folder)
        log.info("file sink opened %s", path)
        return _Stream(path=path, handle=handle, writer=writer)


def _fsync_directory(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def event_files(directory: Path, status: Status | None = None) -> list[Path]:
    """The sink's files in write order (the UTC timestamp in the name sorts them)."""
    statuses = STATUSES if status is None else (status,)
    return sorted(
        (path for s in statuses for path in (directory / s).glob("login-audit-*.avro")),
        key=lambda p: p.name.rsplit("-", 1)[-1],
    )


def read_file(path: Path) -> Iterator[dict[str, Any]]:
    """Records of one file; stops quietly at a block torn by a crash (never acknowledged)."""
    with path.open("rb") as handle:
        try:
            reader = fastavro.reader(handle)
        except (ValueError, EOFError, StopIteration):
            return  # created but crashed before its header reached the disk
        try:
            yield from reader  # type: ignore[misc]
        except (ValueError, EOFError, StopIteration):
            log.warning("stopped reading %s at a torn block", path)


def read_events(directory: Path, status: Status | None = None) -> Iterator[dict[str, Any]]:
    """Every record the sink wrote, file by file in write order."""
    for path in event_files(directory, status):
        yield from read_file(path)
