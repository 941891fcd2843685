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
  ``--hold`` seconds and every answer is read;
- ``idle-tls`` (``--tls``, instead of the two above): the worker listens for HTTPS (a throwaway
  ``trustme`` certificate) and the connections send nothing, not even a TLS ClientHello: each
  sits in its handshake. ``--baseline PATH`` runs the same rows for another checkout's bridge.

The worker's VmRSS is sampled every 50 ms; the table gives it idle after start and at its peak,
and the answers by status. Nothing here asserts a size.

    .venv/bin/python bench/connection_memory.py [--connections 8000] [--hold 5] [--cap N]
        [--tls [--baseline PATH]]
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

import checkouts
import ingest
import trustme
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
            if not mode.startswith("idle"):
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


def tls_settings(directory: Path) -> dict[str, str]:
    """An HTTPS listener's settings, with a throwaway CA's certificate for 127.0.0.1."""
    leaf = trustme.CA().issue_cert("127.0.0.1")
    cert, key = directory / "cert.pem", directory / "key.pem"
    leaf.cert_chain_pems[0].write_to_path(str(cert))
    leaf.private_key_pem.write_to_path(str(key))
    return {"BRIDGE_TLS_CERTFILE": str(cert), "BRIDGE_TLS_KEYFILE": str(key)}


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
    parser.add_argument(
        "--tls", action="store_true", help="idle connections to an HTTPS listener, in handshake"
    )
    parser.add_argument(
        "--baseline", type=Path, help="with --tls: also another checkout's bridge package"
    )
    parser.add_argument("--label", help="added to the results file name")
    args = parser.parse_args()
    args.source = None
    checkouts.resolve_checkouts(parser, args)
    if args.baseline is not None and not args.tls:
        parser.error("--baseline is for --tls")
    modes = ("idle-tls",) if args.tls else MODES
    sources: list[tuple[str, Path | None]] = [("this checkout", None)]
    if args.baseline is not None:
        sources.append(("baseline", args.baseline))
    default_cap = Settings().max_connections
    raise_file_limit(args.connections)
    started = datetime.now(UTC)
    rows = []
    # In-flight pauses Kafka: never the shared one.
    with ingest.lab_and_brokers(own=True, prefix="bench-memory-") as lab:
        ingest.create_topics(lab, 1 << 30)
        kafka = kafka_pid()
        tls = tls_settings(lab.scratch) if args.tls else {}
        for who, source in sources:
            for cap in (None, *args.cap, NO_CAP):
                for mode in modes:
                    cap_text = {None: f"default ({default_cap})", NO_CAP: "none"}.get(cap, str(cap))
                    # Requests stay in flight while Kafka is paused, not handed to the spool.
                    settings = {"BRIDGE_SPOOL_AFTER_SECONDS": str(args.hold + 5), **tls}
                    if cap is not None:
                        settings["BRIDGE_MAX_CONNECTIONS"] = str(cap)
                    variant = Variant(f"{who}, cap {cap_text}", source, settings=settings)
                    server = lab.bridge(variant, "kafka", role=mode)
                    if not args.tls:  # a plain request each: not for an HTTPS listener
                        asyncio.run(load(server.port, 50, "warm-up", 0, kafka))
                    with RssSampler() as rss:
                        rss.watch(server)
                        answers = asyncio.run(
                            load(server.port, args.connections, mode, args.hold, kafka)
                        )
                    lab.stop([server])
                    idle, peak = rss.by_server()[server.name]
                    seen = ", ".join(f"{n:,} {what}" for what, n in answers.most_common())
                    rows.append([who, cap_text, mode, f"{idle:.0f}", f"{peak:.0f}", seen])
                    print(f"  {' | '.join(rows[-1])}", flush=True)
    text = (
        f"# Connection memory, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"{ingest.how_run('connection_memory.py')}. One bridge worker "
        f"into the bench's own Kafka per row, {args.connections:,} connections held "
        f"{args.hold:g} s (in-flight: Kafka paused meanwhile, every request waiting for it; "
        "idle-tls: an HTTPS listener, the connections in their handshake).\n\n"
        + "".join(f"- {who}: {checkouts.describe(source)}\n" for who, source in sources)
        + "\n"
        + table(
            [
                "checkout",
                "max_connections",
                "connections",
                "idle after start, MiB",
                "peak, MiB",
                "answers",
            ],
            rows,
        )
        + "\n"
    )
    ingest.write_results(ingest.results_stem(started, "connection-memory", args.label), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
