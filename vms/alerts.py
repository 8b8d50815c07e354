"""Maintenance alerts: when to open, group and resolve them. Decisions only; the runtime stores them.

Rules, chosen so that a crew gets one message per real problem:
- a device that goes dark opens ``device_offline`` (once; it stays open while the device flaps);
- devices of an agent that itself went silent join one ``agent_offline`` alert, and when
  ``group_min_devices`` or more devices of one center go dark in the same tick they join one
  ``site_offline`` alert, instead of hundreds of single alerts;
- a device online with a defect opens ``device_degraded``;
- an alert resolves itself once every member has been fine for ``resolve_hold_s``. When a grouped
  alert's cause clears (the agent is back, the site mostly back), members still dark get their
  own ``device_offline`` alert with the original since-when.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from vms.config import AlertsConfig
from vms.health import INTACT, ONLINE, Health, Transition, defect_names


class AlertKind(StrEnum):
    """Every kind of alert the hub raises; stored and sent as its string value."""

    DEVICE_OFFLINE = "device_offline"
    AGENT_OFFLINE = "agent_offline"
    SITE_OFFLINE = "site_offline"
    DEVICE_DEGRADED = "device_degraded"
    STORAGE_LOW = "storage_low"  # the archive's emergency cleanup ran (vms/archive/service.py)
    SPOOL_DROPPED = "spool_dropped"  # an agent's spool lost footage before upload (vms/services/spool_losses.py)
    RECEIVER_DOWN = "receiver_down"  # an alert receiver keeps failing; the others hear of it (vms/notify.py)
    SITE_UNCOVERED = "site_uncovered"  # a key site without its working cameras (vms/services/coverage.py)
    DEVICE_ALARM = "device_alarm"  # a GB/T 28181 device's own Alarm notification (vms/gb28181/service.py)
    SUPERIOR_DOWN = "superior_down"  # the link to a superior platform is down (vms/gb28181/cascade.py)


class AlertState(StrEnum):
    OPEN = "open"
    ACKNOWLEDGED = "acknowledged"
    RESOLVED = "resolved"


class Severity(StrEnum):
    CRITICAL = "critical"
    WARNING = "warning"


GROUP_KINDS = (AlertKind.AGENT_OFFLINE, AlertKind.SITE_OFFLINE)
OFFLINE_KINDS = (AlertKind.DEVICE_OFFLINE, *GROUP_KINDS)
#: The kinds this book decides; the others are raised by the room that sees their cause.
BOOK_KINDS = (*OFFLINE_KINDS, AlertKind.DEVICE_DEGRADED)
SEVERITY = {
    AlertKind.DEVICE_OFFLINE: Severity.CRITICAL,
    AlertKind.AGENT_OFFLINE: Severity.CRITICAL,
    AlertKind.SITE_OFFLINE: Severity.CRITICAL,
    AlertKind.DEVICE_DEGRADED: Severity.WARNING,
    AlertKind.STORAGE_LOW: Severity.CRITICAL,
    AlertKind.SPOOL_DROPPED: Severity.CRITICAL,
    # Critical: while it lasts, a crew hears of no outage at all (the notifications wait, none is lost).
    AlertKind.RECEIVER_DOWN: Severity.CRITICAL,
    # Critical: a school or hospital without a working camera is the blind spot a center is assessed on.
    AlertKind.SITE_UNCOVERED: Severity.CRITICAL,
    # The device's own word (tamper, video loss, disk fault ...); its priority (1 = 一级警情) is in the detail.
    AlertKind.DEVICE_ALARM: Severity.WARNING,
    # Critical: while it lasts, the district center and the police see none of this center's cameras.
    AlertKind.SUPERIOR_DOWN: Severity.CRITICAL,
}


@dataclass(eq=False)
class OpenAlert:
    fingerprint: str
    kind: AlertKind
    since: float
    members: list[int]
    title: str
    device_id: str | None = None
    agent_id: str | None = None
    center_id: str | None = None
    db_id: int | None = None
    ok_since: dict[int, float] = field(default_factory=dict)
    cause_cleared_at: float | None = None

    @property
    def severity(self) -> Severity:
        return SEVERITY[self.kind]


@dataclass(frozen=True)
class Open:
    alert: OpenAlert


@dataclass(frozen=True)
class AddMembers:
    alert: OpenAlert
    added: list[int]


@dataclass(frozen=True)
class Resolve:
    alert: OpenAlert
    at: float
    by: str = "system"


Op = Open | AddMembers | Resolve


class AlertBook:
    """The open alerts, in memory, mirrored by the runtime into the store."""

    def __init__(
        self,
        cfg: AlertsConfig,
        health: Health,
        home_center: Callable[[int], str | None],
        agent_name: Callable[[int], str],
        label: Callable[[int], str],
    ) -> None:
        self.cfg = cfg
        self.health = health
        self.home_center = home_center
        self.agent_name = agent_name
        self.label = label
        self.open: dict[str, OpenAlert] = {}
        self.outage_of: dict[int, OpenAlert] = {}
        self.defect_of: dict[int, OpenAlert] = {}
        self.silenced: set[int] = set()

    # -- bookkeeping ---------------------------------------------------------------------------
    def adopt(self, alert: OpenAlert) -> None:
        """Track an alert that is open in the store (at start-up) or was just opened."""
        self.open[alert.fingerprint] = alert
        index = self.defect_of if alert.kind == AlertKind.DEVICE_DEGRADED else self.outage_of
        for m in alert.members:
            index[m] = alert

    def _drop(self, alert: OpenAlert) -> None:
        self.open.pop(alert.fingerprint, None)
        index = self.defect_of if alert.kind == AlertKind.DEVICE_DEGRADED else self.outage_of
        for m in alert.members:
            if index.get(m) is alert:
                del index[m]

    def _is_ok(self, alert: OpenAlert, idx: int) -> bool:
        h = self.health
        if h.retired[idx]:  # out of service: nothing to repair, its alerts resolve
            return True
        if alert.kind == AlertKind.DEVICE_DEGRADED:
            return bool(h.defects[idx] == 0)
        return bool(h.known[idx] and h.flags[idx] & ONLINE)

    def _device_alert(self, idx: int, since: float, kind: AlertKind = AlertKind.DEVICE_OFFLINE) -> OpenAlert:
        did = self.health.ids[idx]
        what = "offline" if kind == AlertKind.DEVICE_OFFLINE else "degraded"
        return OpenAlert(
            fingerprint=f"{kind}:{did}",
            kind=kind,
            since=since,
            members=[idx],
            title=f"{self.label(idx)} {what}",
            device_id=did,
            center_id=self.home_center(idx),
        )

    # -- the tick ------------------------------------------------------------------------------
    def plan(self, transitions: list[Transition], now: float, agent_dark: Callable[[int], bool]) -> list[Op]:
        ops: list[Op] = []
        down: list[Transition] = []
        for t in transitions:
            if t.new is None:  # retired: its alerts resolve in _resolve
                continue
            was_on = t.old is not None and t.old & ONLINE
            went_down = not t.new & ONLINE and (was_on or t.old is None)
            if went_down and t.idx not in self.outage_of and t.idx not in self.silenced:
                down.append(t)
            if t.new & ONLINE:
                self.silenced.discard(t.idx)
            degraded = bool(t.new & ONLINE) and not t.new & INTACT
            if degraded and t.idx not in self.defect_of and self.health.defects[t.idx]:
                alert = self._device_alert(t.idx, t.at, AlertKind.DEVICE_DEGRADED)
                names = ", ".join(defect_names(int(self.health.defects[t.idx])))
                alert.title = f"{self.label(t.idx)} degraded: {names}"
                self.adopt(alert)
                ops.append(Open(alert))
        ops.extend(self._open_outages(down, agent_dark))
        ops.extend(self._resolve(now, agent_dark))
        return ops

    def _join(self, fingerprint: str, make: Callable[[], OpenAlert], members: list[Transition]) -> Op:
        existing = self.open.get(fingerprint)
        idxs = [t.idx for t in members]
        if existing is not None:
            existing.members.extend(idxs)
            for i in idxs:
                self.outage_of[i] = existing
            return AddMembers(existing, idxs)
        alert = make()
        alert.members = idxs
        alert.since = min(t.at for t in members)
        self.adopt(alert)
        return Open(alert)

    def _open_outages(self, down: list[Transition], agent_dark: Callable[[int], bool]) -> list[Op]:
        ops: list[Op] = []
        by_agent: dict[int, list[Transition]] = {}
        rest: list[Transition] = []
        for t in down:
            agent = int(self.health.agent[t.idx])
            if agent >= 0 and agent_dark(agent):
                by_agent.setdefault(agent, []).append(t)
            else:
                rest.append(t)
        for agent, members in by_agent.items():
            name = self.agent_name(agent)
            ops.append(
                self._join(
                    f"agent_offline:{name}",
                    lambda name=name, n=len(members): OpenAlert(  # type: ignore[misc]
                        fingerprint=f"agent_offline:{name}",
                        kind=AlertKind.AGENT_OFFLINE,
                        since=0.0,
                        members=[],
                        title=f"agent {name} silent: its cameras are unreachable",
                        agent_id=name,
                    ),
                    members,
                )
            )
        by_center: dict[str | None, list[Transition]] = {}
        for t in rest:
            by_center.setdefault(self.home_center(t.idx), []).append(t)
        for center, members in by_center.items():
            fp = f"site_offline:{center}"
            if center is not None and (fp in self.open or len(members) >= self.cfg.group_min_devices):
                ops.append(
                    self._join(
                        fp,
                        lambda center=center: OpenAlert(  # type: ignore[misc]
                            fingerprint=f"site_offline:{center}",
                            kind=AlertKind.SITE_OFFLINE,
                            since=0.0,
                            members=[],
                            title=f"many cameras of center {center} offline",
                            center_id=center,
                        ),
                        members,
                    )
                )
                continue
            for t in members:
                alert = self._device_alert(t.idx, t.at)
                self.adopt(alert)
                ops.append(Open(alert))
        return ops

    def _cause_cleared(self, alert: OpenAlert, agent_dark: Callable[[int], bool]) -> bool:
        if alert.kind == AlertKind.AGENT_OFFLINE:
            agents = {int(self.health.agent[m]) for m in alert.members}
            return not any(a >= 0 and agent_dark(a) for a in agents)
        if alert.kind == AlertKind.SITE_OFFLINE:
            still = sum(1 for m in alert.members if not self._is_ok(alert, m))
            return still < self.cfg.group_min_devices
        return False

    def _settled(self, alert: OpenAlert, now: float, agent_dark: Callable[[int], bool]) -> bool:
        """The group's cause has been gone long enough for healthy members to be seen again."""
        if not self._cause_cleared(alert, agent_dark):
            alert.cause_cleared_at = None
            return False
        if alert.cause_cleared_at is None:
            alert.cause_cleared_at = now
        c = self.health.cfg
        return now - alert.cause_cleared_at >= c.offline_after_s + c.recover_after_s

    def _resolve(self, now: float, agent_dark: Callable[[int], bool]) -> list[Op]:
        ops: list[Op] = []
        hold = self.cfg.resolve_hold_s
        for alert in list(self.open.values()):
            for m in alert.members:
                if self._is_ok(alert, m):
                    alert.ok_since.setdefault(m, now)
                else:
                    alert.ok_since.pop(m, None)
            all_ok = len(alert.ok_since) == len(set(alert.members)) and all(
                now - s >= hold for s in alert.ok_since.values()
            )
            if all_ok:
                self._drop(alert)
                ops.append(Resolve(alert, now))
            elif alert.kind in GROUP_KINDS and self._settled(alert, now, agent_dark):
                self._drop(alert)
                ops.append(Resolve(alert, now))
                for m in dict.fromkeys(alert.members):
                    if not self._is_ok(alert, m):
                        single = self._device_alert(m, alert.since)
                        self.adopt(single)
                        ops.append(Open(single))
        return ops

    def resolve_by_hand(self, fingerprint: str) -> OpenAlert | None:
        """A person resolved it: forget it, and stay quiet about its members until they recover."""
        alert = self.open.get(fingerprint)
        if alert is None:
            return None
        self._drop(alert)
        if alert.kind in OFFLINE_KINDS:
            self.silenced.update(m for m in alert.members if not self._is_ok(alert, m))
        return alert
