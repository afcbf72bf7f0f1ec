"""The host a reconciler acts on, as one injected object.

Reconcilers are pure with respect to the host: everything they touch comes through :class:`Host` — the
:class:`hostlib.hostlib_config.HostConfig`, the :class:`hostlib.ledger.Ledger` of what this host owns, and the
factories of the host layer. Tests hand in fakes with the real interfaces (a recording
``make_connection``, a dict-backed ``secret_lookup``); the local CLI and the agent hand in the real ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from hostlib import config as hostlib_config
from hostlib import connections, ledger

SecretLookup = Callable[[str, str], Mapping[str, str]]
"""(namespace, name) -> the Secret's decoded data; raises KeyError when there is no such Secret."""

ConnectionFactory = Callable[[str, connections.Params, hostlib_config.HostConfig], connections.Connection]
"""(name, params, host config) -> Connection; validates first (InvalidSpec) and touches nothing."""


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
    pools: Any = None
    """The libvirt layer (``hostlib.libvirt_pools``), set by whoever runs StoragePools."""
    checker: Any = None
    """The health checker (``hostlib.checker``), set by whoever runs DomainMonitors."""
    node_name: str = ""
    """This node's name (agent) or the host name (local mode); used in messages only."""

    @classmethod
    def for_config(cls, host_config: hostlib_config.HostConfig, **kwargs: Any) -> Host:
        """A Host with the ledger of ``host_config.state_dir`` loaded (LedgerCorrupt if unreadable)."""
        return cls(config=host_config, ledger=ledger.Ledger.load(host_config.state_dir), **kwargs)
