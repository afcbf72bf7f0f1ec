"""Removing a file we made works on a filesystem without ``RENAME_NOREPLACE`` (glusterfs's FUSE client,
NFS: ``renameat2`` answers EINVAL there).

Found by the chaos soak (issue 14): every DomainMonitor probe file on a gluster mount was left behind
when its monitor went ("cannot remove probe file ...: Invalid argument"), because the rename aside
failed. The unit tests give ``renameat2`` that answer; the host test removes a real file on a real
gluster FUSE mount.
"""

from __future__ import annotations

import ctypes
import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hostlib import errors, fsops


class NoNoreplace:
    """libc whose ``renameat2`` refuses RENAME_NOREPLACE with EINVAL, as a FUSE filesystem without it."""

    def __init__(self) -> None:
        self.calls = 0

    def renameat2(self, *_: Any) -> int:
        self.calls += 1
        ctypes.set_errno(errno.EINVAL)
        return -1


@pytest.fixture
def no_noreplace(monkeypatch: pytest.MonkeyPatch) -> NoNoreplace:
    fake = NoNoreplace()
    monkeypatch.setattr(fsops, "_libc", fake)
    return fake


def test_remove_of_ours_without_rename_noreplace(tmp_path: Path, no_noreplace: NoNoreplace) -> None:
    made = fsops.create_file(str(tmp_path), "probe", b"x")
    assert fsops.remove(str(tmp_path), "probe", expect=made) is True
    assert no_noreplace.calls == 1
    assert os.listdir(tmp_path) == []  # nothing left aside either


def test_a_mismatch_is_still_put_back_and_a_conflict(tmp_path: Path, no_noreplace: NoNoreplace) -> None:
    (tmp_path / "probe").write_bytes(b"theirs")
    theirs = fsops.ident(os.lstat(tmp_path / "probe"))
    with pytest.raises(errors.Conflict):
        fsops.remove(str(tmp_path), "probe", expect=(theirs[0], theirs[1] + 1))
    assert os.listdir(tmp_path) == ["probe"] and (tmp_path / "probe").read_bytes() == b"theirs"


def test_other_rename_errors_still_raise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Denied(NoNoreplace):
        def renameat2(self, *_: Any) -> int:
            ctypes.set_errno(errno.EACCES)
            return -1

    made = fsops.create_file(str(tmp_path), "probe", b"x")
    monkeypatch.setattr(fsops, "_libc", Denied())
    with pytest.raises(PermissionError):
        fsops.remove(str(tmp_path), "probe", expect=made)
    assert os.listdir(tmp_path) == ["probe"]


@pytest.fixture
def gluster_mount(gluster_volume: Any, tmp_path: Path) -> Iterator[str]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "glusterfs", gluster_volume.remote, str(mnt)], check=True, timeout=60)
    try:
        yield str(mnt)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False, timeout=60)


@pytest.mark.host
def test_remove_of_ours_on_a_gluster_mount(gluster_mount: str) -> None:
    name = f"probe-{os.getpid()}"
    made = fsops.create_file(gluster_mount, name, b"x")
    assert fsops.remove(gluster_mount, name, expect=made) is True
    assert not os.path.lexists(os.path.join(gluster_mount, name))
    assert not [n for n in os.listdir(gluster_mount) if n.startswith(".hoststorage-del-")]
