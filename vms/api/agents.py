"""The agent side of the hub: registration and batched heartbeats (protocol v1)."""

from __future__ import annotations

import asyncio
import math
from typing import Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from vms.api.deps import get_hub, require
from vms.api.status import http_status
from vms.auth import READERS, Principal, Role
from vms.hub import Hub
from vms.kernel.protocol import (
    DEVICE_ID_PATTERN,
    CameraReport,
    CameraReportReply,
    Heartbeat,
    HeartbeatReply,
    Register,
    RegisterReply,
    SpoolStats,
)
from vms.kernel.timeutil import iso

router = APIRouter(prefix="/api/v1/agents", tags=["agents"])


class AgentOut(BaseModel):
    id: str
    online: bool
    devices: int = Field(description="Devices last reported by this agent")
    last_heartbeat: str | None
    clock_skew_s: float = Field(description="Hub clock minus agent clock at the last heartbeat")
    spool: SpoolStats | None = Field(description="The agent's store-and-forward spool, as last reported")


class AgentList(BaseModel):
    agents: list[AgentOut]


class SegmentReply(BaseModel):
    result: str = Field(
        description="stored, duplicate, bad_checksum, conflict, too_large, bad_range, disk_full or store_error"
    )
    detail: str
    segment_id: int | None


class SubSegmentReply(SegmentReply):
    stream: Literal["sub"]


@router.post("/register", response_model=RegisterReply)
def register(
    body: Register, hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.agent))
) -> RegisterReply:
    hub.heartbeats.register(who, body.protocol, body.version, body.hostname)  # HeartbeatRejected -> 426
    return RegisterReply(
        agent_id=who.name, prefixes=list(who.prefixes), heartbeat_interval_s=hub.cfg.health.heartbeat_interval_s
    )


@router.post("/heartbeat", response_model=HeartbeatReply)
def heartbeat(
    body: Heartbeat, hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.agent))
) -> HeartbeatReply:
    """Per-camera stats; devices outside the agent's prefixes are rejected one by one, not the batch."""
    return hub.heartbeats.heartbeat(who, body)  # HeartbeatRejected -> 426


@router.get("", response_model=AgentList)
def list_agents(hub: Hub = Depends(get_hub), _: Principal = Depends(require(*READERS))) -> AgentList:
    return AgentList(
        agents=[
            AgentOut(
                id=a.name,
                online=a.online,
                devices=a.devices,
                last_heartbeat=iso(a.last_seen) if math.isfinite(a.last_seen) else None,
                clock_skew_s=round(a.skew, 3),
                spool=a.spool,
            )
            for a in hub.registry.agent_statuses()
        ]
    )


SEGMENTS_PREFIX = "/api/v1/agents/segments/"


@router.put(
    "/segments/{device_id}",
    status_code=201,
    response_model=SegmentReply | SubSegmentReply,
    responses={
        200: {"model": SegmentReply | SubSegmentReply, "description": "already stored (same checksum)"},
        400: {"description": "checksum mismatch"},
        403: {"description": "device outside the agent's prefixes"},
        409: {"description": "different content stored"},
        413: {"description": "too large"},
        507: {"description": "hub storage full: keep it and retry later"},
    },
)
async def put_segment(
    request: Request,
    device_id: str = Path(pattern=DEVICE_ID_PATTERN),
    start: float = Query(ge=0, le=10_000_000_000, description="Unix seconds of the first packet (agent clock)"),
    duration: float = Query(gt=0, le=600),
    stream: Literal["main", "sub"] = Query(
        "main", description="sub: the camera's sub stream, kept only for live view (never indexed or recorded)"
    ),
    x_vms_sha256: str = Header(pattern=r"^[0-9a-fA-F]{64}$"),
    x_vms_sent_at: float | None = Header(None, ge=0, le=10_000_000_000),
    x_vms_motion_ratio: float | None = Header(None, ge=0, le=1, description="From an agent that analyses the camera"),
    hub: Hub = Depends(get_hub),
    who: Principal = Depends(require(Role.agent)),
) -> JSONResponse:
    """A relayed MPEG-TS segment (body), checksummed; stored atomically and indexed."""
    reason = await asyncio.to_thread(hub.registry.claim, who, device_id)
    if reason:
        raise HTTPException(403, reason)
    data = await request.body()
    if stream == "sub":
        sub = await asyncio.to_thread(
            hub.ingest.store_sub, device_id, start, duration, data, x_vms_sha256, x_vms_sent_at
        )
        return JSONResponse(
            {"result": sub.result.name.lower(), "detail": sub.message, "segment_id": sub.segment_id, "stream": "sub"},
            status_code=http_status(sub.result),
        )
    out = await asyncio.to_thread(
        hub.ingest.store, who.name, device_id, start, duration, data, x_vms_sha256, x_vms_sent_at, x_vms_motion_ratio
    )
    return JSONResponse(
        {"result": out.result.name.lower(), "detail": out.message, "segment_id": out.segment_id},
        status_code=http_status(out.result),
    )


@router.post("/cameras", response_model=CameraReportReply)
def report_cameras(
    body: CameraReport, hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.agent))
) -> CameraReportReply:
    """Cameras an agent has; per camera: accepted (relay it), pending (an admin decides) or rejected, with why."""
    return hub.acceptance.report(who, body)
