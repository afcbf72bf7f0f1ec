"""The API client: every blocking Kubernetes API call the agent and the controller make, as plain dicts.

Both processes talk to the API in two ways: kopf watches (asyncio, in the operator loop; their wiring is
:mod:`controller.wiring`) and the blocking calls here, made from worker threads (status writes,
finalizers, Events, Leases, the paginated listings). This is the only module that imports the
``kubernetes`` client (an import-linter contract): the set of requests stays small, reviewable and easy
to match with the RBAC rules in the chart (``tests/data/api_requests.json`` lists them).

Configuration comes from ``KUBECONFIG`` (or ``~/.kube/config``) or the in-cluster service account,
through the official client's loaders, so tokens, client certificates and token refresh behave as
for kubectl. Bodies are JSON dicts, never the client's models: the kinds are our own CRDs and a dict
is what the reconcilers' ``parse`` takes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import urllib.parse
from collections.abc import Iterator, Mapping
from typing import Any

import kubernetes
import urllib3

from controller import naming, registry

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
REQUEST_TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds for one blocking call; a hung API server must not hang a worker forever."""
LIST_PAGE = 500
"""Items per page of a list (``limit``/``continue``): a list of 5,000 Nodes or 250,000
StorageNodeStates is many bounded responses, never one huge one."""


class _Expired(Exception):
    """A continue token older than the server's compaction (410 Gone): the list must start over."""


class StartupError(Exception):
    """The agent or controller cannot start (no NODE_NAME, no API configuration): one line, exit 2."""


class ApiError(Exception):
    """An API call failed. ``status`` 0 means the server could not be reached at all."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message

    @property
    def temporary(self) -> bool:
        return self.status in {0, 429} or self.status >= 500

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def load_configuration(kubeconfig: str | None = None) -> Any:
    """In-cluster config when running in a pod, else the kubeconfig (``KUBECONFIG`` or the default)."""
    configuration = kubernetes.client.Configuration()
    if kubeconfig is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kubernetes.config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    else:
        kubernetes.config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=kubeconfig, client_configuration=configuration)
    # One attempt per call: the work queue owns retries and backoff.
    configuration.retries = False
    return configuration


def connection_info(kubeconfig: str | None) -> dict[str, Any]:
    """What kopf's login needs, from the same configuration as :class:`Api` (server, CA, credentials)."""
    c = load_configuration(kubeconfig)
    header = c.get_api_key_with_prefix("BearerToken") or c.get_api_key_with_prefix("authorization")
    scheme, token = None, None
    if header:
        parts = header.split(" ", 1)
        scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
    return {
        "server": c.host, "ca_path": c.ssl_ca_cert, "insecure": not c.verify_ssl, "scheme": scheme,
        "token": token, "username": c.username or None, "password": c.password or None,
        "certificate_path": c.cert_file, "private_key_path": c.key_file,
    }


def custom_path(kind: str, name: str | None = None, sub: str | None = None) -> str:
    path = f"/apis/{registry.GROUP}/{registry.VERSION}/{registry.PLURALS[kind]}"
    if name is not None:
        path += "/" + urllib.parse.quote(name, safe="")
    if sub:
        path += "/" + sub
    return path


class Api:
    """Blocking JSON calls; thread-safe (the client's urllib3 pool is)."""

    def __init__(self, configuration: Any, *, user_agent: str) -> None:
        self.client = kubernetes.client.ApiClient(configuration)
        self.client.user_agent = user_agent

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]

    # ---- the one request primitive

    def _call(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json", "Content-Type": content_type}
        query_params = list((query or {}).items())
        try:
            m, url, hdrs, data, post = self.client.param_serialize(
                method, path, query_params=query_params, header_params=headers, body=body,
                auth_settings=["BearerToken"],
            )
            response = self.client.call_api(m, url, hdrs, data, post, _request_timeout=REQUEST_TIMEOUT)
            response.read()  # type: ignore[no-untyped-call]
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ApiError(0, "Unreachable", f"{method} {path}: {exc}") from None
        except kubernetes.client.ApiException as exc:
            raise ApiError(exc.status or 0, exc.reason or "Error", f"{method} {path}") from None
        raw = response.data or b"{}"
        try:
            payload = json.loads(raw)
        except ValueError:
            payload = {"message": raw[:200].decode("utf-8", "replace")}
        if response.status >= 400:
            raise ApiError(response.status, str(payload.get("reason") or response.reason),
                           f"{method} {path}: {str(payload.get('message') or '')[:500]}")
        return payload

    # ---- reads

    def list_objects(
        self, path: str, *, label_selector: str | None = None, field_selector: str | None = None,
        limit: int = LIST_PAGE,
    ) -> list[dict[str, Any]]:
        """Every item of a list, page by page (``limit``/``continue``).

        Pages after the first are served from the same snapshot as the first ("API Concepts: Retrieving
        large results sets in chunks"); when that snapshot was compacted meanwhile the server answers 410
        Gone and the list starts over once, from a fresh snapshot."""
        for attempt in (1, 2):
            items: list[dict[str, Any]] = []
            try:
                for page in self._pages(path, label_selector, field_selector, limit):
                    items += page
                return items
            except _Expired:
                if attempt == 2:
                    raise ApiError(410, "Expired", f"GET {path}: the continue token expired twice") from None
                log.info("list %s: the continue token expired; listing again from the start", path)
        raise AssertionError("unreachable")

    def iter_objects(
        self, path: str, *, label_selector: str | None = None, limit: int = LIST_PAGE
    ) -> Iterator[dict[str, Any]]:
        """The items of a list as they arrive, one page in memory at a time. When the continue token
        expires the list starts over once from a fresh snapshot, so an item may come twice: for
        consumers that keep the newest resourceVersion (:mod:`controller.cache`)."""
        for attempt in (1, 2):
            try:
                for page in self._pages(path, label_selector, None, limit):
                    yield from page
                return
            except _Expired:
                if attempt == 2:
                    raise ApiError(410, "Expired", f"GET {path}: the continue token expired twice") from None
                log.info("list %s: the continue token expired; listing again from the start", path)

    def _pages(
        self, path: str, label_selector: str | None, field_selector: str | None, limit: int
    ) -> Iterator[list[dict[str, Any]]]:
        base: dict[str, str] = {"limit": str(limit)}
        if label_selector:
            base["labelSelector"] = label_selector
        if field_selector:
            base["fieldSelector"] = field_selector
        token = ""
        while True:
            query = {**base, "continue": token} if token else base
            try:
                page = self._call("GET", path, query=query)
            except ApiError as exc:
                if exc.status == 410 and token:
                    raise _Expired from None
                raise
            yield page.get("items") or []
            token = str((page.get("metadata") or {}).get("continue") or "")
            if not token:
                return

    def list_parents(self, kind: str) -> list[dict[str, Any]]:
        items = self.list_objects(custom_path(kind))
        for item in items:
            item.setdefault("apiVersion", registry.API_VERSION)
            item.setdefault("kind", kind)
        return items

    def _get(self, path: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self._call("GET", path)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        return obj

    def get_node(self, name: str) -> dict[str, Any] | None:
        return self._get("/api/v1/nodes/" + urllib.parse.quote(name, safe=""))

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        ns, secret = urllib.parse.quote(namespace, safe=""), urllib.parse.quote(name, safe="")
        return self._get(f"/api/v1/namespaces/{ns}/secrets/{secret}")

    def list_nodes(self) -> list[dict[str, Any]]:
        return self.list_objects("/api/v1/nodes")

    def list_node_states(self, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        return self.list_objects(custom_path(registry.NODE_STATE), label_selector=label_selector)

    def iter_node_states(self) -> Iterator[dict[str, Any]]:
        """Every StorageNodeState, a page at a time (the controller's start-up listing of 250,000)."""
        return self.iter_objects(custom_path(registry.NODE_STATE))

    # ---- StorageNodeStates (agent)

    def create_node_state(self, body: Mapping[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self._call("POST", custom_path(registry.NODE_STATE), body=dict(body))
        return obj

    def replace_node_state_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        """Make ``status`` the whole status (a JSON patch ``add /status``: keys that went away go, which a
        merge patch would keep)."""
        obj: dict[str, Any] = self._call(
            "PATCH", custom_path(registry.NODE_STATE, name, "status"),
            body=[{"op": "add", "path": "/status", "value": dict(status)}], content_type=JSON_PATCH,
        )
        return obj

    def delete_node_state(self, name: str, *, uid: str | None = None) -> bool:
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            self._call("DELETE", custom_path(registry.NODE_STATE, name), body=body)
        except ApiError as exc:
            if exc.not_found or (uid and exc.conflict):
                return False
            raise
        return True

    # ---- parents (controller)

    def patch_parent_status(self, kind: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self._call(
            "PATCH", custom_path(kind, name, "status"), body={"status": dict(status)},
            content_type=MERGE_PATCH,
        )
        return obj

    def set_parent_finalizers(self, kind: str, name: str, finalizers: list[str],
                              resource_version: str) -> dict[str, Any]:
        """Replace the finalizer list, only if the object is still at ``resource_version``."""
        body = {"metadata": {"finalizers": finalizers or None, "resourceVersion": resource_version}}
        obj: dict[str, Any] = self._call("PATCH", custom_path(kind, name), body=body,
                                           content_type=MERGE_PATCH)
        return obj

    # ---- Nodes (controller: scheduling signals, controller.node_signals)

    def patch_node(self, name: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        """A JSON merge patch of a Node: labels key by key; a ``spec.taints`` list replaces the list
        whole, so such a patch carries ``metadata.resourceVersion`` (409 Conflict when the Node moved)."""
        obj: dict[str, Any] = self._call(
            "PATCH", "/api/v1/nodes/" + urllib.parse.quote(name, safe=""), body=dict(patch),
            content_type=MERGE_PATCH,
        )
        return obj

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
        """A core/v1 Event about ``involved`` (kind, name, uid, apiVersion). Never raises.

        Events about cluster-scoped objects (all of ours, and Nodes) go to ``default``: the API server
        refuses any other namespace for them. No reportingController: that switches validation to the
        events.k8s.io rules (eventTime, action required); ``source`` is what kubectl describe shows.
        """
        if not involved.get("namespace"):
            namespace = "default"
        now = datetime.datetime.now(tz=datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        prefix = naming.label_value(str(involved.get("name", "x")).lower())[:40].strip(".-_") or "x"
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"generateName": f"{prefix}.", "namespace": namespace},
            "involvedObject": dict(involved),
            "type": event_type,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": component, **({"host": host} if host else {})},
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        try:
            self._call("POST", f"/api/v1/namespaces/{urllib.parse.quote(namespace, safe='')}/events",
                         body=body)
        except ApiError as exc:
            log.warning("cannot post event %s about %s/%s: %s", reason, involved.get("kind"),
                        involved.get("name"), exc)

    # ---- Leases (controller leader election)

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._get(_lease_path(namespace, name))

    def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self._call(
            "POST", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", body=dict(body))
        return obj

    def replace_lease(self, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self._call("PUT", _lease_path(namespace, name), body=dict(body))
        return obj


def _lease_path(namespace: str, name: str) -> str:
    return (f"/apis/coordination.k8s.io/v1/namespaces/{urllib.parse.quote(namespace, safe='')}"
            f"/leases/{urllib.parse.quote(name, safe='')}")


def add_process_arguments(parser: argparse.ArgumentParser, *, workers_help: str) -> None:
    """The flags the agent and the controller share: probe and metrics ports, workers, kubeconfig."""
    parser.add_argument(
        "--health-port",
        dest="health_port",
        type=int,
        default=None,
        help="port of /healthz and /readyz (env HOSTSTORAGE_HEALTH_PORT; default 8080; 0 off)",
    )
    parser.add_argument(
        "--metrics-port",
        dest="metrics_port",
        type=int,
        default=None,
        help="port of /metrics (env HOSTSTORAGE_METRICS_PORT; default 9090; 0 off)",
    )
    parser.add_argument("--workers", dest="workers", type=int, default=None, help=workers_help)
    parser.add_argument(
        "--kubeconfig",
        dest="kubeconfig",
        default=None,
        help="kubeconfig file (env KUBECONFIG; default in-cluster, else ~/.kube/config)",
    )
