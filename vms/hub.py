"""The hub runtime: owns the state table, the alert book and the store, and runs the tick.

One lock guards the in-memory state. Requests (heartbeats, segment arrivals) and the tick take
it briefly; the store is written outside it. The tick thread is the only writer of state
intervals and alerts, so their order in the store is the order of events.
"""

from __future__ import annotations

import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from sqlalchemy import bindparam, insert, select, update
from sqlalchemy.orm import Session

from vms import audit, spool_losses
from vms.alerts import AddMembers, AlertBook, Op, Open, OpenAlert, Resolve
from vms.analysis.results import QualityBook
from vms.archive.service import STORAGE_ALERT, Archive
from vms.archive.store import Outcome, Result, SegmentStore
from vms.auth import Principal, TokenCache
from vms.centers import CenterTree
from vms.config import HubConfig
from vms.db import open_store
from vms.db.models import Agent, Alert, AlertEvent, Center, Device, DiscoveredCamera, Meta, StateInterval
from vms.events import EventBus
from vms.health import Health, IntervalLog, Transition, defect_bit, rates, state_name
from vms.kernel import ids
from vms.kernel.protocol import CameraStats, Heartbeat, HeartbeatReply, Rejection, SpoolStats
from vms.live import LiveRelay
from vms.notify import Outbox, Sender, enqueue

log = logging.getLogger(__name__)

ALIVE_KEY = "hub_alive_at"
#: Why a reported camera may not be relayed (states of ``discovered_cameras``, see vms/api/discovery.py).
HELD = {"pending": "discovered camera waiting for an admin to accept it", "rejected": "camera rejected by an admin"}


@dataclass
class DeviceInfo:
    name: str = ""
    location: str = ""
    placed_in: str | None = None
    homes: tuple[str, ...] = ()


class HeartbeatRejected(Exception):
    """The whole heartbeat is unusable (e.g. unsupported protocol)."""


class Hub:
    def __init__(
        self,
        cfg: HubConfig,
        clock: Callable[[], float] = time.time,
        sender: Sender | None = None,
        read_only: bool = False,
    ) -> None:
        """``read_only`` opens the store for reports beside a running hub: nothing is written."""
        self.cfg = cfg
        self.read_only = read_only
        self.clock = clock
        self.lock = threading.RLock()
        self._register_lock = threading.Lock()
        self.engine, self.sessions = open_store(cfg.storage.url())
        self.tree = CenterTree(cfg.centers)
        self.tokens = TokenCache(self.sessions)
        self.started_at = clock()
        self.health = Health(cfg.health, self.started_at)
        self.info: list[DeviceInfo] = []
        self.members: dict[str, list[int]] = {c.id: [] for c in self.tree}
        self._members_np: dict[str, npt.NDArray[np.int64]] = {}
        self.agent_names: list[str] = []
        self.agent_index: dict[str, int] = {}
        self.agent_last: list[float] = []
        self.agent_skew: list[float] = []
        #: Each agent's spool as last reported (queue, quota drops, live drops); None until heard from
        #: since this hub started, so a restart never shows a counter falling to 0 and jumping back.
        self.agent_spool: list[SpoolStats | None] = []
        self.book = AlertBook(cfg.alerts, self.health, self._home, lambda a: self.agent_names[a], self.label)
        self.spool_losses = spool_losses.SpoolLosses(self.sessions, cfg.alerts, lambda: self.public_url)
        self.outbox = Outbox(cfg.alerts, self.sessions, sender)
        self.segments = SegmentStore(cfg.storage.data_dir / "recordings", cfg.archive, self.sessions)
        self.live = LiveRelay(cfg.live, self.segments.root, self.sessions, clock, cfg.health.max_clock_skew_s,
                              ring_dir=cfg.storage.data_dir / "live-sub")
        self.archive = Archive(self)  # retention, holds, clips, storage accounting
        self.quality = QualityBook(self)  # frame analysis of stored segments (vms/analysis)
        self._pending: list[tuple[list[tuple[Transition, str]], list[Op]]] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.ticks = 0
        self.last_tick_s = 0.0
        self.heartbeats_total = 0
        self.rejected_total = 0
        self.events = EventBus()  # what changed, for the push endpoint (vms/api/events.py)
        self.held: dict[str, str] = {}  # device ID -> why it may not be relayed (pending or rejected)
        self._load()

    # -- start-up ----------------------------------------------------------------------------
    def _load(self) -> None:
        now = self.clock()
        with self.sessions() as s:
            if not self.read_only:
                self._sync_config(s, now)
            last_alive = s.get(Meta, ALIVE_KEY)
            alive_at = float(last_alive.value) if last_alive else None
            held = select(DiscoveredCamera.device_id, DiscoveredCamera.state).where(DiscoveredCamera.state.in_(HELD))
            self.held = {d: HELD[state] for d, state in s.execute(held)}
            for a in s.scalars(select(Agent)):
                self._agent_idx(a.id)
            for dev in s.scalars(select(Device).order_by(Device.created_at, Device.id)):
                idx = self._add_device(dev)
                if dev.id in self.held:
                    self.health.retired[idx] = True  # see hold()
            for iv in s.scalars(select(StateInterval).where(StateInterval.end_at.is_(None))):
                if self.read_only:
                    if iv.device_id in self.health.index:
                        self.health.restore_open(
                            self.health.index[iv.device_id],
                            iv.start_at,
                            (1 if iv.online else 0) | (2 if iv.uploading else 0) | (4 if iv.intact else 0),
                        )
                else:
                    # Intervals left open by the previous run end when that run was last alive.
                    iv.end_at = max(iv.start_at, alive_at if alive_at is not None else iv.start_at)
            if not self.read_only:
                s.commit()
            horizon = now - self.cfg.health.report_cache_days * 86400
            self.health.log = self._read_log(s, horizon, math.inf)
            # The archive owns its storage alert, SpoolLosses the agents' spool alerts; the alert
            # book owns device, agent and site outages.
            others = (STORAGE_ALERT, spool_losses.KIND)
            for a_row in s.scalars(select(Alert).where(Alert.state != "resolved", Alert.kind.not_in(others))):
                members = [self.health.index[m] for m in a_row.members if m in self.health.index]
                self.book.adopt(
                    OpenAlert(
                        fingerprint=a_row.fingerprint,
                        kind=a_row.kind,
                        since=a_row.since_at,
                        members=members,
                        title=a_row.title,
                        device_id=a_row.device_id,
                        agent_id=a_row.agent_id,
                        center_id=a_row.center_id,
                        db_id=a_row.id,
                    )
                )

    def _sync_config(self, s: Session, now: float) -> None:
        """Mirror the config's centers and devices into the store."""
        self._sync_centers(s)
        for d in self.cfg.devices:
            row = s.get(Device, d.id)
            if row is None:
                s.add(Device(id=d.id, name=d.name, location=d.location, center_id=d.center, created_at=now))
            else:
                row.name, row.location, row.center_id = d.name or row.name, d.location or row.location, d.center
        s.commit()

    def _sync_centers(self, s: Session) -> None:
        wanted = {c.id: c for c in self.tree}
        for row in s.scalars(select(Center)):
            if row.id not in wanted:
                s.delete(row)
        for c in self.tree:
            row = s.get(Center, c.id) or Center(id=c.id)
            row.name, row.level, row.civil_code = c.name, c.level, c.civil_code
            row.industries, row.gb_id = list(c.industries), c.gb_id
            row.parent_id = c.parent.id if c.parent else None
            s.merge(row)

    def _read_log(self, s: Session, start: float, end: float) -> IntervalLog:
        q = select(
            StateInterval.device_id,
            StateInterval.start_at,
            StateInterval.end_at,
            StateInterval.online,
            StateInterval.uploading,
            StateInterval.intact,
        ).where(StateInterval.end_at.is_not(None), StateInterval.end_at > start, StateInterval.start_at < end)
        lg = IntervalLog()
        rows = s.execute(q).all()
        idx = self.health.index
        keep = [r for r in rows if r[0] in idx]
        if keep:
            lg.extend(
                [idx[r[0]] for r in keep],
                [r[1] for r in keep],
                [float(r[2] or 0.0) for r in keep],
                [(1 if r[3] else 0) | (2 if r[4] else 0) | (4 if r[5] else 0) for r in keep],
            )
        return lg

    def _agent_idx(self, name: str) -> int:
        i = self.agent_index.get(name)
        if i is None:
            i = len(self.agent_names)
            self.agent_names.append(name)
            self.agent_index[name] = i
            self.agent_last.append(-math.inf)
            self.agent_skew.append(0.0)
            self.agent_spool.append(None)
        return i

    def _add_device(self, dev: Device) -> int:
        idx = self.health.add(dev.id, dev.created_at)
        homes = tuple(
            c.id for c in self.tree.homes(dev.id, dev.center_id if dev.center_id in self.tree.by_id else None)
        )
        info = DeviceInfo(dev.name, dev.location, dev.center_id, homes)
        if idx == len(self.info):
            self.info.append(info)
            for cid in self.tree.memberships(dev.id, dev.center_id if dev.center_id in self.tree.by_id else None):
                self.members[cid].append(idx)
                self._members_np.pop(cid, None)
        if dev.agent_id:
            self.health.agent[idx] = self._agent_idx(dev.agent_id)
        return idx

    # -- helpers used by alerts and views ------------------------------------------------------
    def _home(self, idx: int) -> str | None:
        homes = self.info[idx].homes
        return homes[0] if homes else None

    def label(self, idx: int) -> str:
        inf = self.info[idx]
        name = inf.name or self.health.ids[idx]
        return f"{name} ({self.health.ids[idx]})" if inf.name else name

    def member_indices(self, center_id: str) -> npt.NDArray[np.int64]:
        arr = self._members_np.get(center_id)
        if arr is None:
            arr = np.asarray(self.members[center_id], np.int64)
            self._members_np[center_id] = arr
        return arr

    def agent_dark(self, a: int, now: float | None = None) -> bool:
        t = self.clock() if now is None else now
        return t - self.agent_last[a] > self.cfg.health.offline_after_s

    # -- agents --------------------------------------------------------------------------------
    def register_agent(self, who: Principal, version: str, hostname: str) -> None:
        now = self.clock()
        with self.sessions() as s:
            row = s.get(Agent, who.name)
            if row is None:
                s.add(
                    Agent(
                        id=who.name,
                        token_id=who.token_id,
                        version=version,
                        hostname=hostname,
                        registered_at=now,
                        last_seen_at=now,
                    )
                )
            else:
                row.version, row.hostname, row.token_id, row.last_seen_at = version, hostname, who.token_id, now
            s.commit()
        with self.lock:
            self._agent_idx(who.name)
        log.info("agent %s registered (version %s, host %s)", who.name, version, hostname)

    def heartbeat(self, who: Principal, hb: Heartbeat) -> HeartbeatReply:
        now = self.clock()
        if hb.protocol != 1:
            raise HeartbeatRejected(f"protocol {hb.protocol} not supported; this hub speaks 1")
        skew = now - hb.sent_at
        warning = None
        if abs(skew) > self.cfg.health.max_clock_skew_s:
            warning = (
                f"agent clock is off by {skew:+.1f} s; freshness uses packet ages so state is correct, "
                "but fix the agent's time (NTP)"
            )
        rejected: list[Rejection] = []
        fresh: list[str] = []
        seen: set[str] = set()
        ok: list[CameraStats] = []
        with self.lock:
            for cam in hb.cameras:
                reason = self._claim_problem(who, cam.device_id, now)
                if reason is None and cam.device_id in seen:
                    reason = "device listed twice in one heartbeat"
                if reason:
                    rejected.append(Rejection(device_id=cam.device_id, reason=reason))
                    continue
                seen.add(cam.device_id)
                ok.append(cam)
                if cam.device_id not in self.health.index:
                    fresh.append(cam.device_id)
        if fresh:
            names = {c.device_id: c for c in hb.cameras}
            self._create_devices(who.name, [(d, names[d].name or "", names[d].location or "") for d in fresh], now)
        with self.lock:
            a = self._agent_idx(who.name)
            self.agent_last[a] = now
            self.agent_skew[a] = skew
            if hb.spool is not None:
                self.agent_spool[a] = hb.spool
            h = self.health
            for cam in ok:
                i = h.index[cam.device_id]
                h.agent[i] = a
                if cam.connected and cam.last_packet_age_s is not None:
                    h.observe_signal(i, now - cam.last_packet_age_s, now)
                h.report(
                    i,
                    now,
                    fps=cam.fps,
                    bitrate=cam.bitrate_bps,
                    reconnects=cam.reconnects,
                    gaps=cam.gaps,
                    connected=cam.connected,
                )
            self.heartbeats_total += 1
            self.rejected_total += len(rejected)
        if hb.spool is not None:
            lost = self.spool_losses.note(who.name, hb.spool.dropped_segments, now)
            if lost is not None:
                self.events.publish("changed", {"devices": [], "alerts": [lost]})
        q = self.quality
        for cam in ok:
            if cam.defects is not None or cam.device_id in q.agent_analysed:
                q.agent_report(cam.device_id, cam.defects, now)  # the agent analyses this camera itself
        if rejected:
            log.warning(
                "agent %s: rejected %d device(s), first: %s (%s)",
                who.name,
                len(rejected),
                rejected[0].device_id,
                rejected[0].reason,
            )
        return HeartbeatReply(
            accepted=len(ok),
            rejected=rejected,
            clock_skew_s=round(skew, 3),
            warning=warning,
            heartbeat_interval_s=self.cfg.health.heartbeat_interval_s,
        )

    def _claim_problem(self, who: Principal, device_id: str, now: float, held: bool = True) -> str | None:
        """Why ``who`` may not speak for ``device_id``, or None; ``held`` counts a pending or rejected camera."""
        try:
            ids.parse(device_id)
        except ids.InvalidDeviceId as exc:
            return f"invalid ID: {exc}"
        if not ids.matches_prefix(device_id, who.prefixes):
            return f"outside this agent's prefixes {list(who.prefixes)}"
        i = self.health.index.get(device_id)
        if i is not None:
            owner = int(self.health.agent[i])
            if owner >= 0 and self.agent_names[owner] != who.name and not self.agent_dark(owner, now):
                return f"already reported by live agent {self.agent_names[owner]!r} (duplicate device ID?)"
        return self.held.get(device_id) if held else None

    def claim_problem(self, who: Principal, device_id: str) -> str | None:
        """Why ``who`` may not report ``device_id`` at all (ID, prefixes, another live agent), or None."""
        with self.lock:
            return self._claim_problem(who, device_id, self.clock(), held=False)

    def hold(self, device_id: str, state: str) -> None:
        """Record a camera's acceptance state: pending and rejected cameras are refused media and stats.

        A held camera that is already a device (an admin rejected it after accepting it) leaves
        service: no state, no alerts (open ones resolve), not in the centers' figures; its archive
        stays. Accepting it again puts it back."""
        changed: tuple[list[tuple[Transition, str]], list[Op]] | None = None
        with self.lock:
            i = self.health.index.get(device_id)
            if state in HELD:
                self.held[device_id] = HELD[state]
                t = None if i is None else self.health.retire(i, self.clock())
                if t is not None:
                    changed = ([(t, device_id)], [])
            else:
                self.held.pop(device_id, None)
                if i is not None:
                    self.health.reinstate(i, self.clock())
            if changed is not None:
                self._pending.append(changed)
        if i is not None:
            self.events.publish("changed", {"devices": [device_id], "alerts": []})

    def admit(self, agent: str, device_id: str, name: str = "", location: str = "") -> None:
        """Register an accepted camera as a device of ``agent`` unless it is known already."""
        with self.lock:
            known = device_id in self.health.index
        if not known:
            self._create_devices(agent, [(device_id, name, location)], self.clock())

    def _create_devices(self, agent: str, new: list[tuple[str, str, str]], now: float) -> None:
        with self._register_lock:
            with self.sessions() as s:
                existing = set(s.scalars(select(Device.id).where(Device.id.in_([d for d, _, _ in new]))))
                rows = [
                    Device(id=d, name=n, location=loc, agent_id=agent, created_at=now)
                    for d, n, loc in new
                    if d not in existing
                ]
                s.add_all(rows)
                s.commit()
                all_rows = list(s.scalars(select(Device).where(Device.id.in_([d for d, _, _ in new]))))
            with self.lock:
                for row in all_rows:
                    self._add_device(row)
        log.info("agent %s: %d new device(s)", agent, len(new))

    def add_device(self, device_id: str, name: str = "", location: str = "", center: str | None = None) -> None:
        """Register a device by hand (admin); raises on invalid ID or unknown center."""
        ids.parse(device_id)
        if center is not None:
            self.tree.get(center)
        now = self.clock()
        with self._register_lock:
            with self.sessions() as s:
                if s.get(Device, device_id) is not None:
                    raise ValueError(f"device {device_id} exists already")
                row = Device(id=device_id, name=name, location=location, center_id=center, created_at=now)
                s.add(row)
                s.commit()
            with self.lock:
                self._add_device(row)

    def claim(self, who: Principal, device_id: str, name: str = "", location: str = "") -> str | None:
        """Admit ``device_id`` for agent ``who`` (creating it if new), or say why not."""
        now = self.clock()
        with self.lock:
            reason = self._claim_problem(who, device_id, now)
            known = device_id in self.health.index
        if reason is None and not known:
            self._create_devices(who.name, [(device_id, name, location)], now)
        return reason

    def store_segment(
        self,
        who: Principal,
        device_id: str,
        start: float,
        duration: float,
        data: bytes,
        sha256: str,
        sent_at: float | None,
        motion_ratio: float | None = None,
    ) -> Outcome:
        """Store a relayed segment; live media makes the device count as uploading.

        ``motion_ratio`` comes from an agent that analyses the camera itself.
        """
        now = self.clock()
        start = self._hub_time(start, sent_at, now)
        outcome = self.segments.ingest(device_id, start, duration, data, sha256, who.name, now)
        if outcome.result is Result.STORED:
            with self.lock:
                i = self.health.index.get(device_id)
                if i is not None:
                    self.health.observe_upload(i, start + duration, self.clock())
            self.live.segment_stored(device_id)
            self.quality.segment_stored(device_id, start, duration, sha256, outcome.segment_id, motion_ratio)
        return outcome

    def store_sub_segment(
        self, device_id: str, start: float, duration: float, data: bytes, sha256: str, sent_at: float | None
    ) -> Outcome:
        """A sub-stream segment: live view only; not indexed, recorded or analysed, and no health signal."""
        return self.live.store_sub(device_id, self._hub_time(start, sent_at, self.clock()), duration, data, sha256)

    def _hub_time(self, start: float, sent_at: float | None, now: float) -> float:
        """A segment's start on the hub's time line: moved by the skew when the agent's clock is off."""
        if sent_at is not None and abs(now - sent_at) > self.cfg.health.max_clock_skew_s:
            return start + now - sent_at
        return start

    def set_quality(self, device_id: str, check: str, raised: bool) -> None:
        """Set or clear a quality defect of a device; the tick turns it into ``degraded`` and an alert."""
        with self.lock:
            i = self.health.index.get(device_id)
            if i is not None:
                self.health.set_defect(i, defect_bit(check), raised)

    # -- the tick ------------------------------------------------------------------------------
    def tick(self) -> list[Transition]:
        t0 = time.perf_counter()
        now = self.clock()
        with self.lock:
            transitions = self.health.evaluate(now)
            ops = self.book.plan(transitions, now, lambda a: self.agent_dark(a, now))
            named = [(t, self.health.ids[t.idx]) for t in transitions]
        if named or ops:
            self._pending.append((named, ops))
        self._flush(now)
        if named or ops:
            self.events.publish("changed", {"devices": [d for _, d in named], "alerts": [op.alert.db_id for op in ops]})
        self.ticks += 1
        self.last_tick_s = time.perf_counter() - t0
        return transitions

    def _flush(self, now: float) -> None:
        """Write pending state changes and alert operations; keep them if the store fails."""
        batch = list(self._pending)
        try:
            with self.sessions() as s:
                for named, ops in batch:
                    self._write_transitions(s, named)
                    self._write_ops(s, ops, now)
                    s.flush()
                s.merge(Meta(key=ALIVE_KEY, value=repr(now)))
                s.commit()
        except Exception as exc:
            # Nothing of the batch is stored (one transaction); it is written again next tick.
            log.error("store write failed (%s); %d tick(s) of changes kept for retry", exc, len(self._pending))
            return
        del self._pending[: len(batch)]

    def _write_transitions(self, s: Session, named: list[tuple[Transition, str]]) -> None:
        """Close each device's open interval and open the next: two statements for the whole tick."""
        conn = s.connection()
        closes = [{"d": did, "t": t.at} for t, did in named if t.old is not None]
        if closes:
            conn.execute(
                update(StateInterval)
                .where(StateInterval.device_id == bindparam("d"), StateInterval.end_at.is_(None))
                .values(end_at=bindparam("t")),
                closes,
            )
        rows = [
            {"device_id": did, "start_at": t.at, "end_at": None, "online": bool(t.new & 1),
             "uploading": bool(t.new & 2), "intact": bool(t.new & 4), "state": state_name(t.new)}
            for t, did in named
            if t.new is not None  # retired: closed, nothing opens
        ]
        if rows:
            conn.execute(insert(StateInterval), rows)

    def _alert_detail(self, alert: OpenAlert) -> dict[str, Any]:
        if alert.device_id is not None and alert.members:
            inf = self.info[alert.members[0]]
            center = self.tree.by_id.get(alert.center_id or "")
            return {
                "name": inf.name,
                "location": inf.location,
                "center_name": center.name if center else None,
                "centers": list(inf.homes),
                **(self.quality.alert_detail(alert.device_id) if alert.kind == "device_degraded" else {}),
            }
        return {"members_count": len(set(alert.members))}

    def _write_ops(self, s: Session, ops: list[Op], now: float) -> None:
        url = self.public_url
        for op in ops:
            a = op.alert
            if isinstance(op, Open):
                row = Alert(
                    fingerprint=a.fingerprint,
                    kind=a.kind,
                    severity=a.severity,
                    device_id=a.device_id,
                    agent_id=a.agent_id,
                    center_id=a.center_id,
                    title=a.title,
                    detail=self._alert_detail(a),
                    members=[self.health.ids[m] for m in a.members],
                    state="open",
                    since_at=a.since,
                    opened_at=now,
                )
                s.add(row)
                s.flush()
                a.db_id = row.id
                s.add(AlertEvent(alert_id=row.id, at=now, action="opened", actor="system", comment=""))
                enqueue(s, row, "firing", self.cfg.alerts, url, now)
            elif isinstance(op, AddMembers):
                row2 = s.get(Alert, a.db_id)
                if row2 is not None:
                    row2.members = [self.health.ids[m] for m in dict.fromkeys(a.members)]
                    row2.detail = {**(row2.detail or {}), "members_count": len(row2.members)}
            elif isinstance(op, Resolve):
                row3 = s.get(Alert, a.db_id)
                if row3 is not None and row3.state != "resolved":
                    row3.state, row3.resolved_at, row3.resolved_by = "resolved", op.at, op.by
                    s.add(AlertEvent(alert_id=row3.id, at=op.at, action="resolved", actor=op.by, comment="recovered"))
                    enqueue(s, row3, "resolved", self.cfg.alerts, url, now)

    @property
    def public_url(self) -> str:
        sc = self.cfg.server
        return sc.public_url or f"http://{sc.host}:{sc.port}"

    # -- alert actions by people ---------------------------------------------------------------
    def acknowledge(self, alert_id: int, who: Principal, comment: str) -> Alert:
        now = self.clock()
        with self.sessions() as s:
            row = s.get(Alert, alert_id)
            if row is None:
                raise KeyError(alert_id)
            if row.state != "open":
                raise ValueError(f"alert {alert_id} is {row.state}; only open alerts can be acknowledged")
            row.state, row.acknowledged_at, row.acknowledged_by = "acknowledged", now, who.name
            s.add(AlertEvent(alert_id=row.id, at=now, action="acknowledged", actor=who.name, comment=comment))
            s.commit()
        self._acted(who, "alert.acknowledge", alert_id, comment, now)
        return row

    def resolve(self, alert_id: int, who: Principal, comment: str) -> Alert:
        now = self.clock()
        with self.lock, self.sessions() as s:
            row = s.get(Alert, alert_id)
            if row is None:
                raise KeyError(alert_id)
            if row.state == "resolved":
                raise ValueError(f"alert {alert_id} is resolved already")
            self.book.resolve_by_hand(row.fingerprint)
            row.state, row.resolved_at, row.resolved_by = "resolved", now, who.name
            s.add(AlertEvent(alert_id=row.id, at=now, action="resolved", actor=who.name, comment=comment))
            enqueue(s, row, "resolved", self.cfg.alerts, self.public_url, now)
            s.commit()
        self._acted(who, "alert.resolve", alert_id, comment, now)
        return row

    def _acted(self, who: Principal, action: str, alert_id: int, comment: str, now: float) -> None:
        """A person changed an alert: audit it and tell the pages."""
        audit.record(self.sessions, who, at=now, action=action, target=str(alert_id), detail={"comment": comment})
        self.events.publish("changed", {"devices": [], "alerts": [alert_id]})

    # -- figures -------------------------------------------------------------------------------
    def availability(self, start: float, end: float) -> Any:
        now = self.clock()
        horizon = self.started_at - self.cfg.health.report_cache_days * 86400
        with self.lock:
            if start >= horizon:
                return self.health.availability(start, end, now)
        with self.sessions() as s:
            lg = self._read_log(s, start, end)
        with self.lock:
            return self.health.availability(start, end, now, lg)

    def center_figures(self, av: Any, center_id: str) -> dict[str, Any]:
        m = self.health.in_service(self.member_indices(center_id))
        return rates(
            float(av.monitored_s[m].sum()),
            float(av.known_s[m].sum()),
            float(av.online_s[m].sum()),
            float(av.upload_s[m].sum()),
            float(av.intact_s[m].sum()),
        )

    def device_figures(self, av: Any, idx: int) -> dict[str, Any]:
        return rates(
            float(av.monitored_s[idx]),
            float(av.known_s[idx]),
            float(av.online_s[idx]),
            float(av.upload_s[idx]),
            float(av.intact_s[idx]),
        )

    # -- threads -------------------------------------------------------------------------------
    def start(self) -> None:
        self._stop.clear()
        self.archive.startup()  # index and recordings agree before anything is served
        self.quality.start()
        loops: tuple[tuple[str, Callable[[], None]], ...] = (
            ("tick", self._tick_loop), ("outbox", self._outbox_loop),
            ("retention", functools.partial(self.archive.loop, self._stop)),
        )
        for name, fn in loops:
            th = threading.Thread(target=fn, name=f"vms-{name}", daemon=True)
            th.start()
            self._threads.append(th)

    def _tick_loop(self) -> None:
        period = self.cfg.health.tick_s
        while not self._stop.wait(period):
            try:
                self.tick()
                if self.ticks % 3600 == 0:
                    with self.lock:
                        self.health.log.prune(self.clock() - self.cfg.health.report_cache_days * 86400)
            except Exception:
                log.exception("tick failed")

    def _outbox_loop(self) -> None:
        while not self._stop.wait(0.5):
            try:
                self.outbox.drain(self.clock())
            except Exception:
                log.exception("outbox drain failed")

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(timeout=10)
        self._threads.clear()
        self.quality.stop()
        self.archive.close()
        self._flush(self.clock())
        self.outbox.sender.close()
        self.engine.dispose()
