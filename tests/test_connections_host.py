"""Connections on the real host: loop devices with ext4/xfs, gluster over FUSE on loopback, localfs,
busy unmounts, foreign mounts, drift, and the clean NFS failure of this kernel."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator

import pytest
from fixtures_storage import GlusterVolume, LoopFactory, holding_open, unmount_all_under

from hostlib import commands, config, connections, errors, ledger, mounts

pytestmark = pytest.mark.host


@pytest.fixture(autouse=True)
def no_mounts_left(mount_base: str) -> Iterator[None]:
    """A test that leaves a mount under its base fails (mount_base would clean up silently)."""
    yield
    left = [r.target for r in mounts.mounts_under(mount_base)]
    assert not left, f"the test left mounts behind: {left}"


def is_mounted_at(target: str) -> bool:
    return bool(mounts.mounts_at(target))


@pytest.mark.parametrize("fstype", ["ext4", "xfs"])
def test_posixfs_on_a_loop_device(
    hs_host_config: config.HostConfig, loop_device: LoopFactory, fstype: str
) -> None:
    dev = loop_device(fstype)
    conn = connections.make_connection(
        "p", connections.PosixfsParams(dev, fstype, ("noatime",)), hs_host_config
    )
    target = conn.target()
    assert target == os.path.join(os.path.realpath(hs_host_config.mount_base), mounts.escape_path(dev))
    assert not conn.observe().connected

    assert conn.connect() is True
    observed = conn.observe()
    assert observed.connected and observed.fstype == fstype and observed.source == dev
    assert {"nosuid", "nodev", "noatime"} <= set(observed.options)
    assert mounts.is_mounted(dev, target)
    assert mounts.is_mounted(loop_device.image(dev), target), "loop devices compare by backing file"
    pathlib.Path(target, "probe").write_text("data")

    assert conn.connect() is False, "second connect changes nothing"
    assert conn.plan_connect(conn.observe()) == []
    assert len(mounts.mounts_at(target)) == 1

    assert conn.disconnect() is True
    assert not is_mounted_at(target)
    assert not os.path.lexists(target)
    assert conn.disconnect() is False


@pytest.fixture
def qemu_visible_base() -> Iterator[str]:
    """A mount base qemu can reach (pytest's temp dirs are 0700 root), removed afterwards."""
    base = tempfile.mkdtemp(prefix="hs-qemu-", dir="/var/tmp")
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        unmount_all_under(base)
        shutil.rmtree(base, ignore_errors=True)


def test_qemu_access_is_checked_on_the_real_host(
    hs_host_config: config.HostConfig, loop_device: LoopFactory, qemu_visible_base: str
) -> None:
    """VDSM's rule: qemu must have r-x on a new mount, else it is undone. Here qemu is libvirt-qemu."""
    qemu = connections.qemu_identity(dataclasses.replace(hs_host_config, qemu_user="auto"))
    assert qemu is not None, "scripts/setup.sh installs libvirt-daemon-system, which makes libvirt-qemu"
    host = dataclasses.replace(
        hs_host_config, qemu_user="auto", mount_base=os.path.join(qemu_visible_base, "mnt")
    )
    open_dev, closed_dev = loop_device("ext4"), loop_device("ext4")
    scratch = os.path.join(qemu_visible_base, "scratch")
    os.mkdir(scratch)
    commands.Runner()(("mount", closed_dev, scratch), timeout=30)
    try:
        os.chmod(scratch, 0o700)  # the filesystem's root: the agent (root) may, qemu may not
    finally:
        commands.Runner()(("umount", scratch), timeout=30)

    good = connections.make_connection("good", connections.PosixfsParams(open_dev, "ext4"), host)
    assert good.connect() is True
    bad = connections.make_connection("bad", connections.PosixfsParams(closed_dev, "ext4"), host)
    denied = f"qemu \\(user {qemu[0]}, uid {qemu[1]}\\) has no r-x"
    with pytest.raises(errors.PermissionDenied, match=denied):
        bad.connect()
    assert not is_mounted_at(bad.target()) and not os.path.lexists(bad.target())
    assert good.disconnect() is True
    # The same filesystem with the check off (a node where VMs do not run): the agent's rwx is enough.
    relaxed = connections.make_connection(
        "bad", connections.PosixfsParams(closed_dev, "ext4"), dataclasses.replace(host, qemu_user="")
    )
    assert relaxed.connect() is True
    assert relaxed.disconnect() is True


def test_a_vanished_mount_is_restored(hs_host_config: config.HostConfig, loop_device: LoopFactory) -> None:
    dev = loop_device("ext4")
    conn = connections.make_connection("p", connections.PosixfsParams(dev, "ext4"), hs_host_config)
    conn.connect()
    commands.Runner()(["umount", conn.target()], timeout=30)
    observed = conn.observe()
    assert not observed.connected and observed.target_exists
    assert [a.verb for a in conn.plan_connect(observed)] == ["mount"]
    assert conn.connect() is True
    assert conn.observe().connected
    conn.disconnect()


def test_busy_unmount_is_in_use_until_forced(
    hs_host_config: config.HostConfig, loop_device: LoopFactory
) -> None:
    dev = loop_device("ext4")
    conn = connections.make_connection("p", connections.PosixfsParams(dev, "ext4"), hs_host_config)
    conn.connect()
    path = os.path.join(conn.target(), "held")
    pathlib.Path(path).write_text("x")
    with holding_open(path) as pid:
        with pytest.raises(errors.InUse, match=f"busy; held by {pid} ") as info:
            conn.disconnect()
        assert info.value.reason == "InUse"
        assert conn.observe().connected, "a refused disconnect leaves the mount in place"
        assert conn.disconnect(force=True) is True
        assert not is_mounted_at(conn.target())
        assert not os.path.lexists(conn.target())


def test_failed_mount_leaves_nothing_behind(
    hs_host_config: config.HostConfig, loop_device: LoopFactory
) -> None:
    dev = loop_device("ext4")
    conn = connections.make_connection("p", connections.PosixfsParams(dev, "xfs"), hs_host_config)
    with pytest.raises(errors.MountFailed, match="mount") as info:
        conn.connect()
    assert "wrong fs type" in str(info.value) or "bad superblock" in str(info.value)
    assert not os.path.lexists(conn.target())
    assert not is_mounted_at(conn.target())


def test_foreign_mount_under_the_base_is_never_ours(
    hs_host_config: config.HostConfig, loop_device: LoopFactory, tmp_path: pathlib.Path
) -> None:
    run = commands.Runner()
    dev = loop_device("ext4")
    conn = connections.make_connection("p", connections.PosixfsParams(dev, "ext4"), hs_host_config)
    # someone else mounted a tmpfs exactly where our mount would go, and another one beside it
    os.makedirs(conn.target())
    run(["mount", "-t", "tmpfs", "-o", "size=1m", "foreign", conn.target()], timeout=30)
    beside = os.path.join(hs_host_config.mount_base, "someone-else")
    os.makedirs(beside)
    run(["mount", "-t", "tmpfs", "-o", "size=1m", "foreign2", beside], timeout=30)
    led = ledger.Ledger.load(hs_host_config.state_dir)
    try:
        observed = conn.observe()
        assert not observed.connected and observed.conflict and "foreign" in observed.conflict
        with pytest.raises(errors.Conflict):
            conn.connect()
        assert conn.disconnect(force=True) is False
        assert [r.source for r in mounts.mounts_at(conn.target())] == ["foreign"]
        assert is_mounted_at(beside)
        assert not led.owns_mount(conn.target()) and not led.owns_mount(beside)
    finally:
        run(["umount", conn.target()], timeout=30, check=False)
        run(["umount", beside], timeout=30, check=False)


def test_localfs_link(hs_host_config: config.HostConfig) -> None:
    data = pathlib.Path(hs_host_config.allowed_host_paths[0], "images_1")
    data.mkdir()
    conn = connections.make_connection("l", connections.LocalfsParams(str(data)), hs_host_config)
    assert conn.connect() is True
    assert os.path.realpath(conn.target()) == str(data)
    assert conn.target().endswith("_images__1")
    assert conn.connect() is False
    assert conn.disconnect() is True
    assert data.is_dir()


def test_glusterfs_fuse_mount_on_loopback(
    hs_host_config: config.HostConfig, gluster_volume: GlusterVolume
) -> None:
    cfg = dataclasses.replace(hs_host_config, command_timeout=60)
    params = connections.GlusterfsParams(gluster_volume.server, gluster_volume.volume)
    conn = connections.make_connection("g", params, cfg)
    assert "/glusterSD/" in conn.target()
    assert conn.mount_argv()[0] == ("systemd-run" if cfg.host_scope else "mount")  # type: ignore[attr-defined]
    try:
        assert conn.connect() is True
        observed = conn.observe()
        assert observed.connected and observed.fstype == "fuse.glusterfs"
        assert observed.source == gluster_volume.remote
        pathlib.Path(conn.target(), "hello").write_text("from fuse")
        assert pathlib.Path(gluster_volume.brick_dir, "hello").read_text() == "from fuse"
        assert conn.connect() is False
    finally:
        assert conn.disconnect(force=True) is True
    assert not is_mounted_at(conn.target())
    assert not os.path.lexists(conn.target())


def test_nfs_fails_cleanly_on_a_kernel_without_nfs(hs_host_config: config.HostConfig) -> None:
    with open("/proc/filesystems") as f:
        if any(line.split()[-1] == "nfs" for line in f if line.strip()):
            pytest.skip("this kernel has an NFS client: the clean-failure case does not apply")
    if commands.which("mount.nfs") is None:
        pytest.skip("nfs-common is not installed")
    cfg = dataclasses.replace(hs_host_config, command_timeout=30)
    conn = connections.make_connection("n", connections.NfsParams("127.0.0.1", "/export"), cfg)
    with pytest.raises((errors.Unsupported, errors.MountFailed)) as info:
        conn.connect()
    assert "mount.nfs" in str(info.value), "the tool's own message reaches the status"
    assert not os.path.lexists(conn.target())
    assert conn.disconnect() is False


def test_hung_gluster_brick_never_blocks_observe_or_forced_disconnect(
    hs_host_config: config.HostConfig, gluster_volume: GlusterVolume
) -> None:
    cfg = dataclasses.replace(hs_host_config, command_timeout=30)
    params = connections.GlusterfsParams(gluster_volume.server, gluster_volume.volume)
    conn = connections.make_connection("g", params, cfg)
    conn.connect()
    pid = gluster_volume.brick_pid()
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)
    try:
        start = time.monotonic()
        again = connections.make_connection("g", params, cfg)
        observed = again.observe()
        assert observed.connected
        assert again.plan_connect(observed) == []
        assert time.monotonic() - start < 2, "observing a hung mount reads only the mount table"
        start = time.monotonic()
        assert again.disconnect(force=True) is True
        assert time.monotonic() - start < 20
        assert not is_mounted_at(conn.target())
    finally:
        os.kill(pid, signal.SIGCONT)
        conn.disconnect(force=True)
