"""StoragePool: "this node has this libvirt storage pool" — parse, reconcile, teardown, resolve.

The spec (untrusted) is parsed into a frozen :class:`PoolSpec` with every string checked for shape and
for XML-special characters, so nothing odd reaches libvirt even though the XML is built with
ElementTree. Reconcile turns the spec into a :class:`hostlib.libvirt_pools.PoolDefinition` (host paths
confined, the connection resolved, the CHAP secret looked up), observes the pool in libvirt, plans the
verbs (define, build, start, autostart, refresh), runs them unless it is a dry run, observes again and
reports. The ledger says which libvirt pools are ours: a pool of that name that the ledger does not give
to this object is a ``Conflict`` and is never touched.

Teardown stops (destroy) and forgets (undefine) the pool; it never deletes a volume, a file or the
target directory's contents (``virStoragePoolDelete`` is never called). A pool is torn down only when
the ledger names it and its UUID still matches.

The libvirt layer comes from ``host.pools`` (the agent's composition root hands in the started
:class:`hostlib.libvirt_pools.PoolLayer` whose events it listens to); when the caller gave none, the
process-wide layer for ``host.config.libvirt_uri`` is used (local mode).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import stat
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hostlib import actions, errors, ledger, libvirt_pools, paths
from reconcilers import host as host_mod
from reconcilers import status, storage_connection

log = logging.getLogger(__name__)

KIND = "StoragePool"
DETAIL_KEY = "pool"
ORDER = 1
API_VERSION = "hoststorage.io/v1alpha1"

SOURCES = ("connectionRef", "dir", "fs", "netfs", "iscsiDirect", "iscsi", "logical")
SPEC_FIELDS = frozenset({"nodeSelector", "deletionPolicy", "autostart", "libvirtName", *SOURCES})
DELETION_POLICIES = ("Detach", "Retain")
# libvirt's own fs pool formats that make sense on a node; "auto" lets mount(8) probe.
FS_FORMATS = ("auto", "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "iso9660", "udf")
NETFS_FORMATS = ("nfs", "glusterfs")
MAX_LIBVIRT_NAME = 64
MAX_DEVICES = 64
# A running pool is refreshed at most this often by reconcile; the refresh event it causes then finds
# the pool fresh and does not refresh again (no event loop through our own refreshes).
REFRESH_MIN_INTERVAL = 60.0
POOLS_SUBDIR = "pools"

_LIBVIRT_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_IQN_RE = re.compile(
    r"^(iqn\.[0-9]{4}-[0-9]{2}\.[a-z0-9][a-z0-9.-]*(:[A-Za-z0-9.:_-]+)?"
    r"|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16}([0-9A-Fa-f]{16})?)$"
)
_VG_RE = re.compile(r"^[A-Za-z0-9+_.][A-Za-z0-9+_.-]*$")
_XML_SPECIAL = set("<>&\"'")
MAX_IQN = 223
MAX_VG = 127


class Phase:
    PENDING = "Pending"
    RUNNING = "Running"
    FAILED = "Failed"
    DETACHED = "Detached"


DETACHING = "Detaching"
"""Only in dry-run results of :func:`teardown` (the agent reports its own teardown phases)."""


class WaitingForConnection(errors.HostStorageError):
    reason = "WaitingForConnection"


# --------------------------------------------------------------------------------------------- spec


# One Secret reference shape for every kind: the connection module's.
SecretRef = storage_connection.SecretRef


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
    chap_secret_ref: SecretRef | None = None


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
    node_selector: Mapping[str, Any] = dataclasses.field(default_factory=dict)

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


def _str(value: object, field: str, *, max_len: int = 1024) -> str:
    if not isinstance(value, str):
        raise errors.InvalidSpec(f"must be a string, got {type(value).__name__}", field=field)
    if not value:
        raise errors.InvalidSpec("must not be empty", field=field)
    if len(value) > max_len:
        raise errors.InvalidSpec(f"is {len(value)} characters long, the limit is {max_len}", field=field)
    if _XML_SPECIAL.intersection(value):
        raise errors.InvalidSpec("must not contain <, >, &, or quotes", field=field)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value):
        raise errors.InvalidSpec("contains a control character (NUL, newline, ...)", field=field)
    return value


def _block(spec: Mapping[str, Any], key: str, allowed: set[str], required: set[str]) -> Mapping[str, Any]:
    raw = spec[key]
    field = f"spec.{key}"
    if not isinstance(raw, Mapping):
        raise errors.InvalidSpec(f"must be an object, got {type(raw).__name__}", field=field)
    unknown = sorted(set(raw) - allowed)
    if unknown:
        raise errors.InvalidSpec(f"unknown field(s) {', '.join(map(repr, unknown))}", field=field)
    missing = sorted(k for k in required if raw.get(k) is None)
    if missing:
        raise errors.InvalidSpec(f"missing required field(s) {', '.join(missing)}", field=field)
    return raw


def _abs_path(value: object, field: str) -> str:
    return paths.validate_abs_path(_str(value, field), field=field)


def _host(value: object, field: str) -> str:
    return paths.validate_hostname(_str(value, field, max_len=255), field=field)


def _port(value: object, field: str) -> int:
    if value is None:
        return 3260
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise errors.InvalidSpec(f"must be a port number from 1 to 65535, got {value!r}", field=field)
    return value


def _iqn(value: object, field: str) -> str:
    text = _str(value, field, max_len=MAX_IQN)
    if not _IQN_RE.match(text):
        raise errors.InvalidSpec(
            f"{text!r} is not an iSCSI name (iqn.YYYY-MM.domain[:id], eui., naa.)", field=field
        )
    return text


def _dev_path(value: object, field: str) -> str:
    path = _abs_path(value, field)
    if not path.startswith("/dev/"):
        raise errors.InvalidSpec(f"{path!r} is not a device path under /dev", field=field)
    return path


def _choice(value: object, field: str, allowed: tuple[str, ...], default: str) -> str:
    if value is None:
        return default
    if not isinstance(value, str) or value not in allowed:
        raise errors.InvalidSpec(f"must be one of {', '.join(allowed)}, got {value!r}", field=field)
    return value


def _parse_source(spec: Mapping[str, Any]) -> Source:
    present = [k for k in SOURCES if spec.get(k) is not None]
    if not present:
        raise errors.InvalidSpec(f"exactly one source is required: one of {', '.join(SOURCES)}", field="spec")
    if len(present) > 1:
        raise errors.InvalidSpec(f"exactly one source is allowed, got {', '.join(present)}", field="spec")
    key = present[0]
    f = f"spec.{key}"
    if key == "connectionRef":
        b = _block(spec, key, {"name", "path"}, {"name"})
        name = paths.validate_name(_str(b["name"], f"{f}.name"), field=f"{f}.name")
        sub = b.get("path")
        sub_path = (
            ""
            if sub is None or sub == ""
            else paths.validate_relative_path(_str(sub, f"{f}.path"), field=f"{f}.path")
        )
        return ConnectionRefSource(name, sub_path)
    if key == "dir":
        b = _block(spec, key, {"path"}, {"path"})
        return DirSource(_abs_path(b["path"], f"{f}.path"))
    if key == "fs":
        b = _block(spec, key, {"device", "format"}, {"device"})
        return FsSource(
            _dev_path(b["device"], f"{f}.device"), _choice(b.get("format"), f"{f}.format", FS_FORMATS, "auto")
        )
    if key == "netfs":
        b = _block(spec, key, {"host", "dir", "format"}, {"host", "dir"})
        return NetfsSource(
            _host(b["host"], f"{f}.host"),
            _abs_path(b["dir"], f"{f}.dir"),
            _choice(b.get("format"), f"{f}.format", NETFS_FORMATS, "nfs"),
        )
    if key == "iscsiDirect":
        b = _block(
            spec,
            key,
            {"host", "port", "target", "initiator", "chapSecretRef"},
            {"host", "target", "initiator"},
        )
        ref = None
        if b.get("chapSecretRef") is not None:
            rf = f"{f}.chapSecretRef"
            raw = b["chapSecretRef"]
            if not isinstance(raw, Mapping):
                raise errors.InvalidSpec("must be an object", field=rf)
            unknown = sorted(set(raw) - {"name", "namespace"})
            if unknown:
                raise errors.InvalidSpec(f"unknown field(s) {', '.join(map(repr, unknown))}", field=rf)
            # Empty namespace: the agent's own namespace (local mode: "default"); the lookup decides.
            ns = raw.get("namespace")
            ref = SecretRef(
                paths.validate_name(_str(raw.get("name"), f"{rf}.name"), field=f"{rf}.name"),
                ""
                if ns is None
                else paths.validate_name(_str(ns, f"{rf}.namespace", max_len=63), field=f"{rf}.namespace"),
            )
        return IscsiDirectSource(
            host=_host(b["host"], f"{f}.host"),
            target=_iqn(b["target"], f"{f}.target"),
            initiator=_iqn(b["initiator"], f"{f}.initiator"),
            port=_port(b.get("port"), f"{f}.port"),
            chap_secret_ref=ref,
        )
    if key == "iscsi":
        b = _block(spec, key, {"host", "port", "target"}, {"host", "target"})
        return IscsiSource(
            _host(b["host"], f"{f}.host"), _iqn(b["target"], f"{f}.target"), _port(b.get("port"), f"{f}.port")
        )
    b = _block(spec, key, {"vgName", "devices"}, {"vgName"})
    vg = _str(b["vgName"], f"{f}.vgName", max_len=MAX_VG)
    if not _VG_RE.match(vg) or vg in (".", "..") or vg.startswith("-"):
        raise errors.InvalidSpec(f"{vg!r} is not a volume group name", field=f"{f}.vgName")
    devices_raw = b.get("devices") or []
    if not isinstance(devices_raw, list):
        raise errors.InvalidSpec("must be a list of device paths", field=f"{f}.devices")
    if len(devices_raw) > MAX_DEVICES:
        raise errors.InvalidSpec(f"at most {MAX_DEVICES} devices", field=f"{f}.devices")
    devices = tuple(_dev_path(d, f"{f}.devices[{i}]") for i, d in enumerate(devices_raw))
    return LogicalSource(vg, devices)


def parse(obj: Mapping[str, Any]) -> PoolSpec:
    """A StoragePool manifest -> :class:`PoolSpec`; ``InvalidSpec`` naming the field. No I/O."""
    if not isinstance(obj, Mapping):
        raise errors.InvalidSpec("a StoragePool must be an object")
    if obj.get("kind", KIND) != KIND:
        raise errors.InvalidSpec(f"kind must be {KIND}, got {obj.get('kind')!r}", field="kind")
    api = obj.get("apiVersion", API_VERSION)
    if api != API_VERSION:
        raise errors.InvalidSpec(f"apiVersion must be {API_VERSION}, got {api!r}", field="apiVersion")
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        raise errors.InvalidSpec("must be an object with a name", field="metadata")
    name = paths.validate_name(meta.get("name"), field="metadata.name")
    uid = meta.get("uid", "")
    if not isinstance(uid, str):
        raise errors.InvalidSpec("must be a string", field="metadata.uid")
    spec = obj.get("spec")
    if not isinstance(spec, Mapping):
        raise errors.InvalidSpec("must be an object", field="spec")
    unknown = sorted(set(spec) - SPEC_FIELDS)
    if unknown:
        raise errors.InvalidSpec(f"unknown field(s) {', '.join(map(repr, unknown))}", field="spec")
    libvirt_name = spec.get("libvirtName")
    if libvirt_name is None:
        libvirt_name = name
        field = "metadata.name"
    else:
        field = "spec.libvirtName"
        libvirt_name = _str(libvirt_name, field, max_len=MAX_LIBVIRT_NAME)
    if len(libvirt_name) > MAX_LIBVIRT_NAME or not _LIBVIRT_NAME_RE.match(libvirt_name):
        raise errors.InvalidSpec(
            f"{libvirt_name!r} is not a usable libvirt pool name (letters, digits, '_', '.', '-', "
            f"starting with a letter or digit, at most {MAX_LIBVIRT_NAME}); set spec.libvirtName",
            field=field,
        )
    autostart = spec.get("autostart", True)
    if not isinstance(autostart, bool):
        raise errors.InvalidSpec(f"must be true or false, got {autostart!r}", field="spec.autostart")
    policy = _choice(spec.get("deletionPolicy"), "spec.deletionPolicy", DELETION_POLICIES, "Detach")
    selector = spec.get("nodeSelector") or {}
    if not isinstance(selector, Mapping):
        raise errors.InvalidSpec("must be a label selector object", field="spec.nodeSelector")
    storage_connection.parse_node_selector(selector)
    return PoolSpec(
        name=name,
        libvirt_name=libvirt_name,
        source=_parse_source(spec),
        autostart=autostart,
        deletion_policy=policy,
        uid=uid,
        node_selector=dict(selector),
    )


# ------------------------------------------------------------------------------------------- helpers


def layer_for(host: host_mod.Host) -> libvirt_pools.PoolLayer:
    """The libvirt layer to use: the one the caller injected, else the process-wide one for the URI."""
    if host.pools is not None:
        layer: libvirt_pools.PoolLayer = host.pools
        return layer
    return libvirt_pools.shared(host.config.libvirt_uri)


def secret_usage(libvirt_name: str) -> str:
    return f"{libvirt_pools.SECRET_USAGE_PREFIX}{libvirt_name}"


def _resolve_connection(host: host_mod.Host, name: str, sub_path: str) -> str | None:
    return storage_connection.resolve(host, name, sub_path or None)


def _confine_dir(path: str, host: host_mod.Host, field: str) -> str:
    roots = host.config.allowed_host_paths
    if not roots:
        raise errors.InvalidSpec(
            "dir pools need an allowed host path (--allowed-host-path); none is configured", field=field
        )
    for root in roots:
        try:
            return paths.ensure_under(root, path, field=field)
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


def desired_definition(spec: PoolSpec, host: host_mod.Host) -> Desired:
    """Spec + host -> the pool libvirt should have. Confines paths; raises InvalidSpec,
    WaitingForConnection, NotFound, Unsupported. No host change."""
    src = spec.source
    name = spec.libvirt_name
    if isinstance(src, ConnectionRefSource):
        path = _resolve_connection(host, src.name, src.path)
        if path is None:
            raise WaitingForConnection(f"StorageConnection {src.name} is not Connected on this node yet")
        return Desired(
            libvirt_pools.PoolDefinition(name=name, type="dir", target_path=path),
            depends_on=(("StorageConnection", src.name),),
        )
    if isinstance(src, DirSource):
        path = _confine_dir(src.path, host, "spec.dir.path")
        return Desired(libvirt_pools.PoolDefinition(name=name, type="dir", target_path=path))
    if isinstance(src, FsSource):
        device = _check_device(src.device, "spec.fs.device")
        target = paths.confine(host.config.mount_base, f"{POOLS_SUBDIR}/{name}")
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
            chap = _chap(src.chap_secret_ref, host)
            user, usage = chap[0], secret_usage(name)
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
    libvirt_pools.preflight(spec.pool_type)
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


def _where(ref: SecretRef) -> str:
    return f"{ref.namespace}/{ref.name}" if ref.namespace else ref.name


def _chap(ref: SecretRef, host: host_mod.Host) -> tuple[str, bytes]:
    field = "spec.iscsiDirect.chapSecretRef"
    if host.secret_lookup is None:
        raise errors.NotFound(f"{field}: no Secret source is configured to read Secret {ref.name}")
    try:
        data = host.secret_lookup(ref.namespace, ref.name)
    except KeyError:
        raise errors.NotFound(f"{field}: Secret {_where(ref)} not found") from None
    user, password = data.get("username"), data.get("password")
    if not user or not password:
        raise errors.InvalidSpec(
            f"Secret {_where(ref)} must have non-empty keys username and password", field=field
        )
    _str(user, f"{field} (Secret key username)", max_len=255)
    return user, password.encode("utf-8")


def _conflict_reason(
    spec_name: str, libvirt_name: str, observed: libvirt_pools.PoolObserved | None, host: host_mod.Host
) -> str | None:
    for other in host.ledger.entries(KIND):
        if other.name != spec_name and other.resource.get("libvirtName") == libvirt_name:
            return f"libvirt pool {libvirt_name} belongs to StoragePool {other.name}"
    if observed is None:
        return None
    entry = host.ledger.get(KIND, spec_name)
    if entry is None or entry.resource.get("libvirtName") != libvirt_name:
        return f"libvirt pool {libvirt_name} exists and was not made by hoststorage; it is left alone"
    uuid = entry.resource.get("uuid")
    if uuid and uuid != observed.uuid:
        return (
            f"libvirt pool {libvirt_name} has UUID {observed.uuid}, not the {uuid} hoststorage defined; "
            "it was replaced outside hoststorage and is left alone"
        )
    return None


def _condition(ready: bool, reason: str, message: str) -> list[status.Condition]:
    return [
        status.Condition(
            "Ready", status.ConditionStatus.TRUE if ready else status.ConditionStatus.FALSE, reason, message
        )
    ]


def _result(
    spec_name: str,
    phase: str,
    reason: str,
    message: str,
    *,
    ready: bool = False,
    detail: Mapping[str, Any] | None = None,
    planned: list[actions.Action] | None = None,
    changed: bool = False,
    retry: bool = False,
) -> status.NodeResult:
    return status.NodeResult(
        kind=KIND,
        name=spec_name,
        phase=phase,
        ready=ready,
        reason=reason,
        message=message,
        detail_key=DETAIL_KEY,
        detail=dict(detail or {}),
        conditions=_condition(ready, reason, message),
        actions=tuple(planned or ()),
        changed=changed,
        retry=retry,
    )


def _error_result(
    spec_name: str, exc: errors.HostStorageError, detail: Mapping[str, Any], *, changed: bool = False
) -> status.NodeResult:
    pending = isinstance(exc, WaitingForConnection | libvirt_pools.LibvirtUnavailable)
    return _result(
        spec_name,
        Phase.PENDING if pending else Phase.FAILED,
        exc.reason,
        exc.message,
        detail=detail,
        changed=changed,
        retry=exc.temporary,
    )


def plan(
    desired: libvirt_pools.PoolDefinition,
    observed: libvirt_pools.PoolObserved | None,
    *,
    autostart: bool,
    seconds_since_refresh: float | None = None,
) -> list[actions.Action]:
    """(desired, observed) -> the verbs to run, in order. Pure."""
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


def _record(spec: PoolSpec, host: host_mod.Host, desired: Desired, uuid: str | None) -> None:
    resource: dict[str, Any] = {
        "libvirtName": spec.libvirt_name,
        "type": desired.definition.type,
        "targetPath": desired.definition.target_path,
        "deletionPolicy": spec.deletion_policy,
    }
    if uuid:
        resource["uuid"] = uuid
    if desired.chap is not None:
        resource["secretUsage"] = desired.definition.auth_secret_usage
    if desired.owned_paths:
        resource["paths"] = list(desired.owned_paths)
    host.ledger.put(ledger.LedgerEntry(KIND, spec.name, spec.uid, resource, tuple(desired.depends_on)))


def _observed_result(
    spec_name: str,
    observed: libvirt_pools.PoolObserved | None,
    *,
    changed: bool,
    planned: list[actions.Action],
) -> status.NodeResult:
    if observed is None:
        return _result(spec_name, Phase.PENDING, "NotDefined", "the pool is not defined", planned=planned)
    detail = observed.to_detail()
    if observed.state == "running":
        msg = f"pool {observed.name} running, {observed.volumes} volume(s), {observed.available} bytes free"
        return _result(
            spec_name,
            Phase.RUNNING,
            "Running",
            msg,
            ready=True,
            detail=detail,
            changed=changed,
            planned=planned,
        )
    if observed.state in ("degraded", "inaccessible"):
        return _result(
            spec_name,
            Phase.FAILED,
            observed.state.capitalize(),
            f"libvirt reports pool {observed.name} {observed.state}",
            detail=detail,
            changed=changed,
            planned=planned,
            retry=True,
        )
    return _result(
        spec_name,
        Phase.PENDING,
        "Building" if observed.state == "building" else "NotRunning",
        f"pool {observed.name} is {observed.state}",
        detail=detail,
        changed=changed,
        planned=planned,
        retry=True,
    )


# ----------------------------------------------------------------------------------------- reconcile


def reconcile(spec: PoolSpec, host: host_mod.Host, *, dry_run: bool = False) -> status.NodeResult:
    """Make libvirt have this pool defined, running, autostarted as asked; report what libvirt says."""
    base_detail: dict[str, Any] = {"libvirtName": spec.libvirt_name, "type": spec.pool_type}
    try:
        desired = desired_definition(spec, host)
    except errors.HostStorageError as exc:
        return _error_result(spec.name, exc, base_detail)
    layer = layer_for(host)
    name = spec.libvirt_name
    changed = False
    try:
        observed = layer.observe(name)
        conflict = _conflict_reason(spec.name, name, observed, host)
        if conflict is not None:
            return _result(spec.name, Phase.FAILED, errors.Conflict.reason, conflict, detail=base_detail)
        entry = host.ledger.get(KIND, spec.name)
        old_name = entry.resource.get("libvirtName") if entry is not None else None
        definition = dataclasses.replace(desired.definition, uuid=observed.uuid if observed else None)
        planned = plan(
            definition,
            observed,
            autostart=spec.autostart,
            seconds_since_refresh=layer.seconds_since_refresh(name),
        )
        if dry_run:
            return _observed_result(spec.name, observed, changed=False, planned=planned)
        if isinstance(old_name, str) and old_name != name and entry is not None:
            # The libvirt name changed: the old pool is ours; stop and forget it before taking the new one.
            _teardown_entry(entry, host, layer, force=False)
            changed = True
        # Intent first: a crash between define and the ledger write must not orphan an unowned pool.
        _record(spec, host, desired, observed.uuid if observed else None)
        if desired.chap is not None and desired.definition.auth_secret_usage:
            changed |= layer.set_secret(
                desired.definition.auth_secret_usage,
                f"hoststorage CHAP for StoragePool {spec.name}",
                desired.chap[1],
            )
        for action in planned:
            if action.verb == "define":
                layer.define(definition)
            elif action.verb == "destroy":
                layer.destroy(name)
            elif action.verb == "build":
                layer.build(name)
            elif action.verb == "start":
                layer.start(name)
            elif action.verb == "autostart":
                layer.set_autostart(name, spec.autostart)
            elif action.verb == "refresh":
                layer.refresh(name)
            # A refresh keeps the pool as it is; everything else is a change worth reporting.
            changed |= action.verb != "refresh"
        old_usage = entry.resource.get("secretUsage") if entry is not None else None
        if isinstance(old_usage, str) and old_usage and old_usage != desired.definition.auth_secret_usage:
            # CHAP dropped from the spec (or the pool renamed): the old secret is ours and unused now.
            changed |= layer.undefine_secret(old_usage)
        # Nothing done: what we observed is still the truth (a resync of a converged pool costs one observe).
        after = layer.observe(name) if planned or changed else observed
        _record(spec, host, desired, after.uuid if after else None)
    except errors.HostStorageError as exc:
        detail = base_detail
        try:
            now = layer.observe(name)
            if now is not None:
                detail = now.to_detail()
        except errors.HostStorageError:
            pass
        return _error_result(spec.name, exc, detail, changed=changed)
    return _observed_result(spec.name, after, changed=changed, planned=planned)


# ------------------------------------------------------------------------------------------ teardown


def _teardown_entry(
    entry: ledger.LedgerEntry, host: host_mod.Host, layer: libvirt_pools.PoolLayer, *, force: bool
) -> bool:
    """Destroy and undefine the pool ``entry`` owns (if it is still the one we defined); never delete."""
    del force  # destroy has no lazy variant; a busy fs/netfs pool stays and reports DestroyFailed
    name = entry.resource.get("libvirtName")
    changed = False
    if isinstance(name, str) and name:
        observed = layer.observe(name)
        uuid = entry.resource.get("uuid")
        if observed is not None and (not uuid or uuid == observed.uuid):
            if observed.active:
                layer.destroy(name)
                changed = True
            if observed.persistent:
                layer.undefine(name)
                changed = True
        elif observed is not None:
            log.warning(
                "StoragePool %s: libvirt pool %s has UUID %s, not ours (%s); left alone",
                entry.name,
                name,
                observed.uuid,
                uuid,
            )
    usage = entry.resource.get("secretUsage")
    if isinstance(usage, str) and usage:
        changed |= layer.undefine_secret(usage)
    for path in entry.resource.get("paths") or []:
        # Only the empty mount-point directory libvirt's build made under our mount base; rmdir never
        # removes contents, and a non-empty directory is left as it is.
        if isinstance(path, str) and paths.is_under(os.path.join(host.config.mount_base, POOLS_SUBDIR), path):
            with contextlib.suppress(OSError):
                os.rmdir(path)
    host.ledger.remove(entry.kind, entry.name)
    return changed


def _plan_teardown_entry(
    entry: ledger.LedgerEntry, host: host_mod.Host, layer: libvirt_pools.PoolLayer
) -> list[actions.Action]:
    """What :func:`_teardown_entry` would do, observed now; nothing changes."""
    name = entry.resource.get("libvirtName")
    planned: list[actions.Action] = []
    if isinstance(name, str) and name:
        observed = layer.observe(name)
        uuid = entry.resource.get("uuid")
        if observed is not None and (not uuid or uuid == observed.uuid):
            if observed.active:
                planned.append(actions.Action("pool-destroy", f"stop libvirt pool {name} (volumes stay)"))
            if observed.persistent:
                planned.append(actions.Action("pool-undefine", f"undefine libvirt pool {name}"))
    usage = entry.resource.get("secretUsage")
    if isinstance(usage, str) and usage and layer.secret_uuid(usage) is not None:
        planned.append(actions.Action("secret-undefine", f"undefine libvirt secret {usage}"))
    for path in entry.resource.get("paths") or []:
        if (
            isinstance(path, str)
            and paths.is_under(os.path.join(host.config.mount_base, POOLS_SUBDIR), path)
            and os.path.isdir(path)
        ):
            planned.append(actions.Action("rmdir", f"remove {path} if empty", path=path))
    return planned


def teardown(
    spec_or_entry: PoolSpec | ledger.LedgerEntry,
    host: host_mod.Host,
    *,
    force: bool = False,
    dry_run: bool = False,
) -> status.NodeResult:
    """Stop and forget the pool (or only forget it with Retain); volumes and files always stay.

    ``dry_run`` changes nothing (libvirt or ledger) and lists the planned actions (reason ``WouldDetach``
    or ``WouldRetain``)."""
    name = spec_or_entry.name
    entry = host.ledger.get(KIND, name)
    if entry is None:
        return _result(name, Phase.DETACHED, "Detached", "nothing of this pool is recorded on this node")
    policy = (
        spec_or_entry.deletion_policy
        if isinstance(spec_or_entry, PoolSpec)
        else str(entry.resource.get("deletionPolicy", "Detach"))
    )
    detail = {"libvirtName": entry.resource.get("libvirtName"), "type": entry.resource.get("type")}
    users = host.ledger.users_of(KIND, name)
    if users and not force:
        who = ", ".join(f"{u.kind}/{u.name}" for u in users)
        return _result(
            name, Phase.RUNNING, errors.InUse.reason, f"pool still used by {who}", detail=detail, retry=True
        )
    forget = actions.Action("forget", f"remove {KIND}/{name} from the ledger")
    if policy == "Retain" and dry_run:
        message = "dry run: deletionPolicy Retain: the libvirt pool would stay as it is, forgotten"
        return _result(name, DETACHING, "WouldRetain", message, detail=detail, planned=[forget])
    if policy == "Retain":
        host.ledger.remove(KIND, name)
        return _result(
            name,
            Phase.DETACHED,
            "Retained",
            "deletionPolicy Retain: the libvirt pool is left as it is",
            detail=detail,
            changed=True,
        )
    layer = layer_for(host)
    try:
        if dry_run:
            planned = [*_plan_teardown_entry(entry, host, layer), forget]
            message = "dry run: would stop and undefine the pool; volumes and files stay"
            return _result(name, DETACHING, "WouldDetach", message, detail=detail, planned=planned)
        changed = _teardown_entry(entry, host, layer, force=force)
    except errors.HostStorageError as exc:
        return _result(name, Phase.FAILED, exc.reason, exc.message, detail=detail, retry=exc.temporary)
    return _result(
        name,
        Phase.DETACHED,
        "Detached",
        "pool stopped and undefined; volumes and files were kept",
        detail=detail,
        changed=changed,
    )


# ----------------------------------------------------------------------------------- observe/resolve


def observe(entry: ledger.LedgerEntry, host: host_mod.Host) -> status.NodeResult:
    """What ``hoststorage status`` shows for one ledger entry: libvirt's view now, no change."""
    name = entry.resource.get("libvirtName")
    if not isinstance(name, str):
        return _result(entry.name, Phase.FAILED, "LedgerCorrupt", "ledger entry has no libvirtName")
    try:
        observed = layer_for(host).observe(name)
    except errors.HostStorageError as exc:
        return _error_result(entry.name, exc, {"libvirtName": name})
    return _observed_result(entry.name, observed, changed=False, planned=[])


def names_for_libvirt_pool(host: host_mod.Host, libvirt_name: str) -> list[str]:
    """The StoragePool object(s) a libvirt pool event is about: the ledger's owner, else the same name."""
    owners = [e.name for e in host.ledger.entries(KIND) if e.resource.get("libvirtName") == libvirt_name]
    return owners or [libvirt_name]


def subscribe(
    host: host_mod.Host, enqueue: Callable[[str], None], known: Callable[[], Iterable[str]]
) -> Callable[[], None]:
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
    libvirt_name = entry.resource.get("libvirtName")
    if not isinstance(libvirt_name, str):
        return None
    try:
        observed = layer_for(host).observe(libvirt_name)
    except errors.HostStorageError:
        return None
    uuid = entry.resource.get("uuid")
    if observed is None or not observed.active or (uuid and uuid != observed.uuid):
        return None
    return observed.definition.target_path
