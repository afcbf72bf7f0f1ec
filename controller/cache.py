"""Object caches fed by watches and listings, kept in resourceVersion order; listing with backoff.

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
import logging
import threading
from collections.abc import Callable, Hashable, Mapping
from typing import Any

log = logging.getLogger(__name__)

Obj = dict[str, Any]


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
    a = meta(new).get("resourceVersion")
    b = meta(old).get("resourceVersion")
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
            if self._tombstones is not None:
                if not resource_version_newer(body, self._tombstones.get(key)):
                    return False
                self._tombstones.pop(key, None)
            self._objects[key] = body
            return True

    def put(self, key: Hashable, obj: Mapping[str, Any]) -> bool:
        """Our own write's answer: kept unless the cache already has something newer."""
        return self.apply("MODIFIED", key, obj)

    def discard(self, key: Hashable, *, uid: str | None = None) -> bool:
        """Forget ``key`` (only if it still has ``uid``, when given); True when something went."""
        with self._lock:
            current = self._objects.get(key)
            if current is None or (uid is not None and str(meta(current).get("uid") or "") != uid):
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
