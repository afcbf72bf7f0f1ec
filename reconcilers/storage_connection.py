"""StorageConnection: from a manifest and the observed host to a connected (or detached) node.

Three steps, each with one boundary:

- :func:`parse` turns an untrusted manifest into a frozen :class:`ConnectionSpec` with the toolkit of
  :mod:`reconcilers.spec` (the envelope, types, required and unknown fields, exactly one parameter block
  matching ``spec.type``, lengths, absolute paths, no NUL/control characters, no value starting with
  ``-``) and raises :class:`hostlib.errors.InvalidSpec` naming the field. No I/O. The semantic checks
  that depend on the host (mount-option allow-lists, the posixfs type list the admin may extend,
  allowed host paths, mount-point confinement) are :func:`hostlib.connections.validate`, run first
  thing in :func:`reconcile`.
- :func:`reconcile` validates, observes, plans and (unless ``dry_run``) acts through a
  ``hostlib.connections.Connection`` made by ``host.make_connection``, re-observes and reports a
  :class:`reconcilers.status.NodeResult`. Host failures never raise: they become a result through the
  one error mapping of :class:`reconcilers.status.Results`.
- :func:`teardown` honours ``deletionPolicy`` and the ledger through :func:`reconcilers.status.teardown`:
  it only undoes what hoststorage made (a mount found already in place is recorded as ``preexisting``
  and never unmounted), and answers ``InUse`` while a pool or monitor lists the connection as a
  dependency or the mount is busy.

Ownership is written ahead: the ledger entry is recorded *before* connecting, so a crash between the
mount and the write never leaves a mount that later runs would treat as foreign.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from hostlib import actions, connections, errors, ledger, mounts, paths
from reconcilers import health_policy, kind, selector, spec, status
from reconcilers import host as host_mod

log = logging.getLogger(__name__)

KIND = "StorageConnection"
DETAIL_KEY = "connection"
RESULTS = status.Results(KIND, DETAIL_KEY, status.Phase.CONNECTED)
subscribe = kind.no_host_events


class WaitingForConnection(errors.Waiting):
    """A pool or monitor on this connection waits: it is not connected on this node (yet)."""

    reason = "WaitingForConnection"


class ConnectionLost(errors.HostStorageError):
    """A pool or monitor on this connection fails: hoststorage had connected it on this node and the host
    no longer shows it connected (unmounted underneath, covered by a foreign mount, its link gone).
    Unlike :class:`WaitingForConnection` this is a failure of the user on this node (the roll-up counts
    it, so a monitor whose storage went away on one node is a NodeProblem); retried."""

    reason = "ConnectionLost"


TYPES = ("nfs", "posixfs", "glusterfs", "iscsi", "localfs")
NFS_VERSIONS = ("3", "4", "4.1", "4.2", "auto")

# Limits shared with crds/storageconnection.yaml (tests/test_spec_agreement.py keeps both in step).
MAX_OPTIONS = 32
MAX_OPTION_LEN = 256
MAX_BACKUP_SERVERS = connections.MAX_BACKUP_SERVERS
MAX_HOST = 255
MAX_VOLUME = 64

_VOLUME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_OPTION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/=@+-]*$")


@dataclasses.dataclass(frozen=True)
class ConnectionSpec:
    name: str
    type: str
    params: connections.Params
    """The hostlib.connections params dataclass of ``type`` (NfsParams, PosixfsParams, ...)."""
    uid: str = ""
    generation: int | None = None
    node_selector: selector.NodeSelector = dataclasses.field(default_factory=selector.NodeSelector)
    deletion_policy: str = "Detach"
    chap_secret_ref: spec.SecretRef | None = None
    """iscsi only: where the CHAP credentials are; they are read at reconcile time, never stored."""
    raw_spec: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    """The validated ``spec`` as given, recorded in the ledger so status/teardown can rebuild it."""


# ------------------------------------------------------------------------------------------- parse


def _options(block: Mapping[str, Any], field: str) -> tuple[str, ...]:
    if block.get("options") is None:
        return ()

    def option(value: object, where: str) -> str:
        opt = spec.string(value, where, max_len=MAX_OPTION_LEN)
        if "," in opt:
            raise spec.invalid(where, f"{opt!r} contains a comma: give one option per item")
        if any(c.isspace() for c in opt):
            raise spec.invalid(where, f"{opt!r} contains whitespace")
        return spec.string(opt, where, max_len=MAX_OPTION_LEN, pattern=_OPTION_RE)

    return tuple(spec.string_list(block["options"], f"{field}.options", max_items=MAX_OPTIONS, item=option))


def _host(value: object, field: str) -> str:
    return spec.host(value, field)


def _parse_nfs(block: Mapping[str, Any], field: str) -> dict[str, Any]:
    spec.fields(
        block,
        field,
        allowed=("server", "export", "version", "timeo", "retrans", "options"),
        required=("server", "export"),
    )
    export = spec.abs_path(block["export"], f"{field}.export")
    if "," in export:
        raise spec.invalid(f"{field}.export", f"{export!r} contains a comma")
    out: dict[str, Any] = {
        "server": _host(block["server"], f"{field}.server"),
        "export": export,
        "options": _options(block, field),
    }
    if block.get("version") is not None:
        version = block["version"]
        if isinstance(version, int | float) and not isinstance(version, bool):
            version = str(version)  # local manifests: YAML reads `version: 4.1` as a number
        out["version"] = spec.choice(version, f"{field}.version", NFS_VERSIONS)
    if block.get("timeo") is not None:
        low, high = connections.NFS_TIMEO_RANGE
        out["timeo"] = spec.integer(block["timeo"], f"{field}.timeo", low=low, high=high)
    if block.get("retrans") is not None:
        low, high = connections.NFS_RETRANS_RANGE
        out["retrans"] = spec.integer(block["retrans"], f"{field}.retrans", low=low, high=high)
    return out


def _parse_posixfs(block: Mapping[str, Any], field: str) -> dict[str, Any]:
    spec.fields(block, field, allowed=("source", "vfsType", "options"), required=("source", "vfsType"))
    where = f"{field}.source"
    source = spec.string(block["source"], where, max_len=spec.MAX_PATH)
    if any(c.isspace() for c in source) or "," in source:
        raise spec.invalid(where, f"{source!r} contains whitespace or a comma")
    if source.startswith("//"):
        # A CIFS share (//server/share): not a host path, so no normalisation; the same '..' rule.
        if ".." in source.split("/"):
            raise spec.invalid(where, f"{source!r} contains a '..' component")
    elif source.startswith("/"):
        source = paths.validate_abs_path(source, field=where)
    elif ":/" in source:
        host, path = mounts.split_remote(source, field=where)
        paths.split_host_port(host, default_port=1, field=where)
        if ".." in path.split("/"):
            raise spec.invalid(where, f"{source!r} contains a '..' component")
    else:
        raise spec.invalid(where, f"{source!r} is neither an absolute device path nor server:/path")
    vfs = mounts.check_vfs_type_name(block["vfsType"], field=f"{field}.vfsType")
    return {"source": source, "vfs_type": vfs, "options": _options(block, field)}


def _backup_server(value: object, field: str) -> str:
    # mount.glusterfs separates backup servers with ':', so an IPv6 address cannot be one.
    host = spec.host(value, field, bare_ipv6=False)
    if host.startswith("["):
        raise spec.invalid(field, "IPv6 backup servers are not supported by mount.glusterfs")
    return host


def _parse_glusterfs(block: Mapping[str, Any], field: str) -> dict[str, Any]:
    spec.fields(
        block, field, allowed=("server", "volume", "backupServers", "options"), required=("server", "volume")
    )
    backups: tuple[str, ...] = ()
    if block.get("backupServers") is not None:
        backups = spec.string_list(
            block["backupServers"],
            f"{field}.backupServers",
            max_items=MAX_BACKUP_SERVERS,
            item=_backup_server,
        )
    return {
        "server": _host(block["server"], f"{field}.server"),
        "volume": spec.string(block["volume"], f"{field}.volume", max_len=MAX_VOLUME, pattern=_VOLUME_RE),
        "backup_servers": backups,
        "options": _options(block, field),
    }


def _parse_iscsi(block: Mapping[str, Any], field: str) -> tuple[dict[str, Any], spec.SecretRef | None]:
    spec.fields(
        block,
        field,
        allowed=("portal", "target", "lun", "initiatorName", "chapSecretRef"),
        required=("portal", "target"),
    )
    portal = spec.string(block["portal"], f"{field}.portal", max_len=MAX_HOST + 7)
    host, port = paths.split_host_port(portal, default_port=3260, field=f"{field}.portal")
    out: dict[str, Any] = {
        "portal": f"{host}:{port}",
        "target": spec.iscsi_name(block["target"], f"{field}.target"),
        "lun": None,
        "initiator_name": None,
    }
    if block.get("lun") is not None:
        out["lun"] = spec.integer(block["lun"], f"{field}.lun", low=0, high=16383)
    if block.get("initiatorName") is not None:
        out["initiator_name"] = spec.iscsi_name(block["initiatorName"], f"{field}.initiatorName")
    ref = None
    if block.get("chapSecretRef") is not None:
        ref = spec.secret_ref(block["chapSecretRef"], f"{field}.chapSecretRef")
    return out, ref


def _parse_localfs(block: Mapping[str, Any], field: str) -> dict[str, Any]:
    spec.fields(block, field, allowed=("path",), required=("path",))
    return {"path": spec.abs_path(block["path"], f"{field}.path")}


_PARAMS: dict[str, type[Any]] = {
    "nfs": connections.NfsParams,
    "posixfs": connections.PosixfsParams,
    "glusterfs": connections.GlusterfsParams,
    "iscsi": connections.IscsiParams,
    "localfs": connections.LocalfsParams,
}


def parse(obj: Mapping[str, Any]) -> ConnectionSpec:
    """A StorageConnection manifest -> ConnectionSpec; InvalidSpec(field=...) on any structural problem."""
    meta, raw = spec.envelope(obj, KIND)
    allowed = ("type", "nodeSelector", "deletionPolicy", *TYPES, *health_policy.FIELDS)
    spec.fields(raw, "spec", allowed=allowed, required=("type",))
    spec.health(raw)
    conn_type = spec.choice(raw["type"], "spec.type", TYPES)
    policy = spec.deletion_policy(raw)
    extra = [t for t in TYPES if t != conn_type and raw.get(t) is not None]
    if extra:
        raise spec.invalid(
            f"spec.{extra[0]}",
            f"type is {conn_type}: only spec.{conn_type} may be set, remove spec.{extra[0]}",
        )
    field = f"spec.{conn_type}"
    if raw.get(conn_type) is None:
        raise spec.invalid(field, f"is required when type is {conn_type}")
    block = spec.mapping(raw[conn_type], field)
    ref: spec.SecretRef | None = None
    if conn_type == "iscsi":
        fields, ref = _parse_iscsi(block, field)
    else:
        fields = {
            "nfs": _parse_nfs,
            "posixfs": _parse_posixfs,
            "glusterfs": _parse_glusterfs,
            "localfs": _parse_localfs,
        }[conn_type](block, field)
    node_selector = spec.node_selector(raw.get("nodeSelector"))
    raw_spec = {"type": conn_type, "deletionPolicy": policy, conn_type: dict(block)}
    if raw.get("nodeSelector") is not None:
        raw_spec["nodeSelector"] = raw["nodeSelector"]
    cls = _PARAMS[conn_type]
    known = {f.name for f in dataclasses.fields(cls)}
    params: connections.Params = cls(**{k: v for k, v in fields.items() if k in known})
    return ConnectionSpec(
        name=meta.name,
        type=conn_type,
        params=params,
        uid=meta.uid,
        generation=meta.generation,
        node_selector=node_selector,
        deletion_policy=policy,
        chap_secret_ref=ref,
        raw_spec=raw_spec,
    )


# --------------------------------------------------------------------------------------- reconcile


def _credentials(conn: ConnectionSpec, host: host_mod.Host) -> connections.Params:
    """The params to connect with: for iscsi with chapSecretRef, the CHAP credentials filled in."""
    ref = conn.chap_secret_ref
    if ref is None or not isinstance(conn.params, connections.IscsiParams):
        return conn.params
    user, password = spec.chap(host.secret_lookup, ref, "spec.iscsi.chapSecretRef")
    return dataclasses.replace(conn.params, chap=connections.ChapCredentials(user, password))


def _detail(
    spec_type: str, observed: connections.ConnectionObserved, *, preexisting: bool = False
) -> dict[str, Any]:
    out: dict[str, Any] = {"type": spec_type}
    key = "devicePath" if spec_type == "iscsi" else "mountPoint"
    out[key] = observed.target
    if observed.source:
        out["source"] = observed.source
    if observed.fstype:
        out["fstype"] = observed.fstype
    if observed.device:
        out["device"] = observed.device
    if preexisting:
        out["preexisting"] = True
    return out


def _source_of(conn: ConnectionSpec) -> str:
    p = conn.params
    if isinstance(p, connections.NfsParams):
        return f"{p.server}:{p.export}"
    if isinstance(p, connections.PosixfsParams):
        return p.source
    if isinstance(p, connections.GlusterfsParams):
        return f"{p.server}:/{p.volume}"
    if isinstance(p, connections.IscsiParams):
        return f"{p.target} at {p.portal}"
    return p.path


def _entry_spec(entry: ledger.LedgerEntry) -> ConnectionSpec:
    """The spec a ledger entry was recorded from (InvalidSpec if the entry is not one of ours)."""
    raw = entry.resource.get("spec")
    if not isinstance(raw, Mapping):
        raise errors.InvalidSpec(f"ledger entry {entry.kind}/{entry.name} records no spec")
    return parse(spec.manifest(KIND, entry.name, entry.uid, raw))


def _target_key(conn_type: str) -> str:
    return "devicePath" if conn_type == "iscsi" else "mountPoint"


def _recorded_target(entry: ledger.LedgerEntry) -> str | None:
    for key in ("mountPoint", "devicePath"):
        value = entry.resource.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _entry(
    conn: ConnectionSpec,
    target: str,
    *,
    preexisting: bool,
    target_id: tuple[int, int] | None = None,
    mount: mounts.MountIdentity | None = None,
) -> ledger.LedgerEntry:
    resource: dict[str, Any] = {
        "type": conn.type,
        _target_key(conn.type): target,
        "spec": dict(conn.raw_spec),
        "preexisting": preexisting,
    }
    if target_id is not None:
        # The (device, inode) of the mount point directory or localfs link hoststorage created: a
        # later teardown removes only that (hostlib.fsops compares it).
        resource["targetId"] = list(target_id)
    if mount is not None:
        resource["mount"] = mount.to_dict()
    return ledger.LedgerEntry(KIND, conn.name, conn.uid, resource)


def _recorded_id(entry: ledger.LedgerEntry | None) -> tuple[int, int] | None:
    value = entry.resource.get("targetId") if entry is not None else None
    if isinstance(value, list) and len(value) == 2 and all(type(n) is int for n in value):
        return (value[0], value[1])
    return None


def _claimed(conn: connections.Connection, entry: ledger.LedgerEntry | None) -> connections.Connection:
    """``conn``, told which mount is ours: the identity ``entry`` recorded (mount id, device, type,
    source), so a mount on the same point is ours only if it is that one (never by the path)."""
    if isinstance(conn, connections.MountConnection) and entry is not None:
        conn.owned = mounts.MountIdentity.from_dict(entry.resource.get("mount"))
    return conn


def _connection_for(entry: ledger.LedgerEntry, host: host_mod.Host) -> connections.Connection:
    """The connection a ledger entry records, told what it created (the mount point or link, and the
    mount), so only that is undone."""
    conn = _claimed(host.make_connection(entry.name, _entry_spec(entry).params, host.config), entry)
    connections.claim(conn, _recorded_id(entry))
    return conn


def _move_away(
    conn: ConnectionSpec, entry: ledger.LedgerEntry, host: host_mod.Host, *, dry_run: bool
) -> tuple[list[actions.Action], bool]:
    """The spec now names another target: undo the old one (if we made it). Returns (plan, changed)."""
    if entry.resource.get("preexisting"):
        return [], False
    users = host.ledger.users_of(KIND, conn.name)
    if users:
        raise errors.InUse(f"the connection moved but {_names(users)} still use(s) {_recorded_target(entry)}")
    old = _connection_for(entry, host)
    if dry_run:
        return list(old.plan_disconnect(old.observe())), False
    changed = bool(old.disconnect())
    log.info("%s/%s: moved away from %s", KIND, conn.name, _recorded_target(entry))
    return [], changed


def _names(entries: Sequence[ledger.LedgerEntry]) -> str:
    return ", ".join(f"{e.kind}/{e.name}" for e in entries)


def _forget_if_nothing_made(name: str, conn: connections.Connection, host: host_mod.Host) -> None:
    """A first connect failed and undid its work: drop the write-ahead entry so status shows nothing stale."""
    try:
        if conn.observe().connected:
            return
    except (errors.HostStorageError, OSError):
        return
    host.ledger.remove(KIND, name)


def reconcile(conn_spec: ConnectionSpec, host: host_mod.Host, *, dry_run: bool = False) -> status.NodeResult:
    """Make this host connected as ``conn_spec`` says; never raises for host failures."""
    name = conn_spec.name
    try:
        params = _credentials(conn_spec, host)
        conn = host.make_connection(name, params, host.config)  # validates: InvalidSpec, no host change
        target = conn.target()
    except errors.HostStorageError as exc:
        return RESULTS.error(name, exc)
    base_detail = {
        "type": conn_spec.type,
        _target_key(conn_spec.type): target,
        "source": _source_of(conn_spec),
    }

    owner = host.ledger.owner_of(target) if conn_spec.type != "iscsi" else None
    if owner is not None and owner.key != (KIND, name):
        why = f"{target} belongs to {owner.kind}/{owner.name}: two connections cannot share one mount point"
        return RESULTS.make(name, status.Phase.FAILED, errors.Conflict.reason, why, detail=base_detail)
    entry = host.ledger.get(KIND, name)
    plan: list[actions.Action] = []
    changed = False
    try:
        if entry is not None and _recorded_target(entry) not in (None, target):
            plan, changed = _move_away(conn_spec, entry, host, dry_run=dry_run)
            entry = None
        conn = _claimed(conn, entry)
        observed = conn.observe()
        plan += conn.plan_connect(observed)  # raises Conflict for a foreign mount on our target
    except errors.HostStorageError as exc:
        return RESULTS.error(name, exc, detail=base_detail, changed=changed)

    # A mount that was already there and is not in our ledger is someone else's: use it, never undo it.
    preexisting = observed.connected and (entry is None or bool(entry.resource.get("preexisting")))
    if dry_run:
        if observed.connected:
            detail = _detail(conn_spec.type, observed, preexisting=preexisting)
            return RESULTS.make(
                name, status.Phase.CONNECTED, "Connected", "connected", detail=detail, plan=plan
            )
        would = f"would connect {_source_of(conn_spec)}"
        return RESULTS.make(name, status.Phase.PENDING, "WouldConnect", would, detail=base_detail, plan=plan)

    recorded_id = _recorded_id(entry)
    connections.claim(conn, recorded_id)
    mount = observed.mount
    try:
        # Written ahead of the change; the identity of a mount already there is kept.
        ahead = _entry(conn_spec, target, preexisting=preexisting, target_id=recorded_id, mount=mount)
        host.ledger.put(ahead)
        if plan:
            changed = bool(conn.connect()) or changed
            made = connections.owned_id(conn)
            observed = conn.observe()  # verify: the host must now show it connected
            if changed:  # what was just made is ours by its ident and its mount identity from now on
                made = made if made is not None else recorded_id
                entry_now = _entry(
                    conn_spec, target, preexisting=preexisting, target_id=made, mount=observed.mount or mount
                )
                host.ledger.put(entry_now)
    except (errors.HostStorageError, OSError) as exc:
        if entry is None:
            _forget_if_nothing_made(name, conn, host)
        return RESULTS.error(name, exc, detail=base_detail, changed=changed, where=target)
    if not observed.connected:
        why = observed.conflict or "the host does not show it connected after connecting"
        return RESULTS.make(
            name, status.Phase.FAILED, "NotConnected", why, detail=base_detail, changed=changed, retry=True
        )
    message = _connected_message(conn_spec, observed, preexisting=preexisting)
    detail = _detail(conn_spec.type, observed, preexisting=preexisting)
    return RESULTS.make(name, status.Phase.CONNECTED, "Connected", message, detail=detail, changed=changed)


def _connected_message(
    conn_spec: ConnectionSpec, observed: connections.ConnectionObserved, *, preexisting: bool
) -> str:
    """The same message whether this pass connected or found it connected: the pass that acts and the
    resync after it write one status, not two (what is news is ``changed``, for logs and Events)."""
    if preexisting:
        return "connected before hoststorage came: it uses it but will never undo it"
    return f"connected {observed.source or _source_of(conn_spec)}"


# ---------------------------------------------------------------------------------------- teardown


def teardown(
    spec_or_entry: ConnectionSpec | ledger.LedgerEntry,
    host: host_mod.Host,
    *,
    force: bool = False,
    dry_run: bool = False,
) -> status.NodeResult:
    """Undo what hoststorage made for this connection on this host, as deletionPolicy says.

    ``force`` lazy-unmounts a busy mount (never one another object of ours still uses). ``dry_run``
    changes nothing (host or ledger): the result lists the planned actions with reason
    ``WouldDetach``, ``WouldRetain`` or ``WouldForget``."""

    def prepare(entry: ledger.LedgerEntry) -> status.Undo:
        target = _recorded_target(entry) or ""
        kind_name = str(entry.resource.get("type", ""))
        detail = {"type": kind_name, _target_key(kind_name): target}
        recorded = _entry_spec(entry)
        policy = (
            spec_or_entry.deletion_policy
            if isinstance(spec_or_entry, ConnectionSpec)
            else recorded.deletion_policy
        )
        conn = _connection_for(entry, host)

        def run() -> tuple[bool, str]:
            changed = bool(conn.disconnect(force=force))
            return True, f"disconnected {target}" if changed else f"{target} was already disconnected"

        return status.Undo(
            detail=detail,
            policy=policy,
            plan=lambda: list(conn.plan_disconnect(conn.observe(), force)),
            run=run,
            would=f"would disconnect {target}",
            retained=f"deletionPolicy Retain: {target} left in place and forgotten",
            keep_reason=(
                f"{target} was there before hoststorage: left in place and forgotten"
                if entry.resource.get("preexisting")
                else ""
            ),
        )

    return status.teardown(RESULTS, spec_or_entry.name, host.ledger, prepare, dry_run=dry_run, force=force)


# ------------------------------------------------------------------------------------ status, seams


def observe(entry: ledger.LedgerEntry, host: host_mod.Host) -> status.NodeResult:
    """What ``hoststorage status`` shows for one ledger entry: observed now, nothing changed."""
    try:
        recorded = _entry_spec(entry)
        conn = _claimed(host.make_connection(recorded.name, recorded.params, host.config), entry)
        observed = conn.observe()
    except errors.HostStorageError as exc:
        return RESULTS.error(entry.name, exc)
    if observed.connected:
        detail = _detail(recorded.type, observed, preexisting=bool(entry.resource.get("preexisting")))
        return RESULTS.make(entry.name, status.Phase.CONNECTED, "Connected", "connected", detail=detail)
    detail = {"type": recorded.type, _target_key(recorded.type): observed.target}
    if observed.conflict:
        return RESULTS.make(
            entry.name, status.Phase.FAILED, errors.Conflict.reason, observed.conflict, detail=detail
        )
    why = "not connected; the next apply restores it"
    return RESULTS.make(entry.name, status.Phase.PENDING, "NotConnected", why, detail=detail)


def resolve(host: host_mod.Host, name: str, sub_path: str | None = None) -> str | None:
    """The confined path of connection ``name`` on this host (plus ``sub_path``), or None if not connected.

    Pools and monitors call :func:`require`, which makes None a ``WaitingForConnection``. A ``sub_path``
    that escapes the
    mount (``..``, an absolute path, a symlink pointing out) raises InvalidSpec.
    """
    entry = host.ledger.get(KIND, name)
    if entry is None:
        return None
    try:
        recorded = _entry_spec(entry)
        conn = _claimed(host.make_connection(recorded.name, recorded.params, host.config), entry)
        observed = conn.observe()
    except errors.InvalidSpec:
        return None
    if not observed.connected:
        return None
    if recorded.type == "iscsi":
        if sub_path:
            raise errors.InvalidSpec(
                "an iscsi connection is a block device: it has no sub-paths", field="path"
            )
        return str(observed.target)
    root = str(observed.target)
    if recorded.type == "localfs":
        # A link in the mount base to a local directory: resolving it touches no remote storage.
        root = os.path.realpath(root)
        return paths.confine(root, sub_path, field="path") if sub_path else root
    # Never stat the mount point itself: on hung storage that blocks this thread in D state.
    root = os.path.join(os.path.realpath(os.path.dirname(root)), os.path.basename(root))
    if not sub_path:
        return root
    return paths.confine_on_storage(root, sub_path, runner=host.config.runner, field="path")


def require(host: host_mod.Host, name: str, sub_path: str | None = None) -> str:
    """:func:`resolve`, for a user of the connection: None is :class:`ConnectionLost` when the ledger
    entry records what connecting made (:func:`was_connected`), else :class:`WaitingForConnection`."""
    path = resolve(host, name, sub_path)
    if path is None:
        if was_connected(host.ledger.get(KIND, name)):
            raise ConnectionLost(f"StorageConnection {name} was connected on this node and is not now "
                                 "(its own status on this node says why)")
        raise WaitingForConnection(f"StorageConnection {name} is not connected on this node")
    return path


def was_connected(entry: ledger.LedgerEntry | None) -> bool:
    """Whether ``entry`` records a finished connect: the mount's identity, or the mount point or link
    hoststorage made (``targetId``). A write-ahead entry of a first connect records neither."""
    return entry is not None and (bool(entry.resource.get("mount")) or _recorded_id(entry) is not None)


if TYPE_CHECKING:  # mypy checks that this module is a Kind
    from reconcilers import storage_connection as _self  # noqa: PLW0406 - mypy checks this module against Kind

    _kind: kind.Kind[ConnectionSpec] = _self
