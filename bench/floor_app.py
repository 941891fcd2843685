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
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import uvicorn

from bridge import cli, service

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
BANNER = "floor:"


async def app(
    scope: Scope,
    receive: Callable[[], Awaitable[Message]],
    send: Callable[[Message], Awaitable[None]],
) -> None:
    more = True
    while more:
        message = await receive()
        more = message.get("more_body", False)
    await send({"type": "http.response.start", "status": 204, "headers": []})
    await send({"type": "http.response.body", "body": b""})


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """The loop's class, and the uvloop or asyncio loop it extends (the bridge's adds to one)."""
    kind = type(loop)
    base = next((c for c in kind.__mro__ if c.__module__.startswith(("uvloop", "asyncio"))), kind)
    return qualified(kind) if base is kind else f"{qualified(kind)} on {qualified(base)}"


async def serve_floor(settings: Any, **_: object) -> None:
    """Stands in for ``bridge.service.serve``: the bridge's sockets and Config, the floor's app."""
    config = service._uvicorn_config(app, settings)
    config.load()
    loop = asyncio.get_running_loop()
    print(
        f"{BANNER} loop={loop_name(loop)} http={qualified(config.http_protocol_class)}",
        flush=True,
    )
    sockets = service._bind(settings)
    server = uvicorn.Server(config)
    with service._stop_on_signals([server]):
        await server.serve(sockets=sockets)


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
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    service.serve = serve_floor
    return int(cli.main(serve_argv()))


if __name__ == "__main__":
    sys.exit(main())
