"""StoragePool: "this node has this libvirt storage pool" — parse, reconcile, teardown, resolve.

The spec (untrusted) is parsed with :mod:`reconcilers.spec` into a frozen :class:`PoolSpec`, every
string checked for shape and for XML-special characters, so nothing odd reaches libvirt even though the
XML is built with ElementTree. Reconcile turns the spec into a :class:`hostlib.libvirt_pools.PoolDefinition`
(host paths confined, the connection required, the CHAP secret looked up), observes the pool in
libvirt, plans the verbs (define, build, start, autostart, refresh), runs them unless it is a dry run,
observes again and reports. The ledger says which libvirt pools are ours: a pool of that name that the
ledger does not give to this object is a ``Conflict`` and is never touched.

Teardown (:func:`reconcilers.status.teardown`) stops (destroy) and forgets (undefine) the pool; it
never deletes a volume, a file or the target directory's contents (``virStoragePoolDelete`` is never
called). A pool is torn down only when the ledger names it and its UUID still matches.

The libvirt layer comes from ``host.pools``, set by the composition root: the agent hands in the
started :class:`hostlib.libvirt_pools.PoolLayer` whose events it listens to, local mode the
process-wide one for its URI. A host without one runs no pools (Unsupported).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import stat
import uuid as uuid_mod
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from hostlib import actions, blockdevs, errors, fsops, ledger, leftovers, libvirt_pools, mounts, paths
from reconcilers import health_policy, kind, selector, spec, status, storage_connection
from reconcilers import host as host_mod

log = logging.getLogger(__name__)

KIND = "StoragePool"
DETAIL_KEY = "pool"
RESULTS = status.Results(KIND, DETAIL_KEY, status.Phase.RUNNING)

SOURCES = ("connectionRef", "dir", "fs", "netfs", "iscsiDirect", "iscsi", "logical")
SPEC_FIELDS = ("nodeSelector", "deletionPolicy", "autostart", "libvirtName", *SOURCES, *health_policy.FIELDS)
# libvirt's own fs pool formats that make sense on a node; "auto" lets mount(8) probe.
FS_FORMATS = ("auto", "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "iso9660", "udf")
NETFS_FORMATS = ("nfs", "glusterfs")
MAX_LIBVIRT_NAME = 64
MAX_DEVICES = 64
MAX_HOST = 255
MAX_VG = 127
# A running pool is refreshed at most this often by reconcile; the refresh event it causes then finds
# the pool fresh and does not refresh again (no event loop through our own refreshes).
REFRESH_MIN_INTERVAL = 60.0
POOLS_SUBDIR = "pools"

_LIBVIRT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_VG_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$")


class WaitingForPool(errors.Waiting):
    """A monitor on this pool waits: the pool is not running on this node (yet)."""

    reason = "WaitingForPool"


# --------------------------------------------------------------------------------------------- spec


@dataclasses.dataclass(frozen=True)
class ConnectionRefSource:
    name: str
    path: str = ""


@dataclasses.dataclass(frozen=True)
class DirSource:
    path: str


@dataclasses.dataclass(frozen=True)
class FsSource:
    device: str
    format: str = "auto"


@dataclasses.dataclass(frozen=True)
class NetfsSource:
    host: str
    dir: str
    format: str = "nfs"


@dataclasses.dataclass(frozen=True)
class IscsiDirectSource:
    host: str
    target: str
    initiator: str
    port: int = 3260
    chap_secret_ref: spec.SecretRef | None = None


@dataclasses.dataclass(frozen=True)
class IscsiSource:
    host: str
    target: str
    port: int = 3260


@dataclasses.dataclass(frozen=True)
class LogicalSource:
    vg_name: str
    devices: tuple[str, ...] = ()


Source = (
    ConnectionRefSource | DirSource | FsSource | NetfsSource | IscsiDirectSource | IscsiSource | LogicalSource
)


@dataclasses.dataclass(frozen=True)
class PoolSpec:
    name: str
    libvirt_name: str
    source: Source
    autostart: bool = True
    deletion_policy: str = "Detach"
    uid: str = ""
    node_selector: selector.NodeSelector = dataclasses.field(default_factory=selector.NodeSelector)

    @property
    def pool_type(self) -> str:
        return _POOL_TYPE[type(self.source)]


_POOL_TYPE: dict[type, str] = {
    ConnectionRefSource: "dir",
    DirSource: "dir",
    FsSource: "fs",
    NetfsSource: "netfs",
    IscsiDirectSource: "iscsi-direct",
    IscsiSource: "iscsi",
    LogicalSource: "logical",
}


def _abs_path(value: object, field: str) -> str:
    return spec.abs_path(value, field, no_xml=True)


def _host(value: object, field: str) -> str:
    spec.string(value, field, max_len=MAX_HOST, no_xml=True)
    return spec.host(value, field)


def _port(value: object, field: str) -> int:
    return 3260 if value is None else spec.integer(value, field, low=1, high=65535)


def _dev_path(value: object, field: str) -> str:
    path = _abs_path(value, field)
    if not path.startswith("/dev/") or path == "/dev/":
        raise spec.invalid(field, f"{path!r} is not a device path under /dev")
    return path


def _block(
    raw: Mapping[str, Any], key: str, allowed: tuple[str, ...], required: tuple[str, ...]
) -> Mapping[str, Any]:
    field = f"spec.{key}"
    block = spec.mapping(raw[key], field)
    spec.fields(block, field, allowed=allowed, required=required)
    return block


def _parse_connection_ref(b: Mapping[str, Any], f: str) -> Source:
    name = spec.name(b["name"], f"{f}.name")
    sub = b.get("path")
    return ConnectionRefSource(
        name, "" if sub in (None, "") else spec.relative_path(sub, f"{f}.path", no_xml=True)
    )


def _parse_iscsi_direct(b: Mapping[str, Any], f: str) -> Source:
    ref = None
    if b.get("chapSecretRef") is not None:
        ref = spec.secret_ref(b["chapSecretRef"], f"{f}.chapSecretRef")
    return IscsiDirectSource(
        host=_host(b["host"], f"{f}.host"),
        target=spec.iscsi_name(b["target"], f"{f}.target"),
        initiator=spec.iscsi_name(b["initiator"], f"{f}.initiator"),
        port=_port(b.get("port"), f"{f}.port"),
        chap_secret_ref=ref,
    )


def _parse_logical(b: Mapping[str, Any], f: str) -> Source:
    vg = spec.string(b["vgName"], f"{f}.vgName", max_len=MAX_VG, pattern=_VG_RE)
    if vg in (".", ".."):
        raise spec.invalid(f"{f}.vgName", f"{vg!r} is not a volume group name")
    devices: tuple[str, ...] = ()
    if b.get("devices") is not None:
        devices = spec.string_list(b["devices"], f"{f}.devices", max_items=MAX_DEVICES, item=_dev_path)
    return LogicalSource(vg, devices)


_SOURCE_PARSERS: dict[
    str, tuple[tuple[str, ...], tuple[str, ...], Callable[[Mapping[str, Any], str], Source]]
] = {
    # source key: (allowed fields, required fields, parser of the block)
    "connectionRef": (("name", "path"), ("name",), _parse_connection_ref),
    "dir": (("path",), ("path",), lambda b, f: DirSource(_abs_path(b["path"], f"{f}.path"))),
    "fs": (
        ("device", "format"),
        ("device",),
        lambda b, f: FsSource(
            _dev_path(b["device"], f"{f}.device"),
            spec.choice(b.get("format"), f"{f}.format", FS_FORMATS, default="auto"),
        ),
    ),
    "netfs": (
        ("host", "dir", "format"),
        ("host", "dir"),
        lambda b, f: NetfsSource(
            _host(b["host"], f"{f}.host"),
            _abs_path(b["dir"], f"{f}.dir"),
            spec.choice(b.get("format"), f"{f}.format", NETFS_FORMATS, default="nfs"),
        ),
    ),
    "iscsiDirect": (
        ("host", "port", "target", "initiator", "chapSecretRef"),
        ("host", "target", "initiator"),
        _parse_iscsi_direct,
    ),
    "iscsi": (
        ("host", "port", "target"),
        ("host", "target"),
        lambda b, f: IscsiSource(
            _host(b["host"], f"{f}.host"),
            spec.iscsi_name(b["target"], f"{f}.target"),
            _port(b.get("port"), f"{f}.port"),
        ),
    ),
    "logical": (("vgName", "devices"), ("vgName",), _parse_logical),
}


def parse(obj: Mapping[str, Any]) -> PoolSpec:
    """A StoragePool manifest -> :class:`PoolSpec`; ``InvalidSpec`` naming the field. No I/O."""
    meta, raw = spec.envelope(obj, KIND)
    spec.fields(raw, "spec", allowed=SPEC_FIELDS)
    spec.health(raw)
    if raw.get("libvirtName") is None:
        libvirt_name, field = meta.name, "metadata.name"
    else:
        field = "spec.libvirtName"
        libvirt_name = spec.string(raw["libvirtName"], field, max_len=MAX_LIBVIRT_NAME)
    if len(libvirt_name) > MAX_LIBVIRT_NAME or not _LIBVIRT_NAME_RE.match(libvirt_name):
        raise spec.invalid(
            field,
            f"{libvirt_name!r} is not a usable libvirt pool name (letters, digits, '_', '.', '-', "
            f"starting with a letter or digit, at most {MAX_LIBVIRT_NAME}); set spec.libvirtName",
        )
    key = spec.exactly_one(raw, "spec", SOURCES)
    allowed, required, parse_block = _SOURCE_PARSERS[key]
    source = parse_block(_block(raw, key, allowed, required), f"spec.{key}")
    return PoolSpec(
        name=meta.name,
        libvirt_name=libvirt_name,
        source=source,
        autostart=spec.boolean(raw.get("autostart"), "spec.autostart", default=True),
        deletion_policy=spec.deletion_policy(raw),
        uid=meta.uid,
        node_selector=spec.node_selector(raw.get("nodeSelector")),
    )


# ------------------------------------------------------------------------------------------- helpers


def layer_for(host: host_mod.Host) -> host_mod.Pools:
    """The libvirt layer the composition root handed in (``host.pools``); Unsupported without one."""
    if host.pools is None:
        raise errors.Unsupported("this process runs no StoragePools (no libvirt layer was configured)")
    return host.pools()


def secret_usage(libvirt_name: str) -> str:
    return f"{libvirt_pools.SECRET_USAGE_PREFIX}{libvirt_name}"


def _confine_dir(path: str, host: host_mod.Host, field: str) -> tuple[str, str]:
    """(the resolved path, the resolved allowed root it lies under); InvalidSpec otherwise."""
    roots = host.config.allowed_host_paths
    if not roots:
        raise errors.InvalidSpec(
            "dir pools need an allowed host path (--allowed-host-path); none is configured", field=field
        )
    paths.refuse_own_dirs(path, host.config.own_dirs, field=field)
    for root in roots:
        try:
            return paths.ensure_under(root, path, field=field), os.path.realpath(root)
        except errors.InvalidSpec:
            continue
    raise errors.InvalidSpec(f"{path!r} is not under an allowed host path ({', '.join(roots)})", field=field)


def _check_device(device: str, field: str) -> str:
    real = paths.ensure_under("/dev", device, field=field)
    try:
        st = os.stat(real)
    except FileNotFoundError:
        raise errors.NotFound(f"{field}: device {device} does not exist on this node") from None
    if not stat.S_ISBLK(st.st_mode):
        raise errors.InvalidSpec(f"{device!r} is not a block device", field=field)
    return device


@dataclasses.dataclass(frozen=True)
class Desired:
    definition: libvirt_pools.PoolDefinition
    chap: tuple[str, bytes] | None = None
    """(username, password) for iscsi-direct CHAP; never logged or reported."""
    depends_on: tuple[tuple[str, str], ...] = ()
    owned_paths: tuple[str, ...] = ()
    dir_root: str = ""
    """A dir pool on an allowed host path: the (resolved) allowed root. hoststorage then makes the
    target directory itself through :mod:`hostlib.fsops` and verifies it after libvirt acted."""


def desired_definition(pool: PoolSpec, host: host_mod.Host) -> Desired:
    """Spec + host -> the pool libvirt should have. Confines paths; raises InvalidSpec,
    WaitingForConnection, SecretNotFound, NotFound, Unsupported. No host change."""
    src = pool.source
    name = pool.libvirt_name
    if isinstance(src, ConnectionRefSource):
        path = storage_connection.require(host, src.name, src.path or None)
        return Desired(
            libvirt_pools.PoolDefinition(name=name, type="dir", target_path=path),
            depends_on=(("StorageConnection", src.name),),
        )
    if isinstance(src, DirSource):
        path, root = _confine_dir(src.path, host, "spec.dir.path")
        return Desired(libvirt_pools.PoolDefinition(name=name, type="dir", target_path=path), dir_root=root)
    if isinstance(src, FsSource):
        device = _check_device(src.device, "spec.fs.device")
        target = paths.confine(host.config.mount_base, f"{POOLS_SUBDIR}/{name}")
        blockdevs.check_free(
            device, own_target=target, allow_shared=host.config.allow_shared_sources, field="spec.fs.device"
        )
        return Desired(
            libvirt_pools.PoolDefinition(
                name=name, type="fs", target_path=target, source_devices=(device,), source_format=src.format
            ),
            owned_paths=(target,),
        )
    if isinstance(src, NetfsSource):
        libvirt_pools.preflight("netfs", src.format)
        target = paths.confine(host.config.mount_base, f"{POOLS_SUBDIR}/{name}")
        return Desired(
            libvirt_pools.PoolDefinition(
                name=name,
                type="netfs",
                target_path=target,
                source_host=src.host,
                source_dir=src.dir,
                source_format=src.format,
            ),
            owned_paths=(target,),
        )
    if isinstance(src, IscsiDirectSource):
        chap = None
        user = usage = None
        if src.chap_secret_ref is not None:
            user, password = spec.chap(
                host.secret_lookup, src.chap_secret_ref, "spec.iscsiDirect.chapSecretRef"
            )
            chap = (user, password.encode("utf-8"))
            usage = secret_usage(name)
        return Desired(
            libvirt_pools.PoolDefinition(
                name=name,
                type="iscsi-direct",
                source_host=src.host,
                source_port=src.port,
                source_devices=(src.target,),
                initiator_iqn=src.initiator,
                auth_username=user,
                auth_secret_usage=usage,
            ),
            chap=chap,
        )
    libvirt_pools.preflight(pool.pool_type)
    if isinstance(src, IscsiSource):
        return Desired(iscsi_definition(name, src))
    assert isinstance(src, LogicalSource)
    return Desired(logical_definition(name, src))


def iscsi_definition(name: str, src: IscsiSource) -> libvirt_pools.PoolDefinition:
    return libvirt_pools.PoolDefinition(
        name=name,
        type="iscsi",
        target_path="/dev/disk/by-path",
        source_host=src.host,
        source_port=src.port,
        source_devices=(src.target,),
    )


def logical_definition(name: str, src: LogicalSource) -> libvirt_pools.PoolDefinition:
    return libvirt_pools.PoolDefinition(
        name=name,
        type="logical",
        target_path=f"/dev/{src.vg_name}",
        source_devices=src.devices,
        source_name=src.vg_name,
        source_format="lvm2",
    )


def conflict_reason(
    spec_name: str, libvirt_name: str, observed: libvirt_pools.PoolObserved | None, host: host_mod.Host
) -> str | None:
    """Why StoragePool ``spec_name`` may not touch libvirt pool ``libvirt_name``, or None.

    The one ownership rule of pools: an existing pool is ours only when our ledger entry names it and
    recorded the UUID it has; another object's entry, no entry, no recorded UUID or another UUID is a
    Conflict (the pool is reported, never redefined or destroyed)."""
    for other in host.ledger.entries(KIND):
        if other.name != spec_name and other.resource.get("libvirtName") == libvirt_name:
            return f"libvirt pool {libvirt_name} belongs to StoragePool {other.name}"
    if observed is None:
        return None
    entry = host.ledger.get(KIND, spec_name)
    if entry is None or entry.resource.get("libvirtName") != libvirt_name:
        return f"libvirt pool {libvirt_name} exists and was not made by hoststorage; it is left alone"
    uuid = entry.resource.get("uuid")
    if not uuid:
        # Only the UUID hoststorage recorded claims a pool: a name alone could be an admin's pool.
        return (
            f"libvirt pool {libvirt_name} exists, but the ledger records no UUID hoststorage defined it "
            "with; it is not claimed and is left alone"
        )
    if uuid != observed.uuid:
        return (
            f"libvirt pool {libvirt_name} has UUID {observed.uuid}, not the {uuid} hoststorage defined; "
            "it was replaced outside hoststorage and is left alone"
        )
    return None


def _mount_source(defn: libvirt_pools.PoolDefinition) -> str | None:
    """What libvirt mounts on the target of an fs or netfs pool (None: the pool type mounts nothing)."""
    if defn.type == "fs" and defn.source_devices:
        return defn.source_devices[0]
    if defn.type == "netfs" and defn.source_host and defn.source_dir:
        return f"{defn.source_host}:{defn.source_dir}"
    return None


def target_conflict(
    defn: libvirt_pools.PoolDefinition,
    active: bool,
    records: Iterable[mounts.MountRecord] | None = None,
) -> str | None:
    """Why the mount table at an fs/netfs pool's target is not the pool's own, or None.

    Only the topmost mount on the target is what users (and libvirt's ``umount`` on destroy) see: a
    running pool whose mount has something else on top is a Conflict (destroy would unmount the
    foreign mount); a stopped pool whose target already has a mount is one too (start would mount on
    top of it). Reads the mount table only: never touches the (possibly hung) storage."""
    source = _mount_source(defn)
    if source is None or not defn.target_path:
        return None
    at = mounts.mounts_at(defn.target_path, records)
    top = mounts.topmost(defn.target_path, at)
    if top is None:
        return None
    wanted = mounts.canonical_source(source)
    if active and top.canonical_source == wanted:
        return None
    if active and any(r.canonical_source == wanted for r in at):
        return (
            f"{top.source} ({top.fstype}) is mounted on top of pool {defn.name}'s {source} on "
            f"{defn.target_path}; hoststorage neither restarts nor stops the pool (unmount the one on top)"
        )
    return (
        f"{defn.target_path} has {top.source} ({top.fstype}) mounted, which is not pool {defn.name}'s "
        f"{source}; the pool is left alone"
    )


def left_mounted(spec_name: str, libvirt_name: str, host: host_mod.Host) -> bool:
    """Whether a pool libvirt no longer has may find its own mount still on its target: the ledger
    holds it (by name and the UUID hoststorage defined it with).

    A libvirtd that lost a running fs/netfs pool (killed while defining it, its state gone) leaves the
    pool's source mounted; that mount, the pool's own source at the pool's own target, is then the
    pool's and ``start`` takes it over (libvirt does not mount an already mounted target again). For any
    other pool it stays a Conflict: a name alone never claims anything. The chaos soak (issue 14) found
    the pool otherwise reported Conflict for good."""
    entry = host.ledger.get(KIND, spec_name)
    if entry is None or entry.resource.get("libvirtName") != libvirt_name:
        return False
    return bool(entry.resource.get("uuid"))


def target_unmounted(
    defn: libvirt_pools.PoolDefinition,
    active: bool,
    records: Iterable[mounts.MountRecord] | None = None,
) -> bool:
    """Whether a running fs/netfs pool has nothing mounted on its target (unmounted underneath).

    libvirt still reports such a pool running and would serve the empty directory below the mount; the
    chaos soak (issue 14) found it was never restarted. Reads the mount table only."""
    source = _mount_source(defn)
    if not active or source is None or not defn.target_path:
        return False
    return mounts.topmost(defn.target_path, mounts.mounts_at(defn.target_path, records)) is None


def plan(
    desired: libvirt_pools.PoolDefinition,
    observed: libvirt_pools.PoolObserved | None,
    *,
    autostart: bool,
    seconds_since_refresh: float | None = None,
    target_mounted: bool = True,
) -> list[actions.Action]:
    """(desired, observed) -> the verbs to run, in order. Pure.

    ``target_mounted`` False (see :func:`target_unmounted`): the running pool is stopped and started
    again, which mounts its source once more."""
    name = desired.name
    out: list[actions.Action] = []
    # A transient pool (created, not defined) is made persistent: hoststorage pools survive restarts.
    needs_define = (
        observed is None
        or not observed.persistent
        or observed.definition.comparable() != desired.comparable()
    )
    active = observed is not None and observed.active
    if needs_define:
        what = "define" if observed is None else "redefine (definition differs)"
        out.append(actions.Action("define", f"{what} {desired.type} pool {name}", path=desired.target_path))
        if active:
            out.append(actions.Action("destroy", f"stop pool {name} to apply the new definition"))
            active = False
    if active and not target_mounted:
        out.append(
            actions.Action(
                "destroy", f"stop pool {name}: nothing is mounted on its target {desired.target_path}"
            )
        )
        active = False
    if not active:
        if (
            desired.type in ("dir", "fs", "netfs")
            and desired.target_path
            and not os.path.isdir(desired.target_path)
        ):
            out.append(
                actions.Action("build", f"create target directory of pool {name}", path=desired.target_path)
            )
        out.append(actions.Action("start", f"start pool {name}"))
    elif seconds_since_refresh is not None and seconds_since_refresh >= REFRESH_MIN_INTERVAL:
        out.append(actions.Action("refresh", f"refresh volumes of pool {name}"))
    # A newly defined pool has autostart off; a redefinition keeps the flag it had.
    current = observed.autostart if observed is not None else False
    if current != autostart:
        out.append(actions.Action("autostart", f"set autostart of pool {name} to {autostart}"))
    return out


def _record(
    pool: PoolSpec,
    host: host_mod.Host,
    desired: Desired,
    uuid: str | None,
    target_id: fsops.Ident | None = None,
) -> None:
    resource: dict[str, Any] = {
        "libvirtName": pool.libvirt_name,
        "type": desired.definition.type,
        "targetPath": desired.definition.target_path,
        "deletionPolicy": pool.deletion_policy,
    }
    if uuid:
        resource["uuid"] = uuid
    if desired.chap is not None:
        resource["secretUsage"] = desired.definition.auth_secret_usage
    if desired.owned_paths:
        resource["paths"] = list(desired.owned_paths)
    if target_id is not None:
        resource["targetId"] = list(target_id)
    host.ledger.put(ledger.LedgerEntry(KIND, pool.name, pool.uid, resource, tuple(desired.depends_on)))


def _observed_result(
    name: str,
    observed: libvirt_pools.PoolObserved | None,
    *,
    changed: bool,
    planned: list[actions.Action],
    autostart_error: str = "",
) -> status.NodeResult:
    if observed is None:
        return RESULTS.make(name, status.Phase.PENDING, "NotDefined", "the pool is not defined", plan=planned)
    detail = observed.to_detail()
    if observed.state == "running":
        msg = f"pool {observed.name} running, {observed.volumes} volume(s), {observed.available} bytes free"
        if autostart_error:
            # Running and Ready; retried, so the flag is set once libvirt lets it be.
            msg += f"; autostart could not be set (the agent starts the pool itself): {autostart_error}"
            return RESULTS.make(name, status.Phase.RUNNING, "AutostartNotSet", msg, detail=detail,
                                changed=changed, plan=planned, retry=True)
        return RESULTS.make(
            name, status.Phase.RUNNING, "Running", msg, detail=detail, changed=changed, plan=planned
        )
    if observed.state in ("degraded", "inaccessible"):
        why = f"libvirt reports pool {observed.name} {observed.state}"
        return RESULTS.make(
            name,
            status.Phase.FAILED,
            observed.state.capitalize(),
            why,
            detail=detail,
            changed=changed,
            plan=planned,
            retry=True,
        )
    reason = "Building" if observed.state == "building" else "NotRunning"
    why = f"pool {observed.name} is {observed.state}"
    return RESULTS.make(
        name, status.Phase.PENDING, reason, why, detail=detail, changed=changed, plan=planned, retry=True
    )


# ----------------------------------------------------------------------------------------- reconcile


def _apply(
    pool: PoolSpec,
    layer: host_mod.Pools,
    definition: libvirt_pools.PoolDefinition,
    planned: list[actions.Action],
) -> tuple[bool, str]:
    """Run the planned verbs: whether anything changed (a refresh keeps the pool as it is), and why
    autostart could not be set ("" when it could or was not asked).

    A failed autostart does not stop the pool or fail it: the pool runs and the agent starts it again
    itself whenever it is down. libvirt refuses the flag with "File exists" when its autostart link is
    left from an earlier definition it failed to load (a soak run found that after a libvirtd restart);
    that link already starts the pool on libvirtd's next start."""
    name = pool.libvirt_name
    verbs: dict[str, Callable[[], Any]] = {
        "define": lambda: layer.define(definition),
        "destroy": lambda: layer.destroy(name),
        "build": lambda: layer.build(name),
        "start": lambda: layer.start(name),
        "autostart": lambda: layer.set_autostart(name, pool.autostart),
        "refresh": lambda: layer.refresh(name),
    }
    changed, autostart_error = False, ""
    for action in planned:
        try:
            verbs[action.verb]()
        except libvirt_pools.AutostartFailed as exc:
            autostart_error = exc.message
            continue
        changed |= action.verb != "refresh"
    return changed, autostart_error


def reconcile(pool: PoolSpec, host: host_mod.Host, *, dry_run: bool = False) -> status.NodeResult:
    """Make libvirt have this pool defined, running, autostarted as asked; report what libvirt says."""
    base_detail: dict[str, Any] = {"libvirtName": pool.libvirt_name, "type": pool.pool_type}
    try:
        desired = desired_definition(pool, host)
        layer = layer_for(host)
    except errors.InvalidSpec as exc:
        moved = _recorded_dir_moved(pool, host)
        return RESULTS.error(pool.name, moved or exc, detail=base_detail)
    except errors.HostStorageError as exc:
        return RESULTS.error(pool.name, exc, detail=base_detail)
    name = pool.libvirt_name
    changed = False
    try:
        observed = layer.observe(name)
        conflict = conflict_reason(pool.name, name, observed, host)
        if conflict is None:
            conflict = target_conflict(
                observed.definition if observed else desired.definition,
                observed.active if observed else left_mounted(pool.name, name, host),
            )
        if conflict is not None:
            return RESULTS.make(
                pool.name, status.Phase.FAILED, errors.Conflict.reason, conflict, detail=base_detail
            )
        entry = host.ledger.get(KIND, pool.name)
        old_name = entry.resource.get("libvirtName") if entry is not None else None
        # The UUID is chosen here, before define, and written ahead: the pool libvirt then holds is ours
        # by the UUID the ledger recorded, even if this process dies between define and the next write.
        uuid = observed.uuid if observed else _new_uuid(entry, name)
        definition = dataclasses.replace(desired.definition, uuid=uuid)
        planned = plan(
            definition,
            observed,
            autostart=pool.autostart,
            seconds_since_refresh=layer.seconds_since_refresh(name),
            target_mounted=not (
                observed is not None and target_unmounted(observed.definition, observed.active)
            ),
        )
        if dry_run:
            return _observed_result(pool.name, observed, changed=False, planned=planned)
        if isinstance(old_name, str) and old_name != name and entry is not None:
            # The libvirt name changed: the old pool is ours; stop and forget it before taking the new one.
            _teardown_entry(entry, host, layer)
            changed = True
        target_id = _dir_target(desired, entry)
        # Intent first: a crash between define and the ledger write must not orphan an unowned pool.
        _record(pool, host, desired, uuid, target_id)
        if desired.chap is not None and desired.definition.auth_secret_usage:
            changed |= layer.set_secret(
                desired.definition.auth_secret_usage,
                f"hoststorage CHAP for StoragePool {pool.name}",
                desired.chap[1],
            )
        applied, autostart_error = _apply(pool, layer, definition, planned)
        changed |= applied
        if target_id is not None:
            _verify_dir_target(pool, host, layer, desired, target_id)
        old_usage = entry.resource.get("secretUsage") if entry is not None else None
        if isinstance(old_usage, str) and old_usage and old_usage != desired.definition.auth_secret_usage:
            # CHAP dropped from the spec (or the pool renamed): the old secret is ours and unused now.
            changed |= layer.undefine_secret(old_usage)
        # Nothing done: what we observed is still the truth (a resync of a converged pool costs one observe).
        after = layer.observe(name) if planned or changed else observed
        _record(pool, host, desired, after.uuid if after else None, target_id)
    except errors.HostStorageError as exc:
        detail = base_detail
        with contextlib.suppress(errors.HostStorageError):
            now = layer.observe(name)
            if now is not None:
                detail = now.to_detail()
            elif entry is None:
                # The first define produced nothing: the write-ahead entry must not claim this name
                # (a pool an admin defines later under it would otherwise be taken for ours).
                host.ledger.remove(KIND, pool.name)
        return RESULTS.error(pool.name, exc, detail=detail, changed=changed)
    return _observed_result(
        pool.name, after, changed=changed, planned=planned, autostart_error=autostart_error
    )


def _recorded_target_id(entry: ledger.LedgerEntry | None) -> fsops.Ident | None:
    value = entry.resource.get("targetId") if entry is not None else None
    if isinstance(value, list) and len(value) == 2 and all(type(n) is int for n in value):
        return (value[0], value[1])
    return None


def _dir_target(desired: Desired, entry: ledger.LedgerEntry | None) -> fsops.Ident | None:
    """A dir pool's directory, made (or found) by hoststorage before libvirt sees it: its ident.

    The one recorded by an earlier run must still be that directory (Conflict when something else is
    at its path); a missing one, or a new one, is made through :mod:`hostlib.fsops` (no link followed
    below the allowed root)."""
    if not desired.dir_root:
        return None
    path = desired.definition.target_path or ""
    recorded = _recorded_target_id(entry)
    if recorded is not None and entry is not None and entry.resource.get("targetPath") == path:
        try:
            libvirt_pools.check_dir_target(desired.dir_root, path, recorded)
            return recorded
        except FileNotFoundError:
            pass  # gone (drift): made again below, as libvirt's build would
    return libvirt_pools.make_dir_target(desired.dir_root, path)


def _recorded_dir_moved(pool: PoolSpec, host: host_mod.Host) -> errors.Conflict | None:
    """A dir pool made earlier whose path no longer confines (swapped for a link after apply): the
    pool libvirt runs may now serve a directory outside every allowed root. Destroy and undefine it and
    answer Conflict; None when there is no such recorded pool (the spec error stands)."""
    entry = host.ledger.get(KIND, pool.name)
    recorded = _recorded_target_id(entry)
    path = entry.resource.get("targetPath") if entry is not None else None
    if entry is None or recorded is None or not isinstance(path, str):
        return None
    if not isinstance(pool.source, DirSource):
        return None
    roots = [os.path.realpath(r) for r in host.config.allowed_host_paths]
    root = next((r for r in roots if paths.is_under(r, path)), None)
    if root is None:
        return None
    try:
        libvirt_pools.check_dir_target(root, path, recorded)
    except errors.Conflict as exc:
        with contextlib.suppress(errors.HostStorageError):
            _teardown_entry(entry, host, layer_for(host))
        return errors.Conflict(f"{exc.message}: libvirt pool {pool.libvirt_name} destroyed and undefined")
    except OSError:
        return None
    return None


def _verify_dir_target(
    pool: PoolSpec, host: host_mod.Host, layer: host_mod.Pools, desired: Desired, target_id: fsops.Ident
) -> None:
    """After libvirt acted on the path string: the directory must be the one checked (issue 9, class 6).

    If it is not (swapped for a link between the check and libvirt's build), libvirt may now serve a
    directory outside every allowed root: the pool hoststorage made is destroyed and undefined, its
    entry dropped, and Conflict raised."""
    try:
        libvirt_pools.check_dir_target(desired.dir_root, desired.definition.target_path or "", target_id)
    except errors.Conflict as exc:
        with contextlib.suppress(errors.HostStorageError):
            now = layer.observe(pool.libvirt_name)
            if now is not None:  # the pool just defined is claimed by its UUID, then undone
                _record(pool, host, desired, now.uuid, target_id)
        entry = host.ledger.get(KIND, pool.name)
        if entry is not None:
            with contextlib.suppress(errors.HostStorageError):
                _teardown_entry(entry, host, layer)
        why = f"{exc.message}: libvirt pool {pool.libvirt_name} destroyed and undefined"
        raise errors.Conflict(why) from None


def _new_uuid(entry: ledger.LedgerEntry | None, libvirt_name: str) -> str:
    """The UUID to define a missing pool with: the one recorded for it (redefined after an outside
    undefine: still ours), else a fresh one."""
    if entry is not None and entry.resource.get("libvirtName") == libvirt_name:
        recorded = entry.resource.get("uuid")
        if isinstance(recorded, str) and recorded:
            return recorded
    return str(uuid_mod.uuid4())


# ------------------------------------------------------------------------------------------ teardown


def _ours(entry: ledger.LedgerEntry, layer: host_mod.Pools) -> libvirt_pools.PoolObserved | None:
    """The libvirt pool ``entry`` records, if it is still the one we defined (same UUID)."""
    name = entry.resource.get("libvirtName")
    if not isinstance(name, str) or not name:
        return None
    observed = layer.observe(name)
    uuid = entry.resource.get("uuid")
    if observed is not None and uuid != observed.uuid:
        log.warning(
            "StoragePool %s: libvirt pool %s has UUID %s, not ours (%s); left alone",
            entry.name,
            name,
            observed.uuid,
            uuid,
        )
        return None
    return observed


def _owned_dirs(entry: ledger.LedgerEntry, host: host_mod.Host) -> list[str]:
    """The empty mount-point directories libvirt's build made under our mount base."""
    root = os.path.join(host.config.mount_base, POOLS_SUBDIR)
    return [p for p in entry.resource.get("paths") or [] if isinstance(p, str) and paths.is_under(root, p)]


def _teardown_entry(entry: ledger.LedgerEntry, host: host_mod.Host, layer: host_mod.Pools) -> bool:
    """Destroy and undefine the pool ``entry`` owns (if it is still the one we defined); never delete.

    There is no lazy destroy: a busy fs/netfs pool stays and reports DestroyFailed, with or without
    ``--force``."""
    changed = False
    observed = _ours(entry, layer)
    if observed is not None:
        stacked = target_conflict(observed.definition, observed.active)
        if stacked is not None:
            raise errors.Covered(stacked)
        if observed.active:
            layer.destroy(observed.name)
            changed = True
        if observed.persistent:
            layer.undefine(observed.name)
            changed = True
    usage = entry.resource.get("secretUsage")
    if isinstance(usage, str) and usage:
        changed |= layer.undefine_secret(usage)
    for path in _owned_dirs(entry, host):
        # rmdir never removes contents; a non-empty directory is left as it is; no link is followed.
        leftovers.remove_empty_dir(host.config.mount_base, path)
    host.ledger.remove(entry.kind, entry.name)
    return changed


def _plan_teardown_entry(
    entry: ledger.LedgerEntry, host: host_mod.Host, layer: host_mod.Pools
) -> list[actions.Action]:
    """What :func:`_teardown_entry` would do, observed now; nothing changes."""
    planned: list[actions.Action] = []
    observed = _ours(entry, layer)
    if observed is not None:
        stacked = target_conflict(observed.definition, observed.active)
        if stacked is not None:
            raise errors.Covered(stacked)
        if observed.active:
            planned.append(
                actions.Action("pool-destroy", f"stop libvirt pool {observed.name} (volumes stay)")
            )
        if observed.persistent:
            planned.append(actions.Action("pool-undefine", f"undefine libvirt pool {observed.name}"))
    usage = entry.resource.get("secretUsage")
    if isinstance(usage, str) and usage and layer.secret_uuid(usage) is not None:
        planned.append(actions.Action("secret-undefine", f"undefine libvirt secret {usage}"))
    # A mount target is a directory: never stat it (a running netfs pool's mount may hang).
    targets = {r.target for r in mounts.read_mounts()}
    planned += [
        actions.Action("rmdir", f"remove {p} if empty", path=p)
        for p in _owned_dirs(entry, host)
        if p in targets or os.path.isdir(p)
    ]
    return planned


def teardown(
    spec_or_entry: PoolSpec | ledger.LedgerEntry,
    host: host_mod.Host,
    *,
    force: bool = False,
    dry_run: bool = False,
) -> status.NodeResult:
    """Stop and forget the pool (or only forget it with Retain); volumes and files always stay.

    ``force`` only forgets an entry whose pool is no longer ours (``Conflict``, see
    :func:`reconcilers.status.teardown`; libvirt has no lazy destroy). ``dry_run`` changes nothing
    (libvirt or ledger) and lists the planned actions (reason ``WouldDetach`` or ``WouldRetain``)."""

    def prepare(entry: ledger.LedgerEntry) -> status.Undo:
        policy = (
            spec_or_entry.deletion_policy
            if isinstance(spec_or_entry, PoolSpec)
            else str(entry.resource.get("deletionPolicy", "Detach"))
        )
        detail = {"libvirtName": entry.resource.get("libvirtName"), "type": entry.resource.get("type")}

        def run() -> tuple[bool, str]:
            changed = _teardown_entry(entry, host, layer_for(host))
            return changed, "pool stopped and undefined; volumes and files were kept"

        return status.Undo(
            detail=detail,
            policy=policy,
            plan=lambda: _plan_teardown_entry(entry, host, layer_for(host)),
            run=run,
            would="would stop and undefine the pool; volumes and files stay",
            retained="deletionPolicy Retain: the libvirt pool is left as it is, forgotten",
        )

    return status.teardown(RESULTS, spec_or_entry.name, host.ledger, prepare, dry_run=dry_run, force=force)


# ----------------------------------------------------------------------------------- observe/resolve


def observe(entry: ledger.LedgerEntry, host: host_mod.Host) -> status.NodeResult:
    """What ``hoststorage status`` shows for one ledger entry: libvirt's view now, no change."""
    name = entry.resource.get("libvirtName")
    if not isinstance(name, str):
        return RESULTS.make(
            entry.name, status.Phase.FAILED, "LedgerCorrupt", "ledger entry has no libvirtName"
        )
    try:
        layer = layer_for(host)
        observed = layer.observe(name)
        ours = _ours(entry, layer)
    except errors.HostStorageError as exc:
        return RESULTS.error(entry.name, exc, detail={"libvirtName": name})
    if observed is not None and ours is None:
        why = f"libvirt pool {name} is not the one hoststorage defined (UUID {observed.uuid}); left alone"
        return RESULTS.make(
            entry.name, status.Phase.FAILED, errors.Conflict.reason, why, detail={"libvirtName": name}
        )
    if ours is not None:
        stacked = target_conflict(ours.definition, ours.active)
        if stacked is not None:
            return RESULTS.make(
                entry.name, status.Phase.FAILED, errors.Conflict.reason, stacked, detail=ours.to_detail()
            )
    return _observed_result(entry.name, observed, changed=False, planned=[])


def names_for_libvirt_pool(host: host_mod.Host, libvirt_name: str) -> list[str]:
    """The StoragePool object(s) a libvirt pool event is about: the ledger's owner, else the same name."""
    owners = [e.name for e in host.ledger.entries(KIND) if e.resource.get("libvirtName") == libvirt_name]
    return owners or [libvirt_name]


def subscribe(
    host: host_mod.Host, enqueue: Callable[[str], None], known: Callable[[], Iterable[str]]
) -> kind.Unsubscribe:
    """Feed libvirt into the caller's work queue; returns a function that stops it.

    A pool lifecycle or refresh event enqueues the StoragePool name(s) of that libvirt pool
    (:func:`names_for_libvirt_pool`), so a pool stopped behind our back is reconciled at once; after a
    reconnect to libvirtd every name ``known()`` returns is enqueued (re-reconcile every pool). Both
    callbacks run in libvirt's threads and only enqueue.
    """
    layer = layer_for(host)

    def on_pool(libvirt_name: str) -> None:
        for name in names_for_libvirt_pool(host, libvirt_name):
            enqueue(name)

    def on_reconnect() -> None:
        for name in known():
            enqueue(name)

    layer.add_pool_listener(on_pool)
    layer.add_reconnect_listener(on_reconnect)

    def unsubscribe() -> None:
        layer.remove_listener(on_pool)
        layer.remove_listener(on_reconnect)

    return unsubscribe


def resolve(host: host_mod.Host, name: str) -> str | None:
    """The target path of StoragePool ``name`` when it runs on this node (for poolRef), else None."""
    entry = host.ledger.get(KIND, name)
    if entry is None:
        return None
    try:
        observed = _ours(entry, layer_for(host))
    except errors.HostStorageError:
        return None
    if observed is None or not observed.active:
        return None
    return observed.definition.target_path


def require(host: host_mod.Host, name: str) -> str:
    """:func:`resolve`, for a user of the pool: :class:`WaitingForPool` instead of None."""
    path = resolve(host, name)
    if path is None:
        raise WaitingForPool(f"StoragePool {name} is not running on this node")
    return path


if TYPE_CHECKING:  # mypy checks that this module is a Kind
    from reconcilers import storage_pool as _self  # noqa: PLW0406 - mypy checks this module against Kind

    _kind: kind.Kind[PoolSpec] = _self
