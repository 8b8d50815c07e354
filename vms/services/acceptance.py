"""Camera acceptance: which reported cameras may be relayed, decided once and kept (deny by default).

A camera typed into an agent's config is accepted as before. One found by ONVIF/WS-Discovery
waits (pending) until an admin accepts it, unless the hub's ``discovery.auto_accept`` is on. A
rejected camera stays rejected, whatever its agent reports, until an admin accepts it. The hub
itself refuses stats and media of pending and rejected cameras (``Registry.held``, set through
``hold``), so acceptance does not rest on agents behaving. Every decision is audited.

An accepted discovered camera reported at another host than the one it was accepted at goes back
to pending (audited as ``camera.moved``; ``moved_from`` keeps the old address until an admin
accepts it): its serial is only what a device says about itself, so a device elsewhere claiming
it must not take over the accepted ID. ``discovery.auto_accept`` does not accept it again.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Literal
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from vms import audit
from vms.auth import Principal
from vms.db.models import DiscoveredCamera
from vms.errors import NotFound
from vms.kernel.protocol import CameraDecision, CameraReport, CameraReportReply, ReportedCamera
from vms.services.registry import HELD

Decision = Literal["accepted", "rejected"]

WHY_CONFIG = "listed in the agent's config"
WHY_AUTO = "discovery.auto_accept is on"
WHY_AUTO_GB = "gb28181.auto_accept is on"
WHY_KNOWN = "registered before discovered cameras needed acceptance"


class Acceptance:
    def __init__(
        self,
        sessions: sessionmaker[Session],
        auto_accept: bool,
        gb_auto_accept: bool,
        claim_problem: Callable[[Principal, str], str | None],
        known: Callable[[str], bool],
        hold: Callable[[str, str], None],
        admit: Callable[[str, str, str, str], None],
        clock: Callable[[], float],
    ) -> None:
        """``hold(device, state)`` refuses a pending or rejected camera's media and stats (and lets an
        accepted one in); ``admit(agent, device, name, location)`` registers an accepted camera."""
        self.sessions = sessions
        self.auto_accept = auto_accept
        self.gb_auto_accept = gb_auto_accept  # devices registering by GB/T 28181 have their own switch
        self.claim_problem = claim_problem
        self.known = known
        self.hold = hold
        self.admit = admit
        self.clock = clock
        #: One report or decision at a time, so a decision never interleaves with a report of the same camera.
        self._lock = threading.Lock()

    def report(self, who: Principal, report: CameraReport) -> CameraReportReply:
        """Record the cameras an agent reports and say, per camera, whether it may relay it and why not."""
        now = self.clock()
        out: list[CameraDecision] = []
        admitted: list[tuple[str, str, str]] = []
        auto: dict[str, list[str]] = {}  # why -> device IDs accepted without an admin in this report
        moves: list[tuple[str, dict[str, str | None]]] = []  # accepted cameras reported at a new address
        seen: set[str] = set()
        with self._lock, self.sessions() as s:
            wanted = select(DiscoveredCamera).where(
                DiscoveredCamera.device_id.in_([c.device_id for c in report.cameras]))
            rows = {r.device_id: r for r in s.scalars(wanted)}
            for cam in report.cameras:
                dev = cam.device_id
                problem = "device listed twice in one report" if dev in seen else self.claim_problem(who, dev)
                seen.add(dev)
                if problem:
                    out.append(CameraDecision(device_id=dev, state="refused", reason=problem))
                    continue
                row = rows.get(dev)
                if row is None:
                    row = DiscoveredCamera(device_id=dev, source=cam.source, name="", location="", first_seen_at=now,
                                           state="pending", comment="")
                    rows[dev] = row
                    s.add(row)
                    known = self.known(dev)
                else:
                    known = False  # the row's state decides; a device predating the row was accepted then
                moved_from = row.address if _moved(row, cam) else None
                _describe(row, cam, who, now)
                if moved_from is not None:
                    row.state, row.decided_by, row.decided_at, row.moved_from = "pending", "hub", now, moved_from
                    row.comment = f"moved: accepted at {moved_from}, now reported at {row.address}"
                    moves.append((dev, {"agent": who.name, "from": moved_from, "to": row.address,
                                        "serial": row.serial, "stream_uri": row.stream_uri, "previous": "accepted"}))
                if row.state == "pending" and not row.moved_from:
                    auto_on = self.gb_auto_accept if row.source == "gb28181" else self.auto_accept
                    why = (WHY_CONFIG if row.source == "config" else
                           (WHY_AUTO_GB if row.source == "gb28181" else WHY_AUTO) if auto_on
                           else WHY_KNOWN if known else "")
                    if why:
                        row.state, row.decided_by, row.decided_at, row.comment = "accepted", "hub", now, why
                        auto.setdefault(why, []).append(dev)
                self.hold(dev, row.state)  # before the commit: a pending camera is refused from now on
                if row.state == "accepted":
                    admitted.append((dev, row.name, row.location))
                out.append(CameraDecision(device_id=dev, state=row.state, reason=reason(row)))
            s.commit()
        for dev, name, location in admitted:
            self.admit(who.name, dev, name, location)
        for why, devices in auto.items():
            audit.record(self.sessions, who, at=now, action="camera.auto_accept", target=who.name,
                         detail={"why": why, "devices": devices})
        for dev, detail in moves:
            audit.record(self.sessions, who, at=now, action="camera.moved", target=dev, detail=detail)
        return CameraReportReply(cameras=out)

    def decide(self, who: Principal, device_id: str, state: Decision, comment: str) -> DiscoveredCamera:
        """An admin accepts or rejects a reported camera."""
        now = self.clock()
        with self._lock, self.sessions() as s:
            row = s.get(DiscoveredCamera, device_id)
            if row is None:
                raise NotFound(f"no agent has reported camera {device_id}")
            previous, moved_from = row.state, row.moved_from
            row.state, row.decided_by, row.decided_at, row.comment = state, who.name, now, comment
            if state == "accepted":
                row.moved_from = None  # accepted where it is now
            if state == "rejected":
                self.hold(device_id, state)  # refused from before the commit on
            s.commit()
        if state == "accepted":
            self.hold(device_id, state)
            self.admit(row.agent_id, device_id, row.name, row.location)
        detail: dict[str, str | None] = {"agent": row.agent_id, "source": row.source, "previous": previous,
                                         "comment": comment}
        if moved_from:
            detail |= {"moved_from": moved_from, "address": row.address}
        audit.record(self.sessions, who, at=now, action=f"camera.{'accept' if state == 'accepted' else 'reject'}",
                     target=device_id, detail=detail)
        return row


def reason(r: DiscoveredCamera) -> str:
    """Why a reported camera is in its state, as the agent is told."""
    if r.state == "pending":
        moved = f": accepted at {r.moved_from}, now reported at {r.address}" if r.moved_from else ""
        return f"{HELD['pending']}{moved} (web page 'discovered' or POST /api/v1/discovered/{r.device_id}/accept)"
    if r.state == "rejected":
        return f"{HELD['rejected']} ({r.decided_by})" + (f": {r.comment}" if r.comment else "")
    return r.comment


def _describe(row: DiscoveredCamera, cam: ReportedCamera, who: Principal, now: float) -> None:
    """Copy what the agent says about the camera; the decision fields are left alone."""
    row.agent_id, row.last_seen_at = who.name, now
    if cam.source == "config":
        row.source = "config"  # an installer typed it in: that outranks having been discovered
    row.name = cam.name or " ".join(x for x in (cam.manufacturer, cam.model) if x) or row.name
    row.location = cam.location or row.location
    for f in ("manufacturer", "model", "serial", "address", "stream_uri"):
        v = getattr(cam, f)
        if v:
            setattr(row, f, v)


def _moved(row: DiscoveredCamera, cam: ReportedCamera) -> bool:
    """An accepted discovered camera reported at another host than the one it was accepted at.

    Not a GB/T 28181 device: it proves who it is with its password at every registration, and its
    address changes with NAT and DHCP."""
    if row.state != "accepted" or "config" in (row.source, cam.source) or "gb28181" in (row.source, cam.source):
        return False
    return bool(row.address and cam.address) and _host(row.address or "") != _host(cam.address or "")


def _host(address: str) -> str:
    """``host`` of ``host[:port]`` (IPv6 in brackets), lower case: a camera's port may change, its host may not."""
    try:
        return (urlsplit("//" + address.strip()).hostname or address).lower()
    except ValueError:
        return address.strip().lower()
