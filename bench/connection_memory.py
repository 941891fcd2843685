"""Peak memory of one bridge worker holding many connections, idle or each with a request in flight.

What grows a worker under a connection storm is what it holds at once: open connections, and
requests waiting for the sink. ``BRIDGE_MAX_CONNECTIONS`` caps the first (``BRIDGE_MAX_IN_FLIGHT``
the second); this shows what they cost and what the cap bounds. For each cap (the bridge's
default, and ``none``: a cap too high to reach) and each mode, one fresh worker into the bench's
own Kafka takes ``--connections`` connections from an asyncio client:

- ``idle``: the connections send nothing for ``--hold`` seconds;
- ``in-flight``: Kafka is paused (SIGSTOP, the bench's own broker only) while every connection
  sends one SFTPGo login, so each request waits for its acknowledgement; Kafka continues after
  ``--hold`` seconds and every answer is read.

The worker's VmRSS is sampled every 50 ms; the table gives it idle after start and at its peak,
and the answers by status. Nothing here asserts a size.

    .venv/bin/python bench/connection_memory.py [--connections 8000] [--hold 5]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import resource
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
from datetime import UTC, datetime
from pathlib import Path

import ingest
from ingest import Lab, Variant, table

from support import free_port, stop_process

NO_CAP = 1_000_000
MODES = ("idle", "in-flight")


def kafka_pid() -> int:
    """The bench's own Kafka broker (scripts/brokers keeps its pid in the run directory)."""
    run = Path(ingest.OWN_BROKER_ENV["LOGIN_AUDIT_RUN"]) / "kafka" / "kafka.pid"
    return int(run.read_text().split()[0])


def start_bridge(lab: Lab, cap: int | None, hold: float) -> ingest.Server:
    port = free_port()
    data_dir = lab.data_dir(f"memory-{cap or 'default'}")
    env = lab.bridge_env(Variant("this checkout", None), "kafka", port, data_dir)
    # Requests stay in flight while Kafka is paused, not handed over to the spool.
    env["BRIDGE_SPOOL_AFTER_SECONDS"] = str(hold + 5)
    if cap is not None:
        env["BRIDGE_MAX_CONNECTIONS"] = str(cap)
    log = data_dir / "bridge.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [str(ingest.BIN / "login-audit-bridge"), "serve"],
            env=env,
            stdout=out,
            stderr=out,
            cwd=data_dir,
        )
    server = ingest.Server(f"cap {cap or 'default'}", port, [process], log, "kafka")
    ingest.wait_ready(server, sink_ready=True)
    return server


class PeakRss:
    """VmRSS of one process every 50 ms, in a thread, while in a ``with`` block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_kib = max(self.peak_kib, ingest.rss_kib(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def requests() -> list[bytes]:
    out = []
    for target, body in ingest.request_pairs():
        data = body.encode()
        out.append(
            f"POST {target} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
            f"Authorization: Bearer {ingest.TOKEN}\r\nContent-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
    return out


async def load(
    port: int, count: int, mode: str, hold: float, kafka: int
) -> collections.Counter[str]:
    """Opens ``count`` connections and holds them as ``mode`` says (``warm-up``: a request each,
    Kafka running). What became of them, counted: ``answered <status>``, ``closed`` (with no
    answer), ``held`` (still open when the hold ended), ``error`` (the connection failed)."""
    wire = requests()
    paused = mode == "in-flight"

    async def one(index: int) -> str:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return "error"
        try:
            if mode != "idle":
                writer.write(wire[index % len(wire)])
                await writer.drain()
                line = await asyncio.wait_for(reader.readline(), hold + 30)
            else:
                line = await asyncio.wait_for(reader.readline(), hold)
            words = line.decode(errors="replace").split()
            return f"answered {words[1]}" if len(words) > 1 else "closed"
        except TimeoutError:
            return "held"  # idle: still open when the hold ended
        except OSError:
            return "error"
        finally:
            writer.close()

    if paused:
        os.kill(kafka, signal.SIGSTOP)
    try:
        tasks = [asyncio.ensure_future(one(n)) for n in range(count)]
        if paused:
            await asyncio.sleep(hold)
            os.kill(kafka, signal.SIGCONT)
            paused = False
        return collections.Counter(await asyncio.gather(*tasks))
    finally:
        if paused:
            os.kill(kafka, signal.SIGCONT)


def raise_file_limit(count: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = count + 256
    if soft < wanted:
        if hard != resource.RLIM_INFINITY and hard < wanted:
            raise SystemExit(
                f"--connections {count} needs {wanted} open files; the limit is {hard}"
            )
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--connections", type=int, default=8000, help="per run (default 8000)")
    parser.add_argument("--hold", type=float, default=5.0, help="seconds held (default 5)")
    parser.add_argument("--label", help="added to the results file name")
    args = parser.parse_args()
    raise_file_limit(args.connections)
    started = datetime.now(UTC)
    found = ingest.start_brokers(own=True)  # in-flight pauses Kafka: never the shared one
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as scratch:
        lab = Lab(Path(scratch), found, "processes")
        try:
            ingest.create_topics(lab, 1 << 30)
            kafka = kafka_pid()
            for cap in (None, NO_CAP):
                for mode in MODES:
                    server = start_bridge(lab, cap, args.hold)
                    pid = server.processes[0].pid
                    asyncio.run(load(server.port, 50, "warm-up", 0, kafka))
                    idle = ingest.rss_kib(pid)
                    with PeakRss(pid) as rss:
                        answers = asyncio.run(
                            load(server.port, args.connections, mode, args.hold, kafka)
                        )
                    stop_process(server.processes[0])
                    cap_text = "none" if cap == NO_CAP else "default (4096)"
                    seen = ", ".join(f"{n:,} {what}" for what, n in answers.most_common())
                    rows.append(
                        [cap_text, mode, f"{idle / 1024:.0f}", f"{rss.peak_kib / 1024:.0f}", seen]
                    )
                    print(f"  {' | '.join(rows[-1])}", flush=True)
        finally:
            lab.stop_all()
            ingest.delete_broker_objects(lab)
            if found.started_here:
                ingest.brokers("stop", own=True)
    command = shlex.join(["bench/connection_memory.py", *sys.argv[1:]])
    text = (
        f"# Connection memory, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"`{command}` on {ingest.machine()}, Python {sys.version.split()[0]}. One bridge worker "
        f"into the bench's own Kafka per row, {args.connections:,} connections held "
        f"{args.hold:g} s (in-flight: Kafka paused meanwhile, every request waiting for it).\n\n"
        + table(
            ["max_connections", "connections", "idle after start, MiB", "peak, MiB", "answers"],
            rows,
        )
        + "\n"
    )
    label = f"-{args.label}" if args.label else ""
    ingest.write_results(f"{started:%Y-%m-%d-%H%M}-connection-memory{label}", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
