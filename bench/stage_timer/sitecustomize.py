"""Times the bridge's hot-path stages inside a serving worker: ``bench/stages.py`` puts this
directory first on the worker's ``PYTHONPATH``, so Python imports it at start-up.

Each stage (a method named in :data:`STAGES`) is wrapped to add the calling thread's CPU time
(``time.thread_time_ns``, about 0.7 µs per reading on the benchmark's machine) and a count to a
total; SIGUSR2 writes the totals as JSON to ``$LOGIN_AUDIT_STAGES_OUT``. A stage that calls
another includes it. The line it prints is checked by the bench: Python ignores a failing
``sitecustomize``, and the run would then time nothing.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable
from typing import Any

BANNER = "stage timer: wrapped"
# (label, module, class, method): the SFTPGo HTTP hook's path through a worker, in call order.
STAGES: list[tuple[str, str, str, str]] = [
    ("admit (token, media type, size)", "bridge.app", "HookEndpoints", "admit"),
    (
        "take (a turn's requests: normalize, prepare, submit)",
        "bridge.app",
        "HookEndpoints",
        "_take_all",
    ),
    ("normalize (query, user JSON, record)", "bridge.app", "HookEndpoints", "_sftpgo"),
    ("pipeline prepare (count, encode)", "bridge.pipeline", "Pipeline", "prepare"),
    ("encode (layouts)", "bridge.encode", "Encoder", "encode"),
    ("pipeline submit (sink submit)", "bridge.pipeline", "Pipeline", "submit_prepared"),
    ("sink submit", "bridge.sinks.kafka", "KafkaSink", "submit"),
    ("sink submit", "bridge.sinks.file", "FileSink", "submit"),
    ("produce (per loop turn)", "bridge.sinks.kafka", "KafkaSink", "_produce_submitted"),
    ("delivery reports (poll)", "bridge.sinks.kafka", "_Client", "_poll"),
    ("sink answered (pipeline)", "bridge.pipeline", "Pipeline", "_sent"),
    ("answer (reply, write)", "bridge.app", "HookEndpoints", "_reply"),
]

_totals: dict[str, list[int]] = {}


def _timed(label: str, method: Callable[..., Any]) -> Callable[..., Any]:
    total = _totals.setdefault(label, [0, 0])
    clock = time.thread_time_ns

    def stage(*args: Any, **kwargs: Any) -> Any:
        started = clock()
        try:
            return method(*args, **kwargs)
        finally:
            total[0] += clock() - started
            total[1] += 1

    return stage


def _dump(_signum: int, _frame: object) -> None:
    out = os.environ.get("LOGIN_AUDIT_STAGES_OUT")
    if out:
        # Whole or not at all: the bench reads the file as soon as it appears.
        with open(out + ".tmp", "w", encoding="utf-8") as handle:
            json.dump({label: {"ns": ns, "calls": n} for label, (ns, n) in _totals.items()}, handle)
        os.replace(out + ".tmp", out)


def _wrap() -> None:
    for label, module_name, class_name, method_name in STAGES:
        cls = getattr(importlib.import_module(module_name), class_name)
        setattr(cls, method_name, _timed(label, getattr(cls, method_name)))
    signal.signal(signal.SIGUSR2, _dump)
    print(BANNER, file=sys.stderr, flush=True)


_wrap()
