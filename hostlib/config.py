"""Host-side configuration: where hoststorage keeps its state and mounts, and what it may touch.

Built once by ``controller.settings`` from flags and the environment and handed down; hostlib never
reads the environment itself.
"""

from __future__ import annotations

import dataclasses
import os
import re

from hostlib import commands


@dataclasses.dataclass(frozen=True)
class HostConfig:
    state_dir: str = "/var/lib/hoststorage"
    """Ledger, host lock, probe files. Created on start-up."""
    mount_base: str = ""
    """Root of every mount point and link hoststorage makes; default ``<state_dir>/mnt``."""
    allowed_host_paths: tuple[str, ...] = ()
    """Absolute directories under which localfs connections, dir pools and hostPath monitors may live."""
    runner: commands.RunnerProtocol = dataclasses.field(default_factory=commands.Runner)
    """Runs host tools; a test injects a recording fake with the same signature."""
    use_host_scope: bool | None = None
    """Start FUSE helpers under ``systemd-run --scope`` (None: when systemd runs as PID 1)."""
    libvirt_uri: str = "qemu:///system"
    command_timeout: float = 60.0
    """Upper bound for one host command (mount, iscsiadm, ...); VDSM's out-of-process default."""
    allow_suid: bool = False
    """Admin opt-in: do not force ``nosuid`` on mounts."""
    allow_dev: bool = False
    """Admin opt-in: do not force ``nodev`` on mounts."""
    qemu_user: str = ""
    """Whose r-x access to a new mount is checked besides the agent's (VDSM checks qemu's): a user name,
    ``auto`` (``qemu``, else ``libvirt-qemu``, else no check when neither exists), or empty for none."""
    extra_vfs_types: tuple[str, ...] = ()
    """posixfs file system types the admin allows beside the built-in list (``hostlib.mounts``); they get
    the common mount options only."""
    allow_shared_sources: bool = False
    """Admin opt-in: mount a block source even when it is in use elsewhere on the host (mounted, backing
    ``/``, held by device-mapper/md, swap); see ``hostlib.blockdevs``."""

    def __post_init__(self) -> None:
        if not os.path.isabs(self.state_dir):
            raise ValueError(f"state dir must be absolute: {self.state_dir!r}")
        if not self.mount_base:
            object.__setattr__(self, "mount_base", os.path.join(self.state_dir, "mnt"))
        if not os.path.isabs(self.mount_base):
            raise ValueError(f"mount base must be absolute: {self.mount_base!r}")
        for p in self.allowed_host_paths:
            if not os.path.isabs(p):
                raise ValueError(f"allowed host path must be absolute: {p!r}")
        if self.qemu_user and not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", self.qemu_user):
            raise ValueError(f"qemu user must be a user name or 'auto': {self.qemu_user!r}")
        object.__setattr__(
            self, "allowed_host_paths", tuple(os.path.normpath(p) for p in self.allowed_host_paths)
        )

    @property
    def own_dirs(self) -> tuple[str, ...]:
        """hoststorage's own directories: no host path a spec names may be, hold or lie in them."""
        return (self.state_dir, self.mount_base)

    @property
    def host_scope(self) -> bool:
        if self.use_host_scope is not None:
            return self.use_host_scope
        return os.path.isdir("/run/systemd/system") and commands.which("systemd-run") is not None
