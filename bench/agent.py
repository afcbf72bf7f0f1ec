"""Figures for the agent and controller (issue 3's closing note); prints them, asserts nothing.

Runs the e2e world of ``tests/fixtures_kube.py`` (kmock emulator, three real agents on this host, one
controller) and measures:

1. apply -> Ready latency (parent condition Ready, i.e. every node connected and rolled up), p50/p99,
   for 1 connection (repeated) and for 100 connections created at once;
2. API writes by agents and controller during a steady-state window after convergence (the issue asks
   for 10 minutes; ``--steady-seconds`` scales it down, default 120 s with resync every 20 s, i.e. six
   full resync passes over 100 connections on each node);
3. agent and controller RSS idle, and with ``--many`` (default 1,000) localfs connections Ready.

Usage (root): ``.venv/bin/python bench/agent.py [--steady-seconds N] [--many N]``.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

import fixtures_kube  # noqa: E402

SCONN = ("hoststorage.io", "v1alpha1", "storageconnections")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def ready(obj: dict[str, Any] | None) -> bool:
    if not obj:
        return False
    for c in (obj.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            return bool(
                c.get("status") == "True"
                and obj["status"].get("observedGeneration") == obj["metadata"].get("generation")
                and obj["status"].get("selected", 0) > 0
            )
    return False


def create(cluster: fixtures_kube.Cluster, names: list[str]) -> float:
    assert cluster.runner is not None and cluster.emulator is not None
    for name in names:
        (cluster.allowed / name).mkdir(exist_ok=True)
    start = time.monotonic()

    def put_all() -> None:
        for name in names:
            cluster.emulator.put_object(
                SCONN,
                {  # type: ignore[union-attr]
                    "apiVersion": "hoststorage.io/v1alpha1",
                    "kind": "StorageConnection",
                    "metadata": {"name": name},
                    "spec": {"type": "localfs", "localfs": {"path": str(cluster.allowed / name)}},
                },
            )

    cluster.runner.call(put_all)
    return start


def wait_ready(cluster: fixtures_kube.Cluster, names: list[str], start: float, timeout: float) -> list[float]:
    assert cluster.runner is not None and cluster.emulator is not None
    pending = set(names)
    done: dict[str, float] = {}
    deadline = start + timeout
    while pending and time.monotonic() < deadline:
        objs = cluster.runner.call(lambda: {n: cluster.emulator.get_object(SCONN, n) for n in pending})  # type: ignore[union-attr]
        now = time.monotonic()
        for n, obj in objs.items():
            if ready(obj):
                done[n] = now - start
                pending.discard(n)
        time.sleep(0.05)
    if pending:
        print(f"  WARNING: {len(pending)} of {len(names)} not Ready after {timeout:.0f} s")
    return sorted(done.values())


def pct(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(p / 100 * (len(values) - 1))))
    return sorted(values)[k]


def delete_all(cluster: fixtures_kube.Cluster, prefix: str, timeout: float) -> None:
    cluster.kubectl("delete", "sconn", "--all", "--wait=false", timeout=300)
    assert cluster.runner is not None and cluster.emulator is not None
    fixtures_kube.wait_until(
        lambda: not cluster.runner.call(lambda: cluster.emulator.list_objects(SCONN)),  # type: ignore[union-attr]
        timeout,
        f"all {prefix} connections deleted",
        interval=1,
    )


def rss_line(cluster: fixtures_kube.Cluster) -> str:
    agents = [rss_mb(a.popen.pid) for a in cluster.agents.values() if a.popen]
    assert cluster.controller is not None and cluster.controller.popen is not None
    return (
        f"agent RSS {statistics.mean(agents):.1f} MiB (max {max(agents):.1f}), "
        f"controller RSS {rss_mb(cluster.controller.popen.pid):.1f} MiB"
    )


WRITES = ("POST", "PATCH", "PUT", "DELETE")


def restart_one(cluster: fixtures_kube.Cluster, names: list[str]) -> None:
    """Restart one agent holding every connection: time to ready (its initial refresh done, which is
    when readiness turns true), its API writes meanwhile and just after, and whether its mounts moved."""
    assert cluster.runner is not None
    agent = next(iter(cluster.agents.values()))
    mounts = cluster.mounts_under(agent.mount_base)
    links = sorted(p.name for p in pathlib.Path(agent.mount_base).iterdir())
    before = len(cluster.runner.requests())
    start = time.monotonic()
    agent.stop()
    agent.start()
    cluster.wait_ready(agent, timeout=600)
    ready = time.monotonic() - start
    time.sleep(10)
    writes = [
        r for r in cluster.runner.requests()[before:] if r["who"] == agent.node and r["method"] in WRITES
    ]
    after_links = sorted(p.name for p in pathlib.Path(agent.mount_base).iterdir())
    same_mounts = cluster.mounts_under(agent.mount_base) == mounts
    rss = rss_mb(agent.popen.pid) if agent.popen else 0.0
    print(
        f"agent restart with {len(names)} objects: ready (initial refresh done) {ready:.1f} s after the "
        f"stop; {len(writes)} API writes until 10 s after ready; mounts unchanged: {same_mounts}, "
        f"links unchanged: {after_links == links}; RSS {rss:.1f} MiB"
    )


def change_one(cluster: fixtures_kube.Cluster, name: str) -> None:
    """Change one object's spec (a new generation every node applies) and count each agent's writes."""
    assert cluster.runner is not None
    before = len(cluster.runner.requests())
    selector = {"matchExpressions": [{"key": "kubernetes.io/hostname", "operator": "Exists"}]}
    cluster.kubectl(
        "patch", "sconn", name, "--type", "merge", "-p", json.dumps({"spec": {"nodeSelector": selector}})
    )
    fixtures_kube.wait_until(
        lambda: (
            all((s.get("status") or {}).get("observedGeneration") == 2 for s in cluster.states(name).values())
            and len(cluster.states(name)) == len(cluster.agents)
        ),
        120,
        f"{name} generation 2 on every node",
    )
    time.sleep(3)
    window = cluster.runner.requests()[before:]
    per_agent = [
        sum(1 for r in window if r["who"] == node and r["method"] in WRITES) for node in cluster.agents
    ]
    print(f"one object changed: API writes per agent {per_agent} (target 1 each)")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steady-seconds", type=float, default=120)
    parser.add_argument("--resync-seconds", type=float, default=20)
    parser.add_argument("--many", type=int, default=1000)
    parser.add_argument("--single-runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hs-bench-") as tmp:
        cluster = fixtures_kube.Cluster(pathlib.Path(tmp), resync_seconds=args.resync_seconds)
        try:
            cluster.start_world()
            time.sleep(2)
            print(f"idle: {rss_line(cluster)}")

            single: list[float] = []
            for i in range(args.single_runs):
                name = f"one-{i}"
                start = create(cluster, [name])
                single += wait_ready(cluster, [name], start, 60)
            print(
                f"1 connection x{args.single_runs}: apply->Ready p50 {pct(single, 50) * 1000:.0f} ms, "
                f"p99 {pct(single, 99) * 1000:.0f} ms"
            )
            delete_all(cluster, "single", 120)

            names = [f"hundred-{i:03d}" for i in range(100)]
            start = create(cluster, names)
            lat = wait_ready(cluster, names, start, 300)
            print(
                f"100 connections at once: apply->Ready p50 {pct(lat, 50):.2f} s, p99 {pct(lat, 99):.2f} s, "
                f"all {max(lat):.2f} s"
            )

            assert cluster.runner is not None
            time.sleep(5)
            before = len(cluster.runner.requests())
            time.sleep(args.steady_seconds)
            window = cluster.runner.requests()[before:]
            writes = [
                r
                for r in window
                if r["who"] != "kubectl" and r["method"] in ("POST", "PATCH", "PUT", "DELETE")
            ]
            reads = [r for r in window if r["who"] != "kubectl" and r["method"] == "GET"]
            print(
                f"steady state, 100 connections x 3 nodes, {args.steady_seconds:.0f} s window, resync every "
                f"{args.resync_seconds:.0f} s: {len(writes)} API writes, {len(reads)} GETs (watch reconnects)"
            )
            print(f"with 100 connections: {rss_line(cluster)}")
            delete_all(cluster, "hundred", 300)

            many = [f"many-{i:04d}" for i in range(args.many)]
            start = create(cluster, many)
            lat = wait_ready(cluster, many, start, 1500)
            print(
                f"{args.many} connections at once: all Ready after {max(lat) if lat else float('nan'):.1f} s "
                f"({len(lat)} Ready)"
            )
            time.sleep(5)
            print(f"with {args.many} connections: {rss_line(cluster)}")
            restart_one(cluster, many)
            change_one(cluster, many[0])
            delete_all(cluster, "many", 1500)
        finally:
            cluster.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
