"""Measures what each hot-path stage costs inside a serving bridge, in CPU time per event.

The in-process benchmarks (``normalize.py``, ``encode.py``) time a stage in a hot loop, where its
code and data stay in the caches; in the server every event runs through the whole path and
finds them cold, and the same stage costs two to three times as much there
(``bench/results/2026-12-03-0650-s13-insitu.md``). This starts one worker (the file sink, or
Kafka on the bench's own broker with ``--sink kafka``) with ``bench/stage_timer/`` first on its
``PYTHONPATH``, which adds each stage's thread CPU time to a total (see its ``STAGES``), drives
it with ``wrk`` as ``ingest.py`` does (every HTTP-mode SFTPGo vector, 128 connections,
kept alive), and prints each stage's µs per event beside the process's CPU per event over the
same windows. A stage includes the stages it calls; the timer's own readings (two per call,
about 0.7 µs each here) are in the numbers, so the shares are upper bounds. Nothing here
asserts a speed.

    .venv/bin/python bench/stages.py [--sink file|kafka] [--rounds 5] [--seconds 6] [--source DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import ingest

from support import free_port, stop_process  # tests/support.py: ingest puts tests/ on the path

REPO = ingest.REPO
TIMER = REPO / "bench" / "stage_timer"
TIMER_BANNER = "stage timer: wrapped"  # bench/stage_timer/sitecustomize.py
CONNECTIONS = 128


def start_worker(
    scratch: Path, source: Path | None, sink: str, kafka: str | None
) -> tuple[subprocess.Popen[bytes], int, Path, Path]:
    """One ``serve`` worker with the stage timer; its process, port, log and totals file."""
    port = free_port()
    data = scratch / "data"
    log = scratch / "worker.log"
    totals = scratch / "stages.json"
    paths = [str(TIMER), *([str(source)] if source else [])]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_")},
        "PYTHONPATH": os.pathsep.join(paths),
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_DATA_DIR": str(data),
        "BRIDGE_AUTH_TOKENS": ingest.TOKEN,
        "BRIDGE_LOG_LEVEL": "warning",
        "BRIDGE_WORKERS": "1",
        "BRIDGE_SINK": sink,
        "LOGIN_AUDIT_STAGES_OUT": str(totals),
    }
    if kafka is not None:
        env["BRIDGE_KAFKA_BOOTSTRAP_SERVERS"] = kafka
        env["BRIDGE_KAFKA_TOPIC_SUCCESS"] = "bench-stages-success"
        env["BRIDGE_KAFKA_TOPIC_FAILURE"] = "bench-stages-failure"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [ingest.PYTHON, "-m", "bridge", "serve"], env=env, stdout=out, stderr=out
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the worker exited with {process.returncode}: see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as answer:
                if json.load(answer).get("sink_ready"):
                    break
        except OSError:
            pass
        time.sleep(0.2)
    else:
        stop_process(process)
        raise SystemExit(f"the worker was not ready within 60 s: see {log}")
    if TIMER_BANNER not in log.read_text(errors="replace"):
        stop_process(process)
        raise SystemExit(f"bench/stage_timer did not wrap the worker: see {log}")
    return process, port, log, totals


def read_totals(process: subprocess.Popen[bytes], path: Path) -> dict[str, tuple[int, int]]:
    """The timer's totals now: (ns, calls) by stage."""
    path.unlink(missing_ok=True)
    process.send_signal(signal.SIGUSR2)
    deadline = time.monotonic() + 10
    while not path.exists():  # written whole (os.replace), or not yet
        if time.monotonic() > deadline:
            raise SystemExit("the stage timer wrote no totals within 10 s")
        time.sleep(0.05)
    raw = json.loads(path.read_text())
    return {label: (v["ns"], v["calls"]) for label, v in raw.items()}


def wrk(url: str, script: Path, seconds: float) -> ingest.Closed:
    out = subprocess.run(
        [
            ingest.ensure_wrk(),
            "-t1",
            f"-c{CONNECTIONS}",
            f"-d{seconds:g}s",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return ingest.parse_wrk(out.stdout)


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
    brokers = ingest.start_brokers(own=True) if args.sink == "kafka" else None
    scratch = Path(tempfile.mkdtemp(prefix="bench-stages-"))
    script = scratch / "timed.lua"
    ingest.write_wrk_script(script, ingest.request_pairs(), counted=False)
    process, port, _log, totals_file = start_worker(
        scratch, args.source, args.sink, brokers.kafka if brokers else None
    )
    url = f"http://127.0.0.1:{port}"
    per_event: list[float] = []
    stage_us: dict[str, list[float]] = {}
    calls: dict[str, list[float]] = {}
    try:
        wrk(url, script, 3)  # warm-up: layouts learned, caches filled
        for _ in range(args.rounds):
            before = read_totals(process, totals_file)
            cpu_before = ingest.proc_cpu_seconds(process.pid)
            closed = wrk(url, script, args.seconds)
            cpu_after = ingest.proc_cpu_seconds(process.pid)
            after = read_totals(process, totals_file)
            events = max(closed.ok, 1)
            per_event.append(1e6 * (cpu_after - cpu_before) / events)
            for label, (ns, n) in after.items():
                ns0, n0 = before.get(label, (0, 0))
                stage_us.setdefault(label, []).append((ns - ns0) / 1000 / events)
                calls.setdefault(label, []).append((n - n0) / events)
            print(f"round: {per_event[-1]:.0f} µs CPU/event, {closed.ok_per_s:,.0f} events/s")
    finally:
        stop_process(process)
        if brokers is not None and brokers.started_here:
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
    command = shlex.join(["bench/stages.py", *sys.argv[1:]])
    where = f"checkout {args.source}" if args.source else f"this checkout ({REPO})"
    text = (
        f"# Stages benchmark, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"`{command}`: one worker into the {args.sink} sink, {where}; wrk with "
        f"{CONNECTIONS} kept-alive connections, {args.rounds} windows of {args.seconds:g} s; "
        f"medians [range] over windows; Python {sys.version.split()[0]}, {os.cpu_count()} CPUs.\n\n"
        + "\n".join(rows)
        + "\n\nA stage includes the stages it calls (accept holds normalize and the pipeline's "
        "submit, which holds encode and the sink's submit). Each call's two clock readings "
        f"({reading_us:.2f} µs each, measured in this process) are in its time and in the "
        f"process's: about {timer_us:.0f} µs per event in all, so the bridge without the timer "
        f"spends about {process_us - timer_us:.0f} µs per event.\n"
    )
    label = f"-{args.label}" if args.label else ""
    ingest.RESULTS.mkdir(exist_ok=True)
    out = ingest.RESULTS / f"{started:%Y-%m-%d-%H%M}-stages{label}.md"
    out.write_text(text, encoding="utf-8")
    print(text + f"\n(written to {out.relative_to(REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
