"""login-audit-bridge: the service (serve) and its tools (schema, tail, dead-letters, settings)."""

from __future__ import annotations

import argparse
import dataclasses
import enum
import json
import sqlite3
import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bridge import __version__
from bridge.errors import BridgeError, ConfigError, SinkError


class Exit(enum.IntEnum):
    OK = 0
    FAILURE = 1  # a runtime error, e.g. the sink failed while serving
    USAGE = 2  # argparse's own code for bad flags
    CONFIG = 3  # settings that cannot work
    SINK_UNAVAILABLE = 4  # the sink could not be started (or, for drain, events stay spooled)
    SPOOL_IN_USE = 5  # drain: a running bridge (or another drain) holds a spool


DESCRIPTION = """\
Turns SFTPGo and MediaWiki login hooks into OCSF-shaped Avro login events and publishes them to
local Avro files (the default), Kafka or RabbitMQ.

Every setting is a BRIDGE_<NAME> environment variable, or a key in the TOML file named by
BRIDGE_CONFIG / --config; `login-audit-bridge settings` lists them all."""

# Where the bridge keeps its files: the same flags, meaning the same, for every command.
DATA_FLAGS = (
    ("--data-dir", "data_dir", "file sink and spool directory"),
    ("--file-dir", "file_dir", "file sink directory (default: DATA_DIR/events)"),
)
SERVE_FLAGS = (
    ("--host", "host", "address to listen on"),
    ("--port", "port", "TCP port"),
    ("--uds", "uds", "also listen on this Unix socket"),
    ("--workers", "workers", "worker processes on the one port (default 0: one per usable CPU)"),
    ("--sink", "sink", "file, kafka or rabbitmq"),
    *DATA_FLAGS,
    ("--log-format", "log_format", "json or text"),
    ("--log-level", "log_level", "debug, info, warning or error"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="login-audit-bridge",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="exit codes: " + ", ".join(f"{e.value} {e.name.lower()}" for e in Exit),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser(
        "serve",
        help="run the bridge (the default command)",
        description="Serve the hook endpoints until SIGTERM, then drain and flush.",
    )
    _add_config_flag(serve)
    _add_flags(serve, SERVE_FLAGS)
    # Set by `serve --workers N` on the workers it starts (see bridge.workers).
    serve.add_argument("--worker-index", type=int, default=None, help=argparse.SUPPRESS)
    serve.add_argument("--worker-count", type=int, default=1, help=argparse.SUPPRESS)
    serve.add_argument("--worker-sockets", type=Path, default=None, help=argparse.SUPPRESS)

    schema = commands.add_parser(
        "schema",
        help="print the event schema (Avro) and its fingerprint",
        description="Print the Avro schema to stdout and its CRC-64-AVRO fingerprint to stderr.",
    )
    schema.add_argument("--fingerprint", action="store_true", help="print only the fingerprint")

    tail = commands.add_parser(
        "tail",
        help="decode and print events as JSON lines",
        description="Decode events from the file sink (or a broker) and print one JSON per line: "
        "strict OCSF 1.3.0 (times as integer epoch milliseconds, no nulls; bridge/ocsf_json.py).",
    )
    _add_config_flag(tail)
    tail.add_argument(
        "--from",
        dest="source",
        choices=("file", "kafka", "rabbitmq"),
        default="file",
        help="where to read (default: file)",
    )
    _add_flags(tail, DATA_FLAGS)
    tail.add_argument("--status", choices=("success", "failure"), help="only this status")
    tail.add_argument("-n", "--limit", type=int, help="stop after this many events")
    tail.add_argument("-f", "--follow", action="store_true", help="keep waiting for new events")
    tail.add_argument(
        "--datetime",
        action="store_true",
        help="also write time_dt and metadata.logged_time_dt (RFC 3339) and name OCSF's "
        "datetime profile in metadata.profiles",
    )

    dead = commands.add_parser(
        "dead-letters",
        help="list the spooled events the sink refused for good, or send them again",
        description="Spooled events the sink refused for good (or that could not be read) wait "
        "in the spool's dead_letters table. `list` prints them as JSON lines (no event content); "
        "`requeue` moves them back to the head of the spool, and the running bridge (or the "
        "next one started) sends them again, in their original order, within seconds.",
    )
    dead_commands = dead.add_subparsers(dest="action", metavar="ACTION", required=True)
    dead_list = dead_commands.add_parser("list", help="print each dead letter as a JSON line")
    _add_config_flag(dead_list)
    requeue = dead_commands.add_parser("requeue", help="send dead letters again")
    _add_config_flag(requeue)
    chosen = requeue.add_mutually_exclusive_group(required=True)
    chosen.add_argument("--all", action="store_true", help="every dead letter")
    chosen.add_argument("event_ids", nargs="*", default=[], metavar="EVENT_ID", help="these ones")

    drain = commands.add_parser(
        "drain",
        help="send a spool no bridge replays (a volume whose pod is gone) into the sink",
        description="Send every event waiting in the spools under the data directory (the "
        "bridge's own and those of workers/N, including workers a smaller --workers no longer "
        "runs) to the configured sink, then exit. For a spool left on a volume whose pod does "
        "not come back. Each spool is locked first: one a running bridge holds is left to it. "
        "Prints one JSON line per spool; exits 0 only when every spool is empty and holds no "
        "dead letters.",
    )
    _add_config_flag(drain)
    _add_flags(drain, (("--sink", "sink", "file, kafka or rabbitmq"), *DATA_FLAGS))
    drain.add_argument(
        "--timeout",
        type=float,
        default=300.0,
        help="seconds to wait for the sink and send everything (default: 300)",
    )

    settings = commands.add_parser(
        "settings",
        help="list every setting with its variable, default and meaning",
        description="List every setting; with --current, the values in effect (secrets masked).",
    )
    _add_config_flag(settings)
    settings.add_argument("--current", action="store_true", help="show the values in effect")
    settings.add_argument(
        "--markdown", action="store_true", help="print the reference as a Markdown table"
    )
    return parser


def _add_config_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="TOML settings file (BRIDGE_CONFIG)")


def _add_flags(parser: argparse.ArgumentParser, flags: Sequence[tuple[str, str, str]]) -> None:
    for flag, field, text in flags:
        parser.add_argument(flag, dest=field, help=f"{text} (BRIDGE_{field.upper()})")


def _overrides(args: argparse.Namespace, flags: Sequence[tuple[str, str, str]]) -> dict[str, Any]:
    """The settings given as flags; they win over the environment and the config file."""
    return {field: getattr(args, field) for _, field, _ in flags if getattr(args, field, None)}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    command = args.command or "serve"
    if command == "schema":
        return _schema(args)
    try:
        if command == "settings":
            return _settings(args)
        if command == "tail":
            return _tail(args)
        if command == "dead-letters":
            return _dead_letters(args)
        if command == "drain":
            return _drain(args)
        return _serve(args)
    except ConfigError as exc:
        print(f"login-audit-bridge: {exc.message}", file=sys.stderr)
        return Exit.CONFIG
    except KeyboardInterrupt:
        return Exit.OK


def _load(args: argparse.Namespace, overrides: dict[str, Any] | None = None) -> Any:
    from bridge.settings import load_settings

    return load_settings(config_file=getattr(args, "config", None), **(overrides or {}))


def _serve(args: argparse.Namespace) -> int:
    from bridge.logs import configure_logging
    from bridge.service import run, serve
    from bridge.settings import check_can_serve
    from bridge.workergroup import WorkerGroup
    from bridge.workers import supervise, worker_count, worker_settings, workers_needed

    settings = _load(args, _overrides(args, SERVE_FLAGS))
    check_can_serve(settings)  # a ConfigError here exits with Exit.CONFIG, like a bad setting
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    group = None
    if args.worker_index is not None:
        settings = worker_settings(settings, args.worker_index)
        if args.worker_sockets is not None:
            group = WorkerGroup(args.worker_index, args.worker_count, args.worker_sockets)
    else:
        workers = workers_needed(settings, worker_count(settings))
        if workers > 1:
            return supervise(settings, workers, _serve_argv(args))
    try:
        # The handshake is part of "from connecting to the last header" (header_timeout).
        run(serve(settings, group=group), tls_handshake_timeout=settings.header_timeout_seconds)
    except ConfigError as exc:
        # Found while running (e.g. the registry refuses the schema once the broker answers).
        print(f"login-audit-bridge: {exc.message}", file=sys.stderr)
        return Exit.CONFIG
    except SinkError as exc:
        print(f"login-audit-bridge: {settings.sink} sink: {exc.message}", file=sys.stderr)
        return Exit.SINK_UNAVAILABLE
    except BridgeError as exc:
        print(f"login-audit-bridge: {exc.message}", file=sys.stderr)
        return Exit.FAILURE
    except OSError as exc:
        print(f"login-audit-bridge: cannot listen: {exc}", file=sys.stderr)
        return Exit.FAILURE
    except sqlite3.Error as exc:
        print(f"login-audit-bridge: spool {settings.spool_path}: {exc}", file=sys.stderr)
        return Exit.FAILURE
    return Exit.OK


def _serve_argv(args: argparse.Namespace) -> list[str]:
    """``serve`` with the flags given to this one, for its workers."""
    argv = ["serve"]
    if args.config is not None:
        argv += ["--config", str(args.config)]
    for flag, field, _ in SERVE_FLAGS:
        value = getattr(args, field, None)
        if value:
            argv += [flag, str(value)]
    return argv


def _schema(args: argparse.Namespace) -> int:
    from bridge.codec import AvroCodec

    codec = AvroCodec()
    if args.fingerprint:
        print(codec.fingerprint_hex)
        return Exit.OK
    print(json.dumps(codec.schema, indent=2, ensure_ascii=False))
    print(f"CRC-64-AVRO fingerprint: {codec.fingerprint_hex}", file=sys.stderr)
    return Exit.OK


def _settings(args: argparse.Namespace) -> int:
    from pydantic import SecretStr

    from bridge.settings import ENV_PREFIX, Settings

    if args.markdown:
        print("| variable | default | meaning |\n|---|---|---|")
    current = _load(args) if args.current else None
    for name, field in Settings.model_fields.items():
        variable = f"{ENV_PREFIX}{name.upper()}"
        if current is not None:
            value = getattr(current, name)
            shown = "**********" if isinstance(value, SecretStr) else _plain(value)
            print(f"{variable}={shown}")
            continue
        default = field.default if not isinstance(field.default, SecretStr) else "(secret)"
        if args.markdown:
            shown = f"`{_plain(default)}`" if _plain(default) else ""
            print(f"| `{variable}` | {shown} | {field.description} |")
            continue
        print(f"{variable}\n    {field.description} [default: {_plain(default)}]")
    return Exit.OK


def _plain(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(str(v) for v in value)
    return "" if value is None else str(value)


def _tail(args: argparse.Namespace) -> int:
    from bridge.ocsf_json import dumps

    settings = _load(args, _overrides(args, DATA_FLAGS))
    records = _records(args, settings)
    try:
        for count, record in enumerate(records, start=1):
            print(dumps(record, datetime_profile=args.datetime), flush=True)
            if args.limit is not None and count >= args.limit:
                break
    except SinkError as exc:
        print(f"login-audit-bridge: tail --from {args.source}: {exc.message}", file=sys.stderr)
        return Exit.SINK_UNAVAILABLE
    return Exit.OK


def _records(args: argparse.Namespace, settings: Any) -> Iterator[dict[str, Any]]:
    if args.source != "file":
        from bridge.consume import tail_broker

        yield from tail_broker(settings, source=args.source, status=args.status, follow=args.follow)
        return
    from bridge.sinks.file import event_files, read_file
    from bridge.workers import worker_event_dirs

    seen: dict[Path, int] = {}  # records already printed, per file
    sizes: dict[Path, int] = {}  # with --follow, only files that grew are read again
    while True:
        paths = (p for d in worker_event_dirs(settings) for p in event_files(d, args.status))
        for path in paths:
            size = path.stat().st_size
            if sizes.get(path) == size:
                continue
            sizes[path] = size
            for index, record in enumerate(read_file(path)):
                if index >= seen.get(path, 0):
                    seen[path] = index + 1
                    yield record
        if not args.follow:
            return
        time.sleep(1)


def _dead_letters(args: argparse.Namespace) -> int:
    from bridge.durable_spool import list_dead_letters, requeue_dead_letters

    path = _load(args).spool_path
    try:
        if args.action == "list":
            for letter in list_dead_letters(path):
                print(json.dumps(_dead_letter_line(letter), ensure_ascii=False), flush=True)
            return Exit.OK
        wanted = None if args.all else list(args.event_ids)
        moved = requeue_dead_letters(path, wanted)
    except (OSError, sqlite3.Error) as exc:
        print(f"login-audit-bridge: spool {path}: {exc}", file=sys.stderr)
        return Exit.FAILURE
    print(f"requeued {len(moved)} dead letter(s) from {path}", file=sys.stderr)
    missing = sorted(set(wanted or ()) - set(moved))
    if missing:
        print(f"login-audit-bridge: no dead letter with id {', '.join(missing)}", file=sys.stderr)
        return Exit.FAILURE
    return Exit.OK


def _drain(args: argparse.Namespace) -> int:
    from bridge.drain import drain_data_dir
    from bridge.logs import configure_logging
    from bridge.service import run

    flags = (("--sink", "sink", ""), *DATA_FLAGS)
    settings = _load(args, _overrides(args, flags))
    configure_logging(level=settings.log_level, fmt=settings.log_format)
    reports: list[Any] = []

    async def drain_all() -> None:
        reports.extend(await drain_data_dir(settings, budget=args.timeout))

    try:
        run(drain_all())
    except (OSError, sqlite3.Error) as exc:
        print(f"login-audit-bridge: drain {settings.data_dir}: {exc}", file=sys.stderr)
        return Exit.FAILURE
    for report in reports:
        line = dataclasses.asdict(report) | {"spool": str(report.spool)}
        print(json.dumps(line, ensure_ascii=False), flush=True)
    return _drain_verdict(settings.data_dir, reports)


def _drain_verdict(data_dir: Path, reports: Sequence[Any]) -> int:
    """One line on stderr saying what the operator must do, and the exit code that goes with it."""
    if not reports:
        print(f"drain: no spool under {data_dir}: nothing to do", file=sys.stderr)
        return Exit.OK
    delivered = sum(r.delivered for r in reports)
    in_use = [r for r in reports if r.left is None]
    left = sum(r.left for r in reports if r.left)
    dead = sum(r.dead_letters for r in reports if r.dead_letters)
    print(f"drain: {delivered} event(s) delivered from {len(reports)} spool(s)", file=sys.stderr)
    for report in reports:
        if report.error is not None:
            print(f"login-audit-bridge: drain {report.spool}: {report.error}", file=sys.stderr)
    if in_use:
        return Exit.SPOOL_IN_USE
    if left:
        print(
            f"login-audit-bridge: {left} event(s) stay spooled: keep the volume, drain again",
            file=sys.stderr,
        )
        return Exit.SINK_UNAVAILABLE
    if dead:
        print(
            f"login-audit-bridge: {dead} dead letter(s) stay in the spool: keep the volume; "
            "see `login-audit-bridge dead-letters list`",
            file=sys.stderr,
        )
        return Exit.FAILURE
    return Exit.OK


def _dead_letter_line(letter: Any) -> dict[str, Any]:
    spooled = datetime.fromtimestamp(letter.spooled_ms / 1000, tz=UTC)
    return {
        "event_id": letter.event_id,
        "source": letter.source,
        "spooled": spooled.isoformat(timespec="milliseconds"),
        "reason": letter.reason,
        "seq": letter.seq,
    }


if __name__ == "__main__":
    sys.exit(main())
