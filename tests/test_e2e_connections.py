"""StorageConnection end to end: kubectl -> API -> agents (real mounts) -> StorageNodeStates -> controller."""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from fixtures_kube import Cluster

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


def wait_ready(cluster: Cluster, name: str, timeout: float = 60) -> None:
    proc = cluster.kubectl(
        "wait",
        "--for=condition=Ready",
        f"storageconnection/{name}",
        f"--timeout={timeout:.0f}s",
        check=False,
        timeout=timeout + 10,
    )
    if proc.returncode != 0:
        print(cluster.dump_logs())
        print(cluster.kubectl("get", "sconn", name, "-o", "yaml", check=False).stdout)
        print(cluster.kubectl("get", "sns", "-o", "yaml", check=False).stdout)
    assert proc.returncode == 0, proc.stderr


def test_localfs_apply_reaches_ready_on_every_node(kube_cluster: Cluster) -> None:
    name = uniq("local")
    kube_cluster.apply(localfs(kube_cluster, name))
    wait_ready(kube_cluster, name)
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
    table = kube_cluster.kubectl("get", "sconn", name).stdout
    assert "3/3" in table
