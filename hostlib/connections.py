"""Storage connections on this host: nfs, posixfs, glusterfs, iscsi and localfs.

The reconciler parses a StorageConnection spec into one of the frozen params dataclasses below, checks
it with :func:`validate` (pure checks plus ``realpath`` for localfs; raises ``InvalidSpec`` naming the
field, e.g. ``spec.nfs.export``) and gets a :class:`Connection` from :func:`make_connection`.

Behaviour follows VDSM's ``storageServer.py``:
- ``connect()`` is idempotent (already mounted = no change, returns False), creates the mount
  directory if needed, and undoes its own partial work: a failed mount removes the directory it
  created; a failed access check (the agent's rwx, or r-x for ``ro`` mounts; then qemu's r-x as the
  ``qemu_user`` of the host config; each tested in a child process with a timeout, never in an agent
  thread) unmounts again and raises ``PermissionDenied``.
- ``disconnect()`` unmounts (plain first; busy -> ``InUse`` naming the holders; ``force=True`` ->
  lazy ``umount -l``, plus ``-f`` for nfs) and removes the mount directory. A foreign mount on our
  mount point is never unmounted.
- ``plan_connect`` / ``plan_disconnect`` list the :class:`hostlib.actions.Action` s with the exact
  argv, for ``--dry-run``.

Mount points are VDSM's (see :mod:`hostlib.mounts`), so two connections to the same remote share one
mount point: the reconciler's ledger decides who owns it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import logging
import os
import re
import secrets as pysecrets
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from hostlib import actions, blockdevs, commands, errors, fsops, iscsi, mounts, paths
from hostlib.config import HostConfig

log = logging.getLogger(__name__)

NFS_DEFAULTS = ("soft", "nosharecache")
NFS_TIMEO = 100  # deciseconds: with retrans=3 a request to dead NFS fails after about 60 s (VDSM)
NFS_RETRANS = 3
NFS_TIMEO_RANGE = (1, 6000)
NFS_RETRANS_RANGE = (0, 20)
"""Bounds of spec.nfs.timeo (deciseconds) and retrans; crds/storageconnection.yaml mirrors them."""
NFS_VERSIONS = {
    "3": ("nfsvers=3",),
    "4": ("nfsvers=4",),
    "4.1": ("nfsvers=4", "minorversion=1"),
    "4.2": ("nfsvers=4", "minorversion=2"),
    "auto": (),
}
MAX_BACKUP_SERVERS = 16
MAX_STACKED = 8
HOST_SCOPE_PREFIX = ("systemd-run", "--scope", "--slice=hoststorage-glusterfs")
_GLUSTER_VOLUME_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


# ------------------------------------------------------------------------------------------ params


@dataclasses.dataclass(frozen=True)
class ChapCredentials:
    """CHAP username and password; the password never appears in repr() or str()."""

    username: str
    password: str = dataclasses.field(repr=False)

    def __repr__(self) -> str:
        return f"ChapCredentials(username={self.username!r}, password='***')"

    __str__ = __repr__


@dataclasses.dataclass(frozen=True)
class NfsParams:
    server: str
    export: str
    version: str = "auto"
    timeo: int | None = None
    retrans: int | None = None
    options: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class PosixfsParams:
    source: str
    vfs_type: str
    options: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class GlusterfsParams:
    server: str
    volume: str
    backup_servers: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class IscsiParams:
    portal: str
    target: str
    lun: int | None = None
    initiator_name: str | None = None
    chap: ChapCredentials | None = None


@dataclasses.dataclass(frozen=True)
class LocalfsParams:
    path: str


Params = NfsParams | PosixfsParams | GlusterfsParams | IscsiParams | LocalfsParams

TYPE_NAMES: dict[type[Any], str] = {
    NfsParams: "nfs",
    PosixfsParams: "posixfs",
    GlusterfsParams: "glusterfs",
    IscsiParams: "iscsi",
    LocalfsParams: "localfs",
}


def type_name(params: Params) -> str:
    return TYPE_NAMES[type(params)]


# ---------------------------------------------------------------------------------------- observed


@dataclasses.dataclass(frozen=True)
class ConnectionObserved:
    """What the host shows for one connection. ``conflict`` says why the target is not usable."""

    type: str
    target: str
    connected: bool
    target_exists: bool = False
    source: str | None = None
    fstype: str | None = None
    options: tuple[str, ...] = ()
    conflict: str | None = None
    device: str | None = None
    mount: mounts.MountIdentity | None = None
    """The identity of our mount on the target (the topmost one there), when connected."""
    covered: bool = False
    """Our mount is there, but something else is mounted on top of it: a Conflict that teardown reports
    and never unmounts (umount would take the foreign mount on top)."""

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"type": self.type, "mountPoint": self.target, "connected": self.connected}
        if self.source is not None:
            out["source"] = self.source
        if self.fstype is not None:
            out["fstype"] = self.fstype
        if self.options:
            out["options"] = list(self.options)
        if self.device is not None:
            out["device"] = self.device
        if self.conflict is not None:
            out["conflict"] = self.conflict
        return out


@runtime_checkable
class Connection(Protocol):
    name: str
    type: str

    def target(self) -> str: ...
    def observe(self) -> ConnectionObserved: ...
    def plan_connect(self, observed: ConnectionObserved) -> list[actions.Action]: ...
    def plan_disconnect(self, observed: ConnectionObserved, force: bool = False) -> list[actions.Action]: ...
    def connect(self) -> bool: ...
    def disconnect(self, *, force: bool = False) -> bool: ...


# -------------------------------------------------------------------------------------- validation


def _field(kind: str, name: str) -> str:
    return f"spec.{kind}.{name}"


def _check_int(value: object, lo: int, hi: int, field: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise errors.InvalidSpec(f"must be an integer, got {type(value).__name__}", field=field)
    if not lo <= value <= hi:
        raise errors.InvalidSpec(f"{value} is out of range {lo}..{hi}", field=field)


def _check_posix_source(source: object, vfs_type: str, field: str) -> None:
    if not isinstance(source, str):
        raise errors.InvalidSpec(f"must be a string, got {type(source).__name__}", field=field)
    if vfs_type in mounts.NETWORK_POSIXFS and source.startswith("//"):
        rest = source[2:]
        host, _, share = rest.partition("/")
        paths.validate_hostname(host, field=field, allow_bare_ipv6=False)
        if not share:
            raise errors.InvalidSpec(f"{source!r}: expected //server/share", field=field)
        paths.validate_abs_path("/" + share, field=field)
        return
    if source.startswith("/"):
        normal = paths.validate_abs_path(source, field=field)
        if not normal.startswith("/dev/") or normal == "/dev":
            raise errors.InvalidSpec(
                f"{source!r}: a local source must be a device path under /dev (or use server:/path)",
                field=field,
            )
        return
    host, path = mounts.split_remote(source, field=field)
    host_only, port = host, ""
    if host.startswith("["):
        end = host.index("]")
        host_only, port = host[: end + 1], host[end + 2 :]
    elif ":" in host:
        host_only, port = host.split(":", 1)
    paths.validate_hostname(host_only, field=field, allow_bare_ipv6=False)
    if port and (not port.isdigit() or not 0 < int(port) < 65536):
        raise errors.InvalidSpec(f"{source!r}: port must be a number from 1 to 65535", field=field)
    paths.validate_abs_path(path, field=field)


def validate(params: Params, host: HostConfig) -> None:
    """Refuse anything unsafe or malformed before the host is touched. Raises InvalidSpec(field=...)."""
    suid, dev = host.allow_suid, host.allow_dev
    if isinstance(params, NfsParams):
        paths.validate_hostname(params.server, field=_field("nfs", "server"))
        paths.validate_abs_path(params.export, field=_field("nfs", "export"))
        if params.version not in NFS_VERSIONS:
            raise errors.InvalidSpec(
                f"{params.version!r} is not one of {', '.join(NFS_VERSIONS)}", field=_field("nfs", "version")
            )
        if params.timeo is not None:
            _check_int(params.timeo, *NFS_TIMEO_RANGE, _field("nfs", "timeo"))
        if params.retrans is not None:
            _check_int(params.retrans, *NFS_RETRANS_RANGE, _field("nfs", "retrans"))
        mounts.check_options(
            "nfs", params.options, allow_suid=suid, allow_dev=dev, field=_field("nfs", "options")
        )
    elif isinstance(params, PosixfsParams):
        kind = mounts.posixfs_kind(
            params.vfs_type, extra=host.extra_vfs_types, field=_field("posixfs", "vfsType")
        )
        _check_posix_source(params.source, params.vfs_type, _field("posixfs", "source"))
        mounts.check_options(
            kind,
            params.options,
            allow_suid=suid,
            allow_dev=dev,
            field=_field("posixfs", "options"),
        )
    elif isinstance(params, GlusterfsParams):
        paths.validate_hostname(params.server, field=_field("glusterfs", "server"))
        f = _field("glusterfs", "volume")
        if not isinstance(params.volume, str) or not _GLUSTER_VOLUME_RE.match(params.volume):
            raise errors.InvalidSpec(
                f"{params.volume!r} is not a gluster volume name (1-64 of [A-Za-z0-9_.-])", field=f
            )
        if params.volume.startswith("-") or params.volume in (".", ".."):
            raise errors.InvalidSpec(f"{params.volume!r} is not a gluster volume name", field=f)
        f = _field("glusterfs", "backupServers")
        if not isinstance(params.backup_servers, (tuple, list)):
            raise errors.InvalidSpec("must be a list of hostnames", field=f)
        if len(params.backup_servers) > MAX_BACKUP_SERVERS:
            raise errors.InvalidSpec(f"at most {MAX_BACKUP_SERVERS} backup servers", field=f)
        for i, s in enumerate(params.backup_servers):
            # mount.glusterfs separates backup servers with ':', so IPv6 addresses cannot be listed.
            paths.validate_hostname(s, field=f"{f}[{i}]", allow_bare_ipv6=False)
            if isinstance(s, str) and s.startswith("["):
                raise errors.InvalidSpec(
                    "IPv6 backup servers are not supported by mount.glusterfs", field=f"{f}[{i}]"
                )
        mounts.check_options(
            "glusterfs", params.options, allow_suid=suid, allow_dev=dev, field=_field("glusterfs", "options")
        )
    elif isinstance(params, IscsiParams):
        paths.split_host_port(params.portal, default_port=iscsi.DEFAULT_PORT, field=_field("iscsi", "portal"))
        iscsi.check_name(params.target, field=_field("iscsi", "target"))
        if params.lun is not None:
            _check_int(params.lun, 0, 16383, _field("iscsi", "lun"))
        if params.initiator_name is not None:
            iscsi.check_name(params.initiator_name, field=_field("iscsi", "initiatorName"))
        if params.chap is not None:
            _check_chap(params.chap)
    elif isinstance(params, LocalfsParams):
        f = _field("localfs", "path")
        path = paths.validate_abs_path(params.path, field=f)
        if not host.allowed_host_paths:
            raise errors.InvalidSpec(
                "no allowed host paths are configured on this host (--allowed-host-path)", field=f
            )
        real = os.path.realpath(path)
        paths.refuse_own_dirs(path, host.own_dirs, field=f)
        if not any(paths.is_under(os.path.realpath(root), real) for root in host.allowed_host_paths):
            raise errors.InvalidSpec(
                f"{path!r} resolves to {real!r}, outside the allowed host paths "
                f"({', '.join(host.allowed_host_paths)})",
                field=f,
            )
    else:
        raise errors.InvalidSpec(f"unknown connection parameters {type(params).__name__}")


def _check_chap(chap: ChapCredentials) -> None:
    f = "spec.iscsi.chapSecretRef"
    if not isinstance(chap.username, str) or not 0 < len(chap.username) <= 255:
        raise errors.InvalidSpec("CHAP username must be 1-255 characters", field=f)
    if not isinstance(chap.password, str) or not 0 < len(chap.password) <= 255:
        raise errors.InvalidSpec("CHAP password must be 1-255 characters", field=f)
    for what, value in (("username", chap.username), ("password", chap.password)):
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise errors.InvalidSpec(f"CHAP {what} contains a control character", field=f)
        if value.startswith("-"):
            raise errors.InvalidSpec(f"CHAP {what} must not start with '-'", field=f)


# ------------------------------------------------------------------------------------ mount types


def _access_argv(path: str, read_only: bool) -> tuple[str, ...]:
    # coreutils test(1) in a child: a hung mount blocks the child, never an agent thread.
    modes = ("-r", "-x") if read_only else ("-r", "-w", "-x")
    argv: list[str] = ["test", "-d", path]
    for m in modes:
        argv += ["-a", m, path]
    return tuple(argv)


QEMU_USERS_AUTO = ("qemu", "libvirt-qemu")
"""``auto`` looks for these in turn: the RHEL/Fedora name, then the Debian/Ubuntu one."""


def qemu_identity(host: HostConfig) -> tuple[str, int, int] | None:
    """(name, uid, gid) of the user qemu runs as on this host, None when no check is wanted or possible.

    Looked up with getent through the host runner, so an agent in a container sees the node's users.
    A user the admin named that does not exist is an error; ``auto`` finding none means "no qemu here".
    """
    if not host.qemu_user:
        return None
    names = QEMU_USERS_AUTO if host.qemu_user == "auto" else (host.qemu_user,)
    for name in names:
        result = host.runner(("getent", "passwd", name), timeout=host.command_timeout, check=False)
        fields = result.stdout.strip().split(":")
        if result.rc == 0 and len(fields) >= 4 and fields[2].isdigit() and fields[3].isdigit():
            return name, int(fields[2]), int(fields[3])
    if host.qemu_user != "auto":
        raise errors.Unsupported(
            f"the qemu user {host.qemu_user!r} (qemu-user setting) does not exist on this node"
        )
    log.debug("no qemu user (%s) on this node; only the agent's access is checked", ", ".join(names))
    return None


def qemu_access_argv(path: str, uid: int, gid: int) -> tuple[str, ...]:
    """r-x on ``path`` as qemu would have it: its uid, gid and supplementary groups (setpriv, util-linux)."""
    return ("setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--", *_access_argv(path, True))


class MountConnection:
    """A connection that is a mount on a directory under the mount base."""

    type = "mount"

    def __init__(
        self,
        name: str,
        host: HostConfig,
        *,
        source: str,
        fstype: str,
        options: tuple[str, ...],
        mount_point: str,
        prefix: tuple[str, ...] = (),
    ) -> None:
        self.name = name
        self.host = host
        self.source = source
        self.fstype = fstype
        self.options = options
        self.mount_point = mount_point
        self.prefix = prefix
        self.owned_id: fsops.Ident | None = None
        """(device, inode) of the mount point directory hoststorage created (set by :meth:`connect`, or
        from the ledger before :meth:`disconnect`); only that directory is ever removed."""
        self.owned: mounts.MountIdentity | None = None
        """The mount hoststorage made here, as the ledger recorded it (set by the reconciler, and by
        :meth:`connect` right after mounting). None: no mount was recorded, so ours is matched by
        source (a mount found in place before hoststorage, or an entry from before identities)."""

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.source} on {self.mount_point}>"

    def _rel(self) -> tuple[str, str]:
        """(the mount base as resolved, the mount point relative to it): what fsops works below."""
        root = os.path.realpath(self.host.mount_base)
        return root, fsops.relative(root, self.mount_point)

    def target(self) -> str:
        return self.mount_point

    def mount_argv(self) -> tuple[str, ...]:
        return (*self.prefix, *mounts.mount_argv(self.source, self.mount_point, self.fstype, self.options))

    def _same_source(self, record: mounts.MountRecord) -> bool:
        return record.canonical_source == mounts.canonical_source(self.source)

    def _matches(self, record: mounts.MountRecord) -> bool:
        """Whether ``record`` is our mount: by its recorded identity, else (none recorded) by source."""
        if self.owned is not None:
            return self.owned.matches(record)
        return self._same_source(record)

    def observe(self) -> ConnectionObserved:
        # Only the mount table is read while something is mounted there: an lstat of the mount point
        # would reach into the (possibly hung) storage.
        at = mounts.mounts_at(self.mount_point)
        top = mounts.topmost(self.mount_point, at)
        if top is not None:
            if self._matches(top):
                return ConnectionObserved(
                    self.type,
                    self.mount_point,
                    True,
                    True,
                    top.source,
                    top.fstype,
                    top.options,
                    mount=mounts.MountIdentity.of(top),
                )
            if any(self._matches(r) for r in at):
                covered = (
                    f"{top.source} ({top.fstype}) is mounted on top of this connection's mount of "
                    f"{self.source} on {self.mount_point}; hoststorage unmounts neither (unmount the one "
                    "on top first)"
                )
                return ConnectionObserved(
                    self.type, self.mount_point, False, True, conflict=covered, covered=True
                )
            if self.owned is not None and self._same_source(top):
                foreign = (
                    f"{self.mount_point} has {top.source} mounted, but not by hoststorage (its mount "
                    f"{self.owned.mount_id} is gone); it is left alone"
                )
            else:
                foreign = (
                    f"{self.mount_point} already has {top.source} ({top.fstype}) mounted, not {self.source}"
                )
            return ConnectionObserved(self.type, self.mount_point, False, True, conflict=foreign)
        conflict: str | None = None
        exists = os.path.lexists(self.mount_point)
        if exists and not os.path.isdir(self.mount_point):
            conflict = f"{self.mount_point} exists and is not a directory"
        elif exists and os.path.islink(self.mount_point):
            conflict = f"{self.mount_point} is a symlink"
        return ConnectionObserved(self.type, self.mount_point, False, exists, conflict=conflict)

    def plan_connect(self, observed: ConnectionObserved) -> list[actions.Action]:
        if observed.connected:
            return []
        if observed.conflict:
            raise errors.Conflict(observed.conflict)
        self._before_mount()
        plan = []
        if not observed.target_exists:
            plan.append(
                actions.Action("mkdir", f"create mount point {self.mount_point}", path=self.mount_point)
            )
        plan.append(
            actions.Action(
                "mount",
                f"mount {self.source} on {self.mount_point}",
                argv=self.mount_argv(),
                path=self.mount_point,
            )
        )
        return plan

    def plan_disconnect(self, observed: ConnectionObserved, force: bool = False) -> list[actions.Action]:
        if observed.covered:
            raise errors.Covered(str(observed.conflict))
        plan = []
        if observed.connected:
            how = " (lazy if busy)" if force else ""
            plan.append(
                actions.Action(
                    "umount",
                    f"unmount {self.mount_point}{how}",
                    argv=mounts.umount_argv(self.mount_point),
                    path=self.mount_point,
                )
            )
        if (observed.connected or observed.target_exists) and observed.conflict is None:
            plan.append(
                actions.Action("rmdir", f"remove mount point {self.mount_point}", path=self.mount_point)
            )
        return plan

    def _recheck_mount_point(self) -> None:
        # The base may have changed since construction (a symlink planted in it): check again. The
        # parents are made through fsops, so a link planted in the base is Conflict, never followed.
        root = os.path.realpath(self.host.mount_base)
        os.makedirs(root, mode=0o755, exist_ok=True)
        fsops.makedirs(root, os.path.dirname(self._rel()[1]))
        parent = os.path.dirname(self.mount_point)
        real_parent = os.path.realpath(parent)
        if real_parent != parent:
            raise errors.Conflict(f"{parent} resolves to {real_parent}: refusing to mount through a symlink")
        if os.path.islink(self.mount_point):
            raise errors.Conflict(f"{self.mount_point} is a symlink: refusing to mount on it")

    def _mkdir(self) -> bool:
        """Create the mount point through fsops (True, its ident kept) or find one there (False)."""
        root, rel = self._rel()
        try:
            self.owned_id = fsops.mkdir(root, rel, mode=0o755)
        except FileExistsError:
            return False
        return True

    def connect(self) -> bool:
        observed = self.observe()
        if observed.connected:
            log.debug("connection %s: %s already mounted on %s", self.name, self.source, self.mount_point)
            return False
        if observed.conflict:
            raise errors.Conflict(observed.conflict)
        self._before_mount()
        self._recheck_mount_point()
        created = self._mkdir()
        try:
            self._mount()
        except BaseException:
            if created:
                self._rmdir()
            raise
        self._record_mount()
        try:
            self._check_access()
        except BaseException:
            with contextlib.suppress(errors.HostStorageError):
                mounts.umount(
                    self.host.runner, self.mount_point, timeout=self.host.command_timeout, lazy=True
                )
            if created:
                self._rmdir()
            raise
        log.info("connection %s: mounted %s on %s", self.name, self.source, self.mount_point)
        return True

    def _before_mount(self) -> None:
        """Checks of the source before it is mounted (and planned); a subclass adds its own."""

    def _record_mount(self) -> None:
        """Remember the mount just made (the topmost one on our point, of our source) as ours."""
        top = mounts.topmost(self.mount_point)
        if top is not None and self._same_source(top):
            self.owned = mounts.MountIdentity.of(top)
        else:
            log.warning("connection %s: the mount just made is not on top of %s", self.name, self.mount_point)

    def _mount(self) -> None:
        mounts.mount(
            self.host.runner,
            self.source,
            self.mount_point,
            self.fstype,
            self.options,
            timeout=self.host.command_timeout,
            prefix=self.prefix,
        )

    def _access_ok(self, argv: Sequence[str], what: str) -> bool:
        try:
            result = self.host.runner(argv, timeout=self.host.command_timeout, check=False)
        except commands.CommandError as exc:
            raise errors.PermissionDenied(f"{what} on {self.mount_point} failed: {exc.tool_message}") from exc
        return result.rc == 0

    def _check_access(self) -> None:
        read_only = "ro" in self.options
        if not self._access_ok(_access_argv(self.mount_point, read_only), "access check"):
            want = "r-x" if read_only else "rwx"
            raise errors.PermissionDenied(
                f"{self.mount_point}: the agent has no {want} access to {self.source}"
            )
        qemu = qemu_identity(self.host)
        if qemu is None:
            return
        name, uid, gid = qemu
        if not self._access_ok(qemu_access_argv(self.mount_point, uid, gid), "qemu access check"):
            raise errors.PermissionDenied(
                f"{self.mount_point}: qemu (user {name}, uid {uid}) has no r-x access to {self.source}; "
                "VMs could not use it (check the export's or the filesystem's permissions and the path "
                "to the mount base)"
            )

    def _rmdir(self) -> bool:
        """Remove the mount point if it is the directory hoststorage created (``owned_id``), through
        fsops: a directory someone else made, or a link, at that name is Conflict and stays."""
        if self.owned_id is None:
            if os.path.lexists(self.mount_point):
                log.warning("connection %s: leaving %s in place: hoststorage did not create it",
                            self.name, self.mount_point)
            return False
        root, rel = self._rel()
        try:
            return fsops.rmdir(root, rel, expect=self.owned_id)
        except OSError as exc:
            if exc.errno in (errno.EBUSY, errno.ENOTEMPTY, errno.ENOTDIR):
                log.warning(
                    "connection %s: leaving %s in place: %s", self.name, self.mount_point, exc.strerror
                )
                return False
            raise
        return True

    def _umount_force_flags(self) -> bool:
        return False

    def disconnect(self, *, force: bool = False) -> bool:
        observed = self.observe()
        if observed.covered:
            raise errors.Covered(str(observed.conflict))
        if observed.conflict and not observed.connected:
            log.warning("connection %s: %s; not ours, leaving it", self.name, observed.conflict)
            return False
        changed = False
        # Stacked mounts of our source (mounted twice by hand) go one by one; bounded, never a loop.
        for _ in range(MAX_STACKED):
            if not observed.connected:
                break
            self._umount(force)
            changed = True
            observed = self.observe()
        else:
            if observed.connected:
                raise errors.UnmountFailed(
                    f"{self.mount_point} is still mounted after {MAX_STACKED} unmounts"
                )
        if mounts.mounts_at(self.mount_point):
            log.warning("connection %s: something else is still mounted on %s", self.name, self.mount_point)
            return changed
        return self._rmdir() or changed

    def _umount(self, force: bool) -> None:
        timeout = self.host.command_timeout
        try:
            mounts.umount(self.host.runner, self.mount_point, timeout=timeout)
        except (errors.InUse, errors.UnmountFailed):
            if not force:
                raise
            log.warning("connection %s: %s busy, unmounting lazily", self.name, self.mount_point)
            mounts.umount(
                self.host.runner,
                self.mount_point,
                timeout=timeout,
                lazy=True,
                force=self._umount_force_flags(),
            )


class NfsConnection(MountConnection):
    type = "nfs"

    def _umount_force_flags(self) -> bool:
        return True


class PosixfsConnection(MountConnection):
    type = "posixfs"

    def _before_mount(self) -> None:
        # A device source in use elsewhere (mounted, backing /, held by dm/md, swap) is never mounted.
        if self.source.startswith("/dev/"):
            blockdevs.check_free(
                self.source,
                own_target=self.mount_point,
                allow_shared=self.host.allow_shared_sources,
                field="spec.posixfs.source",
            )


class GlusterfsConnection(MountConnection):
    type = "glusterfs"


class LocalfsConnection:
    """A symlink in the mount base to an allowed local directory (VDSM's LocalDirectoryConnection)."""

    type = "localfs"

    def __init__(self, name: str, host: HostConfig, path: str, link: str) -> None:
        self.name = name
        self.host = host
        self.path = path
        self.link = link
        self.owned_id: fsops.Ident | None = None
        """(device, inode) of the link hoststorage created (set by :meth:`connect`, or from the ledger
        before :meth:`disconnect`); only that link is ever replaced or removed."""

    def _rel(self) -> tuple[str, str]:
        root = os.path.dirname(self.link)
        return root, os.path.basename(self.link)

    def __repr__(self) -> str:
        return f"<LocalfsConnection {self.name} {self.link} -> {self.path}>"

    def target(self) -> str:
        return self.link

    def _real(self) -> str:
        validate(LocalfsParams(self.path), self.host)
        return os.path.realpath(self.path)

    def observe(self) -> ConnectionObserved:
        real = os.path.realpath(self.path)
        if os.path.islink(self.link):
            dest = os.readlink(self.link)
            if dest == real and os.path.isdir(real):
                return ConnectionObserved(self.type, self.link, True, True, source=real)
            return ConnectionObserved(
                self.type,
                self.link,
                False,
                True,
                source=dest,
                conflict=None if dest in (real, self.path) else f"{self.link} links to {dest}, not {real}",
            )
        if os.path.lexists(self.link):
            return ConnectionObserved(
                self.type, self.link, False, True, conflict=f"{self.link} exists and is not a link"
            )
        return ConnectionObserved(self.type, self.link, False, False)

    def plan_connect(self, observed: ConnectionObserved) -> list[actions.Action]:
        if observed.connected:
            return []
        if observed.conflict:
            raise errors.Conflict(observed.conflict)
        plan = []
        if observed.target_exists:
            plan.append(actions.Action("unlink", f"remove stale link {self.link}", path=self.link))
        plan.append(
            actions.Action("symlink", f"link {self.link} to {os.path.realpath(self.path)}", path=self.link)
        )
        return plan

    def plan_disconnect(self, observed: ConnectionObserved, force: bool = False) -> list[actions.Action]:
        if observed.target_exists and observed.conflict is None:
            return [actions.Action("unlink", f"remove link {self.link}", path=self.link)]
        return []

    def connect(self) -> bool:
        observed = self.observe()
        if observed.connected:
            return False
        if observed.conflict:
            raise errors.Conflict(observed.conflict)
        real = self._real()
        if not os.path.isdir(real):
            raise errors.NotFound(f"local path {self.path} does not exist or is not a directory")
        root, name = self._rel()
        os.makedirs(root, mode=0o755, exist_ok=True)
        if observed.target_exists:
            # A stale link (to the path as written, or to a directory that has gone): replaced only if
            # it is the one hoststorage made.
            if self.owned_id is None:
                raise errors.Conflict(f"{self.link} exists and was not made by hoststorage; left alone")
            fsops.remove(root, name, expect=self.owned_id, kind="link")
        # Made under a private name and renamed into place: the link appears whole, never half-made.
        tmp = f"{name}.tmp.{pysecrets.token_hex(6)}"  # never an old leftover's name
        made = fsops.symlink(root, tmp, real)
        fsops.rename(root, tmp, name, expect=made)
        self.owned_id = made
        log.info("connection %s: linked %s to %s", self.name, self.link, real)
        return True

    def disconnect(self, *, force: bool = False) -> bool:
        observed = self.observe()
        if not observed.target_exists or observed.conflict:
            return False
        if self.owned_id is None:
            log.warning("connection %s: leaving %s in place: hoststorage did not create it",
                        self.name, self.link)
            return False
        root, name = self._rel()
        if not fsops.remove(root, name, expect=self.owned_id, kind="link"):
            return False
        log.info("connection %s: removed link %s", self.name, self.link)
        return True


class IscsiConnection:
    """An iSCSI session to one target; ``target()`` is the LUN's /dev/disk/by-path name."""

    type = "iscsi"

    def __init__(self, name: str, host: HostConfig, params: IscsiParams) -> None:
        self.name = name
        self.host = host
        self.params = params
        h, port = paths.split_host_port(params.portal, default_port=iscsi.DEFAULT_PORT)
        self.portal = f"{h}:{port}"
        self.iface = iscsi.iface_name(params.initiator_name) if params.initiator_name else None

    def __repr__(self) -> str:
        return f"<IscsiConnection {self.name} {self.params.target} at {self.portal}>"

    def target(self) -> str:
        return iscsi.by_path(self.portal, self.params.target, self.params.lun or 0)

    def _secrets(self) -> tuple[str, ...]:
        return (self.params.chap.password,) if self.params.chap else ()

    def observe(self) -> ConnectionObserved:
        timeout = self.host.command_timeout
        for s in iscsi.sessions(self.host.runner, timeout=timeout):
            if iscsi.same_name(s.target, self.params.target) and s.portal == self.portal:
                dev = self.target()
                return ConnectionObserved(
                    self.type,
                    dev,
                    True,
                    os.path.exists(dev),
                    source=self.portal,
                    device=os.path.realpath(dev) if os.path.exists(dev) else None,
                )
        return ConnectionObserved(self.type, self.target(), False, False)

    def _steps(self) -> list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[int, ...]]]:
        """(verb, argv, secrets, ok rcs) in order."""
        p, t, i = self.portal, self.params.target, self.iface
        steps: list[tuple[str, tuple[str, ...], tuple[str, ...], tuple[int, ...]]] = []
        if i and self.params.initiator_name:
            steps.append(("iface", iscsi.iface_new_argv(i), (), (iscsi.RC_SESSION_EXISTS,)))
            steps.append(("iface", iscsi.iface_update_argv(i, self.params.initiator_name), (), ()))
        steps.append(("discover", iscsi.discovery_argv(p, i), (), ()))
        if self.params.chap:
            for argv in iscsi.chap_argvs(t, p, self.params.chap.username, self.params.chap.password, i):
                steps.append(("update", argv, self._secrets(), ()))
        steps.append(("login", iscsi.login_argv(t, p, i), (), (iscsi.RC_SESSION_EXISTS,)))
        return steps

    def plan_connect(self, observed: ConnectionObserved) -> list[actions.Action]:
        if observed.connected:
            return []
        out = []
        for verb, argv, secrets, _ in self._steps():
            shown = tuple(commands.redact(a, secrets) for a in argv)
            out.append(
                actions.Action(verb, f"iscsiadm {verb} {self.params.target} at {self.portal}", argv=shown)
            )
        return out

    def plan_disconnect(self, observed: ConnectionObserved, force: bool = False) -> list[actions.Action]:
        if not observed.connected:
            return []
        p, t, i = self.portal, self.params.target, self.iface
        return [
            actions.Action("logout", f"log out of {t} at {p}", argv=iscsi.logout_argv(t, p, i)),
            actions.Action(
                "delete", f"delete the node record of {t} at {p}", argv=iscsi.node_delete_argv(t, p, i)
            ),
        ]

    def connect(self) -> bool:
        if self.observe().connected:
            return False
        timeout = self.host.command_timeout
        p, t, i = self.portal, self.params.target, self.iface
        try:
            for verb, argv, secrets, ok in self._steps():
                iscsi.run(
                    self.host.runner,
                    argv,
                    f"iSCSI {verb} {t} at {p}",
                    timeout=timeout,
                    # every step: iscsiadm may echo node settings (the password) in its errors
                    secrets=secrets or self._secrets(),
                    ok_codes=ok,
                )
        except errors.HostStorageError:
            # Undo the node record discovery may have created, so a wrong password does not linger.
            with contextlib.suppress(errors.HostStorageError):
                iscsi.run(
                    self.host.runner,
                    iscsi.node_delete_argv(t, p, i),
                    "iSCSI node delete",
                    timeout=timeout,
                    secrets=self._secrets(),
                    ok_codes=(iscsi.RC_NO_OBJECTS,),
                )
            raise
        with contextlib.suppress(commands.CommandError):
            self.host.runner(("udevadm", "settle", "--timeout=5"), timeout=10, check=False)
        log.info("connection %s: logged in to %s at %s", self.name, t, p)
        return True

    def disconnect(self, *, force: bool = False) -> bool:
        if not self.observe().connected:
            return False
        timeout = self.host.command_timeout
        p, t, i = self.portal, self.params.target, self.iface
        iscsi.run(
            self.host.runner,
            iscsi.logout_argv(t, p, i),
            f"iSCSI logout {t} at {p}",
            timeout=timeout,
            secrets=self._secrets(),
            ok_codes=(iscsi.RC_NO_OBJECTS,),
        )
        iscsi.run(
            self.host.runner,
            iscsi.node_delete_argv(t, p, i),
            f"iSCSI node delete {t} at {p}",
            timeout=timeout,
            secrets=self._secrets(),
            ok_codes=(iscsi.RC_NO_OBJECTS,),
        )
        log.info("connection %s: logged out of %s at %s", self.name, t, p)
        return True


# ------------------------------------------------------------------------------------------ factory


def nfs_options(params: NfsParams, host: HostConfig) -> tuple[str, ...]:
    """VDSM's defaults, the version mapping, ``nolock`` for v3/auto unless ``lock``, user options, policy."""
    opts = [
        *NFS_DEFAULTS,
        f"timeo={params.timeo if params.timeo is not None else NFS_TIMEO}",
        f"retrans={params.retrans if params.retrans is not None else NFS_RETRANS}",
        *NFS_VERSIONS[params.version],
    ]
    if params.version in ("3", "auto") and "lock" not in params.options:
        opts.append("nolock")
    opts += [o for o in params.options if not (o == "nolock" and "lock" in params.options)]
    return mounts.with_policy(opts, allow_suid=host.allow_suid, allow_dev=host.allow_dev)


def gluster_options(params: GlusterfsParams, host: HostConfig) -> tuple[str, ...]:
    opts = list(params.options)
    if params.backup_servers:
        opts.append("backup-volfile-servers=" + ":".join(params.backup_servers))
    return mounts.with_policy(opts, allow_suid=host.allow_suid, allow_dev=host.allow_dev)


def posix_mount_point(base: str, source: str) -> str:
    if source.startswith("/"):
        # VDSM normalises local paths with normpath, which keeps a leading '//' (cifs //server/share).
        return mounts.under_base(
            base, mounts.escape_path(os.path.normpath(source)), field="spec.posixfs.source"
        )
    return mounts.mount_point_for(base, source, field="spec.posixfs.source")


def owned_id(conn: object) -> fsops.Ident | None:
    """The (device, inode) of what ``conn`` created on the host (mount point directory or localfs link),
    for the ledger; None for an iSCSI session (or a fake connection without one)."""
    value = getattr(conn, "owned_id", None)
    return value if isinstance(value, tuple) else None


def claim(conn: object, ident: fsops.Ident | None) -> None:
    """Tell ``conn`` what the ledger recorded it created, before it disconnects or replaces it."""
    if ident is not None and hasattr(conn, "owned_id"):
        setattr(conn, "owned_id", ident)  # noqa: B010 - MountConnection / LocalfsConnection, not fakes


def make_connection(name: str, params: Params, host: HostConfig) -> Connection:
    """Validate ``params`` and build the connection object. Raises InvalidSpec; touches nothing."""
    validate(params, host)
    base = host.mount_base
    if isinstance(params, NfsParams):
        server = paths.validate_hostname(params.server)
        remote = mounts.normalize_remote(f"{server}:{params.export}")
        return NfsConnection(
            name,
            host,
            source=remote,
            fstype="nfs",
            options=nfs_options(params, host),
            mount_point=mounts.mount_point_for(base, remote, field="spec.nfs.export"),
        )
    if isinstance(params, PosixfsParams):
        source = params.source if params.source.startswith("/") else mounts.normalize_remote(params.source)
        opts = mounts.with_policy(params.options, allow_suid=host.allow_suid, allow_dev=host.allow_dev)
        return PosixfsConnection(
            name,
            host,
            source=source,
            fstype=params.vfs_type,
            options=opts,
            mount_point=posix_mount_point(base, source),
        )
    if isinstance(params, GlusterfsParams):
        server = paths.validate_hostname(params.server)
        remote = mounts.normalize_remote(f"{server}:/{params.volume}")
        return GlusterfsConnection(
            name,
            host,
            source=remote,
            fstype="glusterfs",
            options=gluster_options(params, host),
            mount_point=mounts.gluster_mount_point(
                base, server, params.volume, field="spec.glusterfs.volume"
            ),
            prefix=HOST_SCOPE_PREFIX if host.host_scope else (),
        )
    if isinstance(params, IscsiParams):
        return IscsiConnection(name, host, params)
    if isinstance(params, LocalfsParams):
        path = paths.validate_abs_path(params.path)
        return LocalfsConnection(
            name, host, path, mounts.local_link_for(base, path, field="spec.localfs.path")
        )
    raise errors.InvalidSpec(f"unknown connection parameters {type(params).__name__}")
