"""The one results module: per-node results, phases, the error-to-result mapping, the teardown policy.

A :class:`NodeResult` is what one node knows about one object: the phase, whether it is Ready, the
reason and message of the most important condition, the conditions themselves, and the kind's detail
block (``connection``, ``pool`` or ``monitor``) as it goes into a StorageNodeState's status. Every kind
builds its results through a :class:`Results` (its kind, detail key and Ready phase), so that:

- a phase is spelled once (:class:`Phase`);
- an error maps to a result in one way (:meth:`Results.error`): :class:`hostlib.errors.Waiting` is
  Pending (retried), any other host error Failed (retried when temporary), an ``OSError`` Failed
  ``HostError`` (retried);
- a teardown answers in one way (:func:`teardown`): Detached when done, Detaching while it waits
  (``InUse``: a user is still there; or a dry run), TeardownFailed when undoing failed. The agent
  writes the phase as it is; there is no second mapping.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from hostlib import actions, errors, ledger

log = logging.getLogger(__name__)


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Phase(enum.StrEnum):
    """Every phase a StorageNodeState can carry. Which ones mean Ready or failed for a kind is in
    ``controller.registry`` (the roll-up reads it there)."""

    PENDING = "Pending"
    CONNECTED = "Connected"
    RUNNING = "Running"
    UNKNOWN = "Unknown"
    HEALTHY = "Healthy"
    DEGRADED = "Degraded"
    INVALID = "Invalid"
    FAILED = "Failed"
    DETACHING = "Detaching"
    DETACHED = "Detached"
    TEARDOWN_FAILED = "TeardownFailed"


TEARDOWN_PHASES = frozenset({Phase.DETACHING, Phase.DETACHED, Phase.TEARDOWN_FAILED})
WOULD_COMPLETE = frozenset({"WouldDetach", "WouldRetain", "WouldForget"})
"""Dry-run teardown reasons of an object whose real teardown would finish."""


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
    retry: bool = False
    """True when the result is not final and the caller should look again with backoff."""

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


@dataclasses.dataclass(frozen=True)
class Results:
    """The result builder of one kind: ``Results("StorageConnection", "connection", Phase.CONNECTED)``."""

    kind: str
    detail_key: str
    ready_phase: Phase

    def make(
        self,
        name: str,
        phase: Phase,
        reason: str,
        message: str,
        *,
        detail: Mapping[str, Any] | None = None,
        plan: Sequence[actions.Action] = (),
        changed: bool = False,
        retry: bool = False,
    ) -> NodeResult:
        ready = phase is self.ready_phase
        cond = Condition("Ready", ConditionStatus.TRUE if ready else ConditionStatus.FALSE, reason, message)
        return NodeResult(
            kind=self.kind,
            name=name,
            phase=str(phase),
            ready=ready,
            reason=reason,
            message=message,
            detail_key=self.detail_key,
            detail=dict(detail or {}),
            conditions=(cond,),
            actions=tuple(plan),
            changed=changed,
            retry=retry,
        )

    def error(
        self,
        name: str,
        exc: errors.HostStorageError | OSError,
        *,
        detail: Mapping[str, Any] | None = None,
        changed: bool = False,
        where: str = "",
    ) -> NodeResult:
        """The one error-to-result mapping (see the module docstring)."""
        if isinstance(exc, OSError):
            message = f"{where + ': ' if where else ''}{exc.strerror or exc}"
            return self.make(
                name, Phase.FAILED, "HostError", message, detail=detail, changed=changed, retry=True
            )
        phase = Phase.PENDING if isinstance(exc, errors.Waiting) else Phase.FAILED
        return self.make(
            name, phase, exc.reason, exc.message, detail=detail, changed=changed, retry=exc.temporary
        )

    def invalid(self, name: str, exc: errors.InvalidSpec, *, source: str = "") -> NodeResult:
        """A spec the parser refused: Failed, InvalidSpec, never retried (nothing on the host changed)."""
        message = f"{source}: {exc}" if source else exc.message
        return self.make(name, Phase.FAILED, exc.reason, message)


# ---------------------------------------------------------------------------------------- teardown


@dataclasses.dataclass(frozen=True)
class Undo:
    """What a kind's teardown needs to know and do for one ledger entry, for :func:`teardown`."""

    detail: Mapping[str, Any]
    """The detail block to report (recorded target, libvirt name, ...)."""
    policy: str
    """``Detach`` or ``Retain`` (the spec's when there is one, else the one recorded)."""
    plan: Callable[[], list[actions.Action]]
    """The host changes undo would make, observed now (dry run); changes nothing."""
    run: Callable[[], tuple[bool, str]]
    """Undo the host state: (changed, message). Raises InUse, HostStorageError or OSError."""
    would: str = "would undo it"
    """What a dry run says it would do (``would disconnect /mnt/x``)."""
    retained: str = "deletionPolicy Retain: left in place and forgotten"
    """The message of a Retain teardown."""
    keep_reason: str = ""
    """Why the host state stays although the policy is Detach (e.g. it was there before hoststorage):
    it is then only forgotten, like Retain, with this message."""


def teardown(
    results: Results,
    name: str,
    host_ledger: ledger.Ledger,
    prepare: Callable[[ledger.LedgerEntry], Undo],
    *,
    dry_run: bool = False,
    force: bool = False,
) -> NodeResult:
    """The one teardown skeleton: nothing recorded -> Detached; a user left -> Detaching/InUse (even
    with ``--force``: force never overrides hoststorage's own users); Retain (or a ``keep_reason``) ->
    forget only; else undo, then forget. ``dry_run`` changes nothing, not even the ledger, and answers
    Detaching with the plan and a ``Would*`` reason.

    ``--force`` means "finish the teardown as far as is safe": a kind's undo lazily unmounts a busy mount,
    and here an undo that finds its host object is no longer ours (``Conflict``: a symlink or someone
    else's object where ours was) forgets the entry without touching the host (Detached, reason
    ``Forgotten``). Without force a Conflict is TeardownFailed and the entry stays."""
    entry = host_ledger.get(results.kind, name)
    if entry is None:
        return results.make(name, Phase.DETACHED, "NotOwned", "nothing hoststorage made is recorded here")
    users = host_ledger.users_of(results.kind, name)
    if users:
        who = ", ".join(f"{u.kind}/{u.name}" for u in users)
        return results.make(
            name,
            Phase.DETACHING,
            errors.InUse.reason,
            f"still used by {who}; tear those down first",
            retry=True,
        )
    try:
        undo = prepare(entry)
    except errors.Conflict as exc:
        return _conflict(results, name, host_ledger, exc, {}, force=force, dry_run=dry_run)
    except errors.HostStorageError as exc:
        return _failed(results, name, exc, {})
    forget = actions.Action("forget", f"remove {results.kind}/{name} from the ledger")
    if undo.policy == "Retain" or undo.keep_reason:
        message = undo.retained if undo.policy == "Retain" else undo.keep_reason
        if dry_run:
            reason = "WouldRetain" if undo.policy == "Retain" else "WouldForget"
            return results.make(
                name, Phase.DETACHING, reason, f"dry run: {message}", detail=undo.detail, plan=[forget]
            )
        host_ledger.remove(results.kind, name)
        reason = "Retained" if undo.policy == "Retain" else "NotOwned"
        return results.make(name, Phase.DETACHED, reason, message, detail=undo.detail, changed=True)
    try:
        if dry_run:
            plan = [*undo.plan(), forget]
            return results.make(
                name, Phase.DETACHING, "WouldDetach", f"dry run: {undo.would}", detail=undo.detail, plan=plan
            )
        changed, message = undo.run()
    except errors.InUse as exc:
        return results.make(name, Phase.DETACHING, exc.reason, exc.message, detail=undo.detail, retry=True)
    except errors.Conflict as exc:
        return _conflict(results, name, host_ledger, exc, undo.detail, force=force, dry_run=dry_run)
    except (errors.HostStorageError, OSError) as exc:
        return _failed(results, name, exc, undo.detail)
    host_ledger.remove(results.kind, name)
    return results.make(name, Phase.DETACHED, "Detached", message, detail=undo.detail, changed=changed)


def _conflict(
    results: Results,
    name: str,
    host_ledger: ledger.Ledger,
    exc: errors.Conflict,
    detail: Mapping[str, Any],
    *,
    force: bool,
    dry_run: bool,
) -> NodeResult:
    """What hoststorage recorded is no longer ours on the host: never touched; forgotten with force."""
    if isinstance(exc, errors.Covered):  # ours is still there, under a foreign object: never forgotten
        return results.make(name, Phase.TEARDOWN_FAILED, exc.reason, exc.message, detail=detail, retry=True)
    if not force:
        message = f"{exc.message} (delete --force forgets this entry and leaves the host as it is)"
        return results.make(name, Phase.TEARDOWN_FAILED, exc.reason, message, detail=detail, retry=True)
    if dry_run:
        forget = actions.Action("forget", f"remove {results.kind}/{name} from the ledger")
        return results.make(
            name, Phase.DETACHING, "WouldForget", f"dry run: {exc.message}; would forget it", detail=detail,
            plan=[forget],
        )
    host_ledger.remove(results.kind, name)
    message = f"{exc.message}; forgotten (--force), the host left as it is"
    return results.make(name, Phase.DETACHED, "Forgotten", message, detail=detail, changed=True)


def _failed(
    results: Results, name: str, exc: errors.HostStorageError | OSError, detail: Mapping[str, Any]
) -> NodeResult:
    """A teardown that could not undo: TeardownFailed with the error's reason, retried."""
    if isinstance(exc, OSError):
        reason, message = "HostError", str(exc.strerror or exc)
    else:
        reason, message = exc.reason, exc.message
    return results.make(name, Phase.TEARDOWN_FAILED, reason, message, detail=detail, retry=True)
