"""The controller's incremental roll-up: the StorageNodeState index, per-parent tallies, coalesced writes.

The reference is the pure :func:`controller.rollup.rollup` over whole bodies: after any sequence of
watch events the status the controller writes must equal it. The controller runs with an in-memory
API, a fake clock and a queue drained by the test (no threads, no sleeping).
"""

from __future__ import annotations

import copy
import itertools
import random
from collections.abc import Hashable, Mapping
from typing import Any

import pytest

from controller import cache, cluster, metrics, naming, registry, rollup, settings

KIND = "StorageConnection"
PHASES = rollup.phases_of(registry.row(KIND))
_rv = itertools.count(100)


def rv() -> str:
    return str(next(_rv))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Queue:
    """Keys with due times on the fake clock (the earlier time wins, as in the real work queue)."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.due: dict[Hashable, float] = {}

    def add(self, key: Hashable, *, delay: float = 0.0) -> None:
        when = self.clock.now + delay
        self.due[key] = min(when, self.due.get(key, when))

    def depth(self) -> int:
        return len(self.due)

    def shutdown(self, timeout: float) -> bool:
        return True

    def pop_due(self) -> list[Hashable]:
        ready = sorted((k for k, t in self.due.items() if t <= self.clock.now), key=str)
        for k in ready:
            del self.due[k]
        return ready


class Api:
    def __init__(self) -> None:
        self.parents: dict[tuple[str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, dict[str, Any]]] = []
        self.deleted: list[str] = []

    def patch_parent_status(self, kind: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(self.parents[(kind, name)])
        obj["status"] = {**(obj.get("status") or {}), **copy.deepcopy(dict(status))}
        obj["metadata"]["resourceVersion"] = rv()
        self.parents[(kind, name)] = obj
        self.writes.append((name, copy.deepcopy(obj)))
        return copy.deepcopy(obj)

    def set_parent_finalizers(
        self, kind: str, name: str, finalizers: list[str], version: str
    ) -> dict[str, Any]:
        obj = self.parents[(kind, name)]
        obj["metadata"]["finalizers"] = finalizers
        obj["metadata"]["resourceVersion"] = rv()
        return copy.deepcopy(obj)

    def delete_node_state(self, name: str, *, uid: str | None = None) -> bool:
        self.deleted.append(name)
        return True

    def post_event(self, **_: Any) -> None:
        return None


def node(name: str, zone: str = "a", *, ready: bool = True) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "uid": f"uid-{name}", "resourceVersion": rv(), "labels": {"zone": zone}},
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ]
        },
    }


def parent(name: str, zone: str | None = None, *, uid: str = "", generation: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": registry.API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "uid": uid or f"uid-{name}",
            "generation": generation,
            "resourceVersion": rv(),
            "finalizers": [naming.FINALIZER],
        },
        "spec": {"nodeSelector": {"matchLabels": {"zone": zone}} if zone else {}},
    }


def state(
    p: dict[str, Any], node_name: str, phase: str | None, *, gen: int = 1, extra: Any = None
) -> dict[str, Any]:
    body = naming.node_state_body(
        kind=KIND,
        parent_name=p["metadata"]["name"],
        parent_uid=p["metadata"]["uid"],
        node=node_name,
        node_uid=f"uid-{node_name}",
    )
    body["metadata"]["uid"] = f"uid-{body['metadata']['name']}"
    body["metadata"]["resourceVersion"] = rv()
    if phase is not None:
        ready = phase == "Connected"
        body["status"] = {
            "phase": phase,
            "observedGeneration": gen,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": phase,
                    "message": f"{node_name} is {phase}",
                }
            ],
            "connection": {"type": "nfs", "freeBytes": extra},
        }
    return body


class World:
    def __init__(self, window: float = 0.0) -> None:
        self.clock = Clock()
        self.api = Api()
        conf = settings.Settings(health_port=0, metrics_port=0, status_window=window)
        self.ctl = cluster.Controller(
            conf,
            self.api,  # type: ignore[arg-type]
            stats=metrics.Metrics("controller"),
            clock=self.clock,
        )
        self.ctl.queue.shutdown(0)
        self.queue = Queue(self.clock)
        self.ctl.queue = self.queue  # type: ignore[assignment]
        self.ctl.synced.set()
        self.bodies: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}

    def add_parent(self, p: dict[str, Any]) -> None:
        self.api.parents[(KIND, p["metadata"]["name"])] = copy.deepcopy(p)
        self.ctl.on_parent(KIND, "ADDED", p)

    def put_node(self, n: dict[str, Any], event: str = "MODIFIED") -> None:
        self.nodes[n["metadata"]["name"]] = n
        self.ctl.on_node(event, n)

    def put(self, s: dict[str, Any], event: str = "MODIFIED") -> None:
        self.bodies[s["metadata"]["name"]] = s
        self.ctl.on_state(event, s)

    def delete(self, s: dict[str, Any]) -> None:
        gone = copy.deepcopy(s)
        gone["metadata"]["resourceVersion"] = rv()
        self.bodies.pop(s["metadata"]["name"], None)
        self.ctl.on_state("DELETED", gone)

    def run(self) -> None:
        """Process what is due, feeding each status write back as the watch's echo."""
        while True:
            keys = self.queue.pop_due()
            if not keys:
                return
            for key in keys:
                before = len(self.api.writes)
                self.ctl.process(key)  # type: ignore[arg-type]
                for _, obj in self.api.writes[before:]:
                    self.ctl.on_parent(KIND, "MODIFIED", obj)

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.api.parents[(KIND, name)].get("status") or {})

    def expected(self, name: str) -> dict[str, Any]:
        """The pure roll-up of the whole bodies (the reference)."""
        p = self.api.parents[(KIND, name)]
        infos = {k: rollup.NodeInfo.from_node(v) for k, v in self.nodes.items()}
        mine = rollup.children_of(p, list(self.bodies.values()))
        return rollup.rollup(p, mine, infos, old_status=p.get("status"), now=cluster._now(), phases=PHASES)


def same(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    def strip(st: Mapping[str, Any]) -> dict[str, Any]:
        out = dict(st)
        out["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in st.get("conditions") or []
        ]
        return out

    return strip(a) == strip(b)


@pytest.fixture
def world() -> World:
    w = World()
    for n in ("n1", "n2", "n3"):
        w.put_node(node(n, "a" if n != "n3" else "b"), "ADDED")
    w.add_parent(parent("all"))
    w.add_parent(parent("zone-a", "a"))
    w.run()
    return w


# ---------------------------------------------------------------- the index


def record(name: str, node_name: str, parent_name: str, phase: str = "Connected") -> cache.StateRecord:
    return cache.StateRecord(
        name, f"uid-{name}", node_name, (KIND, parent_name), "p-uid", rollup.verdict({"phase": phase}, PHASES)
    )


def test_index_add_change_delete_by_parent_and_node() -> None:
    index = cache.StateIndex()
    assert index.apply("ADDED", "s1", "5", record("s1", "n1", "p1")) == (None, record("s1", "n1", "p1"))
    index.apply("ADDED", "s2", "6", record("s2", "n2", "p1"))
    assert {r.name for r in index.of_parent((KIND, "p1"))} == {"s1", "s2"}
    changed = record("s1", "n1", "p1", "Failed")
    assert index.apply("MODIFIED", "s1", "7", changed) == (record("s1", "n1", "p1"), changed)
    assert index.of_node("n1") == [changed]
    assert index.apply("DELETED", "s1", "8", changed) == (changed, None)
    assert index.of_node("n1") == [] and "n1" not in index.nodes()
    assert [r.name for r in index.of_parent((KIND, "p1"))] == ["s2"]


def test_index_keeps_the_newest_resource_version() -> None:
    index = cache.StateIndex()
    index.apply("MODIFIED", "s1", "10", record("s1", "n1", "p1", "Failed"))
    assert index.apply(None, "s1", "9", record("s1", "n1", "p1")) is None  # an older list result
    assert index.apply("MODIFIED", "s1", "10", record("s1", "n1", "p1")) is None  # same version
    assert index.get("s1") == record("s1", "n1", "p1", "Failed")
    assert index.apply("DELETED", "s1", "9", record("s1", "n1", "p1")) is None
    assert "s1" in index


def test_object_cache_same_version_is_no_change() -> None:
    objects = cache.ObjectCache()
    body = {"metadata": {"name": "x", "resourceVersion": "4"}, "status": {"a": 1}}
    assert objects.apply("ADDED", "x", body)
    assert not objects.apply("MODIFIED", "x", body)
    assert objects.apply("MODIFIED", "x", {**body, "metadata": {"name": "x", "resourceVersion": "5"}})


def test_a_record_keeps_only_what_the_rollup_reads() -> None:
    p = parent("all")
    rec = cache.StateRecord.from_object(
        state(p, "n1", "Failed", extra=7), lambda k, s: rollup.verdict(s, PHASES)
    )
    assert rec.node == "n1" and rec.parent == (KIND, "all") and rec.parent_uid == "uid-all"
    assert rec.verdict == rollup.Verdict("Failed", 1, False, True, "Failed", "n1 is Failed")


# ---------------------------------------------------------------- the controller


def test_add_change_delete_roll_up_like_the_pure_function(world: World) -> None:
    p = world.api.parents[(KIND, "all")]
    for n in ("n1", "n2", "n3"):
        world.put(state(p, n, "Connected"), "ADDED")
    world.run()
    assert world.status("all")["readyNodes"] == "3/3"
    world.put(state(p, "n2", "Failed"))
    world.run()
    assert world.status("all")["failed"] == 1 and same(world.status("all"), world.expected("all"))
    world.delete(world.bodies[naming.node_state_name(KIND, "all", "n2")])
    world.run()
    assert world.status("all")["readyNodes"] == "2/3" and same(world.status("all"), world.expected("all"))


def test_a_child_event_touches_only_its_parent(world: World) -> None:
    p = world.api.parents[(KIND, "zone-a")]
    world.put(state(p, "n1", "Connected"), "ADDED")
    assert set(world.queue.due) == {(KIND, "zone-a")}


def test_the_echo_of_our_own_write_does_no_work(world: World) -> None:
    p = world.api.parents[(KIND, "all")]
    world.put(state(p, "n1", "Connected"), "ADDED")
    world.queue.pop_due()
    world.ctl.process((KIND, "all"))
    _, answer = world.api.writes[-1]
    world.ctl.on_parent(KIND, "MODIFIED", answer)
    assert world.queue.due == {}


def test_moving_numbers_alone_do_no_work(world: World) -> None:
    p = world.api.parents[(KIND, "all")]
    world.put(state(p, "n1", "Connected", extra=1), "ADDED")
    world.run()
    world.put(state(p, "n1", "Connected", extra=2))
    assert world.queue.due == {}


def test_node_relabel_touches_only_the_parents_whose_selection_changed(world: World) -> None:
    world.put_node(node("n3", "a"))  # n3 moves into zone a: only zone-a's selection changes
    assert set(world.queue.due) == {(KIND, "zone-a")}
    world.run()
    assert world.status("zone-a")["selected"] == 3 and world.status("all")["selected"] == 3
    world.put_node(node("n1", "a"))  # new resourceVersion, same labels and readiness: nothing
    assert world.queue.due == {}


def test_node_readiness_touches_the_parents_that_select_it(world: World) -> None:
    world.put_node(node("n3", "b", ready=False))
    assert set(world.queue.due) == {(KIND, "all")}


def test_node_deletion_sweeps_its_children_and_unselects_it(world: World) -> None:
    p = world.api.parents[(KIND, "all")]
    for n in ("n1", "n3"):
        world.put(state(p, n, "Connected"), "ADDED")
    world.run()
    gone = copy.deepcopy(world.nodes.pop("n3"))
    gone["metadata"]["resourceVersion"] = rv()
    world.ctl.on_node("DELETED", gone)
    world.run()
    assert world.api.deleted == [naming.node_state_name(KIND, "all", "n3")]
    assert world.status("all")["selected"] == 2


def test_parent_selector_change_rebuilds_its_tally(world: World) -> None:
    p = world.api.parents[(KIND, "zone-a")]
    for n in ("n1", "n2", "n3"):
        world.put(state(p, n, "Connected"), "ADDED")
    world.run()
    assert world.status("zone-a")["readyNodes"] == "2/2"
    moved = copy.deepcopy(world.api.parents[(KIND, "zone-a")])
    moved["spec"]["nodeSelector"] = {"matchLabels": {"zone": "b"}}
    moved["metadata"]["generation"] = 1
    moved["metadata"]["resourceVersion"] = rv()
    world.api.parents[(KIND, "zone-a")] = moved
    world.ctl.on_parent(KIND, "MODIFIED", moved)
    world.run()
    assert world.status("zone-a")["readyNodes"] == "1/1"


def test_a_recreated_parent_sweeps_the_children_of_the_old_one(world: World) -> None:
    old = world.api.parents[(KIND, "all")]
    world.put(state(old, "n1", "Connected"), "ADDED")
    world.run()
    new = parent("all", uid="uid-all-2")
    world.api.parents[(KIND, "all")] = new
    world.ctl.on_parent(KIND, "MODIFIED", new)
    world.run()
    assert world.api.deleted == [naming.node_state_name(KIND, "all", "n1")]
    assert world.status("all")["ready"] == 0


def test_an_older_event_after_a_newer_one_is_ignored(world: World) -> None:
    p = world.api.parents[(KIND, "all")]
    old = state(p, "n1", "Connected")
    new = state(p, "n1", "Failed")
    world.put(new, "MODIFIED")
    world.ctl.on_state(None, old)  # a list result older than the watch event
    world.run()
    assert world.status("all")["failed"] == 1


def test_random_events_match_the_pure_rollup() -> None:
    rng = random.Random(7)
    w = World()
    names = [f"n{i}" for i in range(12)]
    for n in names:
        w.put_node(node(n, rng.choice("ab")), "ADDED")
    for pname, zone in (("all", None), ("za", "a"), ("zb", "b")):
        w.add_parent(parent(pname, zone))
    w.run()
    for _ in range(400):
        roll = rng.random()
        if roll < 0.1:
            w.put_node(node(rng.choice(names), rng.choice("ab"), ready=rng.random() < 0.8))
        else:
            pname = rng.choice(["all", "za", "zb"])
            p = w.api.parents[(KIND, pname)]
            s = state(
                p,
                rng.choice(names),
                rng.choice(["Connected", "Failed", "Pending", None]),
                gen=rng.choice([1, 1, 2]),
            )
            if roll < 0.2 and s["metadata"]["name"] in w.bodies:
                w.delete(w.bodies[s["metadata"]["name"]])
            else:
                w.put(s)
        w.run()
        for pname in ("all", "za", "zb"):
            assert same(w.status(pname), w.expected(pname)), pname


# ---------------------------------------------------------------- coalescing


def test_a_burst_gives_one_write_per_window_and_the_last_state_lands() -> None:
    w = World(window=2.0)
    nodes = [f"n{i:04d}" for i in range(1000)]
    for n in nodes:
        w.put_node(node(n), "ADDED")
    w.add_parent(parent("all"))
    w.run()
    assert len(w.api.writes) == 1  # the first roll-up: 0/1000 ready
    p = w.api.parents[(KIND, "all")]
    w.clock.now += 10
    for n in nodes:  # 1,000 changes within 1 s
        w.put(state(p, n, "Connected"), "ADDED")
        w.run()
        w.clock.now += 0.001
    assert len(w.api.writes) == 2  # the first change at once (after a quiet window), the rest wait
    w.clock.now += 0.5
    w.run()
    assert len(w.api.writes) == 2  # still inside the window
    w.clock.now += 1.0
    w.run()
    assert len(w.api.writes) == 3  # one write when the window ends ...
    assert w.status("all")["readyNodes"] == "1000/1000"  # ... carrying the newest state
    w.clock.now += 60
    w.run()
    assert len(w.api.writes) == 3


def test_changes_in_every_window_write_once_per_window() -> None:
    w = World(window=2.0)
    for i in range(50):
        w.put_node(node(f"n{i}"), "ADDED")
    w.add_parent(parent("all"))
    w.run()
    p = w.api.parents[(KIND, "all")]
    start = len(w.api.writes)
    for step in range(100):  # one change every 0.1 s for 10 s
        w.clock.now += 0.1
        w.put(state(p, f"n{step % 50}", "Connected" if step < 50 else "Failed"))
        w.run()
    w.clock.now += 2
    w.run()
    writes = len(w.api.writes) - start
    assert 5 <= writes <= 6
    assert same(w.status("all"), w.expected("all"))


def test_window_zero_writes_every_change() -> None:
    w = World(window=0.0)
    w.put_node(node("n1"), "ADDED")
    w.add_parent(parent("all"))
    w.run()
    p = w.api.parents[(KIND, "all")]
    before = len(w.api.writes)
    for phase in ("Connected", "Failed", "Connected"):
        w.put(state(p, "n1", phase))
        w.run()
    assert len(w.api.writes) - before == 3


def test_status_window_setting_is_checked() -> None:
    assert settings.Settings.build(environ={"HOSTSTORAGE_STATUS_WINDOW": "5"}).status_window == 5.0
    with pytest.raises(settings.SettingsError, match="status-window"):
        settings.Settings(status_window=-1).validate()


def test_the_status_window_flag_sets_the_setting() -> None:
    from controller import cli  # noqa: PLC0415 - the command line only for this test

    _, args = cli.parse(["controller", "--status-window", "7.5"])
    assert settings.Settings.build(args, environ={}).status_window == 7.5
