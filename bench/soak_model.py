"""The chaos soak's pure half: the seeded schedule and the invariants, as functions of plain data.

``bench/soak.py`` owns the world (processes, mounts, kubectl) and gathers facts; everything that decides
*what* to do next or *whether* a fact is a violation lives here, without I/O, so that the same seed gives
the same schedule and every invariant can be shown to catch a planted violation
(tests/test_soak_model.py).
"""

from __future__ import annotations

import dataclasses
import math
import pathlib
import random
import re
from collections.abc import Iterable, Mapping, Sequence

# ------------------------------------------------------------------------------------------ the world

NODES = ("node-a", "node-b", "node-c")
SOAK_LABEL = "hs-soak/selected"
"""The label parents with a selector match (relabel flips it on a node)."""
POOL_LABEL = "hs-soak/pools"
"""Pools and the monitors on them select this label: the simulated nodes share one libvirtd, so one
node at a time holds the pools (a libvirt pool name is one per host)."""

CONNECTIONS = ("posixfs-0", "posixfs-1", "gluster-0", "localfs-0", "localfs-1")
POOLS = ("dirpool-0", "fspool-0")
MONITORS = ("mon-conn-0", "mon-conn-1", "mon-pool-0")
SLOTS = CONNECTIONS + POOLS + MONITORS
"""Every object the soak may create, by its slot name (the object's name is ``soak-<slot>``)."""

OPERATIONS = ("create", "change", "delete", "relabel", "node-cycle")
FAULTS = (
    "kill-agent",
    "kill-leader",
    "api-outage",
    "libvirtd-restart",
    "brick-stop",
    "brick-kill",
    "unmount",
    "pool-destroy",
    "fill",
)
FAULT_WEIGHTS = {f: 1.0 for f in FAULTS}
OP_WEIGHTS = {"create": 3.0, "change": 3.0, "delete": 2.0, "relabel": 1.5, "node-cycle": 0.5}


@dataclasses.dataclass(frozen=True)
class Step:
    """One thing the soak does: ``at`` seconds into its burst, ``what`` (an operation or a fault),
    ``args`` (the target and numbers, all chosen by the seed)."""

    burst: int
    at: float
    what: str
    args: tuple[tuple[str, str | int | float], ...] = ()

    def arg(self, key: str) -> str | int | float:
        return dict(self.args)[key]

    def line(self) -> str:
        args = " ".join(f"{k}={v}" for k, v in self.args)
        return f"burst {self.burst:3d} +{self.at:5.1f}s {self.what} {args}".rstrip()


def _args_for(what: str, rng: random.Random) -> tuple[tuple[str, str | int | float], ...]:
    if what in ("create", "change", "delete"):
        return (("slot", rng.choice(SLOTS)), ("variant", rng.randrange(4)))
    if what in ("relabel", "kill-agent", "node-cycle"):
        return (("node", rng.choice(NODES)),)
    if what == "api-outage":
        return (("seconds", rng.randint(5, 30)),)
    if what == "brick-stop":
        return (("seconds", rng.randint(3, 12)),)
    if what == "libvirtd-restart":
        return (("seconds", rng.randint(0, 5)),)
    if what in ("unmount", "fill"):
        return (("node", rng.choice(NODES)), ("pick", rng.randrange(1000)))
    return ()


def schedule(seed: int, bursts: int, *, rate: float, burst_seconds: float = 20.0) -> list[Step]:
    """``bursts`` bursts of about ``rate`` events a minute each (at least one), each burst followed by a
    quiet period (the caller's). A third of the events are faults. Same seed, same list."""
    rng = random.Random(seed)
    steps: list[Step] = []
    per_burst = max(1, round(rate * burst_seconds / 60.0))
    ops, op_w = zip(*OP_WEIGHTS.items(), strict=True)
    faults, fault_w = zip(*FAULT_WEIGHTS.items(), strict=True)
    for b in range(bursts):
        times = sorted(round(rng.uniform(0, burst_seconds), 1) for _ in range(per_burst))
        for at in times:
            what = rng.choices(faults, fault_w)[0] if rng.random() < 1 / 3 else rng.choices(ops, op_w)[0]
            steps.append(Step(b, at, what, _args_for(what, rng)))
    return steps


def kind_of(what: str) -> str:
    return "fault" if what in FAULTS else "op"


# ------------------------------------------------------------------------------------------ invariants


@dataclasses.dataclass(frozen=True)
class Violation:
    invariant: str
    detail: str

    def __str__(self) -> str:
        return f"{self.invariant}: {self.detail}"


@dataclasses.dataclass(frozen=True)
class Mount:
    """One mount under a node's mount base, as mountinfo shows it."""

    node: str
    target: str
    source: str


def double_mounts(mounts: Iterable[Mount]) -> list[Violation]:
    """Never two mounts on one mount point of a node, never one source mounted twice on a node's base
    (two mounts of one connection)."""
    out = []
    by_target: dict[tuple[str, str], int] = {}
    by_source: dict[tuple[str, str], set[str]] = {}
    for m in mounts:
        by_target[(m.node, m.target)] = by_target.get((m.node, m.target), 0) + 1
        by_source.setdefault((m.node, m.source), set()).add(m.target)
    for (node, target), n in sorted(by_target.items()):
        if n > 1:
            out.append(Violation("double-mount", f"{node}: {n} mounts stacked on {target}"))
    for (node, source), targets in sorted(by_source.items()):
        if len(targets) > 1:
            out.append(Violation("double-mount", f"{node}: {source} mounted on {sorted(targets)}"))
    return out


def unwanted(what: str, present: Iterable[str], wanted: Iterable[str]) -> list[Violation]:
    """Host things (mounts, links, pools, probe files) no live selected object asks for, and things
    asked for that are missing: both directions of "the host matches the objects"."""
    have, want = set(present), set(wanted)
    out = [Violation(f"unwanted-{what}", x) for x in sorted(have - want)]
    out += [Violation(f"missing-{what}", x) for x in sorted(want - have)]
    return out


def outside_roots(world: str, targets: Iterable[str], bases: Iterable[str]) -> list[Violation]:
    """Mounts in the soak's world that lie under none of the agents' mount bases: hoststorage mounts
    only there (an fs pool's target included), so anything else was mounted outside its roots."""
    top = world.rstrip("/") + "/"
    roots = [b.rstrip("/") + "/" for b in bases]
    return [
        Violation("mount-outside-roots", t)
        for t in sorted(set(targets))
        if t.startswith(top) and not any(t.startswith(r) for r in roots)
    ]


def touched(changes: Iterable[str]) -> list[Violation]:
    """Changes to the bystander tree (files, a directory and a link outside every root, some of them
    the targets of links planted inside the roots): hoststorage may never create, change or remove
    anything there."""
    return [Violation("outside-touched", c) for c in changes]


PROBE_PREFIX = ".hoststorage-probe-"


def orphaned_probes(present: Iterable[str], wanted: Iterable[str], pulled: Iterable[str]) -> set[str]:
    """Unwanted probe files of nodes whose mount the soak pulled away (``pulled``) since the last quiet
    point: when a monitor goes while its storage is not mounted, its probe file is on storage the
    node cannot reach, and stays there (reported, not a violation); the soak removes it as an admin
    would. Any other unwanted probe file is a violation."""
    nodes = set(pulled)
    return {p for p in set(present) - set(wanted) if p.rsplit("/", 1)[-1].removeprefix(PROBE_PREFIX) in nodes}


def ledger_mismatch(
    node: str, ledger: Iterable[tuple[str, str]], wanted: Iterable[tuple[str, str]]
) -> list[Violation]:
    """A node's ledger owns exactly what its host has for the live objects selecting it."""
    have, want = set(ledger), set(wanted)
    out = [Violation("ledger-extra", f"{node}: {k}/{n}") for k, n in sorted(have - want)]
    out += [Violation("ledger-forgot", f"{node}: {k}/{n}") for k, n in sorted(want - have)]
    return out


@dataclasses.dataclass(frozen=True)
class Child:
    """One StorageNodeState, reduced: its parent, node, phase, generation seen, reasons."""

    kind: str
    parent: str
    node: str
    phase: str
    observed_generation: int
    reasons: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class Parent:
    kind: str
    name: str
    generation: int
    selected: tuple[str, ...]
    """The live nodes its selector matches (computed by the harness from the Node labels)."""
    status: Mapping[str, object]
    finalizers: tuple[str, ...] = ()
    deleting: bool = False


def status_mismatch(
    parents: Sequence[Parent], children: Sequence[Child], ready_phases: Mapping[str, frozenset[str]]
) -> list[Violation]:
    """Every live parent has exactly one child per selected node, each at the parent's generation and
    Ready; its status counts agree; no child is left for an unselected node or a deleted parent."""
    out = []
    live = {(p.kind, p.name): p for p in parents if not p.deleting}
    by_parent: dict[tuple[str, str], dict[str, Child]] = {}
    for c in children:
        by_parent.setdefault((c.kind, c.parent), {})[c.node] = c
    for key, kids in sorted(by_parent.items()):
        p = live.get(key)
        for node in sorted(kids):
            if p is None or node not in p.selected:
                out.append(Violation("stray-child", f"{key[0]}/{key[1]} on {node} ({kids[node].phase})"))
    for key, p in sorted(live.items()):
        kids = by_parent.get(key, {})
        ready = 0
        for node in p.selected:
            c = kids.get(node)
            if c is None:
                out.append(Violation("missing-child", f"{key[0]}/{key[1]} on {node}"))
                continue
            if c.observed_generation != p.generation:
                out.append(
                    Violation(
                        "stale-child",
                        f"{key[0]}/{key[1]} on {node}: generation {c.observed_generation} of {p.generation}",
                    )
                )
            if c.phase in ready_phases[p.kind]:
                ready += 1
            else:
                out.append(Violation("not-ready", f"{key[0]}/{key[1]} on {node}: {c.phase} {c.reasons}"))
        st = p.status
        conditions = st.get("conditions") or []
        ready_cond = next((c.get("status") for c in conditions if c.get("type") == "Ready"), None)  # type: ignore[union-attr]
        counts = (
            st.get("observedGeneration"),
            st.get("selected"),
            st.get("ready"),
            st.get("failed"),
            ready_cond,
        )
        want = (p.generation, len(p.selected), ready, 0, "True" if ready == len(p.selected) else "False")
        if counts != want:
            out.append(
                Violation(
                    "parent-status",
                    f"{key[0]}/{key[1]}: (observedGeneration, selected, ready, "
                    f"failed, Ready) = {counts}, want {want}",
                )
            )
    return out


def stuck(gone: Iterable[str], still_there: Iterable[str]) -> list[Violation]:
    """Objects deleted by the soak that still exist after convergence (a finalizer stuck)."""
    there = set(still_there)
    return [Violation("stuck-finalizer", name) for name in sorted(set(gone) & there)]


def undocumented(reasons: Iterable[str], documented: Iterable[str]) -> list[Violation]:
    known = set(documented)
    return [Violation("undocumented-reason", r) for r in sorted(set(reasons) - known) if r]


TRACEBACK = re.compile(r"^Traceback \(most recent call last\):", re.MULTILINE)


def tracebacks(name: str, text: str) -> list[Violation]:
    """A traceback anywhere in a log is a violation; the detail is its last line (the exception)."""
    out = []
    for m in TRACEBACK.finditer(text):
        tail = text[m.end() :].splitlines()
        last = next((ln for ln in tail if ln and not ln.startswith((" ", "\t", "Traceback"))), "?")
        out.append(Violation("traceback", f"{name}: {last.strip()[:200]}"))
    return out


@dataclasses.dataclass(frozen=True)
class Usage:
    """An agent's resources at one quiet point."""

    threads: int
    fds: int
    children: int
    rss_kib: int = 0


LEAK_SLACK = Usage(threads=3, fds=6, children=2)
"""How far above its plateau an agent may sit: a check helper can be mid-flight at any sample."""


def leak_slack(cpus: int) -> Usage:
    """:data:`LEAK_SLACK` plus the thread pool kopf runs the agent's sync handlers in: a default
    ``ThreadPoolExecutor`` starts its threads one by one as handlers overlap, up to min(32, CPUs + 4),
    and never stops them. A burst of events (a Node deleted and created again: every object
    re-evaluated) fills it after the warm-up did not; that is its plateau, not a leak."""
    return dataclasses.replace(LEAK_SLACK, threads=LEAK_SLACK.threads + min(32, cpus + 4))


def plateau(samples: Sequence[Usage], warmup: int) -> Usage | None:
    """The baseline of one agent process: the highest of its first ``warmup`` quiet-point samples (every
    code path — libvirt event loop, helper pools, watch threads — has started by then; a baseline taken
    right after start-up is too low: pools start their threads lazily). None until there are enough."""
    if len(samples) < warmup:
        return None
    first = samples[:warmup]
    return Usage(max(s.threads for s in first), max(s.fds for s in first), max(s.children for s in first))


def leaks(name: str, base: Usage | None, now: Usage, slack: Usage = LEAK_SLACK) -> list[Violation]:
    if base is None:
        return []
    out = []
    for field in ("threads", "fds", "children"):
        b, n, s = getattr(base, field), getattr(now, field), getattr(slack, field)
        if n > b + s:
            out.append(Violation(f"leak-{field}", f"{name}: {n} against a plateau of {b} (+{s} allowed)"))
    return out


def trend(samples: Sequence[Usage], warmup: int) -> str:
    """One process's quiet-point samples in a line: first, plateau, highest, last (threads/fds/children)."""

    def fmt(u: Usage | None) -> str:
        return "-" if u is None else f"{u.threads}/{u.fds}/{u.children}"

    top = (
        Usage(*(max(getattr(s, f) for s in samples) for f in ("threads", "fds", "children")))
        if samples
        else None
    )
    return (
        f"{len(samples)} samples, threads/fds/children first {fmt(samples[0] if samples else None)} "
        f"plateau {fmt(plateau(samples, warmup))} max {fmt(top)} last {fmt(samples[-1] if samples else None)}"
    )


def slow_health(name: str, seconds: float | None, bound: float) -> list[Violation]:
    """``/healthz`` must answer within ``bound``; None: it did not answer at all."""
    if seconds is None:
        return [Violation("healthz", f"{name}: no answer")]
    if seconds > bound:
        return [Violation("healthz", f"{name}: answered after {seconds:.2f} s (bound {bound:g} s)")]
    return []


# ------------------------------------------------------------------------------------- documented reasons

REASONS_DOC = pathlib.Path(__file__).resolve().parent.parent / "docs" / "troubleshooting.md"
REASONS_HEADING = "## Condition reasons"


def documented_reasons(text: str) -> set[str]:
    """The reasons in the first column of the table under ``## Condition reasons`` (backquoted)."""
    out: set[str] = set()
    inside = False
    for line in text.splitlines():
        if line.startswith("## "):
            inside = line.strip() == REASONS_HEADING
            continue
        if inside and line.startswith("|"):
            first = line.split("|")[1]
            out.update(re.findall(r"`([A-Za-z]+)`", first))
    return out


# ------------------------------------------------------------------------------------------ figures


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def summary(counts: Mapping[str, int], convergence: Sequence[float], violations: int) -> str:
    faults = ", ".join(f"{k} {counts[k]}" for k in FAULTS if counts.get(k))
    ops = ", ".join(f"{k} {counts[k]}" for k in OPERATIONS if counts.get(k))
    conv = (
        f"p50 {percentile(convergence, 50):.1f} s p99 {percentile(convergence, 99):.1f} s "
        f"max {max(convergence, default=0.0):.1f} s (n={len(convergence)})"
    )
    return (
        f"SOAK SUMMARY: faults [{faults or 'none'}]; operations [{ops or 'none'}]; "
        f"convergence {conv}; violations {violations}"
    )
