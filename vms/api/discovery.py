"""Cameras agents report, and an admin's decision on those found by discovery (deny by default).

A camera typed into an agent's config is accepted as before. One found by ONVIF/WS-Discovery
waits (pending) until an admin accepts it, unless the hub's ``discovery.auto_accept`` is on. A
rejected camera stays rejected, whatever its agent reports, until an admin accepts it. The hub
itself refuses stats and media of pending and rejected cameras (``Hub.held``), so acceptance does
not rest on agents behaving.
"""

from __future__ import annotations

import threading
from typing import Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel
from sqlalchemy import func, select

from vms import audit
from vms.api.deps import Comment, DeviceIdPath, get_hub, require
from vms.auth import Principal, Role
from vms.db.models import DiscoveredCamera
from vms.hub import Hub
from vms.kernel.protocol import CameraDecision, CameraReport, CameraReportReply, ReportedCamera
from vms.kernel.timeutil import iso
from vms.services.registry import HELD

router = APIRouter(prefix="/api/v1/discovered", tags=["discovery"])
State = Literal["pending", "accepted", "rejected"]
#: One report or decision at a time, so a decision never interleaves with a report of the same camera.
_lock = threading.Lock()

WHY_CONFIG = "listed in the agent's config"
WHY_AUTO = "discovery.auto_accept is on"
WHY_KNOWN = "registered before discovered cameras needed acceptance"


class DiscoveredOut(BaseModel):
    device_id: str
    agent: str
    source: str
    name: str
    location: str
    manufacturer: str | None
    model: str | None
    serial: str | None
    address: str | None
    stream_uri: str | None
    first_seen: str | None
    last_seen: str | None
    state: State
    decided_by: str | None
    decided_at: str | None
    comment: str


class DiscoveredList(BaseModel):
    total: int
    cameras: list[DiscoveredOut]


def _view(r: DiscoveredCamera) -> DiscoveredOut:
    return DiscoveredOut(
        device_id=r.device_id, agent=r.agent_id, source=r.source, name=r.name, location=r.location,
        manufacturer=r.manufacturer, model=r.model, serial=r.serial, address=r.address, stream_uri=r.stream_uri,
        first_seen=iso(r.first_seen_at), last_seen=iso(r.last_seen_at), state=r.state,
        decided_by=r.decided_by, decided_at=iso(r.decided_at), comment=r.comment,
    )


def _reason(r: DiscoveredCamera) -> str:
    if r.state == "pending":
        return f"{HELD['pending']} (web page 'discovered' or POST /api/v1/discovered/{r.device_id}/accept)"
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


def handle_report(hub: Hub, who: Principal, report: CameraReport) -> CameraReportReply:
    """Record the cameras an agent reports and say, per camera, whether it may relay it and why not."""
    now = hub.clock()
    auto_accept = hub.cfg.discovery.auto_accept
    out: list[CameraDecision] = []
    admitted: list[tuple[str, str, str]] = []
    auto: dict[str, list[str]] = {}  # why -> device IDs accepted without an admin in this report
    seen: set[str] = set()
    with _lock, hub.sessions() as s:
        wanted = select(DiscoveredCamera).where(DiscoveredCamera.device_id.in_([c.device_id for c in report.cameras]))
        rows = {r.device_id: r for r in s.scalars(wanted)}
        for cam in report.cameras:
            dev = cam.device_id
            problem = "device listed twice in one report" if dev in seen else hub.registry.claim_problem(who, dev)
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
                with hub.registry.lock:
                    known = dev in hub.health.index
            else:
                known = False  # the row's state decides; a device predating the row was accepted then
            _describe(row, cam, who, now)
            if row.state == "pending":
                why = WHY_CONFIG if row.source == "config" else WHY_AUTO if auto_accept else WHY_KNOWN if known else ""
                if why:
                    row.state, row.decided_by, row.decided_at, row.comment = "accepted", "hub", now, why
                    auto.setdefault(why, []).append(dev)
            hub.monitor.hold(dev, row.state)  # before the commit: a pending camera is refused from now on
            if row.state == "accepted":
                admitted.append((dev, row.name, row.location))
            out.append(CameraDecision(device_id=dev, state=row.state, reason=_reason(row)))
        s.commit()
    for dev, name, location in admitted:
        hub.registry.admit(who.name, dev, name, location)
    for why, devices in auto.items():
        audit.record(hub.sessions, who, at=now, action="camera.auto_accept", target=who.name,
                     detail={"why": why, "devices": devices})
    return CameraReportReply(cameras=out)


@router.get("", response_model=DiscoveredList)
def list_discovered(
    state: State | None = Query(None, description="Only cameras in this state"),
    agent: str | None = Query(None, max_length=100, description="Only cameras this agent reported"),
    limit: int = Query(500, ge=1, le=10000),
    offset: int = Query(0, ge=0, le=10_000_000),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(Role.admin)),
) -> DiscoveredList:
    """Cameras agents reported, oldest first, with their acceptance state."""
    q = select(DiscoveredCamera)
    if state is not None:
        q = q.where(DiscoveredCamera.state == state)
    if agent is not None:
        q = q.where(DiscoveredCamera.agent_id == agent)
    with hub.sessions() as s:
        total = s.scalar(select(func.count()).select_from(q.subquery())) or 0
        rows = s.scalars(q.order_by(DiscoveredCamera.first_seen_at, DiscoveredCamera.device_id)
                         .offset(offset).limit(limit)).all()
        return DiscoveredList(total=total, cameras=[_view(r) for r in rows])


def _decide(hub: Hub, who: Principal, device_id: str, state: State, comment: str) -> DiscoveredOut:
    now = hub.clock()
    with _lock, hub.sessions() as s:
        row = s.get(DiscoveredCamera, device_id)
        if row is None:
            raise HTTPException(404, f"no agent has reported camera {device_id}")
        previous = row.state
        row.state, row.decided_by, row.decided_at, row.comment = state, who.name, now, comment
        if state == "rejected":
            hub.monitor.hold(device_id, state)  # refused from before the commit on
        s.commit()
        view = _view(row)
    if state == "accepted":
        hub.monitor.hold(device_id, state)
        hub.registry.admit(view.agent, device_id, view.name, view.location)
    audit.record(hub.sessions, who, at=now, action=f"camera.{'accept' if state == 'accepted' else 'reject'}",
                 target=device_id, detail={"agent": view.agent, "source": view.source, "previous": previous,
                                           "comment": comment})
    return view




@router.post("/{device_id}/accept", response_model=DiscoveredOut)
def accept(
    body: Comment, device_id: str = DeviceIdPath, hub: Hub = Depends(get_hub),
    who: Principal = Depends(require(Role.admin)),
) -> DiscoveredOut:
    """Accept a camera: it is registered as a device and its agent starts relaying it within seconds."""
    return _decide(hub, who, device_id, "accepted", body.comment)


@router.post("/{device_id}/reject", response_model=DiscoveredOut)
def reject(
    body: Comment, device_id: str = DeviceIdPath, hub: Hub = Depends(get_hub),
    who: Principal = Depends(require(Role.admin)),
) -> DiscoveredOut:
    """Reject a camera: its agent never relays it, across restarts, until an admin accepts it.

    One that was accepted before leaves service: state ``retired``, no alerts (open ones resolve),
    not counted in the centers' figures; its archive stays."""
    return _decide(hub, who, device_id, "rejected", body.comment)
