"""``hoststorage controller``: the one cluster-wide writer of parent status and the teardown finalizer.

Agents each write only their own StorageNodeStates; this process rolls them up (the rules are the pure
functions of :mod:`controller.rollup`), keeps the ``hoststorage.io/teardown`` finalizer on every parent,
releases it once every child is Detached or its node is gone, and sweeps children of deleted nodes and
deleted parents. With more than one replica, only the holder of a coordination.k8s.io Lease acts.

Like the agent, with the same machinery: kopf event handlers (:mod:`controller.wiring`) feed caches
(:mod:`controller.cache`) and enqueue keys; blocking API writes (:mod:`controller.kube`) run in
work-queue threads; nothing is written when nothing changed. The kinds are the rows of
:mod:`controller.registry`: this process never imports a reconciler or the host layer.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from controller import (
    cache,
    events,
    health,
    kube,
    metrics,
    naming,
    node_signals,
    registry,
    rollup,
    settings,
    wiring,
    workqueue,
)
from reconcilers import health_policy, selector

log = logging.getLogger(__name__)

USER_ERRORS = (kube.StartupError,)
"""Errors the CLI reports as one line and exit code 2."""

COMPONENT = "hoststorage-controller"
NODE_KIND = "Node"
RECHECK_SECONDS = 15.0
"""While a deletion waits for a NotReady node's grace period, look again this often."""
GRACE_SLACK = 0.2
"""Seconds past a failure's grace before looking again: the work queue's clock is monotonic, the grace is
counted on the wall clock; a little late is right, early would find nothing to do."""

Key = tuple[str, str]


def _now() -> datetime.datetime:
    return datetime.datetime.now(tz=datetime.UTC)


class _Parent:
    """One parent's incremental roll-up: its uid and selector as the tally was built for them, and the
    :class:`rollup.Tally` of its children on the nodes it selects."""

    def __init__(self, uid: str, raw_selector: Any) -> None:
        self.uid = uid
        self.raw_selector = raw_selector
        try:
            self.selector: selector.NodeSelector | None = selector.parse(raw_selector)
        except selector.SelectorError:
            self.selector = None  # a malformed selector matches no node (rollup.selected_nodes)
        self.tally = rollup.Tally()
        self.foreign = False
        """A child of an earlier parent of the same name (another uid) was seen: sweep it."""
        self.signals: node_signals.Plan | None = None
        """What this parent last wanted on the Nodes (None: not planned since this tally was built)."""
        self.taint: tuple[str, str] | None = None
        """(effect, value) of the taint it asks for (None: taints off)."""

    def selects(self, info: rollup.NodeInfo | None) -> bool:
        return info is not None and self.selector is not None and self.selector.matches(info.labels)


class Controller:
    def __init__(
        self,
        conf: settings.Settings,
        api: kube.Api,
        *,
        kinds: Iterable[str] | None = None,
        stats: metrics.Metrics | None = None,
        identity: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.conf = conf
        self.clock = clock
        self.api = api
        self.kinds = {r.kind: r for r in registry.ordered(kinds)}
        self.metrics = stats or metrics.Metrics("controller")
        self.identity = identity or f"{socket.gethostname()}-{uuid.uuid4().hex[:6]}"
        self.parents = cache.ObjectCache()
        """Parent bodies by (kind, name): a few hundred small objects at most."""
        self.states = cache.StateIndex()
        """Compact records of every StorageNodeState, by name, parent and node."""
        self.nodes: cache.RecordCache[rollup.NodeInfo] = cache.RecordCache()
        self._rollups: dict[Key, _Parent] = {}
        self._written: dict[Key, float] = {}
        """When each parent's status was last written (``clock``): at most one write per status window."""
        self._lock = threading.RLock()
        """Guards the index, the node records and the tallies together (watch threads and workers)."""
        self._blocking: dict[Key, set[str]] = {}
        self.synced = threading.Event()
        self.leader = threading.Event()
        self.stopping = threading.Event()
        if not conf.leader_election:
            self.leader.set()
        self.queue = workqueue.WorkQueue(
            self.process, workers=conf.workers, name="controller", backoff_base=1.0, backoff_max=30.0
        )
        self.metrics.watch_queue(self.queue.depth)

    # ------------------------------------------------------------------ events

    def on_parent(self, kind: str, event_type: str | None, obj: Mapping[str, Any]) -> None:
        name = cache.meta(obj).get("name")
        if kind not in self.kinds or not isinstance(name, str):
            return
        body = dict(obj)
        body.setdefault("kind", kind)
        # The echo of our own status write carries the version we already cached: no work.
        if self.parents.apply(event_type, (kind, name), body):
            self._enqueue((kind, name))

    def _verdict(self, kind: str, status: Mapping[str, Any]) -> rollup.Verdict | None:
        row = self.kinds.get(kind)
        return rollup.verdict(status, rollup.phases_of(row)) if row is not None else None

    def on_state(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        name = cache.meta(obj).get("name")
        if not isinstance(name, str):
            return
        record = cache.StateRecord.from_object(obj, self._verdict)
        version = str(cache.meta(obj).get("resourceVersion") or "")
        with self._lock:
            change = self.states.apply(event_type, name, version, record)
            if change is None:
                return
            old, new = change
            if old == new:
                return  # nothing the roll-up reads changed (moving numbers, managedFields)
            touched = set()
            for rec, present in ((old, False), (new, True)):
                if rec is None:
                    continue
                touched.add(rec.parent)
                ctx = self._rollups.get(rec.parent)
                if ctx is None:
                    continue
                if rec.parent_uid != ctx.uid:
                    ctx.foreign = ctx.foreign or present
                    continue
                ctx.tally.set_child(rec.node, rec.verdict, present=present)
        for key in sorted(touched):
            if key[0] in self.kinds:
                self._enqueue(key, coalesce=True)

    def on_node(self, event_type: str | None, obj: Mapping[str, Any]) -> None:
        name = cache.meta(obj).get("name")
        if not isinstance(name, str):
            return
        info = rollup.NodeInfo.from_node(obj)
        version = str(cache.meta(obj).get("resourceVersion") or "")
        with self._lock:
            change = self.nodes.apply(event_type, name, version, info)
            if change is None:
                return
            before, after = change
            if event_type == "DELETED":
                self._enqueue((NODE_KIND, name))
            relabelled = (before is None) != (after is None) or (
                before is not None and after is not None and before.labels != after.labels
            )
            readiness = before is not None and after is not None and before.ready != after.ready
            if not relabelled and not readiness:
                return
            touched = []
            for key, ctx in self._rollups.items():
                chosen = ctx.selects(after)
                if ctx.tally.select(name, chosen) or (chosen and readiness):
                    touched.append(key)
            fresh = [k for k in self.parents.all_keys() if isinstance(k, tuple) and k not in self._rollups]
        for key in sorted(touched + fresh):
            self._enqueue(key)

    def _enqueue(self, key: Key, *, coalesce: bool = False) -> None:
        """Queue ``key``; a child's change (``coalesce``) waits for the parent's status window."""
        if self.synced.is_set() and self.leader.is_set():
            self.queue.add(key, delay=self._window_left(key) if coalesce else 0.0)

    def _window_left(self, key: Key) -> float:
        """Seconds until ``key``'s status may be written again (0 when it may be written now)."""
        last = self._written.get(key)
        if last is None:
            return 0.0
        return max(0.0, last + self.conf.status_window - self.clock())

    def enqueue_parents(self) -> None:
        for key in sorted(k for k in self.parents.all_keys() if isinstance(k, tuple)):
            self._enqueue(key)

    def _list_everything(self) -> None:
        for node in self.api.list_nodes():
            self.on_node("ADDED", node)
        for obj in self.api.iter_node_states():
            self.on_state("ADDED", obj)
        for kind in self.kinds:
            for obj in self.api.list_parents(kind):
                self.on_parent(kind, "ADDED", obj)

    def initial_refresh(self) -> None:
        listed = cache.list_with_backoff(
            self._list_everything, self.stopping, "controller", errors=(kube.ApiError,)
        )
        if not listed:
            return
        self.settle()
        self.synced.set()
        self.enqueue_everything()

    @staticmethod
    def settle() -> None:
        """After the start-up listing: move what it built out of the garbage collector's sight.

        250,000 records are long-lived objects; every full collection would walk them all, milliseconds
        on whichever event triggered it. Records have no reference cycles, so reference counting still
        frees each one that an update replaces."""
        gc.collect()
        gc.freeze()

    def enqueue_everything(self) -> None:
        self.enqueue_parents()
        for kind, name in sorted(self.states.parents()):
            if kind in self.kinds:
                self._enqueue((kind, name))
        for node in sorted(self.states.nodes()):
            if node not in self.nodes:
                self._enqueue((NODE_KIND, node))

    # ------------------------------------------------------------------ work

    def process(self, key: Key) -> bool:
        if not self.leader.is_set():
            return False
        start = time.monotonic()
        try:
            if key[0] == NODE_KIND:
                self._sweep_node(key[1])
                return False
            return self._process_parent(key)
        except kube.ApiError as exc:
            if exc.not_found and key[0] != NODE_KIND:
                self._forget_gone_parent(key)
                return False
            log.warning("controller: %s/%s: API call failed: %s", key[0], key[1], exc)
            self.metrics.reconciles.labels(key[0], "error").inc()
            return True
        finally:
            self.metrics.duration.labels(key[0]).observe(time.monotonic() - start)

    def _forget_gone_parent(self, key: Key) -> None:
        """A write to ``key`` answered 404: the parent was deleted between our read and our write (the
        chaos soak saw it right after a finalizer release). That is no error and no retry: drop the
        cached body and queue the key once more, so the deleted-parent path sweeps its children."""
        cached = self.parents.get(key)
        uid = str(cache.meta(cached).get("uid") or "") if cached is not None else None
        self.parents.discard(key, uid=uid)
        log.info("controller: %s/%s: gone before our write (404); forgotten", key[0], key[1])
        self._enqueue(key)

    def _rollup_of(self, key: Key, parent: Mapping[str, Any]) -> _Parent:
        """``key``'s incremental roll-up, built from the index when the parent is new, was re-created
        (another uid) or changed its selector. Call with the lock held."""
        meta = cache.meta(parent)
        uid = str(meta.get("uid") or "")
        raw = (parent.get("spec") or {}).get("nodeSelector")
        ctx = self._rollups.get(key)
        if ctx is not None and ctx.uid == uid and ctx.raw_selector == raw:
            return ctx
        ctx = _Parent(uid, raw)
        for node, info in self.nodes.items():
            if ctx.selects(info):
                ctx.tally.select(str(node), True)
        for rec in self.states.of_parent(key):
            if rec.parent_uid == uid:
                ctx.tally.set_child(rec.node, rec.verdict)
            else:
                ctx.foreign = True
        self._rollups[key] = ctx
        return ctx

    def _node_infos(self) -> dict[str, rollup.NodeInfo]:
        return {str(name): info for name, info in self.nodes.items()}

    def _delete_children(self, children: Iterable[cache.StateRecord], why: str) -> None:
        for child in children:
            if self.api.delete_node_state(child.name, uid=child.uid or None):
                self.metrics.status_writes.labels("delete").inc()
                log.info("controller: deleted StorageNodeState %s (%s)", child.name, why)

    def _sweep_node(self, node: str) -> None:
        if node in self.nodes:
            return
        self._delete_children(self.states.of_node(node), f"node {node} deleted")

    def _process_parent(self, key: Key) -> bool:
        kind, name = key
        parent = self.parents.get(key)
        if parent is None:
            with self._lock:
                gone = self._rollups.get(key)
                if gone is not None and gone.signals:
                    gone.taint = None
                    self._apply_signals(key, gone, node_signals.Plan())
                self._rollups.pop(key, None)
                self._written.pop(key, None)
            self._delete_children(self.states.of_parent(key), f"{kind}/{name} deleted")
            self.metrics.forget_parent(kind, name)
            return False
        meta = cache.meta(parent)
        with self._lock:
            ctx = self._rollup_of(key, parent)
            stale: list[cache.StateRecord] = []
            if ctx.foreign:
                stale = [r for r in self.states.of_parent(key) if r.parent_uid != ctx.uid]
                ctx.foreign = False
            now = _now()
            diagnosis, signals, new_status = self._evaluate(key, ctx, parent, now)
            wait = self._window_left(key)
        if stale:
            self._delete_children(stale, f"{kind}/{name} was re-created")
        with self._lock:
            self._apply_signals(key, ctx, signals)
        checks = [t for t in (diagnosis.next_check, signals.next_check) if t is not None]
        if checks:
            # A failure or a label within its grace: look again when it passes, even if no event comes.
            self.queue.add(key, delay=(min(checks) - now).total_seconds() + GRACE_SLACK)
        self.metrics.observe_parent(kind, name, new_status)
        if rollup.status_changed(parent.get("status"), new_status):
            if wait > 0:
                self.queue.add(key, delay=wait)  # coalesced: the newest status lands when the window ends
            else:
                old_status = parent.get("status") or {}
                parent = self._write_status(key, new_status)
                self._announce(key, parent, old_status, new_status)
        self.metrics.reconciles.labels(kind, "ok").inc()
        finalizers = list(meta.get("finalizers") or [])
        if not meta.get("deletionTimestamp"):
            if naming.FINALIZER not in finalizers:
                updated = self.api.set_parent_finalizers(
                    kind, name, [*finalizers, naming.FINALIZER],
                    str(cache.meta(parent).get("resourceVersion")),
                )
                self.metrics.status_writes.labels("finalizer").inc()
                self._cache_parent(kind, updated)
            return False
        if naming.FINALIZER not in finalizers:
            return False
        with self._lock:
            mine = [
                {"spec": {"nodeName": node}, "status": {"phase": v.phase} if v is not None else {}}
                for node, v in ctx.tally.verdicts.items()
            ]
            nodes = self._node_infos()
        return self._finalize(key, parent, mine, nodes, now)

    def _write_status(self, key: Key, status: dict[str, Any]) -> dict[str, Any]:
        kind, name = key
        parent = self.api.patch_parent_status(kind, name, status)
        with self._lock:
            self._written[key] = self.clock()
        self.metrics.status_writes.labels("status").inc()
        self._cache_parent(kind, parent)
        ready: dict[str, Any] = next((c for c in status["conditions"] if c["type"] == "Ready"), {})
        log.info("controller: %s/%s: %s ready (%s)", kind, name, status["readyNodes"], ready.get("reason"))
        return parent

    def _evaluate(
        self, key: Key, ctx: _Parent, parent: Mapping[str, Any], now: datetime.datetime
    ) -> tuple[rollup.Diagnosis, node_signals.Plan, dict[str, Any]]:
        """The parent's diagnosis, what it wants on the Nodes, and its new status. Lock held."""
        kind, name = key
        diagnosis = rollup.diagnosis_of(parent, ctx.tally, now=now)
        policy = health_policy.of_parent(parent)
        deleting = bool(cache.meta(parent).get("deletionTimestamp"))
        infos = {n: i for n in ctx.tally.selected if (i := self.nodes.get(n)) is not None}
        signals = node_signals.plan(kind, name, policy, ctx.tally, diagnosis=diagnosis, nodes=infos,
                                    now=now, deleting=deleting)
        ctx.taint = (policy.taint.effect, node_signals.taint_value(kind, name)) if policy.taint else None
        extra_conditions = []
        if policy.taint is not None and not deleting:
            extra_conditions.append(node_signals.held_condition(signals, len(ctx.tally.selected), policy))
        new_status = rollup.status_of(
            parent, ctx.tally, old_status=parent.get("status"), now=now, diagnosis=diagnosis,
            extra_conditions=extra_conditions,
            extra=node_signals.status_fields(kind, name, policy, parent.get("status")),
        )
        return diagnosis, signals, new_status

    def _apply_signals(self, key: Key, ctx: _Parent, plan: node_signals.Plan) -> None:
        """Make the Nodes carry what ``plan`` wants of ``key`` (labels, its share of the taints): one
        merge patch per Node that must change, none when nothing changed. Call with the lock held (it
        reads every parent's taints); a 409 (the Node moved) raises ApiError, and the retry sees it."""
        kind, name = key
        old = ctx.signals
        label = node_signals.label_key(kind, name)
        if old is None:
            # First plan since this tally was built (a start, a re-created parent): whatever Nodes carry.
            touched = {str(n) for n, i in self.nodes.items() if label in i.labels or i.taints}
        else:
            touched = set(old.labelled | old.tainted)
        touched |= plan.labelled | plan.tainted
        ctx.signals = plan
        unplanned: frozenset[str] | None = None
        for node in sorted(touched):
            info = self.nodes.get(node)
            if info is None:
                continue
            wanted = [c.taint for c in self._rollups.values()
                      if c.taint is not None and c.signals is not None and node in c.signals.tainted]
            if info.taints:
                if unplanned is None:
                    unplanned = self._unplanned_effects()
                wanted += [t for t in info.taints if t[0] in unplanned]
            patch = node_signals.node_patch(info, {label: node in plan.labelled},
                                            node_signals.node_taints(wanted))
            if patch is None:
                continue
            try:
                updated = self.api.patch_node(node, patch)
            except kube.ApiError:
                ctx.signals = None  # plan again from what the Nodes carry
                raise
            self.metrics.status_writes.labels("node").inc()
            log.info("controller: %s/%s: node %s: %s", kind, name, node, json.dumps(patch))
            self.on_node("MODIFIED", updated)

    def _unplanned_effects(self) -> frozenset[str]:
        """The taint effects asked for by parents not planned since their tally was built (a start, a
        failover: parents are planned one at a time). A Node keeps a taint of ours with such an effect
        until they are, so the first parent planned never takes off a taint a later one put there. Lock
        held; copies no body once every parent is planned."""

        effects: set[str] = set()
        for key in self.parents.all_keys():
            ctx = self._rollups.get(key) if isinstance(key, tuple) else None
            if ctx is not None and ctx.signals is not None:
                continue
            body = self.parents.get(key)
            policy = health_policy.of_parent(body) if body is not None else None
            if policy is not None and policy.taint is not None:
                effects.add(policy.taint.effect)
        return frozenset(effects)

    def _announce(
        self, key: Key, parent: Mapping[str, Any], old: Mapping[str, Any], new: Mapping[str, Any]
    ) -> None:
        """Events of a written status: a change of diagnosis (:func:`controller.events.diagnosis_change`)."""
        degraded: Mapping[str, Any] = next((c for c in new["conditions"] if c["type"] == "Degraded"), {})
        news = events.diagnosis_change(old.get("diagnosis"), new.get("diagnosis"),
                                       message=str(degraded.get("message") or ""))
        for event in news:
            log.warning("controller: %s/%s: %s: %s", key[0], key[1], event.reason, event.message)
            self._post(key, parent, event)

    def _post(self, key: Key, parent: Mapping[str, Any], event: events.Event) -> None:
        self.api.post_event(
            involved={"apiVersion": registry.API_VERSION, "kind": key[0], "name": key[1],
                      "uid": str(cache.meta(parent).get("uid"))},
            event_type=event.type, reason=event.reason, message=event.message, component=COMPONENT,
            namespace=self.conf.event_namespace,
        )

    def _finalize(
        self, key: Key, parent: Mapping[str, Any], mine: list[dict[str, Any]],
        nodes: Mapping[str, rollup.NodeInfo], now: datetime.datetime,
    ) -> bool:
        """Release the teardown finalizer of a deleted parent once every child is Detached or gone."""
        kind, name = key
        meta = cache.meta(parent)
        finalizers = list(meta.get("finalizers") or [])
        grace = datetime.timedelta(seconds=self.conf.node_gone_grace)
        release, skipped = rollup.finalizer_decision(mine, nodes, now=now, grace=grace)
        if not release:
            # Remember who blocks: when a node is deleted its children go with it (ownerReference), and
            # the Event must still name it.
            self._blocking[key] = {
                str((c.get("spec") or {}).get("nodeName"))
                for c in mine
                if ((c.get("status") or {}).get("phase")) not in rollup.DETACHED_PHASES
            }
            self.queue.add(key, delay=RECHECK_SECONDS)
            return False
        # A blocking node whose child vanished was deleted (its children go with it); the Node's own
        # DELETED event may arrive after the child's on another watch, so do not wait for it.
        present = {str((c.get("spec") or {}).get("nodeName")) for c in mine}
        vanished = {n for n in self._blocking.pop(key, set()) if n not in nodes or n not in present}
        skipped = sorted(set(skipped) | vanished)
        remaining = [f for f in finalizers if f != naming.FINALIZER]
        self.api.set_parent_finalizers(kind, name, remaining, str(cache.meta(parent).get("resourceVersion")))
        self.metrics.status_writes.labels("finalizer").inc()
        involved = {
            "apiVersion": registry.API_VERSION, "kind": kind, "name": name, "uid": str(meta.get("uid"))
        }
        if skipped:
            message = (
                f"teardown finalizer released; nodes gone (deleted or NotReady for more than "
                f"{self.conf.node_gone_grace:.0f} s) were skipped: {', '.join(skipped)}"
            )
            log.warning("controller: %s/%s: %s", kind, name, message)
            self.api.post_event(
                involved=involved,
                event_type="Warning",
                reason="NodesSkipped",
                message=message,
                component=COMPONENT,
                namespace=self.conf.event_namespace,
            )
        else:
            log.info("controller: %s/%s: every node detached; teardown finalizer released", kind, name)
        return False

    def _cache_parent(self, kind: str, obj: Mapping[str, Any]) -> None:
        name = cache.meta(obj).get("name")
        if not isinstance(name, str):
            return
        body = dict(obj)
        body.setdefault("kind", kind)
        self.parents.put((kind, name), body)

    # ------------------------------------------------------------------ leader election

    def lead(self) -> None:
        """Hold the Lease while running; only the holder acts (``leader`` event)."""
        ns, lease_name = self.conf.event_namespace, self.conf.lease_name
        duration = self.conf.lease_seconds
        while not self.stopping.is_set():
            try:
                held = self._try_lease(ns, lease_name, duration)
            except kube.ApiError as exc:
                log.warning("controller %s: lease %s/%s: %s", self.identity, ns, lease_name, exc)
                held = False
            if held and not self.leader.is_set():
                log.warning("controller %s: became leader (lease %s/%s)", self.identity, ns, lease_name)
                self.leader.set()
                self.enqueue_everything()
            elif not held and self.leader.is_set():
                log.warning("controller %s: lost the lease %s/%s; standing by", self.identity, ns, lease_name)
                self.leader.clear()
            self.stopping.wait(duration / 3 if held else duration / 2)

    def _try_lease(self, ns: str, name: str, duration: float) -> bool:
        now = _now()
        stamp = now.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease = self.api.get_lease(ns, name)
        spec = {"holderIdentity": self.identity, "leaseDurationSeconds": int(duration), "renewTime": stamp}
        if lease is None:
            self.api.create_lease(
                ns,
                {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "Lease",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {**spec, "acquireTime": stamp, "leaseTransitions": 0},
                },
            )
            return True
        current = lease.get("spec") or {}
        holder = current.get("holderIdentity")
        renewed = rollup.parse_time(current.get("renewTime"))
        expired = renewed is None or (now - renewed).total_seconds() > float(
            current.get("leaseDurationSeconds") or duration
        )
        if holder not in (None, "", self.identity) and not expired:
            return False
        new_spec = {**current, **spec}
        if holder != self.identity:
            new_spec["acquireTime"] = stamp
            new_spec["leaseTransitions"] = int(current.get("leaseTransitions") or 0) + 1
        body = {**lease, "spec": new_spec}
        try:
            self.api.replace_lease(ns, name, body)
        except kube.ApiError as exc:
            if exc.conflict:
                return False
            raise
        return True

    def release_lease(self) -> None:
        if not self.conf.leader_election or not self.leader.is_set():
            return
        try:
            lease = self.api.get_lease(self.conf.event_namespace, self.conf.lease_name)
            if lease and (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                spec = {**(lease.get("spec") or {}), "holderIdentity": None}
                self.api.replace_lease(
                    self.conf.event_namespace, self.conf.lease_name, {**lease, "spec": spec}
                )
        except kube.ApiError as exc:
            log.warning("controller %s: could not release the lease: %s", self.identity, exc)

    # ------------------------------------------------------------------ probes

    def alive(self) -> tuple[bool, dict[str, Any]]:
        """Liveness: the work queue's heartbeat (dead or stuck workers fail it)."""
        ok, why = self.queue.healthy()
        return ok, {"identity": self.identity, **({"queue": why} if why else {})}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.synced.is_set(), {"leader": self.leader.is_set(), "identity": self.identity}

    def dump(self) -> dict[str, Any]:
        return {
            "identity": self.identity,
            "leader": self.leader.is_set(),
            "parents": sorted(f"{k[0]}/{k[1]}" for k in self.parents.all_keys() if isinstance(k, tuple)),
            "states": len(self.states),
            "nodes": len(self.nodes),
            "queue": self.queue.dump(),
        }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    kube.add_process_arguments(parser, workers_help="parallel roll-ups (default 4)")
    parser.add_argument(
        "--node-gone-grace",
        dest="node_gone_grace",
        type=float,
        default=None,
        help="seconds a NotReady node may block a teardown finalizer (default 300)",
    )
    parser.add_argument(
        "--status-window",
        dest="status_window",
        type=float,
        default=None,
        help="at most one status write per parent in this many seconds; changes in between are coalesced "
        "(default 2; 0 writes every change)",
    )
    parser.add_argument(
        "--leader-election",
        dest="leader_election",
        action="store_const",
        const=True,
        default=None,
        help="act only while holding the Lease (more than one replica)",
    )
    parser.add_argument(
        "--lease-name",
        dest="lease_name",
        default=None,
        help="leader-election Lease name (default hoststorage-controller)",
    )


def run(args: argparse.Namespace, conf: settings.Settings) -> int:
    """The ``controller`` subcommand."""
    try:
        configuration = kube.load_configuration(conf.kubeconfig or None)
    except Exception as exc:
        raise kube.StartupError(
            f"no Kubernetes API configuration (KUBECONFIG or in-cluster): {exc}"
        ) from None
    api = kube.Api(configuration, user_agent=COMPONENT)
    identity = os.environ.get("POD_NAME") or ""
    ctl = Controller(conf, api, identity=identity)
    try:
        return asyncio.run(_serve(ctl, conf))
    finally:
        api.close()


async def _serve(ctl: Controller, conf: settings.Settings) -> int:
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGUSR1, lambda: log.warning("state dump: %s", json.dumps(ctl.dump())))
    probes = (
        health.HealthServer(
            conf.health_port, alive=ctl.alive, ready=ctl.readiness, metrics=ctl.metrics.render
        )
        if conf.health_port
        else None
    )
    metrics_server = ctl.metrics.serve(conf.metrics_port)
    if conf.leader_election:
        threading.Thread(target=ctl.lead, name="lease", daemon=True).start()
    threading.Thread(target=ctl.initial_refresh, name="initial-refresh", daemon=True).start()
    if probes is not None:
        probes.start()
    log.warning("controller %s started", ctl.identity)
    try:
        await wiring.operate(
            ctl, ctl.kinds, kubeconfig=conf.kubeconfig or None, component=COMPONENT, instance=ctl.identity,
            log_level=conf.log_level,
        )
    finally:
        ctl.stopping.set()
        await asyncio.to_thread(ctl.queue.shutdown, conf.shutdown_timeout)
        await asyncio.to_thread(ctl.release_lease)
        if probes is not None:
            probes.stop()
        if metrics_server is not None:
            metrics_server.shutdown()
    return 0
