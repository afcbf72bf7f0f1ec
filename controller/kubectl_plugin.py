"""``kubectl hoststorage``: the admin's view of the cluster, as a kubectl plugin (``kubectl-hoststorage``).

- ``status [KIND]``: one matrix, parents x nodes; each cell is the node's phase for that parent (from its
  StorageNodeState), with ready/selected totals per row and per node column.
- ``node NODE``: what one node has (Ready), lacks (selected, not Ready: reason, message, age) and has not
  reported, with its preflight (the agent's ``HostPreflight`` Event).
- ``why KIND/NAME``: the parent's conditions (the controller's diagnosis: ``Degraded`` and any other
  problem condition), the nodes that are not Ready with reason, message and age, and the last Events.

Reads only: parents, StorageNodeStates, Nodes and Events, through ``kubectl get ... -o json`` with the
user's own connection flags passed on (``--kubeconfig``, ``--context``, ``--cluster``, ``--user``,
``--server``, ``--token``, ...), so it talks to exactly the cluster, as exactly the user, that ``kubectl``
would; no credentials are read here. ``kubectl`` is the one on PATH (kubectl puts itself there when it
runs a plugin). Events about cluster-scoped objects live in namespace ``default`` (the API server puts
them there); ``--namespace`` changes where Events are looked up.

Which nodes a parent selects, whether a node's result is Ready, and its reason: the controller's own
rules (:mod:`controller.rollup`), so the plugin never disagrees with the parents' status. Output is
bounded for big clusters: the table shows at most ``--max-nodes`` node columns (problem nodes first, the
rest summed up in one ``+N more`` column) and ``--max-parents`` rows; ``-o json`` is complete.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from controller import naming, registry, rollup

PARENT_KINDS = tuple(row.kind for row in registry.ROWS)
"""Display order: connections, then pools, then monitors (their dependency order)."""
NOT_SELECTED = "-"
MISSING = "Missing"
"""A selected node without a StorageNodeState: its agent has not reported (not running, or not yet)."""
MAX_MESSAGE = 100
EVENTS_SHOWN = 8
KUBECTL_TIMEOUT = 120.0
EXIT_ERROR = 1

# kubectl's connection flags, passed through unchanged: (flags, takes a value).
KUBE_FLAGS: tuple[tuple[tuple[str, ...], bool], ...] = (
    (("--kubeconfig",), True),
    (("--context",), True),
    (("--cluster",), True),
    (("--user",), True),
    (("-s", "--server"), True),
    (("--token",), True),
    (("--as",), True),
    (("--as-group",), True),
    (("--certificate-authority",), True),
    (("--client-certificate",), True),
    (("--client-key",), True),
    (("--insecure-skip-tls-verify",), False),
    (("--request-timeout",), True),
)


class PluginError(Exception):
    """Something the user can act on (kubectl missing, the API refused, an unknown object): one line."""


# ------------------------------------------------------------------------------------------ reading


class Kubectl:
    """``kubectl get -o json`` with the user's connection flags."""

    def __init__(self, flags: Sequence[str], namespace: str | None, binary: str | None = None) -> None:
        found = binary or shutil.which("kubectl")
        if found is None:
            raise PluginError("kubectl is not on PATH")
        self.binary = found
        self.flags = list(flags)
        self.event_namespace = namespace or "default"

    def get(self, *args: str) -> dict[str, Any]:
        argv = [self.binary, *self.flags, "get", *args, "-o", "json"]
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=KUBECTL_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise PluginError(f"kubectl get {' '.join(args)}: no answer in {KUBECTL_TIMEOUT:.0f} s") from None
        if proc.returncode != 0:
            lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
            raise PluginError(lines[-1] if lines else f"kubectl get {' '.join(args)} failed")
        data: dict[str, Any] = json.loads(proc.stdout or "{}")
        return data

    def items(self, *args: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.get(*args).get("items") or []
        return items

    def parents(self, kinds: Sequence[str]) -> list[dict[str, Any]]:
        resources = ",".join(f"{registry.PLURALS[k]}.{naming.GROUP}" for k in kinds)
        return self.items(resources)

    def node_states(self, selector: str | None = None) -> list[dict[str, Any]]:
        return self.items(
            f"{registry.PLURALS['StorageNodeState']}.{naming.GROUP}", *(["-l", selector] if selector else [])
        )

    def nodes(self, selector: str | None = None) -> list[dict[str, Any]]:
        return self.items("nodes", *(["-l", selector] if selector else []))

    def events(self, kind: str, name: str) -> list[dict[str, Any]]:
        selector = f"involvedObject.kind={kind},involvedObject.name={name}"
        return self.items("events", "-n", self.event_namespace, "--field-selector", selector)


def _meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("metadata") or {}


def _kind_of(obj: Mapping[str, Any]) -> str:
    return str(obj.get("kind") or "")


def resolve_kind(word: str) -> str:
    """A kind as people type it: ``StorageConnection``, ``storageconnection(s)``, ``sconn``."""
    low = word.lower()
    for kind, short in ((row.kind, row.short) for row in registry.ROWS):
        if low in (kind.lower(), registry.PLURALS[kind], short, f"{registry.PLURALS[kind]}.{naming.GROUP}"):
            return kind
    raise PluginError(f"unknown kind {word!r}: one of {', '.join(PARENT_KINDS)} (or sconn, spool, dmon)")


# ------------------------------------------------------------------------------------------ the model


@dataclasses.dataclass(frozen=True)
class Cell:
    """One parent on one node."""

    phase: str
    ready: bool
    reason: str = ""
    message: str = ""
    since: datetime.datetime | None = None
    """When the Ready condition last changed (its lastTransitionTime)."""
    selected: bool = True
    observed_generation: int | None = None

    def to_dict(self, now: datetime.datetime) -> dict[str, Any]:
        out: dict[str, Any] = {"phase": self.phase, "ready": self.ready, "selected": self.selected}
        if self.reason:
            out["reason"] = self.reason
        if self.message:
            out["message"] = self.message
        if self.since is not None:
            out["since"] = rollup.format_time(self.since)
        if self.observed_generation is not None:
            out["observedGeneration"] = self.observed_generation
        return out


@dataclasses.dataclass
class Row:
    kind: str
    name: str
    parent: dict[str, Any]
    cells: dict[str, Cell]
    """Selected nodes, and nodes that still report on it (tearing down) although not selected."""

    @property
    def key(self) -> str:
        return f"{self.kind}/{self.name}"

    @property
    def selected(self) -> int:
        return sum(c.selected for c in self.cells.values())

    @property
    def ready(self) -> int:
        return sum(c.selected and c.ready for c in self.cells.values())

    def problems(self) -> list[str]:
        return sorted(n for n, c in self.cells.items() if not c.ready)


def _cell(child: Mapping[str, Any] | None, selected: bool, phases: rollup.Phases) -> Cell:
    if child is None:
        return Cell(
            MISSING, False, MISSING, "no StorageNodeState: the node's agent has not reported", None, selected
        )
    status = child.get("status") or {}
    if not status:
        return Cell("Unknown", False, "NoStatus", "the StorageNodeState has no status yet", None, selected)
    reason, message = rollup.child_reason(status)
    since = None
    for cond in status.get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == "Ready":
            since = rollup.parse_time(cond.get("lastTransitionTime"))
    generation = status.get("observedGeneration")
    return Cell(
        phase=str(status.get("phase") or "Unknown"),
        ready=rollup.child_ready(status, phases),
        reason="" if rollup.child_ready(status, phases) else reason,
        message=message,
        since=since,
        selected=selected,
        observed_generation=generation if isinstance(generation, int) else None,
    )


def build_rows(
    parents: Sequence[Mapping[str, Any]],
    states: Sequence[Mapping[str, Any]],
    nodes: Sequence[Mapping[str, Any]],
) -> list[Row]:
    """One row per parent over ``nodes`` (the nodes shown: all, or those a selector picked)."""
    infos = [rollup.NodeInfo.from_node(n) for n in nodes]
    names = {i.name for i in infos}
    by_parent: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for st in states:
        ref = (st.get("spec") or {}).get("parentRef") or {}
        by_parent.setdefault((str(ref.get("kind")), str(ref.get("name"))), []).append(st)
    rows = []
    for parent in parents:
        kind, name = _kind_of(parent), str(_meta(parent).get("name"))
        children = rollup.children_of(parent, by_parent.get((kind, name), []))
        by_node = {str((c.get("spec") or {}).get("nodeName")): c for c in children}
        selected = set(rollup.selected_nodes(parent, infos))
        phases = rollup.phases_of(registry.row(kind))
        cells = {n: _cell(by_node.get(n), True, phases) for n in sorted(selected)}
        for node, child in by_node.items():
            if node in names and node not in selected:
                cells[node] = _cell(child, False, phases)
        rows.append(Row(kind, name, dict(parent), cells))
    order = {k: i for i, k in enumerate(PARENT_KINDS)}
    return sorted(rows, key=lambda r: (order.get(r.kind, 99), r.name))


# ------------------------------------------------------------------------------------------ rendering


def age(since: datetime.datetime | None, now: datetime.datetime) -> str:
    """kubectl's style: 45s, 12m, 5h, 3d."""
    if since is None:
        return "<unknown>"
    seconds = max(0, int((now - since).total_seconds()))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def _short(text: str, limit: int = MAX_MESSAGE) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "   ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in [header, *rows]
    ]
    return "\n".join(lines) + "\n"


def _ready_of(ready: int, selected: int) -> str:
    return f"{ready}/{selected}"


def render_status(rows: Sequence[Row], nodes: Sequence[str], *, max_nodes: int, max_parents: int) -> str:
    if not rows:
        return "No StorageConnections, StoragePools or DomainMonitors.\n"
    problems = {n: sum(1 for r in rows if n in r.cells and not r.cells[n].ready) for n in nodes}
    ordered = sorted(nodes, key=lambda n: (-problems[n], n))
    shown, hidden = ordered[:max_nodes], ordered[max_nodes:]
    shown = sorted(shown, key=lambda n: (-problems[n], n)) if hidden else sorted(shown)
    header = ["KIND/NAME", *shown, *([f"+{len(hidden)} MORE"] if hidden else []), "READY"]
    out_rows = []
    for row in rows[:max_parents]:
        cells = [row.cells[n].phase if n in row.cells else NOT_SELECTED for n in shown]
        if hidden:
            sel = [row.cells[n] for n in hidden if n in row.cells and row.cells[n].selected]
            cells.append(_ready_of(sum(c.ready for c in sel), len(sel)) if sel else NOT_SELECTED)
        out_rows.append([row.key, *cells, _ready_of(row.ready, row.selected)])
    totals = []
    for n in shown:
        sel = [r.cells[n] for r in rows if n in r.cells and r.cells[n].selected]
        totals.append(_ready_of(sum(c.ready for c in sel), len(sel)))
    if hidden:
        sel = [r.cells[n] for r in rows for n in hidden if n in r.cells and r.cells[n].selected]
        totals.append(_ready_of(sum(c.ready for c in sel), len(sel)))
    totals.append(_ready_of(sum(r.ready for r in rows), sum(r.selected for r in rows)))
    out = table(header, [*out_rows, ["READY", *totals]])
    if len(rows) > max_parents:
        out += f"+{len(rows) - max_parents} more parents (narrow with KIND, -l, --problems; or -o json)\n"
    if hidden:
        out += (
            f"{len(hidden)} more nodes summed up in +{len(hidden)} MORE as ready/selected "
            f"(--max-nodes to show more; --problems or -l to narrow)\n"
        )
    return out


def status_json(rows: Sequence[Row], nodes: Sequence[str], now: datetime.datetime) -> dict[str, Any]:
    per_node = {n: {"ready": 0, "selected": 0} for n in nodes}
    for r in rows:
        for n, c in r.cells.items():
            if c.selected and n in per_node:
                per_node[n]["selected"] += 1
                per_node[n]["ready"] += c.ready
    return {
        "nodes": list(nodes),
        "parents": [
            {"kind": r.kind, "name": r.name, "ready": r.ready, "selected": r.selected,
             "cells": {n: c.to_dict(now) for n, c in sorted(r.cells.items())}}
            for r in rows
        ],
        "totals": per_node,
    }  # fmt: skip


def _conditions(parent: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [c for c in ((parent.get("status") or {}).get("conditions") or []) if isinstance(c, Mapping)]


def _event_time(event: Mapping[str, Any]) -> datetime.datetime | None:
    for key in ("lastTimestamp", "eventTime", "firstTimestamp"):
        when = rollup.parse_time(event.get(key))
        if when is not None:
            return when
    return rollup.parse_time(_meta(event).get("creationTimestamp"))


def _events_block(events: Sequence[Mapping[str, Any]], now: datetime.datetime) -> str:
    if not events:
        return "No Events.\n"
    last = sorted(events, key=lambda e: _event_time(e) or now)[-EVENTS_SHOWN:]
    rows = [[age(_event_time(e), now), str(e.get("type") or ""), str(e.get("reason") or ""),
             str(e.get("count") or 1), _short(str(e.get("message") or ""))] for e in last]  # fmt: skip
    more = f" (last {len(last)} of {len(events)})" if len(events) > len(last) else ""
    return f"Events{more}:\n" + table(["AGE", "TYPE", "REASON", "COUNT", "MESSAGE"], rows)


def _not_ready_block(
    title: str, first: str, items: Sequence[tuple[str, Cell]], now: datetime.datetime, limit: int
) -> str:
    if not items:
        return f"{title}: none\n"
    rows = [[key, c.phase, c.reason, age(c.since, now), _short(c.message)] for key, c in items[:limit]]
    out = f"{title} ({len(items)}):\n" + table([first, "PHASE", "REASON", "AGE", "MESSAGE"], rows)
    if len(items) > limit:
        out += f"+{len(items) - limit} more (-o json lists all)\n"
    return out


def render_why(row: Row, events: Sequence[Mapping[str, Any]], now: datetime.datetime, limit: int) -> str:
    conds = {str(c.get("type")): c for c in _conditions(row.parent)}
    ready = conds.get("Ready")
    lines = [f"{row.key}: {row.ready}/{row.selected} selected nodes ready"]
    if ready is not None:
        lines.append(
            f"Ready={ready.get('status')} {ready.get('reason')}: {ready.get('message') or ''}".rstrip(": ")
        )
    else:
        lines.append("Ready: no status yet (the controller has not rolled this object up)")
    diagnosis = [
        c for t, c in conds.items() if t not in ("Ready", "Progressing") and c.get("status") == "True"
    ]
    for c in diagnosis:
        message = _short(str(c.get("message") or ""), 300)
        lines.append(f"Diagnosis: {c.get('type')}={c.get('status')} {c.get('reason')}: {message}")
    if not diagnosis:
        lines.append("Diagnosis: none (no Degraded or other problem condition)")
    progressing = conds.get("Progressing")
    if progressing is not None and progressing.get("status") == "True":
        lines.append(
            f"Progressing: {progressing.get('reason')}: {progressing.get('message') or ''}".rstrip(": ")
        )
    out = "\n".join(lines) + "\n\n"
    failing = [(n, c) for n, c in sorted(row.cells.items()) if not c.ready and c.phase != MISSING]
    missing = [(n, c) for n, c in sorted(row.cells.items()) if c.phase == MISSING]
    out += _not_ready_block("Nodes not ready", "NODE", failing, now, limit)
    out += _not_ready_block("Nodes not reporting", "NODE", missing, now, limit) if missing else ""
    return out + "\n" + _events_block(events, now)


def why_json(row: Row, events: Sequence[Mapping[str, Any]], now: datetime.datetime) -> dict[str, Any]:
    return {
        "kind": row.kind,
        "name": row.name,
        "ready": row.ready,
        "selected": row.selected,
        "conditions": _conditions(row.parent),
        "notReady": {n: c.to_dict(now) for n, c in sorted(row.cells.items()) if not c.ready},
        "events": [{"type": e.get("type"), "reason": e.get("reason"), "message": e.get("message"),
                    "count": e.get("count"), "time": rollup.format_time(t) if (t := _event_time(e)) else None}
                   for e in sorted(events, key=lambda e: _event_time(e) or now)],
    }  # fmt: skip


def node_ready(node: Mapping[str, Any]) -> bool | None:
    """The Node's Ready condition (:class:`controller.rollup.NodeInfo`'s reading), None when it has none."""
    conditions = (node.get("status") or {}).get("conditions") or []
    if not any(isinstance(c, Mapping) and c.get("type") == "Ready" for c in conditions):
        return None
    return rollup.NodeInfo.from_node(node).ready


def render_node(node: Mapping[str, Any], rows: Sequence[Row], preflight: Mapping[str, Any] | None,
                now: datetime.datetime, limit: int) -> str:  # fmt: skip
    info = rollup.NodeInfo.from_node(node)
    if node_ready(node) is not None:
        state = "Ready" if info.ready else "NotReady"
        lines = [f"Node {info.name}: {state} (since {age(info.ready_since, now)})"]
    else:
        lines = [f"Node {info.name}: no Ready condition reported"]
    if preflight is not None:
        lines.append(f"Preflight ({age(_event_time(preflight), now)} ago, {preflight.get('type')}): "
                     f"{preflight.get('message')}")  # fmt: skip
    else:
        lines.append(
            "Preflight: no HostPreflight Event (the agent has not started here, or its Event expired)"
        )
    has = [(r.key, r.cells[info.name]) for r in rows if info.name in r.cells and r.cells[info.name].ready]
    lacks = [
        (r.key, r.cells[info.name])
        for r in rows
        if info.name in r.cells and not r.cells[info.name].ready and r.cells[info.name].phase != MISSING
    ]
    missing = [(r.key, r.cells[info.name]) for r in rows if r.cells.get(info.name, None) is not None
               and r.cells[info.name].phase == MISSING]  # fmt: skip
    unselected = [r.key for r in rows if info.name not in r.cells]
    out = "\n".join(lines) + "\n\n"
    if has:
        shown = has[:limit]
        out += f"Has ({len(has)} Ready):\n" + table(["", "PHASE", "AGE"], [[k, c.phase, age(c.since, now)]
                                                                          for k, c in shown])  # fmt: skip
        if len(has) > limit:
            out += f"+{len(has) - limit} more (-o json lists all)\n"
    else:
        out += "Has: nothing Ready\n"
    out += _not_ready_block("Lacks (selected here, not Ready)", "KIND/NAME", lacks, now, limit)
    if missing:
        title = "Not reported (selected here, no StorageNodeState)"
        out += _not_ready_block(title, "KIND/NAME", missing, now, limit)
    more = f", +{len(unselected) - limit} more" if len(unselected) > limit else ""
    out += f"Not selected here: {', '.join(unselected[:limit]) or 'none'}{more}\n"
    return out


# ------------------------------------------------------------------------------------------ commands


def _add_kube_flags(parser: argparse.ArgumentParser, *, sub: bool) -> None:
    group = parser.add_argument_group("kubectl connection flags (passed on to kubectl)")
    default = argparse.SUPPRESS if sub else None
    for names, takes_value in KUBE_FLAGS:
        dest = "kube_" + names[-1].lstrip("-").replace("-", "_")
        if takes_value:
            group.add_argument(*names, dest=dest, default=default, metavar="VALUE")
        else:
            group.add_argument(*names, dest=dest, action="store_const", const=True, default=default)
    group.add_argument("-n", "--namespace", dest="kube_namespace", default=default, metavar="NAMESPACE",
                       help="where to look for Events (default: default, where Events about cluster-scoped "
                       "objects go)")  # fmt: skip


def _kube_argv(args: argparse.Namespace) -> list[str]:
    out = []
    for names, takes_value in KUBE_FLAGS:
        value = getattr(args, "kube_" + names[-1].lstrip("-").replace("-", "_"), None)
        if value is None:
            continue
        out += [names[-1], str(value)] if takes_value else [names[-1]]
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kubectl hoststorage",
        description="What hoststorage did on every node: parents x nodes, one node, one object's failures.",
    )
    _add_kube_flags(parser, sub=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    status = sub.add_parser("status", help="parents x nodes: each node's phase, totals per row and node",
                            description="Parents x nodes: each node's phase for each parent.")  # fmt: skip
    status.add_argument("kind", nargs="?", help="only this kind (StorageConnection, sconn, ...)")
    status.add_argument(
        "-l", "--selector", help="only the nodes with these labels (kubectl's label selector)"
    )
    status.add_argument("--problems", action="store_true",
                        help="only the parents and nodes where something is not Ready")  # fmt: skip
    status.add_argument("--max-nodes", type=int, default=10, metavar="N",
                        help="node columns in the table (default 10; the rest summed up in one)")  # fmt: skip
    status.add_argument("--max-parents", type=int, default=100, metavar="N",
                        help="rows in the table (default 100)")  # fmt: skip
    node = sub.add_parser("node", help="what one node has, lacks and why",
                          description="What one node has, lacks and why.")  # fmt: skip
    node.add_argument("node", help="the Node's name")
    why_help = "why an object is not Ready: its failing nodes, diagnosis and Events"
    why = sub.add_parser("why", help=why_help, description=why_help)
    why.add_argument(
        "object", metavar="KIND/NAME", help="e.g. StorageConnection/images-nfs or sconn/images-nfs"
    )
    for p in (status, node, why):
        p.add_argument("-o", "--output", choices=("table", "json"), default="table", help="output format")
        if p is not status:
            p.add_argument("--max-nodes", type=int, default=20, metavar="N",
                           help="rows per list (default 20)")  # fmt: skip
        _add_kube_flags(p, sub=True)
    return parser


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


def run_status(kube: Kubectl, args: argparse.Namespace) -> str:
    kinds = [resolve_kind(args.kind)] if args.kind else list(PARENT_KINDS)
    nodes = kube.nodes(args.selector)
    rows = build_rows(kube.parents(kinds), kube.node_states(), nodes)
    names = sorted(str(_meta(n).get("name")) for n in nodes)
    if args.problems:
        rows = [r for r in rows if r.problems()]
        bad = {n for r in rows for n in r.problems()}
        names = [n for n in names if n in bad]
        for r in rows:
            r.cells = {n: c for n, c in r.cells.items() if n in bad}
    if args.output == "json":
        return json.dumps(status_json(rows, names, _now()), indent=2) + "\n"
    if args.problems and not rows:
        return "No problems: every selected node is Ready for every object.\n"
    return render_status(rows, names, max_nodes=max(1, args.max_nodes), max_parents=max(1, args.max_parents))


def run_why(kube: Kubectl, args: argparse.Namespace) -> str:
    kind_word, sep, name = str(args.object).partition("/")
    if not sep or not name:
        raise PluginError(f"{args.object!r}: expected KIND/NAME, e.g. StorageConnection/images-nfs")
    kind = resolve_kind(kind_word)
    parents = [p for p in kube.parents([kind]) if _meta(p).get("name") == name]
    if not parents:
        raise PluginError(f"{kind}/{name} not found")
    selector = f"{naming.LABEL_KIND}={kind},{naming.LABEL_PARENT}={naming.label_value(name)}"
    (row,) = build_rows(parents, kube.node_states(selector), kube.nodes())
    events = kube.events(kind, name)
    now = _now()
    if args.output == "json":
        return json.dumps(why_json(row, events, now), indent=2, default=str) + "\n"
    return render_why(row, events, now, max(1, args.max_nodes))


def run_node(kube: Kubectl, args: argparse.Namespace) -> str:
    nodes = [n for n in kube.nodes() if _meta(n).get("name") == args.node]
    if not nodes:
        raise PluginError(f"node {args.node} not found")
    states = kube.node_states(f"{naming.LABEL_NODE}={naming.label_value(args.node)}")
    rows = build_rows(kube.parents(list(PARENT_KINDS)), states, nodes)
    preflights = [e for e in kube.events("Node", args.node) if e.get("reason") == "HostPreflight"]
    preflight = max(preflights, key=lambda e: _event_time(e) or _now()) if preflights else None
    now = _now()
    if args.output == "json":
        cells = {r.key: r.cells[args.node].to_dict(now) for r in rows if args.node in r.cells}
        ready = node_ready(nodes[0])
        message = (preflight or {}).get("message")
        doc = {"node": args.node, "ready": ready, "preflight": message, "objects": cells}
        return json.dumps(doc, indent=2) + "\n"
    return render_node(nodes[0], rows, preflight, now, max(1, args.max_nodes))


COMMANDS = {"status": run_status, "node": run_node, "why": run_why}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        kube = Kubectl(_kube_argv(args), getattr(args, "kube_namespace", None))
        sys.stdout.write(COMMANDS[args.command](kube, args))
    except PluginError as exc:
        print(f"kubectl hoststorage: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
