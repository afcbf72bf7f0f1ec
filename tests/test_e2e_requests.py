"""The API requests the agent and the controller make, checked against tests/data/api_requests.json.

The chart's RBAC is written from that file (tests/test_chart.py checks the rules cover it), so a new
kind of request must show up here first. Runs after the other e2e modules on the same session cluster,
so the recorded traffic covers every scenario. ``HOSTSTORAGE_UPDATE_API_REQUESTS=1`` rewrites the file.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import time
from typing import Any

import pytest
from fixtures_kube import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.host]

DATA = pathlib.Path(__file__).parent / "data" / "api_requests.json"
_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"(?:/namespaces/(?P<ns>[^/]+))?/(?P<resource>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>[^/]+))?$"
)


def classify(req: dict[str, Any]) -> dict[str, Any]:
    """One recorded request as an RBAC-shaped entry (verb, group, resource, subresource, namespaced)."""
    who = "agent" if req["who"].startswith(("node-", "hs-e2e-")) else req["who"]
    m = _PATH.match(req["path"])
    if m is None or (m.group("resource") == "namespaces" and m.group("name") and not m.group("sub")):
        return {"who": who, "verb": "get", "nonResourceURL": re.sub(r"/v\d.*$", "/*", req["path"])}
    method = req["method"]
    named = m.group("name") is not None
    verb = {
        "GET": "watch" if req["query"].get("watch") in ("true", "1") else ("get" if named else "list"),
        "POST": "create",
        "PATCH": "patch",
        "PUT": "update",
        "DELETE": "delete" if named else "deletecollection",
    }[method]
    return {
        "who": who,
        "verb": verb,
        "group": m.group("group") or "",
        "resource": m.group("resource"),
        "subresource": m.group("sub") or "",
        "namespaced": m.group("ns") is not None,
    }


def observed(cluster: Cluster) -> list[dict[str, Any]]:
    assert cluster.runner is not None
    seen = {
        json.dumps(classify(r), sort_keys=True) for r in cluster.runner.requests() if r["who"] != "kubectl"
    }
    return [json.loads(s) for s in sorted(seen)]


def test_requests_are_listed(kube_cluster: Cluster) -> None:
    if kube_cluster.runner is None:
        pytest.skip("request recording needs the emulator")
    found = observed(kube_cluster)
    assert any(e["who"] == "agent" for e in found) and any(e["who"] == "controller" for e in found)
    if os.environ.get("HOSTSTORAGE_UPDATE_API_REQUESTS"):
        known = json.loads(DATA.read_text()) if DATA.exists() else []
        merged = {json.dumps(e, sort_keys=True) for e in [*known, *found]}
        DATA.write_text(json.dumps([json.loads(s) for s in sorted(merged)], indent=1) + "\n")
    listed = {json.dumps(e, sort_keys=True) for e in json.loads(DATA.read_text())}
    extra = [e for e in found if json.dumps(e, sort_keys=True) not in listed]
    assert not extra, f"requests not in {DATA.name} (add them, and to the chart's RBAC): {extra}"


def test_agent_writes_only_its_own_states_and_events(kube_cluster: Cluster) -> None:
    if kube_cluster.runner is None:
        pytest.skip("request recording needs the emulator")
    writes = [
        e
        for e in observed(kube_cluster)
        if e["who"] == "agent" and e.get("verb") in ("create", "patch", "update", "delete")
    ]
    assert {(e["resource"], e["subresource"]) for e in writes} <= {
        ("storagenodestates", ""),
        ("storagenodestates", "status"),
        ("events", ""),
    }


def test_steady_state_makes_no_writes(kube_cluster: Cluster) -> None:
    """After convergence, resyncs (every 4 s here) find nothing to change: zero API writes."""
    if kube_cluster.runner is None:
        pytest.skip("request recording needs the emulator")
    name = f"steady-{os.getpid()}"
    path = kube_cluster.allowed / name
    path.mkdir(exist_ok=True)
    kube_cluster.apply(
        {
            "apiVersion": "hoststorage.io/v1alpha1",
            "kind": "StorageConnection",
            "metadata": {"name": name},
            "spec": {"type": "localfs", "localfs": {"path": str(path)}},
        }
    )
    kube_cluster.kubectl("wait", "--for=condition=Ready", f"sconn/{name}", "--timeout=60s", timeout=70)
    time.sleep(3)
    start = len(kube_cluster.runner.requests())
    time.sleep(10)  # more than two resync periods
    window = kube_cluster.runner.requests()[start:]
    writes = [
        r for r in window if r["who"] != "kubectl" and r["method"] in ("POST", "PATCH", "PUT", "DELETE")
    ]
    kube_cluster.kubectl("delete", "sconn", name, "--wait=false")
    assert writes == [], writes
