"""``kubectl hoststorage``: unit tests of its matrix rules, and end to end through kubectl's plugin lookup
against the emulator with three real agents and the real controller.

The e2e world is its own (a fresh API server, nodes node-a/b/c), so the matrix holds exactly the objects
made here: a connection Ready on two nodes and in Conflict on node-a (a directory someone else left on
its link path), a monitor on it Pending on node-a, a connection refused as InvalidSpec everywhere, and a
monitor selecting node-b only. kubectl finds the plugin as ``kubectl-hoststorage`` on PATH: a shim here
runs ``python -m controller.kubectl_plugin`` (the console script of the same name is what the package
installs). The example outputs in docs/kubectl-plugin.md are compared with what the commands print now
(ages and temp paths normalised); HOSTSTORAGE_REGENERATE_DOCS=1 rewrites them.
"""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures_kube import Cluster, running_world, wait_until

from controller import kubectl_plugin as plugin
from hostlib import mounts

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "kubectl-plugin.md"
NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)


# ------------------------------------------------------------------------------------------- unit


def node(name: str, **labels: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"kubernetes.io/hostname": name, **labels}}}


def parent(kind: str, name: str, selector: dict[str, str] | None = None) -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "uid": f"uid-{name}"},
            "spec": {"nodeSelector": {"matchLabels": selector}} if selector else {}}  # fmt: skip


def state(
    kind: str, name: str, on: str, phase: str, ready: bool, reason: str = "", uid: str = ""
) -> dict[str, Any]:
    cond = {"type": "Ready", "status": "True" if ready else "False", "reason": reason or phase,
            "message": f"m {on}", "lastTransitionTime": "2026-01-01T11:58:00Z"}  # fmt: skip
    return {"spec": {"nodeName": on, "parentRef": {"kind": kind, "name": name, "uid": uid or f"uid-{name}"}},
            "status": {"phase": phase, "conditions": [cond]}}  # fmt: skip


def test_cells_follow_the_controllers_rules() -> None:
    nodes = [node("a", zone="1"), node("b", zone="1"), node("c", zone="2")]
    parents = [parent("DomainMonitor", "m", {"zone": "1"}), parent("StorageConnection", "s")]
    states = [
        state("StorageConnection", "s", "a", "Connected", True),
        state("StorageConnection", "s", "b", "Failed", False, "MountFailed"),
        state("StorageConnection", "s", "c", "Connected", True, uid="uid-of-an-older-s"),  # re-created parent
        state("DomainMonitor", "m", "a", "Healthy", True),
        state("DomainMonitor", "m", "c", "Detaching", False),  # no longer selected, still reporting
    ]
    sconn, dmon = plugin.build_rows(parents, states, nodes)  # connections sort first
    assert (sconn.key, dmon.key) == ("StorageConnection/s", "DomainMonitor/m")
    assert {n: c.phase for n, c in sconn.cells.items()} == {"a": "Connected", "b": "Failed", "c": "Missing"}
    assert sconn.cells["b"].reason == "MountFailed" and sconn.cells["b"].message == "m b"
    assert (sconn.ready, sconn.selected, sconn.problems()) == (1, 3, ["b", "c"])
    assert {n: (c.phase, c.selected) for n, c in dmon.cells.items()} == {
        "a": ("Healthy", True), "b": ("Missing", True), "c": ("Detaching", False)}  # fmt: skip
    assert (dmon.ready, dmon.selected) == (1, 2)
    out = plugin.render_status([sconn, dmon], ["a", "b", "c"], max_nodes=10, max_parents=10)
    lines = [ln.split() for ln in out.splitlines()]
    assert lines == [
        ["KIND/NAME", "a", "b", "c", "READY"],
        ["StorageConnection/s", "Connected", "Failed", "Missing", "1/3"],
        ["DomainMonitor/m", "Healthy", "Missing", "Detaching", "1/2"],
        ["READY", "2/2", "0/2", "0/1", "2/5"],
    ]
    assert [plugin.age(NOW - datetime.timedelta(seconds=s), NOW) for s in (5, 119, 121, 7200, 200000)] == [
        "5s", "119s", "2m", "2h", "2d"]  # fmt: skip


def test_the_table_stays_bounded_on_five_thousand_nodes() -> None:
    nodes = [node(f"n{i:04d}") for i in range(5000)]
    parents = [parent("StorageConnection", f"c{i}") for i in range(150)]
    states = [state("StorageConnection", p["metadata"]["name"], n["metadata"]["name"], "Connected", True)
              for p in parents[:3] for n in nodes]  # fmt: skip
    states.append(state("StorageConnection", "c1", "n4321", "Failed", False, "MountFailed"))
    rows = plugin.build_rows(parents, states, nodes)
    names = [n["metadata"]["name"] for n in nodes]
    out = plugin.render_status(rows, names, max_nodes=8, max_parents=20)
    lines = out.splitlines()
    header = lines[0].split()
    assert len(header) == 1 + 8 + 2 + 1 and header[-3:] == ["+4992", "MORE", "READY"]
    assert header[1] == "n4321"  # the node with a problem comes first
    assert len(lines) == 1 + 20 + 1 + 2  # header, rows, totals, two notes
    assert "+130 more parents" in out and "4992 more nodes summed up" in out
    c0 = next(ln for ln in lines if ln.startswith("StorageConnection/c0 "))
    assert c0.split()[-2:] == ["4992/4992", "5000/5000"]
    assert max(len(ln) for ln in lines) < 200
    # JSON is complete.
    data = plugin.status_json(rows, names, NOW)
    assert len(data["nodes"]) == 5000 and len(data["parents"]) == 150
    assert data["parents"][1]["cells"]["n4321"]["reason"] == "MountFailed"


def test_node_readiness_is_the_ready_condition_or_none() -> None:
    def with_ready(status: str) -> dict[str, Any]:
        return {**node("x"), "status": {"conditions": [{"type": "Ready", "status": status}]}}

    assert plugin.node_ready(with_ready("True")) is True
    assert plugin.node_ready(with_ready("False")) is False
    assert plugin.node_ready(node("x")) is None


def test_kinds_as_people_type_them() -> None:
    for word in ("StorageConnection", "storageconnection", "storageconnections", "sconn",
                 "storageconnections.hoststorage.io"):  # fmt: skip
        assert plugin.resolve_kind(word) == "StorageConnection"
    assert plugin.resolve_kind("dmon") == "DomainMonitor" and plugin.resolve_kind("spool") == "StoragePool"
    with pytest.raises(plugin.PluginError, match="unknown kind 'pods'"):
        plugin.resolve_kind("pods")


def test_connection_flags_pass_through_in_either_place() -> None:
    parser = plugin.build_parser()
    args = parser.parse_args(["--context", "before", "status", "--kubeconfig", "/k", "-s", "https://x",
                              "--insecure-skip-tls-verify", "-n", "events"])  # fmt: skip
    assert plugin._kube_argv(args) == ["--kubeconfig", "/k", "--context", "before", "--server", "https://x",
                                       "--insecure-skip-tls-verify"]  # fmt: skip
    assert args.kube_namespace == "events"
    after = parser.parse_args(["--context", "before", "why", "sconn/x", "--context", "after"])
    assert plugin._kube_argv(after) == ["--context", "after"]


# ------------------------------------------------------------------------------------------ e2e


WORKDIR = pathlib.Path("/var/tmp/hoststorage-plugin-e2e")
"""A fixed place, so the paths in the outputs (and docs/kubectl-plugin.md) are the same on every run."""


@pytest.fixture(scope="module")
def world() -> Iterator[Cluster]:
    if os.geteuid() != 0:
        pytest.skip("needs root: the agents mount for real")
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        mounted = [ln.split()[4] for ln in f if ln.split()[4].startswith(f"{WORKDIR}/")]
    assert not mounted, f"left over from an earlier run, still mounted: {mounted}"
    shutil.rmtree(WORKDIR, ignore_errors=True)
    WORKDIR.mkdir(parents=True)
    try:
        with running_world(WORKDIR) as cluster:
            yield cluster
    finally:
        shutil.rmtree(WORKDIR, ignore_errors=True)


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """PATH with ``kubectl`` and a ``kubectl-hoststorage`` that runs this tree's module."""
    bin_dir = tmp_path_factory.mktemp("bin")
    script = bin_dir / "kubectl-hoststorage"
    script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m controller.kubectl_plugin "$@"\n')
    script.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}:{pathlib.Path(sys.executable).parent}:{os.environ['PATH']}"}


def kubectl_hoststorage(world: Cluster, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    argv = [world.kubectl_bin, "hoststorage", *args, "--kubeconfig", world.kubeconfigs["kubectl"]]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120, check=False)


def sconn(name: str, path: str) -> dict[str, Any]:
    return {"apiVersion": "hoststorage.io/v1alpha1", "kind": "StorageConnection", "metadata": {"name": name},
            "spec": {"type": "localfs", "localfs": {"path": path}}}  # fmt: skip


def dmon(name: str, target: dict[str, Any], selector: dict[str, str] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"target": target, "intervalSeconds": 2}
    if selector:
        spec["nodeSelector"] = {"matchLabels": selector}
    return {"apiVersion": "hoststorage.io/v1alpha1", "kind": "DomainMonitor", "metadata": {"name": name},
            "spec": spec}  # fmt: skip


@pytest.fixture(scope="module")
def scenario(world: Cluster) -> Iterator[Cluster]:
    shared = world.allowed / "shared"
    shared.mkdir()
    (world.allowed / "b-only").mkdir()
    # Someone else's directory where node-a's link for "shared" goes: Conflict there, and only there.
    squat = pathlib.Path(mounts.local_link_for(world.agents["node-a"].mount_base, str(shared)))
    squat.mkdir()
    world.apply([
        sconn("shared", str(shared)),
        sconn("outside", "/opt/not-allowed"),
        dmon("shared-health", {"connectionRef": {"name": "shared"}}),
        dmon("b-only", {"hostPath": str(world.allowed / "b-only")}, {"kubernetes.io/hostname": "node-b"}),
    ])  # fmt: skip

    def settled() -> bool:
        want = {("shared", "node-a"): "Failed", ("shared", "node-b"): "Connected",
                ("outside", "node-c"): "Failed",
                ("shared-health", "node-a"): "Pending", ("shared-health", "node-b"): "Healthy",
                ("shared-health", "node-c"): "Healthy",
                ("b-only", "node-b"): "Healthy"}  # fmt: skip
        for (name, on), phase in want.items():
            kind = "DomainMonitor" if name in ("shared-health", "b-only") else "StorageConnection"
            st = world.states(name, kind).get(on)
            if not st or (st.get("status") or {}).get("phase") != phase:
                return False
        s = world.get("sconn", "shared") or {}
        return (s.get("status") or {}).get("readyNodes") == "2/3"

    wait_until(settled, 90, "the plugin scenario settled")
    try:
        yield world
    finally:
        for kind, name in [
            ("dmon", "shared-health"),
            ("dmon", "b-only"),
            ("sconn", "shared"),
            ("sconn", "outside"),
        ]:
            world.kubectl("delete", kind, name, "--ignore-not-found", "--timeout=60s", check=False)
        shutil.rmtree(squat, ignore_errors=True)


def test_kubectl_finds_the_plugin_and_status_is_the_matrix(scenario: Cluster, shim: dict[str, str]) -> None:
    proc = kubectl_hoststorage(scenario, shim, "status", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["nodes"] == ["node-a", "node-b", "node-c"]
    cells = {(p["kind"], p["name"]): {n: c["phase"] for n, c in p["cells"].items()} for p in data["parents"]}
    assert cells[("StorageConnection", "shared")] == {
        "node-a": "Failed",
        "node-b": "Connected",
        "node-c": "Connected",
    }
    assert cells[("StorageConnection", "outside")] == dict.fromkeys(data["nodes"], "Failed")
    assert cells[("DomainMonitor", "shared-health")]["node-a"] == "Pending"
    assert cells[("DomainMonitor", "b-only")] == {"node-b": "Healthy"}
    assert data["totals"]["node-b"] == {"ready": 3, "selected": 4}
    shared = next(p for p in data["parents"] if p["name"] == "shared")
    assert shared["cells"]["node-a"]["reason"] == "Conflict" and "exists and is not a link" in (
        shared["cells"]["node-a"]["message"])  # fmt: skip
    # Filters: one kind, a node selector, only problems.
    only = json.loads(kubectl_hoststorage(scenario, shim, "status", "dmon", "-l",
                                          "kubernetes.io/hostname=node-b",
                                          "-o", "json").stdout)  # fmt: skip
    assert only["nodes"] == ["node-b"] and {p["kind"] for p in only["parents"]} == {"DomainMonitor"}
    problems = json.loads(kubectl_hoststorage(scenario, shim, "status", "--problems", "-o", "json").stdout)
    assert {p["name"] for p in problems["parents"]} == {"shared", "outside", "shared-health"}
    assert problems["nodes"] == ["node-a", "node-b", "node-c"]  # outside fails everywhere


def test_why_names_the_failing_node_its_reason_and_the_events(
    scenario: Cluster, shim: dict[str, str]
) -> None:
    proc = kubectl_hoststorage(scenario, shim, "why", "sconn/shared")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "StorageConnection/shared: 2/3 selected nodes ready" in out
    assert "Diagnosis: Degraded=True Conflict: node-a: Conflict:" in out
    assert re.search(r"node-a\s+Failed\s+Conflict\s+\d+[smhd]\s", out)
    assert re.search(r"Warning\s+Conflict\s+1\s+node-a: ", out)
    data = json.loads(
        kubectl_hoststorage(scenario, shim, "why", "StorageConnection/shared", "-o", "json").stdout
    )
    assert set(data["notReady"]) == {"node-a"} and data["events"][0]["reason"] == "Conflict"
    missing = kubectl_hoststorage(scenario, shim, "why", "sconn/nope")
    assert (
        missing.returncode == 1
        and missing.stderr == "kubectl hoststorage: error: StorageConnection/nope not found\n"
    )


def test_node_lists_what_it_has_lacks_and_its_preflight(scenario: Cluster, shim: dict[str, str]) -> None:
    data = json.loads(kubectl_hoststorage(scenario, shim, "node", "node-a", "-o", "json").stdout)
    assert data["ready"] is None  # the emulator's Nodes report no Ready condition
    assert "supported connection types:" in data["preflight"]
    assert data["objects"]["StorageConnection/shared"]["reason"] == "Conflict"
    assert data["objects"]["DomainMonitor/shared-health"]["reason"] == "WaitingForConnection"
    assert "DomainMonitor/b-only" not in data["objects"]
    out = kubectl_hoststorage(scenario, shim, "node", "node-a").stdout
    assert "Lacks (selected here, not Ready) (3):" in out and "Not selected here: DomainMonitor/b-only" in out


def test_connection_flags_reach_kubectl(scenario: Cluster, shim: dict[str, str]) -> None:
    # --server overrides the kubeconfig's: nothing answers there, and the error is kubectl's own, in one line.
    proc = kubectl_hoststorage(
        scenario, shim, "status", "--server", "http://127.0.0.1:1", "--request-timeout", "5s"
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("kubectl hoststorage: error: ") and "127.0.0.1:1" in proc.stderr


# ----------------------------------------------------------------------------------- pinned docs


def _normalise(text: str) -> str:
    """The parts of an output that differ from run to run: ages, the preflight, column widths."""
    # What the agent's preflight found depends on the machine (kernel modules, helpers).
    text = re.sub(r"^Preflight \(.*$", "Preflight (<this machine's>)", text, flags=re.M)
    text = re.sub(r"(?<![\w/.-])\d+[smhd](?![\w/.-])", "<age>", text)
    return "\n".join(" ".join(line.split()) for line in text.strip().splitlines())


def test_the_docs_show_what_the_plugin_prints(scenario: Cluster, shim: dict[str, str]) -> None:
    doc = DOC.read_text()
    blocks = list(re.finditer(r"```console\n\$ (kubectl hoststorage [^\n]*)\n(.*?)```", doc, flags=re.S))
    assert len(blocks) >= 4
    regenerated = doc
    mismatches = []
    for match in blocks:
        command, shown = match.group(1), match.group(2)
        proc = kubectl_hoststorage(scenario, shim, *shlex.split(command)[2:])
        assert proc.returncode == 0, f"{command}: {proc.stderr}"
        actual = proc.stdout
        regenerated = regenerated.replace(match.group(0), f"```console\n$ {command}\n{actual}```")
        if _normalise(shown) != _normalise(actual):
            mismatches.append(f"$ {command}\n--- docs\n{shown}--- now\n{actual}")
    if os.environ.get("HOSTSTORAGE_REGENERATE_DOCS"):
        DOC.write_text(regenerated)
        return
    assert not mismatches, "docs/kubectl-plugin.md is out of date (HOSTSTORAGE_REGENERATE_DOCS=1):\n" + (
        "\n".join(mismatches))  # fmt: skip
