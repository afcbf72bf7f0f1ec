"""The operator docs name things that exist: chart values, metrics, links, RBAC grants.

Docs drift silently; these checks make a renamed value, metric or file fail here instead of in front of
an operator.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any

import prom_rules
import pytest
import yaml
from chart_render import render

from controller import metrics

pytestmark = pytest.mark.packaging

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = ["install.md", "kinds.md", "gitops.md", "troubleshooting.md", "security.md", "observability.md",
        "kubectl-plugin.md"]
TEXT = {name: (ROOT / "docs" / name).read_text() for name in DOCS}
VALUES = yaml.safe_load((ROOT / "charts" / "hoststorage" / "values.yaml").read_text())


def _has_value(path: str) -> bool:
    node: Any = VALUES
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def test_every_chart_value_the_docs_name_exists() -> None:
    named = set()
    for text in TEXT.values():
        named |= set(re.findall(r"`((?:agent|controller|metrics|rbac|image)\.[A-Za-z.]+)`", text))
    assert named, "the docs name no chart values?"
    missing = sorted(p for p in named if not _has_value(p.rstrip(".")))
    assert not missing, f"docs name chart values that values.yaml does not have: {missing}"


def test_every_metric_the_troubleshooting_guide_names_is_exported() -> None:
    exported = (metrics.Metrics("agent").render()).decode()
    monitoring_source = "".join(
        (ROOT / "controller" / f).read_text() for f in ("monitoring.py", "vm_resume.py")
    )
    named = set(re.findall(r"`(hoststorage_[a-z_]+)", TEXT["troubleshooting.md"]))
    assert len(named) >= 8
    for name in sorted(named):
        base = name.removesuffix("_total")
        assert f"# TYPE {base}" in exported or f'"{base}"' in monitoring_source, name


def test_links_in_readme_and_docs_resolve() -> None:
    readme = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\((docs/[^)#]+)\)", readme):
        assert (ROOT / target).is_file(), target
    for name in DOCS:
        assert f"docs/{name}" in readme, f"README.md does not link docs/{name}"


def test_security_doc_rbac_tables_match_the_chart() -> None:
    """Each (resource, verb) the chart grants appears in docs/security.md's table for that component."""
    objects = render()
    text = TEXT["security.md"]
    tables = {
        "agent": text.split("**Agent**", 1)[1].split("**Controller**", 1)[0],
        "controller": text.split("**Controller**", 1)[1].split("Neither can", 1)[0],
    }
    for role in objects:
        if role["kind"] not in ("ClusterRole", "Role"):
            continue
        who = role["metadata"]["labels"].get("app.kubernetes.io/component")
        whos = [who] if who else ["agent", "controller"]  # the shared Events Role
        for rule in role["rules"]:
            for w in whos:
                table = tables[w]
                for resource in rule["resources"]:
                    plain = resource.split("/")[0]
                    assert plain in table or "parent kinds" in table, (
                        f"{w}: {resource} missing in security.md"
                    )
                for verb in rule["verbs"]:
                    assert verb in table, f"{w}: verb {verb} missing in security.md"


def test_observability_lists_every_metric_the_rules_and_dashboard_use_and_each_exists() -> None:
    exported = (metrics.Metrics("agent").render()).decode()
    monitoring_source = (ROOT / "controller" / "monitoring.py").read_text()
    listed = set(re.findall(r"^\| `(hoststorage_[a-z_]+)`", TEXT["observability.md"], flags=re.M))
    for name in sorted(listed):
        base = name.removesuffix("_total")
        assert f"# TYPE {base}" in exported or f'"{base}"' in monitoring_source, name
    used = set()
    for rule in prom_rules.alerts():
        used |= prom_rules.metric_names(rule["expr"])
        assert f"`{rule['alert']}`" in TEXT["observability.md"], rule["alert"]
    for _, query in prom_rules.panel_queries(prom_rules.dashboard()):
        used |= prom_rules.metric_names(query)
    for name in sorted(used - {"up"}):
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert base in listed or base.removesuffix("_total") + "_total" in listed or name in listed, name


def test_every_test_the_security_table_names_exists() -> None:
    """docs/security.md's "What was tried (issue 9)" table: each ``tests/FILE::test`` (and each
    ``::test`` after it, meaning the same file) names a test function that exists, and each file too."""
    section = TEXT["security.md"].split("## What was tried (issue 9)", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) >= 11, "one row per class of issue 9, and the property suite"
    named = 0
    for row in rows:
        current = None
        for file, func in re.findall(r"`(tests/[\w/]+\.py)?(?:::(test_\w+))?`", row):
            if file:
                current = file
                assert (ROOT / file).exists(), file
            if func:
                assert current is not None, f"{func}: no file named before it in {row[:60]}"
                text = (ROOT / current).read_text()
                assert re.search(rf"^def {func}\(", text, re.M), f"{current}::{func} does not exist"
                named += 1
    assert named >= 25
