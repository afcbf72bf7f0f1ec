"""A fake of :class:`controller.kube.Api` with its real interface, for in-process agent tests.

It replaces the API server the agent talks to with dicts: StorageNodeStates by name (uid,
resourceVersion, a status replaced as a whole like the JSON patch the real client sends), Nodes,
parents, Secrets; it records every call and can be told to fail one (``fail[method] = ApiError``).
``tests/test_agent.py`` pins every public method to the real one's signature.
"""

from __future__ import annotations

import copy
import itertools
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from controller import kube, naming


class FakeApi:
    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail: dict[str, kube.ApiError] = {}
        self.states: dict[str, dict[str, Any]] = {}
        self.nodes: dict[str, dict[str, Any]] = {}
        self.parents: dict[tuple[str, str], dict[str, Any]] = {}
        self.secrets: dict[tuple[str, str], dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._rv = itertools.count(100)

    def _call(self, method: str, arg: Any) -> None:
        self.calls.append((method, copy.deepcopy(arg)))
        if method in self.fail:
            raise self.fail.pop(method)

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        obj.setdefault("metadata", {})["resourceVersion"] = str(next(self._rv))
        return copy.deepcopy(obj)

    # ---- reads
    def list_objects(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int = kube.LIST_PAGE,
    ) -> list[dict[str, Any]]:
        raise NotImplementedError("the agent lists through list_parents/list_node_states")

    def iter_objects(
        self, path: str, *, label_selector: str | None = None, limit: int = kube.LIST_PAGE
    ) -> Iterator[dict[str, Any]]:
        raise NotImplementedError("the agent lists through list_parents/list_node_states")

    def list_parents(self, kind: str) -> list[dict[str, Any]]:
        self._call("list_parents", kind)
        return [copy.deepcopy(o) for (k, _), o in self.parents.items() if k == kind]

    def get_node(self, name: str) -> dict[str, Any] | None:
        self._call("get_node", name)
        return copy.deepcopy(self.nodes.get(name))

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        self._call("get_secret", (namespace, name))
        return copy.deepcopy(self.secrets.get((namespace, name)))

    def list_nodes(self) -> list[dict[str, Any]]:
        self._call("list_nodes", None)
        return [copy.deepcopy(n) for n in self.nodes.values()]

    def iter_node_states(self) -> Iterator[dict[str, Any]]:
        yield from self.list_node_states()

    def list_node_states(self, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        self._call("list_node_states", label_selector)
        key, _, value = (label_selector or "").partition("=")
        return [
            copy.deepcopy(s)
            for s in self.states.values()
            if not label_selector or (s["metadata"].get("labels") or {}).get(key) == value
        ]

    # ---- StorageNodeStates
    def create_node_state(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._call("create_node_state", body)
        name = body["metadata"]["name"]
        if name in self.states:
            raise kube.ApiError(409, "AlreadyExists", f"storagenodestates {name} already exists")
        obj = copy.deepcopy(dict(body))
        obj["metadata"]["uid"] = str(uuid.uuid4())
        self.states[name] = obj
        return self._stamp(obj)

    def replace_node_state_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        self._call("replace_node_state_status", (name, status))
        if name not in self.states:
            raise kube.ApiError(404, "NotFound", f"storagenodestates {name} not found")
        self.states[name]["status"] = copy.deepcopy(dict(status))
        return self._stamp(self.states[name])

    def delete_node_state(self, name: str, *, uid: str | None = None) -> bool:
        self._call("delete_node_state", (name, uid))
        obj = self.states.get(name)
        if obj is None or (uid and obj["metadata"]["uid"] != uid):
            return False
        del self.states[name]
        return True

    # ---- parents (controller)
    def patch_parent_status(self, kind: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError("the agent never writes parents")

    def set_parent_finalizers(
        self, kind: str, name: str, finalizers: list[str], resource_version: str
    ) -> dict[str, Any]:
        raise NotImplementedError("the agent never writes parents")

    # ---- Nodes (controller)
    def patch_node(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError("the agent never writes Nodes")

    # ---- Events
    def post_event(
        self,
        *,
        involved: Mapping[str, str],
        event_type: str,
        reason: str,
        message: str,
        component: str,
        host: str = "",
        namespace: str = "default",
    ) -> None:
        self._call("post_event", reason)
        self.events.append(
            {"involved": dict(involved), "type": event_type, "reason": reason, "message": message}
        )

    # ---- Leases (controller)
    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        raise NotImplementedError("the agent holds no Lease")

    def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError("the agent holds no Lease")

    def replace_lease(self, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        raise NotImplementedError("the agent holds no Lease")

    def close(self) -> None:
        self._call("close", None)

    # ---- helpers of the fake
    def writes(self) -> list[str]:
        return [
            m
            for m, _ in self.calls
            if m in ("create_node_state", "replace_node_state_status", "delete_node_state")
        ]

    def state_of(self, kind: str, parent: str, node: str) -> dict[str, Any] | None:
        return self.states.get(naming.node_state_name(kind, parent, node))
