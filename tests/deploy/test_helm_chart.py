"""The Helm chart, linted, rendered and validated by the real helm and kubeconform."""

from __future__ import annotations

import base64
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .deploy_support import (
    CHART,
    CI_VALUES,
    CRD_SCHEMAS,
    KUBE_VERSION,
    Tools,
    hook_service,
    objects_of,
    one,
    render_text,
    run,
    workload,
)

pytestmark = pytest.mark.helm

Render = Callable[..., list[dict[str, Any]]]
CRD_LOCATION = (
    f"{CRD_SCHEMAS}/{{{{ .Group }}}}/{{{{ .ResourceKind }}}}_{{{{ .ResourceAPIVersion }}}}.json"
)
OPTIONAL_KINDS = (
    "Ingress",
    "ServiceMonitor",
    "PrometheusRule",
    "PodDisruptionBudget",
    "HorizontalPodAutoscaler",
    "NetworkPolicy",
    "PersistentVolumeClaim",
)


def ci(name: str) -> Path:
    return CHART / "ci" / f"{name}-values.yaml"


def container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]]
    containers = workload(objects)["spec"]["template"]["spec"]["containers"]
    assert [c["name"] for c in containers] == ["bridge"]
    return containers[0]


def config_data(objects: list[dict[str, Any]]) -> dict[str, str]:
    data: dict[str, str] = one(objects, "ConfigMap")["data"]
    return data


def secret_data(objects: list[dict[str, Any]]) -> dict[str, str]:
    raw = one(objects, "Secret")["data"]
    return {key: base64.b64decode(value).decode() for key, value in raw.items()}


def checksum(objects: list[dict[str, Any]]) -> str:
    annotations = workload(objects)["spec"]["template"]["metadata"]["annotations"]
    value: str = annotations["checksum/config"]
    return value


# -- every scenario passes the real tools


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_helm_lint_strict_passes_for_each_ci_scenario(tools: Tools, values: Path) -> None:
    done = run(
        tools.helm, "lint", CHART, "--strict", "--values", values, "--kube-version", KUBE_VERSION
    )
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("values", CI_VALUES, ids=lambda p: p.name)
def test_rendered_manifests_pass_kubeconform_strict(
    tools: Tools, values: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.yaml"
    manifest.write_text(render_text(tools, values))
    done = run(
        tools.kubeconform,
        "-strict",
        "-summary",
        "-output",
        "text",
        "-kubernetes-version",
        KUBE_VERSION,
        "-schema-location",
        tools.kubeconform_schema_location,
        # ServiceMonitor and PrometheusRule: prometheus-operator's CRDs, vendored as JSON schema.
        "-schema-location",
        CRD_LOCATION,
        manifest,
    )
    assert "Invalid: 0, Errors: 0, Skipped: 0" in done.stdout, done.stdout


def test_kubeconform_rejects_an_unknown_field_so_the_validation_is_real(
    tools: Tools, tmp_path: Path
) -> None:
    manifest = tmp_path / "manifest.yaml"
    rendered = render_text(tools, ci("default"))
    manifest.write_text(
        rendered.replace(
            "      enableServiceLinks: false",
            "      enableServiceLinks: false\n      bogusField: 1",
        )
    )
    done = run(
        tools.kubeconform,
        "-strict",
        "-schema-location",
        tools.kubeconform_schema_location,
        manifest,
        check=False,
    )
    assert done.returncode == 1
    assert "additional properties 'bogusField' not allowed" in done.stdout


def test_values_schema_rejects_an_unknown_key(tools: Tools) -> None:
    message = render_text(tools, sets={"sink.kafka.bootstrapServer": "typo:9092"}, check=False)
    assert "additional properties 'bootstrapServer' not allowed" in message


def test_values_schema_rejects_an_unknown_sink(tools: Tools) -> None:
    message = render_text(tools, sets={"sink.type": "s3"}, check=False)
    assert "/sink/type" in message
    assert "value must be one of 'file', 'kafka', 'rabbitmq'" in message


@pytest.mark.parametrize(
    ("key", "variable"),
    [
        ("topicPartitions", "BRIDGE_KAFKA_TOPIC_PARTITIONS"),
        ("topicReplication", "BRIDGE_KAFKA_TOPIC_REPLICATION"),
    ],
)
@pytest.mark.parametrize("value", [0, -2])
def test_values_schema_takes_a_topic_count_or_minus_one_for_the_brokers_default(
    tools: Tools, key: str, variable: str, value: int
) -> None:
    message = render_text(tools, sets={f"sink.kafka.{key}": value}, check=False)
    assert f"at '/sink/kafka/{key}'" in message
    rendered = render_text(tools, sets={f"sink.kafka.{key}": -1, "sink.type": "kafka"})
    assert f'{variable}: "-1"' in rendered


def test_grace_period_not_longer_than_the_drain_is_refused(tools: Tools) -> None:
    message = render_text(tools, sets={"terminationGracePeriodSeconds": 20}, check=False)
    assert "terminationGracePeriodSeconds must exceed bridge.shutdownTimeoutSeconds" in message


def test_persistent_spool_with_several_replicas_is_refused(tools: Tools) -> None:
    message = render_text(tools, ci("pvc"), sets={"replicaCount": 2}, check=False)
    assert "spool.persistence.enabled needs replicaCount 1" in message


# -- the Deployment


def test_probes_are_healthz_for_liveness_and_readyz_for_readiness_on_the_admin_port(
    render: Render,
) -> None:
    objects = render(ci("default"))
    bridge = container(objects)
    assert bridge["livenessProbe"]["httpGet"] == {
        "path": "/healthz",
        "port": "admin",
        "scheme": "HTTP",
    }
    assert bridge["readinessProbe"]["httpGet"] == {
        "path": "/readyz",
        "port": "admin",
        "scheme": "HTTP",
    }
    ports = {p["name"]: p["containerPort"] for p in bridge["ports"]}
    assert ports == {"http": 8080, "admin": 8081}
    config = config_data(objects)
    assert (config["BRIDGE_ADMIN_HOST"], config["BRIDGE_ADMIN_PORT"]) == ("0.0.0.0", "8081")  # noqa: S104


def test_probes_stay_plain_http_when_the_bridge_requires_client_certificates(
    render: Render,
) -> None:
    """The kubelet has no client certificate: HTTPS probes on the mTLS port restart-loop."""
    objects = render(ci("all-optional-objects-on"))
    bridge = container(objects)
    assert config_data(objects)["BRIDGE_TLS_CLIENT_CA"].endswith("/ca.crt")
    assert bridge["livenessProbe"]["httpGet"]["scheme"] == "HTTP"
    assert bridge["readinessProbe"]["httpGet"]["port"] == "admin"


def test_container_runs_non_root_read_only_without_capabilities(render: Render) -> None:
    objects = render(ci("default"))
    pod = workload(objects)["spec"]["template"]["spec"]
    security = container(objects)["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == 10001
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False


def test_data_dir_and_tmp_are_writable_volumes_on_the_read_only_root(render: Render) -> None:
    objects = render(ci("default"))
    mounts = {m["name"]: m["mountPath"] for m in container(objects)["volumeMounts"]}
    spec = workload(objects)["spec"]
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    assert mounts == {"login-audit-spool": "/var/lib/login-audit-bridge", "tmp": "/tmp"}
    (claim,) = spec["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "login-audit-spool"
    assert claim["spec"]["resources"]["requests"]["storage"] == "2Gi"
    assert volumes.keys() == {"tmp"}
    assert volumes["tmp"]["emptyDir"] == {"sizeLimit": "64Mi"}
    assert config_data(objects)["BRIDGE_DATA_DIR"] == "/var/lib/login-audit-bridge"
    assert config_data(objects)["BRIDGE_HOST"] == "0.0.0.0"  # noqa: S104  (inside the pod)


def test_each_pod_runs_one_worker_unless_bridge_workers_says_more(render: Render) -> None:
    """The bridge alone defaults to one worker per CPU it may use; in a pod without a CPU limit
    that would be the node's, so the chart pins the count and pods are what scales."""
    assert config_data(render(ci("default")))["BRIDGE_WORKERS"] == "1"
    assert config_data(render(ci("default"), sets={"bridge.workers": 4}))["BRIDGE_WORKERS"] == "4"


def test_grace_period_exceeds_the_in_flight_timeout_plus_the_spool_drain(render: Render) -> None:
    objects = render(ci("default"))
    grace = workload(objects)["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    in_flight = float(config_data(objects)["BRIDGE_SHUTDOWN_TIMEOUT_SECONDS"])
    drain = float(config_data(objects)["BRIDGE_SHUTDOWN_DRAIN_SECONDS"])
    assert (grace, in_flight, drain) == (50, 20.0, 20.0)


def test_grace_period_that_leaves_no_time_for_the_spool_drain_is_refused(tools: Tools) -> None:
    message = render_text(tools, sets={"terminationGracePeriodSeconds": 40}, check=False)
    assert "must exceed bridge.shutdownTimeoutSeconds plus bridge.shutdownDrainSeconds" in message


def test_service_links_are_off_so_no_stray_bridge_variables_appear(render: Render) -> None:
    pod = workload(render(ci("default")))["spec"]["template"]["spec"]
    assert pod["enableServiceLinks"] is False


def test_every_configmap_key_is_a_setting_of_the_bridge(render: Render) -> None:
    """The bridge refuses unknown BRIDGE_* variables, so a typo here would stop every pod."""
    from bridge.settings import Settings

    known = {f"BRIDGE_{name.upper()}" for name in Settings.model_fields}
    for values in CI_VALUES:
        objects = render(values)
        keys = set(config_data(objects))
        keys |= set(one(objects, "Secret")["data"]) if objects_of(objects, "Secret") else set()
        assert keys - known == set(), values.name


def test_topology_spread_gets_the_selector_labels(render: Render) -> None:
    pod = workload(render(ci("default")))["spec"]["template"]["spec"]
    assert pod["topologySpreadConstraints"] == [
        {
            "maxSkew": 1,
            "topologyKey": "kubernetes.io/hostname",
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {
                "matchLabels": {
                    "app.kubernetes.io/name": "login-audit-bridge",
                    "app.kubernetes.io/instance": "audit",
                }
            },
        }
    ]


def test_selector_labels_carry_no_chart_version(render: Render) -> None:
    deployment = workload(render(ci("default")))
    assert deployment["spec"]["selector"]["matchLabels"] == {
        "app.kubernetes.io/name": "login-audit-bridge",
        "app.kubernetes.io/instance": "audit",
    }
    assert deployment["metadata"]["labels"]["helm.sh/chart"] == "login-audit-bridge-0.1.0"


# -- the checksum annotation


def test_checksum_annotation_is_a_sha256(render: Render) -> None:
    value = checksum(render(ci("default")))
    assert len(value) == 64
    assert set(value) <= set("0123456789abcdef")


def test_checksum_changes_when_a_setting_changes(render: Render) -> None:
    before = checksum(render(ci("default")))
    after = checksum(render(ci("default"), sets={"bridge.logLevel": "debug"}))
    assert before != after


def test_checksum_changes_when_a_token_changes(render: Render) -> None:
    before = checksum(render(ci("rabbitmq")))
    after = checksum(render(ci("rabbitmq"), sets={"auth.tokens[0]": "another-token-0123456789"}))
    assert before != after


def test_checksum_stays_when_only_the_replica_count_changes(render: Render) -> None:
    scaled = render(ci("default"), sets={"replicaCount": 3})
    assert checksum(render(ci("default"))) == checksum(scaled)


# -- sinks, secrets and TLS


def test_default_is_the_file_sink_with_a_token_the_chart_made(render: Render) -> None:
    """The bridge refuses to serve 0.0.0.0 without a token, and so does the chart."""
    objects = render(ci("default"))
    assert config_data(objects)["BRIDGE_SINK"] == "file"
    secret = one(objects, "Secret")
    assert secret["metadata"]["annotations"] == {"login-audit-bridge/generated-token": "true"}
    token = secret_data(objects)["BRIDGE_AUTH_TOKENS"]
    assert len(token) == 40 and token.isalnum()
    assert secret_data(render(ci("default")))["BRIDGE_AUTH_TOKENS"] != token  # random
    assert container(objects)["envFrom"] == [
        {"configMapRef": {"name": "audit-login-audit-bridge"}},
        {"secretRef": {"name": "audit-login-audit-bridge"}},
    ]


def test_given_tokens_are_used_and_none_is_made(render: Render) -> None:
    secret = one(render(ci("rabbitmq")), "Secret")
    assert "annotations" not in secret["metadata"]
    assert secret_data(render(ci("rabbitmq")))["BRIDGE_AUTH_TOKENS"] == "ci-token-0123456789abcdef"


def chart_with_lookup_answer(tmp_path: Path) -> Path:
    """A copy of the chart whose lookup answers with .Values.lookupAnswer.

    lookup needs a cluster and answers nothing to `helm template`; the copy stands in for what
    the cluster would answer on `helm upgrade`, so that the code around it can be tested.
    """
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    (chart / "values.schema.json").unlink()  # lookupAnswer is no value of the real chart
    secret = chart / "templates" / "secret.yaml"
    call = 'lookup "v1" "Secret" (include "login-audit-bridge.namespace" .) $fullname'
    text = secret.read_text(encoding="utf-8")
    assert call in text
    secret.write_text(text.replace(call, ".Values.lookupAnswer"), encoding="utf-8")
    return chart


@pytest.mark.parametrize(
    ("annotations", "kept"),
    [({"login-audit-bridge/generated-token": "true"}, True), ({}, False)],
    ids=["made-by-the-chart", "not-made-by-the-chart"],
)
def test_an_upgrade_keeps_the_token_the_chart_made_before(
    tools: Tools, tmp_path: Path, annotations: dict[str, str], kept: bool
) -> None:
    earlier = base64.b64encode(b"tokenMadeOnInstall0123456789").decode()
    answer = {"metadata": {"annotations": annotations}, "data": {"BRIDGE_AUTH_TOKENS": earlier}}
    values = tmp_path / "lookup.yaml"
    values.write_text(yaml.safe_dump({"lookupAnswer": answer}), encoding="utf-8")
    done = run(
        tools.helm,
        "template",
        "audit",
        chart_with_lookup_answer(tmp_path),
        "--namespace",
        "security",
        "--values",
        values,
        "--show-only",
        "templates/secret.yaml",
    )
    token = yaml.safe_load(done.stdout)["data"]["BRIDGE_AUTH_TOKENS"]
    assert (token == earlier) is kept


def test_kafka_sasl_tls_puts_passwords_in_the_secret_and_files_on_a_mount(render: Render) -> None:
    objects = render(ci("kafka-sasl-tls"))
    config, secret = config_data(objects), secret_data(objects)
    assert config["BRIDGE_SINK"] == "kafka"
    assert config["BRIDGE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert config["BRIDGE_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"
    assert config["BRIDGE_KAFKA_SSL_CA_LOCATION"] == "/etc/login-audit-bridge/kafka-tls/ca.crt"
    assert config["BRIDGE_KAFKA_SSL_KEY_LOCATION"] == "/etc/login-audit-bridge/kafka-tls/tls.key"
    assert config["BRIDGE_SCHEMA_REGISTRY_URL"] == "https://schema-registry:8081"
    assert secret == {
        "BRIDGE_AUTH_TOKENS": "ci-token-0123456789abcdef",
        "BRIDGE_KAFKA_SASL_PASSWORD": "ci-sasl-password",
        "BRIDGE_KAFKA_SSL_KEY_PASSWORD": "ci-key-password",
        "BRIDGE_SCHEMA_REGISTRY_PASSWORD": "ci-registry-password",
    }
    assert not any("password" in value for value in config.values())
    mounts = {m["name"]: m for m in container(objects)["volumeMounts"]}
    assert mounts["kafka-tls"] == {
        "name": "kafka-tls",
        "mountPath": "/etc/login-audit-bridge/kafka-tls",
        "readOnly": True,
    }
    assert config["BRIDGE_SCHEMA_REGISTRY_SSL_CA_LOCATION"] == (
        "/etc/login-audit-bridge/registry-tls/ca.crt"
    )
    assert config["BRIDGE_SCHEMA_REGISTRY_SSL_CERTIFICATE_LOCATION"] == (
        "/etc/login-audit-bridge/registry-tls/tls.crt"
    )
    assert config["BRIDGE_SCHEMA_REGISTRY_SSL_KEY_LOCATION"] == (
        "/etc/login-audit-bridge/registry-tls/tls.key"
    )
    assert mounts["registry-tls"]["mountPath"] == "/etc/login-audit-bridge/registry-tls"
    pod = workload(objects)["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["registry-tls"]["secret"]["secretName"] == "schema-registry-ca"


def test_rabbitmq_url_with_credentials_is_only_in_the_secret(render: Render) -> None:
    objects = render(ci("rabbitmq"))
    assert secret_data(objects)["BRIDGE_RABBITMQ_URL"] == (
        "amqps://login-audit:ci-password@rabbitmq:5671/audit"
    )
    assert "BRIDGE_RABBITMQ_URL" not in config_data(objects)
    assert config_data(objects)["BRIDGE_RABBITMQ_SSL_CA_FILE"] == (
        "/etc/login-audit-bridge/rabbitmq-tls/ca.crt"
    )
    assert not any(k.startswith("BRIDGE_KAFKA") for k in config_data(objects))


def test_existing_secret_is_read_and_no_secret_is_made(render: Render) -> None:
    objects = render(ci("existing-secret"))
    assert objects_of(objects, "Secret") == []
    assert container(objects)["envFrom"] == [
        {"configMapRef": {"name": "audit-login-audit-bridge"}},
        {"secretRef": {"name": "login-audit-bridge-secrets"}},
    ]


def test_tokens_are_joined_with_commas_for_rotation(render: Render) -> None:
    secret = secret_data(render(ci("all-optional-objects-on")))
    assert secret["BRIDGE_AUTH_TOKENS"] == (
        "ci-token-0123456789abcdef,ci-token-next-fedcba9876543210"
    )


# -- optional objects


def test_optional_objects_are_absent_by_default(render: Render) -> None:
    objects = render(ci("default"))
    # The `helm test` pod is a hook: `helm install` does not create it.
    kinds = sorted(
        o["kind"] for o in objects if "helm.sh/hook" not in o["metadata"].get("annotations", {})
    )
    # Two Services: the hook port's, and the admin port's (ClusterIP only).
    assert kinds == ["ConfigMap", "Secret", "Service", "Service", "ServiceAccount", "StatefulSet"]


def test_all_optional_objects_render_when_enabled(render: Render) -> None:
    kinds = {o["kind"] for o in render(ci("all-optional-objects-on"))}
    assert set(OPTIONAL_KINDS) - {"PersistentVolumeClaim"} <= kinds


def test_hpa_replaces_the_fixed_replica_count(render: Render) -> None:
    objects = render(ci("all-optional-objects-on"))
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 5)
    assert hpa["scaleTargetRef"]["name"] == "audit-login-audit-bridge"
    assert "replicas" not in workload(objects)["spec"]


def test_service_monitor_scrapes_metrics_as_the_job_the_alerts_expect(render: Render) -> None:
    """On the admin port, plain HTTP: Prometheus presents no client certificate."""
    objects = render(ci("all-optional-objects-on"))
    monitor = one(objects, "ServiceMonitor")
    services = {s["metadata"]["name"]: s for s in objects_of(objects, "Service")}
    admin = services["audit-login-audit-bridge-admin"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["spec"]["endpoints"][0]["port"] == "admin"
    assert monitor["spec"]["endpoints"][0]["scheme"] == "http"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    selected = [
        s
        for s in services.values()
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert selected == [admin]
    assert admin["spec"]["type"] == "ClusterIP"
    assert admin["spec"]["ports"] == [
        {"name": "admin", "port": 8081, "targetPort": "admin", "protocol": "TCP"}
    ]
    assert admin["metadata"]["labels"][monitor["spec"]["jobLabel"]] == "login-audit-bridge"
    main = services["audit-login-audit-bridge"]
    assert [p["name"] for p in main["spec"]["ports"]] == ["http"]


def test_prometheus_rule_holds_the_alert_rules_file(render: Render) -> None:
    from .deploy_support import alert_rules

    rule = one(render(ci("all-optional-objects-on")), "PrometheusRule")
    rendered = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    assert rendered == alert_rules()


def test_network_policy_admits_the_listed_peers_on_each_port(render: Render) -> None:
    policy = one(render(ci("all-optional-objects-on")), "NetworkPolicy")["spec"]
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    hooks, admin = policy["ingress"]
    assert hooks["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert len(hooks["from"]) == 2
    assert admin["ports"] == [{"port": "admin", "protocol": "TCP"}]
    assert admin["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def test_ingress_routes_only_the_hook_paths(render: Render) -> None:
    ingress = one(render(ci("all-optional-objects-on")), "Ingress")["spec"]
    paths = [p["path"] for rule in ingress["rules"] for p in rule["http"]["paths"]]
    assert paths == ["/v1/hooks"]


PDB_ON = {"podDisruptionBudget.enabled": True}


@pytest.mark.parametrize("scenario", ["default", "pvc"])
def test_an_enabled_pdb_on_one_pod_lets_a_node_drain(render: Render, scenario: str) -> None:
    """One replica (the persistent spool forces it) with minAvailable 1 would block every drain."""
    pdb = one(render(ci(scenario), sets=PDB_ON), "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert "minAvailable" not in pdb


def test_an_enabled_pdb_with_autoscaling_evicts_one_pod_at_a_time(render: Render) -> None:
    pdb = one(render(ci("all-optional-objects-on")), "PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert "minAvailable" not in pdb


def test_min_available_below_the_fewest_pods_replaces_max_unavailable(render: Render) -> None:
    sets = {"podDisruptionBudget.minAvailable": 1}
    pdb = one(render(ci("all-optional-objects-on"), sets=sets), "PodDisruptionBudget")["spec"]
    assert pdb["minAvailable"] == 1  # autoscaling keeps at least 2 pods
    assert "maxUnavailable" not in pdb


@pytest.mark.parametrize(
    ("values", "sets"),
    [
        ("default", {**PDB_ON, "podDisruptionBudget.minAvailable": 1}),
        ("pvc", {**PDB_ON, "podDisruptionBudget.minAvailable": "100%"}),
        ("default", {**PDB_ON, "replicaCount": 2, "podDisruptionBudget.minAvailable": 2}),
        ("all-optional-objects-on", {"podDisruptionBudget.minAvailable": 2}),
        ("default", {**PDB_ON, "podDisruptionBudget.maxUnavailable": 0}),
        ("default", {**PDB_ON, "podDisruptionBudget.maxUnavailable": "0%"}),
    ],
    ids=["min-1-of-1", "min-100%", "min-2-of-2", "min-2-of-hpa-2", "max-0", "max-0%"],
)
def test_a_pdb_that_would_block_every_node_drain_is_refused(
    tools: Tools, values: str, sets: dict[str, Any]
) -> None:
    message = render_text(tools, ci(values), sets=sets, check=False)
    assert "podDisruptionBudget would block every node drain" in message


def test_pvc_spool_mounts_a_claim_and_recreates_pods(render: Render) -> None:
    objects = render(ci("pvc"))
    claim = one(objects, "PersistentVolumeClaim")
    deployment = workload(objects)["spec"]
    volumes = {v["name"]: v for v in deployment["template"]["spec"]["volumes"]}
    assert claim["spec"]["resources"]["requests"]["storage"] == "5Gi"
    assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert volumes["data"] == {
        "name": "data",
        "persistentVolumeClaim": {"claimName": claim["metadata"]["name"]},
    }
    assert deployment["strategy"] == {"type": "Recreate"}


def rendered_notes(tools: Tools, tmp_path: Path, values: Path) -> str:
    """NOTES.txt as `helm install` prints it.

    Only `helm install` renders NOTES.txt, and it needs a cluster even with --dry-run, so a
    copy of the chart wraps the same text in a template that `helm template` renders.
    """
    chart = tmp_path / "chart"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text(encoding="utf-8")
    (chart / "templates" / "_notes.tpl").write_text(
        '{{- define "notes" }}' + notes + "{{- end }}", encoding="utf-8"
    )
    (chart / "templates" / "notes.yaml").write_text(
        'notes: {{ include "notes" . | toJson }}\n', encoding="utf-8"
    )
    done = run(
        tools.helm,
        "template",
        "audit",
        chart,
        "--namespace",
        "security",
        "--kube-version",
        KUBE_VERSION,
        "--values",
        values,
        "--show-only",
        "templates/notes.yaml",
    )
    text: str = yaml.safe_load(done.stdout)["notes"]
    return text


def test_notes_print_the_sftpgo_hook_url_and_mediawiki_settings(
    tools: Tools, tmp_path: Path
) -> None:
    notes = rendered_notes(tools, tmp_path, ci("kafka-sasl-tls"))
    assert (
        "common.post_login_hook = http://audit-login-audit-bridge.security.svc:8080/v1/hooks/sftpgo"
        in notes
    )
    assert (
        "$wgLoginAuditBridgeUrl = 'http://audit-login-audit-bridge.security.svc:8080"
        "/v1/hooks/mediawiki';" in notes
    )
    assert "$wgLoginAuditBridgeToken = '<token>';" in notes
    assert "WARNING" not in notes


def test_notes_say_where_the_token_the_chart_made_is(tools: Tools, tmp_path: Path) -> None:
    notes = rendered_notes(tools, tmp_path, ci("default"))
    assert "The chart made a random token" in notes
    assert (
        "kubectl -n security get secret audit-login-audit-bridge"
        " -o jsonpath='{.data.BRIDGE_AUTH_TOKENS}' | base64 -d" in notes
    )
    assert "https://" not in notes


@pytest.mark.parametrize("volume", ["auto", "emptyDir"])
def test_default_file_sink_retention_stays_below_the_data_volume_size(
    render: Render, volume: str
) -> None:
    """A full claim stops the sink, and an emptyDir past its sizeLimit gets the pod evicted with
    every file: never let either fill."""
    objects = render(sets={"spool.volume": volume})
    retain = int(config_data(objects)["BRIDGE_FILE_RETAIN_BYTES"])
    spec = workload(objects)["spec"]
    if volume == "auto":
        size: str = spec["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]["storage"]
    else:
        (data,) = [v for v in spec["template"]["spec"]["volumes"] if v["name"] == "data"]
        size = data["emptyDir"]["sizeLimit"]
    assert size.endswith("Gi")
    assert 0 < retain <= 0.6 * int(size[:-2]) * 1024**3


# -- where each replica keeps its spool (issue 15)


@pytest.mark.parametrize("values", ["per-pod-spool", "kafka-sasl-tls", "rabbitmq"])
def test_a_broker_sink_gives_each_replica_its_own_spool_claim_by_default(
    render: Render, values: str
) -> None:
    objects = render(ci(values))
    assert objects_of(objects, "Deployment") == []
    assert objects_of(objects, "PersistentVolumeClaim") == []  # the StatefulSet makes them
    spec = one(objects, "StatefulSet")["spec"]
    (template,) = spec["volumeClaimTemplates"]
    assert template["metadata"]["name"] == "login-audit-spool"
    assert template["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {
        m["name"]: m["mountPath"] for m in spec["template"]["spec"]["containers"][0]["volumeMounts"]
    }
    assert mounts["login-audit-spool"] == "/var/lib/login-audit-bridge"
    volumes = {v["name"] for v in spec["template"]["spec"]["volumes"]}
    assert "login-audit-spool" not in volumes and "data" not in volumes
    # A scaled-down pod's claim, and what it could not drain, stays.
    assert spec["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Retain",
        "whenScaled": "Retain",
    }
    assert spec["podManagementPolicy"] == "Parallel"


@pytest.mark.parametrize("values", ["default", "file-sink"])
def test_the_file_sink_keeps_its_files_on_a_claim_per_pod_by_default(
    render: Render, values: str
) -> None:
    """The data directory holds the file sink's event files: an emptyDir loses every one."""
    objects = render(ci(values))
    assert config_data(objects)["BRIDGE_SINK"] == "file"
    assert objects_of(objects, "Deployment") == []
    spec = one(objects, "StatefulSet")["spec"]
    (template,) = spec["volumeClaimTemplates"]
    assert template["metadata"]["name"] == "login-audit-spool"
    pod = spec["template"]["spec"]
    data_dir = config_data(objects)["BRIDGE_DATA_DIR"]
    (data,) = [
        m["name"] for m in pod["containers"][0]["volumeMounts"] if m["mountPath"] == data_dir
    ]
    assert data == "login-audit-spool"
    assert [v["name"] for v in pod["volumes"] if "emptyDir" in v] == ["tmp"]
    assert spec["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"


def test_hpa_scales_the_statefulset_and_the_pdb_still_selects_its_pods(render: Render) -> None:
    objects = render(ci("per-pod-spool"))
    statefulset = one(objects, "StatefulSet")
    hpa = one(objects, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "name": statefulset["metadata"]["name"],
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 6)
    assert "replicas" not in statefulset["spec"]
    pdb = one(objects, "PodDisruptionBudget")["spec"]
    pod_labels = statefulset["spec"]["template"]["metadata"]["labels"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert statefulset["spec"]["selector"] == pdb["selector"]
    assert pdb["maxUnavailable"] == 1
    per_pod = statefulset["spec"]["volumeClaimTemplates"][0]["spec"]
    assert (per_pod["storageClassName"], per_pod["resources"]["requests"]["storage"]) == (
        "standard",
        "5Gi",
    )


def test_an_emptydir_only_when_chosen_and_then_a_deployment(render: Render) -> None:
    objects = render(ci("empty-dir"))
    assert objects_of(objects, "StatefulSet") == []
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["emptyDir"] == {"sizeLimit": "2Gi"}


def test_values_file_states_the_emptydir_risk() -> None:
    values = (CHART / "values.yaml").read_text(encoding="utf-8")
    assert "RISK: an emptyDir dies with its pod, and with it" in values
    assert "every event the pod answered 2xx for and spooled while the broker was away" in values


def test_notes_warn_of_an_emptydir_and_tell_how_to_drain_a_claim_without_pod(
    tools: Tools, tmp_path: Path
) -> None:
    risky = rendered_notes(tools, tmp_path / "a", ci("empty-dir"))
    assert "WARNING: the data directory is an emptyDir (spool.volume emptyDir)" in risky
    assert "spooled while the rabbitmq sink was away are LOST if the pod is deleted" in risky
    durable = rendered_notes(tools, tmp_path / "b", ci("per-pod-spool"))
    assert "WARNING" not in durable
    assert "--set drainJob.claimName=login-audit-spool-audit-login-audit-bridge-<ordinal>" in (
        durable
    )
    assert "port-forward statefulset/audit-login-audit-bridge" in durable


def test_notes_warn_of_the_file_sinks_emptydir_only_when_it_is_chosen(
    tools: Tools, tmp_path: Path
) -> None:
    default = rendered_notes(tools, tmp_path / "a", ci("default"))
    assert "WARNING" not in default
    assert "Each pod keeps its spool and the file sink's event files on a claim of its own" in (
        default
    )
    chosen = tmp_path / "empty-dir-file-sink.yaml"
    chosen.write_text("spool:\n  volume: emptyDir\n", encoding="utf-8")
    risky = rendered_notes(tools, tmp_path / "b", chosen)
    assert "WARNING: the data directory is an emptyDir (spool.volume emptyDir)" in risky
    assert "and so are the file sink's event files" in risky


def test_persistence_and_an_explicit_volume_together_are_refused(tools: Tools) -> None:
    message = render_text(tools, ci("pvc"), sets={"spool.volume": "emptyDir"}, check=False)
    assert "spool.persistence.enabled is the sharedClaim volume" in message


CLAIM = "login-audit-spool-audit-login-audit-bridge-3"


def test_drain_job_is_rendered_only_for_a_claim(render: Render) -> None:
    assert objects_of(render(ci("per-pod-spool")), "Job") == []


def test_drain_job_mounts_the_claim_and_drains_it_with_the_bridges_settings(
    render: Render,
) -> None:
    objects = render(ci("kafka-sasl-tls"), sets={"drainJob.claimName": CLAIM})
    job = one(objects, "Job")
    pod = job["spec"]["template"]["spec"]
    (drain,) = pod["containers"]
    bridge = one(objects, "StatefulSet")["spec"]["template"]
    (served,) = bridge["spec"]["containers"]
    assert drain["args"] == ["drain", "--timeout", "300"]
    assert drain["image"] == served["image"]
    assert drain["envFrom"] == served["envFrom"]  # the same sink, credentials and data_dir
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["data"]["persistentVolumeClaim"] == {"claimName": CLAIM}
    mounts = {m["name"]: m["mountPath"] for m in drain["volumeMounts"]}
    assert mounts["data"] == config_data(objects)["BRIDGE_DATA_DIR"]
    assert "kafka-tls" in mounts  # the broker's CA, as the bridge has it
    assert "registry-tls" in mounts  # and the registry's
    assert pod["restartPolicy"] == "Never"
    assert job["spec"]["backoffLimit"] == 3
    # The Services select the bridge's pods: never the drain's.
    selector = hook_service(objects)["spec"]["selector"]
    assert not selector.items() <= job["spec"]["template"]["metadata"]["labels"].items()
    assert drain["securityContext"]["readOnlyRootFilesystem"] is True


def test_drain_job_passes_kubeconform_strict(tools: Tools, tmp_path: Path) -> None:
    manifest = tmp_path / "drain.yaml"
    manifest.write_text(
        render_text(
            tools,
            ci("rabbitmq"),
            sets={"drainJob.claimName": CLAIM, "drainJob.timeoutSeconds": 120},
        )
    )
    done = run(
        tools.kubeconform,
        "-strict",
        "-summary",
        "-output",
        "text",
        "-kubernetes-version",
        KUBE_VERSION,
        "-schema-location",
        tools.kubeconform_schema_location,
        manifest,
    )
    assert "Invalid: 0, Errors: 0, Skipped: 0" in done.stdout, done.stdout
    assert "kind: Job" in manifest.read_text()
