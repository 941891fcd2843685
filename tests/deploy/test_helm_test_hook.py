"""The chart's `helm test` pod, as rendered: what it checks, where, and with which privileges.

tests/deploy/test_chart_pods.py runs it for real against a pod played from the chart.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from .deploy_support import CHART, admin_service, objects_of, one, workload

pytestmark = pytest.mark.helm

Render = Callable[..., list[dict[str, Any]]]


def ci(name: str) -> Path:
    return CHART / "ci" / f"{name}-values.yaml"


def helm_test_pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (pod,) = objects_of(objects, "Pod")
    return pod


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    (container,) = pod["spec"]["containers"]
    return {e["name"]: e["value"] for e in container["env"]}


def test_helm_test_pod_is_a_test_hook_that_runs_once(render: Render) -> None:
    pod = helm_test_pod(render(ci("default")))
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"


def test_helm_test_pod_reads_readiness_and_metrics_and_never_posts_a_login(
    render: Render,
) -> None:
    (container,) = helm_test_pod(render(ci("default")))["spec"]["containers"]
    script = container["args"][0]
    compile(script, "helm-test", "exec")
    assert container["command"] == ["python3", "-c"]
    assert 'get("/readyz")' in script
    assert 'get("/metrics")' in script
    assert "/v1/hooks" not in script
    assert "data=" not in script
    assert "POST" not in script


def test_helm_test_pod_asks_the_admin_service_in_plain_http_even_under_mtls(
    render: Render,
) -> None:
    """With tls.clientAuth the hook port wants a client certificate the pod does not have."""
    for values in ("default", "all-optional-objects-on"):
        objects = render(ci(values))
        service = admin_service(objects)
        assert env_of(helm_test_pod(objects))["LOGIN_AUDIT_TEST_URL"] == (
            f"http://{service['metadata']['name']}.security.svc:{service['spec']['ports'][0]['port']}"
        )


def test_helm_test_pod_is_not_taken_for_a_bridge_by_the_service(render: Render) -> None:
    """A pod matching the Service's selector would get hook traffic it cannot answer."""
    objects = render(ci("all-optional-objects-on"))
    labels = helm_test_pod(objects)["metadata"]["labels"]
    for service in objects_of(objects, "Service"):  # the hook port's and the admin port's
        selector = service["spec"]["selector"]
        assert not selector.items() <= labels.items()
    budget = one(objects, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"]
    assert not budget.items() <= labels.items()


def test_helm_test_pod_runs_with_the_bridges_image_and_restrictions(render: Render) -> None:
    objects = render(ci("default"))
    pod = helm_test_pod(objects)
    bridge_pod = workload(objects)["spec"]["template"]["spec"]
    (container,) = pod["spec"]["containers"]
    (bridge,) = bridge_pod["containers"]
    assert container["image"] == bridge["image"]
    assert container["securityContext"] == bridge["securityContext"]
    assert pod["spec"]["securityContext"] == bridge_pod["securityContext"]
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
