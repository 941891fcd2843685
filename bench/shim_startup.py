"""Measures what one login costs the host in the hook shim, against the bare interpreter.

SFTPGo spawns the hook once per login with a cleared environment, so under a brute-force attack
its start-up cost is paid thousands of times a second. This runs, round-robin in one process and
one environment, ``python -c pass``, ``python -I -S -c pass`` and the installed
``login-audit-hook`` (bridge up, and bridge down so it spools), in SFTPGo's mode and in
pam_exec's (``--pam failure`` with the PAM_* variables of a failed sshd password), and prints a
Markdown table of per-run CPU time (user + sys of the child, from RUSAGE_CHILDREN) and wall time.

    python bench/shim_startup.py [--runs N] [--importtime] [--vector FILE] [--source DIR]

The login comes from the first program-mode SFTPGo vector in ``tests/data/sftpgo/``. ``--source``
puts another checkout first on ``PYTHONPATH`` of every command (the bare interpreter too, so the
ratio stays fair) and of the bridge, to measure that checkout's hook with this virtualenv.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The process helpers shared with the tests: tests/support.py.
sys.path.insert(0, str(REPO / "tests"))
from support import free_port, wait_until_healthy  # noqa: E402

VECTORS = REPO / "tests" / "data" / "sftpgo"
PYTHON = sys.executable  # the venv's interpreter: the one the hook's shebang names
BIN = Path(PYTHON).parent
HOOK = BIN / "login-audit-hook"
TOKEN = "bench-token"  # noqa: S105 - a throwaway token for a loopback-only bridge
AIM = 1.3  # the aim: the hook costs at most 1.3x the bare interpreter
# What pam_exec passes for a failed sshd password (pam_exec(8)); no PATH, as under pam_exec.
PAM_LOGIN = {
    "PAM_TYPE": "auth",
    "PAM_SERVICE": "sshd",
    "PAM_USER": "alice",
    "PAM_RHOST": "203.0.113.10",
    "PAM_TTY": "ssh",
}
WARM_UP_ROUNDS = 5


@dataclass
class Command:
    name: str
    argv: list[str]
    env: dict[str, str]
    cpu: list[float] = field(default_factory=list)
    wall: list[float] = field(default_factory=list)

    def run_once(self) -> None:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        started = time.perf_counter()
        code = subprocess.call(
            self.argv,
            env=self.env,
            cwd="/",
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wall = time.perf_counter() - started
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if code != 0:
            raise SystemExit(f"{self.name} exited with {code}")
        self.cpu.append((after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime))
        self.wall.append(wall)


def vector_env(path: Path | None) -> tuple[str, dict[str, str]]:
    """The complete environment SFTPGo gives the hook for one login, and where it came from."""
    candidates = [path] if path else sorted(VECTORS.glob("*_program_*.json"))
    for candidate in candidates:
        if candidate.is_file():
            vector = json.loads(candidate.read_text(encoding="utf-8"))
            return candidate.name, {k: str(v) for k, v in vector["env"].items()}
    raise SystemExit(f"no program-mode SFTPGo vector: {path or VECTORS}")


@contextmanager
def running_bridge(data_dir: Path, extra: dict[str, str]) -> Iterator[str]:
    """A real bridge on loopback with the file sink; stopped by its PID afterwards."""
    port = free_port()
    env = {
        **extra,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_DATA_DIR": str(data_dir),
        "BRIDGE_WORKERS": "1",
        "BRIDGE_AUTH_TOKENS": TOKEN,
        "BRIDGE_LOG_LEVEL": "warning",
    }
    log = (data_dir / "bridge.log").open("wb")
    process = subprocess.Popen(
        [str(BIN / "login-audit-bridge"), "serve"], env=env, stdout=log, stderr=log, cwd=data_dir
    )
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_until_healthy(url, process, 30)
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(f"{exc}; see its log") from None
        yield url
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
        log.close()


def commands(
    login: dict[str, str], bridge_url: str, spool: Path, scratch: Path, extra: dict[str, str]
) -> list[Command]:
    """Every command gets the same environment, apart from the hook's target address."""
    settings = {
        **extra,
        "LOGIN_AUDIT_HOOK_TOKEN": TOKEN,
        "LOGIN_AUDIT_HOOK_SPOOL_DIR": str(spool),
        "LOGIN_AUDIT_HOOK_CONFIG": str(scratch / "no-hook.env"),
    }
    up = {**login, **settings, "LOGIN_AUDIT_HOOK_URL": bridge_url}
    down = {**login, **settings, "LOGIN_AUDIT_HOOK_URL": f"http://127.0.0.1:{free_port()}"}
    pam_up = {**PAM_LOGIN, **settings, "LOGIN_AUDIT_HOOK_URL": bridge_url}
    pam_down = {**PAM_LOGIN, **settings, "LOGIN_AUDIT_HOOK_URL": down["LOGIN_AUDIT_HOOK_URL"]}
    pam = [str(HOOK), "--pam", "failure"]
    return [
        Command("python -c pass", [PYTHON, "-c", "pass"], up),
        Command("python -I -S -c pass", [PYTHON, "-I", "-S", "-c", "pass"], up),
        Command("login-audit-hook, bridge up", [str(HOOK)], up),
        Command("login-audit-hook, bridge down (spools)", [str(HOOK)], down),
        Command("login-audit-hook --pam, bridge up", pam, pam_up),
        Command("login-audit-hook --pam, bridge down (spools)", pam, pam_down),
    ]


def measure(cmds: list[Command], runs: int) -> None:
    """Round-robin in a fresh random order each round, so drift and ordering hit all alike."""
    order = list(cmds)
    for _ in range(WARM_UP_ROUNDS):
        for command in order:
            command.run_once()
    for command in cmds:
        command.cpu.clear()
        command.wall.clear()
    for _ in range(runs):
        random.shuffle(order)
        for command in order:
            command.run_once()


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[8]


def table(cmds: list[Command]) -> str:
    base_cpu = statistics.median(cmds[0].cpu)
    base_wall = statistics.median(cmds[0].wall)
    lines = [
        "| command | CPU median ms | CPU p90 ms | wall median ms | wall p90 ms "
        "| CPU ratio | wall ratio |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for c in cmds:
        cpu, wall = statistics.median(c.cpu), statistics.median(c.wall)
        lines.append(
            f"| `{c.name}` | {cpu * 1e3:.2f} | {p90(c.cpu) * 1e3:.2f} | {wall * 1e3:.2f} "
            f"| {p90(c.wall) * 1e3:.2f} | {cpu / base_cpu:.2f}x | {wall / base_wall:.2f}x |"
        )
    return "\n".join(lines)


def verdict(cmds: list[Command]) -> str:
    base = statistics.median(cmds[0].cpu)
    worst = max(cmds[2:], key=lambda c: statistics.median(c.cpu))
    ratio = statistics.median(worst.cpu) / base
    outcome = "met" if ratio <= AIM else "NOT met"
    return (
        f"Aim (hook CPU median at most {AIM}x `python -c pass`): {outcome}; "
        f"worst is `{worst.name}` at {ratio:.2f}x."
    )


def importtime(command: Command, top: int = 12) -> str:
    """The top-level imports the command adds to `python -c pass`, slowest first."""
    baseline = {name for name, _, _ in import_lines(["-c", "pass"], command.env)}
    added = [
        (cumulative, name)
        for name, cumulative, nested in import_lines(command.argv, command.env)
        if not nested and name not in baseline
    ]
    rows = [f"  {us / 1000:7.2f} ms cumulative  {name}" for us, name in sorted(added)[::-1][:top]]
    return f"`{command.name}` imports beyond `python -c pass` (-X importtime):\n" + "\n".join(rows)


def import_lines(argv: list[str], env: dict[str, str]) -> list[tuple[str, int, bool]]:
    """(module, cumulative microseconds, imported by another module) for each import."""
    completed = subprocess.run(
        [PYTHON, "-X", "importtime", *argv],
        env=env,
        cwd="/",
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        check=False,
    )
    found = []
    for line in completed.stderr.splitlines():
        parts = line.removeprefix("import time:").split("|")
        if len(parts) == 3 and parts[1].strip().isdigit():
            # -X importtime indents a module by two spaces per level of nesting.
            found.append((parts[2].strip(), int(parts[1]), parts[2].startswith("   ")))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=200, help="rounds to measure (default 200)")
    parser.add_argument("--vector", type=Path, help="an SFTPGo program-mode vector file")
    parser.add_argument(
        "--importtime",
        action="store_true",
        help="also list what the hook imports beyond the bare interpreter",
    )
    parser.add_argument(
        "--source", type=Path, help="another checkout's bridge package, first on PYTHONPATH"
    )
    args = parser.parse_args()
    origin, login = vector_env(args.vector)
    extra = {"PYTHONPATH": str(args.source.resolve())} if args.source else {}
    scratch = Path(tempfile.mkdtemp(prefix="shim-bench-"))
    try:
        (scratch / "bridge").mkdir()
        spool = scratch / "spool"
        with running_bridge(scratch / "bridge", extra) as url:
            cmds = commands(login, url, spool, scratch, extra)
            measure(cmds, args.runs)
            # Only the bridge-down command may spool: anything more means the bridge failed.
            spooled = len(list(spool.glob("*.json")))
            details = [importtime(c) for c in cmds[2:]] if args.importtime else []
        print(
            f"{args.runs} rounds, round-robin, {WARM_UP_ROUNDS} warm-up rounds; login from "
            f"{origin}; interpreter {PYTHON} ({sys.version.split()[0]}); "
            f"{os.cpu_count()} CPUs"
            + (f"; bridge package from {args.source}" if args.source else "")
            + "\n"
        )
        print(table(cmds))
        print(f"\n{verdict(cmds)}")
        expected = 2 * (args.runs + WARM_UP_ROUNDS)  # SFTPGo's and PAM's
        print(f"Spooled: {spooled} files, expected {expected} (bridge-down runs only).")
        if spooled != expected:
            print("WARNING: the bridge-up runs did not all reach the bridge; see its log.")
        for text in details:
            print(f"\n{text}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
