"""The per-node result every reconciler returns, shared by the local CLI and the agent.

A :class:`NodeResult` is what one node knows about one object: the phase, whether it is Ready, the
reason and message of the most important condition, the conditions themselves, and the kind's detail
block (``connection``, ``pool`` or ``monitor``) as it goes into a StorageNodeState's status.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping, Sequence
from typing import Any

from hostlib import actions


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


@dataclasses.dataclass(frozen=True)
class Condition:
    type: str
    status: ConditionStatus
    reason: str
    message: str = ""

    def to_dict(self) -> dict[str, str]:
        return {"type": self.type, "status": str(self.status), "reason": self.reason, "message": self.message}


@dataclasses.dataclass(frozen=True)
class NodeResult:
    """The outcome of one reconcile or teardown of one object on this node."""

    kind: str
    name: str
    phase: str
    ready: bool
    reason: str
    message: str
    detail_key: str
    detail: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    conditions: Sequence[Condition] = ()
    actions: Sequence[actions.Action] = ()
    changed: bool = False
    # True when the failure is temporary and the caller should retry with backoff.
    retry: bool = False

    def to_dict(self, *, with_actions: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "kind": self.kind,
            "name": self.name,
            "phase": self.phase,
            "ready": self.ready,
            "reason": self.reason,
            "message": self.message,
            self.detail_key: dict(self.detail),
            "conditions": [c.to_dict() for c in self.conditions],
            "changed": self.changed,
        }
        if with_actions:
            out["actions"] = [a.to_dict() for a in self.actions]
        return out

    def status_block(self) -> dict[str, Any]:
        """What goes into a StorageNodeState's ``status`` (without observedGeneration/timestamps)."""
        return {
            "phase": self.phase,
            "conditions": [c.to_dict() for c in self.conditions],
            self.detail_key: dict(self.detail),
        }
