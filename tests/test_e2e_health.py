"""e2e, issue 11: a connection (and a DomainMonitor) failing on one node only becomes
Degraded/NodeProblem after its grace, that node loses its label and gets the taint; repaired, it is
cleared. Real agents and controller
against the emulator (tests/fixtures_kube.py), three nodes on one machine.

The failure is made underneath on one node: a tmpfs mounted over that node's mount point of the
connection (the topmost mount is the one that counts), removed again to repair. Times are printed
(failure -> NodeProblem, repair -> cleared): the figures of the issue's closing note.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from typing import Any

import pytest
from fixtures_kube import Cluster, wait_until
from test_e2e_connections import debug, delete, mounts_of, posixfs, uniq, wait_condition, wait_gone

pytestmark = [pytest.mark.e2e, pytest.mark.host]

TAINT = "hoststorage.io/storage-problem"


def nodes(cluster: Cluster) -> dict[str, dict[str, Any]]:
    items = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"]
    return {n["metadata"]["name"]: n for n in items}


def labelled(cluster: Cluster, key: str) -> set[str]:
    return {n for n, b in nodes(cluster).items() if (b["metadata"].get("labels") or {}).get(key) == "true"}


def tainted(cluster: Cluster) -> set[str]:
    return {n for n, body in nodes(cluster).items()
            if any(t.get("key") == TAINT for t in (body.get("spec") or {}).get("taints") or [])}


def degraded(obj: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == "Degraded")


def reason(obj: dict[str, Any] | None) -> str:
    """The Degraded condition's reason while it is True; "" when it is not (or not there yet)."""
    cond = next((c for c in ((obj or {}).get("status") or {}).get("conditions") or []
                 if c["type"] == "Degraded"), {})
    return str(cond.get("reason") or "") if cond.get("status") == "True" else ""


def controller_log(cluster: Cluster) -> str:
    assert cluster.controller is not None
    return cluster.controller.log_text()


def node_patches(log_text: str, parent: str) -> dict[str, int]:
    """Node -> how many Node patches the controller logged for ``parent`` in ``log_text``."""
    out: dict[str, int] = {}
    for found in re.finditer(rf"/{re.escape(parent)}: node (\S+): \{{", log_text):
        out[found[1]] = out.get(found[1], 0) + 1
    return out


def test_a_failure_on_one_node_is_a_node_problem_with_label_removed_and_taint(
    kube_cluster: Cluster, loop_device: Any
) -> None:
    dev = loop_device("ext4")
    name = uniq("health")
    grace = 3
    signals = {"label": True, "taint": {"effect": "NoSchedule", "maxTaintedPercent": 34}}  # 3 nodes: 1
    kube_cluster.apply(posixfs(name, dev, failureGraceSeconds=grace, nodeSignals=signals))
    covered: list[str] = []
    try:
        wait_condition(kube_cluster, name)
        key = kube_cluster.get("sconn", name)["status"]["nodeLabel"]
        assert key == f"sconn.hoststorage.io/{name}"
        wait_until(lambda: labelled(kube_cluster, key) == set(kube_cluster.nodes), 30, "every node labelled")
        victim = sorted(kube_cluster.nodes)[1]
        (point,) = mounts_of(kube_cluster, victim, dev)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "hs-e2e-cover", point], check=True)
        covered.append(point)
        failed_at = time.monotonic()
        log_mark = len(controller_log(kube_cluster))

        def node_problem(o: dict[str, Any]) -> bool:
            return degraded(o)["reason"] == "NodeProblem"

        obj = wait_until(lambda: (o := kube_cluster.get("sconn", name)) and node_problem(o) and o, 60,
                         "Degraded/NodeProblem")
        to_problem = time.monotonic() - failed_at
        assert obj["status"]["diagnosis"]["nodes"] == [victim]
        assert victim in degraded(obj)["message"]
        wait_until(lambda: tainted(kube_cluster) == {victim}, 10, "the victim tainted")
        assert labelled(kube_cluster, key) == set(kube_cluster.nodes) - {victim}
        on_failure = node_patches(controller_log(kube_cluster)[log_mark:], name)
        log_mark = len(controller_log(kube_cluster))
        subprocess.run(["umount", point], check=True)
        covered.remove(point)
        repaired_at = time.monotonic()
        wait_until(lambda: degraded(kube_cluster.get("sconn", name))["status"] == "False", 60, "cleared")
        to_clear = time.monotonic() - repaired_at
        wait_until(lambda: not tainted(kube_cluster), 10, "taint removed")
        wait_until(lambda: labelled(kube_cluster, key) == set(kube_cluster.nodes), 10, "label back")
        on_repair = node_patches(controller_log(kube_cluster)[log_mark:], name)
        # Node writes only where something changed: the victim's, never the other Nodes'.
        assert set(on_failure) == {victim} and set(on_repair) == {victim}, (on_failure, on_repair)
        print(f"figures: failure -> NodeProblem {to_problem:.1f} s (grace {grace} s); "
              f"repair -> cleared {to_clear:.1f} s; Node patches: failure {on_failure}, repair {on_repair}")
    except BaseException:
        debug(kube_cluster)
        raise
    finally:
        for point in covered:
            subprocess.run(["umount", point], check=False)
        delete(kube_cluster, name)
        wait_gone(kube_cluster, name)
    assert labelled(kube_cluster, key) == set() and not tainted(kube_cluster)


def test_a_monitor_failing_on_one_node_is_a_node_problem_with_its_label_and_taint(
    kube_cluster: Cluster, loop_device: Any
) -> None:
    """The same for a DomainMonitor parent (its Healthy/Invalid phases, its own label key): a monitor on
    a posixfs connection, one node's mount point covered, so its probe is not where the monitor reads."""
    dev = loop_device("ext4")
    conn, mon = uniq("hconn"), uniq("hdmon")
    signals = {"label": True, "taint": {"effect": "NoSchedule", "maxTaintedPercent": 34}}
    kube_cluster.apply(posixfs(conn, dev))
    covered: list[str] = []
    key = ""
    try:
        wait_condition(kube_cluster, conn)
        kube_cluster.apply({
            "apiVersion": "hoststorage.io/v1alpha1", "kind": "DomainMonitor", "metadata": {"name": mon},
            "spec": {"target": {"connectionRef": {"name": conn}}, "intervalSeconds": 1,
                     "failureGraceSeconds": 3, "nodeSignals": signals},
        })  # fmt: skip
        obj = wait_until(lambda: (o := kube_cluster.get("dmon", mon)) and (o.get("status") or {}).get(
            "nodeLabel") and o, 60, "the monitor's label key")
        key = obj["status"]["nodeLabel"]
        assert key == f"dmon.hoststorage.io/{mon}"
        wait_until(lambda: labelled(kube_cluster, key) == set(kube_cluster.nodes), 60, "every node labelled")
        victim = sorted(kube_cluster.nodes)[2]
        (point,) = mounts_of(kube_cluster, victim, dev)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "hs-e2e-cover", point], check=True)
        covered.append(point)
        obj = wait_until(lambda: (o := kube_cluster.get("dmon", mon)) and reason(o) == "NodeProblem" and o,
                         60, "the monitor Degraded/NodeProblem")
        assert obj["status"]["diagnosis"]["nodes"] == [victim]
        wait_until(lambda: tainted(kube_cluster) == {victim}, 10, "the victim tainted")
        assert labelled(kube_cluster, key) == set(kube_cluster.nodes) - {victim}
        subprocess.run(["umount", point], check=True)
        covered.remove(point)
        wait_until(lambda: reason(kube_cluster.get("dmon", mon)) == "", 60, "cleared")
        wait_until(lambda: not tainted(kube_cluster), 10, "taint removed")
        wait_until(lambda: labelled(kube_cluster, key) == set(kube_cluster.nodes), 10, "label back")
    except BaseException:
        debug(kube_cluster)
        print(kube_cluster.kubectl("get", "dmon", mon, "-o", "yaml", check=False).stdout)
        raise
    finally:
        for point in covered:
            subprocess.run(["umount", point], check=False)
        kube_cluster.kubectl("delete", "dmon", mon, "--wait=false", "--ignore-not-found", check=False)
        kube_cluster.kubectl("wait", "--for=delete", f"domainmonitor/{mon}", "--timeout=60s", check=False,
                             timeout=70)
        delete(kube_cluster, conn)
        wait_gone(kube_cluster, conn)
    assert key and labelled(kube_cluster, key) == set() and not tainted(kube_cluster)


def _covering(kube_cluster: Cluster, loop_device: Any, victims: int, maxpct: int) -> Any:
    """Apply a connection with taints on, cover ``victims`` nodes' mount points; yields (name, covered)."""
    dev = loop_device("ext4")
    name = uniq("health")
    signals = {"label": True, "taint": {"effect": "NoExecute", "maxTaintedPercent": maxpct}}
    kube_cluster.apply(posixfs(name, dev, failureGraceSeconds=3, nodeSignals=signals))
    wait_condition(kube_cluster, name)
    points = []
    for node in sorted(kube_cluster.nodes)[:victims]:
        (point,) = mounts_of(kube_cluster, node, dev)
        points.append(point)
    return name, points


def _cover(points: list[str], covered: list[str]) -> None:
    for point in points:
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "hs-e2e-cover", point], check=True)
        covered.append(point)


def _cleanup(kube_cluster: Cluster, name: str, covered: list[str]) -> None:
    for point in covered:
        subprocess.run(["umount", point], check=False)
    delete(kube_cluster, name)
    wait_gone(kube_cluster, name)


def test_a_failure_on_every_node_is_a_storage_problem_and_taints_nothing(
    kube_cluster: Cluster, loop_device: Any
) -> None:
    name, points = _covering(kube_cluster, loop_device, 3, 100)
    covered: list[str] = []
    try:
        _cover(points, covered)
        obj = wait_until(lambda: (o := kube_cluster.get("sconn", name))
                         and degraded(o)["reason"] == "StorageProblem" and o, 60, "Degraded/StorageProblem")
        assert obj["status"]["diagnosis"]["count"] == 3
        for _ in range(10):  # and it stays so: never a taint
            assert not tainted(kube_cluster)
            time.sleep(0.3)
    except BaseException:
        debug(kube_cluster)
        raise
    finally:
        _cleanup(kube_cluster, name, covered)


def test_the_breaker_holds_with_more_node_problems_than_the_share(
    kube_cluster: Cluster, loop_device: Any
) -> None:
    """Two of three nodes fail, 34 % allows one taint: whichever node crossed its grace first may keep
    it, the count never exceeds the limit, and TaintsHeld says so (which node is not asserted: the
    order in which two nodes report is timing)."""
    name, points = _covering(kube_cluster, loop_device, 2, 34)
    covered: list[str] = []
    try:
        _cover(points, covered)

        def held() -> bool:
            assert len(tainted(kube_cluster)) <= 1
            o = kube_cluster.get("sconn", name)
            cond = next((c for c in o["status"]["conditions"] if c["type"] == "TaintsHeld"), {})
            return degraded(o)["reason"] == "NodeProblem" and cond.get("status") == "True"

        wait_until(held, 60, "NodeProblem on two nodes and TaintsHeld")
        for _ in range(10):
            assert len(tainted(kube_cluster)) <= 1
            time.sleep(0.3)
    except BaseException:
        debug(kube_cluster)
        raise
    finally:
        _cleanup(kube_cluster, name, covered)
    wait_until(lambda: not tainted(kube_cluster), 20, "no taint left")
