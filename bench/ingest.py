"""Measures the bridge's CPU per event and throughput against the serving floor, in one run.

One command starts everything on 127.0.0.1 (Kafka and RabbitMQ through ``scripts/brokers``,
bridge workers through ``login-audit-bridge serve``, the serving floor through
``bench/floor_app.py``, which follows the bridge's own ``serve`` code path), measures, stops
what it started by PID, prints Markdown and writes it to ``bench/results/``. Sections:

- ``cpu``: the floor and one worker into Kafka (acks=all), RabbitMQ and the file sink, measured
  in interleaved rounds with ``wrk`` (closed loop): events/s and process CPU per event (user +
  sys from /proc over 2xx answers), each as a ratio to the floor in the same round; per-thread
  CPU of the Kafka worker.
- ``workers``: 1 vs N workers into Kafka, in the same rounds (N processes sharing the port
  with BRIDGE_REUSE_PORT, or one ``serve --workers N`` with ``--workers-mode flag``).
- ``latency``: p50/p99 into Kafka at a fixed 200 events/s and at 50 % of the measured maximum
  (or other shares, ``--latency-share``), from vegeta (constant rate, Go; built by
  ``scripts/tools vegeta``).
- ``profile``: py-spy ``--native --gil`` on the Kafka worker under load (top frames), and
  ``perf trace -s`` (syscalls per event) when perf is installed.
- ``penalty``: where the Kafka worker's CPU per event grows at a constant rate: py-spy
  ``--nonblocking --gil`` (the process is never stopped) in alternating windows under wrk,
  closed-loop vegeta and vegeta at ``--penalty-share`` of wrk's rate, in µs per event per
  component and function.
- ``checks``: what must not regress: shim CPU (bench/shim_startup.py), spool drain rate,
  RSS per worker (sampled over every run).

``--baseline DIR`` measures another checkout (its bridge package first on PYTHONPATH, its own
floor) in the same rounds, for a before/after table on a noisy machine. ``--paired`` with it
runs each baseline server and its candidate twin at the same time, each under its own wrk, so
both see the same machine in the same window and their per-round ratio holds still;
``--restart`` gives every pair fresh processes each round, so that an offset between two
processes of the same code does not hold for the whole run. Nothing here asserts a speed: the
issue's targets are printed with a yes/no each.

    .venv/bin/python bench/ingest.py [--quick] [--only SECTIONS] [--source DIR]
                                     [--baseline DIR [--paired [--restart]]]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import collections
import contextlib
import csv
import dataclasses
import functools
import json
import math
import operator
import os
import random
import re
import shlex
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import checkouts

REPO = Path(__file__).resolve().parent.parent
# The process helpers shared with the tests: tests/support.py.
sys.path.insert(0, str(REPO / "tests"))
from support import free_port, stop_process  # noqa: E402

VECTORS = REPO / "tests" / "data" / "sftpgo"
CACHE = Path(os.environ.get("LOGIN_AUDIT_CACHE", Path.home() / ".cache" / "login-audit-bridge"))
PYTHON = sys.executable
BIN = Path(PYTHON).parent
BROKERS = REPO / "scripts" / "brokers"
TOOLS = REPO / "scripts" / "tools"
SKELETON = REPO / "bench" / "skeleton"
SKELETON_BANNER = "skeleton: normalize and encode cached"  # bench/skeleton/sitecustomize.py
RESULTS = REPO / "bench" / "results"
TOKEN = "bench-token"  # noqa: S105 - a throwaway token for loopback-only processes
HOOK_PATH = "/v1/hooks/sftpgo"
WRK_THREADS = 1  # one wrk thread drives >50k req/s on loopback; the rest of the CPU is the server's
WRK_CONNECTIONS = 128
# Why the cpu section also loads the floor and Kafka with a new connection per event: that is
# how every hook connects. SFTPGo's HTTP post_login_hook goes through httpclient.RetryablePost,
# which builds a new retrying client (its own connection pool) for each call and closes its idle
# connections when the call returns; the program shim is a process per login; MediaWiki posts
# from the PHP request of the login. wrk's keep-alive rows are the issue's measurement; these
# add what accepting, setting up and closing a connection costs per event.
PER_EVENT_WHY = "SFTPGo's HTTP hook, the shim and MediaWiki open a connection per login"
SECTIONS = ("cpu", "workers", "latency", "profile", "penalty", "checks")
TICKS = os.sysconf("SC_CLK_TCK")

# Issue 11's targets.
CPU_MAX_FLOOR_RATIO = 3.0
CPU_STRETCH_FLOOR_RATIO = 2.0
RATE_MIN_FLOOR_RATIO = 0.3
FIXED_RATE = 200
# The issue's second latency rate, as a share of the maximum measured under wrk.
TARGET_SHARE = 0.5
# What each latency row's rate is, as its row says: FIXED_RATE, --latency-rate, or a share.
FIXED_LABEL = "fixed"
SET_LABEL = "--latency-rate"


def share_label(share: float) -> str:
    return f"{100 * share:g} % max"


OWN_SHARE_SUFFIX = "of its own max"


def own_share_label(share: float) -> str:
    """--kafka-floor-share's rows: a share of the Kafka floor's own maximum."""
    return f"{100 * share:g} % {OWN_SHARE_SUFFIX}"


TARGET_LABELS = (FIXED_LABEL, SET_LABEL, share_label(TARGET_SHARE))
P50_MAX_MS = 5.0
P99_MAX_MS = 20.0
# A latency run's stalls (see stall_windows): 100 ms windows in which most answers took > 20 ms.
STALL_WINDOW_S = 0.1
SLOW_MS = P99_MAX_MS
SHIM_MAX_RATIO = 1.3
DRAIN_MIN_EPS = 5000
RSS_MAX_MIB = 120.0
SINK_NAMES = {"kafka": "Kafka", "rabbitmq": "RabbitMQ", "file": "file sink"}


@dataclass(frozen=True)
class Plan:
    """How long and how much: the full run, or --quick; --rounds and --seconds override."""

    rounds: int
    seconds: float
    warm_up: float
    latency_rounds: int
    latency_seconds: float
    profile_seconds: float
    spool_events: int
    shim_runs: int
    shim_logins: int
    # The latency rows' second rate: None for shares of the measured maximum.
    latency_rate: float | None = None
    # Those shares: 50 % is the issue's target; others show where the tail turns.
    latency_shares: tuple[float, ...] = (TARGET_SHARE,)
    # Shares of the Kafka floor's own maximum to load it at too (KAFKA_FLOOR_OWN_WHY).
    kafka_floor_shares: tuple[float, ...] = ()

    @classmethod
    def choose(cls, args: argparse.Namespace) -> Plan:
        if args.quick:
            plan = cls(2, 3.0, 1.0, 1, 3.0, 3.0, 20_000, 30, 30)
        else:
            plan = cls(7, 10.0, 3.0, 3, 20.0, 20.0, 100_000, 100, 200)
        return dataclasses.replace(
            plan,
            rounds=args.rounds or plan.rounds,
            seconds=args.seconds or plan.seconds,
            latency_rounds=args.latency_rounds or plan.latency_rounds,
            latency_rate=args.latency_rate,
            latency_shares=tuple(sorted(set(args.latency_share or [TARGET_SHARE]))),
            kafka_floor_shares=tuple(sorted(set(args.kafka_floor_share or []))),
        )


# ---------------------------------------------------------------- statistics and the report


def round_ratios(samples: list[Sample], floor: list[Sample]) -> tuple[list[float], list[float]]:
    """(events/s ÷ the floor's, CPU/event ÷ the floor's), the n-th sample of each paired: the
    same round."""
    pairs = list(zip(samples, floor, strict=False))
    rate = [s.rate / f.rate for s, f in pairs if f.rate]
    cpu = [s.us_per_event / f.us_per_event for s, f in pairs if f.us_per_event]
    return rate, cpu


def share_of_maximum(text: str) -> float:
    """--latency-share's argument: a share of the maximum, above 0 and at most 1."""
    share = float(text)
    if not 0 < share <= 1:
        raise argparse.ArgumentTypeError(f"{text}: a share of the maximum is over 0 and at most 1")
    return share


def spread(values: list[float], spec: str = ",.0f", unit: str = "") -> str:
    """'median{unit} [min-max]' of the rounds (just the median when there is one value)."""
    if not values:
        return "-"
    mid = f"{statistics.median(values):{spec}}{unit}"
    if len(values) == 1:
        return mid
    return f"{mid} [{min(values):{spec}}-{max(values):{spec}}]"


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


@dataclass
class Report:
    targets: list[tuple[str, str, str]] = field(default_factory=list)
    blocks: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def target(self, what: str, result: str, verdict: str) -> None:
        self.targets.append((what, result, verdict))
        print(f"  target: {what}: {result} [{verdict}]", flush=True)

    def block(self, text: str) -> None:
        self.blocks.append(text)
        print("\n" + text + "\n", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def markdown(self) -> str:
        parts = []
        if self.targets:
            rows = [
                "| target (issue 11) | result: median [range] | met (median) |",
                "|---|---|---|",
            ]
            rows += [f"| {a} | {b} | {c} |" for a, b, c in self.targets]
            parts.append("\n".join(rows))
        parts += self.blocks
        if self.notes:
            parts.append("Notes:\n\n" + "\n".join(f"- {n}" for n in self.notes))
        return "\n\n".join(parts)


def table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    align = align or "l" + "r" * (len(header) - 1)
    marks = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(marks) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


# ---------------------------------------------------------------- /proc


def proc_user_sys(pid: int, tid: int | None = None) -> tuple[float, float]:
    """(utime, stime) in seconds of a process (all its threads) or of one thread; zeros once
    it is gone."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    try:
        fields = Path(path).read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0, 0.0
    # utime and stime are fields 14 and 15 of proc(5)'s stat; [0] here is field 3.
    return int(fields[11]) / TICKS, int(fields[12]) / TICKS


def proc_cpu_seconds(pid: int, tid: int | None = None) -> float:
    """utime + stime of a process (all its threads) or of one thread; 0 once it is gone."""
    return sum(proc_user_sys(pid, tid))


def status_number(path: str, name: str) -> int:
    """The number after ``name:`` in a proc(5) status file; 0 once the process is gone."""
    try:
        text = Path(path).read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class LoopSched:
    """What the scheduler did to processes' main threads (the event loops), summed."""

    # Voluntary context switches: it blocked, waiting for work, a lock or I/O.
    sleeps: int = 0
    migrations: int = 0  # moves to another CPU, each leaving its caches behind
    preemptions: int = 0  # involuntary context switches: taken off a CPU while it had work
    waiting: float = 0.0  # seconds runnable but waiting for a CPU

    def __add__(self, other: LoopSched) -> LoopSched:
        return LoopSched(*map(operator.add, dataclasses.astuple(self), dataclasses.astuple(other)))

    def __sub__(self, other: LoopSched) -> LoopSched:
        return LoopSched(*map(operator.sub, dataclasses.astuple(self), dataclasses.astuple(other)))


def loop_sched(pid: int) -> LoopSched:
    """A process's main thread's scheduling so far, from /proc/PID/task/PID/sched
    (nr_voluntary_switches, se.nr_migrations, nr_involuntary_switches) and schedstat (its
    second field: ns spent runnable on a run queue); zeros once it is gone."""
    try:
        sched = Path(f"/proc/{pid}/task/{pid}/sched").read_text()
        schedstat = Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()
    except OSError:
        return LoopSched()
    fields = {}
    for line in sched.splitlines():
        name, colon, value = line.partition(":")
        if colon:
            fields[name.strip()] = value.strip()
    return LoopSched(
        int(float(fields.get("nr_voluntary_switches", "0"))),
        int(float(fields.get("se.nr_migrations", "0"))),
        int(float(fields.get("nr_involuntary_switches", "0"))),
        int(schedstat[1]) / 1e9,
    )


def thread_ids(pid: int) -> list[int]:
    try:
        return sorted(int(t) for t in os.listdir(f"/proc/{pid}/task"))
    except OSError:
        return []


def comm(pid: int, tid: int | None = None) -> str:
    path = f"/proc/{pid}/task/{tid}/comm" if tid is not None else f"/proc/{pid}/comm"
    try:
        return Path(path).read_text().strip()
    except OSError:
        return "?"


def process_tree(roots: list[int]) -> list[int]:
    """The roots and all their descendants (a `serve --workers N` forks its workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            found.append(pid)
            todo += children.get(pid, [])
    return sorted(found)


def machine_idle_seconds() -> float:
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()
    return (int(cpu[4]) + int(cpu[5])) / TICKS  # idle + iowait


def machine_halts() -> int:
    """How many times the machine's CPUs went idle in a state deeper than polling (on a VM
    each is an exit to the host, and the wake-up that ends it a trip back), summed over
    CPUs; 0 where the kernel has no cpuidle driver."""
    total = 0
    for state in Path("/sys/devices/system/cpu").glob("cpu[0-9]*/cpuidle/state[0-9]*"):
        if (state / "name").read_text().strip() != "POLL":
            total += int((state / "usage").read_text())
    return total


def rss_kib(pid: int) -> int:
    return status_number(f"/proc/{pid}/status", "VmRSS")


def uvloop_loaded(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return "/uvloop/loop." in Path(f"/proc/{pid}/maps").read_text()
    return False


# ---------------------------------------------------------------- processes


# The bench's HTTPS servers present certificates of a throwaway CA, on loopback only.
_LOOPBACK_TLS = ssl.create_default_context()
_LOOPBACK_TLS.check_hostname = False
_LOOPBACK_TLS.verify_mode = ssl.CERT_NONE


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    # Every URL here is http(s)://127.0.0.1:<port>/..., built by the bench.
    try:
        with urllib.request.urlopen(url, timeout=timeout, context=_LOOPBACK_TLS) as reply:  # noqa: S310
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclass
class Variant:
    """Which bridge package runs: this checkout's (source None) or another one's."""

    name: str
    source: Path | None
    # --skeleton: the same bridge with bench/skeleton/ first on its path; its workers must log
    # this line, and it is measured into Kafka only, never against the targets.
    skeleton: bool = False
    settings: dict[str, str] = field(default_factory=dict)  # --set: BRIDGE_* for its workers
    # Directories put first on its workers' path, as bench/skeleton/ is (bench/stages.py's timer).
    paths: tuple[Path, ...] = ()

    def env(self) -> dict[str, str]:
        # The other checkout's bridge package ahead of the editable install.
        paths = [str(SKELETON)] if self.skeleton else []
        paths += [str(path) for path in self.paths]
        paths += [str(self.source)] if self.source else []
        return {"PYTHONPATH": os.pathsep.join(paths)} if paths else {}

    def describe(self) -> str:
        described = checkouts.describe(self.source)
        if self.skeleton:
            described += ", with bench/skeleton/ (normalizing and encoding cached)"
        for path in self.paths:
            described += f", with {path.relative_to(REPO) if path.is_relative_to(REPO) else path}/"
        if self.settings:
            described += ", workers with " + " ".join(f"{k}={v}" for k, v in self.settings.items())
        return described


@dataclass
class Server:
    """One port and the processes behind it (bridge workers, or the floor)."""

    name: str
    port: int
    processes: list[subprocess.Popen[bytes]]
    log: Path
    sink: str = "floor"
    scheme: str = "http"

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def pids(self) -> list[int]:
        return process_tree([p.pid for p in self.processes if p.poll() is None])


@dataclass
class Brokers:
    kafka: str
    rabbitmq: str
    own: bool
    started_here: bool

    @property
    def kafka_run(self) -> Path:
        """The Kafka broker's run directory (scripts/brokers' KAFKA_RUN), where its gc.log is."""
        return brokers_run_dir(self.own) / "kafka"


# The bench's own brokers (own run directory, own ports): the spool check stops and starts
# Kafka, which must not disturb a test run using the shared ones, nor be disturbed by it. The
# ports sit below Linux's ephemeral range (32768+), where wrk's outgoing connections could land.
OWN_BROKER_ENV = {
    "LOGIN_AUDIT_RUN": str(CACHE / "bench-run"),
    "LOGIN_AUDIT_KAFKA_PORT": "19192",
    "LOGIN_AUDIT_KAFKA_CONTROLLER_PORT": "19193",
    "LOGIN_AUDIT_KAFKA_SASL_PORT": "19194",
    "LOGIN_AUDIT_KAFKA_SSL_PORT": "19195",
    "LOGIN_AUDIT_RABBITMQ_PORT": "5773",
    "LOGIN_AUDIT_RABBITMQ_TLS_PORT": "5774",
    "LOGIN_AUDIT_RABBITMQ_DIST_PORT": "25773",
    "LOGIN_AUDIT_EPMD_PORT": "14469",
}


def brokers_run_dir(own: bool) -> Path:
    """Where scripts/brokers keeps the brokers' data, logs and pid files (its RUN)."""
    env = OWN_BROKER_ENV if own else os.environ
    return Path(env.get("LOGIN_AUDIT_RUN", CACHE / "run"))


def brokers(command: str, own: bool) -> str:
    """Runs scripts/brokers for the bench's own brokers or the shared ones; returns its output."""
    if command.startswith("stop") and not own:
        raise AssertionError("never stop the shared brokers")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_TEST_")}
    done = subprocess.run(
        [str(BROKERS), command],
        env={**env, **(OWN_BROKER_ENV if own else {})},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"scripts/brokers {command} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def start_brokers(own: bool) -> Brokers:
    before = brokers("env", own)
    already = "KAFKA" in before and "RABBITMQ" in before
    which = "own (ports 19192, 5773)" if own else "shared"
    print(f"brokers: {which}, " + ("already running" if already else "starting"), flush=True)
    out = brokers("start", own)
    env = dict(
        line.removeprefix("export ").split("=", 1)
        for line in out.splitlines()
        if line.startswith("export ")
    )
    return Brokers(
        kafka=env["BRIDGE_TEST_KAFKA_BOOTSTRAP"],
        rabbitmq=env["BRIDGE_TEST_RABBITMQ_URL"],
        own=own,
        started_here=not already,
    )


def split_cpus() -> tuple[set[int], set[int]]:
    """(the servers' CPU, the rest) out of the CPUs this process may use."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        raise SystemExit(
            "--pin-servers needs at least 2 CPUs: one for the servers, one for the rest"
        )
    return {cpus[-1]}, set(cpus[:-1])


def pin_brokers(own: bool, cpus: set[int]) -> str:
    """Moves every thread of the running brokers (found by their pid files) onto ``cpus``;
    threads they start later inherit it. Says which were moved."""
    moved = []
    for pid_file in sorted(brokers_run_dir(own).glob("*/*.pid")):
        try:
            pid = int(pid_file.read_text().strip())
            tasks = list(Path(f"/proc/{pid}/task").iterdir())
        except (OSError, ValueError):
            continue  # not running
        for task in tasks:
            with contextlib.suppress(OSError):  # a thread that just ended
                os.sched_setaffinity(int(task.name), cpus)
        moved.append(pid_file.stem)
    return ", ".join(moved) or "no broker"


class Lab:
    """Starts bridge workers and floors in a scratch directory; stops all it started."""

    def __init__(
        self,
        scratch: Path,
        brokers: Brokers,
        workers_mode: str,
        server_cpus: set[int] | None = None,
    ) -> None:
        self.scratch = scratch
        self.brokers = brokers
        self.workers_mode = workers_mode
        self.server_cpus = server_cpus  # --pin-servers: where bridges and floors run
        self.run_id = uuid.uuid4().hex[:8]
        self.topics = (f"bench-{self.run_id}.success", f"bench-{self.run_id}.failure")
        self.queues = (f"bench-{self.run_id}.success", f"bench-{self.run_id}.failure")
        self.exchange = f"bench-{self.run_id}"
        self.started: list[Server] = []
        self._count = 0

    def data_dir(self, name: str) -> Path:
        self._count += 1
        path = self.scratch / f"{self._count:02d}-{name.replace(' ', '_')}"
        path.mkdir()
        return path

    def bridge_env(self, variant: Variant, sink: str, port: int, data_dir: Path) -> dict[str, str]:
        return {
            **variant.env(),
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_PORT": str(port),
            "BRIDGE_DATA_DIR": str(data_dir),
            # Per-worker numbers: one process unless the round asks for more (--workers N).
            "BRIDGE_WORKERS": "1",
            "BRIDGE_SINK": sink,
            "BRIDGE_AUTH_TOKENS": TOKEN,
            "BRIDGE_LOG_LEVEL": "warning",
            "BRIDGE_KAFKA_BOOTSTRAP_SERVERS": self.brokers.kafka,
            "BRIDGE_KAFKA_TOPIC_SUCCESS": self.topics[0],
            "BRIDGE_KAFKA_TOPIC_FAILURE": self.topics[1],
            "BRIDGE_RABBITMQ_URL": self.brokers.rabbitmq,
            "BRIDGE_RABBITMQ_EXCHANGE": self.exchange,
            "BRIDGE_RABBITMQ_DECLARE_QUEUES": "true",
            "BRIDGE_RABBITMQ_QUEUE_SUCCESS": self.queues[0],
            "BRIDGE_RABBITMQ_QUEUE_FAILURE": self.queues[1],
            **variant.settings,
        }

    def bridge(self, variant: Variant, sink: str, workers: int = 1, role: str = "") -> Server:
        """`workers` bridge processes on one port (BRIDGE_REUSE_PORT, a data directory each),
        or with --workers-mode flag one `serve --workers N` (one data directory)."""
        port = free_port()
        name = f"{variant.name}-{sink}-{workers}w" + (f"-{role}" if role else "")
        processes = []
        flag = self.workers_mode == "flag"
        for n in range(1 if flag else workers):
            data_dir = self.data_dir(f"{name}-{n + 1}")
            env = self.bridge_env(variant, sink, port, data_dir)
            argv = [str(BIN / "login-audit-bridge"), "serve"]
            if flag:
                argv += ["--workers", str(workers)]
            elif workers > 1:
                env["BRIDGE_REUSE_PORT"] = "true"
            with (data_dir / "bridge.log").open("wb") as log:
                processes.append(
                    subprocess.Popen(
                        argv,
                        env=env,
                        stdout=log,
                        stderr=log,
                        cwd=data_dir,
                        preexec_fn=self._pin(),
                    )
                )
        scheme = "https" if "BRIDGE_TLS_CERTFILE" in variant.settings else "http"
        server = Server(name, port, processes, data_dir / "bridge.log", sink, scheme=scheme)
        self.started.append(server)
        wait_ready(server, sink_ready=sink != "file")
        if variant.skeleton and SKELETON_BANNER not in server.log.read_text(errors="replace"):
            raise SystemExit(
                f"{name}: bench/skeleton/sitecustomize.py did not wrap the bridge ({server.log}): "
                "the methods it wraps changed; update it"
            )
        return server

    def _pin(self) -> Callable[[], None] | None:
        """A server's pre-exec step under --pin-servers: onto the servers' CPUs."""
        cpus = self.server_cpus
        if cpus is None:
            return None
        return lambda: os.sched_setaffinity(0, cpus)

    def floor(self, variant: Variant, *, kafka: bool = False) -> Server:
        """bench/floor_app.py through the variant's `serve` code path; checks its banner.

        `kafka`: the Kafka floor (KAFKA_FLOOR_WHY), with the Kafka worker's settings."""
        port = free_port()
        name = f"{variant.name}-{KAFKA_FLOOR if kafka else 'floor'}"
        data_dir = self.data_dir(name)
        argv = [PYTHON, str(REPO / "bench" / "floor_app.py")]
        if kafka:
            env = self.bridge_env(variant, "kafka", port, data_dir)
            argv += ["--publish", "kafka"]
            for path, _ in http_vectors():
                argv += ["--vector", str(path)]
        else:
            env = {
                **variant.env(),
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "BRIDGE_HOST": "127.0.0.1",
                "BRIDGE_PORT": str(port),
                "BRIDGE_DATA_DIR": str(data_dir),
                "BRIDGE_LOG_LEVEL": "warning",
            }
        log = data_dir / "floor.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                argv,
                env=env,
                stdout=out,
                stderr=out,
                cwd=data_dir,
                preexec_fn=self._pin(),
            )
        server = Server(name, port, [process], log)
        self.started.append(server)
        wait_ready(server, sink_ready=False, path="/")
        if floor_banner(server) is None:
            raise SystemExit(
                f"bench/floor_app.py printed no 'floor:' line ({log}): the bridge's serve code "
                "path changed and the floor may be serving the real bridge; update floor_app.py"
            )
        return server

    def stop(self, servers: list[Server]) -> None:
        for server in servers:
            for process in server.processes:
                stop_process(process)
            if server in self.started:
                self.started.remove(server)

    def stop_all(self) -> None:
        self.stop(list(self.started))


def floor_banner(server: Server) -> str | None:
    for line in server.log.read_text(errors="replace").splitlines():
        if line.startswith("floor:"):
            return line.removeprefix("floor:").strip()
    return None


def wait_ready(server: Server, *, sink_ready: bool, path: str = "/readyz") -> None:
    """Until the server answers (the floor: anything; a bridge: /readyz 200 and, for a broker
    sink, sink_ready, since /readyz answers 200 with a spool before the broker connects)."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for process in server.processes:
            if process.poll() is not None:
                tail = server.log.read_text(errors="replace")[-2000:]
                raise SystemExit(f"{server.name} exited with {process.returncode}:\n{tail}")
        with contextlib.suppress(OSError, ValueError):
            status, body = http_get(server.url + path, timeout=1.0)
            if path != "/readyz" or (
                status == 200 and (not sink_ready or json.loads(body).get("sink_ready"))
            ):
                return
        time.sleep(0.1)
    raise SystemExit(f"{server.name}: not ready within 90 s; see {server.log}")


def bridge_has_workers_flag(variant: Variant) -> bool:
    out = subprocess.run(
        [str(BIN / "login-audit-bridge"), "serve", "--help"],
        env={**os.environ, **variant.env()},
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    return "--workers" in out


def metric(server: Server, name: str, labels: str = "") -> float:
    """The sum of a metric's samples whose labels contain `labels` (e.g. 'sink="kafka"')."""
    _, body = http_get(f"{server.url}/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


LOOP_LAG_BUCKETS = "login_audit_event_loop_lag_seconds_bucket"
# Kernel TCP counters a latency round reports: retransmission timeouts (200 ms and more on
# loopback), drops at a full listen or socket backlog, and delayed ACKs.
TCP_SHOWN = (
    "PassiveOpens",
    "RetransSegs",
    "TCPTimeouts",
    "TCPLossProbes",
    "TCPSynRetrans",
    "ListenOverflows",
    "ListenDrops",
    "TCPBacklogDrop",
    "TCPRcvQDrop",
    "DelayedACKs",
    "TCPAbortOnTimeout",
    "SoftnetDrops",
)
WARM_UP_S = 2.0  # of a latency round, by the vegeta process that measures it
LATE_SEND_MS = 10.0  # a request vegeta sent this far behind its schedule was held up there
PUBLISH_BUCKETS = "login_audit_publish_duration_seconds_bucket"


# Why the latency section loads the floor at its rates too (bench/README, "Latency").
FLOOR_AT_RATE_WHY = (
    "Under wrk's closed loop every server takes many requests per wake-up of its loop; at a "
    "constant rate it wakes for nearly each one, and each request costs more (the floor's own "
    "CPU per request at a constant rate was 2.3-2.5x its CPU under wrk in the 2026-12-04 "
    "runs). So a rate that is half of wrk's maximum keeps a worker busier than half the time: "
    "this table says how much, and whether the extra is the bridge's or any server's on this "
    "loop."
)

# What the loop's scheduling columns say (latency's by-thread table, the penalty summary).
LOOP_SCHED_WHY = (
    "*loop waiting for a CPU*: the time the event loop thread was runnable but on a run queue "
    "(/proc/PID/task/PID/schedstat), per event: a delay every request in the loop shares, on "
    "top of the CPU it costs. *preempted*: its involuntary context switches, taken off a CPU "
    "while it had work; *migrations*: its moves to another CPU (sched's se.nr_migrations), each "
    "leaving its caches behind."
)
KAFKA_FLOOR = "kafka-floor"
GC_PAUSES_WHY = (
    "the test broker's stop-the-world collections (its gc.log) logged during each round's "
    "window, how many and the longest: a stall with a long one is the broker's, whoever's "
    "answers waited."
)
# Why the latency section loads a floor that publishes too (bench/README, "Latency").
KAFKA_FLOOR_WHY = (
    "The Kafka floor is bench/floor_app.py answering each request once the bridge's own "
    "Kafka sink (KafkaSink.send, the bridge's producer settings, the same broker and "
    "topics) has the delivery report of one event encoded at start-up, the next of the "
    "events of the vectors the bridge is sent, in turn (so the same mix of successes and "
    "failures, to the same two topics: librdkafka sends one produce request per "
    "partition): the same loop, HTTP server and publish as the bridge, without routing, "
    "parsing, normalizing or encoding. Its latency at a rate is what the machine, the "
    "broker and the loop leave to any bridge that answers after Kafka's acknowledgement; "
    "the bridge's p99 over the Kafka floor's, within each round, is what the bridge's own "
    "work adds."
)
# --kafka-floor-share: the question it answers.
KAFKA_FLOOR_OWN_WHY = (
    "The issue's second latency rate is a share of the bridge's own maximum under wrk, so a "
    "bridge made faster under wrk is loaded harder: while that maximum is the worker's CPU "
    "limit, what sets how busy the rate keeps it is its CPU per event at a constant rate over "
    "its CPU per event under wrk, not its speed (when wrk's 128 connections are held up by the "
    "round trip through Kafka first, the maximum and the rate come out lower than the CPU "
    "allows). Here the Kafka floor, which does nothing but publish, is loaded the same way: at "
    "a share of its own maximum under wrk (measured once, 128 kept-alive connections, before "
    "the rounds), in the same rounds. *busy*: CPU per request at the rate times the rate, the "
    "share of one core the server used. If the Kafka floor cannot hold the p99 at 50 % of its "
    "own maximum on this machine, no bridge on this loop can."
)


def gc_cell(results: list[dict[str, Any]]) -> str:
    """The broker's collection pauses in each round's window: how many, and the longest (ms)."""
    counts = [float(len(r["gc_ms"])) for r in results]
    longest = [max(r["gc_ms"], default=0.0) for r in results]
    return f"{spread(counts)}, longest {spread(longest, '.0f')} ms"


def latency_cells(runs: list[tuple[dict[str, Any], Sample]]) -> list[str]:
    """A server's latency rounds at one rate as table cells: p50, p99, max, stalls, non-2xx
    answers and CPU per request."""
    return [
        spread([r["p50_ms"] for r, _ in runs], ".2f"),
        spread([r["p99_ms"] for r, _ in runs], ".2f"),
        spread([r["max_ms"] for r, _ in runs], ".1f"),
        spread([r["stalls"] for r, _ in runs]),
        str(sum(r["requests"] - r["ok"] for r, _ in runs)),
        spread([s.us_per_event for _, s in runs]),
    ]


def histograms(server: Server) -> dict[str, dict[float, float]]:
    """The publish-duration and loop-lag histograms of one /metrics scrape: by histogram, the
    cumulative count per upper bound (s), summed over label sets (sinks, workers); one a bridge
    does not have (an older checkout's loop lag) is empty."""
    _, body = http_get(f"{server.url}/metrics")
    found: dict[str, dict[float, float]] = {PUBLISH_BUCKETS: {}, LOOP_LAG_BUCKETS: {}}
    for line in body.decode().splitlines():
        name, brace, _ = line.partition("{")
        buckets = found.get(name) if brace else None
        if buckets is not None:
            bound = float(line.split('le="', 1)[1].split('"', 1)[0])
            buckets[bound] = buckets.get(bound, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def share_over(before: dict[float, float], after: dict[float, float], seconds: float) -> float:
    """The fraction of the events published between two scrapes that took over ``seconds``
    from acceptance to the sink's acknowledgement (``seconds`` must be a bucket bound)."""
    total = after.get(float("inf"), 0.0) - before.get(float("inf"), 0.0)
    within = after.get(seconds, 0.0) - before.get(seconds, 0.0)
    return (total - within) / total if total else 0.0


# ---------------------------------------------------------------- measuring


@dataclass
class Sample:
    """One measured window on one server."""

    ok: int
    errors: int
    rate: float  # 2xx answers per second
    cpu: float  # CPU seconds of all the server's processes
    seconds: float
    idle: float  # the whole machine's idle fraction
    threads: dict[str, float] = field(default_factory=dict)  # label -> CPU seconds
    loop_sched: LoopSched = field(default_factory=LoopSched)  # the processes' main threads

    @property
    def us_per_event(self) -> float:
        return self.cpu / max(self.ok, 1) * 1e6

    @property
    def core(self) -> float:
        return self.cpu / self.seconds if self.seconds else 0.0


class Meter:
    """CPU time of a server's processes (and threads) over a block, and the machine's idle."""

    def __init__(self, server: Server, labels: dict[tuple[int, int], str] | None = None) -> None:
        self._server = server
        self._labels = labels
        self.cpu = 0.0
        self.seconds = 0.0
        self.idle = 0.0
        self.threads: dict[str, float] = {}
        self.loop_sched = LoopSched()
        self.halts = 0

    def _threads(self, pids: list[int]) -> dict[tuple[int, int], float]:
        return {(p, t): proc_cpu_seconds(p, t) for p in pids for t in thread_ids(p)}

    def __enter__(self) -> Meter:
        self._pids = self._server.pids()
        self._before = {p: proc_cpu_seconds(p) for p in self._pids}
        self._thread_before = self._threads(self._pids) if self._labels is not None else {}
        self._sched_before = {p: loop_sched(p) for p in self._pids}
        self._idle = machine_idle_seconds()
        self._halts = machine_halts()
        self._started = time.monotonic()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self._started
        self.idle = (machine_idle_seconds() - self._idle) / (self.seconds * (os.cpu_count() or 1))
        self.halts = machine_halts() - self._halts
        pids = sorted(set(self._pids) | set(self._server.pids()))
        self.cpu = sum(proc_cpu_seconds(p) - self._before.get(p, 0.0) for p in pids)
        self.loop_sched = sum(
            (loop_sched(p) - self._sched_before.get(p, LoopSched()) for p in pids), LoopSched()
        )
        if self._labels is not None:
            for key, used in self._threads(pids).items():
                label = self._labels.get(key) or thread_label(*key, {})
                delta = used - self._thread_before.get(key, 0.0)
                self.threads[label] = self.threads.get(label, 0.0) + delta


def thread_label(pid: int, tid: int, python_names: dict[int, str]) -> str:
    name = python_names.get(tid)
    if name == "MainThread" or (not name and tid == pid):
        return "MainThread (event loop)"
    if name:
        return f"{name} (Python thread)"
    native = comm(pid, tid)
    if native.startswith("rdk:"):
        return f"{native} (librdkafka)"
    return f"{native} (tid {tid}, no Python name)"


THREAD_KINDS = ("event loop", "librdkafka", "other threads")


def thread_kind(label: str) -> str:
    """Which of THREAD_KINDS a thread_label() belongs to."""
    if "MainThread (event loop)" in label:  # after a process prefix with several workers
        return THREAD_KINDS[0]
    if "(librdkafka)" in label:
        return THREAD_KINDS[1]
    return THREAD_KINDS[2]


def thread_labels(server: Server, spy: Path | None) -> dict[tuple[int, int], str]:
    """A readable label per thread: Python's thread names from `py-spy dump`, else the comm."""
    pids = server.pids()
    labels = {}
    for pid in pids:
        names: dict[int, str] = {}
        if spy is not None:
            dump = subprocess.run(
                [str(spy), "dump", "--json", "--pid", str(pid)],
                capture_output=True,
                text=True,
                check=False,
            )
            with contextlib.suppress(ValueError):
                for thread in json.loads(dump.stdout or "[]"):
                    if thread.get("os_thread_id"):
                        names[int(thread["os_thread_id"])] = str(thread.get("thread_name") or "")
        prefix = f"pid {pid}: " if len(pids) > 1 else ""
        for tid in thread_ids(pid):
            labels[(pid, tid)] = prefix + thread_label(pid, tid, names)
    return labels


class RssSampler:
    """Samples VmRSS of every watched server's processes every 50 ms; keeps each one's peak."""

    def __init__(self) -> None:
        self._servers: list[Server] = []
        self._pids: dict[int, str] = {}
        self.peaks: dict[int, int] = {}
        self.idle: dict[int, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def watch(self, server: Server) -> None:
        pids = server.pids()
        with self._lock:
            self._servers.append(server)
            for pid in pids:
                self._pids[pid] = server.name
                self.idle.setdefault(pid, rss_kib(pid))

    def by_server(self) -> dict[str, tuple[float, float]]:
        """Per server: (largest idle RSS after start, largest peak) over its processes, in MiB."""
        found: dict[str, tuple[float, float]] = {}
        with self._lock:
            for pid, name in self._pids.items():
                idle, peak = found.get(name, (0.0, 0.0))
                found[name] = (
                    max(idle, self.idle.get(pid, 0) / 1024),
                    max(peak, self.peaks.get(pid, 0) / 1024),
                )
        return found

    def _run(self) -> None:
        tick = 0
        while not self._stop.wait(0.05):
            tick += 1
            if tick % 20 == 0:  # a `serve --workers N` may start workers later
                with self._lock:
                    servers = list(self._servers)
                for server in servers:
                    for pid in server.pids():
                        with self._lock:
                            self._pids.setdefault(pid, server.name)
            with self._lock:
                pids = list(self._pids)
            for pid in pids:
                kib = rss_kib(pid)
                with self._lock:
                    self.peaks[pid] = max(self.peaks.get(pid, 0), kib)


# ---------------------------------------------------------------- load generators


def http_vectors() -> list[tuple[Path, dict[str, Any]]]:
    """Every HTTP-mode SFTPGo vector with a body: its file and its content."""
    found = []
    for path in sorted(VECTORS.glob("*.json")):
        vector = json.loads(path.read_text(encoding="utf-8"))
        if vector.get("mode") == "http" and vector.get("raw_body"):
            found.append((path, vector))
    if not found:
        raise SystemExit(f"no HTTP-mode vectors under {VECTORS}")
    return found


def request_pairs() -> list[tuple[str, str]]:
    """(path, body) of every HTTP-mode SFTPGo vector, as SFTPGo's HTTP hook sends them."""
    return [(f"{HOOK_PATH}?{v['raw_query']}", v["raw_body"]) for _, v in http_vectors()]


def lua_string(text: str) -> str:
    return (
        '"'
        + "".join(c if c.isalnum() or c in " -_.:,{}[]/=&?@+" else f"\\{ord(c):03d}" for c in text)
        + '"'
    )


def write_wrk_script(
    path: Path, pairs: list[tuple[str, str]], *, counted: bool, per_event: bool = False
) -> None:
    """A wrk script cycling through the vectors; `counted` stops each thread after arg 1 answers.

    `per_event`: every request asks ``Connection: close``, so the server closes the connection
    after its answer and wrk opens a new one for the next request: how the hooks really connect
    (see PER_EVENT_WHY).
    """
    close = '["Connection"] = "close",\n                   ' if per_event else ""
    entries = ",\n".join(f"  {{{lua_string(p)}, {lua_string(b)}}}" for p, b in pairs)
    counting = (
        """
local answered = 0
function response(status, headers, body)
  answered = answered + 1
  if answered >= limit then wrk.thread:stop() end
end
"""
        if counted
        else ""
    )
    path.write_text(
        f"""-- generated by bench/ingest.py
local vectors = {{
{entries}
}}
local requests = {{}}
local i = 0
limit = 0
function init(args)
  limit = tonumber(args[1]) or 0
  local headers = {{["Content-Type"] = "application/json",
                   {close}["Authorization"] = "Bearer {TOKEN}"}}
  for n, v in ipairs(vectors) do requests[n] = wrk.format("POST", v[1], headers, v[2]) end
end
function request()
  i = i % #requests + 1
  return requests[i]
end
{counting}
function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {{"requests": %d, "duration_us": %d, "status": %d, "connect": %d, "read": %d, '
    .. '"write": %d, "timeout": %d, "p50_us": %d, "p99_us": %d}}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
""",
        encoding="utf-8",
    )


def write_vegeta_targets(path: Path, base_url: str, pairs: list[tuple[str, str]]) -> None:
    """vegeta's JSON targets: each (path, body) as a POST to ``base_url``, with the bench token."""
    headers = {"Content-Type": ["application/json"], "Authorization": [f"Bearer {TOKEN}"]}
    lines = [
        json.dumps(
            {
                "method": "POST",
                "url": f"{base_url}{target}",
                "body": base64.b64encode(body.encode()).decode(),
                "header": headers,
            }
        )
        for target, body in pairs
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@dataclass(frozen=True)
class Closed:
    """A wrk run: answers per second that were 2xx, and everything that was not."""

    ok_per_s: float
    ok: int
    errors: int
    seconds: float
    p50_ms: float
    p99_ms: float


def ensure_wrk() -> str:
    found = shutil.which("wrk")
    if found:
        return found
    print("installing wrk from Debian (apt-get install -y wrk)", flush=True)
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], env=env).returncode:
        subprocess.run([*sudo, "apt-get", "update", "-qq"], env=env, check=True)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-qq", "wrk"], env=env, check=True)
    return shutil.which("wrk") or "wrk"


def ensure_vegeta() -> Path:
    """vegeta, built from the Go module proxy at a pinned version by scripts/tools."""
    binary = CACHE / "bin" / "vegeta"
    done = subprocess.run(
        [str(TOOLS), "vegeta"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    if done.returncode != 0 or not binary.exists():
        raise SystemExit(
            "scripts/tools vegeta failed (needs Go and the Go module proxy):\n"
            f"{done.stderr[-2000:]}"
            "\nskip the latency section with --only cpu,workers,profile,checks"
        )
    return binary


RATEGO = REPO / "bench" / "ratego"
RATEGO_WHY = (
    "bench/ratego sends the constant rates instead of vegeta (--rate-generator ratego): the "
    "same open loop (a request sent when due, on an idle kept-alive connection or on a new one "
    "when all are busy, stamped before it has a connection; latency to the answer's last byte), "
    "without Go's net/http, on one thread. vegeta shares the server's 2 CPUs and costs more "
    "than the server it measures: against the floor at 7,106/s it spent 88 µs of CPU per "
    "request and the floor 57; ratego 55 and the floor 36 (2 runs of 10 s each, /proc, "
    "2026-12-05). The floor's read and write per request were the same under both (perf trace)."
)


def ensure_ratego() -> Path:
    """bench/ratego, built with Go (standard library only) into the cache when its source is
    newer than the binary."""
    binary = CACHE / "bin" / "ratego"
    source = max(path.stat().st_mtime for path in RATEGO.glob("*.go"))
    if binary.exists() and binary.stat().st_mtime >= source:
        return binary
    binary.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["go", "build", "-o", str(binary), "."],
        cwd=RATEGO,
        env={**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"building bench/ratego failed (needs Go):\n{done.stderr[-2000:]}")
    return binary


def py_spy(required: bool) -> Path | None:
    binary = BIN / "py-spy"
    if binary.exists():
        return binary
    if required:
        raise SystemExit("py-spy is not in the virtualenv: run scripts/bootstrap (test extras)")
    return None


def parse_wrk(out: str) -> Closed:
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    data = json.loads(line.removeprefix("WRKJSON "))
    seconds = data["duration_us"] / 1e6
    errors = data["status"] + data["connect"] + data["read"] + data["write"] + data["timeout"]
    ok = data["requests"] - data["status"]
    return Closed(ok / seconds, ok, errors, seconds, data["p50_us"] / 1e3, data["p99_us"] / 1e3)


class Load:
    """wrk (closed loop: the most a server sustains) and vegeta (a constant offered rate)."""

    def __init__(
        self,
        scratch: Path,
        pairs: list[tuple[str, str]],
        vegeta_connections: int | None = None,
        generator: str = "vegeta",
    ) -> None:
        self.wrk = ensure_wrk()
        self.vegeta: Path | None = None
        # What sends the constant rates: vegeta, or bench/ratego (RATEGO_WHY).
        self.generator = generator
        # At most this many connections per vegeta run (None: vegeta's default, no limit).
        self.vegeta_connections = vegeta_connections
        self.scratch = scratch
        self.pairs = pairs
        self.timed = scratch / "timed.lua"
        self.timed_per_event = scratch / "timed-per-event.lua"
        self.counted = scratch / "counted.lua"
        write_wrk_script(self.timed, pairs, counted=False)
        write_wrk_script(self.timed_per_event, pairs, counted=False, per_event=True)
        write_wrk_script(self.counted, pairs, counted=True)

    def closed(
        self,
        port: int,
        seconds: float,
        connections: int = WRK_CONNECTIONS,
        *,
        per_event: bool = False,
    ) -> Closed:
        return self.finish(self.start_closed(port, seconds, connections, per_event=per_event))

    def start_closed(
        self,
        port: int,
        seconds: float,
        connections: int = WRK_CONNECTIONS,
        *,
        per_event: bool = False,
    ) -> subprocess.Popen[str]:
        """A closed-loop wrk run, started and not awaited (two at once for --paired);
        `per_event`: a new connection for every request."""
        script = self.timed_per_event if per_event else self.timed
        argv = self._argv(port, ["-d", f"{seconds:g}s", "-s", str(script)], connections)
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def targets(self, port: int) -> Path:
        """vegeta's JSON targets for the port (ratego reads them too), written once."""
        targets = self.scratch / f"vegeta-{port}.jsonl"
        if not targets.exists():
            write_vegeta_targets(targets, f"http://127.0.0.1:{port}", self.pairs)
        return targets

    def _vegeta_attack(self, port: int, seconds: float, options: list[str]) -> list[str]:
        """The argv of a vegeta attack on the port's targets for `seconds`, plus `options`."""
        if self.vegeta is None:
            self.vegeta = ensure_vegeta()
        return [
            str(self.vegeta),
            "attack",
            "-format=json",
            f"-targets={self.targets(port)}",
            f"-duration={seconds:g}s",
            "-timeout=10s",
            "-http2=false",
            "-max-body=0",
            *options,
        ]

    def closed_vegeta(self, port: int, seconds: float, workers: int = WRK_CONNECTIONS) -> None:
        """vegeta in a closed loop: `workers` requests in flight, each sent when the last
        answer is in, like wrk's connections; its answers are not read."""
        options = ["-rate=0", f"-workers={workers}", f"-max-workers={workers}", "-output=/dev/null"]
        subprocess.run(
            self._vegeta_attack(port, seconds, options),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            check=True,
        )

    @staticmethod
    def finish(wrk: subprocess.Popen[str]) -> Closed:
        out, err = wrk.communicate()
        if wrk.returncode != 0:
            raise subprocess.CalledProcessError(wrk.returncode, wrk.args, out, err)
        return parse_wrk(out)

    def count(
        self, port: int, events: int, finished: Callable[[], bool], connections: int = 64
    ) -> Closed:
        """Sends `events` requests (each connection stops after its share) until `finished()`.

        wrk sleeps for its whole -d even when every thread has stopped; SIGINT ends the sleep,
        and it then prints its summary as usual.
        """
        per_thread = max(1, events // WRK_THREADS)
        options = ["-d", "3600s", "-s", str(self.counted)]
        argv = [*self._argv(port, options, connections), "--", str(per_thread)]
        wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while wrk.poll() is None and not finished():
                time.sleep(0.05)
            wrk.send_signal(signal.SIGINT)
            out, _ = wrk.communicate(timeout=30)
        finally:
            if wrk.poll() is None:
                wrk.kill()
                wrk.wait()
        return parse_wrk(out)

    def _argv(self, port: int, options: list[str], connections: int) -> list[str]:
        argv = [self.wrk, "-t", str(WRK_THREADS), "-c", str(connections), "--timeout", "10s"]
        return [*argv, *options, f"http://127.0.0.1:{port}{HOOK_PATH}"]

    def fixed_rate(
        self,
        port: int,
        rate: float,
        seconds: float,
        *,
        warm_up: float = 0.0,
        window: Callable[[], contextlib.AbstractContextManager[object]] = contextlib.nullcontext,
    ) -> dict[str, Any]:
        """vegeta at `rate` requests/s for `warm_up` + `seconds`: latency percentiles (ms), 2xx
        count and where the slow answers were, over the requests scheduled after the warm-up.

        Warm-up and window are one vegeta process, so the window starts with the connections
        and workers the warm-up left it. A fresh vegeta starts with none and opens them in a
        burst, more connections at once than a hook's client ever opens after its own start.
        `window()` is entered about when the counted requests start and left when the last
        answer is in: the caller's meters run there.
        """
        per_s = max(1, round(rate))
        limit = self.vegeta_connections
        if self.generator == "ratego":
            results = self.scratch / "ratego.csv"
            argv = [
                str(ensure_ratego()),
                f"-targets={self.targets(port)}",
                f"-rate={per_s}",
                f"-duration={warm_up + seconds:g}s",
                "-timeout=10s",
                *([f"-max-connections={limit}"] if limit else []),
                f"-output={results}",
            ]
            env = {**os.environ, "GOMAXPROCS": "1"}  # one thread: less CPU (RATEGO_WHY)
        else:
            results = self.scratch / "vegeta.bin"
            argv = self._vegeta_attack(
                port,
                warm_up + seconds,
                [
                    f"-rate={per_s}/1s",
                    *([f"-max-connections={limit}"] if limit else []),
                    f"-output={results}",
                ],
            )
            env = None
        attack = subprocess.Popen(
            argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env
        )
        try:
            time.sleep(warm_up)
            before = tcp_counters()
            started = time.time()
            with window():
                _, err = attack.communicate()
            ended = time.time()
        finally:
            if attack.poll() is None:
                attack.kill()
                attack.wait()
        if attack.returncode != 0:
            raise subprocess.CalledProcessError(attack.returncode, attack.args, "", err)
        after = tcp_counters()
        tcp = {name: after[name] - before[name] for name in TCP_SHOWN if name in after}
        hits = read_hits(self.vegeta, results)
        counted = [hit for hit in hits if hit.seq >= warm_up * per_s]
        latencies = sorted(hit.latency_ns for hit in counted)
        statuses = collections.Counter(str(hit.code) for hit in counted)
        return {
            "offered": rate,
            "requests": len(counted),
            "ok": sum(n for s, n in statuses.items() if s.startswith("2")),
            "statuses": statuses,
            "p50_ms": nearest_rank(latencies, 0.50) / 1e6,
            "p99_ms": nearest_rank(latencies, 0.99) / 1e6,
            "max_ms": (latencies[-1] if latencies else 0) / 1e6,
            "errors": sorted({hit.error for hit in counted if hit.error})[:3],
            # vegeta opens a connection for each request sent while all its open ones wait:
            # a stall turns into new connections, which cost the bridge more than kept-alive.
            "new_connections": tcp.get("PassiveOpens", 0) / max(1, len(counted)),
            "tcp": tcp,
            "window": (started, ended),
            **stall_windows(hits, counted, per_s),
        }


@dataclass(frozen=True, slots=True)
class Hit:
    """One of vegeta's requests: when it was sent, its place in the schedule, its answer."""

    sent_ns: int
    seq: int
    code: int
    latency_ns: int
    error: str


def read_hits(vegeta: Path | None, results: Path) -> list[Hit]:
    """The per-request results in vegeta's CSV (timestamp, code, latency, bytes out, bytes in,
    error, body, attack, seq, ...): ratego's file as it is, vegeta's binary file encoded."""
    if results.suffix == ".csv":
        out = results.read_text(encoding="utf-8")
    else:
        assert vegeta is not None  # its results exist, so it ran
        out = subprocess.run(
            [str(vegeta), "encode", "--to", "csv", str(results)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    return [
        Hit(int(row[0]), int(row[8]), int(row[1]), int(row[2]), row[5])
        for row in csv.reader(out.splitlines())
    ]


def nearest_rank(ordered: Sequence[float], share: float) -> float:
    """The nearest-rank percentile of an ascending list (nan when it is empty)."""
    if not ordered:
        return float("nan")
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def percent(share: float | None, spec: str) -> str:
    """A share as a percentage, or n/a when it could not be read."""
    return "n/a" if share is None else f"{100 * share:{spec}} %"


def percents(shares: list[float | None], spec: str) -> str:
    """The spread of the shares that were read, as percentages; n/a when none was."""
    read = [100 * share for share in shares if share is not None]
    return spread(read, spec, " %") if read else "n/a"


def tcp_counters() -> dict[str, int]:
    """The machine's TCP counters since boot (/proc/net/snmp's Tcp and /proc/net/netstat's
    TcpExt), by name; differences over a latency window say what the kernel did meanwhile.

    Machine-wide: over a latency window on loopback the only connections made are vegeta's to
    the bridge (the bridge's own to the broker stay open), so PassiveOpens' difference is how
    many new connections vegeta opened."""
    counters: dict[str, int] = {}
    for source in ("/proc/net/snmp", "/proc/net/netstat"):
        lines = [line.split() for line in Path(source).read_text().splitlines()]
        for names, values in zip(lines[::2], lines[1::2], strict=True):
            if names[0] in ("Tcp:", "TcpExt:"):
                counters.update(zip(names[1:], map(int, values[1:]), strict=True))
    # Segments dropped because a CPU's input backlog (net.core.netdev_max_backlog) was full:
    # on loopback every segment passes through that queue, so each drop is one TCP sends again.
    softnet = Path("/proc/net/softnet_stat").read_text().splitlines()
    counters["SoftnetDrops"] = sum(int(line.split()[1], 16) for line in softnet)
    return counters


# A stop-the-world pause in the broker's gc.log (scripts/brokers starts Kafka with
# -Xlog:gc:...:time): "[2026-12-05T17:55:01.123+0000] GC(3) Pause Young (Normal) ... 3.456ms".
GC_PAUSE = re.compile(r"^\[(?P<at>[^\]]+)\] GC\(\d+\) Pause .* (?P<ms>\d+(?:\.\d+)?)ms$")


def broker_pauses(run: Path, start: float, end: float) -> list[float]:
    """The Kafka broker's collection pauses (ms) logged between two wall-clock times (s since
    the epoch), from its gc.log and the rotated ones beside it; [] when there is no log (a
    broker started before it logged its collections)."""
    pauses = []
    for path in sorted(run.glob("gc.log*")):
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            found = GC_PAUSE.match(line)
            if found is None:
                continue
            at = datetime.strptime(found["at"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
            if start <= at <= end:
                pauses.append(float(found["ms"]))
    return pauses


def stall_windows(hits: list[Hit], counted: list[Hit], rate: float) -> dict[str, float]:
    """Where a run's slow answers are: spread out (queueing in the bridge) or bunched in stalls.

    The `counted` requests are cut into windows of STALL_WINDOW_S by send time. A window is a
    stall when most of its requests took over SLOW_MS: everything waited at once (a broker
    pausing, the machine busy elsewhere, a long collection). Returns the stall windows' count
    and the share of the slow answers that fell in them; and the share of the counted requests
    vegeta sent over LATE_SEND_MS behind its own schedule (request n at n / rate from the
    schedule's start, set by all `hits`, the warm-up's too): vegeta short of CPU, then sending a
    burst to catch up.
    """
    counts: dict[int, list[int]] = {}
    for hit in counted:
        window = counts.setdefault(hit.sent_ns // int(STALL_WINDOW_S * 1e9), [0, 0])
        window[0] += 1
        window[1] += hit.latency_ns > SLOW_MS * 1e6
    slow = sum(n for _, n in counts.values())
    stalled = [(total, n) for total, n in counts.values() if n * 2 > total]

    def behind(hit: Hit) -> float:  # its send time less its place in the schedule
        return hit.sent_ns - hit.seq * 1e9 / rate

    start = min(map(behind, hits), default=0.0)
    late = sum(behind(hit) - start > LATE_SEND_MS * 1e6 for hit in counted)
    return {
        "stalls": len(stalled),
        "slow_in_stalls": sum(n for _, n in stalled) / slow if slow else 0.0,
        "late_sends": late / len(counted) if counted else 0.0,
    }


def vegeta_version(binary: Path | None) -> str:
    if binary is None:
        return ""
    out = subprocess.run([str(binary), "-version"], capture_output=True, text=True, check=False)
    return out.stdout.splitlines()[0].removeprefix("Version:").strip() if out.stdout else "?"


# ---------------------------------------------------------------- the measurements


@dataclass
class Target:
    """A server measured in the rounds: a floor, or bridge workers into one sink."""

    variant: Variant
    kind: str  # floor, kafka, rabbitmq, file
    workers: int
    server: Server
    samples: list[Sample] = field(default_factory=list)
    labels: dict[tuple[int, int], str] | None = None  # per-thread CPU when set
    errors_before: float = 0.0  # publish errors of its processes stopped by --restart
    per_event: bool = False  # wrk opens a new connection for every event (PER_EVENT_WHY)

    @property
    def is_bridge(self) -> bool:
        """Bridge workers, with /metrics; not one of the floors."""
        return self.kind not in ("floor", KAFKA_FLOOR)

    @property
    def title(self) -> str:
        how = ", new connection per event" if self.per_event else ""
        if self.kind == "floor":
            return f"floor (bare ASGI app, the bridge's serve path){how}"
        if self.kind == KAFKA_FLOOR:
            return f"Kafka floor (the floor awaiting the bridge's Kafka sink){how}"
        sink = {"kafka": "Kafka (acks=all)", "rabbitmq": "RabbitMQ", "file": "file sink"}
        plural = "s" if self.workers > 1 else ""
        return f"{sink[self.kind]}, {self.workers} worker{plural}{how}"


@dataclass
class Bench:
    plan: Plan
    lab: Lab
    load: Load
    rss: RssSampler
    report: Report
    sections: set[str]
    variants: list[Variant]
    workers: int
    seed: int
    paired: bool = False  # --paired: a row's baseline and candidate measured at the same time
    restart: bool = False  # --restart: with paired, fresh processes for every pair and round
    per_event: bool = True  # the cpu section also measures the floor and Kafka per-event
    targets: list[Target] = field(default_factory=list)
    first_started: list[str] = field(default_factory=list)  # per paired round: whose wrk first

    @property
    def candidate(self) -> Variant:
        return self.variants[-1]

    def find(
        self, variant: Variant, kind: str, workers: int = 1, *, per_event: bool = False
    ) -> Target | None:
        wanted = (variant, kind, workers, per_event)
        for target in self.targets:
            if (target.variant, target.kind, target.workers, target.per_event) == wanted:
                return target
        return None

    def floor_of(self, target: Target) -> Target:
        """The floor a row is compared with: the one loaded the same way."""
        floor = self.find(target.variant, "floor", per_event=target.per_event)
        if floor is None:
            floor = self.find(target.variant, "floor")
        assert floor is not None  # every run with rounds starts a floor
        return floor

    def single(self, variant: Variant, kind: str) -> Target:
        """The variant's one-worker server of this kind, started if the run has none yet."""
        found = self.find(variant, kind)
        if found is None:
            found = self.add(variant, kind)
        return found

    def add(
        self, variant: Variant, kind: str, workers: int = 1, *, per_event: bool = False
    ) -> Target:
        how = ", new connection per event" if per_event else ""
        print(f"starting {variant.name}: {kind}, {workers} worker(s){how}", flush=True)
        server = self.serve(variant, kind, workers)
        target = Target(variant, kind, workers, server, per_event=per_event)
        self.targets.append(target)
        return target

    def serve(self, variant: Variant, kind: str, workers: int) -> Server:
        if kind == "floor":
            return self.lab.floor(variant)
        if kind == KAFKA_FLOOR:
            return self.lab.floor(variant, kafka=True)
        server = self.lab.bridge(variant, kind, workers)
        self.rss.watch(server)
        return server

    # -- start-up

    def start(self) -> None:
        rounds = {"cpu", "workers"} & self.sections
        for variant in self.variants:
            if rounds:
                self.add(variant, "floor")
            if rounds or {"latency", "profile", "penalty"} & self.sections:
                self.add(variant, "kafka")
            if "cpu" in self.sections:
                if not variant.skeleton:
                    self.add(variant, "rabbitmq")
                    self.add(variant, "file")
                if self.per_event:
                    # Own processes, not the rows' above: --restart replaces a row's server.
                    self.add(variant, "floor", per_event=True)
                    self.add(variant, "kafka", per_event=True)
            if "workers" in self.sections and not variant.skeleton:
                self.add(variant, "kafka", self.workers)
        self.describe_loops()

    def describe_loops(self) -> None:
        """Which event loop and HTTP parser serve: the floor says; for a bridge, /proc/maps."""
        for variant in self.variants:
            floor = self.find(variant, "floor")
            kafka = self.find(variant, "kafka")
            banner = floor_banner(floor.server) if floor else None
            bridge = None
            if kafka is not None:
                pids = kafka.server.pids()
                bridge = "uvloop" if any(uvloop_loaded(p) for p in pids) else "no uvloop"
            text = f"{variant.name}: " + "; ".join(
                x
                for x in (
                    f"floor reports {banner}" if banner else "",
                    f"bridge worker has {bridge} mapped (/proc/PID/maps)" if bridge else "",
                )
                if x
            )
            if banner or bridge:
                self.report.note(text)
            if banner and bridge and (("uvloop" in banner) != (bridge == "uvloop")):
                self.report.note(
                    f"**WARNING** {variant.name}: the floor and the bridge run different event "
                    "loops; bench/floor_app.py no longer follows the bridge's serve path"
                )

    # -- interleaved rounds: cpu and workers

    def rounds(self) -> None:
        targets = [t for t in self.targets if self.in_rounds(t)]
        spy = py_spy(required=False)
        print(f"warm-up: {self.plan.warm_up:g} s of wrk on each of {len(targets)} servers")
        for target in targets:
            self.load.closed(target.server.port, self.plan.warm_up, per_event=target.per_event)
            if target.kind == "kafka" and target.workers == 1:
                target.labels = thread_labels(target.server, spy)
        shuffle = random.Random(self.seed)
        if self.paired:
            self.paired_rounds(targets, shuffle, spy)
        else:
            for number in range(1, self.plan.rounds + 1):
                order = list(targets)
                shuffle.shuffle(order)
                print(f"round {number}/{self.plan.rounds}", flush=True)
                for target in order:
                    with Meter(target.server, target.labels) as meter:
                        run = self.load.closed(
                            target.server.port, self.plan.seconds, per_event=target.per_event
                        )
                    self.record(target, run, meter)
                    if target.kind == "rabbitmq":
                        purge_queues(self.lab)  # outside the window: keep its queues short
        self.report_rounds()

    def record(self, target: Target, run: Closed, meter: Meter) -> Sample:
        sample = Sample(
            run.ok, run.errors, run.ok_per_s, meter.cpu, meter.seconds, meter.idle, meter.threads
        )
        target.samples.append(sample)
        print(
            f"  {target.variant.name} {target.title}: {sample.rate:,.0f}/s, "
            f"{sample.us_per_event:.0f} µs CPU/event, {100 * sample.core:.0f} % of a "
            f"core, machine idle {100 * sample.idle:.0f} %"
            + (f", {run.errors} errors" if run.errors else ""),
            flush=True,
        )
        return sample

    def pairs(self, targets: list[Target]) -> list[tuple[Target, Target]]:
        """(baseline, candidate) for each row of the rounds: the same kind and worker count."""
        base, cand = self.variants[0], self.variants[-1]
        found = []
        for target in targets:
            other = self.find(base, target.kind, target.workers, per_event=target.per_event)
            if target.variant == cand and other in targets:
                assert other is not None
                found.append((other, target))
        return found

    def paired_rounds(
        self, targets: list[Target], shuffle: random.Random, spy: Path | None
    ) -> None:
        """Each round, each row's baseline and candidate together, each under its own wrk, in
        the same window: what the machine does to one (steal, clock, the broker's pauses) it
        does to the other, so their ratio holds still where sequential windows do not. Whose
        wrk starts first alternates by round (the rows' order is shuffled as usual). With
        --restart, each pair gets fresh processes from the second round on."""
        pairs = self.pairs(targets)
        self.report.note(
            "--paired: every server ran beside its twin of the other checkout, so the targets "
            "against the floor and the absolute numbers are not those of a sequential run; "
            "read the ratios between the checkouts"
            + (
                "; --restart: every pair ran as fresh processes in every round after the first "
                f"(started, then warmed up together for {self.plan.warm_up:g} s)"
                if self.restart
                else ""
            )
        )
        for number in range(1, self.plan.rounds + 1):
            order = list(pairs)
            shuffle.shuffle(order)
            first = self.variants[(number - 1) % 2]
            self.first_started.append(first.name)
            print(f"round {number}/{self.plan.rounds} (paired, {first.name} first)", flush=True)
            for base, cand in order:
                both = (base, cand) if first == base.variant else (cand, base)
                if self.restart and number > 1:
                    self.fresh(both, spy)
                for target, (run, meter) in zip(both, self.together(both), strict=True):
                    self.record(target, run, meter)
                if base.kind == "rabbitmq":
                    purge_queues(self.lab)  # outside the window: keep its queues short
                b, c = base.samples[-1], cand.samples[-1]
                print(
                    f"  {cand.title}: candidate ÷ baseline "
                    f"{c.us_per_event / max(b.us_per_event, 1e-9):.2f}x CPU/event, "
                    f"{c.rate / max(b.rate, 1e-9):.2f}x events/s",
                    flush=True,
                )

    def fresh(self, both: tuple[Target, Target], spy: Path | None) -> None:
        """New processes for a pair (--restart), warmed up together: what differs between two
        starts of the same code then varies from round to round instead of biasing every
        round of the run the same way."""
        for target in both:
            if target.is_bridge:
                target.errors_before += metric(target.server, "login_audit_publish_errors_total")
        self.lab.stop([t.server for t in both])
        for target in both:
            target.server = self.serve(target.variant, target.kind, target.workers)
        self.together(both, self.plan.warm_up)
        for target in both:
            if target.labels is not None:
                target.labels = thread_labels(target.server, spy)

    def together(
        self, both: tuple[Target, Target], seconds: float | None = None
    ) -> list[tuple[Closed, Meter]]:
        """Both meters open, then both wrk runs start back to back; each meter closes when its
        own wrk ends (the first started ends first)."""
        meters = [Meter(t.server, t.labels).__enter__() for t in both]
        wrks = [
            self.load.start_closed(
                t.server.port, seconds or self.plan.seconds, per_event=t.per_event
            )
            for t in both
        ]
        try:
            runs = []
            for meter, wrk in zip(meters, wrks, strict=True):
                runs.append(self.load.finish(wrk))
                meter.__exit__()
        finally:
            for wrk in wrks:
                if wrk.poll() is None:
                    wrk.kill()
                    wrk.wait()
        return list(zip(runs, meters, strict=True))

    def in_rounds(self, target: Target) -> bool:
        if target.kind == KAFKA_FLOOR:
            return False  # latency rows only
        if target.kind == "floor":
            return True
        if "cpu" in self.sections and target.workers == 1:
            return True
        return "workers" in self.sections and target.kind == "kafka"

    def ratios(self, target: Target, floor: Target) -> tuple[list[float], list[float]]:
        """Per round: (events/s ÷ floor's, CPU/event ÷ floor's), each pair from the same round.
        Rows loaded a new connection per event are compared with the floor loaded so."""
        return round_ratios(target.samples, floor.samples)

    def report_rounds(self) -> None:
        n = self.plan.rounds
        for variant in self.variants:
            floor = self.find(variant, "floor")
            assert floor is not None
            rows = []
            for target in self.targets:
                if target.variant != variant or not target.samples:
                    continue
                rate, cpu = self.ratios(target, self.floor_of(target))
                s = target.samples
                is_floor = target.kind == "floor"
                rows.append(
                    [
                        target.title,
                        spread([x.rate for x in s]),
                        "1" if is_floor else spread(rate, ".2f", "x"),
                        spread([x.us_per_event for x in s]),
                        "1" if is_floor else spread(cpu, ".2f", "x"),
                        spread([100 * x.core for x in s], unit=" %"),
                        spread([100 * x.idle for x in s], unit=" %"),
                        f"{sum(x.errors for x in s)}",
                    ]
                )
            how = (
                f"{n} paired rounds of {self.plan.seconds:g} s each (`--paired`): in each round "
                "a row's baseline and candidate ran at the same time, each under its own wrk "
                f"closed loop ({WRK_CONNECTIONS} connections, {WRK_THREADS} thread), so each "
                "server shared the machine with its twin and two wrk processes: its absolute "
                "numbers are lower than in sequential rounds; compare them only within this run"
                if self.paired
                else f"{n} interleaved rounds of {self.plan.seconds:g} s each, wrk closed loop "
                f"({WRK_CONNECTIONS} connections, {WRK_THREADS} thread)"
            )
            if any(t.per_event and t.samples for t in self.targets):
                how += (
                    "; rows *new connection per event*: every request asks `Connection: close`, "
                    f"so each event arrives on a new connection ({PER_EVENT_WHY}), and their "
                    "ratios are to the floor loaded the same way"
                )
            self.report.block(
                f"### {variant.name}: events/s and CPU per event vs the floor\n\n"
                f"{how}; median [range] over "
                "rounds; ratios are taken within each round. CPU = user + sys of the server's "
                "processes over 2xx answers. `core`: how much of one core the server used; "
                "`machine idle`: of all CPUs (0 % means it was short of CPU, not of work).\n\n"
                + table(
                    [
                        "server",
                        "events/s",
                        "x floor",
                        "µs CPU/event",
                        "x floor",
                        "core",
                        "machine idle",
                        "non-2xx",
                    ],
                    rows,
                )
            )
            kafka = self.find(variant, "kafka")
            if kafka is not None and kafka.samples and "cpu" in self.sections:
                if variant.skeleton:
                    self.skeleton_share(variant, kafka, floor)
                else:
                    self.kafka_targets(variant, kafka, floor)
                self.report_threads(variant, kafka)
            per_event = self.find(variant, "kafka", per_event=True)
            if per_event is not None and per_event.samples and not variant.skeleton:
                self.kafka_targets(variant, per_event, self.floor_of(per_event))
            multi = self.find(variant, "kafka", self.workers)
            if kafka is not None and multi is not None and multi.samples:
                self.report_workers(variant, kafka, multi)
        if len(self.variants) > 1:
            self.report_comparison()
        self.note_spooled()

    def skeleton_share(self, variant: Variant, kafka: Target, floor: Target) -> None:
        """What the issue's CPU ratio would be if normalizing and encoding cost nothing."""
        _, cpu = self.ratios(kafka, floor)
        self.report.target(
            f"(not a target) CPU/event into Kafka with normalizing and encoding cached "
            f"[{variant.name}]: what the rest of the hot path costs, x floor",
            f"{spread(cpu, '.2f', 'x')} ({med([s.us_per_event for s in kafka.samples]):.0f} vs "
            f"{med([s.us_per_event for s in floor.samples]):.0f} µs)",
            "-",
        )

    def kafka_targets(self, variant: Variant, kafka: Target, floor: Target) -> None:
        rate, cpu = self.ratios(kafka, floor)
        tag = f" [{variant.name}]" if len(self.variants) > 1 else ""
        if kafka.per_event:
            tag += ", both with a new connection per event (as the hooks connect)"
        self.report.target(
            f"CPU/event into Kafka ≤ {CPU_MAX_FLOOR_RATIO:g}x floor "
            f"(stretch ≤ {CPU_STRETCH_FLOOR_RATIO:g}x){tag}",
            f"{spread(cpu, '.2f', 'x')} ({med([s.us_per_event for s in kafka.samples]):.0f} vs "
            f"{med([s.us_per_event for s in floor.samples]):.0f} µs)",
            f"{met(med(cpu) <= CPU_MAX_FLOOR_RATIO)} "
            f"(stretch {met(med(cpu) <= CPU_STRETCH_FLOOR_RATIO)})",
        )
        self.report.target(
            f"Throughput into Kafka ≥ {RATE_MIN_FLOOR_RATIO:g}x floor, 1 worker{tag}",
            f"{spread(rate, '.2f', 'x')} ({med([s.rate for s in kafka.samples]):,.0f} vs "
            f"{med([s.rate for s in floor.samples]):,.0f}/s)",
            met(med(rate) >= RATE_MIN_FLOOR_RATIO),
        )

    def report_threads(self, variant: Variant, kafka: Target) -> None:
        labels = sorted({label for s in kafka.samples for label in s.threads})
        per_event = {
            label: [s.threads.get(label, 0.0) / max(s.ok, 1) * 1e6 for s in kafka.samples]
            for label in labels
        }
        total = med([s.us_per_event for s in kafka.samples])
        ranked = sorted(per_event.items(), key=lambda kv: -med(kv[1]))
        rows: list[list[str]] = []
        rest = [0.0] * len(kafka.samples)
        for label, values in ranked:
            if med(values) >= 1.0 and len(rows) < 10:
                share = 100 * med(values) / total if total else 0.0
                rows.append([label, spread(values), f"{share:.0f} %"])
            else:
                rest = [a + b for a, b in zip(rest, values, strict=True)]
        if any(rest):
            rows.append(["all other threads", spread(rest), ""])
        rows.append(
            [
                "**process** (from /proc/PID/stat)",
                spread([s.us_per_event for s in kafka.samples]),
                "100 %",
            ]
        )
        self.report.block(
            f"### {variant.name}: CPU per event by thread, Kafka, 1 worker\n\n"
            "From /proc/PID/task/TID/stat over the same windows; Python thread names from "
            "`py-spy dump`, native ones (librdkafka's `rdk:*`) from the thread's comm.\n\n"
            + table(["thread", "µs CPU/event", "share (medians)"], rows)
        )

    def report_workers(self, variant: Variant, one: Target, many: Target) -> None:
        scale = [m.rate / o.rate for m, o in zip(many.samples, one.samples, strict=False) if o.rate]
        rows = []
        for target in (one, many):
            s = target.samples
            rows.append(
                [
                    str(target.workers),
                    spread([x.rate for x in s]),
                    spread([x.us_per_event for x in s]),
                    spread([100 * x.core for x in s], unit=" %"),
                    spread([100 * x.idle for x in s], unit=" %"),
                ]
            )
        how = (
            f"`serve --workers {self.workers}`"
            if self.lab.workers_mode == "flag"
            else f"{self.workers} `serve` processes with BRIDGE_REUSE_PORT=true, a data "
            "directory each"
        )
        self.report.block(
            f"### {variant.name}: 1 vs {self.workers} workers into Kafka\n\n"
            f"{how}; same rounds as above. {self.workers} workers take "
            f"{spread(scale, '.2f', 'x')} what one takes (per round). On a machine with fewer "
            "idle cores than workers plus wrk plus the broker, this cannot scale; read "
            "`machine idle`.\n\n"
            + table(
                ["workers", "events/s", "µs CPU/event (all workers)", "core (sum)", "machine idle"],
                rows,
            )
        )

    def report_comparison(self) -> None:
        base, cand = self.variants[0], self.variants[-1]
        rows = []
        for target in self.targets:
            if target.variant != cand or not target.samples:
                continue
            other = self.find(base, target.kind, target.workers, per_event=target.per_event)
            if other is None or not other.samples:
                continue
            pairs = list(zip(target.samples, other.samples, strict=False))
            rate = [c.rate / b.rate for c, b in pairs if b.rate]
            cpu = [c.us_per_event / b.us_per_event for c, b in pairs if b.us_per_event]
            rows.append(
                [
                    target.title,
                    f"{med([s.rate for s in other.samples]):,.0f} → "
                    f"{med([s.rate for s in target.samples]):,.0f}",
                    spread(rate, ".2f", "x"),
                    f"{med([s.us_per_event for s in other.samples]):,.0f} → "
                    f"{med([s.us_per_event for s in target.samples]):,.0f}",
                    spread(cpu, ".2f", "x"),
                ]
            )
        same = (
            "same windows (paired)",
            "Ratios are candidate ÷ baseline within each round, from the two servers' "
            "windows that ran at the same time",
        )
        self.report.block(
            f"### {base.name} → {cand.name}, {same[0] if self.paired else 'same rounds'}\n\n"
            + (same[1] if self.paired else "Ratios are candidate ÷ baseline within each round")
            + " (median [range]); below 1 for CPU/event is better.\n\n"
            + table(
                ["server", "events/s", "events/s ratio", "µs CPU/event", "CPU/event ratio"], rows
            )
        )
        kafka = (self.find(base, "kafka"), self.find(cand, "kafka"))
        if self.paired and kafka[0] and kafka[1] and kafka[1].samples:
            self.report_paired(kafka[0], kafka[1])

    def report_paired(self, base: Target, cand: Target) -> None:
        """Kafka, round by round: each side's numbers and candidate ÷ baseline."""
        rows = []
        cpu, rate = [], []
        for number, (b, c) in enumerate(zip(base.samples, cand.samples, strict=True), 1):
            cpu.append(c.us_per_event / b.us_per_event if b.us_per_event else float("nan"))
            rate.append(c.rate / b.rate if b.rate else float("nan"))
            rows.append(
                [
                    str(number),
                    self.first_started[number - 1],
                    f"{b.us_per_event:,.0f}",
                    f"{c.us_per_event:,.0f}",
                    f"{cpu[-1]:.3f}x",
                    f"{b.rate:,.0f}",
                    f"{c.rate:,.0f}",
                    f"{rate[-1]:.3f}x",
                    f"{100 * b.idle:.0f} %",
                ]
            )
        rows.append(
            [
                "**median [range]**",
                "",
                spread([s.us_per_event for s in base.samples]),
                spread([s.us_per_event for s in cand.samples]),
                spread(cpu, ".3f", "x"),
                spread([s.rate for s in base.samples]),
                spread([s.rate for s in cand.samples]),
                spread(rate, ".3f", "x"),
                spread([100 * s.idle for s in base.samples], unit=" %"),
            ]
        )
        self.report.block(
            f"### {base.variant.name} and {cand.variant.name} at the same time, {cand.title}, "
            "round by round\n\n"
            "Each round, both bridges took load over the same window, each from its own wrk "
            "(started back to back; who went first alternates by round)"
            + (", both fresh processes from round 2 on (`--restart`)" if self.restart else "")
            + ". CPU = user + sys of each bridge's processes over its own 2xx answers.\n\n"
            + table(
                [
                    "round",
                    "first",
                    f"{base.variant.name} µs CPU/event",
                    f"{cand.variant.name} µs CPU/event",
                    "CPU/event ratio",
                    f"{base.variant.name} events/s",
                    f"{cand.variant.name} events/s",
                    "events/s ratio",
                    "machine idle",
                ],
                rows,
                "rl" + "r" * 7,
            )
        )

    def note_spooled(self) -> None:
        for target in self.targets:
            if not target.is_bridge:
                continue
            errors = target.errors_before + metric(
                target.server, "login_audit_publish_errors_total"
            )
            if errors:
                self.report.note(
                    f"{target.variant.name} {target.title}: {errors:.0f} publish errors or "
                    "timeouts (those events were spooled, not published straight away)"
                )

    # -- latency at a fixed rate (vegeta)

    def latency(self) -> None:
        # The server loaded, at what rate, and the row's label for that rate.
        plans: list[tuple[Variant, Target, float, str]] = []
        for variant in self.variants:
            kafka = self.single(variant, "kafka")
            if not kafka.samples:
                # No cpu rounds ran on this worker and its broker: both are warmed up under full
                # load first. A latency-only run at a set 5,000/s once had its first round meet
                # a broker that had served nothing yet (62 % of publishes over 25 ms, p50 10 s).
                self.load.closed(kafka.server.port, self.plan.warm_up)
            plans.append((variant, kafka, FIXED_RATE, FIXED_LABEL))
            if self.plan.latency_rate is not None:
                plans.append((variant, kafka, self.plan.latency_rate, SET_LABEL))
                continue
            if kafka.samples:
                top = med([s.rate for s in kafka.samples])
            else:
                top = self.load.closed(kafka.server.port, self.plan.seconds).ok_per_s
            for part in self.plan.latency_shares:
                plans.append((variant, kafka, part * top, share_label(part)))
        # The floor and the Kafka floor at each of the same rates, in the same rounds
        # (FLOOR_AT_RATE_WHY, KAFKA_FLOOR_WHY).
        bridges = list(plans)
        plans += [(v, self.single(v, "floor"), rate, label) for v, _, rate, label in bridges]
        for variant in self.variants:
            if self.find(variant, KAFKA_FLOOR) is None:
                # Warmed up as the worker was: its first round must not meet a cold producer.
                warm = self.add(variant, KAFKA_FLOOR)
                self.load.closed(warm.server.port, self.plan.warm_up)
        plans += [(v, self.single(v, KAFKA_FLOOR), rate, label) for v, _, rate, label in bridges]
        # The Kafka floor at shares of its own maximum (KAFKA_FLOOR_OWN_WHY), by variant.
        own_tops: dict[str, float] = {}
        for variant in self.variants if self.plan.kafka_floor_shares else ():
            floor = self.single(variant, KAFKA_FLOOR)
            own_tops[variant.name] = self.load.closed(floor.server.port, self.plan.seconds).ok_per_s
            print(
                f"{variant.name} Kafka floor under wrk: {own_tops[variant.name]:,.0f}/s",
                flush=True,
            )
            for part in self.plan.kafka_floor_shares:
                label = own_share_label(part)
                plans.append((variant, floor, part * own_tops[variant.name], label))
        # By (variant, rate, label): each round's vegeta result and sample.
        results: dict[tuple[str, int, str], list[tuple[dict[str, Any], Sample]]] = {}
        floors: dict[tuple[str, int, str], list[tuple[dict[str, Any], Sample]]] = {}
        kafka_floors: dict[tuple[str, int, str], list[tuple[dict[str, Any], Sample]]] = {}
        shuffle = random.Random(self.seed + 1)
        for number in range(1, self.plan.latency_rounds + 1):
            shuffle.shuffle(plans)
            print(
                f"latency round {number}/{self.plan.latency_rounds} ({self.load.generator})",
                flush=True,
            )
            for variant, target, rate, label in plans:
                # The floors have no /metrics: no publish or loop-lag histograms to read.
                bridge = target.is_bridge
                before: dict[str, dict[float, float]] = {}
                # Per thread for the bridge (its loop against librdkafka's), by comm when the
                # cpu rounds did not name the threads.
                meter = Meter(target.server, (target.labels or {}) if bridge else None)
                result = self.load.fixed_rate(
                    target.server.port,
                    rate,
                    self.plan.latency_seconds,
                    warm_up=min(WARM_UP_S, self.plan.latency_seconds),
                    window=functools.partial(self._measured, target, meter, before),
                )
                sample = self._rate_sample(result, meter)
                result["gc_ms"] = broker_pauses(self.lab.brokers.kafka_run, *result["window"])
                key = (variant.name, round(rate), label)
                who = {"floor": "floor", KAFKA_FLOOR: "Kafka floor"}.get(target.kind, "Kafka")
                said = (
                    f"  {variant.name} {who} at {rate:,.0f}/s: "
                    f"p50 {result['p50_ms']:.2f} ms, p99 {result['p99_ms']:.2f} ms, "
                    f"{result['ok']}/{result['requests']} 2xx, "
                    f"broker GC pauses {gc_cell([result])}"
                )
                if not bridge:
                    kept = floors if target.kind == "floor" else kafka_floors
                    kept.setdefault(key, []).append((result, sample))
                    print(f"{said}, {sample.us_per_event:,.0f} µs CPU/event", flush=True)
                    continue
                after = histograms(target.server)
                # Where the tail is: the share of events whose own publish (acceptance to
                # Kafka's acknowledgement, the bridge's histogram) took over 25 ms.
                result["slow_publish"] = (
                    share_over(before[PUBLISH_BUCKETS], after[PUBLISH_BUCKETS], 0.025)
                    if before
                    else None
                )
                # The bridge's own loop held up (its timer every 0.1 s ran over 10 ms late):
                # a stall with it is the worker's; without it, the broker's or vegeta's.
                lag_before, lag_after = before.get(LOOP_LAG_BUCKETS), after[LOOP_LAG_BUCKETS]
                result["loop_lag"] = (
                    share_over(lag_before, lag_after, 0.01)
                    if lag_before is not None and lag_after
                    else None
                )
                results.setdefault(key, []).append((result, sample))
                print(
                    f"{said}, publish over 25 ms {percent(result['slow_publish'], '.2f')}, "
                    f"new connections {100 * result['new_connections']:.1f} %, "
                    f"loop lag over 10 ms {percent(result['loop_lag'], '.1f')}, "
                    f"sent over {LATE_SEND_MS:g} ms late {100 * result['late_sends']:.1f} %"
                    + "".join(f", {k} {v}" for k, v in result["tcp"].items() if v),
                    flush=True,
                )
        rows = []
        for (name, rate, label), runs in sorted(results.items()):
            p50 = [r["p50_ms"] for r, _ in runs]
            p99 = [r["p99_ms"] for r, _ in runs]
            bad = sum(r["requests"] - r["ok"] for r, _ in runs)
            errors = sorted({e for r, _ in runs for e in r["errors"]})
            rows.append(
                [
                    f"{name}: {rate:,}/s ({label})",
                    spread(p50, ".2f"),
                    spread(p99, ".2f"),
                    spread([r["max_ms"] for r, _ in runs], ".1f"),
                    percents([r["slow_publish"] for r, _ in runs], ".2f"),
                    spread([r["stalls"] for r, _ in runs]),
                    spread([100 * r["slow_in_stalls"] for r, _ in runs], unit=" %"),
                    gc_cell([r for r, _ in runs]),
                    spread([100 * r["new_connections"] for r, _ in runs], ".1f", " %"),
                    spread([100 * r["late_sends"] for r, _ in runs], ".1f", " %"),
                    spread([r["tcp"].get("RetransSegs", 0) for r, _ in runs]),
                    spread([r["tcp"].get("ListenOverflows", 0) for r, _ in runs]),
                    percents([r["loop_lag"] for r, _ in runs], ".1f"),
                    f"{bad}" + (f" ({'; '.join(errors)[:120]})" if errors else ""),
                    spread([s.us_per_event for _, s in runs]),
                    spread([100 * s.idle for _, s in runs], unit=" %"),
                ]
            )
            if errors:  # the table's cell is cut short; the whole messages say what failed
                self.report.note(
                    f"{name} at {rate:,}/s, vegeta's errors (distinct, at most 3 a round): "
                    + "; ".join(f"`{e[:300]}`" for e in errors)
                )
            if label not in TARGET_LABELS:
                continue  # a row beside the target's, no target of its own
            tag = f" [{name}]" if len(self.variants) > 1 else ""
            if label == FIXED_LABEL:
                which = f"at {FIXED_RATE}/s"
            elif label == SET_LABEL:
                which = f"at a set rate, not the target's 50 % of max ({rate:,}/s)"
            else:
                which = f"at 50 % of max ({rate:,}/s)"
            beside = kafka_floors.get((name, rate, label), [])
            floor_p99 = spread([r["p99_ms"] for r, _ in beside], ".2f")
            self.report.target(
                f"Kafka latency {which}: p50 ≤ {P50_MAX_MS:g} ms, p99 ≤ {P99_MAX_MS:g} ms{tag}",
                f"p50 {spread(p50, '.2f')} ms, p99 {spread(p99, '.2f')} ms"
                + (f", {bad} non-2xx" if bad else "")
                + (f" (Kafka floor, same rounds: p99 {floor_p99} ms)" if beside else ""),
                met(med(p50) <= P50_MAX_MS and med(p99) <= P99_MAX_MS and not bad),
            )
        if self.load.generator == "ratego":
            why, generator = RATEGO_WHY + " Below, *vegeta* means ratego.\n\n", "ratego"
        else:
            why, generator = "", f"vegeta {vegeta_version(self.load.vegeta)}"
        self.report.block(
            f"### Latency into Kafka at a constant rate ({self.load.generator})\n\n"
            f"{why}{generator} (Go, constant rate, keep-alive, "
            f"HTTP/1.1), {self.plan.latency_rounds} round(s) of {self.plan.latency_seconds:g} s "
            f"after a {WARM_UP_S:g} s warm-up each, by the same vegeta process (the window "
            "starts with the connections the warm-up opened; percentiles by nearest rank over "
            "the requests scheduled after the warm-up); latency from vegeta's send to the whole "
            "answer (the bridge answers after the event's own delivery report). *publish > 25 "
            "ms*: the share of events whose own publish, from acceptance to Kafka's "
            "acknowledgement, took over 25 ms (the bridge's "
            "`login_audit_publish_duration_seconds`): when it is near or over 1 %, the p99 is "
            "the broker's, not the bridge's queueing. *stalls*: 100 ms windows (by send time) "
            "in which most answers took over 20 ms, everything waiting at once; "
            "*slow in stalls*: the share of the answers over 20 ms that fell in them. Slow "
            "answers spread thinly over the run are the bridge queueing; bunched in a few "
            "stalls, a pause (the broker rolling its log segments or collecting, the machine's "
            "2 CPUs busy elsewhere) held everything at once. *broker GC pauses*: "
            f"{GC_PAUSES_WHY} *new connections*: connections "
            "vegeta opened per request sent (the machine's TCP PassiveOpens over the run): "
            "vegeta opens one for each request sent while all its connections wait, so a stall "
            "leaves new connections behind, each costing the bridge more than a kept-alive "
            "request. *loop lag > 10 ms*: the share of the bridge's own loop-lag ticks "
            "(`login_audit_event_loop_lag_seconds`, a timer every 0.1 s) that ran over 10 ms "
            "late: stalls with it are the worker's (its loop held up or short of CPU), stalls "
            "without it the broker's or the generator's; n/a for a bridge without that metric. "
            "Both shares are read from the bridge's /metrics under load; a round whose worker "
            "did not answer that read within 2 s leaves them out (n/a when no round has them). "
            f"*sent > {LATE_SEND_MS:g} ms late*: the requests vegeta sent that far behind its "
            "own schedule (short of CPU itself, it then sends a burst to catch up). "
            "*TCP retransmits*: segments the machine's TCP sent again over the run (/proc/net/snmp "
            "RetransSegs): on loopback nearly all tail loss probes (TCPLossProbes), sent when a "
            "segment is not acknowledged within two round trips plus 2 ms (200 ms when it is "
            "the only one in flight), lost or not: a late ACK, not a drop (the CPUs' input "
            "queues, /proc/net/softnet_stat, dropped nothing in session 33's probes). "
            "*listen drops*: connection attempts the kernel dropped because the "
            "server's accept queue was full (/proc/net/netstat ListenOverflows; the bridge's own "
            "`login_audit_listen_drops_total`): each client tries again 1 s later, then 3 s, so "
            "retransmits with them are the worker falling behind on new connections (a round "
            "that collapsed at 7,850/s had 54,211 in 20 s, and a p99 of 8 s); retransmits "
            "without them, the kernel's.\n\n"
            + table(
                [
                    "offered",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "publish > 25 ms",
                    "stalls",
                    "slow in stalls",
                    "broker GC pauses",
                    "new connections",
                    f"sent > {LATE_SEND_MS:g} ms late",
                    "TCP retransmits",
                    "listen drops",
                    "loop lag > 10 ms",
                    "non-2xx",
                    "µs CPU/event",
                    "machine idle",
                ],
                rows,
            )
        )

        if floors:
            self.report.block(self._floor_at_rate(results, floors))
        if kafka_floors:
            self.report.block(self._kafka_floor_at_rate(results, kafka_floors))
        if own_tops:
            self.report.block(self._kafka_floor_own_share(results, kafka_floors, own_tops))
        self.report.block(self._threads_at_rate(results))

    @contextlib.contextmanager
    def _measured(
        self, target: Target, meter: Meter, before: dict[str, dict[float, float]]
    ) -> Iterator[None]:
        """A latency window's meters: its CPU over the whole window, and the bridge's
        histograms into `before` at its start (the floor has none).

        The histograms are read under load: a worker that does not answer within
        http_get's timeout (a collapsed round) leaves `before` empty, and that round's
        publish and loop-lag shares n/a, instead of ending the run."""
        with meter:
            if target.is_bridge:
                with contextlib.suppress(OSError):
                    before.update(histograms(target.server))
            yield

    def _rate_sample(self, result: dict[str, Any], meter: Meter) -> Sample:
        return Sample(
            result["ok"],
            result["requests"] - result["ok"],
            result["ok"] / self.plan.latency_seconds,
            meter.cpu,
            meter.seconds,
            meter.idle,
            meter.threads,
            meter.loop_sched,
        )

    @staticmethod
    def _threads_at_rate(
        results: dict[tuple[str, int, str], list[tuple[dict[str, Any], Sample]]],
    ) -> str:
        """The bridge's CPU per event at each constant rate, by thread: its event loop,
        librdkafka's threads, the rest."""

        def part(sample: Sample, kind: str) -> float:
            seconds = sum(
                cpu for label, cpu in sample.threads.items() if kind == thread_kind(label)
            )
            return seconds / max(sample.ok, 1) * 1e6

        rows = [
            [
                f"{name}: {rate:,}/s",
                *(spread([part(s, kind) for _, s in runs]) for kind in THREAD_KINDS),
                spread([s.us_per_event for _, s in runs]),
                spread([s.loop_sched.sleeps / max(s.ok, 1) for _, s in runs], ".2f"),
                spread([s.loop_sched.waiting / max(s.ok, 1) * 1e6 for _, s in runs], ".1f"),
                spread([1e3 * s.loop_sched.preemptions / max(s.ok, 1) for _, s in runs], ".1f"),
                spread([1e3 * s.loop_sched.migrations / max(s.ok, 1) for _, s in runs], ".1f"),
            ]
            for (name, rate, _), runs in sorted(results.items())
        ]
        return (
            "### CPU per event at a constant rate, by thread: Kafka, 1 worker\n\n"
            "From /proc/PID/task/TID/stat over the same windows as the latency rows. At a low "
            "rate each event wakes the process from idle, and its work runs cold. *loop "
            "sleeps/event*: the event loop thread's voluntary context switches (its "
            "/proc/PID/task/PID/sched) per event, each a time it blocked with nothing to do (or "
            "on a lock): several per event at a low rate; a few per hundred events where the loop "
            "takes the requests that arrive while it works in one turn, so there its extra CPU "
            "per event over wrk's is not the cost of waking up. "
            f"{LOOP_SCHED_WHY}\n\n"
            + table(
                [
                    "offered",
                    *(f"{kind} µs/event" for kind in THREAD_KINDS),
                    "process µs/event",
                    "loop sleeps/event",
                    "loop waiting for a CPU, µs/event",
                    "loop preempted /1,000 events",
                    "loop migrations /1,000 events",
                ],
                rows,
            )
        )

    @staticmethod
    def _kafka_floor_at_rate(
        results: dict[tuple[str, int, str], list[tuple[dict[str, Any], Sample]]],
        kafka_floors: dict[tuple[str, int, str], list[tuple[dict[str, Any], Sample]]],
    ) -> str:
        """The bridge's latency at each constant rate against the Kafka floor's, same rounds."""
        rows = []
        for key, runs in sorted(results.items()):
            beside = kafka_floors.get(key, [])
            if not beside:
                continue
            name, rate, _ = key
            # One of each per round, appended in round order: a ratio within each round.
            p99_ratio = [
                r["p99_ms"] / max(f["p99_ms"], 1e-9)
                for (r, _), (f, _) in zip(runs, beside, strict=False)
            ]
            rows.append(
                [
                    f"{name}: {rate:,}/s",
                    *latency_cells(beside),
                    gc_cell([f for f, _ in beside]),
                    spread([100 * s.idle for _, s in beside], unit=" %"),
                    gc_cell([r for r, _ in runs]),
                    spread([r["p99_ms"] for r, _ in runs], ".2f"),
                    spread(p99_ratio, ".2f", "x"),
                ]
            )
        return (
            "### Latency at a constant rate: the bridge against the Kafka floor\n\n"
            f"{KAFKA_FLOOR_WHY} Same rounds and rates as the latency rows; *stalls* as there. "
            f"*broker GC pauses*: {GC_PAUSES_WHY}\n\n"
            + table(
                [
                    "offered",
                    "Kafka floor p50 ms",
                    "Kafka floor p99 ms",
                    "max ms",
                    "stalls",
                    "non-2xx",
                    "µs CPU/request",
                    "broker GC pauses",
                    "machine idle",
                    "broker GC pauses (bridge's rounds)",
                    "bridge p99 ms",
                    "bridge p99 ÷ Kafka floor's",
                ],
                rows,
            )
        )

    @staticmethod
    def _kafka_floor_own_share(
        results: dict[tuple[str, int, str], list[tuple[dict[str, Any], Sample]]],
        kafka_floors: dict[tuple[str, int, str], list[tuple[dict[str, Any], Sample]]],
        own_tops: dict[str, float],
    ) -> str:
        """The Kafka floor at shares of its own maximum, beside the bridge at shares of its."""

        def row(who: str, rate: int, runs: list[tuple[dict[str, Any], Sample]]) -> list[str]:
            return [
                f"{who} at {rate:,}/s",
                *latency_cells(runs),
                spread([100 * s.us_per_event * 1e-6 * s.rate for _, s in runs], unit=" %"),
                spread([100 * s.idle for _, s in runs], unit=" %"),
            ]

        rows = []
        for (name, rate, label), runs in sorted(kafka_floors.items()):
            if label.endswith(OWN_SHARE_SUFFIX):
                who = f"{name}: Kafka floor, {label} ({own_tops[name]:,.0f}/s under wrk)"
                rows.append(row(who, rate, runs))
        for (name, rate, label), runs in sorted(results.items()):
            if label != FIXED_LABEL:
                rows.append(row(f"{name}: the bridge, {label}", rate, runs))
        return (
            "### The Kafka floor at a share of its own maximum\n\n"
            f"{KAFKA_FLOOR_OWN_WHY}\n\n"
            + table(
                [
                    "offered",
                    "p50 ms",
                    "p99 ms",
                    "max ms",
                    "stalls",
                    "non-2xx",
                    "µs CPU/request",
                    "busy",
                    "machine idle",
                ],
                rows,
            )
        )

    def _floor_at_rate(
        self,
        results: dict[tuple[str, int, str], list[tuple[dict[str, Any], Sample]]],
        floors: dict[tuple[str, int, str], list[tuple[dict[str, Any], Sample]]],
    ) -> str:
        """The bridge's CPU per event at each constant rate against the floor's at that rate,
        and against both under wrk (the cpu section's rows, when they ran)."""
        rows = []
        for key, runs in sorted(results.items()):
            at_rate = floors.get(key, [])
            # One of each per round, appended in round order: a ratio within each round.
            _, cpu = round_ratios([s for _, s in runs], [f for _, f in at_rate])
            name, rate, _ = key
            rows.append(
                [
                    f"{name}: {rate:,}/s",
                    spread([f.us_per_event for _, f in at_rate]),
                    spread([s.us_per_event for _, s in runs]),
                    spread(cpu, ".2f", "x"),
                    spread([r["p50_ms"] for r, _ in at_rate], ".2f"),
                    spread([r["p99_ms"] for r, _ in at_rate], ".2f"),
                    spread([100 * f.idle for _, f in at_rate], unit=" %"),
                ]
            )
        for variant in self.variants:
            kafka = self.find(variant, "kafka")
            if kafka is None or not kafka.samples:
                continue
            floor = self.floor_of(kafka)
            _, cpu = self.ratios(kafka, floor)
            rows.append(
                [
                    f"{variant.name}: wrk's maximum (the cpu rounds)",
                    spread([f.us_per_event for f in floor.samples]),
                    spread([k.us_per_event for k in kafka.samples]),
                    spread(cpu, ".2f", "x"),
                    "",
                    "",
                    spread([100 * f.idle for f in floor.samples], unit=" %"),
                ]
            )
        return (
            "### CPU per event at a constant rate: the bridge into Kafka against the floor\n\n"
            f"{FLOOR_AT_RATE_WHY} Same rounds as the latency rows, the floor loaded by vegeta "
            "at each of their rates; ratios within each round. The floor's own latency is what "
            "the machine, vegeta and the loop leave to any server at that rate.\n\n"
            + table(
                [
                    "offered",
                    "floor µs CPU/request",
                    "Kafka µs CPU/event",
                    "x floor",
                    "floor p50 ms",
                    "floor p99 ms",
                    "machine idle (floor)",
                ],
                rows,
            )
        )

    # -- profile

    def profile(
        self, stem: str, sink: str = "kafka", *, per_event: bool = False, rate: float | None = None
    ) -> None:
        """py-spy, then perf trace, on one worker of ``sink`` under wrk; ``per_event``: every
        request on a new connection (PER_EVENT_WHY), else keep-alive. ``rate``: under vegeta
        at that many events/s instead (how the latency rows load it, not at the maximum)."""
        target = self.single(self.candidate, sink)
        spy = py_spy(required=True)
        assert spy is not None
        pids = target.server.pids()
        seconds = self.plan.profile_seconds
        raw = RESULTS / f"{stem}-{sink}-profile.txt"
        RESULTS.mkdir(exist_ok=True)
        # What the tables' headings say: the sink, and how wrk connects when not kept alive.
        shown = SINK_NAMES[sink] + (", a new connection per event" if per_event else "")
        if rate is not None:
            shown += f", vegeta at a constant {rate:,.0f}/s"
        print(f"profile: py-spy --native --gil for {seconds:g} s: {shown}", flush=True)
        recorder = subprocess.Popen(
            [
                str(spy),
                "record",
                "--native",
                "--gil",
                "--format",
                "raw",
                "--rate",
                "100",
                "--duration",
                f"{seconds:.0f}",
                "--subprocesses",  # a `serve --workers 1` may serve from a child
                "--pid",
                str(pids[0]),
                "--output",
                str(raw),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        self.load_for(target, seconds + 1, per_event=per_event, rate=rate)
        _, err = recorder.communicate(timeout=120)
        if recorder.returncode != 0 or not raw.exists():
            self.report.note(f"py-spy record failed: {err.strip()[-500:]}")
        else:
            self.report.block(profile_tables(raw, seconds, shown))
        self.perf_trace(target, pids, seconds, shown, per_event=per_event, rate=rate)

    def load_for(
        self, target: Target, seconds: float, *, per_event: bool, rate: float | None
    ) -> None:
        if rate is None:
            self.load.closed(target.server.port, seconds, per_event=per_event)
        else:
            self.load.fixed_rate(target.server.port, rate, seconds)

    def perf_trace(
        self,
        target: Target,
        pids: list[int],
        seconds: float,
        shown: str,
        *,
        per_event: bool,
        rate: float | None = None,
    ) -> None:
        perf = shutil.which("perf")
        if perf is None:
            self.report.note(
                "perf trace skipped: `perf` is not installed (Debian: apt-get install linux-perf)"
            )
            return
        print(f"profile: perf trace -s for {seconds:g} s: {shown}", flush=True)
        out = self.lab.scratch / "perf-trace.txt"
        before = metric(target.server, "login_audit_events_received_total")
        tracer = subprocess.Popen(
            [perf, "trace", "-s", "-p", ",".join(map(str, pids)), "-o", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(1.0)
        self.load_for(target, seconds, per_event=per_event, rate=rate)
        tracer.send_signal(signal.SIGINT)
        try:
            _, err = tracer.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            tracer.kill()
            _, err = tracer.communicate()
        events = metric(target.server, "login_audit_events_received_total") - before
        text = out.read_text(errors="replace") if out.exists() else ""
        if "syscall" not in text or events <= 0:
            self.report.note(f"perf trace gave no summary: {(err or text).strip()[-500:]}")
            return
        names = {tid: label for (_, tid), label in (target.labels or {}).items()}
        self.report.block(syscall_table(text, events, names, shown))

    # -- penalty

    def penalty(self, share: float, rounds: int) -> None:
        """Alternating windows on one Kafka worker, under wrk, under closed-loop vegeta and at
        ``share`` of wrk's rate, each sampled by py-spy without stopping the process (why: the
        comment above PENALTY_SAMPLE_HZ)."""
        target = self.single(self.candidate, "kafka")
        spy = py_spy(required=True)
        assert spy is not None
        pid = target.server.pids()[0]
        seconds = self.plan.profile_seconds
        # A fresh worker's first seconds under load are not its steady state (the loop's
        # first turns, the producer's first batches): not in any window.
        self.load.closed(target.server.port, self.plan.warm_up * 3)
        rate: float | None = None
        windows: list[PenaltyWindow] = []
        for _ in range(max(1, rounds)):
            for kind in (*PENALTY_LOADS, "rate"):
                if kind == "rate" and rate is None:
                    rate = share * windows[0].events / windows[0].seconds
                shown = f"vegeta at {rate:,.0f}/s" if kind == "rate" else PENALTY_LOADS[kind]
                print(f"penalty: py-spy --nonblocking --gil for {seconds:g} s: {shown}", flush=True)
                windows.append(self._penalty_window(target, spy, pid, seconds, kind, rate))
        assert rate is not None
        self.report.block(penalty_tables(windows, rate, share))

    def _penalty_window(
        self,
        target: Target,
        spy: Path,
        pid: int,
        seconds: float,
        kind: str,
        rate: float | None,
    ) -> PenaltyWindow:
        raw = self.lab.scratch / f"penalty-{uuid.uuid4().hex[:8]}.txt"
        # The load starts first and outlasts the samples, so that every sample sees it.
        port, span = target.server.port, seconds + 2 * PENALTY_MARGIN_SECONDS
        runs: dict[str, Callable[[], object]] = {
            "wrk": lambda: self.load.closed(port, span),
            "vegeta": lambda: self.load.closed_vegeta(port, span),
            "rate": lambda: self.load.fixed_rate(port, rate or 0.0, span),
        }
        load = threading.Thread(target=runs[kind])
        load.start()
        try:
            time.sleep(PENALTY_MARGIN_SECONDS)
            events = metric(target.server, "login_audit_events_received_total")
            meter = Meter(target.server, target.labels or {})
            with meter:
                done = subprocess.run(
                    [
                        str(spy),
                        "record",
                        "--nonblocking",
                        "--gil",
                        "--format",
                        "raw",
                        "--rate",
                        str(PENALTY_SAMPLE_HZ),
                        "--duration",
                        f"{seconds:.0f}",
                        "--pid",
                        str(pid),
                        "--output",
                        str(raw),
                    ],
                    capture_output=True,
                    text=True,
                    check=False,
                )
            events = metric(target.server, "login_audit_events_received_total") - events
        finally:
            load.join()
        if done.returncode != 0 or not raw.exists() or events <= 0:
            raise SystemExit(f"penalty: py-spy record failed: {done.stderr.strip()[-500:]}")
        loop = sum(
            cpu for label, cpu in meter.threads.items() if thread_kind(label) == THREAD_KINDS[0]
        )
        samples = innermost_samples(raw)
        return PenaltyWindow(
            kind, events, meter.seconds, meter.cpu, loop, meter.halts, meter.loop_sched, samples
        )


def purge_queues(lab: Lab) -> None:
    async def purge() -> None:
        import aio_pika

        connection = await aio_pika.connect(lab.brokers.rabbitmq)
        async with connection:
            channel = await connection.channel()
            for name in lab.queues:
                with contextlib.suppress(Exception):
                    queue = await channel.declare_queue(name, passive=True)
                    await queue.purge()

    with contextlib.suppress(Exception):
        asyncio.run(purge())


# ---------------------------------------------------------------- profile tables


def profile_tables(raw: Path, seconds: float, sink: str = "Kafka", top: int = 12) -> str:
    """py-spy's collapsed stacks → top frames: leaf (native included), innermost Python
    function, component (the package of the innermost Python frame), bridge inclusive (minus
    the entry points that are on every stack)."""
    leaf: dict[str, int] = {}
    python: dict[str, int] = {}
    component: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")
        leaf[frames[-1]] = leaf.get(frames[-1], 0) + n
        py_frames = [f for f in frames if ".py:" in f]
        inner = innermost_python(stack)
        python[inner] = python.get(inner, 0) + n
        part = component_of(inner)
        component[part] = component.get(part, 0) + n
        seen = set()
        for frame in py_frames:
            if "bridge/" in frame and frame.split(":")[0] not in seen:
                key = frame.rsplit(":", 1)[0] + ")"
                seen.add(frame.split(":")[0])
                inclusive[key] = inclusive.get(key, 0) + n

    def rows(counts: dict[str, int], below: float = 1.0) -> list[list[str]]:
        ranked = [
            kv for kv in sorted(counts.items(), key=lambda kv: -kv[1]) if kv[1] < below * total
        ]
        return [[f"`{k}`", f"{100 * v / max(total, 1):.1f}"] for k, v in ranked[:top]]

    return (
        f"### Profile: {sink}, 1 worker, max load (py-spy --native --gil, {total} samples "
        f"in {seconds:g} s)\n\n"
        "Samples only while a thread holds the GIL. py-spy stops the process for each native "
        "sample, so the rate under profiling is lower than in the rounds. Raw stacks (input "
        f"for flamegraph.pl): `bench/results/{raw.name}`.\n\n"
        "Top leaf frames (native included):\n\n"
        + table(["frame", "% of samples"], rows(leaf))
        + "\n\nTop innermost Python functions (the native code below them included):\n\n"
        + table(["function", "% of samples"], rows(python))
        + "\n\nBy component (package or bridge module of the innermost Python frame):\n\n"
        + table(["component", "% of samples"], rows(component))
        + "\n\nBridge functions, inclusive (on the stack; those on 95 % or more left out):\n\n"
        + table(["function", "% of samples"], rows(inclusive, below=0.95))
    )


# ---------------------------------------------------------------- penalty tables

# Why the penalty section exists, and why it samples as it does. A worker's CPU per event at a
# constant rate is 1.5x to 1.7x what it is under wrk, and that share of a core, not the code's
# speed under wrk, decides the 50 % latency row. The profile section's `--profile-rate` stops
# the process for each native sample; slowed like that it is sent more new connections and its
# garbage collections weigh more, so its shares of a constant-rate window are not the real
# ones. py-spy --nonblocking reads the interpreter's stacks without stopping it: Python frames
# only (native time is counted in the Python function that called it), and a sample now and
# then may be torn.
PENALTY_SAMPLE_HZ = 250
# The closed loads of a penalty round, by window kind; the third kind, "rate", is vegeta at the
# section's constant rate.
PENALTY_LOADS = {"wrk": "under wrk", "vegeta": "vegeta, closed loop"}
# The load runs this long before the samples start and after they end.
PENALTY_MARGIN_SECONDS = 1.5


@dataclass(frozen=True)
class PenaltyWindow:
    """One py-spy window: what the worker served and spent, and its samples by innermost
    Python function."""

    kind: str  # "wrk" or "rate"
    events: float
    seconds: float
    cpu_seconds: float  # the whole process
    loop_seconds: float  # its main thread: the event loop
    halts: int  # the machine's CPUs going idle (machine_halts)
    loop_sched: LoopSched
    samples: dict[str, int]

    def us(self, seconds: float) -> float:
        return seconds / self.events * 1e6

    def per_event(self) -> dict[str, float]:
        """µs per event held by each function: its samples at the sampling interval."""
        return {f: self.us(n / PENALTY_SAMPLE_HZ) for f, n in self.samples.items()}


def innermost_python(stack: str) -> str:
    """The innermost Python frame of a py-spy stack (generated code, <string>, counts as
    its caller), or a stand-in when there is none."""
    frames = [f for f in stack.split(";") if ".py:" in f]
    return frames[-1] if frames else "(no Python frame)"


def component_of(frame: str) -> str:
    """A frame's package (`uvicorn`, `asyncio`, ...) or, for the bridge, its module."""
    file = frame.partition(" (")[2].split(":")[0]
    part = file.split("/")[0] if "/" in file and not file.startswith("bridge/") else file
    return part or frame


def innermost_samples(raw: Path) -> dict[str, int]:
    counts: collections.Counter[str] = collections.Counter()
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if count.isdigit():
            counts[innermost_python(stack)] += int(count)
    return dict(counts)


def mean_per_event(windows: list[PenaltyWindow], key: Callable[[str], str]) -> dict[str, float]:
    """µs per event by ``key`` of each function, averaged over the windows."""
    total: dict[str, float] = collections.defaultdict(float)
    for window in windows:
        for function, us in window.per_event().items():
            total[key(function)] += us / len(windows)
    return dict(total)


def penalty_tables(windows: list[PenaltyWindow], rate: float, share: float, top: int = 15) -> str:
    closed = [w for w in windows if w.kind == "wrk"]
    fixed = [w for w in windows if w.kind == "rate"]

    columns = [
        (head, group)
        for head, group in [
            *((h, [w for w in windows if w.kind == k]) for k, h in PENALTY_LOADS.items()),
            (f"at {rate:,.0f}/s", fixed),
        ]
        if group
    ]
    measures: list[tuple[str, Callable[[PenaltyWindow], float], str]] = [
        ("events/s", lambda w: w.events / w.seconds, ",.0f"),
        ("process CPU, µs/event", lambda w: w.us(w.cpu_seconds), ".1f"),
        ("event loop thread CPU, µs/event", lambda w: w.us(w.loop_seconds), ".1f"),
        ("GIL held (samples), µs/event", lambda w: sum(w.per_event().values()), ".1f"),
        ("CPU halts (whole machine), per event", lambda w: w.halts / w.events, ".2f"),
        ("event loop waiting for a CPU, µs/event", lambda w: w.us(w.loop_sched.waiting), ".1f"),
        (
            "event loop preempted, per 1,000 events",
            lambda w: 1e3 * w.loop_sched.preemptions / w.events,
            ".1f",
        ),
        (
            "event loop migrations, per 1,000 events",
            lambda w: 1e3 * w.loop_sched.migrations / w.events,
            ".1f",
        ),
    ]
    summary = [
        [name, *(spread([what(w) for w in group], spec) for _, group in columns)]
        for name, what, spec in measures
    ]

    def growth(key: Callable[[str], str], limit: int) -> list[list[str]]:
        under_wrk, at_rate = mean_per_event(closed, key), mean_per_event(fixed, key)
        ranked = sorted(
            set(under_wrk) | set(at_rate),
            key=lambda k: at_rate.get(k, 0.0) - under_wrk.get(k, 0.0),
            reverse=True,
        )
        return [
            [
                f"`{k}`",
                f"{under_wrk.get(k, 0.0):.2f}",
                f"{at_rate.get(k, 0.0):.2f}",
                f"{at_rate.get(k, 0.0) - under_wrk.get(k, 0.0):+.2f}",
            ]
            for k in ranked[:limit]
        ]

    heads = ["", *(head for head, _ in columns)]
    grown = ["µs/event under wrk", f"at {rate:,.0f}/s", "difference"]
    return (
        f"### Where the CPU per event grows at a constant rate: Kafka, 1 worker, wrk against "
        f"vegeta at {100 * share:g} % of wrk's rate ({rate:,.0f}/s)\n\n"
        f"{len(closed)} windows of each, alternating, on one worker; py-spy --nonblocking --gil "
        f"at {PENALTY_SAMPLE_HZ} Hz, so Python frames only: the native code a function calls "
        "(a socket write, the HTTP parser, librdkafka's produce) is counted in it. Samples are "
        "taken only while a thread holds the GIL; librdkafka's own threads are in the process "
        "CPU, not in the samples. Medians [ranges] over the windows; the tables below average "
        f"them. {LOOP_SCHED_WHY}\n\n"
        + table(heads, summary)
        + "\n\nBy component (package, or bridge module, of the innermost Python frame), "
        "largest growth first:\n\n"
        + table(["component", *grown], growth(component_of, top))
        + "\n\nBy innermost Python function and line, largest growth first:\n\n"
        + table(["function", *grown], growth(lambda f: f, top))
    )


def syscall_table(
    text: str, events: float, names: dict[int, str], sink: str = "Kafka", top: int = 15
) -> str:
    """`perf trace -s` per-thread summaries → syscalls per event, all threads together; and
    per thread, labelled by `names` (thread id → label) where known."""
    calls: dict[str, int] = {}
    errors: dict[str, int] = {}
    msec: dict[str, float] = {}
    threads: dict[str, int] = {}
    thread = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.endswith("%") and " events, " in stripped:
            thread = stripped.split(" events,")[0].rsplit(",", 1)[0]
            tid = thread.rpartition("(")[2].rstrip(")")
            if tid.isdigit() and int(tid) in names:
                thread = f"{names[int(tid)]} ({tid})"
            continue
        parts = stripped.split()
        if len(parts) >= 4 and parts[1].isdigit() and parts[2].isdigit():
            name = parts[0]
            calls[name] = calls.get(name, 0) + int(parts[1])
            errors[name] = errors.get(name, 0) + int(parts[2])
            msec[name] = msec.get(name, 0.0) + float(parts[3])
            threads[thread] = threads.get(thread, 0) + int(parts[1])
    ranked = sorted(calls.items(), key=lambda kv: -kv[1])[:top]
    rows = [
        [
            f"`{name}`",
            f"{n / events:.2f}",
            f"{errors[name] / events:.3f}",
            f"{msec[name] * 1e3 / events:.1f}",
        ]
        for name, n in ranked
    ]
    rows.append(["**all**", f"{sum(calls.values()) / events:.2f}", "", ""])
    by_thread = ", ".join(
        f"{name} {n / events:.2f}" for name, n in sorted(threads.items(), key=lambda kv: -kv[1])
    )
    return (
        f"### Syscalls per event: {sink}, 1 worker (perf trace -s, {events:,.0f} events)\n\n"
        "Counted over all threads while wrk ran; events from the bridge's "
        "`login_audit_events_received_total`. Tracing slows the process; the counts per "
        "event are what carries over.\n\n"
        + table(["syscall", "calls/event", "errors/event", "µs inside/event (wall)"], rows)
        + f"\n\nPer thread (calls/event): {by_thread}"
    )


# ---------------------------------------------------------------- checks that must not regress


def checks(bench: Bench) -> None:
    shim(bench)
    shim_to_kafka(bench)
    if bench.lab.brokers.own:
        spool_drain(bench)
    else:
        bench.report.note(
            "spool drain not measured: it stops Kafka, so it needs the bench's own brokers "
            "(drop --brokers shared)"
        )


def shim(bench: Bench) -> None:
    script = REPO / "bench" / "shim_startup.py"
    argv = [PYTHON, str(script), "--runs", str(bench.plan.shim_runs)]
    if bench.candidate.source:
        argv += ["--source", str(bench.candidate.source)]
    print(f"checks: {shlex.join(argv[1:])}", flush=True)
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    found = shim_ratios(out)
    if not found:
        bench.report.note(f"bench/shim_startup.py gave no table:\n{out[-1000:]}")
    for name, ratio in found:
        bench.report.target(
            f"Shim CPU ≤ {SHIM_MAX_RATIO}x `python -c pass` ({name}; "
            f"`bench/shim_startup.py --runs {bench.plan.shim_runs}`)",
            f"{ratio:.2f}x",
            met(ratio <= SHIM_MAX_RATIO),
        )


def shim_ratios(text: str) -> list[tuple[str, float]]:
    """(command, CPU ratio) for the hook's rows of shim_startup.py's table."""
    found = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0].startswith("`login-audit-hook"):
            name = cells[0].strip("`").removeprefix("login-audit-hook, ")
            found.append((name, float(cells[5].rstrip("x"))))
    return found


def shim_to_kafka(bench: Bench) -> None:
    """Per login: spawn the hook with a unique user name, until its exit (after the bridge's 200,
    which follows Kafka's delivery report) and until a consumer sees the event on the topic."""
    server = bench.lab.bridge(bench.candidate, "kafka", role="shim")
    bench.rss.watch(server)
    login = program_vector_env()
    spawned: dict[str, float] = {}
    exited: list[float] = []
    with TopicWatcher(bench.lab.brokers.kafka, bench.lab.topics) as watcher:
        for _ in range(bench.plan.shim_logins):
            name = f"bench-{uuid.uuid4().hex[:12]}"
            env = hook_env(login, name, server.url, bench.lab.scratch / "hook-spool")
            env.update(bench.candidate.env())
            started = time.perf_counter()
            spawned[name] = started
            subprocess.run(
                [str(BIN / "login-audit-hook")],
                env=env,
                cwd="/",
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            exited.append(time.perf_counter() - started)
        seen = watcher.wait_for(set(spawned), timeout=30.0)
    consumed = sorted(seen[n] - spawned[n] for n in seen)
    exited.sort()
    bench.report.block(
        f"### Shim → bridge → Kafka, one login at a time ({len(exited)} logins)\n\n"
        + table(
            ["from hook start to", "p50 ms", "p99 ms"],
            [
                [
                    "hook exit (the bridge answers after Kafka acknowledged)",
                    f"{nearest_rank(exited, 0.5) * 1e3:.1f}",
                    f"{nearest_rank(exited, 0.99) * 1e3:.1f}",
                ],
                [
                    f"the event read by a consumer ({len(seen)}/{len(spawned)} seen)",
                    f"{nearest_rank(consumed, 0.5) * 1e3:.1f}",
                    f"{nearest_rank(consumed, 0.99) * 1e3:.1f}",
                ],
            ],
        )
    )
    bench.lab.stop([server])


def program_vector_env() -> dict[str, str]:
    for path in sorted(VECTORS.glob("*_program_*.json")):
        vector = json.loads(path.read_text(encoding="utf-8"))
        if vector["env"].get("SFTPGO_LOGIND_STATUS") == "1":
            return {k: str(v) for k, v in vector["env"].items()}
    raise SystemExit(f"no successful program-mode SFTPGo vector in {VECTORS}")


def hook_env(login: dict[str, str], name: str, url: str, spool: Path) -> dict[str, str]:
    user = json.loads(login["SFTPGO_LOGIND_USER"])
    user["username"] = name
    return {
        **login,
        "SFTPGO_LOGIND_USER": json.dumps(user, separators=(",", ":")),
        "LOGIN_AUDIT_HOOK_URL": url,
        "LOGIN_AUDIT_HOOK_TOKEN": TOKEN,
        "LOGIN_AUDIT_HOOK_SPOOL_DIR": str(spool),
        "LOGIN_AUDIT_HOOK_CONFIG": str(spool / "absent.env"),
    }


class TopicWatcher:
    """Reads both topics from their current end in a thread; notes when each user name shows up."""

    def __init__(self, bootstrap: str, topics: tuple[str, ...]) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": uuid.uuid4().hex,
                "enable.auto.commit": False,
            }
        )
        self._consumer.assign(self._ends(topics, TopicPartition, deadline=time.monotonic() + 30))
        self._bodies: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _ends(self, topics: tuple[str, ...], partition_of: Any, deadline: float) -> list[Any]:
        """Each partition of ``topics`` at its current end offset. Topics the bridge has just
        created may be missing from the metadata, or have no leader yet, for a moment: asked
        again until ``deadline``."""
        from confluent_kafka import KafkaException

        while True:
            try:
                metadata = self._consumer.list_topics(timeout=10)
                ends = []
                for topic in topics:
                    for partition in metadata.topics[topic].partitions:
                        where = partition_of(topic, partition)
                        _, high = self._consumer.get_watermark_offsets(where, timeout=10)
                        ends.append(partition_of(topic, partition, high))
                return ends
            except (KeyError, KafkaException):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)

    def __enter__(self) -> TopicWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            message = self._consumer.poll(0.05)
            if message is not None and message.error() is None:
                self._bodies.append((time.perf_counter(), message.value() or b""))

    def wait_for(self, names: set[str], timeout: float) -> dict[str, float]:
        deadline = time.monotonic() + timeout
        seen: dict[str, float] = {}
        while time.monotonic() < deadline and len(seen) < len(names):
            time.sleep(0.1)
            for when, body in list(self._bodies):
                # Avro stores strings as raw UTF-8, so the unique name is in the bytes.
                for name in names - seen.keys():
                    if name.encode() in body:
                        seen[name] = when
        return seen


def spool_drain(bench: Bench) -> None:
    """Kafka down: how fast requests are spooled; Kafka back: how fast the spool drains."""
    server = bench.lab.bridge(bench.candidate, "kafka", role="spool")
    bench.rss.watch(server)
    events = bench.plan.spool_events
    print("checks: spool drain; stopping the bench's own Kafka (scripts/brokers stop-kafka)")
    brokers("stop-kafka", own=True)
    try:
        # The hand-over: the first requests wait spool_after_seconds, then all go to the spool.
        bench.load.count(server.port, 200, received_at_least(server, 200), connections=16)
        take = bench.load.count(server.port, events, received_at_least(server, 200 + events))
        depth = metric(server, "login_audit_spool_events", 'spool="bridge"')
    finally:
        print("checks: starting the bench's own Kafka again (scripts/brokers start-kafka)")
        brokers("start-kafka", own=True)
    back = time.monotonic()
    first, done = watch_drain(server, depth)
    rows = [
        [
            f"taken while Kafka is down ({events:,} events, 200 once in SQLite)",
            f"{take.ok_per_s:,.0f} events/s, p99 {take.p99_ms:.1f} ms"
            + (f" ({take.errors} errors)" if take.errors else ""),
        ]
    ]
    if done is None:
        bench.report.target(
            f"Spool drain ≥ {DRAIN_MIN_EPS:,}/s", f"not drained ({depth:.0f} spooled)", met(False)
        )
    else:
        rate = depth / (done - first) if done > first else float("inf")
        bench.report.target(
            f"Spool drain ≥ {DRAIN_MIN_EPS:,}/s ({depth:,.0f} events, Kafka back)",
            f"{rate:,.0f} events/s",
            met(rate >= DRAIN_MIN_EPS),
        )
        rows.append(
            [
                "drained once Kafka is back",
                f"{done - back:.1f} s (replay began after {first - back:.1f} s)",
            ]
        )
    bench.report.block("### Spool\n\n" + table(["measurement", "result"], rows, "ll"))
    bench.lab.stop([server])


def received_at_least(server: Server, events: int) -> Callable[[], bool]:
    def finished() -> bool:
        return metric(server, "login_audit_events_received_total") >= events

    return finished


def watch_drain(server: Server, depth: float, timeout: float = 600.0) -> tuple[float, float | None]:
    """When the spool gauge first fell below `depth`, and when it reached 0 (None: never)."""
    first = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        left = metric(server, "login_audit_spool_events", 'spool="bridge"')
        if first is None and left < depth:
            first = now
        if left == 0:
            return first if first is not None else now, now
        time.sleep(0.1)
    return first if first is not None else deadline, None


def report_rss(bench: Bench) -> None:
    found = bench.rss.by_server()
    if not found:
        return
    rows = [[name, f"{idle:.0f}", f"{peak:.0f}"] for name, (idle, peak) in sorted(found.items())]
    worst_name, (_, worst) = max(found.items(), key=lambda kv: kv[1][1])
    bench.report.target(
        f"RSS ≤ {RSS_MAX_MIB:g} MiB per worker (peak over every run)",
        f"{worst:.0f} MiB ({worst_name})",
        met(worst <= RSS_MAX_MIB),
    )
    bench.report.block(
        "### RSS per worker process (VmRSS, sampled every 50 ms; the largest of each server's "
        "processes)\n\n" + table(["bridge server", "idle after start, MiB", "peak, MiB"], rows)
    )


# ---------------------------------------------------------------- cleanup and main


def create_topics(lab: Lab, segment_bytes: int, partitions: int | None = None) -> int:
    """Creates this run's topics before any bridge does, with log segments of ``segment_bytes``;
    returns their partition count.

    The bench measures against Kafka's own default, 1 GiB, not the test broker's 16 MiB
    (scripts/kafka/server.properties.in, small for the tests' sake), at which a partition rolls
    every ~15 s at the bench's rates: one such roll lined up with a latency stall. (At a set
    5,000/s, two runs each way showed no clear difference: other pauses dominate.) Partitions:
    ``partitions`` (--partitions), else the bridge's default, so the bridge finds what it would
    have created; each partition costs produce requests (docs/sinks.md, Partitions).
    """
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    from bridge.settings import Settings

    if partitions is None:
        partitions = Settings.model_fields["kafka_topic_partitions"].default
    admin = AdminClient({"bootstrap.servers": lab.brokers.kafka})
    new = [
        NewTopic(topic, partitions, 1, config={"segment.bytes": str(segment_bytes)})
        for topic in lab.topics
    ]
    for future in admin.create_topics(new, request_timeout=30).values():
        future.result(30)
    # The controller answers before every broker lists the topics: wait until one does.
    deadline = time.monotonic() + 30
    while not set(lab.topics) <= set(listed := admin.list_topics(timeout=10).topics):
        if time.monotonic() > deadline:
            raise SystemExit(f"the bench's topics {lab.topics} were created but never listed")
        time.sleep(0.2)
    return len(listed[lab.topics[0]].partitions)


def delete_broker_objects(lab: Lab) -> None:
    """Drops this run's topics, queues and exchange, so repeated runs do not fill the brokers."""
    with contextlib.suppress(Exception):
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": lab.brokers.kafka})
        for future in admin.delete_topics(list(lab.topics), request_timeout=10).values():
            with contextlib.suppress(Exception):
                future.result(10)
    with contextlib.suppress(Exception):
        asyncio.run(delete_rabbitmq_objects(lab))


async def delete_rabbitmq_objects(lab: Lab) -> None:
    import aio_pika

    connection = await aio_pika.connect(lab.brokers.rabbitmq)
    async with connection:
        channel = await connection.channel()
        for queue in lab.queues:
            with contextlib.suppress(Exception):
                await channel.queue_delete(queue)
        with contextlib.suppress(Exception):
            await channel.exchange_delete(lab.exchange)


def machine() -> str:
    """The CPUs and how loaded the machine is (call it before starting anything)."""
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    return f"{os.cpu_count()} CPUs ({model}), load average {load} before the run"


def parse_sections(text: str) -> set[str]:
    chosen = {s.strip() for s in text.split(",") if s.strip()}
    unknown = chosen - set(SECTIONS)
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {sorted(unknown)}; pick {SECTIONS}")
    return chosen


@contextlib.contextmanager
def lab_and_brokers(
    *,
    own: bool,
    workers_mode: str = "processes",
    keep_brokers: bool = False,
    prefix: str = "ingest-bench-",
    pin_servers: bool = False,
) -> Iterator[Lab]:
    """A lab in a scratch directory, on own or shared brokers; afterwards every server it
    started is stopped, the bench's topics and queues deleted, and own brokers this started
    stopped (unless ``keep_brokers``). Every bench here runs inside one.

    ``pin_servers``: the bridges and floors run on the last CPU and everything else (this
    process, the load generators, the brokers) on the others, so a worker's latency is not
    its wait for a CPU that a generator or a broker holds."""
    server_cpus, others = split_cpus() if pin_servers else (None, set())
    if server_cpus is not None:
        os.sched_setaffinity(0, others)  # wrk, vegeta and brokers started from here inherit it
    found = start_brokers(own=own)
    if server_cpus is not None:
        pinned = pin_brokers(own, others)
        print(
            f"--pin-servers: servers on CPU {sorted(server_cpus)}, {pinned} and the load "
            f"generators on CPU {sorted(others)}",
            flush=True,
        )
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    lab = Lab(scratch, found, workers_mode, server_cpus)
    try:
        yield lab
    finally:
        lab.stop_all()
        delete_broker_objects(lab)
        if found.own and found.started_here and not keep_brokers:
            brokers("stop", own=True)
        shutil.rmtree(scratch, ignore_errors=True)


def run(args: argparse.Namespace, stem: str) -> tuple[Report, list[Variant]]:
    plan = Plan.choose(args)
    report = Report()
    if args.baseline:
        variants = [
            Variant("baseline", args.baseline),
            Variant(args.name or "candidate", args.source, settings=args.settings),
        ]
    elif args.skeleton:
        default = f"checkout {args.source.name}" if args.source else "this checkout"
        variants = [
            Variant(args.name or default, args.source),
            Variant("skeleton", args.source, skeleton=True),
        ]
    else:
        default = f"checkout {args.source.name}" if args.source else "this checkout"
        variants = [Variant(args.name or default, args.source)]
    if args.workers_mode == "flag":
        for variant in variants:
            if not bridge_has_workers_flag(variant):
                raise SystemExit(
                    f"{variant.name}: `login-audit-bridge serve` has no --workers flag; "
                    "use --workers-mode processes"
                )
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    with (
        lab_and_brokers(
            own=args.brokers == "own",
            workers_mode=args.workers_mode,
            keep_brokers=args.keep_brokers,
            pin_servers=args.pin_servers,
        ) as lab,
        RssSampler() as rss,
    ):
        bench = Bench(
            plan,
            lab,
            Load(
                lab.scratch,
                request_pairs(),
                args.vegeta_max_connections,
                generator=args.rate_generator,
            ),
            rss,
            report,
            args.only,
            variants,
            args.workers,
            seed,
            args.paired,
            args.restart,
            per_event=not args.keep_alive_only,
        )
        partitions = create_topics(lab, args.segment_bytes, args.partitions)
        report.note(
            f"Kafka topics: {partitions} partition{'s' if partitions > 1 else ''} each "
            "(--partitions; default: the bridge's, the broker's own default), log segments of "
            f"{args.segment_bytes:,} bytes (--segment-bytes; Kafka's default is 1 GiB, the test "
            "broker's 16 MiB)"
        )
        report.note(f"round order seed {seed} (--seed to repeat it)")
        if lab.server_cpus is not None:
            report.note(
                f"--pin-servers: every bridge worker and floor ran on CPU "
                f"{sorted(lab.server_cpus)} alone; the brokers, the load generators and the bench "
                "on the others. `core` and CPU per event are still the servers' own; `machine "
                "idle` is of all CPUs. Two workers share that one CPU, so the workers section "
                "does not measure scaling in this mode"
            )
        if args.vegeta_max_connections:
            report.note(
                f"vegeta opened at most {args.vegeta_max_connections} connections per run "
                "(--vegeta-max-connections): a request with none free waited in vegeta, and "
                "that wait is in its latency, as behind a proxy that pools its connections"
            )
        bench.start()
        if {"cpu", "workers"} & args.only:
            bench.rounds()
        if "latency" in args.only:
            bench.latency()
        if "profile" in args.only:
            bench.profile(
                stem, args.profile_sink, per_event=args.profile_per_event, rate=args.profile_rate
            )
        if "penalty" in args.only:
            bench.penalty(args.penalty_share or TARGET_SHARE, args.penalty_windows or 2)
        lab.stop_all()  # the checks start their own workers, on a quieter machine
        if "checks" in args.only:
            checks(bench)
        report_rss(bench)
    return report, variants


def _stop_by_signal(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)


def main() -> int:
    # A run stopped early still stops every server and broker it started (the lab's finally):
    # SIGTERM would end Python without unwinding, and a shell's `&` starts it with SIGINT
    # ignored, a state Python keeps.
    signal.signal(signal.SIGTERM, _stop_by_signal)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--quick", action="store_true", help="2 rounds of 3 s, short latency/profile/checks"
    )
    parser.add_argument(
        "--only",
        type=parse_sections,
        default=set(SECTIONS),
        help=f"comma-separated sections to run (default all: {','.join(SECTIONS)})",
    )
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 7, quick 2)")
    parser.add_argument("--seconds", type=float, help="seconds per measured point (10, quick 3)")
    parser.add_argument("--workers", type=int, default=2, help="N in '1 vs N workers' (default 2)")
    parser.add_argument(
        "--workers-mode",
        choices=["processes", "flag"],
        default="processes",
        help="N workers as N `serve` processes with BRIDGE_REUSE_PORT (default), "
        "or one `serve --workers N`",
    )
    parser.add_argument(
        "--source",
        type=Path,
        help="run the bridge package from this checkout (first on PYTHONPATH)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="also measure this checkout's bridge in the same rounds (before/after table)",
    )
    parser.add_argument(
        "--paired",
        action="store_true",
        help="with --baseline: in each round of the cpu/workers sections, run each server of the "
        "baseline and its twin of the candidate at the same time, each under its own wrk, and "
        "take candidate ÷ baseline per window (steadier on a noisy machine than one after "
        "the other; absolute numbers are lower, as the two share the machine); add --restart",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="with --paired: fresh processes for every pair in every round after the first "
        "(started, then warmed up together), so an offset between two processes of the same "
        "code varies by round instead of holding for the whole run (an A/A run without it: "
        "0.90x in every round)",
    )
    parser.add_argument("--name", help="what to call the measured checkout in the report")
    parser.add_argument(
        "--brokers",
        choices=["own", "shared"],
        default="own",
        help="the bench's own brokers on separate ports (default; the spool check needs them), "
        "or the shared ones (never stopped)",
    )
    parser.add_argument(
        "--latency-rounds", type=int, help="latency rounds of 20 s per rate (default 3, quick 1)"
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        help="the latency rows' second rate in events/s, instead of 50 %% of the measured "
        "maximum: the same rate for runs that are compared with each other",
    )
    parser.add_argument(
        "--latency-share",
        type=share_of_maximum,
        action="append",
        metavar="SHARE",
        help="a latency row at this share of the measured maximum (repeatable; default 0.5, "
        "the issue's target): e.g. --latency-share 0.35 --latency-share 0.5 shows where the "
        "tail turns, the highest rate a worker holds within the p99",
    )
    parser.add_argument(
        "--kafka-floor-share",
        type=share_of_maximum,
        action="append",
        metavar="SHARE",
        help="also load the Kafka floor at this share of its own maximum under wrk (repeatable; "
        "latency section): whether a server that only publishes holds the p99 at 50 %% of its "
        "own maximum on this machine",
    )
    parser.add_argument(
        "--rate-generator",
        choices=["vegeta", "ratego"],
        default="vegeta",
        help="what sends the constant rates (latency and penalty sections): vegeta, or "
        "bench/ratego, the same open loop for less CPU per request (bench/README.md)",
    )
    parser.add_argument(
        "--vegeta-max-connections",
        type=int,
        metavar="N",
        help="vegeta opens at most N connections (default: no limit, a new one for each request "
        "sent while all are busy); a request with none free waits in vegeta and that wait "
        "counts in its latency: the load a proxy that pools its connections gives",
    )
    parser.add_argument(
        "--segment-bytes",
        type=int,
        default=1 << 30,
        help="log segment size of the bench's Kafka topics (default 1 GiB, Kafka's own default; "
        "16777216 is the test broker's)",
    )
    parser.add_argument(
        "--partitions",
        type=int,
        default=None,
        help="partitions of the bench's Kafka topics (default: the bridge's default, -1, the "
        "broker's own num.partitions, 1 here); librdkafka sends each partition its own produce "
        "requests, so more partitions cost the broker (and the tail) more at a given rate",
    )
    parser.add_argument(
        "--keep-alive-only",
        action="store_true",
        help="skip the cpu section's rows with a new connection per event (the floor and "
        "Kafka, each wrk request with Connection: close, as the hooks connect)",
    )
    parser.add_argument(
        "--set",
        dest="set_settings",
        action="append",
        default=[],
        metavar="BRIDGE_NAME=VALUE",
        help="with --baseline: a setting for the candidate's bridge workers only (repeatable), "
        "e.g. --baseline . --source . --set BRIDGE_KAFKA_LINGER_MS=0 to compare a setting",
    )
    parser.add_argument(
        "--skeleton",
        action="store_true",
        help="also measure, in the same rounds, the bridge with its normalizing and encoding "
        "cached (bench/skeleton/): into Kafka, what the rest of the hot path costs",
    )
    parser.add_argument(
        "--profile-sink",
        choices=sorted(SINK_NAMES),
        default="kafka",
        help="the bridge the profile section looks at (default kafka)",
    )
    parser.add_argument(
        "--profile-per-event",
        action="store_true",
        help="profile under wrk with a new connection per event (Connection: close, as the "
        "hooks connect) instead of keep-alive",
    )
    parser.add_argument(
        "--profile-rate",
        type=float,
        metavar="EVENTS_PER_S",
        help="profile under vegeta at this constant rate (keep-alive) instead of wrk at the "
        "maximum: where the latency rows spend their CPU",
    )
    parser.add_argument(
        "--penalty-share",
        type=share_of_maximum,
        metavar="SHARE",
        help="the penalty section's constant rate, as a share of the events/s wrk reached in "
        "its first window (default 0.5, the latency row's)",
    )
    parser.add_argument(
        "--penalty-windows",
        type=int,
        metavar="N",
        help="the penalty section's rounds of windows, one under wrk, one under closed-loop "
        "vegeta and one at the constant rate each, of the profile's length (20 s, quick 3 s; "
        "default 2 rounds)",
    )
    parser.add_argument(
        "--pin-servers",
        action="store_true",
        help="run the bridges and floors on the last CPU and the brokers, load generators and "
        "bench on the others (as a worker with a core of its own); default: the kernel "
        "places everything",
    )
    parser.add_argument("--keep-brokers", action="store_true", help="leave own brokers running")
    parser.add_argument("--seed", type=int, help="the rounds' order (default random, printed)")
    parser.add_argument("--label", help="added to the results file name, e.g. before or after")
    args = parser.parse_args()
    if args.profile_rate is not None and args.profile_per_event:
        parser.error(
            "--profile-rate loads with vegeta's kept-alive connections, "
            "not with --profile-per-event"
        )
    checkouts.resolve_checkouts(parser, args)
    args.settings = {}
    for item in args.set_settings:
        name, equals, value = item.partition("=")
        if not equals or not name.startswith("BRIDGE_"):
            parser.error(f"--set {item}: expected BRIDGE_NAME=VALUE")
        args.settings[name] = value
    if args.settings and not args.baseline:
        parser.error("--set applies to the candidate of a --baseline run")
    if args.skeleton and args.baseline:
        parser.error(
            "--skeleton compares the measured checkout with its own skeleton: no --baseline"
        )
    if args.paired and not args.baseline:
        parser.error(
            "--paired needs --baseline: it pairs the baseline's servers with the candidate's"
        )
    if args.restart and not args.paired:
        parser.error("--restart applies to --paired rounds")
    if args.kafka_floor_share and "latency" not in args.only:
        parser.error("--kafka-floor-share adds rows to the latency section; --only has none")
    if (args.penalty_share or args.penalty_windows) and "penalty" not in args.only:
        parser.error(
            "--penalty-share and --penalty-windows shape the penalty section; --only has none"
        )
    if args.penalty_windows is not None and args.penalty_windows < 1:
        parser.error("--penalty-windows: at least 1")
    if args.latency_rate is not None and args.latency_share:
        parser.error("--latency-rate sets the second rate itself: drop --latency-share")
    if args.paired and not {"cpu", "workers"} & args.only:
        parser.error(
            "--paired pairs the rounds of the cpu and workers sections; --only has neither"
        )
    started = datetime.now(UTC)
    host = machine()
    stem = results_stem(started, args.label, "quick" if args.quick else None)
    report, variants = run(args, stem)
    text = (
        f"# Ingest benchmark, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"{how_run('ingest.py', host)}. "
        "Brokers, bridge workers and load generators share the machine.\n\n"
        + "".join(f"- {v.name}: {v.describe()}\n" for v in variants)
        + "\n"
        + report.markdown()
        + "\n"
    )
    write_results(stem, text)
    return 0


def how_run(script: str, host: str | None = None) -> str:
    """How a report was made: the command line, the machine (``host``, as ``machine()`` said
    before the run, or now) and the Python version."""
    command = shlex.join([f"bench/{script}", *sys.argv[1:]])
    return f"`{command}` on {host or machine()}, Python {sys.version.split()[0]}"


def results_stem(started: datetime, *parts: str | None) -> str:
    """A results file's name without ``.md``: when the run started, then the parts given."""
    return "-".join([f"{started:%Y-%m-%d-%H%M}", *(part for part in parts if part)])


def write_results(stem: str, text: str) -> Path:
    """Writes a report to bench/results/<stem>.md and prints it with where it went."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{stem}.md"
    out.write_text(text, encoding="utf-8")
    print("\n" + text + f"\n(written to {out.relative_to(REPO)})")
    return out


if __name__ == "__main__":
    sys.exit(main())
