"""Devices: the registry with live state, one device's detail, and its state history."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from vms import audit
from vms.api.deps import DeviceIdPath, get_hub, require
from vms.auth import READERS, Principal, Role
from vms.centers import UnknownCenter
from vms.db.models import StateInterval
from vms.hub import Hub
from vms.kernel import ids
from vms.kernel.protocol import DEVICE_ID_PATTERN
from vms.kernel.timeutil import BadTime, iso, window
from vms.services.snapshots import DeviceList, DeviceOut, State

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=DEVICE_ID_PATTERN)
    name: str = Field("", max_length=200)
    location: str = Field("", max_length=200)
    center: str | None = Field(None, max_length=64)


@router.get("", response_model=DeviceList)
def list_devices(
    center: str | None = Query(None, max_length=64, description="Only devices counted in this center"),
    state: State | None = Query(None),
    limit: int = Query(500, ge=1, le=10000),
    offset: int = Query(0, ge=0, le=10_000_000),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> DeviceList:
    return hub.snapshots.devices(center, state, offset, limit)  # UnknownCenter -> 404


@router.post("", response_model=DeviceOut, status_code=201)
def add_device(body: DeviceIn, hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.admin))) -> DeviceOut:
    try:
        hub.registry.add_device(body.id, body.name, body.location, body.center)
    except ids.InvalidDeviceId as exc:
        raise HTTPException(422, f"invalid device ID: {exc}") from None
    except UnknownCenter as exc:
        raise HTTPException(422, str(exc)) from None
    except ValueError as exc:
        raise HTTPException(409, str(exc)) from None
    audit.record(
        hub.sessions,
        who,
        at=hub.clock(),
        action="device.add",
        target=body.id,
        detail=body.model_dump(),
    )
    return hub.snapshots.device(body.id)


@router.get("/{device_id}")
def get_device(
    device_id: str = DeviceIdPath, hub: Hub = Depends(get_hub), _: Principal = Depends(require(*READERS))
) -> dict[str, Any]:
    view = hub.snapshots.device_detail(device_id, hub.clock())
    view["id_fields"] = ids.parse(device_id).describe()
    return view


@router.get("/{device_id}/history")
def device_history(
    device_id: str = DeviceIdPath,
    period: str | None = Query(None, max_length=16, description="24h, 7d, 30d or a month like 2026-11"),
    from_: str | None = Query(None, alias="from", max_length=40),
    to: str | None = Query(None, max_length=40),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> dict[str, Any]:
    """The device's state intervals in a window, with its rates: its uptime timeline."""
    i = hub.snapshots.index(device_id)
    try:
        start, end = window(period, from_, to, hub.clock(), hub.cfg.server.timezone)
    except BadTime as exc:
        raise HTTPException(422, str(exc)) from None
    with hub.sessions() as s:
        rows = s.scalars(
            select(StateInterval)
            .where(
                StateInterval.device_id == device_id,
                StateInterval.start_at < end,
                (StateInterval.end_at.is_(None)) | (StateInterval.end_at > start),
            )
            .order_by(StateInterval.start_at)
        ).all()
    av = hub.monitor.availability(start, end)
    return {
        "device_id": device_id,
        "from": iso(start),
        "to": iso(end),
        "figures": hub.monitor.device_figures(av, i),
        "intervals": [
            {
                "state": r.state,
                "from": iso(max(r.start_at, start)),
                "to": iso(min(r.end_at, end)) if r.end_at is not None else None,
            }
            for r in rows
        ],
    }
