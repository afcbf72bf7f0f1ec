"""The controller acting on health: the diagnosis timer and its Events (issue 11 part 1), the
scheduling signals on Nodes (part 2), against the in-memory API and fake clocks of test_fleet_rollup.

The wall clock the diagnosis reads (``cluster._now``) and the work queue's clock move together here, so
"the grace passes with no event" is a test of the timer, not of sleeping.
"""

from __future__ import annotations

import copy
import datetime
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
import test_fleet_rollup as fleet

from controller import cluster, rollup

KIND = fleet.KIND
START = datetime.datetime(2026, 12, 2, 12, 0, tzinfo=datetime.UTC)


class Api(fleet.Api):
    """test_fleet_rollup's API plus Events and Nodes (get, patch with resourceVersion precondition)."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []
        self.nodes: dict[str, dict[str, Any]] = {}
        self.node_patches: list[tuple[str, dict[str, Any]]] = []
        self.conflicts = 0
        """Answer this many node patches with a resourceVersion precondition 409 Conflict first."""

    def post_event(self, **kw: Any) -> None:
        self.events.append(kw)

    def get_node(self, name: str) -> dict[str, Any] | None:
        return copy.deepcopy(self.nodes.get(name))

    def patch_node(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        from controller import kube  # noqa: PLC0415

        node = self.nodes[name]
        want = (patch.get("metadata") or {}).get("resourceVersion")
        if want is not None and self.conflicts:
            self.conflicts -= 1
            raise kube.ApiError(409, "Conflict", "the object has been modified")
        if want is not None and want != node["metadata"]["resourceVersion"]:
            raise kube.ApiError(409, "Conflict", "the object has been modified")
        self.node_patches.append((name, copy.deepcopy(dict(patch))))
        labels = node["metadata"].setdefault("labels", {})
        for key, value in ((patch.get("metadata") or {}).get("labels") or {}).items():
            if value is None:
                labels.pop(key, None)
            else:
                labels[key] = value
        if "spec" in patch and "taints" in patch["spec"]:
            node.setdefault("spec", {})["taints"] = copy.deepcopy(patch["spec"]["taints"]) or []
            if not node["spec"]["taints"]:
                del node["spec"]["taints"]
        node["metadata"]["resourceVersion"] = fleet.rv()
        return copy.deepcopy(node)


class World(fleet.World):
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        super().__init__()
        self.api = Api()
        self.ctl.api = self.api  # type: ignore[assignment]
        monkeypatch.setattr(cluster, "_now", self.wall)

    def wall(self) -> datetime.datetime:
        return START + datetime.timedelta(seconds=self.clock.now - 1000.0)

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        self.run()

    def put_node(self, n: dict[str, Any], event: str = "MODIFIED") -> None:
        self.api.nodes[n["metadata"]["name"]] = copy.deepcopy(n)
        super().put_node(n, event)

    def report(self, p: dict[str, Any], node: str, phase: str) -> None:
        """``node``'s agent writes ``phase``, its Ready condition dated now (as the agent does)."""
        body = fleet.state(p, node, phase)
        body["status"]["conditions"][0]["lastTransitionTime"] = rollup.format_time(self.wall())
        self.put(body)

    def reasons(self) -> list[str]:
        return [e["reason"] for e in self.api.events]


def health_parent(name: str = "c1", **spec: Any) -> dict[str, Any]:
    p = fleet.parent(name)
    p["spec"].update(spec)
    return p


@pytest.fixture
def world(monkeypatch: pytest.MonkeyPatch) -> Iterator[World]:
    w = World(monkeypatch)
    for n in ("n1", "n2", "n3", "n4"):
        w.put_node(fleet.node(n), "ADDED")
    yield w


def degraded(w: World, name: str = "c1") -> tuple[str, str]:
    cond = next(c for c in w.status(name)["conditions"] if c["type"] == "Degraded")
    return cond["status"], cond["reason"]


def test_the_grace_passing_is_noticed_with_no_new_event_and_announced_once(world: World) -> None:
    p = health_parent(failureGraceSeconds=3)
    world.add_parent(p)
    for n in ("n1", "n2", "n3", "n4"):
        world.report(p, n, "Connected")
    world.run()
    world.report(p, "n3", "Failed")
    world.run()
    assert degraded(world) == ("True", "Failed") and world.status("c1").get("diagnosis") is None
    world.advance(2.9)
    assert degraded(world) == ("True", "Failed")
    world.advance(0.4)  # 3 s and the slack: the timer, not an event, brings the parent back
    assert degraded(world) == ("True", "NodeProblem")
    assert world.status("c1")["diagnosis"] == {
        "problem": "NodeProblem", "nodes": ["n3"], "count": 1, "since": "2026-12-02T12:00:00Z"
    }
    assert world.reasons() == ["NodeProblem"]
    world.ctl.on_parent(KIND, "MODIFIED", world.api.parents[(KIND, "c1")])
    world.advance(60)
    assert world.reasons() == ["NodeProblem"]
    world.report(p, "n3", "Connected")
    world.run()
    assert degraded(world) == ("False", "NoFailures") and world.status("c1").get("diagnosis") is None
    assert world.reasons() == ["NodeProblem", "ProblemCleared"]


def test_every_node_failing_is_a_storage_problem(world: World) -> None:
    p = health_parent(failureGraceSeconds=5)
    world.add_parent(p)
    for n in ("n1", "n2", "n3", "n4"):
        world.report(p, n, "Failed")
    world.run()
    world.advance(5.3)
    assert degraded(world) == ("True", "StorageProblem")
    assert world.status("c1")["diagnosis"]["count"] == 4
    assert world.reasons() == ["StorageProblem"]


# ------------------------------------------------------------------ scheduling signals (part 2)

LABEL = "sconn.hoststorage.io/c1"


def labelled(w: World) -> set[str]:
    return {n for n, b in w.api.nodes.items() if (b["metadata"].get("labels") or {}).get(LABEL) == "true"}


def tainted(w: World) -> set[str]:
    return {n for n, body in w.api.nodes.items() if any(
        t["key"] == "hoststorage.io/storage-problem" for t in (body.get("spec") or {}).get("taints") or [])}


def condition(w: World, ctype: str) -> dict[str, Any]:
    return next(c for c in w.status("c1")["conditions"] if c["type"] == ctype)


def signalled(w: World, **taint: Any) -> dict[str, Any]:
    signals = {"label": True, **({"taint": taint} if taint else {})}
    p = health_parent(failureGraceSeconds=3, nodeSignals=signals)
    w.add_parent(p)
    for n in ("n1", "n2", "n3", "n4"):
        w.report(p, n, "Connected")
    w.run()
    return p


def test_labels_follow_readiness_after_the_grace_one_patch_per_transition(world: World) -> None:
    p = signalled(world)
    assert labelled(world) == {"n1", "n2", "n3", "n4"} and world.status("c1")["nodeLabel"] == LABEL
    assert len(world.api.node_patches) == 4
    world.report(p, "n2", "Failed")
    world.run()
    world.advance(2.5)
    assert "n2" in labelled(world)  # within the grace
    world.advance(0.8)
    assert labelled(world) == {"n1", "n3", "n4"}
    assert len(world.api.node_patches) == 5
    world.advance(30)
    assert len(world.api.node_patches) == 5  # steady: no writes
    world.report(p, "n2", "Connected")
    world.run()
    assert labelled(world) == {"n1", "n2", "n3", "n4"} and len(world.api.node_patches) == 6
    deleted = copy.deepcopy(world.api.parents[(KIND, "c1")])
    deleted["metadata"]["deletionTimestamp"] = "2026-12-02T12:10:00Z"
    deleted["metadata"]["resourceVersion"] = fleet.rv()
    world.api.parents[(KIND, "c1")] = deleted
    world.ctl.on_parent(KIND, "MODIFIED", deleted)
    world.run()
    assert labelled(world) == set() and len(world.api.node_patches) == 10


def test_a_node_problem_taints_that_node_and_the_repair_removes_it(world: World) -> None:
    p = signalled(world, effect="NoSchedule", maxTaintedPercent=25)  # 4 x 25 % = 1
    world.report(p, "n3", "Failed")
    world.run()
    world.advance(3.3)
    assert tainted(world) == {"n3"} and labelled(world) == {"n1", "n2", "n4"}
    n3 = world.api.nodes["n3"]
    assert n3["spec"]["taints"] == [
        {"key": "hoststorage.io/storage-problem", "value": "sconn.c1", "effect": "NoSchedule"}
    ]
    assert condition(world, "TaintsHeld")["status"] == "False"
    writes = len(world.api.node_patches)
    world.report(p, "n3", "Connected")
    world.run()
    assert tainted(world) == set() and "n3" in labelled(world)
    assert len(world.api.node_patches) == writes + 1  # label and taint in one patch


def test_a_storage_problem_taints_nothing(world: World) -> None:
    p = signalled(world, effect="NoExecute", maxTaintedPercent=100)
    for n in ("n1", "n2", "n3", "n4"):
        world.report(p, n, "Failed")
    world.run()
    world.advance(3.3)
    assert degraded(world) == ("True", "StorageProblem")
    assert tainted(world) == set() and labelled(world) == set()


def test_the_breaker_holds_past_the_share_and_says_so(world: World) -> None:
    p = signalled(world, effect="NoSchedule", maxTaintedPercent=25)
    world.report(p, "n2", "Failed")
    world.report(p, "n3", "Failed")
    world.run()
    world.advance(3.3)
    assert degraded(world) == ("True", "NodeProblem")
    assert tainted(world) == set()
    held = condition(world, "TaintsHeld")
    assert held["status"] == "True" and "n2, n3" in held["message"]


def test_a_conflict_on_the_taint_patch_is_retried(world: World) -> None:
    p = signalled(world, effect="NoSchedule", maxTaintedPercent=25)
    world.report(p, "n3", "Failed")
    world.run()
    world.api.conflicts = 1
    world.advance(3.3)
    assert tainted(world) == set()
    world.ctl.queue.add((KIND, "c1"))
    world.run()
    assert tainted(world) == {"n3"}


def test_a_deleted_parent_leaves_no_signal(world: World) -> None:
    p = signalled(world, effect="NoSchedule", maxTaintedPercent=25)
    world.report(p, "n3", "Failed")
    world.run()
    world.advance(3.3)
    assert tainted(world) == {"n3"}
    gone = copy.deepcopy(world.api.parents.pop((KIND, "c1")))
    gone["metadata"]["resourceVersion"] = fleet.rv()
    world.ctl.on_parent(KIND, "DELETED", gone)
    world.run()
    assert tainted(world) == set() and labelled(world) == set()


def _restarted(world: World, monkeypatch: pytest.MonkeyPatch, *, without: str = "") -> World:
    """A new controller over ``world``'s API (the old one's caches gone), listed in name order: the
    parents are planned one at a time, c0 before c1. ``without`` was deleted while none ran."""
    if without:
        del world.api.parents[(KIND, without)]
    again = World(monkeypatch)
    again.clock.now = world.clock.now
    again.api = world.api
    again.ctl.api = world.api  # type: ignore[assignment]
    for body in world.api.nodes.values():
        again.put_node(copy.deepcopy(body), "ADDED")
    for key in sorted(world.api.parents):
        again.ctl.on_parent(KIND, "ADDED", copy.deepcopy(world.api.parents[key]))
    for body in world.bodies.values():
        if body["spec"]["parentRef"]["name"] != without:
            again.put(copy.deepcopy(body), "ADDED")
    return again


def _c1_taints_n3_beside_c0(world: World, **c0_spec: Any) -> None:
    p = signalled(world, effect="NoSchedule", maxTaintedPercent=25)
    world.report(p, "n3", "Failed")
    world.run()
    world.advance(3.3)
    assert tainted(world) == {"n3"}
    other = health_parent("c0", **c0_spec)
    world.add_parent(other)
    for n in ("n1", "n2", "n3", "n4"):
        world.report(other, n, "Connected")
    world.run()
    assert tainted(world) == {"n3"}


def test_a_restarted_controller_leaves_another_parents_taint_alone(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a restart (or a failover) the parents are planned one at a time. The first one planned
    (c0, no signals) must not take off the taint c1, planned later, put there: that is a Node write, an
    untainted window for the scheduler, and another write to put it back."""
    _c1_taints_n3_beside_c0(world)
    patches = len(world.api.node_patches)
    _restarted(world, monkeypatch).run()
    assert tainted(world) == {"n3"}
    assert world.api.node_patches[patches:] == []


def test_after_a_restart_a_taint_no_parent_asks_for_any_more_goes(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """c1 was deleted while no controller ran: its taint is kept only for parents that may want it."""
    _c1_taints_n3_beside_c0(world)
    _restarted(world, monkeypatch, without="c1").run()
    assert tainted(world) == set()


@pytest.mark.parametrize(("effect", "kept"), [("NoSchedule", True), ("NoExecute", False)])
def test_after_a_restart_a_taint_is_kept_only_for_an_unplanned_parent_of_its_effect(
    world: World, monkeypatch: pytest.MonkeyPatch, effect: str, kept: bool
) -> None:
    """c1 (NoSchedule on n3) was deleted while no controller ran; c2 taints with ``effect`` and is not
    planned yet when c0 is. c0's plan keeps the taint only if c2 might want it (the same effect)."""
    _c1_taints_n3_beside_c0(world)
    world.add_parent(health_parent("c2", failureGraceSeconds=3,
                                   nodeSignals={"taint": {"effect": effect, "maxTaintedPercent": 25}}))
    world.run()
    again = _restarted(world, monkeypatch, without="c1")
    again.ctl.process((KIND, "c0"))
    assert tainted(world) == ({"n3"} if kept else set())


def _tainting(name: str, effect: str) -> dict[str, Any]:
    return health_parent(name, nodeSignals={"taint": {"effect": effect, "maxTaintedPercent": 25}})


@pytest.mark.parametrize(
    ("planned", "waiting", "replanning", "effects"),
    [
        ("NoSchedule", "NoExecute", None, {"NoExecute"}),  # a planned parent's effect is not kept for it
        ("NoSchedule", None, None, set()),  # every parent planned: nothing is kept for anyone
        (None, "", None, set()),  # a parent waiting to be planned that taints nothing
        ("NoExecute", None, "NoSchedule", {"NoSchedule"}),  # planned, then its plan dropped (a 409)
    ],
)
def test_the_effects_kept_for_parents_not_planned_yet(
    world: World, planned: str | None, waiting: str | None, replanning: str | None, effects: set[str]
) -> None:
    if planned is not None:
        world.add_parent(_tainting("a", planned))
        world.ctl.process((KIND, "a"))
    if waiting is not None:
        world.add_parent(_tainting("b", waiting) if waiting else health_parent("b"))
    if replanning is not None:
        world.add_parent(_tainting("d", replanning))
        world.ctl.process((KIND, "d"))
        world.ctl._rollups[(KIND, "d")].signals = None  # what a Conflict on its Node patch does
    assert world.ctl._unplanned_effects() == effects
