"""Names, labels and node-selector matching for StorageNodeStates.

One StorageNodeState per (parent, node) is the whole status model (DESIGN.md "Status model"), so its
name must be derivable from the parent's kind and name and the node's name alone: every agent and the
controller compute it the same way without a lookup. Kubernetes object names are DNS subdomains
(at most 253 characters) and label values at most 63 characters, so long inputs are shortened with a
stable hash suffix rather than truncated (two long names sharing a prefix must not collide).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from typing import Any

GROUP = "hoststorage.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

LABEL_NODE = f"{GROUP}/node"
LABEL_KIND = f"{GROUP}/kind"
LABEL_PARENT = f"{GROUP}/parent"
FINALIZER = f"{GROUP}/teardown"

MAX_NAME = 253
MAX_LABEL_VALUE = 63
_HASH_LEN = 10

KIND_PREFIX: Mapping[str, str] = {
    "StorageConnection": "sconn",
    "StoragePool": "spool",
    "DomainMonitor": "dmon",
}
PLURALS: Mapping[str, str] = {
    "StorageConnection": "storageconnections",
    "StoragePool": "storagepools",
    "DomainMonitor": "domainmonitors",
    "StorageNodeState": "storagenodestates",
}

_INVALID = re.compile(r"[^a-z0-9.-]+")
_LABEL_INVALID = re.compile(r"[^A-Za-z0-9._-]+")


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_LEN]


def _shorten(text: str, limit: int, *, seed: str) -> str:
    if len(text) <= limit:
        return text
    head = text[: limit - _HASH_LEN - 1].rstrip(".-")
    return f"{head}-{_digest(seed)}"


def node_state_name(kind: str, parent: str, node: str) -> str:
    """The StorageNodeState name of ``parent`` (of ``kind``) on ``node``: ``<prefix>-<parent>-<node>``.

    Hashed when the plain form would exceed a DNS subdomain; the hash covers all three inputs, so the
    name stays unique even when two long parents differ only past the cut.
    """
    prefix = KIND_PREFIX.get(kind, kind.lower())
    plain = _INVALID.sub("-", f"{prefix}-{parent}-{node}".lower()).strip(".-")
    return _shorten(plain, MAX_NAME, seed=f"{kind}\0{parent}\0{node}")


def label_value(text: str) -> str:
    """A label value for ``text`` (a parent or node name): itself when it fits, else hashed."""
    clean = _LABEL_INVALID.sub("-", text).strip("._-")
    if clean != text or len(clean) > MAX_LABEL_VALUE:
        head = clean[: MAX_LABEL_VALUE - _HASH_LEN - 1].strip("._-")
        return f"{head}-{_digest(text)}" if head else _digest(text)
    return clean


def node_state_labels(kind: str, parent: str, node: str) -> dict[str, str]:
    return {LABEL_NODE: label_value(node), LABEL_KIND: kind, LABEL_PARENT: label_value(parent)}


def node_state_body(
    *, kind: str, parent_name: str, parent_uid: str, node: str, node_uid: str
) -> dict[str, Any]:
    """The full StorageNodeState object (without status) that an agent creates."""
    return {
        "apiVersion": API_VERSION,
        "kind": "StorageNodeState",
        "metadata": {
            "name": node_state_name(kind, parent_name, node),
            "labels": node_state_labels(kind, parent_name, node),
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node, "uid": node_uid},
            ],
        },
        "spec": {
            "nodeName": node,
            "parentRef": {"apiVersion": API_VERSION, "kind": kind, "name": parent_name, "uid": parent_uid},
        },
    }


class SelectorError(ValueError):
    """The LabelSelector is malformed (unknown operator, values where none are allowed, ...)."""


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """Whether a standard ``metav1.LabelSelector`` matches ``labels``.

    An empty or missing selector matches everything (DESIGN.md: empty = all nodes). Requirements are
    ANDed. Raises :class:`SelectorError` for a malformed selector so the caller reports InvalidSpec
    instead of silently matching nothing.
    """
    if not selector:
        return True
    match_labels = selector.get("matchLabels") or {}
    if not isinstance(match_labels, Mapping):
        raise SelectorError("matchLabels must be a map")
    for key, value in match_labels.items():
        if labels.get(key) != value:
            return False
    expressions = selector.get("matchExpressions") or []
    if not isinstance(expressions, Sequence):
        raise SelectorError("matchExpressions must be a list")
    return all(_expression_matches(expr, labels) for expr in expressions)


def _expression_matches(expr: Any, labels: Mapping[str, str]) -> bool:
    if not isinstance(expr, Mapping) or not isinstance(expr.get("key"), str):
        raise SelectorError("a matchExpression needs a key")
    key, op = expr["key"], expr.get("operator")
    values = expr.get("values") or []
    if op in ("In", "NotIn"):
        if not values:
            raise SelectorError(f"operator {op} needs values (key {key})")
        present = key in labels and labels[key] in values
        return bool(present) if op == "In" else not present
    if op in ("Exists", "DoesNotExist"):
        if values:
            raise SelectorError(f"operator {op} takes no values (key {key})")
        return bool((key in labels) == (op == "Exists"))
    raise SelectorError(f"unknown operator {op!r} (key {key})")
