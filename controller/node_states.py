"""The StorageNodeState writer: this node's one record per parent, written only when it changed.

An agent owns one StorageNodeState per (parent, node) (DESIGN.md "Status model") and is its only
writer. :class:`NodeStateWriter` keeps them in an :class:`controller.cache.ObjectCache` (fed by the
agent's watch of its own records and by the answers to its writes) and writes a status only when it
differs from what is there; moving numbers alone (:func:`same_state`) wait for the monitor's report
interval. A create that answers 409 (the record exists but the watch has not shown it yet) takes the
existing record and goes on; a record of an earlier parent of the same name (another uid), or of an
earlier Node of ours (deleted and added again: the record went with it), is deleted first and written
anew. A relist (:meth:`NodeStateWriter.forget_unlisted`) forgets a cached record the API no longer has,
so a deletion no watch event reported is written again too. Condition reasons and messages are cut to
the CRD's limits (:func:`bounded`), because a write the API server refuses would be retried forever.
"""

from __future__ import annotations

import datetime
import logging
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

from controller import cache, kube, metrics, naming, rollup

log = logging.getLogger(__name__)

MAX_REASON = 64
MAX_MESSAGE = 2048
"""Within crds/storagenodestate.yaml's maxLength for condition reason and message."""
_MOVING = frozenset({"message", "lastCheck"})
"""Detail fields that change on every check; like numbers, they alone do not make a write due."""


class NodeStateApi(Protocol):
    """The calls the writer makes: a subset of :class:`controller.kube.Api` (tests pin a fake to it)."""

    def create_node_state(self, body: Mapping[str, Any]) -> dict[str, Any]: ...
    def list_node_states(self, *, label_selector: str | None = None) -> list[dict[str, Any]]: ...
    def replace_node_state_status(self, name: str, status: Mapping[str, Any]) -> dict[str, Any]: ...
    def delete_node_state(self, name: str, *, uid: str | None = None) -> bool: ...


def bounded(cond: Mapping[str, Any]) -> dict[str, str]:
    """A condition within the StorageNodeState schema's limits."""
    out = {k: str(v) for k, v in cond.items()}
    out["reason"] = out.get("reason", "")[:MAX_REASON] or "Unknown"
    out["message"] = out.get("message", "")[:MAX_MESSAGE]
    return out


def same_state(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
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


def desired_status(old: Mapping[str, Any], block: Mapping[str, Any]) -> dict[str, Any]:
    """``block`` as the status to hold, its conditions bounded and each one's ``lastTransitionTime``
    carried from ``old`` (what the API holds) while its status is unchanged, so a status equal but for
    that time is equal (:func:`controller.rollup.merge_conditions`)."""
    desired = dict(block)
    desired["conditions"] = rollup.merge_conditions(
        old.get("conditions") or [],
        [bounded(c) for c in block.get("conditions") or []],
        datetime.datetime.now(tz=datetime.UTC),
    )
    return desired


def owner_node_uid(record: Mapping[str, Any]) -> str:
    """The uid of the Node a StorageNodeState's ownerReference names ("" when it names none)."""
    refs = cache.meta(record).get("ownerReferences") or []
    return next(
        (str(r.get("uid") or "") for r in refs if isinstance(r, Mapping) and r.get("kind") == "Node"), ""
    )


def of_another_node(record: Mapping[str, Any], node_uid: str) -> bool:
    """Whether ``record`` belongs to an earlier Node of our name: both uids known and different."""
    owner = owner_node_uid(record)
    return bool(owner and node_uid and owner != node_uid)


class NodeStateWriter:
    """Writes this node's StorageNodeStates; see the module docstring. Thread-safe through the cache."""

    def __init__(self, api: NodeStateApi, node: str, stats: metrics.Metrics) -> None:
        self.api = api
        self.node = node
        self.metrics = stats
        self.states = cache.ObjectCache()
        """Our records by name: the watch of our own StorageNodeStates and our writes' answers feed it."""

    def name(self, kind: str, parent_name: str) -> str:
        return naming.node_state_name(kind, parent_name, self.node)

    def current(self, kind: str, parent_name: str) -> dict[str, Any] | None:
        return self.states.get(self.name(kind, parent_name))

    def observed(self, event_type: str | None, obj: Mapping[str, Any]) -> bool:
        """A watch event or listed object of one of our records; True when its status changed (someone
        else wrote it, or it went away: look again)."""
        name = cache.meta(obj).get("name")
        if not isinstance(name, str):
            return False
        before = self.states.get(name)
        if not self.states.apply(event_type, name, obj):
            return False
        return before is None or event_type == "DELETED" or before.get("status") != obj.get("status")

    def write(
        self,
        kind: str,
        parent: Mapping[str, Any],
        block: Mapping[str, Any],
        *,
        node_uid: str,
        numbers_only_skip: bool = False,
    ) -> bool:
        """Make our StorageNodeState of ``parent`` carry ``block``; returns whether an API write happened."""
        parent_name = str(cache.meta(parent).get("name"))
        sns_name = self.name(kind, parent_name)
        parent_uid = str(cache.meta(parent).get("uid") or "")
        current = self.states.get(sns_name)
        if current is not None and (
            ((current.get("spec") or {}).get("parentRef") or {}).get("uid") != parent_uid
            or of_another_node(current, node_uid)
        ):
            # A parent of the same name was re-created: the old record is about another object. Or
            # our Node was (deleted and added again): the record went with the old Node (garbage
            # collected through its ownerReference, perhaps while no watch of ours was there to see
            # it), so what the cache holds may be gone. Either way: a new record.
            self.delete(sns_name, current)
            current = None
        created = current is None
        if current is None:
            current = self._create(kind, parent_name, parent_uid, node_uid)
            # After a 409 this is a record an earlier run wrote: compared below like a cached one.
            self.states.put(sns_name, current)
        old_status = current.get("status") or {}
        desired = desired_status(old_status, block)
        if old_status == desired or (numbers_only_skip and same_state(old_status, desired)):
            return created
        try:
            obj = self.api.replace_node_state_status(sns_name, desired)
        except kube.ApiError as exc:
            if exc.not_found:
                self.states.discard(sns_name)
            raise
        self.metrics.status_writes.labels("status").inc()
        self.states.put(sns_name, obj)
        return True

    def _create(self, kind: str, parent_name: str, parent_uid: str, node_uid: str) -> dict[str, Any]:
        body = naming.node_state_body(
            kind=kind, parent_name=parent_name, parent_uid=parent_uid, node=self.node, node_uid=node_uid
        )
        try:
            created = self.api.create_node_state(body)
        except kube.ApiError as exc:
            if not exc.conflict:
                raise
            # Exists but our cache missed it (watch lag): take it and go on.
            sns_name = body["metadata"]["name"]
            found = [
                o
                for o in self.api.list_node_states(label_selector=naming.node_selector(self.node))
                if cache.meta(o).get("name") == sns_name
            ]
            if not found:
                raise
            return found[0]
        self.metrics.status_writes.labels("create").inc()
        return created

    def snapshot(self) -> dict[str, tuple[str, str]]:
        """Name -> (uid, resourceVersion) of every cached record; taken before a relist's listing begins
        (:meth:`forget_unlisted`)."""
        out: dict[str, tuple[str, str]] = {}
        for record in self.states.values():
            m = cache.meta(record)
            out[str(m.get("name"))] = (str(m.get("uid") or ""), str(m.get("resourceVersion") or ""))
        return out

    def forget_unlisted(
        self, before: Mapping[str, tuple[str, str]], listed: Iterable[str]
    ) -> list[dict[str, Any]]:
        """Forget, and return, each record cached ``before`` a listing began, unchanged since (same uid
        and resourceVersion: no write or event of ours came in the meantime) and not among the
        ``listed`` names: it was deleted and no watch event said so. The next pass creates it again;
        a record created or written while the listing ran is kept."""
        names = set(listed)
        gone: list[dict[str, Any]] = []
        for name, (uid, version) in sorted(before.items()):
            if name in names:
                continue
            record = self.states.get(name)
            if record is not None and self.states.discard(name, uid=uid, resource_version=version):
                gone.append(record)
        return gone

    def delete(self, sns_name: str, current: Mapping[str, Any]) -> None:
        uid = str(cache.meta(current).get("uid") or "") or None
        self.api.delete_node_state(sns_name, uid=uid)
        self.metrics.status_writes.labels("delete").inc()
        self.states.discard(sns_name, uid=uid)
