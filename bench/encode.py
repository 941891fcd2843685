"""Measures the Avro encoding of one event in-process: the bridge's encoder against alternatives.

Encoding the OCSF record is the largest single cost of the hot path (issue 11). This times
fastavro's ``schemaless_writer`` with the parsed schema over the whole record beside other ways
of producing the same bytes, per source, over the events the tests build: every
SFTPGo vector in ``tests/data/sftpgo``, every MediaWiki observation in ``tests/data/mediawiki``
and a set of PAM logins. Before timing, every variant must give fastavro's bytes for every event;
one that does not stops the run.

The variants here: fastavro's writer over the whole record (the baseline), the bridge's call
(``AvroCodec.encode_datum``: fastavro through the layouts of ``bridge/layouts.py``, which write
what is constant per kind of login as bytes encoded once), and fastavro with the nullable
unions' values in its tuple notation (``("string", value)``), which spares its per-branch type
checks. ``main(extra=...)`` takes more variants, e.g. another library's encoder for a trial.
(Issue 11 weighed cavro, spavro, cerializer and avroc this way and kept fastavro: none has wheels
for both of the image's architectures, and those faster than ~2x were not fit for other reasons.)

The machine is noisy and shared: each sample encodes every event of a source a few times, the
variants take turns in a fresh random order every round, and the table shows the minimum (the
cleanest run) and the median of the rounds, in microseconds per event, with each ratio to the
bridge's call measured in the same rounds. Nothing here asserts a speed.

    .venv/bin/python bench/encode.py [--rounds 300] [--target-ms 4] [--label LABEL]

The report is printed and written to ``bench/results/<date>-<time>-encode[-LABEL].md``.
"""

from __future__ import annotations

import argparse
import gc
import io
import os
import platform
import random
import shlex
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
from ingest import results_stem, write_results

from bridge.codec import AvroCodec
from bridge.normalize import Normalizer
from bridge.pam import FORMAT as PAM_FORMAT

REPO = Path(__file__).resolve().parent.parent
# The vector loaders shared with the tests: tests/conftest.py.
sys.path.insert(0, str(REPO / "tests"))
from conftest import mediawiki_events, sftpgo_events  # noqa: E402

Record = dict[str, Any]
Encode = Callable[[Record], bytes]
BASELINE = "fastavro"
CLOCK_MS = 1_795_330_677_813
# What `login-audit-hook --pam ...` sends (docs/pam.md): a failed sudo, remote and local logins.
PAM_FACTS: list[dict[str, str]] = [
    {"result": "failure", "type": "auth", "service": "sudo", "user": "root", "ruser": "alice"},
    {"result": "success", "type": "open_session", "service": "sshd", "user": "bob"}
    | {"rhost": "192.0.2.7", "auth_method": "publickey"},
    {"result": "failure", "type": "auth", "service": "sshd", "user": "admin"}
    | {"rhost": "2001:db8::5", "auth_method": "password"},
    {"result": "success", "type": "auth", "service": "login", "user": "carol", "tty": "tty1"},
    {"result": "failure", "type": "auth", "service": "su", "user": "root", "ruser": "dave"},
    {"result": "success", "type": "open_session", "service": "cron", "user": "backup"},
]


def fixed_clock() -> int:
    return CLOCK_MS


def source_records() -> dict[str, list[Record]]:
    """The normalized records of each source, as the bridge builds them."""
    normalizer = Normalizer(clock=fixed_clock)
    allow_listed = Normalizer(sftpgo_user_fields=("email", "role", "groups"), clock=fixed_clock)
    pairs = zip(sftpgo_events(normalizer), sftpgo_events(allow_listed), strict=True)
    sftpgo = [event.record for pair in pairs for event in pair]
    mediawiki = [event.record for event in mediawiki_events(normalizer)]
    pam = [
        normalizer.pam({"format": PAM_FORMAT, "host": "web-1"} | facts).record
        for facts in PAM_FACTS
    ]
    return {"SFTPGo": sftpgo, "MediaWiki": mediawiki, "PAM": pam}


# -- fastavro's tuple notation


def _branch_name(branch: Any) -> str:
    """The name fastavro's tuple notation matches a union branch by (a parsed schema's)."""
    if isinstance(branch, str):
        return branch
    if branch["type"] in ("record", "enum", "fixed"):
        return str(branch["name"])
    return str(branch["type"])


def in_tuple_notation(schema: Any, value: Any, named: dict[str, Any]) -> Any:
    """``value`` with each non-null union value as ``(branch name, value)``, recursively."""
    if isinstance(schema, str):
        return in_tuple_notation(named[schema], value, named) if schema in named else value
    if isinstance(schema, list):
        if value is None:
            return None
        for branch in schema:
            if branch != "null":
                return (_branch_name(branch), in_tuple_notation(branch, value, named))
        return value
    kind = schema["type"]
    if kind == "record":
        named[schema["name"]] = schema
        return {
            field["name"]: in_tuple_notation(field["type"], value[field["name"]], named)
            for field in schema["fields"]
        }
    if kind == "array":
        return [in_tuple_notation(schema["items"], item, named) for item in value]
    if kind == "map":
        return {k: in_tuple_notation(schema["values"], v, named) for k, v in value.items()}
    return value


def fastavro_whole(codec: AvroCodec) -> Encode:
    """fastavro's writer over the whole record: the bytes every variant must give."""

    def encode(record: Record) -> bytes:
        buffer = io.BytesIO()
        fastavro.schemaless_writer(buffer, codec.parsed, record)
        return buffer.getvalue()

    return encode


def variants(codec: AvroCodec) -> dict[str, Encode]:
    """Each way to encode a record; the first is the baseline."""
    whole = fastavro_whole(codec)
    # Tuple notation's inputs are converted before timing (see prepared_inputs): only the call.
    return {
        BASELINE: whole,
        "bridge (layouts)": codec.encode_datum,
        "fastavro, tuple notation": whole,
    }


def prepared_inputs(name: str, codec: AvroCodec, records: list[Record]) -> list[Any]:
    """What a variant is handed: the records, or for tuple notation, their converted copies."""
    if "tuple notation" in name:
        return [in_tuple_notation(codec.parsed, r, {}) for r in records]
    return records


# -- measuring


def check_bytes(encode: Encode, inputs: list[Any], expected: list[bytes], name: str) -> None:
    for index, (value, want) in enumerate(zip(inputs, expected, strict=True)):
        got = encode(value)
        if got != want:
            raise SystemExit(f"{name}: event {index} encodes differently from fastavro")


def sample_us(encode: Encode, inputs: list[Any], loops: int) -> float:
    """Microseconds per event over ``loops`` passes through ``inputs``, the GC held off."""
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in range(loops):
            for value in inputs:
                encode(value)
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return elapsed / 1000 / (loops * len(inputs))


def measure(
    encoders: Mapping[str, Encode],
    sources: Mapping[str, list[Record]],
    codec: AvroCodec,
    *,
    rounds: int,
    target_ms: float,
) -> dict[tuple[str, str], list[float]]:
    """Per (source, variant), the µs per event of every round."""
    inputs = {
        (source, name): prepared_inputs(name, codec, records)
        for source, records in sources.items()
        for name in encoders
    }
    loops: dict[str, int] = {}
    for source, records in sources.items():
        expected = [fastavro_whole(codec)(r) for r in records]
        for name, encode in encoders.items():
            check_bytes(encode, inputs[source, name], expected, name)
        per_event = sample_us(codec.encode_datum, records, 20)
        loops[source] = max(1, round(target_ms * 1000 / (per_event * len(records))))
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in inputs}
    order = list(inputs)
    # Out of the collector's sight, as the bridge does after start-up: a collection of everything
    # loaded (tens of milliseconds) must not land inside a sample, nor run between all of them.
    gc.collect()
    gc.freeze()
    for _ in range(rounds):
        random.shuffle(order)
        for source, name in order:
            samples[source, name].append(
                sample_us(encoders[name], inputs[source, name], loops[source])
            )
    return samples


def table(samples: dict[tuple[str, str], list[float]], sources: Mapping[str, list[Record]]) -> str:
    lines = [
        "| source (events) | encoder | min µs/event | median µs/event | ÷ fastavro (min) "
        "| ÷ fastavro (median) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for source, records in sources.items():
        base = samples[source, BASELINE]
        for (src, name), values in samples.items():
            if src != source:
                continue
            low, mid = min(values), statistics.median(values)
            lines.append(
                f"| {source} ({len(records)}) | {name} | {low:.2f} | {mid:.2f} "
                f"| {low / min(base):.2f} | {mid / statistics.median(base):.2f} |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None, extra: Mapping[str, Encode] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=300, help="interleaved rounds (300)")
    parser.add_argument("--target-ms", type=float, default=4.0, help="length of one sample (4)")
    parser.add_argument("--label", help="added to the results file name, e.g. before-after")
    args = parser.parse_args(argv)
    codec = AvroCodec()
    sources = source_records()
    encoders = variants(codec) | dict(extra or {})
    started = datetime.now(UTC)
    clock = time.monotonic()
    samples = measure(encoders, sources, codec, rounds=args.rounds, target_ms=args.target_ms)
    command = shlex.join(["bench/encode.py", *(sys.argv[1:] if argv is None else argv)])
    text = (
        f"# Encode benchmark, {started:%Y-%m-%d %H:%M} UTC\n\n"
        f"`{command}`: Avro encoding per event, {args.rounds} interleaved rounds of "
        f"~{args.target_ms:g} ms samples ({time.monotonic() - clock:.0f} s); "
        f"Python {platform.python_version()}, fastavro {fastavro.__version__}, "
        f"{os.cpu_count()} CPUs; every variant gave fastavro's bytes for every event.\n\n"
        + table(samples, sources)
        + "\n"
    )
    write_results(results_stem(started, "encode", args.label), text)


if __name__ == "__main__":
    main()
