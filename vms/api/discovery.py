"""Cameras agents reported, and an admin's decision on those found by discovery.

The rules live in ``vms/services/acceptance.py``; this router lists and forwards decisions.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field
from sqlalchemy import func, select

from vms.api.deps import Comment, DeviceIdPath, get_hub, require
from vms.auth import Principal, Role
from vms.db.models import DiscoveredCamera
from vms.hub import Hub
from vms.kernel.timeutil import iso

router = APIRouter(prefix="/api/v1/discovered", tags=["discovery"])
State = Literal["pending", "accepted", "rejected"]


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
    moved_from: str | None = Field(
        None, description="Set while an accepted camera reported at another address waits for an admin: the "
        "address it was accepted at (``address`` is where it is now).")


class DiscoveredList(BaseModel):
    total: int
    cameras: list[DiscoveredOut]


def _view(r: DiscoveredCamera) -> DiscoveredOut:
    return DiscoveredOut(
        device_id=r.device_id, agent=r.agent_id, source=r.source, name=r.name, location=r.location,
        manufacturer=r.manufacturer, model=r.model, serial=r.serial, address=r.address, stream_uri=r.stream_uri,
        first_seen=iso(r.first_seen_at), last_seen=iso(r.last_seen_at), state=r.state,
        decided_by=r.decided_by, decided_at=iso(r.decided_at), comment=r.comment, moved_from=r.moved_from,
    )


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


@router.post("/{device_id}/accept", response_model=DiscoveredOut)
def accept(
    body: Comment, device_id: str = DeviceIdPath, hub: Hub = Depends(get_hub),
    who: Principal = Depends(require(Role.admin)),
) -> DiscoveredOut:
    """Accept a camera: it is registered as a device and its agent starts relaying it within seconds."""
    return _view(hub.acceptance.decide(who, device_id, "accepted", body.comment))


@router.post("/{device_id}/reject", response_model=DiscoveredOut)
def reject(
    body: Comment, device_id: str = DeviceIdPath, hub: Hub = Depends(get_hub),
    who: Principal = Depends(require(Role.admin)),
) -> DiscoveredOut:
    """Reject a camera: its agent never relays it, across restarts, until an admin accepts it.

    One that was accepted before leaves service: state ``retired``, no alerts (open ones resolve),
    not counted in the centers' figures; its archive stays."""
    return _view(hub.acceptance.decide(who, device_id, "rejected", body.comment))
