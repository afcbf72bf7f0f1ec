"""Names and labels of StorageNodeStates.

One StorageNodeState per (parent, node) is the whole status model (DESIGN.md "Status model"), so its
name must be derivable from the parent's kind and name and the node's name alone: every agent and the
controller compute it the same way without a lookup. Kubernetes object names are DNS subdomains
(at most 253 characters) and label values at most 63 characters, so long inputs are shortened with a
stable hash suffix rather than truncated (two long names sharing a prefix must not collide).
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from controller import registry

GROUP = registry.GROUP
VERSION = registry.VERSION
API_VERSION = registry.API_VERSION

LABEL_NODE = f"{GROUP}/node"
LABEL_KIND = f"{GROUP}/kind"
LABEL_PARENT = f"{GROUP}/parent"
FINALIZER = f"{GROUP}/teardown"

MAX_NAME = 253
MAX_LABEL_VALUE = 63
_HASH_LEN = 10

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
    prefix = registry.BY_KIND[kind].short if kind in registry.BY_KIND else kind.lower()
    plain = _INVALID.sub("-", f"{prefix}-{parent}-{node}".lower()).strip(".-")
    return _shorten(plain, MAX_NAME, seed=f"{kind}\0{parent}\0{node}")


def label_value(text: str) -> str:
    """A label value for ``text`` (a parent or node name): itself when it fits, else hashed."""
    clean = _LABEL_INVALID.sub("-", text).strip("._-")
    if clean != text or len(clean) > MAX_LABEL_VALUE:
        head = clean[: MAX_LABEL_VALUE - _HASH_LEN - 1].strip("._-")
        return f"{head}-{_digest(text)}" if head else _digest(text)
    return clean


def node_selector(node: str) -> str:
    """The label selector of every StorageNodeState of ``node`` (an agent lists and watches only these)."""
    return f"{LABEL_NODE}={label_value(node)}"


def node_state_labels(kind: str, parent: str, node: str) -> dict[str, str]:
    return {LABEL_NODE: label_value(node), LABEL_KIND: kind, LABEL_PARENT: label_value(parent)}


def node_state_body(
    *, kind: str, parent_name: str, parent_uid: str, node: str, node_uid: str
) -> dict[str, Any]:
    """The full StorageNodeState object (without status) that an agent creates."""
    return {
        "apiVersion": API_VERSION,
        "kind": registry.NODE_STATE,
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
