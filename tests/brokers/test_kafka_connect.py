"""Kafka Connect, as a SIEM team runs it, decodes every event of both status topics.

A standalone worker of the broker's Kafka version (connect-runtime, connect-file) with
Apicurio's AvroConverter in the Confluent wire format sinks each status topic to a file:
the path Splunk Connect for Kafka, the Elastic and the S3 sink connectors take. The worker's
configuration is docs/siem/connect-*.properties, run as written. The file sink writes each
decoded value as Connect's Struct text; the test reads it back, guided by the shipped schema,
and compares every field with what the bridge sent.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from bridge import ocsf_json
from bridge.codec import AvroCodec
from bridge.event import LoginEvent

from .conftest import KafkaTopics
from .test_consumers import EVENTS, print_consumer_row, send_to_kafka
from conftest import REPO
from ocsf import assert_ocsf
from support import free_port, skip_or_fail

pytestmark = [pytest.mark.kafka, pytest.mark.registry]

RECIPES = REPO / "docs/siem"
WAIT_SECONDS = 120.0


def connect_libs() -> Path:
    """The jars scripts/connect fetched (the same path `scripts/connect env` prints)."""
    run = subprocess.run(
        [str(REPO / "scripts/connect"), "env"], capture_output=True, text=True, check=True
    )
    libs = Path(run.stdout.strip().split("=", 1)[1])
    if not (libs.parent / ".complete").exists():
        skip_or_fail(f"Kafka Connect is not fetched ({libs}): run scripts/connect ensure")
    return libs


def fill(template: Path, target: Path, **values: str) -> Path:
    text = template.read_text()
    for key, value in values.items():
        text = text.replace(f"@{key}@", value)
    assert "@" not in re.sub(r"#.*", "", text), f"unfilled placeholder in {template.name}"
    target.write_text(text)
    return target


@pytest.fixture
def connect_worker(
    tmp_path: Path, kafka_bootstrap: str, kafka_topics: KafkaTopics, schema_registry_url: str
) -> Iterator[dict[str, Path]]:
    """A standalone worker sinking both topics to files; stopped (SIGTERM, then SIGKILL) by PID."""
    libs = connect_libs()
    registry = URL(schema_registry_url)
    v2 = str(registry.with_path("/apis/registry/v2"))
    worker = fill(
        RECIPES / "connect-standalone.properties",
        tmp_path / "worker.properties",
        BOOTSTRAP=kafka_bootstrap,
        REGISTRY_V2_URL=v2,
        OFFSETS=str(tmp_path / "offsets"),
        REST_PORT=str(free_port()),
    )
    files = {status: tmp_path / f"{status}.txt" for status in ("success", "failure")}
    connectors = [
        fill(
            RECIPES / "connect-file-sink.properties",
            tmp_path / f"{status}.properties",
            STATUS=status,
            TOPIC=getattr(kafka_topics, status),
            FILE=str(path),
        )
        for status, path in files.items()
    ]
    log = (tmp_path / "connect.log").open("wb")
    process = subprocess.Popen(
        [
            "java",
            "-Xmx384m",
            "-Duser.timezone=UTC",
            "-cp",
            f"{libs}/*",
            "org.apache.kafka.connect.cli.ConnectStandalone",
            str(worker),
            *map(str, connectors),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        yield files | {"log": tmp_path / "connect.log"}
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# -- Connect's Struct text, read back with the schema's help


class StructText:
    """Parses ``Struct{a=1,b=Struct{c=x}}`` as Connect's Struct.toString writes it.

    Null fields are left out, strings are bare, maps are ``{k=v, k2=v2}``, arrays ``[a, b]``,
    timestamps a java.util.Date (``Tue Dec 01 17:21:56 UTC 2026``, second precision).
    """

    def __init__(self, text: str) -> None:
        self.text, self.at = text, 0

    def expect(self, literal: str) -> None:
        assert self.text.startswith(literal, self.at), (literal, self.text[self.at : self.at + 60])
        self.at += len(literal)

    def value(self, schema: Any, ends: tuple[str, ...]) -> Any:
        if isinstance(schema, list):
            schema = next(branch for branch in schema if branch != "null")
        kind = schema if isinstance(schema, str) else schema["type"]
        if kind == "record":
            return self.struct(schema)
        if kind == "array":
            return self.array(schema["items"])
        if kind == "map":
            return self.map()
        token = self.token(ends)
        if isinstance(schema, dict) and schema.get("logicalType") == "timestamp-millis":
            if token.isdigit():
                return int(token)
            parsed = datetime.strptime(token, "%a %b %d %H:%M:%S UTC %Y").replace(tzinfo=UTC)
            return ocsf_json.epoch_ms(parsed)
        if kind in ("int", "long"):
            return int(token)
        if kind == "boolean":
            return {"true": True, "false": False}[token]
        return token

    def token(self, ends: tuple[str, ...]) -> str:
        found = [i for i in (self.text.find(end, self.at) for end in ends) if i >= 0]
        stop = min(found)
        token, self.at = self.text[self.at : stop], stop
        return token

    def struct(self, schema: dict[str, Any]) -> dict[str, Any]:
        self.expect("Struct{")
        fields, out = schema["fields"], {}
        while not self.text.startswith("}", self.at):
            index = next(
                i for i, f in enumerate(fields) if self.text.startswith(f"{f['name']}=", self.at)
            )
            field, fields = fields[index], fields[index + 1 :]
            self.expect(f"{field['name']}=")
            ends = (*(f",{later['name']}=" for later in fields), "}")
            out[field["name"]] = self.value(field["type"], ends)
            if self.text.startswith(",", self.at):
                self.at += 1
        self.expect("}")
        return out

    def array(self, items: Any) -> list[Any]:
        self.expect("[")
        out = []
        while not self.text.startswith("]", self.at):
            out.append(self.value(items, (", ", "]")))
            if self.text.startswith(", ", self.at):
                self.at += 2
        self.expect("]")
        return out

    def map(self) -> dict[str, str]:
        self.expect("{")
        out = {}
        while not self.text.startswith("}", self.at):
            key = self.token(("=",))
            self.expect("=")
            out[key] = self.token((", ", "}"))
            if self.text.startswith(", ", self.at):
                self.at += 2
        self.expect("}")
        return out


def read_sink_file(path: Path, schema: dict[str, Any]) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    return [StructText(line).struct(schema) for line in lines if line]


def wait_for_lines(files: dict[str, Path], count: int) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        lines = sum(len(p.read_text().splitlines()) for p in files.values() if p.exists())
        if lines >= count:
            return
        time.sleep(0.5)


def _seconds(record: dict[str, Any]) -> dict[str, Any]:
    """A rendered event with its times cut to whole seconds, as a java.util.Date keeps them."""
    out = dict(record)
    out["time"] = record["time"] // 1000 * 1000
    out["metadata"] = record["metadata"] | {
        "logged_time": record["metadata"]["logged_time"] // 1000 * 1000
    }
    return out


def test_kafka_connect_with_apicurios_avro_converter_sinks_every_event_decoded_to_files(
    connect_worker: dict[str, Path],
    kafka_bootstrap: str,
    kafka_topics: KafkaTopics,
    schema_registry_url: str,
    codec: AvroCodec,
    make_events: Callable[[int], list[LoginEvent]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    events = make_events(EVENTS)
    asyncio.run(send_to_kafka(kafka_bootstrap, kafka_topics, schema_registry_url, codec, events))
    files = {status: connect_worker[status] for status in ("success", "failure")}
    wait_for_lines(files, len(events))

    decoded = {
        status: [ocsf_json.render(r) for r in read_sink_file(path, codec.schema)]
        for status, path in files.items()
    }
    found = {r["metadata"]["uid"]: r for records in decoded.values() for r in records}
    log_tail = connect_worker["log"].read_text(errors="replace")[-3000:]
    assert len(found) == len(events), f"Connect wrote {len(found)} of {len(events)}:\n{log_tail}"
    for event in events:
        sent = ocsf_json.render(codec.decode(codec.encode(event.record)))
        assert _seconds(found[event.event_id]) == _seconds(sent)
        assert found[event.event_id] in decoded[event.status]
        assert_ocsf(found[event.event_id])
    with capsys.disabled():
        print_consumer_row(
            "Kafka Connect standalone + Apicurio AvroConverter (as-confluent) -> file sink",
            sent=len(events),
            decoded=len(found),
            ocsf_valid=len(found),
        )


def test_the_worker_is_the_brokers_kafka_version() -> None:
    pom = (REPO / "scripts/kafka-connect/pom.xml").read_text()
    broker = (REPO / "scripts/kafka/pom.xml").read_text()
    version = re.compile(r"<kafka.version>(.*)</kafka.version>")
    assert version.findall(pom) == version.findall(broker)
    assert os.access(REPO / "scripts/connect", os.X_OK)
