"""The bad-input corpus: every malformed or hostile StorageConnection is refused with a specific InvalidSpec.

Each case goes through ``hoststorage apply`` (in this process, the real code path from argv to the
reconciler and the real host layer) on a host that already owns one connection, and must:
- report ``phase: Failed``, ``reason: InvalidSpec`` and a message naming the field and the problem;
- leave the mount table, the mount base listing and the ledger file exactly as they were.

The mount table is machine-wide and other test sessions mount things under the temp dir at the same
time, so records under the temp dir that are not ours are left out of the comparison; everything else
on the host, and everything under this test's directories, must be identical.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pathlib
import tempfile
from typing import Any

import pytest
import yaml

from controller import cli

pytestmark = [pytest.mark.host]

LONG = "a" * 2000


def sc(spec: Any, name: str = "bad", **meta: Any) -> dict[str, Any]:
    return {"apiVersion": "hoststorage.io/v1alpha1", "kind": "StorageConnection",
            "metadata": {"name": name, **meta}, "spec": spec}  # fmt: skip


def posix(source: str = "/dev/loop0", vfs: str = "ext4", **block: Any) -> dict[str, Any]:
    return {"type": "posixfs", "posixfs": {"source": source, "vfsType": vfs, **block}}


def local(path: str) -> dict[str, Any]:
    return {"type": "localfs", "localfs": {"path": path}}


def nfs(**block: Any) -> dict[str, Any]:
    return {"type": "nfs", "nfs": {"server": "nfs.example", "export": "/exports/a", **block}}


IQN = "iqn.2003-01.org.example:t1"

# (id, manifest, field named in the message, words of the message). "{allowed}" is the allowed host path.
CORPUS: list[tuple[str, dict[str, Any], str, str]] = [
    # path traversal and escapes
    ("localfs-dotdot", sc(local("{allowed}/../../etc")), "spec.localfs.path", "contains a '..' component"),
    ("localfs-symlink-escape", sc(local("{allowed}/escape")), "spec.localfs.path", "outside the allowed host paths"),  # noqa: E501
    ("localfs-outside-allowed", sc(local("/etc")), "spec.localfs.path", "outside the allowed host paths"),
    ("localfs-relative", sc(local("data/images")), "spec.localfs.path", "is not an absolute path"),
    ("nfs-export-dotdot", sc(nfs(export="/exports/../../etc")), "spec.nfs.export", "contains a '..' component"),  # noqa: E501
    ("posixfs-device-dotdot", sc(posix("/dev/../etc/shadow")), "spec.posixfs.source", "contains a '..' component"),  # noqa: E501
    ("posixfs-remote-dotdot", sc(posix("srv:/a/../../b", "cifs")), "spec.posixfs.source", "'..' component"),
    ("posixfs-not-a-device", sc(posix("/etc/passwd")), "spec.posixfs.source", "a device path under /dev"),
    # option injection
    ("option-exec", sc(posix(options=["exec"])), "spec.posixfs.options[0]", "mount option 'exec' is not allowed"),  # noqa: E501
    ("option-suid", sc(posix(options=["ro", "suid"])), "spec.posixfs.options[1]", "'suid' is not allowed"),
    ("option-bind", sc(nfs(options=["bind"])), "spec.nfs.options[0]", "'bind' is not allowed"),
    ("option-remount", sc(posix(options=["remount"])), "spec.posixfs.options[0]", "'remount' is not allowed"),
    ("option-dash", sc(posix(options=["-o"])), "spec.posixfs.options[0]", "starts with '-'"),
    ("option-comma", sc(posix(options=["ro,exec"])), "spec.posixfs.options[0]", "contains a comma"),
    ("option-nul", sc(posix(options=["ro\0exec"])), "spec.posixfs.options[0]", "contains a NUL or control"),
    ("option-shell", sc(posix(options=["noatime;reboot"])), "spec.posixfs.options[0]", "does not match"),
    ("option-subst", sc(posix(options=["$(reboot)"])), "spec.posixfs.options[0]", "does not match"),
    ("option-x-mount", sc(posix(options=["X-mount.mkdir"])), "spec.posixfs.options[0]", "is not allowed"),
    ("source-dash", sc(posix("-oremount")), "spec.posixfs.source", "starts with '-'"),
    ("server-shell", sc(nfs(server="srv;reboot")), "spec.nfs.server", "not a valid hostname"),
    ("server-dash", sc(nfs(server="-oexec")), "spec.nfs.server", "starts with '-'"),
    ("vfstype-injection", sc(posix(vfs="ext4 -o exec")), "spec.posixfs.vfsType", "not a file system type"),
    ("vfstype-bind", sc(posix(vfs="bind")), "spec.posixfs.vfsType", "bind mounts are not allowed"),
    ("gluster-volume-dotdot", sc({"type": "glusterfs", "glusterfs": {"server": "g", "volume": "../v"}}),
     "spec.glusterfs.volume", "does not match"),
    ("iscsi-target-shell", sc({"type": "iscsi", "iscsi": {"portal": "h", "target": f"{IQN};rm"}}),
     "spec.iscsi.target", "is not an iSCSI name"),
    ("control-char", sc(local("{allowed}/a\nb")), "spec.localfs.path", "control character"),
    ("nul-in-path", sc(local("{allowed}/a\0b")), "spec.localfs.path", "contains a NUL or control"),
    # over-long values
    ("long-path", sc(local("/" + LONG)), "spec.localfs.path", "the limit is 1024"),
    ("long-server", sc(nfs(server="s" * 300)), "spec.nfs.server", "the limit is 255"),
    ("too-many-options", sc(posix(options=["noatime"] * 40)), "spec.posixfs.options", "the limit is 32"),
    ("long-name", sc(local("/srv"), name="n" * 300), "metadata.name", "the limit is 253"),
    # wrong types
    ("type-number", sc({"type": 5}), "spec.type", "5 is not one of"),
    ("timeo-string", sc(nfs(timeo="100")), "spec.nfs.timeo", "must be an integer, got string"),
    ("options-string", sc(posix(options="noatime")), "spec.posixfs.options", "must be a list, got string"),
    ("lun-boolean", sc({"type": "iscsi", "iscsi": {"portal": "h", "target": IQN, "lun": True}}),
     "spec.iscsi.lun", "must be an integer, got boolean"),
    ("spec-list", sc(["posixfs"]), "spec", "must be an object, got list"),
    ("selector-operator", sc({**local("/srv"), "nodeSelector": {"matchExpressions": [
        {"key": "a", "operator": "Maybe"}]}}), "spec.nodeSelector.matchExpressions[0].operator", "is not one of"),  # noqa: E501
    ("deletion-policy", sc({**local("/srv"), "deletionPolicy": "Delete"}), "spec.deletionPolicy", "is not one of"),  # noqa: E501
    # missing and extra blocks, unknown fields, bad names
    ("missing-block", sc({"type": "posixfs"}), "spec.posixfs", "is required when type is posixfs"),
    ("extra-block", sc({**local("/srv"), "nfs": {"server": "s", "export": "/e"}}), "spec.nfs",
     "only spec.localfs may be set"),
    ("block-mismatch", sc({"type": "nfs", "localfs": {"path": "/srv"}}), "spec.localfs", "only spec.nfs may be set"),  # noqa: E501
    ("unknown-field", sc(posix(mountOptions=["exec"])), "spec.posixfs.mountOptions", "unknown field"),
    ("missing-field", sc({"type": "posixfs", "posixfs": {"source": "/dev/loop0"}}), "spec.posixfs.vfsType",
     "is required"),
    ("bad-name", sc(local("/srv"), name="../etc"), "metadata.name", "not a valid name"),
    ("chap-ref-name", sc({"type": "iscsi", "iscsi": {"portal": "h", "target": IQN,
                                                     "chapSecretRef": {"name": "../x"}}}),
     "spec.iscsi.chapSecretRef.name", "not a valid name"),
]  # fmt: skip


def _fill(value: Any, allowed: str) -> Any:
    if isinstance(value, str):
        return value.replace("{allowed}", allowed)
    if isinstance(value, dict):
        return {k: _fill(v, allowed) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, allowed) for v in value]
    return value


# Where other engineers' concurrent test sessions and daemons mount and unmount things.
SHARED_AREAS = (os.path.realpath(tempfile.gettempdir()) + "/", "/run/", "/var/lib/libvirt/",
                "/var/lib/glusterd/", "/var/lib/hoststorage-quickstart/", "/proc/", "/sys/")  # fmt: skip


def _mount_table(own_roots: tuple[str, ...]) -> list[str]:
    kept = []
    for line in pathlib.Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split(" ")
        target = fields[4]
        # Our own dirs always stay in the comparison: every mount hoststorage makes here goes under them.
        if target.startswith(SHARED_AREAS) and not target.startswith(own_roots):
            continue
        kept.append(" ".join(fields[2:]))  # without mount ids, which are stable anyway
    return sorted(kept)


def _listing(base: str) -> list[tuple[str, str]]:
    out = []
    for name in sorted(os.listdir(base)):
        path = os.path.join(base, name)
        out.append(
            (name, os.readlink(path) if os.path.islink(path) else ("dir" if os.path.isdir(path) else "file"))
        )
    return out


@pytest.fixture
def owned_host(tmp_path: pathlib.Path, require_root: None) -> dict[str, str]:
    """A host that already owns one localfs connection: a ledger file and a link in the mount base."""
    allowed = tmp_path / "allowed"
    (allowed / "data").mkdir(parents=True)
    os.symlink("/etc", allowed / "escape")
    dirs = {"state": str(tmp_path / "state"), "base": str(tmp_path / "mnt"), "allowed": str(allowed),
            "root": str(tmp_path)}  # fmt: skip
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(sc(local(str(allowed / "data")), name="good")))
    assert run(dirs, str(good))[0] == 0
    return dirs


def run(dirs: dict[str, str], manifest: str) -> tuple[int, list[dict[str, Any]]]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(["--state-dir", dirs["state"], "--mount-base", dirs["base"], "--allowed-host-path",
                       dirs["allowed"], "apply", "-f", manifest, "-o", "json"])  # fmt: skip
    return rc, json.loads(buf.getvalue())


def test_the_corpus_is_big_enough() -> None:
    assert len(CORPUS) >= 30
    assert len({c[0] for c in CORPUS}) == len(CORPUS)


@pytest.mark.parametrize(("manifest", "field", "words"), [c[1:] for c in CORPUS], ids=[c[0] for c in CORPUS])
def test_bad_input_is_refused_and_changes_nothing(
    owned_host: dict[str, str], tmp_path: pathlib.Path, manifest: dict[str, Any], field: str, words: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_fill(manifest, owned_host["allowed"])))
    ledger_file = pathlib.Path(owned_host["state"], "ledger.json")
    roots = (owned_host["root"] + "/",)
    before = (
        _mount_table(roots),
        _listing(owned_host["base"]),
        ledger_file.read_bytes(),
        ledger_file.stat().st_mtime_ns,
    )

    rc, out = run(owned_host, str(path))

    assert rc == 2  # bad input, not "valid but not Ready" (1)
    [result] = out
    assert (result["phase"], result["ready"], result["reason"]) == ("Failed", False, "InvalidSpec"), result
    assert f"{field}:" in result["message"], result["message"]
    assert words in result["message"], result["message"]
    assert result["conditions"][0]["reason"] == "InvalidSpec"
    after = (
        _mount_table(roots),
        _listing(owned_host["base"]),
        ledger_file.read_bytes(),
        ledger_file.stat().st_mtime_ns,
    )
    appeared = sorted(set(after[0]) - set(before[0]))
    vanished = sorted(set(before[0]) - set(after[0]))
    assert (appeared, vanished) == ([], []), "the mount table changed"
    assert after[1:] == before[1:]
