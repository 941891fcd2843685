"""A pod deleted while the broker is down, played with podman: its claim is drained by the Job.

The chart's StatefulSet pod (a Kafka sink, so a spool claim per pod) is played by `podman kube
play` with its claim as a podman volume, takes logins while its Kafka (the test's own, never the
shared one) is down, and is deleted. Kafka comes back; the chart's drain Job, rendered for that
claim, is played on the same volume and must send every acknowledged event. The pods use the
host's network (bound to 127.0.0.1) because the test's Kafka listens on loopback.
"""

from __future__ import annotations

import copy
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from .deploy_support import CHART, Tools, one, render_text
from .podman_support import (
    Image,
    Lab,
    as_pod,
    exit_code,
    logs,
    podman,
    post_sftpgo_login,
    unique_name,
    wait_for,
)
from conftest import print_fault_row
from support import OwnKafka, free_port, own_kafka_instance

pytestmark = [pytest.mark.image, pytest.mark.kafka]

N_EVENTS = 20
TOKEN = "ci-token-0123456789abcdef"  # the per-pod-spool scenario's throwaway token


@pytest.fixture
def own_kafka(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnKafka]:
    with own_kafka_instance(tmp_path_factory.mktemp("own-kafka")) as kafka:
        yield kafka


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


def wait_exited(container: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = podman("inspect", "--format", "{{.State.Status}}", container).stdout.strip()
        if state in ("exited", "stopped"):
            return
        time.sleep(0.5)
    raise AssertionError(f"{container} still runs:\n{logs(container)}")


@dataclass
class PlayedBridge:
    """The StatefulSet's pod 0 of a Kafka-sink render, played with its claim as a volume."""

    lab: Lab
    objects: list[dict[str, Any]]
    config: dict[str, Any]
    pod: str
    claim: str
    topic: str
    port: int

    @property
    def container(self) -> str:
        return f"{self.pod}-bridge"

    def send(self, names: list[str]) -> list[str]:
        """Posts one SFTPGo login per name; the names answered 200."""
        base = f"http://127.0.0.1:{self.port}"
        return [
            user for user in names if post_sftpgo_login(base, user=user, token=TOKEN).status == 200
        ]


@pytest.fixture
def played_bridge(
    tools: Tools, image: Image, own_kafka: OwnKafka, tmp_path: Path
) -> Iterator[PlayedBridge]:
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
        "bridge.shutdownDrainSeconds": 25,
        "drainJob.claimName": claim,
        "drainJob.timeoutSeconds": 60,
    }
    text = render_text(tools, CHART / "ci" / "per-pod-spool-values.yaml", sets=sets)
    objects = [o for o in yaml.safe_load_all(text) if o]
    port, admin = free_port(), free_port()
    config = loopback_config(one(objects, "ConfigMap"), port, admin)
    lab = Lab(tmp_path)
    pod = f"{name}-0"
    played = PlayedBridge(lab, objects, config, pod, claim, topic, port)
    try:
        lab.secret(one(objects, "Secret"))
        podman("volume", "create", claim)  # the claim the StatefulSet would have made
        lab.names.append(("volume", "rm", "--force", claim))
        lab.names.append(("volume", "rm", "--force", f"{pod}-tmp"))
        volumes = {"login-audit-spool": claim, "tmp": f"{pod}-tmp"}
        template = one(objects, "StatefulSet")["spec"]["template"]
        lab.play(pod, [config, as_pod(pod, template, volumes)])
        wait_for(f"http://127.0.0.1:{admin}/readyz", what=logs(played.container))
        yield played
    finally:
        lab.cleanup()


def _report(
    scenario: str,
    acknowledged: list[str],
    got: list[str],
    capsys: pytest.CaptureFixture[str],
) -> set[str]:
    lost = set(acknowledged) - set(got)
    print_fault_row(
        scenario,
        sent=N_EVENTS,
        acknowledged=len(acknowledged),
        delivered=len(set(got)),
        lost=len(lost),
        duplicated=len(got) - len(set(got)),
        capsys=capsys,
    )
    return lost


def test_pod_deleted_while_the_broker_is_down_its_claim_is_drained_by_the_job(
    played_bridge: PlayedBridge, own_kafka: OwnKafka, capsys: pytest.CaptureFixture[str]
) -> None:
    bridge = played_bridge
    names = [f"{bridge.topic}-{i}" for i in range(N_EVENTS)]
    acknowledged = bridge.send(names)
    assert len(acknowledged) == N_EVENTS, logs(bridge.container)  # spooled: Kafka is down

    # The pod is deleted (its node is gone): its claim stays, with the spool on it.
    podman("pod", "rm", "--force", "--time", "0", bridge.pod)
    own_kafka.start()

    drain_pod = f"{bridge.pod}-drain"
    volumes = {"data": bridge.claim, "tmp": f"{drain_pod}-tmp"}
    bridge.lab.names.append(("volume", "rm", "--force", f"{drain_pod}-tmp"))
    template = one(bridge.objects, "Job")["spec"]["template"]
    bridge.lab.play(drain_pod, [bridge.config, as_pod(drain_pod, template, volumes)])
    drain = f"{drain_pod}-drain"
    wait_exited(drain)
    output = logs(drain)
    assert exit_code(drain) == 0, output
    assert f'"delivered": {N_EVENTS}, "left": 0' in output

    got = own_kafka.user_names(bridge.topic)
    scenario = "pod deleted while the broker is down (played pod, drain Job)"
    assert _report(scenario, acknowledged, got, capsys) == set()


def test_pod_stopped_with_a_backlog_drains_it_within_its_grace_period(
    played_bridge: PlayedBridge, own_kafka: OwnKafka, capsys: pytest.CaptureFixture[str]
) -> None:
    """The StatefulSet scaled down: SIGTERM, and the broker back within the grace period."""
    bridge = played_bridge
    names = [f"{bridge.topic}-{i}" for i in range(N_EVENTS)]
    acknowledged = bridge.send(names)
    assert len(acknowledged) == N_EVENTS, logs(bridge.container)
    grace = one(bridge.objects, "StatefulSet")["spec"]["template"]["spec"][
        "terminationGracePeriodSeconds"
    ]
    stopping = threading.Thread(
        target=podman,
        args=("pod", "stop", "--time", str(grace), bridge.pod),
        kwargs={"timeout": 120},
    )
    stopping.start()  # SIGTERM now, SIGKILL after the grace period
    own_kafka.start()
    stopping.join(150)
    output = logs(bridge.container)
    assert exit_code(bridge.container) == 0, output  # not killed: done within the grace period
    assert f"spool drained at shutdown: {N_EVENTS} event(s) sent" in output

    got = own_kafka.user_names(bridge.topic)
    scenario = "scaled down with a backlog (played pod)"
    assert _report(scenario, acknowledged, got, capsys) == set()
