"""Objects of a simulated fleet, shaped exactly as the agents and the API server make them.

Shared by ``bench/rollup_scale.py`` (in-process) and ``bench/fleet.py`` (through the emulator): Nodes
with a Ready condition, StorageConnections selecting every node, and StorageNodeStates built with the
agent's own code (``controller.naming.node_state_body`` for name, labels, owner reference and parentRef;
``controller.rollup.merge_conditions`` and ``controller.node_states.bounded`` for the status, as
``controller.node_states.NodeStateWriter.write`` does). ``served`` adds what an API server adds to
every object it returns (uid, resourceVersion, generation, creationTimestamp, managedFields), so the
memory measured per object is what a controller would really hold.
"""

from __future__ import annotations

import datetime
import itertools
import uuid
from typing import Any

from controller import naming, node_states, registry, rollup

KIND = "StorageConnection"
NOW = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
_rv = itertools.count(1000)


def next_rv() -> str:
    return str(next(_rv))


def node_name(i: int) -> str:
    return f"node-{i:05d}"


def parent_name(j: int) -> str:
    return f"conn-{j:02d}"


def node(i: int, *, ready: bool = True, since: datetime.datetime = NOW, uid: str = "") -> dict[str, Any]:
    name = node_name(i)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "uid": uid or str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
            "resourceVersion": next_rv(),
            "labels": {"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "fleet": "yes"},
        },
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                    "lastTransitionTime": rollup.format_time(since),
                },
            ]
        },
    }


def parent(j: int, *, generation: int = 1, uid: str = "") -> dict[str, Any]:
    name = parent_name(j)
    return {
        "apiVersion": registry.API_VERSION,
        "kind": KIND,
        "metadata": {
            "name": name,
            "uid": uid or str(uuid.uuid5(uuid.NAMESPACE_URL, name)),
            "generation": generation,
            "resourceVersion": next_rv(),
            "finalizers": [naming.FINALIZER],
        },
        "spec": {
            "type": "nfs",
            "nodeSelector": {"matchLabels": {"fleet": "yes"}},
            "nfs": {"server": "nfs.example.com", "export": f"/exports/{name}", "version": "4.2"},
        },
    }


def uid_of(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["uid"])


def status_block(j: int, *, ready: bool = True, generation: int = 1) -> dict[str, Any]:
    """The status an agent writes for parent ``j`` (Connected, or Failed with a mount error)."""
    if ready:
        phase, reason, message = "Connected", "Connected", "connected"
    else:
        phase, reason, message = "Failed", "MountFailed", "mount.nfs: Connection timed out"
    cond = {"type": "Ready", "status": "True" if ready else "False", "reason": reason, "message": message}
    return {
        "phase": phase,
        "observedGeneration": generation,
        "connection": {
            "type": "nfs",
            "mountPoint": f"/var/lib/hoststorage/mnt/nfs.example.com:_exports_{parent_name(j)}",
            "source": f"nfs.example.com:/exports/{parent_name(j)}",
            "fstype": "nfs4",
        },
        "conditions": rollup.merge_conditions([], [node_states.bounded(cond)], NOW),
    }


def node_state(i: int, j: int, *, parent_uid: str, node_uid: str, ready: bool = True) -> dict[str, Any]:
    """The body an agent creates (naming.node_state_body), with its status, as the API server returns it."""
    body = naming.node_state_body(
        kind=KIND, parent_name=parent_name(j), parent_uid=parent_uid, node=node_name(i), node_uid=node_uid
    )
    body["status"] = status_block(j, ready=ready)
    return served(body)


def served(body: dict[str, Any]) -> dict[str, Any]:
    """``body`` with what an API server adds: uid, resourceVersion, generation, timestamps, managedFields."""
    meta = body["metadata"]
    meta.setdefault("uid", str(uuid.uuid4()))
    meta["resourceVersion"] = next_rv()
    meta.setdefault("generation", 1)
    meta.setdefault("creationTimestamp", "2026-01-01T00:00:00Z")
    meta["managedFields"] = [
        {
            "manager": "hoststorage-agent",
            "operation": "Update",
            "apiVersion": registry.API_VERSION,
            "time": "2026-01-01T00:00:00Z",
            "fieldsType": "FieldsV1",
            "fieldsV1": {
                "f:metadata": {
                    "f:labels": {
                        ".": {},
                        "f:hoststorage.io/kind": {},
                        "f:hoststorage.io/node": {},
                        "f:hoststorage.io/parent": {},
                    },
                    "f:ownerReferences": {".": {}, 'k:{"uid":"x"}': {}},
                },
                "f:spec": {
                    ".": {},
                    "f:nodeName": {},
                    "f:parentRef": {".": {}, "f:apiVersion": {}, "f:kind": {}, "f:name": {}, "f:uid": {}},
                },
            },
        },
        {
            "manager": "hoststorage-agent",
            "operation": "Update",
            "apiVersion": registry.API_VERSION,
            "time": "2026-01-01T00:00:00Z",
            "fieldsType": "FieldsV1",
            "subresource": "status",
            "fieldsV1": {
                "f:status": {
                    ".": {},
                    "f:conditions": {},
                    "f:connection": {
                        ".": {},
                        "f:fstype": {},
                        "f:mountPoint": {},
                        "f:source": {},
                        "f:type": {},
                    },
                    "f:observedGeneration": {},
                    "f:phase": {},
                }
            },
        },
    ]
    return body


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k]
