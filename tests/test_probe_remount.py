"""A DomainMonitor's probe file is still its own after the storage was mounted again.

Found by the chaos soak (issue 14): a gluster mount unmounted underneath was mounted again by the agent;
FUSE (and NFS) give every mount a fresh anonymous device number, so the probe's recorded
(device, inode) no longer matched, the monitor's teardown was a Conflict forever and held its
connection InUse (the parent's finalizer stuck). The recorded inode now counts on the filesystem
mounted at the root; the type and inode must still match. Unit tests with a recorded device that
differs; the host test remounts a real gluster volume.
"""

from __future__ import annotations

import os
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest

from hostlib import check_helper, fsops


def remove(root: pathlib.Path, name: str, expect: tuple[int, int]) -> dict[str, Any]:
    return check_helper.remove({"root": str(root), "path": str(root / name), "expect": list(expect)})


def test_the_probe_with_its_recorded_inode_is_removed_though_the_device_was_renumbered(
    tmp_path: pathlib.Path,
) -> None:
    dev, ino = fsops.create_file(str(tmp_path), ".hoststorage-probe-n1", b"x")
    assert remove(tmp_path, ".hoststorage-probe-n1", (dev + 3, ino)) == {"kind": "removed"}
    assert os.listdir(tmp_path) == []


def test_another_inode_at_the_probe_name_is_still_a_conflict(tmp_path: pathlib.Path) -> None:
    dev, ino = fsops.create_file(str(tmp_path), ".hoststorage-probe-n1", b"x")
    for recorded in ((dev + 3, ino + 1), (dev, ino + 1)):
        with pytest.raises(check_helper.CheckFailed, match="not the one hoststorage created"):
            remove(tmp_path, ".hoststorage-probe-n1", recorded)
    assert os.listdir(tmp_path) == [".hoststorage-probe-n1"]


def test_a_directory_with_the_recorded_inode_is_never_taken_for_the_probe(tmp_path: pathlib.Path) -> None:
    dev, ino = fsops.mkdir(str(tmp_path), ".hoststorage-probe-n1")
    with pytest.raises(check_helper.CheckFailed):
        remove(tmp_path, ".hoststorage-probe-n1", (dev + 3, ino))
    assert os.path.isdir(tmp_path / ".hoststorage-probe-n1")


@pytest.fixture
def gluster_mnt(gluster_volume: Any, tmp_path: pathlib.Path) -> Iterator[tuple[Any, pathlib.Path]]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        yield gluster_volume, mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=60, capture_output=True)


def _mount(vol: Any, mnt: pathlib.Path) -> None:
    subprocess.run(["mount", "-t", "glusterfs", vol.remote, str(mnt)], check=True, timeout=60)


@pytest.mark.host
def test_a_probe_on_gluster_is_removed_after_a_remount(gluster_mnt: tuple[Any, pathlib.Path]) -> None:
    vol, mnt = gluster_mnt
    _mount(vol, mnt)
    name = f".hoststorage-probe-remount-{os.getpid()}"
    made = fsops.create_file(str(mnt), name, b"x")
    subprocess.run(["umount", str(mnt)], check=True, timeout=60)
    # another mount takes the device number just freed (the kernel hands out the lowest free one), as
    # the other nodes' and connections' mounts do between an agent's unmount and its remount
    other = mnt.parent / "other"
    other.mkdir()
    _mount(vol, other)
    try:
        _mount(vol, mnt)
    finally:
        subprocess.run(["umount", "-l", str(other)], check=False, timeout=60)
    # the point of the test: the new mount has another device number, the file the same inode
    st = os.lstat(mnt / name)
    assert (st.st_dev != made[0], st.st_ino) == (True, made[1])
    check_helper._real_roots.clear()
    assert remove(mnt, name, made) == {"kind": "removed"}
    assert not (mnt / name).exists()
