"""Measures how long a MediaWiki login takes with the bridge up, slow and down, per web server."""

from __future__ import annotations

import argparse
import http.server
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parent.parent
# The process helpers shared with the tests: tests/support.py.
sys.path.insert(0, str(REPO / "tests"))
from support import free_port, wait_until_healthy  # noqa: E402

SCRIPT = REPO / "scripts" / "mediawiki"
BRIDGE = Path(sys.executable).parent / "login-audit-bridge"
TOKEN = "bench-token"  # noqa: S105 - a throwaway token for a loopback-only bridge
SLOW_SECONDS = 2.0


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """A bridge stand-in that takes SLOW_SECONDS to answer 200: what a stalled sink looks like."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", "0")))
        time.sleep(SLOW_SECONDS)
        try:
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"{}")
        except OSError:
            pass  # the extension gave up at its timeout and closed the connection

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def slow_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), SlowHandler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def real_bridge(data_dir: Path) -> Iterator[str]:
    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "BRIDGE_PORT": str(port),
        "BRIDGE_DATA_DIR": str(data_dir),
        "BRIDGE_WORKERS": "1",
        "BRIDGE_AUTH_TOKENS": TOKEN,
        "BRIDGE_LOG_LEVEL": "warning",
    }
    with (data_dir / "bridge.log").open("ab") as log:
        process = subprocess.Popen([str(BRIDGE), "serve"], env=env, stdout=log, stderr=log)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_healthy(url, process, 20)
        yield url
    finally:
        process.terminate()
        process.wait(30)


def script(env: dict[str, str], *args: str) -> str:
    done = subprocess.run([str(SCRIPT), *args], env=env, capture_output=True, text=True, check=True)
    return done.stdout


def login_seconds(base_url: str, password: str, count: int) -> list[float]:
    """Round trips of `action=clientlogin` alone (the token fetch is not counted)."""
    timings = []
    for _ in range(count):
        with httpx.Client(base_url=base_url, timeout=30.0) as client:
            token = client.get(
                "/api.php",
                params={
                    "action": "query",
                    "meta": "tokens",
                    "type": "login",
                    "format": "json",
                },
            ).json()["query"]["tokens"]["logintoken"]
            started = time.perf_counter()
            reply = client.post(
                "/api.php",
                data={
                    "action": "clientlogin",
                    "username": "Alice",
                    "password": password,
                    "logintoken": token,
                    "loginreturnurl": f"{base_url}/",
                    "format": "json",
                },
            )
            timings.append(time.perf_counter() - started)
            assert reply.json()["clientlogin"]["status"] == "PASS", reply.text
    return timings


def row(server: str, mode: str, timings: list[float]) -> str:
    ms = sorted(t * 1000 for t in timings)
    p90 = ms[min(len(ms) - 1, round(0.9 * (len(ms) - 1)))]
    return (
        f"| {server} | {mode} | {len(ms)} | {statistics.median(ms):.0f} | {p90:.0f} "
        f"| {ms[-1]:.0f} |"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=20, help="logins per cell")
    parser.add_argument("--timeout", type=float, default=1.0, help="LoginAuditBridgeTimeout")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mw-bench-") as tmp:
        work = Path(tmp)
        env = {
            **os.environ,
            "LOGIN_AUDIT_RUN": str(work / "run"),
            "MW_PORT": str(free_port()),
            "MW_FPM_PORT": str(free_port()),
        }
        wiki = dict(line.split("=", 1) for line in script(env, "start").splitlines() if "=" in line)
        servers = {"php -S": wiki["MW_URL"], "nginx + php-fpm": wiki["MW_FPM_URL"]}
        lines = [
            f"Login round trip (`action=clientlogin`), ms; LoginAuditBridgeTimeout = "
            f"{args.timeout} s; slow bridge answers after {SLOW_SECONDS} s.",
            "",
            "| server | bridge | logins | median | p90 | max |",
            "|---|---|---|---|---|---|",
        ]
        try:
            (work / "bridge").mkdir()
            with real_bridge(work / "bridge") as up, slow_server() as slow:
                modes = {
                    "off (no URL: the baseline)": "",
                    "up": f"{up}/v1/hooks/mediawiki",
                    "slow": f"{slow}/v1/hooks/mediawiki",
                    "down (port closed)": f"http://127.0.0.1:{free_port()}/v1/hooks/mediawiki",
                }
                for mode, url in modes.items():
                    script(env, "bridge", url, TOKEN, str(args.timeout))
                    for server, base in servers.items():
                        login_seconds(base, wiki["MW_ADMIN_PASSWORD"], 3)  # warm caches
                        timings = login_seconds(base, wiki["MW_ADMIN_PASSWORD"], args.count)
                        lines.append(row(server, mode, timings))
        finally:
            script(env, "stop")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
