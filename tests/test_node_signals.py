"""Scheduling signals on Nodes, pure: label keys, the label's grace, the taint and its breaker, patches."""

from __future__ import annotations

import datetime
from typing import Any

import pytest

from controller import node_signals, registry, rollup
from reconcilers import health_policy

NOW = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)
S = datetime.timedelta(seconds=1)
PHASES = rollup.phases_of(registry.row("DomainMonitor"))
KEY = "dmon.hoststorage.io/m1"
VALUE = "dmon.m1"


def counts(states: dict[str, tuple[str, datetime.timedelta | None]]) -> rollup.Tally:
    """A tally of node -> (phase, failing for)."""
    out = rollup.Tally()
    for node, (phase, age) in states.items():
        out.select(node, True)
        cond: dict[str, Any] = {"type": "Ready", "status": "True" if phase == "Healthy" else "False",
                                "reason": phase}
        if age is not None:
            cond["lastTransitionTime"] = rollup.format_time(NOW - age)
        out.set_child(node, rollup.verdict({"phase": phase, "conditions": [cond]}, PHASES))
    return out


def infos(labelled: set[str] = frozenset(), tainted: set[str] = frozenset(), names: str = "abcdefghij"
          ) -> dict[str, rollup.NodeInfo]:
    return {n: rollup.NodeInfo(n, {KEY: "true"} if n in labelled else {},
                               taints=frozenset({("NoSchedule", VALUE)}) if n in tainted else frozenset())
            for n in names}


def policy(*, label: bool = True, pct: int | None = 30, grace: int = 60) -> health_policy.Policy:
    return health_policy.Policy(grace, label, health_policy.Taint("NoSchedule", pct) if pct else None)


def run(
    tally: rollup.Tally, pol: health_policy.Policy, nodes: dict[str, rollup.NodeInfo]
) -> node_signals.Plan:
    diag = rollup.diagnose(tally, grace=datetime.timedelta(seconds=pol.grace_seconds), now=NOW)
    return node_signals.plan("DomainMonitor", "m1", pol, tally, diagnosis=diag, nodes=nodes, now=NOW)


def test_label_key_and_taint_value_are_short_name_and_hashed_when_too_long() -> None:
    assert node_signals.label_key("StorageConnection", "nfs") == "sconn.hoststorage.io/nfs"
    assert node_signals.label_key("StoragePool", "p") == "spool.hoststorage.io/p"
    assert node_signals.label_key("DomainMonitor", "m1") == KEY
    long = "m" * 64
    key = node_signals.label_key("DomainMonitor", long)
    assert key == node_signals.label_key("DomainMonitor", long)  # stable
    assert len(key.split("/")[1]) <= 63 and key != node_signals.label_key("DomainMonitor", "m" * 65)
    assert len(node_signals.label_key("DomainMonitor", "m" * 63).split("/")[1]) == 63
    assert len(node_signals.taint_value("DomainMonitor", "m" * 253)) <= 63


def test_labels_on_ready_nodes_kept_through_the_grace_then_removed() -> None:
    tally = counts({"a": ("Healthy", None), "b": ("Invalid", 59 * S), "c": ("Invalid", 60 * S),
                    "d": ("Invalid", 10 * S)})
    out = run(tally, policy(pct=None), infos(labelled={"a", "b", "c"}))
    # b within its grace keeps its label; c at the grace loses it; d never had one and gets none
    assert out.labelled == {"a", "b"}
    assert out.next_check == NOW + S
    assert run(tally, policy(label=False, pct=None), infos(labelled={"a"})).labelled == frozenset()


def test_taints_only_on_a_node_problem_never_on_a_storage_problem() -> None:
    nodes = infos()
    node_problem = counts({n: ("Healthy", None) for n in "abcdefghi"} | {"j": ("Invalid", 60 * S)})
    assert run(node_problem, policy(), nodes).tainted == {"j"}
    in_grace = counts({n: ("Healthy", None) for n in "abcdefghi"} | {"j": ("Invalid", 59 * S)})
    assert run(in_grace, policy(), nodes).tainted == frozenset()
    storage = counts({n: ("Invalid", 60 * S) for n in "abcdefghij"})
    out = run(storage, policy(pct=100), nodes)
    assert out.tainted == frozenset() and out.held == ()


@pytest.mark.parametrize(
    ("selected", "failing", "pct", "limit", "tainted"),
    [
        (10, 3, 30, 3, 3),   # exactly at the limit: all tainted
        (10, 4, 30, 3, 0),   # one past it: the breaker holds every new taint
        (3, 1, 30, 0, 0),    # floor(0.9) = 0: three nodes at 30 % allow none
        (4, 1, 30, 1, 1),    # floor(1.2) = 1
        (3, 1, 34, 1, 1),
        (3, 2, 34, 1, 0),
        (10, 10, 100, 10, 0),  # every node failing is a storage problem, never tainted
    ],
)
def test_the_breaker_never_taints_more_than_the_share(
    selected: int, failing: int, pct: int, limit: int, tainted: int
) -> None:
    names = "abcdefghij"[:selected]
    tally = counts(
        {n: ("Invalid", 60 * S) if i < failing else ("Healthy", None) for i, n in enumerate(names)}
    )
    out = run(tally, policy(pct=pct), infos(names=names))
    assert len(out.tainted) == tainted <= limit
    if failing < selected:
        assert out.limit == limit
        assert len(out.held) == (failing - tainted)
    held = node_signals.held_condition(out, selected, policy(pct=pct))
    assert held["status"] == ("True" if out.held else "False")


def test_past_the_limit_nodes_already_tainted_keep_it_up_to_the_limit_first_by_name() -> None:
    names = "abcdefghij"
    tally = counts({n: ("Invalid", 60 * S) if n in "cdef" else ("Healthy", None) for n in names})
    out = run(tally, policy(), infos(tainted={"f", "e", "d", "c"}, names=names))
    assert out.tainted == {"c", "d", "e"} and out.held == ("f",)
    out = run(tally, policy(), infos(tainted={"f"}, names=names))
    assert out.tainted == {"f"} and out.held == ("c", "d", "e")
    assert "3 (30% of 10 selected)" in node_signals.held_condition(out, 10, policy())["message"]


def test_deleting_wants_nothing() -> None:
    tally = counts({"a": ("Healthy", None)})
    assert run(tally, policy(), infos()).labelled == {"a"}
    diag = rollup.Diagnosis()
    out = node_signals.plan("DomainMonitor", "m1", policy(), tally, diagnosis=diag, nodes=infos(), now=NOW,
                            deleting=True)
    assert out == node_signals.Plan()


def node(labels: dict[str, str], taints: list[dict[str, str]]) -> rollup.NodeInfo:
    return rollup.NodeInfo.from_node(
        {"metadata": {"name": "a", "resourceVersion": "7", "labels": labels}, "spec": {"taints": taints}}
    )


def test_a_node_patch_only_on_a_transition_labels_alone_without_precondition() -> None:
    other = {"key": "node.kubernetes.io/unreachable", "effect": "NoExecute"}
    ours = {"key": node_signals.TAINT_KEY, "value": VALUE, "effect": "NoSchedule"}
    n = node({KEY: "true"}, [other, ours])
    assert node_signals.node_patch(n, {KEY: True}, frozenset({("NoSchedule", VALUE)})) is None
    assert node_signals.node_patch(n, {KEY: False}, None) == {"metadata": {"labels": {KEY: None}}}
    assert node_signals.node_patch(node({}, []), {KEY: True}, None) == {"metadata": {"labels": {KEY: "true"}}}
    assert node_signals.node_patch(n, {}, frozenset()) == {
        "metadata": {"resourceVersion": "7"}, "spec": {"taints": [other]}
    }
    assert node_signals.node_patch(node({}, [other]), {KEY: True}, frozenset({("NoExecute", VALUE)})) == {
        "metadata": {"labels": {KEY: "true"}, "resourceVersion": "7"},
        "spec": {"taints": [other, {"key": node_signals.TAINT_KEY, "value": VALUE, "effect": "NoExecute"}]},
    }


def test_one_taint_per_effect_shared_by_parents_first_value_wins() -> None:
    assert node_signals.node_taints([("NoSchedule", "spool.p"), ("NoSchedule", "dmon.m"),
                                     ("NoExecute", "sconn.c")]) == {("NoSchedule", "dmon.m"),
                                                                   ("NoExecute", "sconn.c")}
