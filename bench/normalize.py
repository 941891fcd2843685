"""Measures the CPU time of building one event record per source, in process, before and after.

What the HTTP routes and the hook spool call for each source, on the inputs the tests use
(``tests/data/``), without a server or a sink: bytes in, :class:`bridge.event.LoginEvent` out.

- ``sftpgo-http``: ``Normalizer.sftpgo_from_http(query, body)`` for the HTTP-mode SFTPGo vectors,
  as SFTPGo's own HTTP hook sends them (no event id header);
- ``sftpgo-program``: the same call for the program-mode vectors as the hook shim sends them
  (the facts of the environment as a query, the user JSON as the body, the shim's event id);
- ``mediawiki``: ``Normalizer.mediawiki(parse_mediawiki(body))`` for every observed MediaWiki
  login, as the extension posts it (``tests/conftest.py`` ``mediawiki_payload``);
- ``pam``: ``Normalizer.pam_from_http(body)`` for a few logins as ``login-audit-hook --pam``
  sends them.

Each checkout runs in its own worker process (``--baseline DIR`` puts that checkout's bridge
package first on ``PYTHONPATH``, as ``bench/ingest.py`` does), and the parent interleaves the
workers' samples in a fresh random order each round, so machine noise hits both alike. A sample
is the worker thread's CPU time over a fixed number of events. The workers also build every
input once with a fixed clock and fixed ids and report a digest of the records as JSON (key
order included): "same records" says whether both checkouts build exactly the same events.

    .venv/bin/python bench/normalize.py [--baseline DIR] [--source DIR] [--rounds N]
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import checkouts

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
SOURCES = ("sftpgo-http", "sftpgo-program", "mediawiki", "pam")
EVENTS_PER_SAMPLE = 2000  # ~15 ms of CPU per sample at today's cost: well above clock noise
EVENT_ID = "5b7e0c5e-8d3a-4a51-9f0e-0c7a2b1d9e11"  # what the shim or the extension fixed
FIXED_CLOCK_MS = 1_795_330_677_813
# What `login-audit-hook --pam RESULT` sends (bridge/pam.py): a remote sshd failure, a remote
# success from a host name, a local sudo failure with its requesting user, an IPv6 client.
PAM_LOGINS = (
    ("failure", "sshd", "203.0.113.10", "", "ssh"),
    ("success", "sshd", "client.example.org", "", "ssh"),
    ("failure", "sudo", "", "alice", "/dev/pts/3"),
    ("success", "sshd", "2001:db8::7", "", "ssh"),
)


# ---------------------------------------------------------------- the worker (one checkout)


def inputs() -> dict[str, list[Callable[[Any], object]]]:
    """Per source, one call per input: each takes a Normalizer and builds one event."""
    sys.path.insert(0, str(REPO / "tests"))
    from bridge.mediawiki import parse_mediawiki

    from conftest import (
        mediawiki_observations,
        mediawiki_payload,
        sftpgo_vectors,
        vector_body,
        vector_query,
    )

    def sftpgo(vector: dict[str, Any], event_id: str | None) -> Callable[[Any], object]:
        query, body = vector_query(vector), vector_body(vector)
        return lambda n: n.sftpgo_from_http(query, body, event_id=event_id)

    def mediawiki(observation: dict[str, Any]) -> Callable[[Any], object]:
        body = json.dumps(mediawiki_payload(observation)).encode()
        return lambda n: n.mediawiki(parse_mediawiki(body), event_id=EVENT_ID)

    def pam(result: str, service: str, rhost: str, ruser: str, tty: str) -> Callable[[Any], object]:
        facts = {
            "format": "login-audit-bridge.pam.v1",
            "result": result,
            "time": str(FIXED_CLOCK_MS),
            "host": "web-1",
            "type": "auth",
            "service": service,
            "user": "root" if ruser else "alice",
            "rhost": rhost,
            "ruser": ruser,
            "tty": tty,
        }
        body = json.dumps(facts).encode()
        return lambda n: n.pam_from_http(body, event_id=EVENT_ID)

    vectors = sftpgo_vectors()
    return {
        "sftpgo-http": [sftpgo(v, None) for v in vectors if v["mode"] == "http"],
        "sftpgo-program": [sftpgo(v, EVENT_ID) for v in vectors if v["mode"] == "program"],
        "mediawiki": [mediawiki(o) for o in mediawiki_observations()],
        "pam": [pam(*login) for login in PAM_LOGINS],
    }


def digest(calls: list[Callable[[Any], object]]) -> str:
    """The records of every input, built with a fixed clock and ids, as one hash."""
    from bridge.normalize import Normalizer

    fixed = Normalizer(clock=lambda: FIXED_CLOCK_MS, new_id=lambda: EVENT_ID)
    text = "\n".join(json.dumps(call(fixed).record) for call in calls)  # type: ignore[attr-defined]
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def sample(normalizer: object, calls: list[Callable[[Any], object]], repeats: int) -> float:
    """CPU µs per event over ``repeats`` passes through the inputs."""
    started = time.thread_time_ns()
    for _ in range(repeats):
        for call in calls:
            call(normalizer)
    return (time.thread_time_ns() - started) / 1000 / (repeats * len(calls))


def worker() -> int:
    """Answers one line per request on stdin: a source's name -> µs per event (JSON)."""
    from bridge.normalize import Normalizer

    by_source = inputs()
    normalizer = Normalizer()  # the service's: random ids, the real clock
    hello = {name: {"inputs": len(c), "digest": digest(c)} for name, c in by_source.items()}
    for calls in by_source.values():  # warm caches and the specializing interpreter
        sample(normalizer, calls, 50)
    # The objects of start-up are not the events' garbage: the service freezes them too.
    gc.collect()
    gc.freeze()
    print(json.dumps(hello), flush=True)
    for line in sys.stdin:
        calls = by_source[line.strip()]
        repeats = max(1, EVENTS_PER_SAMPLE // len(calls))
        print(json.dumps(sample(normalizer, calls, repeats)), flush=True)
    return 0


# ---------------------------------------------------------------- the parent


class Variant:
    """One checkout's worker process: this checkout's bridge (source None) or another's."""

    def __init__(self, name: str, source: Path | None) -> None:
        self.name = name
        self.source = source
        env = dict(os.environ)
        if source is not None:  # the other checkout's bridge package ahead of the editable one
            env["PYTHONPATH"] = str(source)
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=REPO,
            text=True,
        )
        self.hello: dict[str, dict[str, Any]] = json.loads(self._read())
        self.samples: dict[str, list[float]] = {s: [] for s in SOURCES}

    def _read(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise SystemExit(f"{self.name}: the worker exited with {self.process.wait()}")
        return line

    def measure(self, source: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(source + "\n")
        self.process.stdin.flush()
        self.samples[source].append(float(json.loads(self._read())))

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=30)

    def describe(self) -> str:
        return checkouts.describe(self.source)


def report(variants: list[Variant], rounds: int) -> str:
    """A Markdown table: per source, min and median µs per event of each variant, the ratios."""
    header = ["source", "inputs"]
    header += [f"{v.name} µs/event: min / median" for v in variants]
    if len(variants) == 2:
        header += ["after ÷ before: min / median of rounds", "same records"]
    rows = []
    for source in SOURCES:
        row = [source, str(variants[0].hello[source]["inputs"])]
        for v in variants:
            values = v.samples[source]
            row.append(f"{min(values):.2f} / {statistics.median(values):.2f}")
        if len(variants) == 2:
            before, after = (v.samples[source] for v in variants)
            per_round = [a / b for a, b in zip(after, before, strict=True)]
            row.append(f"{min(after) / min(before):.2f} / {statistics.median(per_round):.2f}")
            same = variants[0].hello[source]["digest"] == variants[1].hello[source]["digest"]
            row.append("yes" if same else "**no**")
        rows.append(row)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    notes = [
        f"{rounds} rounds, {EVENTS_PER_SAMPLE} events per sample, the variants' samples "
        "interleaved in a fresh random order each round; CPU time of the worker thread.",
    ]
    if len(variants) == 2:
        notes.append(
            "after ÷ before: the ratio of the minimums, and the median of the per-round "
            "ratios; below 1 is faster."
        )
    return "\n".join(lines) + "\n\n" + "\n".join(f"- {n}" for n in notes)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=61, help="interleaved rounds (default 61)")
    parser.add_argument(
        "--source", type=Path, help="measure the bridge package of this checkout instead"
    )
    parser.add_argument(
        "--baseline", type=Path, help="also measure this checkout's bridge, in the same rounds"
    )
    parser.add_argument("--name", help="what to call the measured checkout in the report")
    parser.add_argument("--seed", type=int, help="the rounds' order (default random, printed)")
    parser.add_argument("--label", help="added to the results file name, e.g. before-after")
    args = parser.parse_args()
    if args.worker:
        return worker()
    checkouts.resolve_checkouts(parser, args)
    started = datetime.now(UTC)
    variants = []
    if args.baseline:
        variants.append(Variant("baseline", args.baseline))
    default = f"checkout {args.source.name}" if args.source else "this checkout"
    variants.append(Variant(args.name or ("candidate" if args.baseline else default), args.source))
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    shuffle = random.Random(seed)
    try:
        for _ in range(args.rounds):
            points = [(v, s) for v in variants for s in SOURCES]
            shuffle.shuffle(points)
            for variant, source in points:
                variant.measure(source)
    finally:
        for variant in variants:
            variant.stop()
    command = shlex.join(["bench/normalize.py", *sys.argv[1:]])
    text = (
        f"# Normalize benchmark, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"`{command}`, Python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs, round order seed {seed} (--seed to repeat it).\n\n"
        + "".join(f"- {v.name}: {v.describe()}\n" for v in variants)
        + "\n"
        + report(variants, args.rounds)
        + "\n"
    )
    label = f"-{args.label}" if args.label else ""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{started:%Y-%m-%d-%H%M}-normalize{label}.md"
    out.write_text(text, encoding="utf-8")
    print(text + f"\n(written to {out.relative_to(REPO)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
