"""Object caches fed by watches and listings, kept in resourceVersion order; listing with backoff.

Two shapes: :class:`ObjectCache` keeps whole bodies (the agent's few objects); :class:`RecordCache`
keeps one small value per key (what a consumer needs of the object, not the object), and
:class:`StateIndex` is a RecordCache of StorageNodeStates indexed by parent and by node, so the
controller holds 250,000 of them in little memory and finds one parent's or one node's children
without a scan.

Both programs see each object twice over: from its watch and from the start-up listing, in either order.
An :class:`ObjectCache` keeps the newest version of every object by ``resourceVersion``, so a list result
that arrives after a newer watch event never overwrites it; with ``tombstones`` a deletion is
remembered too, so a stale list result cannot bring a deleted object back. Values are deep copies in
and out: a caller never shares a dict with the cache. Thread-safe (one short lock).

:func:`list_with_backoff` runs a start-up listing until it succeeds (an API server that is not there
yet is retried with exponential backoff) or the program stops.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import sys
import threading
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, Generic, TypeVar

log = logging.getLogger(__name__)

Obj = dict[str, Any]
V = TypeVar("V")


def meta(obj: Mapping[str, Any] | None) -> Mapping[str, Any]:
    return (obj or {}).get("metadata") or {}


def resource_version_newer(new: Mapping[str, Any], old: Mapping[str, Any] | None) -> bool:
    """Whether ``new`` is at least as recent as ``old`` (resourceVersions compared as integers).

    Kubernetes calls resourceVersion opaque, but etcd-backed servers hand out increasing integers; we
    only use this to keep a watch event from being overwritten by an older list result, and fall back
    to "newer" when either is not a number.
    """
    if old is None:
        return True
    return version_newer(meta(new).get("resourceVersion"), meta(old).get("resourceVersion"))


def version_newer(a: Any, b: Any) -> bool:
    """``a`` at least as recent as ``b`` (the rule of :func:`resource_version_newer` on the versions)."""
    if isinstance(a, str) and isinstance(b, str) and a.isdigit() and b.isdigit():
        return int(a) >= int(b)
    return True


class ObjectCache:
    """Objects by key, newest resourceVersion wins; see the module docstring."""

    def __init__(self, *, tombstones: bool = False) -> None:
        self._lock = threading.Lock()
        self._objects: dict[Hashable, Obj] = {}
        self._tombstones: dict[Hashable, Obj] | None = {} if tombstones else None

    def apply(self, event_type: str | None, key: Hashable, obj: Mapping[str, Any]) -> bool:
        """Record a watch event or a listed object (``event_type`` ADDED/MODIFIED/DELETED/None); True
        when the cache changed."""
        body = copy.deepcopy(dict(obj))
        with self._lock:
            current = self._objects.get(key)
            if event_type == "DELETED":
                if not resource_version_newer(body, current):
                    return False
                if self._tombstones is not None:
                    self._tombstones[key] = body
                return self._objects.pop(key, None) is not None
            if not resource_version_newer(body, current):
                return False
            if current is not None and _same_version(body, current):
                return False  # the same resourceVersion is the same object (an echo of our own write)
            if self._tombstones is not None:
                if not resource_version_newer(body, self._tombstones.get(key)):
                    return False
                self._tombstones.pop(key, None)
            self._objects[key] = body
            return True

    def put(self, key: Hashable, obj: Mapping[str, Any]) -> bool:
        """Our own write's answer: kept unless the cache already has something newer."""
        return self.apply("MODIFIED", key, obj)

    def discard(self, key: Hashable, *, uid: str | None = None, resource_version: str | None = None) -> bool:
        """Forget ``key`` (only if it still has ``uid`` and ``resource_version``, when given); True when
        something went."""
        with self._lock:
            current = self._objects.get(key)
            if current is None or (uid is not None and str(meta(current).get("uid") or "") != uid):
                return False
            version = str(meta(current).get("resourceVersion") or "")
            if resource_version is not None and version != resource_version:
                return False
            del self._objects[key]
            return True

    def get(self, key: Hashable) -> Obj | None:
        with self._lock:
            obj = self._objects.get(key)
            return copy.deepcopy(obj) if obj is not None else None

    def all_keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._objects)

    def values(self, where: Callable[[Mapping[str, Any]], bool] | None = None) -> list[Obj]:
        """Copies of the objects (``where`` filters them under the lock, before copying)."""
        with self._lock:
            return [copy.deepcopy(o) for o in self._objects.values() if where is None or where(o)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._objects)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._objects


def _same_version(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    rv = meta(a).get("resourceVersion")
    return bool(rv) and rv == meta(b).get("resourceVersion")


class RecordCache(Generic[V]):
    """One small value per key, newest resourceVersion wins (the rule of :class:`ObjectCache`), the
    same version is no change. Values are the caller's immutable records, kept as given."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._values: dict[Hashable, tuple[str, V]] = {}

    def apply(
        self, event_type: str | None, key: Hashable, version: str, value: V
    ) -> tuple[V | None, V | None] | None:
        """Record a watch event or listed object; (old, new) values when the cache changed (new is None
        when it was deleted), else None (older, or the same version)."""
        with self._lock:
            current = self._values.get(key)
            if current is not None and not version_newer(version, current[0]):
                return None
            if event_type == "DELETED":
                if current is None:
                    return None
                del self._values[key]
                self._removed(key, current[1])
                return current[1], None
            if current is not None and current[0] == version:
                return None  # the same resourceVersion is the same object
            self._values[key] = (sys.intern(version), value)
            if current is not None:
                self._removed(key, current[1])
            self._added(key, value)
            return (current[1] if current is not None else None), value

    def _added(self, key: Hashable, value: V) -> None:
        """Subclass hook: ``value`` now stands for ``key``."""

    def _removed(self, key: Hashable, value: V) -> None:
        """Subclass hook: ``value`` no longer stands for ``key``."""

    def discard(self, key: Hashable) -> V | None:
        with self._lock:
            current = self._values.pop(key, None)
            if current is None:
                return None
            self._removed(key, current[1])
            return current[1]

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            current = self._values.get(key)
            return current[1] if current is not None else None

    def keys(self) -> list[Hashable]:
        with self._lock:
            return list(self._values)

    def items(self) -> list[tuple[Hashable, V]]:
        with self._lock:
            return [(k, v) for k, (_, v) in self._values.items()]

    def __len__(self) -> int:
        with self._lock:
            return len(self._values)

    def __contains__(self, key: Hashable) -> bool:
        with self._lock:
            return key in self._values


ParentKey = tuple[str, str]


@dataclasses.dataclass(frozen=True, slots=True)
class StateRecord:
    """What the controller keeps of one StorageNodeState: identity, where it belongs, and ``verdict``
    (the roll-up's reading of its status: :class:`controller.rollup.Verdict`)."""

    name: str
    uid: str
    node: str
    parent: ParentKey
    parent_uid: str
    verdict: Any

    @classmethod
    def from_object(
        cls, obj: Mapping[str, Any], verdict: Callable[[str, Mapping[str, Any]], Any]
    ) -> StateRecord:
        """``verdict(kind, status)`` reads the status; strings shared by many records are interned."""
        spec = obj.get("spec") or {}
        ref = spec.get("parentRef") or {}
        kind = str(ref.get("kind") or "")
        return cls(
            name=str(meta(obj).get("name") or ""),
            uid=str(meta(obj).get("uid") or ""),
            node=sys.intern(str(spec.get("nodeName") or "")),
            parent=(sys.intern(kind), sys.intern(str(ref.get("name") or ""))),
            parent_uid=sys.intern(str(ref.get("uid") or "")),
            verdict=verdict(kind, obj.get("status") or {}),
        )


class StateIndex(RecordCache[StateRecord]):
    """StorageNodeState records by name, with the names of each parent's and each node's children."""

    def __init__(self) -> None:
        super().__init__()
        self._by_parent: dict[ParentKey, dict[str, StateRecord]] = {}
        self._by_node: dict[str, dict[str, StateRecord]] = {}

    def _added(self, key: Hashable, value: StateRecord) -> None:
        self._by_parent.setdefault(value.parent, {})[value.name] = value
        self._by_node.setdefault(value.node, {})[value.name] = value

    def _removed(self, key: Hashable, value: StateRecord) -> None:
        _drop(self._by_parent, value.parent, value.name)
        _drop(self._by_node, value.node, value.name)

    def of_parent(self, key: ParentKey) -> list[StateRecord]:
        with self._lock:
            return list(self._by_parent.get(key, {}).values())

    def of_node(self, node: str) -> list[StateRecord]:
        with self._lock:
            return list(self._by_node.get(node, {}).values())

    def parents(self) -> list[ParentKey]:
        with self._lock:
            return list(self._by_parent)

    def nodes(self) -> list[str]:
        with self._lock:
            return list(self._by_node)

    def __iter__(self) -> Iterator[StateRecord]:
        with self._lock:
            return iter([v for _, v in self._values.values()])


K = TypeVar("K", bound=Hashable)


def _drop(index: dict[K, dict[str, StateRecord]], at: K, name: str) -> None:
    group = index.get(at)
    if group is not None:
        group.pop(name, None)
        if not group:
            del index[at]


def list_with_backoff(
    listing: Callable[[], None],
    stopping: threading.Event,
    what: str,
    *,
    errors: tuple[type[Exception], ...],
    first_delay: float = 1.0,
    max_delay: float = 30.0,
) -> bool:
    """Run ``listing`` until it returns (True) or ``stopping`` is set (False); each failure with one of
    ``errors`` is logged and retried after a delay that doubles up to ``max_delay``."""
    delay = first_delay
    while not stopping.is_set():
        try:
            listing()
            return True
        except errors as exc:
            log.warning("%s: initial listing failed (%s); retrying in %.0f s", what, exc, delay)
            stopping.wait(delay)
            delay = min(delay * 2, max_delay)
    return False
