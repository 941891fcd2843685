"""The dashboard and the alerts against a live bridge and a real Prometheus scraping it.

Kafka's statistics metrics (login_audit_kafka_*) exist only while the Kafka sink runs, and
login_audit_worker_up only under `serve --workers N` with N > 1, so a one-worker file-sink bridge
is checked for every other name, and a Kafka-sink bridge and a two-worker bridge for those.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest

from .deploy_support import (
    PrometheusProcess,
    alert_rules,
    dashboard_expressions,
    exported_names,
    metric_names,
    post_sftpgo_login,
)
from conftest import KAFKA_BOOTSTRAP
from support import reachable, skip_or_fail

pytestmark = pytest.mark.helm

TOKEN = "deploy-test-token"
# Prometheus's own series, not the bridge's.
FROM_PROMETHEUS = {"up"}
ONLY_WITH_WORKERS = {"login_audit_worker_up"}


def used_names() -> set[str]:
    expressions = dashboard_expressions() + [rule["expr"] for rule in alert_rules()]
    return set().union(*(metric_names(e) for e in expressions)) - FROM_PROMETHEUS


def test_dashboard_and_alerts_use_the_bridge_metrics_they_are_about() -> None:
    """Guards the parser below: the names it finds are the ones the files are built on."""
    names = used_names()
    assert "login_audit_events_received_total" in names
    assert "login_audit_publish_duration_seconds_bucket" in names
    assert "login_audit_spool_oldest_age_seconds" in names
    assert "login_audit_kafka_broker_up" in names


def test_every_metric_of_the_dashboard_and_alerts_is_exported(
    bridge_factory: Callable[..., Any],
) -> None:
    bridge = bridge_factory(auth_tokens=TOKEN)
    assert post_sftpgo_login(bridge.url, ok=False, token=TOKEN) == 200
    wanted = {n for n in used_names() if not n.startswith("login_audit_kafka_")}
    assert wanted - ONLY_WITH_WORKERS - exported_names(bridge.url) == set()


def test_the_worker_metrics_of_the_alerts_are_exported_by_a_bridge_with_two_workers(
    bridge_factory: Callable[..., Any],
) -> None:
    bridge = bridge_factory(auth_tokens=TOKEN, workers="2")
    assert post_sftpgo_login(bridge.url, ok=False, token=TOKEN) == 200
    assert used_names() >= ONLY_WITH_WORKERS
    assert ONLY_WITH_WORKERS - exported_names(bridge.url) == set()


@pytest.mark.kafka
def test_every_kafka_metric_of_the_dashboard_is_exported_by_the_kafka_sink(
    bridge_factory: Callable[..., Any],
) -> None:
    host, _, port = KAFKA_BOOTSTRAP.split(",")[0].rpartition(":")
    _require_kafka(host, int(port))
    bridge = bridge_factory(
        auth_tokens=TOKEN,
        sink="kafka",
        kafka_bootstrap_servers=KAFKA_BOOTSTRAP,
        kafka_statistics_interval_ms="1000",
    )
    assert post_sftpgo_login(bridge.url, ok=True, token=TOKEN) == 200
    wanted = {n for n in used_names() if n.startswith("login_audit_kafka_")}
    assert wanted - exported_names(bridge.url) == set()


def _require_kafka(host: str, port: int) -> None:
    if not reachable(host, port):
        skip_or_fail(f"Kafka is not reachable at {host}:{port}: run scripts/brokers start")


@pytest.mark.slow
def test_prometheus_scrapes_a_posted_login_and_runs_every_query_and_rule(
    bridge_factory: Callable[..., Any],
    prometheus_factory: Callable[[str], PrometheusProcess],
) -> None:
    bridge = bridge_factory(auth_tokens=TOKEN)
    prometheus = prometheus_factory(bridge.url.removeprefix("http://"))
    assert post_sftpgo_login(bridge.url, ok=False, token=TOKEN) == 200

    (sample,) = prometheus.wait_for(
        'login_audit_events_received_total{job="login-audit-bridge", source="sftpgo", '
        'status="failure"} == 1'
    )
    assert sample["metric"]["source"] == "sftpgo"
    assert sample["value"][1] == "1"
    (up,) = prometheus.wait_for('up{job="login-audit-bridge"}')
    assert up["value"][1] == "1"

    for expression in dashboard_expressions():
        query = expression.replace("$__rate_interval", "1m").replace("$namespace", ".*")
        if query.startswith("label_values("):
            continue  # a Grafana function, not PromQL; its metric is checked above
        answer = prometheus.query(query)
        assert answer["status"] == "success", (expression, answer)

    rules = _wait_rules_evaluated(prometheus)
    assert {r["name"]: r["health"] for r in rules} == {
        rule["alert"]: "ok" for rule in alert_rules()
    }


def _wait_rules_evaluated(prometheus: PrometheusProcess, timeout: float = 30.0) -> list[Any]:
    """The alert rules once each has been evaluated (health leaves 'unknown')."""
    deadline = time.monotonic() + timeout
    while True:
        with urllib.request.urlopen(f"{prometheus.url}/api/v1/rules", timeout=10) as reply:
            groups = json.loads(reply.read())["data"]["groups"]
        rules = [rule for group in groups for rule in group["rules"]]
        if rules and all(r["health"] != "unknown" for r in rules):
            return rules
        if time.monotonic() > deadline:
            return rules
        time.sleep(0.5)
