"""The StorageConnection reconciler: parse, reconcile, teardown and resolve, against a fake host layer.

``FakeConnection`` replaces :class:`hostlib.connections.Connection` (same methods and return types): the
"host" is a set of connected targets in memory, every call is recorded, and any verb can be told to
fail with a given error. The real ledger (on a temp dir) and the real ``connections.validate`` are used.
Real mounts are exercised by tests/test_local_apply_host.py.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import pytest

from hostlib import actions, config, connections, errors, ledger
from reconcilers import api, storage_pool
from reconcilers import domain_monitor as dmon
from reconcilers import host as host_mod
from reconcilers import spec as spec_mod
from reconcilers import storage_connection as sc


@dataclasses.dataclass
class FakeWorld:
    connected: set[str] = dataclasses.field(default_factory=set)
    calls: list[tuple[str, str, Any]] = dataclasses.field(default_factory=list)
    fail: dict[str, errors.HostStorageError] = dataclasses.field(default_factory=dict)
    foreign: dict[str, str] = dataclasses.field(default_factory=dict)
    """target -> what someone else mounted there (observe reports a conflict)."""
    params_seen: list[Any] = dataclasses.field(default_factory=list)


class FakeConnection:
    """Stands in for a hostlib connection; ``world`` is the host it acts on."""

    def __init__(self, name: str, params: Any, host: config.HostConfig, world: FakeWorld) -> None:
        self.name = name
        self.type = connections.type_name(params)
        self.params = params
        self.world = world
        key = (
            getattr(params, "source", None) or getattr(params, "path", None) or getattr(params, "target", "")
        )
        self._target = os.path.join(host.mount_base, str(key).replace("/", "_"))

    def target(self) -> str:
        return self._target

    def observe(self) -> connections.ConnectionObserved:
        self.world.calls.append(("observe", self.name, None))
        if self._target in self.world.foreign:
            return connections.ConnectionObserved(
                self.type,
                self._target,
                False,
                True,
                conflict=f"{self.world.foreign[self._target]} is mounted",
            )
        on = self._target in self.world.connected
        return connections.ConnectionObserved(self.type, self._target, on, on, source="src", fstype="ext4")

    def plan_connect(self, observed: connections.ConnectionObserved) -> list[actions.Action]:
        if observed.connected:
            return []
        if observed.conflict:
            raise errors.Conflict(observed.conflict)
        return [actions.Action("mount", f"mount on {self._target}", argv=("mount", "src", self._target))]

    def plan_disconnect(
        self, observed: connections.ConnectionObserved, force: bool = False
    ) -> list[actions.Action]:
        return (
            [actions.Action("umount", "unmount", argv=("umount", self._target))] if observed.connected else []
        )

    def connect(self) -> bool:
        self.world.calls.append(("connect", self.name, None))
        self.world.params_seen.append(self.params)
        if "connect" in self.world.fail:
            raise self.world.fail["connect"]
        if self._target in self.world.connected:
            return False
        self.world.connected.add(self._target)
        return True

    def disconnect(self, *, force: bool = False) -> bool:
        self.world.calls.append(("disconnect", self.name, force))
        if "disconnect" in self.world.fail and not force:
            raise self.world.fail["disconnect"]
        if self._target not in self.world.connected:
            return False
        self.world.connected.discard(self._target)
        return True


@pytest.fixture
def world() -> FakeWorld:
    return FakeWorld()


@pytest.fixture
def host(tmp_path: pathlib.Path, world: FakeWorld) -> host_mod.Host:
    allowed = tmp_path / "allowed"
    (allowed / "data").mkdir(parents=True)
    conf = config.HostConfig(state_dir=str(tmp_path / "state"), allowed_host_paths=(str(allowed),))

    def factory(name: str, params: Any, host_config: config.HostConfig) -> Any:
        connections.validate(params, host_config)
        return FakeConnection(name, params, host_config, world)

    secrets = {("default", "chap"): {"username": "alice", "password": "s3cr3t-pw"}}

    def lookup(namespace: str, name: str) -> Mapping[str, str]:
        return secrets[(namespace or "default", name)]

    return host_mod.Host(
        config=conf, ledger=ledger.Ledger.load(conf.state_dir), make_connection=factory, secret_lookup=lookup
    )


def manifest(spec: dict[str, Any], name: str = "c1", **meta: Any) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": sc.KIND, "metadata": {"name": name, **meta}, "spec": spec}


def posix(source: str = "/dev/loop7", **extra: Any) -> dict[str, Any]:
    return {"type": "posixfs", "posixfs": {"source": source, "vfsType": "ext4"}, **extra}


# ------------------------------------------------------------------------------------------- parse


def test_parse_builds_frozen_spec_with_hostlib_params() -> None:
    spec = sc.parse(manifest(posix(deletionPolicy="Retain"), uid="u-1", generation=3))
    assert spec.name == "c1" and spec.uid == "u-1" and spec.generation == 3
    assert spec.params == connections.PosixfsParams("/dev/loop7", "ext4", ())
    assert spec.deletion_policy == "Retain"
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.name = "x"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("spec", "params"),
    [
        (
            {"type": "nfs", "nfs": {"server": "fd00::1", "export": "/e//x/", "version": 4.1, "timeo": 50}},
            connections.NfsParams("[fd00::1]", "/e/x", "4.1", 50, None, ()),
        ),
        (
            {"type": "glusterfs", "glusterfs": {"server": "g1", "volume": "v_1", "backupServers": ["g2"]}},
            connections.GlusterfsParams("g1", "v_1", ("g2",), ()),
        ),
        (
            {"type": "iscsi", "iscsi": {"portal": "10.0.0.1", "target": "iqn.2003-01.org.x:d1", "lun": 2}},
            connections.IscsiParams("10.0.0.1:3260", "iqn.2003-01.org.x:d1", 2, None, None),
        ),
        ({"type": "localfs", "localfs": {"path": "/srv//data/"}}, connections.LocalfsParams("/srv/data")),
        (
            {"type": "posixfs", "posixfs": {"source": "srv:/exp", "vfsType": "cifs", "options": ["ro"]}},
            connections.PosixfsParams("srv:/exp", "cifs", ("ro",)),
        ),
    ],
)
def test_parse_every_type(spec: dict[str, Any], params: Any) -> None:
    assert sc.parse(manifest(spec)).params == params


def test_parse_node_selector_matches_like_a_label_selector() -> None:
    sel = {
        "matchLabels": {"zone": "a"},
        "matchExpressions": [
            {"key": "role", "operator": "In", "values": ["db", "web"]},
            {"key": "hoststorage.io/off", "operator": "DoesNotExist"},
        ],
    }
    spec = sc.parse(manifest(posix(nodeSelector=sel)))
    assert spec.node_selector.matches({"zone": "a", "role": "db"})
    assert not spec.node_selector.matches({"zone": "a", "role": "cache"})
    assert not spec.node_selector.matches({"zone": "a", "role": "db", "hoststorage.io/off": ""})
    assert sc.parse(manifest(posix())).node_selector.matches({})


def test_parse_iscsi_keeps_only_the_secret_reference() -> None:
    spec = sc.parse(
        manifest(
            {
                "type": "iscsi",
                "iscsi": {
                    "portal": "h:3261",
                    "target": "iqn.2003-01.org.x:d1",
                    "chapSecretRef": {"name": "chap"},
                },
            }
        )
    )
    assert spec.chap_secret_ref == spec_mod.SecretRef("chap", "")
    assert isinstance(spec.params, connections.IscsiParams) and spec.params.chap is None


# The structural refusals; tests/test_bad_input.py runs the full corpus through the command.
@pytest.mark.parametrize(
    ("obj", "field", "words"),
    [
        (
            {"apiVersion": "v1", "kind": sc.KIND, "metadata": {"name": "a"}, "spec": posix()},
            "apiVersion",
            "is not",
        ),
        (manifest(posix(), name="Bad_Name"), "metadata.name", "not a valid name"),
        (manifest({"posixfs": {"source": "/dev/x", "vfsType": "ext4"}}), "spec.type", "is required"),
        (manifest({"type": "ceph"}), "spec.type", "'ceph' is not one of"),
        (manifest({"type": "posixfs"}), "spec.posixfs", "is required when type is posixfs"),
        (manifest({**posix(), "localfs": {"path": "/x"}}), "spec.localfs", "only spec.posixfs may be set"),
        (manifest({**posix(), "color": "red"}), "spec.color", "unknown field"),
        (manifest(posix(deletionPolicy="Delete")), "spec.deletionPolicy", "is not one of"),
        (manifest({"type": "posixfs", "posixfs": ["x"]}), "spec.posixfs", "must be an object"),
        (manifest({"type": "localfs", "localfs": {"path": 7}}), "spec.localfs.path", "must be a string"),
        (
            manifest({"type": "localfs", "localfs": {"path": "data"}}),
            "spec.localfs.path",
            "not an absolute path",
        ),
        (manifest({"type": "localfs", "localfs": {"path": "/" + "a" * 1100}}), "spec.localfs.path", "limit"),
        (
            manifest({"type": "iscsi", "iscsi": {"portal": "h", "target": "iqn.2003-01.o.x:d", "lun": True}}),
            "spec.iscsi.lun",
            "must be an integer",
        ),
        (
            manifest(posix(nodeSelector={"matchExpressions": [{"key": "a", "operator": "In"}]})),
            "spec.nodeSelector.matchExpressions[0].values",
            "must not be empty",
        ),
    ],
)
def test_parse_refuses_structural_problems_naming_the_field(
    obj: dict[str, Any], field: str, words: str
) -> None:
    with pytest.raises(errors.InvalidSpec) as exc:
        sc.parse(obj)
    assert exc.value.field == field
    assert words in str(exc.value)


# --------------------------------------------------------------------------------------- reconcile


def test_reconcile_connects_records_ownership_and_reports_detail(
    host: host_mod.Host, world: FakeWorld
) -> None:
    result = sc.reconcile(sc.parse(manifest(posix())), host)
    assert (result.phase, result.ready, result.reason, result.changed) == (
        "Connected",
        True,
        "Connected",
        True,
    )
    target = result.detail["mountPoint"]
    assert target in world.connected
    assert result.detail["type"] == "posixfs"
    assert result.conditions[0].type == "Ready" and result.conditions[0].reason == "Connected"
    entry = host.ledger.get(sc.KIND, "c1")
    assert entry is not None and entry.resource["mountPoint"] == target and not entry.resource["preexisting"]
    assert host.ledger.owns_mount(target)


def test_second_reconcile_changes_nothing(host: host_mod.Host, world: FakeWorld) -> None:
    spec = sc.parse(manifest(posix()))
    sc.reconcile(spec, host)
    before = pathlib.Path(host.ledger.path).stat().st_mtime_ns
    world.calls.clear()
    result = sc.reconcile(spec, host)
    assert result.ready and not result.changed and not result.actions
    assert [c[0] for c in world.calls] == ["observe"]
    assert pathlib.Path(host.ledger.path).stat().st_mtime_ns == before


def test_dry_run_plans_and_changes_nothing(host: host_mod.Host, world: FakeWorld) -> None:
    result = sc.reconcile(sc.parse(manifest(posix())), host, dry_run=True)
    assert result.phase == "Pending" and result.reason == "WouldConnect"
    assert [a.verb for a in result.actions] == ["mount"]
    assert not world.connected and host.ledger.entries() == []
    assert not os.path.exists(host.ledger.path)


def test_lost_mount_is_restored(host: host_mod.Host, world: FakeWorld) -> None:
    spec = sc.parse(manifest(posix()))
    first = sc.reconcile(spec, host)
    world.connected.clear()
    again = sc.reconcile(spec, host)
    assert again.ready and again.changed
    assert first.detail["mountPoint"] in world.connected


@pytest.mark.parametrize(
    ("error", "reason", "retry"),
    [
        (errors.MountFailed("mount: wrong fs type"), "MountFailed", True),
        (errors.PermissionDenied("no rwx"), "PermissionDenied", True),
        (errors.Unsupported("mount.nfs: No such device"), "Unsupported", False),
        (errors.LoginFailed("iscsiadm: connection refused"), "LoginFailed", True),
    ],
)
def test_host_failures_become_failed_results_never_exceptions(
    host: host_mod.Host, world: FakeWorld, error: errors.HostStorageError, reason: str, retry: bool
) -> None:
    world.fail["connect"] = error
    result = sc.reconcile(sc.parse(manifest(posix())), host)
    assert (result.phase, result.ready, result.reason, result.retry) == ("Failed", False, reason, retry)
    assert error.message in result.message
    # The write-ahead entry is dropped again: connect undid its work, nothing is ours.
    assert host.ledger.get(sc.KIND, "c1") is None
    assert [c[0] for c in world.calls] == ["observe", "connect", "observe"]


def test_ownership_is_recorded_before_connecting(host: host_mod.Host, world: FakeWorld) -> None:
    recorded = []
    real_connect = FakeConnection.connect

    def spy(self: FakeConnection) -> bool:
        recorded.append(host.ledger.get(sc.KIND, self.name))
        return real_connect(self)

    FakeConnection.connect = spy  # type: ignore[method-assign]
    try:
        assert sc.reconcile(sc.parse(manifest(posix())), host).ready
    finally:
        FakeConnection.connect = real_connect  # type: ignore[method-assign]
    assert recorded and recorded[0] is not None


def test_failed_reconnect_keeps_ownership(host: host_mod.Host, world: FakeWorld) -> None:
    spec = sc.parse(manifest(posix()))
    sc.reconcile(spec, host)
    world.connected.clear()
    world.fail["connect"] = errors.MountFailed("gone")
    assert sc.reconcile(spec, host).reason == "MountFailed"
    assert host.ledger.get(sc.KIND, "c1") is not None


def test_semantic_validation_fails_before_any_host_call(host: host_mod.Host, world: FakeWorld) -> None:
    spec = sc.parse(
        manifest(
            {"type": "posixfs", "posixfs": {"source": "/dev/loop7", "vfsType": "ext4", "options": ["exec"]}}
        )
    )
    result = sc.reconcile(spec, host)
    assert result.phase == "Failed" and result.reason == "InvalidSpec"
    assert "exec" in result.message and "spec.posixfs.options[0]" in result.message
    assert world.calls == [] and host.ledger.entries() == []


def test_localfs_outside_allowed_paths_is_invalid(host: host_mod.Host, world: FakeWorld) -> None:
    result = sc.reconcile(sc.parse(manifest({"type": "localfs", "localfs": {"path": "/etc"}})), host)
    assert result.reason == "InvalidSpec" and "outside the allowed host paths" in result.message
    assert world.calls == []


def test_foreign_mount_on_target_is_a_conflict_and_not_recorded(
    host: host_mod.Host, world: FakeWorld
) -> None:
    spec = sc.parse(manifest(posix()))
    target = sc.reconcile(spec, host, dry_run=True).detail["mountPoint"]
    world.foreign[target] = "/dev/other"
    result = sc.reconcile(spec, host)
    assert result.phase == "Failed" and result.reason == "Conflict"
    assert host.ledger.entries() == []


def test_already_mounted_by_someone_else_is_used_but_never_undone(
    host: host_mod.Host, world: FakeWorld
) -> None:
    spec = sc.parse(manifest(posix()))
    target = sc.reconcile(spec, host, dry_run=True).detail["mountPoint"]
    world.connected.add(target)
    result = sc.reconcile(spec, host)
    assert result.ready and result.detail["preexisting"] is True and not result.changed
    down = sc.teardown(spec, host)
    assert down.phase == "Detached" and down.reason == "NotOwned"
    assert target in world.connected and ("disconnect", "c1", False) not in world.calls
    assert host.ledger.get(sc.KIND, "c1") is None


def test_two_connections_cannot_share_a_mount_point(host: host_mod.Host) -> None:
    assert sc.reconcile(sc.parse(manifest(posix(), name="a")), host).ready
    other = sc.reconcile(sc.parse(manifest(posix(), name="b")), host)
    assert other.reason == "Conflict" and "StorageConnection/a" in other.message


def test_changed_source_moves_the_mount(host: host_mod.Host, world: FakeWorld) -> None:
    old = sc.reconcile(sc.parse(manifest(posix("/dev/loop7"))), host).detail["mountPoint"]
    new = sc.reconcile(sc.parse(manifest(posix("/dev/loop8"))), host)
    assert new.ready and new.changed
    assert world.connected == {new.detail["mountPoint"]} and old not in world.connected


def test_chap_credentials_come_from_the_secret_and_never_reach_the_result(
    host: host_mod.Host, world: FakeWorld
) -> None:
    spec = sc.parse(
        manifest(
            {
                "type": "iscsi",
                "iscsi": {
                    "portal": "127.0.0.1",
                    "target": "iqn.2003-01.org.x:d1",
                    "chapSecretRef": {"name": "chap"},
                },
            }
        )
    )
    result = sc.reconcile(spec, host)
    assert result.ready
    seen = world.params_seen[-1]
    assert seen.chap == connections.ChapCredentials("alice", "s3cr3t-pw")
    assert "s3cr3t-pw" not in repr(result.to_dict(with_actions=True))
    assert "s3cr3t-pw" not in pathlib.Path(host.ledger.path).read_text()
    assert "devicePath" in result.detail


def test_missing_chap_secret_is_pending_without_host_calls(host: host_mod.Host, world: FakeWorld) -> None:
    spec = sc.parse(
        manifest(
            {
                "type": "iscsi",
                "iscsi": {
                    "portal": "127.0.0.1",
                    "target": "iqn.2003-01.org.x:d1",
                    "chapSecretRef": {"name": "nope"},
                },
            }
        )
    )
    result = sc.reconcile(spec, host)
    assert (result.phase, result.reason, result.retry) == ("Pending", "SecretNotFound", True)
    assert world.calls == []


# ---------------------------------------------------------------------------------------- teardown


def test_teardown_detaches_and_forgets(host: host_mod.Host, world: FakeWorld) -> None:
    spec = sc.parse(manifest(posix()))
    sc.reconcile(spec, host)
    result = sc.teardown(spec, host)
    assert (result.phase, result.reason, result.changed) == ("Detached", "Detached", True)
    assert not world.connected and host.ledger.entries() == []


def test_teardown_of_unknown_connection_touches_nothing(host: host_mod.Host, world: FakeWorld) -> None:
    result = sc.teardown(sc.parse(manifest(posix())), host)
    assert result.phase == "Detached" and result.reason == "NotOwned" and world.calls == []


def test_retain_forgets_but_leaves_it_connected(host: host_mod.Host, world: FakeWorld) -> None:
    spec = sc.parse(manifest(posix(deletionPolicy="Retain")))
    target = sc.reconcile(spec, host).detail["mountPoint"]
    result = sc.teardown(spec, host)
    assert (result.phase, result.reason) == ("Detached", "Retained")
    assert target in world.connected and host.ledger.entries() == []


def test_teardown_waits_while_a_pool_uses_the_connection(host: host_mod.Host, world: FakeWorld) -> None:
    spec = sc.parse(manifest(posix()))
    sc.reconcile(spec, host)
    host.ledger.put(ledger.LedgerEntry("StoragePool", "p1", "", {}, ((sc.KIND, "c1"),)))
    result = sc.teardown(spec, host, force=True)
    assert (result.phase, result.reason, result.retry) == ("Detaching", "InUse", True)
    assert "StoragePool/p1" in result.message
    assert world.connected and not any(c[0] == "disconnect" for c in world.calls)


def test_busy_mount_is_in_use_and_force_detaches(host: host_mod.Host, world: FakeWorld) -> None:
    spec = sc.parse(manifest(posix()))
    sc.reconcile(spec, host)
    world.fail["disconnect"] = errors.InUse("/mnt/x is busy; held by 42 (sleep)")
    busy = sc.teardown(spec, host)
    assert (busy.phase, busy.reason) == ("Detaching", "InUse") and "42 (sleep)" in busy.message
    assert host.ledger.get(sc.KIND, "c1") is not None
    forced = sc.teardown(spec, host, force=True)
    assert forced.phase == "Detached" and ("disconnect", "c1", True) in world.calls


def test_teardown_from_ledger_entry_alone(host: host_mod.Host, world: FakeWorld) -> None:
    sc.reconcile(sc.parse(manifest(posix())), host)
    entry = host.ledger.get(sc.KIND, "c1")
    assert entry is not None
    assert sc.teardown(entry, host).phase == "Detached" and not world.connected


# ------------------------------------------------------------------------------- status and resolve


def test_observe_reports_drift_without_changing_anything(host: host_mod.Host, world: FakeWorld) -> None:
    sc.reconcile(sc.parse(manifest(posix())), host)
    entry = host.ledger.get(sc.KIND, "c1")
    assert entry is not None
    assert sc.observe(entry, host).phase == "Connected"
    world.connected.clear()
    world.calls.clear()
    result = sc.observe(entry, host)
    assert (result.phase, result.reason) == ("Pending", "NotConnected")
    assert [c[0] for c in world.calls] == ["observe"]


def test_resolve_confines_sub_paths(host: host_mod.Host, world: FakeWorld, tmp_path: pathlib.Path) -> None:
    data = tmp_path / "allowed" / "data"
    (data / "images").mkdir()
    os.symlink("/etc", data / "escape")
    assert sc.resolve(host, "c1") is None
    spec = sc.parse(manifest({"type": "localfs", "localfs": {"path": str(data)}}))
    result = sc.reconcile(spec, host)
    target = result.detail["mountPoint"]
    os.makedirs(os.path.dirname(target), exist_ok=True)
    os.symlink(data, target)  # the fake connects in memory; give resolve the real link it would make
    assert sc.resolve(host, "c1") == str(data)
    assert sc.resolve(host, "c1", "images") == str(data / "images")
    with pytest.raises(errors.InvalidSpec):
        sc.resolve(host, "c1", "../../etc")
    with pytest.raises(errors.InvalidSpec):
        sc.resolve(host, "c1", "escape")
    world.connected.clear()
    assert sc.resolve(host, "c1") is None


def _entry_with(host: host_mod.Host, **extra: Any) -> None:
    """Rewrite c1's ledger entry with ``extra`` resource keys (None drops a key)."""
    entry = host.ledger.get(sc.KIND, "c1")
    assert entry is not None
    resource = {k: v for k, v in {**entry.resource, **extra}.items() if v is not None}
    host.ledger.put(ledger.LedgerEntry(entry.kind, entry.name, entry.uid, resource))


MOUNT = {"mountId": 41, "device": "8:1", "fstype": "ext4", "source": "/dev/loop7"}


@pytest.mark.parametrize(("extra", "lost"), [
    ({}, False),                                     # a write-ahead entry of a first connect
    ({"mount": MOUNT}, True),                        # the mount's identity was recorded
    ({"targetId": [2049, 77]}, True),                # the mount point / link hoststorage made
    ({"mount": MOUNT, "targetId": [2049, 77]}, True),
    ({"mount": {}}, False),
    ({"targetId": [2049]}, False),
    ({"targetId": ["2049", "77"]}, False),
])  # fmt: skip
def test_a_user_of_a_connection_lost_on_this_node_fails_one_never_connected_waits(
    host: host_mod.Host, world: FakeWorld, extra: dict[str, Any], lost: bool
) -> None:
    """require: not connected now is ConnectionLost (Failed, retried: the roll-up counts it, a monitor on
    storage gone from one node is that node's problem) only when the entry records a finished connect;
    otherwise WaitingForConnection (Pending). The monitor's and the pool's results say the same."""
    sc.reconcile(sc.parse(manifest(posix())), host)
    _entry_with(host, **{"mount": None, "targetId": None, **extra})
    assert sc.was_connected(host.ledger.get(sc.KIND, "c1")) is lost
    world.connected.clear()  # unmounted underneath
    want = sc.ConnectionLost if lost else sc.WaitingForConnection
    with pytest.raises(want, match="StorageConnection c1"):
        sc.require(host, "c1")
    mon = {"apiVersion": api.API_VERSION, "kind": dmon.KIND, "metadata": {"name": "m1"},
           "spec": {"target": {"connectionRef": {"name": "c1"}}}}  # fmt: skip
    result = dmon.reconcile(dmon.parse(mon), host)
    phase = "Failed" if lost else "Pending"
    assert (result.phase, result.reason, result.ready, result.retry) == (phase, want.reason, False, True)
    pool = {"apiVersion": api.API_VERSION, "kind": storage_pool.KIND, "metadata": {"name": "p1"},
            "spec": {"connectionRef": {"name": "c1"}}}  # fmt: skip
    with pytest.raises(want):
        storage_pool.desired_definition(storage_pool.parse(pool), host)
    world.connected.add(str(sc.reconcile(sc.parse(manifest(posix())), host).detail["mountPoint"]))
    assert sc.require(host, "c1")  # connected again: both resolve


def test_no_entry_is_waiting_never_lost(host: host_mod.Host) -> None:
    assert sc.was_connected(None) is False
    with pytest.raises(sc.WaitingForConnection):
        sc.require(host, "nowhere")
