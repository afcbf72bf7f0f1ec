"""The shared health policy: defaults, bounds, and InvalidSpec naming the field in every kind."""

from __future__ import annotations

from typing import Any

import pytest

from hostlib import errors
from reconcilers import api, health_policy
from reconcilers import domain_monitor as dmon
from reconcilers import storage_connection as sc
from reconcilers import storage_pool as sp


def test_defaults_are_five_minutes_and_no_signals() -> None:
    assert health_policy.parse({}) == health_policy.Policy(300, False, None)
    got = health_policy.parse({"nodeSignals": {"taint": {"effect": "NoExecute"}}})
    assert got.taint == health_policy.Taint("NoExecute", 30)


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"failureGraceSeconds": -1}, "spec.failureGraceSeconds"),
        ({"failureGraceSeconds": 86401}, "spec.failureGraceSeconds"),
        ({"failureGraceSeconds": True}, "spec.failureGraceSeconds"),
        ({"nodeSignals": {"label": "yes"}}, "spec.nodeSignals.label"),
        ({"nodeSignals": {"colour": 1}}, "spec.nodeSignals.colour"),
        ({"nodeSignals": {"taint": {}}}, "spec.nodeSignals.taint.effect"),
        ({"nodeSignals": {"taint": {"effect": "PreferNoSchedule"}}}, "spec.nodeSignals.taint.effect"),
        ({"nodeSignals": {"taint": {"effect": "NoSchedule", "maxTaintedPercent": 0}}},
         "spec.nodeSignals.taint.maxTaintedPercent"),
        ({"nodeSignals": {"taint": {"effect": "NoSchedule", "maxTaintedPercent": 101}}},
         "spec.nodeSignals.taint.maxTaintedPercent"),
    ],
)
def test_bad_values_are_invalid_spec_naming_the_field_in_every_kind(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(health_policy.PolicyError) as caught:
        health_policy.parse(spec)
    assert caught.value.field == field
    bodies = {
        sc: {"type": "localfs", "localfs": {"path": "/x"}},
        sp: {"dir": {"path": "/x"}},
        dmon: {"target": {"hostPath": "/x"}},
    }
    for module, body in bodies.items():
        obj = {"apiVersion": api.API_VERSION, "kind": module.KIND, "metadata": {"name": "a"},
               "spec": {**body, **spec}}
        with pytest.raises(errors.InvalidSpec) as invalid:
            module.parse(obj)
        assert invalid.value.field == field


@pytest.mark.parametrize(("selected", "pct", "limit"), [(3, 30, 0), (4, 30, 1), (10, 30, 3), (3, 34, 1),
                                                        (3, 33, 0), (1, 100, 1), (7, 1, 0)])
def test_the_breaker_limit_is_the_floor_of_the_share(selected: int, pct: int, limit: int) -> None:
    assert health_policy.Taint("NoSchedule", pct).limit(selected) == limit
