"""The chart's pod played by `podman kube play` on the built image, and its `helm test` pod.

Each scenario is rendered by the real helm, then played as rendered, with the changes podman 4.3
needs (issue 12): it cannot play a StatefulSet, so its pod 0 is played as a bare Pod with each
claim the StatefulSet would make (<template>-<statefulset>-0) as a podman volume that outlives
the pod; the Secret is created with `podman secret create` (kube play mishandles Secret
documents), each container port gets a hostPort on 127.0.0.1 (kube play has no --publish), and
each emptyDir gets a name of this run's own (podman makes a named volume of it, shared by name).
kube play runs no probes, so the tests probe what the rendered spec names, as the kubelet would.
Names come from a fullnameOverride unique to the run: pods, volumes and secrets are global here.
The tests of a scenario run in file order against one pod; the last two delete it and play it
again on its claim, then stop it.
"""

from __future__ import annotations

import copy
import re
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import yaml

from .deploy_support import CHART, Tools, hook_service, objects_of, one, render_text
from .podman_support import (
    Image,
    Lab,
    exit_code,
    logs,
    pod_environment,
    podman,
    post_sftpgo_login,
    process_status,
    request,
    statefulset_pod,
    tail_events,
    unique_name,
    wait_for,
)
from support import free_port

pytestmark = pytest.mark.image

SCENARIOS = {
    "chart-defaults": (),
    "file-sink": (CHART / "ci" / "file-sink-values.yaml",),
}
PROBES = ("startupProbe", "livenessProbe", "readinessProbe")
KUBELET_HEADERS = {"User-Agent": "kube-probe/1.33", "Accept": "*/*"}


@dataclass
class Played:
    """One scenario's objects as rendered and the podman pod playing its StatefulSet's pod 0."""

    name: str
    objects: list[dict[str, Any]]
    pod: str
    host_ports: dict[int, int]
    token: str | None
    lab: Lab
    played: dict[str, Any]  # the Pod document given to kube play

    @property
    def pod_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = one(self.objects, "StatefulSet")["spec"]["template"]["spec"]
        return spec

    @property
    def bridge(self) -> dict[str, Any]:
        container: dict[str, Any]
        (container,) = self.pod_spec["containers"]
        return container

    @property
    def container(self) -> str:
        return f"{self.pod}-{self.bridge['name']}"

    def container_port(self, port: int | str) -> int:
        """A probe's or Service's port, by number or by the container port's name."""
        if isinstance(port, int):
            return port
        (number,) = [p["containerPort"] for p in self.bridge["ports"] if p.get("name") == port]
        return int(number)

    @property
    def hook_url(self) -> str:
        """Where SFTPGo would post: the Service's http port, reached through its hostPort."""
        (service_port,) = [
            p for p in hook_service(self.objects)["spec"]["ports"] if p["name"] == "http"
        ]
        port = self.container_port(service_port["targetPort"])
        tls = "BRIDGE_TLS_CERTFILE" in one(self.objects, "ConfigMap")["data"]
        return f"{'https' if tls else 'http'}://127.0.0.1:{self.host_ports[port]}"

    def probe_url(self, probe: dict[str, Any]) -> str:
        get = probe["httpGet"]
        port = self.host_ports[self.container_port(get["port"])]
        return f"{get.get('scheme', 'HTTP').lower()}://127.0.0.1:{port}{get.get('path', '/')}"

    def pod_ip(self) -> str:
        infra = podman("pod", "inspect", "--format", "{{.InfraContainerID}}", self.pod).stdout
        done = podman(
            "inspect",
            "--format",
            "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}",
            infra.strip(),
        )
        return done.stdout.strip()


def rendered_token(objects: list[dict[str, Any]]) -> str | None:
    """The first of BRIDGE_AUTH_TOKENS as the bridge container gets it, if it gets any."""
    tokens = pod_environment(objects).get("BRIDGE_AUTH_TOKENS")
    return tokens.split(",")[0] if tokens else None


def helm_test_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (hook,) = [
        o
        for o in objects_of(objects, "Pod")
        if o["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    ]
    return hook


def playable(played: Played, pod: str, pod_spec: dict[str, Any], *, publish: bool) -> None:
    """The three changes podman needs, made in place on a copy of a rendered pod spec."""
    renamed = {}
    for volume in pod_spec.get("volumes", []):
        if "emptyDir" in volume:
            renamed[volume["name"]] = f"{pod}-{volume['name']}"
            volume["name"] = renamed[volume["name"]]
            played.lab.names.append(("volume", "rm", "--force", volume["name"]))
    for container in pod_spec["containers"]:
        for mount in container.get("volumeMounts", []):
            mount["name"] = renamed.get(mount["name"], mount["name"])
        for port in container.get("ports", []) if publish else []:
            played.host_ports[port["containerPort"]] = free_port()
            port |= {"hostIP": "127.0.0.1", "hostPort": played.host_ports[port["containerPort"]]}


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def played(
    request: pytest.FixtureRequest,
    tools: Tools,
    image: Image,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Played]:
    name = unique_name("lab-chart-")
    repository, _, tag = image.ref.rpartition(":")
    text = render_text(
        tools,
        *SCENARIOS[request.param],
        sets={"fullnameOverride": name, "image.repository": repository, "image.tag": tag},
    )
    objects = [o for o in yaml.safe_load_all(text) if o]
    lab = Lab(tmp_path_factory.mktemp(request.param))
    try:
        pod = statefulset_pod(lab, one(objects, "StatefulSet"), host_network=False)
        played = Played(
            name=name,
            objects=objects,
            pod=pod["metadata"]["name"],
            host_ports={},
            token=rendered_token(objects),
            lab=lab,
            played=pod,
        )
        for secret in objects_of(objects, "Secret"):
            lab.secret(secret)
        playable(played, played.pod, pod["spec"], publish=True)
        lab.play(played.pod, [one(objects, "ConfigMap"), pod])
        wait_for(played.probe_url(played.bridge["readinessProbe"]), what=logs(played.container))
        yield played
    finally:
        lab.cleanup()


def test_pod_runs_as_its_rendered_security_context(played: Played) -> None:
    security = played.bridge["securityContext"]
    status = process_status(played.container)
    assert status["Uid"].split() == [str(security["runAsUser"])] * 4
    assert status["Gid"].split() == [str(security["runAsGroup"])] * 4
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert status["CapEff"] == status["CapBnd"] == "0000000000000000"
    assert security["allowPrivilegeEscalation"] is False
    assert status["NoNewPrivs"] == "1"
    assert security["readOnlyRootFilesystem"] is True
    touched = podman("exec", played.container, "touch", "/opt/login-audit-bridge/x", check=False)
    assert "Read-only file system" in touched.stderr


def test_probes_from_the_rendered_spec_answer_as_the_kubelet_expects(played: Played) -> None:
    """Every probe's own path, port (by name or number) and scheme; 200-399 is success."""
    probes = {kind: played.bridge[kind] for kind in PROBES if kind in played.bridge}
    assert {"livenessProbe", "readinessProbe"} <= probes.keys()
    for kind, probe in probes.items():
        headers = KUBELET_HEADERS | {
            h["name"]: h["value"] for h in probe["httpGet"].get("httpHeaders", [])
        }
        url = played.probe_url(probe)
        answer = request(url, headers=headers, timeout=probe.get("timeoutSeconds", 1))
        print(f"{kind}: GET {url} -> {answer.status} {answer.body}")
        assert 200 <= answer.status < 400, (kind, url, answer)


def test_authenticated_event_is_stored_and_read_back_with_tail_in_the_pod(
    played: Played,
) -> None:
    answer = post_sftpgo_login(played.hook_url, user="alice-pod", token=played.token)
    assert answer.status == 200, answer
    event_id = answer.json()["event_id"]
    (event,) = [e for e in tail_events(played.container) if e["metadata"]["uid"] == event_id]
    assert (event["user"]["name"], event["status"]) == ("alice-pod", "Success")


def test_event_without_the_rendered_token_is_refused(played: Played) -> None:
    answer = post_sftpgo_login(played.hook_url, user="mallory-pod", token=None)
    # Secure by default: the chart generates a token when none is given, so no scenario here
    # may render a bridge that accepts anyone who reaches it.
    assert played.token is not None, "these values render no token"
    assert answer.status == 401
    assert "mallory-pod" not in {e["user"]["name"] for e in tail_events(played.container)}


def hook_pod(played: Played, url: str, *, ready_seconds: str | None = None) -> tuple[int, str]:
    """Plays the chart's `helm test` pod against url; returns its exit code and its output."""
    hook = copy.deepcopy(helm_test_pod(played.objects))
    hook["metadata"]["name"] = unique_name(f"{played.name}-test-")
    (container,) = hook["spec"]["containers"]
    for env in container["env"]:
        if env["name"] == "LOGIN_AUDIT_TEST_URL":
            env["value"] = url
        if env["name"] == "LOGIN_AUDIT_TEST_READY_SECONDS" and ready_seconds:
            env["value"] = ready_seconds
    playable(played, hook["metadata"]["name"], hook["spec"], publish=False)
    played.lab.play(hook["metadata"]["name"], [hook])
    name = f"{hook['metadata']['name']}-{container['name']}"
    podman("wait", name, timeout=180)
    return exit_code(name), logs(name)


def service_url_in_the_pod_network(played: Played, rendered: str) -> str:
    """A Service URL as the cluster would route it: to the pod's IP and target port."""
    parts = urllib.parse.urlsplit(rendered)
    (service,) = [
        s
        for s in objects_of(played.objects, "Service")
        if parts.hostname == f"{s['metadata']['name']}.{s['metadata']['namespace']}.svc"
    ]
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == parts.port]
    target = played.container_port(port["targetPort"])
    return f"{parts.scheme}://{played.pod_ip()}:{target}"


def received_total(played: Played) -> float:
    text = request(f"{played.hook_url}/metrics").body
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if re.match(r"login_audit_events_received_total\{", line)
    )


def test_helm_test_pod_passes_against_the_pod_and_posts_nothing(played: Played) -> None:
    (hook,) = helm_test_pod(played.objects)["spec"]["containers"]
    rendered = {e["name"]: e["value"] for e in hook["env"]}["LOGIN_AUDIT_TEST_URL"]
    before = received_total(played)
    code, output = hook_pod(played, service_url_in_the_pod_network(played, rendered))
    print(output)
    assert code == 0, output
    assert re.search(r"^ok: \S+/readyz answered 200", output, re.MULTILINE), output
    assert re.search(r"^ok: /metrics answered 200 with \d+ families", output, re.MULTILINE)
    assert received_total(played) == before


def test_helm_test_pod_fails_when_the_bridge_does_not_answer(played: Played) -> None:
    code, output = hook_pod(played, f"http://{played.pod_ip()}:9", ready_seconds="1")
    assert code == 1, output
    assert "FAIL: http" in output and "/readyz did not answer 200 in time" in output


def test_stored_events_outlive_the_pod_on_its_claim(played: Played) -> None:
    """The data directory (the file sink's event files, the spool) is the pod's claim: a pod
    deleted and made again with its ordinal finds every event it acknowledged."""
    before = {e["metadata"]["uid"] for e in tail_events(played.container)}
    assert before  # the login stored above
    podman("pod", "rm", "--force", "--time", "0", played.pod)
    played.lab.play(played.pod, [one(played.objects, "ConfigMap"), played.played])
    wait_for(played.probe_url(played.bridge["readinessProbe"]), what=logs(played.container))
    after = {e["metadata"]["uid"] for e in tail_events(played.container)}
    assert before <= after


def test_pod_stops_cleanly_within_its_termination_grace_period(played: Played) -> None:
    """SIGTERM, then SIGKILL after terminationGracePeriodSeconds: exit 0 means no kill."""
    grace = played.pod_spec["terminationGracePeriodSeconds"]
    podman("pod", "stop", "--time", str(grace), played.pod, timeout=grace + 60)
    assert exit_code(played.container) == 0, logs(played.container)
    assert logs(played.container).rstrip().endswith('"message": "login-audit-bridge stopped"}')
