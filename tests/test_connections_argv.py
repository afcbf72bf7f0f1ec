"""Connections against a fake host: exact argv, plans, idempotency, undo of partial work, validation.

The real mounts are in test_connections_host.py; here :class:`FakeHost` replaces the runner and the mount
table so every branch (mount failure, access failure, busy unmount, foreign mount) runs deterministically
and nfs/glusterfs-with-systemd argv can be checked even though this machine cannot run them.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterator, Sequence

import pytest
from fake_runner import FakeRunner

from hostlib import blockdevs, commands, config, connections, errors, fsops, mounts

# ------------------------------------------------------------------------------------------ the fake


class FakeHost(FakeRunner):
    """Replaces commands.Runner and /proc/self/mountinfo: records argv, keeps a mount table.

    ``fail[prefix] = (rc, output)`` makes every command starting with ``prefix`` fail.
    """

    def __init__(self) -> None:
        super().__init__()
        self.table: list[mounts.MountRecord] = []
        self.fail: dict[tuple[str, ...], tuple[int, str]] = {}
        self.answers: dict[tuple[str, ...], str] = {}
        """Standard output of commands starting with a prefix (``getent passwd qemu``)."""
        self._next_id = 1000
        self.source_uses: list[str] = []
        """What ``blockdevs.uses`` answers for any device (the in-use rule, pinned elsewhere)."""

    def add_mount(self, source: str, target: str, fstype: str = "ext4") -> None:
        self._next_id += 1
        line = f"{self._next_id} 1 0:99 / {target} rw,nosuid - {fstype} {source} rw"
        self.table += mounts.parse_mountinfo(line)

    def read_mounts(self, path: str = mounts.MOUNTINFO) -> list[mounts.MountRecord]:
        return list(self.table)

    def answer(self, argv: tuple[str, ...], secrets: tuple[str, ...]) -> tuple[int, str, str]:
        for prefix, (rc, out) in self.fail.items():
            if argv[: len(prefix)] == prefix:
                return rc, "", out
        core = argv[3:] if argv[0] == "systemd-run" else argv
        if core[0] == "mount":
            self.add_mount(core[-2], core[-1], core[2])
        elif core[0] == "umount":
            # the kernel unmounts the topmost mount on the target
            top = mounts.topmost(core[-1], self.table)
            self.table = [r for r in self.table if r is not top]
        return 0, next((o for p, o in self.answers.items() if argv[: len(p)] == p), ""), ""


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHost]:
    host = FakeHost()
    monkeypatch.setattr(mounts, "read_mounts", host.read_mounts)
    # /dev/loop7 here is a name, not this machine's device: the in-use rule has its own tests.
    monkeypatch.setattr(blockdevs, "uses", lambda device, **kw: list(host.source_uses))
    monkeypatch.setattr(mounts, "unique_mount_id", lambda mount_id: None)  # the fake table's ids only
    yield host


@pytest.fixture
def host(tmp_path: pathlib.Path, fake: FakeHost) -> config.HostConfig:
    (tmp_path / "allowed").mkdir()
    return config.HostConfig(
        state_dir=str(tmp_path / "state"),
        mount_base=str(tmp_path / "mnt"),
        allowed_host_paths=(str(tmp_path / "allowed"),),
        runner=fake,
        use_host_scope=False,
    )


def mount_calls(fake: FakeHost) -> list[tuple[str, ...]]:
    return [c for c in fake.calls if "mount" in c[:4] or "umount" in c[:1]]


# ------------------------------------------------------------------------------------------ nfs argv

NFS_CASES = [
    (connections.NfsParams("server", "/a/b_c"), "soft,nosharecache,timeo=100,retrans=3,nolock,nosuid,nodev"),
    (
        connections.NfsParams("server", "/a", version="3"),
        "soft,nosharecache,timeo=100,retrans=3,nfsvers=3,nolock,nosuid,nodev",
    ),
    (
        connections.NfsParams("server", "/a", version="4"),
        "soft,nosharecache,timeo=100,retrans=3,nfsvers=4,nosuid,nodev",
    ),
    (
        connections.NfsParams("server", "/a", version="4.1"),
        "soft,nosharecache,timeo=100,retrans=3,nfsvers=4,minorversion=1,nosuid,nodev",
    ),
    (
        connections.NfsParams("server", "/a", version="4.2"),
        "soft,nosharecache,timeo=100,retrans=3,nfsvers=4,minorversion=2,nosuid,nodev",
    ),
    (
        connections.NfsParams("server", "/a", version="3", options=("lock",)),
        "soft,nosharecache,timeo=100,retrans=3,nfsvers=3,lock,nosuid,nodev",
    ),
    (
        connections.NfsParams("server", "/a", options=("lock", "nolock")),
        "soft,nosharecache,timeo=100,retrans=3,lock,nosuid,nodev",
    ),
    (
        connections.NfsParams("server", "/a", timeo=50, retrans=5, options=("noatime", "rsize=65536")),
        "soft,nosharecache,timeo=50,retrans=5,nolock,noatime,rsize=65536,nosuid,nodev",
    ),
    (
        connections.NfsParams("server", "/a", version="4", options=("nosuid", "ro")),
        "soft,nosharecache,timeo=100,retrans=3,nfsvers=4,nosuid,ro,nodev",
    ),
]


@pytest.mark.parametrize(("params", "opts"), NFS_CASES)
def test_nfs_mount_argv(host: config.HostConfig, params: connections.NfsParams, opts: str) -> None:
    conn = connections.make_connection("c", params, host)
    assert isinstance(conn, connections.NfsConnection)
    target = os.path.join(host.mount_base, mounts.escape_path(f"server:{params.export}"))
    assert conn.mount_argv() == ("mount", "-t", "nfs", "-o", opts, f"server:{params.export}", target)


@pytest.mark.parametrize(
    ("server", "export", "source", "name"),
    [
        ("server", "//a/", "server:/a", "server:_a"),
        ("server", "/a/b_c", "server:/a/b_c", "server:_a_b__c"),
        ("fd00:0::1", "/exp", "[fd00::1]:/exp", "[fd00::1]:_exp"),
        ("[fd00::1]", "/exp/", "[fd00::1]:/exp", "[fd00::1]:_exp"),
    ],
)
def test_nfs_source_and_mount_point(
    host: config.HostConfig, server: str, export: str, source: str, name: str
) -> None:
    conn = connections.make_connection("c", connections.NfsParams(server, export), host)
    assert conn.mount_argv()[-2:] == (source, os.path.join(host.mount_base, name))  # type: ignore[attr-defined]
    assert conn.target() == os.path.join(host.mount_base, name)


def test_nfs_admin_may_allow_suid_and_dev(host: config.HostConfig) -> None:
    relaxed = dataclasses.replace(host, allow_suid=True, allow_dev=True)
    conn = connections.make_connection("c", connections.NfsParams("s", "/a", options=("suid",)), relaxed)
    assert conn.mount_argv()[4] == "soft,nosharecache,timeo=100,retrans=3,nolock,suid"  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------ glusterfs / posixfs argv


@pytest.mark.parametrize("scope", [False, True])
def test_gluster_argv_with_and_without_host_scope(host: config.HostConfig, scope: bool) -> None:
    cfg = dataclasses.replace(host, use_host_scope=scope)
    params = connections.GlusterfsParams(
        "gl1.example", "vol_1", ("gl2.example", "10.0.0.3"), ("log-level=WARNING",)
    )
    conn = connections.make_connection("g", params, cfg)
    target = os.path.join(os.path.realpath(host.mount_base), "glusterSD", "gl1.example:_vol__1")
    mount = (
        "mount",
        "-t",
        "glusterfs",
        "-o",
        "log-level=WARNING,backup-volfile-servers=gl2.example:10.0.0.3,nosuid,nodev",
        "gl1.example:/vol_1",
        target,
    )
    prefix = ("systemd-run", "--scope", "--slice=hoststorage-glusterfs") if scope else ()
    assert conn.mount_argv() == (*prefix, *mount)  # type: ignore[attr-defined]
    plan = conn.plan_connect(conn.observe())
    assert [a.verb for a in plan] == ["mkdir", "mount"]
    assert plan[1].argv == (*prefix, *mount)


def test_host_scope_default_follows_systemd(host: config.HostConfig) -> None:
    cfg = dataclasses.replace(host, use_host_scope=None)
    expected = os.path.isdir("/run/systemd/system") and commands.which("systemd-run") is not None
    assert cfg.host_scope is expected


@pytest.mark.parametrize(
    ("params", "argv_tail"),
    [
        (connections.PosixfsParams("/dev/loop7", "ext4"), ("-t", "ext4", "-o", "nosuid,nodev", "/dev/loop7")),
        (
            connections.PosixfsParams("/dev/loop7", "xfs", ("noatime", "nouuid")),
            ("-t", "xfs", "-o", "noatime,nouuid,nosuid,nodev", "/dev/loop7"),
        ),
        (
            connections.PosixfsParams("ceph1:6789:/vms", "ext4"),
            ("-t", "ext4", "-o", "nosuid,nodev", "ceph1:6789:/vms"),
        ),
        (
            connections.PosixfsParams("//smb.example/share", "cifs", ("vers=3.0",)),
            ("-t", "cifs", "-o", "vers=3.0,nosuid,nodev", "//smb.example/share"),
        ),
    ],
)
def test_posixfs_argv(
    host: config.HostConfig, params: connections.PosixfsParams, argv_tail: tuple[str, ...]
) -> None:
    conn = connections.make_connection("p", params, host)
    argv = conn.mount_argv()  # type: ignore[attr-defined]
    assert argv[0] == "mount"
    assert argv[1:-1] == argv_tail
    assert argv[-1] == conn.target()


def test_posixfs_mount_point_names(host: config.HostConfig) -> None:
    base = os.path.realpath(host.mount_base)
    for source, name in [("/dev/loop7", "_dev_loop7"), ("/dev/disk/by-id/x_y", "_dev_disk_by-id_x__y")]:
        conn = connections.make_connection("p", connections.PosixfsParams(source, "ext4"), host)
        assert conn.target() == os.path.join(base, name)


# --------------------------------------------------------------------------------- connect / plans


def test_connect_is_idempotent_and_plans_shrink(host: config.HostConfig, fake: FakeHost) -> None:
    conn = connections.make_connection("p", connections.PosixfsParams("/dev/loop7", "ext4"), host)
    assert isinstance(conn, connections.Connection)
    before = conn.observe()
    assert not before.connected and not before.target_exists
    assert [a.verb for a in conn.plan_connect(before)] == ["mkdir", "mount"]
    assert conn.connect() is True
    target = conn.target()
    assert fake.calls[0] == ("mount", "-t", "ext4", "-o", "nosuid,nodev", "/dev/loop7", target)
    assert fake.calls[1] == ("test", "-d", target, "-a", "-r", target, "-a", "-w", target, "-a", "-x", target)
    after = conn.observe()
    assert after.connected and after.source == "/dev/loop7" and after.fstype == "ext4"
    assert after.to_dict()["mountPoint"] == target
    assert conn.plan_connect(after) == []
    n = len(fake.calls)
    assert conn.connect() is False
    assert len(fake.calls) == n, "a second connect runs nothing"


def test_read_only_mount_checks_r_x_only(host: config.HostConfig, fake: FakeHost) -> None:
    conn = connections.make_connection("p", connections.PosixfsParams("/dev/loop7", "ext4", ("ro",)), host)
    conn.connect()
    t = conn.target()
    assert fake.calls[1] == ("test", "-d", t, "-a", "-r", t, "-a", "-x", t)


def test_failed_mount_removes_the_dir_it_created(host: config.HostConfig, fake: FakeHost) -> None:
    fake.fail[("mount",)] = (32, "mount: /x: wrong fs type, bad option, bad superblock on /dev/loop7")
    conn = connections.make_connection("p", connections.PosixfsParams("/dev/loop7", "ext4"), host)
    with pytest.raises(errors.MountFailed, match="wrong fs type") as info:
        conn.connect()
    assert info.value.reason == "MountFailed"
    assert not os.path.lexists(conn.target())


def test_failed_mount_keeps_a_dir_that_was_there(host: config.HostConfig, fake: FakeHost) -> None:
    fake.fail[("mount",)] = (32, "mount: failed")
    conn = connections.make_connection("p", connections.PosixfsParams("/dev/loop7", "ext4"), host)
    os.makedirs(conn.target())
    assert [a.verb for a in conn.plan_connect(conn.observe())] == ["mount"]
    with pytest.raises(errors.MountFailed):
        conn.connect()
    assert os.path.isdir(conn.target())


@pytest.mark.parametrize(
    ("output", "exc"),
    [
        ("mount: /x: unknown filesystem type 'nfs'.", errors.Unsupported),
        ("mount.nfs: No such device", errors.Unsupported),
        ("mount.nfs: Connection refused", errors.MountFailed),
    ],
)
def test_mount_errors_map_to_reasons(
    host: config.HostConfig, fake: FakeHost, output: str, exc: type[Exception]
) -> None:
    fake.fail[("mount",)] = (32, output)
    conn = connections.make_connection("n", connections.NfsParams("server", "/a"), host)
    with pytest.raises(exc, match=output.rsplit(": ", maxsplit=1)[-1][:10]):
        conn.connect()
    assert not os.path.lexists(conn.target())


def test_access_failure_unmounts_and_is_permission_denied(host: config.HostConfig, fake: FakeHost) -> None:
    fake.fail[("test",)] = (1, "")
    conn = connections.make_connection("p", connections.PosixfsParams("/dev/loop7", "ext4"), host)
    with pytest.raises(errors.PermissionDenied, match="no rwx access"):
        conn.connect()
    assert fake.calls[-1] == ("umount", "--no-canonicalize", "-l", conn.target())
    assert not conn.observe().connected
    assert not os.path.lexists(conn.target())


DEBIAN_QEMU = "libvirt-qemu:x:64055:108:Libvirt Qemu,,,:/var/lib/libvirt:/usr/sbin/nologin\n"


def qemu_argv(path: str) -> tuple[str, ...]:
    return ("setpriv", "--reuid=64055", "--regid=108", "--init-groups", "--",
            "test", "-d", path, "-a", "-r", path, "-a", "-x", path)


def test_qemu_access_is_checked_as_the_qemu_user_after_the_agents(
    host: config.HostConfig, fake: FakeHost
) -> None:
    """``auto`` tries qemu (RHEL), then libvirt-qemu (Debian); the check runs with its uid, gid, groups."""
    fake.fail[("getent", "passwd", "qemu")] = (2, "")
    fake.answers[("getent", "passwd", "libvirt-qemu")] = DEBIAN_QEMU
    conn = connections.make_connection(
        "p", connections.PosixfsParams("/dev/loop7", "ext4"), dataclasses.replace(host, qemu_user="auto")
    )
    assert conn.connect() is True
    mp = conn.target()
    after_mount = fake.calls[[c[0] for c in fake.calls].index("mount") + 1 :]
    assert after_mount == [
        ("test", "-d", mp, "-a", "-r", mp, "-a", "-w", mp, "-a", "-x", mp),
        ("getent", "passwd", "qemu"),
        ("getent", "passwd", "libvirt-qemu"),
        qemu_argv(mp),
    ]
    assert conn.observe().connected


def test_qemu_without_access_unmounts_and_is_permission_denied(
    host: config.HostConfig, fake: FakeHost
) -> None:
    fake.answers[("getent", "passwd", "libvirt-qemu")] = DEBIAN_QEMU
    named = dataclasses.replace(host, qemu_user="libvirt-qemu")
    conn = connections.make_connection("p", connections.PosixfsParams("/dev/loop7", "ext4"), named)
    fake.fail[qemu_argv(conn.target())[:3]] = (1, "")
    with pytest.raises(errors.PermissionDenied, match=r"qemu \(user libvirt-qemu, uid 64055\) has no r-x"):
        conn.connect()
    assert fake.calls[-1] == ("umount", "--no-canonicalize", "-l", conn.target())
    assert not conn.observe().connected
    assert not os.path.lexists(conn.target())


def test_qemu_user_named_but_missing_is_unsupported(host: config.HostConfig, fake: FakeHost) -> None:
    fake.fail[("getent",)] = (2, "")
    conn = connections.make_connection(
        "p", connections.PosixfsParams("/dev/loop7", "ext4"), dataclasses.replace(host, qemu_user="kvmuser")
    )
    with pytest.raises(errors.Unsupported, match="qemu user 'kvmuser'"):
        conn.connect()
    assert not conn.observe().connected


def test_no_qemu_user_on_the_node_checks_only_the_agent(host: config.HostConfig, fake: FakeHost) -> None:
    """A node without libvirt has neither user: ``auto`` then checks the agent's access alone."""
    fake.fail[("getent",)] = (2, "")
    conn = connections.make_connection(
        "p", connections.PosixfsParams("/dev/loop7", "ext4"), dataclasses.replace(host, qemu_user="auto")
    )
    assert conn.connect() is True
    assert not [c for c in fake.calls if c[0] == "setpriv"]


@pytest.mark.parametrize("bad", ["-oops", "Root", "a b", "x" * 40, "qemu;id"])
def test_qemu_user_setting_must_be_a_user_name(host: config.HostConfig, bad: str) -> None:
    with pytest.raises(ValueError, match="qemu user"):
        dataclasses.replace(host, qemu_user=bad)


def test_disconnect_unmounts_and_removes_the_dir(host: config.HostConfig, fake: FakeHost) -> None:
    conn = connections.make_connection("p", connections.PosixfsParams("/dev/loop7", "ext4"), host)
    conn.connect()
    plan = conn.plan_disconnect(conn.observe())
    assert [(a.verb, a.argv) for a in plan] == [
        ("umount", ("umount", "--no-canonicalize", conn.target())),
        ("rmdir", None),
    ]
    assert conn.disconnect() is True
    assert fake.calls[-1] == ("umount", "--no-canonicalize", conn.target())
    assert not os.path.lexists(conn.target())
    assert conn.disconnect() is False
    assert conn.plan_disconnect(conn.observe()) == []


@pytest.mark.parametrize(
    ("params", "forced"),
    [
        (connections.NfsParams("server", "/a"), ("umount", "--no-canonicalize", "-f", "-l")),
        (connections.PosixfsParams("/dev/loop7", "ext4"), ("umount", "--no-canonicalize", "-l")),
        (connections.GlusterfsParams("h", "v"), ("umount", "--no-canonicalize", "-l")),
    ],
)
def test_busy_disconnect_is_in_use_unless_forced(
    host: config.HostConfig, fake: FakeHost, params: connections.Params, forced: tuple[str, ...]
) -> None:
    conn = connections.make_connection("c", params, host)
    conn.connect()
    busy = f"umount: {conn.target()}: target is busy."
    fake.fail[("umount", "--no-canonicalize", conn.target())] = (32, busy)
    with pytest.raises(errors.InUse, match="is busy"):
        conn.disconnect()
    assert conn.observe().connected
    assert conn.disconnect(force=True) is True
    assert fake.calls[-1] == (*forced, conn.target())
    assert not os.path.lexists(conn.target())


def test_foreign_mount_on_our_mount_point_is_left_alone(host: config.HostConfig, fake: FakeHost) -> None:
    conn = connections.make_connection("p", connections.PosixfsParams("/dev/loop7", "ext4"), host)
    os.makedirs(conn.target())
    fake.add_mount("/dev/other", conn.target())
    observed = conn.observe()
    assert not observed.connected
    assert observed.conflict and "/dev/other" in observed.conflict
    with pytest.raises(errors.Conflict):
        conn.plan_connect(observed)
    with pytest.raises(errors.Conflict):
        conn.connect()
    assert conn.plan_disconnect(observed) == []
    assert conn.disconnect(force=True) is False
    assert fake.calls == []
    assert os.path.isdir(conn.target())


def test_missing_mount_tool_is_unsupported(
    host: config.HostConfig, fake: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    def not_found(argv: Sequence[str], **kwargs: object) -> commands.Result:
        raise commands.CommandNotFound(argv, None, "mount: command not found")

    cfg = dataclasses.replace(host, runner=not_found)
    conn = connections.make_connection("p", connections.PosixfsParams("/dev/loop7", "ext4"), cfg)
    with pytest.raises(errors.Unsupported):
        conn.connect()


# ----------------------------------------------------------------------------------------- localfs


def test_localfs_link_lifecycle(host: config.HostConfig, tmp_path: pathlib.Path) -> None:
    data = tmp_path / "allowed" / "data_1"
    data.mkdir()
    conn = connections.make_connection("l", connections.LocalfsParams(str(data)), host)
    link = os.path.join(os.path.realpath(host.mount_base), mounts.escape_path(str(data)))
    assert conn.target() == link
    assert [a.verb for a in conn.plan_connect(conn.observe())] == ["symlink"]
    assert conn.connect() is True
    assert os.readlink(link) == str(data)
    assert conn.observe().connected
    assert conn.connect() is False
    assert [a.verb for a in conn.plan_disconnect(conn.observe())] == ["unlink"]
    assert conn.disconnect() is True
    assert not os.path.lexists(link)
    assert data.is_dir(), "the data directory itself is never touched"
    assert conn.disconnect() is False


def test_localfs_missing_dir_is_a_clear_error(host: config.HostConfig, tmp_path: pathlib.Path) -> None:
    conn = connections.make_connection(
        "l", connections.LocalfsParams(str(tmp_path / "allowed" / "nope")), host
    )
    with pytest.raises(errors.NotFound, match="does not exist or is not a directory"):
        conn.connect()
    assert not os.path.lexists(conn.target())


def test_localfs_foreign_file_is_a_conflict(host: config.HostConfig, tmp_path: pathlib.Path) -> None:
    data = tmp_path / "allowed" / "d"
    data.mkdir()
    conn = connections.make_connection("l", connections.LocalfsParams(str(data)), host)
    os.makedirs(host.mount_base, exist_ok=True)
    with open(conn.target(), "w") as f:
        f.write("not ours")
    with pytest.raises(errors.Conflict, match="not a link"):
        conn.connect()
    assert conn.disconnect() is False
    assert os.path.isfile(conn.target())


def test_localfs_link_is_ours_by_its_ident_and_a_replaced_one_is_never_removed(
    host: config.HostConfig, tmp_path: pathlib.Path
) -> None:
    """The link hoststorage made is recorded by (dev, ino); a same-looking link someone else put in its
    place (same target) is Conflict on disconnect and stays; a fresh object without the record never
    removes or replaces it."""
    data = tmp_path / "allowed" / "d"
    data.mkdir()
    conn = connections.make_connection("l", connections.LocalfsParams(str(data)), host)
    assert conn.connect() is True
    made = connections.owned_id(conn)
    assert made == fsops.ident(os.lstat(conn.target()))
    os.symlink(str(data), conn.target() + ".x")  # made while ours exists: another inode
    os.rename(conn.target() + ".x", conn.target())  # an attacker's identical-looking link
    with pytest.raises(errors.Conflict, match="nothing removed"):
        conn.disconnect()
    assert os.path.islink(conn.target())
    fresh = connections.make_connection("l", connections.LocalfsParams(str(data)), host)
    assert fresh.disconnect() is False and os.path.islink(conn.target())
    later = connections.make_connection("l", connections.LocalfsParams(str(data)), host)
    connections.claim(later, fsops.ident(os.lstat(conn.target())))
    assert later.disconnect() is True and not os.path.lexists(conn.target())


def test_mount_point_dir_is_ours_by_its_ident(
    host: config.HostConfig, fake: FakeHost, tmp_path: pathlib.Path
) -> None:
    """connect() makes the mount point through fsops and keeps its ident; a directory someone else put
    in its place after the unmount is Conflict and stays; without the record nothing is removed."""
    conn = connections.make_connection("p", connections.PosixfsParams("/dev/loop7", "ext4"), host)
    assert conn.connect() is True
    made = connections.owned_id(conn)
    assert made == fsops.ident(os.lstat(conn.target()))
    fake.table.clear()  # unmounted behind our back
    os.mkdir(conn.target() + ".x")  # made while ours exists: another inode
    os.rmdir(conn.target())
    os.rename(conn.target() + ".x", conn.target())
    with pytest.raises(errors.Conflict):
        conn.disconnect()
    assert os.path.isdir(conn.target())
    fresh = connections.make_connection("p", connections.PosixfsParams("/dev/loop7", "ext4"), host)
    assert fresh.disconnect() is False and os.path.isdir(conn.target())


def test_mount_base_with_a_planted_link_is_conflict_and_nothing_is_made_through_it(
    host: config.HostConfig, fake: FakeHost, tmp_path: pathlib.Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    os.makedirs(host.mount_base)
    os.symlink(outside, os.path.join(host.mount_base, "glusterSD"))
    with pytest.raises(errors.Conflict, match="symlink"):
        connections.make_connection("g", connections.GlusterfsParams("h", "v"), host)
    assert list(outside.iterdir()) == []


def test_localfs_symlink_escape_is_refused(host: config.HostConfig, tmp_path: pathlib.Path) -> None:
    os.symlink("/etc", tmp_path / "allowed" / "sneaky")
    with pytest.raises(errors.InvalidSpec, match="outside the allowed host paths"):
        connections.make_connection(
            "l", connections.LocalfsParams(str(tmp_path / "allowed" / "sneaky")), host
        )


@pytest.mark.parametrize("own", ["state", "mnt", "inside-state", "holds-both"])
def test_localfs_on_hoststorage_own_dirs_is_refused(
    host: config.HostConfig, tmp_path: pathlib.Path, own: str
) -> None:
    """State dir and mount base under an allowed path: a localfs path that is, holds or lies in them."""
    allowed = tmp_path / "allowed"
    cfg = dataclasses.replace(host, state_dir=str(allowed / "hs"), mount_base=str(allowed / "hs" / "mnt"))
    path = {"state": allowed / "hs", "mnt": allowed / "hs" / "mnt", "inside-state": allowed / "hs" / "x",
            "holds-both": allowed}[own]  # fmt: skip
    with pytest.raises(errors.InvalidSpec, match="hoststorage's own directory") as info:
        connections.make_connection("l", connections.LocalfsParams(str(path)), cfg)
    assert info.value.field == "spec.localfs.path"


def test_localfs_needs_allowed_paths(host: config.HostConfig) -> None:
    cfg = dataclasses.replace(host, allowed_host_paths=())
    with pytest.raises(errors.InvalidSpec, match="no allowed host paths"):
        connections.make_connection("l", connections.LocalfsParams("/tmp"), cfg)


# ------------------------------------------------------------------------------------- validation

BAD_SPECS: list[tuple[connections.Params, str, str]] = [
    (connections.NfsParams("", "/a"), "spec.nfs.server", "must not be empty"),
    (connections.NfsParams("-oexec", "/a"), "spec.nfs.server", "not a valid hostname"),
    (connections.NfsParams("s;reboot", "/a"), "spec.nfs.server", "not a valid hostname"),
    (connections.NfsParams("s", "a"), "spec.nfs.export", "not an absolute path"),
    (connections.NfsParams("s", "/a/../../etc"), "spec.nfs.export", "'..' component"),
    (connections.NfsParams("s", "/a\0"), "spec.nfs.export", "NUL"),
    (connections.NfsParams("s", "/a\n/b"), "spec.nfs.export", "control character"),
    (connections.NfsParams("s", "/" + "x" * 2000), "spec.nfs.export", "longer than"),
    (connections.NfsParams("s", "/a", version="5"), "spec.nfs.version", "not one of"),
    (connections.NfsParams("s", "/a", timeo=0), "spec.nfs.timeo", "out of range"),
    (connections.NfsParams("s", "/a", timeo=True), "spec.nfs.timeo", "must be an integer"),
    (connections.NfsParams("s", "/a", retrans=-1), "spec.nfs.retrans", "out of range"),
    (connections.NfsParams("s", "/a", options=("exec",)), "spec.nfs.options[0]", "undo noexec"),
    (
        connections.NfsParams("s", "/a", options=("ro", "remount")),
        "spec.nfs.options[1]",
        "existing host mount",
    ),
    (connections.NfsParams("s", "/a", options=("ro,suid",)), "spec.nfs.options[0]", "comma"),
    (connections.PosixfsParams("/dev/loop0", ""), "spec.posixfs.vfsType", "is required"),
    (connections.PosixfsParams("/dev/loop0", "nfs"), "spec.posixfs.vfsType", "use type nfs"),
    (connections.PosixfsParams("/dev/loop0", "bind"), "spec.posixfs.vfsType", "bind mounts"),
    (connections.PosixfsParams("/dev/loop0", "zfs"), "spec.posixfs.vfsType", "not one of"),
    (connections.PosixfsParams("/etc/shadow", "ext4"), "spec.posixfs.source", "device path under /dev"),
    (connections.PosixfsParams("/dev/../etc/shadow", "ext4"), "spec.posixfs.source", "'..' component"),
    (connections.PosixfsParams("dev/loop0", "ext4"), "spec.posixfs.source", "server:/path"),
    (connections.PosixfsParams("-o:/x", "ext4"), "spec.posixfs.source", "not a valid hostname"),
    (connections.PosixfsParams("h:99999:/x", "ext4"), "spec.posixfs.source", "port must be"),
    (connections.PosixfsParams("/dev/loop0", "ext4", ("loop",)), "spec.posixfs.options[0]", "image file"),
    (connections.GlusterfsParams("h", "v/../x"), "spec.glusterfs.volume", "not a gluster volume"),
    (connections.GlusterfsParams("h", "-v"), "spec.glusterfs.volume", "not a gluster volume"),
    (
        connections.GlusterfsParams("h", "v", ("b;c",)),
        "spec.glusterfs.backupServers[0]",
        "not a valid hostname",
    ),
    (connections.GlusterfsParams("h", "v", ("[fd00::1]",)), "spec.glusterfs.backupServers[0]", "IPv6"),
    (connections.GlusterfsParams("h", "v", ("b",) * 17), "spec.glusterfs.backupServers", "at most 16"),
    (
        connections.GlusterfsParams("h", "v", options=("backup-volfile-servers=x",)),
        "spec.glusterfs.options[0]",
        "backupServers",
    ),
    (connections.IscsiParams("h:0", "iqn.2003-01.org.x:t"), "spec.iscsi.portal", "port must be"),
    (connections.IscsiParams("h", "not-an-iqn"), "spec.iscsi.target", "not an iSCSI name"),
    (connections.IscsiParams("h", "iqn.2003-01.org.x:t", lun=-1), "spec.iscsi.lun", "out of range"),
    (
        connections.IscsiParams("h", "iqn.2003-01.org.x:t", initiator_name="-x"),
        "spec.iscsi.initiatorName",
        "not an iSCSI",
    ),
    (
        connections.IscsiParams("h", "iqn.2003-01.org.x:t", chap=connections.ChapCredentials("u", "")),
        "spec.iscsi.chapSecretRef",
        "1-255",
    ),
    (
        connections.IscsiParams("h", "iqn.2003-01.org.x:t", chap=connections.ChapCredentials("u", "a\nb")),
        "spec.iscsi.chapSecretRef",
        "control character",
    ),
    (connections.LocalfsParams("relative"), "spec.localfs.path", "not an absolute path"),
    (connections.LocalfsParams("/etc"), "spec.localfs.path", "outside the allowed host paths"),
]


@pytest.mark.parametrize(("params", "field", "message"), BAD_SPECS)
def test_bad_specs_are_refused_before_touching_the_host(
    host: config.HostConfig, fake: FakeHost, params: connections.Params, field: str, message: str
) -> None:
    with pytest.raises(errors.InvalidSpec, match=message) as info:
        connections.make_connection("bad", params, host)
    assert info.value.field == field
    assert fake.calls == []
    assert not os.path.exists(host.mount_base)


def test_chap_password_never_in_repr() -> None:
    chap = connections.ChapCredentials("user", "hunter2")
    params = connections.IscsiParams("h", "iqn.2003-01.org.x:t", chap=chap)
    for text in (repr(chap), str(chap), repr(params), str(params)):
        assert "hunter2" not in text
    assert "user" in repr(chap)


def test_type_names() -> None:
    assert connections.type_name(connections.LocalfsParams("/x")) == "localfs"
    assert connections.type_name(connections.NfsParams("s", "/x")) == "nfs"


def test_stacked_mounts_of_our_source_all_go(host: config.HostConfig, fake: FakeHost) -> None:
    conn = connections.make_connection("p", connections.PosixfsParams("/dev/loop7", "ext4"), host)
    conn.connect()
    fake.add_mount("/dev/loop7", conn.target())
    fake.calls.clear()

    def umount_one(argv: Sequence[str], **kwargs: object) -> commands.Result:
        fake.calls.append(tuple(argv))
        fake.table.pop()
        return commands.Result(tuple(argv), 0, "", "", 0.0)

    cfg_conn = connections.make_connection("p", connections.PosixfsParams("/dev/loop7", "ext4"),
                                           dataclasses.replace(host, runner=umount_one))  # fmt: skip
    connections.claim(cfg_conn, connections.owned_id(conn))  # what the ledger hands a later run
    assert cfg_conn.disconnect() is True
    assert fake.calls == [("umount", "--no-canonicalize", conn.target())] * 2
    assert not os.path.lexists(conn.target())


def test_an_unmount_that_does_not_take_is_bounded(host: config.HostConfig, fake: FakeHost) -> None:
    conn = connections.make_connection("p", connections.PosixfsParams("/dev/loop7", "ext4"), host)
    conn.connect()

    def ignore(argv: Sequence[str], **kwargs: object) -> commands.Result:
        return commands.Result(tuple(argv), 0, "", "", 0.0)

    stuck = connections.make_connection("p", connections.PosixfsParams("/dev/loop7", "ext4"),
                                        dataclasses.replace(host, runner=ignore))  # fmt: skip
    with pytest.raises(errors.UnmountFailed, match="still mounted after 8 unmounts"):
        stuck.disconnect()
