"""The kopf wiring the agent and the controller share: watches feed a target, nothing is written back.

Both programs run kopf ``--standalone`` with event handlers only (DESIGN.md "The agent inside"): no
progress or diff-base annotations, no finalizers, no Events from handler logs, because N agents share
the parent objects and kopf's per-object state would collide between them. A handler only hands the
event to a :class:`WatchTarget` (which caches it and enqueues a key); every blocking call happens in
the target's work-queue threads. This module and the programs are the only importers of kopf (an
import-linter contract).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

import kopf

from controller import kube, registry


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
    settings.persistence.finalizer = f"{registry.GROUP}/kopf-unused"
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
    # kopf lists every watched resource before watching it; unpaginated by default (one response with
    # every StorageNodeState of the cluster). Pages of the size our own listings use:
    settings.watching.chunk_size = kube.LIST_PAGE
    return settings


def login_handler(kubeconfig: str | None) -> Any:
    """A kopf login handler using the same configuration as :class:`controller.kube.Api`."""

    def login(**_: Any) -> Any:
        return kopf.ConnectionInfo(**kube.connection_info(kubeconfig))

    return login


class WatchTarget(Protocol):
    """What the agent and the controller both watch: the parent kinds, Nodes and StorageNodeStates."""

    def on_parent(self, kind: str, event_type: str | None, obj: Mapping[str, Any]) -> None: ...

    def on_node(self, event_type: str | None, obj: Mapping[str, Any]) -> None: ...

    def on_state(self, event_type: str | None, obj: Mapping[str, Any]) -> None: ...


def register_watches(registry_: Any, target: WatchTarget, kinds: Iterable[str]) -> None:
    """kopf event handlers (no persistence on the objects) feeding ``target`` from every watch."""
    for kind in kinds:

        def parent_event(event: Mapping[str, Any], kind: str = kind, **_: Any) -> None:
            target.on_parent(kind, event.get("type"), event.get("object") or {})

        kopf.on.event(
            registry.GROUP, registry.VERSION, registry.PLURALS[kind], registry=registry_, id=f"parent-{kind}"
        )(parent_event)

    def node_event(event: Mapping[str, Any], **_: Any) -> None:
        target.on_node(event.get("type"), event.get("object") or {})

    def state_event(event: Mapping[str, Any], **_: Any) -> None:
        target.on_state(event.get("type"), event.get("object") or {})

    kopf.on.event("", "v1", "nodes", registry=registry_, id="nodes")(node_event)
    kopf.on.event(
        registry.GROUP, registry.VERSION, registry.NODE_STATE_PLURAL, registry=registry_, id="states"
    )(state_event)


async def operate(
    target: WatchTarget,
    kinds: Iterable[str],
    *,
    kubeconfig: str | None,
    component: str,
    instance: str,
    log_level: str,
    field_selectors: Mapping[str, str] | None = None,
    label_selectors: Mapping[str, str] | None = None,
) -> None:
    """Run kopf (standalone, cluster-wide) until it stops, feeding ``target``; ``*_selectors`` narrow the
    watches by plural (the agent watches only its own Node and its own StorageNodeStates)."""
    if log_level.upper() != "DEBUG":
        # kopf logs every handler call at INFO; ours only enqueue, so that is noise unless debugging.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    handlers = kopf.OperatorRegistry()
    register_watches(handlers, target, kinds)
    kopf.on.login(registry=handlers)(login_handler(kubeconfig))
    settings = operator_settings(component, instance)
    settings.watching.field_selectors.update(field_selectors or {})
    settings.watching.label_selectors.update(label_selectors or {})
    await kopf.operator(registry=handlers, settings=settings, standalone=True, clusterwide=True)
