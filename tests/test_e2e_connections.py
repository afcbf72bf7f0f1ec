"""StorageConnection end to end: kubectl -> API -> three real agents (real mounts) -> StorageNodeStates ->
the controller's roll-up and teardown finalizer. The issue's scenario list, one test each."""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import signal
import subprocess
import time
from typing import Any

import fixtures_kube
import pytest
from fixtures_kube import Cluster, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.host]


def uniq(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def sconn(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "hoststorage.io/v1alpha1",
        "kind": "StorageConnection",
        "metadata": {"name": name},
        "spec": spec,
    }


def localfs(cluster: Cluster, name: str, **extra: Any) -> dict[str, Any]:
    path = cluster.allowed / name
    path.mkdir(exist_ok=True)
    return sconn(name, {"type": "localfs", "localfs": {"path": str(path)}, **extra})


def posixfs(name: str, device: str, **extra: Any) -> dict[str, Any]:
    return sconn(name, {"type": "posixfs", "posixfs": {"source": device, "vfsType": "ext4"}, **extra})


def debug(cluster: Cluster) -> None:
    print(cluster.dump_logs())
    print(cluster.kubectl("get", "sconn", "-o", "yaml", check=False).stdout)
    print(cluster.kubectl("get", "sns", "-o", "yaml", check=False).stdout)


def wait_condition(cluster: Cluster, name: str, cond: str = "Ready", timeout: float = 60) -> None:
    proc = cluster.kubectl(
        "wait",
        f"--for=condition={cond}",
        f"storageconnection/{name}",
        f"--timeout={timeout:.0f}s",
        check=False,
        timeout=timeout + 10,
    )
    if proc.returncode != 0:
        debug(cluster)
    assert proc.returncode == 0, proc.stderr


def wait_status(cluster: Cluster, name: str, pred: Any, what: str, timeout: float = 60) -> dict[str, Any]:
    try:
        obj: dict[str, Any] = wait_until(
            lambda: (o := cluster.get("sconn", name)) and pred(o) and o, timeout, what
        )
    except AssertionError:
        debug(cluster)
        raise
    return obj


def wait_gone(cluster: Cluster, name: str, timeout: float = 60) -> None:
    proc = cluster.kubectl(
        "wait",
        "--for=delete",
        f"storageconnection/{name}",
        f"--timeout={timeout:.0f}s",
        check=False,
        timeout=timeout + 10,
    )
    if proc.returncode != 0 and "not found" not in proc.stderr:
        debug(cluster)
        raise AssertionError(proc.stderr)


def ledger_names(cluster: Cluster, node: str) -> list[str]:
    path = os.path.join(cluster.agents[node].state_dir, "ledger.json")
    if not os.path.exists(path):
        return []
    with open(path, encoding="utf-8") as f:
        return sorted(e["name"] for e in json.load(f)["entries"])


def mounts_of(cluster: Cluster, node: str, device: str | None = None) -> list[str]:
    base = cluster.agents[node].mount_base
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8") as f:
        for line in f:
            fields = line.split()
            target = fields[4].encode().decode("unicode_escape")
            source = fields[fields.index("-") + 2]
            if target.startswith(base + "/") and (device is None or source == device):
                out.append(target)
    return out


def delete(cluster: Cluster, name: str) -> None:
    cluster.kubectl("delete", "sconn", name, "--wait=false", "--ignore-not-found")


# ---------------------------------------------------------------------------------------------- tests


def test_localfs_apply_reaches_ready_on_every_node(kube_cluster: Cluster) -> None:
    name = uniq("local")
    kube_cluster.apply(localfs(kube_cluster, name))
    wait_condition(kube_cluster, name)
    obj = kube_cluster.get("storageconnection", name)
    assert obj["status"]["readyNodes"] == "3/3"
    assert obj["status"]["observedGeneration"] == obj["metadata"]["generation"]
    assert "hoststorage.io/teardown" in obj["metadata"]["finalizers"]
    states = kube_cluster.states(name)
    assert sorted(states) == kube_cluster.nodes
    for node, st in states.items():
        assert st["status"]["phase"] == "Connected"
        assert st["metadata"]["ownerReferences"][0]["kind"] == "Node"
        assert st["metadata"]["labels"]["hoststorage.io/node"] == node
        assert os.path.islink(st["status"]["connection"]["mountPoint"])
    assert "3/3" in kube_cluster.kubectl("get", "sconn", name).stdout
    delete(kube_cluster, name)
    wait_gone(kube_cluster, name)


def test_posixfs_loop_ready_then_delete_tears_down_everywhere(
    kube_cluster: Cluster, loop_device: Any
) -> None:
    dev = loop_device("ext4")
    name = uniq("posix")
    kube_cluster.apply(posixfs(name, dev))
    wait_condition(kube_cluster, name)
    for node in kube_cluster.nodes:
        assert len(mounts_of(kube_cluster, node, dev)) == 1, node
    delete(kube_cluster, name)
    wait_gone(kube_cluster, name)
    for node in kube_cluster.nodes:
        wait_until(lambda n=node: not mounts_of(kube_cluster, n, dev), 30, f"{node} unmounted")
        assert name not in ledger_names(kube_cluster, node)
    wait_until(lambda: not kube_cluster.states(name), 30, "children deleted")


def test_glusterfs_ready_on_every_node(kube_cluster: Cluster, gluster_volume: Any) -> None:
    name = uniq("gluster")
    kube_cluster.apply(
        sconn(
            name,
            {
                "type": "glusterfs",
                "glusterfs": {"server": gluster_volume.server, "volume": gluster_volume.volume},
            },
        )
    )
    wait_condition(kube_cluster, name, timeout=90)
    for node in kube_cluster.nodes:
        assert any("glusterSD" in m for m in mounts_of(kube_cluster, node)), node
    delete(kube_cluster, name)
    wait_gone(kube_cluster, name)
    for node in kube_cluster.nodes:
        wait_until(
            lambda n=node: (
                not any("glusterSD" in m and gluster_volume.volume in m for m in mounts_of(kube_cluster, n))
            ),
            30,
            f"{node} unmounted",
        )


def test_node_selector_and_relabelling(kube_cluster: Cluster) -> None:
    key = f"e2e-{secrets.token_hex(3)}"
    a, b, c = kube_cluster.nodes
    name = uniq("sel")
    try:
        kube_cluster.kubectl("label", "node", a, b, f"{key}=yes")
        kube_cluster.apply(localfs(kube_cluster, name, nodeSelector={"matchLabels": {key: "yes"}}))
        wait_condition(kube_cluster, name)
        assert kube_cluster.get("sconn", name)["status"]["readyNodes"] == "2/2"
        assert sorted(kube_cluster.states(name)) == [a, b]
        assert name not in ledger_names(kube_cluster, c)

        kube_cluster.kubectl("label", "node", c, f"{key}=yes")
        wait_status(
            kube_cluster, name, lambda o: o["status"].get("readyNodes") == "3/3", "3/3 after labelling"
        )
        assert name in ledger_names(kube_cluster, c)

        kube_cluster.kubectl("label", "node", a, f"{key}-")
        wait_status(
            kube_cluster, name, lambda o: o["status"].get("readyNodes") == "2/2", "2/2 after unlabelling"
        )
        wait_until(lambda: name not in ledger_names(kube_cluster, a), 30, "torn down on the unlabelled node")
        wait_until(
            lambda: sorted(kube_cluster.states(name)) == [b, c], 30, "child of the unlabelled node gone"
        )
    finally:
        kube_cluster.kubectl("label", "node", *kube_cluster.nodes, f"{key}-", check=False)
        delete(kube_cluster, name)
    wait_gone(kube_cluster, name)


def test_spec_change_moves_observed_generation(kube_cluster: Cluster, loop_device: Any) -> None:
    dev = loop_device("ext4")
    name = uniq("gen")
    kube_cluster.apply(posixfs(name, dev))
    wait_condition(kube_cluster, name)
    first = kube_cluster.get("sconn", name)
    assert first["status"]["observedGeneration"] == first["metadata"]["generation"]
    kube_cluster.kubectl(
        "patch",
        "sconn",
        name,
        "--type=merge",
        "-p",
        json.dumps({"spec": {"posixfs": {"options": ["noatime"]}}}),
    )
    second = wait_status(
        kube_cluster,
        name,
        lambda o: (
            o["metadata"]["generation"] > first["metadata"]["generation"]
            and o["status"].get("observedGeneration") == o["metadata"]["generation"]
            and o["status"].get("readyNodes") == "3/3"
        ),
        "observedGeneration follows",
    )
    for st in kube_cluster.states(name).values():
        assert st["status"]["observedGeneration"] == second["metadata"]["generation"]
    # Label and annotation edits are not spec changes: the generation stays.
    kube_cluster.kubectl("label", "sconn", name, "team=storage")
    assert kube_cluster.get("sconn", name)["metadata"]["generation"] == second["metadata"]["generation"]
    delete(kube_cluster, name)
    wait_gone(kube_cluster, name)


def test_bad_spec_is_invalid_on_every_node_and_host_untouched(kube_cluster: Cluster) -> None:
    name = uniq("bad")
    before = {
        n: (sorted(os.listdir(a.mount_base)), ledger_names(kube_cluster, n))
        for n, a in kube_cluster.agents.items()
    }
    # Schema-valid, but outside every allowed host path: only the agent can refuse it.
    kube_cluster.apply(sconn(name, {"type": "localfs", "localfs": {"path": "/etc"}}))
    obj = wait_status(
        kube_cluster, name, lambda o: o.get("status", {}).get("failed") == 3, "failed on 3 nodes"
    )
    degraded = next(c for c in obj["status"]["conditions"] if c["type"] == "Degraded")
    assert (degraded["status"], degraded["reason"]) == ("True", "InvalidSpec")
    assert len(obj["status"]["failingNodes"]) == 3
    for st in kube_cluster.states(name).values():
        ready = next(c for c in st["status"]["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "InvalidSpec"
    after = {
        n: (sorted(os.listdir(a.mount_base)), ledger_names(kube_cluster, n))
        for n, a in kube_cluster.agents.items()
    }
    assert after == before
    events = json.loads(kube_cluster.kubectl("get", "events", "-A", "-o", "json").stdout)["items"]
    warned = {
        e["source"].get("host")
        for e in events
        if e["involvedObject"]["name"] == name and e["reason"] == "InvalidSpec" and e["type"] == "Warning"
    }
    assert warned == set(kube_cluster.nodes)
    delete(kube_cluster, name)
    wait_gone(kube_cluster, name)


def test_retain_leaves_mounts(kube_cluster: Cluster, loop_device: Any) -> None:
    dev = loop_device("ext4")
    name = uniq("retain")
    kube_cluster.apply(posixfs(name, dev, deletionPolicy="Retain"))
    wait_condition(kube_cluster, name)
    delete(kube_cluster, name)
    wait_gone(kube_cluster, name)
    for node in kube_cluster.nodes:
        assert len(mounts_of(kube_cluster, node, dev)) == 1, node
        assert name not in ledger_names(kube_cluster, node)
        for target in mounts_of(kube_cluster, node, dev):
            subprocess.run(["umount", target], check=True)


def test_drift_is_repaired_and_counted(kube_cluster: Cluster, loop_device: Any) -> None:
    dev = loop_device("ext4")
    name = uniq("drift")
    kube_cluster.apply(posixfs(name, dev))
    wait_condition(kube_cluster, name)
    node = kube_cluster.nodes[0]
    agent = kube_cluster.agents[node]

    def repairs() -> float:
        m = re.search(r'^hoststorage_repairs_total\{kind="StorageConnection"\} (\S+)$', agent.metrics(), re.M)
        return float(m.group(1)) if m else 0.0

    before = repairs()
    (target,) = mounts_of(kube_cluster, node, dev)
    subprocess.run(["umount", target], check=True)
    wait_until(lambda: mounts_of(kube_cluster, node, dev) == [target], 30, "the mount restored by resync")
    wait_until(lambda: repairs() >= before + 1, 10, "the repair counted")
    assert "drift repaired" in agent.log_text()
    events = json.loads(kube_cluster.kubectl("get", "events", "-A", "-o", "json").stdout)["items"]
    assert any(e["reason"] == "DriftRepaired" and e["involvedObject"]["name"] == name for e in events)
    delete(kube_cluster, name)
    wait_gone(kube_cluster, name)


def test_deleted_node_does_not_block_delete(kube_cluster: Cluster) -> None:
    name = uniq("gone")
    node = kube_cluster.nodes[2]
    agent = kube_cluster.agents[node]
    kube_cluster.apply(localfs(kube_cluster, name))
    wait_condition(kube_cluster, name)
    try:
        agent.stop()
        delete(kube_cluster, name)
        obj = wait_status(
            kube_cluster,
            name,
            lambda o: (
                [n for n, s in kube_cluster.states(name).items() if s["status"]["phase"] == "Detached"]
                == sorted(kube_cluster.nodes[:2])
            ),
            "two nodes detached",
        )
        assert "hoststorage.io/teardown" in obj["metadata"]["finalizers"]  # node-c still holds it
        kube_cluster.kubectl("delete", "node", node)
        wait_gone(kube_cluster, name)
        events = kube_cluster.kubectl("get", "events", "-A", "-o", "json").stdout
        assert kube_cluster.controller is not None
        print("\n".join(ln for ln in kube_cluster.controller.log_text().splitlines() if name in ln))
        assert any(
            e["reason"] == "NodesSkipped" and node in e["message"] and e["involvedObject"]["name"] == name
            for e in json.loads(events)["items"]
        )
    finally:
        kube_cluster.create_node(node, {"hoststorage.io/e2e": "yes"})
        agent.start()
        kube_cluster.wait_ready(agent)
    # The agent comes back to a ledger entry whose parent is gone: it tears it down.
    wait_until(lambda: name not in ledger_names(kube_cluster, node), 30, "orphan torn down on restart")


def test_agent_killed_mid_connect_converges(kube_cluster: Cluster, gluster_volume: Any) -> None:
    name = uniq("kill")
    node = kube_cluster.nodes[1]
    agent = kube_cluster.agents[node]
    kube_cluster.apply(
        sconn(
            name,
            {
                "type": "glusterfs",
                "glusterfs": {"server": gluster_volume.server, "volume": gluster_volume.volume},
            },
        )
    )
    # The ledger entry is written ahead of the mount: kill the agent the moment it appears.
    wait_until(lambda: name in ledger_names(kube_cluster, node), 60, "connect started", interval=0.02)
    agent.signal(signal.SIGKILL)
    agent.popen.wait(10)  # type: ignore[union-attr]
    agent.start()
    try:
        wait_condition(kube_cluster, name, timeout=90)
        glusters = [m for m in mounts_of(kube_cluster, node) if gluster_volume.volume in m]
        assert len(glusters) == 1, glusters
        st = kube_cluster.states(name)[node]
        assert st["status"]["phase"] == "Connected"
    finally:
        kube_cluster.wait_ready(agent)
        delete(kube_cluster, name)
    wait_gone(kube_cluster, name)


def test_sigterm_is_graceful_and_leaves_mounts(kube_cluster: Cluster, loop_device: Any) -> None:
    dev = loop_device("ext4")
    name = uniq("term")
    node = kube_cluster.nodes[0]
    agent = kube_cluster.agents[node]
    kube_cluster.apply(posixfs(name, dev))
    wait_condition(kube_cluster, name)
    agent.signal(signal.SIGUSR1)
    wait_until(lambda: "state dump" in agent.log_text(), 10, "SIGUSR1 state dump")
    started = time.monotonic()
    assert agent.stop(timeout=30) == 0
    assert time.monotonic() - started < 25
    assert len(mounts_of(kube_cluster, node, dev)) == 1
    # A leftover of a run that died between mkdir and mount: removed at start-up, the mount stays.
    leftover = os.path.join(agent.mount_base, "stale-leftover")
    os.mkdir(leftover)
    agent.start()
    kube_cluster.wait_ready(agent)
    assert not os.path.exists(leftover)
    assert len(mounts_of(kube_cluster, node, dev)) == 1
    delete(kube_cluster, name)
    wait_gone(kube_cluster, name)


def test_api_outage_keeps_host_state_and_catches_up(kube_cluster: Cluster, loop_device: Any) -> None:
    if kube_cluster.runner is None:
        pytest.skip("stopping the API server needs the emulator")
    dev = loop_device("ext4")
    name = uniq("outage")
    kube_cluster.apply(posixfs(name, dev))
    wait_condition(kube_cluster, name)
    node = kube_cluster.nodes[0]
    (target,) = mounts_of(kube_cluster, node, dev)
    kube_cluster.runner.stop()
    try:
        time.sleep(5)
        # Drift during the outage is still repaired: the agent works from what it knows.
        subprocess.run(["umount", target], check=True)
        wait_until(lambda: mounts_of(kube_cluster, node, dev) == [target], 30, "repaired without the API")
        time.sleep(25)
        for n in kube_cluster.nodes:
            assert len(mounts_of(kube_cluster, n, dev)) == 1
            assert kube_cluster.agents[n].alive()
        assert kube_cluster.controller is not None and kube_cluster.controller.alive()
    finally:
        kube_cluster.runner.start()
    late = uniq("late")
    kube_cluster.apply(localfs(kube_cluster, late))
    wait_condition(kube_cluster, late, timeout=90)
    assert kube_cluster.get("sconn", name)["status"]["readyNodes"] == "3/3"
    for n in (name, late):
        delete(kube_cluster, n)
    for n in (name, late):
        wait_gone(kube_cluster, n, timeout=90)



def test_an_agent_restarted_into_an_api_outage_writes_its_monitors_result(kube_cluster: Cluster) -> None:
    """The chaos soak's finding (issue 14, seed 2122039873): an agent SIGKILLed and started again while
    the API was away must still write what its monitors find once the API is back, and log no traceback.
    The storage changes while the agent is down, so only a fresh result can be right."""
    if kube_cluster.runner is None:
        pytest.skip("stopping the API server needs the emulator")
    node = kube_cluster.nodes[0]
    agent = kube_cluster.agents[node]
    target = kube_cluster.allowed / uniq("restart-target")
    target.mkdir()
    mon = uniq("restart-dm")
    kube_cluster.apply({
        "apiVersion": "hoststorage.io/v1alpha1", "kind": "DomainMonitor", "metadata": {"name": mon},
        "spec": {"target": {"hostPath": str(target)}, "intervalSeconds": 2,
                 "nodeSelector": {"matchLabels": {"kubernetes.io/hostname": node}}},
    })  # fmt: skip

    def phase() -> str | None:
        st = kube_cluster.states(mon, kind="DomainMonitor").get(node) or {}
        return (st.get("status") or {}).get("phase")

    wait_until(lambda: phase() == "Healthy", 60, "the monitor Healthy")
    (probe,) = [p for p in target.iterdir() if p.is_file()]
    log_before = len(agent.log_text())
    agent.kill()
    kube_cluster.runner.stop()
    try:
        probe.unlink()  # the storage lost the probe while nobody watched
        agent.start()
        time.sleep(9)
    finally:
        kube_cluster.runner.start()
    try:
        wait_until(lambda: phase() == "Invalid", 60, "the restarted agent's result written")
        time.sleep(6)  # three check intervals: it stays what the checks find
        assert phase() == "Invalid"
        new_log = agent.log_text()[log_before:]
        assert "Traceback" not in new_log, new_log[-4000:]
    finally:
        kube_cluster.kubectl("delete", "dmon", mon, "--timeout=60s", check=False)

def test_leader_election_one_active_replica(kube_cluster: Cluster) -> None:
    lease = f"hs-lease-{secrets.token_hex(3)}"
    replicas = []
    for i in range(2):
        proc = kube_cluster.start_controller(
            f"replica-{i}",
            extra=["--leader-election", "--lease-name", lease],
            env={"HOSTSTORAGE_LEASE_SECONDS": "4", "POD_NAME": f"replica-{i}"},
        )
        replicas.append(proc)
    try:

        def leaders() -> list[str]:
            return [p.name for p in replicas if p.probe("/readyz")[1].get("leader")]

        first = wait_until(lambda: (ls := leaders()) and len(ls) == 1 and ls, 30, "one leader")
        time.sleep(3)
        assert leaders() == first  # the other keeps standing by while the lease is renewed
        leader = next(p for p in replicas if p.name == first[0])
        leader.kill()
        wait_until(lambda: leaders() not in ([], first), 30, "the standby takes over")
    finally:
        for p in replicas:
            p.stop()


def test_domain_monitor_on_a_connection_through_the_agent(kube_cluster: Cluster) -> None:
    """DomainMonitor plugs in by registration: the agent runs it on its monitor runtime."""
    conn = uniq("dmconn")
    mon = uniq("dm")
    kube_cluster.apply(localfs(kube_cluster, conn))
    kube_cluster.apply(
        {
            "apiVersion": "hoststorage.io/v1alpha1",
            "kind": "DomainMonitor",
            "metadata": {"name": mon},
            "spec": {"target": {"connectionRef": {"name": conn}}, "intervalSeconds": 2},
        }
    )
    proc = kube_cluster.kubectl(
        "wait", "--for=condition=Ready", f"domainmonitor/{mon}", "--timeout=60s", check=False, timeout=70
    )
    if proc.returncode != 0:
        debug(kube_cluster)
        print(kube_cluster.kubectl("get", "dmon", mon, "-o", "yaml", check=False).stdout)
    assert proc.returncode == 0, proc.stderr
    states = kube_cluster.states(mon, kind="DomainMonitor")
    assert sorted(states) == kube_cluster.nodes
    # The storage loses the probe files behind the agents' backs: every node goes Invalid and says so
    # in a Warning Event (a transition), while the monitor stays served.
    # The connection's directory was created empty: whatever is in it now are the monitors' probes.
    probes = [p for p in (kube_cluster.allowed / conn).rglob("*") if p.is_file()]
    assert probes, "the monitors created no probe file"
    for probe in probes:
        probe.unlink()

    def invalid_events() -> set[str]:
        items = json.loads(kube_cluster.kubectl("get", "events", "-A", "-o", "json").stdout)["items"]
        return {
            e["message"].split(":", 1)[0]
            for e in items
            if e["involvedObject"]["name"] == mon and e["reason"] == "Invalid" and e["type"] == "Warning"
        }

    wait_until(lambda: invalid_events() == set(kube_cluster.nodes), 30, "an Invalid Event from every node")
    # The connection is in use by the monitor: deleting both tears down the monitor first.
    kube_cluster.kubectl("delete", "dmon", mon, "--wait=false")
    delete(kube_cluster, conn)
    kube_cluster.kubectl(
        "wait", "--for=delete", f"domainmonitor/{mon}", "--timeout=60s", check=False, timeout=70
    )
    wait_gone(kube_cluster, conn)
    for node in kube_cluster.nodes:
        wait_until(lambda n=node: not {conn, mon} & set(ledger_names(kube_cluster, n)), 30, "ledger empty")


def test_preflight_is_posted_as_a_node_event(kube_cluster: Cluster) -> None:
    events = json.loads(kube_cluster.kubectl("get", "events", "-A", "-o", "json").stdout)["items"]
    nodes = {e["involvedObject"]["name"] for e in events if e["reason"] == "HostPreflight"}
    assert nodes >= set(kube_cluster.nodes)
    status, body = kube_cluster.agents[kube_cluster.nodes[0]].probe("/readyz")
    assert status == 200 and body["initialRefreshDone"] is True
    assert any("nfs" in p for p in body["unsupported"])  # this kernel has no NFS client


def test_agent_without_node_name_fails_clearly(tmp_path: Any) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NODE_NAME", "HOSTSTORAGE_NODE_NAME")}
    proc = subprocess.run(
        [fixtures_kube.HOSTSTORAGE, "--state-dir", str(tmp_path), "agent"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "NODE_NAME" in proc.stderr and "Traceback" not in proc.stderr


def test_storage_pool_on_a_connection_through_the_agent(kube_cluster: Cluster, libvirtd: str) -> None:
    """StoragePool plugs in by registration. One node only: the simulated nodes share this host's libvirtd.

    The agents may have started before this test's ``libvirtd`` fixture did (a fresh machine has no
    libvirtd running): their pool layer then reconnects on its own, which this test also covers."""
    node = kube_cluster.nodes[0]
    only = {"matchLabels": {"kubernetes.io/hostname": node}}
    conn, pool = uniq("poolconn"), uniq("pool")
    kube_cluster.apply(localfs(kube_cluster, conn, nodeSelector=only))
    kube_cluster.apply(
        {
            "apiVersion": "hoststorage.io/v1alpha1",
            "kind": "StoragePool",
            "metadata": {"name": pool},
            "spec": {"nodeSelector": only, "connectionRef": {"name": conn, "path": "images"}},
        }
    )
    proc = kube_cluster.kubectl(
        "wait", "--for=condition=Ready", f"storagepool/{pool}", "--timeout=90s", check=False, timeout=100
    )
    if proc.returncode != 0:
        debug(kube_cluster)
        print(kube_cluster.kubectl("get", "spool", pool, "-o", "yaml", check=False).stdout)
    assert proc.returncode == 0, proc.stderr
    assert sorted(kube_cluster.states(pool, kind="StoragePool")) == [node]
    assert kube_cluster.get("spool", pool)["status"]["readyNodes"] == "1/1"

    def active() -> bool:
        out = subprocess.run(
            ["virsh", "-c", "qemu:///system", "pool-info", pool],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        ).stdout
        return bool(re.search(r"^State:\s+running", out, re.M))

    # Stopped behind the agent's back: the libvirt event (or the resync) starts it again.
    assert active()
    subprocess.run(
        ["virsh", "-c", "qemu:///system", "pool-destroy", pool], capture_output=True, check=True, timeout=30
    )
    wait_until(active, 30, "the pool restarted")
    kube_cluster.kubectl("delete", "spool", pool, "--wait=false")
    delete(kube_cluster, conn)
    kube_cluster.kubectl(
        "wait", "--for=delete", f"storagepool/{pool}", "--timeout=60s", check=False, timeout=70
    )
    wait_gone(kube_cluster, conn)
    wait_until(lambda: not {conn, pool} & set(ledger_names(kube_cluster, node)), 30, "ledger empty")
    listed = subprocess.run(
        ["virsh", "-c", "qemu:///system", "pool-list", "--all", "--name"],
        capture_output=True,
        text=True,
        check=False,
        timeout=30,
    ).stdout
    assert pool not in listed


def test_notready_node_past_grace_does_not_block_delete(kube_cluster: Cluster) -> None:
    name = uniq("notready")
    node = kube_cluster.nodes[2]
    agent = kube_cluster.agents[node]
    kube_cluster.apply(localfs(kube_cluster, name))
    wait_condition(kube_cluster, name)
    agent.stop()
    long_ago = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - 600))
    notready = {
        "status": {
            "conditions": [
                {
                    "type": "Ready",
                    "status": "Unknown",
                    "reason": "NodeStatusUnknown",
                    "lastTransitionTime": long_ago,
                    "message": "kubelet stopped posting",
                }
            ]
        }
    }
    try:
        kube_cluster.kubectl(
            "patch", "node", node, "--subresource=status", "--type=merge", "-p", json.dumps(notready)
        )
        delete(kube_cluster, name)
        wait_gone(kube_cluster, name)  # the controller's grace here is 20 s; this node is 10 min NotReady
        events = json.loads(kube_cluster.kubectl("get", "events", "-A", "-o", "json").stdout)["items"]
        assert any(
            e["reason"] == "NodesSkipped" and node in e["message"] and e["involvedObject"]["name"] == name
            for e in events
        )
    finally:
        ready = {
            "status": {
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "lastTransitionTime": long_ago,
                        "message": "",
                    }
                ]
            }
        }
        kube_cluster.kubectl(
            "patch", "node", node, "--subresource=status", "--type=merge", "-p", json.dumps(ready)
        )
        agent.start()
        kube_cluster.wait_ready(agent)
    wait_until(lambda: name not in ledger_names(kube_cluster, node), 30, "orphan torn down on restart")


def test_profiling_on_demand(kube_cluster: Cluster, tmp_path: Any) -> None:
    node = "node-prof" if kube_cluster.runner is not None else f"{kube_cluster.nodes[0][:-1]}prof"
    if kube_cluster.runner is not None:
        kube_cluster.runner.add_endpoint(node)
        kube_cluster.kubeconfigs[node] = str(kube_cluster.runner.write_kubeconfig(tmp_path / "kc", node))
    else:
        kube_cluster.kubeconfigs[node] = kube_cluster.kubeconfigs["kubectl"]
    kube_cluster.create_node(node)
    agent = kube_cluster.agent(node)
    agent.argv += ["--profile-dir", str(tmp_path / "prof")]
    agent.start()
    try:
        kube_cluster.wait_ready(agent)
        agent.signal(signal.SIGUSR1)
        wait_until(lambda: list((tmp_path / "prof").glob("agent-*.prof")), 15, "CPU profile on SIGUSR1")
        assert agent.stop() == 0
        assert list((tmp_path / "prof").glob("agent-*.mem.txt"))
    finally:
        agent.stop()
        del kube_cluster.agents[node]
        kube_cluster.kubectl("delete", "node", node, "--wait=false")


def test_chap_secret_is_read_from_the_agents_namespace_and_never_shown(kube_cluster: Cluster) -> None:
    """The agent serves chapSecretRef from Secrets of its own namespace (here ``default``).

    This kernel has no iSCSI initiator, so the login itself fails; what matters is that it gets that far
    (the Secret was found and used: no SecretNotFound), that a reference into another namespace is an
    InvalidSpec, and that the password shows up nowhere.
    """
    node = kube_cluster.nodes[0]
    only = {"matchLabels": {"kubernetes.io/hostname": node}}
    secret, ok, foreign = uniq("chap"), uniq("chapok"), uniq("chapns")
    password = "pw-" + secrets.token_hex(8)
    kube_cluster.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": secret, "namespace": "default"},
            # data, not stringData: the emulator does not fold stringData into data as the API server does.
            "data": {
                "username": base64.b64encode(b"hsuser").decode(),
                "password": base64.b64encode(password.encode()).decode(),
            },
        }
    )
    iscsi = {"portal": "127.0.0.1:3260", "target": "iqn.2026-11.io.hoststorage:e2e", "lun": 1}
    kube_cluster.apply(
        sconn(ok, {"type": "iscsi", "nodeSelector": only,
                   "iscsi": {**iscsi, "chapSecretRef": {"name": secret}}})
    )
    kube_cluster.apply(
        sconn(foreign, {"type": "iscsi", "nodeSelector": only,
                        "iscsi": {**iscsi, "chapSecretRef": {"name": secret, "namespace": "kube-system"}}})
    )

    def reason(name: str) -> str | None:
        st = kube_cluster.states(name).get(node)
        return ((st or {}).get("status") or {}).get("conditions", [{}])[0].get("reason")

    wait_until(lambda: reason(ok) not in (None, "SecretNotFound", "Pending"), 60, "the CHAP login tried")
    assert reason(ok) in ("LoginFailed", "Unsupported"), kube_cluster.states(ok)[node]["status"]
    wait_until(lambda: reason(foreign) == "InvalidSpec", 60, "a Secret outside the agent's namespace refused")
    msg = kube_cluster.states(foreign)[node]["status"]["conditions"][0]["message"]
    assert "own namespace" in msg, msg
    shown = kube_cluster.kubectl("get", "sns,sconn,events", "-A", "-o", "yaml").stdout
    assert password not in shown
    assert password not in kube_cluster.dump_logs()
    for name in (ok, foreign):
        delete(kube_cluster, name)
    kube_cluster.kubectl("delete", "secret", secret, "-n", "default")
