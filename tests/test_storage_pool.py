"""StoragePool against the real libvirtd, with virsh as the independent witness.

Covers parse (a table of good and bad specs), the bad-input corpus at reconcile time (libvirt, the
ledger and the secret list unchanged), every pool type this machine can run (dir, fs on a loop-device
ext4, netfs glusterfs on the local gluster volume, iscsi-direct on a tgtd target with and without
CHAP, connectionRef on a posixfs connection), the clean failure of iscsi and logical on this kernel
and, where the kernel has the iSCSI initiator or device-mapper, real iscsi (tgtd) and logical (a VG on
a loop device) pools (skipped here with preflight's reason), ownership (Conflict), teardown that
keeps volumes and files, the event-driven restart after an outside ``pool-destroy`` and the
reconnect + re-reconcile after a libvirtd restart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import secrets
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator, Mapping
from typing import Any

import fixtures_libvirt
import pytest

from hostlib import config, errors, ledger, libvirt_pools, mounts
from reconcilers import host as host_mod
from reconcilers import storage_connection, storage_pool

# ------------------------------------------------------------------------------------------ parse


def manifest(spec: Mapping[str, Any], name: str = "p1") -> dict[str, Any]:
    return {
        "apiVersion": "hoststorage.io/v1alpha1",
        "kind": "StoragePool",
        "metadata": {"name": name},
        "spec": dict(spec),
    }


GOOD = [
    ({"dir": {"path": "/srv/pools/a"}}, "dir"),
    ({"dir": {"path": "/srv/pools/a"}, "autostart": False, "deletionPolicy": "Retain"}, "dir"),
    ({"connectionRef": {"name": "nfs1", "path": "images"}}, "dir"),
    ({"connectionRef": {"name": "nfs1"}}, "dir"),
    ({"fs": {"device": "/dev/loop3", "format": "ext4"}}, "fs"),
    ({"fs": {"device": "/dev/disk/by-id/x"}}, "fs"),
    ({"netfs": {"host": "gluster.example", "dir": "/gv0", "format": "glusterfs"}}, "netfs"),
    ({"netfs": {"host": "fd00::1", "dir": "/export"}}, "netfs"),
    (
        {
            "iscsiDirect": {
                "host": "127.0.0.1",
                "port": 3260,
                "target": "iqn.2026-01.io.example:t1",
                "initiator": "iqn.2026-01.io.example:i1",
                "chapSecretRef": {"name": "chap", "namespace": "hoststorage"},
            }
        },
        "iscsi-direct",
    ),
    ({"iscsi": {"host": "192.0.2.1", "target": "iqn.2026-01.io.example:t1"}}, "iscsi"),
    ({"logical": {"vgName": "vg_data", "devices": ["/dev/sdb"]}}, "logical"),
    ({"logical": {"vgName": "vg0"}}, "logical"),
    ({"dir": {"path": "/srv/x"}, "libvirtName": "My_Pool.1"}, "dir"),
]

ID = {
    "host": "127.0.0.1",
    "target": "iqn.2026-01.io.example:t1",
    "initiator": "iqn.2026-01.io.example:i1",
}
XML_NASTY = ["a<b", "a>b", "a&b", 'a"b', "a'b"]

EXACTLY_ONE = "exactly one of connectionRef, dir, fs, netfs, iscsiDirect, iscsi, logical must be set"
XML = "<, >, &, or a quote"
BAD: list[tuple[dict[str, Any], str]] = [
    ({}, EXACTLY_ONE),
    ({"dir": {"path": "/a"}, "fs": {"device": "/dev/loop0"}}, f"{EXACTLY_ONE} (got dir, fs)"),
    ({"dir": None, "netfs": None}, EXACTLY_ONE),
    ({"dir": {"path": "relative/x"}}, "not an absolute path"),
    ({"dir": {"path": "/srv/../etc"}}, "'..'"),
    ({"dir": {"path": "/srv/a\nb"}}, "control character"),
    ({"dir": {"path": "/srv/a\x00b"}}, "control character"),
    ({"dir": {"path": 5}}, "must be a string"),
    ({"dir": {"path": "/" + "a" * 2000}}, "limit"),
    ({"dir": {}}, "spec.dir.path: is required"),
    ({"dir": {"path": "/a", "mode": "0777"}}, "spec.dir.mode: unknown field (allowed: path)"),
    ({"dir": "/a"}, "must be an object"),
    ({"fs": {"device": "/etc/passwd"}}, "not a device path under /dev"),
    ({"fs": {"device": "/dev/loop0", "format": "ntfs"}}, "is not one of auto, ext2"),
    ({"fs": {"device": "/dev/loop0", "format": "ext4 -o exec"}}, "is not one of"),
    ({"netfs": {"host": "h", "dir": "/x", "format": "cifs"}}, "is not one of nfs, glusterfs"),
    ({"netfs": {"host": "-oexec", "dir": "/x"}}, "starts with '-'"),
    ({"netfs": {"host": "a b", "dir": "/x"}}, "not a valid hostname"),
    ({"netfs": {"host": "h", "dir": "x"}}, "not an absolute path"),
    ({"iscsiDirect": {**ID, "port": 0}}, "0 is out of range 1..65535"),
    ({"iscsiDirect": {**ID, "port": "3260"}}, "must be an integer, got string"),
    ({"iscsiDirect": {**ID, "target": "not-an-iqn"}}, "not an iSCSI name"),
    ({"iscsiDirect": {**ID, "initiator": "iqn.x"}}, "not an iSCSI name"),
    ({"iscsiDirect": {"host": "h", "target": ID["target"]}}, "spec.iscsiDirect.initiator: is required"),
    ({"iscsiDirect": {**ID, "chapSecretRef": {"name": "UPPER"}}}, "not a valid name"),
    ({"iscsiDirect": {**ID, "chapSecretRef": {"name": "a", "key": "b"}}}, "unknown field"),
    ({"iscsi": {"host": "h", "target": "iqn", "port": 70000}}, "not an iSCSI name"),
    ({"logical": {"vgName": "-vg"}}, "starts with '-'"),
    ({"logical": {"vgName": "vg/../x"}}, "does not match"),
    ({"logical": {"vgName": ".."}}, "not a volume group name"),
    ({"logical": {"vgName": "vg", "devices": "/dev/sdb"}}, "must be a list"),
    ({"logical": {"vgName": "vg", "devices": ["/tmp/x"]}}, "not a device path under /dev"),
    ({"connectionRef": {"name": "../x"}}, "not a valid name"),
    ({"connectionRef": {"name": "c", "path": "/abs"}}, "must be relative"),
    ({"connectionRef": {"name": "c", "path": "a/../../b"}}, "'..'"),
    ({"dir": {"path": "/a"}, "libvirtName": "bad/name"}, "not a usable libvirt pool name"),
    ({"dir": {"path": "/a"}, "libvirtName": "-x"}, "starts with '-'"),
    ({"dir": {"path": "/a"}, "libvirtName": "x" * 65}, "limit"),
    ({"dir": {"path": "/a"}, "autostart": "yes"}, "must be true or false"),
    ({"dir": {"path": "/a"}, "deletionPolicy": "Delete"}, "is not one of Detach, Retain"),
    ({"dir": {"path": "/a"}, "volumes": []}, "spec.volumes: unknown field"),
    ({"dir": {"path": "/a"}, "nodeSelector": "all"}, "must be an object"),
    ({"dir": {"path": "/a"}, "nodeSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
     "must not be empty for operator In"),
    ({"dir": {"path": "/a"}, "nodeSelector": {"matchLabels": {"a": "b c"}}}, "not a valid label value"),
]
# XML-special characters in every string field: refused, by the XML rule or by the field's own shape.
for nasty in XML_NASTY:
    BAD += [
        ({"dir": {"path": f"/srv/{nasty}"}}, XML),
        ({"fs": {"device": f"/dev/{nasty}"}}, XML),
        ({"fs": {"device": "/dev/loop0", "format": nasty}}, "is not one of"),
        ({"netfs": {"host": nasty, "dir": "/x"}}, XML),
        ({"netfs": {"host": "h", "dir": f"/{nasty}"}}, XML),
        ({"netfs": {"host": "h", "dir": "/x", "format": nasty}}, "is not one of"),
        ({"iscsiDirect": {**ID, "host": nasty}}, XML),
        ({"iscsiDirect": {**ID, "target": f"{ID['target']}{nasty}"}}, "not an iSCSI name"),
        ({"iscsiDirect": {**ID, "initiator": f"{ID['initiator']}{nasty}"}}, "not an iSCSI name"),
        ({"iscsiDirect": {**ID, "chapSecretRef": {"name": nasty}}}, "not a valid name"),
        ({"iscsiDirect": {**ID, "chapSecretRef": {"name": "c", "namespace": nasty}}}, "does not match"),
        ({"iscsi": {"host": nasty, "target": ID["target"]}}, XML),
        ({"iscsi": {"host": "h", "target": f"{ID['target']}{nasty}"}}, "not an iSCSI name"),
        ({"logical": {"vgName": nasty}}, "does not match"),
        ({"logical": {"vgName": "vg", "devices": [f"/dev/{nasty}"]}}, XML),
        ({"connectionRef": {"name": nasty}}, "not a valid name"),
        ({"connectionRef": {"name": "c", "path": nasty}}, XML),
        ({"dir": {"path": "/a"}, "libvirtName": nasty}, "not a usable libvirt pool name"),
    ]


@pytest.mark.parametrize(("spec", "pool_type"), GOOD, ids=[str(i) for i in range(len(GOOD))])
def test_parse_accepts_good_specs(spec: dict[str, Any], pool_type: str) -> None:
    parsed = storage_pool.parse(manifest(spec))
    assert parsed.pool_type == pool_type
    assert parsed.libvirt_name == spec.get("libvirtName", "p1")
    assert parsed.autostart is spec.get("autostart", True)


@pytest.mark.parametrize(("spec", "message"), BAD, ids=[str(i) for i in range(len(BAD))])
def test_parse_refuses_bad_specs_with_a_specific_message(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(errors.InvalidSpec) as info:
        storage_pool.parse(manifest(spec))
    assert message in info.value.message


def test_parse_refuses_bad_metadata() -> None:
    with pytest.raises(errors.InvalidSpec, match=r"metadata\.name"):
        storage_pool.parse(manifest({"dir": {"path": "/a"}}, name="Bad_Name"))
    with pytest.raises(errors.InvalidSpec, match="kind"):
        storage_pool.parse({**manifest({"dir": {"path": "/a"}}), "kind": "StorageConnection"})
    with pytest.raises(errors.InvalidSpec, match=r"metadata\.name"):
        # the default libvirt name is the object name, which must then fit libvirt's limit
        storage_pool.parse(manifest({"dir": {"path": "/a"}}, name="x" * 70))


def test_plan_is_empty_for_a_converged_pool() -> None:
    desired = libvirt_pools.PoolDefinition(name="p", type="dir", target_path="/")
    observed = libvirt_pools.PoolObserved(
        "p",
        "u",
        "running",
        True,
        1,
        1,
        0,
        0,
        True,
        True,
        libvirt_pools.PoolDefinition("p", "dir", "/", uuid="u"),
    )
    assert storage_pool.plan(desired, observed, autostart=True, seconds_since_refresh=1.0) == []
    verbs = [a.verb for a in storage_pool.plan(desired, observed, autostart=False, seconds_since_refresh=999)]
    assert verbs == ["refresh", "autostart"]
    verbs = [a.verb for a in storage_pool.plan(desired, None, autostart=True)]
    assert verbs == ["define", "start", "autostart"]
    changed = libvirt_pools.PoolDefinition(name="p", type="dir", target_path="/other")
    verbs = [a.verb for a in storage_pool.plan(changed, observed, autostart=True)]
    assert verbs[:2] == ["define", "destroy"] and "start" in verbs


# --------------------------------------------------------------------------------- real libvirtd


def _uniq() -> str:
    return f"hs-t-{secrets.token_hex(4)}"


class SecretStore:
    """The ``secret_lookup`` of a Host, like local mode's Secrets from the same files."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, str], dict[str, str]] = {}

    def __call__(self, namespace: str, name: str) -> Mapping[str, str]:
        return self.data[(namespace, name)]


@pytest.fixture
def host(hs_host_config: config.HostConfig, layer: libvirt_pools.PoolLayer) -> Iterator[host_mod.Host]:
    h = host_mod.Host.for_config(hs_host_config, pools=lambda: layer, secret_lookup=SecretStore())
    try:
        yield h
    finally:
        # Whatever a failing test left: tear down every pool this host's ledger owns.
        for entry in h.ledger.entries(storage_pool.KIND):
            storage_pool.teardown(entry, h, force=True)
        for entry in h.ledger.entries(storage_connection.KIND):
            storage_connection.teardown(entry, h, force=True)


def libvirt_state() -> tuple[list[str], str]:
    return (
        sorted(fixtures_libvirt.virsh("pool-list", "--all", "--name").split()),
        fixtures_libvirt.virsh("secret-list"),
    )


def assert_witness(name: str, detail: Mapping[str, Any]) -> None:
    """What hoststorage reports equals what virsh says."""
    info = {}
    for line in fixtures_libvirt.virsh("pool-info", name, "--bytes").splitlines():
        if ":" in line:
            k, v = line.split(":", 1)
            info[k.strip()] = v.strip()
    assert detail["libvirtName"] == info["Name"] == name
    assert detail["uuid"] == info["UUID"]
    assert detail["state"] == info["State"]
    assert detail["persistent"] == (info["Persistent"] == "yes")
    assert detail["autostart"] == (info["Autostart"] == "yes")
    if detail["state"] == "running":
        assert detail["capacity"] == int(info["Capacity"])
        assert detail["allocation"] == int(info["Allocation"])
        assert detail["available"] == int(info["Available"])
        assert detail["volumes"] == len(fixtures_libvirt.vol_names(name))
    root = ET.fromstring(fixtures_libvirt.virsh("pool-dumpxml", name))
    assert root.findtext("uuid") == detail["uuid"]
    assert root.findtext("target/path") == detail["targetPath"]
    assert root.get("type") == detail["type"]


def apply(host: host_mod.Host, spec: Mapping[str, Any], name: str | None = None) -> Any:
    parsed = storage_pool.parse(manifest(spec, name or _uniq()))
    return parsed, storage_pool.reconcile(parsed, host)


@pytest.mark.host
def test_dir_pool_runs_and_matches_virsh_and_second_apply_changes_nothing(host: host_mod.Host) -> None:
    target = os.path.join(host.config.allowed_host_paths[0], "images")
    spec, res = apply(host, {"dir": {"path": target}})
    assert (res.phase, res.reason, res.ready, res.changed) == ("Running", "Running", True, True)
    assert [a.verb for a in res.actions] == ["define", "build", "start", "autostart"]
    assert_witness(spec.libvirt_name, res.detail)
    assert os.path.isdir(target) and res.detail["targetPath"] == target
    again = storage_pool.reconcile(spec, host)
    assert (again.phase, again.changed, list(again.actions)) == ("Running", False, [])
    dry = storage_pool.reconcile(spec, host, dry_run=True)
    assert list(dry.actions) == [] and dry.ready
    entry = host.ledger.get("StoragePool", spec.name)
    assert entry is not None and entry.resource["uuid"] == res.detail["uuid"]
    assert storage_pool.resolve(host, spec.name) == target
    assert storage_pool.observe(entry, host).detail == again.detail


@pytest.mark.host
def test_dry_run_changes_nothing(host: host_mod.Host) -> None:
    before = libvirt_state()
    spec = storage_pool.parse(
        manifest({"dir": {"path": os.path.join(host.config.allowed_host_paths[0], "d")}})
    )
    res = storage_pool.reconcile(spec, host, dry_run=True)
    assert [a.verb for a in res.actions] == ["define", "build", "start", "autostart"]
    assert libvirt_state() == before and host.ledger.entries() == []


@pytest.mark.host
def test_autostart_false_and_spec_change_redefines(host: host_mod.Host) -> None:
    root = host.config.allowed_host_paths[0]
    name = _uniq()
    _, res = apply(host, {"dir": {"path": os.path.join(root, "a")}, "autostart": False}, name)
    assert res.ready and res.detail["autostart"] is False
    assert_witness(name, res.detail)
    _, res2 = apply(host, {"dir": {"path": os.path.join(root, "b")}}, name)
    assert res2.ready and res2.detail["targetPath"] == os.path.join(root, "b") and res2.detail["autostart"]
    assert res2.detail["uuid"] == res.detail["uuid"], "a redefinition keeps the pool's UUID"
    assert_witness(name, res2.detail)


LIBVIRT_STORAGE = "/etc/libvirt/storage"  # qemu:///system's pool configs and autostart links


@pytest.mark.host
def test_a_stale_autostart_link_leaves_the_pool_running_and_ready(host: host_mod.Host) -> None:
    """libvirt keeps a pool's autostart link when it fails to load the pool (soak seed 961853358: a
    source conflict after a libvirtd restart); a pool defined again under that name cannot have the flag
    set ("File exists"). It runs and is Ready (AutostartNotSet, retried); undefine removes the link."""
    name = _uniq()
    link = os.path.join(LIBVIRT_STORAGE, "autostart", f"{name}.xml")
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(os.path.join(LIBVIRT_STORAGE, f"{name}.xml"), link)  # what the lost definition left
    try:
        spec, res = apply(host, {"dir": {"path": os.path.join(host.config.allowed_host_paths[0], "s")}}, name)
        assert (res.phase, res.reason, res.ready, res.retry) == ("Running", "AutostartNotSet", True, True)
        assert "File exists" in res.message and res.detail["autostart"] is False
        assert_witness(name, res.detail)
        entry = host.ledger.get(storage_pool.KIND, spec.name)
        assert entry is not None and storage_pool.teardown(entry, host).phase == "Detached"
        assert not os.path.lexists(link), "libvirt's undefine removes the link"
        _, clean = apply(host, {"dir": {"path": os.path.join(host.config.allowed_host_paths[0], "s")}}, name)
        assert (clean.reason, clean.detail["autostart"]) == ("Running", True)
    finally:
        with contextlib.suppress(FileNotFoundError):
            if os.path.islink(link):
                os.unlink(link)


@pytest.mark.host
def test_teardown_destroys_and_undefines_but_keeps_volumes_and_files(host: host_mod.Host) -> None:
    target = os.path.join(host.config.allowed_host_paths[0], "keep")
    spec, res = apply(host, {"dir": {"path": target}})
    assert res.ready
    fixtures_libvirt.virsh("vol-create-as", spec.libvirt_name, "vol1.img", "4M")
    fixtures_libvirt.virsh("vol-create-as", spec.libvirt_name, "vol2.raw", "1M")
    with open(os.path.join(target, "plain-file"), "w") as f:
        f.write("data")
    down = storage_pool.teardown(spec, host)
    assert (down.phase, down.reason, down.changed) == ("Detached", "Detached", True)
    assert spec.libvirt_name not in libvirt_state()[0]
    assert sorted(os.listdir(target)) == ["plain-file", "vol1.img", "vol2.raw"]
    assert os.path.getsize(os.path.join(target, "vol1.img")) == 4 * 1024 * 1024
    assert host.ledger.get("StoragePool", spec.name) is None
    again = storage_pool.teardown(spec, host)
    assert (again.phase, again.changed) == ("Detached", False)


@pytest.mark.host
def test_retain_leaves_the_pool_and_forgets_it(host: host_mod.Host) -> None:
    target = os.path.join(host.config.allowed_host_paths[0], "retained")
    spec, _ = apply(host, {"dir": {"path": target}, "deletionPolicy": "Retain"})
    try:
        down = storage_pool.teardown(spec, host)
        assert (down.phase, down.reason) == ("Detached", "Retained")
        assert fixtures_libvirt.virsh("pool-info", spec.libvirt_name).count("running") == 1
        assert host.ledger.get("StoragePool", spec.name) is None
    finally:
        fixtures_libvirt.virsh("pool-destroy", spec.libvirt_name, check=False)
        fixtures_libvirt.virsh("pool-undefine", spec.libvirt_name, check=False)


@pytest.mark.host
def test_a_pool_hoststorage_does_not_own_is_a_conflict_and_untouched(
    host: host_mod.Host, tmp_path: os.PathLike[str]
) -> None:
    name = _uniq()
    fixtures_libvirt.virsh("pool-define-as", name, "dir", "--target", str(tmp_path))
    try:
        before = fixtures_libvirt.virsh("pool-dumpxml", name)
        spec, res = apply(host, {"dir": {"path": os.path.join(host.config.allowed_host_paths[0], "c")}}, name)
        assert (res.phase, res.reason, res.ready) == ("Failed", "Conflict", False)
        assert fixtures_libvirt.virsh("pool-dumpxml", name) == before
        down = storage_pool.teardown(spec, host)
        assert down.phase == "Detached" and name in libvirt_state()[0]
        # another StoragePool naming the same libvirt pool is a conflict too
        other_target = os.path.join(host.config.allowed_host_paths[0], "o")
        first, ok = apply(host, {"dir": {"path": other_target}})
        assert ok.ready
        _, clash = apply(host, {"dir": {"path": other_target}, "libvirtName": first.libvirt_name})
        assert clash.reason == "Conflict"
    finally:
        fixtures_libvirt.virsh("pool-undefine", name, check=False)


@pytest.mark.host
def test_bad_input_at_reconcile_leaves_libvirt_and_ledger_unchanged(
    host: host_mod.Host, tmp_path: os.PathLike[str]
) -> None:
    allowed = host.config.allowed_host_paths[0]
    escape = os.path.join(allowed, "escape")
    os.symlink("/etc", escape)
    outside = os.path.join(str(tmp_path), "outside")
    os.makedirs(outside)
    not_block = os.path.join("/dev", "null")
    cases = [
        ({"dir": {"path": outside}}, "Failed", "InvalidSpec", "not under an allowed host path"),
        ({"dir": {"path": "/etc"}}, "Failed", "InvalidSpec", "not under an allowed host path"),
        ({"dir": {"path": os.path.join(escape, "x")}}, "Failed", "InvalidSpec", "not under an allowed host"),
        ({"fs": {"device": not_block}}, "Failed", "InvalidSpec", "not a block device"),
        ({"fs": {"device": "/dev/hs-no-such-device"}}, "Failed", "NotFound", "does not exist"),
        (
            # The one missing-Secret policy, the connection's: wait for it (Pending), do not fail.
            {"iscsiDirect": {**ID, "chapSecretRef": {"name": "missing", "namespace": "x"}}},
            "Pending",
            "SecretNotFound",
            "not found",
        ),
    ]
    before = libvirt_state()
    for spec, phase, reason, message in cases:
        _, res = apply(host, spec)
        assert (res.phase, res.reason) == (phase, reason), spec
        assert message in res.message, (spec, res.message)
    no_roots = host_mod.Host.for_config(
        config.HostConfig(state_dir=host.config.state_dir, mount_base=host.config.mount_base),
        pools=host.pools,
    )
    _, res = apply(no_roots, {"dir": {"path": allowed}})
    assert res.reason == "InvalidSpec" and "--allowed-host-path" in res.message
    assert libvirt_state() == before
    assert host.ledger.entries() == []


@pytest.mark.host
def test_netfs_nfs_fails_cleanly_without_an_nfs_client(host: host_mod.Host) -> None:
    try:
        libvirt_pools.preflight("netfs", "nfs")
    except errors.Unsupported:
        pass
    else:
        pytest.skip("this kernel has an NFS client")
    before = libvirt_state()
    _, res = apply(host, {"netfs": {"host": "127.0.0.1", "dir": "/exports/x", "format": "nfs"}})
    assert (res.phase, res.reason, res.retry) == ("Failed", "Unsupported", False)
    assert "NFS client" in res.message
    assert libvirt_state() == before and host.ledger.entries() == []


@pytest.mark.host
def test_renaming_the_libvirt_pool_replaces_the_old_one(host: host_mod.Host) -> None:
    target = os.path.join(host.config.allowed_host_paths[0], "rn")
    name = _uniq()
    _, first = apply(host, {"dir": {"path": target}, "libvirtName": f"{name}-a"}, name)
    assert first.ready
    _, second = apply(host, {"dir": {"path": target}, "libvirtName": f"{name}-b"}, name)
    assert second.ready and second.changed
    listed = libvirt_state()[0]
    assert f"{name}-a" not in listed and f"{name}-b" in listed


@pytest.mark.host
@pytest.mark.parametrize("kind", ["iscsi", "logical"])
def test_iscsi_and_logical_fail_cleanly_on_this_kernel(host: host_mod.Host, kind: str) -> None:
    try:
        libvirt_pools.preflight(kind)
    except errors.Unsupported:
        pass
    else:
        pytest.skip(f"this kernel can run {kind} pools")
    spec = (
        {"iscsi": {"host": "127.0.0.1", "target": ID["target"]}}
        if kind == "iscsi"
        else {"logical": {"vgName": "hsvg", "devices": ["/dev/loop0"]}}
    )
    before = libvirt_state()
    _, res = apply(host, spec)
    assert (res.phase, res.reason, res.retry) == ("Failed", "Unsupported", False)
    assert "kernel" in res.message
    assert libvirt_state() == before and host.ledger.entries() == []


@pytest.mark.host
def test_iscsi_pool_on_tgtd_where_the_kernel_has_an_initiator(
    host: host_mod.Host, request: pytest.FixtureRequest
) -> None:
    """libvirt's iscsi backend logs in through iscsiadm (the kernel initiator) and lists the LUN."""
    try:
        libvirt_pools.preflight("iscsi")
    except errors.Unsupported as exc:
        pytest.skip(f"{exc.message}; the XML and the clean failure are tested above")
    request.getfixturevalue("iscsid")
    t = request.getfixturevalue("tgt_target")()
    spec, res = apply(host, {"iscsi": {"host": "127.0.0.1", "port": 3260, "target": t.iqn}})
    assert (res.phase, res.reason) == ("Running", "Running"), res.message
    assert_witness(spec.libvirt_name, res.detail)
    assert res.detail["volumes"] >= 1
    assert storage_pool.reconcile(spec, host).changed is False
    down = storage_pool.teardown(spec, host)
    assert down.phase == "Detached", down.message
    assert spec.libvirt_name not in libvirt_state()[0]
    assert os.path.getsize(t.lun_path) == t.lun_bytes


@pytest.mark.host
def test_logical_pool_on_a_volume_group_where_the_kernel_has_device_mapper(
    host: host_mod.Host, loop_device: Any
) -> None:
    """A logical pool starts on the admin's volume group; teardown leaves the VG and its LVs."""
    try:
        libvirt_pools.preflight("logical")
    except errors.Unsupported as exc:
        pytest.skip(f"{exc.message}; the XML and the clean failure are tested above")
    dev = loop_device("ext4")
    vg = f"hsvg{secrets.token_hex(3)}"
    subprocess.run(["pvcreate", "-ff", "-y", "-q", dev], check=True, timeout=60)
    subprocess.run(["vgcreate", "-q", vg, dev], check=True, timeout=60)
    try:
        spec, res = apply(host, {"logical": {"vgName": vg, "devices": [dev]}})
        assert (res.phase, res.reason) == ("Running", "Running"), res.message
        assert_witness(spec.libvirt_name, res.detail)
        fixtures_libvirt.virsh("vol-create-as", spec.libvirt_name, "lv1", "4M")
        down = storage_pool.teardown(spec, host)
        assert down.phase == "Detached", down.message
        lvs = subprocess.run(["lvs", "--noheadings", "-o", "lv_name", vg], capture_output=True, text=True,
                             check=True, timeout=60).stdout.split()  # fmt: skip
        assert lvs == ["lv1"], "teardown must keep the volume group and its volumes"
    finally:
        subprocess.run(["vgremove", "-f", "-q", vg], check=False, timeout=60)
        subprocess.run(["pvremove", "-q", dev], check=False, timeout=60)


@pytest.mark.host
def test_fs_pool_on_a_loop_device_ext4(host: host_mod.Host, loop_device: Any) -> None:
    dev = loop_device("ext4")
    spec, res = apply(host, {"fs": {"device": dev, "format": "ext4"}})
    assert (res.phase, res.reason) == ("Running", "Running"), res.message
    target = res.detail["targetPath"]
    assert target == os.path.join(host.config.mount_base, "pools", spec.libvirt_name)
    assert any(m.target == target and m.fstype == "ext4" for m in mounts.read_mounts())
    assert_witness(spec.libvirt_name, res.detail)
    fixtures_libvirt.virsh("vol-create-as", spec.libvirt_name, "disk.img", "2M")
    assert storage_pool.reconcile(spec, host).changed is False
    down = storage_pool.teardown(spec, host)
    assert down.phase == "Detached", down.message
    assert not any(m.target == target for m in mounts.read_mounts())
    # the filesystem and the volume on it are untouched: mount it again and look
    check = os.path.join(host.config.mount_base, "check")
    os.makedirs(check)
    subprocess.run(["mount", "-o", "ro", dev, check], check=True, timeout=30)
    try:
        assert os.path.getsize(os.path.join(check, "disk.img")) == 2 * 1024 * 1024
    finally:
        subprocess.run(["umount", check], check=True, timeout=30)


@pytest.mark.host
def test_fs_pool_never_formats_a_device(host: host_mod.Host, loop_device: Any) -> None:
    dev = loop_device("ext4")
    subprocess.run(["wipefs", "-a", "-q", dev], check=True, timeout=30)
    with open(dev, "rb") as f:
        head = f.read(1 << 20)
    _, res = apply(host, {"fs": {"device": dev, "format": "ext4"}})
    assert (res.phase, res.reason) == ("Failed", "StartFailed"), res.message
    with open(dev, "rb") as f:
        assert f.read(1 << 20) == head, "the device was written to"


@pytest.mark.host
@pytest.mark.slow
def test_netfs_glusterfs_pool(host: host_mod.Host, gluster_volume: Any) -> None:
    spec, res = apply(
        host,
        {"netfs": {"host": gluster_volume.server, "dir": f"/{gluster_volume.volume}", "format": "glusterfs"}},
    )
    assert (res.phase, res.reason) == ("Running", "Running"), res.message
    target = res.detail["targetPath"]
    assert any(m.target == target and m.fstype == "fuse.glusterfs" for m in mounts.read_mounts())
    assert_witness(spec.libvirt_name, res.detail)
    fixtures_libvirt.virsh("vol-create-as", spec.libvirt_name, "g.img", "1M")
    down = storage_pool.teardown(spec, host)
    assert down.phase == "Detached", down.message
    assert not any(m.target == target for m in mounts.read_mounts())
    assert os.path.isfile(os.path.join(gluster_volume.brick_dir, "g.img"))


@pytest.mark.host
def test_netfs_nfs_pool_where_the_kernel_has_a_client(host: host_mod.Host) -> None:
    try:
        libvirt_pools.preflight("netfs", "nfs")
    except errors.Unsupported as exc:
        pytest.skip(f"{exc.message}; the XML and the clean failure are tested elsewhere")
    export = os.environ.get("HOSTSTORAGE_TEST_NFS_EXPORT")
    if not export:
        pytest.skip("set HOSTSTORAGE_TEST_NFS_EXPORT=server:/path to an NFS export on a test host")
    server, _, path = export.partition(":")
    spec, res = apply(host, {"netfs": {"host": server, "dir": path, "format": "nfs"}})
    assert (res.phase, res.reason) == ("Running", "Running"), res.message
    target = res.detail["targetPath"]
    assert any(m.target == target and m.fstype.startswith("nfs") for m in mounts.read_mounts())
    assert_witness(spec.libvirt_name, res.detail)
    down = storage_pool.teardown(spec, host)
    assert down.phase == "Detached", down.message
    assert not any(m.target == target for m in mounts.read_mounts())


@pytest.mark.host
@pytest.mark.parametrize("chap", [False, True], ids=["no-chap", "chap"])
def test_iscsi_direct_pool_on_tgtd(
    host: host_mod.Host, tgt_target: Any, chap: bool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    t = tgt_target(chap=chap)
    block: dict[str, Any] = {"host": "127.0.0.1", "port": 3260, "target": t.iqn, "initiator": t.initiator}
    if chap:
        block["chapSecretRef"] = {"name": "chap", "namespace": "hoststorage"}
        assert isinstance(host.secret_lookup, SecretStore)
        host.secret_lookup.data[("hoststorage", "chap")] = {"username": t.username, "password": t.password}
    spec, res = apply(host, {"iscsiDirect": block})
    assert (res.phase, res.reason) == ("Running", "Running"), res.message
    # libvirt's iscsi-direct backend counts the LUN's last LBA, not its block count: one block short.
    # tgt adds its controller as LUN 0, so libvirt lists two volumes for one backing-store LUN.
    assert t.lun_bytes - 512 <= res.detail["capacity"] <= t.lun_bytes and res.detail["volumes"] >= 1
    assert_witness(spec.libvirt_name, res.detail)
    usage = storage_pool.secret_usage(spec.libvirt_name)
    if chap:
        assert usage in fixtures_libvirt.virsh("secret-list")
        assert t.password not in caplog.text
        with open(host.ledger.path) as f:
            assert t.password not in str(res.to_dict()) and t.password not in f.read()
        storage_pool.layer_for(host)._secret_prints.clear()  # type: ignore[attr-defined]  # as in a new process, which cannot read the private value back
        again = storage_pool.reconcile(spec, host)
        assert again.ready and not again.changed
    down = storage_pool.teardown(spec, host)
    assert down.phase == "Detached", down.message
    assert usage not in fixtures_libvirt.virsh("secret-list")
    assert os.path.getsize(t.lun_path) == t.lun_bytes


@pytest.mark.host
def test_iscsi_direct_wrong_chap_password_fails_cleanly(host: host_mod.Host, tgt_target: Any) -> None:
    t = tgt_target(chap=True)
    assert isinstance(host.secret_lookup, SecretStore)
    host.secret_lookup.data[("ns", "chap")] = {"username": t.username, "password": "wrong-password"}
    block = {
        "host": "127.0.0.1",
        "target": t.iqn,
        "initiator": t.initiator,
        "chapSecretRef": {"name": "chap", "namespace": "ns"},
    }
    spec, res = apply(host, {"iscsiDirect": block})
    assert (res.phase, res.reason, res.ready) == ("Failed", "StartFailed", False)
    assert "wrong-password" not in res.message
    # once the Secret is right, the next reconcile heals it
    host.secret_lookup.data[("ns", "chap")] = {"username": t.username, "password": t.password}
    assert storage_pool.reconcile(spec, host).ready


@pytest.mark.host
def test_connection_ref_on_a_posixfs_connection(host: host_mod.Host, loop_device: Any) -> None:
    dev = loop_device("ext4")
    conn_spec = storage_connection.parse(
        {
            "apiVersion": "hoststorage.io/v1alpha1",
            "kind": "StorageConnection",
            "metadata": {"name": "posix1"},
            "spec": {"type": "posixfs", "posixfs": {"source": dev, "vfsType": "ext4"}},
        }
    )
    pool_spec = storage_pool.parse(manifest({"connectionRef": {"name": "posix1", "path": "images"}}))
    waiting = storage_pool.reconcile(pool_spec, host)
    assert (waiting.phase, waiting.reason, waiting.retry) == ("Pending", "WaitingForConnection", True)
    conn = storage_connection.reconcile(conn_spec, host)
    assert conn.ready, conn.message
    mount_point = conn.detail["mountPoint"]
    os.makedirs(os.path.join(mount_point, "images"))
    res = storage_pool.reconcile(pool_spec, host)
    assert (res.phase, res.reason) == ("Running", "Running"), res.message
    assert res.detail["targetPath"] == os.path.join(os.path.realpath(mount_point), "images")
    assert_witness(pool_spec.libvirt_name, res.detail)
    entry = host.ledger.get("StoragePool", pool_spec.name)
    assert entry is not None and entry.depends_on == (("StorageConnection", "posix1"),)
    busy = storage_connection.teardown(conn_spec, host)
    assert busy.reason == "InUse", busy.message
    assert storage_pool.teardown(pool_spec, host).phase == "Detached"
    assert storage_connection.teardown(conn_spec, host).phase == "Detached"


@pytest.mark.host
def test_a_pool_used_by_a_monitor_is_in_use_and_resolve_follows_its_state(host: host_mod.Host) -> None:
    target = os.path.join(host.config.allowed_host_paths[0], "used")
    spec, res = apply(host, {"dir": {"path": target}})
    assert res.ready and storage_pool.resolve(host, spec.name) == target
    host.ledger.put(ledger.LedgerEntry("DomainMonitor", "m1", depends_on=(("StoragePool", spec.name),)))
    busy = storage_pool.teardown(spec, host)
    # As a connection in use answers (one teardown policy): Detaching, not Running + TeardownFailed.
    assert (busy.phase, busy.reason, busy.ready, busy.retry) == ("Detaching", "InUse", False, True)
    assert "DomainMonitor/m1" in busy.message
    assert spec.libvirt_name in libvirt_state()[0]
    fixtures_libvirt.virsh("pool-destroy", spec.libvirt_name)
    assert storage_pool.resolve(host, spec.name) is None, "a stopped pool has no path to monitor"
    assert storage_pool.resolve(host, "no-such-pool") is None
    host.ledger.remove("DomainMonitor", "m1")
    assert storage_pool.teardown(spec, host).phase == "Detached"


@pytest.mark.host
def test_subscribe_maps_libvirt_events_to_storage_pool_names(host: host_mod.Host) -> None:
    name = _uniq()
    target = os.path.join(host.config.allowed_host_paths[0], "sub")
    _, res = apply(host, {"dir": {"path": target}, "libvirtName": f"lv-{name}"}, name)
    assert res.ready
    keys: queue.Queue[str] = queue.Queue()
    unsubscribe = storage_pool.subscribe(host, keys.put, lambda: ["a", "b"])
    try:
        fixtures_libvirt.virsh("pool-destroy", f"lv-{name}")
        assert keys.get(timeout=5) == name
        assert storage_pool.names_for_libvirt_pool(host, "not-ours") == ["not-ours"]
    finally:
        unsubscribe()
    time.sleep(0.2)
    while not keys.empty():
        assert keys.get_nowait() == name
    fixtures_libvirt.virsh("pool-start", f"lv-{name}")
    time.sleep(0.3)
    assert keys.empty(), "an event arrived after unsubscribe"


# ------------------------------------------------------------------------ events and libvirtd restarts


class MiniAgent:
    """The agent's loop in miniature, wired through ``storage_pool.subscribe`` as the agent is: libvirt
    events and reconnects enqueue the StoragePool's name, a worker reconciles it."""

    def __init__(self, host: host_mod.Host, spec: storage_pool.PoolSpec) -> None:
        self.host, self.spec = host, spec
        self.keys: queue.Queue[str | None] = queue.Queue()
        self.results: list[tuple[float, Any]] = []
        self.unsubscribe = storage_pool.subscribe(host, self.keys.put, lambda: [spec.name])
        self.worker = threading.Thread(target=self.run, daemon=True)
        self.worker.start()

    def run(self) -> None:
        while (key := self.keys.get()) is not None:
            if key == self.spec.name:
                self.results.append((time.monotonic(), storage_pool.reconcile(self.spec, self.host)))

    def stop(self) -> None:
        self.unsubscribe()
        self.keys.put(None)
        self.worker.join(10)


def wait_running(name: str, timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if "running" in fixtures_libvirt.virsh("pool-info", name, check=False):
            return time.monotonic() - start
        time.sleep(0.02)
    raise AssertionError(f"pool {name} not running after {timeout}s")


@pytest.mark.host
def test_outside_pool_destroy_is_repaired_via_the_event(host: host_mod.Host) -> None:
    spec, res = apply(host, {"dir": {"path": os.path.join(host.config.allowed_host_paths[0], "ev")}})
    assert res.ready
    agent = MiniAgent(host, spec)
    try:
        time.sleep(0.2)
        t0 = time.monotonic()
        fixtures_libvirt.virsh("pool-destroy", spec.libvirt_name)
        took = wait_running(spec.libvirt_name, 5)
        print(f"outside pool-destroy -> running again in {took:.3f}s")
        assert took < 2.0
        deadline = time.monotonic() + 5
        while not any(t > t0 and r.changed and r.ready for t, r in agent.results):
            assert time.monotonic() < deadline, "no reconcile result after the event"
            time.sleep(0.02)
    finally:
        agent.stop()


@pytest.mark.host
@pytest.mark.slow
def test_libvirtd_restart_reconnects_and_rereconciles(host: host_mod.Host) -> None:
    target = os.path.join(host.config.allowed_host_paths[0], "rs")
    spec, res = apply(host, {"dir": {"path": target}, "autostart": False})
    assert res.ready
    agent = MiniAgent(host, spec)
    layer = storage_pool.layer_for(host)
    try:
        fixtures_libvirt.stop_libvirtd()
        try:
            deadline = time.monotonic() + 10
            while layer.connected:
                assert time.monotonic() < deadline, "libvirtd going away was not noticed"
                time.sleep(0.05)
            during = storage_pool.reconcile(spec, host)
            assert (during.phase, during.reason, during.retry) == ("Pending", "LibvirtUnavailable", True)
            # While libvirtd is away its pool loses its directory: on restart libvirtd finds the pool
            # broken and leaves it inactive, so only our re-reconcile can bring it back.
            shutil.rmtree(target)
        finally:
            t_start = time.monotonic()
            fixtures_libvirt.start_libvirtd()
        took = wait_running(spec.libvirt_name, 20)
        print(
            f"libvirtd back -> pool running again {time.monotonic() - t_start:.3f}s after restart "
            f"(observed by polling for {took:.3f}s)"
        )
        after = storage_pool.reconcile(spec, host)
        assert after.ready and os.path.isdir(target)
        assert any(r.ready and r.changed for _, r in agent.results)
    finally:
        agent.stop()
