"""fs/netfs pools whose mount and libvirt's view part ways are healed, not left alone for good.

A running fs/netfs pool whose mount was unmounted underneath is restarted (its source mounted again).

Found by the chaos soak (issue 14): libvirt keeps reporting such a pool ``running`` over the empty
directory below the lost mount, so the plan only refreshed it and the pool was never healed. The pure
rule (:func:`storage_pool.target_unmounted` and the plan) is pinned without libvirt; the host test
unmounts a real fs pool's loop device and reconciles.

The other way round, also found by the soak: libvirt lost a running fs pool (a libvirtd killed while
defining it) and its source stayed mounted on the target. The pool the ledger holds by its UUID takes
that mount over (:func:`storage_pool.left_mounted`); anything else on the target stays a Conflict.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from typing import Any

import fixtures_libvirt
import pytest
from test_storage_pool import apply, host  # noqa: F401 - the host fixture of the real-libvirt tests

from hostlib import config, ledger, libvirt_pools, mounts
from reconcilers import host as host_mod
from reconcilers import storage_pool

TARGET = "/srv/hs/pools/p"
FS = libvirt_pools.PoolDefinition("p", "fs", TARGET, source_devices=("/dev/loop7",), source_format="ext4")
DIR = libvirt_pools.PoolDefinition("p", "dir", TARGET)


def record(target: str, source: str = "/dev/loop7") -> mounts.MountRecord:
    return mounts.MountRecord(
        40, 1, "7:7", "/", target, ("rw",), "ext4", source, ("rw",), canonical_source=source
    )


def observed(defn: libvirt_pools.PoolDefinition, *, active: bool = True) -> libvirt_pools.PoolObserved:
    return libvirt_pools.PoolObserved(
        "p", "u", "running" if active else "inactive", active, 1, 1, 0, 0 if active else None,
        True, True, defn,
    )


@pytest.mark.parametrize(
    ("defn", "active", "records", "unmounted"),
    [
        (FS, True, [], True),  # the soak's case: running, nothing on the target
        (FS, True, [record("/srv/other")], True),  # a mount elsewhere does not count
        (FS, True, [record(TARGET)], False),
        (FS, False, [], False),  # a stopped pool is started by the plan anyway
        (DIR, True, [], False),  # a dir pool mounts nothing
        (libvirt_pools.PoolDefinition("p", "fs", None, source_devices=("/dev/loop7",)), True, [], False),
    ],
)
def test_target_unmounted(
    defn: libvirt_pools.PoolDefinition, active: bool, records: list[mounts.MountRecord], unmounted: bool
) -> None:
    assert storage_pool.target_unmounted(defn, active, records) is unmounted


def test_plan_restarts_a_running_pool_whose_target_is_not_mounted() -> None:
    # "/" exists: no build step
    defn = libvirt_pools.PoolDefinition("p", "fs", "/", source_devices=("/dev/loop7",))
    obs = observed(libvirt_pools.PoolDefinition("p", "fs", "/", source_devices=("/dev/loop7",), uuid="u"))
    verbs = [a.verb for a in storage_pool.plan(defn, obs, autostart=True, target_mounted=False)]
    assert verbs == ["destroy", "start"]
    assert storage_pool.plan(defn, obs, autostart=True, seconds_since_refresh=1.0) == []


@pytest.mark.host
def test_an_fs_pool_unmounted_underneath_is_mounted_again(host: host_mod.Host, loop_device: Any) -> None:  # noqa: F811
    dev = loop_device("ext4")
    spec, res = apply(host, {"fs": {"device": dev, "format": "ext4"}})
    assert (res.phase, res.reason) == ("Running", "Running"), res.message
    target = res.detail["targetPath"]
    subprocess.run(["umount", target], check=True, timeout=30)
    assert mounts.topmost(target) is None and os.path.isdir(target)
    again = storage_pool.reconcile(spec, host)
    assert (again.phase, again.reason, again.changed) == ("Running", "Running", True), again.message
    top = mounts.topmost(target)
    assert top is not None and top.canonical_source == mounts.canonical_source(dev)
    assert storage_pool.reconcile(spec, host).changed is False


@pytest.mark.parametrize(
    ("resource", "libvirt_name", "claims"),
    [
        ({"libvirtName": "p", "uuid": "u"}, "p", True),
        ({"libvirtName": "p"}, "p", False),  # no recorded UUID: a name alone claims nothing
        ({"libvirtName": "p", "uuid": ""}, "p", False),
        ({"libvirtName": "q", "uuid": "u"}, "p", False),  # the entry is about another libvirt pool
        (None, "p", False),  # no entry at all
    ],
)
def test_only_a_pool_the_ledger_holds_by_uuid_takes_over_a_mount_left_on_its_target(
    tmp_path: pathlib.Path, resource: dict[str, str] | None, libvirt_name: str, claims: bool
) -> None:
    h = host_mod.Host(config.HostConfig(state_dir=str(tmp_path)), ledger.Ledger(str(tmp_path)))
    if resource is not None:
        h.ledger.put(ledger.LedgerEntry(storage_pool.KIND, "mine", resource=resource))
    h.ledger.put(ledger.LedgerEntry(storage_pool.KIND, "other", resource={"libvirtName": "p", "uuid": "u"}))
    assert storage_pool.left_mounted("mine", libvirt_name, h) is claims
    # What it decides: the pool's own source left on the target is no Conflict for an entry that claims
    # it; a foreign source is one either way.
    claimed = storage_pool.left_mounted("mine", libvirt_name, h)
    own = storage_pool.target_conflict(FS, claimed, [record(TARGET)])
    assert (own is None) is claims
    assert storage_pool.target_conflict(FS, True, [record(TARGET, "/dev/loop3")]) is not None


@pytest.mark.host
def test_an_fs_pool_libvirt_lost_with_its_mount_left_is_defined_again_over_that_mount(
    host: host_mod.Host, loop_device: Any  # noqa: F811
) -> None:
    dev = loop_device("ext4")
    spec, res = apply(host, {"fs": {"device": dev, "format": "ext4"}})
    assert (res.phase, res.reason) == ("Running", "Running"), res.message
    target = res.detail["targetPath"]
    uuid = host.ledger.get(storage_pool.KIND, spec.name).resource["uuid"]  # type: ignore[union-attr]
    # libvirt forgets the pool while its source stays mounted on the target (what a libvirtd killed
    # while defining it leaves): destroy and undefine, then the source mounted back where it was.
    for verb in ("pool-destroy", "pool-undefine"):
        fixtures_libvirt.virsh(verb, spec.libvirt_name)
    subprocess.run(["mount", "-t", "ext4", dev, target], check=True, timeout=30)
    again = storage_pool.reconcile(spec, host)
    assert (again.phase, again.reason, again.changed) == ("Running", "Running", True), again.message
    assert again.detail["uuid"] == uuid
    at = mounts.mounts_at(target)
    assert [r.canonical_source for r in at] == [mounts.canonical_source(dev)], "mounted once, not twice"
    assert storage_pool.reconcile(spec, host).changed is False
