"""A fleet through the emulator: N Ready Nodes, P parents, the real controller, N agents played from here.

Starts kmock's emulator with :mod:`tests.kmock_ext` (in a thread of this process), N Ready Nodes, P
StorageConnections selecting every node, and the real ``hoststorage controller`` process (the code of
this checkout: PYTHONPATH is this repository). The N agents are played from this process with the
agent's own writer (:class:`controller.node_states.NodeStateWriter`: the same names, labels, owner
reference, create then JSON-patch of the status), at ``--rate`` StorageNodeStates per second from
``--threads`` threads. Prints, per size:

- **rollout**: every (parent, node) StorageNodeState created Ready; seconds from the last SNS write
  until every parent shows N/N ready ("convergence");
- **single changes**: ``--changes`` StorageNodeStates flipped Ready <-> Failed one at a time, rotating
  over the parents (each parent changes at most once per ``--gap`` x P seconds, so a status window of a
  few seconds does not delay them); latency from the write's answer until the parent's counts show
  it, p50/p99, and the controller's CPU per change over that phase;
- controller CPU seconds and RSS, the emulator thread's CPU (its share of controller + emulator), API
  requests by client and verb, bytes the emulator served to the controller and the agents, and the
  parent status writes with the bytes a real fleet's agents would receive for them (each agent watches
  every parent: writes x parent object size x N; computed, the played agents open no watches).

Usage: ``PYTHONPATH=. .venv/bin/python bench/fleet.py --nodes 100,300,1000 [--parents 10]``.
Prints figures, asserts nothing.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import pathlib
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

import fleet_world as fw  # noqa: E402
import kmock_ext  # noqa: E402

from controller import kube, metrics, node_states  # noqa: E402

NODES = ("", "v1", "nodes")
SCONN = ("hoststorage.io", "v1alpha1", "storageconnections")
HOSTSTORAGE = str(pathlib.Path(sys.executable).parent / "hoststorage")
TICK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Fleet:
    def __init__(
        self, workdir: pathlib.Path, n_nodes: int, n_parents: int, controller_args: list[str]
    ) -> None:
        self.n, self.p = n_nodes, n_parents
        self.emulator = kmock_ext.ApiServerEmulator()
        self.runner = kmock_ext.EmulatorRunner(self.emulator)
        self.runner.call(self.emulator.load_crds, ROOT / "crds")
        self.kubeconfigs = {}
        for who in ("controller", "agents"):
            self.runner.add_endpoint(who)
            self.kubeconfigs[who] = str(self.runner.write_kubeconfig(workdir / f"kubeconfig-{who}", who))
        self.emu_thread = self.runner._thread
        self.node_uids: list[str] = []
        for start in range(0, n_nodes, 500):
            batch = range(start, min(n_nodes, start + 500))
            made = self.runner.call(lambda b=batch: [self.emulator.put_object(NODES, fw.node(i)) for i in b])
            self.node_uids += [fw.uid_of(o) for o in made]
        self.parents: list[dict[str, Any]] = []
        for j in range(n_parents):
            body = fw.parent(j)
            body["metadata"].pop("finalizers")
            self.parents.append(self.runner.call(self.emulator.put_object, SCONN, body))
        port = kmock_ext.free_port()
        self.health_port = port
        env = dict(
            os.environ, KUBECONFIG=self.kubeconfigs["controller"], PYTHONUNBUFFERED="1", PYTHONPATH=str(ROOT)
        )
        argv = [
            HOSTSTORAGE,
            "--log-level",
            "WARNING",
            "controller",
            "--health-port",
            str(port),
            "--metrics-port",
            "0",
            *controller_args,
        ]
        self.log_path = workdir / "controller.log"
        with open(self.log_path, "wb") as log:
            self.controller = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.api = kube.Api(
            kube.load_configuration(self.kubeconfigs["agents"]), user_agent="hoststorage-agent"
        )
        stats = metrics.Metrics("agent")
        self.writers = [node_states.NodeStateWriter(self.api, fw.node_name(i), stats) for i in range(n_nodes)]

    def wait_ready(self, timeout: float = 600) -> float:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            if self.controller.poll() is not None:
                raise SystemExit(f"controller exited:\n{self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.health_port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return time.monotonic() - start
            except OSError:
                pass
            time.sleep(0.1)
        raise SystemExit("controller not ready")

    def emulator_cpu(self) -> float:
        return float(self.runner.call(time.thread_time))

    def write(self, i: int, j: int, ready: bool) -> None:
        block = fw.status_block(j, ready=ready)
        self.writers[i].write(fw.KIND, self.parents[j], block, node_uid=self.node_uids[i])

    def statuses(self) -> list[dict[str, Any]]:
        def collect() -> list[dict[str, Any]]:
            out = []
            for p in self.parents:
                obj = self.emulator.store.get((SCONN, None, p["metadata"]["name"]))
                out.append(dict((obj or {}).get("status") or {}))
            return out

        result: list[dict[str, Any]] = self.runner.call(collect)
        return result

    def parent_size(self) -> int:
        obj = self.runner.call(self.emulator.get_object, SCONN, self.parents[0]["metadata"]["name"])
        return len(json.dumps({"type": "MODIFIED", "object": obj})) + 1

    def close(self) -> None:
        if self.controller.poll() is None:
            self.controller.terminate()
            try:
                self.controller.wait(30)
            except subprocess.TimeoutExpired:
                self.controller.kill()
                self.controller.wait(10)
        self.api.close()
        self.runner.close()


def rollout(fleet: Fleet, rate: float, threads: int, timeout: float) -> dict[str, float]:
    pairs = [(i, j) for j in range(fleet.p) for i in range(fleet.n)]
    start = time.monotonic()
    lock = threading.Lock()
    sent = [0]

    def one(pair: tuple[int, int]) -> None:
        with lock:
            k = sent[0]
            sent[0] += 1
        due = start + k / rate
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        fleet.write(pair[0], pair[1], True)

    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, pairs))
    last = time.monotonic()
    while time.monotonic() - last < timeout:
        if all(s.get("ready") == fleet.n and s.get("selected") == fleet.n for s in fleet.statuses()):
            break
        time.sleep(0.02)
    else:
        print(f"  WARNING: not converged {timeout:.0f} s after the last write")
    done = time.monotonic()
    return {"writes_s": last - start, "converge_s": done - last, "rate": len(pairs) / (last - start)}


def changes(fleet: Fleet, count: int, gap: float, rng: random.Random) -> list[float]:
    failed: dict[int, set[int]] = {j: set() for j in range(fleet.p)}
    lat = []
    for k in range(count):
        j = k % fleet.p
        i = rng.randrange(fleet.n)
        now_failed = i not in failed[j]
        fleet.write(i, j, not now_failed)
        written = time.monotonic()
        (failed[j].add if now_failed else failed[j].discard)(i)
        want = len(failed[j])
        while time.monotonic() - written < 30:
            if fleet.statuses()[j].get("failed") == want:
                break
            time.sleep(0.002)
        lat.append(time.monotonic() - written)
        time.sleep(max(0.0, gap - (time.monotonic() - written)))
    return lat


def run_size(n: int, args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="hs-fleet-") as tmp:
        fleet = Fleet(pathlib.Path(tmp), n, args.parents, args.controller_arg)
        try:
            fleet.wait_ready()
            time.sleep(1)
            pid = fleet.controller.pid
            c0, e0, m0 = proc_cpu(pid), fleet.emulator_cpu(), time.process_time()
            r0 = len(fleet.runner.requests())
            roll = rollout(fleet, args.rate, args.threads, args.timeout)
            c1, e1 = proc_cpu(pid), fleet.emulator_cpu()
            reqs = fleet.runner.requests()[r0:]
            status_writes = sum(
                1
                for r in reqs
                if r["who"] == "controller" and r["method"] == "PATCH" and r["path"].endswith("/status")
            )
            psize = fleet.parent_size()
            rss_roll = rss_mb(pid)
            time.sleep(1)
            idle0 = proc_cpu(pid)
            time.sleep(5)
            idle = (proc_cpu(pid) - idle0) / 5
            c2, e2 = proc_cpu(pid), fleet.emulator_cpu()
            t2 = time.monotonic()
            lat = changes(fleet, args.changes, args.gap, random.Random(n))
            c3, e3 = proc_cpu(pid), fleet.emulator_cpu()
            spent = time.monotonic() - t2
            above = max(0.0, (c3 - c2) - idle * spent) / max(1, len(lat))
            sent = fleet.runner.sent_bytes()
            by = Counter(f"{r['who']} {r['method']}" for r in fleet.runner.requests())
            ctl_roll, emu_roll = c1 - c0, e1 - e0
            print(
                f"{n:>5} x {args.parents}: {n * args.parents:>6} SNS written in {roll['writes_s']:.1f} s "
                f"({roll['rate']:.0f}/s); converged {roll['converge_s']:.2f} s after the last write; "
                f"change p50 {fw.pct(lat, 50) * 1000:.0f} ms p99 {fw.pct(lat, 99) * 1000:.0f} ms; "
                f"controller CPU per change {(c3 - c2) / max(1, len(lat)) * 1000:.1f} ms "
                f"(idle {idle * 100:.1f} % of a core, so {above * 1000:.1f} ms above idle)",
                flush=True,
            )
            print(
                f"        controller CPU rollout {ctl_roll:.1f} s, RSS {rss_roll:.0f} MiB "
                f"(end {rss_mb(pid):.0f}); "
                f"emulator CPU rollout {emu_roll:.1f} s ({emu_roll / max(1e-9, emu_roll + ctl_roll):.0%} of "
                f"emulator+controller), changes {e3 - e2:.1f} s; played agents "
                f"{time.process_time() - m0 - (e3 - e0):.1f} s",
                flush=True,
            )
            print(
                f"        parent status writes in rollout {status_writes} "
                f"({status_writes / args.parents:.1f}/parent), "
                f"parent event {psize} B -> {status_writes * psize * n / 1e6:.1f} MB to {n} agents; "
                f"bytes served: controller {sent.get('controller', 0) / 1e6:.1f} MB, agents "
                f"{sent.get('agents', 0) / 1e6:.1f} MB; requests {dict(sorted(by.items()))}",
                flush=True,
            )
        finally:
            fleet.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nodes", default="100,300,1000")
    parser.add_argument("--parents", type=int, default=10)
    parser.add_argument("--rate", type=float, default=400.0, help="SNS writes per second during the rollout")
    parser.add_argument("--threads", type=int, default=4, help="played-agent writer threads")
    parser.add_argument("--changes", type=int, default=40)
    parser.add_argument("--gap", type=float, default=0.3, help="seconds between single changes")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for convergence")
    parser.add_argument("--controller-arg", action="append", default=[], help="extra controller flag")
    args = parser.parse_args()
    for n in (int(x) for x in args.nodes.split(",") if x):
        run_size(n, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
