"""The one registry of kinds: its rows agree with the kind modules and the CRDs, and the cluster
controller reads it without loading a reconciler, the host layer or libvirt."""

from __future__ import annotations

import dataclasses
import pathlib
import subprocess
import sys
import textwrap
import types

import prometheus_client
import pytest
import yaml

from controller import agent, registry, runtimes
from hostlib import config, ledger
from reconcilers import host as host_mod
from reconcilers import kind, status

ROOT = pathlib.Path(__file__).resolve().parent.parent


def crd_names() -> dict[str, dict[str, object]]:
    out = {}
    for path in sorted((ROOT / "crds").glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        out[doc["spec"]["names"]["kind"]] = doc["spec"]["names"]
    return out


@pytest.mark.parametrize("row", registry.ROWS, ids=lambda r: r.kind)
def test_a_row_agrees_with_its_kind_module_and_its_crd(row: registry.Row) -> None:
    module = registry.load(row.kind)
    assert isinstance(module, kind.Kind)
    assert (row.kind, row.detail_key) == (module.KIND, module.DETAIL_KEY)
    assert status.Results(row.kind, row.detail_key, module.RESULTS.ready_phase) == module.RESULTS
    assert {str(module.RESULTS.ready_phase)} == row.ready_phases
    phases = {str(p) for p in status.Phase}
    assert row.ready_phases | row.failed_phases | row.transition_events <= phases
    assert not row.ready_phases & row.failed_phases
    names = crd_names()[row.kind]
    assert (names["plural"], names["shortNames"]) == (row.plural, [row.short])
    node_state = yaml.safe_load((ROOT / "crds" / "storagenodestate.yaml").read_text())
    status_props = node_state["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert row.detail_key in status_props["properties"]


def test_rows_are_in_dependency_order_with_distinct_names() -> None:
    assert [r.order for r in registry.ROWS] == sorted({r.order for r in registry.ROWS})
    for field in ("kind", "plural", "short", "detail_key", "module"):
        values = [getattr(r, field) for r in registry.ROWS]
        assert len(set(values)) == len(values), field


def test_load_refuses_a_module_that_is_not_a_kind(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("fake_kind")
    fake.KIND = "StorageConnection"  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_kind", fake)
    row = registry.BY_KIND["StorageConnection"]
    monkeypatch.setitem(registry.BY_KIND, "StorageConnection", dataclasses.replace(row, module="fake_kind"))
    with pytest.raises(TypeError, match=r"not a reconcilers\.kind\.Kind"):
        registry.load("StorageConnection")


def test_the_cluster_controller_process_loads_no_reconciler_host_layer_or_libvirt() -> None:
    """The controller's start-up path and a roll-up, in a fresh interpreter: what it imported."""
    code = textwrap.dedent("""
        import datetime, sys
        from controller import cli, settings
        args = cli.build_parser("controller").parse_args(["controller"])
        conf = settings.Settings.build(args, environ={})
        from controller import cluster, rollup
        ctl = cluster.Controller(conf, api=None, identity="test")
        parent = {"kind": "DomainMonitor", "metadata": {"name": "m", "uid": "u"}, "spec": {}}
        rollup.rollup(parent, [], {}, now=datetime.datetime.now(datetime.UTC),
                      phases=rollup.phases_of(ctl.kinds["DomainMonitor"]))
        ctl.queue.shutdown(1)
        print(" ".join(sorted(sys.modules)))
    """)
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    loaded = set(proc.stdout.split())
    assert "controller.cluster" in loaded
    assert not {m for m in loaded if m == "libvirt" or m.startswith("hostlib")}
    assert {m for m in loaded if m.startswith("reconcilers.")} <= {
        "reconcilers.api", "reconcilers.selector", "reconcilers.health_policy"
    }


@pytest.mark.parametrize("row", [r for r in registry.ROWS if r.runtime], ids=lambda r: r.kind)
def test_a_rows_runtime_is_a_factory_the_agent_can_build(row: registry.Row, tmp_path: pathlib.Path) -> None:
    host = host_mod.Host(config.HostConfig(state_dir=str(tmp_path)), ledger.Ledger(str(tmp_path)))
    runtime = agent._runtime_factory(row.runtime)(
        lambda name: None, prometheus_client.CollectorRegistry(), host, lambda name, event: None
    )
    assert all(
        callable(getattr(runtime, m)) for m in ("start", "stop", "ensure", "forget", "report_due", "healthy")
    )
    assert isinstance(runtime, runtimes.Monitors) == (row.kind == "DomainMonitor")
