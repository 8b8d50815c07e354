"""Devices: the registry with live state, one device's detail, and its state history."""

from __future__ import annotations

import math
from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from vms import audit
from vms.api.deps import DeviceIdPath, get_hub, require
from vms.auth import READERS, Principal, Role
from vms.centers import UnknownCenter
from vms.db.models import StateInterval
from vms.health import defect_names
from vms.hub import Hub
from vms.kernel import ids
from vms.kernel.protocol import DEVICE_ID_PATTERN
from vms.kernel.timeutil import BadTime, iso, window

router = APIRouter(prefix="/api/v1/devices", tags=["devices"])
State = Literal["offline", "degraded", "uploading", "online", "unknown", "retired"]


class DeviceOut(BaseModel):
    id: str
    name: str
    location: str
    state: State
    since: str | None
    centers: list[str]
    agent: str | None
    last_seen: str | None
    fps: float
    bitrate_bps: float
    reconnects: int
    defects: list[str]


class DeviceList(BaseModel):
    total: int
    devices: list[DeviceOut]


class DeviceIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=DEVICE_ID_PATTERN)
    name: str = Field("", max_length=200)
    location: str = Field("", max_length=200)
    center: str | None = Field(None, max_length=64)


def device_view(hub: Hub, i: int) -> DeviceOut:
    h = hub.health
    inf = hub.registry.info[i]
    a = int(h.agent[i])
    last = float(h.last_signal[i])
    return DeviceOut(
        id=h.ids[i],
        name=inf.name,
        location=inf.location,
        state=h.state_of(i),
        since=iso(float(h.open_start[i])) if h.known[i] else None,
        centers=list(inf.homes),
        agent=hub.registry.agent_name(a) if a >= 0 else None,
        last_seen=iso(last) if math.isfinite(last) else None,
        fps=float(h.fps[i]),
        bitrate_bps=float(h.bitrate[i]),
        reconnects=int(h.reconnects[i]),
        defects=defect_names(int(h.defects[i])),
    )


def _index(hub: Hub, device_id: str) -> int:
    i = hub.health.index.get(device_id)
    if i is None:
        try:
            ids.parse(device_id)
        except ids.InvalidDeviceId as exc:
            raise HTTPException(422, f"invalid device ID: {exc}") from None
        raise HTTPException(404, f"unknown device {device_id}")
    return i


@router.get("", response_model=DeviceList)
def list_devices(
    center: str | None = Query(None, max_length=64, description="Only devices counted in this center"),
    state: State | None = Query(None),
    limit: int = Query(500, ge=1, le=10000),
    offset: int = Query(0, ge=0, le=10_000_000),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> DeviceList:
    with hub.registry.lock:
        if center is not None:
            try:
                hub.tree.get(center)
            except UnknownCenter as exc:
                raise HTTPException(404, str(exc)) from None
            pool = [int(x) for x in hub.registry.member_indices(center)]
        else:
            pool = list(range(hub.health.n))
        if state is not None:
            pool = [i for i in pool if hub.health.state_of(i) == state]
        page = [device_view(hub, i) for i in pool[offset : offset + limit]]
    return DeviceList(total=len(pool), devices=page)


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
    with hub.registry.lock:
        return device_view(hub, hub.health.index[body.id])


@router.get("/{device_id}")
def get_device(
    device_id: str = DeviceIdPath, hub: Hub = Depends(get_hub), _: Principal = Depends(require(*READERS))
) -> dict[str, Any]:
    with hub.registry.lock:
        i = _index(hub, device_id)
        view = device_view(hub, i).model_dump()
        now = hub.clock()
        av = {k: hub.health.availability(now - s, now, now) for k, s in (("24h", 86400), ("7d", 7 * 86400))}
        view["availability"] = {k: hub.monitor.device_figures(a, i) for k, a in av.items()}
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
    with hub.registry.lock:
        i = _index(hub, device_id)
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
