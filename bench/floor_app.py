"""The serving floor: a bare ASGI app started through the bridge's own `serve` code path.

What the ingest benchmark's numbers are compared with: the same entry point, event loop, sockets,
uvicorn ``Config`` and HTTP parser as the bridge, with no routing, normalizing, encoding or sink.
Nothing any real endpoint can do is faster.

    BRIDGE_HOST=127.0.0.1 BRIDGE_PORT=P BRIDGE_DATA_DIR=D python bench/floor_app.py

It runs ``bridge.cli.main(["serve"])`` (settings from the same ``BRIDGE_*`` variables) with
``bridge.service.serve`` replaced by :func:`serve_floor`, which binds with the bridge's
``_bind`` and serves with the bridge's ``_uvicorn_config``. So whatever the bridge's runner
does (``asyncio.run`` today; uvloop or ``--workers`` once the bridge adopts them), the floor
does too. With ``--workers`` in the bridge's ``serve``, the floor asks for one worker.

On start it prints one line, ``floor: loop=<class> http=<class>``, which the benchmark
checks (no line: the bridge's code path changed, and this process may be serving the real
bridge; update this file) and reports beside the results.

``--publish kafka --vector V [--vector W ...]`` makes it the *Kafka floor*: every answer then
waits for the delivery report of one event, the next of the vectors' events in turn, each built
and encoded once at start-up from an SFTPGo HTTP-mode vector, sent through the bridge's own
Kafka sink (``KafkaSink.send``, with the producer settings the bridge takes from the same
``BRIDGE_KAFKA_*`` variables). Given the vectors the bridge is sent, it publishes the same mix
of successes and failures, so to the same topics: librdkafka sends one produce request per
partition, so a floor that publishes to one topic asks the broker for half the requests a
bridge splitting by status does. It still reads each request's whole body, but routes,
parses, normalizes and encodes nothing. Its latency at a
constant rate is what the loop, the broker and the machine leave to any bridge that answers
after Kafka's acknowledgement: no bridge on this loop and machine does better.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import itertools
import json
import sys
import urllib.parse
from collections.abc import Awaitable, Callable, MutableMapping
from pathlib import Path
from typing import Any

import uvicorn

from bridge import cli, service

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
App = Callable[
    [Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]],
    Awaitable[None],
]
BANNER = "floor:"


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """The loop's class, and the uvloop or asyncio loop it extends (the bridge's adds to one)."""
    kind = type(loop)
    base = next((c for c in kind.__mro__ if c.__module__.startswith(("uvloop", "asyncio"))), kind)
    return qualified(kind) if base is kind else f"{qualified(kind)} on {qualified(base)}"


def serving(send_event: Callable[[], Awaitable[None]] | None = None) -> App:
    """The floor's app: reads the whole request, then answers 204; with ``send_event``, only
    once that has returned (the Kafka floor)."""

    async def app(
        scope: Scope,
        receive: Callable[[], Awaitable[Message]],
        send: Callable[[Message], Awaitable[None]],
    ) -> None:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        if send_event is not None:
            await send_event()
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    return app


async def kafka_sink(
    settings: Any, vectors: list[dict[str, Any]]
) -> tuple[Any, Callable[[], Awaitable[None]]]:
    """The bridge's Kafka sink, started, and a call sending the vectors' events through it, one
    per call, in turn."""
    from bridge.codec import AvroCodec
    from bridge.encode import Encoder, build_wire_encoder
    from bridge.metrics import Metrics
    from bridge.normalize import Normalizer
    from bridge.sinks import build_sink

    normalizer = Normalizer(sftpgo_user_fields=settings.sftpgo_user_fields)
    codec = AvroCodec()
    event_encoder = Encoder(codec)
    encoded = []
    for vector in vectors:
        query = dict(urllib.parse.parse_qsl(vector["raw_query"], keep_blank_values=True))
        event = normalizer.sftpgo_from_http(query, vector["raw_body"].encode())
        encoded.append(event_encoder.encode(event))
    encoder = build_wire_encoder(settings, codec)
    sink = build_sink(settings, codec=codec, encoder=encoder, metrics=Metrics())
    await sink.start()
    events = itertools.cycle(encoded)
    return sink, lambda: sink.send(next(events))


async def serve_floor(
    settings: Any,
    *,
    publish: str | None = None,
    vectors: list[dict[str, Any]] | None = None,
    **_: object,
) -> None:
    """Stands in for ``bridge.service.serve``: the bridge's sockets and Config, the floor's app."""
    sink = None
    application = serving()
    if publish == "kafka":
        assert vectors  # main() requires them with --publish
        sink, send_event = await kafka_sink(settings, vectors)
        application = serving(send_event)
    try:
        config = service._uvicorn_config(application, settings)
        config.load()
        loop = asyncio.get_running_loop()
        print(
            f"{BANNER} loop={loop_name(loop)} http={qualified(config.http_protocol_class)}"
            + (f" publish={publish}" if publish else ""),
            flush=True,
        )
        sockets = service._bind(settings)
        server = uvicorn.Server(config)
        with service._stop_on_signals([server]):
            await server.serve(sockets=sockets)
    finally:
        if sink is not None:
            await sink.stop()


def serve_argv() -> list[str]:
    """``serve``, plus ``--workers 1`` once the bridge's serve has that flag."""
    parser = cli.build_parser()
    for action in parser._subparsers._group_actions if parser._subparsers else []:
        choices = getattr(action, "choices", None) or {}
        serve = choices.get("serve")
        if serve is not None and "--workers" in serve._option_string_actions:
            return ["serve", "--workers", "1"]
    return ["serve"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--publish",
        choices=["kafka"],
        help="answer each request after one event's delivery report from the bridge's Kafka sink",
    )
    parser.add_argument(
        "--vector",
        type=Path,
        action="append",
        default=[],
        help="an SFTPGo HTTP-mode vector (JSON) whose event --publish sends; repeat it to send "
        "several events in turn",
    )
    args = parser.parse_args()
    if args.publish and not args.vector:
        parser.error("--publish needs --vector")
    vectors = [json.loads(path.read_text(encoding="utf-8")) for path in args.vector]
    service.serve = functools.partial(serve_floor, publish=args.publish, vectors=vectors)
    return int(cli.main(serve_argv()))


if __name__ == "__main__":
    sys.exit(main())
