"""The embedded default sink: Avro object container files, one stream per status, fsync'd.

Layout: ``<directory>/<status>/login-audit-<status>-<UTC time>.avro``. A file is never appended
to after a restart or after a failed write, so a block torn by a crash can only be the last one
of an older file, and :func:`read_events` stops there (it was never acknowledged). Any Avro tool
reads the files.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
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
from bridge.event import EncodedEvent, Status
from bridge.groupcommit import GroupCommit
from bridge.metrics import Metrics
from bridge.sinks.base import Sink

log = logging.getLogger(__name__)

STATUSES: tuple[Status, ...] = ("success", "failure")
# A batch's events go into blocks of about this size at most (fastavro's sync_interval).
BLOCK_BYTES = 1024 * 1024


@dataclass
class _Stream:
    """The open file of one status; ``good`` is its length after the last fsync that held."""

    path: Path
    handle: IO[bytes]
    writer: Writer
    good: int
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
        retain_bytes: int = 0,
        retain_seconds: float = 0,
        metrics: Metrics | None = None,
    ) -> None:
        self.directory = directory
        self._metrics = metrics
        self._codec = codec
        self._rotate_bytes = rotate_bytes
        self._rotate_seconds = rotate_seconds
        self._retain_bytes = retain_bytes
        self._retain_seconds = retain_seconds
        self._streams: dict[Status, _Stream] = {}
        self._commits = GroupCommit(self._write_batch, failures=(OSError,), fail=self._io_failure)
        self._open = False

    async def start(self) -> None:
        try:
            for status in STATUSES:
                (self.directory / status).mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SinkUnavailable(f"cannot create {self.directory}: {exc.strerror}") from exc
        await asyncio.to_thread(self._apply_retention)
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

    async def send(self, encoded: EncodedEvent) -> None:
        await self.submit(encoded)

    def submit(self, encoded: EncodedEvent) -> asyncio.Future[None]:
        if not self._open:
            raise SinkUnavailable("file sink is not started")
        return self._commits.enqueue(encoded)

    def _io_failure(self, exc: Exception) -> Exception:
        if self._metrics is not None:
            self._metrics.publish_errors.labels(self.name, "io").inc()
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else exc
        return SinkUnavailable(f"cannot write events: {reason}")

    def _write_batch(self, events: list[EncodedEvent]) -> None:
        """Runs in a worker thread; only one batch is ever in flight.

        The events' Avro bodies (``datum``, encoded once by :mod:`bridge.encode` in the schema
        this sink's files declare) go into each file as blocks, with fastavro's
        ``Writer.write_block``: writing the records instead encoded each event a second time,
        here, holding the interpreter lock the event loop needs (issue 11).

        If anything fails (a full disk, a file-size limit), the files this batch touched are cut
        back to their last fsync'd length and closed before the batch's sends fail: later events
        go to new files, never after a torn block.
        """
        touched: dict[Status, _Stream] = {}
        bodies: dict[Status, list[bytes]] = {}
        try:
            for encoded in events:
                status = encoded.event.status
                if status not in touched:
                    touched[status] = self._stream(status)
                    bodies[status] = []
                bodies[status].append(encoded.datum)
            for status, stream in touched.items():
                _write_blocks(stream.writer, bodies[status])
                _sync(stream)
        except BaseException:
            for status in touched:
                self._discard(status)
            raise

    def _stream(self, status: Status) -> _Stream:
        stream = self._streams.get(status)
        if stream is not None and not self._due_for_rotation(stream):
            return stream
        if stream is not None:
            del self._streams[status]
            stream.handle.close()  # every batch ends fsync'd, so nothing is left to write
        stream = self._open_stream(status)
        self._streams[status] = stream
        self._apply_retention()
        return stream

    def _apply_retention(self) -> None:
        """Deletes the oldest closed files past the size or age limit; open files stay.

        A failure here is logged and never fails the writes that triggered it.
        """
        if not self._retain_bytes and not self._retain_seconds:
            return
        try:
            self._delete_past_retention()
        except OSError as exc:
            log.error("file sink retention could not run: %s", exc)

    def _delete_past_retention(self) -> None:
        open_files = {stream.path for stream in self._streams.values()}
        files = [(path, path.stat()) for path in event_files(self.directory)]
        total = sum(info.st_size for _, info in files)
        now = time.time()
        for path, info in files:  # oldest first
            if path in open_files:
                continue
            if self._retain_bytes and total > self._retain_bytes:
                reason = "size"
            elif self._retain_seconds and now - info.st_mtime > self._retain_seconds:
                reason = "age"
            else:
                continue
            path.unlink(missing_ok=True)
            total -= info.st_size
            log.warning("file sink deleted %s under its retention limit (%s)", path, reason)
            if self._metrics is not None:
                self._metrics.file_sink_files_deleted.labels(reason).inc()

    def _discard(self, status: Status) -> None:
        stream = self._streams.pop(status, None)
        if stream is None:
            return
        # Closing first: a buffered handle would otherwise write its leftovers past the cut.
        with contextlib.suppress(OSError, ValueError):
            stream.handle.close()
        try:
            fd = os.open(stream.path, os.O_WRONLY)
            try:
                os.ftruncate(fd, stream.good)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:
            log.error(
                "cannot cut %s back to %d bytes after a failed write (%s); readers stop at its "
                "torn end, and new events go to a new file",
                stream.path,
                stream.good,
                exc.strerror,
            )
            return
        log.warning(
            "cut %s back to its last good length (%d bytes) after a failed write; new events go "
            "to a new file",
            stream.path,
            stream.good,
        )

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
        try:
            writer = Writer(handle, self._codec.parsed, codec="null", sync_interval=BLOCK_BYTES)
            writer.flush()
            handle.flush()
            _fsync_directory(folder)
        except BaseException:
            # A file whose header did not make it holds nothing acknowledged: leave no trace.
            with contextlib.suppress(OSError, ValueError):
                handle.close()
            path.unlink(missing_ok=True)
            raise
        log.info("file sink opened %s", path)
        return _Stream(path=path, handle=handle, writer=writer, good=handle.tell())


class _Block:
    """What ``Writer.write_block`` reads of a block: its records' count and encoded bytes.

    The method is fastavro's way to copy blocks without decoding them (it writes the count, the
    size, the bytes and the file's sync marker); it is meant for the blocks ``block_reader``
    yields, and reads only these two attributes of them.
    ``tests/test_file_sink.py::test_blocks_of_encoded_bodies_are_the_bytes_fastavro_writes_for_the_records``
    holds it to writing exactly what ``Writer.write`` of the records writes.
    """

    __slots__ = ("bytes_", "num_records")

    def __init__(self, bodies: list[bytes]) -> None:
        self.num_records = len(bodies)
        self.bytes_ = io.BytesIO(b"".join(bodies))


def _write_blocks(writer: Writer, bodies: list[bytes]) -> None:
    """``bodies`` as blocks of at most about BLOCK_BYTES each, as ``Writer.write`` cuts them."""
    start, size = 0, 0
    for end, body in enumerate(bodies, 1):
        size += len(body)
        if size >= BLOCK_BYTES:
            writer.write_block(_Block(bodies[start:end]))
            start, size = end, 0
    if start < len(bodies):
        writer.write_block(_Block(bodies[start:]))


def _sync(stream: _Stream) -> None:
    stream.writer.flush()
    stream.handle.flush()
    os.fsync(stream.handle.fileno())
    stream.good = stream.handle.tell()


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
