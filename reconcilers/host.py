"""The host a reconciler acts on, as one injected object.

Reconcilers are pure with respect to the host: everything they touch comes through :class:`Host` — the
:class:`hostlib.config.HostConfig`, the :class:`hostlib.ledger.Ledger` of what this host owns, and the
host layer's factories. Every seam is typed: the composition roots (the agent, the local CLI, the
monitor CLI) hand in the real ones, tests hand in fakes with the same interfaces (a recording
``make_connection``, a dict-backed ``secret_lookup``, a fake checker).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from hostlib import checker as checker_mod
from hostlib import config as hostlib_config
from hostlib import connections, ledger

if TYPE_CHECKING:  # the libvirt module is loaded only by the pool kind and its callers
    from hostlib import libvirt_pools

SecretLookup = Callable[[str, str], Mapping[str, str]]
"""(namespace, name) -> the Secret's decoded data; raises KeyError when there is no such Secret."""

ConnectionFactory = Callable[[str, connections.Params, hostlib_config.HostConfig], connections.Connection]
"""(name, params, host config) -> Connection; validates first (InvalidSpec) and touches nothing."""


class Pools(Protocol):
    """The libvirt layer StoragePools use: :class:`hostlib.libvirt_pools.PoolLayer`."""

    def observe(self, name: str) -> libvirt_pools.PoolObserved | None: ...
    def define(self, defn: libvirt_pools.PoolDefinition) -> str: ...
    def build(self, name: str) -> None: ...
    def start(self, name: str) -> None: ...
    def set_autostart(self, name: str, autostart: bool) -> None: ...
    def refresh(self, name: str) -> None: ...
    def seconds_since_refresh(self, name: str) -> float | None: ...
    def destroy(self, name: str) -> None: ...
    def undefine(self, name: str) -> None: ...
    def secret_uuid(self, usage: str) -> str | None: ...
    def set_secret(self, usage: str, description: str, value: bytes) -> bool: ...
    def undefine_secret(self, usage: str) -> bool: ...
    def add_pool_listener(self, listener: Callable[[str], None]) -> None: ...
    def add_reconnect_listener(self, listener: Callable[[], None]) -> None: ...
    def remove_listener(self, listener: Callable[..., None]) -> None: ...


class Checks(Protocol):
    """One-shot health checks (:class:`hostlib.checker.Checker`); driven by one thread, then closed."""

    def check(
        self, request: checker_mod.CheckRequest, *, timeout: float
    ) -> checker_mod.CheckResult | None: ...
    def remove_probe(
        self, root: str, path: str, *, expect: tuple[int, int], timeout: float
    ) -> bool | None: ...
    def close(self) -> None: ...


@dataclasses.dataclass
class Host:
    config: hostlib_config.HostConfig
    """Where hoststorage mounts, keeps state, and which host paths it may use."""
    ledger: ledger.Ledger
    """What this host owns; teardown never touches anything not listed here."""
    make_connection: ConnectionFactory = connections.make_connection
    """Factory of connection objects (``hostlib.connections.make_connection``)."""
    secret_lookup: SecretLookup | None = None
    """Secrets for ``chapSecretRef``: local mode serves those of the input files, the agent its namespace."""
    pools: Callable[[], Pools] | None = None
    """The libvirt layer for StoragePools, on first use: the agent's started layer, local mode's
    ``libvirt_pools.shared(uri)``. None: this process runs no pools (a pool here is Unsupported)."""
    checker: Callable[[], Checks] = checker_mod.Checker
    """A one-shot checker for each use (a checker is driven by one thread; the caller closes it)."""
    node_name: str = ""
    """This node's name (agent) or the host name (local mode); used in messages only."""

    @classmethod
    def for_config(cls, host_config: hostlib_config.HostConfig, **kwargs: Any) -> Host:
        """A Host with the ledger of ``host_config.state_dir`` loaded (LedgerCorrupt if unreadable)."""
        return cls(config=host_config, ledger=ledger.Ledger.load(host_config.state_dir), **kwargs)
