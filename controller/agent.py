"""``hoststorage agent``: the node agent. Makes this node match the parents that select it.

DESIGN.md "The agent inside" and "Start-up sequence", in code:

- kopf runs standalone with event handlers only (no annotations, finalizers or timers on the shared
  parents; see :func:`controller.kube.operator_settings`). Handlers only record the latest object and
  enqueue a key ``(kind, name)``; everything else happens in :class:`controller.workqueue.WorkQueue`
  worker threads, because reconcilers block (mount, iscsiadm, libvirt).
- A worker reads the latest parent and this Node, decides whether the parent applies here
  (``nodeSelector`` against the Node's labels, not being deleted), then reconciles or tears down through
  the kind module (``KIND, DETAIL_KEY, ORDER, parse, reconcile, teardown``), and writes this node's
  StorageNodeState only when the status differs from what it last wrote or read.
- Every applicable key is re-run every ``resync_seconds`` (jittered): drift (a mount removed behind our
  back) is repaired, logged and counted.
- Ledger entries without a parent (deleted while the agent was down) are torn down once the initial
  listing is complete, never before: an empty cache must not look like "everything was deleted".

The kinds are a registry of modules (``controller.local.KINDS`` by default): pools and monitors plug in
by registration, with no per-kind code here.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import cProfile
import datetime
import json
import logging
import os
import random
import signal
import threading
import time
import tracemalloc
import types
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from controller import health, kube, local, metrics, monitoring, naming, rollup, settings, workqueue
from hostlib import errors, ledger, mounts, preflight
from reconcilers import host as host_mod
from reconcilers import status as status_mod

log = logging.getLogger(__name__)

Key = tuple[str, str]

USER_ERRORS = (kube.StartupError,)
"""Errors the CLI reports as one line and exit code 2."""

COMPONENT = "hoststorage-agent"
MONITOR_KIND = "DomainMonitor"
MONITOR_STATES = ("Healthy", "Degraded", "Invalid")
"""Monitor states that are news when a monitor enters them (Unknown/Pending are not)."""
DETACHED = "Detached"
DETACHING = "Detaching"
TEARDOWN_FAILED = "TeardownFailed"
MAX_REASON = 64
MAX_MESSAGE = 2048
"""Within crds/storagenodestate.yaml's maxLength for condition reason and message."""


StartupError = kube.StartupError


def _meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("metadata") or {}


def _bounded(cond: Mapping[str, Any]) -> dict[str, str]:
    """A condition within the StorageNodeState schema's limits (the API server refuses longer ones,
    and a status write that can never succeed would be retried forever)."""
    out = {k: str(v) for k, v in cond.items()}
    out["reason"] = out.get("reason", "")[:MAX_REASON] or "Unknown"
    out["message"] = out.get("message", "")[:MAX_MESSAGE]
    return out


_MOVING = frozenset({"message", "lastCheck"})
"""Detail fields that change on every check; like numbers, they alone do not make a write due."""


def _same_state(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    """Equal but for moving numbers: same phase, generation, condition statuses and reasons, and the same
    detail fields with the same non-numeric values (a field that appears, such as a monitor's ``path``
    once known, is news and is written)."""

    def shape(value: Any) -> Any:
        if isinstance(value, Mapping):
            return tuple(sorted((k, None if k in _MOVING else shape(v)) for k, v in value.items()))
        if isinstance(value, bool) or not isinstance(value, int | float):
            return repr(value)
        return None

    def key(st: Mapping[str, Any]) -> Any:
        conds = sorted((c.get("type"), c.get("status"), c.get("reason")) for c in st.get("conditions") or [])
        rest = {k: v for k, v in st.items() if k not in ("conditions", "observedGeneration")}
        return st.get("observedGeneration"), conds, shape(rest)

    return bool(key(old) == key(new))


class Agent:
    """The state and the work of one node agent, independent of how events arrive (kopf or tests)."""

    def __init__(
        self,
        conf: settings.Settings,
        api: kube.Api,
        host: host_mod.Host,
        *,
        kinds: Iterable[types.ModuleType] | None = None,
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
        self.kinds = {m.KIND: m for m in (local.KINDS if kinds is None else kinds)}
        self.metrics = stats or metrics.Metrics("agent")
        self._lock = threading.Lock()
        self.parents: dict[Key, dict[str, Any]] = {}
        self._tombstones: dict[Key, dict[str, Any]] = {}
        self.node_obj: dict[str, Any] | None = None
        self.states: dict[str, dict[str, Any]] = {}
        self.last: dict[Key, dict[str, Any]] = {}
        self.synced = threading.Event()
        self.ready = threading.Event()
        self._initial: set[Key] = set()
        self._done_early: set[Key] = set()
        self.preflight: preflight.Report | None = None
        self.stopping = threading.Event()
        self.monitors: monitoring.MonitorRuntime | None = None
        """The DomainMonitor scheduler (DESIGN.md start-up step 6), when that kind is registered."""
        self._reports: set[str] = set()
        self._unsubscribe: dict[str, Any] = {}
        self.queue = workqueue.WorkQueue(
            self.process, workers=conf.workers, name="agent", backoff_base=1.0, backoff_max=60.0
        )
        self.metrics.watch_queue(self.queue.depth)

    def start_monitors(self) -> None:
        """Start the DomainMonitor runtime; its reports only enqueue the monitor's key."""
        if MONITOR_KIND in self.kinds and self.monitors is None:
            self.monitors = monitoring.MonitorRuntime(
                on_report=self._on_monitor_report, registry=self.metrics.registry,
                vms=monitoring.tracker_for(self.host), on_resume=self._on_resume_batch,
            )
            self.monitors.start()

    def _on_resume_batch(self, batch: Any) -> None:
        """An Event on the DomainMonitor per resume batch (runs in the runtime's resumer thread)."""
        with self._lock:
            parent = self.parents.get((MONITOR_KIND, batch.monitor))
        if parent is not None:
            event_type, reason, message = batch.event()
            self._event(parent, event_type, reason, f"{self.node}: {message}")

    def _on_monitor_report(self, name: str, status: Any, transition: bool) -> None:
        with self._lock:
            self._reports.add(name)
        self.queue.add((MONITOR_KIND, name))

    # ------------------------------------------------------------------ event intake (any thread)

    def on_parent(self, kind: str, event_type: str | None, obj: Mapping[str, Any]) -> None:
        name = _meta(obj).get("name")
        if kind not in self.kinds or not isinstance(name, str):
            return
        key = (kind, name)
        body = copy.deepcopy(dict(obj))
        body.setdefault("apiVersion", naming.API_VERSION)
        body.setdefault("kind", kind)
        with self._lock:
            if event_type == "DELETED":
                if kube.resource_version_newer(body, self.parents.get(key)):
                    self.parents.pop(key, None)
                    self._tombstones[key] = body
            else:
                if not kube.resource_version_newer(body, self.parents.get(key)):
                    return
                if not kube.resource_version_newer(body, self._tombstones.get(key)):
                    return
                self._tombstones.pop(key, None)
                self.parents[key] = body
        if self.synced.is_set():
            self.queue.add(key)

    def on_node(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        if _meta(obj).get("name") != self.node:
            return
        with self._lock:
            old = self.node_obj
            if event_type == "DELETED":
                self.node_obj = None
                return
            if not kube.resource_version_newer(obj, old):
                return
            self.node_obj = copy.deepcopy(dict(obj))
        if old is None or _meta(old).get("labels") != _meta(obj).get("labels"):
            log.info(
                "node %s: labels now %s; re-evaluating every object", self.node, _meta(obj).get("labels")
            )
            if self.synced.is_set():
                self.enqueue_all()

    def on_state(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        spec = obj.get("spec") or {}
        if spec.get("nodeName") != self.node:
            return
        name = _meta(obj).get("name")
        ref = spec.get("parentRef") or {}
        key = (str(ref.get("kind")), str(ref.get("name")))
        with self._lock:
            cached = self.states.get(name) if isinstance(name, str) else None
            if not isinstance(name, str):
                return
            if event_type == "DELETED":
                if cached is not None and _meta(cached).get("uid") == _meta(obj).get("uid"):
                    del self.states[name]
                else:
                    return
            else:
                if cached is not None and not kube.resource_version_newer(obj, cached):
                    return
                if cached is not None and cached.get("status") == obj.get("status"):
                    self.states[name] = copy.deepcopy(dict(obj))
                    return
                self.states[name] = copy.deepcopy(dict(obj))
        # Someone else changed or removed our record: level-triggered, so just look again.
        if self.synced.is_set() and key[0] in self.kinds:
            self.queue.add(key)

    def enqueue_all(self) -> list[Key]:
        with self._lock:
            keys = set(self.parents)
        for kind in self.kinds:
            keys.update((kind, e.name) for e in self.host.ledger.entries(kind))
        for key in sorted(keys, key=lambda k: (self.kinds[k[0]].ORDER, k[1])):
            self.queue.add(key)
        return sorted(keys)

    # ------------------------------------------------------------------ start-up

    def initial_refresh(self) -> None:
        """List the Node, our StorageNodeStates and every parent, then enqueue everything once.

        Runs in the background; readiness turns true when every key has been processed once.
        """
        delay = 1.0
        while not self.stopping.is_set():
            try:
                node = self.api.get_node(self.node)
                if node is None:
                    raise kube.ApiError(404, "NotFound", f"node {self.node} does not exist (yet)")
                self.on_node("ADDED", node)
                selector = f"{naming.LABEL_NODE}={naming.label_value(self.node)}"
                for obj in self.api.list_node_states(label_selector=selector):
                    self.on_state("ADDED", obj)
                for kind in self.kinds:
                    for obj in self.api.list_parents(kind):
                        self.on_parent(kind, "ADDED", obj)
                break
            except kube.ApiError as exc:
                log.warning("node %s: initial listing failed (%s); retrying in %.0f s", self.node, exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, 30.0)
        if self.stopping.is_set():
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
        """Kinds whose module has ``subscribe(host, enqueue, known)`` (pools: libvirt lifecycle events and
        reconnects) feed this queue, so a pool stopped behind our back is reconciled at once."""
        for kind, module in self.kinds.items():
            subscribe = getattr(module, "subscribe", None)
            if subscribe is None or kind in self._unsubscribe:
                continue

            def enqueue(name: str, kind: str = kind) -> None:
                self.queue.add((kind, name))

            def known(kind: str = kind) -> list[str]:
                with self._lock:
                    names = {n for k, n in self.parents if k == kind}
                return sorted(names | {e.name for e in self.host.ledger.entries(kind)})

            try:
                self._unsubscribe[kind] = subscribe(self.host, enqueue, known)
            except Exception as exc:  # libvirtd down: resync still covers; the layer reconnects later
                log.warning("node %s: no %s host events (%s); relying on resync", self.node, kind, exc)

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

    def _applies(self, parent: Mapping[str, Any] | None) -> tuple[bool, str]:
        if parent is None:
            return False, "deleted"
        if _meta(parent).get("deletionTimestamp"):
            return False, "deleting"
        labels = _meta(self.node_obj).get("labels") or {}
        try:
            selected = naming.selector_matches((parent.get("spec") or {}).get("nodeSelector"), labels)
        except naming.SelectorError:
            # A malformed selector is the parse step's InvalidSpec; do not guess it away here.
            return True, "selected"
        return (True, "selected") if selected else (False, "not selected")

    def process(self, key: Key) -> bool:
        """One level-triggered pass over ``key``; returns whether to retry with backoff."""
        kind, name = key
        module = self.kinds.get(kind)
        if module is None:
            return False
        with self._lock:
            parent = copy.deepcopy(self.parents.get(key))
            have_node = self.node_obj is not None
        if not have_node:
            log.info("node %s: Node object not seen yet; %s/%s waits", self.node, kind, name)
            return True
        applies, why = self._applies(parent)
        start = time.monotonic()
        retry = True
        try:
            if applies:
                assert parent is not None
                retry = self._reconcile(module, key, parent)
            else:
                retry = self._teardown(module, key, parent, why)
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

    def _reconcile(self, module: types.ModuleType, key: Key, parent: dict[str, Any]) -> bool:
        kind, name = key
        generation = _meta(parent).get("generation")
        try:
            spec = module.parse(parent)
        except errors.InvalidSpec as exc:
            result = status_mod.NodeResult(
                kind=kind,
                name=name,
                phase="Failed",
                ready=False,
                reason=exc.reason,
                message=exc.message,
                detail_key=module.DETAIL_KEY,
                conditions=(
                    status_mod.Condition("Ready", status_mod.ConditionStatus.FALSE, exc.reason, exc.message),
                ),
            )
        else:
            if kind == MONITOR_KIND and self.monitors is not None:
                result = monitoring.ensure(self.monitors, spec, self.host)
                current = self.monitors.status(name)
                if current is not None:
                    monitoring.record_probe(self.host, spec, current)
            else:
                result = module.reconcile(spec, self.host)
        previous = self.last.get(key)
        repaired = (
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
            self._event(parent, "Warning", "DriftRepaired", f"{self.node}: {result.message}")
        elif result.changed:
            log.info("%s/%s on %s: %s: %s", kind, name, self.node, result.phase, result.message)
        if result.phase == "Failed" and (previous is None or previous.get("reason") != result.reason):
            # Transitions only: a failure that persists is in status, not re-announced every resync.
            self._event(parent, "Warning", result.reason, f"{self.node}: {result.message}")
        if kind == MONITOR_KIND:
            self._monitor_event(parent, previous, result)
        outcome = (
            "ok"
            if result.ready
            else ("invalid" if result.reason == "InvalidSpec" else "retry" if result.retry else "failed")
        )
        self.metrics.reconciles.labels(kind, outcome).inc()
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
        report_due = True
        if kind == MONITOR_KIND:
            # Monitor numbers move all the time: write them when the runtime says a report is due
            # (transition, threshold, reportInterval), not on every resync.
            with self._lock:
                report_due = name in self._reports
                self._reports.discard(name)
        self.write_state(kind, name, parent, block, numbers_only_skip=not report_due)
        return bool(result.retry)

    def _teardown(self, module: types.ModuleType, key: Key, parent: dict[str, Any] | None, why: str) -> bool:
        kind, name = key
        if parent is None and not self.synced.is_set():
            return False
        entry = self.host.ledger.get(kind, name)
        retry = False
        block: dict[str, Any]
        if kind == MONITOR_KIND and self.monitors is not None:
            self.monitors.remove(name)
        if entry is not None:
            target: Any = entry
            if parent is not None:
                with contextlib.suppress(errors.InvalidSpec):
                    target = module.parse(parent)
            result = module.teardown(target, self.host)
            phase = result.phase if result.phase in (DETACHED, DETACHING) else TEARDOWN_FAILED
            retry = bool(result.retry) or phase != DETACHED
            log.info(
                "%s/%s on %s: %s (%s): %s: %s",
                kind,
                name,
                self.node,
                phase,
                why,
                result.reason,
                result.message,
            )
            self.metrics.reconciles.labels(kind, "teardown" if phase == DETACHED else "teardown-failed").inc()
            block = result.status_block()
            block["phase"] = phase
            if phase != DETACHED:
                # Teardown keeps going: the InUse user may go away, the storage may come back.
                retry = True
        else:
            block = {
                "phase": DETACHED,
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "False",
                        "reason": DETACHED,
                        "message": f"nothing here ({why})",
                    }
                ],
                module.DETAIL_KEY: {},
            }
        self.last.pop(key, None)
        self._update_ready_gauge()
        sns_name = naming.node_state_name(kind, name, self.node)
        with self._lock:
            current = self.states.get(sns_name)
        if parent is None:
            # The parent is gone: our record of it goes too (the controller sweeps it as well).
            if current is not None and block["phase"] == DETACHED:
                self._delete_state(sns_name, current)
            return retry
        if why == "not selected" and block["phase"] == DETACHED:
            if current is not None:
                self._delete_state(sns_name, current)
            return retry
        if current is None and entry is None:
            return retry
        generation = _meta(parent).get("generation")
        if generation is not None:
            block["observedGeneration"] = generation
        was = ((current or {}).get("status") or {}).get("phase")
        if block["phase"] == TEARDOWN_FAILED and was != TEARDOWN_FAILED:
            message = next((c.get("message", "") for c in block.get("conditions") or []), "")
            self._event(parent, "Warning", "TeardownFailed", f"{self.node}: {message}")
        self.write_state(kind, name, parent, block)
        return retry

    def _monitor_event(
        self, parent: Mapping[str, Any], previous: Mapping[str, Any] | None, result: status_mod.NodeResult
    ) -> None:
        """An Event on every Healthy/Degraded/Invalid transition of a domain monitor on this node.

        The first Healthy after start-up (from Unknown or Pending) is not news: 1,000 monitors would
        post 1,000 Events on every agent restart. Going Degraded or Invalid always is, and so is the
        recovery to Healthy from either.
        """
        new = result.phase
        old = previous.get("phase") if previous else None
        if new == old or new not in MONITOR_STATES:
            return
        if new == "Healthy" and old not in ("Degraded", "Invalid"):
            return
        event_type = "Normal" if new == "Healthy" else "Warning"
        self._event(parent, event_type, new, f"{self.node}: {result.reason}: {result.message}")

    def _event(self, parent: Mapping[str, Any], event_type: str, reason: str, message: str) -> None:
        meta = _meta(parent)
        self.api.post_event(
            involved={
                "apiVersion": naming.API_VERSION,
                "kind": str(parent.get("kind")),
                "name": str(meta.get("name")),
                "uid": str(meta.get("uid")),
            },
            event_type=event_type,
            reason=reason,
            message=message,
            component=COMPONENT,
            host=self.node,
        )

    def _update_ready_gauge(self) -> None:
        counts = dict.fromkeys(self.kinds, 0)
        for (kind, _), last in list(self.last.items()):
            if last.get("ready"):
                counts[kind] = counts.get(kind, 0) + 1
        for kind, n in counts.items():
            self.metrics.connected.labels(kind).set(n)

    # ------------------------------------------------------------------ StorageNodeState writes

    def write_state(
        self,
        kind: str,
        name: str,
        parent: Mapping[str, Any],
        block: Mapping[str, Any],
        *,
        numbers_only_skip: bool = False,
    ) -> bool:
        """Make our StorageNodeState of ``parent`` carry ``block``; returns whether an API write happened."""
        sns_name = naming.node_state_name(kind, name, self.node)
        parent_uid = str(_meta(parent).get("uid") or "")
        with self._lock:
            current = copy.deepcopy(self.states.get(sns_name))
            node_uid = str(_meta(self.node_obj).get("uid") or "")
        if (
            current is not None
            and ((current.get("spec") or {}).get("parentRef") or {}).get("uid") != parent_uid
        ):
            # A parent of the same name was re-created: the old record is about another object.
            self._delete_state(sns_name, current)
            current = None
        old_status = (current or {}).get("status") or {}
        desired = dict(block)
        desired["conditions"] = rollup.merge_conditions(
            old_status.get("conditions") or [],
            [_bounded(c) for c in block.get("conditions") or []],
            datetime.datetime.now(tz=datetime.UTC),
        )
        if current is not None and old_status == desired:
            return False
        if current is not None and numbers_only_skip and _same_state(old_status, desired):
            return False
        if current is None:
            body = naming.node_state_body(
                kind=kind, parent_name=name, parent_uid=parent_uid, node=self.node, node_uid=node_uid
            )
            try:
                current = self.api.create_node_state(body)
                self.metrics.status_writes.labels("create").inc()
            except kube.ApiError as exc:
                if not exc.conflict:
                    raise
                # Exists but our cache missed it (watch lag): take it and go on.
                found = [
                    o
                    for o in self.api.list_node_states(
                        label_selector=f"{naming.LABEL_NODE}={naming.label_value(self.node)}"
                    )
                    if _meta(o).get("name") == sns_name
                ]
                if not found:
                    raise
                current = found[0]
            if (current.get("status") or {}) == desired:
                self._remember(sns_name, current)
                return True
        try:
            obj = self.api.request(
                "PATCH",
                kube.custom_path("StorageNodeState", sns_name, "status"),
                body=[{"op": "add", "path": "/status", "value": desired}],
                content_type="application/json-patch+json",
            )
        except kube.ApiError as exc:
            if exc.not_found:
                with self._lock:
                    self.states.pop(sns_name, None)
            raise
        self.metrics.status_writes.labels("status").inc()
        self._remember(sns_name, obj)
        return True

    def _remember(self, sns_name: str, obj: Mapping[str, Any]) -> None:
        with self._lock:
            cached = self.states.get(sns_name)
            if cached is None or kube.resource_version_newer(obj, cached):
                self.states[sns_name] = copy.deepcopy(dict(obj))

    def _delete_state(self, sns_name: str, current: Mapping[str, Any]) -> None:
        uid = str(_meta(current).get("uid") or "") or None
        self.api.delete_node_state(sns_name, uid=uid)
        self.metrics.status_writes.labels("delete").inc()
        with self._lock:
            if self.states.get(sns_name) is current or (
                sns_name in self.states and _meta(self.states[sns_name]).get("uid") == uid
            ):
                del self.states[sns_name]

    # ------------------------------------------------------------------ probes, dumps

    def alive(self) -> tuple[bool, dict[str, Any]]:
        return True, {"node": self.node}

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
        with self._lock:
            parents = sorted(f"{k}/{n}" for k, n in self.parents)
        return {
            "node": self.node,
            "ready": self.ready.is_set(),
            "parents": parents,
            "queue": self.queue.dump(),
            "last": {f"{k}/{n}": v for (k, n), v in sorted(self.last.items())},
            "ledger": [f"{e.kind}/{e.name}" for e in self.host.ledger.entries()],
            "monitors": self.monitors.snapshot() if self.monitors is not None else {},
        }


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


class Profiler:
    """CPU (cProfile) and memory (tracemalloc) profiling on demand, off unless a directory is given."""

    def __init__(self, directory: str, name: str) -> None:
        self.directory = directory
        self.name = name
        self.cpu: cProfile.Profile | None = None
        if directory:
            os.makedirs(directory, exist_ok=True)
            tracemalloc.start(10)
            self.cpu = cProfile.Profile()
            self.cpu.enable()

    def write(self) -> None:
        if self.cpu is None:
            return
        base = os.path.join(self.directory, f"{self.name}-{os.getpid()}")
        self.cpu.dump_stats(base + ".prof")
        top = tracemalloc.take_snapshot().statistics("lineno")[:50]
        with open(base + ".mem.txt", "w", encoding="utf-8") as f:
            f.writelines(f"{stat}\n" for stat in top)
        log.warning("profiles written to %s.prof and %s.mem.txt", base, base)


def build_host(conf: settings.Settings, api: kube.Api | None = None) -> host_mod.Host:
    lookup = secret_lookup(api, conf.event_namespace) if api is not None else None
    return host_mod.Host.for_config(conf.host_config(), node_name=conf.node_name, secret_lookup=lookup)


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


def clean_stale(host: host_mod.Host) -> list[str]:
    """Remove empty directories and dangling links under the mount base that no ledger entry owns.

    Leftovers of a previous run that died between mkdir and mount, or of connections deleted while the
    agent was down. Never descends into a mount point (it may be hung storage) and never touches
    anything mounted or owned; ``rmdir`` refuses a non-empty directory.
    """
    base = host.config.mount_base
    removed: list[str] = []
    if not os.path.isdir(base):
        return removed
    mounted = {rec.target for rec in mounts.read_mounts()}
    candidates: list[str] = []
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames[:] = [d for d in dirnames if os.path.join(dirpath, d) not in mounted]
        candidates.extend(os.path.join(dirpath, d) for d in dirnames)
        candidates.extend(os.path.join(dirpath, f) for f in filenames)
    for path in reversed(candidates):  # deepest first, so emptied parents go too
        if path in mounted or host.ledger.owns_mount(path):
            continue
        try:
            if os.path.islink(path):
                target = os.readlink(path)
                if not os.path.lexists(os.path.join(os.path.dirname(path), target)):
                    os.unlink(path)
                    removed.append(path)
            elif os.path.isdir(path):
                os.rmdir(path)
                removed.append(path)
        except OSError:
            continue
    for path in removed:
        log.info("removed stale leftover %s", path)
    return removed


def run(args: argparse.Namespace, conf: settings.Settings) -> int:
    """The ``agent`` subcommand."""
    if not conf.node_name:
        raise StartupError(
            "NODE_NAME is not set: the agent must know which Node it serves "
            "(env NODE_NAME from the downward API, or --node-name)"
        )
    profiler = Profiler(conf.profile_dir, "agent")
    try:
        configuration = kube.load_configuration(conf.kubeconfig or None)
    except Exception as exc:
        raise StartupError(f"no Kubernetes API configuration (KUBECONFIG or in-cluster): {exc}") from None
    api = kube.Api(configuration, user_agent=f"{COMPONENT}/{conf.node_name}")
    os.makedirs(conf.effective_mount_base, mode=0o755, exist_ok=True)
    with ledger.host_lock(conf.state_dir, timeout=conf.lock_timeout):
        host = build_host(conf, api)
        clean_stale(host)
        agent = Agent(conf, api, host)
        agent.preflight = preflight.check(host.config)
        for problem in agent.preflight.problems():
            log.warning("node %s: preflight: %s", conf.node_name, problem)
        try:
            return asyncio.run(_serve(agent, conf, profiler))
        finally:
            profiler.write()
            api.close()


def quiet_kopf(conf: settings.Settings) -> None:
    """kopf logs every handler call at INFO; ours only enqueue, so that is noise unless debugging."""
    if conf.log_level.upper() != "DEBUG":
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)


async def _serve(agent: Agent, conf: settings.Settings, profiler: Profiler) -> int:
    quiet_kopf(conf)
    loop = asyncio.get_running_loop()

    def dump() -> None:
        log.warning("state dump: %s", json.dumps(agent.dump(), default=str))
        profiler.write()

    loop.add_signal_handler(signal.SIGUSR1, dump)
    registry = kopf.OperatorRegistry()
    kube.register_watches(registry, agent, agent.kinds)
    kopf.on.login(registry=registry)(kube.login_handler(conf.kubeconfig or None))
    opsettings = kube.operator_settings(COMPONENT, conf.node_name)
    opsettings.watching.field_selectors["nodes"] = f"metadata.name={conf.node_name}"
    opsettings.watching.label_selectors["storagenodestates"] = (
        f"{naming.LABEL_NODE}={naming.label_value(conf.node_name)}"
    )
    probes = (
        health.HealthServer(
            conf.health_port, alive=agent.alive, ready=agent.readiness, metrics=agent.metrics.render
        )
        if conf.health_port
        else None
    )
    metrics_server = agent.metrics.serve(conf.metrics_port)
    agent.start_monitors()
    refresh = threading.Thread(target=agent.initial_refresh, name="initial-refresh", daemon=True)
    refresh.start()
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
        await kopf.operator(registry=registry, settings=opsettings, standalone=True, clusterwide=True)
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
        if agent.monitors is not None:
            agent.monitors.stop()
        for unsubscribe in agent._unsubscribe.values():
            with contextlib.suppress(Exception):
                unsubscribe()
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
    with agent._lock:
        node = copy.deepcopy(agent.node_obj)
    if node is None or agent.stopping.is_set():
        return
    problems = agent.preflight.problems()
    supported = sorted(t for t, s in agent.preflight.types.items() if s.supported)
    message = f"supported connection types: {', '.join(supported) or 'none'}"
    if problems:
        message += "; " + "; ".join(problems)
    agent.api.post_event(
        involved={"apiVersion": "v1", "kind": "Node", "name": agent.node, "uid": str(_meta(node).get("uid"))},
        event_type="Warning" if problems else "Normal",
        reason="HostPreflight",
        message=message,
        component=COMPONENT,
        host=agent.node,
        namespace=agent.conf.event_namespace,
    )
