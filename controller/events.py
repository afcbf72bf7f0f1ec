"""The Event policy: which changes are news, as pure functions, and the one poster.

The controller's one kind of news (:func:`diagnosis_change`): a parent's diagnosis (node problem,
storage problem, none; :mod:`controller.rollup`) changed, or the nodes it names did: Warning
``NodeProblem`` / ``StorageProblem``, Normal ``ProblemCleared``. A diagnosis that persists is status.

The agent's:

Events are for warnings and transitions only (DESIGN.md "The agent inside"); a state that persists is in
status, not re-announced every resync. What counts as news:

- a drift repair (the host changed behind our back and the agent put it back): Warning ``DriftRepaired``;
- entering Failed with a new reason: Warning with that reason;
- a kind's transition phases (its registry row's ``transition_events``, e.g. a DomainMonitor's Healthy,
  Degraded, Invalid): entering one is news, Warning unless it is a Ready phase, except the first Ready
  after start-up (from a phase that is not a transition phase, such as Unknown or Pending): 1,000
  monitors must not post 1,000 Events on every agent restart;
- entering TeardownFailed: Warning ``TeardownFailed``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from controller import kube, registry

COMPONENT = "hoststorage-agent"


@dataclasses.dataclass(frozen=True)
class Event:
    type: str
    """Normal or Warning."""
    reason: str
    message: str


def after_reconcile(
    row: registry.Row,
    *,
    old_phase: str | None,
    old_reason: str | None,
    phase: str,
    reason: str,
    message: str,
    node: str,
    repaired: bool,
) -> list[Event]:
    """The Events of one reconcile on ``node`` (``old_*``: the previous result, None at first)."""
    out: list[Event] = []
    if repaired:
        out.append(Event("Warning", "DriftRepaired", f"{node}: {message}"))
    if phase == registry.FAILED and old_reason != reason:
        out.append(Event("Warning", reason, f"{node}: {message}"))
    if phase in row.transition_events and phase != old_phase:
        ready = phase in row.ready_phases
        if not ready or old_phase in row.transition_events:
            out.append(Event("Normal" if ready else "Warning", phase, f"{node}: {reason}: {message}"))
    return out


PROBLEM_CLEARED = "ProblemCleared"


def diagnosis_change(
    old: Mapping[str, Any] | None, new: Mapping[str, Any] | None, *, message: str
) -> list[Event]:
    """The Events of a parent's ``status.diagnosis`` going from ``old`` to ``new`` (None: no problem);
    ``message`` is the new Degraded message."""
    def key(d: Mapping[str, Any] | None) -> Any:
        return None if not d else (d.get("problem"), tuple(d.get("nodes") or ()), d.get("count"))

    if key(old) == key(new):
        return []
    if new:
        return [Event("Warning", str(new.get("problem")), message)]
    assert old is not None
    was = ", ".join(old.get("nodes") or ())
    return [Event("Normal", PROBLEM_CLEARED, f"no node or storage problem any more (was {old.get('problem')}"
                                             f"{' on ' + was if was else ''})")]


def after_teardown(old_phase: str | None, phase: str, message: str, *, node: str) -> list[Event]:
    """The Events of one teardown step: entering TeardownFailed is news, staying in it is not."""
    if phase == registry.TEARDOWN_FAILED and old_phase != registry.TEARDOWN_FAILED:
        return [Event("Warning", registry.TEARDOWN_FAILED, f"{node}: {message}")]
    return []


def post(api: kube.Api, parent: Mapping[str, Any], event: Event, *, node: str) -> None:
    """Post ``event`` about ``parent`` from this node's agent (:meth:`controller.kube.Api.post_event`
    never raises: an Event that cannot be posted is logged)."""
    meta = parent.get("metadata") or {}
    api.post_event(
        involved={
            "apiVersion": registry.API_VERSION,
            "kind": str(parent.get("kind")),
            "name": str(meta.get("name")),
            "uid": str(meta.get("uid")),
        },
        event_type=event.type,
        reason=event.reason,
        message=event.message,
        component=COMPONENT,
        host=node,
    )
