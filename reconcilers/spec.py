"""The spec-parsing toolkit every kind uses: the envelope, field validators, Secret references.

A manifest is untrusted input to a privileged agent. Each kind's ``parse`` is built from the functions
here so that the same input gets the same answer and the same message in every kind:

- :func:`envelope` checks ``apiVersion``, ``kind`` and ``metadata`` identically for every kind (all
  required, as the API server and ``kubectl apply`` require them) and returns :class:`Meta`;
- the validators (:func:`mapping`, :func:`fields`, :func:`string`, :func:`integer`, ...) raise
  :class:`hostlib.errors.InvalidSpec` with the dotted field and one message style
  (``spec.nfs.retrans: 21 is out of range 0..20``);
- :func:`node_selector` is :mod:`reconcilers.selector`'s parser with InvalidSpec;
- :class:`SecretRef`, :func:`secret_ref` and :func:`read_secret` are the one Secret policy: a Secret
  that is not there (yet) is :class:`SecretNotFound`, a :class:`hostlib.errors.Waiting` (Pending,
  retried), for every kind that references one;
- host-layer shapes come from their owners in hostlib: names and paths from :mod:`hostlib.paths`,
  iSCSI names from :mod:`hostlib.iscsi`.

Each limit here is mirrored by crds/*.yaml; tests/test_spec_agreement.py generates specs and asserts
the CRD admits exactly what the parsers accept.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hostlib import errors, iscsi, paths
from reconcilers import api, health_policy, selector

MAX_PATH = paths.MAX_PATH
MAX_UID = 128
MAX_NAMESPACE = 63
DELETION_POLICIES = ("Detach", "Retain")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")
_NAMESPACE_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
XML_SPECIAL = frozenset("<>&\"'")
"""Characters refused in every string that ends up in libvirt XML (the XML is built with ElementTree,
so this is defence in depth, and keeps names readable)."""


def invalid(field: str, message: str) -> errors.InvalidSpec:
    return errors.InvalidSpec(message, field=field)


def type_name(value: object) -> str:
    names = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "object"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


# ---------------------------------------------------------------------------------------- envelope


@dataclasses.dataclass(frozen=True)
class Meta:
    name: str
    uid: str = ""
    generation: int | None = None


def envelope(obj: object, kind: str) -> tuple[Meta, Mapping[str, Any]]:
    """Check ``apiVersion``, ``kind``, ``metadata`` (and that ``spec`` is an object) the same way for
    every kind; returns the metadata and the spec block. Unknown top-level fields are refused."""
    top = mapping(obj, "object")
    fields(top, "object", allowed=("apiVersion", "kind", "metadata", "spec", "status"))
    if top.get("apiVersion") != api.API_VERSION:
        raise invalid("apiVersion", f"{top.get('apiVersion')!r} is not {api.API_VERSION}")
    if top.get("kind") != kind:
        raise invalid("kind", f"{top.get('kind')!r} is not {kind}")
    meta = mapping(top.get("metadata"), "metadata")
    if "name" not in meta:
        raise invalid("metadata.name", "is required")
    name = paths.validate_name(meta["name"], field="metadata.name")
    uid = meta.get("uid") or ""
    if not isinstance(uid, str) or len(uid) > MAX_UID:
        raise invalid("metadata.uid", f"must be a string of at most {MAX_UID} characters")
    generation = meta.get("generation")
    if generation is not None and (isinstance(generation, bool) or not isinstance(generation, int)):
        raise invalid("metadata.generation", f"must be an integer, got {type_name(generation)}")
    if top.get("spec") is None:
        raise invalid("spec", "is required")
    return Meta(name, uid, generation), mapping(top["spec"], "spec")


def manifest(kind: str, name: str, uid: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    """A whole object around a recorded ``spec`` (to parse what a ledger entry recorded)."""
    return {"apiVersion": api.API_VERSION, "kind": kind, "metadata": {"name": name, "uid": uid}, "spec": spec}


# -------------------------------------------------------------------------------------- validators


def mapping(value: object, field: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise invalid(field, f"must be an object, got {type_name(value)}")
    for key in value:
        if not isinstance(key, str):
            raise invalid(field, f"keys must be strings, got {key!r}")
    return value


def fields(
    block: Mapping[str, Any], field: str, *, allowed: Sequence[str], required: Iterable[str] = ()
) -> None:
    """No field outside ``allowed``; every ``required`` one present (and not null)."""
    for key in block:
        if key not in allowed:
            raise invalid(f"{field}.{key}", f"unknown field (allowed: {', '.join(allowed)})")
    for key in required:
        if block.get(key) is None:
            raise invalid(f"{field}.{key}", "is required")


def exactly_one(block: Mapping[str, Any], field: str, choices: Sequence[str]) -> str:
    """The one key of ``choices`` that is set (not null) in ``block``."""
    given = [k for k in choices if block.get(k) is not None]
    if len(given) != 1:
        got = f" (got {', '.join(given)})" if given else ""
        raise invalid(field, f"exactly one of {', '.join(choices)} must be set{got}")
    return given[0]


def string(
    value: object,
    field: str,
    *,
    max_len: int,
    pattern: re.Pattern[str] | None = None,
    no_dash: bool = True,
    no_xml: bool = False,
) -> str:
    """A non-empty string of at most ``max_len`` characters with no NUL or control character; with
    ``no_dash`` (the default) it may not start with '-' (it would be read as a command option)."""
    if not isinstance(value, str):
        raise invalid(field, f"must be a string, got {type_name(value)}")
    if not value:
        raise invalid(field, "must not be empty")
    if len(value) > max_len:
        raise invalid(field, f"is {len(value)} characters long, the limit is {max_len}")
    if _CONTROL_RE.search(value):
        raise invalid(field, "contains a NUL or control character (newline, tab, ...)")
    if no_dash and value.startswith("-"):
        raise invalid(field, f"{value!r} starts with '-' (it would be read as a command option)")
    if no_xml and XML_SPECIAL.intersection(value):
        raise invalid(field, f"{value!r} contains <, >, &, or a quote")
    if pattern is not None and not pattern.match(value):
        raise invalid(field, f"{value!r} does not match {pattern.pattern}")
    return value


def integer(value: object, field: str, *, low: int, high: int) -> int:
    """A whole number in ``low..high``; YAML's ``10.0`` counts as 10 (the API server stores it so)."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise invalid(field, f"must be an integer, got {type_name(value)}")
    if not low <= value <= high:
        raise invalid(field, f"{value} is out of range {low}..{high}")
    return value


def number(value: object, field: str, *, low: float, high: float, low_open: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise invalid(field, f"must be a number, got {type_name(value)}")
    v = float(value)
    if math.isnan(v) or v > high or v < low or (low_open and v == low):
        raise invalid(field, f"{value} is out of range {'(' if low_open else '['}{low:g}, {high:g}]")
    return v


def boolean(value: object, field: str, *, default: bool) -> bool:
    if value is None:
        return default
    if not isinstance(value, bool):
        raise invalid(field, f"must be true or false, got {type_name(value)}")
    return value


def choice(value: object, field: str, allowed: Sequence[str], *, default: str | None = None) -> str:
    """One of ``allowed``; ``default`` when absent (None = required)."""
    if value is None and default is not None:
        return default
    if not isinstance(value, str) or value not in allowed:
        raise invalid(field, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def string_list(value: object, field: str, *, max_items: int, item: Any) -> tuple[Any, ...]:
    """A list of at most ``max_items``, each checked by ``item(value, field_of_item)``."""
    if not isinstance(value, list):
        raise invalid(field, f"must be a list, got {type_name(value)}")
    if len(value) > max_items:
        raise invalid(field, f"has {len(value)} items, the limit is {max_items}")
    return tuple(item(v, f"{field}[{i}]") for i, v in enumerate(value))


def deletion_policy(spec: Mapping[str, Any]) -> str:
    return choice(spec.get("deletionPolicy"), "spec.deletionPolicy", DELETION_POLICIES, default="Detach")


# ------------------------------------------------------------------------ host-layer shapes (hostlib)


def name(value: object, field: str) -> str:
    """An object name (DNS-1123 subdomain), as :func:`hostlib.paths.validate_name` says."""
    return paths.validate_name(value, field=field)


def host(value: object, field: str, *, bare_ipv6: bool = True) -> str:
    """A DNS name or IP address; IPv6 bare (``fd00::5``) or bracketed, returned bracketed."""
    string(value, field, max_len=paths.MAX_HOSTNAME + 2)
    return paths.validate_hostname(value, field=field, allow_bare_ipv6=bare_ipv6)


def abs_path(value: object, field: str, *, no_xml: bool = False) -> str:
    string(value, field, max_len=MAX_PATH, no_xml=no_xml)
    return paths.validate_abs_path(value, field=field, max_len=MAX_PATH)


def relative_path(value: object, field: str, *, no_xml: bool = False) -> str:
    """A relative path under some root, normalised; '' and '.' mean the root itself."""
    string(value, field, max_len=MAX_PATH, no_dash=False, no_xml=no_xml)
    rel = paths.validate_relative_path(value, field=field, max_len=MAX_PATH)
    return "" if rel == "." else rel


def iscsi_name(value: object, field: str) -> str:
    """An RFC 3720 iSCSI name (iqn., eui., naa.; upper case accepted), as :mod:`hostlib.iscsi` says."""
    string(value, field, max_len=iscsi.MAX_NAME)
    return iscsi.check_name(value, field=field)


def health(raw_spec: Mapping[str, Any]) -> health_policy.Policy:
    """The shared health policy (``failureGraceSeconds``, ``nodeSignals``) of
    :mod:`reconcilers.health_policy`, with InvalidSpec. The agent only checks it: the cluster controller
    acts on it."""
    try:
        return health_policy.parse(raw_spec)
    except health_policy.PolicyError as exc:
        raise invalid(exc.field, exc.message) from None


def node_selector(value: object, field: str = "spec.nodeSelector") -> selector.NodeSelector:
    try:
        return selector.parse(value, field)
    except selector.SelectorError as exc:
        raise invalid(exc.field, exc.message) from None


# ----------------------------------------------------------------------------------------- Secrets


@dataclasses.dataclass(frozen=True)
class SecretRef:
    """A reference to a Secret; an empty namespace means the reader's own (the agent's; local mode:
    ``default``)."""

    name: str
    namespace: str = ""

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}" if self.namespace else self.name


class SecretNotFound(errors.Waiting):
    """The referenced Secret is not there (yet): the object waits (Pending) and is retried."""

    reason = "SecretNotFound"


def secret_ref(value: object, field: str) -> SecretRef:
    raw = mapping(value, field)
    fields(raw, field, allowed=("name", "namespace"), required=("name",))
    namespace = ""
    if raw.get("namespace") is not None:
        namespace = string(
            raw["namespace"], f"{field}.namespace", max_len=MAX_NAMESPACE, pattern=_NAMESPACE_RE
        )
    return SecretRef(name(raw["name"], f"{field}.name"), namespace)


# Secret keys for CHAP: ours, then the names of the Kubernetes in-tree iSCSI volume.
CHAP_KEYS = (("username", "password"), ("node.session.auth.username", "node.session.auth.password"))


def read_secret(lookup: Any, ref: SecretRef, field: str) -> Mapping[str, str]:
    """The decoded data of ``ref`` through ``lookup`` (``Host.secret_lookup``); SecretNotFound when the
    Secret is not there or no Secrets are served here."""
    if lookup is None:
        raise SecretNotFound(f"{field}: no Secrets are available here to read Secret {ref}")
    try:
        data: Mapping[str, str] = lookup(ref.namespace, ref.name)
    except KeyError:
        raise SecretNotFound(f"{field}: Secret {ref} not found") from None
    return data


def chap(lookup: Any, ref: SecretRef, field: str) -> tuple[str, str]:
    """(username, password) from the Secret ``ref`` (keys of :data:`CHAP_KEYS`); never logged."""
    data = read_secret(lookup, ref, field)
    for user_key, password_key in CHAP_KEYS:
        user, password = data.get(user_key), data.get(password_key)
        if user and password:
            string(user, f"{field} (Secret {ref} key {user_key})", max_len=255, no_xml=True)
            return user, password
    raise invalid(field, f"Secret {ref} has no non-empty username and password keys")
