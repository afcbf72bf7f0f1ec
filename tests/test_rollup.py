"""Roll-up of per-node states into parent status, and the teardown-finalizer decision (pure)."""

from __future__ import annotations

import datetime
from typing import Any

from controller import registry, rollup

NOW = datetime.datetime(2026, 1, 1, 12, 0, tzinfo=datetime.UTC)
GRACE = datetime.timedelta(minutes=5)
PHASES = rollup.phases_of(registry.row("StorageConnection"))


def parent(gen: int = 2, selector: dict[str, Any] | None = None, deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": "c1", "uid": "u1", "generation": gen}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T11:59:00Z"
    return {"kind": "StorageConnection", "metadata": meta, "spec": {"nodeSelector": selector or {}}}


def child(
    node: str, phase: str, *, gen: int = 2, ready: bool | None = None, reason: str = "", uid: str = "u1"
) -> dict[str, Any]:
    ready = phase == "Connected" if ready is None else ready
    return {
        "spec": {"nodeName": node, "parentRef": {"kind": "StorageConnection", "name": "c1", "uid": uid}},
        "status": {
            "phase": phase,
            "observedGeneration": gen,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": reason or phase,
                    "message": f"{node} says {reason or phase}",
                }
            ],
        },
    }


NODES = {
    n: rollup.NodeInfo(name=n, labels={"zone": z})
    for n, z in [("node-a", "a"), ("node-b", "a"), ("node-c", "b")]
}


def conds(status: dict[str, Any]) -> dict[str, tuple[str, str]]:
    return {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}


def test_all_ready() -> None:
    kids = [child(n, "Connected") for n in NODES]
    status = rollup.rollup(parent(), kids, NODES, now=NOW, phases=PHASES)
    assert status["readyNodes"] == "3/3"
    assert (status["selected"], status["ready"], status["failed"]) == (3, 3, 0)
    assert status["observedGeneration"] == 2
    assert conds(status) == {
        "Ready": ("True", "AllNodesReady"),
        "Progressing": ("False", "Reconciled"),
        "Degraded": ("False", "NoFailures"),
    }


def test_stale_generation_is_not_ready() -> None:
    kids = [child("node-a", "Connected", gen=1), child("node-b", "Connected"), child("node-c", "Connected")]
    status = rollup.rollup(parent(), kids, NODES, now=NOW, phases=PHASES)
    assert conds(status)["Ready"][0] == "False"
    assert conds(status)["Progressing"] == ("True", "Reconciling")
    assert "node-a" in next(c for c in status["conditions"] if c["type"] == "Progressing")["message"]


def test_selector_limits_the_nodes() -> None:
    kids = [child("node-a", "Connected"), child("node-b", "Connected")]
    status = rollup.rollup(
        parent(selector={"matchLabels": {"zone": "a"}}), kids, NODES, now=NOW, phases=PHASES
    )
    assert status["readyNodes"] == "2/2"


def test_invalid_spec_everywhere_is_degraded_with_first_nodes() -> None:
    kids = [child(n, "Failed", reason="InvalidSpec") for n in NODES]
    status = rollup.rollup(parent(), kids, NODES, now=NOW, phases=PHASES)
    assert status["failed"] == 3
    assert conds(status)["Degraded"] == ("True", "InvalidSpec")
    assert conds(status)["Ready"] == ("False", "NodesFailed")
    assert [f["node"] for f in status["failingNodes"]] == ["node-a", "node-b", "node-c"]


def test_missing_child_is_waiting() -> None:
    status = rollup.rollup(parent(), [child("node-a", "Connected")], NODES, now=NOW, phases=PHASES)
    assert status["readyNodes"] == "1/3"
    assert conds(status)["Ready"] == ("False", "WaitingForNodes")


def test_no_nodes_selected() -> None:
    status = rollup.rollup(parent(selector={"matchLabels": {"zone": "z"}}), [], NODES, now=NOW, phases=PHASES)
    assert status["readyNodes"] == "0/0"
    assert conds(status)["Ready"] == ("True", "NoNodesSelected")


def test_malformed_selector_selects_nothing() -> None:
    sel = {"matchExpressions": [{"key": "zone", "operator": "Bogus"}]}
    assert rollup.selected_nodes(parent(selector=sel), NODES.values()) == []


def test_deleting_parent_reports_teardown() -> None:
    kids = [child("node-a", "Detached", ready=False), child("node-b", "Connected")]
    status = rollup.rollup(parent(deleting=True), kids, NODES, now=NOW, phases=PHASES)
    assert conds(status)["Ready"] == ("False", "Deleting")
    assert conds(status)["Progressing"] == ("True", "TearingDown")


def test_transition_time_kept_while_status_unchanged() -> None:
    kids = [child(n, "Connected") for n in NODES]
    first = rollup.rollup(parent(), kids, NODES, now=NOW, phases=PHASES)
    later = NOW + datetime.timedelta(minutes=1)
    second = rollup.rollup(parent(), kids, NODES, old_status=first, now=later, phases=PHASES)
    assert second["conditions"] == first["conditions"]
    assert not rollup.status_changed(first, second)
    kids[0] = child("node-a", "Failed", reason="MountFailed")
    third = rollup.rollup(parent(), kids, NODES, old_status=second, now=later, phases=PHASES)
    ready = next(c for c in third["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2026-01-01T12:01:00Z"
    assert rollup.status_changed(second, third)


def test_children_of_ignores_other_parents_and_stale_uids() -> None:
    kids = [child("node-a", "Connected"), child("node-b", "Connected", uid="old")]
    assert [c["spec"]["nodeName"] for c in rollup.children_of(parent(), kids)] == ["node-a"]


def test_finalizer_waits_for_every_live_node() -> None:
    kids = [child("node-a", "Detached", ready=False), child("node-b", "Detaching", ready=False)]
    assert rollup.finalizer_decision(kids, NODES, now=NOW, grace=GRACE) == (False, [])
    kids[1] = child("node-b", "Detached", ready=False)
    assert rollup.finalizer_decision(kids, NODES, now=NOW, grace=GRACE) == (True, [])


def test_finalizer_skips_deleted_and_long_notready_nodes() -> None:
    kids = [
        child("node-a", "Detached", ready=False),
        child("gone", "Connected"),
        child("node-c", "Connected"),
    ]
    nodes = dict(NODES)
    nodes["node-c"] = rollup.NodeInfo(
        name="node-c", labels={}, ready=False, ready_since=NOW - datetime.timedelta(minutes=1)
    )
    assert rollup.finalizer_decision(kids, nodes, now=NOW, grace=GRACE) == (False, [])
    nodes["node-c"] = rollup.NodeInfo(
        name="node-c", labels={}, ready=False, ready_since=NOW - datetime.timedelta(minutes=6)
    )
    assert rollup.finalizer_decision(kids, nodes, now=NOW, grace=GRACE) == (True, ["gone", "node-c"])


def test_failed_teardown_blocks_on_live_node() -> None:
    kids = [child("node-a", "TeardownFailed", reason="InUse")]
    assert rollup.finalizer_decision(kids, NODES, now=NOW, grace=GRACE) == (False, [])


def test_node_info_from_node_object() -> None:
    info = rollup.NodeInfo.from_node(
        {
            "metadata": {"name": "n", "labels": {"a": "b"}},
            "status": {
                "conditions": [
                    {"type": "Ready", "status": "False", "lastTransitionTime": "2026-01-01T11:00:00Z"}
                ]
            },
        }
    )
    assert (info.name, info.ready, info.labels) == ("n", False, {"a": "b"})
    assert info.ready_since == datetime.datetime(2026, 1, 1, 11, 0, tzinfo=datetime.UTC)


def monitor_child(node: str, phase: str, reason: str) -> dict[str, Any]:
    kid = child(node, phase, ready=phase == "Healthy", reason=reason)
    kid["spec"]["parentRef"]["kind"] = "DomainMonitor"
    return kid


def test_a_monitor_invalid_or_degraded_on_a_node_rolls_up_as_degraded_not_waiting() -> None:
    """The phases come from the kind's registry row: a monitor's Invalid and Degraded are failures."""
    mon = parent()
    mon["kind"] = "DomainMonitor"
    kids = [
        monitor_child("node-a", "Healthy", "CheckSucceeded"),
        monitor_child("node-b", "Invalid", "ReadTimeout"),
        monitor_child("node-c", "Degraded", "LowFreeSpace"),
    ]
    status = rollup.rollup(mon, kids, NODES, now=NOW, phases=rollup.phases_of(registry.row("DomainMonitor")))
    assert (status["ready"], status["failed"]) == (1, 2)
    assert conds(status)["Ready"] == ("False", "NodesFailed")
    assert conds(status)["Degraded"][0] == "True"
    assert conds(status)["Progressing"] == ("False", "Reconciled")
    assert {f["node"] for f in status["failingNodes"]} == {"node-b", "node-c"}
    # The same children under a connection's phases would only be waiting: the row decides.
    as_connection = rollup.rollup(mon, kids, NODES, now=NOW, phases=PHASES)
    assert conds(as_connection)["Ready"] == ("False", "WaitingForNodes")
    # A monitor still Unknown or Pending is waited for, not failed.
    waiting = [
        monitor_child("node-a", "Healthy", "CheckSucceeded"),
        monitor_child("node-b", "Unknown", "NoResultYet"),
        monitor_child("node-c", "Pending", "WaitingForConnection"),
    ]
    status = rollup.rollup(
        mon, waiting, NODES, now=NOW, phases=rollup.phases_of(registry.row("DomainMonitor"))
    )
    assert conds(status)["Ready"] == ("False", "WaitingForNodes")
    assert status["failed"] == 0
