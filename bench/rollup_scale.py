"""The controller's roll-up path in-process at fleet sizes: CPU per change, node flap cost, memory.

Runs the real :class:`controller.cluster.Controller` (its caches, indexes, roll-up and status-write
decision) with an in-memory API in place of the HTTP client, and its work queue replaced by a list
that is drained synchronously, so every figure is CPU of this one thread (``time.process_time``):

1. **per SNS change**: one StorageNodeState flips Ready -> Failed or back (a watch MODIFIED event);
   the cost runs from ``on_state`` through every roll-up it causes to the status-write decision, and
   includes the echo of the controller's own status write coming back on the parent watch (as it does
   from a real API server). p50/p99 over ``--changes`` changes on random (parent, node) pairs.
2. **node flap**: one Node NotReady -> Ready -> NotReady (three watch events), with every roll-up and
   echo they cause; total CPU. ``--flap-limit`` processes at most that many parent roll-ups per event and
   extrapolates linearly (the landed code needs seconds per roll-up at 5,000 x 50).
3. **memory per SNS** (tracemalloc, ``--memory`` sizes): what the controller holds after the start-up
   listing of N StorageNodeStates of 10 parents, divided by N.

The status window (coalescing, where the code has one) is set to 0 for 1 and 2: every change that
changes a parent's status is written, the worst case. Prints figures, asserts nothing.

Usage: ``PYTHONPATH=. .venv/bin/python bench/rollup_scale.py [--sizes 1000x10,5000x10,5000x50]``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import gc
import json
import pathlib
import random
import sys
import time
import tracemalloc
from collections.abc import Hashable, Mapping
from typing import Any

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))

import fleet_world as fw

from controller import cluster, metrics, registry, rollup, settings


class MemoryApi:
    """The calls the controller makes, answered from dicts (a status patch returns the merged parent)."""

    def __init__(self) -> None:
        self.parents: dict[tuple[str, str], dict[str, Any]] = {}
        self.echoes: list[tuple[str, dict[str, Any]]] = []
        self.status_writes = 0
        self.status_bytes = 0

    def patch_parent_status(self, kind: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(self.parents[(kind, name)])
        obj["status"] = {**(obj.get("status") or {}), **copy.deepcopy(dict(status))}
        obj["metadata"]["resourceVersion"] = fw.next_rv()
        self.parents[(kind, name)] = obj
        self.status_writes += 1
        self.status_bytes += len(repr(obj))
        self.echoes.append((kind, copy.deepcopy(obj)))
        return obj

    def set_parent_finalizers(self, kind: str, name: str, finalizers: list[str], rv: str) -> dict[str, Any]:
        obj = self.parents[(kind, name)]
        obj["metadata"]["finalizers"] = finalizers
        return copy.deepcopy(obj)

    def delete_node_state(self, name: str, *, uid: str | None = None) -> bool:
        return True

    def post_event(self, **_: Any) -> None:
        return None


class ListQueue:
    """Stands in for the work queue: keys are recorded and drained by the bench in this thread."""

    def __init__(self) -> None:
        self.keys: dict[Hashable, float] = {}

    def add(self, key: Hashable, *, delay: float = 0.0) -> None:
        self.keys.setdefault(key, delay)

    def depth(self) -> int:
        return len(self.keys)

    def shutdown(self, timeout: float) -> bool:
        return True


def make_settings() -> settings.Settings:
    fields = {f.name for f in dataclasses.fields(settings.Settings)}
    extra: dict[str, Any] = {"status_window": 0.0} if "status_window" in fields else {}
    return settings.Settings(health_port=0, metrics_port=0, **extra)


def make_controller() -> tuple[cluster.Controller, MemoryApi, ListQueue]:
    api = MemoryApi()
    ctl = cluster.Controller(make_settings(), api, stats=metrics.Metrics("controller"))  # type: ignore[arg-type]
    ctl.queue.shutdown(0)
    queue = ListQueue()
    ctl.queue = queue  # type: ignore[assignment]
    return ctl, api, queue


@dataclasses.dataclass
class World:
    ctl: cluster.Controller
    api: MemoryApi
    queue: ListQueue
    nodes: list[dict[str, Any]]
    parents: list[dict[str, Any]]


def build(n_nodes: int, n_parents: int) -> World:
    """The controller after its start-up listing, every parent already carrying its rolled-up status
    (computed with the pure ``rollup.rollup``, as a previous controller run would have left it)."""
    ctl, api, queue = make_controller()
    nodes = [fw.node(i) for i in range(n_nodes)]
    parents = [fw.parent(j) for j in range(n_parents)]
    infos = {n["metadata"]["name"]: rollup.NodeInfo.from_node(n) for n in nodes}
    phases = rollup.phases_of(registry.BY_KIND[fw.KIND])
    for n in nodes:
        ctl.on_node("ADDED", n)
    for j, p in enumerate(parents):
        children = [
            fw.node_state(i, j, parent_uid=fw.uid_of(p), node_uid=fw.uid_of(n)) for i, n in enumerate(nodes)
        ]
        p["status"] = rollup.rollup(p, children, infos, now=fw.NOW, phases=phases)
        api.parents[(fw.KIND, p["metadata"]["name"])] = copy.deepcopy(p)
        ctl.on_parent(fw.KIND, "ADDED", p)
        for child in children:
            ctl.on_state("ADDED", child)
        del children
    ctl.synced.set()
    queue.keys.clear()
    w = World(ctl, api, queue, nodes, parents)
    settle = getattr(ctl, "settle", None)
    if settle is not None:
        # What the incremental controller does after its start-up listing (initial_refresh): settle,
        # then one pass over every parent, which builds each parent's tally (not measured). The landed
        # code keeps no state between roll-ups, so it has nothing to warm up.
        settle()
        for key in sorted(ctl.parents.all_keys(), key=str):
            queue.add(key)
        drain(w, limit=None)
    return w


def drain(w: World, *, limit: int | None) -> tuple[int, int]:
    """Process every queued key, feeding each status write's echo back as a parent MODIFIED event.
    Returns (parent roll-ups run, parent roll-ups left unrun because of ``limit``)."""
    done = skipped = 0
    while w.queue.keys or w.api.echoes:
        while w.api.echoes:
            kind, obj = w.api.echoes.pop(0)
            w.ctl.on_parent(kind, "MODIFIED", obj)
        keys = list(w.queue.keys)
        w.queue.keys.clear()
        for key in keys:
            if limit is not None and done >= limit:
                skipped += 1
                continue
            w.ctl.process(key)  # type: ignore[arg-type]
            done += 1
    return done, skipped


def per_change(w: World, changes: int, rng: random.Random) -> tuple[list[float], int]:
    cpu: list[float] = []
    writes_before = w.api.status_writes
    for _ in range(changes):
        i, j = rng.randrange(len(w.nodes)), rng.randrange(len(w.parents))
        p, n = w.parents[j], w.nodes[i]
        obj = fw.node_state(i, j, parent_uid=fw.uid_of(p), node_uid=fw.uid_of(n), ready=rng.random() < 0.5)
        t0 = time.process_time()
        w.ctl.on_state("MODIFIED", obj)
        drain(w, limit=None)
        cpu.append(time.process_time() - t0)
    return cpu, w.api.status_writes - writes_before


def flap(w: World, limit: int | None) -> tuple[float, int, bool]:
    """NotReady -> Ready -> NotReady of one node; (CPU seconds, status writes, extrapolated)."""
    i = len(w.nodes) // 2
    writes_before = w.api.status_writes
    total = 0.0
    extrapolated = False
    for ready in (False, True, False):
        obj = fw.node(i, ready=ready, since=fw.NOW, uid=fw.uid_of(w.nodes[i]))
        t0 = time.process_time()
        w.ctl.on_node("MODIFIED", obj)
        done, skipped = drain(w, limit=limit)
        spent = time.process_time() - t0
        if skipped and done:
            spent *= (done + skipped) / done
            extrapolated = True
            w.queue.keys.clear()
            w.api.echoes.clear()
        total += spent
    return total, w.api.status_writes - writes_before, extrapolated


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def rollout(n_nodes: int, seconds: float, window: float) -> tuple[int, int, float]:
    """One parent rolled out on ``n_nodes``: every agent writes its StorageNodeState Ready, evenly over
    ``seconds`` (a fake clock), with the status window ``window``. Returns (status writes, bytes of
    the parent's watch events those writes send to every agent, CPU seconds)."""
    clock = FakeClock()
    api = MemoryApi()
    conf = dataclasses.replace(make_settings(), status_window=window)
    ctl = cluster.Controller(conf, api, stats=metrics.Metrics("controller"), clock=clock)  # type: ignore[arg-type]
    ctl.queue.shutdown(0)
    due: dict[Hashable, float] = {}

    class Queue(ListQueue):
        def add(self, key: Hashable, *, delay: float = 0.0) -> None:
            due[key] = min(due.get(key, clock.now + delay), clock.now + delay)

    ctl.queue = Queue()  # type: ignore[assignment]
    nodes = [fw.node(i) for i in range(n_nodes)]
    p = fw.parent(0)
    for n in nodes:
        ctl.on_node("ADDED", n)
    api.parents[(fw.KIND, p["metadata"]["name"])] = copy.deepcopy(p)
    ctl.on_parent(fw.KIND, "ADDED", p)
    ctl.synced.set()
    sizes: list[int] = []

    def run_due() -> None:
        while True:
            ready = [k for k, t in due.items() if t <= clock.now]
            if not ready:
                return
            for key in ready:
                del due[key]
                before = len(api.echoes)
                ctl.process(key)  # type: ignore[arg-type]
                for kind, obj in api.echoes[before:]:
                    sizes.append(len(json.dumps({"type": "MODIFIED", "object": obj})) + 1)
                    ctl.on_parent(kind, "MODIFIED", obj)
                api.echoes.clear()

    t0 = time.process_time()
    run_due()
    first = len(sizes)
    for i, n in enumerate(nodes):
        clock.now = i * seconds / n_nodes
        ctl.on_state("ADDED", fw.node_state(i, 0, parent_uid=fw.uid_of(p), node_uid=fw.uid_of(n)))
        run_due()
    clock.now = seconds + window + 1
    run_due()
    cpu = time.process_time() - t0
    return len(sizes) - first, sum(sizes[first:]) * n_nodes, cpu


def memory_per_sns(count: int, n_parents: int = 10) -> float:
    """Bytes the controller holds per StorageNodeState after listing ``count`` of them."""
    n_nodes = count // n_parents
    gc.collect()
    tracemalloc.start()
    ctl, api, _ = make_controller()
    nodes = [fw.node(i) for i in range(n_nodes)]
    parents = [fw.parent(j) for j in range(n_parents)]
    for n in nodes:
        ctl.on_node("ADDED", n)
    for p in parents:
        ctl.on_parent(fw.KIND, "ADDED", p)
    gc.collect()
    base = tracemalloc.get_traced_memory()[0]
    for j, p in enumerate(parents):
        for i, n in enumerate(nodes):
            ctl.on_state("ADDED", fw.node_state(i, j, parent_uid=fw.uid_of(p), node_uid=fw.uid_of(n)))
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    del ctl, api
    return held / count


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sizes", default="1000x10,5000x10,5000x50", help="NODESxPARENTS,...")
    parser.add_argument("--changes", type=int, default=200, help="SNS changes measured per size")
    parser.add_argument(
        "--flap-limit",
        type=int,
        default=None,
        help="at most this many roll-ups per node event, the rest extrapolated",
    )
    parser.add_argument("--memory", default="10000,50000", help="SNS counts for the memory figure ('' skips)")
    parser.add_argument("--seed", type=int, default=12)
    parser.add_argument("--rollout", default="5000:30:2", help="NODES:SECONDS:WINDOW of one parent's rollout")
    args = parser.parse_args()
    rng = random.Random(args.seed)
    print(
        "size        SNS      build s  change p50 ms  p99 ms  max ms  writes/change  flap CPU s  flap writes"
    )
    for size in args.sizes.split(","):
        if not size:
            continue
        n_nodes, n_parents = (int(x) for x in size.lower().split("x"))
        t0 = time.monotonic()
        w = build(n_nodes, n_parents)
        built = time.monotonic() - t0
        cpu, writes = per_change(w, args.changes, rng)
        flap_cpu, flap_writes, extra = flap(w, args.flap_limit)
        print(
            f"{size:<10} {n_nodes * n_parents:>8} {built:>8.1f} {fw.pct(cpu, 50) * 1000:>14.2f}"
            f" {fw.pct(cpu, 99) * 1000:>7.2f} {max(cpu) * 1000:>7.2f} {writes / max(1, len(cpu)):>14.2f}"
            f" {flap_cpu:>11.3f}{'*' if extra else ' '} {flap_writes:>11}",
            flush=True,
        )
        del w
        gc.collect()
    if any(m for m in args.memory.split(",") if m):
        print("(* extrapolated from --flap-limit roll-ups per node event)")
    if args.rollout and "status_window" in {f.name for f in dataclasses.fields(settings.Settings)}:
        n_text, s_text, w_text = args.rollout.split(":")
        writes, sent, spent = rollout(int(n_text), float(s_text), float(w_text))
        print(
            f"rollout of one parent on {n_text} nodes over {s_text} s, status window {w_text} s: {writes} "
            f"status writes, {sent / 1e6:.1f} MB of parent events to the {n_text} agents, CPU {spent:.2f} s",
            flush=True,
        )
    for count_text in args.memory.split(","):
        if count_text:
            count = int(count_text)
            print(
                f"memory: {memory_per_sns(count):,.0f} bytes per SNS at {count:,} SNS (tracemalloc)",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
