"""What a kind is: a module satisfying :class:`Kind`.

A kind module (``reconcilers.storage_connection``, ``storage_pool``, ``domain_monitor``) exports the
names below at module level; mypy checks each module against this protocol (the ``TYPE_CHECKING``
lines at the end of each kind module), and ``controller.registry.load`` checks it again at run time.
The programs (agent, local CLI, monitor CLI) drive every kind through these names only: what differs
per kind is declared here or in its ``controller.registry`` row, never tested with ``if kind == ...``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, TypeVar, runtime_checkable

from hostlib import ledger
from reconcilers import host, selector, status


class Spec(Protocol):
    """What every parsed spec has: its name and its node selector (the agent's selection uses it)."""

    @property
    def name(self) -> str: ...
    @property
    def node_selector(self) -> selector.NodeSelector: ...


S = TypeVar("S", bound=Spec)
Unsubscribe = Callable[[], None]


@runtime_checkable
class Kind(Protocol[S]):
    KIND: str
    """The kind's name (``StorageConnection``): ledger entries, results and registry rows use it."""
    DETAIL_KEY: str
    """The StorageNodeState status block of this kind (``connection``)."""
    RESULTS: status.Results
    """How this kind's results are built (kind, detail key, the Ready phase)."""

    def parse(self, obj: Mapping[str, Any]) -> S:
        """A whole manifest (apiVersion, kind, metadata, spec) -> the frozen spec; InvalidSpec. No I/O."""
        ...

    def reconcile(self, spec: S, host: host.Host, *, dry_run: bool = False) -> status.NodeResult:
        """Observe, plan, act (unless dry_run), re-observe, report. Never raises for host failures."""
        ...

    def teardown(
        self,
        spec_or_entry: S | ledger.LedgerEntry,
        host: host.Host,
        *,
        force: bool = False,
        dry_run: bool = False,
    ) -> status.NodeResult:
        """Undo what hoststorage made here, as deletionPolicy says (:func:`reconcilers.status.teardown`)."""
        ...

    def observe(self, entry: ledger.LedgerEntry, host: host.Host) -> status.NodeResult:
        """What ``hoststorage status`` shows for one ledger entry; changes nothing."""
        ...

    def subscribe(
        self, host: host.Host, enqueue: Callable[[str], None], known: Callable[[], Iterable[str]]
    ) -> Unsubscribe:
        """Feed host events about this kind into the caller's queue (names); returns the unsubscriber.
        A kind without host events returns a function that does nothing."""
        ...


def no_host_events(
    host: host.Host, enqueue: Callable[[str], None], known: Callable[[], Iterable[str]]
) -> Unsubscribe:
    """``subscribe`` for kinds the host never tells about: nothing to feed, nothing to stop."""
    del host, enqueue, known
    return lambda: None
