"""The chart's PrometheusRule and Grafana dashboard, checked by Prometheus' own tools.

``promtool check rules`` parses every alert and every dashboard query; ``promtool test rules`` runs each
alert against series written here, once where it must fire (with the labels and the exact summary and
description it must carry: they name the object and the node) and once where it must not. The rules
are the ones ``helm template`` renders, so what is tested is what a user installs.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
from typing import Any

import prom_rules
import pytest
import yaml
from chart_render import ROOT, find, render
from prom_rules import AGENT_JOB, CONTROLLER_JOB

pytestmark = pytest.mark.packaging

A = {"job": AGENT_JOB, "instance": "10.0.0.1:9721", "node": "node-a"}
B = {"job": AGENT_JOB, "instance": "10.0.0.2:9721", "node": "node-b"}
CTL = {"job": CONTROLLER_JOB, "instance": "10.0.1.5:9090"}
RUNBOOK = "docs/troubleshooting.md#"


def series(name: str, labels: dict[str, str], values: str) -> dict[str, str]:
    inner = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{name}{{{inner}}}", "values": values}


Fired = list[tuple[dict[str, str], str, str]]


def case(alert: str, at: str, inputs: list[dict[str, str]], fired: Fired | None = None) -> dict[str, Any]:
    """One promtool test: ``inputs`` at 1 m steps, evaluated at ``at``; ``fired`` lists the expected alerts
    as (labels, summary, description); None or [] means it must not fire."""
    severity = SEVERITY[alert]
    expected = [
        {
            "exp_labels": {**labels, "severity": severity},
            "exp_annotations": {"summary": summary, "description": description,
                                "runbook_url": RUNBOOK + alert.lower()},
        }
        for labels, summary, description in fired or []
    ]  # fmt: skip
    return {
        "interval": "1m",
        "input_series": inputs,
        "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": expected}],
    }


SEVERITY = {
    "HostStorageMonitorInvalid": "critical",
    "HostStorageMonitorBlocked": "critical",
    "HostStorageReadDelayHigh": "warning",
    "HostStorageStorageLost": "critical",
    "HostStorageNodeStatePending": "warning",
    "HostStorageParentNodesPending": "warning",
    "HostStorageReconcileErrors": "warning",
    "HostStorageAgentDown": "critical",
    "HostStorageAgentNotReady": "warning",
    "HostStoragePreflightMissingClient": "info",
    "HostStorageControllerAbsent": "critical",
}

MON = {**A, "monitor": "images"}
NFS_A = {**A, "kind": "StorageConnection", "name": "images-nfs"}
NFS_B = {**B, "kind": "StorageConnection", "name": "images-nfs"}
READ = [series("hoststorage_monitor_read_delay_seconds_sum", MON, "0+0.6x30"),
        series("hoststorage_monitor_read_delay_seconds_count", MON, "0+1x30")]  # fmt: skip

CASES: list[tuple[str, dict[str, Any]]] = [
    ("fires", case("HostStorageMonitorInvalid", "5m",
        [series("hoststorage_monitor_valid", MON, "1 1 0 0 0 0")],
        [(MON, "DomainMonitor images is Invalid on node node-a",
          "The storage of DomainMonitor images does not answer reads correctly on node node-a: kubectl "
          "hoststorage why DomainMonitor/images shows the reason and message.")])),
    ("not yet (Invalid for less than 2m), not when Degraded", case("HostStorageMonitorInvalid", "3m",
        [series("hoststorage_monitor_valid", MON, "1 1 0 0 0 0"),
         series("hoststorage_monitor_valid", {**B, "monitor": "images"}, "1x5")])),
    ("fires", case("HostStorageMonitorBlocked", "5m",
        [series("hoststorage_monitor_blocked_seconds", MON, "0 0 30 90 150 210")],
        [(MON, "A check of DomainMonitor images is blocked on node node-a",
          "The read of DomainMonitor images on node node-a has been stuck for 3m 30s: the storage hangs "
          "(processes in D state).")])),
    ("blocked for less than monitorBlockedSeconds", case("HostStorageMonitorBlocked", "5m",
        [series("hoststorage_monitor_blocked_seconds", MON, "0 30 45 50 55 59")])),
    ("fires", case("HostStorageReadDelayHigh", "20m",
        [*READ, series("hoststorage_monitor_read_delay_threshold_seconds", MON, "0.5x30")],
        [(MON, "DomainMonitor images reads slowly on node node-a",
          "The mean read delay of DomainMonitor images on node node-a is 600ms over 5 minutes, above its "
          "readDelayWarningSeconds.")])),
    ("below its own threshold", case("HostStorageReadDelayHigh", "20m",
        [*READ, series("hoststorage_monitor_read_delay_threshold_seconds", MON, "1x30")])),
    ("fires for the node that lost it", case("HostStorageStorageLost", "8m",
        [series("hoststorage_object_ready", {**NFS_A, "phase": "Pending"}, "0x10"),
         series("hoststorage_object_ready", {**NFS_B, "phase": "Connected"}, "1x10")],
        [({**NFS_A, "phase": "Pending"},
          "Node node-a lost StorageConnection images-nfs, which other nodes still have",
          "StorageConnection images-nfs is Pending, not Ready, on node node-a while other nodes have it "
          "Ready: look at that node, not at the storage.")])),
    ("lost everywhere is the storage, not a node", case("HostStorageStorageLost", "8m",
        [series("hoststorage_object_ready", {**NFS_A, "phase": "Failed"}, "0x10"),
         series("hoststorage_object_ready", {**NFS_B, "phase": "Failed"}, "0x10"),
         series("hoststorage_object_ready", {**A, "kind": "DomainMonitor", "name": "m", "phase": "Invalid"},
                "0x10"),
         series("hoststorage_object_ready", {**B, "kind": "DomainMonitor", "name": "m", "phase": "Healthy"},
                "1x10")])),
    ("fires", case("HostStorageNodeStatePending", "18m",
        [series("hoststorage_object_ready", {**A, "kind": "StoragePool", "name": "vm", "phase": "Pending"},
                "0x20")],
        [({**A, "kind": "StoragePool", "name": "vm", "phase": "Pending"},
          "StoragePool vm is stuck Pending on node node-a",
          "The StorageNodeState of StoragePool vm on node node-a has been Pending for a long time: it waits "
          "for something (its connection, a Secret, the storage).")])),
    ("pending briefly, or ready", case("HostStorageNodeStatePending", "10m",
        [series("hoststorage_object_ready", {**A, "kind": "StoragePool", "name": "vm", "phase": "Pending"},
                "0x20"),
         series("hoststorage_object_ready", {**B, "kind": "StoragePool", "name": "vm", "phase": "Active"},
                "1x20")])),
    ("fires", case("HostStorageParentNodesPending", "18m",
        [series("hoststorage_parent_nodes", {**CTL, "kind": "StorageConnection", "name": "images-nfs",
                                             "state": "pending"}, "2x20")],
        [({**CTL, "kind": "StorageConnection", "name": "images-nfs", "state": "pending"},
          "StorageConnection images-nfs waits for 2 nodes",
          "2 selected nodes of StorageConnection images-nfs have reported neither Ready nor Failed (no "
          "StorageNodeState, or a Pending one): kubectl hoststorage why StorageConnection/images-nfs names "
          "them.")])),
    ("the nodes reported", case("HostStorageParentNodesPending", "18m",
        [series("hoststorage_parent_nodes", {**CTL, "kind": "StorageConnection", "name": "images-nfs",
                                             "state": "pending"}, "2 2 2 0x20")])),
    ("fires", case("HostStorageReconcileErrors", "25m",
        [series("hoststorage_reconciles_total", {**A, "kind": "StorageConnection", "result": "error"},
                "0+1x30")],
        [({"job": AGENT_JOB, "node": "node-a", "kind": "StorageConnection"},
          f"StorageConnection reconciles keep failing with errors ({AGENT_JOB} node-a)",
          f"10 StorageConnection reconciles ended in an error in 10 minutes ({AGENT_JOB}, node node-a): API "
          "calls failing, or a bug; the logs say which.")])),
    ("old errors, and failures that are the storage's", case("HostStorageReconcileErrors", "25m",
        [series("hoststorage_reconciles_total", {**A, "kind": "StorageConnection", "result": "error"},
                "5x30"),
         series("hoststorage_reconciles_total", {**A, "kind": "StorageConnection", "result": "failed"},
                "0+3x30")])),
    ("fires", case("HostStorageAgentDown", "10m",
        [series("up", A, "1 1 0x10"), series("up", B, "1x12")],
        [(A, "The hoststorage agent on node node-a cannot be scraped",
          "Prometheus cannot reach the agent of node node-a (10.0.0.1:9721): it is not running, or its "
          "metrics port is not reachable. Nothing reconciles storage there.")])),
    ("up, or another job down", case("HostStorageAgentDown", "10m",
        [series("up", A, "1x12"), series("up", {"job": "node-exporter", "instance": "x:9100"}, "0x12")])),
    ("fires", case("HostStorageAgentNotReady", "15m",
        [series("hoststorage_agent_ready", A, "0x20")],
        [(A, "The hoststorage agent on node node-a is not ready",
          "The agent of node node-a has not finished its initial refresh (it cannot list its objects, or one "
          "reconcile hangs); /readyz says how many objects are pending.")])),
    ("became ready", case("HostStorageAgentNotReady", "15m",
        [series("hoststorage_agent_ready", A, "0 0 0 1x20")])),
    ("fires", case("HostStoragePreflightMissingClient", "18m",
        [series("hoststorage_preflight_supported", {**A, "type": "iscsi"}, "0x20"),
         series("hoststorage_preflight_supported", {**A, "type": "nfs"}, "1x20")],
        [({**A, "type": "iscsi"}, "Node node-a cannot serve iscsi connections",
          "The agent's preflight on node node-a found no client for iscsi (kernel module or helper missing); "
          "iscsi connections fail there with Unsupported.")])),
    ("every client there", case("HostStoragePreflightMissingClient", "18m",
        [series("hoststorage_preflight_supported", {**A, "type": "iscsi"}, "1x20")])),
    ("fires", case("HostStorageControllerAbsent", "10m",
        [series("up", A, "1x12"), series("up", CTL, "1 1 0x10")],
        [({}, "No hoststorage controller is running",
          f"No controller of release hs (job {CONTROLLER_JOB}) answers: parents' status is not rolled up and "
          "deleted parents keep their teardown finalizer.")])),
    ("one replica answers", case("HostStorageControllerAbsent", "10m",
        [series("up", CTL, "1x12"), series("up", {**CTL, "instance": "10.0.1.6:9090"}, "0x12")])),
]  # fmt: skip


def test_rules_and_dashboard_queries_parse(tmp_path: pathlib.Path) -> None:
    tool = prom_rules.promtool()
    rules = prom_rules.write_rules(tmp_path / "rules.yaml", prom_rules.rule_groups())
    check = subprocess.run([tool, "check", "rules", str(rules)], capture_output=True, text=True, timeout=60,
                           check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(SEVERITY)} rules found" in check.stdout
    queries = prom_rules.panel_queries(prom_rules.dashboard())
    assert len(queries) >= 10
    parsed = prom_rules.check_expressions(tool, tmp_path, [q for _, q in queries])
    assert parsed.returncode == 0, parsed.stdout + parsed.stderr
    # The checker itself refuses a broken query.
    assert prom_rules.check_expressions(tool, tmp_path, ["sum by (node (x)"]).returncode != 0


def test_every_alert_fires_and_stays_quiet_as_promtool_computes(tmp_path: pathlib.Path) -> None:
    tool = prom_rules.promtool()
    rules = prom_rules.write_rules(tmp_path / "rules.yaml", prom_rules.rule_groups())
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [c for _, c in CASES]}
    path = tmp_path / "tests.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([tool, "test", "rules", str(path)], capture_output=True, text=True, timeout=120,
                            check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_firing_and_a_quiet_case_and_its_severity() -> None:
    names = {a["alert"] for a in prom_rules.alerts()}
    assert names == set(SEVERITY)
    for name in names:
        kinds = [bool(c["alert_rule_test"][0]["exp_alerts"]) for _, c in CASES
                 if c["alert_rule_test"][0]["alertname"] == name]  # fmt: skip
        assert True in kinds and False in kinds, name
    assert {a["alert"]: a["labels"]["severity"] for a in prom_rules.alerts()} == SEVERITY


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    out = set()
    for heading in re.findall(r"^#+\s+(.*)$", markdown, flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        out.add(slug)
    return out


PER_NODE_ONLY = ("HostStorageAgentDown", "HostStorageAgentNotReady", "HostStorageControllerAbsent",
                 "HostStoragePreflightMissingClient")  # fmt: skip
"""Alerts about a process or a node, not about one object."""


def test_every_alert_has_a_runbook_section_and_names_object_and_node() -> None:
    anchors = _anchors((ROOT / "docs" / "troubleshooting.md").read_text())
    for rule in prom_rules.alerts():
        url = rule["annotations"]["runbook_url"]
        assert url.startswith(RUNBOOK), url
        assert url.removeprefix(RUNBOOK) in anchors, f"{rule['alert']}: no section {url}"
        named = prom_rules.annotation_labels(rule)
        if rule["alert"] not in ("HostStorageControllerAbsent", "HostStorageParentNodesPending"):
            assert "node" in named, rule["alert"]  # per-node alerts say which node
        if rule["alert"] == "HostStorageReconcileErrors":
            assert "kind" in named  # the counter is per kind: the log names the object
        elif rule["alert"] not in PER_NODE_ONLY:
            assert named & {"monitor", "name"}, rule["alert"]  # and which object
        assert {"summary", "description"} <= set(rule["annotations"]), rule["alert"]


def test_alert_values_reach_the_rules() -> None:
    values = {"metrics": {"prometheusRule": {
        "labels": {"release": "prometheus"}, "runbookBaseUrl": "https://docs.example.com/hs/troubleshooting",
        "monitorBlockedSeconds": 15, "preflightTypes": "nfs|glusterfs", "for": {"monitorInvalid": "30s"},
    }}}  # fmt: skip
    objects = render(prom_rules._merge(prom_rules.ENABLED, values))
    rule = find(objects, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prometheus"
    by_name = {r["alert"]: r for g in rule["spec"]["groups"] for r in g["rules"]}
    assert by_name["HostStorageMonitorInvalid"]["for"] == "30s"
    assert by_name["HostStorageMonitorBlocked"]["expr"] == "hoststorage_monitor_blocked_seconds > 15"
    assert 'type=~"nfs|glusterfs"' in by_name["HostStoragePreflightMissingClient"]["expr"]
    assert by_name["HostStorageAgentDown"]["annotations"]["runbook_url"] == (
        "https://docs.example.com/hs/troubleshooting#hoststorageagentdown")
    # Off by default: a cluster without prometheus-operator's CRDs installs the chart unchanged.
    assert not [o for o in render() if o["kind"] in ("PrometheusRule", "ConfigMap")]


def test_dashboard_configmap_is_what_the_grafana_sidecar_loads() -> None:
    dashboard = {"enabled": True, "namespace": "monitoring", "annotations": {"grafana_folder": "Storage"}}
    objects = render({"metrics": {"grafanaDashboard": dashboard}})
    cm = find(objects, "ConfigMap", "-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "Storage"}
    board = prom_rules.dashboard()
    assert board["uid"] == "hoststorage" and board["templating"]["list"][0]["type"] == "datasource"
    titles = {p["title"] for p in board["panels"]}
    for wanted in ("Read delay p95 per node", "Monitor validity", "Blocked checks", "Objects by phase",
                   "Reconciles per second", "Reconcile errors and failures", "Work queue depth"):  # fmt: skip
        assert wanted in titles
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
