"""Each API-server behaviour the emulator adds to kmock, pinned to the documented Kubernetes behaviour.

References (kubernetes.io/docs): "API Concepts" (resourceVersion, watch, 410 Gone, selectors, patch
types), "Object Names and IDs" (uid, names), CustomResourceDefinitions "Status subresource" and
"metadata.generation", "Finalizers", "Garbage Collection" (ownerReferences, background cascading).
"""

from __future__ import annotations

import json
import pathlib
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import kmock_ext
import pytest

CRDS = pathlib.Path(__file__).resolve().parent.parent / "crds"
SNS = "/apis/hoststorage.io/v1alpha1/storagenodestates"


class Client:
    def __init__(self, url: str) -> None:
        self.url = url

    def call(
        self,
        method: str,
        path: str,
        body: Any = None,
        ctype: str = "application/json",
        accept: str = "application/json",
    ) -> tuple[int, Any]:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": ctype, "Accept": accept}
        )
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                return r.status, json.loads(r.read() or b"null")
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def ok(self, method: str, path: str, body: Any = None, ctype: str = "application/json") -> Any:
        code, out = self.call(method, path, body, ctype)
        assert code < 300, (code, out)
        return out

    def watch(self, path: str, n: int, timeout: float = 5) -> list[dict[str, Any]]:
        events: list[dict[str, Any]] = []
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            while len(events) < n:
                line = r.readline()
                if not line:
                    break
                if line.strip():
                    events.append(json.loads(line))
        return events


@pytest.fixture(scope="module")
def api() -> Iterator[tuple[Client, kmock_ext.EmulatorRunner]]:
    emulator = kmock_ext.ApiServerEmulator()
    emulator.load_crds(CRDS)
    runner = kmock_ext.EmulatorRunner(emulator)
    runner.add_endpoint("test")
    try:
        yield Client(runner.url("test")), runner
    finally:
        runner.close()


def sns(name: str, labels: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "apiVersion": "hoststorage.io/v1alpha1",
        "kind": "StorageNodeState",
        "metadata": {"name": name, "labels": labels or {}, **extra},
        "spec": {
            "nodeName": "n1",
            "parentRef": {
                "apiVersion": "hoststorage.io/v1alpha1",
                "kind": "StorageConnection",
                "name": "p",
                "uid": "u",
            },
        },
    }


def test_create_sets_uid_generation_resource_version_and_drops_status(api: Any) -> None:
    client, _ = api
    body = sns("create1")
    body["status"] = {"phase": "Connected"}
    obj = client.ok("POST", SNS, body)
    assert obj["metadata"]["uid"] and obj["metadata"]["generation"] == 1
    assert obj["metadata"]["resourceVersion"].isdigit()
    assert obj["metadata"]["creationTimestamp"].endswith("Z")
    assert "status" not in obj  # status subresource: status is ignored on create
    code, err = client.call("POST", SNS, sns("create1"))
    assert code == 409 and err["reason"] == "AlreadyExists"


def test_generation_moves_on_spec_changes_only(api: Any) -> None:
    client, _ = api
    client.ok("POST", SNS, sns("gen1"))
    patch = "application/merge-patch+json"
    obj = client.ok("PATCH", f"{SNS}/gen1", {"metadata": {"labels": {"a": "b"}}}, patch)
    assert obj["metadata"]["generation"] == 1
    obj = client.ok("PATCH", f"{SNS}/gen1/status", {"status": {"phase": "Failed"}}, patch)
    assert obj["metadata"]["generation"] == 1
    obj = client.ok("PATCH", f"{SNS}/gen1", {"spec": {"nodeName": "n2"}}, patch)
    assert obj["metadata"]["generation"] == 2


def test_status_subresource_is_separate_from_the_main_resource(api: Any) -> None:
    client, _ = api
    client.ok("POST", SNS, sns("sub1"))
    patch = "application/merge-patch+json"
    obj = client.ok(
        "PATCH", f"{SNS}/sub1", {"status": {"phase": "X"}, "metadata": {"labels": {"k": "v"}}}, patch
    )
    assert "status" not in obj and obj["metadata"]["labels"] == {"k": "v"}
    obj = client.ok(
        "PATCH", f"{SNS}/sub1/status", {"status": {"phase": "Y"}, "spec": {"nodeName": "zz"}}, patch
    )
    assert obj["status"] == {"phase": "Y"} and obj["spec"]["nodeName"] == "n1"


def test_no_op_patch_keeps_resource_version(api: Any) -> None:
    client, _ = api
    obj = client.ok("POST", SNS, sns("noop1", {"a": "b"}))
    again = client.ok(
        "PATCH", f"{SNS}/noop1", {"metadata": {"labels": {"a": "b"}}}, "application/merge-patch+json"
    )
    assert again["metadata"]["resourceVersion"] == obj["metadata"]["resourceVersion"]


def test_stale_resource_version_conflicts(api: Any) -> None:
    client, _ = api
    obj = client.ok("POST", SNS, sns("occ1"))
    client.ok("PATCH", f"{SNS}/occ1", {"metadata": {"labels": {"x": "1"}}}, "application/merge-patch+json")
    code, err = client.call(
        "PATCH",
        f"{SNS}/occ1",
        {"metadata": {"labels": {"x": "2"}, "resourceVersion": obj["metadata"]["resourceVersion"]}},
        "application/merge-patch+json",
    )
    assert code == 409 and err["reason"] == "Conflict"


def test_json_patch(api: Any) -> None:
    client, _ = api
    client.ok("POST", SNS, sns("jp1"))
    obj = client.ok(
        "PATCH",
        f"{SNS}/jp1/status",
        [{"op": "add", "path": "/status", "value": {"phase": "A"}}],
        "application/json-patch+json",
    )
    assert obj["status"] == {"phase": "A"}
    code, _ = client.call(
        "PATCH",
        f"{SNS}/jp1",
        [{"op": "test", "path": "/spec/nodeName", "value": "no"}],
        "application/json-patch+json",
    )
    assert code == 422


@pytest.mark.parametrize(
    ("selector", "expected"),
    [
        ("tier=a", ["ls-a"]),
        ("tier==a", ["ls-a"]),
        ("tier!=a", ["ls-b", "ls-none"]),
        ("tier in (a,b)", ["ls-a", "ls-b"]),
        ("tier notin (a)", ["ls-b", "ls-none"]),
        ("tier", ["ls-a", "ls-b"]),
        ("!tier", ["ls-none"]),
        ("tier=a,zone=z", ["ls-a"]),
    ],
)
def test_label_selectors(api: Any, selector: str, expected: list[str]) -> None:
    client, _ = api
    for name, labels in (
        ("ls-a", {"tier": "a", "zone": "z", "grp": "ls"}),
        ("ls-b", {"tier": "b", "grp": "ls"}),
        ("ls-none", {"grp": "ls"}),
    ):
        client.call("POST", SNS, sns(name, labels))
    query = urllib.request.quote(f"grp=ls,{selector}")
    items = client.ok("GET", f"{SNS}?labelSelector={query}")["items"]
    assert sorted(i["metadata"]["name"] for i in items) == expected


def test_field_selectors(api: Any) -> None:
    client, _ = api
    client.call("POST", SNS, sns("fs-1"))
    items = client.ok("GET", f"{SNS}?fieldSelector=metadata.name%3Dfs-1")["items"]
    assert [i["metadata"]["name"] for i in items] == ["fs-1"]
    code, err = client.call("GET", f"{SNS}?fieldSelector=spec.nodeName%3Dn1")
    assert code == 400 and "field label not supported" in err["message"]


def test_finalizers_delay_deletion(api: Any) -> None:
    client, _ = api
    client.ok("POST", SNS, sns("fin1", finalizers=["x/y"]))
    obj = client.ok("DELETE", f"{SNS}/fin1")
    assert obj["metadata"]["deletionTimestamp"] and obj["metadata"]["generation"] == 2
    code, err = client.call(
        "PATCH",
        f"{SNS}/fin1",
        {"metadata": {"finalizers": ["x/y", "new/one"]}},
        "application/merge-patch+json",
    )
    assert code == 422 and "no new finalizers" in err["message"]
    client.ok("PATCH", f"{SNS}/fin1", {"metadata": {"finalizers": None}}, "application/merge-patch+json")
    assert client.call("GET", f"{SNS}/fin1")[0] == 404


def test_delete_preconditions(api: Any) -> None:
    client, _ = api
    client.ok("POST", SNS, sns("pre1"))
    code, _ = client.call("DELETE", f"{SNS}/pre1", {"preconditions": {"uid": "other"}})
    assert code == 409
    client.ok("DELETE", f"{SNS}/pre1")


def test_owner_references_cascade_in_background(api: Any) -> None:
    client, _ = api
    node = client.ok(
        "POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gc-n"}}
    )
    ref = {"apiVersion": "v1", "kind": "Node", "name": "gc-n", "uid": node["metadata"]["uid"]}
    client.ok("POST", SNS, sns("gc-child", ownerReferences=[ref]))
    client.ok("DELETE", "/api/v1/nodes/gc-n")
    assert client.call("GET", f"{SNS}/gc-child")[0] == 404


def test_watch_resumes_after_resource_version_and_filters(api: Any) -> None:
    client, _ = api
    start = client.ok("GET", SNS)["metadata"]["resourceVersion"]
    client.ok("POST", SNS, sns("w-1", {"w": "yes"}))
    client.ok("POST", SNS, sns("w-2", {"w": "no"}))
    client.ok("PATCH", f"{SNS}/w-2", {"metadata": {"labels": {"w": "yes"}}}, "application/merge-patch+json")
    events = client.watch(f"{SNS}?watch=true&resourceVersion={start}&labelSelector=w%3Dyes", 2)
    # w-2 entering the selector is seen as ADDED, as from the API server's watch cache.
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in events] == [
        ("ADDED", "w-1"),
        ("ADDED", "w-2"),
    ]


def test_watch_from_a_compacted_version_is_gone(api: Any) -> None:
    client, runner = api
    rv = client.ok("GET", SNS)["metadata"]["resourceVersion"]
    client.ok("POST", SNS, sns("cmp-1"))
    runner.call(runner.emulator.compact)
    (event,) = client.watch(f"{SNS}?watch=true&resourceVersion={rv}", 1)
    assert event["type"] == "ERROR" and event["object"]["code"] == 410


def test_lists_come_in_chunks_from_one_snapshot(api: Any) -> None:
    """API Concepts, "Retrieving large results sets in chunks": limit and continue; every page comes from
    the first page's snapshot (same resourceVersion; objects changed meanwhile are not seen); the last
    page has no continue token."""
    client, _ = api
    for i in range(5):
        client.ok("POST", SNS, sns(f"chunk-{i}", {"test": "chunks"}))
    first = client.ok("GET", f"{SNS}?labelSelector=test%3Dchunks&limit=2")
    assert [o["metadata"]["name"] for o in first["items"]] == ["chunk-0", "chunk-1"]
    assert first["metadata"]["remainingItemCount"] == 3
    token = first["metadata"]["continue"]
    client.ok("POST", SNS, sns("chunk-5", {"test": "chunks"}))  # after the snapshot: not in this list
    client.ok("DELETE", f"{SNS}/chunk-3")
    second = client.ok("GET", f"{SNS}?labelSelector=test%3Dchunks&limit=2&continue={token}")
    assert [o["metadata"]["name"] for o in second["items"]] == ["chunk-2", "chunk-3"]
    assert second["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]
    last = client.ok(
        "GET", f"{SNS}?labelSelector=test%3Dchunks&limit=2&continue={second['metadata']['continue']}"
    )
    assert [o["metadata"]["name"] for o in last["items"]] == ["chunk-4"]
    assert "continue" not in last["metadata"]
    everything = client.ok("GET", f"{SNS}?labelSelector=test%3Dchunks")
    assert "continue" not in everything["metadata"] and len(everything["items"]) == 5


def test_a_continue_token_older_than_a_compaction_is_gone(api: Any) -> None:
    client, runner = api
    for i in range(3):
        client.ok("POST", SNS, sns(f"expire-{i}", {"test": "expire"}))
    first = client.ok("GET", f"{SNS}?labelSelector=test%3Dexpire&limit=1")
    runner.call(runner.emulator.compact)
    code, body = client.call(
        "GET", f"{SNS}?labelSelector=test%3Dexpire&limit=1&continue={first['metadata']['continue']}"
    )
    assert (code, body["reason"]) == (410, "Expired")


def test_watch_times_out_when_asked(api: Any) -> None:
    client, _ = api
    done = threading.Event()

    def run() -> None:
        client.watch(f"{SNS}?watch=true&timeoutSeconds=1&resourceVersion=999999", 1, timeout=10)
        done.set()

    threading.Thread(target=run, daemon=True).start()
    assert done.wait(5)


def test_table_uses_printer_columns(api: Any) -> None:
    client, _ = api
    client.call("POST", SNS, sns("tbl-1"))
    code, table = client.call("GET", f"{SNS}/tbl-1", accept="application/json;as=Table;v=v1;g=meta.k8s.io")
    assert code == 200 and table["kind"] == "Table"
    assert [c["name"] for c in table["columnDefinitions"]] == [
        "Name",
        "Node",
        "Kind",
        "Parent",
        "Phase",
        "Age",
    ]
    assert table["rows"][0]["cells"][:4] == ["tbl-1", "n1", "StorageConnection", "p"]


def test_crd_created_through_the_api_is_served_and_established(api: Any) -> None:
    client, _ = api
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Cluster",
            "names": {"plural": "widgets", "kind": "Widget"},
            "versions": [{"name": "v1", "served": True, "storage": True}],
        },
    }
    out = client.ok("POST", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", crd)
    assert {c["type"]: c["status"] for c in out["status"]["conditions"]}["Established"] == "True"
    client.ok("POST", "/apis/example.com/v1/widgets", {"metadata": {"name": "w"}})
    resources = client.ok("GET", "/apis/example.com/v1")["resources"]
    assert [r["name"] for r in resources] == ["widgets"]


def test_events_about_cluster_scoped_objects_live_in_default(api: Any) -> None:
    client, _ = api
    event = {
        "metadata": {"generateName": "n."},
        "involvedObject": {"kind": "Node", "name": "n1"},
        "reason": "R",
        "message": "m",
        "type": "Normal",
    }
    code, err = client.call("POST", "/api/v1/namespaces/hoststorage/events", event)
    assert code == 422 and "does not match event.namespace" in err["message"]
    out = client.ok("POST", "/api/v1/namespaces/default/events", event)
    assert out["metadata"]["name"].startswith("n.")
