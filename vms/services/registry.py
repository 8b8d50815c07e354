"""Devices and agents as the hub knows them: the state table's rows, names, homes and owners.

One lock (``Registry.lock``) guards the in-memory state: the health table, device info, center
membership, agents and acceptance holds. Requests and the tick take it briefly; the store is
written outside it. Device rows are created here (by agents' reports, admins and the config).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from sqlalchemy import null, select
from sqlalchemy.orm import Session, sessionmaker

from vms.auth import Principal, gb_agent
from vms.centers import CenterTree
from vms.config import DeviceConfig, HealthConfig
from vms.db.models import Agent, Center, Device, DiscoveredCamera
from vms.errors import Conflict
from vms.health import Health, defect_bit
from vms.kernel import ids
from vms.kernel.protocol import SpoolStats

log = logging.getLogger(__name__)

#: Why a reported camera may not be relayed (states of ``discovered_cameras``, see vms/services/acceptance.py).
HELD = {"pending": "discovered camera waiting for an admin to accept it", "rejected": "camera rejected by an admin"}


@dataclass(frozen=True)
class AgentStatus:
    """A snapshot of one agent for views."""

    name: str
    online: bool
    devices: int
    last_seen: float  # -inf: not heard from since this hub started
    skew: float
    spool: SpoolStats | None


class DeviceExists(Conflict):
    """A device with that ID is registered already."""


@dataclass
class DeviceInfo:
    name: str = ""
    location: str = ""
    placed_in: str | None = None
    homes: tuple[str, ...] = ()


@dataclass
class AgentRecord:
    """One agent as last heard from since this hub started."""

    name: str
    index: int
    last_seen: float = -math.inf
    skew: float = 0.0
    #: The spool as last reported (queue, quota drops, live drops); None until heard from since this
    #: hub started, so a restart never shows a counter falling to 0 and jumping back.
    spool: SpoolStats | None = None
    #: Silence after which it is dark, if not the config's (a GB/T 28181 device reports by keepalive).
    offline_after: float | None = None


@dataclass
class Registry:
    health: Health
    tree: CenterTree
    health_cfg: HealthConfig
    sessions: sessionmaker[Session]
    clock: Callable[[], float]
    lock: threading.RLock = field(default_factory=threading.RLock)
    info: list[DeviceInfo] = field(default_factory=list)
    agents: list[AgentRecord] = field(default_factory=list)
    agent_index: dict[str, int] = field(default_factory=dict)
    held: dict[str, str] = field(default_factory=dict)  # device ID -> why it may not be relayed
    members: dict[str, list[int]] = field(default_factory=dict)
    _members_np: dict[str, npt.NDArray[np.int64]] = field(default_factory=dict)
    _create_lock: threading.Lock = field(default_factory=threading.Lock)
    #: ``changed(ids)``: devices that came into being, or became carriers, while the hub runs (outside the
    #: tick's transitions: views and superiors hear of them through this).
    changed: Callable[[list[str]], None] = lambda _ids: None

    def __post_init__(self) -> None:
        self.members = {c.id: [] for c in self.tree}

    # -- start-up ----------------------------------------------------------------------------
    def sync_config(self, s: Session, devices: list[DeviceConfig], now: float) -> None:
        """Mirror the config's centers and devices into the store."""
        wanted = {c.id: c for c in self.tree}
        for row in s.scalars(select(Center)):
            if row.id not in wanted:
                s.delete(row)
        for c in self.tree:
            crow = s.get(Center, c.id) or Center(id=c.id)
            crow.name, crow.level, crow.civil_code = c.name, c.level, c.civil_code
            crow.industries, crow.gb_id = list(c.industries), c.gb_id
            crow.parent_id = c.parent.id if c.parent else None
            s.merge(crow)
        for d in devices:
            drow = s.get(Device, d.id)
            if drow is None:
                s.add(Device(id=d.id, name=d.name, location=d.location, center_id=d.center, created_at=now))
            else:
                drow.name, drow.location, drow.center_id = d.name or drow.name, d.location or drow.location, d.center
        s.commit()

    def load(self, s: Session) -> None:
        """Agents, devices and acceptance holds from the store."""
        q = select(DiscoveredCamera.device_id, DiscoveredCamera.state).where(DiscoveredCamera.state.in_(HELD))
        self.held = {d: HELD[state] for d, state in s.execute(q)}
        for a in s.scalars(select(Agent)):
            self.agent(a.id)
        for dev in s.scalars(select(Device).order_by(Device.created_at, Device.id)):
            idx = self._add(dev)
            if dev.id in self.held:
                self.health.retired[idx] = True  # out of service, see Monitor.hold

    # -- lookups (callers hold the lock) ---------------------------------------------------------
    def agent(self, name: str) -> AgentRecord:
        """The agent's record, made on first mention."""
        i = self.agent_index.get(name)
        if i is None:
            i = len(self.agents)
            self.agents.append(AgentRecord(name, i))
            self.agent_index[name] = i
        return self.agents[i]

    def agent_seen(self, name: str, at: float, offline_after: float | None = None) -> None:
        """An agent-like source (a GB/T 28181 device) was heard from at ``at``; dark after ``offline_after``."""
        with self.lock:
            rec = self.agent(name)
            rec.last_seen = max(rec.last_seen, at)
            rec.offline_after = offline_after

    def agent_dark(self, a: int, now: float | None = None) -> bool:
        t = self.clock() if now is None else now
        rec = self.agents[a]
        limit = self.health_cfg.offline_after_s if rec.offline_after is None else rec.offline_after
        return t - rec.last_seen > limit

    def agent_statuses(self, now: float | None = None) -> list[AgentStatus]:
        t = self.clock() if now is None else now
        with self.lock:
            owners = self.health.agent[: self.health.n]
            return [AgentStatus(a.name, not self.agent_dark(a.index, t), int((owners == a.index).sum()), a.last_seen,
                                a.skew, a.spool) for a in self.agents]

    def agent_name(self, a: int) -> str:
        return self.agents[a].name

    def home(self, idx: int) -> str | None:
        homes = self.info[idx].homes
        return homes[0] if homes else None

    def homes_of(self, device_id: str) -> tuple[str, ...]:
        """A device's home centers, nearest first (from its ID when it is not registered)."""
        with self.lock:
            i = self.health.index.get(device_id)
            return self.info[i].homes if i is not None else tuple(c.id for c in self.tree.homes(device_id))

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

    def center_devices(self, center_id: str) -> list[str]:
        with self.lock:
            return [self.health.ids[int(i)] for i in self.member_indices(center_id)]

    def known(self, device_id: str) -> bool:
        with self.lock:
            return device_id in self.health.index

    # -- facts that arrive -------------------------------------------------------------------------
    def observe_upload(self, device_id: str, content_end: float) -> None:
        with self.lock:
            i = self.health.index.get(device_id)
            if i is not None:
                self.health.observe_upload(i, content_end, self.clock())

    def signal(self, device_ids: list[str], seen_at: float, silence_limit: float | None = None) -> None:
        """Devices reported alive at ``seen_at`` by a source other than an agent's heartbeat (e.g. a
        GB/T 28181 keepalive), each with that silence limit; pending and rejected ones are ignored."""
        now = self.clock()
        with self.lock:
            for d in device_ids:
                i = self.health.index.get(d)
                if i is None or d in self.held:
                    continue
                self.health.set_silence_limit(i, silence_limit)
                self.health.observe_signal(i, seen_at, now)

    def told_upload(self, device_ids: list[str], uploading: bool, at: float) -> None:
        """A lower platform's word on whether these cameras' video reaches it (their footage stays
        there): uploading for as long as their silence limit, or not from now on."""
        now = self.clock()
        with self.lock:
            for d in device_ids:
                i = self.health.index.get(d)
                if i is None or d in self.held:
                    continue
                if uploading:
                    self.health.observe_upload(i, at, now)
                else:
                    self.health.last_upload[i] = -math.inf

    def silence(self, device_ids: list[str]) -> None:
        """These devices' signal ended now (a goodbye, a closed connection): offline at the next tick,
        dated at their last signal."""
        with self.lock:
            for d in device_ids:
                i = self.health.index.get(d)
                if i is not None:
                    self.health.set_silence_limit(i, 0.0)

    def stream_report(self, device_id: str, fps: float, bitrate: float, reconnects: int) -> None:
        """Stream figures measured on the hub (GB/T 28181 media): as an agent's heartbeat reports them."""
        with self.lock:
            i = self.health.index.get(device_id)
            if i is not None and device_id not in self.held:
                self.health.report(i, self.clock(), fps=fps, bitrate=bitrate, reconnects=reconnects, gaps=0,
                                   connected=True)

    def set_carrier(self, device_id: str, carrier: bool) -> bool:
        """The device carries channels that count in its place (``Health.carrier``), or not; False if it
        is no device (yet: pending). Kept in the store, so that a restarted hub counts and shares an NVR
        as before, not as a device of its own until it registers again. Blocking (a store write)."""
        with self.lock:
            i = self.health.index.get(device_id)
            if i is None:
                return False
            h = self.health
            news = bool(h.carrier[i]) != carrier or bool(h.carrier_unknown[i])
        if news:
            with self.sessions() as s:
                row = s.get(Device, device_id)
                if row is not None:
                    row.carrier = carrier
                    s.commit()
            with self.lock:
                h.carrier[i], h.carrier_unknown[i] = carrier, False
            self.changed([device_id])
        return True

    def set_quality(self, device_id: str, check: str, raised: bool) -> None:
        """Set or clear a quality defect of a device; the tick turns it into ``degraded`` and an alert."""
        with self.lock:
            i = self.health.index.get(device_id)
            if i is not None:
                self.health.set_defect(i, defect_bit(check), raised)

    # -- claims: who may speak for a device ---------------------------------------------------------
    def claim_problem_locked(self, who: Principal, device_id: str, now: float, held: bool = True) -> str | None:
        """Why ``who`` may not speak for ``device_id``, or None; ``held`` counts a pending or rejected
        camera. The caller holds the lock."""
        try:
            ids.parse(device_id)
        except ids.InvalidDeviceId as exc:
            return f"invalid ID: {exc}"
        if not ids.matches_prefix(device_id, who.prefixes):
            return f"outside this agent's prefixes {list(who.prefixes)}"
        i = self.health.index.get(device_id)
        if i is not None:
            owner = int(self.health.agent[i])
            if owner >= 0 and self.agents[owner].name != who.name and not self.agent_dark(owner, now):
                return f"already reported by live agent {self.agents[owner].name!r} (duplicate device ID?)"
        return self.held.get(device_id) if held else None

    def claim_problem(self, who: Principal, device_id: str) -> str | None:
        """Why ``who`` may not report ``device_id`` at all (ID, prefixes, another live agent), or None."""
        with self.lock:
            return self.claim_problem_locked(who, device_id, self.clock(), held=False)

    def claim(self, who: Principal, device_id: str, name: str = "", location: str = "") -> str | None:
        """Admit ``device_id`` for agent ``who`` (creating it if new), or say why not."""
        now = self.clock()
        with self.lock:
            reason = self.claim_problem_locked(who, device_id, now)
            known = device_id in self.health.index
        if reason is None and not known:
            self.create(who.name, [(device_id, name, location)], now)
        return reason

    # -- new devices ---------------------------------------------------------------------------------
    def admit(self, agent: str, device_id: str, name: str = "", location: str = "") -> None:
        """Register an accepted camera as a device of ``agent`` unless it is known already."""
        if not self.known(device_id):
            self.create(agent, [(device_id, name, location)], self.clock())

    def create(self, agent: str, new: list[tuple[str, str, str]], now: float) -> None:
        """Devices first reported by ``agent``: (ID, name, location) each."""
        with self._create_lock:
            with self.sessions() as s:
                wanted = [d for d, _, _ in new]
                existing = set(s.scalars(select(Device.id).where(Device.id.in_(wanted))))
                # A device that reports itself registered by GB/T 28181: whether it carries channels is
                # known once its catalog is read (see set_carrier). NULL is written as null(): a plain None
                # would get the column's default.
                s.add_all(
                    Device(id=d, name=n, location=loc, agent_id=agent, created_at=now,
                           carrier=null() if agent == gb_agent(d) else False)
                    for d, n, loc in new
                    if d not in existing
                )
                s.commit()
                rows = list(s.scalars(select(Device).where(Device.id.in_(wanted))))
            with self.lock:
                for row in rows:
                    self._add(row)
        log.info("agent %s: %d new device(s)", agent, len(new))
        self.changed([r.id for r in rows])

    def add_device(self, device_id: str, name: str = "", location: str = "", center: str | None = None) -> None:
        """Register a device by hand (admin); raises on invalid ID, unknown center or a known ID."""
        ids.parse(device_id)
        if center is not None:
            self.tree.get(center)
        with self._create_lock:
            with self.sessions() as s:
                if s.get(Device, device_id) is not None:
                    raise DeviceExists(f"device {device_id} exists already")
                row = Device(id=device_id, name=name, location=location, center_id=center, created_at=self.clock())
                s.add(row)
                s.commit()
            with self.lock:
                self._add(row)

    def _add(self, dev: Device) -> int:
        placed = dev.center_id if dev.center_id in self.tree.by_id else None
        idx = self.health.add(dev.id, dev.created_at)
        if idx == len(self.info):  # new here: what the store says (later, set_carrier keeps both alike)
            self.health.carrier[idx] = bool(dev.carrier)
            self.health.carrier_unknown[idx] = dev.carrier is None
            homes = tuple(c.id for c in self.tree.homes(dev.id, placed))
            self.info.append(DeviceInfo(dev.name, dev.location, dev.center_id, homes))
            for cid in self.tree.memberships(dev.id, placed):
                self.members[cid].append(idx)
                self._members_np.pop(cid, None)
        if dev.agent_id:
            self.health.agent[idx] = self.agent(dev.agent_id).index
        return idx
