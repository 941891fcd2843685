"""``serve --workers N``: N bridge processes on one port, started and stopped together.

One event loop saturates one core; more cores take more workers. Each worker is a plain
``serve --workers 1`` child with ``reuse_port`` (the kernel spreads connections over them) and
its own data directory, so spools and event files are never shared: worker 0 uses ``data_dir``
itself (an existing spool stays where it is) and is the only one that takes in the hook spool
and listens on the admin port and the Unix socket; worker N uses ``data_dir/workers/N``.

The parent only supervises: it forwards SIGTERM and SIGINT to every worker, stops the others
when one exits on its own, and exits with the worst code of them. It also makes a private
directory for the workers' admin sockets, through which each worker's /metrics and /readyz
answer for all of them (see bridge.workergroup).
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from bridge.settings import Settings

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1


def usable_cpus(cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """The CPUs this process may run on, capped by its cgroup's CPU quota; at least 1.

    A quota of 1.5 CPUs counts as 2: a worker cannot use half a core less. cgroup v2 keeps the
    quota in ``cpu.max`` ("max" or "QUOTA PERIOD"); v1 in ``cpu/cpu.cfs_quota_us`` (-1: none)
    and ``cpu/cpu.cfs_period_us``. Containers see their own cgroup at this path.
    """
    cpus = len(os.sched_getaffinity(0))
    quota = _cpu_quota(cgroup)
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def _cpu_quota(cgroup: Path) -> float | None:
    """The cgroup's CPU limit in CPUs, or None without one (or none that can be read)."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        pass
    try:
        quota = (cgroup / "cpu" / "cpu.cfs_quota_us").read_text().strip()
        period = (cgroup / "cpu" / "cpu.cfs_period_us").read_text().strip()
        return None if int(quota) <= 0 else int(quota) / int(period)
    except (OSError, ValueError, ZeroDivisionError):
        return None


def worker_count(settings: Settings) -> int:
    """The workers ``serve`` runs: ``workers``, or for 0 (the default) one per usable CPU.

    Port 0 asks the kernel for any free port, which each worker would get on its own: there,
    the default is one worker (check_can_serve refuses more).
    """
    if settings.workers:
        return settings.workers
    return usable_cpus() if settings.port != 0 else 1


def worker_settings(settings: Settings, index: int) -> Settings:
    """What worker ``index`` of a ``serve --workers N`` runs with: its own data directory, and
    for all but worker 0 no admin port, no Unix socket and a hook spool no shim writes to."""
    settings = settings.model_copy(update={"workers": 1, "reuse_port": True})
    if index == 0:
        return settings
    data_dir = settings.data_dir / "workers" / str(index)
    file_dir = settings.file_dir / "workers" / str(index) if settings.file_dir else None
    return settings.model_copy(
        update={
            "data_dir": data_dir,
            "file_dir": file_dir,
            "hook_spool_dir": data_dir / "hook-spool",
            "admin_port": None,
            "uds": None,
        }
    )


def worker_event_dirs(settings: Settings) -> list[Path]:
    """The file sink directories of every worker that ever ran on this data directory:
    worker 0's own, then ``workers/N`` in order (what ``tail`` reads)."""
    extra = settings.file_dir if settings.file_dir is not None else settings.data_dir
    found = sorted(
        (p for p in (extra / "workers").glob("*") if p.name.isdigit()), key=lambda p: int(p.name)
    )
    events = [p if settings.file_dir is not None else p / "events" for p in found]
    return [settings.events_dir, *events]


def spools_under(data_dir: Path) -> list[Path]:
    """Every bridge spool in a data directory: its own, then those of ``workers/N`` in order
    (including workers a smaller ``--workers`` no longer runs)."""
    found = [data_dir / "spool.sqlite3"] if (data_dir / "spool.sqlite3").is_file() else []
    workers = (p for p in (data_dir / "workers").glob("*/spool.sqlite3") if p.parent.name.isdigit())
    return found + sorted(workers, key=lambda p: int(p.parent.name))


def workers_needed(settings: Settings, workers: int) -> int:
    """``workers``, or more when the spool of a worker numbered ``workers`` or higher (left by a
    run with more workers, or on a machine with more CPUs) still holds events: only a worker of
    that number replays them, so it is started too. Empty ones are left alone."""
    from bridge.durable_spool import holds_events  # serve's start-up loads it anyway

    own = settings.data_dir / "spool.sqlite3"
    holding = [
        p
        for p in spools_under(settings.data_dir)
        if p != own and int(p.parent.name) >= workers and holds_events(p)
    ]
    if not holding:
        return workers
    needed = 1 + max(int(p.parent.name) for p in holding)
    log.warning(
        "starting %d workers rather than %d: %s still hold(s) events that only the worker of "
        "that number replays; once they are empty, the bridge starts %d again",
        needed,
        workers,
        ", ".join(map(str, holding)),
        workers,
    )
    return needed


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM when the parent dies, even by SIGKILL."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def supervise(settings: Settings, workers: int, serve_argv: list[str]) -> int:
    """Runs ``workers`` children until they have all exited; returns the worst exit code.

    ``serve_argv``: the parent's ``serve`` arguments; each child gets them and its index.
    """
    # Private to this user: a worker's admin socket answers /readyz and /metrics for no token.
    sockets = Path(tempfile.mkdtemp(prefix="login-audit-bridge-"))
    command = [
        sys.executable,
        "-m",
        "bridge",
        *serve_argv,
        "--workers",
        "1",
        "--worker-count",
        str(workers),
        "--worker-sockets",
        str(sockets),
    ]
    children: dict[int, subprocess.Popen[bytes]] = {}
    stopping = False

    def forward(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        for child in children.values():
            if child.poll() is None:
                child.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for index in range(workers):
            child = subprocess.Popen(  # noqa: S603 - this interpreter, the parent's arguments
                [*command, "--worker-index", str(index)], preexec_fn=_die_with_parent
            )
            children[child.pid] = child
        log.info(
            "serving with %d workers (pids %s) on port %d",
            workers,
            ", ".join(map(str, children)),
            settings.port,
        )
        codes: list[int] = []
        while len(codes) < len(children):
            pid, status = os.wait()
            if pid not in children:
                continue
            code = os.waitstatus_to_exitcode(status)
            if stopping and code in (-signal.SIGTERM, -signal.SIGINT):
                # Ended by the signal we forwarded before it had set up its own handlers, so
                # before it took any request: a clean stop, not a failure.
                code = 0
            children[pid].returncode = code
            codes.append(code)
            if not stopping:
                log.error("worker %d exited with %d: stopping the others", pid, code)
                forward(signal.SIGTERM, None)
    finally:
        for sig, handler in previous.items():
            # Stopped: a late SIGTERM must not end the exit as "killed" (see bridge.service).
            late = stopping and sig == signal.SIGTERM
            signal.signal(sig, signal.SIG_IGN if late else handler)
        shutil.rmtree(sockets, ignore_errors=True)
    return max(1 if code < 0 else code for code in codes)
