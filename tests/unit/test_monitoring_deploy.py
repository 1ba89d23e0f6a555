"""deploy/prometheus/: the alert rules, the Grafana dashboard and the scrape config name only what
`framefleet exporter` serves, and reach it where deploy/ runs it."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
METRIC = re.compile(r"\bframefleet_[a-z0-9_]+")


@pytest.fixture(scope="module")
def served(broker_url) -> set[str]:
    """Every sample name the exporter's collector serves, read from a real (empty) Redis."""
    from framefleet.config.settings import get_settings
    from framefleet.workers.app import app
    from framefleet.workers.exporter import FleetCollector

    names = set()
    for family in FleetCollector(get_settings(), app).collect():
        suffixes = {"counter": ["_total"], "histogram": ["_bucket", "_sum", "_count"]}.get(family.type, [""])
        names |= {family.name + suffix for suffix in suffixes}
    return names


def test_the_exporter_serves_what_the_issue_lists(served):
    for name in ("framefleet_queue_length", "framefleet_jobs", "framefleet_jobs_finished_total",
                 "framefleet_job_duration_seconds_bucket", "framefleet_frame_stage_seconds_bucket",
                 "framefleet_provider_requests_total", "framefleet_provider_wait_seconds_total",
                 "framefleet_predictions_created_total", "framefleet_cost_usd_total",
                 "framefleet_straggler_cuts_total", "framefleet_step_redrives_total", "framefleet_parked_jobs",
                 "framefleet_fallbacks_total", "framefleet_workers"):
        assert name in served, name


def test_alert_rules_cover_the_runbook_and_name_served_metrics(served):
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    rules = {rule["alert"]: rule for group in groups for rule in group["rules"]}
    assert {"FramefleetNoWorkers", "FramefleetBacklogGrowing", "FramefleetProviderRateLimited",
            "FramefleetJobLatencyHigh"} <= set(rules)
    for name, rule in rules.items():
        used = set(METRIC.findall(rule["expr"]))
        assert used and used <= served, (name, used - served)
        assert rule["labels"]["severity"] in ("warning", "critical") and rule["annotations"]["summary"], name
    assert "framefleet_job_p95_alert_seconds" in rules["FramefleetJobLatencyHigh"]["expr"]  # the setting
    assert 'outcome="rate_limited"' in rules["FramefleetProviderRateLimited"]["expr"]


def test_dashboard_panels_query_served_metrics(served):
    dashboard = json.loads((DEPLOY / "prometheus" / "grafana-dashboard.json").read_text())
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids)) >= 10
    queried = set()
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used = set(METRIC.findall(target["expr"]))
            assert used and used <= served, (panel["title"], used - served)
            queried |= used
    assert {"framefleet_queue_length", "framefleet_workers", "framefleet_cost_usd_total"} <= queried


def test_scrape_config_reaches_the_exporter_where_deploy_runs_it():
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    assert "alerts.yml" in config["rule_files"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "framefleet"]
    (target,) = job["static_configs"][0]["targets"]
    host, port = target.split(":")
    service = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"][host]
    assert service["command"][:2] == ["framefleet", "exporter"]
    assert service["command"][service["command"].index("--port") + 1] == port
    k8s = [d for d in yaml.safe_load_all((DEPLOY / "k8s" / "deployments.yaml").read_text()) if d]
    (deployment,) = [d for d in k8s if d["kind"] == "Deployment" and d["metadata"]["name"] == "framefleet-exporter"]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--port") + 1] == port
