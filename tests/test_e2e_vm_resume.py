"""The agent resumes a VM paused on an I/O error and says so: real agent, real guest, real brick fault.

One node of the e2e world (tests/fixtures_kube.py) mounts a gluster StorageConnection and monitors it;
a guest (tests/fixtures_vm.py) writes to an image on that node's mount. SIGSTOP of the brick pauses the
guest; the node's StorageNodeState lists it under ``monitor.pausedVMs``; SIGCONT: the monitor turns
Healthy, the agent resumes the guest and posts one ``VMsResumed`` Event on the DomainMonitor.
"""

from __future__ import annotations

import json
import pathlib
import secrets
from typing import Any

import fixtures_storage
import pytest
import vm_guest
from fixtures_kube import Cluster, wait_until
from fixtures_vm import PAUSE_TIMEOUT, Boot, brick_stopped

pytestmark = [pytest.mark.e2e, pytest.mark.host, pytest.mark.slow]


def monitor_detail(cluster: Cluster, mon: str, node: str) -> dict[str, Any]:
    state = cluster.states(mon, kind="DomainMonitor").get(node) or {}
    return dict((state.get("status") or {}).get("monitor") or {})


def connection_detail(cluster: Cluster, conn: str, node: str) -> dict[str, Any]:
    state = cluster.states(conn).get(node) or {}
    return dict((state.get("status") or {}).get("connection") or {})


def events(cluster: Cluster, mon: str, reason: str) -> list[dict[str, Any]]:
    items = json.loads(cluster.kubectl("get", "events", "-A", "-o", "json").stdout)["items"]
    return [e for e in items if e["involvedObject"]["name"] == mon and e["reason"] == reason]


def test_the_agent_resumes_the_vm_lists_it_while_paused_and_posts_one_event(
    guest_boot: Boot, vm_volume: fixtures_storage.GlusterVolume, kube_cluster: Cluster,
) -> None:
    c = kube_cluster
    node = c.nodes[0]
    suffix = secrets.token_hex(3)
    conn, mon = f"vmres-gl-{suffix}", f"vmres-{suffix}"
    only_here = {"matchLabels": {"kubernetes.io/hostname": node}}
    c.apply([
        {"apiVersion": "hoststorage.io/v1alpha1", "kind": "StorageConnection", "metadata": {"name": conn},
         "spec": {"type": "glusterfs", "nodeSelector": only_here,
                  "glusterfs": {"server": vm_volume.server, "volume": vm_volume.volume}}},
        {"apiVersion": "hoststorage.io/v1alpha1", "kind": "DomainMonitor", "metadata": {"name": mon},
         "spec": {"nodeSelector": only_here, "target": {"connectionRef": {"name": conn}},
                  "intervalSeconds": 1, "timeoutSeconds": 1}},
    ])
    try:
        mnt = wait_until(lambda: connection_detail(c, conn, node).get("mountPoint"), 60, "the gluster mount")
        wait_until(lambda: monitor_detail(c, mon, node).get("state") == "Healthy", 60, "the monitor Healthy")
        disk = vm_guest.Disk(vm_guest.make_image(str(pathlib.Path(mnt) / f"e2e-{suffix}.img")), "vda")
        with guest_boot.run("hs-e2e", [disk]) as vm:
            with brick_stopped(vm_volume) as cont:
                vm.wait_state("paused (I/O error)", PAUSE_TIMEOUT)
                frozen = vm.counter()
                wait_until(lambda: monitor_detail(c, mon, node).get("pausedVMs") == {"count": 1,
                                                                                     "names": [vm.name]},
                           30, "pausedVMs in the node's status")
                wait_until(lambda: monitor_detail(c, mon, node).get("state") == "Invalid", 30, "Invalid")
                cont()
            vm.wait_state("running", 60)
            resumed = wait_until(lambda: events(c, mon, "VMsResumed"), 30, "the VMsResumed Event")
            assert len(resumed) == 1, resumed
            assert resumed[0]["type"] == "Normal"
            assert resumed[0]["message"].startswith(f"{node}: storage Healthy again; resumed 1 VM(s)")
            assert vm.name in resumed[0]["message"]
            wait_until(lambda: "pausedVMs" not in monitor_detail(c, mon, node), 30, "pausedVMs cleared")
            vm.wait_io(frozen + 3, 30)
            assert len(events(c, mon, "VMsResumed")) == 1
            assert not events(c, mon, "VMResumeFailed") and not events(c, mon, "VMsLeftPaused")
    finally:
        vm_volume.resume_brick()
        c.kubectl("delete", "dmon", mon, "--wait=false", check=False)
        c.kubectl("delete", "sconn", conn, "--wait=false", check=False)
        for kind in ("domainmonitor", "storageconnection"):
            c.kubectl("wait", "--for=delete", f"{kind}/{mon if kind == 'domainmonitor' else conn}",
                      "--timeout=60s", check=False, timeout=70)
