"""Measures what each hot-path stage costs inside a serving bridge, in CPU time per event.

The in-process benchmarks (``normalize.py``, ``encode.py``) time a stage in a hot loop, where its
code and data stay in the caches; in the server every event runs through the whole path and
finds them cold, and the same stage costs two to three times as much there
(``bench/results/2026-12-03-0650-s13-insitu.md``). This starts one worker (the file sink, or
Kafka on the bench's own broker with ``--sink kafka``) with ``bench/stage_timer/`` first on its
``PYTHONPATH``, which adds each stage's thread CPU time to a total (see its ``STAGES``), drives
it with ``ingest.py``'s wrk load (every HTTP-mode SFTPGo vector, 128 connections, kept alive),
and prints each stage's µs per event beside the process's CPU per event over the same windows.
A stage includes the stages it calls; the timer's own readings (two per call) are in the
numbers, and their cost is reported. Nothing here asserts a speed.

    .venv/bin/python bench/stages.py [--sink file|kafka] [--rounds 5] [--seconds 6] [--source DIR]
"""

from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import tempfile
import time
import timeit
from datetime import UTC, datetime
from pathlib import Path

import ingest

TIMER = ingest.REPO / "bench" / "stage_timer"
TIMER_BANNER = "stage timer: wrapped"  # bench/stage_timer/sitecustomize.py
# The file sink reaches no broker: Lab's worker settings name these, and nothing connects.
NO_BROKERS = ingest.Brokers(
    kafka="127.0.0.1:9", rabbitmq="amqp://127.0.0.1:9/", own=True, started_here=False
)


def read_totals(server: ingest.Server, path: Path) -> dict[str, tuple[int, int]]:
    """The timer's totals now: (ns, calls) by stage."""
    path.unlink(missing_ok=True)
    server.processes[0].send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while not path.exists():  # written whole (os.replace), or not yet
        if time.monotonic() > deadline:
            raise SystemExit("the stage timer wrote no totals within 10 s")
        time.sleep(0.05)
    raw = json.loads(path.read_text())
    return {label: (v["ns"], v["calls"]) for label, v in raw.items()}


def clock_reading_us() -> float:
    """What one ``time.thread_time_ns()`` costs here, in µs (the best of five timings)."""
    loops = 100_000
    best = min(timeit.repeat(time.thread_time_ns, number=loops, repeat=5))
    return 1e6 * best / loops


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--sink", choices=["file", "kafka"], default="file")
    parser.add_argument("--rounds", type=int, default=5, help="measured windows (5)")
    parser.add_argument("--seconds", type=float, default=6.0, help="length of a window (6)")
    parser.add_argument("--source", type=Path, help="the bridge package of this checkout")
    parser.add_argument("--label", help="added to the results file name")
    args = parser.parse_args()
    started = datetime.now(UTC)
    host = ingest.machine()
    brokers = ingest.start_brokers(own=True) if args.sink == "kafka" else NO_BROKERS
    scratch = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    totals_file = scratch / "stages.json"
    variant = ingest.Variant(
        "stages",
        args.source,
        settings={"LOGIN_AUDIT_STAGES_OUT": str(totals_file)},
        paths=(TIMER,),
    )
    lab = ingest.Lab(scratch, brokers, "processes")
    load = ingest.Load(scratch, ingest.request_pairs())
    per_event: list[float] = []
    stage_us: dict[str, list[float]] = {}
    calls: dict[str, list[float]] = {}
    try:
        server = lab.bridge(variant, args.sink)
        if TIMER_BANNER not in server.log.read_text(errors="replace"):
            raise SystemExit(f"bench/stage_timer did not wrap the worker: see {server.log}")
        load.closed(server.port, 3)  # warm-up: layouts learned, caches filled
        for _ in range(args.rounds):
            before = read_totals(server, totals_file)
            cpu_before = ingest.proc_cpu_seconds(server.processes[0].pid)
            closed = load.closed(server.port, args.seconds)
            cpu_after = ingest.proc_cpu_seconds(server.processes[0].pid)
            after = read_totals(server, totals_file)
            events = max(closed.ok, 1)
            per_event.append(1e6 * (cpu_after - cpu_before) / events)
            for label, (ns, n) in after.items():
                ns0, n0 = before.get(label, (0, 0))
                stage_us.setdefault(label, []).append((ns - ns0) / 1000 / events)
                calls.setdefault(label, []).append((n - n0) / events)
            print(f"round: {per_event[-1]:.0f} µs CPU/event, {closed.ok_per_s:,.0f} events/s")
    finally:
        lab.stop_all()
        if brokers.started_here:
            ingest.brokers("stop", own=True)
    process_us = statistics.median(per_event)
    reading_us = clock_reading_us()
    timer_us = sum(2 * reading_us * statistics.median(c) for c in calls.values())
    rows = [
        "| stage | µs CPU/event | share of the process | calls/event |",
        "|---|---:|---:|---:|",
    ]
    for label, values in stage_us.items():
        if not any(calls[label]):
            continue  # another sink's stage
        us = statistics.median(values)
        rows.append(
            f"| {label} | {us:.1f} [{min(values):.1f}-{max(values):.1f}] "
            f"| {100 * us / process_us:.0f} % | {statistics.median(calls[label]):.2f} |"
        )
    rows.append(
        f"| **process** (user + sys from /proc) | {process_us:.0f} "
        f"[{min(per_event):.0f}-{max(per_event):.0f}] | 100 % | |"
    )
    text = (
        f"# Stages benchmark, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"{ingest.how_run('stages.py', host)}: one worker into the {args.sink} sink, "
        f"{variant.describe()}; wrk with {ingest.WRK_CONNECTIONS} kept-alive connections, "
        f"{args.rounds} windows of {args.seconds:g} s; medians [range] over windows.\n\n"
        + "\n".join(rows)
        + "\n\nA stage includes the stages it calls (take, once per turn of the loop, holds "
        "normalize and the pipeline's prepare and submit; prepare holds encode, submit the "
        "sink's submit). Each call's two clock readings "
        f"({reading_us:.2f} µs each, measured in this process) are in its time and in the "
        f"process's: about {timer_us:.0f} µs per event in all, so the bridge without the timer "
        f"spends about {process_us - timer_us:.0f} µs per event.\n"
    )
    ingest.write_results(ingest.results_stem(started, "stages", args.label), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
