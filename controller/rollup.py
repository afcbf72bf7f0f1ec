"""Pure roll-up of per-node StorageNodeStates into a parent's status, and the finalizer decision.

The cluster controller is the one writer of parent status (DESIGN.md "Status model"). Everything here is
a function of plain dicts (the parent, its children, the nodes) and a clock value, so the rules are
tested table-driven without an API server; ``controller.cluster`` only fetches, calls and writes.

Parent status fields (agreed with ``crds/storageconnection.yaml``): ``observedGeneration``,
``selected``, ``ready``, ``failed``, ``readyNodes`` (text such as ``"3/3"`` for the READY printer
column), ``failingNodes`` (the first few ``{node, reason, message}``), ``diagnosis`` (see below) and
``conditions`` (``Ready``, ``Progressing``, ``Degraded``, each with a reason and message).

Diagnosis (the oVirt engine's rule, issue 11): a selected node's failure counts once it has lasted the
parent's ``spec.failureGraceSeconds`` (:mod:`reconcilers.health_policy`), measured from the
``lastTransitionTime`` of that node's Ready condition, which its agent keeps while the condition stays
False (so the time survives a controller restart and is per node; the cost is that agent and controller
clocks must agree, as NTP keeps them). Among the failures that count: if some selected node is Ready it is
a ``NodeProblem`` of the failing nodes, if none is (every reporting node fails) a ``StorageProblem``.
Nodes that report neither Ready nor failed (pending, unknown) do not take part, nor do failures
with reason InvalidSpec (the spec's problem) or without a date. A failure still within its
grace keeps the nodes' own reasons and gives :attr:`Diagnosis.next_check`, when the caller must look again
even if nothing else happens.
"""

from __future__ import annotations

import dataclasses
import datetime
import heapq
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from controller import registry
from reconcilers import health_policy, selector

MAX_FAILING_NODES = 5
INVALID_SPEC = "InvalidSpec"
PROBLEM_TAINT = f"{registry.GROUP}/storage-problem"
"""The taint key of controller.node_signals (NodeInfo reads it)."""
NODE_PROBLEM = "NodeProblem"
STORAGE_PROBLEM = "StorageProblem"
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
    taints: frozenset[tuple[str, str]] = frozenset()
    """(effect, value) of the node's ``hoststorage.io/storage-problem`` taints (controller.node_signals)."""
    taint_list: tuple[Mapping[str, Any], ...] = dataclasses.field(default=(), compare=False)
    """Every taint of the node, as listed (a taint patch replaces the list whole)."""
    resource_version: str = dataclasses.field(default="", compare=False)

    @classmethod
    def from_node(cls, node: Mapping[str, Any]) -> NodeInfo:
        meta = node.get("metadata") or {}
        ready, since = True, None
        for cond in (node.get("status") or {}).get("conditions") or []:
            if cond.get("type") == "Ready":
                ready = cond.get("status") == "True"
                since = parse_time(cond.get("lastTransitionTime"))
        ours = set()
        listed = tuple(t for t in (node.get("spec") or {}).get("taints") or [] if isinstance(t, Mapping))
        for taint in listed:
            if taint.get("key") == PROBLEM_TAINT:
                ours.add((str(taint.get("effect") or ""), str(taint.get("value") or "")))
        return cls(name=meta.get("name", ""), labels=dict(meta.get("labels") or {}), ready=ready,
                   ready_since=since, taints=frozenset(ours), taint_list=listed,
                   resource_version=str(meta.get("resourceVersion") or ""))


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


@dataclasses.dataclass(frozen=True, slots=True)
class Verdict:
    """What the roll-up needs of one child's status (the controller keeps this, not the body)."""

    phase: str
    generation: Any
    """The child's observedGeneration."""
    ready: bool
    failed: bool
    reason: str = ""
    message: str = ""
    """Reason and message of a child that is not ready (empty for a ready one)."""
    since: datetime.datetime | None = None
    """A child that is not ready: since when (its Ready condition's lastTransitionTime; None unknown)."""


def verdict(status: Mapping[str, Any] | None, phases: Phases) -> Verdict | None:
    """The roll-up's reading of one child's status; None when the agent has written none yet."""
    if not status:
        return None
    ready = child_ready(status, phases)
    reason, message = ("", "") if ready else child_reason(status)
    failed = not ready and (status.get("phase") in phases.failed or reason == INVALID_SPEC)
    since = None
    if not ready:
        cond = _condition(status, "Ready")
        since = parse_time(cond.get("lastTransitionTime")) if cond is not None else None
    return Verdict(str(status.get("phase") or ""), status.get("observedGeneration"), ready, failed,
                   reason, message, since)


def past_grace(v: Verdict, now: datetime.datetime, grace: datetime.timedelta) -> bool:
    """Whether ``v`` (not ready) has been so for ``grace`` or longer. An undated one never has: without
    a start there is no grace to pass (our agents always date their conditions)."""
    return v.since is not None and now - v.since >= grace


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """Whose problem a parent's failure is (see the module docstring)."""

    problem: str = ""
    """:data:`NODE_PROBLEM`, :data:`STORAGE_PROBLEM`, or empty (none yet, or no failure)."""
    nodes: tuple[str, ...] = ()
    """Every selected node whose failure counts, by name."""
    since: datetime.datetime | None = None
    """When the earliest of them started failing (None: unknown or no problem)."""
    next_check: datetime.datetime | None = None
    """When a failure still within its grace would pass it (None: none is waiting)."""

    def status(self) -> dict[str, Any] | None:
        """The parent's ``status.diagnosis`` (None removes it: a merge patch deletes a null)."""
        if not self.problem:
            return None
        out: dict[str, Any] = {"problem": self.problem, "nodes": list(self.nodes[:MAX_FAILING_NODES]),
                               "count": len(self.nodes)}
        if self.since is not None:
            out["since"] = format_time(self.since)
        return out


def grace_of(parent: Mapping[str, Any]) -> datetime.timedelta:
    return datetime.timedelta(seconds=health_policy.of_parent(parent).grace_seconds)


def diagnose(counts: Tally, *, grace: datetime.timedelta, now: datetime.datetime) -> Diagnosis:
    """The :class:`Diagnosis` of a parent's :class:`Tally` at ``now``. O(failed nodes)."""
    late: list[str] = []
    since: datetime.datetime | None = None
    due: datetime.datetime | None = None
    for node in counts.failed:
        v = counts.verdicts[node]
        assert v is not None
        if v.reason == INVALID_SPEC:
            continue  # the spec's problem, not the node's nor the storage's: Degraded says InvalidSpec
        if past_grace(v, now, grace):
            late.append(node)
            assert v.since is not None  # past_grace: dated
            if since is None or v.since < since:
                since = v.since
        elif v.since is not None and (due is None or v.since + grace < due):
            due = v.since + grace
    if not late:
        return Diagnosis(next_check=due)
    problem = NODE_PROBLEM if counts.ready else STORAGE_PROBLEM
    return Diagnosis(problem, tuple(sorted(late)), since, due)


def diagnosis_of(parent: Mapping[str, Any], counts: Tally, *, now: datetime.datetime) -> Diagnosis:
    """:func:`diagnose` with the parent's grace; none for a parent being deleted."""
    if (parent.get("metadata") or {}).get("deletionTimestamp"):
        return Diagnosis()
    return diagnose(counts, grace=grace_of(parent), now=now)


class Tally:
    """The children of one parent as the roll-up counts them: which nodes are selected and each node's
    :class:`Verdict`, with running counts, so one child or node changing costs O(1) and
    :func:`status_of` never walks every child. Plain data (no I/O, no clock, no locking)."""

    def __init__(self) -> None:
        self.selected: set[str] = set()
        self.verdicts: dict[str, Verdict | None] = {}
        """Every node with a child of this parent (selected or not): its verdict (None: no status)."""
        self.ready: set[str] = set()
        self.failed: set[str] = set()
        """Selected nodes whose child is ready / failed."""
        self.generations: Counter[Any] = Counter()
        """observedGeneration of the selected nodes' children that have a status."""
        self.detached = 0
        """Children (selected or not) whose phase is Detached."""

    def _count(self, node: str, v: Verdict | None, sign: int) -> None:
        if v is not None and v.phase in DETACHED_PHASES:
            self.detached += sign
        if v is None or node not in self.selected:
            return
        self.generations[v.generation] += sign
        for chosen, member in ((self.ready, v.ready), (self.failed, v.failed)):
            if member:
                if sign > 0:
                    chosen.add(node)
                else:
                    chosen.discard(node)

    def set_child(self, node: str, v: Verdict | None, *, present: bool = True) -> bool:
        """Record ``node``'s child (``present=False``: it went away); True when anything changed."""
        if node in self.verdicts:
            old = self.verdicts[node]
            if present and old == v:
                return False
            self._count(node, old, -1)
            del self.verdicts[node]
        elif not present:
            return False
        if present:
            self.verdicts[node] = v
            self._count(node, v, +1)
        return True

    def select(self, node: str, chosen: bool) -> bool:
        """Whether ``node`` is selected now; True when that changed."""
        if (node in self.selected) == chosen:
            return False
        v = self.verdicts.get(node)
        if chosen:
            self.selected.add(node)
            self._count(node, v, +1)
        else:
            self._count(node, v, -1)
            self.selected.discard(node)
        return True

    def waiting(self, generation: Any) -> tuple[int, list[str]]:
        """How many selected nodes are pending or stale, and the first few of them by name."""
        stale_count = 0
        if generation is not None:
            stale_count = sum(self.generations.values()) - self.generations.get(generation, 0)
        pending = len(self.selected) - len(self.ready) - len(self.failed)
        if not pending and not stale_count:
            return 0, []
        names = [n for n in self.selected if n not in self.ready and n not in self.failed]
        if stale_count:
            names += [n for n in self.selected if (v := self.verdicts.get(n)) is not None
                      and v.generation != generation and (n in self.ready or n in self.failed)]
        return len(names), heapq.nsmallest(MAX_FAILING_NODES, names)


def tally(parent: Mapping[str, Any], children: Sequence[Mapping[str, Any]], nodes: Mapping[str, NodeInfo],
          phases: Phases) -> Tally:
    """A :class:`Tally` of ``parent`` built from scratch (children filtered by :func:`children_of`)."""
    out = Tally()
    for node in selected_nodes(parent, nodes.values()):
        out.select(node, True)
    for child in children:
        out.set_child(str((child.get("spec") or {}).get("nodeName")), verdict(child.get("status"), phases))
    return out


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
    return status_of(parent, tally(parent, children, nodes, phases), old_status=old_status, now=now)


def status_of(
    parent: Mapping[str, Any], counts: Tally, *, old_status: Mapping[str, Any] | None = None,
    now: datetime.datetime, diagnosis: Diagnosis | None = None,
    extra_conditions: Sequence[dict[str, str]] = (), extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The parent's new status from its :class:`Tally` (what :func:`rollup` returns); ``diagnosis`` is
    :func:`diagnosis_of` (computed here when not given)."""
    diag = diagnosis if diagnosis is not None else diagnosis_of(parent, counts, now=now)
    meta = parent.get("metadata") or {}
    generation = meta.get("generation")
    deleting = bool(meta.get("deletionTimestamp"))
    total = len(counts.selected)
    n_ready = len(counts.ready)
    failed_nodes = sorted(counts.failed)
    failed: list[tuple[str, str, str]] = []
    for node in failed_nodes:
        v = counts.verdicts[node]
        assert v is not None
        failed.append((node, v.reason, v.message))
    n_waiting, waiting = counts.waiting(generation)

    conditions: list[dict[str, str]] = []
    failing = [{"node": n, "reason": r, "message": m} for n, r, m in failed[:MAX_FAILING_NODES]]
    if deleting:
        conditions.append(_cond("Ready", False, "Deleting", "waiting for nodes to tear down"))
        conditions.append(_cond("Progressing", True, "TearingDown",
                                f"{counts.detached}/{len(counts.verdicts)} nodes detached"))
    elif total == 0:
        conditions.append(_cond("Ready", True, "NoNodesSelected", "the nodeSelector matches no node"))
        conditions.append(_cond("Progressing", False, "NoNodesSelected", ""))
    elif n_ready == total and not n_waiting:
        conditions.append(_cond("Ready", True, "AllNodesReady", f"{total}/{total} nodes ready"))
        conditions.append(_cond("Progressing", False, "Reconciled", f"generation {generation} on every node"))
    else:
        reason = "NodesFailed" if failed else "WaitingForNodes"
        conditions.append(_cond("Ready", False, reason, f"{n_ready}/{total} nodes ready"))
        conditions.append(_cond("Progressing", bool(n_waiting), "Reconciling" if n_waiting else "Reconciled",
                                _node_list("waiting for", waiting, n_waiting) if n_waiting else ""))
    if failed and not deleting and diag.problem:
        conditions.append(_cond("Degraded", True, diag.problem, _problem_message(diag, counts)))
    elif failed and not deleting:
        top = Counter(r for _, r, _ in failed).most_common(1)[0][0]
        msg = "; ".join(f"{n}: {r}: {m}" if m else f"{n}: {r}" for n, r, m in failed[:MAX_FAILING_NODES])
        conditions.append(_cond("Degraded", True, top, msg[:1024]))
    else:
        conditions.append(_cond("Degraded", False, "NoFailures", ""))

    conditions += extra_conditions
    status: dict[str, Any] = {
        **(extra or {}),
        "selected": total,
        "ready": n_ready,
        "failed": len(failed),
        "readyNodes": f"{n_ready}/{total}",
        "failingNodes": failing,
        "diagnosis": diag.status(),
        "conditions": merge_conditions((old_status or {}).get("conditions") or [], conditions, now),
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def _problem_message(diag: Diagnosis, counts: Tally) -> str:
    """The Degraded message of a diagnosis: who, and the first few nodes' own reasons."""
    names = _node_list("", diag.nodes, len(diag.nodes)).strip()
    if diag.problem == NODE_PROBLEM:
        head = f"node problem on {names} ({len(counts.ready)} other nodes are ready)"
    else:
        head = f"storage problem: every reporting node fails ({names})"
    details = []
    for node in diag.nodes[:MAX_FAILING_NODES]:
        v = counts.verdicts[node]
        assert v is not None
        details.append(f"{node}: {v.reason}: {v.message}" if v.message else f"{node}: {v.reason}")
    return f"{head}: {'; '.join(details)}"[:1024]


def _node_list(prefix: str, names: Sequence[str], total: int) -> str:
    shown = ", ".join(names[:MAX_FAILING_NODES])
    more = f" and {total - MAX_FAILING_NODES} more" if total > MAX_FAILING_NODES else ""
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
