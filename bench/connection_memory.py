"""Peak memory of one bridge worker holding many connections, idle or each with a request in flight.

What grows a worker under a connection storm is what it holds at once: open connections, and
requests waiting for the sink. ``BRIDGE_MAX_CONNECTIONS`` caps the first (``BRIDGE_MAX_IN_FLIGHT``
the second); this shows what they cost and what the cap bounds. For each cap (the bridge's
default, and ``none``: a cap too high to reach) and each mode, one fresh worker into the bench's
own Kafka takes ``--connections`` connections from an asyncio client (``--cap N``: one more cap
to compare):

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
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

import ingest
from ingest import RssSampler, Variant, table

from bridge.settings import Settings

NO_CAP = 1_000_000
MODES = ("idle", "in-flight")


def kafka_pid() -> int:
    """The bench's own Kafka broker (scripts/brokers keeps its pid in the run directory)."""
    run = Path(ingest.OWN_BROKER_ENV["LOGIN_AUDIT_RUN"]) / "kafka" / "kafka.pid"
    return int(run.read_text().split()[0])


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
    parser.add_argument(
        "--cap",
        type=int,
        action="append",
        default=[],
        help="also a worker with this BRIDGE_MAX_CONNECTIONS (repeatable), beside the default's",
    )
    parser.add_argument("--label", help="added to the results file name")
    args = parser.parse_args()
    default_cap = Settings().max_connections
    raise_file_limit(args.connections)
    started = datetime.now(UTC)
    rows = []
    # In-flight pauses Kafka: never the shared one.
    with ingest.lab_and_brokers(own=True, prefix="bench-memory-") as lab:
        ingest.create_topics(lab, 1 << 30)
        kafka = kafka_pid()
        for cap in (None, *args.cap, NO_CAP):
            for mode in MODES:
                cap_text = {None: f"default ({default_cap})", NO_CAP: "none"}.get(cap, str(cap))
                # Requests stay in flight while Kafka is paused, not handed to the spool.
                settings = {"BRIDGE_SPOOL_AFTER_SECONDS": str(args.hold + 5)}
                if cap is not None:
                    settings["BRIDGE_MAX_CONNECTIONS"] = str(cap)
                variant = Variant(f"cap {cap_text}", None, settings=settings)
                server = lab.bridge(variant, "kafka", role=mode)
                asyncio.run(load(server.port, 50, "warm-up", 0, kafka))
                with RssSampler() as rss:
                    rss.watch(server)
                    answers = asyncio.run(
                        load(server.port, args.connections, mode, args.hold, kafka)
                    )
                lab.stop([server])
                idle, peak = rss.by_server()[server.name]
                seen = ", ".join(f"{n:,} {what}" for what, n in answers.most_common())
                rows.append([cap_text, mode, f"{idle:.0f}", f"{peak:.0f}", seen])
                print(f"  {' | '.join(rows[-1])}", flush=True)
    text = (
        f"# Connection memory, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"{ingest.how_run('connection_memory.py')}. One bridge worker "
        f"into the bench's own Kafka per row, {args.connections:,} connections held "
        f"{args.hold:g} s (in-flight: Kafka paused meanwhile, every request waiting for it).\n\n"
        + table(
            ["max_connections", "connections", "idle after start, MiB", "peak, MiB", "answers"],
            rows,
        )
        + "\n"
    )
    ingest.write_results(ingest.results_stem(started, "connection-memory", args.label), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
