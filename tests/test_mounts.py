"""mountinfo parsing, VDSM mount points and the option policy, table-driven, malformed input included."""

from __future__ import annotations

import os
import pathlib

import pytest
from fake_runner import FakeRunner

from hostlib import errors, mounts


def fake_loops(dev: str) -> str | None:
    return {"/dev/loop3": "/images/x.img"}.get(dev)


MOUNTINFO_CASES = [
    # (line, target, source, fstype, canonical, deleted, root)
    (
        "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue",
        "/mnt2",
        "/dev/root",
        "ext3",
        "/dev/root",
        False,
        "/mnt1",
    ),
    (
        r"100 27 0:50 / /tmp/with\040space rw,relatime shared:5 master:2 - tmpfs tmp\040fs rw",
        "/tmp/with space",
        "tmp fs",
        "tmpfs",
        "tmp fs",
        False,
        "/",
    ),
    (
        r"101 27 0:51 / /tmp/gone\040(deleted) rw - tmpfs tmpfs rw",
        "/tmp/gone",
        "tmpfs",
        "tmpfs",
        "tmpfs",
        True,
        "/",
    ),
    (
        "102 27 0:52 / /rhev/data-center/mnt/server:_a rw - nfs4 server://a/ rw,vers=4.2",
        "/rhev/data-center/mnt/server:_a",
        "server://a/",
        "nfs4",
        "server:/a",
        False,
        "/",
    ),
    (
        "103 27 7:3 / /mnt/x rw - ext4 /dev/loop3 rw",
        "/mnt/x",
        "/dev/loop3",
        "ext4",
        "/images/x.img",
        False,
        "/",
    ),
    (
        r"104 27 0:53 / /m/tab\011new\012line\134back rw - tmpfs none rw",
        "/m/tab\tnew\nline\\back",
        "none",
        "tmpfs",
        "none",
        False,
        "/",
    ),
    (
        "105 27 0:54 / /mnt/[fd00::1]:_exp rw - nfs [fd00:0::1]:/exp// rw",
        "/mnt/[fd00::1]:_exp",
        "[fd00:0::1]:/exp//",
        "nfs",
        "[fd00::1]:/exp",
        False,
        "/",
    ),
    (
        "106 27 0:55 / /mnt/glusterSD/127.0.0.2:_vol rw - fuse.glusterfs 127.0.0.2:/vol rw,user_id=0",
        "/mnt/glusterSD/127.0.0.2:_vol",
        "127.0.0.2:/vol",
        "fuse.glusterfs",
        "127.0.0.2:/vol",
        False,
        "/",
    ),
    (
        r"107 27 0:56 / /mnt/\303\244 rw - tmpfs tmpfs rw",
        "/mnt/\u00e4",
        "tmpfs",
        "tmpfs",
        "tmpfs",
        False,
        "/",
    ),
]


@pytest.mark.parametrize(
    ("line", "target", "source", "fstype", "canonical", "deleted", "root"), MOUNTINFO_CASES
)
def test_mountinfo_line(
    line: str, target: str, source: str, fstype: str, canonical: str, deleted: bool, root: str
) -> None:
    (rec,) = mounts.parse_mountinfo(line, loop_backing=fake_loops)
    assert (rec.target, rec.source, rec.fstype, rec.canonical_source, rec.deleted, rec.root) == (
        target,
        source,
        fstype,
        canonical,
        deleted,
        root,
    )


@pytest.mark.parametrize(
    "line",
    [
        "",
        "garbage",
        "1 2 3",
        "36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 ext3 /dev/root rw",
        "x y 0:1 / /a rw - t s o",
    ],
)
def test_malformed_mountinfo_lines_are_skipped(line: str) -> None:
    text = f"{line}\n36 35 98:0 / /ok rw - ext4 /dev/vda rw\n"
    assert [r.target for r in mounts.parse_mountinfo(text)] == ["/ok"]


def test_real_mountinfo_parses_and_has_root() -> None:
    records = mounts.read_mounts()
    assert any(r.target == "/" for r in records)


def test_is_mounted_needs_source_and_target() -> None:
    records = mounts.parse_mountinfo(
        "102 27 0:52 / /base/server:_a rw - nfs4 server://a/ rw\n"
        "103 27 7:3 / /base/_dev_loop3 rw - ext4 /dev/loop3 rw",
        loop_backing=fake_loops,
    )
    assert mounts.is_mounted("server:/a", "/base/server:_a", records)
    assert mounts.is_mounted("server://a", "/base/server:_a/", records)
    assert not mounts.is_mounted("server:/b", "/base/server:_a", records)
    assert not mounts.is_mounted("server:/a", "/base/elsewhere", records)
    assert not mounts.is_mounted("other:/a", "/base/server:_a", records)


def test_mounts_under_is_deepest_first() -> None:
    records = mounts.parse_mountinfo(
        "1 0 0:1 / /b rw - tmpfs t rw\n2 1 0:2 / /b/x rw - tmpfs t rw\n3 2 0:3 / /b/x/y rw - tmpfs t rw\n"
        "4 0 0:4 / /bx rw - tmpfs t rw\n"
    )
    assert [r.target for r in mounts.mounts_under("/b", records)] == ["/b/x/y", "/b/x", "/b"]


ESCAPES = [
    # VDSM's examples first
    ("server:/a/b_c", "server:_a_b__c"),
    ("server://a/", "server:_a"),
    ("server:/a//b/", "server:_a_b"),
    ("server:/", "server:_"),
    ("server:/a_/_b", "server:_a_____b"),
    ("10.0.0.1:/exports/data", "10.0.0.1:_exports_data"),
    ("[fd00::1]:/exp", "[fd00::1]:_exp"),
    ("[fd00:0:0::1]:/exp/", "[fd00::1]:_exp"),
    ("host:2049:/path", "host:2049:_path"),
    ("[fd00::1]:2049:/p_q", "[fd00::1]:2049:_p__q"),
]


@pytest.mark.parametrize(("remote", "name"), ESCAPES)
def test_vdsm_mount_point_names(tmp_path: pathlib.Path, remote: str, name: str) -> None:
    assert mounts.mount_point_for(str(tmp_path), remote) == str(tmp_path / name)


@pytest.mark.parametrize(
    ("remote", "message"),
    [
        ("server", "server:/path"),
        ("server/a", "server:/path"),
        (":/a", "server:/path"),
        ("[fd00::1/a", "expected \\[ipv6\\]:/path"),
        ("[fd00::1]/a", "expected \\[ipv6\\]:/path"),
        ("s:/" + "a" * 260, "longer than 255 bytes"),
    ],
)
def test_bad_remotes(tmp_path: pathlib.Path, remote: str, message: str) -> None:
    with pytest.raises(errors.InvalidSpec, match=message):
        mounts.mount_point_for(str(tmp_path), remote, field="spec.posixfs.source")


def test_gluster_and_localfs_names(tmp_path: pathlib.Path) -> None:
    base = str(tmp_path)
    assert mounts.gluster_mount_point(base, "127.0.0.2", "vol_1") == str(
        tmp_path / "glusterSD" / "127.0.0.2:_vol__1"
    )
    assert mounts.local_link_for(base, "/data/x_y/") == str(tmp_path / "_data_x__y")


def test_symlinked_mount_point_is_refused(tmp_path: pathlib.Path) -> None:
    os.symlink("/etc", tmp_path / "server:_a")
    with pytest.raises(errors.Conflict, match="is a symlink to '/etc'"):
        mounts.mount_point_for(str(tmp_path), "server:/a")


def test_symlinked_gluster_dir_is_refused(tmp_path: pathlib.Path) -> None:
    os.symlink("/etc", tmp_path / "glusterSD")
    with pytest.raises(errors.Conflict, match="symlink"):
        mounts.gluster_mount_point(str(tmp_path), "h", "v")


def test_base_behind_a_symlink_resolves(tmp_path: pathlib.Path) -> None:
    (tmp_path / "real").mkdir()
    os.symlink(tmp_path / "real", tmp_path / "alias")
    assert mounts.mount_point_for(str(tmp_path / "alias"), "s:/a") == str(tmp_path / "real" / "s:_a")


GOOD_OPTIONS = [
    ("nfs", "noatime"),
    ("nfs", "lock"),
    ("nfs", "rsize=1048576"),
    ("nfs", "proto=tcp6"),
    ("nfs", "sec=krb5p"),
    ("nfs", "context=system_u:object_r:nfs_t:s0"),
    ("posixfs:ext4", "data=writeback"),
    ("posixfs:ext4", "discard"),
    ("posixfs:xfs", "nouuid"),
    ("posixfs:xfs", "logbsize=256k"),
    ("posixfs:btrfs", "subvol=@data/vm"),
    ("posixfs:btrfs", "compress=zstd:3"),
    ("posixfs:cifs", "vers=3.1.1"),
    ("glusterfs", "log-level=WARNING"),
    ("glusterfs", "direct-io-mode=enable"),
]


@pytest.mark.parametrize(("kind", "option"), GOOD_OPTIONS)
def test_allowed_options(kind: str, option: str) -> None:
    assert mounts.check_option(kind, option) == option


BAD_OPTIONS = [
    ("nfs", "exec", "undo noexec"),
    ("nfs", "suid", "allow_suid"),
    ("nfs", "dev", "allow_dev"),
    ("nfs", "defaults", "implies suid"),
    ("posixfs:ext4", "bind", "existing host directory"),
    ("posixfs:ext4", "rbind", "existing host directory"),
    ("posixfs:ext4", "move", "existing host mount"),
    ("posixfs:ext4", "remount", "existing host mount"),
    ("posixfs:ext4", "loop", "image file"),
    ("posixfs:ext4", "user", "unprivileged"),
    ("posixfs:ext4", "X-mount.mkdir", "not allowed"),
    ("posixfs:ext4", "x-systemd.automount", "not allowed"),
    ("posixfs:ext4", "make-shared", "not allowed"),
    ("nfs", "ro,exec", "comma"),
    ("nfs", "ro\0", "NUL"),
    ("nfs", "ro exec", "whitespace"),
    ("nfs", "-oexec", "starts with '-'"),
    ("nfs", "ro;reboot", "characters outside"),
    ("nfs", "$(reboot)", "characters outside"),
    ("nfs", "`id`", "characters outside"),
    ("nfs", "", "empty"),
    ("nfs", "a" * 257, "longer than 256"),
    ("nfs", "vers=3", "spec.nfs.version"),
    ("nfs", "nfsvers=4", "spec.nfs.version"),
    ("nfs", "timeo=600", "spec.nfs.timeo"),
    ("nfs", "retrans=6", "spec.nfs.retrans"),
    ("nfs", "hard", "blocks the agent forever"),
    ("nfs", "sharecache", "nosharecache"),
    ("nfs", "rsize=big", "needs a value"),
    ("nfs", "noatime=1", "takes no value"),
    ("nfs", "proto=udp", "needs a value"),
    ("nfs", "data=writeback", "not allowed for nfs"),
    ("posixfs:ext4", "errors=panic", "needs a value"),
    ("posixfs:ext4", "nouuid", "not allowed for posixfs:ext4"),
    ("posixfs:btrfs", "subvol=../x", "needs a value"),
    ("posixfs:cifs", "credentials=/root/c", "secrets never"),
    ("posixfs:cifs", "password=x", "secrets never"),
    ("glusterfs", "backup-volfile-servers=a:b", "backupServers"),
    ("glusterfs", "log-file=/etc/passwd", "not allowed for glusterfs"),
    ("localfs", "ro", "not allowed for localfs"),
    ("nfs", 3, "must be a string"),
]


@pytest.mark.parametrize(("kind", "option", "message"), BAD_OPTIONS)
def test_refused_options(kind: str, option: object, message: str) -> None:
    with pytest.raises(errors.InvalidSpec, match=message) as info:
        mounts.check_options(kind, [option], field="spec.x.options")
    assert info.value.field == "spec.x.options[0]"


def test_suid_and_dev_need_the_admin() -> None:
    assert mounts.check_option("nfs", "suid", allow_suid=True) == "suid"
    assert mounts.check_option("nfs", "dev", allow_dev=True) == "dev"
    with pytest.raises(errors.InvalidSpec):
        mounts.check_option("nfs", "dev", allow_suid=True)


def test_options_must_be_a_short_list() -> None:
    with pytest.raises(errors.InvalidSpec, match="must be a list"):
        mounts.check_options("nfs", "ro,exec")
    with pytest.raises(errors.InvalidSpec, match="limit is 64"):
        mounts.check_options("nfs", ["ro"] * 65)


@pytest.mark.parametrize(
    ("given", "suid", "dev", "expected"),
    [
        ((), False, False, ("nosuid", "nodev")),
        (("ro", "ro"), False, False, ("ro", "nosuid", "nodev")),
        (("nodev",), False, False, ("nodev", "nosuid")),
        (("ro",), True, False, ("ro", "nodev")),
        (("ro",), True, True, ("ro",)),
    ],
)
def test_nosuid_nodev_policy(
    given: tuple[str, ...], suid: bool, dev: bool, expected: tuple[str, ...]
) -> None:
    assert mounts.with_policy(given, allow_suid=suid, allow_dev=dev) == expected


def test_mount_and_umount_argv() -> None:
    assert mounts.mount_argv("/dev/loop0", "/b/x", "ext4", ["ro", "nosuid"]) == (
        "mount",
        "-t",
        "ext4",
        "-o",
        "ro,nosuid",
        "/dev/loop0",
        "/b/x",
    )
    assert mounts.mount_argv("s:/a", "/b/s:_a", "nfs", []) == ("mount", "-t", "nfs", "s:/a", "/b/s:_a")
    assert mounts.umount_argv("/b/x") == ("umount", "--no-canonicalize", "/b/x")
    assert mounts.umount_argv("/b/x", lazy=True) == ("umount", "--no-canonicalize", "-l", "/b/x")
    assert mounts.umount_argv("/b/x", lazy=True, force=True) == (
        "umount", "--no-canonicalize", "-f", "-l", "/b/x"
    )  # fmt: skip


class ScriptedRunner(FakeRunner):
    """Replaces commands.Runner: records argv, answers with a fixed rc and output."""

    def __init__(self, rc: int, output: str = "") -> None:
        super().__init__()
        self.rc = rc
        self.output = output

    def answer(self, argv: tuple[str, ...], secrets: tuple[str, ...]) -> tuple[int, str, str]:
        return self.rc, "", self.output


def test_busy_umount_is_in_use() -> None:
    runner = ScriptedRunner(32, "umount: /b/x: target is busy.")
    with pytest.raises(errors.InUse, match="/b/x is busy"):
        mounts.umount(runner, "/b/x", timeout=5)


def test_other_umount_failures_keep_the_tool_message() -> None:
    runner = ScriptedRunner(32, "umount: /b/x: not mounted.")
    with pytest.raises(errors.UnmountFailed, match="not mounted"):
        mounts.umount(runner, "/b/x", timeout=5)


def test_mount_failure_carries_the_tool_message() -> None:
    runner = ScriptedRunner(32, "mount: /b/x: wrong fs type, bad option, bad superblock")
    with pytest.raises(errors.MountFailed, match="wrong fs type"):
        mounts.mount(runner, "/dev/loop9", "/b/x", "ext4", ["nosuid"], timeout=5)
    assert runner.calls == [("mount", "-t", "ext4", "-o", "nosuid", "/dev/loop9", "/b/x")]


def test_find_holders_sees_our_cwd(tmp_path: pathlib.Path) -> None:
    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        holders = mounts.find_holders(str(tmp_path))
    finally:
        os.chdir(here)
    assert f"{os.getpid()} (" in " ".join(holders)
    assert mounts.find_holders(str(tmp_path / "nothing-here")) == []
