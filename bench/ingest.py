"""Measures ingest throughput, latency, spool drain and memory of the bridge against baselines.

One command starts everything on 127.0.0.1 (Kafka and RabbitMQ through ``scripts/brokers``,
bridge processes through ``login-audit-bridge serve``, a bare ASGI app as the serving floor),
runs each measurement, stops what it started by PID, prints one Markdown table and writes it to
``bench/results/<date>.md``. Load: ``wrk`` (closed loop, for the most a server sustains) and
``bench/openloop.py`` (open loop, for latency at a fixed offered rate), both posting SFTPGo's
HTTP-mode request bodies from the shared vectors. Nothing here asserts a speed.

    .venv/bin/python bench/ingest.py [--quick] [--no-profile] [--keep-brokers]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("LOGIN_AUDIT_SHARED", REPO.parent / "shared"))
CACHE = Path(os.environ.get("LOGIN_AUDIT_CACHE", Path.home() / ".cache" / "login-audit-bridge"))
PYTHON = sys.executable
BIN = Path(PYTHON).parent
BROKERS = REPO / "scripts" / "brokers"
TOKEN = "bench-token"  # noqa: S105 - a throwaway token for loopback-only processes
HOOK_PATH = "/v1/hooks/sftpgo"
WRK_THREADS = 1  # one wrk thread drives >50k req/s on loopback; the rest of the CPU is the server's
WRK_CONNECTIONS = 128
LATENCY_FRACTIONS = (0.25, 0.50, 0.90)

# The targets.
KAFKA_MIN_EPS = 8000
KAFKA_MIN_FLOOR_RATIO = 0.2
P99_AT_HALF_MAX_MS = 20.0
SHIM_MAX_RATIO = 1.3
DRAIN_MIN_EPS = 5000
RSS_MAX_MIB = 120.0


@dataclass(frozen=True)
class Plan:
    """How long and how much: the full run, or --quick."""

    seconds: float
    spool_events: int
    shim_runs: int
    shim_logins: int

    @classmethod
    def choose(cls, quick: bool) -> Plan:
        if quick:
            return cls(seconds=3.0, spool_events=20_000, shim_runs=30, shim_logins=30)
        return cls(seconds=10.0, spool_events=100_000, shim_runs=100, shim_logins=200)


@dataclass
class Row:
    measurement: str
    result: str
    target: str = "-"
    verdict: str = ""


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, measurement: str, result: str, target: str = "-", verdict: str = "") -> None:
        self.rows.append(Row(measurement, result, target, verdict))
        print(f"  {measurement}: {result}" + (f" [{verdict}]" if verdict else ""), flush=True)

    def markdown(self) -> str:
        lines = ["| measurement | result | target | met |", "|---|---|---|---|"]
        lines += [f"| {r.measurement} | {r.result} | {r.target} | {r.verdict} |" for r in self.rows]
        return "\n".join(lines)


def met(ok: bool) -> str:
    return "yes" if ok else "**no**"


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 2.0) -> tuple[int, bytes]:
    # Every URL here is http://127.0.0.1:<port>/..., built by this script.
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310
            return int(reply.status), reply.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def wait_for(url: str, process: subprocess.Popen[bytes], *, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with {process.returncode} during start-up")
        with contextlib.suppress(OSError):
            if http_get(url, timeout=1.0)[0] == 200:
                return
        time.sleep(0.1)
    raise SystemExit(f"{url} did not answer 200 within {timeout} s")


def stop(process: subprocess.Popen[bytes], grace: float = 30.0) -> None:
    """SIGTERM by PID, then SIGKILL if it does not stop within the grace period."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Server:
    """A started HTTP server process (bridge worker or floor) on 127.0.0.1."""

    name: str
    port: int
    process: subprocess.Popen[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@dataclass
class Brokers:
    kafka: str
    rabbitmq: str
    started_here: bool


# The bench runs its own brokers (own run directory, own ports): it stops and starts Kafka, which
# must not disturb a test run using the default ones, nor be disturbed by it. The ports sit below
# Linux's ephemeral range (32768+), where wrk's outgoing connections could take them.
BROKER_ENV = {
    "LOGIN_AUDIT_RUN": str(CACHE / "bench-run"),
    "LOGIN_AUDIT_KAFKA_PORT": "19192",
    "LOGIN_AUDIT_KAFKA_CONTROLLER_PORT": "19193",
    "LOGIN_AUDIT_RABBITMQ_PORT": "5773",
    "LOGIN_AUDIT_RABBITMQ_DIST_PORT": "25773",
    "LOGIN_AUDIT_EPMD_PORT": "14469",
}


def brokers(command: str) -> str:
    """Runs scripts/brokers for the bench's own brokers; returns what it printed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BRIDGE_TEST_")}
    done = subprocess.run(
        [str(BROKERS), command],
        env={**env, **BROKER_ENV},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"scripts/brokers {command} failed:\n{done.stderr[-2000:]}")
    return done.stdout


def start_brokers() -> Brokers:
    before = brokers("env")
    already = "KAFKA" in before and "RABBITMQ" in before
    print("brokers: " + ("already running" if already else "starting (scripts/brokers start)"))
    out = brokers("start")
    env = dict(
        line.removeprefix("export ").split("=", 1)
        for line in out.splitlines()
        if line.startswith("export ")
    )
    return Brokers(
        kafka=env["BRIDGE_TEST_KAFKA_BOOTSTRAP"],
        rabbitmq=env["BRIDGE_TEST_RABBITMQ_URL"],
        started_here=not already,
    )


class Lab:
    """Starts bridge workers and the floor app in a scratch directory; stops all it started."""

    def __init__(self, scratch: Path, brokers: Brokers, source: Path | None = None) -> None:
        self.scratch = scratch
        self.source = source
        self.brokers = brokers
        self.run_id = uuid.uuid4().hex[:8]
        self.topics = (f"bench-{self.run_id}.success", f"bench-{self.run_id}.failure")
        self.queues = (f"bench-{self.run_id}.success", f"bench-{self.run_id}.failure")
        self.exchange = f"bench-{self.run_id}"
        self._started: list[Server] = []
        self._count = 0

    def bridge_env(self, sink: str, port: int, *, reuse_port: bool) -> dict[str, str]:
        self._count += 1
        data_dir = self.scratch / f"bridge-{self._count}"
        data_dir.mkdir()
        # --source: another checkout's bridge package, ahead of the editable install, to
        # compare a change with the code it changes.
        source = {"PYTHONPATH": str(self.source)} if self.source else {}
        return {
            **source,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "BRIDGE_HOST": "127.0.0.1",
            "BRIDGE_PORT": str(port),
            "BRIDGE_REUSE_PORT": "true" if reuse_port else "false",
            "BRIDGE_DATA_DIR": str(data_dir),
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
        }

    def bridges(self, sink: str, workers: int = 1) -> list[Server]:
        port = free_port()
        servers = []
        for n in range(workers):
            env = self.bridge_env(sink, port, reuse_port=workers > 1)
            log = (Path(env["BRIDGE_DATA_DIR"]) / "bridge.log").open("wb")
            process = subprocess.Popen(
                [str(BIN / "login-audit-bridge"), "serve"],
                env=env,
                stdout=log,
                stderr=log,
                cwd=env["BRIDGE_DATA_DIR"],
            )
            log.close()
            server = Server(f"{sink} worker {n + 1}", port, process)
            self._started.append(server)
            servers.append(server)
        for server in servers:
            wait_for(f"{server.url}/readyz", server.process)
        if sink != "file":
            wait_until_sink_ready(servers)
        return servers

    def floor(self) -> Server:
        port = free_port()
        process = subprocess.Popen(
            [PYTHON, str(REPO / "bench" / "floor_app.py"), "--port", str(port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = Server("floor", port, process)
        self._started.append(server)
        wait_for_port(port, process)
        return server

    def stop(self, servers: list[Server]) -> None:
        for server in servers:
            stop(server.process)
            self._started.remove(server)

    def stop_all(self) -> None:
        self.stop(list(self._started))


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"{process.args!r} exited with {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def wait_until_sink_ready(servers: list[Server], timeout: float = 60.0) -> None:
    """/readyz answers 200 with a spool even before the broker connects; wait for the sink."""
    deadline = time.monotonic() + timeout
    for server in servers:
        while time.monotonic() < deadline:
            status, body = http_get(f"{server.url}/readyz")
            if status == 200 and json.loads(body).get("sink_ready"):
                break
            time.sleep(0.1)
        else:
            raise SystemExit(f"{server.name}: sink not ready within {timeout} s")


# ---------------------------------------------------------------- measuring


class RssSampler:
    """Samples VmRSS of the watched processes every 50 ms in a thread; keeps each one's peak."""

    def __init__(self) -> None:
        self._peaks: dict[int, int] = {}
        self._watched: set[int] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def watch(self, pids: list[int]) -> None:
        with self._lock:
            self._watched.update(pids)

    def peak_mib(self, pid: int) -> float:
        with self._lock:
            return self._peaks.get(pid, 0) / 1024

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with self._lock:
                pids = list(self._watched)
            for pid in pids:
                kib = rss_kib(pid)
                with self._lock:
                    self._peaks[pid] = max(self._peaks.get(pid, 0), kib)


class CpuMeter:
    """CPU time the workers used over a block, and how busy the whole machine was meanwhile.

    The machine may be shared: a worker below 100 % of a core while the machine has no idle
    time was short of CPU, not of work.
    """

    def __init__(self, pids: list[int]) -> None:
        self._pids = pids
        self._ticks = os.sysconf("SC_CLK_TCK")
        self._started = 0.0
        self._cpu: list[float] = []
        self._idle = 0.0
        self.seconds = 0.0
        self.worker_cpu: list[float] = []
        self.machine_idle = 0.0

    def __enter__(self) -> CpuMeter:
        self._started = time.monotonic()
        self._cpu = [process_cpu_seconds(pid) for pid in self._pids]
        self._idle = machine_idle_seconds(self._ticks)
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.monotonic() - self._started
        used = [process_cpu_seconds(p) - c for p, c in zip(self._pids, self._cpu, strict=True)]
        self.worker_cpu = used
        self.machine_idle = (machine_idle_seconds(self._ticks) - self._idle) / (
            self.seconds * (os.cpu_count() or 1)
        )

    def describe(self, events: int) -> str:
        cores = " + ".join(f"{100 * u / self.seconds:.0f} %" for u in self.worker_cpu)
        per_event = sum(self.worker_cpu) / max(events, 1) * 1e6
        return (
            f"worker CPU {cores} of a core, {per_event:.0f} µs CPU/event; "
            f"machine idle {100 * self.machine_idle:.0f} %"
        )


def process_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    # utime and stime are fields 14 and 15 of stat(5); [0] here is field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_idle_seconds(ticks: int) -> float:
    cpu = Path("/proc/stat").read_text().splitlines()[0].split()
    return (int(cpu[4]) + int(cpu[5])) / ticks  # idle + iowait


def rss_kib(pid: int) -> int:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def request_pairs() -> list[tuple[str, str]]:
    """(path, body) of every HTTP-mode SFTPGo vector, as SFTPGo's HTTP hook sends them."""
    pairs = []
    for path in sorted((SHARED / "vectors" / "sftpgo").glob("*.json")):
        vector = json.loads(path.read_text(encoding="utf-8"))
        if vector.get("mode") == "http" and vector.get("raw_body"):
            pairs.append((f"{HOOK_PATH}?{vector['raw_query']}", vector["raw_body"]))
    if not pairs:
        raise SystemExit(f"no HTTP-mode vectors under {SHARED / 'vectors' / 'sftpgo'}")
    return pairs


def lua_string(text: str) -> str:
    return (
        '"'
        + "".join(c if c.isalnum() or c in " -_.:,{}[]/=&?@+" else f"\\{ord(c):03d}" for c in text)
        + '"'
    )


def write_wrk_script(path: Path, pairs: list[tuple[str, str]], *, counted: bool) -> None:
    """A wrk script cycling through the vectors; `counted` stops each thread after arg 1 answers."""
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
                   ["Authorization"] = "Bearer {TOKEN}"}}
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


def parse_wrk(out: str) -> Closed:
    line = next(x for x in out.splitlines() if x.startswith("WRKJSON "))
    data = json.loads(line.removeprefix("WRKJSON "))
    seconds = data["duration_us"] / 1e6
    errors = data["status"] + data["connect"] + data["read"] + data["write"] + data["timeout"]
    ok = data["requests"] - data["status"]
    return Closed(ok / seconds, ok, errors, seconds, data["p50_us"] / 1e3, data["p99_us"] / 1e3)


def stop_child(process: subprocess.Popen[str]) -> None:
    if process.poll() is None:
        process.kill()
        process.wait()


class Load:
    """Both load generators, aimed at one port."""

    def __init__(self, scratch: Path, pairs: list[tuple[str, str]]) -> None:
        self.wrk = ensure_wrk()
        self.timed = scratch / "timed.lua"
        self.counted = scratch / "counted.lua"
        self.pairs_file = scratch / "requests.json"
        write_wrk_script(self.timed, pairs, counted=False)
        write_wrk_script(self.counted, pairs, counted=True)
        self.pairs_file.write_text(json.dumps(pairs), encoding="utf-8")

    def closed(self, port: int, seconds: float, connections: int = WRK_CONNECTIONS) -> Closed:
        return self._wrk(port, ["-d", f"{seconds:g}s", "-s", str(self.timed)], connections)

    def count(
        self, port: int, events: int, finished: Callable[[], bool], connections: int = 64
    ) -> Closed:
        """Sends `events` requests (each connection stops after its share) until `finished()`.

        wrk sleeps for its whole -d even when every thread has stopped; SIGINT ends the sleep,
        and it then prints its summary as usual.
        """
        per_thread = max(1, events // WRK_THREADS)
        options = ["-d", "3600s", "-s", str(self.counted)]
        argv = self._argv(port, options, connections, script_args=[str(per_thread)])
        wrk = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            while wrk.poll() is None and not finished():
                time.sleep(0.05)
            wrk.send_signal(signal.SIGINT)
            out, _ = wrk.communicate(timeout=30)
        finally:
            stop_child(wrk)
        return parse_wrk(out)

    def _wrk(
        self, port: int, options: list[str], connections: int, script_args: list[str] | None = None
    ) -> Closed:
        argv = self._argv(port, options, connections, script_args)
        return parse_wrk(subprocess.run(argv, capture_output=True, text=True, check=True).stdout)

    def _argv(
        self, port: int, options: list[str], connections: int, script_args: list[str] | None
    ) -> list[str]:
        argv = [self.wrk, "-t", str(WRK_THREADS), "-c", str(connections), "--timeout", "10s"]
        argv += [*options, f"http://127.0.0.1:{port}{HOOK_PATH}"]
        return argv + (["--", *script_args] if script_args else [])

    def open(self, port: int, rate: float, seconds: float) -> dict[str, Any]:
        argv = [
            PYTHON,
            str(REPO / "bench" / "openloop.py"),
            "--port",
            str(port),
            "--rate",
            f"{rate:.0f}",
            "--duration",
            f"{seconds:g}",
            "--warm-up",
            "1",
            "--connections",
            "512",
            "--requests",
            str(self.pairs_file),
            "--token",
            TOKEN,
        ]
        out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
        result: dict[str, Any] = json.loads(out)
        return result


def metric(server: Server, name: str, labels: str = "") -> float:
    """The sum of a metric's samples whose labels contain `labels` (e.g. 'sink="kafka"')."""
    _, body = http_get(f"{server.url}/metrics")
    total = 0.0
    for line in body.decode().splitlines():
        if line.startswith(name) and (line[len(name)] in " {") and labels in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---------------------------------------------------------------- the measurements


@dataclass
class Context:
    plan: Plan
    lab: Lab
    load: Load
    rss: RssSampler
    report: Report
    profile: bool
    floor_max: float = 0.0
    kafka_max: float = 0.0
    rss_notes: dict[str, float] = field(default_factory=dict)


def fmt_rate(value: float) -> str:
    return f"{value:,.0f}"


def latency_text(result: dict[str, Any]) -> str:
    text = f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms"
    other = {k: v for k, v in result["statuses"].items() if not k.startswith("2")}
    if result["failures"]:
        other["no answer"] = result["failures"]
    return text + "".join(f"; {n} {status}" for status, n in other.items())


def measure_floor(ctx: Context) -> None:
    server = ctx.lab.floor()
    ctx.load.closed(server.port, 1.0)  # warm-up
    with CpuMeter([server.pid]) as cpu:
        run = ctx.load.closed(server.port, ctx.plan.seconds)
    ctx.floor_max = run.ok_per_s
    ctx.report.add(
        "Serving floor: bare ASGI app on the bridge's uvicorn, wrk closed loop",
        f"{fmt_rate(run.ok_per_s)} req/s; {cpu.describe(run.ok)}",
    )
    ctx.lab.stop([server])


def measure_sink(ctx: Context, sink: str, workers: int = 1) -> float:
    """Sustained rate (closed loop) and latency at fractions of it (open loop); returns the max."""
    servers = ctx.lab.bridges(sink, workers)
    label = f"{sink}, {workers} worker{'s' if workers > 1 else ''}"
    time.sleep(1.0)
    idle = [rss_kib(s.pid) / 1024 for s in servers]
    ctx.rss.watch([s.pid for s in servers])
    port = servers[0].port
    ctx.load.closed(port, 1.0)  # warm-up: connections, topic metadata, caches
    with CpuMeter([s.pid for s in servers]) as cpu:
        run = ctx.load.closed(port, ctx.plan.seconds)
    errors = f" ({run.errors} errors)" if run.errors else ""
    ctx.report.add(
        f"Into {label}: sustained, closed loop ({WRK_CONNECTIONS} connections)",
        f"{fmt_rate(run.ok_per_s)} events/s{errors}; {cpu.describe(run.ok)}",
        *sink_target(ctx, sink, workers, run.ok_per_s),
    )
    fractions = LATENCY_FRACTIONS if workers == 1 else (0.5,)
    for fraction in fractions:
        result = ctx.load.open(port, fraction * run.ok_per_s, ctx.plan.seconds)
        target, verdict = "-", ""
        if fraction == 0.5 and sink == "kafka":
            target = f"p99 ≤ {P99_AT_HALF_MAX_MS:g} ms"
            verdict = met(result["p99_ms"] <= P99_AT_HALF_MAX_MS and not result["failures"])
        ctx.report.add(
            f"Into {label}: latency at {fraction:.0%} of max "
            f"({fmt_rate(result['offered_per_s'])}/s offered, open loop)",
            latency_text(result),
            target,
            verdict,
        )
    if sink == "kafka" and workers == 1 and ctx.profile:
        profile_hot_path(ctx, servers[0])
    spooled = sum(metric(s, "login_audit_publish_errors_total") for s in servers)
    if spooled:
        ctx.report.notes.append(
            f"{label}: {spooled:.0f} publish errors/timeouts during the run "
            "(those events went to the spool, not straight to the sink)"
        )
    for server, idle_mib in zip(servers, idle, strict=True):
        ctx.rss_notes[f"{label}: idle, {server.name}"] = idle_mib
        ctx.rss_notes[f"{label}: peak under load, {server.name}"] = ctx.rss.peak_mib(server.pid)
    ctx.lab.stop(servers)
    return run.ok_per_s


def sink_target(ctx: Context, sink: str, workers: int, rate: float) -> tuple[str, str]:
    if sink != "kafka" or workers != 1:
        if sink == "kafka" and ctx.kafka_max:
            return "-", f"{rate / ctx.kafka_max:.2f}x one worker"
        return "-", ""
    ratio = rate / ctx.floor_max if ctx.floor_max else 0.0
    target = f"≥ {KAFKA_MIN_EPS:,}/s and ≥ {KAFKA_MIN_FLOOR_RATIO}x floor"
    verdict = (
        f"{met(rate >= KAFKA_MIN_EPS)} / {met(ratio >= KAFKA_MIN_FLOOR_RATIO)} ({ratio:.2f}x floor)"
    )
    return target, verdict


def measure_spool(ctx: Context) -> None:
    """Kafka down: how fast requests are spooled; Kafka back: how fast the spool drains."""
    [server] = ctx.lab.bridges("kafka")
    ctx.rss.watch([server.pid])
    print("  stopping Kafka (scripts/brokers stop-kafka)", flush=True)
    brokers("stop-kafka")
    try:
        # The hand-over: the first requests wait spool_after_seconds, then all go to the spool.
        ctx.load.count(server.port, 200, received_at_least(server, 200), connections=16)
        take = ctx.load.count(
            server.port,
            ctx.plan.spool_events,
            received_at_least(server, 200 + ctx.plan.spool_events),
        )
        depth = metric(server, "login_audit_spool_events", 'spool="bridge"')
        ctx.report.add(
            f"Spool: taken while Kafka is down ({ctx.plan.spool_events:,} events, "
            "200 OK once in SQLite)",
            f"{fmt_rate(take.ok_per_s)} events/s, p99 {take.p99_ms:.1f} ms"
            + (f" ({take.errors} errors)" if take.errors else ""),
        )
    finally:
        print("  starting Kafka (scripts/brokers start-kafka)", flush=True)
        brokers("start-kafka")
    back = time.monotonic()
    first, done = watch_drain(server, depth)
    if done is None:
        ctx.report.add("Spool: drain", f"not drained within the wait; {depth:.0f} were spooled")
    else:
        rate = depth / (done - first) if done > first else float("inf")
        ctx.report.add(
            f"Spool: drain rate once replay started ({depth:,.0f} events)",
            f"{fmt_rate(rate)} events/s",
            f"≥ {DRAIN_MIN_EPS:,}/s",
            met(rate >= DRAIN_MIN_EPS),
        )
        ctx.report.add(
            f"Spool: time to drain {depth:,.0f} events from Kafka answering",
            f"{done - back:.1f} s (replay began after {first - back:.1f} s)",
        )
    ctx.rss_notes["spool run: peak, kafka worker"] = ctx.rss.peak_mib(server.pid)
    ctx.lab.stop([server])


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


def measure_shim(ctx: Context) -> None:
    script = REPO / "bench" / "shim_startup.py"
    if not script.is_file():
        ctx.report.add("Shim start-up", "bench/shim_startup.py not present: not measured")
    else:
        out = subprocess.run(
            [PYTHON, str(script), "--runs", str(ctx.plan.shim_runs)],
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        for name, ratio in shim_ratios(out):
            ctx.report.add(
                f"Shim CPU time vs `python -c pass` ({name}, "
                f"{ctx.plan.shim_runs} rounds, bench/shim_startup.py)",
                f"{ratio:.2f}x",
                f"≤ {SHIM_MAX_RATIO}x",
                met(ratio <= SHIM_MAX_RATIO),
            )
    shim_to_kafka(ctx)


def shim_ratios(text: str) -> list[tuple[str, float]]:
    """(command, CPU ratio) for the hook's rows of shim_startup.py's table."""
    found = []
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0].startswith("`login-audit-hook"):
            found.append(
                (
                    cells[0].strip("`").removeprefix("login-audit-hook, "),
                    float(cells[5].rstrip("x")),
                )
            )
    return found


def shim_to_kafka(ctx: Context) -> None:
    """Per login: spawn the hook with a unique user name, until its exit (after the bridge's 200,
    which follows Kafka's delivery report) and until a consumer sees the event on the topic."""
    [server] = ctx.lab.bridges("kafka")
    login = program_vector_env()
    spawned: dict[str, float] = {}
    exited: list[float] = []
    with TopicWatcher(ctx.lab.brokers.kafka, ctx.lab.topics) as watcher:
        for _ in range(ctx.plan.shim_logins):
            name = f"bench-{uuid.uuid4().hex[:12]}"
            env = hook_env(login, name, server.url, ctx.lab.scratch / "hook-spool")
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
    ctx.report.add(
        f"Shim → bridge → Kafka, per login ({len(exited)} logins, one at a time): "
        "hook start to exit (the bridge answers after Kafka acknowledged)",
        f"p50 {pct(exited, 0.5) * 1e3:.1f} ms, p99 {pct(exited, 0.99) * 1e3:.1f} ms",
    )
    ctx.report.add(
        "Shim → bridge → Kafka: hook start to the event read by a consumer",
        f"p50 {pct(consumed, 0.5) * 1e3:.1f} ms, p99 {pct(consumed, 0.99) * 1e3:.1f} ms"
        f" ({len(seen)}/{len(spawned)} seen)",
    )
    ctx.lab.stop([server])


def pct(ordered: list[float], fraction: float) -> float:
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else float("nan")


def program_vector_env() -> dict[str, str]:
    for path in sorted((SHARED / "vectors" / "sftpgo").glob("*_program_*.json")):
        vector = json.loads(path.read_text(encoding="utf-8"))
        if vector["env"].get("SFTPGO_LOGIND_STATUS") == "1":
            return {k: str(v) for k, v in vector["env"].items()}
    raise SystemExit("no successful program-mode SFTPGo vector found")


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
        metadata = self._consumer.list_topics(timeout=10)
        assignment = []
        for topic in topics:
            for partition in metadata.topics[topic].partitions:
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), timeout=10
                )
                assignment.append(TopicPartition(topic, partition, high))
        self._consumer.assign(assignment)
        self._bodies: list[tuple[float, bytes]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

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


# ---------------------------------------------------------------- profiling


def py_spy() -> Path:
    venv = CACHE / "bench-venv"
    binary = venv / "bin" / "py-spy"
    if not binary.exists():
        print(f"installing py-spy from PyPI into {venv}", flush=True)
        subprocess.run([PYTHON, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "py-spy"], check=True)
    return binary


def profile_hot_path(ctx: Context, server: Server) -> None:
    """py-spy samples the worker during a max-throughput run; the top self-time functions."""
    raw = ctx.lab.scratch / "profile.txt"
    seconds = max(3, int(ctx.plan.seconds))
    spy = subprocess.Popen(
        [
            str(py_spy()),
            "record",
            "--nonblocking",
            "--gil",
            "--format",
            "raw",
            "--rate",
            "250",
            "--duration",
            str(seconds),
            "--pid",
            str(server.pid),
            "--output",
            str(raw),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(0.5)
    ctx.load.closed(server.port, seconds + 1)
    spy.wait(60)
    ctx.report.notes.append(self_time_table(raw))
    svg = REPO / "bench" / "results" / "kafka-profile.txt"
    svg.parent.mkdir(exist_ok=True)
    shutil.copy(raw, svg)


def self_time_table(raw: Path, top: int = 10) -> str:
    """py-spy's collapsed stacks → the functions with the most samples on top of the stack."""
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        frame = stack.split(";")[-1]
        name, _, where = frame.partition(" (")
        file = where.rsplit(":", 1)[0]
        key = f"`{name}` ({short_path(file)})"
        own[key] = own.get(key, 0) + int(count)
        total += int(count)
    lines = [
        f"Profile of one Kafka worker at max load (py-spy --gil, {total} samples): top self time",
        "",
        "| function | self % |",
        "|---|---:|",
    ]
    for key, samples in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"| {key} | {100 * samples / max(total, 1):.1f} |")
    return "\n".join(lines)


def short_path(file: str) -> str:
    for marker in ("site-packages/", "/lib/python3", str(REPO) + "/"):
        if marker in file:
            return file.split(marker, 1)[1]
    return file


# ---------------------------------------------------------------- cleanup and main


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


def report_rss(ctx: Context) -> None:
    peak_name, peak = max(ctx.rss_notes.items(), key=lambda kv: kv[1])
    idle = {k: v for k, v in ctx.rss_notes.items() if ": idle," in k}
    idle_text = ", ".join(f"{k.split(':')[0]} {v:.0f}" for k, v in idle.items() if "worker 1" in k)
    ctx.report.add("RSS per worker, idle after start (MiB)", idle_text)
    ctx.report.add(
        "RSS per worker, peak over every run (VmRSS sampled every 50 ms)",
        f"{peak:.0f} MiB ({peak_name.replace(', peak under load', '')})",
        f"≤ {RSS_MAX_MIB:g} MiB",
        met(peak <= RSS_MAX_MIB),
    )


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs ({model}), Python {sys.version.split()[0]}"


def measure_all(ctx: Context, only: str | None) -> None:
    measure_floor(ctx)
    ctx.kafka_max = measure_sink(ctx, "kafka")
    if only != "kafka":
        measure_sink(ctx, "rabbitmq")
        measure_sink(ctx, "file")
        two = measure_sink(ctx, "kafka", workers=2)
        scale = two / ctx.kafka_max
        ctx.report.notes.insert(
            0,
            f"Two workers (BRIDGE_REUSE_PORT) take {scale:.2f}x what one "
            "worker takes into Kafka on this machine.",
        )
    if only is None:
        measure_shim(ctx)
        measure_spool(ctx)
    report_rss(ctx)


def run(args: argparse.Namespace) -> Report:
    plan = Plan.choose(args.quick)
    report = Report()
    found = start_brokers()
    scratch = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    lab = Lab(scratch, found, args.source)
    try:
        with RssSampler() as rss:
            ctx = Context(
                plan, lab, Load(scratch, request_pairs()), rss, report, profile=not args.no_profile
            )
            measure_all(ctx, args.only)
    finally:
        lab.stop_all()
        delete_broker_objects(lab)
        if found.started_here and not args.keep_brokers:
            brokers("stop")
        shutil.rmtree(scratch, ignore_errors=True)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 s per point, 20,000 spooled")
    parser.add_argument("--no-profile", action="store_true", help="skip the py-spy profile")
    parser.add_argument(
        "--source",
        type=Path,
        help="run the bridge package from this checkout (to compare a change)",
    )
    parser.add_argument(
        "--only",
        choices=["sinks", "kafka"],
        help="only the sink measurements, or only one Kafka worker",
    )
    parser.add_argument(
        "--keep-brokers",
        action="store_true",
        help="leave brokers this run started running at the end",
    )
    args = parser.parse_args()
    started = datetime.now(UTC)
    report = run(args)
    text = (
        f"# Ingest benchmark, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"`bench/ingest.py{' --quick' if args.quick else ''}` on {machine()}; "
        f"load from wrk ({WRK_THREADS} thread) and bench/openloop.py, both on 127.0.0.1; "
        "brokers, bridge workers and load generators share the machine.\n\n"
        f"{report.markdown()}\n\n" + "\n\n".join(report.notes) + "\n"
    )
    results = REPO / "bench" / "results"
    results.mkdir(exist_ok=True)
    out = results / f"{started:%Y-%m-%d}{'-quick' if args.quick else ''}.md"
    out.write_text(text, encoding="utf-8")
    print("\n" + text + f"\n(written to {out.relative_to(REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
