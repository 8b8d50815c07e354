"""The agent link: registration and heartbeats (protocol v1) into the registry's state table.

A heartbeat never waits on the store: it updates numpy columns under the registry's lock; only
devices heard of for the first time are written (``Registry.create``), outside the lock.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable, Mapping

from vms import audit
from vms.auth import Principal
from vms.config import HealthConfig
from vms.db.models import Agent
from vms.errors import Busy, Unsupported
from vms.kernel.protocol import PROTOCOL_VERSION, CameraStats, Heartbeat, HeartbeatReply, Rejection
from vms.services.registry import Registry

log = logging.getLogger(__name__)

#: Registrations one agent may make in ``REGISTER_WINDOW_S``; each writes its row and an audit entry,
#: so a looping or hostile agent must not grow the audit log without bound. An agent registers once per
#: start and retries a refusal with backoff.
REGISTERS_PER_WINDOW = 6
REGISTER_WINDOW_S = 60.0


class HeartbeatRejected(Unsupported):
    """The whole registration or heartbeat is unusable (an unsupported protocol)."""


class Heartbeats:
    def __init__(
        self,
        cfg: HealthConfig,
        registry: Registry,
        spool_dropped: Callable[[str, int, float], object],
        agent_findings: Callable[[str, Mapping[str, float] | None, float], None],
        agent_analysed: Callable[[str], bool],
    ) -> None:
        """``spool_dropped(agent, count, now)`` gets each spool report's drop count;
        ``agent_findings(device, defects, now)`` the defects of cameras an agent analyses itself."""
        self.cfg = cfg
        self.reg = registry
        self.spool_dropped = spool_dropped
        self.agent_findings = agent_findings
        self.agent_analysed = agent_analysed
        self.heartbeats_total = 0
        self.rejected_total = 0
        self._registers: dict[str, deque[float]] = {}  # agent -> its recent registration times
        self._registers_lock = threading.Lock()

    def register(self, who: Principal, protocol: int, version: str, hostname: str) -> None:
        """An agent (re)starts: recorded and audited."""
        if protocol != PROTOCOL_VERSION:
            raise HeartbeatRejected(f"protocol {protocol} not supported; this hub speaks {PROTOCOL_VERSION}")
        now = self.reg.clock()
        self._count_register(who.name, now)
        with self.reg.sessions() as s:
            row = s.get(Agent, who.name)
            if row is None:
                s.add(Agent(id=who.name, token_id=who.token_id, version=version, hostname=hostname,
                            registered_at=now, last_seen_at=now))
            else:
                row.version, row.hostname, row.token_id, row.last_seen_at = version, hostname, who.token_id, now
            s.commit()
        with self.reg.lock:
            self.reg.agent(who.name)
        audit.record(self.reg.sessions, who, at=now, action="agent.register", target=who.name,
                     detail={"version": version, "hostname": hostname})
        log.info("agent %s registered (version %s, host %s)", who.name, version, hostname)

    def _count_register(self, agent: str, now: float) -> None:
        """Note a registration; :class:`Busy` (429) if the agent made ``REGISTERS_PER_WINDOW`` already."""
        with self._registers_lock:
            recent = self._registers.setdefault(agent, deque())
            while recent and recent[0] <= now - REGISTER_WINDOW_S:
                recent.popleft()
            if len(recent) >= REGISTERS_PER_WINDOW:
                wait = recent[0] + REGISTER_WINDOW_S - now
                raise Busy(f"agent {agent} registered {len(recent)} times in the last {REGISTER_WINDOW_S:.0f} s; "
                           f"retry in {wait:.0f} s", retry_after_s=wait)
            recent.append(now)

    def heartbeat(self, who: Principal, hb: Heartbeat) -> HeartbeatReply:
        reg = self.reg
        now = reg.clock()
        if hb.protocol != PROTOCOL_VERSION:
            raise HeartbeatRejected(f"protocol {hb.protocol} not supported; this hub speaks {PROTOCOL_VERSION}")
        skew = now - hb.sent_at
        warning = None
        if abs(skew) > self.cfg.max_clock_skew_s:
            warning = (
                f"agent clock is off by {skew:+.1f} s; freshness uses packet ages so state is correct, "
                "but fix the agent's time (NTP)"
            )
        rejected: list[Rejection] = []
        fresh: list[str] = []
        seen: set[str] = set()
        ok: list[CameraStats] = []
        with reg.lock:
            for cam in hb.cameras:
                reason = reg.claim_problem_locked(who, cam.device_id, now)
                if reason is None and cam.device_id in seen:
                    reason = "device listed twice in one heartbeat"
                if reason:
                    rejected.append(Rejection(device_id=cam.device_id, reason=reason))
                    continue
                seen.add(cam.device_id)
                ok.append(cam)
                if cam.device_id not in reg.health.index:
                    fresh.append(cam.device_id)
        if fresh:
            by_id = {c.device_id: c for c in hb.cameras}
            reg.create(who.name, [(d, by_id[d].name or "", by_id[d].location or "") for d in fresh], now)
        with reg.lock:
            agent = reg.agent(who.name)
            agent.last_seen, agent.skew = now, skew
            if hb.spool is not None:
                agent.spool = hb.spool
            h = reg.health
            for cam in ok:
                i = h.index[cam.device_id]
                h.agent[i] = agent.index
                if cam.connected and cam.last_packet_age_s is not None:
                    h.observe_signal(i, now - cam.last_packet_age_s, now)
                h.report(i, now, fps=cam.fps, bitrate=cam.bitrate_bps, reconnects=cam.reconnects, gaps=cam.gaps,
                         connected=cam.connected)
            self.heartbeats_total += 1
            self.rejected_total += len(rejected)
        if hb.spool is not None:
            self.spool_dropped(who.name, hb.spool.dropped_segments, now)
        for cam in ok:
            if cam.defects is not None or self.agent_analysed(cam.device_id):
                self.agent_findings(cam.device_id, cam.defects, now)  # the agent analyses this camera itself
        if rejected:
            log.warning("agent %s: rejected %d device(s), first: %s (%s)", who.name, len(rejected),
                        rejected[0].device_id, rejected[0].reason)
        return HeartbeatReply(
            accepted=len(ok),
            rejected=rejected,
            clock_skew_s=round(skew, 3),
            warning=warning,
            heartbeat_interval_s=self.cfg.heartbeat_interval_s,
        )
