"""Real exploits of issue 9's classes 1, 5, 6 and 10, tried through the real commands and libvirt.

Each case plays the attacker between hoststorage's steps (a symlink planted at a probe file's name, a
mount point replaced by a link, a dir pool's directory swapped between the check and libvirt's build,
a spec naming hoststorage's own directories) and asserts the host is unchanged where hoststorage does
not own it: files by device, inode, mode and content, ``virsh pool-list``, the mount table. The
``hoststorage`` command runs as a child (``python -m controller.cli`` on this tree); the class-6 race
needs a hook between libvirt calls, so it drives the pool reconciler in-process on the real libvirtd.

Cases that need root mounts or libvirt carry the ``host`` marker; the probe-file and own-directory
cases need neither and run with the unit tests.
"""

from __future__ import annotations

import json
import os
import pathlib
import secrets
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import fixtures_libvirt
import pytest
import yaml

from hostlib import checker, config, libvirt_pools, mounts
from reconcilers import host as host_mod
from reconcilers import storage_pool

IMAGE = b"QFI\xfb a VM's disk image: hoststorage must never touch it\n" * 256
API = "hoststorage.io/v1alpha1"


class Node:
    """One node's state dir and mount base (several share one allowed dir, like shared storage)."""

    def __init__(self, tmp: pathlib.Path, allowed: pathlib.Path, node: str, mount_base: str = "") -> None:
        self.state = tmp / f"state-{node}"
        self.base = mount_base or str(tmp / f"mnt-{node}")
        self.allowed, self.node = allowed, node

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("HOSTSTORAGE_") or k == "HOSTSTORAGE_QEMU_USER"}  # fmt: skip
        env.pop("NODE_NAME", None)
        env["HOSTSTORAGE_NODE_NAME"] = self.node
        env["PYTHONPATH"] = str(pathlib.Path(__file__).resolve().parent.parent)
        argv = [sys.executable, "-m", "controller.cli", "--state-dir", str(self.state), "--mount-base",
                self.base, "--allowed-host-path", str(self.allowed), *args]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, input=stdin, env=env, timeout=120,
                              check=False)  # fmt: skip

    def json(self, *args: str) -> tuple[int, list[dict[str, Any]]]:
        proc = self(*args, "-o", "json")
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, json.loads(proc.stdout)

    def ledger(self) -> list[dict[str, Any]]:
        path = self.state / "ledger.json"
        return list(json.loads(path.read_text())["entries"]) if path.exists() else []


def doc(kind: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API, "kind": kind, "metadata": {"name": name}, "spec": dict(spec)}


def manifest(tmp: pathlib.Path, *docs: dict[str, Any]) -> str:
    path = tmp / f"m-{secrets.token_hex(3)}.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def fingerprint(p: pathlib.Path) -> tuple[int, int, int, bytes]:
    st = p.lstat()
    return (st.st_dev, st.st_ino, st.st_mode, p.read_bytes())


def tree(root: pathlib.Path) -> dict[str, tuple[int, int, int]]:
    """Every name under ``root`` with its (dev, ino, mode), links not followed."""
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            st = os.lstat(os.path.join(dirpath, n))
            out[os.path.relpath(os.path.join(dirpath, n), root)] = (st.st_dev, st.st_ino, st.st_mode)
    return out


@pytest.fixture
def allowed(tmp_path: pathlib.Path) -> pathlib.Path:
    a = tmp_path / "allowed"
    (a / "domain").mkdir(parents=True)
    return a


@pytest.fixture
def image(allowed: pathlib.Path) -> pathlib.Path:
    img = allowed / "images" / "vm1.qcow2"
    img.parent.mkdir()
    img.write_bytes(IMAGE)
    img.chmod(0o640)
    return img


def monitor(name: str, target: str) -> dict[str, Any]:
    return doc("DomainMonitor", name, {"target": {"hostPath": target}, "intervalSeconds": 5})


# ------------------------------------------------------------------------------- class 1: probe links


@pytest.mark.parametrize("link_to", ["image-in-root", "image-outside"])
def test_probe_swapped_for_a_link_to_a_vm_image_after_apply_survives_delete(
    tmp_path: pathlib.Path, allowed: pathlib.Path, image: pathlib.Path, link_to: str
) -> None:
    victim = image
    if link_to == "image-outside":
        victim = tmp_path / "elsewhere" / "vm2.img"
        victim.parent.mkdir()
        victim.write_bytes(IMAGE)
    node = Node(tmp_path, allowed, "node-a")
    m = manifest(tmp_path, monitor("dm", str(allowed / "domain")))
    rc, [res] = node.json("apply", "-f", m)
    assert (rc, res["phase"]) == (0, "Healthy"), res
    probe = allowed / "domain" / checker.probe_name("node-a")
    assert probe.is_file()
    [entry] = node.ledger()
    assert entry["resource"]["probeId"] == [probe.lstat().st_dev, probe.lstat().st_ino]
    before = fingerprint(victim)
    probe.unlink()
    probe.symlink_to(victim)  # the attacker's move, after apply

    rc, [res] = node.json("delete", "-f", m)
    assert (res["phase"], res["reason"]) == ("TeardownFailed", "Conflict"), res
    assert "nothing removed" in res["message"] and "--force" in res["message"]
    assert rc != 0 and fingerprint(victim) == before and probe.is_symlink()
    assert len(node.ledger()) == 1  # kept: the next delete says the same, never follows

    rc, [res] = node.json("delete", "--force", "-f", m)
    assert (rc, res["phase"], res["reason"]) == (0, "Detached", "Forgotten"), res
    assert fingerprint(victim) == before and probe.is_symlink() and node.ledger() == []


def test_a_link_planted_at_the_probe_name_before_apply_is_never_claimed(
    tmp_path: pathlib.Path, allowed: pathlib.Path, image: pathlib.Path
) -> None:
    node = Node(tmp_path, allowed, "node-a")
    probe = allowed / "domain" / checker.probe_name("node-a")
    probe.symlink_to(image)
    before = fingerprint(image)
    m = manifest(tmp_path, monitor("dm", str(allowed / "domain")))
    node.json("apply", "-f", m)
    assert all("probeId" not in e["resource"] for e in node.ledger())
    rc, [res] = node.json("delete", "-f", m)
    assert (rc, res["phase"]) == (0, "Detached"), res
    assert fingerprint(image) == before and probe.is_symlink()


def test_nodes_on_shared_storage_each_write_and_remove_only_their_own_probe(
    tmp_path: pathlib.Path, allowed: pathlib.Path
) -> None:
    """The soak-run bug: several nodes' monitors of one shared target used one probe name, and one
    node's delete removed the probe another node was reading."""
    nodes = [Node(tmp_path, allowed, n) for n in ("node-a", "node-b", "node/../c")]
    m = manifest(tmp_path, monitor("dm", str(allowed / "domain")))
    for n in nodes:
        rc, [res] = n.json("apply", "-f", m)
        assert (rc, res["phase"]) == (0, "Healthy"), (n.node, res)
    probes = sorted(os.listdir(allowed / "domain"))
    assert probes == sorted(checker.probe_name(n.node) for n in nodes) and len(set(probes)) == 3
    b_probe = allowed / "domain" / checker.probe_name("node-b")
    b_before = fingerprint(b_probe)
    rc, [res] = nodes[0].json("delete", "-f", m)
    assert (rc, res["phase"]) == (0, "Detached"), res
    assert not (allowed / "domain" / checker.probe_name("node-a")).exists()
    assert fingerprint(b_probe) == b_before
    rc, [res] = nodes[1].json("apply", "-f", m)  # node b still checks its own file
    assert (rc, res["phase"]) == (0, "Healthy"), res


# ------------------------------------------------------------------------- class 5: own directories


@pytest.mark.parametrize("which", ["state", "inside-state", "mount-base", "holds-both"])
def test_specs_naming_hoststorage_own_dirs_are_invalid_and_change_nothing(
    tmp_path: pathlib.Path, which: str
) -> None:
    """State dir and mount base inside the allowed dir (an admin's easy mistake): a localfs path, a dir
    pool and a hostPath monitor on them are InvalidSpec (exit 2) and nothing appears there."""
    allowed = tmp_path / "allowed"
    (allowed / "hs" / "state").mkdir(parents=True)
    node = Node(tmp_path, allowed, "node-a", mount_base=str(allowed / "hs" / "mnt"))
    node.state = allowed / "hs" / "state"
    (allowed / "hs" / "mnt").mkdir()
    path = {"state": node.state, "inside-state": node.state / "x", "mount-base": allowed / "hs" / "mnt",
            "holds-both": allowed / "hs"}[which]  # fmt: skip
    before = tree(allowed)
    for d in (
        doc("StorageConnection", "l", {"type": "localfs", "localfs": {"path": str(path)}}),
        doc("StoragePool", "p", {"dir": {"path": str(path)}}),
        monitor("dm", str(path)),
    ):
        rc, [res] = node.json("apply", "-f", manifest(tmp_path, d))
        assert (rc, res["phase"], res["reason"]) == (2, "Failed", "InvalidSpec"), (d["kind"], res)
        assert "hoststorage's own directory" in res["message"], res
    assert tree(allowed) == {**before, **{k: v for k, v in tree(allowed).items() if k.startswith("hs/state")}}
    assert not any(checker.PROBE_NAME in k for k in tree(allowed))
    assert node.ledger() == []


# ------------------------------------------------------- class 6: dir pool swapped for a link (libvirt)


@pytest.fixture
def pool_host(hs_host_config: config.HostConfig, layer: libvirt_pools.PoolLayer) -> Iterator[host_mod.Host]:
    h = host_mod.Host.for_config(hs_host_config, pools=lambda: layer)
    try:
        yield h
    finally:
        for entry in h.ledger.entries(storage_pool.KIND):
            storage_pool.teardown(entry, h, force=True)


def pool_list() -> list[str]:
    return sorted(fixtures_libvirt.virsh("pool-list", "--all", "--name").split())


@pytest.mark.host
@pytest.mark.parametrize("step", ["define", "build", "start"])
def test_dir_pool_swapped_for_a_link_while_libvirt_acts_is_destroyed_and_conflict(
    pool_host: host_mod.Host, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch, step: str
) -> None:
    allowed = pathlib.Path(pool_host.config.allowed_host_paths[0])
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.img").write_bytes(IMAGE)
    outside_before = tree(outside)
    target = allowed / "pools" / "images"
    layer = pool_host.pools() if pool_host.pools else None
    assert isinstance(layer, libvirt_pools.PoolLayer)
    real = getattr(layer, step)

    def swap_then(*args: Any, **kwargs: Any) -> Any:
        if target.is_dir() and not target.is_symlink():
            target.rename(target.with_name("images.moved"))
            target.symlink_to(outside)
        return real(*args, **kwargs)

    monkeypatch.setattr(layer, step, swap_then)
    before = pool_list()
    name = f"hs-t-{secrets.token_hex(4)}"
    spec = storage_pool.parse(doc("StoragePool", name, {"dir": {"path": str(target)}}))
    res = storage_pool.reconcile(spec, pool_host)
    assert (res.phase, res.reason) == ("Failed", "Conflict"), res
    assert "destroyed and undefined" in res.message or "symlink" in res.message, res.message
    assert pool_list() == before
    assert pool_host.ledger.get(storage_pool.KIND, name) is None
    assert tree(outside) == outside_before and (outside / "secret.img").read_bytes() == IMAGE


@pytest.mark.host
def test_dir_pool_directory_replaced_after_apply_is_conflict_on_the_next_run(
    pool_host: host_mod.Host, tmp_path: pathlib.Path
) -> None:
    allowed = pathlib.Path(pool_host.config.allowed_host_paths[0])
    target = allowed / "images"
    name = f"hs-t-{secrets.token_hex(4)}"
    spec = storage_pool.parse(doc("StoragePool", name, {"dir": {"path": str(target)}}))
    res = storage_pool.reconcile(spec, pool_host)
    assert res.phase == "Running", res
    entry = pool_host.ledger.get(storage_pool.KIND, name)
    assert entry is not None and entry.resource["targetId"] == [target.stat().st_dev, target.stat().st_ino]
    before = [p for p in pool_list() if p != spec.libvirt_name]
    outside = tmp_path / "outside"
    outside.mkdir()
    target.rename(allowed / "images.moved")
    target.symlink_to(outside)
    res = storage_pool.reconcile(spec, pool_host)
    assert (res.phase, res.reason) == ("Failed", "Conflict"), res
    assert pool_list() == before and list(outside.iterdir()) == []


# ------------------------------------------------- class 10: a mount point replaced by a link (mounts)


@pytest.mark.host
def test_mount_point_replaced_by_a_link_after_apply_is_conflict_and_force_forgets(
    mount_base: str, loop_device: Callable[..., str], tmp_path: pathlib.Path, allowed: pathlib.Path
) -> None:
    dev = loop_device("ext4")
    node = Node(tmp_path, allowed, "node-a", mount_base=mount_base)
    spec = {"type": "posixfs", "posixfs": {"source": dev, "vfsType": "ext4"}}
    m = manifest(tmp_path, doc("StorageConnection", "disk", spec))
    rc, [res] = node.json("apply", "-f", m)
    assert (rc, res["phase"]) == (0, "Connected"), res
    mp = pathlib.Path(res["connection"]["mountPoint"])
    subprocess.run(["umount", str(mp)], check=True, timeout=30)
    mp.rmdir()
    victim = tmp_path / "victim-dir"
    victim.mkdir()
    (victim / "vm.img").write_bytes(IMAGE)
    victim_before = tree(victim)
    mp.symlink_to(victim)
    table_before = sorted((r.source, r.target) for r in mounts.read_mounts())

    for _ in range(2):  # the same answer every time: not InvalidSpec, nothing followed
        rc, [res] = node.json("delete", "-f", m)
        assert (res["phase"], res["reason"]) == ("TeardownFailed", "Conflict"), res
        assert rc not in (0, 2) and "--force" in res["message"]
    rc, [res] = node.json("delete", "--force", "-f", m)
    assert (rc, res["phase"], res["reason"]) == (0, "Detached", "Forgotten"), res
    assert node.ledger() == [] and mp.is_symlink()
    assert tree(victim) == victim_before and (victim / "vm.img").read_bytes() == IMAGE
    assert sorted((r.source, r.target) for r in mounts.read_mounts()) == table_before
    mp.unlink()


# ------------------------------------------------------ class 10: every kind checks its apiVersion


@pytest.mark.parametrize("kind", ["StorageConnection", "StoragePool", "DomainMonitor"])
@pytest.mark.parametrize("api", ["hoststorage.io/v1", "v1", "evil.io/v1alpha1"])
def test_a_wrong_api_version_is_invalid_for_every_kind_and_changes_nothing(
    tmp_path: pathlib.Path, allowed: pathlib.Path, kind: str, api: str
) -> None:
    """A DomainMonitor used to accept any apiVersion while a StorageConnection refused a wrong one."""
    node = Node(tmp_path, allowed, "node-a")
    spec = {
        "StorageConnection": {"type": "localfs", "localfs": {"path": str(allowed / "domain")}},
        "StoragePool": {"dir": {"path": str(allowed / "domain")}},
        "DomainMonitor": {"target": {"hostPath": str(allowed / "domain")}, "intervalSeconds": 5},
    }[kind]
    before = tree(tmp_path)
    rc, [res] = node.json("apply", "-f", manifest(tmp_path, {**doc(kind, "x", spec), "apiVersion": api}))
    assert (rc, res["phase"], res["reason"]) == (2, "Failed", "InvalidSpec"), res
    assert "apiVersion" in res["message"], res
    after = {k: v for k, v in tree(tmp_path).items() if not k.startswith(("state-node-a", "m-"))}
    assert after == {k: v for k, v in before.items() if not k.startswith("m-")} and node.ledger() == []
