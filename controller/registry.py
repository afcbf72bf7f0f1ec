"""The one registry of kinds: what every program needs to know about each kind, as plain data.

One row per kind: its name, its CRD's plural and short name, its StorageNodeState detail key, its
place in the dependency order, which node phases mean Ready and which mean failed (the roll-up reads
them here), how the agent treats it (a runtime beside reconcile, Events on phase transitions), and the
module that reconciles it. The cluster controller reads the rows and never imports a kind module (it
holds no host stack: tests/test_registry.py checks ``sys.modules`` of a real controller process);
the programs that reconcile (agent, local CLI, monitor CLI) call :func:`load`, which imports the module
and checks it is a :class:`reconcilers.kind.Kind`.

Adding a kind: one row here (docs/internals.md lists the other places).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from reconcilers import api

if TYPE_CHECKING:
    from reconcilers import kind as kind_mod

GROUP = api.GROUP
VERSION = api.VERSION
API_VERSION = api.API_VERSION
NODE_STATE = "StorageNodeState"
NODE_STATE_PLURAL = "storagenodestates"
FAILED = "Failed"
TEARDOWN_FAILED = "TeardownFailed"
DETACHED = "Detached"


@dataclasses.dataclass(frozen=True)
class Row:
    kind: str
    plural: str
    short: str
    """The CRD's short name; also the prefix of its StorageNodeState names (``sconn-<parent>-<node>``)."""
    detail_key: str
    order: int
    """Dependency order: lower first on apply, higher first on delete (users before what they use)."""
    ready_phases: frozenset[str]
    failed_phases: frozenset[str]
    """Node phases that count as failed in the roll-up (the parent's Degraded condition)."""
    module: str
    """The reconciler module, a :class:`reconcilers.kind.Kind`, imported only by :func:`load`."""
    runtime: str = ""
    """``module:factory`` of the agent-side runtime that drives this kind beside reconcile (a
    ``controller.runtimes.Runtime``), or empty."""
    transition_events: frozenset[str] = frozenset()
    """Phases whose entry on a node is news: the agent posts an Event (see controller.events)."""


ROWS: tuple[Row, ...] = (
    Row(
        kind="StorageConnection",
        plural="storageconnections",
        short="sconn",
        detail_key="connection",
        order=0,
        ready_phases=frozenset({"Connected"}),
        failed_phases=frozenset({FAILED, TEARDOWN_FAILED}),
        module="reconcilers.storage_connection",
    ),
    Row(
        kind="StoragePool",
        plural="storagepools",
        short="spool",
        detail_key="pool",
        order=1,
        ready_phases=frozenset({"Running"}),
        failed_phases=frozenset({FAILED, TEARDOWN_FAILED}),
        module="reconcilers.storage_pool",
    ),
    Row(
        kind="DomainMonitor",
        plural="domainmonitors",
        short="dmon",
        detail_key="monitor",
        order=2,
        ready_phases=frozenset({"Healthy"}),
        failed_phases=frozenset({FAILED, TEARDOWN_FAILED, "Invalid", "Degraded"}),
        module="reconcilers.domain_monitor",
        runtime="controller.runtimes:Monitors",
        transition_events=frozenset({"Healthy", "Degraded", "Invalid"}),
    ),
)

BY_KIND: dict[str, Row] = {row.kind: row for row in ROWS}
KINDS: tuple[str, ...] = tuple(row.kind for row in ROWS)
PLURALS: dict[str, str] = {**{row.kind: row.plural for row in ROWS}, NODE_STATE: NODE_STATE_PLURAL}


def row(kind: str) -> Row:
    return BY_KIND[kind]


def ordered(kinds: Iterable[str] | None = None) -> list[Row]:
    """The rows of ``kinds`` (default all) in dependency order."""
    chosen = ROWS if kinds is None else [BY_KIND[k] for k in kinds]
    return sorted(chosen, key=lambda r: r.order)


def load(kind: str) -> kind_mod.Kind[Any]:
    """The kind module of ``kind``, imported now and checked to be a :class:`reconcilers.kind.Kind`."""
    from reconcilers import kind as kind_mod  # noqa: PLC0415 - only the programs that reconcile load it

    entry = BY_KIND[kind]
    module = importlib.import_module(entry.module)
    if not isinstance(module, kind_mod.Kind):
        raise TypeError(f"{entry.module} is not a reconcilers.kind.Kind")
    if (entry.kind, entry.detail_key) != (module.KIND, module.DETAIL_KEY):
        raise TypeError(f"{entry.module} declares {module.KIND}/{module.DETAIL_KEY}, the registry {kind}")
    loaded: kind_mod.Kind[Any] = module
    return loaded


def load_all(kinds: Iterable[str] | None = None) -> dict[str, kind_mod.Kind[Any]]:
    """Every kind module (or those of ``kinds``), in dependency order."""
    return {r.kind: load(r.kind) for r in ordered(kinds)}
