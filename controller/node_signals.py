"""Scheduling signals on Nodes (issue 11 part 2): what labels and taints a parent wants, as pure functions.

The controller is the single writer of these (agents never write Nodes, DESIGN.md "Components"). For a
parent that opts in (``spec.nodeSignals``, :mod:`reconcilers.health_policy`):

- **label** ``<short>.hoststorage.io/<name>=true`` (:func:`label_key`; a name that cannot be a label name
  segment is hashed, and the parent's ``status.nodeLabel`` says which key) on every selected Node where
  the parent is Ready; a labelled node that stops being Ready keeps it for ``failureGraceSeconds`` (from
  its Ready condition's lastTransitionTime), then loses it; an unselected node or a deleted parent
  loses it at once.
- **taint** ``hoststorage.io/storage-problem=<short>.<name>:<effect>`` on the Nodes the parent's
  diagnosis calls a ``NodeProblem`` (never a ``StorageProblem``). Kubernetes allows one taint per key
  and effect, so parents with the same effect share it: its value names the first of them by value.
  **Breaker**: at most ``floor(selected x maxTaintedPercent / 100)`` of the parent's selected nodes;
  when more nodes have the problem, no new taint is added (nodes that already carry the parent's taint
  keep it, up to the limit, first by name) and the parent's ``TaintsHeld`` condition says so. The choice
  is deterministic: it depends only on the state, never on timing.

Writes happen on transitions only: :func:`node_patch` is None when a Node already is as wanted, and one
merge patch per Node otherwise (labels key by key; taints, a list, replaced whole with the Node's
resourceVersion as a precondition, so a concurrent change is a 409 to read again and retry).
"""

from __future__ import annotations

import dataclasses
import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from controller import naming, registry, rollup
from reconcilers import health_policy

TAINT_KEY = rollup.PROBLEM_TAINT
LABEL_VALUE = "true"
TAINTS_HELD = "TaintsHeld"


def label_key(kind: str, name: str) -> str:
    """The Node label of ``kind``/``name``: ``<short>.hoststorage.io/<name>`` (the name hashed when it is
    not a label name segment, :func:`controller.naming.label_value`)."""
    return f"{registry.BY_KIND[kind].short}.{registry.GROUP}/{naming.label_value(name)}"


def taint_value(kind: str, name: str) -> str:
    """The value of the taint that names ``kind``/``name`` (a label value: hashed when too long)."""
    return naming.label_value(f"{registry.BY_KIND[kind].short}.{name}")


@dataclasses.dataclass(frozen=True)
class Plan:
    """What one parent wants on the Nodes."""

    labelled: frozenset[str] = frozenset()
    tainted: frozenset[str] = frozenset()
    held: tuple[str, ...] = ()
    """Nodes with a node problem left untainted by the breaker, by name."""
    limit: int = 0
    """The breaker's limit: how many nodes may carry the taint."""
    next_check: datetime.datetime | None = None
    """When a labelled node that is not Ready passes its grace (the label goes then)."""


def plan(
    kind: str,
    name: str,
    policy: health_policy.Policy,
    counts: rollup.Tally,
    *,
    diagnosis: rollup.Diagnosis,
    nodes: Mapping[str, rollup.NodeInfo],
    now: datetime.datetime,
    deleting: bool = False,
) -> Plan:
    """The :class:`Plan` of one parent (see the module docstring). O(selected nodes) with labels on."""
    if deleting:
        return Plan()
    grace = datetime.timedelta(seconds=policy.grace_seconds)
    labelled: set[str] = set()
    due: datetime.datetime | None = None
    if policy.label:
        key = label_key(kind, name)
        for node in counts.selected:
            v = counts.verdicts.get(node)
            if v is not None and v.ready:
                labelled.add(node)
                continue
            info = nodes.get(node)
            if info is None or info.labels.get(key) != LABEL_VALUE or v is None or v.since is None:
                continue
            if now - v.since < grace:
                labelled.add(node)  # not Ready, still within its grace: keep the label a while
                if due is None or v.since + grace < due:
                    due = v.since + grace
    if policy.taint is None or diagnosis.problem != rollup.NODE_PROBLEM:
        return Plan(frozenset(labelled), next_check=due)
    limit = policy.taint.limit(len(counts.selected))
    candidates = sorted(n for n in diagnosis.nodes if n in counts.selected)
    if len(candidates) <= limit:
        return Plan(frozenset(labelled), frozenset(candidates), (), limit, due)
    mine = (policy.taint.effect, taint_value(kind, name))
    already = [n for n in candidates if (info := nodes.get(n)) is not None and mine in info.taints]
    kept = already[:limit]
    held = tuple(n for n in candidates if n not in kept)
    return Plan(frozenset(labelled), frozenset(kept), held, limit, due)


def status_fields(
    kind: str, name: str, policy: health_policy.Policy, old_status: Mapping[str, Any] | None
) -> dict[str, Any]:
    """``status.nodeLabel`` while labels are on (null once to remove it when they go off)."""
    if policy.label:
        return {"nodeLabel": label_key(kind, name)}
    return {"nodeLabel": None} if (old_status or {}).get("nodeLabel") else {}


def held_condition(plan_: Plan, selected: int, policy: health_policy.Policy) -> dict[str, str]:
    """The parent's ``TaintsHeld`` condition (True while the breaker holds taints back)."""
    if not plan_.held or policy.taint is None:
        return {"type": TAINTS_HELD, "status": "False", "reason": "WithinLimit", "message": ""}
    cap = rollup.MAX_FAILING_NODES
    shown = ", ".join(plan_.held[:cap])
    more = f" and {len(plan_.held) - cap} more" if len(plan_.held) > cap else ""
    return {
        "type": TAINTS_HELD, "status": "True", "reason": "BreakerOpen",
        "message": (f"{len(plan_.held) + len(plan_.tainted)} nodes have a node problem; at most "
                    f"{plan_.limit} ({policy.taint.max_tainted_percent}% of {selected} selected) may be "
                    f"tainted; not tainted: {shown}{more}"),
    }


def node_taints(
    wanted: Iterable[tuple[str, str]],
) -> frozenset[tuple[str, str]]:
    """The (effect, value) taints of ours a Node should carry, from every (effect, value) a parent wants
    there: one per effect (Kubernetes: unique by key and effect), the first value by order."""
    by_effect: dict[str, str] = {}
    for effect, value in wanted:
        if effect not in by_effect or value < by_effect[effect]:
            by_effect[effect] = value
    return frozenset(by_effect.items())


def node_patch(
    node: rollup.NodeInfo, labels: Mapping[str, bool], taints: frozenset[tuple[str, str]] | None
) -> dict[str, Any] | None:
    """The one merge patch that makes ``node`` carry ``labels`` (key: wanted) and, unless None, exactly
    ``taints`` of ours (others' taints kept); None when it already does."""
    current = node.labels
    label_patch: dict[str, str | None] = {}
    for key, want in labels.items():
        if want and current.get(key) != LABEL_VALUE:
            label_patch[key] = LABEL_VALUE
        elif not want and key in current:
            label_patch[key] = None
    patch: dict[str, Any] = {}
    if label_patch:
        patch["metadata"] = {"labels": label_patch}
    if taints is not None and node.taints != taints:
        others = [dict(t) for t in node.taint_list if t.get("key") != TAINT_KEY]
        ours = [{"key": TAINT_KEY, "value": v, "effect": e} for e, v in sorted(taints)]
        patch.setdefault("metadata", {})["resourceVersion"] = node.resource_version
        patch["spec"] = {"taints": others + ours}
    return patch or None
