"""Issue 9 through the agent: the probe-link, foreign-pool and stacked-mount exploits, tried on real
agent processes (the e2e harness), each asserting the host unchanged where hoststorage does not own
it: files by device, inode and content, the mount table, ``virsh pool-list --all`` with UUIDs."""

from __future__ import annotations

import contextlib
import os
import pathlib
import secrets
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from fixtures_kube import Cluster, wait_until

from hostlib import checker, mounts

pytestmark = [pytest.mark.e2e, pytest.mark.host]

API = "hoststorage.io/v1alpha1"
IMAGE = b"QFI\xfb a VM's disk image: hoststorage must never touch it\n" * 256


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def only(cluster: Cluster) -> dict[str, Any]:
    return {"matchLabels": {"kubernetes.io/hostname": cluster.nodes[0]}}


def fingerprint(p: pathlib.Path) -> tuple[int, int, int, bytes]:
    st = p.lstat()
    return (st.st_dev, st.st_ino, st.st_mode, p.read_bytes())


def table(base: str) -> list[tuple[int, str, str, str]]:
    return sorted((r.mount_id, r.target, r.source, r.fstype) for r in mounts.mounts_under(base))


def state(cluster: Cluster, kind: str, name: str) -> dict[str, Any]:
    return (cluster.states(name, kind=kind).get(cluster.nodes[0]) or {}).get("status") or {}


def ready(s: dict[str, Any]) -> dict[str, Any]:
    """The Ready condition of a child's status: its reason and message say why."""
    return next((c for c in s.get("conditions") or [] if c.get("type") == "Ready"), {})


def wait_state(cluster: Cluster, kind: str, name: str, pred: Any, what: str, timeout: float = 60) -> Any:
    try:
        return wait_until(lambda: (s := state(cluster, kind, name)) and pred(s) and s, timeout, what)
    except AssertionError:
        print(cluster.dump_logs())
        raise


def wait_gone(cluster: Cluster, resource: str, name: str, timeout: float = 60) -> None:
    wait_until(lambda: cluster.get(resource, name) is None, timeout, f"{resource}/{name} deleted")


def virsh(*args: str, check: bool = True) -> str:
    proc = subprocess.run(["virsh", "-c", "qemu:///system", *args], capture_output=True, text=True,
                          timeout=30, check=check)  # fmt: skip
    return proc.stdout


def pools() -> list[tuple[str, str]]:
    names = virsh("pool-list", "--all", "--name").split()
    return sorted((n, virsh("pool-uuid", n, check=False).strip()) for n in names)


def test_probe_link_planted_before_apply_never_reaches_the_victim(kube_cluster: Cluster) -> None:
    node, mon = kube_cluster.nodes[0], uniq("trust-dm")
    target = kube_cluster.allowed / mon
    target.mkdir()
    victim = kube_cluster.allowed / f"{mon}-vm.qcow2"
    victim.write_bytes(IMAGE)
    probe = target / checker.probe_name(node)
    probe.symlink_to(victim)
    before = fingerprint(victim)
    kube_cluster.apply({"apiVersion": API, "kind": "DomainMonitor", "metadata": {"name": mon},
                        "spec": {"nodeSelector": only(kube_cluster), "target": {"hostPath": str(target)},
                                 "intervalSeconds": 2}})  # fmt: skip
    seen = wait_state(kube_cluster, "DomainMonitor", mon, lambda s: s.get("phase") not in (None, "Pending"),
                      "the monitor's result")  # fmt: skip
    assert seen["phase"] != "Healthy", seen  # the planted link is not our probe: the condition says so
    assert fingerprint(victim) == before and probe.is_symlink()
    kube_cluster.kubectl("delete", "dmon", mon, "--wait=false")
    wait_gone(kube_cluster, "dmon", mon)
    assert fingerprint(victim) == before and probe.is_symlink() and os.readlink(probe) == str(victim)


@contextlib.contextmanager
def tmpfs_on(target: str) -> Iterator[None]:
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "attacker", target], check=True, timeout=30)
    try:
        yield
    finally:
        subprocess.run(["umount", "--no-canonicalize", target], check=False, timeout=30)


def test_a_foreign_mount_on_top_is_conflict_and_delete_unmounts_nothing(
    kube_cluster: Cluster, loop_device: Any
) -> None:
    dev, name = loop_device("ext4"), uniq("trust-stack")
    agent = kube_cluster.agents[kube_cluster.nodes[0]]
    kube_cluster.apply({"apiVersion": API, "kind": "StorageConnection", "metadata": {"name": name},
                        "spec": {"nodeSelector": only(kube_cluster), "type": "posixfs",
                                 "posixfs": {"source": dev, "vfsType": "ext4"}}})  # fmt: skip
    st = wait_state(
        kube_cluster, "StorageConnection", name, lambda s: s.get("phase") == "Connected", "Connected"
    )
    mp = st["connection"]["mountPoint"]
    with tmpfs_on(mp):
        precious = pathlib.Path(mp, "precious")
        precious.write_bytes(b"the attacker's data")
        mtab, data = table(agent.mount_base), fingerprint(precious)
        covered = ("Conflict", "Covered")
        wait_state(kube_cluster, "StorageConnection", name, lambda s: ready(s).get("reason") in covered,
                   "Conflict after a resync")  # fmt: skip
        kube_cluster.kubectl("delete", "sconn", name, "--wait=false")
        down = wait_state(kube_cluster, "StorageConnection", name,
                          lambda s: s.get("phase") == "TeardownFailed", "TeardownFailed")  # fmt: skip
        assert ready(down).get("reason") in covered and "on top" in ready(down).get("message", ""), down
        assert table(agent.mount_base) == mtab and fingerprint(precious) == data
    wait_gone(kube_cluster, "sconn", name)  # the foreign mount gone: ours is torn down now
    wait_until(lambda: not mounts.mounts_at(mp), 30, "our mount unmounted")


def test_an_admins_pool_of_the_same_name_is_conflict_and_untouched(
    kube_cluster: Cluster, libvirtd: str, tmp_path: pathlib.Path
) -> None:
    name = uniq("trust-pool")
    admins = tmp_path / "admins-pool"
    admins.mkdir()
    (admins / "disk.img").write_bytes(IMAGE)
    virsh("pool-define-as", name, "dir", "--target", str(admins))
    try:
        virsh("pool-start", name)
        before, files = pools(), fingerprint(admins / "disk.img")
        path = kube_cluster.allowed / name
        path.mkdir()
        spec = {"nodeSelector": only(kube_cluster), "dir": {"path": str(path)}}
        meta = {"name": name}
        kube_cluster.apply({"apiVersion": API, "kind": "StoragePool", "metadata": meta, "spec": spec})
        st = wait_state(
            kube_cluster, "StoragePool", name, lambda s: ready(s).get("reason") == "Conflict", "Conflict"
        )
        assert st["phase"] == "Failed", st
        kube_cluster.kubectl("delete", "spool", name, "--wait=false")
        wait_gone(kube_cluster, "spool", name)
        assert pools() == before and fingerprint(admins / "disk.img") == files
        assert "running" in virsh("pool-info", name)
    finally:
        virsh("pool-destroy", name, check=False)
        virsh("pool-undefine", name, check=False)
