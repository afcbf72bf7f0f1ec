"""kmock's KubernetesEmulator plus the API-server behaviour hoststorage relies on.

kmock 0.8 stores objects as plain dicts and merges patches into them; it has no resourceVersion, uid,
generation, status subresource, selectors, finalizer rules or resumable watches (read from its source,
``kmock/_internal/k8s.py``). The agent and controller depend on each of those (DESIGN.md "Tests and
measurements"), so :class:`ApiServerEmulator` serves registered resources itself, following the
documented Kubernetes semantics, each pinned by a test in ``tests/test_kmock_ext.py``:

- ``metadata.uid``, ``creationTimestamp``; one cluster-wide ``resourceVersion`` counter bumped on every
  real change (a no-op patch changes nothing and emits no event).
- ``metadata.generation`` starts at 1 and is bumped on changes outside ``metadata`` and ``status``
  (custom resources with the status subresource), and when ``deletionTimestamp`` is set.
- status subresource: writes to the main resource ignore ``status``; writes to ``/status`` ignore
  everything but ``status``.
- lists in chunks (``limit``/``continue``): every page is served from the snapshot of the first, with
  the first page's ``resourceVersion``, ``remainingItemCount`` and a ``continue`` token until the last
  page; a token older than a compaction answers 410 Gone (reason Expired);
- label selectors (``=``, ``==``, ``!=``, ``in``, ``notin``, ``key``, ``!key``) and field selectors
  (``metadata.name``, ``metadata.namespace``, and ``involvedObject.*``/``reason``/``type`` for events).
- finalizers: DELETE sets ``deletionTimestamp`` while finalizers remain, the object goes when the last one
  is removed; no new finalizer may be added once deletion started.
- optimistic concurrency (``metadata.resourceVersion`` in an update must match), DELETE preconditions.
- watches: ``resourceVersion`` resumes after that version, ``timeoutSeconds``, 410 Gone once compacted,
  selector transitions seen as ADDED/DELETED; background cascading deletion through ``ownerReferences``.
- merge patch (RFC 7386), JSON patch (RFC 6902), strategic merge patch treated as merge patch (only
  core Nodes, Leases and Events are patched that way here, and only maps).

Everything else (discovery, unknown paths) is kmock's. :class:`EmulatorRunner` runs it over HTTP on
127.0.0.1 in a thread, can stop and restart it on the same port (the API outage test), and writes a
kubeconfig for kubectl and the hoststorage processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import dataclasses
import datetime
import json
import pathlib
import re
import socket
import threading
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml

ResKey = tuple[str, str, str]  # group, version, plural


@dataclasses.dataclass
class ResourceSpec:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool
    status_subresource: bool = False
    singular: str = ""
    shortnames: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    printer_columns: tuple[Mapping[str, Any], ...] = ()

    @property
    def key(self) -> ResKey:
        return (self.group, self.version, self.plural)

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


@dataclasses.dataclass
class _Event:
    rv: int
    key: ResKey
    type: str
    obj: dict[str, Any]
    old: dict[str, Any] | None


CORE_RESOURCES = (
    ResourceSpec("", "v1", "nodes", "Node", False, True, "node", ("no",)),
    ResourceSpec("", "v1", "events", "Event", True, False, "event", ("ev",)),
    ResourceSpec("", "v1", "namespaces", "Namespace", False, True, "namespace", ("ns",)),
    ResourceSpec("", "v1", "secrets", "Secret", True, False, "secret"),
    ResourceSpec("events.k8s.io", "v1", "events", "Event", True, False, "event", ("ev",)),
    ResourceSpec("coordination.k8s.io", "v1", "leases", "Lease", True, False, "lease"),
    ResourceSpec(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        False,
        True,
        "customresourcedefinition",
        ("crd", "crds"),
    ),
)


def now_text() -> str:
    return datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------- patches


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            continue  # strategic-merge directives: not emulated
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"bad JSON pointer {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def json_patch(doc: Any, ops: Iterable[Mapping[str, Any]]) -> Any:
    """RFC 6902 JSON patch (add, remove, replace, test)."""
    doc = copy.deepcopy(doc)
    for op in ops:
        parts = _pointer(op["path"])
        parent: Any = doc
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = parts[-1]
        kind = op["op"]
        try:
            if kind == "test":
                current = parent[int(last)] if isinstance(parent, list) else parent[last]
                if current != op["value"]:
                    raise ApiError(422, "Invalid", f"test failed at {op['path']}")
            elif kind == "remove":
                del parent[int(last) if isinstance(parent, list) else last]
            elif kind in ("add", "replace"):
                if isinstance(parent, list):
                    if last == "-":
                        parent.append(op["value"])
                    elif kind == "add":
                        parent.insert(int(last), op["value"])
                    else:
                        parent[int(last)] = op["value"]
                else:
                    if kind == "replace" and last not in parent:
                        raise ApiError(422, "Invalid", f"replace of missing {op['path']}")
                    parent[last] = op["value"]
            else:
                raise ApiError(422, "Invalid", f"unsupported op {kind}")
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise ApiError(422, "Invalid", f"json patch failed at {op['path']}: {e}") from e
    return doc


# ---------------------------------------------------------------- selectors

_SET_REQ = re.compile(r"^\s*([^\s!=]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, cur = [], 0, ""
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
        else:
            cur += ch
    if cur.strip():
        parts.append(cur)
    return [p.strip() for p in parts if p.strip()]


def label_selector_matches(text: str, labels: Mapping[str, str]) -> bool:
    for req in _split_selector(text):
        m = _SET_REQ.match(req)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            present = key in labels and labels[key] in values
            if (op == "in") != present:
                return False
        elif "!=" in req:
            key, value = (s.strip() for s in req.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in req:
            key, value = (s.strip() for s in req.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif req.startswith("!"):
            if req[1:].strip() in labels:
                return False
        elif req not in labels:
            return False
    return True


_EVENT_FIELDS = re.compile(r"^(involvedObject\.[a-zA-Z]+|reason|type|source|reportingComponent)$")


def field_selector_matches(text: str, spec: ResourceSpec, obj: Mapping[str, Any]) -> bool:
    for req in _split_selector(text):
        negate = "!=" in req
        field, value = (s.strip() for s in req.replace("!=", "=").replace("==", "=").split("=", 1))
        if field not in ("metadata.name", "metadata.namespace") and not (
            spec.kind == "Event" and _EVENT_FIELDS.match(field)
        ):
            raise ApiError(400, "BadRequest", f'field label not supported: "{field}"')
        cur: Any = obj
        for part in field.split("."):
            cur = cur.get(part) if isinstance(cur, Mapping) else None
        actual = "" if cur is None else str(cur)
        if (actual == value) == negate:
            return False
    return True


def _jsonpath(obj: Any, path: str) -> Any:
    cur = obj
    for part in path.strip().lstrip(".").split("."):
        if not part:
            continue
        cur = cur.get(part) if isinstance(cur, Mapping) else None
    return cur


# ---------------------------------------------------------------- the emulator


@attrs.define(kw_only=True)
class ApiServerEmulator(kmock.KubernetesEmulator):  # type: ignore[misc]
    """kmock's emulator with a real object store for the registered resources (see the module doc)."""

    specs: dict[ResKey, ResourceSpec] = attrs.field(factory=dict, init=False)
    store: dict[tuple[ResKey, str | None, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    log: list[_Event] = attrs.field(factory=list, init=False)
    rv: int = attrs.field(default=1, init=False)
    compacted_rv: int = attrs.field(default=0, init=False)
    snapshots: dict[str, tuple[int, list[dict[str, Any]]]] = attrs.field(factory=dict, init=False)
    """Lists in chunks in progress: continue-token id -> (resourceVersion, the items of the first page)."""
    closing: bool = attrs.field(default=False, init=False)
    sent: dict[int, int] = attrs.field(factory=dict, init=False)
    """Response bytes served for the registered resources (watch streams included), by client port:
    what each client process received (the fleet bench's bytes figures)."""
    _changed: asyncio.Event | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for spec in CORE_RESOURCES:
            self.register(spec)
        self.fallback["get /openapi/v2"] << self._serve_openapi_v2
        self.fallback["get /openapi/v3"] << self._serve_openapi_v3
        self.fallback["get", re.compile(r"/openapi/v3/.+")] << self._serve_openapi_v3_gv

    # kubectl validates manifests against the server's OpenAPI document; an empty one makes it treat
    # every kind as schemaless (what it does for CRDs without a schema), so apply/label/wait work.
    async def _serve_openapi_v2(self, request: Any) -> Any:
        return {"swagger": "2.0", "info": {"title": "kmock", "version": "v0"}, "paths": {}, "definitions": {}}

    async def _serve_openapi_v3(self, request: Any) -> Any:
        paths = {}
        for group, version, _ in self.specs:
            gv = f"apis/{group}/{version}" if group else f"api/{version}"
            paths[gv] = {"serverRelativeURL": f"/openapi/v3/{gv}?hash=0"}
        return {"paths": paths}

    async def _serve_openapi_v3_gv(self, request: Any) -> Any:
        return {
            "openapi": "3.0.0",
            "info": {"title": "kmock", "version": "v0"},
            "paths": {},
            "components": {"schemas": {}},
        }

    # ---- discovery from the registered resources (kmock lists subresources with short names and
    # categories, which makes kubectl's short-name expansion ambiguous)

    async def _serve_api(self, request: Any) -> Any:
        return {"kind": "APIVersions", "versions": ["v1"], "serverAddressByClientCIDRs": []}

    def _groups(self) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for group, version, _ in self.specs:
            if group and version not in groups.setdefault(group, []):
                groups[group].append(version)
        return groups

    def _group_doc(self, group: str, versions: list[str]) -> dict[str, Any]:
        gvs = [{"groupVersion": f"{group}/{v}", "version": v} for v in versions]
        return {"name": group, "versions": gvs, "preferredVersion": gvs[0]}

    async def _serve_apis(self, request: Any) -> Any:
        return {
            "kind": "APIGroupList",
            "apiVersion": "v1",
            "groups": [self._group_doc(g, vs) for g, vs in sorted(self._groups().items())],
        }

    async def _serve_group(self, request: Any) -> Any:
        group = request.resource.group
        versions = self._groups().get(group)
        if not versions:
            raise kmock.KubernetesResourceNotFoundError()
        return {"kind": "APIGroup", "apiVersion": "v1", **self._group_doc(group, versions)}

    async def _serve_version(self, request: Any) -> Any:
        group, version = request.resource.group or "", request.resource.version
        verbs = ["create", "delete", "get", "list", "patch", "update", "watch"]
        resources: list[dict[str, Any]] = []
        for spec in self.specs.values():
            if (spec.group, spec.version) != (group, version):
                continue
            resources.append(
                {
                    "name": spec.plural,
                    "singularName": spec.singular or spec.kind.lower(),
                    "namespaced": spec.namespaced,
                    "kind": spec.kind,
                    "verbs": verbs,
                    "shortNames": list(spec.shortnames),
                    "categories": list(spec.categories),
                }
            )
            if spec.status_subresource:
                resources.append(
                    {
                        "name": f"{spec.plural}/status",
                        "singularName": "",
                        "namespaced": spec.namespaced,
                        "kind": spec.kind,
                        "verbs": ["get", "patch", "update"],
                    }
                )
        if not resources:
            raise kmock.KubernetesResourceNotFoundError()
        gv = f"{group}/{version}" if group else version
        return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}

    # ---- registration

    def register(self, spec: ResourceSpec) -> None:
        self.specs[spec.key] = spec
        res = kmock.resource(spec.group, spec.version, spec.plural)
        self.resources[res] = kmock.ResourceInfo(
            kind=spec.kind,
            singular=spec.singular or spec.kind.lower(),
            namespaced=spec.namespaced,
            shortnames=set(spec.shortnames),
            categories=set(spec.categories),
            verbs={"get", "list", "watch", "create", "update", "patch", "delete"},
            subresources={"status"} if spec.status_subresource else set(),
        )

    def register_crd(self, crd: Mapping[str, Any]) -> None:
        """Serve the custom resource a CRD manifest defines (every served version)."""
        self._register_crd_specs(crd)
        self.put_object(("apiextensions.k8s.io", "v1", "customresourcedefinitions"), dict(crd))

    def _register_crd_specs(self, crd: Mapping[str, Any]) -> None:
        crd_spec = crd["spec"]
        names = crd_spec["names"]
        for version in crd_spec["versions"]:
            if not version.get("served", True):
                continue
            self.register(
                ResourceSpec(
                    group=crd_spec["group"],
                    version=version["name"],
                    plural=names["plural"],
                    kind=names["kind"],
                    namespaced=crd_spec.get("scope") == "Namespaced",
                    status_subresource="status" in (version.get("subresources") or {}),
                    singular=names.get("singular", ""),
                    shortnames=tuple(names.get("shortNames") or ()),
                    categories=tuple(names.get("categories") or ()),
                    printer_columns=tuple(
                        c for c in version.get("additionalPrinterColumns") or () if not c.get("priority")
                    ),
                )
            )

    def load_crds(self, directory: pathlib.Path) -> None:
        for path in sorted(directory.glob("*.yaml")):
            for doc in yaml.safe_load_all(path.read_text()):
                if doc and doc.get("kind") == "CustomResourceDefinition":
                    self.register_crd(doc)

    # ---- direct access for fixtures (same semantics, no HTTP)

    def put_object(self, key: ResKey, obj: dict[str, Any]) -> dict[str, Any]:
        """Create an object as a POST would (used by fixtures to add Nodes and CRDs)."""
        spec = self.specs[key]
        ns = (obj.get("metadata") or {}).get("namespace") if spec.namespaced else None
        return self._create(spec, ns, copy.deepcopy(obj))

    def get_object(self, key: ResKey, name: str, namespace: str | None = None) -> dict[str, Any] | None:
        obj = self.store.get((key, namespace, name))
        return copy.deepcopy(obj) if obj is not None else None

    def list_objects(self, key: ResKey) -> list[dict[str, Any]]:
        return [copy.deepcopy(o) for (k, _, _), o in sorted(self.store.items()) if k == key]

    def compact(self) -> None:
        """Forget the watch history up to now (like etcd compaction): older watches get 410 Gone."""
        self.compacted_rv = self.rv
        self.log.clear()
        self.snapshots.clear()

    # ---- request dispatch

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        spec = None
        if res is not None and res.plural is not None:
            spec = self.specs.get((res.group or "", res.version or "", res.plural))
        if spec is None:
            return await super()._handle(request)  # type: ignore[no-any-return]
        try:
            response = await self._serve(spec, request)
        except ApiError as e:
            return aiohttp.web.json_response(
                {
                    "apiVersion": "v1",
                    "kind": "Status",
                    "metadata": {},
                    "status": "Failure",
                    "code": e.code,
                    "reason": e.reason,
                    "message": e.message,
                    "details": {"name": request.name or "", "kind": spec.plural},
                },
                status=e.code,
            )
        if isinstance(response, aiohttp.web.Response) and response.body is not None:
            self._count(request, len(response.body))  # type: ignore[arg-type]
        return response

    def _count(self, request: kmock.Request, size: int) -> None:
        port = request.url.port or 0
        self.sent[port] = self.sent.get(port, 0) + size

    async def _serve(self, spec: ResourceSpec, request: kmock.Request) -> aiohttp.web.StreamResponse:
        method = str(request.method.value).upper()
        params = dict(request.params)
        ns = request.namespace if spec.namespaced else None
        sub = request.subresource
        if sub not in (None, "status") or (sub == "status" and not spec.status_subresource):
            raise ApiError(404, "NotFound", f"the server could not find the requested resource ({sub})")
        if method == "GET" and params.get("watch") in ("true", "1"):
            return await self._watch(spec, request, ns, params)
        if method == "GET" and request.name is None:
            return self._list(spec, request, ns, params)
        if method == "GET":
            obj = self._get(spec, ns, request.name)
            if "as=Table" in request.headers.get("Accept", "") and sub is None:
                return aiohttp.web.json_response(self._table(spec, [obj]))
            return aiohttp.web.json_response(obj)
        if method == "POST" and request.name is None:
            body = request.data if isinstance(request.data, dict) else None
            if body is None:
                raise ApiError(400, "BadRequest", "the body is not a JSON object")
            return aiohttp.web.json_response(
                self._create(spec, ns, body, dry_run=bool(params.get("dryRun"))), status=201
            )
        if method == "PATCH" and request.name is not None:
            ctype = request.headers.get("Content-Type", "").split(";")[0].strip()
            return aiohttp.web.json_response(self._patch(spec, ns, request.name, sub, ctype, request.data))
        if method == "PUT" and request.name is not None:
            return aiohttp.web.json_response(self._replace(spec, ns, request.name, sub, request.data))
        if method == "DELETE" and request.name is not None:
            return aiohttp.web.json_response(self._delete(spec, ns, request.name, request.data))
        raise ApiError(405, "MethodNotAllowed", f"{method} is not supported here")

    # ---- reads

    def _get(self, spec: ResourceSpec, ns: str | None, name: str) -> dict[str, Any]:
        obj = self.store.get((spec.key, ns, name))
        if obj is None:
            raise ApiError(404, "NotFound", f'{spec.plural}.{spec.group} "{name}" not found')
        return obj

    def _selected(self, spec: ResourceSpec, obj: Mapping[str, Any], params: Mapping[str, str]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        if params.get("labelSelector") and not label_selector_matches(params["labelSelector"], labels):
            return False
        return not params.get("fieldSelector") or field_selector_matches(params["fieldSelector"], spec, obj)

    def _list(
        self, spec: ResourceSpec, request: kmock.Request, ns: str | None, params: Mapping[str, str]
    ) -> aiohttp.web.StreamResponse:
        token = params.get("continue") or ""
        if token:
            snapshot_id, _, offset_text = token.partition(":")
            if snapshot_id not in self.snapshots or not offset_text.isdigit():
                raise ApiError(
                    410, "Expired",
                    "The provided continue parameter is too old to display a consistent list result. "
                    "You can start a new list without the continue parameter.",
                )
            rv, snapshot = self.snapshots[snapshot_id]
            offset = int(offset_text)
        else:
            rv, offset = self.rv, 0
            snapshot = [
                copy.deepcopy(obj)
                for (key, ons, _), obj in sorted(self.store.items(), key=lambda kv: str(kv[0]))
                if key == spec.key and (ns is None or ons == ns) and self._selected(spec, obj, params)
            ]
            snapshot_id = uuid.uuid4().hex
        limit_text = params.get("limit") or ""
        limit = int(limit_text) if limit_text.isdigit() and int(limit_text) > 0 else len(snapshot)
        items = snapshot[offset : offset + limit]
        meta: dict[str, Any] = {"resourceVersion": str(rv)}
        rest = len(snapshot) - offset - len(items)
        if rest > 0:
            self.snapshots[snapshot_id] = (rv, snapshot)
            meta["continue"] = f"{snapshot_id}:{offset + len(items)}"
            meta["remainingItemCount"] = rest
        else:
            self.snapshots.pop(snapshot_id, None)
        accept = request.headers.get("Accept", "")
        if "as=Table" in accept:
            return aiohttp.web.json_response(self._table(spec, items))
        return aiohttp.web.json_response(
            {"apiVersion": spec.api_version, "kind": f"{spec.kind}List", "metadata": meta, "items": items}
        )

    def _table(self, spec: ResourceSpec, items: list[dict[str, Any]]) -> dict[str, Any]:
        """A meta.k8s.io Table, as ``kubectl get`` asks for, with the CRD's printer columns."""
        columns = [{"name": "Name", "type": "string", "format": "name"}]
        paths = [".metadata.name"]
        for col in spec.printer_columns or (
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ):
            columns.append({"name": col["name"], "type": col.get("type", "string"), "format": ""})
            paths.append(col["jsonPath"])
        rows = []
        for obj in items:
            cells = []
            for path, col in zip(paths, columns, strict=True):
                value = _jsonpath(obj, path)
                if col["type"] == "date" and value:
                    value = _age(value)
                cells.append("<none>" if value is None else value)
            rows.append(
                {
                    "cells": cells,
                    "object": {
                        "kind": "PartialObjectMetadata",
                        "apiVersion": "meta.k8s.io/v1",
                        "metadata": obj.get("metadata", {}),
                    },
                }
            )
        return {
            "kind": "Table",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": {"resourceVersion": str(self.rv)},
            "columnDefinitions": columns,
            "rows": rows,
        }

    async def _watch(
        self, spec: ResourceSpec, request: kmock.Request, ns: str | None, params: Mapping[str, str]
    ) -> aiohttp.web.StreamResponse:
        since_text = params.get("resourceVersion") or ""
        since = int(since_text) if since_text.isdigit() else 0
        timeout = float(params.get("timeoutSeconds") or 1800)
        name = request.name
        if name is not None:
            extra = f"metadata.name={name}"
            params = dict(
                params, fieldSelector=",".join(s for s in (params.get("fieldSelector"), extra) if s)
            )
        # Validate selectors before the stream starts, so errors are plain HTTP errors.
        self._selected(spec, {"metadata": {}}, params)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        raw = request._raw_request
        await response.prepare(raw)

        async def send(kind: str, obj: Mapping[str, Any]) -> None:
            line = json.dumps({"type": kind, "object": obj}).encode() + b"\n"
            self._count(request, len(line))
            await response.write(line)

        def visible(obj: Mapping[str, Any] | None) -> bool:
            if obj is None:
                return False
            ons = (obj.get("metadata") or {}).get("namespace")
            return (ns is None or ons == ns) and self._selected(spec, obj, params)

        if since and since < self.compacted_rv:
            await send(
                "ERROR",
                {
                    "kind": "Status",
                    "apiVersion": "v1",
                    "status": "Failure",
                    "code": 410,
                    "reason": "Expired",
                    "message": f"too old resource version: {since}",
                },
            )
            await response.write_eof()
            return response
        position = 0
        if since:
            position = next((i for i, ev in enumerate(self.log) if ev.rv > since), len(self.log))
        else:
            for (key, _, _), obj in list(self.store.items()):
                if key == spec.key and visible(obj):
                    await send("ADDED", obj)
            position = len(self.log)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        try:
            while not self.closing and loop.time() < deadline:
                while position < len(self.log):
                    ev = self.log[position]
                    position += 1
                    if ev.key != spec.key:
                        continue
                    now_in, was_in = visible(ev.obj), visible(ev.old)
                    if ev.type == "MODIFIED" and now_in and not was_in:
                        await send("ADDED", ev.obj)
                    elif ev.type == "MODIFIED" and was_in and not now_in:
                        await send("DELETED", ev.obj)
                    elif now_in:
                        await send(ev.type, ev.obj)
                changed = self._changed_event()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), timeout=min(1.0, max(0.0, deadline - loop.time())))
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            pass
        return response

    def _changed_event(self) -> asyncio.Event:
        if self._changed is None:
            self._changed = asyncio.Event()
        return self._changed

    def _emit(self, spec: ResourceSpec, kind: str, obj: dict[str, Any], old: dict[str, Any] | None) -> None:
        self.log.append(_Event(self.rv, spec.key, kind, copy.deepcopy(obj), copy.deepcopy(old)))
        if self._changed is not None:
            self._changed.set()
            self._changed = asyncio.Event()

    def _bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    # ---- writes

    def _create(
        self, spec: ResourceSpec, ns: str | None, body: dict[str, Any], *, dry_run: bool = False
    ) -> dict[str, Any]:
        obj = copy.deepcopy(body)
        meta = obj.setdefault("metadata", {})
        if not meta.get("name") and meta.get("generateName"):
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        name = meta.get("name")
        if not name:
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if len(name) > 253 or not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", name):
            raise ApiError(422, "Invalid", f"metadata.name: Invalid value: {name!r}")
        if spec.namespaced:
            ns = ns or meta.get("namespace") or "default"
            meta["namespace"] = ns
        else:
            meta.pop("namespace", None)
            ns = None
        # core/v1 validation: an Event about a cluster-scoped object (no eventTime) lives in default.
        subject_ns = (obj.get("involvedObject") or {}).get("namespace")
        legacy_event = spec.key == ("", "v1", "events") and not obj.get("eventTime")
        if legacy_event and not subject_ns and ns not in ("", "default"):
            raise ApiError(
                422,
                "Invalid",
                'involvedObject.namespace: Invalid value: "": does not match event.namespace',
            )
        if (spec.key, ns, name) in self.store:
            raise ApiError(409, "AlreadyExists", f'{spec.plural}.{spec.group} "{name}" already exists')
        if spec.status_subresource and spec.group not in ("", "apiextensions.k8s.io"):
            obj.pop("status", None)
        obj["apiVersion"], obj["kind"] = spec.api_version, spec.kind
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            meta.pop(key, None)
        if spec.kind == "CustomResourceDefinition":
            # The API server establishes a CRD's names at once when they do not clash (no clash here).
            self._register_crd_specs(obj)
            obj["status"] = {
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": ""},
                    {
                        "type": "Established",
                        "status": "True",
                        "reason": "InitialNamesAccepted",
                        "message": "",
                    },
                ],
                "acceptedNames": obj["spec"]["names"],
            }
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_text()
        meta["generation"] = 1
        if dry_run:
            meta["resourceVersion"] = str(self.rv)
            return obj
        meta["resourceVersion"] = self._bump()
        self.store[(spec.key, ns, name)] = obj
        self._emit(spec, "ADDED", obj, None)
        return obj

    def _check_rv(self, old: Mapping[str, Any], new_meta: Mapping[str, Any]) -> None:
        want = new_meta.get("resourceVersion")
        if want and want != old["metadata"]["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                "Operation cannot be fulfilled: the object has been modified; "
                "please apply your changes to the latest version and try again",
            )

    def _patch(
        self, spec: ResourceSpec, ns: str | None, name: str, sub: str | None, ctype: str, body: Any
    ) -> dict[str, Any]:
        old = self._get(spec, ns, name)
        if ctype == "application/json-patch+json":
            if not isinstance(body, list):
                raise ApiError(400, "BadRequest", "json patch must be a list")
            new = json_patch(old, body)
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            if not isinstance(body, dict):
                raise ApiError(400, "BadRequest", "merge patch must be an object")
            self._check_rv(old, body.get("metadata") or {})
            new = merge_patch(old, body)
        else:
            raise ApiError(
                415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {ctype}"
            )
        return self._update(spec, ns, name, sub, old, new)

    def _replace(
        self, spec: ResourceSpec, ns: str | None, name: str, sub: str | None, body: Any
    ) -> dict[str, Any]:
        old = self._get(spec, ns, name)
        if not isinstance(body, dict):
            raise ApiError(400, "BadRequest", "the body is not a JSON object")
        self._check_rv(old, body.get("metadata") or {})
        return self._update(spec, ns, name, sub, old, copy.deepcopy(body))

    def _update(
        self,
        spec: ResourceSpec,
        ns: str | None,
        name: str,
        sub: str | None,
        old: dict[str, Any],
        new: dict[str, Any],
    ) -> dict[str, Any]:
        new = copy.deepcopy(new)
        old_meta = old["metadata"]
        if spec.status_subresource:
            if sub == "status":
                status = new.get("status")
                new = copy.deepcopy(old)
                if status is None:
                    new.pop("status", None)
                else:
                    new["status"] = status
            elif "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        for key in (
            "uid",
            "creationTimestamp",
            "name",
            "namespace",
            "generation",
            "resourceVersion",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
        ):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        new["apiVersion"], new["kind"] = spec.api_version, spec.kind
        if old_meta.get("deletionTimestamp"):
            added = set(meta.get("finalizers") or ()) - set(old_meta.get("finalizers") or ())
            if added:
                raise ApiError(
                    422,
                    "Invalid",
                    "metadata.finalizers: Forbidden: no new finalizers can be "
                    f"added if the object is being deleted, found new finalizers {sorted(added)}",
                )
        if not meta.get("finalizers"):
            meta.pop("finalizers", None)
        if new == old:
            return old  # a no-op write changes nothing: no new resourceVersion, no event
        ignored = ("metadata", "status") if spec.status_subresource else ("metadata",)
        if {k: v for k, v in new.items() if k not in ignored} != {
            k: v for k, v in old.items() if k not in ignored
        }:
            meta["generation"] = int(old_meta.get("generation", 1)) + 1
        meta["resourceVersion"] = self._bump()
        self.store[(spec.key, ns, name)] = new
        self._emit(spec, "MODIFIED", new, old)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._remove(spec, ns, name)
        return new

    def _delete(self, spec: ResourceSpec, ns: str | None, name: str, body: Any) -> dict[str, Any]:
        old = self._get(spec, ns, name)
        pre = (body or {}).get("preconditions") if isinstance(body, dict) else None
        if pre:
            if pre.get("uid") and pre["uid"] != old["metadata"]["uid"]:
                raise ApiError(409, "Conflict", "Precondition failed: UID in precondition does not match")
            if pre.get("resourceVersion") and pre["resourceVersion"] != old["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", "Precondition failed: ResourceVersion does not match")
        if old["metadata"].get("finalizers"):
            if old["metadata"].get("deletionTimestamp"):
                return old
            new = copy.deepcopy(old)
            new["metadata"]["deletionTimestamp"] = now_text()
            new["metadata"]["deletionGracePeriodSeconds"] = 0
            new["metadata"]["generation"] = int(old["metadata"].get("generation", 1)) + 1
            new["metadata"]["resourceVersion"] = self._bump()
            self.store[(spec.key, ns, name)] = new
            self._emit(spec, "MODIFIED", new, old)
            return new
        return self._remove(spec, ns, name)

    def _remove(self, spec: ResourceSpec, ns: str | None, name: str) -> dict[str, Any]:
        obj = self.store.pop((spec.key, ns, name))
        obj = copy.deepcopy(obj)
        obj["metadata"]["resourceVersion"] = self._bump()
        self._emit(spec, "DELETED", obj, obj)
        self._collect_dependents(obj["metadata"]["uid"])
        return obj

    def _collect_dependents(self, owner_uid: str) -> None:
        """Background cascading deletion: dependents whose every owner is gone are deleted."""
        for (key, ns, name), obj in list(self.store.items()):
            refs = (obj.get("metadata") or {}).get("ownerReferences") or []
            if not any(r.get("uid") == owner_uid for r in refs):
                continue
            live = [r for r in refs if r.get("uid") != owner_uid and self._uid_exists(r.get("uid"))]
            if not live and (key, ns, name) in self.store:
                self._delete(self.specs[key], ns, name, None)

    def _uid_exists(self, uid: Any) -> bool:
        return any((o.get("metadata") or {}).get("uid") == uid for o in self.store.values())


def _age(stamp: Any) -> str:
    try:
        then = datetime.datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    except ValueError:
        return str(stamp)
    secs = int((datetime.datetime.now(tz=datetime.UTC) - then).total_seconds())
    return f"{secs}s" if secs < 120 else f"{secs // 60}m"


# ---------------------------------------------------------------- running it over HTTP


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class EmulatorRunner:
    """Serve an :class:`ApiServerEmulator` on 127.0.0.1 from a background thread's event loop.

    Each client process gets its own port (:meth:`add_endpoint`), all served by the one emulator, so the
    recorded requests say who made them (kmock records the URL of every request).
    """

    def __init__(self, emulator: ApiServerEmulator) -> None:
        self.emulator = emulator
        self.ports: dict[str, int] = {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="kmock", daemon=True)
        self._thread.start()
        self._servers: dict[str, kmock.Server] = {}
        asyncio.run_coroutine_threadsafe(self.emulator.__aenter__(), self.loop).result(10)

    def add_endpoint(self, who: str) -> int:
        self.ports[who] = free_port()
        self._start(who)
        return self.ports[who]

    def url(self, who: str) -> str:
        return f"http://127.0.0.1:{self.ports[who]}"

    def who(self, port: int | None) -> str:
        return next((w for w, p in self.ports.items() if p == port), "unknown")

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the emulator's loop (its state is not thread-safe)."""

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def _start(self, who: str) -> None:
        async def enter() -> None:
            server = kmock.Server(self.emulator, host="127.0.0.1", port=self.ports[who])
            await server.__aenter__()
            self._servers[who] = server

        asyncio.run_coroutine_threadsafe(enter(), self.loop).result(30)

    def start(self) -> None:
        """(Re)start every endpoint on its port."""
        self.emulator.closing = False
        for who in self.ports:
            if who not in self._servers:
                self._start(who)

    def stop(self) -> None:
        """Stop serving (an API outage): open watches end, new connections are refused."""

        async def leave() -> None:
            self.emulator.closing = True
            self.emulator._changed_event().set()
            for who in reversed(list(self._servers)):  # kmock's DNS interceptors nest: LIFO
                server = self._servers.pop(who)
                await server.__aexit__(None, None, None)

        asyncio.run_coroutine_threadsafe(leave(), self.loop).result(90)

    def close(self) -> None:
        self.stop()

        async def leave() -> None:
            await self.emulator.__aexit__(None, None, None)

        try:
            asyncio.run_coroutine_threadsafe(leave(), self.loop).result(10)
        except Exception:  # errors kmock accumulated; the tests assert on requests, not on these
            pass
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self.loop.close()

    def requests(self) -> list[dict[str, Any]]:
        """Every request served so far: who, method, path, query (for the API-request inventory)."""

        def collect() -> list[dict[str, Any]]:
            out = []
            for req in list(self.emulator._requests):
                out.append(
                    {
                        "who": self.who(req.url.port),
                        "method": str(req.method.value).upper(),
                        "path": req.url.path,
                        "query": dict(req.params),
                    }
                )
            return out

        result: list[dict[str, Any]] = self.call(collect)
        return result

    def sent_bytes(self) -> dict[str, int]:
        """Response bytes served so far (watch streams included) by client name."""

        def collect() -> dict[str, int]:
            out: dict[str, int] = {}
            for port, size in self.emulator.sent.items():
                out[self.who(port)] = out.get(self.who(port), 0) + size
            return out

        result: dict[str, int] = self.call(collect)
        return result

    def write_kubeconfig(self, path: pathlib.Path, who: str) -> pathlib.Path:
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "current-context": "kmock",
                    "clusters": [{"name": "kmock", "cluster": {"server": self.url(who)}}],
                    "users": [{"name": "kmock", "user": {}}],
                    "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
                }
            )
        )
        return path
