"""Preflight: which connection types this host can serve, and why not, before anything is attempted.

Run at agent start-up (and by ``hoststorage status``) so that a host without an NFS client or an iSCSI
initiator says so once, plainly ("nfs: no nfs in /proc/filesystems and modprobe nfs failed: ..."),
instead of every connection failing with a mount error. Cheap and hang-free: it reads /proc and /sys,
looks up helpers on PATH and at most runs ``modprobe`` with a short timeout; it never touches storage.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

from hostlib import commands
from hostlib.config import HostConfig

log = logging.getLogger(__name__)

MODPROBE_TIMEOUT = 10.0
LIBVIRT_SOCKETS = (
    "/run/libvirt/libvirt-sock",
    "/var/run/libvirt/libvirt-sock",
    "/run/libvirt/virtqemud-sock",
    "/run/libvirt/virtstoraged-sock",
)
HELPERS = (
    "mount",
    "umount",
    "mount.nfs",
    "mount.glusterfs",
    "iscsiadm",
    "udevadm",
    "systemd-run",
    "modprobe",
)
POSIX_FILESYSTEMS = ("ext4", "xfs", "btrfs")


@dataclasses.dataclass(frozen=True)
class TypeSupport:
    type: str
    supported: bool
    reason: str

    def __str__(self) -> str:
        return f"{self.type}: {'supported' if self.supported else 'unsupported'}: {self.reason}"


@dataclasses.dataclass(frozen=True)
class Report:
    types: dict[str, TypeSupport]
    helpers: dict[str, str | None]
    filesystems: tuple[str, ...]
    libvirt_socket: str | None
    host_scope: bool

    def supported(self, conn_type: str) -> bool:
        t = self.types.get(conn_type)
        return t is not None and t.supported

    def problems(self) -> list[str]:
        out = [str(t) for t in self.types.values() if not t.supported]
        if self.libvirt_socket is None:
            out.append("libvirt: no libvirtd socket found (" + ", ".join(LIBVIRT_SOCKETS) + ")")
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "types": {k: {"supported": v.supported, "reason": v.reason} for k, v in self.types.items()},
            "helpers": dict(self.helpers),
            "filesystems": list(self.filesystems),
            "libvirtSocket": self.libvirt_socket,
            "hostScope": self.host_scope,
        }


def read_filesystems(path: str = "/proc/filesystems") -> tuple[str, ...]:
    try:
        with open(path, encoding="utf-8") as f:
            return tuple(line.split()[-1] for line in f if line.strip())
    except OSError:
        return ()


class _Probe:
    def __init__(
        self,
        host: HostConfig,
        filesystems_path: str,
        sys_root: str,
        which: Callable[[str], str | None],
    ) -> None:
        self.host = host
        self.filesystems_path = filesystems_path
        self.sys_root = sys_root
        self.which = which
        self.filesystems = read_filesystems(filesystems_path)

    def modprobe(self, module: str) -> str | None:
        """Load a module; None on success, else why not (modprobe's own message)."""
        if self.which("modprobe") is None:
            return "modprobe is not installed"
        try:
            self.host.runner(["modprobe", module], timeout=MODPROBE_TIMEOUT)
        except commands.CommandError as exc:
            return exc.tool_message
        return None

    def has_fs(self, fs: str, module: str | None = None) -> tuple[bool, str]:
        if fs in self.filesystems:
            return True, f"{fs} in /proc/filesystems"
        failure = self.modprobe(module or fs)
        if failure is None:
            self.filesystems = read_filesystems(self.filesystems_path)
            if fs in self.filesystems:
                return True, f"{fs} loaded with modprobe"
            failure = f"modprobe succeeded but {fs} is still not in /proc/filesystems"
        return False, f"no {fs} in /proc/filesystems and modprobe {module or fs} failed: {failure}"

    def nfs(self) -> TypeSupport:
        if self.which("mount.nfs") is None:
            return TypeSupport("nfs", False, "mount.nfs is not installed (nfs-common)")
        ok, why = self.has_fs("nfs")
        return TypeSupport("nfs", ok, why if not ok else f"mount.nfs present, {why}")

    def posixfs(self) -> TypeSupport:
        if self.which("mount") is None:
            return TypeSupport("posixfs", False, "mount is not installed")
        present = [fs for fs in POSIX_FILESYSTEMS if fs in self.filesystems]
        if not present:
            return TypeSupport(
                "posixfs", False, f"none of {', '.join(POSIX_FILESYSTEMS)} in /proc/filesystems"
            )
        return TypeSupport("posixfs", True, f"mount present; kernel has {', '.join(present)}")

    def glusterfs(self) -> TypeSupport:
        if self.which("mount.glusterfs") is None:
            return TypeSupport("glusterfs", False, "mount.glusterfs is not installed (glusterfs-client)")
        if not os.path.exists("/dev/fuse"):
            return TypeSupport("glusterfs", False, "mount.glusterfs present but no /dev/fuse")
        ok, why = self.has_fs("fuse")
        if not ok:
            return TypeSupport("glusterfs", False, why)
        scope = "under systemd-run --scope" if self.host.host_scope else "without a host scope (no systemd)"
        return TypeSupport("glusterfs", True, f"mount.glusterfs and FUSE present; helpers run {scope}")

    def iscsi(self) -> TypeSupport:
        if self.which("iscsiadm") is None:
            return TypeSupport("iscsi", False, "iscsiadm is not installed (open-iscsi)")
        transport = os.path.join(self.sys_root, "class/iscsi_transport/tcp")
        if not os.path.exists(transport):
            failure = self.modprobe("iscsi_tcp")
            if failure is not None or not os.path.exists(transport):
                detail = f": modprobe iscsi_tcp failed: {failure}" if failure else ""
                return TypeSupport("iscsi", False, f"iscsiadm present but no iscsi_tcp transport{detail}")
        return TypeSupport("iscsi", True, "iscsiadm present, iscsi_tcp transport loaded")

    def localfs(self) -> TypeSupport:
        if not self.host.allowed_host_paths:
            return TypeSupport("localfs", False, "no allowed host paths configured (--allowed-host-path)")
        missing = [p for p in self.host.allowed_host_paths if not os.path.isdir(p)]
        roots = ", ".join(self.host.allowed_host_paths)
        if len(missing) == len(self.host.allowed_host_paths):
            return TypeSupport("localfs", False, f"no allowed host path exists ({roots})")
        return TypeSupport("localfs", True, f"allowed host paths: {roots}")


def check(
    host: HostConfig,
    *,
    filesystems_path: str = "/proc/filesystems",
    sys_root: str = "/sys",
    which: Callable[[str], str | None] = commands.which,
) -> Report:
    """Probe this host. Never raises for a missing piece: that is what the report is for."""
    probe = _Probe(host, filesystems_path, sys_root, which)
    types = {
        t.type: t for t in (probe.nfs(), probe.posixfs(), probe.glusterfs(), probe.iscsi(), probe.localfs())
    }
    sock = next((s for s in LIBVIRT_SOCKETS if os.path.exists(s)), None)
    report = Report(
        types=types,
        helpers={h: which(h) for h in HELPERS},
        filesystems=probe.filesystems,
        libvirt_socket=sock,
        host_scope=host.host_scope,
    )
    for problem in report.problems():
        log.info("preflight: %s", problem)
    return report
