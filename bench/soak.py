#!/usr/bin/env python3
"""The chaos soak (issue 14): mixed operations and faults on real mounts, pools and monitors, with the
invariants checked all the way. Prints the seed first and the summary last; exit 0 only with zero
violations.

The world is the e2e suite's (tests/fixtures_kube.py and friends): the API emulator, three agents (own
mount bases and state dirs, ``--allow-shared-sources``: the three "nodes" share this host's loop
devices), two controller replicas with leader election, posixfs on loop devices, a gluster volume of
the soak's own (``network.ping-timeout`` 2 s), localfs, libvirt dir and fs pools, DomainMonitors on
connections and on a pool. The schedule and the invariants are the pure :mod:`soak_model`.

First a warm-up: every object of every kind is created and converged, and each agent's thread, fd and
child counts are sampled (the plateau the leak check compares with). Then each burst (about 20 s) runs
its scheduled steps; then a quiet period: no new steps until the world has
converged (every eventual invariant holds) or ``--converge-timeout`` has passed, which is a violation.
Continuously (every second, in a thread): no two mounts of one connection on a node's mount base, every
live agent's ``/healthz`` answers within ``--health-bound`` (the brick stopped included).

Usage (root; starts libvirtd and glusterd when not running):
``.venv/bin/python bench/soak.py --minutes 3 [--seed N] [--rate EVENTS_PER_MINUTE]``.
On a violation: the seed, the schedule so far, the violations and the facts are printed and the work
directory (every log) is kept. SIGTERM or SIGINT: the burst under way and its quiet period finish, then
the summary of what ran is printed. Everything printed is also written to ``<workdir>/soak.out``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import pathlib
import random
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

import fixtures_kube  # noqa: E402
import fixtures_libvirt  # noqa: E402
import fixtures_storage  # noqa: E402
import soak_model as model  # noqa: E402
import trust_world  # noqa: E402

from controller import registry  # noqa: E402
from hostlib import mounts  # noqa: E402
from reconcilers import selector as selector_mod  # noqa: E402

API = "hoststorage.io/v1alpha1"
LIBVIRT_PREFIX = "hs-soak-"
DEPENDS = {"mon-conn-0": "localfs-0", "mon-conn-1": "gluster-0", "mon-pool-0": "fspool-0"}
READY = {r.kind: r.ready_phases for r in registry.ordered(None)}
KIND_OF_SLOT = {
    **dict.fromkeys(model.CONNECTIONS, "StorageConnection"),
    **dict.fromkeys(model.POOLS, "StoragePool"),
    **dict.fromkeys(model.MONITORS, "DomainMonitor"),
}
RESOURCE = {"StorageConnection": "sconn", "StoragePool": "spool", "DomainMonitor": "dmon"}


def obj_name(slot: str) -> str:
    return f"soak-{slot}"


def selector_variant(variant: int) -> dict[str, Any]:
    return [
        {},
        {"matchLabels": {model.SOAK_LABEL: "yes"}},
        {"matchExpressions": [{"key": model.SOAK_LABEL, "operator": "DoesNotExist"}]},
        {"matchLabels": {"kubernetes.io/hostname": model.NODES[1]}},
    ][variant % 4]


class Violations(Exception):
    def __init__(self, found: list[model.Violation], facts: str = "") -> None:
        super().__init__("; ".join(map(str, found)))
        self.found = found
        self.facts = facts


class World:
    """The processes, the storage and the soak's model of what it asked for."""

    def __init__(self, workdir: pathlib.Path, stack: contextlib.ExitStack, args: argparse.Namespace) -> None:
        self.workdir = workdir
        self.args = args
        self.cluster = fixtures_kube.Cluster(workdir, resync_seconds=4)
        stack.callback(self.cluster.close)
        self.controllers: list[fixtures_kube.Proc] = []
        stack.callback(self._stop_controllers)
        self.loops = fixtures_storage.LoopFactory(str(workdir))
        stack.callback(self.loops.cleanup)
        # libvirtd is this host's, shared with whatever else runs here (another soak, host tests): one the
        # soak starts is left running, or stopping it would pull it from under them
        self.ensure_libvirtd()
        self.prefix = f"{LIBVIRT_PREFIX}{secrets.token_hex(3)}-"
        """This run's libvirt pool names (another soak may run beside it on the same libvirtd)."""
        stack.callback(self._remove_pools)  # while libvirtd is still up
        brick = workdir / "brick"
        brick.mkdir()
        self.gluster = stack.enter_context(fixtures_storage.own_gluster_volume(str(brick)))
        self.devices = {
            "posixfs-0": self.loops("ext4"),
            "posixfs-1": self.loops("ext4"),
            "fspool-0": self.loops("ext4"),
        }
        self.labels: dict[str, dict[str, str]] = {n: {} for n in model.NODES}
        self.labels[model.NODES[0]][model.POOL_LABEL] = "yes"
        self.live: dict[str, int] = {}
        """Slot -> its variant, for every object the soak asked for and did not delete."""
        self.deleted: set[str] = set()
        self.counts: dict[str, int] = {}
        self.busy: set[str] = set()
        """Agents (by node) the soak is killing or restarting right now: /healthz is not asked."""
        self.lock = threading.Lock()
        self.usage: dict[tuple[str, int], list[model.Usage]] = {}
        self.first_usage: dict[str, model.Usage] = {}
        self.last_usage: dict[str, model.Usage] = {}
        self.lease = f"hs-soak-{secrets.token_hex(3)}"
        self.baseline: dict[str, model.Usage | None] = {}
        self.pulled: set[str] = set()
        """Nodes with a mount unmounted underneath since the last quiet point."""
        self.orphans: set[str] = set()
        self.orphans_removed = 0
        self.bystander = self._plant_bystanders()
        self.bystanders = trust_world.snapshot(self.bystander)
        """The bystander tree as planted: it must stay exactly so (nothing outside the roots touched)."""

    def _plant_bystanders(self) -> pathlib.Path:
        """Files, a directory and a link outside every root, with links to them planted inside the roots
        (the allowed host paths, a localfs connection's directory that monitors put probe files in)
        where a user of those roots could put them. (Not in the gluster brick: a file written into a
        brick behind gluster's back is not on the volume.)"""
        d = self.workdir / "bystander"
        (d / "keep").mkdir(parents=True)
        (d / "disk.img").write_bytes(secrets.token_bytes(65536))
        (d / "keep" / "note").write_text("not hoststorage's\n")
        os.symlink("disk.img", d / "link")
        (self.cluster.allowed / "localfs-0").mkdir(exist_ok=True)
        for inside in (self.cluster.allowed, self.cluster.allowed / "localfs-0"):
            os.symlink(d / "disk.img", inside / "bystander-disk")
            os.symlink(d / "keep", inside / "bystander-dir")
        return d

    # ------------------------------------------------------------------ start / stop

    def start(self) -> None:
        c = self.cluster
        c.kubectl("apply", "-f", str(fixtures_kube.CRDS))
        for node in model.NODES:
            c.create_node(node, self.labels[node])
        for i in (1, 2):
            self.controllers.append(
                c.start_controller(f"controller-{i}", extra=["--leader-election", "--lease-name", self.lease])
            )
        for node in model.NODES:
            c.agent(node).start()
        for proc in [*c.agents.values(), *self.controllers]:
            c.wait_ready(proc, timeout=90)

    def _stop_controllers(self) -> None:
        for p in self.controllers:
            with contextlib.suppress(Exception):
                p.stop(timeout=15)

    def _remove_pools(self) -> None:
        for name in self.libvirt_pools(active_only=False):
            fixtures_libvirt.virsh("pool-destroy", name, check=False)
            fixtures_libvirt.virsh("pool-undefine", name, check=False)

    # ------------------------------------------------------------------ objects

    def manifest(self, slot: str, variant: int) -> dict[str, Any]:
        kind = KIND_OF_SLOT[slot]
        spec: dict[str, Any]
        if slot.startswith("posixfs"):
            spec = {
                "type": "posixfs",
                "posixfs": {"source": self.devices[slot], "vfsType": "ext4"},
                "nodeSelector": selector_variant(variant),
            }
        elif slot.startswith("gluster"):
            spec = {
                "type": "glusterfs",
                "glusterfs": {"server": self.gluster.server, "volume": self.gluster.volume},
                "nodeSelector": selector_variant(variant),
            }
        elif slot.startswith("localfs"):
            path = self.cluster.allowed / slot
            path.mkdir(exist_ok=True)
            spec = {
                "type": "localfs",
                "localfs": {"path": str(path)},
                "nodeSelector": selector_variant(variant),
            }
        elif slot.startswith("dirpool"):
            path = self.cluster.allowed / slot
            spec = {"dir": {"path": str(path)}}
        elif slot.startswith("fspool"):
            spec = {"fs": {"device": self.devices[slot], "format": "ext4"}}
        else:
            target = DEPENDS[slot]
            ref = (
                {"poolRef": {"name": obj_name(target)}}
                if target in model.POOLS
                else {"connectionRef": {"name": obj_name(target)}}
            )
            spec = {"target": ref, "intervalSeconds": 2 + variant % 3, "timeoutSeconds": 2}
        if kind == "StoragePool":
            spec.update(
                libvirtName=self.prefix + slot,
                autostart=variant % 2 == 0,
                nodeSelector={"matchLabels": {model.POOL_LABEL: "yes"}},
            )
        if kind == "DomainMonitor":
            spec["nodeSelector"] = self.selector_of(DEPENDS[slot])
        return {"apiVersion": API, "kind": kind, "metadata": {"name": obj_name(slot)}, "spec": spec}

    def selector_of(self, slot: str) -> dict[str, Any]:
        if slot in model.POOLS:
            return {"matchLabels": {model.POOL_LABEL: "yes"}}
        return selector_variant(self.live.get(slot, 0))

    def put(self, slot: str, variant: int) -> None:
        dep = DEPENDS.get(slot)
        if dep is not None and dep not in self.live:
            self.put(dep, 0)  # a monitor on nothing would wait forever: its target first
        if slot in self.deleted:
            # as a user would: an apply to an object still terminating changes it, and then it is gone
            self.wait_gone(slot)
        self.live[slot] = variant
        self.deleted.discard(slot)
        docs = [self.manifest(slot, variant)]
        # dependents follow the target's selector, or they hold it InUse on a node it leaves
        docs += [self.manifest(m, self.live[m]) for m, t in DEPENDS.items() if t == slot and m in self.live]
        self.cluster.apply(docs)

    def ensure_libvirtd(self) -> None:
        """Start libvirtd when it does not answer: the soak's own fault restarts it, but another program
        on this host (a host test's fixture that started it) may stop it and not start it again."""
        if fixtures_libvirt.libvirtd_answers():
            return
        print("soak: libvirtd is not running; starting it", flush=True)
        try:
            fixtures_libvirt.start_libvirtd()
        except subprocess.CalledProcessError:
            # another program on this host started one at the same moment (it holds the pid file)
            fixtures_libvirt.wait_for(fixtures_libvirt.libvirtd_answers, 30, "libvirtd started by another")

    def wait_gone(self, slot: str) -> None:
        res, name = RESOURCE[KIND_OF_SLOT[slot]], obj_name(slot)
        deadline = time.monotonic() + self.args.converge_timeout
        while self.cluster.get(res, name) is not None:
            if time.monotonic() > deadline:
                raise Violations(
                    [
                        model.Violation(
                            "stuck-finalizer",
                            f"{name} still there {self.args.converge_timeout:.0f} s after its delete",
                        )
                    ]
                )
            time.sleep(0.5)

    def delete(self, slot: str) -> None:
        for m, t in DEPENDS.items():
            if t == slot and m in self.live:
                self.delete(m)  # a connection stays InUse while a monitor on it lives
        if slot not in self.live:
            return
        del self.live[slot]
        self.deleted.add(slot)
        self.cluster.kubectl(
            "delete", RESOURCE[KIND_OF_SLOT[slot]], obj_name(slot), "--wait=false", "--ignore-not-found"
        )

    def set_labels(self, node: str) -> None:
        self.cluster.apply(
            {
                "apiVersion": "v1",
                "kind": "Node",
                "metadata": {"name": node, "labels": {"kubernetes.io/hostname": node, **self.labels[node]}},
            }
        )
        if model.SOAK_LABEL not in self.labels[node]:
            self.cluster.kubectl("label", "node", node, f"{model.SOAK_LABEL}-", check=False)

    # ------------------------------------------------------------------ steps

    def run_step(self, step: model.Step) -> None:
        what = step.what
        self.counts[what] = self.counts.get(what, 0) + 1
        getattr(self, "do_" + what.replace("-", "_"))(step)

    def do_create(self, step: model.Step) -> None:
        slot = str(step.arg("slot"))
        self.put(slot, self.live.get(slot, int(step.arg("variant"))))

    def do_change(self, step: model.Step) -> None:
        slot = str(step.arg("slot"))
        variant = int(step.arg("variant"))
        if self.live.get(slot) == variant:
            variant = (variant + 1) % 4
        self.put(slot, variant)

    def do_delete(self, step: model.Step) -> None:
        self.delete(str(step.arg("slot")))

    def do_relabel(self, step: model.Step) -> None:
        node = str(step.arg("node"))
        if self.labels[node].pop(model.SOAK_LABEL, None) is None:
            self.labels[node][model.SOAK_LABEL] = "yes"
        self.set_labels(node)

    def do_node_cycle(self, step: model.Step) -> None:
        node = str(step.arg("node"))
        self.cluster.kubectl("delete", "node", node, "--wait=false")
        fixtures_kube.wait_until(lambda: self.cluster.get("node", node) is None, 60, f"node {node} gone")
        time.sleep(2)
        self.cluster.create_node(node, self.labels[node])

    def do_kill_agent(self, step: model.Step) -> None:
        node = str(step.arg("node"))
        agent = self.cluster.agents[node]
        with self.lock:
            self.busy.add(node)
        try:
            agent.kill()
            time.sleep(1)
            agent.start()
            self.cluster.wait_ready(agent, timeout=90)
        finally:
            with self.lock:
                self.busy.discard(node)

    def leader(self) -> fixtures_kube.Proc | None:
        return next((p for p in self.controllers if p.alive() and p.probe("/readyz")[1].get("leader")), None)

    def do_kill_leader(self, step: model.Step) -> None:
        proc = self.leader()
        if proc is None:
            return
        proc.kill()
        time.sleep(1)
        proc.start()

    def do_api_outage(self, step: model.Step) -> None:
        runner = self.cluster.runner
        assert runner is not None
        runner.stop()
        try:
            time.sleep(float(step.arg("seconds")))
        finally:
            runner.start()

    def do_libvirtd_restart(self, step: model.Step) -> None:
        fixtures_libvirt.stop_libvirtd()
        time.sleep(float(step.arg("seconds")))
        self.ensure_libvirtd()

    def do_brick_stop(self, step: model.Step) -> None:
        pid = self.gluster.brick_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(float(step.arg("seconds")))
        finally:
            os.kill(pid, signal.SIGCONT)

    def do_brick_kill(self, step: model.Step) -> None:
        pid = self.gluster.brick_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(2)
        subprocess.run(
            ["gluster", "--mode=script", "volume", "start", self.gluster.volume, "force"],
            capture_output=True,
            timeout=60,
            check=False,
        )

    def do_unmount(self, step: model.Step) -> None:
        node = str(step.arg("node"))
        found = sorted(m.target for m in self.mounts() if m.node == node)
        if found:
            target = found[int(step.arg("pick")) % len(found)]
            subprocess.run(["umount", "-l", target], capture_output=True, timeout=30, check=False)
            self.pulled.add(node)

    def do_pool_destroy(self, step: model.Step) -> None:
        for name in self.libvirt_pools(active_only=True):
            fixtures_libvirt.virsh("pool-destroy", name, check=False)
            return

    def do_fill(self, step: model.Step) -> None:
        node = str(step.arg("node"))
        posix = {self.devices[s] for s in ("posixfs-0", "posixfs-1")}
        found = sorted(m.target for m in self.mounts() if m.node == node and m.source in posix)
        if not found:
            return
        target = found[int(step.arg("pick")) % len(found)]
        path = os.path.join(target, "soak-fill")
        st = os.statvfs(target)
        with contextlib.suppress(OSError), open(path, "wb") as f:
            os.posix_fallocate(f.fileno(), 0, st.f_bavail * st.f_frsize)
        time.sleep(4)
        with contextlib.suppress(OSError):
            os.unlink(path)

    # ------------------------------------------------------------------ facts

    def mounts(self) -> list[model.Mount]:
        out = []
        for rec in mounts.read_mounts():
            for node, agent in self.cluster.agents.items():
                base = agent.mount_base.rstrip("/") + "/"
                if rec.target.startswith(base):
                    out.append(model.Mount(node, rec.target, rec.canonical_source or rec.source))
        return out

    def links(self, node: str) -> list[str]:
        base = self.cluster.agents[node].mount_base
        return sorted(e.path for e in os.scandir(base) if e.is_symlink())

    def libvirt_pools(self, *, active_only: bool) -> list[str]:
        args = ["pool-list", "--name"] + ([] if active_only else ["--all"])
        out = fixtures_libvirt.virsh(*args, check=False)
        return sorted(n for n in out.split() if n.startswith(self.prefix))

    def node_labels(self) -> dict[str, dict[str, str]]:
        data = self.cluster.get("nodes") or {"items": []}
        return {i["metadata"]["name"]: i["metadata"].get("labels") or {} for i in data["items"]}

    def children(self) -> tuple[list[model.Child], list[dict[str, Any]]]:
        data = self.cluster.get("storagenodestates") or {"items": []}
        out = []
        for item in data["items"]:
            labels = item["metadata"].get("labels") or {}
            st = item.get("status") or {}
            reasons = tuple(str(c.get("reason") or "") for c in st.get("conditions") or [])
            out.append(
                model.Child(
                    labels.get("hoststorage.io/kind", ""),
                    labels.get("hoststorage.io/parent", ""),
                    item["spec"]["nodeName"],
                    str(st.get("phase") or ""),
                    int(st.get("observedGeneration") or 0),
                    reasons,
                )
            )
        return out, data["items"]

    def parents(self, labels: dict[str, dict[str, str]]) -> tuple[list[model.Parent], set[str]]:
        out, present = [], set()
        for kind, res in RESOURCE.items():
            data = self.cluster.get(res) or {"items": []}
            for item in data["items"]:
                meta = item["metadata"]
                present.add(meta["name"])
                sel = selector_mod.parse((item.get("spec") or {}).get("nodeSelector"))
                chosen = tuple(sorted(n for n, lab in labels.items() if sel.matches(lab)))
                out.append(
                    model.Parent(
                        kind,
                        meta["name"],
                        int(meta.get("generation") or 0),
                        chosen,
                        item.get("status") or {},
                        tuple(meta.get("finalizers") or []),
                        bool(meta.get("deletionTimestamp")),
                    )
                )
        return out, present

    def usage_of(self, agent: fixtures_kube.NodeAgent) -> model.Usage | None:
        if not agent.alive() or agent.popen is None:
            return None
        pid = agent.popen.pid
        try:
            threads = len(os.listdir(f"/proc/{pid}/task"))
            fds = len(os.listdir(f"/proc/{pid}/fd"))
            rss = 0
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        rss = int(line.split()[1])
        except OSError:
            return None
        kids = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
        return model.Usage(threads, fds, len(kids.stdout.split()), rss)

    # ------------------------------------------------------------------ invariants

    def continuous(self) -> list[model.Violation]:
        found = model.double_mounts(self.mounts())
        for node, agent in self.cluster.agents.items():
            with self.lock:
                if node in self.busy or not agent.alive():
                    continue
            started = time.monotonic()
            try:
                url = f"http://127.0.0.1:{agent.health_port}/healthz"
                with urllib.request.urlopen(url, timeout=self.args.health_bound + 2) as r:
                    r.read()
                took: float | None = time.monotonic() - started
            except (OSError, urllib.error.URLError):
                took = None
            with self.lock:
                if node in self.busy or not agent.alive():
                    continue
            found += model.slow_health(agent.name, took, self.args.health_bound)
        return found

    def eventual(self) -> tuple[list[model.Violation], str]:
        """The invariants that must hold once the world has converged, and the facts they were read from."""
        labels = self.node_labels()
        parents, present = self.parents(labels)
        children, raw = self.children()
        found = model.status_mismatch(parents, children, READY)
        found += model.stuck({obj_name(s) for s in self.deleted}, present)
        wanted_live = {obj_name(s) for s in self.live}
        found += [model.Violation("unexpected-object", p.name) for p in parents if p.name not in wanted_live]
        found += [model.Violation("missing-object", n) for n in sorted(wanted_live - present)]
        # the host matches the children's details
        mounts_now = self.mounts()
        want_mounts, want_links, want_probes = set(), set(), set()
        probe_dirs = {str(self.cluster.allowed / "localfs-0"), self.gluster.brick_dir}
        for item in raw:
            st = item.get("status") or {}
            node = item["spec"]["nodeName"]
            conn = st.get("connection") or {}
            pool = st.get("pool") or {}
            if conn.get("mountPoint"):
                (want_links if conn.get("type") == "localfs" else want_mounts).add(
                    f"{node}:{conn['mountPoint']}"
                )
            if pool.get("type") == "fs" and pool.get("targetPath"):
                want_mounts.add(f"{node}:{pool['targetPath']}")
                probe_dirs.add(pool["targetPath"])
        for p in parents:
            if p.kind != "DomainMonitor" or p.deleting:
                continue
            target = DEPENDS[p.name.removeprefix("soak-")]
            where = (
                str(self.cluster.allowed / "localfs-0")
                if target == "localfs-0"
                else self.gluster.brick_dir
                if target == "gluster-0"
                else None
            )
            for node in p.selected:
                if where is not None:
                    want_probes.add(os.path.join(where, f".hoststorage-probe-{node}"))
                else:
                    pool_child = next(
                        (
                            i
                            for i in raw
                            if i["spec"]["nodeName"] == node
                            and (i.get("status") or {}).get("pool", {}).get("type") == "fs"
                        ),
                        None,
                    )
                    tp = ((pool_child or {}).get("status") or {}).get("pool", {}).get("targetPath")
                    if tp:
                        want_probes.add(os.path.join(tp, f".hoststorage-probe-{node}"))
        found += model.unwanted("mount", {f"{m.node}:{m.target}" for m in mounts_now}, want_mounts)
        # nothing outside the roots touched: no mount outside the mount bases, the bystanders unchanged
        bases = [a.mount_base for a in self.cluster.agents.values()]
        found += model.outside_roots(str(self.workdir), [r.target for r in mounts.read_mounts()], bases)
        found += model.touched(trust_world.diff(self.bystanders, trust_world.snapshot(self.bystander)))
        found += model.unwanted(
            "link", {f"{n}:{x}" for n in self.cluster.agents for x in self.links(n)}, want_links
        )
        probes = set()
        for d in probe_dirs:
            with contextlib.suppress(OSError):
                probes |= {os.path.join(d, e) for e in os.listdir(d) if e.startswith(model.PROBE_PREFIX)}
        self.orphans = model.orphaned_probes(probes, want_probes, self.pulled)
        found += model.unwanted("probe", probes - self.orphans, want_probes)
        want_pools = {
            self.prefix + s
            for s in self.live
            if s in model.POOLS and any(lab.get(model.POOL_LABEL) == "yes" for lab in labels.values())
        }
        found += model.unwanted("pool", self.libvirt_pools(active_only=False), want_pools)
        found += model.unwanted("running-pool", self.libvirt_pools(active_only=True), want_pools)
        # every node's ledger owns what its live selected objects made, nothing else
        for node, agent in self.cluster.agents.items():
            path = os.path.join(agent.state_dir, "ledger.json")
            ledger: set[tuple[str, str]] = set()
            with contextlib.suppress(OSError, ValueError), open(path, encoding="utf-8") as f:
                ledger = {(e["kind"], e["name"]) for e in json.load(f)["entries"]}
            wanted = {(p.kind, p.name) for p in parents if node in p.selected and not p.deleting}
            kinds = {k for k, _ in ledger} | {"StorageConnection", "StoragePool"}
            found += model.ledger_mismatch(node, ledger, {w for w in wanted if w[0] in kinds})
        reasons = {r for c in children for r in c.reasons}
        reasons |= {str(c.get("reason") or "") for p in parents for c in p.status.get("conditions") or []}  # type: ignore[attr-defined]
        found += model.undocumented(reasons, model.documented_reasons(model.REASONS_DOC.read_text()))
        facts = json.dumps(
            {
                "labels": labels,
                "live": self.live,
                "deleted": sorted(self.deleted),
                "children": [c.__dict__ for c in children],
                "mounts": [m.__dict__ for m in mounts_now],
                "pools": self.libvirt_pools(active_only=False),
            },
            indent=1,
            default=str,
        )
        return found, facts

    def logs_clean(self) -> list[model.Violation]:
        found = []
        for proc in [*self.cluster.agents.values(), *self.controllers]:
            found += model.tracebacks(proc.name, proc.log_text())
        return found

    def sample_usage(self) -> list[model.Violation]:
        found = []
        for node, agent in self.cluster.agents.items():
            u = self.usage_of(agent)
            if u is None or agent.popen is None:
                continue
            samples = self.usage.setdefault((node, agent.popen.pid), [])
            samples.append(u)
            self.first_usage.setdefault(node, u)
            self.last_usage[node] = u
            # against the node's plateau after the warm-up: a restarted agent starts its code paths
            # again as objects need them and may not exceed what the warmed-up one had
            found += model.leaks(
                agent.name, self.baseline.get(node), u, model.leak_slack(os.cpu_count() or 1)
            )
        return found

    def warm_up(self) -> tuple[float, list[model.Violation], str]:
        """Every object of every kind, converged, then ``--warmup`` samples of each agent a few seconds
        apart: every code path (libvirt event loop and domain events, the monitor runtime and its check
        helper, VM resume, the work-queue threads) has started, so this is the plateau the leak check
        compares with. A baseline taken right after start-up would call every agent leaky."""
        for slot in model.SLOTS:
            self.put(slot, 0)
        took, found, facts = converge(self, self.args.converge_timeout)
        if found:
            return took, found, facts
        warm: dict[str, list[model.Usage]] = {}
        for i in range(self.args.warmup):
            if i:
                time.sleep(3)
            for node, agent in self.cluster.agents.items():
                u = self.usage_of(agent)
                if u is not None:
                    warm.setdefault(node, []).append(u)
        self.baseline = {node: model.plateau(samples, len(samples)) for node, samples in warm.items()}
        self.sample_usage()
        return took, found, facts


class Watcher(threading.Thread):
    """The continuous invariants, every second, until stopped; the first violations are kept."""

    def __init__(self, world: World) -> None:
        super().__init__(name="soak-watch", daemon=True)
        self.world = world
        self.stop = threading.Event()
        self.found: list[model.Violation] = []

    def run(self) -> None:
        while not self.stop.wait(1.0):
            try:
                got = self.world.continuous()
            except Exception as exc:
                got = [model.Violation("watcher", repr(exc))]
            if got:
                self.found += got
                return


def converge(world: World, timeout: float) -> tuple[float, list[model.Violation], str]:
    start = time.monotonic()
    found: list[model.Violation] = []
    facts = ""
    while True:
        world.ensure_libvirtd()
        found, facts = world.eventual()
        took = time.monotonic() - start
        if not found or took > timeout:
            return took, found, facts
        if int(took) // 30 != int(took + 2) // 30:
            print(f"soak: not converged after {took:.0f} s: {'; '.join(map(str, found[:4]))}", flush=True)
        time.sleep(1.0)


stopping = threading.Event()
"""SIGTERM or SIGINT: finish the burst under way and its quiet period, then stop with the summary."""


def _stop(signum: int, _frame: Any) -> None:
    print(f"soak: signal {signum}: stopping after this burst", flush=True)
    stopping.set()


def soak(args: argparse.Namespace, workdir: pathlib.Path) -> int:
    steps = model.schedule(
        args.seed, bursts=int(args.minutes * 3) + 2, rate=args.rate, burst_seconds=args.burst_seconds
    )
    done: list[model.Step] = []
    conv: list[float] = []
    violations: list[model.Violation] = []
    with contextlib.ExitStack() as stack:
        world = World(workdir, stack, args)
        world.start()
        watcher = Watcher(world)
        watcher.start()
        stack.callback(watcher.stop.set)
        took, found, facts = world.warm_up()
        if found:
            print(f"SOAK VIOLATION (seed {args.seed}) in the warm-up:", *found, facts, sep="\n")
            print(model.summary(world.counts, [], len(found)), flush=True)
            return 1
        print(
            f"soak: world up, every object converged in {took:.1f} s; plateaus "
            + ", ".join(f"{n} {b}" for n, b in sorted(world.baseline.items())),
            flush=True,
        )
        begun = time.monotonic()
        end = begun + args.minutes * 60
        burst = 0
        try:
            while time.monotonic() < end and not stopping.is_set():
                burst_start = time.monotonic()
                for step in (s for s in steps if s.burst == burst):
                    delay = burst_start + step.at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    print(f"soak: {step.line()}", flush=True)
                    done.append(step)
                    world.run_step(step)
                    if watcher.found:
                        raise Violations(watcher.found)
                took, found, facts = converge(world, args.converge_timeout)
                found += world.logs_clean() + world.sample_usage() + watcher.found
                if found:
                    raise Violations(found, facts)
                conv.append(took)
                for path in sorted(world.orphans):
                    print(f"soak: probe file left on storage whose mount was pulled away: {path}; removed")
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                world.orphans_removed += len(world.orphans)
                world.orphans, world.pulled = set(), set()
                print(f"soak: burst {burst} converged in {took:.1f} s", flush=True)
                burst += 1
        except Violations as exc:
            violations = exc.found
            print(f"SOAK VIOLATION (seed {args.seed}):", flush=True)
            for v in exc.found:
                print(f"  {v}")
            print("schedule so far:")
            for s in done:
                print(f"  {s.line()}")
            print("state:")
            print(exc.facts or world.eventual()[1])
            print(f"logs kept in {workdir}")
            args.keep = True
        except Exception as exc:
            traceback.print_exc(file=sys.stdout)
            violations = [model.Violation("harness-error", repr(exc))]
            print(f"SOAK HARNESS ERROR (seed {args.seed}): {exc!r}; logs kept in {workdir}", flush=True)
            args.keep = True
        finally:
            watcher.stop.set()
            for node, u in world.first_usage.items():
                last = world.last_usage.get(node, u)
                print(
                    f"soak: agent-{node}: rss {u.rss_kib} -> {last.rss_kib} KiB, fds {u.fds} -> {last.fds}, "
                    f"threads {u.threads} -> {last.threads}",
                    flush=True,
                )
            print(
                f"soak: probe files left on storage whose mount was pulled away (removed): "
                f"{world.orphans_removed}",
                flush=True,
            )
            for (node, pid), samples in sorted(world.usage.items()):
                # the trend per process: a leak grows with every fault, a plateau does not
                print(f"soak: agent-{node} pid {pid}: {model.trend(samples, args.warmup)}", flush=True)
            # the gluster volume goes away with the stack: no mount of it may outlive the agents
            for agent in world.cluster.agents.values():
                agent.stop(timeout=15)
    early = " (stopped early by a signal)" if stopping.is_set() else ""
    ran = (time.monotonic() - begun) / 60
    print(f"soak: seed {args.seed}: {ran:.1f} minutes, {len(conv)} quiet periods{early}")
    print(model.summary(world.counts, conv, len(violations)), flush=True)
    return 1 if violations else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="how long to inject (default 3)")
    parser.add_argument(
        "--seed", type=int, default=None, help="the schedule's seed (default: random, printed)"
    )
    parser.add_argument(
        "--rate", type=float, default=12.0, help="operations and faults a minute during bursts"
    )
    parser.add_argument("--burst-seconds", type=float, default=20.0, help="length of a burst (default 20)")
    parser.add_argument(
        "--converge-timeout",
        type=float,
        default=150.0,
        help="seconds a quiet period may take to converge (default 150)",
    )
    parser.add_argument(
        "--health-bound", type=float, default=3.0, help="seconds /healthz may take (default 3)"
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=2,
        help="samples after the warm-up that set each agent's plateau (default 2)",
    )
    parser.add_argument("--workdir", default=None, help="where the logs go (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work directory even on success")
    args = parser.parse_args()
    if args.seed is None:
        args.seed = random.SystemRandom().randrange(1, 1 << 31)
    print(f"soak: seed {args.seed}", flush=True)
    missing = fixtures_storage.gluster_missing()
    if missing:
        print(f"soak: cannot run here: {missing}", file=sys.stderr)
        return 2
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="hs-soak-"))
    workdir.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    out = open(workdir / "soak.out", "w", encoding="utf-8")  # noqa: SIM115 - closed below
    sys.stdout = Tee(sys.stdout, out)  # what is printed stays beside the logs it speaks of
    try:
        return soak(args, workdir)
    finally:
        sys.stdout = sys.__stdout__
        out.close()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


class Tee:
    """stdout to the terminal and to the work directory's soak.out."""

    def __init__(self, *streams: Any) -> None:
        self.streams = streams

    def write(self, text: str) -> int:
        for s in self.streams:
            s.write(text)
        return len(text)

    def flush(self) -> None:
        for s in self.streams:
            s.flush()


if __name__ == "__main__":
    sys.exit(main())
