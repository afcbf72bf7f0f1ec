"""A pool whose autostart flag libvirt refuses still runs and is Ready (reason AutostartNotSet, retried).

Found by the chaos soak (seed 961853358): after a libvirtd restart libvirt failed to load a pool's
definition but kept its autostart link; the agent defined the pool again, and every ``setAutostart(1)``
then failed with "File exists", so the running pool was Failed / AutostartFailed for good. The fake
layer here has the real layer's verbs (``reconcilers.host.Pools``); the real-libvirt case is
``tests/test_storage_pool.py::test_a_stale_autostart_link_leaves_the_pool_running_and_ready``."""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import pytest

from hostlib import config, libvirt_pools
from reconcilers import api, storage_pool
from reconcilers import host as host_mod

REFUSED = ("Failed to create symlink '/etc/libvirt/storage/autostart/p.xml' to '/etc/libvirt/storage/p.xml': "
           "File exists")


@dataclasses.dataclass
class FakeLayer:
    """libvirt in memory: one pool at most; ``refuse`` makes set_autostart fail as libvirt does."""

    refuse: str = REFUSED
    pool: libvirt_pools.PoolObserved | None = None
    calls: list[str] = dataclasses.field(default_factory=list)

    def observe(self, name: str) -> libvirt_pools.PoolObserved | None:
        return self.pool

    def define(self, defn: libvirt_pools.PoolDefinition) -> str:
        self.calls.append("define")
        self.pool = libvirt_pools.PoolObserved(
            defn.name, defn.uuid or "u-1", "inactive", False, 0, 0, 0, None, False, True, defn
        )
        return self.pool.uuid

    def build(self, name: str) -> None:
        self.calls.append("build")

    def start(self, name: str) -> None:
        self.calls.append("start")
        assert self.pool is not None
        self.pool = dataclasses.replace(self.pool, state="running", active=True, capacity=10, available=10,
                                        volumes=0)  # fmt: skip

    def set_autostart(self, name: str, autostart: bool) -> None:
        self.calls.append("autostart")
        if self.refuse:
            raise libvirt_pools.AutostartFailed(self.refuse)
        assert self.pool is not None
        self.pool = dataclasses.replace(self.pool, autostart=autostart)

    def refresh(self, name: str) -> None:
        self.calls.append("refresh")

    def seconds_since_refresh(self, name: str) -> float | None:
        return 0.0


def reconcile(tmp_path: pathlib.Path, layer: FakeLayer, **spec: Any) -> Any:
    conf = config.HostConfig(state_dir=str(tmp_path / "state"), allowed_host_paths=(str(tmp_path),))
    host = host_mod.Host.for_config(conf, pools=lambda: layer)
    manifest = {"apiVersion": api.API_VERSION, "kind": storage_pool.KIND, "metadata": {"name": "p"},
                "spec": {"dir": {"path": str(tmp_path / "images")}, **spec}}  # fmt: skip
    return storage_pool.reconcile(storage_pool.parse(manifest), host)


def test_a_refused_autostart_leaves_the_pool_running_and_ready_and_says_why(tmp_path: pathlib.Path) -> None:
    layer = FakeLayer()
    res = reconcile(tmp_path, layer)
    assert layer.calls == ["define", "build", "start", "autostart"]
    assert (res.phase, res.reason, res.ready, res.retry) == ("Running", "AutostartNotSet", True, True)
    assert res.message.endswith(REFUSED) and "autostart could not be set" in res.message
    assert res.detail["autostart"] is False and res.changed
    # Tried again on the next run, and once libvirt lets it, the pool is plainly Running.
    layer.refuse = ""
    again = reconcile(tmp_path, layer)
    assert layer.calls[-1] == "autostart" and "define" not in layer.calls[4:]
    assert (again.phase, again.reason, again.retry) == ("Running", "Running", False)
    assert again.detail["autostart"] is True


def test_only_autostart_is_forgiven(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A verb that makes the pool serve (start) failing is still the pool's failure."""
    layer = FakeLayer(refuse="")

    def refuse_start(name: str) -> None:
        raise libvirt_pools.StartFailed("cannot start")

    monkeypatch.setattr(layer, "start", refuse_start)
    res = reconcile(tmp_path, layer)
    assert (res.phase, res.reason, res.ready) == ("Failed", "StartFailed", False)


def test_a_refused_autostart_on_a_pool_that_is_not_running_is_not_ready(
    tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forgiving autostart never makes a pool that does not run Ready."""
    layer = FakeLayer()
    monkeypatch.setattr(layer, "start", lambda name: layer.calls.append("start"))  # libvirt left it inactive
    res = reconcile(tmp_path, layer)
    assert layer.calls == ["define", "build", "start", "autostart"]
    assert (res.phase, res.reason, res.ready) == ("Pending", "NotRunning", False)
