"""The one owner of the health-policy spec fields every kind shares: ``failureGraceSeconds`` and
``nodeSignals``.

These fields are read by the cluster controller (the roll-up's diagnosis waits ``failureGraceSeconds``
before it calls a failure a node or a storage problem; ``nodeSignals`` opts a parent in to Node labels
and taints) and checked by the agent like the rest of the spec (a bad value is ``InvalidSpec`` on every
node). Both call :func:`parse`, so the two can never disagree; the limits are mirrored by crds/*.yaml
(pinned by tests/test_spec_agreement.py).

No imports beyond the standard library: the cluster controller uses this without the host stack (like
:mod:`reconcilers.selector`). A malformed value raises :class:`PolicyError` naming the field; the kinds'
parsers turn it into ``InvalidSpec`` (``reconcilers.spec.health_policy``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from reconcilers import selector

FIELDS = ("failureGraceSeconds", "nodeSignals")
"""The spec fields this module owns (each kind's parser allows them)."""
GRACE_RANGE = (0, 86400)
DEFAULT_GRACE = 300
"""Seconds, as the oVirt engine's StorageDomainFailureTimeoutInMinutes default of 5."""
EFFECTS = ("NoSchedule", "NoExecute")
PERCENT_RANGE = (1, 100)
DEFAULT_MAX_TAINTED_PERCENT = 30
"""Like the node lifecycle controller's unhealthy-zone threshold (55 %) but lower: a taint is ours to
give only when the problem is clearly a few nodes'."""


class PolicyError(selector.SelectorError):
    """The policy is malformed; ``field`` is the dotted path of the offending part (the shape of
    :class:`reconcilers.selector.SelectorError`, the other stdlib-only spec rule)."""


@dataclasses.dataclass(frozen=True)
class Taint:
    effect: str
    max_tainted_percent: int = DEFAULT_MAX_TAINTED_PERCENT

    def limit(self, selected: int) -> int:
        """How many of ``selected`` nodes may carry the taint at most (the breaker): the floor of the
        share, so 3 nodes at 30 % allow none and 4 allow one."""
        return selected * self.max_tainted_percent // 100


@dataclasses.dataclass(frozen=True)
class Policy:
    grace_seconds: int = DEFAULT_GRACE
    label: bool = False
    """Keep ``<short>.hoststorage.io/<name>=true`` on the selected Nodes where the parent is Ready."""
    taint: Taint | None = None
    """Taint Nodes with a node problem for the parent (None: never)."""


DEFAULT = Policy()


def _integer(value: object, field: str, bounds: tuple[int, int]) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # YAML's 10.0 is stored as 10 by the API server
    if isinstance(value, bool) or not isinstance(value, int):
        raise PolicyError(field, f"must be an integer, got {type(value).__name__}")
    if not bounds[0] <= value <= bounds[1]:
        raise PolicyError(field, f"{value} is out of range {bounds[0]}..{bounds[1]}")
    return value


def _mapping(value: object, field: str, allowed: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyError(field, f"must be an object, got {type(value).__name__}")
    for key in value:
        if key not in allowed:
            raise PolicyError(f"{field}.{key}", f"unknown field (allowed: {', '.join(allowed)})")
    return value


def parse(spec: Mapping[str, Any]) -> Policy:
    """The policy of a parent's ``spec`` (absent fields take their defaults); PolicyError when bad."""
    grace = spec.get("failureGraceSeconds")
    grace_seconds = (DEFAULT_GRACE if grace is None
                     else _integer(grace, "spec.failureGraceSeconds", GRACE_RANGE))
    raw = spec.get("nodeSignals")
    if raw is None:
        return Policy(grace_seconds)
    signals = _mapping(raw, "spec.nodeSignals", ("label", "taint"))
    label = signals.get("label")
    if label is None:
        label = False
    elif not isinstance(label, bool):
        raise PolicyError("spec.nodeSignals.label", f"must be true or false, got {type(label).__name__}")
    taint = None
    if signals.get("taint") is not None:
        field = "spec.nodeSignals.taint"
        block = _mapping(signals["taint"], field, ("effect", "maxTaintedPercent"))
        effect = block.get("effect")
        if effect not in EFFECTS:
            raise PolicyError(f"{field}.effect", f"{effect!r} is not one of {', '.join(EFFECTS)}")
        pct = block.get("maxTaintedPercent")
        taint = Taint(str(effect), DEFAULT_MAX_TAINTED_PERCENT if pct is None
                      else _integer(pct, f"{field}.maxTaintedPercent", PERCENT_RANGE))
    return Policy(grace_seconds, label, taint)


def of_parent(parent: Mapping[str, Any]) -> Policy:
    """The controller's reading: a malformed policy is :data:`DEFAULT` (grace 300 s, no signals). Every
    agent reports that parent InvalidSpec meanwhile, so no node is Ready and nothing would be labelled."""
    spec = parent.get("spec")
    if not isinstance(spec, Mapping):
        return DEFAULT
    try:
        return parse(spec)
    except PolicyError:
        return DEFAULT
