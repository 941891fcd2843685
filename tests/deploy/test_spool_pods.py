"""A pod deleted while the broker is down, played with podman: its claim is drained by the Job.

The chart's StatefulSet pod (a Kafka sink, so a spool claim per pod) is played by `podman kube
play` with its claim as a podman volume, takes logins while its Kafka (the test's own, never the
shared one) is down, and is deleted. Kafka comes back; the chart's drain Job, rendered for that
claim, is played on the same volume and must send every acknowledged event. The pods use the
host's network (bound to 127.0.0.1) because the test's Kafka listens on loopback.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bridge.consume import KafkaReader
from bridge.settings import Settings

from .deploy_support import CHART, Tools, objects_of, one, render_text
from .podman_support import Image, exit_code, logs, podman, post_sftpgo_login, unique_name, wait_for
from conftest import print_fault_row
from support import OwnKafka, free_port, own_kafka_instance

pytestmark = [pytest.mark.image, pytest.mark.kafka]

N_EVENTS = 20
TOKEN = "ci-token-0123456789abcdef"  # the per-pod-spool scenario's throwaway token


@pytest.fixture
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnKafka]:
    with own_kafka_instance(tmp_path_factory.mktemp("own-kafka")) as kafka:
        yield kafka


class Lab:
    """podman objects made by one test, removed afterwards (pods first: volumes go last)."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.pods: list[str] = []
        self.names: list[tuple[str, ...]] = []

    def secret(self, secret: dict[str, Any]) -> None:
        path = self.workdir / "secret.json"
        path.write_text(json.dumps(secret.get("data", {})))
        path.chmod(0o600)
        podman("secret", "create", secret["metadata"]["name"], path)
        self.names.append(("secret", "rm", secret["metadata"]["name"]))

    def play(self, name: str, documents: list[dict[str, Any]]) -> None:
        path = self.workdir / f"{name}.yaml"
        path.write_text(yaml.safe_dump_all(documents))
        self.pods.append(name)
        podman("kube", "play", path, timeout=180)

    def cleanup(self) -> None:
        for pod in self.pods:
            podman("pod", "rm", "--force", "--time", "0", pod, check=False)
        for args in self.names:
            podman(*args, check=False)


def as_pod(name: str, template: dict[str, Any], volumes: dict[str, str]) -> dict[str, Any]:
    """A rendered pod template as a bare Pod on the host network, its claims and emptyDirs as
    podman volumes of this run (``volumes``: volume name -> podman volume)."""
    spec = copy.deepcopy(template["spec"])
    spec["hostNetwork"] = True
    kept = [v for v in spec.get("volumes", []) if v["name"] not in volumes]
    spec["volumes"] = kept + [
        {"name": volume, "persistentVolumeClaim": {"claimName": claim}}
        for volume, claim in volumes.items()
    ]
    for container in spec["containers"]:
        container.pop("ports", None)
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}


def loopback_config(config_map: dict[str, Any], port: int, admin: int) -> dict[str, Any]:
    """The host network is shared: loopback only, on ports of this run."""
    config_map = copy.deepcopy(config_map)
    config_map["data"] |= {
        "BRIDGE_HOST": "127.0.0.1",
        "BRIDGE_ADMIN_HOST": "127.0.0.1",
        "BRIDGE_PORT": str(port),
        "BRIDGE_ADMIN_PORT": str(admin),
    }
    return config_map


def delivered(kafka: OwnKafka, topic: str, expected: int) -> list[str]:
    settings = Settings(
        kafka_bootstrap_servers=kafka.bootstrap,
        kafka_topic_success=f"{topic}.success",
        kafka_topic_failure=f"{topic}.failure",
    )

    async def read() -> list[str]:
        names: list[str] = []
        async with KafkaReader(settings) as reader:
            async for event in reader.events(idle_timeout=10 if len(names) < expected else 2):
                assert event.record is not None, event.error
                names.append(event.record["user"]["name"])
        return names

    return asyncio.run(read())


def wait_exited(container: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = podman("inspect", "--format", "{{.State.Status}}", container).stdout.strip()
        if state in ("exited", "stopped"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{container} still runs:\n{logs(container)}")


def test_pod_deleted_while_the_broker_is_down_its_claim_is_drained_by_the_job(
    tools: Tools,
    image: Image,
    own_kafka: OwnKafka,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    name = unique_name("lab-spool-")
    topic = f"pod-drain-{uuid.uuid4().hex[:8]}"
    claim = f"login-audit-spool-{name}-0"
    repository, _, tag = image.ref.rpartition(":")
    sets: dict[str, str | int] = {
        "fullnameOverride": name,
        "image.repository": repository,
        "image.tag": tag,
        "sink.kafka.bootstrapServers": own_kafka.bootstrap,
        "sink.kafka.topicSuccess": f"{topic}.success",
        "sink.kafka.topicFailure": f"{topic}.failure",
        "sink.kafka.topicPartitions": 1,
        "bridge.publishTimeoutSeconds": 2,
        "bridge.shutdownDrainSeconds": 1,
        "drainJob.claimName": claim,
        "drainJob.timeoutSeconds": 60,
    }
    text = render_text(tools, CHART / "ci" / "per-pod-spool-values.yaml", sets=sets)
    objects = [o for o in yaml.safe_load_all(text) if o]
    port, admin = free_port(), free_port()
    config = loopback_config(one(objects, "ConfigMap"), port, admin)
    statefulset = one(objects, "StatefulSet")
    (job,) = objects_of(objects, "Job")
    lab = Lab(tmp_path)
    try:
        lab.secret(one(objects, "Secret"))
        bridge_pod = f"{name}-0"
        volumes = {"login-audit-spool": claim, "tmp": f"{bridge_pod}-tmp"}
        podman("volume", "create", claim)  # the claim the StatefulSet would have made
        lab.names.append(("volume", "rm", "--force", claim))
        lab.names.append(("volume", "rm", "--force", f"{bridge_pod}-tmp"))
        lab.play(bridge_pod, [config, as_pod(bridge_pod, statefulset["spec"]["template"], volumes)])
        container = f"{bridge_pod}-bridge"
        wait_for(f"http://127.0.0.1:{admin}/readyz", what=logs(container))

        names = [f"{topic}-{i}" for i in range(N_EVENTS)]
        acknowledged = []
        for user in names:
            answer = post_sftpgo_login(f"http://127.0.0.1:{port}", user=user, token=TOKEN)
            if answer.status == 200:
                acknowledged.append(user)
        assert len(acknowledged) == N_EVENTS, logs(container)  # spooled: Kafka is down

        # The pod is deleted (its node is gone): its claim stays, with the spool on it.
        podman("pod", "rm", "--force", "--time", "0", bridge_pod)
        own_kafka.start()

        drain_pod = f"{name}-drain"
        drain_volumes = {"data": claim, "tmp": f"{drain_pod}-tmp"}
        lab.names.append(("volume", "rm", "--force", f"{drain_pod}-tmp"))
        lab.play(drain_pod, [config, as_pod(drain_pod, job["spec"]["template"], drain_volumes)])
        drain = f"{drain_pod}-drain"
        wait_exited(drain)
        output = logs(drain)
        assert exit_code(drain) == 0, output
        assert f'"delivered": {N_EVENTS}, "left": 0' in output

        got = delivered(own_kafka, topic, N_EVENTS)
        lost = set(acknowledged) - set(got)
        print_fault_row(
            "pod deleted while the broker is down (played pod, drain Job)",
            sent=N_EVENTS,
            acknowledged=len(acknowledged),
            delivered=len(set(got)),
            lost=len(lost),
            duplicated=len(got) - len(set(got)),
            capsys=capsys,
        )
        assert lost == set()
    finally:
        lab.cleanup()
