"""The alert rules, checked and unit-tested by the real promtool."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from .deploy_support import ALERT_TESTS, ALERTS, CHART, Tools, alert_rules, run

pytestmark = pytest.mark.helm


def test_plain_rules_file_is_the_charts_file() -> None:
    """One source of truth: deploy/prometheus/alerts.yaml links to the chart's copy."""
    assert ALERTS.is_symlink()
    assert ALERTS.resolve() == (CHART / "files" / "alerts.yaml").resolve()


def test_promtool_check_rules_accepts_the_rules(tools: Tools) -> None:
    done = run(tools.promtool, "check", "rules", ALERTS)
    # Every rule of the file, as YAML reads it: promtool skipped none.
    assert f"SUCCESS: {len(alert_rules())} rules found" in done.stdout


def test_promtool_unit_tests_pass(tools: Tools) -> None:
    done = run(tools.promtool, "test", "rules", ALERT_TESTS.name, cwd=ALERT_TESTS.parent)
    assert "SUCCESS" in done.stdout


def test_a_broken_expectation_fails_promtool(tools: Tools, tmp_path: Path) -> None:
    """The unit tests can fail: the same tests expecting a different severity do."""

    broken = ALERT_TESTS.read_text(encoding="utf-8").replace("severity: critical", "severity: info")
    (tmp_path / "alerts.yaml").write_text(ALERTS.read_text(encoding="utf-8"))
    (tmp_path / "alerts_test.yaml").write_text(broken)
    done = run(tools.promtool, "test", "rules", "alerts_test.yaml", cwd=tmp_path, check=False)
    assert done.returncode == 1
    assert "FAILED" in done.stderr


def test_every_alert_has_a_firing_unit_test() -> None:
    tests = yaml.safe_load(ALERT_TESTS.read_text(encoding="utf-8"))["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    assert fired == {rule["alert"] for rule in alert_rules()}


def test_every_alert_has_severity_summary_and_runbook() -> None:
    for rule in alert_rules():
        assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
        assert {"summary", "description", "runbook_url"} <= set(rule["annotations"]), rule["alert"]


def test_failure_spike_needs_both_a_high_rate_and_a_high_ratio() -> None:
    spike = next(r for r in alert_rules() if r["alert"] == "LoginAuditFailureSpike")
    assert "> 1\n" in spike["expr"]
    assert "> 0.5\n" in spike["expr"]
    assert "\nand\n" in spike["expr"]
