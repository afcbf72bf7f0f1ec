"""A parent deleted between the controller's read and its write (404) is forgotten, not an error.

Found by the chaos soak (issue 14): a status PATCH raced the parent's deletion right after the finalizer
was released; the 404 was counted as an API error and retried with backoff for a parent that no longer
exists. The controller runs with the in-memory API and fake clock of :mod:`test_fleet_rollup`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import test_fleet_rollup as fleet

from controller import kube


class GoneApi(fleet.Api):
    """The in-memory API with some parents deleted behind the controller's back: writes answer 404."""

    def __init__(self) -> None:
        super().__init__()
        self.gone: set[str] = set()

    def _check(self, name: str) -> None:
        if name in self.gone:
            raise kube.ApiError(404, "NotFound", f"storageconnections {name!r} not found")

    def patch_parent_status(self, kind: str, name: str, status: Mapping[str, Any]) -> dict[str, Any]:
        self._check(name)
        return super().patch_parent_status(kind, name, status)

    def set_parent_finalizers(
        self, kind: str, name: str, finalizers: list[str], version: str
    ) -> dict[str, Any]:
        self._check(name)
        return super().set_parent_finalizers(kind, name, finalizers, version)


def errors(w: fleet.World) -> float:
    return float(w.ctl.metrics.reconciles.labels(fleet.KIND, "error")._value.get())


def test_a_404_on_the_status_write_drops_the_parent_and_sweeps_its_children() -> None:
    w = fleet.World()
    w.api = w.ctl.api = GoneApi()  # type: ignore[assignment]
    w.put_node(fleet.node("n1"), "ADDED")
    p = fleet.parent("p")
    w.add_parent(p)
    w.run()
    child = fleet.state(p, "n1", "Connected")
    w.api.gone.add("p")
    w.put(child, "ADDED")  # the status must change: the controller PATCHes and gets 404
    key = (fleet.KIND, "p")
    assert w.queue.pop_due() == [key]
    assert w.ctl.process(key) is False  # no retry
    assert errors(w) == 0
    assert w.ctl.parents.get(key) is None
    w.run()  # queued once more: the deleted-parent path deletes the child
    assert w.api.deleted == [child["metadata"]["name"]]
    assert errors(w) == 0 and w.queue.depth() == 0


def test_a_404_on_the_finalizer_write_is_no_error_either() -> None:
    w = fleet.World()
    w.api = w.ctl.api = GoneApi()  # type: ignore[assignment]
    w.put_node(fleet.node("n1"), "ADDED")
    p = fleet.parent("q")
    p["metadata"]["finalizers"] = []
    w.api.parents[(fleet.KIND, "q")] = p
    w.api.gone.add("q")
    w.ctl.on_parent(fleet.KIND, "ADDED", p)
    w.run()
    assert errors(w) == 0 and w.ctl.parents.get((fleet.KIND, "q")) is None


def test_other_api_errors_still_count_and_retry() -> None:
    w = fleet.World()
    api = GoneApi()
    w.api = w.ctl.api = api  # type: ignore[assignment]
    w.put_node(fleet.node("n1"), "ADDED")
    p = fleet.parent("r")
    w.add_parent(p)
    w.run()

    def fail(*_: Any, **__: Any) -> dict[str, Any]:
        raise kube.ApiError(500, "InternalError", "etcd is sad")

    api.patch_parent_status = fail  # type: ignore[method-assign]
    w.put(fleet.state(p, "n1", "Connected"), "ADDED")
    assert w.ctl.process((fleet.KIND, "r")) is True
    assert errors(w) == 1 and w.ctl.parents.get((fleet.KIND, "r")) is not None
