"""Roll-up of per-node states into parent status, and the teardown-finalizer decision (pure)."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from controller import events, registry, rollup

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
    # A connection it had and lost on that node (storage_connection.ConnectionLost) is that node's failure.
    lost = [*waiting[:2], monitor_child("node-c", "Failed", "ConnectionLost")]
    status = rollup.rollup(mon, lost, NODES, now=NOW, phases=rollup.phases_of(registry.row("DomainMonitor")))
    assert (conds(status)["Ready"], status["failed"]) == (("False", "NodesFailed"), 1)
    assert [f["reason"] for f in status["failingNodes"]] == ["ConnectionLost"]


# ------------------------------------------------------------------ diagnosis (issue 11 part 1)

SECOND = datetime.timedelta(seconds=1)


def dated(
    node: str, phase: str, *, failing_for: datetime.timedelta | None, reason: str = ""
) -> dict[str, Any]:
    """A child whose Ready condition turned False ``failing_for`` before NOW (None: undated)."""
    kid = child(node, phase, reason=reason)
    if failing_for is not None:
        kid["status"]["conditions"][0]["lastTransitionTime"] = rollup.format_time(NOW - failing_for)
    return kid


def graced(seconds: int, **spec: Any) -> dict[str, Any]:
    p = parent()
    p["spec"].update({"failureGraceSeconds": seconds, **spec})
    return p


OK = "Connected"
BAD = "Failed"
G = datetime.timedelta(seconds=60)


@pytest.mark.parametrize(
    ("kids", "problem", "nodes"),
    [
        # one node failing, the others ready: a node problem once the grace has passed ...
        ({"node-a": (OK, None), "node-b": (OK, None), "node-c": (BAD, G)}, "NodeProblem", ("node-c",)),
        # ... exactly at the grace too (>=), not a second before
        ({"node-a": (OK, None), "node-b": (OK, None), "node-c": (BAD, G - SECOND)}, "", ()),
        ({"node-a": (OK, None), "node-b": (BAD, G + SECOND), "node-c": (BAD, G)}, "NodeProblem",
         ("node-b", "node-c")),
        # every reporting node failing: a storage problem
        ({"node-a": (BAD, G), "node-b": (BAD, 2 * G), "node-c": (BAD, G)}, "StorageProblem",
         ("node-a", "node-b", "node-c")),
        # a node still within its grace is no ready node: storage, and it is not named yet
        ({"node-a": (BAD, G), "node-b": (BAD, G - SECOND), "node-c": (BAD, G)}, "StorageProblem",
         ("node-a", "node-c")),
        # a node that does not report (pending) takes no part
        ({"node-a": ("Pending", None), "node-b": (BAD, G)}, "StorageProblem", ("node-b",)),
        ({"node-a": (OK, None), "node-b": (BAD, G)}, "NodeProblem", ("node-b",)),
        # nothing failing
        ({"node-a": (OK, None), "node-b": (OK, None), "node-c": (OK, None)}, "", ()),
    ],
)
def test_diagnosis_tells_a_node_problem_from_a_storage_problem_after_the_grace(
    kids: dict[str, tuple[str, datetime.timedelta | None]], problem: str, nodes: tuple[str, ...]
) -> None:
    children = [dated(n, phase, failing_for=age, reason="MountFailed") for n, (phase, age) in kids.items()]
    status = rollup.rollup(graced(60), children, NODES, now=NOW, phases=PHASES)
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    if problem:
        assert degraded["reason"] == problem
        assert status["diagnosis"]["problem"] == problem
        assert tuple(status["diagnosis"]["nodes"]) == nodes
        assert status["diagnosis"]["count"] == len(nodes)
        for node in nodes:
            assert node in degraded["message"]
    else:
        assert status["diagnosis"] is None
        assert degraded["reason"] in ("MountFailed", "NoFailures")


def test_before_the_grace_the_reason_is_the_nodes_and_the_next_check_is_when_it_passes() -> None:
    kids = [dated("node-a", OK, failing_for=None), dated("node-b", OK, failing_for=None),
            dated("node-c", BAD, failing_for=10 * SECOND, reason="MountFailed")]
    p = graced(60)
    counts = rollup.tally(p, kids, NODES, PHASES)
    diag = rollup.diagnosis_of(p, counts, now=NOW)
    assert diag.problem == "" and diag.next_check == NOW + 50 * SECOND
    assert conds(rollup.status_of(p, counts, now=NOW))["Degraded"] == ("True", "MountFailed")
    later = rollup.diagnosis_of(p, counts, now=NOW + 50 * SECOND)
    assert (later.problem, later.nodes, later.next_check) == ("NodeProblem", ("node-c",), None)
    assert later.since == NOW - 10 * SECOND


def test_the_default_grace_is_five_minutes_and_zero_diagnoses_at_once() -> None:
    kids = [dated("node-a", OK, failing_for=None), dated("node-b", BAD, failing_for=299 * SECOND)]
    def problem(p: dict[str, Any]) -> Any:
        return (rollup.rollup(p, kids, NODES, now=NOW, phases=PHASES)["diagnosis"] or {}).get("problem")

    assert problem(parent()) is None
    kids[1] = dated("node-b", BAD, failing_for=300 * SECOND)
    assert problem(parent()) == "NodeProblem"
    kids[1] = dated("node-b", BAD, failing_for=datetime.timedelta(0))
    assert problem(graced(0)) == "NodeProblem"


def test_invalid_spec_undated_and_deleting_are_never_diagnosed() -> None:
    kids = [dated("node-a", OK, failing_for=None),
            dated("node-b", BAD, failing_for=G, reason="InvalidSpec"),
            dated("node-c", BAD, failing_for=None, reason="MountFailed")]
    status = rollup.rollup(graced(60), kids, NODES, now=NOW, phases=PHASES)
    assert status["diagnosis"] is None and status["failed"] == 2
    assert conds(status)["Degraded"][0] == "True"
    kids[2] = dated("node-c", BAD, failing_for=G, reason="MountFailed")
    p = graced(60)
    assert rollup.rollup(p, kids, NODES, now=NOW, phases=PHASES)["diagnosis"]["nodes"] == ["node-c"]
    p["metadata"]["deletionTimestamp"] = "2026-01-01T11:59:00Z"
    assert rollup.rollup(p, kids, NODES, now=NOW, phases=PHASES)["diagnosis"] is None


def test_a_malformed_policy_falls_back_to_the_default_grace() -> None:
    kids = [dated("node-a", OK, failing_for=None), dated("node-b", BAD, failing_for=G)]
    bad = graced(60, nodeSignals={"taint": {"effect": "Sometimes"}})
    assert rollup.rollup(bad, kids, NODES, now=NOW, phases=PHASES)["diagnosis"] is None


def test_a_monitor_invalid_on_one_node_is_a_node_problem_after_the_grace() -> None:
    mon = graced(3)
    mon["kind"] = "DomainMonitor"
    kids = [monitor_child(n, "Healthy", "CheckSucceeded") for n in ("node-a", "node-b")]
    kids.append(monitor_child("node-c", "Invalid", "ReadError"))
    kids[2]["status"]["conditions"][0]["lastTransitionTime"] = rollup.format_time(NOW - 3 * SECOND)
    status = rollup.rollup(mon, kids, NODES, now=NOW, phases=rollup.phases_of(registry.row("DomainMonitor")))
    assert conds(status)["Degraded"] == ("True", "NodeProblem")
    assert "node-c: ReadError" in next(c for c in status["conditions"] if c["type"] == "Degraded")["message"]


@pytest.mark.parametrize(
    ("old", "new", "reasons"),
    [
        (None, None, []),
        (None, {"problem": "NodeProblem", "nodes": ["b"], "count": 1}, ["NodeProblem"]),
        ({"problem": "NodeProblem", "nodes": ["b"], "count": 1},
         {"problem": "NodeProblem", "nodes": ["b"], "count": 1, "since": "x"}, []),
        ({"problem": "NodeProblem", "nodes": ["b"], "count": 1},
         {"problem": "NodeProblem", "nodes": ["b", "c"], "count": 2}, ["NodeProblem"]),
        ({"problem": "NodeProblem", "nodes": ["b"], "count": 1},
         {"problem": "StorageProblem", "nodes": ["a", "b", "c"], "count": 3}, ["StorageProblem"]),
        ({"problem": "StorageProblem", "nodes": ["a"], "count": 1}, None, ["ProblemCleared"]),
    ],
)
def test_events_only_on_a_change_of_diagnosis(
    old: dict[str, Any] | None, new: dict[str, Any] | None, reasons: list[str]
) -> None:
    out = events.diagnosis_change(old, new, message="m")
    assert [e.reason for e in out] == reasons
    assert all(e.type == ("Normal" if e.reason == "ProblemCleared" else "Warning") for e in out)
