"""The agent side of the hub: registration and batched heartbeats (protocol v1)."""

from __future__ import annotations

import math
from typing import Literal

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from vms.api.deps import get_hub, require
from vms.api.status import http_status
from vms.archive.store import Incoming, Outcome, Result
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
from vms.services.ingest import SegmentIngest

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


@router.post("/register", response_model=RegisterReply, responses={
    426: {"description": "protocol not supported"},
    429: {"description": "registered too often (6 a minute): retry after Retry-After seconds"},
})
def register(
    body: Register, hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.agent))
) -> RegisterReply:
    """An agent (re)starts; recorded and audited, at most a few times a minute per agent."""
    hub.heartbeats.register(who, body.protocol, body.version, body.hostname)  # HeartbeatRejected 426, Busy 429
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
#: Body pieces gathered before one worker-thread write into the upload's temporary file (hash + write).
UPLOAD_WRITE_BYTES = 1 << 20
#: Seconds an agent over its upload limit is asked to wait (its uplink backs off on 429 anyway).
BUSY_RETRY_AFTER_S = 1


def _segment_reply(out: Outcome, sub: bool) -> JSONResponse:
    body: dict[str, object] = {"result": out.result.name.lower(), "detail": out.message, "segment_id": out.segment_id}
    if sub:
        body["stream"] = "sub"
    return JSONResponse(body, status_code=http_status(out.result))


def _declared_length(request: Request) -> int | None:
    try:
        return int(request.headers["content-length"])
    except (KeyError, ValueError):
        return None


async def _receive_into(request: Request, body: Incoming, limit: int, ingest: SegmentIngest) -> bool:
    """Stream the request body into ``body`` (written and hashed in the ingest's threads, about 1 MB at
    a time); False as soon as it is larger than ``limit`` (the rest is not read)."""
    pending: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if body.size + size > limit:
            return False
        pending.append(chunk)
        if size >= UPLOAD_WRITE_BYTES:
            await ingest.run(body.write, b"".join(pending))
            pending, size = [], 0
    if pending:
        await ingest.run(body.write, b"".join(pending))
    return True


async def _read_bounded(request: Request, limit: int) -> bytes | None:
    """The whole body if it is at most ``limit`` bytes, else None (the rest is not read)."""
    buf = bytearray()
    async for chunk in request.stream():
        buf += chunk
        if len(buf) > limit:
            return None
    return bytes(buf)


@router.put(
    "/segments/{device_id}",
    status_code=201,
    response_model=SegmentReply | SubSegmentReply,
    responses={
        200: {"model": SegmentReply | SubSegmentReply, "description": "already stored (same checksum)"},
        400: {"description": "checksum mismatch"},
        403: {"description": "device outside the agent's prefixes"},
        409: {"description": "different content stored"},
        413: {"description": "too large (from Content-Length, before the body is read)"},
        422: {"description": "duration out of range, or a start beyond the clock-skew bound in the future"},
        429: {"description": "the agent has archive.max_uploads_per_agent uploads in progress: retry after "
                             "Retry-After seconds"},
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
    """A relayed MPEG-TS segment (body), checksummed; streamed to disk while hashed, stored atomically and
    indexed, and answered 201 only once its index row is committed durably."""
    reason = await hub.ingest.run(hub.registry.claim, who, device_id)
    if reason:
        raise HTTPException(403, reason)
    sub = stream == "sub"
    limit, limit_name = (
        (hub.cfg.live.sub_max_segment_bytes, "live.sub_max_segment_bytes") if sub
        else (hub.cfg.archive.max_segment_bytes, "max_segment_bytes")
    )
    declared = _declared_length(request)
    if declared is not None and declared > limit:
        return _segment_reply(Outcome(Result.TOO_LARGE, f"{declared} bytes > {limit_name} {limit}"), sub)
    too_large = Outcome(Result.TOO_LARGE, f"more than {limit_name} {limit} bytes")
    with hub.ingest.upload_slot(who.name) as ok:
        if not ok:
            raise HTTPException(
                429, f"agent {who.name} has {hub.cfg.archive.max_uploads_per_agent} segment uploads in progress "
                "(archive.max_uploads_per_agent); retry later", headers={"Retry-After": str(BUSY_RETRY_AFTER_S)},
            )
        if sub:
            data = await _read_bounded(request, limit)
            if data is None:
                return _segment_reply(too_large, sub)
            out = await hub.ingest.run(
                hub.ingest.store_sub, device_id, start, duration, data, x_vms_sha256, x_vms_sent_at
            )
            return _segment_reply(out, sub)
        try:
            body = await hub.ingest.run(hub.ingest.receive)
        except OSError as exc:
            return _segment_reply(Outcome.write_failed(exc), sub)
        handed = False
        try:
            try:
                if not await _receive_into(request, body, limit, hub.ingest):
                    return _segment_reply(too_large, sub)
            except OSError as exc:
                return _segment_reply(Outcome.write_failed(exc), sub)
            handed = True  # from here the store moves the file into place or removes it
            out = await hub.ingest.run(
                hub.ingest.store_file, who.name, device_id, start, duration, body, x_vms_sha256, x_vms_sent_at,
                x_vms_motion_ratio,
            )
        finally:
            if not handed:
                body.discard()  # too large, a write error or the client gone: nothing was stored
        return _segment_reply(out, sub)


@router.post("/cameras", response_model=CameraReportReply)
def report_cameras(
    body: CameraReport, hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.agent))
) -> CameraReportReply:
    """Cameras an agent has; per camera: accepted (relay it), pending (an admin decides) or rejected, with why."""
    return hub.acceptance.report(who, body)
