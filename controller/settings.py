"""One typed settings object for every hoststorage command, built once at start-up.

Precedence, per field: a command-line flag, then the ``HOSTSTORAGE_<FIELD>`` environment variable
(or the names listed in the field's ``env`` metadata), then the default written here. Nothing else in
the program reads the environment: the composition root (:mod:`controller.cli`) builds :class:`Settings`
and hands it (or the :class:`hostlib.config.HostConfig` it builds) down.

Adding a setting: add a field with a default and a docstring. If a subcommand has a flag for it, give
the flag ``dest=<field name>`` and ``default=None`` (``None`` means "not given on the command line")
and :meth:`Settings.build` picks it up. Supported field types: ``str``, ``int``, ``float``, ``bool``,
``tuple[str, ...]`` (environment: colon-separated) and their ``| None`` forms.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import re
import types
import typing
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hostlib import commands, config

ENV_PREFIX = "HOSTSTORAGE_"
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
MIN_RELIST_SECONDS = 10.0
MAX_RELIST_SECONDS = 86400.0
"""Bounds of ``relist_seconds`` (other than 0): one labelled list per node per period is the API cost."""


class SettingsError(ValueError):
    """A flag or environment variable has a value that cannot be used; the message names it."""


@dataclasses.dataclass(frozen=True)
class Settings:
    state_dir: str = "/var/lib/hoststorage"
    """Where the ledger, the host lock and probe files live (``--state-dir``, ``HOSTSTORAGE_STATE_DIR``)."""

    mount_base: str = ""
    """Root of every mount point and link hoststorage makes; empty means ``<state_dir>/mnt``."""

    allowed_host_paths: tuple[str, ...] = ()
    """Absolute directories under which localfs connections, dir pools and hostPath monitors may live
    (repeatable ``--allowed-host-path``; ``HOSTSTORAGE_ALLOWED_HOST_PATHS`` is colon-separated)."""

    libvirt_uri: str = "qemu:///system"
    """The libvirt connection StoragePools are managed through."""

    command_timeout: float = 60.0
    """Upper bound in seconds for one host command (mount, iscsiadm, ...); VDSM's out-of-process default."""

    lock_timeout: float = 120.0
    """How long a command waits for the host lock held by another hoststorage process before giving up."""

    host_namespaces: bool = False
    """Run host tools in PID 1's namespaces through nsenter (the agent in a privileged container)."""

    use_host_scope: bool | None = None
    """Start FUSE helpers under ``systemd-run --scope``; unset means "when systemd runs as PID 1"."""

    allow_suid: bool = False
    """Admin opt-in: do not force ``nosuid`` on mounts."""

    allow_dev: bool = False
    """Admin opt-in: do not force ``nodev`` on mounts."""

    qemu_user: str = "auto"
    """Whose r-x access to each new mount is checked besides the agent's rwx, as VDSM checks qemu's:
    ``auto`` (``qemu``, else ``libvirt-qemu``; no check on a node with neither), a user name, or ``none``."""

    extra_vfs_types: tuple[str, ...] = ()
    """posixfs file system types allowed beside the built-in list (ext2/3/4, xfs, btrfs, cifs, smb3, ceph):
    repeatable ``--allow-vfs-type``, ``HOSTSTORAGE_EXTRA_VFS_TYPES`` colon-separated. They get the common
    mount options only; nfs, glusterfs and FUSE types can never be added."""

    allow_shared_sources: bool = False
    """Admin opt-in (``--allow-shared-sources``): mount a posixfs or fs-pool block source even when it is in
    use elsewhere on the host (mounted, backing ``/``, held by device-mapper/md, swap). Off: refused with
    ``SourceInUse`` naming the use, in ``--dry-run`` too."""

    log_level: str = "WARNING"
    """Python logging level name (DEBUG, INFO, WARNING, ERROR)."""

    # ---- agent and controller (the cluster modes)

    node_name: str = dataclasses.field(default="", metadata={"env": ("NODE_NAME", "HOSTSTORAGE_NODE_NAME")})
    """The Node this agent serves (``NODE_NAME`` from the downward API); required by ``agent``."""

    kubeconfig: str = dataclasses.field(
        default="", metadata={"env": ("HOSTSTORAGE_KUBECONFIG", "KUBECONFIG")})
    """kubeconfig file; empty means in-cluster config, else ``~/.kube/config``."""

    health_port: int = 8080
    """Port of ``/healthz`` and ``/readyz`` (0 disables)."""

    metrics_port: int = 9090
    """Port of the Prometheus ``/metrics`` endpoint (0 disables)."""

    resync_seconds: float = 60.0
    """Every applicable object is re-reconciled this often (jittered by 10 %), repairing drift."""

    relist_seconds: float = 3600.0
    """Agent: list its own StorageNodeStates afresh this often (jittered by 10 %; the first one 30 s after
    the initial refresh) and write again any the API lost with no watch event seen; 0 disables."""

    workers: int = 4
    """Objects reconciled at once (one object never twice at once)."""

    shutdown_timeout: float = 20.0
    """On SIGTERM, how long in-flight work may take before the process exits anyway (mounts stay)."""

    profile_dir: str = ""
    """Write CPU (cProfile) and memory (tracemalloc) profiles here on exit and on SIGUSR1; off when empty."""

    event_namespace: str = dataclasses.field(
        default="default", metadata={"env": ("HOSTSTORAGE_EVENT_NAMESPACE", "POD_NAMESPACE")})
    """Namespace of the controller's Lease (``POD_NAMESPACE``). Events about our cluster-scoped objects and
    Nodes always go to ``default``, as the API server requires."""

    node_gone_grace: float = 300.0
    """Controller: a node NotReady this long no longer blocks a parent's teardown finalizer."""

    leader_election: bool = False
    """Controller: take a coordination.k8s.io Lease before acting (run with more than one replica)."""

    lease_name: str = "hoststorage-controller"
    """Controller: name of the leader-election Lease."""

    lease_seconds: float = 15.0
    """Controller: Lease duration; a leader renews every third of it."""

    status_window: float = 2.0
    """Controller: at most one status write per parent in this many seconds. A change after a quiet
    window is written at once; changes within the window are coalesced into one write at its end, which
    always carries the newest state (0 writes every change). Every agent watches every parent, so this
    bounds what a rollout on 5,000 nodes sends to the agents."""

    @property
    def effective_mount_base(self) -> str:
        return self.mount_base or os.path.join(self.state_dir, "mnt")

    def host_config(self, runner: commands.RunnerProtocol | None = None) -> config.HostConfig:
        """The host layer's view of these settings. ``runner`` replaces the real command runner (tests).

        The host layer is imported here, not at module level: the cluster controller builds Settings too
        and never loads the host stack (tests/test_registry.py checks its ``sys.modules``)."""
        from hostlib import commands, config  # noqa: PLC0415 - see the docstring

        return config.HostConfig(
            state_dir=self.state_dir,
            mount_base=self.effective_mount_base,
            allowed_host_paths=self.allowed_host_paths,
            runner=runner if runner is not None else commands.Runner(host_namespaces=self.host_namespaces),
            use_host_scope=self.use_host_scope,
            libvirt_uri=self.libvirt_uri,
            command_timeout=self.command_timeout,
            allow_suid=self.allow_suid,
            allow_dev=self.allow_dev,
            qemu_user="" if self.qemu_user == "none" else self.qemu_user,
            extra_vfs_types=self.extra_vfs_types,
            allow_shared_sources=self.allow_shared_sources,
        )

    @classmethod
    def build(
        cls, args: argparse.Namespace | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Flags (attributes of ``args`` named like the fields, None = not given), then env, then defaults."""
        env = os.environ if environ is None else environ
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            flag = getattr(args, field.name, None) if args is not None else None
            if flag is not None:
                values[field.name] = _from_flag(field.name, hints[field.name], flag)
                continue
            for var in env_names(field):
                raw = env.get(var)
                if raw is not None and raw != "":
                    values[field.name] = _from_env(var, hints[field.name], raw)
                    break
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        for name in ("state_dir", "mount_base"):
            value = getattr(self, name)
            if value and not os.path.isabs(value):
                raise SettingsError(f"{name.replace('_', '-')} must be an absolute path, got {value!r}")
        for p in self.allowed_host_paths:
            if not os.path.isabs(p):
                raise SettingsError(f"allowed-host-path must be an absolute path, got {p!r}")
            if os.path.normpath(p) == "/":
                raise SettingsError("allowed-host-path / would allow the whole host")
        if self.command_timeout <= 0:
            raise SettingsError("command-timeout must be positive")
        if self.lock_timeout < 0:
            raise SettingsError("lock-timeout must not be negative")
        for name in ("health_port", "metrics_port"):
            if not 0 <= getattr(self, name) <= 65535:
                raise SettingsError(f"{name.replace('_', '-')} must be a port number")
        if not 0 <= self.status_window <= 300:
            raise SettingsError("status-window must be between 0 and 300 seconds")
        if self.relist_seconds != 0 and not MIN_RELIST_SECONDS <= self.relist_seconds <= MAX_RELIST_SECONDS:
            raise SettingsError(
                f"relist-seconds must be 0 (off) or between {MIN_RELIST_SECONDS:.0f} "
                f"and {MAX_RELIST_SECONDS:.0f}"
            )
        if self.resync_seconds <= 0 or self.workers < 1 or self.shutdown_timeout < 0:
            raise SettingsError("resync-seconds and workers must be positive, shutdown-timeout not negative")
        if not re.fullmatch(r"[a-z_][a-z0-9_.-]{0,31}", self.qemu_user):
            raise SettingsError(f"qemu-user {self.qemu_user!r} is not auto, none or a user name")
        if self.extra_vfs_types:  # only the programs that mount are given any (see host_config)
            from hostlib import errors, mounts  # noqa: PLC0415

            for vfs_type in self.extra_vfs_types:
                try:
                    mounts.check_vfs_type_name(vfs_type)
                except errors.InvalidSpec as exc:
                    raise SettingsError(f"allow-vfs-type: {exc.message}") from None
        if self.log_level.upper() not in LOG_LEVELS:
            raise SettingsError(f"log-level {self.log_level!r} is not a logging level name")


def env_names(field: dataclasses.Field[Any]) -> tuple[str, ...]:
    """The environment variables a field is read from: its ``env`` metadata, else HOSTSTORAGE_<NAME>."""
    names = field.metadata.get("env")
    if names:
        return tuple(names)
    return (ENV_PREFIX + field.name.upper(),)


def _base_type(tp: Any) -> Any:
    """``X | None`` -> ``X``."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _from_flag(name: str, tp: Any, value: Any) -> Any:
    base = _base_type(tp)
    if typing.get_origin(base) is tuple:
        return tuple(value) if isinstance(value, list | tuple) else (value,)
    if isinstance(value, str) and base is not str:
        return _from_env(f"--{name.replace('_', '-')}", tp, value)
    return value


def _from_env(var: str, tp: Any, raw: str) -> Any:
    base = _base_type(tp)
    if typing.get_origin(base) is tuple:
        return tuple(p for p in raw.split(":") if p)
    if base is bool:
        low = raw.strip().lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise SettingsError(f"{var}={raw!r}: expected true or false")
    if base in (int, float):
        try:
            return base(raw)
        except ValueError:
            raise SettingsError(f"{var}={raw!r}: expected a number") from None
    return raw
