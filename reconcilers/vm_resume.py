"""Which VMs to resume when a DomainMonitor turns Healthy: VDSM's ``contEIOVms`` rule, pure.

VDSM resumes every VM paused with ``VIR_DOMAIN_PAUSED_IOERROR`` whose disks are on a storage domain
the moment that domain becomes valid again. Here, when a monitor enters ``Healthy`` (a *recovery*: from
Invalid, Degraded, or Unknown at start-up, so VMs that paused while the agent was down are found too),
:func:`plan` picks, among the VMs paused on an I/O error with a disk on that monitor's target:

- **resume** a VM when every monitored target holding one of its disks is Healthy, and no holder has
  opted out (``resumePausedVMs: false``), and it did not pause after the check that proved the
  recovery (a newer error is not cured by an older proof), and :class:`AttemptLog` allows it: at most
  one try per VM per recovery, and never again for a pause already resumed;
- **hold** it otherwise, with a reason: ``OtherTargetNotHealthy`` (naming the monitor and its state),
  ``OptedOut``, ``NoSpace`` (paused on ENOSPC: extending the disk is someone else's job, resuming would
  only pause it again), ``PausedAfterRecovery``, ``AlreadyTried``, ``AlreadyResumed``.

VMs paused for another reason (an admin's ``virsh suspend``, migration, save, snapshot) are never
candidates. Disks on paths that no monitor watches do not hold a VM back (VDSM looks only at the
domains it monitors). A disk is on a target when its path is the target or below it, compared
lexically by path components (``/mnt/a2/x`` is not under ``/mnt/a``) with :func:`hostlib.paths.is_under`.
No I/O and no clock here: the caller passes the recovery's proof time and the VMs' pause times.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence

from hostlib import paths
from hostlib.libvirt_domains import ENOSPC, VmRecord

HEALTHY = "Healthy"
MAX_LISTED = 10
"""VM names a detail block or an Event message lists; the count is always complete."""


class Hold(enum.StrEnum):
    OTHER_TARGET = "OtherTargetNotHealthy"
    OPTED_OUT = "OptedOut"
    NO_SPACE = "NoSpace"
    PAUSED_AFTER = "PausedAfterRecovery"
    TRIED = "AlreadyTried"
    RESUMED = "AlreadyResumed"


@dataclasses.dataclass(frozen=True)
class MonitorView:
    """What the policy needs of one monitor of this node."""

    name: str
    target: str
    state: str
    resume_paused_vms: bool = True


@dataclasses.dataclass(frozen=True)
class Recovery:
    """One entry of a monitor into Healthy."""

    monitor: str
    seq: int
    """Counts this monitor's recoveries in this process: (monitor, seq) names the recovery."""
    proven_at: float
    """Wall-clock time of the check that found the target Healthy."""

    @property
    def key(self) -> tuple[str, int]:
        return (self.monitor, self.seq)


@dataclasses.dataclass(frozen=True)
class Held:
    vm: VmRecord
    reason: Hold
    message: str


@dataclasses.dataclass(frozen=True)
class Plan:
    recovery: Recovery
    resume: tuple[VmRecord, ...] = ()
    held: tuple[Held, ...] = ()
    skipped: str = ""
    """Why nothing was considered (the monitor is gone, no longer Healthy, or opted out)."""


def on_target(path: str, target: str) -> bool:
    return paths.is_under(target, path)


def holders(vm: VmRecord, monitors: Iterable[MonitorView]) -> list[tuple[MonitorView, str]]:
    """(monitor, first disk of ``vm`` under its target) for every monitor holding one of its disks."""
    out = []
    for m in monitors:
        disk = next((d for d in vm.disks if on_target(d, m.target)), None)
        if disk is not None:
            out.append((m, disk))
    return out


def paused_on(target: str, vms: Iterable[VmRecord]) -> list[VmRecord]:
    """The VMs paused on an I/O error (ENOSPC included) with a disk on ``target``, by name."""
    return sorted(
        (vm for vm in vms if vm.paused_on_io_error and any(on_target(d, target) for d in vm.disks)),
        key=lambda vm: vm.name,
    )


@dataclasses.dataclass(frozen=True)
class Attempt:
    pause_seq: int
    recovery: tuple[str, int]
    ok: bool


class AttemptLog:
    """What was tried per VM: at most one try per recovery, never twice for a pause that was resumed."""

    def __init__(self) -> None:
        self._last: dict[str, Attempt] = {}

    def refused(self, vm: VmRecord, recovery: Recovery) -> Hold | None:
        last = self._last.get(vm.uuid)
        if last is None:
            return None
        if last.recovery == recovery.key:
            return Hold.TRIED
        if last.ok and last.pause_seq == vm.pause_seq:
            return Hold.RESUMED
        return None

    def note(self, vm: VmRecord, recovery: Recovery, ok: bool) -> None:
        self._last[vm.uuid] = Attempt(vm.pause_seq, recovery.key, ok)

    def prune(self, uuids: Iterable[str]) -> None:
        """Forget VMs that no longer exist."""
        keep = set(uuids)
        for uuid in [u for u in self._last if u not in keep]:
            del self._last[uuid]


def plan(
    vms: Iterable[VmRecord], monitors: Mapping[str, MonitorView], recovery: Recovery, attempts: AttemptLog
) -> Plan:
    """The resume batch for ``recovery``. See the module docstring for the rule."""
    m = monitors.get(recovery.monitor)
    if m is None:
        return Plan(recovery, skipped=f"monitor {recovery.monitor} is gone")
    if not m.resume_paused_vms:
        return Plan(recovery, skipped=f"monitor {m.name} has resumePausedVMs: false")
    if m.state != HEALTHY:
        return Plan(recovery, skipped=f"monitor {m.name} is {m.state} again")
    resume: list[VmRecord] = []
    held: list[Held] = []
    for vm in paused_on(m.target, vms):
        hold = _hold(vm, monitors.values(), recovery, attempts)
        if hold is None:
            resume.append(vm)
        else:
            held.append(Held(vm, *hold))
    return Plan(recovery, tuple(resume), tuple(held))


def _hold(
    vm: VmRecord, monitors: Iterable[MonitorView], recovery: Recovery, attempts: AttemptLog
) -> tuple[Hold, str] | None:
    if vm.io_error == ENOSPC:
        return Hold.NO_SPACE, "paused on ENOSPC (no space left): extend the disk, then resume it"
    held_by = holders(vm, monitors)
    opted_out = [(h, d) for h, d in held_by if not h.resume_paused_vms]
    if opted_out:
        h, disk = opted_out[0]
        return Hold.OPTED_OUT, f"disk {disk} is on monitor {h.name}, which has resumePausedVMs: false"
    unhealthy = [(h, d) for h, d in held_by if h.state != HEALTHY]
    if unhealthy:
        h, disk = unhealthy[0]
        return Hold.OTHER_TARGET, f"disk {disk} is on monitor {h.name}, which is {h.state}"
    if vm.paused_since is not None and vm.paused_since > recovery.proven_at:
        return Hold.PAUSED_AFTER, "paused again after the check that found the storage Healthy"
    refused = attempts.refused(vm, recovery)
    return (refused, _REFUSED[refused]) if refused in _REFUSED else None


_REFUSED = {
    Hold.TRIED: "already tried in this recovery",
    Hold.RESUMED: "this pause was already resumed",
}


def listed(names: Sequence[str], limit: int = MAX_LISTED) -> str:
    """``a, b, c`` or ``a, b, ... and 3 more``: bounded for Events and log lines."""
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f" and {len(names) - limit} more"
