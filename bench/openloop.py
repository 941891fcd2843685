"""An open-loop HTTP/1.1 load generator: requests leave on a fixed schedule, latency counts from it.

Closed-loop tools (wrk, hey -q) wait for an answer before sending the next request on a
connection, so a slow server slows the load and its stall is counted once instead of for every
request that should have been sent meanwhile (coordinated omission). Here request *i* is due at
``start + i / rate`` whatever happened before; it goes out on an idle keep-alive connection, or
a new one (up to ``--connections``), or waits in a backlog for the next free one, and its latency
runs from its due time to the last byte of its answer. Loopback only.

    python bench/openloop.py --port P --rate R --duration S --requests FILE [--token T]

``FILE`` is a JSON list of ``[path, body]`` pairs, sent round-robin. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

HOST = "127.0.0.1"
POLL_SECONDS = 0.0005  # the scheduler's tick; requests due within one tick leave together
DRAIN_SECONDS = 5.0  # answers later than this after the run are counted as timeouts


@dataclass
class Tally:
    latencies: list[float] = field(default_factory=list)
    statuses: collections.Counter[int] = field(default_factory=collections.Counter)
    failures: int = 0
    max_backlog: int = 0
    connections: int = 0


class Connection(asyncio.Protocol):
    """One keep-alive connection with at most one request outstanding."""

    def __init__(self, generator: Generator) -> None:
        self._generator = generator
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._due = 0.0
        self._recorded = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio.Transport, but have its methods.
        self._transport = cast(asyncio.Transport, transport)

    def send(self, request: bytes, due: float, recorded: bool) -> None:
        assert self._transport is not None
        self._due, self._recorded = due, recorded
        self._buffer.clear()
        self._transport.write(request)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        status = _complete_response(self._buffer)
        if status is not None:
            self._generator.answered(self, status, self._due, self._recorded)

    def connection_lost(self, exc: Exception | None) -> None:
        self._generator.lost(self)


def _complete_response(buffer: bytearray) -> int | None:
    """The status code once the whole response is in the buffer, else None."""
    end = buffer.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buffer[:end]).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ", 2)[1])
    length = 0
    for line in head[1:]:
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    if status in (204, 304):
        length = 0
    return status if len(buffer) >= end + 4 + length else None


class Generator:
    """Sends on schedule over a bounded pool of connections and records each latency."""

    def __init__(self, *, port: int, requests: list[bytes], max_connections: int) -> None:
        self._port = port
        self._requests = requests
        self._max_connections = max_connections
        self._idle: list[Connection] = []
        self._open = 0
        self._connecting = 0
        self._backlog: collections.deque[tuple[float, bool]] = collections.deque()
        self._outstanding = 0
        self._next = 0
        self._connecting_tasks: set[asyncio.Task[None]] = set()
        self.tally = Tally()

    async def run(self, rate: float, warm_up: float, duration: float) -> float:
        """Sends for warm_up + duration seconds; returns the measured window's length."""
        # perf_counter, not loop.time(): uvloop's clock ticks in whole milliseconds.
        clock = time.perf_counter
        start = clock()
        measure_from = start + warm_up
        total = int((warm_up + duration) * rate)
        sent = 0
        while sent < total:
            now = clock()
            due_count = min(total, int((now - start) * rate) + 1)
            while sent < due_count:
                due = start + sent / rate
                self._dispatch(due, recorded=due >= measure_from)
                sent += 1
            await asyncio.sleep(POLL_SECONDS)
        deadline = clock() + DRAIN_SECONDS
        while self._outstanding and clock() < deadline:  # noqa: ASYNC110 - a deadline, not an event
            await asyncio.sleep(0.01)
        self.tally.failures += self._outstanding
        return duration

    def _dispatch(self, due: float, *, recorded: bool) -> None:
        self._outstanding += 1
        if self._idle:
            self._send(self._idle.pop(), due, recorded)
            return
        self._backlog.append((due, recorded))
        self.tally.max_backlog = max(self.tally.max_backlog, len(self._backlog))
        if self._open + self._connecting < self._max_connections:
            self._connecting += 1
            task = asyncio.ensure_future(self._connect())
            self._connecting_tasks.add(task)
            task.add_done_callback(self._connecting_tasks.discard)

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            _, connection = await loop.create_connection(lambda: Connection(self), HOST, self._port)
        except OSError:
            self._connecting -= 1
            self._fail_one_waiting()
            return
        self._connecting -= 1
        self._open += 1
        self.tally.connections += 1
        self._ready(connection)

    def _ready(self, connection: Connection) -> None:
        if self._backlog:
            due, recorded = self._backlog.popleft()
            self._send(connection, due, recorded)
        else:
            self._idle.append(connection)

    def _send(self, connection: Connection, due: float, recorded: bool) -> None:
        request = self._requests[self._next % len(self._requests)]
        self._next += 1
        connection.send(request, due, recorded)

    def answered(self, connection: Connection, status: int, due: float, recorded: bool) -> None:
        self._outstanding -= 1
        if recorded:
            self.tally.latencies.append(time.perf_counter() - due)
            self.tally.statuses[status] += 1
        self._ready(connection)

    def lost(self, connection: Connection) -> None:
        self._open -= 1
        if connection in self._idle:
            self._idle.remove(connection)

    def _fail_one_waiting(self) -> None:
        if self._backlog:
            self._backlog.popleft()
            self._outstanding -= 1
            self.tally.failures += 1


def build_requests(pairs: list[list[str]], *, port: int, token: str | None) -> list[bytes]:
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    built = []
    for path, body in pairs:
        data = body.encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
        )
        built.append(head.encode() + data)
    return built


def percentile(ordered: list[float], fraction: float) -> float:
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def summary(tally: Tally, rate: float, duration: float) -> dict[str, object]:
    ordered = sorted(tally.latencies)
    ok = sum(n for status, n in tally.statuses.items() if 200 <= status < 300)
    return {
        "offered_per_s": rate,
        "answered_2xx_per_s": ok / duration,
        "answered": len(ordered),
        "non_2xx": len(ordered) - ok,
        "failures": tally.failures,
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "p50_ms": percentile(ordered, 0.50) * 1e3,
        "p90_ms": percentile(ordered, 0.90) * 1e3,
        "p99_ms": percentile(ordered, 0.99) * 1e3,
        "max_ms": (ordered[-1] if ordered else float("nan")) * 1e3,
        "max_backlog": tally.max_backlog,
        "connections": tally.connections,
    }


async def main_async(args: argparse.Namespace, pairs: list[list[str]]) -> dict[str, object]:
    generator = Generator(
        port=args.port,
        requests=build_requests(pairs, port=args.port, token=args.token),
        max_connections=args.connections,
    )
    duration = await generator.run(args.rate, args.warm_up, args.duration)
    return summary(generator.tally, args.rate, duration)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warm-up", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--connections", type=int, default=256, help="most connections opened")
    parser.add_argument("--requests", required=True, help="JSON list of [path, body] pairs")
    parser.add_argument("--token", help="bearer token")
    args = parser.parse_args()
    pairs = json.loads(Path(args.requests).read_text(encoding="utf-8"))
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main_async(args, pairs))
    else:
        result = uvloop.run(main_async(args, pairs))  # cheaper: leaves more CPU to the server
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
