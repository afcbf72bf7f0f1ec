"""StorageConnection: from a manifest and the observed host to a connected (or detached) node.

Three steps, each with one boundary:

- :func:`parse` turns an untrusted manifest into a frozen :class:`ConnectionSpec`. It checks structure
  only — types, required and unknown fields, exactly one parameter block matching ``spec.type``,
  lengths, absolute paths, no NUL/control characters, no value starting with ``-`` — and raises
  :class:`hostlib.errors.InvalidSpec` naming the field. No I/O. The semantic checks that depend on the
  host (mount-option allow-lists, allowed host paths, mount-point confinement) are
  :func:`hostlib.connections.validate`, run first thing in :func:`reconcile`.
- :func:`reconcile` validates, observes, plans and (unless ``dry_run``) acts through a
  ``hostlib.connections.Connection`` made by ``host.make_connection``, re-observes and reports a
  :class:`reconcilers.status.NodeResult`. Host failures never raise: they become a Failed (permanent)
  or Pending (temporary, ``retry=True``) result with the error's reason.
- :func:`teardown` honours ``deletionPolicy`` and the ledger: it only undoes what hoststorage made
  (a mount found already in place is recorded as ``preexisting`` and never unmounted), and refuses with
  ``InUse`` while a pool or monitor lists the connection as a dependency or the mount is busy.

Ownership is written ahead: the ledger entry is recorded *before* connecting, so a crash between the
mount and the write never leaves a mount that later runs would treat as foreign.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

from hostlib import actions, connections, errors, ledger, mounts, paths
from reconcilers import host as host_mod
from reconcilers import status

log = logging.getLogger(__name__)

KIND = "StorageConnection"
DETAIL_KEY = "connection"
ORDER = 0
API_VERSION = "hoststorage.io/v1alpha1"

TYPES = ("nfs", "posixfs", "glusterfs", "iscsi", "localfs")
DELETION_POLICIES = ("Detach", "Retain")
NFS_VERSIONS = ("3", "4", "4.1", "4.2", "auto")

# Limits shared with crds/storageconnection.yaml (keep both in step).
MAX_OPTIONS = 32
MAX_OPTION_LEN = 256
MAX_BACKUP_SERVERS = 16
MAX_PATH = 1024
MAX_HOST = 255
MAX_IQN = 223
MAX_LABELS = 64
MAX_EXPRESSIONS = 32
MAX_VALUES = 64

_VFS_RE = re.compile(r"^[a-z0-9][a-z0-9._]*$")
_VOLUME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
_IQN_RE = re.compile(
    r"^(iqn\.[0-9]{4}-[0-9]{2}\.[A-Za-z0-9.-]+(:[A-Za-z0-9._:-]+)?|eui\.[0-9A-Fa-f]{16}|naa\.[0-9A-Fa-f]{16,32})$"
)
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_LABEL_KEY_RE = re.compile(r"^([a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?$")
_OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")

# Phases and condition reasons this module reports.
PENDING, CONNECTED, FAILED, DETACHING, DETACHED = "Pending", "Connected", "Failed", "Detaching", "Detached"


@dataclasses.dataclass(frozen=True)
class SecretRef:
    name: str
    namespace: str = ""


@dataclasses.dataclass(frozen=True)
class LabelRequirement:
    key: str
    operator: str
    values: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class NodeSelector:
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[LabelRequirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Standard LabelSelector semantics; the empty selector matches every node."""
        for key, value in self.match_labels:
            if labels.get(key) != value:
                return False
        for req in self.match_expressions:
            present = req.key in labels
            if req.operator == "In" and (not present or labels[req.key] not in req.values):
                return False
            if req.operator == "NotIn" and present and labels[req.key] in req.values:
                return False
            if req.operator == "Exists" and not present:
                return False
            if req.operator == "DoesNotExist" and present:
                return False
        return True


@dataclasses.dataclass(frozen=True)
class ConnectionSpec:
    name: str
    type: str
    params: connections.Params
    """The hostlib.connections params dataclass of ``type`` (NfsParams, PosixfsParams, ...)."""
    uid: str = ""
    generation: int | None = None
    node_selector: NodeSelector = NodeSelector()
    deletion_policy: str = "Detach"
    chap_secret_ref: SecretRef | None = None
    """iscsi only: where the CHAP credentials are; they are read at reconcile time, never stored."""
    raw_spec: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    """The validated ``spec`` as given, recorded in the ledger so status/teardown can rebuild it."""


# ------------------------------------------------------------------------------------------- parse


def _invalid(field: str, message: str) -> errors.InvalidSpec:
    return errors.InvalidSpec(message, field=field)


def _mapping(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _invalid(field, f"must be an object, got {_type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise _invalid(field, f"keys must be strings, got {key!r}")
    return value


def _type_name(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _no_unknown(block: Mapping[str, Any], allowed: Sequence[str], field: str) -> None:
    for key in block:
        if key not in allowed:
            raise _invalid(f"{field}.{key}", f"unknown field (allowed: {', '.join(allowed)})")


def _string(value: object, field: str, *, max_len: int, pattern: re.Pattern[str] | None = None) -> str:
    if not isinstance(value, str):
        raise _invalid(field, f"must be a string, got {_type_name(value)}")
    if not value:
        raise _invalid(field, "must not be empty")
    if len(value) > max_len:
        raise _invalid(field, f"is {len(value)} characters long, the limit is {max_len}")
    if "\0" in value:
        raise _invalid(field, "contains a NUL byte")
    if _CONTROL_RE.search(value):
        raise _invalid(field, "contains a control character (newline, tab, ...)")
    if value.startswith("-"):
        raise _invalid(field, f"{value!r} starts with '-' (it would be read as a command option)")
    if pattern is not None and not pattern.match(value):
        raise _invalid(field, f"{value!r} does not match {pattern.pattern}")
    return value


def _integer(value: object, field: str, *, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _invalid(field, f"must be an integer, got {_type_name(value)}")
    if not low <= value <= high:
        raise _invalid(field, f"{value} is out of range {low}..{high}")
    return value


def _string_list(value: object, field: str, *, max_items: int, max_len: int) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise _invalid(field, f"must be a list of strings, got {_type_name(value)}")
    if len(value) > max_items:
        raise _invalid(field, f"has {len(value)} items, the limit is {max_items}")
    return tuple(_string(v, f"{field}[{i}]", max_len=max_len) for i, v in enumerate(value))


def _options(block: Mapping[str, Any], field: str) -> tuple[str, ...]:
    if "options" not in block or block["options"] is None:
        return ()
    opts = _string_list(block["options"], f"{field}.options", max_items=MAX_OPTIONS, max_len=MAX_OPTION_LEN)
    for i, opt in enumerate(opts):
        if "," in opt:
            raise _invalid(f"{field}.options[{i}]", f"{opt!r} contains a comma: give one option per item")
        if any(c.isspace() for c in opt):
            raise _invalid(f"{field}.options[{i}]", f"{opt!r} contains whitespace")
    return opts


def _host(value: object, field: str) -> str:
    _string(value, field, max_len=MAX_HOST)
    return paths.validate_hostname(value, field=field)


def _abs_path(value: object, field: str) -> str:
    _string(value, field, max_len=MAX_PATH)
    return paths.validate_abs_path(value, field=field, max_len=MAX_PATH)


def _parse_nfs(block: Mapping[str, Any], field: str) -> dict[str, Any]:
    _no_unknown(block, ("server", "export", "version", "timeo", "retrans", "options"), field)
    for req in ("server", "export"):
        if req not in block:
            raise _invalid(f"{field}.{req}", "is required")
    out: dict[str, Any] = {
        "server": _host(block["server"], f"{field}.server"),
        "export": _abs_path(block["export"], f"{field}.export"),
        "options": _options(block, field),
    }
    if block.get("version") is not None:
        version = block["version"]
        if isinstance(version, int | float) and not isinstance(version, bool):
            version = str(version)  # YAML reads `version: 4.1` as a number
        if version not in NFS_VERSIONS:
            raise _invalid(f"{field}.version", f"{version!r} is not one of {', '.join(NFS_VERSIONS)}")
        out["version"] = version
    if block.get("timeo") is not None:
        out["timeo"] = _integer(block["timeo"], f"{field}.timeo", low=1, high=6000)
    if block.get("retrans") is not None:
        out["retrans"] = _integer(block["retrans"], f"{field}.retrans", low=0, high=20)
    return out


def _parse_posixfs(block: Mapping[str, Any], field: str) -> dict[str, Any]:
    _no_unknown(block, ("source", "vfsType", "options"), field)
    for req in ("source", "vfsType"):
        if req not in block:
            raise _invalid(f"{field}.{req}", "is required")
    source = _string(block["source"], f"{field}.source", max_len=MAX_PATH)
    if any(c.isspace() for c in source) or "," in source:
        raise _invalid(f"{field}.source", f"{source!r} contains whitespace or a comma")
    if source.startswith("//"):
        # A CIFS share (//server/share): not a host path, so no normalisation; the same '..' rule.
        if ".." in source.split("/"):
            raise _invalid(f"{field}.source", f"{source!r} contains a '..' component")
    elif source.startswith("/"):
        source = paths.validate_abs_path(source, field=f"{field}.source")
    elif ":/" in source:
        host, path = mounts.split_remote(source, field=f"{field}.source")
        paths.split_host_port(host, default_port=1, field=f"{field}.source")
        if ".." in path.split("/"):
            raise _invalid(f"{field}.source", f"{source!r} contains a '..' component")
    else:
        raise _invalid(f"{field}.source", f"{source!r} is neither an absolute device path nor server:/path")
    vfs = _string(block["vfsType"], f"{field}.vfsType", max_len=32, pattern=_VFS_RE)
    return {"source": source, "vfs_type": vfs, "options": _options(block, field)}


def _parse_glusterfs(block: Mapping[str, Any], field: str) -> dict[str, Any]:
    _no_unknown(block, ("server", "volume", "backupServers", "options"), field)
    for req in ("server", "volume"):
        if req not in block:
            raise _invalid(f"{field}.{req}", "is required")
    backups: tuple[str, ...] = ()
    if block.get("backupServers") is not None:
        raw = block["backupServers"]
        if not isinstance(raw, list):
            raise _invalid(f"{field}.backupServers", f"must be a list of strings, got {_type_name(raw)}")
        if len(raw) > MAX_BACKUP_SERVERS:
            raise _invalid(
                f"{field}.backupServers", f"has {len(raw)} items, the limit is {MAX_BACKUP_SERVERS}"
            )
        backups = tuple(_host(v, f"{field}.backupServers[{i}]") for i, v in enumerate(raw))
    return {
        "server": _host(block["server"], f"{field}.server"),
        "volume": _string(block["volume"], f"{field}.volume", max_len=128, pattern=_VOLUME_RE),
        "backup_servers": backups,
        "options": _options(block, field),
    }


def _parse_iscsi(block: Mapping[str, Any], field: str) -> tuple[dict[str, Any], SecretRef | None]:
    _no_unknown(block, ("portal", "target", "lun", "initiatorName", "chapSecretRef"), field)
    for req in ("portal", "target"):
        if req not in block:
            raise _invalid(f"{field}.{req}", "is required")
    portal = _string(block["portal"], f"{field}.portal", max_len=MAX_HOST + 7)
    host, port = paths.split_host_port(portal, default_port=3260, field=f"{field}.portal")
    out: dict[str, Any] = {
        "portal": f"{host}:{port}",
        "target": _string(block["target"], f"{field}.target", max_len=MAX_IQN, pattern=_IQN_RE),
        "lun": None,
        "initiator_name": None,
    }
    if block.get("lun") is not None:
        out["lun"] = _integer(block["lun"], f"{field}.lun", low=0, high=16383)
    if block.get("initiatorName") is not None:
        out["initiator_name"] = _string(
            block["initiatorName"], f"{field}.initiatorName", max_len=MAX_IQN, pattern=_IQN_RE
        )
    ref: SecretRef | None = None
    if block.get("chapSecretRef") is not None:
        rfield = f"{field}.chapSecretRef"
        raw = _mapping(block["chapSecretRef"], rfield)
        _no_unknown(raw, ("name", "namespace"), rfield)
        if "name" not in raw:
            raise _invalid(f"{rfield}.name", "is required")
        name = paths.validate_name(
            _string(raw["name"], f"{rfield}.name", max_len=253), field=f"{rfield}.name"
        )
        namespace = ""
        if raw.get("namespace") is not None:
            namespace = _string(raw["namespace"], f"{rfield}.namespace", max_len=63, pattern=_NAMESPACE_RE)
        ref = SecretRef(name, namespace)
    return out, ref


def _parse_localfs(block: Mapping[str, Any], field: str) -> dict[str, Any]:
    _no_unknown(block, ("path",), field)
    if "path" not in block:
        raise _invalid(f"{field}.path", "is required")
    return {"path": _abs_path(block["path"], f"{field}.path")}


def parse_node_selector(value: object, field: str = "spec.nodeSelector") -> NodeSelector:
    """A ``metav1.LabelSelector`` checked in full (keys, values, operators, limits); every kind uses this,
    so a selector the agent could not evaluate is an ``InvalidSpec`` naming the field, never "all nodes"."""
    if value is None:
        return NodeSelector()
    sel = _mapping(value, field)
    _no_unknown(sel, ("matchLabels", "matchExpressions"), field)
    labels: list[tuple[str, str]] = []
    if sel.get("matchLabels") is not None:
        raw = _mapping(sel["matchLabels"], f"{field}.matchLabels")
        if len(raw) > MAX_LABELS:
            raise _invalid(f"{field}.matchLabels", f"has {len(raw)} labels, the limit is {MAX_LABELS}")
        for key, val in raw.items():
            kfield = f"{field}.matchLabels[{key!r}]"
            if len(key) > 317 or not _LABEL_KEY_RE.match(key):
                raise _invalid(kfield, f"{key!r} is not a valid label key")
            if not isinstance(val, str) or len(val) > 63 or not _LABEL_VALUE_RE.match(val):
                raise _invalid(kfield, f"{val!r} is not a valid label value")
            labels.append((key, val))
    exprs: list[LabelRequirement] = []
    if sel.get("matchExpressions") is not None:
        raw_list = sel["matchExpressions"]
        efield = f"{field}.matchExpressions"
        if not isinstance(raw_list, list):
            raise _invalid(efield, f"must be a list, got {_type_name(raw_list)}")
        if len(raw_list) > MAX_EXPRESSIONS:
            raise _invalid(efield, f"has {len(raw_list)} items, the limit is {MAX_EXPRESSIONS}")
        for i, item in enumerate(raw_list):
            ifield = f"{efield}[{i}]"
            expr = _mapping(item, ifield)
            _no_unknown(expr, ("key", "operator", "values"), ifield)
            expr_key = expr.get("key")
            if not isinstance(expr_key, str) or len(expr_key) > 317 or not _LABEL_KEY_RE.match(expr_key):
                raise _invalid(f"{ifield}.key", f"{expr_key!r} is not a valid label key")
            op = expr.get("operator")
            if op not in _OPERATORS:
                raise _invalid(f"{ifield}.operator", f"{op!r} is not one of {', '.join(_OPERATORS)}")
            values: tuple[str, ...] = ()
            if expr.get("values") is not None:
                values = _string_list(expr["values"], f"{ifield}.values", max_items=MAX_VALUES, max_len=63)
            if op in ("In", "NotIn") and not values:
                raise _invalid(f"{ifield}.values", f"must not be empty for operator {op}")
            if op in ("Exists", "DoesNotExist") and values:
                raise _invalid(f"{ifield}.values", f"must be empty for operator {op}")
            exprs.append(LabelRequirement(expr_key, str(op), values))
    return NodeSelector(tuple(labels), tuple(exprs))


def _make_params(conn_type: str, fields: Mapping[str, Any]) -> connections.Params:
    """The hostlib params dataclass for ``conn_type`` from parsed fields (snake_case names)."""
    cls: type[Any] = {
        "nfs": connections.NfsParams,
        "posixfs": connections.PosixfsParams,
        "glusterfs": connections.GlusterfsParams,
        "iscsi": connections.IscsiParams,
        "localfs": connections.LocalfsParams,
    }[conn_type]
    known = {f.name for f in dataclasses.fields(cls)}
    params: connections.Params = cls(**{k: v for k, v in fields.items() if k in known})
    return params


def parse(obj: Mapping[str, Any]) -> ConnectionSpec:
    """A StorageConnection manifest -> ConnectionSpec; InvalidSpec(field=...) on any structural problem."""
    top = _mapping(obj, "object")
    _no_unknown(top, ("apiVersion", "kind", "metadata", "spec", "status"), "object")
    if top.get("apiVersion") != API_VERSION:
        raise _invalid("apiVersion", f"{top.get('apiVersion')!r} is not {API_VERSION}")
    if top.get("kind") != KIND:
        raise _invalid("kind", f"{top.get('kind')!r} is not {KIND}")
    meta = _mapping(top.get("metadata"), "metadata")
    if "name" not in meta:
        raise _invalid("metadata.name", "is required")
    name = paths.validate_name(meta["name"], field="metadata.name")
    uid = meta.get("uid") or ""
    if not isinstance(uid, str) or len(uid) > 128:
        raise _invalid("metadata.uid", "must be a string of at most 128 characters")
    generation = meta.get("generation")
    if generation is not None and (isinstance(generation, bool) or not isinstance(generation, int)):
        raise _invalid("metadata.generation", f"must be an integer, got {_type_name(generation)}")

    if "spec" not in top:
        raise _invalid("spec", "is required")
    spec = _mapping(top["spec"], "spec")
    _no_unknown(spec, ("type", "nodeSelector", "deletionPolicy", *TYPES), "spec")
    conn_type = spec.get("type")
    if conn_type is None:
        raise _invalid("spec.type", f"is required (one of {', '.join(TYPES)})")
    if conn_type not in TYPES:
        raise _invalid("spec.type", f"{conn_type!r} is not one of {', '.join(TYPES)}")
    policy = spec.get("deletionPolicy", "Detach")
    if policy is None:
        policy = "Detach"
    if policy not in DELETION_POLICIES:
        raise _invalid("spec.deletionPolicy", f"{policy!r} is not one of {', '.join(DELETION_POLICIES)}")
    extra = [t for t in TYPES if t != conn_type and spec.get(t) is not None]
    if extra:
        raise _invalid(
            f"spec.{extra[0]}",
            f"type is {conn_type}: only spec.{conn_type} may be set, remove spec.{extra[0]}",
        )
    if spec.get(conn_type) is None:
        raise _invalid(f"spec.{conn_type}", f"is required when type is {conn_type}")
    field = f"spec.{conn_type}"
    block = _mapping(spec[conn_type], field)
    ref: SecretRef | None = None
    if conn_type == "nfs":
        fields = _parse_nfs(block, field)
    elif conn_type == "posixfs":
        fields = _parse_posixfs(block, field)
    elif conn_type == "glusterfs":
        fields = _parse_glusterfs(block, field)
    elif conn_type == "iscsi":
        fields, ref = _parse_iscsi(block, field)
    else:
        fields = _parse_localfs(block, field)
    selector = parse_node_selector(spec.get("nodeSelector"))
    raw_spec = {"type": conn_type, "deletionPolicy": policy, conn_type: dict(block)}
    if spec.get("nodeSelector") is not None:
        raw_spec["nodeSelector"] = spec["nodeSelector"]
    return ConnectionSpec(
        name=name,
        type=str(conn_type),
        params=_make_params(str(conn_type), fields),
        uid=uid,
        generation=generation,
        node_selector=selector,
        deletion_policy=str(policy),
        chap_secret_ref=ref,
        raw_spec=raw_spec,
    )


# --------------------------------------------------------------------------------------- reconcile

# Secret keys for CHAP: ours, then the Kubernetes in-tree iSCSI volume's names.
_CHAP_KEYS = (("username", "password"), ("node.session.auth.username", "node.session.auth.password"))


class _SecretMissing(errors.HostStorageError):
    """The referenced Secret is not there (yet): wait for it, nothing on the host changed."""

    reason = "SecretNotFound"


def _credentials(spec: ConnectionSpec, host: host_mod.Host) -> connections.Params:
    """The params to connect with: for iscsi with chapSecretRef, the CHAP credentials filled in."""
    ref = spec.chap_secret_ref
    if ref is None:
        return spec.params
    where = f"{ref.namespace + '/' if ref.namespace else ''}{ref.name}"
    if host.secret_lookup is None:
        raise _SecretMissing(f"chapSecretRef {where}: no Secrets are available here")
    try:
        data = host.secret_lookup(ref.namespace, ref.name)
    except KeyError:
        raise _SecretMissing(f"chapSecretRef: Secret {where} not found") from None
    for user_key, password_key in _CHAP_KEYS:
        if user_key in data and password_key in data:
            chap = connections.ChapCredentials(data[user_key], data[password_key])
            if isinstance(spec.params, connections.IscsiParams):
                return dataclasses.replace(spec.params, chap=chap)
    raise errors.InvalidSpec(
        f"Secret {where} has no username and password keys", field="spec.iscsi.chapSecretRef"
    )


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


def _source_of(spec: ConnectionSpec) -> str:
    p = spec.params
    if isinstance(p, connections.NfsParams):
        return f"{p.server}:{p.export}"
    if isinstance(p, connections.PosixfsParams):
        return p.source
    if isinstance(p, connections.GlusterfsParams):
        return f"{p.server}:/{p.volume}"
    if isinstance(p, connections.IscsiParams):
        return f"{p.target} at {p.portal}"
    return p.path


def _result(
    name: str,
    phase: str,
    reason: str,
    message: str,
    *,
    detail: Mapping[str, Any] | None = None,
    plan: Sequence[actions.Action] = (),
    changed: bool = False,
    retry: bool = False,
) -> status.NodeResult:
    ready = phase == CONNECTED
    cond = status.Condition(
        "Ready", status.ConditionStatus.TRUE if ready else status.ConditionStatus.FALSE, reason, message
    )
    return status.NodeResult(
        kind=KIND,
        name=name,
        phase=phase,
        ready=ready,
        reason=reason,
        message=message,
        detail_key=DETAIL_KEY,
        detail=dict(detail or {}),
        conditions=(cond,),
        actions=tuple(plan),
        changed=changed,
        retry=retry,
    )


def _error_result(
    name: str, exc: errors.HostStorageError, *, detail: Mapping[str, Any] | None = None, changed: bool = False
) -> status.NodeResult:
    phase = PENDING if isinstance(exc, _SecretMissing) else FAILED
    return _result(name, phase, exc.reason, exc.message, detail=detail, changed=changed, retry=exc.temporary)


def _entry_spec(entry: ledger.LedgerEntry) -> ConnectionSpec:
    """The spec a ledger entry was recorded from (InvalidSpec if the entry is not one of ours)."""
    raw = entry.resource.get("spec")
    if not isinstance(raw, Mapping):
        raise errors.InvalidSpec(f"ledger entry {entry.kind}/{entry.name} records no spec")
    return parse(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": entry.name, "uid": entry.uid},
            "spec": raw,
        }
    )


def _target_key(conn_type: str) -> str:
    return "devicePath" if conn_type == "iscsi" else "mountPoint"


def _recorded_target(entry: ledger.LedgerEntry) -> str | None:
    for key in ("mountPoint", "devicePath"):
        value = entry.resource.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _entry(spec: ConnectionSpec, target: str, *, preexisting: bool) -> ledger.LedgerEntry:
    resource: dict[str, Any] = {
        "type": spec.type,
        _target_key(spec.type): target,
        "spec": dict(spec.raw_spec),
        "preexisting": preexisting,
    }
    return ledger.LedgerEntry(KIND, spec.name, spec.uid, resource)


def _move_away(
    spec: ConnectionSpec, entry: ledger.LedgerEntry, host: host_mod.Host, *, dry_run: bool
) -> tuple[list[actions.Action], bool]:
    """The spec now names another target: undo the old one (if we made it). Returns (plan, changed)."""
    if entry.resource.get("preexisting"):
        return [], False
    users = host.ledger.users_of(KIND, spec.name)
    if users:
        raise errors.InUse(f"the connection moved but {_names(users)} still use(s) {_recorded_target(entry)}")
    old = host.make_connection(spec.name, _entry_spec(entry).params, host.config)
    if dry_run:
        return list(old.plan_disconnect(old.observe())), False
    changed = bool(old.disconnect())
    log.info("%s/%s: moved away from %s", KIND, spec.name, _recorded_target(entry))
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


def reconcile(spec: ConnectionSpec, host: host_mod.Host, *, dry_run: bool = False) -> status.NodeResult:
    """Make this host connected as ``spec`` says; never raises for host failures."""
    try:
        params = _credentials(spec, host)
        conn = host.make_connection(spec.name, params, host.config)  # validates: InvalidSpec, no host change
        target = conn.target()
    except errors.HostStorageError as exc:
        return _error_result(spec.name, exc)
    base_detail = {"type": spec.type, _target_key(spec.type): target, "source": _source_of(spec)}

    owner = host.ledger.owner_of(target) if spec.type != "iscsi" else None
    if owner is not None and owner.key != (KIND, spec.name):
        return _result(
            spec.name,
            FAILED,
            "Conflict",
            f"{target} belongs to {owner.kind}/{owner.name}: two connections cannot share one mount point",
            detail=base_detail,
        )
    entry = host.ledger.get(KIND, spec.name)
    plan: list[actions.Action] = []
    changed = False
    try:
        if entry is not None and _recorded_target(entry) not in (None, target):
            plan, changed = _move_away(spec, entry, host, dry_run=dry_run)
            entry = None
        observed = conn.observe()
        plan += conn.plan_connect(observed)  # raises Conflict for a foreign mount on our target
    except errors.HostStorageError as exc:
        return _error_result(spec.name, exc, detail=base_detail, changed=changed)

    # A mount that was already there and is not in our ledger is someone else's: use it, never undo it.
    preexisting = observed.connected and (entry is None or bool(entry.resource.get("preexisting")))
    if dry_run:
        if observed.connected:
            return _result(
                spec.name,
                CONNECTED,
                "Connected",
                "connected",
                detail=_detail(spec.type, observed, preexisting=preexisting),
                plan=plan,
            )
        return _result(
            spec.name,
            PENDING,
            "WouldConnect",
            f"would connect {_source_of(spec)}",
            detail=base_detail,
            plan=plan,
        )

    try:
        host.ledger.put(_entry(spec, target, preexisting=preexisting))  # written ahead of the change
        if plan:
            changed = bool(conn.connect()) or changed
            observed = conn.observe()  # verify: the host must now show it connected
    except errors.HostStorageError as exc:
        if entry is None:
            _forget_if_nothing_made(spec.name, conn, host)
        return _error_result(spec.name, exc, detail=base_detail, changed=changed)
    except OSError as exc:
        if entry is None:
            _forget_if_nothing_made(spec.name, conn, host)
        return _result(
            spec.name,
            FAILED,
            "HostError",
            f"{target}: {exc.strerror or exc}",
            detail=base_detail,
            changed=changed,
        )
    if not observed.connected:
        why = observed.conflict or "the host does not show it connected after connecting"
        return _result(
            spec.name, FAILED, "NotConnected", why, detail=base_detail, changed=changed, retry=True
        )
    if changed:
        message = f"connected {observed.source or _source_of(spec)}"
    elif preexisting:
        message = "connected before hoststorage came: it uses it but will never undo it"
    else:
        message = "connected"
    return _result(
        spec.name,
        CONNECTED,
        "Connected",
        message,
        detail=_detail(spec.type, observed, preexisting=preexisting),
        changed=changed,
    )


# ---------------------------------------------------------------------------------------- teardown


def teardown(
    spec_or_entry: ConnectionSpec | ledger.LedgerEntry,
    host: host_mod.Host,
    *,
    force: bool = False,
    dry_run: bool = False,
) -> status.NodeResult:
    """Undo what hoststorage made for this connection on this host, as deletionPolicy says.

    ``dry_run`` changes nothing (host or ledger): the result lists the planned actions with reason
    ``WouldDetach``, ``WouldRetain`` or ``WouldForget``."""
    name = spec_or_entry.name
    entry = host.ledger.get(KIND, name)
    if entry is None:
        return _result(name, DETACHED, "NotOwned", "not in the ledger: nothing hoststorage made to undo")
    target = _recorded_target(entry) or ""
    detail = {"type": entry.resource.get("type", ""), _target_key(str(entry.resource.get("type"))): target}
    users = host.ledger.users_of(KIND, name)
    if users:
        return _result(
            name,
            DETACHING,
            "InUse",
            f"still used by {_names(users)}; tear those down first",
            detail=detail,
            retry=True,
        )
    try:
        recorded = _entry_spec(entry)
    except errors.InvalidSpec as exc:
        return _error_result(name, exc, detail=detail)
    policy = (
        spec_or_entry.deletion_policy
        if isinstance(spec_or_entry, ConnectionSpec)
        else recorded.deletion_policy
    )
    forget = actions.Action("forget", f"remove {KIND}/{name} from the ledger")
    if policy == "Retain" or entry.resource.get("preexisting"):
        why = (
            "deletionPolicy Retain: {} left in place and forgotten"
            if policy == "Retain"
            else "{} was there before hoststorage: left in place and forgotten"
        )
        if dry_run:
            reason = "WouldRetain" if policy == "Retain" else "WouldForget"
            message = "dry run: " + why.format(target).replace("left in place and", "would stay,")
            return _result(name, DETACHING, reason, message, detail=detail, plan=[forget])
        host.ledger.remove(KIND, name)
        reason = "Retained" if policy == "Retain" else "NotOwned"
        return _result(name, DETACHED, reason, why.format(target), detail=detail, changed=True)
    try:
        conn = host.make_connection(name, recorded.params, host.config)
        if dry_run:
            plan = [*conn.plan_disconnect(conn.observe(), force), forget]
            message = f"dry run: would disconnect {target}"
            return _result(name, DETACHING, "WouldDetach", message, detail=detail, plan=plan)
        changed = bool(conn.disconnect(force=force))
    except errors.InUse as exc:
        return _result(name, DETACHING, "InUse", exc.message, detail=detail, retry=True)
    except errors.HostStorageError as exc:
        return _error_result(name, exc, detail=detail)
    except OSError as exc:
        return _result(
            name, FAILED, "HostError", f"{target}: {exc.strerror or exc}", detail=detail, retry=True
        )
    host.ledger.remove(KIND, name)
    message = f"disconnected {target}" if changed else f"{target} was already disconnected"
    return _result(name, DETACHED, "Detached", message, detail=detail, changed=True)


# ------------------------------------------------------------------------------------ status, seams


def observe(entry: ledger.LedgerEntry, host: host_mod.Host) -> status.NodeResult:
    """What ``hoststorage status`` shows for one ledger entry: observed now, nothing changed."""
    try:
        spec = _entry_spec(entry)
        conn = host.make_connection(spec.name, spec.params, host.config)
        observed = conn.observe()
    except errors.HostStorageError as exc:
        return _error_result(entry.name, exc)
    preexisting = bool(entry.resource.get("preexisting"))
    if observed.connected:
        return _result(
            entry.name,
            CONNECTED,
            "Connected",
            "connected",
            detail=_detail(spec.type, observed, preexisting=preexisting),
        )
    why = observed.conflict or "not connected; the next apply restores it"
    return _result(
        entry.name,
        PENDING,
        "NotConnected",
        why,
        detail={"type": spec.type, _target_key(spec.type): observed.target},
    )


def resolve(host: host_mod.Host, name: str, sub_path: str | None = None) -> str | None:
    """The confined path of connection ``name`` on this host (plus ``sub_path``), or None if not connected.

    For pools and monitors: None means "wait" (``WaitingForConnection``). A ``sub_path`` that escapes the
    mount (``..``, an absolute path, a symlink pointing out) raises InvalidSpec.
    """
    entry = host.ledger.get(KIND, name)
    if entry is None:
        return None
    try:
        spec = _entry_spec(entry)
        conn = host.make_connection(spec.name, spec.params, host.config)
        observed = conn.observe()
    except errors.InvalidSpec:
        return None
    if not observed.connected:
        return None
    if spec.type == "iscsi":
        if sub_path:
            raise errors.InvalidSpec(
                "an iscsi connection is a block device: it has no sub-paths", field="path"
            )
        return str(observed.target)
    root = str(observed.target)
    if spec.type == "localfs":
        # A link in the mount base to a local directory: resolving it touches no remote storage.
        root = os.path.realpath(root)
        return paths.confine(root, sub_path, field="path") if sub_path else root
    # Never stat the mount point itself: on hung storage that blocks this thread in D state.
    root = os.path.join(os.path.realpath(os.path.dirname(root)), os.path.basename(root))
    if not sub_path:
        return root
    return paths.confine_on_storage(root, sub_path, runner=host.config.runner, field="path")
