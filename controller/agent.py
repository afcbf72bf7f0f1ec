"""``hoststorage agent``: the node agent. Makes this node match the parents that select it.

DESIGN.md "The agent inside" and "Start-up sequence", in code. This module is intake and dispatch and
the program's composition root; the rules it applies each have their own module:

- kopf watches feed :meth:`Agent.on_parent`, :meth:`Agent.on_node`, :meth:`Agent.on_state`
  (:mod:`controller.wiring`); they only update caches (:mod:`controller.cache`) and enqueue a key
  ``(kind, name)`` (not for a parent event that changes only its status: the controller's roll-up
  writes are no work for an agent). Everything else happens in :class:`controller.workqueue.WorkQueue`
  worker threads, because reconcilers block (mount, iscsiadm, libvirt).
- A worker reads the latest parent and this Node, parses the parent with its kind module and decides
  with the parsed ``spec.node_selector`` whether it applies here, then reconciles (or hands it to the
  kind's runtime, :mod:`controller.runtimes`) or tears down. Every kind is a
  :class:`reconcilers.kind.Kind` loaded from :mod:`controller.registry`; what differs per kind is in its
  registry row, never in an ``if`` here.
- What happens to this node's StorageNodeState after a teardown is :mod:`controller.teardown`; which
  changes post an Event is :mod:`controller.events`; the writes themselves (only on change, 409
  recovery) are :mod:`controller.node_states`.
- Every applicable key is re-run every ``resync_seconds`` (jittered): drift (a mount removed behind our
  back) is repaired, logged and counted.
- Every ``relist_seconds`` (default 3600, and once shortly after the initial refresh) the agent lists
  its own StorageNodeStates afresh and writes again any the API lost with no watch event seen
  (:meth:`Agent.relist_records`).
- Ledger entries without a parent (deleted while the agent was down) are torn down once the initial
  listing is complete, never before: an empty cache must not look like "everything was deleted".
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import json
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from controller import (
    cache,
    events,
    health,
    kube,
    metrics,
    naming,
    node_states,
    profiling,
    registry,
    runtimes,
    settings,
    teardown,
    wiring,
    workqueue,
)
from hostlib import checker, errors, ledger, leftovers, libvirt_pools, preflight
from reconcilers import host as host_mod
from reconcilers import kind as kind_mod
from reconcilers import status as status_mod

log = logging.getLogger(__name__)

Key = tuple[str, str]

USER_ERRORS = (kube.StartupError,)
"""Errors the CLI reports as one line and exit code 2."""

COMPONENT = events.COMPONENT
StartupError = kube.StartupError
RELIST_FIRST = 30.0
"""Seconds after the initial refresh before the first relist of our records: kopf's watches, which list
by themselves, have started by then, so a deletion between our listing and theirs is caught."""


def _runtime_factory(path: str) -> runtimes.Factory:
    module, _, name = path.partition(":")
    factory: runtimes.Factory = getattr(importlib.import_module(module), name)
    return factory


class Agent:
    """The state and the work of one node agent, independent of how events arrive (kopf or tests)."""

    def __init__(
        self,
        conf: settings.Settings,
        api: kube.Api,
        host: host_mod.Host,
        *,
        kinds: Iterable[str] | None = None,
        stats: metrics.Metrics | None = None,
    ) -> None:
        if not conf.node_name:
            raise StartupError(
                "NODE_NAME is not set: the agent must know which Node it serves "
                "(set it from the downward API, spec.nodeName)"
            )
        self.conf = conf
        self.node = conf.node_name
        self.api = api
        self.host = host
        self.rows = {r.kind: r for r in registry.ordered(kinds)}
        self.kinds: dict[str, kind_mod.Kind[Any]] = registry.load_all(self.rows)
        self.metrics = stats or metrics.Metrics("agent")
        self.parents = cache.ObjectCache(tombstones=True)
        self.nodes = cache.ObjectCache()
        """This agent's own Node (the watch is narrowed to it)."""
        self.writer = node_states.NodeStateWriter(api, self.node, self.metrics)
        self.last: dict[Key, dict[str, Any]] = {}
        self.synced = threading.Event()
        self.ready = threading.Event()
        self._lock = threading.Lock()
        self._initial: set[Key] = set()
        self._done_early: set[Key] = set()
        self.preflight: preflight.Report | None = None
        self.stopping = threading.Event()
        self._unsubscribe: dict[str, kind_mod.Unsubscribe] = {}
        self.queue = workqueue.WorkQueue(
            self.process, workers=conf.workers, name="agent", backoff_base=1.0, backoff_max=60.0
        )
        self.metrics.watch_queue(self.queue.depth)
        self.metrics.watch_ready(self.ready.is_set)
        self.runtimes: dict[str, runtimes.Runtime] = {
            kind: _runtime_factory(row.runtime)(
                self._enqueuer(kind), self.metrics.registry, host, self._notifier(kind)
            )
            for kind, row in self.rows.items()
            if row.runtime
        }
        """The kinds driven by a runtime beside reconcile (DESIGN.md start-up step 6: monitors)."""

    def _enqueuer(self, kind: str) -> Callable[[str], None]:
        def enqueue(name: str) -> None:
            self.queue.add((kind, name))

        return enqueue

    def start_runtimes(self) -> None:
        for runtime in self.runtimes.values():
            runtime.start()

    def stop_runtimes(self) -> None:
        for runtime in self.runtimes.values():
            runtime.stop()

    def _notifier(self, kind: str) -> runtimes.Notify:
        def notify(name: str, event: events.Event) -> None:
            # A runtime's own news (a DomainMonitor's VM resume batch): an Event on the cached parent.
            parent = self.parents.get((kind, name))
            if parent is not None:
                news = events.Event(event.type, event.reason, f"{self.node}: {event.message}")
                events.post(self.api, parent, news, node=self.node)

        return notify

    # ------------------------------------------------------------------ event intake (any thread)

    def on_parent(self, kind: str, event_type: str | None, obj: Mapping[str, Any]) -> None:
        name = cache.meta(obj).get("name")
        if kind not in self.kinds or not isinstance(name, str):
            return
        body = dict(obj)
        body.setdefault("apiVersion", registry.API_VERSION)
        body.setdefault("kind", kind)
        before = self.parents.get((kind, name))
        if not self.parents.apply(event_type, (kind, name), body) or not self.synced.is_set():
            return
        # The controller's status writes (one per parent per window, to every agent) are no work here:
        # only what the reconcile reads makes a pass. The resync still runs for drift.
        if event_type == "DELETED" or before is None or _intent(before) != _intent(body):
            self.queue.add((kind, name))

    def _node(self) -> dict[str, Any] | None:
        return self.nodes.get(self.node)

    def on_node(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        if cache.meta(obj).get("name") != self.node:
            return
        old = self._node()
        if not self.nodes.apply(event_type, self.node, obj) or event_type == "DELETED":
            return
        labels = cache.meta(obj).get("labels")
        if old is not None and _uid(old) and _uid(obj) and _uid(old) != _uid(obj):
            # Deleted and added again, perhaps between two listings (ours at start-up and kopf's), so
            # neither deletion was seen: our records went with the old Node. Every pass writes anew
            # (node_states.of_another_node).
            log.warning(
                "node %s: re-created (uid %s, was %s); its StorageNodeStates went with the old Node; "
                "writing them again",
                self.node,
                _uid(obj),
                _uid(old),
            )
            if self.synced.is_set():
                self.enqueue_all()
        elif old is None or cache.meta(old).get("labels") != labels:
            log.info("node %s: labels now %s; re-evaluating every object", self.node, labels)
            if self.synced.is_set():
                self.enqueue_all()

    def on_state(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        spec = obj.get("spec") or {}
        if spec.get("nodeName") != self.node:
            return
        ref = spec.get("parentRef") or {}
        key = (str(ref.get("kind")), str(ref.get("name")))
        # Someone else changed or removed our record: level-triggered, so just look again.
        if self.writer.observed(event_type, obj) and self.synced.is_set() and key[0] in self.kinds:
            self.queue.add(key)

    def enqueue_all(self) -> list[Key]:
        keys: set[Key] = {k for k in self.parents.all_keys() if isinstance(k, tuple)}
        for kind in self.kinds:
            keys.update((kind, e.name) for e in self.host.ledger.entries(kind))
        for key in sorted(keys, key=lambda k: (self.rows[k[0]].order, k[1])):
            self.queue.add(key)
        return sorted(keys)

    def relist_records(self) -> list[Key]:
        """List our StorageNodeStates afresh and queue again each parent whose record the API lost with
        no watch event seen (deleted between our start-up listing and kopf's, say); returns those keys."""
        before = self.writer.snapshot()
        listed = self.api.list_node_states(label_selector=naming.node_selector(self.node))
        for obj in listed:
            self.on_state(None, obj)
        gone = self.writer.forget_unlisted(before, (str(cache.meta(o).get("name")) for o in listed))
        keys: list[Key] = []
        for record in gone:
            ref = (record.get("spec") or {}).get("parentRef") or {}
            key = (str(ref.get("kind")), str(ref.get("name")))
            log.warning(
                "node %s: StorageNodeState %s is gone and no watch event said so; writing it again",
                self.node,
                cache.meta(record).get("name"),
            )
            if key[0] in self.kinds:
                self.queue.add(key)
                keys.append(key)
        return keys

    def relist_loop(self) -> None:
        """:meth:`relist_records` every ``relist_seconds`` (jittered), the first time ``RELIST_FIRST``
        seconds after the initial refresh (kopf's own listing is done by then); off at 0."""
        period = self.conf.relist_seconds
        if period <= 0:
            return
        while not self.ready.wait(1.0):
            if self.stopping.is_set():
                return
        delay = min(RELIST_FIRST, period)
        while not self.stopping.wait(delay):
            try:
                self.relist_records()
            except kube.ApiError as exc:  # the next period tries again; the watch still feeds the cache
                log.warning("node %s: relist of our StorageNodeStates failed: %s", self.node, exc)
            delay = period * random.uniform(0.9, 1.1)  # noqa: S311

    # ------------------------------------------------------------------ start-up

    def _list_everything(self) -> None:
        node = self.api.get_node(self.node)
        if node is None:
            raise kube.ApiError(404, "NotFound", f"node {self.node} does not exist (yet)")
        self.on_node("ADDED", node)
        for obj in self.api.list_node_states(label_selector=naming.node_selector(self.node)):
            self.on_state("ADDED", obj)
        for kind in self.kinds:
            for obj in self.api.list_parents(kind):
                self.on_parent(kind, "ADDED", obj)

    def initial_refresh(self) -> None:
        """List the Node, our StorageNodeStates and every parent, then enqueue everything once.

        Runs in the background; readiness turns true when every key has been processed once.
        """
        if not cache.list_with_backoff(
            self._list_everything, self.stopping, f"node {self.node}", errors=(kube.ApiError,)
        ):
            return
        self.synced.set()
        self.subscribe_host_events()
        keys = set(self.enqueue_all())
        with self._lock:
            self._initial = keys - self._done_early
            if not self._initial:
                self.ready.set()
        log.info("node %s: initial refresh of %d objects started", self.node, len(self._initial))

    def subscribe_host_events(self) -> None:
        """Every kind's ``subscribe(host, enqueue, known)`` feeds this queue (pools: libvirt lifecycle
        events and reconnects), so a pool stopped behind our back is reconciled at once."""
        for kind, module in self.kinds.items():
            if kind in self._unsubscribe:
                continue

            def known(kind: str = kind) -> list[str]:
                names = {k[1] for k in self.parents.all_keys() if isinstance(k, tuple) and k[0] == kind}
                return sorted(names | {e.name for e in self.host.ledger.entries(kind)})

            try:
                self._unsubscribe[kind] = module.subscribe(self.host, self._enqueuer(kind), known)
            except errors.HostStorageError as exc:  # libvirtd down: resync still covers; the layer reconnects
                log.warning("node %s: no %s host events (%s); relying on resync", self.node, kind, exc)

    def unsubscribe_host_events(self) -> None:
        for unsubscribe in self._unsubscribe.values():
            with contextlib.suppress(Exception):
                unsubscribe()

    def _initial_done(self, key: Key) -> None:
        with self._lock:
            if not self.ready.is_set() and not self._initial:
                self._done_early.add(key)  # processed before initial_refresh recorded its keys
            if key in self._initial:
                self._initial.discard(key)
                if not self._initial and not self.ready.is_set():
                    self.ready.set()
                    log.info("node %s: initial refresh done; ready", self.node)

    # ------------------------------------------------------------------ the work

    def _decide(
        self, module: kind_mod.Kind[Any], parent: Mapping[str, Any] | None, node: Mapping[str, Any]
    ) -> tuple[bool, str, Any]:
        """(applies here, why, the parsed spec or the InvalidSpec error or None)."""
        if parent is None:
            return False, teardown.DELETED, None
        if cache.meta(parent).get("deletionTimestamp"):
            spec: Any = None
            with contextlib.suppress(errors.InvalidSpec):
                spec = module.parse(parent)
            return False, teardown.DELETING, spec
        try:
            spec = module.parse(parent)
        except errors.InvalidSpec as exc:
            return True, "invalid", exc  # reported as InvalidSpec; never guessed away
        labels = cache.meta(node).get("labels") or {}
        if spec.node_selector.matches(labels):
            return True, "selected", spec
        return False, teardown.NOT_SELECTED, spec

    def process(self, key: Key) -> bool:
        """One level-triggered pass over ``key``; returns whether to retry with backoff."""
        kind, name = key
        module = self.kinds.get(kind)
        if module is None:
            return False
        parent = self.parents.get(key)
        node = self._node()
        if node is None:
            log.info("node %s: Node object not seen yet; %s/%s waits", self.node, kind, name)
            return True
        applies = False
        start = time.monotonic()
        retry = True
        try:
            applies, why, spec = self._decide(module, parent, node)
            if applies:
                assert parent is not None
                retry = self._reconcile(module, key, parent, spec, node)
            else:
                retry = self._teardown(module, key, parent, spec=spec, why=why, node=node)
        except kube.ApiError as exc:
            log.warning("%s/%s on %s: API call failed: %s", kind, name, self.node, exc)
        except Exception:
            # A bug in a reconciler must not stall readiness or the resync of this key.
            log.exception("%s/%s on %s: unexpected error; retrying with backoff", kind, name, self.node)
            self.metrics.reconciles.labels(kind, "error").inc()
        finally:
            self.metrics.duration.labels(kind).observe(time.monotonic() - start)
            self._initial_done(key)
            if applies and not self.stopping.is_set():
                self.queue.add(key, delay=self.conf.resync_seconds * random.uniform(0.9, 1.1))  # noqa: S311
        return retry

    def _reconcile(
        self, module: kind_mod.Kind[Any], key: Key, parent: dict[str, Any], spec: Any, node: Mapping[str, Any]
    ) -> bool:
        kind, name = key
        generation = cache.meta(parent).get("generation")
        runtime = self.runtimes.get(kind)
        if isinstance(spec, errors.InvalidSpec):
            result = module.RESULTS.invalid(name, spec)
        elif runtime is not None:
            result = runtime.ensure(spec, self.host)
        else:
            result = module.reconcile(spec, self.host)
        previous = self.last.get(key)
        repaired = bool(
            result.changed
            and previous is not None
            and previous.get("ready")
            and previous.get("generation") == generation
        )
        if repaired:
            self.metrics.repairs.labels(kind).inc()
            log.warning(
                "%s/%s on %s: drift repaired (the host changed behind our back): %s",
                kind,
                name,
                self.node,
                result.message,
            )
        elif result.changed:
            log.info("%s/%s on %s: %s: %s", kind, name, self.node, result.phase, result.message)
        for event in events.after_reconcile(
            self.rows[kind],
            old_phase=(previous or {}).get("phase"),
            old_reason=(previous or {}).get("reason"),
            phase=result.phase,
            reason=result.reason,
            message=result.message,
            node=self.node,
            repaired=repaired,
        ):
            events.post(self.api, parent, event, node=self.node)
        self.metrics.reconciles.labels(kind, _outcome(result)).inc()
        self.last[key] = {
            "phase": result.phase,
            "ready": result.ready,
            "reason": result.reason,
            "generation": generation,
            "at": time.time(),
        }
        self._update_ready_gauge()
        block = result.status_block()
        if generation is not None:
            block["observedGeneration"] = generation
        # A runtime's numbers move all the time: written when it says a report is due (transition,
        # threshold, reportInterval), not on every resync.
        skip_numbers = runtime is not None and not runtime.report_due(name)
        self.writer.write(kind, parent, block, node_uid=_uid(node), numbers_only_skip=skip_numbers)
        return bool(result.retry)

    def _teardown(
        self,
        module: kind_mod.Kind[Any],
        key: Key,
        parent: dict[str, Any] | None,
        *,
        spec: Any,
        why: str,
        node: Mapping[str, Any],
    ) -> bool:
        kind, name = key
        if parent is None and not self.synced.is_set():
            return False
        runtime = self.runtimes.get(kind)
        if runtime is not None:
            runtime.forget(name)
        entry = self.host.ledger.get(kind, name)
        retry = False
        if entry is not None:
            result = module.teardown(spec if spec is not None else entry, self.host)
            block = result.status_block()
            retry = teardown.retry(result.phase, result.retry)
            log.info(
                "%s/%s on %s: %s (%s): %s: %s",
                kind,
                name,
                self.node,
                result.phase,
                why,
                result.reason,
                result.message,
            )
            done = result.phase == registry.DETACHED
            self.metrics.reconciles.labels(kind, "teardown" if done else "teardown-failed").inc()
        else:
            block = teardown.nothing_here(module.DETAIL_KEY, why)
        self.last.pop(key, None)
        self._update_ready_gauge()
        current = self.writer.current(kind, name)
        action = teardown.record_action(
            parent_exists=parent is not None,
            why=why,
            phase=block["phase"],
            had_entry=entry is not None,
            have_record=current is not None,
        )
        if action is teardown.Record.DELETE and current is not None:
            self.writer.delete(self.writer.name(kind, name), current)
        if action is not teardown.Record.WRITE or parent is None:
            return retry
        generation = cache.meta(parent).get("generation")
        if generation is not None:
            block["observedGeneration"] = generation
        was = ((current or {}).get("status") or {}).get("phase")
        message = next((c.get("message", "") for c in block.get("conditions") or []), "")
        for event in events.after_teardown(was, block["phase"], message, node=self.node):
            events.post(self.api, parent, event, node=self.node)
        self.writer.write(kind, parent, block, node_uid=_uid(node))
        return retry

    def _update_ready_gauge(self) -> None:
        self.metrics.observe_objects(self.kinds, self.last)

    # ------------------------------------------------------------------ probes, dumps

    def alive(self) -> tuple[bool, dict[str, Any]]:
        """Liveness: the work queue's heartbeat and every runtime's (a stuck scheduler or dead workers
        fail it, and the kubelet restarts the agent; mounts and pools stay)."""
        ok, why = self.queue.healthy()
        detail: dict[str, Any] = {"node": self.node}
        if not ok:
            detail["queue"] = why
        for kind, runtime in self.runtimes.items():
            if not runtime.healthy():
                ok = False
                detail[kind] = "scheduler not looping"
        return ok, detail

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        detail: dict[str, Any] = {
            "node": self.node,
            "initialRefreshDone": self.ready.is_set(),
            "pending": len(self._initial),
        }
        if self.preflight is not None:
            detail["unsupported"] = self.preflight.problems()
        return self.ready.is_set(), detail

    def dump(self) -> dict[str, Any]:
        return {
            "node": self.node,
            "ready": self.ready.is_set(),
            "parents": sorted(f"{k[0]}/{k[1]}" for k in self.parents.all_keys() if isinstance(k, tuple)),
            "queue": self.queue.dump(),
            "last": {f"{k}/{n}": v for (k, n), v in sorted(self.last.items())},
            "ledger": [f"{e.kind}/{e.name}" for e in self.host.ledger.entries()],
            "runtimes": {kind: r.snapshot() for kind, r in self.runtimes.items()},
        }


_NOT_INTENT = frozenset({"resourceVersion", "managedFields"})


def _intent(parent: Mapping[str, Any]) -> dict[str, Any]:
    """What of a parent an agent acts on: everything but its status and the metadata every write moves
    (resourceVersion, managedFields), so a status-only event is no change."""
    out = {k: v for k, v in parent.items() if k != "status"}
    out["metadata"] = {k: v for k, v in cache.meta(parent).items() if k not in _NOT_INTENT}
    return out


def _uid(obj: Mapping[str, Any]) -> str:
    return str(cache.meta(obj).get("uid") or "")


def _outcome(result: status_mod.NodeResult) -> str:
    if result.ready:
        return "ok"
    if result.reason == errors.InvalidSpec.reason:
        return "invalid"
    return "retry" if result.retry else "failed"


# ---------------------------------------------------------------------- process wiring


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kube.add_process_arguments(parser, workers_help="objects reconciled at once (default 4)")
    parser.add_argument(
        "--resync-seconds",
        dest="resync_seconds",
        type=float,
        default=None,
        help="re-reconcile every object this often, jittered (default 60)",
    )
    parser.add_argument(
        "--relist-seconds",
        dest="relist_seconds",
        type=float,
        default=None,
        help="list our own StorageNodeStates afresh this often and write again any the API lost "
        "(default 3600; 0 disables)",
    )
    parser.add_argument(
        "--shutdown-timeout",
        dest="shutdown_timeout",
        type=float,
        default=None,
        help="seconds in-flight work may take after SIGTERM (default 20)",
    )
    parser.add_argument(
        "--profile-dir",
        dest="profile_dir",
        default=None,
        help="write CPU and memory profiles here on exit and SIGUSR1 (default off)",
    )
    parser.add_argument(
        "--node-name",
        dest="node_name",
        default=None,
        help="the Node this agent serves (env NODE_NAME; required)",
    )


def build_host(
    conf: settings.Settings, api: kube.Api | None = None, *, pools: host_mod.Pools | None = None
) -> host_mod.Host:
    """The agent's Host: its Secrets (own namespace), its libvirt layer (``pools``), a one-shot checker
    per use. No process-global fallback: without ``pools`` this agent runs no StoragePools."""
    lookup = secret_lookup(api, conf.event_namespace) if api is not None else None
    return host_mod.Host.for_config(
        conf.host_config(),
        node_name=conf.node_name,
        secret_lookup=lookup,
        pools=(lambda: pools) if pools is not None else None,
        checker=checker.Checker,
    )


def secret_lookup(api: kube.Api, own_namespace: str) -> host_mod.SecretLookup:
    """``chapSecretRef`` resolution for the agent: Secrets of its own namespace only, read when needed.

    RBAC lets the agent read Secrets in its own namespace and nowhere else, so a reference to another
    namespace is a spec error rather than a Forbidden retried forever. Values are decoded here and go
    straight to the host layer, which keeps them out of logs, status and Events. A missing Secret is
    KeyError (the reconciler waits for it); an unreachable API is a temporary error.
    """

    def lookup(namespace: str, name: str) -> Mapping[str, str]:
        if namespace and namespace != own_namespace:
            raise errors.InvalidSpec(
                f"Secret {namespace}/{name}: the agent reads Secrets only in its own namespace "
                f"{own_namespace!r}; create the Secret there or leave chapSecretRef.namespace empty"
            )
        try:
            obj = api.get_secret(own_namespace, name)
        except kube.ApiError as exc:
            raise errors.NotFound(f"Secret {own_namespace}/{name}: {exc}") from None
        if obj is None:
            raise KeyError(name)
        out: dict[str, str] = {}
        for key, value in (obj.get("data") or {}).items():
            try:
                out[str(key)] = base64.b64decode(str(value)).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                continue  # not a text value: never a CHAP username or password
        return out

    return lookup


def run(args: argparse.Namespace, conf: settings.Settings) -> int:
    """The ``agent`` subcommand: the composition root of the node agent."""
    if not conf.node_name:
        raise StartupError(
            "NODE_NAME is not set: the agent must know which Node it serves "
            "(env NODE_NAME from the downward API, or --node-name)"
        )
    profiler = profiling.Profiler(conf.profile_dir, "agent")
    try:
        configuration = kube.load_configuration(conf.kubeconfig or None)
    except Exception as exc:
        raise StartupError(f"no Kubernetes API configuration (KUBECONFIG or in-cluster): {exc}") from None
    api = kube.Api(configuration, user_agent=f"{COMPONENT}/{conf.node_name}")
    # A broken mount base or state dir stops the agent with one line.
    try:
        os.makedirs(conf.effective_mount_base, mode=0o755, exist_ok=True)
    except OSError as exc:
        raise StartupError(f"cannot create mount base {conf.effective_mount_base}: {exc.strerror}") from None
    # DESIGN.md start-up step 3: the libvirt event loop and connection before anything talks to libvirt;
    # the layer reconnects with backoff when libvirtd is not there (yet).
    pools = libvirt_pools.PoolLayer(conf.libvirt_uri)
    pools.connect()
    try:
        with contextlib.ExitStack() as held:
            try:
                held.enter_context(ledger.host_lock(conf.state_dir, timeout=conf.lock_timeout))
                host = build_host(conf, api, pools=pools)
            except (ledger.StateDirError, ledger.LedgerCorrupt) as exc:
                raise StartupError(exc.message) from None
            leftovers.clean_stale(host.config.mount_base, host.ledger)
            agent = Agent(conf, api, host)
            agent.preflight = preflight.check(host.config)
            agent.metrics.observe_preflight(agent.preflight)
            for problem in agent.preflight.problems():
                log.warning("node %s: preflight: %s", conf.node_name, problem)
            try:
                return asyncio.run(_serve(agent, conf, profiler))
            finally:
                profiler.write()
                api.close()
    finally:
        pools.close()


async def _serve(agent: Agent, conf: settings.Settings, profiler: profiling.Profiler) -> int:
    loop = asyncio.get_running_loop()

    def dump() -> None:
        log.warning("state dump: %s", json.dumps(agent.dump(), default=str))
        profiler.write()

    loop.add_signal_handler(signal.SIGUSR1, dump)
    probes = (
        health.HealthServer(
            conf.health_port, alive=agent.alive, ready=agent.readiness, metrics=agent.metrics.render
        )
        if conf.health_port
        else None
    )
    metrics_server = agent.metrics.serve(conf.metrics_port)
    agent.start_runtimes()
    threading.Thread(target=agent.initial_refresh, name="initial-refresh", daemon=True).start()
    threading.Thread(target=agent.relist_loop, name="relist", daemon=True).start()
    threading.Thread(target=_report_preflight, args=(agent,), name="preflight-event", daemon=True).start()
    if probes is not None:
        probes.start()
    log.warning(
        "agent for node %s started (state %s, mounts %s)",
        conf.node_name,
        conf.state_dir,
        conf.effective_mount_base,
    )
    try:
        await wiring.operate(
            agent,
            agent.kinds,
            kubeconfig=conf.kubeconfig or None,
            component=COMPONENT,
            instance=conf.node_name,
            log_level=conf.log_level,
            field_selectors={"nodes": f"metadata.name={conf.node_name}"},
            label_selectors={registry.NODE_STATE_PLURAL: naming.node_selector(conf.node_name)},
        )
    finally:
        log.warning(
            "agent for node %s stopping: finishing in-flight work (at most %.0f s); mounts stay",
            conf.node_name,
            conf.shutdown_timeout,
        )
        agent.stopping.set()
        finished = await asyncio.to_thread(agent.queue.shutdown, conf.shutdown_timeout)
        if not finished:
            log.warning(
                "agent for node %s: in-flight work did not finish in time: %s",
                conf.node_name,
                agent.queue.in_flight(),
            )
        agent.stop_runtimes()
        agent.unsubscribe_host_events()
        if probes is not None:
            probes.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
    return 0


def _report_preflight(agent: Agent) -> None:
    """Post the preflight result as an Event on our Node once the Node is known."""
    if agent.preflight is None:
        return
    agent.synced.wait()
    node = agent.nodes.get(agent.node)
    if node is None or agent.stopping.is_set():
        return
    problems = agent.preflight.problems()
    supported = sorted(t for t, s in agent.preflight.types.items() if s.supported)
    message = f"supported connection types: {', '.join(supported) or 'none'}"
    if problems:
        message += "; " + "; ".join(problems)
    agent.api.post_event(
        involved={"apiVersion": "v1", "kind": "Node", "name": agent.node, "uid": _uid(node)},
        event_type="Warning" if problems else "Normal",
        reason="HostPreflight",
        message=message,
        component=COMPONENT,
        host=agent.node,
        namespace=agent.conf.event_namespace,
    )
