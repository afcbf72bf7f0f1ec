"""Pure roll-up of per-node StorageNodeStates into a parent's status, and the finalizer decision.

The cluster controller is the one writer of parent status (DESIGN.md "Status model"). Everything here is
a function of plain dicts (the parent, its children, the nodes) and a clock value, so the rules are
tested table-driven without an API server; ``controller.cluster`` only fetches, calls and writes.

Parent status fields (agreed with ``crds/storageconnection.yaml``): ``observedGeneration``,
``selected``, ``ready``, ``failed``, ``readyNodes`` (text such as ``"3/3"`` for the READY printer
column), ``failingNodes`` (the first few ``{node, reason, message}``) and ``conditions`` (``Ready``,
``Progressing``, ``Degraded``, each with a reason and message).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controller import registry
from reconcilers import selector

MAX_FAILING_NODES = 5
DETACHED_PHASES = frozenset({registry.DETACHED})


@dataclasses.dataclass(frozen=True)
class Phases:
    """Which node phases of a kind mean Ready and which mean failed (its registry row's)."""

    ready: frozenset[str]
    failed: frozenset[str]


def phases_of(row: registry.Row) -> Phases:
    return Phases(row.ready_phases, row.failed_phases)


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """What the roll-up needs of a Node: labels, readiness and since when."""

    name: str
    labels: Mapping[str, str]
    ready: bool = True
    ready_since: datetime.datetime | None = None
    """lastTransitionTime of the node's Ready condition (when it last changed)."""

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> NodeInfo:
        meta = node.get("metadata") or {}
        ready, since = True, None
        for cond in (node.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready":
                ready = cond.get("status") == "True"
                since = parse_time(cond.get("lastTransitionTime"))
        return cls(name=meta.get("name", ""), labels=dict(meta.get("labels") or {}), ready=ready,
                   ready_since=since)


def parse_time(text: Any) -> datetime.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)


def format_time(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(children_status: Mapping[str, Any], ctype: str) -> Mapping[str, Any] | None:
    for cond in children_status.get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == ctype:
            return cond
    return None


def child_ready(status: Mapping[str, Any], phases: Phases) -> bool:
    cond = _condition(status, "Ready")
    if cond is not None:
        return cond.get("status") == "True"
    return status.get("phase") in phases.ready


def child_reason(status: Mapping[str, Any]) -> tuple[str, str]:
    cond = _condition(status, "Ready")
    if cond is not None and cond.get("status") != "True":
        return str(cond.get("reason") or status.get("phase") or "Unknown"), str(cond.get("message") or "")
    return str(status.get("phase") or "Unknown"), ""


def children_of(parent: Mapping[str, Any], children: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The children that report on this very parent (same kind, name and uid)."""
    meta = parent.get("metadata") or {}
    out = []
    for child in children:
        ref = (child.get("spec") or {}).get("parentRef") or {}
        if (ref.get("kind") == parent.get("kind") and ref.get("name") == meta.get("name")
                and ref.get("uid") == meta.get("uid")):
            out.append(child)
    return out


def selected_nodes(parent: Mapping[str, Any], nodes: Iterable[NodeInfo]) -> list[str]:
    """Names of the nodes the parent's nodeSelector matches (a malformed selector matches none)."""
    try:
        chosen = selector.parse((parent.get("spec") or {}).get("nodeSelector"))
    except selector.SelectorError:
        return []
    return sorted(node.name for node in nodes if chosen.matches(node.labels))


def node_gone(name: str, nodes: Mapping[str, NodeInfo], now: datetime.datetime,
              grace: datetime.timedelta) -> bool:
    """A node is gone when it is deleted, or NotReady for longer than ``grace``."""
    node = nodes.get(name)
    if node is None:
        return True
    if node.ready:
        return False
    return node.ready_since is None or now - node.ready_since >= grace


def rollup(
    parent: Mapping[str, Any],
    children: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, NodeInfo],
    *,
    old_status: Mapping[str, Any] | None = None,
    now: datetime.datetime,
    phases: Phases,
) -> dict[str, Any]:
    """The parent's new status from its children (already filtered by :func:`children_of`); ``phases``
    are the kind's (:func:`phases_of` its registry row)."""
    meta = parent.get("metadata") or {}
    generation = meta.get("generation")
    deleting = bool(meta.get("deletionTimestamp"))
    selected = selected_nodes(parent, nodes.values())
    by_node = {(c.get("spec") or {}).get("nodeName"): c for c in children}

    ready: list[str] = []
    failed: list[tuple[str, str, str]] = []
    pending: list[str] = []
    stale: list[str] = []
    for node in selected:
        child = by_node.get(node)
        child_status = (child or {}).get("status") or {}
        if not child_status:
            pending.append(node)
            continue
        if generation is not None and child_status.get("observedGeneration") != generation:
            stale.append(node)
        reason, message = child_reason(child_status)
        if child_ready(child_status, phases):
            ready.append(node)
        elif child_status.get("phase") in phases.failed or reason == "InvalidSpec":
            failed.append((node, reason, message))
        else:
            pending.append(node)

    total = len(selected)
    conditions: list[dict[str, str]] = []
    failing = [{"node": n, "reason": r, "message": m} for n, r, m in failed[:MAX_FAILING_NODES]]
    if deleting:
        detached = [n for n, c in by_node.items()
                    if ((c.get("status") or {}).get("phase") in DETACHED_PHASES)]
        conditions.append(_cond("Ready", False, "Deleting", "waiting for nodes to tear down"))
        conditions.append(_cond("Progressing", True, "TearingDown",
                                f"{len(detached)}/{len(by_node)} nodes detached"))
    elif total == 0:
        conditions.append(_cond("Ready", True, "NoNodesSelected", "the nodeSelector matches no node"))
        conditions.append(_cond("Progressing", False, "NoNodesSelected", ""))
    elif len(ready) == total and not stale:
        conditions.append(_cond("Ready", True, "AllNodesReady", f"{total}/{total} nodes ready"))
        conditions.append(_cond("Progressing", False, "Reconciled", f"generation {generation} on every node"))
    else:
        waiting = sorted(set(pending) | set(stale))
        reason = "NodesFailed" if failed else "WaitingForNodes"
        conditions.append(_cond("Ready", False, reason, f"{len(ready)}/{total} nodes ready"))
        conditions.append(_cond("Progressing", bool(waiting), "Reconciling" if waiting else "Reconciled",
                                _node_list("waiting for", waiting) if waiting else ""))
    if failed and not deleting:
        top = Counter(r for _, r, _ in failed).most_common(1)[0][0]
        msg = "; ".join(f"{n}: {r}: {m}" if m else f"{n}: {r}" for n, r, m in failed[:MAX_FAILING_NODES])
        conditions.append(_cond("Degraded", True, top, msg[:1024]))
    else:
        conditions.append(_cond("Degraded", False, "NoFailures", ""))

    status: dict[str, Any] = {
        "selected": total,
        "ready": len(ready),
        "failed": len(failed),
        "readyNodes": f"{len(ready)}/{total}",
        "failingNodes": failing,
        "conditions": merge_conditions((old_status or {}).get("conditions") or [], conditions, now),
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def _node_list(prefix: str, names: Sequence[str]) -> str:
    shown = ", ".join(names[:MAX_FAILING_NODES])
    more = f" and {len(names) - MAX_FAILING_NODES} more" if len(names) > MAX_FAILING_NODES else ""
    return f"{prefix} {shown}{more}"


def _cond(ctype: str, status: bool, reason: str, message: str) -> dict[str, str]:
    return {"type": ctype, "status": "True" if status else "False", "reason": reason, "message": message}


def merge_conditions(
    old: Sequence[Mapping[str, Any]], new: Sequence[Mapping[str, str]], now: datetime.datetime
) -> list[dict[str, str]]:
    """``new`` with ``lastTransitionTime`` kept from ``old`` while a condition's status is unchanged."""
    old_by_type = {c.get("type"): c for c in old if isinstance(c, Mapping)}
    out = []
    for cond in new:
        prev = old_by_type.get(cond["type"])
        merged = dict(cond)
        if prev is not None and prev.get("status") == cond["status"] and prev.get("lastTransitionTime"):
            merged["lastTransitionTime"] = str(prev["lastTransitionTime"])
        else:
            merged["lastTransitionTime"] = format_time(now)
        out.append(merged)
    return out


def finalizer_decision(
    children: Sequence[Mapping[str, Any]],
    nodes: Mapping[str, NodeInfo],
    *,
    now: datetime.datetime,
    grace: datetime.timedelta,
) -> tuple[bool, list[str]]:
    """Whether the teardown finalizer may go, and which nodes were skipped because they are gone.

    Every child must be Detached, or its node gone (deleted, or NotReady for ``grace``). Selected nodes
    whose agent never wrote a child are not waited for: the agent tears down from its ledger when it
    sees the parent gone.
    """
    skipped: list[str] = []
    for child in children:
        node = (child.get("spec") or {}).get("nodeName") or ""
        if ((child.get("status") or {}).get("phase")) in DETACHED_PHASES:
            continue
        if node_gone(node, nodes, now, grace):
            skipped.append(node)
            continue
        return False, []
    return True, sorted(skipped)


def status_changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    """Whether writing ``new`` would change anything (keys of ``new`` only; others are not ours)."""
    old = old or {}
    return any(old.get(key) != value for key, value in new.items())
