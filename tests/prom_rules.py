"""The chart's alerts and dashboard as Prometheus sees them, for tests/test_alerts.py and
tests/test_prometheus_e2e.py: rule groups out of the rendered PrometheusRule, the dashboard's panel
queries out of the rendered ConfigMap, and the names a PromQL expression uses."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess
from collections.abc import Mapping
from typing import Any

import pytest
import yaml
from chart_render import find, render

ENABLED = {"metrics": {"prometheusRule": {"enabled": True}, "grafanaDashboard": {"enabled": True}}}
AGENT_JOB = "hs-hoststorage-agent-metrics"
CONTROLLER_JOB = "hs-hoststorage-controller-metrics"
"""The jobs of release ``hs`` (chart_render.RELEASE): the Services' names, as a ServiceMonitor names jobs."""


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool is not installed (scripts/setup.sh installs Debian's prometheus package)")
    return found


def _merge(base: Mapping[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and key in out else value
    return out


def rule_groups(values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    """``spec.groups`` of the PrometheusRule the chart renders with these values (alerts enabled)."""
    rule = find(render(_merge(ENABLED, values or {})), "PrometheusRule")
    groups: list[dict[str, Any]] = rule["spec"]["groups"]
    return groups


def alerts(values: Mapping[str, Any] | None = None) -> list[dict[str, Any]]:
    return [r for g in rule_groups(values) for r in g["rules"] if "alert" in r]


def write_rules(path: pathlib.Path, groups: list[dict[str, Any]]) -> pathlib.Path:
    path.write_text(yaml.safe_dump({"groups": groups}, sort_keys=False))
    return path


def dashboard(values: Mapping[str, Any] | None = None) -> dict[str, Any]:
    cm = find(render(_merge(ENABLED, values or {})), "ConfigMap", "-dashboard")
    board: dict[str, Any] = json.loads(cm["data"]["hoststorage.json"])
    return board


def panel_queries(board: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every target of every panel."""
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


def check_expressions(tool: str, tmp: pathlib.Path, exprs: list[str]) -> subprocess.CompletedProcess[str]:
    """``promtool check rules`` over the expressions wrapped as recording rules: PromQL's own parser."""
    rules = [{"record": f"hoststorage:check_{i}", "expr": e} for i, e in enumerate(exprs)]
    path = write_rules(tmp / "exprs.yaml", [{"name": "exprs", "rules": rules}])
    return subprocess.run([tool, "check", "rules", str(path)], capture_output=True, text=True, timeout=60,
                          check=False)  # fmt: skip


_FUNCTIONS = {
    "rate", "increase", "sum", "count", "max", "min", "avg", "absent", "histogram_quantile", "by", "on",
    "and", "or", "unless", "ignoring", "group_left", "group_right", "without", "bool",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The series names an expression selects (identifiers followed by a selector, range or nothing)."""
    text = re.sub(r'"[^"]*"', '""', expr)
    text = re.sub(r"\b(by|on|ignoring|without|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", text))
    return {n for n in names if n not in _FUNCTIONS and not re.fullmatch(r"[0-9.]+[smhdwy]?|le|[smhd]", n)}


def label_names(expr: str) -> set[str]:
    """The label names an expression matches or groups on."""
    out: set[str] = set()
    for group in re.findall(r"\b(?:by|on|ignoring|without)\s*\(([^)]*)\)", expr):
        out |= {n.strip() for n in group.split(",") if n.strip()}
    for matchers in re.findall(r"\{([^}]*)\}", expr):
        out |= set(re.findall(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)", matchers))
    return out


def annotation_labels(rule: Mapping[str, Any]) -> set[str]:
    text = " ".join(str(v) for v in (rule.get("annotations") or {}).values())
    return set(re.findall(r"\$labels\.([a-zA-Z_][a-zA-Z0-9_]*)", text))
