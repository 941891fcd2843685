"""What it costs the bridge that every hook connects anew, on plain HTTP and on HTTPS.

SFTPGo's HTTP post_login_hook builds a new client for each call and closes its connections when
the call returns (``httpclient.RetryablePost``), the shim is a process per login, and MediaWiki
posts from the login's own PHP request: each event arrives on a new connection, and with HTTPS
each is a full TLS handshake (a new client has no session to resume). ``ingest.py`` measures at
saturation over kept-alive connections, as issue 11 asks; this measures one bridge worker into
Kafka at a fixed rate, the way operators size it, with and without a connection per event, on
plain HTTP and on HTTPS with an RSA-2048 and an ECDSA P-256 server key.

    .venv/bin/python bench/connections.py [--rate 500] [--seconds 10] [--rounds 3]
        [--scheme http|rsa|ecdsa ...] [--baseline PATH]

``--baseline PATH`` runs each server twice, on this checkout's bridge and on the other's, in the
same rounds.

Each round runs every (server, connection) pair once, in a fresh random order, with vegeta at
the fixed rate (``-keepalive=false`` for a connection per event: vegeta then asks
``Connection: close`` and opens a new connection for every request). CPU is the bridge
process's user and system time over its 2xx answers; latency is vegeta's, from the send to the
whole answer. Before a run with a connection per event, it waits until fewer than 10,000
loopback sockets are in TIME_WAIT, so that the client never runs out of ports. The report goes
to ``bench/results/<date>-connections[-label].md``. Nothing here asserts a speed.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import checkouts
import ingest
import trustme
from ingest import Lab, Variant, spread, table

TIME_WAIT_MAX = 10_000


@dataclass(frozen=True)
class Scheme:
    name: str
    key: trustme.KeyType | None  # None: plain HTTP
    source: Path | None = None  # whose bridge package: this checkout's when None (--baseline)


SCHEMES = (
    Scheme("HTTP", None),
    Scheme("HTTPS, RSA-2048 key", trustme.KeyType.RSA),
    Scheme("HTTPS, ECDSA P-256 key", trustme.KeyType.ECDSA),
)


def scheme_id(scheme: Scheme) -> str:
    return scheme.key.name.lower() if scheme.key is not None else "http"


@dataclass
class Bridge:
    scheme: Scheme
    server: ingest.Server


@dataclass(frozen=True)
class Run:
    ok: int
    user_us: float  # per 2xx answer
    sys_us: float
    p50_ms: float
    p99_ms: float


def time_wait_sockets() -> int:
    count = 0
    for table_path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table_path).read_text().splitlines()[1:]
        except OSError:
            continue
        count += sum(1 for line in lines if line.split()[3] == "06")
    return count


def start_bridge(lab: Lab, scheme: Scheme, certs: Path) -> Bridge:
    settings = {}
    if scheme.key is not None:
        ca = trustme.CA(key_type=scheme.key)
        leaf = ca.issue_cert("127.0.0.1", key_type=scheme.key)
        stem = f"{scheme_id(scheme)}-{'baseline' if scheme.source else 'this'}"
        cert, key = certs / f"{stem}.crt", certs / f"{stem}.key"
        leaf.cert_chain_pems[0].write_to_path(str(cert))
        leaf.private_key_pem.write_to_path(str(key))
        settings = {"BRIDGE_TLS_CERTFILE": str(cert), "BRIDGE_TLS_KEYFILE": str(key)}
    role = f"{scheme_id(scheme)}{'-baseline' if scheme.source else ''}"
    variant = Variant(scheme.name, scheme.source, settings=settings)
    server = lab.bridge(variant, "kafka", role=role)
    return Bridge(scheme, server)


def attack(
    vegeta: Path, bridge: Bridge, scratch: Path, rate: int, seconds: float, keep_alive: bool
) -> Run:
    pid = bridge.server.processes[0].pid
    targets = scratch / f"targets-{pid}.jsonl"
    if not targets.exists():
        ingest.write_vegeta_targets(targets, bridge.server.url, ingest.request_pairs())
    if not keep_alive:
        deadline = time.monotonic() + 120
        while time_wait_sockets() > TIME_WAIT_MAX and time.monotonic() < deadline:
            time.sleep(1)
    results = scratch / "results.bin"
    user0, sys0 = ingest.proc_user_sys(pid)
    subprocess.run(
        [
            str(vegeta),
            "attack",
            "-insecure",  # the certificates are this run's own, from a throwaway CA
            "-format=json",
            f"-targets={targets}",
            f"-rate={rate}/1s",
            f"-duration={seconds:g}s",
            "-timeout=10s",
            "-http2=false",
            "-max-body=0",
            f"-keepalive={'true' if keep_alive else 'false'}",
            f"-output={results}",
        ],
        check=True,
        capture_output=True,
    )
    user1, sys1 = ingest.proc_user_sys(pid)
    report = json.loads(
        subprocess.run(
            [str(vegeta), "report", "-type=json", str(results)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    ok = sum(int(n) for code, n in (report.get("status_codes") or {}).items() if code[0] == "2")
    per = 1e6 / max(ok, 1)
    return Run(
        ok,
        (user1 - user0) * per,
        (sys1 - sys0) * per,
        report["latencies"]["50th"] / 1e6,
        report["latencies"]["99th"] / 1e6,
    )


def report(
    schemes: list[Scheme], runs: dict[tuple[str, bool], list[Run]], rate: int, seconds: float
) -> str:
    rows = []
    for scheme in schemes:
        kept = runs[(scheme.name, True)]
        for keep_alive in (True, False):
            done = runs[(scheme.name, keep_alive)]
            total = [r.user_us + r.sys_us for r in done]
            step = [
                (r.user_us + r.sys_us) - (k.user_us + k.sys_us)
                for r, k in zip(done, kept, strict=True)
            ]
            rows.append(
                [
                    scheme.name,
                    "kept alive" if keep_alive else "new per event",
                    spread(total),
                    spread([r.user_us for r in done]),
                    spread([r.sys_us for r in done]),
                    "" if keep_alive else spread(step, "+,.0f"),
                    spread([r.p50_ms for r in done], ".1f"),
                    spread([r.p99_ms for r in done], ".1f"),
                    f"{sum(rate * seconds - r.ok for r in done):,.0f}",
                ]
            )
    return table(
        [
            "server",
            "connection",
            "µs CPU/event",
            "user",
            "system",
            "per connection",
            "p50 ms",
            "p99 ms",
            "not 2xx",
        ],
        rows,
        "ll" + "r" * 7,
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=int, default=500, help="events/s (default 500)")
    parser.add_argument("--seconds", type=float, default=10.0, help="per run (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    parser.add_argument(
        "--brokers",
        choices=["own", "shared"],
        default="own",
        help="the bench's own Kafka (default) or the shared test brokers (never stopped)",
    )
    parser.add_argument(
        "--scheme",
        choices=[scheme_id(scheme) for scheme in SCHEMES],
        action="append",
        help="only these servers (repeatable; default all three)",
    )
    parser.add_argument(
        "--baseline", type=Path, help="also each server on another checkout's bridge package"
    )
    parser.add_argument("--seed", type=int, help="the rounds' order (default random, printed)")
    parser.add_argument("--label", help="added to the results file name")
    args = parser.parse_args()
    args.source = None
    checkouts.resolve_checkouts(parser, args)
    chosen = [s for s in SCHEMES if args.scheme is None or scheme_id(s) in args.scheme]
    schemes = list(chosen)
    if args.baseline is not None:
        schemes = [Scheme(f"this checkout, {s.name}", s.key) for s in chosen] + [
            Scheme(f"baseline, {s.name}", s.key, args.baseline) for s in chosen
        ]
    if args.rate * args.seconds > TIME_WAIT_MAX:
        parser.error(
            f"--rate x --seconds over {TIME_WAIT_MAX:,}: a run with a connection per event would "
            "leave the client short of loopback ports"
        )
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    started = datetime.now(UTC)
    vegeta = ingest.ensure_vegeta()
    runs: dict[tuple[str, bool], list[Run]] = {
        (s.name, k): [] for s in schemes for k in (True, False)
    }
    with ingest.lab_and_brokers(own=args.brokers == "own", prefix="bench-connections-") as lab:
        scratch = lab.scratch
        ingest.create_topics(lab, 1 << 30)
        bridges = [start_bridge(lab, scheme, scratch) for scheme in schemes]
        for bridge in bridges:  # warm-up
            attack(vegeta, bridge, scratch, args.rate, 2, keep_alive=True)
        shuffle = random.Random(seed)
        for number in range(1, args.rounds + 1):
            order = [(b, k) for b in bridges for k in (True, False)]
            shuffle.shuffle(order)
            print(f"round {number}/{args.rounds}", flush=True)
            for bridge, keep_alive in order:
                run = attack(vegeta, bridge, scratch, args.rate, args.seconds, keep_alive)
                runs[(bridge.scheme.name, keep_alive)].append(run)
                how = "kept alive" if keep_alive else "new per event"
                print(
                    f"  {bridge.scheme.name}, {how}: {run.user_us + run.sys_us:,.0f} µs "
                    f"CPU/event (user {run.user_us:,.0f}, system {run.sys_us:,.0f}), "
                    f"p50 {run.p50_ms:.1f} ms, p99 {run.p99_ms:.1f} ms, {run.ok:,} 2xx",
                    flush=True,
                )
    text = (
        f"# Connections and TLS, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"{ingest.how_run('connections.py')}, round order seed "
        f"{seed}. One bridge worker per server into Kafka (acks=all), vegeta at {args.rate}/s "
        f"for {args.seconds:g} s per run, {args.rounds} rounds; median [range] over rounds. "
        "*per connection*: what the run with a new connection per event cost per event over "
        "the same server's kept-alive run of the same round.\n\n"
        + f"- this checkout: {checkouts.describe(None)}\n"
        + (f"- baseline: {checkouts.describe(args.baseline)}\n" if args.baseline else "")
        + "\n"
        + report(schemes, runs, args.rate, args.seconds)
        + "\n"
    )
    ingest.write_results(ingest.results_stem(started, "connections", args.label), text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
