"""Preflight says per connection type whether this host can serve it, and why not."""

from __future__ import annotations

import pathlib
import time

import pytest
from fake_runner import FakeRunner

from hostlib import config, preflight


class ModprobeRecorder(FakeRunner):
    """Replaces commands.Runner: every modprobe fails (or succeeds) as told; records the modules asked."""

    def __init__(self, ok: bool) -> None:
        super().__init__()
        self.ok = ok
        self.modules: list[str] = []

    def answer(self, argv: tuple[str, ...], secrets: tuple[str, ...]) -> tuple[int, str, str]:
        assert argv[0] == "modprobe"
        self.modules.append(argv[1])
        return (0, "", "") if self.ok else (1, "", f"modprobe: FATAL: Module {argv[1]} not found")


def write_fs(tmp_path: pathlib.Path, names: list[str]) -> str:
    path = tmp_path / "filesystems"
    path.write_text("".join(f"nodev\t{n}\n" if n in ("tmpfs", "fuse") else f"\t{n}\n" for n in names))
    return str(path)


def every_tool(name: str) -> str | None:
    return f"/usr/sbin/{name}"


def test_missing_kernel_support_is_explained(tmp_path: pathlib.Path) -> None:
    rec = ModprobeRecorder(ok=False)
    host = config.HostConfig(state_dir=str(tmp_path), runner=rec, use_host_scope=False)
    report = preflight.check(
        host, filesystems_path=write_fs(tmp_path, ["ext4", "fuse"]), sys_root=str(tmp_path), which=every_tool
    )
    nfs = report.types["nfs"]
    assert not nfs.supported
    assert nfs.reason.startswith("no nfs in /proc/filesystems and modprobe nfs failed: modprobe: FATAL")
    assert report.types["iscsi"].reason.startswith("iscsiadm present but no iscsi_tcp transport")
    assert report.supported("posixfs") and report.supported("glusterfs") is pathlib.Path("/dev/fuse").exists()
    assert not report.supported("localfs")
    assert "no allowed host paths" in report.types["localfs"].reason
    assert rec.modules == ["nfs", "iscsi_tcp"]
    assert any(p.startswith("nfs: unsupported") for p in report.problems())
    assert report.to_dict()["types"]["nfs"]["supported"] is False


def test_present_support_is_supported(tmp_path: pathlib.Path) -> None:
    (tmp_path / "class/iscsi_transport/tcp").mkdir(parents=True)
    (tmp_path / "allowed").mkdir()
    rec = ModprobeRecorder(ok=False)
    host = config.HostConfig(
        state_dir=str(tmp_path),
        runner=rec,
        use_host_scope=True,
        allowed_host_paths=(str(tmp_path / "allowed"),),
    )
    report = preflight.check(
        host,
        filesystems_path=write_fs(tmp_path, ["ext4", "xfs", "nfs", "fuse"]),
        sys_root=str(tmp_path),
        which=every_tool,
    )
    assert report.supported("nfs") and report.supported("iscsi") and report.supported("localfs")
    assert rec.modules == [], "nothing is loaded when the kernel already has it"
    assert report.types["posixfs"].reason == "mount present; kernel has ext4, xfs"
    if pathlib.Path("/dev/fuse").exists():
        assert "systemd-run --scope" in report.types["glusterfs"].reason


def test_missing_tools(tmp_path: pathlib.Path) -> None:
    host = config.HostConfig(state_dir=str(tmp_path), runner=ModprobeRecorder(ok=True))
    report = preflight.check(host, filesystems_path=write_fs(tmp_path, ["ext4"]), which=lambda name: None)
    assert report.types["nfs"].reason == "mount.nfs is not installed (nfs-common)"
    assert report.types["iscsi"].reason == "iscsiadm is not installed (open-iscsi)"
    assert report.types["glusterfs"].reason == "mount.glusterfs is not installed (glusterfs-client)"
    assert report.types["posixfs"].reason == "mount is not installed"
    assert all(v is None for v in report.helpers.values())


@pytest.mark.host
def test_this_machine(tmp_path: pathlib.Path, require_root: None) -> None:
    host = config.HostConfig(state_dir=str(tmp_path), allowed_host_paths=(str(tmp_path),))
    start = time.monotonic()
    report = preflight.check(host)
    assert time.monotonic() - start < 10, "preflight is cheap"
    assert report.supported("posixfs")
    assert report.supported("localfs")
    if "nfs" not in preflight.read_filesystems():
        assert not report.supported("nfs")
        assert "modprobe nfs failed" in report.types["nfs"].reason
    if not pathlib.Path("/sys/class/iscsi_transport/tcp").exists():
        assert not report.supported("iscsi")
        assert "no iscsi_tcp transport" in report.types["iscsi"].reason
    assert report.helpers["mount"] is not None
