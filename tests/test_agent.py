"""The agent in-process: intake and dispatch, the StorageNodeState writer, the Event and teardown
policies, against :class:`fake_api.FakeApi` (the real interface, pinned below) and the fake connection
layer of test_storage_connection.py."""

from __future__ import annotations

import dataclasses
import inspect
import pathlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from fake_api import FakeApi
from test_storage_connection import FakeConnection, FakeWorld

from controller import agent, events, kube, metrics, naming, node_states, registry, settings, teardown
from hostlib import config, connections, ledger
from reconcilers import api as api_mod
from reconcilers import host as host_mod

NODE = "node-a"
KIND = "StorageConnection"


def test_the_fake_api_has_the_real_interface() -> None:
    real = {n: f for n, f in inspect.getmembers(kube.Api, inspect.isfunction) if not n.startswith("_")}
    fake = {n: f for n, f in inspect.getmembers(FakeApi, inspect.isfunction) if not n.startswith("_")}
    assert set(real) <= set(fake)
    for name, fn in real.items():
        want = [(p.name, p.kind, p.default) for p in inspect.signature(fn).parameters.values()]
        got = [(p.name, p.kind, p.default) for p in inspect.signature(fake[name]).parameters.values()]
        assert got == want, name


@pytest.fixture
def world() -> FakeWorld:
    return FakeWorld()


@pytest.fixture
def fake() -> FakeApi:
    api = FakeApi()
    api.nodes[NODE] = {
        "metadata": {"name": NODE, "uid": "node-uid", "labels": {"zone": "a"}, "resourceVersion": "1"}
    }
    return api


def _agent(tmp_path: pathlib.Path, world: FakeWorld, fake: FakeApi) -> agent.Agent:
    """An agent over ``tmp_path``'s state dir, listed and synced; each test runs the passes itself."""
    conf = settings.Settings(
        node_name=NODE, state_dir=str(tmp_path / "state"), workers=1, resync_seconds=3600
    )
    host_config = config.HostConfig(state_dir=conf.state_dir)

    def factory(name: str, params: Any, hc: config.HostConfig) -> Any:
        connections.validate(params, hc)
        return FakeConnection(name, params, hc, world)

    host = host_mod.Host(
        config=host_config, ledger=ledger.Ledger.load(conf.state_dir), make_connection=factory
    )
    a = agent.Agent(conf, fake, host, kinds=[KIND])  # type: ignore[arg-type]
    a.initial_refresh()
    # The tests run each pass themselves, one at a time: no worker thread may run one meanwhile.
    a.queue.shutdown(5)
    return a


@pytest.fixture
def node_agent(tmp_path: pathlib.Path, world: FakeWorld, fake: FakeApi) -> Iterator[agent.Agent]:
    a = _agent(tmp_path, world, fake)
    try:
        yield a
    finally:
        a.stopping.set()
        a.queue.shutdown(5)


def parent(
    name: str = "c1", *, selector: Any = None, uid: str = "u1", generation: int = 1, **extra: Any
) -> dict[str, Any]:
    spec: dict[str, Any] = {"type": "posixfs", "posixfs": {"source": "/dev/loop7", "vfsType": "ext4"}}
    if selector is not None:
        spec["nodeSelector"] = selector
    meta = {"name": name, "uid": uid, "generation": generation, "resourceVersion": str(generation), **extra}
    return {"apiVersion": api_mod.API_VERSION, "kind": KIND, "metadata": meta, "spec": spec}


def test_a_selected_parent_is_reconciled_and_written_once(
    node_agent: agent.Agent, fake: FakeApi, world: FakeWorld
) -> None:
    node_agent.on_parent(KIND, "ADDED", parent(selector={"matchLabels": {"zone": "a"}}))
    assert node_agent.process((KIND, "c1")) is False
    record = fake.state_of(KIND, "c1", NODE)
    assert record is not None and record["status"]["phase"] == "Connected"
    assert record["status"]["observedGeneration"] == 1
    assert fake.writes() == ["create_node_state", "replace_node_state_status"]
    assert [c[0] for c in world.calls].count("connect") == 1
    node_agent.process((KIND, "c1"))  # the resync after the pass that connected: the same status
    assert fake.writes() == ["create_node_state", "replace_node_state_status"]


def test_a_restarted_agent_rewrites_nothing_and_a_change_is_one_write(
    tmp_path: pathlib.Path, world: FakeWorld, fake: FakeApi
) -> None:
    names = [f"c{i}" for i in range(20)]
    for i, name in enumerate(names):
        fake.parents[(KIND, name)] = parent(name, uid=f"u{i}")
    first = _agent(tmp_path, world, fake)
    for name in names:
        first.process((KIND, name))
    first.stopping.set()
    before = {n: fake.state_of(KIND, n, NODE) for n in names}
    # The clock moves on: a lastTransitionTime made now would differ from the one held.
    for name in names:
        fake.states[naming.node_state_name(KIND, name, NODE)]["status"]["conditions"][0][
            "lastTransitionTime"
        ] = "2020-01-01T00:00:00Z"
    fake.calls.clear()
    connects = [c[0] for c in world.calls].count("connect")
    restarted = _agent(tmp_path, world, fake)
    for name in names:
        assert restarted.process((KIND, name)) is False
    assert fake.writes() == []
    assert [c[0] for c in world.calls].count("connect") == connects  # nothing connected again
    assert all(
        (fake.state_of(KIND, n, NODE) or {})["metadata"] == (before[n] or {})["metadata"] for n in names
    )
    # One parent's spec changes (a new generation): exactly one write, its condition's time kept.
    fake.parents[(KIND, "c3")] = parent("c3", uid="u3", generation=2)
    restarted.on_parent(KIND, "MODIFIED", fake.parents[(KIND, "c3")])
    restarted.process((KIND, "c3"))
    assert fake.writes() == ["replace_node_state_status"]
    status = (fake.state_of(KIND, "c3", NODE) or {})["status"]
    assert status["observedGeneration"] == 2
    assert status["conditions"][0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"
    restarted.stopping.set()


def test_a_record_found_after_409_is_compared_not_rewritten(node_agent: agent.Agent, fake: FakeApi) -> None:
    node_agent.on_parent(KIND, "ADDED", parent())
    node_agent.process((KIND, "c1"))
    name = naming.node_state_name(KIND, "c1", NODE)
    fake.states[name]["status"]["conditions"][0]["lastTransitionTime"] = "2020-01-01T00:00:00Z"
    node_agent.writer.states.discard(name)  # the cache has not seen it (watch lag)
    fake.calls.clear()
    node_agent.process((KIND, "c1"))
    assert fake.writes() == ["create_node_state"]  # answered 409; the record held is already right
    assert fake.states[name]["status"]["conditions"][0]["lastTransitionTime"] == "2020-01-01T00:00:00Z"


def test_a_node_re_created_between_two_listings_gets_its_records_written_again(
    node_agent: agent.Agent, fake: FakeApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Soak finding (seed 1780523030): the Node was deleted and added again while the agent started.
    Its own listing saw the old Node and our records; kopf's, later, saw only the new Node; the
    records went with the old Node and no deletion was ever seen. Every pass then found the cached
    record "already right" and the parent waited for this node for good."""
    node_agent.on_parent(KIND, "ADDED", parent())
    node_agent.process((KIND, "c1"))
    name = naming.node_state_name(KIND, "c1", NODE)
    assert node_states.owner_node_uid(fake.states[name]) == "node-uid"
    del fake.states[name]  # garbage collected with the old Node; the cache never hears of it
    new = {"metadata": {"name": NODE, "uid": "node-uid-2", "labels": {"zone": "a"}, "resourceVersion": "9"}}
    fake.nodes[NODE] = new
    enqueued: list[bool] = []
    monkeypatch.setattr(node_agent, "enqueue_all", lambda: enqueued.append(True) or [])
    fake.calls.clear()
    node_agent.on_node(None, new)  # kopf's listing: the same labels, another uid
    assert enqueued == [True]
    assert "re-created (uid node-uid-2, was node-uid)" in caplog.text
    node_agent.process((KIND, "c1"))
    assert fake.writes() == ["delete_node_state", "create_node_state", "replace_node_state_status"]
    record = fake.states[name]
    assert node_states.owner_node_uid(record) == "node-uid-2"
    assert record["status"]["phase"] == "Connected"
    fake.calls.clear()
    node_agent.process((KIND, "c1"))  # and then it is right: nothing more to write
    assert fake.writes() == []


def test_a_record_deleted_with_no_event_seen_is_written_again_at_the_relist(
    node_agent: agent.Agent, fake: FakeApi, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The start-up listing race in general: a record deleted between the agent's listing and kopf's
    is never seen deleted, and the cache says "already right" on every pass. The relist finds it gone."""
    node_agent.on_parent(KIND, "ADDED", parent())
    node_agent.process((KIND, "c1"))
    name = naming.node_state_name(KIND, "c1", NODE)
    del fake.states[name]
    fake.calls.clear()
    node_agent.process((KIND, "c1"))
    assert fake.writes() == []  # the stale cache: nothing would ever write it again
    queued: list[Any] = []
    monkeypatch.setattr(node_agent.queue, "add", lambda key, **kw: queued.append(key))
    assert node_agent.relist_records() == [(KIND, "c1")]
    assert queued == [(KIND, "c1")]
    assert f"StorageNodeState {name} is gone and no watch event said so" in caplog.text
    node_agent.process((KIND, "c1"))
    assert fake.writes() == ["create_node_state", "replace_node_state_status"]
    assert fake.states[name]["status"]["phase"] == "Connected"
    fake.calls.clear()
    queued.clear()
    assert node_agent.relist_records() == []  # there again: nothing to do
    assert queued == []
    node_agent.process((KIND, "c1"))
    assert fake.writes() == []


def test_a_relisted_record_someone_else_changed_is_looked_at_again(
    node_agent: agent.Agent, fake: FakeApi, monkeypatch: pytest.MonkeyPatch
) -> None:
    node_agent.on_parent(KIND, "ADDED", parent())
    node_agent.process((KIND, "c1"))
    name = naming.node_state_name(KIND, "c1", NODE)
    fake.states[name]["status"] = {"phase": "Failed"}  # written behind our back, the event missed
    fake.states[name]["metadata"]["resourceVersion"] = "999"
    queued: list[Any] = []
    monkeypatch.setattr(node_agent.queue, "add", lambda key, **kw: queued.append(key))
    assert node_agent.relist_records() == []  # not gone: no rewrite from scratch
    assert queued == [(KIND, "c1")]  # but changed: looked at again
    fake.calls.clear()
    node_agent.process((KIND, "c1"))
    assert fake.writes() == ["replace_node_state_status"]
    assert fake.states[name]["status"]["phase"] == "Connected"


def _record(name: str, uid: str, version: str) -> dict[str, Any]:
    return {"metadata": {"name": name, "uid": uid, "resourceVersion": version}, "spec": {}}


@pytest.mark.parametrize(
    ("snapshot", "now", "listed", "forgotten"),
    [
        ({"r": ("u1", "5")}, _record("r", "u1", "5"), [], ["r"]),  # unchanged and not listed: gone
        ({"r": ("u1", "5")}, _record("r", "u1", "5"), ["r"], []),  # listed: there
        ({"r": ("u1", "5")}, _record("r", "u1", "6"), [], []),  # written while the listing ran
        ({"r": ("u1", "5")}, _record("r", "u2", "5"), [], []),  # another object of that name by now
        ({}, _record("r", "u1", "5"), [], []),  # created while the listing ran
        ({"r": ("u1", "5")}, None, [], []),  # already forgotten (our own delete): nothing to return
        ({"r": ("u1", "5")}, _record("r", "u1", "5"), ["other"], ["r"]),
    ],
)
def test_a_relist_forgets_only_records_unchanged_since_it_began_and_not_listed(
    snapshot: dict[str, tuple[str, str]], now: dict[str, Any] | None, listed: list[str], forgotten: list[str]
) -> None:
    writer = node_states.NodeStateWriter(FakeApi(), NODE, metrics.Metrics("agent"))
    if now is not None:
        writer.states.put("r", now)
    gone = writer.forget_unlisted(snapshot, listed)
    assert [g["metadata"]["name"] for g in gone] == forgotten
    assert ("r" in writer.states) is (now is not None and not forgotten)


def test_the_writer_snapshot_is_each_cached_records_uid_and_version() -> None:
    writer = node_states.NodeStateWriter(FakeApi(), NODE, metrics.Metrics("agent"))
    writer.states.put("a", _record("a", "u1", "5"))
    writer.states.put("b", {"metadata": {"name": "b"}})
    assert writer.snapshot() == {"a": ("u1", "5"), "b": ("", "")}
    assert writer.forget_unlisted(writer.snapshot(), []) and len(writer.states) == 0


def test_the_relist_loop_runs_after_the_initial_refresh_and_survives_an_api_error(
    node_agent: agent.Agent, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(agent, "RELIST_FIRST", 0.01)
    calls: list[bool] = []

    def relist() -> list[Any]:
        calls.append(True)
        if len(calls) == 1:
            raise kube.ApiError(503, "ServiceUnavailable", "the API went away")
        node_agent.stopping.set()
        return []

    monkeypatch.setattr(node_agent, "relist_records", relist)
    monkeypatch.setattr(agent.random, "uniform", lambda a, b: 0.001)  # the period, shortened
    assert node_agent.ready.is_set()
    thread = threading.Thread(target=node_agent.relist_loop)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and calls == [True, True]
    assert "relist of our StorageNodeStates failed" in caplog.text


def test_the_relist_loop_is_off_at_zero(tmp_path: pathlib.Path, world: FakeWorld, fake: FakeApi) -> None:
    a = _agent(tmp_path, world, fake)
    a.conf = dataclasses.replace(a.conf, relist_seconds=0)
    calls: list[bool] = []
    a.relist_records = lambda: calls.append(True) or []  # type: ignore[method-assign]
    thread = threading.Thread(target=a.relist_loop)
    thread.start()
    thread.join(5)
    alive = thread.is_alive()
    a.stopping.set()
    thread.join(5)
    assert not alive and calls == []


def test_the_same_node_listed_again_is_no_work(
    node_agent: agent.Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    node = dict(node_agent._node() or {})
    node["metadata"] = {**node["metadata"], "resourceVersion": "2"}
    enqueued: list[bool] = []
    monkeypatch.setattr(node_agent, "enqueue_all", lambda: enqueued.append(True) or [])
    node_agent.on_node("MODIFIED", node)
    assert enqueued == []
    node["metadata"] = {**node["metadata"], "resourceVersion": "3", "labels": {"zone": "b"}}
    node_agent.on_node("MODIFIED", node)
    assert enqueued == [True]


@pytest.mark.parametrize(
    ("refs", "node_uid", "another"),
    [
        ([{"kind": "Node", "name": NODE, "uid": "n1"}], "n1", False),
        ([{"kind": "Node", "name": NODE, "uid": "n1"}], "n2", True),
        ([{"kind": "Node", "name": NODE, "uid": "n1"}], "", False),  # our Node's uid unknown: no claim
        ([], "n2", False),  # a record with no owner named: nothing to compare
        ([{"kind": "Pod", "name": "p", "uid": "p1"}], "n2", False),  # only a Node owner counts
        ([{"kind": "Pod", "uid": "p1"}, {"kind": "Node", "uid": "n1"}], "n2", True),
        (["junk", {"kind": "Node", "uid": "n1"}], "n1", False),
    ],
)
def test_a_record_is_of_another_node_only_when_both_uids_are_known_and_differ(
    refs: list[Any], node_uid: str, another: bool
) -> None:
    record = {"metadata": {"name": "x", "ownerReferences": refs}}
    assert node_states.of_another_node(record, node_uid) is another


def test_a_parent_event_that_changes_only_status_is_no_work(
    node_agent: agent.Agent, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued: list[Any] = []
    monkeypatch.setattr(node_agent.queue, "add", lambda key, **_: queued.append(key))
    body = parent()
    node_agent.on_parent(KIND, "ADDED", body)
    assert queued == [(KIND, "c1")]
    rolled = {**body, "status": {"readyNodes": 1}}
    rolled["metadata"] = {**body["metadata"], "resourceVersion": "7", "managedFields": [{"manager": "x"}]}
    node_agent.on_parent(KIND, "MODIFIED", rolled)  # the controller's roll-up write
    assert queued == [(KIND, "c1")]
    assert node_agent.parents.get((KIND, "c1"))["status"] == {"readyNodes": 1}  # type: ignore[index]
    version = 8
    for what, change in (
        ("generation", {"metadata": {"generation": 2}}),
        ("labels", {"metadata": {"labels": {"a": "b"}}}),
        ("deletion", {"metadata": {"deletionTimestamp": "2026-01-01T00:00:00Z"}}),
        ("spec", {"spec": {"type": "nfs"}}),
    ):
        moved = {**rolled, **{k: {**rolled[k], **v} for k, v in change.items()}}
        moved["metadata"] = {**moved["metadata"], "resourceVersion": str(version)}
        version += 1
        queued.clear()
        node_agent.on_parent(KIND, "MODIFIED", moved)
        assert queued == [(KIND, "c1")], what
        rolled = moved
    queued.clear()
    node_agent.on_parent(
        KIND, "DELETED", {**rolled, "metadata": {**rolled["metadata"], "resourceVersion": "99"}}
    )
    assert queued == [(KIND, "c1")]


def test_a_node_no_longer_selected_tears_down_and_drops_its_record(
    node_agent: agent.Agent, fake: FakeApi, world: FakeWorld
) -> None:
    node_agent.on_parent(KIND, "ADDED", parent(selector={"matchLabels": {"zone": "a"}}))
    node_agent.process((KIND, "c1"))
    node_agent.on_parent(KIND, "MODIFIED", parent(selector={"matchLabels": {"zone": "b"}}, generation=2))
    node_agent.process((KIND, "c1"))
    assert fake.state_of(KIND, "c1", NODE) is None
    assert world.connected == set()
    assert node_agent.host.ledger.get(KIND, "c1") is None


def test_a_malformed_selector_is_invalid_spec_and_announced_once(
    node_agent: agent.Agent, fake: FakeApi, world: FakeWorld
) -> None:
    bad = parent(selector={"matchExpressions": [{"key": "zone", "operator": "Near", "values": ["a"]}]})
    node_agent.on_parent(KIND, "ADDED", bad)
    node_agent.process((KIND, "c1"))
    node_agent.process((KIND, "c1"))
    status = fake.state_of(KIND, "c1", NODE)["status"]  # type: ignore[index]
    assert (status["phase"], status["conditions"][0]["reason"]) == ("Failed", "InvalidSpec")
    assert [e["reason"] for e in fake.events] == ["InvalidSpec"]
    assert world.calls == []


def test_a_record_the_cache_missed_is_taken_over_after_409(node_agent: agent.Agent, fake: FakeApi) -> None:
    body = naming.node_state_body(
        kind=KIND, parent_name="c1", parent_uid="u1", node=NODE, node_uid="node-uid"
    )
    fake.create_node_state(body)  # made by an earlier run; the watch has not shown it yet
    fake.calls.clear()
    node_agent.on_parent(KIND, "ADDED", parent())
    node_agent.process((KIND, "c1"))
    assert [m for m, _ in fake.calls if m != "post_event"] == [
        "create_node_state",
        "list_node_states",
        "replace_node_state_status",
    ]
    assert fake.state_of(KIND, "c1", NODE)["status"]["phase"] == "Connected"  # type: ignore[index]


def test_a_connection_still_used_answers_detaching_in_use_without_a_warning(
    node_agent: agent.Agent, fake: FakeApi, world: FakeWorld
) -> None:
    node_agent.on_parent(KIND, "ADDED", parent())
    node_agent.process((KIND, "c1"))
    node_agent.host.ledger.put(ledger.LedgerEntry("StoragePool", "p1", "pu", {}, ((KIND, "c1"),)))
    deleting = parent(deletionTimestamp="2026-01-01T00:00:00Z", generation=2)
    node_agent.on_parent(KIND, "MODIFIED", deleting)
    assert node_agent.process((KIND, "c1")) is True  # retried: the user may go away
    status = fake.state_of(KIND, "c1", NODE)["status"]  # type: ignore[index]
    assert (status["phase"], status["conditions"][0]["reason"]) == ("Detaching", "InUse")
    assert fake.events == [] and world.connected


def test_a_deleted_parent_is_torn_down_from_the_ledger(
    node_agent: agent.Agent, fake: FakeApi, world: FakeWorld
) -> None:
    node_agent.on_parent(KIND, "ADDED", parent())
    node_agent.process((KIND, "c1"))
    gone = parent()
    gone["metadata"]["resourceVersion"] = "5"
    node_agent.on_parent(KIND, "DELETED", gone)
    node_agent.on_parent(KIND, "ADDED", parent())  # a stale list result must not bring it back
    node_agent.process((KIND, "c1"))
    assert world.connected == set() and fake.state_of(KIND, "c1", NODE) is None


def test_liveness_follows_the_work_queue(node_agent: agent.Agent) -> None:
    assert node_agent.alive()[0]  # shut down on purpose: not a failure
    node_agent.queue._stopping = False  # as if the workers had died while the agent runs on
    ok, detail = node_agent.alive()
    assert not ok and "died" in detail["queue"]


# ------------------------------------------------------------------------------- the pure policies


@pytest.mark.parametrize(
    ("parent_exists", "why", "phase", "had_entry", "have_record", "expected"),
    [
        (False, teardown.DELETED, "Detached", True, True, teardown.Record.DELETE),
        (False, teardown.DELETED, "Detaching", True, True, teardown.Record.KEEP),
        (False, teardown.DELETED, "Detached", False, False, teardown.Record.KEEP),
        (True, teardown.NOT_SELECTED, "Detached", True, True, teardown.Record.DELETE),
        (True, teardown.NOT_SELECTED, "Detaching", True, True, teardown.Record.WRITE),
        (True, teardown.NOT_SELECTED, "Detached", False, False, teardown.Record.KEEP),
        (True, teardown.DELETING, "Detached", True, True, teardown.Record.WRITE),
        (True, teardown.DELETING, "Detached", False, False, teardown.Record.KEEP),
        (True, teardown.DELETING, "TeardownFailed", True, True, teardown.Record.WRITE),
    ],
)
def test_what_becomes_of_the_record_after_a_teardown(
    parent_exists: bool, why: str, phase: str, had_entry: bool, have_record: bool, expected: teardown.Record
) -> None:
    got = teardown.record_action(
        parent_exists=parent_exists, why=why, phase=phase, had_entry=had_entry, have_record=have_record
    )
    assert got is expected


MONITOR = registry.row("DomainMonitor")


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (None, "Healthy", []),  # the first Healthy after start-up is not news
        ("Unknown", "Healthy", []),
        ("Pending", "Healthy", []),
        ("Healthy", "Degraded", [("Warning", "Degraded")]),
        ("Healthy", "Invalid", [("Warning", "Invalid")]),
        ("Invalid", "Healthy", [("Normal", "Healthy")]),
        ("Degraded", "Degraded", []),
        ("Unknown", "Invalid", [("Warning", "Invalid")]),
    ],
)
def test_monitor_transitions_that_are_news(
    old: str | None, new: str, expected: list[tuple[str, str]]
) -> None:
    got = events.after_reconcile(
        MONITOR, old_phase=old, old_reason=None, phase=new, reason="R", message="m", node=NODE, repaired=False
    )
    assert [(e.type, e.reason) for e in got] == expected


@pytest.mark.parametrize(
    ("old_phase", "old_reason", "phase", "reason", "repaired", "expected"),
    [
        ("Pending", None, "Connected", "Connected", False, []),  # no transition Events for connections
        ("Connected", "Connected", "Failed", "MountFailed", False, [("Warning", "MountFailed")]),
        ("Failed", "MountFailed", "Failed", "MountFailed", False, []),  # in status, not re-announced
        ("Failed", "MountFailed", "Failed", "LoginFailed", False, [("Warning", "LoginFailed")]),
        ("Connected", "Connected", "Connected", "Connected", True, [("Warning", "DriftRepaired")]),
    ],
)
def test_connection_failures_and_repairs_are_news(
    old_phase: str,
    old_reason: str | None,
    phase: str,
    reason: str,
    repaired: bool,
    expected: list[tuple[str, str]],
) -> None:
    got = events.after_reconcile(
        registry.row(KIND),
        old_phase=old_phase,
        old_reason=old_reason,
        phase=phase,
        reason=reason,
        message="m",
        node=NODE,
        repaired=repaired,
    )
    assert [(e.type, e.reason) for e in got] == expected


def test_entering_teardown_failed_is_news_staying_in_it_is_not() -> None:
    assert [e.reason for e in events.after_teardown("Detaching", "TeardownFailed", "m", node=NODE)] == [
        "TeardownFailed"
    ]
    assert events.after_teardown("TeardownFailed", "TeardownFailed", "m", node=NODE) == []
    assert events.after_teardown("Detaching", "Detached", "m", node=NODE) == []
