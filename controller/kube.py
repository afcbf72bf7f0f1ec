"""The few Kubernetes API calls the agent and the controller make, as plain dicts over one client.

Both processes talk to the API in two ways: kopf watches (asyncio, in the operator loop) and the blocking
calls here, made from worker threads (status writes, finalizers, Events, Leases, the initial listing).
Keeping every call in this module makes the set of requests small, reviewable and easy to match with
the RBAC rules in the chart (``tests/data/api_requests.json`` lists them).

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
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import kopf
import kubernetes
import urllib3

from controller import naming

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
REQUEST_TIMEOUT = (5.0, 30.0)
"""(connect, read) seconds for one blocking call; a hung API server must not hang a worker forever."""


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


def plural(kind: str) -> str:
    return naming.PLURALS[kind]


def custom_path(kind: str, name: str | None = None, sub: str | None = None) -> str:
    path = f"/apis/{naming.GROUP}/{naming.VERSION}/{plural(kind)}"
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
        self.writes = 0
        """Count of mutating calls made (the bench reads it through /metrics)."""

    def close(self) -> None:
        self.client.close()  # type: ignore[no-untyped-call]

    # ---- the one request primitive

    def request(
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
        if method != "GET":
            self.writes += 1
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

    def list_objects(self, path: str, *, label_selector: str | None = None,
                     field_selector: str | None = None) -> list[dict[str, Any]]:
        query = {}
        if label_selector:
            query["labelSelector"] = label_selector
        if field_selector:
            query["fieldSelector"] = field_selector
        items: list[dict[str, Any]] = self.request("GET", path, query=query).get("items") or []
        return items

    def list_parents(self, kind: str) -> list[dict[str, Any]]:
        items = self.list_objects(custom_path(kind))
        for item in items:
            item.setdefault("apiVersion", naming.API_VERSION)
            item.setdefault("kind", kind)
        return items

    def get_parent(self, kind: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.request("GET", custom_path(kind, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        return obj

    def get_node(self, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.request("GET", "/api/v1/nodes/" + urllib.parse.quote(name, safe=""))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        return obj

    def get_secret(self, namespace: str, name: str) -> dict[str, Any] | None:
        path = "/api/v1/namespaces/{}/secrets/{}".format(
            urllib.parse.quote(namespace, safe=""), urllib.parse.quote(name, safe="")
        )
        try:
            obj: dict[str, Any] = self.request("GET", path)
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        return obj

    def list_nodes(self) -> list[dict[str, Any]]:
        return self.list_objects("/api/v1/nodes")

    def list_node_states(self, *, label_selector: str | None = None) -> list[dict[str, Any]]:
        return self.list_objects(custom_path("StorageNodeState"), label_selector=label_selector)

    # ---- StorageNodeStates (agent)

    def create_node_state(self, body: Mapping[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.request("POST", custom_path("StorageNodeState"), body=dict(body))
        return obj

    def patch_node_state_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.request(
            "PATCH", custom_path("StorageNodeState", name, "status"), body={"status": dict(status)},
            content_type=MERGE_PATCH,
        )
        return obj

    def delete_node_state(self, name: str, *, uid: str | None = None) -> bool:
        body = {"preconditions": {"uid": uid}} if uid else None
        try:
            self.request("DELETE", custom_path("StorageNodeState", name), body=body)
        except ApiError as exc:
            if exc.not_found or (uid and exc.conflict):
                return False
            raise
        return True

    # ---- parents (controller)

    def patch_parent_status(self, kind: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.request(
            "PATCH", custom_path(kind, name, "status"), body={"status": dict(status)},
            content_type=MERGE_PATCH,
        )
        return obj

    def set_parent_finalizers(self, kind: str, name: str, finalizers: list[str],
                              resource_version: str) -> dict[str, Any]:
        """Replace the finalizer list, only if the object is still at ``resource_version``."""
        body = {"metadata": {"finalizers": finalizers or None, "resourceVersion": resource_version}}
        obj: dict[str, Any] = self.request("PATCH", custom_path(kind, name), body=body,
                                           content_type=MERGE_PATCH)
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
            self.request("POST", f"/api/v1/namespaces/{urllib.parse.quote(namespace, safe='')}/events",
                         body=body)
        except ApiError as exc:
            log.warning("cannot post event %s about %s/%s: %s", reason, involved.get("kind"),
                        involved.get("name"), exc)

    # ---- Leases (controller leader election)

    def get_lease(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            obj: dict[str, Any] = self.request("GET", _lease_path(namespace, name))
        except ApiError as exc:
            if exc.not_found:
                return None
            raise
        return obj

    def create_lease(self, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.request(
            "POST", f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases", body=dict(body))
        return obj

    def replace_lease(self, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = self.request("PUT", _lease_path(namespace, name), body=dict(body))
        return obj


def _lease_path(namespace: str, name: str) -> str:
    return (f"/apis/coordination.k8s.io/v1/namespaces/{urllib.parse.quote(namespace, safe='')}"
            f"/leases/{urllib.parse.quote(name, safe='')}")


def resource_version_newer(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Whether ``new`` is at least as recent as ``old`` (resourceVersions compared as integers).

    Kubernetes calls resourceVersion opaque, but etcd-backed servers hand out increasing integers; we
    only use this to keep a watch event from being overwritten by an older list result, and fall back
    to "newer" when either is not a number.
    """
    if old is None:
        return True
    a = (new.get("metadata") or {}).get("resourceVersion")
    b = (old.get("metadata") or {}).get("resourceVersion")
    if isinstance(a, str) and isinstance(b, str) and a.isdigit() and b.isdigit():
        return int(a) >= int(b)
    return True


# ---------------------------------------------------------------- kopf wiring shared by agent and controller


class _NoProgress(kopf.ProgressStorage):
    """Stores nothing: we use event handlers only, and must never write kopf state onto shared parents."""

    def fetch(self, *, key: Any, body: Any) -> None:
        return None

    def store(self, *, key: Any, record: Any, body: Any, patch: Any) -> None:
        return None

    def purge(self, *, key: Any, body: Any, patch: Any) -> None:
        return None

    def touch(self, *, body: Any, patch: Any, value: Any) -> None:
        return None

    def clear(self, *, essence: Any) -> Any:
        return essence


class _NoDiffBase(kopf.DiffBaseStorage):
    def fetch(self, *, body: Any) -> None:
        return None

    def store(self, *, body: Any, patch: Any, essence: Any) -> None:
        return None


def operator_settings(component: str, instance: str) -> Any:
    """kopf settings that write nothing to watched objects: no progress or diff-base annotations, no
    finalizers (we register no change-detecting handlers), no Events from handler logs."""
    settings = kopf.OperatorSettings()
    settings.persistence.progress_storage = _NoProgress()
    settings.persistence.diffbase_storage = _NoDiffBase()
    settings.persistence.finalizer = f"{naming.GROUP}/kopf-unused"
    settings.posting.enabled = False
    settings.peering.standalone = True
    settings.peering.clusterwide = True
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 10
    settings.networking.request_timeout = 60
    settings.networking.connect_timeout = 10
    settings.posting.reporting_component = component
    settings.posting.reporting_instance = instance
    settings.scanning.disabled = True
    return settings


def login_handler(kubeconfig: str | None) -> Any:
    """A kopf login handler using the same configuration as :class:`Api`."""

    def login(**_: Any) -> Any:
        c = load_configuration(kubeconfig)
        header = c.get_api_key_with_prefix("BearerToken") or c.get_api_key_with_prefix("authorization")
        scheme, token = None, None
        if header:
            parts = header.split(" ", 1)
            scheme, token = (parts[0], parts[1]) if len(parts) == 2 else (None, parts[0])
        return kopf.ConnectionInfo(
            server=c.host, ca_path=c.ssl_ca_cert, insecure=not c.verify_ssl, scheme=scheme, token=token,
            username=c.username or None, password=c.password or None,
            certificate_path=c.cert_file, private_key_path=c.key_file,
        )

    return login


class WatchTarget(Protocol):
    """What the agent and the controller both watch: the parent kinds, Nodes and StorageNodeStates."""

    def on_parent(self, kind: str, event_type: str | None, obj: Mapping[str, Any]) -> None: ...

    def on_node(self, event_type: str | None, obj: Mapping[str, Any]) -> None: ...

    def on_state(self, event_type: str | None, obj: Mapping[str, Any]) -> None: ...


def register_watches(registry: Any, target: WatchTarget, kinds: Iterable[str]) -> None:
    """kopf event handlers (no persistence on the objects) feeding ``target`` from every watch."""
    for kind in kinds:

        def parent_event(event: Mapping[str, Any], kind: str = kind, **_: Any) -> None:
            target.on_parent(kind, event.get("type"), event.get("object") or {})

        kopf.on.event(
            naming.GROUP, naming.VERSION, naming.PLURALS[kind], registry=registry, id=f"parent-{kind}"
        )(parent_event)

    def node_event(event: Mapping[str, Any], **_: Any) -> None:
        target.on_node(event.get("type"), event.get("object") or {})

    def state_event(event: Mapping[str, Any], **_: Any) -> None:
        target.on_state(event.get("type"), event.get("object") or {})

    kopf.on.event("", "v1", "nodes", registry=registry, id="nodes")(node_event)
    kopf.on.event(naming.GROUP, naming.VERSION, "storagenodestates", registry=registry, id="states")(
        state_event
    )


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
