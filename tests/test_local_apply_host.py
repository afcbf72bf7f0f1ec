"""``hoststorage apply|delete|status`` on this host, through the installed console script.

Real loop devices with ext4 and xfs, real localfs links, a temp state dir and mount base per test.
Covers idempotency ("no change"), drift repair, delete, Retain, InUse with a process holding a file
open (and --force), the ledger (foreign mounts are never unmounted), dry runs (exact mount argv,
nothing changed) and the clean failure of nfs/iscsi on this kernel.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

import pytest
import yaml
from fixtures_storage import holding_open

from hostlib import mounts

pytestmark = [pytest.mark.host]

HOSTSTORAGE = str(pathlib.Path(sys.executable).parent / "hoststorage")


class Cli:
    """Runs the real command against one temp state dir / mount base."""

    def __init__(self, state: str, base: str, allowed: str) -> None:
        self.state, self.base, self.allowed = state, base, allowed

    def __call__(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        argv = [HOSTSTORAGE, "--state-dir", self.state, "--mount-base", self.base,
                "--allowed-host-path", self.allowed, *args]  # fmt: skip
        return subprocess.run(argv, capture_output=True, text=True, input=stdin, timeout=120, check=False)

    def json(self, *args: str, stdin: str | None = None) -> tuple[int, list[dict[str, Any]]]:
        proc = self(*args, "-o", "json", stdin=stdin)
        assert "Traceback" not in proc.stderr, proc.stderr
        return proc.returncode, json.loads(proc.stdout)


@pytest.fixture
def cli(mount_base: str, tmp_path: pathlib.Path) -> Cli:
    allowed = tmp_path / "allowed"
    allowed.mkdir()
    return Cli(str(tmp_path / "state"), mount_base, str(allowed))


def conn(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "hoststorage.io/v1alpha1", "kind": "StorageConnection", "metadata": {"name": name},
            "spec": spec}  # fmt: skip


def write(tmp_path: pathlib.Path, *docs: dict[str, Any], name: str = "m.yaml") -> str:
    path = tmp_path / name
    path.write_text(yaml.safe_dump_all(docs))
    return str(path)


def posix(dev: str, fstype: str = "ext4", **extra: Any) -> dict[str, Any]:
    return {"type": "posixfs", "posixfs": {"source": dev, "vfsType": fstype}, **extra}


def mounted_at(target: str) -> list[mounts.MountRecord]:
    return mounts.mounts_at(target)


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_posixfs_apply_is_idempotent_and_says_so(
    cli: Cli, loop_device: Callable[..., str], tmp_path: pathlib.Path, fstype: str
) -> None:
    dev = loop_device(fstype)
    spec = {"type": "posixfs", "posixfs": {"source": dev, "vfsType": fstype, "options": ["noatime"]}}
    manifest = write(tmp_path, conn("disk", spec))
    rc, out = cli.json("apply", "-f", manifest)
    assert rc == 0, out
    [item] = out
    assert (item["kind"], item["name"], item["phase"], item["ready"], item["reason"]) == (
        "StorageConnection",
        "disk",
        "Connected",
        True,
        "Connected",
    )
    target = item["connection"]["mountPoint"]
    assert target == os.path.join(cli.base, "_dev_" + os.path.basename(dev))
    [rec] = mounted_at(target)
    assert rec.fstype == fstype and "nosuid" in rec.options and "nodev" in rec.options
    assert item["changed"] is True

    before = pathlib.Path("/proc/self/mountinfo").read_text()
    again = cli("apply", "-f", manifest)
    assert again.returncode == 0 and "no change" in again.stdout
    rc, out = cli.json("apply", "-f", manifest, "--dry-run")
    assert rc == 0 and out[0]["actions"] == [] and out[0]["phase"] == "Connected"
    assert "no actions" in cli("apply", "-f", manifest, "--dry-run").stdout
    assert len(mounted_at(target)) == 1
    assert [ln for ln in before.splitlines() if target in ln] == [
        ln for ln in pathlib.Path("/proc/self/mountinfo").read_text().splitlines() if target in ln
    ]


def test_dry_run_prints_the_mount_argv_and_changes_nothing(
    cli: Cli, loop_device: Callable[..., str], tmp_path: pathlib.Path
) -> None:
    dev = loop_device("ext4")
    manifest = write(tmp_path, conn("disk", posix(dev)))
    rc, out = cli.json("apply", "-f", manifest, "--dry-run")
    assert rc == 0
    target = os.path.join(cli.base, "_dev_" + os.path.basename(dev))
    assert out[0]["phase"] == "Pending" and out[0]["ready"] is False
    assert out[0]["actions"] == [
        {"verb": "mkdir", "description": f"create mount point {target}", "path": target},
        {"verb": "mount", "description": f"mount {dev} on {target}", "path": target,
         "argv": ["mount", "-t", "ext4", "-o", "nosuid,nodev", dev, target]},
    ]  # fmt: skip
    assert not os.path.exists(target) and not mounted_at(target)
    assert not os.path.exists(cli.state), "a dry run must not even create the state dir"


def test_lost_mount_is_reported_and_restored(
    cli: Cli, loop_device: Callable[..., str], tmp_path: pathlib.Path
) -> None:
    manifest = write(tmp_path, conn("disk", posix(loop_device("ext4"))))
    target = cli.json("apply", "-f", manifest)[1][0]["connection"]["mountPoint"]
    subprocess.run(["umount", target], check=True)
    rc, status = cli.json("status")
    assert rc == 1 and status[0]["phase"] == "Pending" and status[0]["reason"] == "NotConnected"
    rc, out = cli.json("apply", "-f", manifest)
    assert rc == 0 and out[0]["changed"] is True and mounted_at(target)
    rc, status = cli.json("status")
    assert rc == 0 and status[0]["phase"] == "Connected" and status[0]["connection"]["mountPoint"] == target


def test_delete_unmounts_removes_the_mount_point_and_forgets(
    cli: Cli, loop_device: Callable[..., str], tmp_path: pathlib.Path
) -> None:
    manifest = write(tmp_path, conn("disk", posix(loop_device("ext4"))))
    target = cli.json("apply", "-f", manifest)[1][0]["connection"]["mountPoint"]
    rc, out = cli.json("delete", "-f", manifest)
    assert rc == 0 and out[0]["phase"] == "Detached" and out[0]["reason"] == "Detached"
    assert not mounted_at(target) and not os.path.exists(target)
    assert json.loads(pathlib.Path(cli.state, "ledger.json").read_text())["entries"] == []
    again = cli("delete", "-f", manifest)
    assert again.returncode == 0 and "nothing to tear down" in again.stdout
    assert cli.json("status") == (0, [])


def test_delete_dry_run_lists_the_umount_argv_and_changes_nothing(
    cli: Cli, loop_device: Callable[..., str], tmp_path: pathlib.Path
) -> None:
    dir_path = pathlib.Path(cli.allowed, "d")
    dir_path.mkdir()
    monitor = {
        "apiVersion": "hoststorage.io/v1alpha1",
        "kind": "DomainMonitor",
        "metadata": {"name": "health"},
        "spec": {"target": {"connectionRef": {"name": "local"}}},
    }
    docs = [
        conn("disk", posix(loop_device("ext4"))),
        conn("kept", posix(loop_device("ext4"), deletionPolicy="Retain")),
        conn("local", {"type": "localfs", "localfs": {"path": str(dir_path)}}),
        monitor,
    ]
    manifest = write(tmp_path, *docs)
    rc, applied = cli.json("apply", "-f", manifest)
    assert rc == 0, applied
    target = applied[0]["connection"]["mountPoint"]
    kept = applied[1]["connection"]["mountPoint"]
    link = applied[2]["connection"]["mountPoint"]
    probe = applied[3]["monitor"]["path"]
    ledger_before = pathlib.Path(cli.state, "ledger.json").read_bytes()
    table_before = sorted((r.source, r.target) for r in mounts.read_mounts())

    rc, out = cli.json("delete", "-f", manifest, "--dry-run")
    assert rc == 0, out
    by_name = {r["name"]: r for r in out}
    assert {n: (r["phase"], r["reason"]) for n, r in by_name.items()} == {
        "disk": ("Detaching", "WouldDetach"),
        "kept": ("Detaching", "WouldRetain"),
        "local": ("Detaching", "WouldDetach"),  # not InUse: the monitor in the same file goes first
        "health": ("Detaching", "WouldDetach"),
    }
    assert by_name["disk"]["actions"] == [
        {
            "verb": "umount",
            "description": f"unmount {target}",
            "argv": ["umount", "--no-canonicalize", target],
            "path": target,
        },
        {"verb": "rmdir", "description": f"remove mount point {target}", "path": target},
        {"verb": "forget", "description": "remove StorageConnection/disk from the ledger"},
    ]
    assert [a["verb"] for a in by_name["kept"]["actions"]] == ["forget"]
    assert [a["verb"] for a in by_name["local"]["actions"]] == ["unlink", "forget"]
    assert by_name["health"]["actions"][0] == {
        "verb": "unlink", "description": f"remove the probe file {probe}", "path": probe
    }
    # Nothing changed: mounts, link, probe file and the ledger byte for byte.
    assert sorted((r.source, r.target) for r in mounts.read_mounts()) == table_before
    assert mounted_at(target) and mounted_at(kept) and os.path.islink(link) and os.path.exists(probe)
    assert pathlib.Path(cli.state, "ledger.json").read_bytes() == ledger_before

    # The connection alone, its monitor left applied: the real delete would stop at InUse, so must this.
    alone = write(tmp_path, docs[2], name="alone.yaml")
    rc, out = cli.json("delete", "-f", alone, "--dry-run")
    assert rc == 1 and (out[0]["reason"], out[0]["actions"]) == ("InUse", [])
    table = cli("delete", "-f", manifest, "--dry-run")
    assert table.returncode == 0 and "dry run: 8 planned action(s); nothing was changed" in table.stdout

    rc, out = cli.json("delete", "-f", manifest)
    assert rc == 0 and {r["phase"] for r in out} == {"Detached"}
    assert not mounted_at(target) and mounted_at(kept)
    subprocess.run(["umount", kept], check=True)
    empty = cli("delete", "-f", manifest, "--dry-run")
    assert empty.returncode == 0 and "dry run: nothing to tear down" in empty.stdout


def test_retain_leaves_the_mount_and_forgets_it(
    cli: Cli, loop_device: Callable[..., str], tmp_path: pathlib.Path
) -> None:
    manifest = write(tmp_path, conn("disk", posix(loop_device("ext4"), deletionPolicy="Retain")))
    target = cli.json("apply", "-f", manifest)[1][0]["connection"]["mountPoint"]
    rc, out = cli.json("delete", "-f", manifest)
    assert rc == 0 and (out[0]["phase"], out[0]["reason"]) == ("Detached", "Retained")
    assert mounted_at(target)
    # Forgotten: a later apply finds it mounted and treats it as someone else's.
    rc, out = cli.json("apply", "-f", manifest)
    assert rc == 0 and out[0]["connection"]["preexisting"] is True
    assert cli.json("delete", "-f", manifest)[1][0]["reason"] == "Retained" and mounted_at(target)


def test_busy_mount_is_in_use_until_forced(
    cli: Cli, loop_device: Callable[..., str], tmp_path: pathlib.Path
) -> None:
    manifest = write(tmp_path, conn("disk", posix(loop_device("ext4"))))
    target = cli.json("apply", "-f", manifest)[1][0]["connection"]["mountPoint"]
    busy_file = os.path.join(target, "busy")
    pathlib.Path(busy_file).write_text("x")
    with holding_open(busy_file) as pid:
        rc, out = cli.json("delete", "-f", manifest)
        assert rc == 1 and (out[0]["phase"], out[0]["reason"]) == ("Detaching", "InUse")
        assert str(pid) in out[0]["message"]
        assert mounted_at(target)
        assert cli.json("status")[1][0]["phase"] == "Connected"
        rc, out = cli.json("delete", "-f", manifest, "--force")
        assert rc == 0 and out[0]["phase"] == "Detached"
        assert not mounted_at(target)


def test_foreign_mounts_are_never_touched(
    cli: Cli, loop_device: Callable[..., str], tmp_path: pathlib.Path
) -> None:
    ours, theirs, same = loop_device("ext4"), loop_device("ext4"), loop_device("ext4")
    # Someone else's mount elsewhere under the base, and one on exactly the target our spec would use.
    elsewhere = os.path.join(cli.base, "someone-else")
    os.mkdir(elsewhere)
    subprocess.run(["mount", theirs, elsewhere], check=True)
    squatted = os.path.join(cli.base, "_dev_" + os.path.basename(same))
    os.mkdir(squatted)
    subprocess.run(["mount", ours, squatted], check=True)
    manifest = write(tmp_path, conn("a", posix(ours)), conn("b", posix(same)))
    rc, out = cli.json("apply", "-f", manifest)
    by_name = {o["name"]: o for o in out}
    assert rc == 1
    assert by_name["b"]["reason"] == "Conflict" and "already has" in by_name["b"]["message"]
    # a's device is the one mounted on b's mount point: a source in use elsewhere is never mounted again
    assert by_name["a"]["reason"] == "SourceInUse" and f"is mounted on {squatted}" in by_name["a"]["message"]
    assert cli.json("delete", "-f", manifest)[0] == 0
    assert mounted_at(elsewhere) and mounted_at(squatted)
    assert not mounted_at(os.path.join(cli.base, "_dev_" + os.path.basename(ours)))


def test_mount_that_was_already_there_is_used_but_not_unmounted(
    cli: Cli, loop_device: Callable[..., str], tmp_path: pathlib.Path
) -> None:
    dev = loop_device("ext4")
    target = os.path.join(cli.base, "_dev_" + os.path.basename(dev))
    os.mkdir(target)
    subprocess.run(["mount", dev, target], check=True)
    manifest = write(tmp_path, conn("disk", posix(dev)))
    rc, out = cli.json("apply", "-f", manifest)
    assert rc == 0 and out[0]["connection"]["preexisting"] is True and out[0]["changed"] is False
    rc, out = cli.json("delete", "-f", manifest)
    assert rc == 0 and out[0]["reason"] == "NotOwned"
    assert mounted_at(target)


def test_localfs_link_apply_delete(cli: Cli, tmp_path: pathlib.Path) -> None:
    data = pathlib.Path(cli.allowed, "images")
    data.mkdir()
    manifest = write(tmp_path, conn("local", {"type": "localfs", "localfs": {"path": str(data)}}))
    rc, out = cli.json("apply", "-f", manifest)
    link = out[0]["connection"]["mountPoint"]
    assert rc == 0 and os.readlink(link) == str(data)
    assert "no change" in cli("apply", "-f", manifest).stdout
    os.unlink(link)
    assert cli.json("apply", "-f", manifest)[1][0]["changed"] is True and os.path.islink(link)
    assert cli.json("delete", "-f", manifest)[0] == 0 and not os.path.lexists(link) and data.is_dir()


def test_stdin_multi_document_secrets_and_unknown_kinds(cli: Cli) -> None:
    text = """
apiVersion: v1
kind: Secret
metadata: {name: chap}
stringData: {username: alice, password: Never-Print-Me-42}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: other}
---
apiVersion: hoststorage.io/v1alpha1
kind: StorageConnection
metadata: {name: lun}
spec:
  type: iscsi
  iscsi: {portal: 127.0.0.1, target: "iqn.2003-01.org.example:t1", chapSecretRef: {name: chap}}
"""
    proc = cli("apply", "-f", "-", "--dry-run", "-o", "json", stdin=text)
    assert "skipped stdin#2: kind 'ConfigMap'" in proc.stderr
    assert "Never-Print-Me-42" not in proc.stdout + proc.stderr
    [item] = json.loads(proc.stdout)
    argvs = [a.get("argv", []) for a in item["actions"]]
    assert any("node.session.auth.password" in a and "***" in a for a in argvs), argvs
    assert item["connection"]["devicePath"].startswith("/dev/disk/by-path/ip-127.0.0.1:3260-iscsi-")


def test_nfs_and_iscsi_fail_cleanly_on_this_kernel(cli: Cli, tmp_path: pathlib.Path) -> None:
    if os.path.exists("/sys/module/nfs") or os.path.exists("/sys/module/iscsi_tcp"):
        pytest.skip(
            "this kernel has an NFS client or iSCSI initiator: the clean-failure path is not reachable"
        )
    manifest = write(
        tmp_path,
        conn("n", {"type": "nfs", "nfs": {"server": "127.0.0.1", "export": "/exports/x"}}),
        conn(
            "i", {"type": "iscsi", "iscsi": {"portal": "127.0.0.1", "target": "iqn.2003-01.org.example:t1"}}
        ),
    )
    proc = cli("apply", "-f", manifest, "-o", "json")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    by_name = {o["name"]: o for o in json.loads(proc.stdout)}
    for name in ("n", "i"):
        assert by_name[name]["phase"] == "Failed"
        assert by_name[name]["reason"] in ("Unsupported", "MountFailed", "LoginFailed")
    assert "mount.nfs" in by_name["n"]["message"] or "nfs" in by_name["n"]["message"]
    assert os.listdir(cli.base) == [], "the failed mount removed the directory it made"
    assert cli.json("status") == (0, [])


def test_an_invalid_object_exits_2_and_the_valid_one_is_applied(cli: Cli, tmp_path: pathlib.Path) -> None:
    data = pathlib.Path(cli.allowed, "d")
    data.mkdir()
    manifest = write(tmp_path, conn("ok", {"type": "localfs", "localfs": {"path": str(data)}}),
                     conn("bad", {"type": "localfs", "localfs": {"path": "/etc"}}))  # fmt: skip
    rc, out = cli.json("apply", "-f", manifest)
    assert rc == 2
    assert [(o["name"], o["ready"], o["reason"]) for o in out] == [("ok", True, "Connected"),
                                                                  ("bad", False, "InvalidSpec")]  # fmt: skip


def _names(results: Sequence[dict[str, Any]]) -> list[str]:
    return [r["name"] for r in results]


def test_table_and_yaml_outputs(cli: Cli, tmp_path: pathlib.Path) -> None:
    data = pathlib.Path(cli.allowed, "d")
    data.mkdir()
    manifest = write(tmp_path, conn("local", {"type": "localfs", "localfs": {"path": str(data)}}))
    table = cli("apply", "-f", manifest)
    assert table.stdout.splitlines()[0].split() == [
        "KIND",
        "NAME",
        "PHASE",
        "READY",
        "REASON",
        "TARGET",
        "MESSAGE",
    ]
    assert "Connected" in table.stdout.splitlines()[1]
    out = yaml.safe_load(cli("status", "-o", "yaml").stdout)
    assert _names(out) == ["local"] and out[0]["phase"] == "Connected"


@pytest.mark.slow
def test_glusterfs_fuse_mount_through_the_command(
    cli: Cli, gluster_volume: Any, tmp_path: pathlib.Path
) -> None:
    spec = {
        "type": "glusterfs",
        "glusterfs": {"server": gluster_volume.server, "volume": gluster_volume.volume},
    }
    manifest = write(tmp_path, conn("gv", spec))
    rc, out = cli.json("apply", "-f", manifest)
    assert rc == 0, out
    target = out[0]["connection"]["mountPoint"]
    assert target.startswith(os.path.join(cli.base, "glusterSD") + "/")
    [rec] = mounted_at(target)
    assert rec.fstype == "fuse.glusterfs"
    assert "no change" in cli("apply", "-f", manifest).stdout
    rc, out = cli.json("delete", "-f", manifest)
    assert rc == 0 and out[0]["phase"] == "Detached" and not mounted_at(target)
