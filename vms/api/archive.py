"""The archive for police liaison and administrators: clips, exports, legal holds, search, storage.

Clips and exports are for ``police`` and ``admin`` only, and every one is audited twice: when it
is asked for (who, device, range, reason or case) and when bytes leave (how many, and the SHA-256
of exactly those bytes). An officer sees only their own exports (an admin sees all); a legal hold
is released only by the officer who placed it or an admin, with a reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import IO, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from fastapi.responses import FileResponse, Response, StreamingResponse
from pydantic import AliasChoices, BaseModel, ConfigDict, Field
from sqlalchemy import select
from starlette.background import BackgroundTask

from vms.api.deps import DeviceIdPath, get_hub, require
from vms.archive.clip import find_gaps, gaps_json, precheck
from vms.archive.exports import BuildError, ClipSlot, LiveExport
from vms.auth import READERS, Principal, Role
from vms.config import RetentionPolicy
from vms.db.models import Device, ExportJob, LegalHold, QualityEvent, Segment
from vms.errors import Conflict, DomainError, Invalid, NotFound
from vms.hub import Hub
from vms.kernel.protocol import DEVICE_ID_PATTERN
from vms.kernel.timeutil import BadTime, iso, parse_time, window

router = APIRouter(tags=["archive"])
LIAISON = (Role.police, Role.admin)
ExportIdPath = Path(pattern=r"^[0-9a-f]{32}$", description="Export job ID")
CHUNK = 1 << 20
#: At most this many gaps are listed in the ``X-VMS-Gaps`` header (all are in the manifest).
HEADER_GAPS = 50
_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
_MP4 = {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}
#: How long a streamed clip waits for its first byte before answering anyway.
FIRST_BYTE_S = 60.0
#: While a clip builds, whether its client is still there is checked this often (a build in a worker
#: process takes about a second for an hour of footage: a client gone is noticed well before its end).
DISCONNECT_CHECK_S = 0.25


class Gap(BaseModel):
    """A stretch of the range with no footage."""

    start: str
    end: str
    seconds: float


def _times(start: str, end: str) -> tuple[float, float]:
    try:
        s, e = parse_time(start, "start"), parse_time(end, "end")
    except BadTime as exc:
        raise Invalid(str(exc)) from None
    if e <= s:
        raise Invalid(f"end {iso(e)} must be after start {iso(s)}")
    return s, e


def _why(reason: str, case: str) -> None:
    if not reason.strip() and not case.strip():
        raise Invalid("state a reason or a case number: every clip is audited with it")


def _require_device(hub: Hub, device_id: str) -> None:
    with hub.sessions() as s:
        if s.get(Device, device_id) is None:
            raise NotFound(f"unknown device {device_id}")


def _failed(err: BuildError | None) -> Exception:
    """A build that ended without a clip, as the caller sees it: a refusal is a domain error, a fault a 500."""
    return err if isinstance(err, DomainError) else HTTPException(500, str(err))


# -- clips ---------------------------------------------------------------------------------------
@router.get(
    "/api/v1/devices/{device_id}/clip.mp4",
    response_model=None,
    response_class=StreamingResponse,
    responses={
        200: {"content": _MP4, "description": "Fragmented MP4, streamed while it is built"},
        206: {"content": _MP4, "description": "The byte range asked for (served once the clip is built)"},
        404: {"description": "unknown device, or nothing playable in the range"},
        416: {"description": "Range outside the clip, or malformed"},
        422: {"description": "impossible or too long a range, or neither reason nor case"},
        429: {"description": "archive.max_clips downloads in progress, or max_clips_per_user of the caller's: "
                             "retry after Retry-After seconds"},
        507: {"description": "not enough disk for the clip"},
    },
)
async def clip(
    request: Request,
    device_id: str = DeviceIdPath,
    start: str = Query(max_length=40, description="RFC 3339 with zone, or Unix seconds"),
    end: str = Query(max_length=40),
    reason: str = Query("", max_length=500),
    case: str = Query("", max_length=100, description="Case number"),
    hub: Hub = Depends(get_hub),
    who: Principal = Depends(require(*LIAISON)),
) -> Response:
    """A playable MP4 of the device's recordings from the keyframe at or before ``start`` to ``end``.

    Gaps are listed in ``X-VMS-Gaps`` (and the manifest, ``Link: rel=describedby``); ``Range`` is
    honoured. Ranges over an hour are export jobs (``POST /api/v1/exports``). A client that goes
    away stops the build.
    """
    s, e = _times(start, end)
    _why(reason, case)
    slot = hub.archive.clip_slot(who)  # Busy: 429
    handed = False
    try:
        run = hub.archive.exports.run
        plan = await run(hub.archive.plan, device_id, s, e, export=False)  # ClipError: its kind's status
        damaged = await run(precheck, plan, hub.archive.root)
        live = await run(hub.archive.start_clip, who, plan, reason, case, background=False)
        bad = {d.path for d in damaged}
        gaps = find_gaps([(p.start, p.end) for p in plan.pieces if p.path not in bad], s, e)
        headers = {
            "X-VMS-Export-Id": live.id,
            "X-VMS-Gaps": json.dumps(gaps_json(gaps[:HEADER_GAPS]), separators=(",", ":")),
            "X-VMS-Gaps-Count": str(len(gaps)),
            "Link": f'</api/v1/exports/{live.id}/manifest.json>; rel="describedby"',
            "Content-Disposition": f'attachment; filename="{device_id}_{int(s)}_{int(e)}.mp4"',
            "Accept-Ranges": "bytes",
        }
        ctx = _Served(hub, who, live.id, device_id, s, e, reason, case)
        if request.headers.get("range"):
            if not await _until(live, request, sys.maxsize):
                return _gone(ctx)
            if live.error is not None or live.result is None:
                raise _failed(live.error)
            response = await _serve_file(live.final, request.headers["range"], ctx, live.result.sha256, headers, slot)
        else:
            if not await _until(live, request, 0, FIRST_BYTE_S):
                return _gone(ctx)
            if live.finished and live.error is not None and live.written == 0:
                raise _failed(live.error)
            response = StreamingResponse(_follow(live, ctx, slot), media_type="video/mp4", headers=headers,
                                         background=BackgroundTask(_ended, live, slot))
        handed = True
        return response
    finally:
        if not handed:
            slot.release()


async def _until(live: LiveExport, request: Request, beyond: int, limit: float | None = None) -> bool:
    """Wait for the builder (on the event loop, holding no thread) until more than ``beyond`` bytes are
    written or the build ends, or ``limit`` seconds; False if the client went away meanwhile (the build
    is then cancelled)."""
    loop = asyncio.get_running_loop()
    deadline = None if limit is None else loop.time() + limit
    while not (live.finished or live.written > beyond):
        left = DISCONNECT_CHECK_S if deadline is None else min(DISCONNECT_CHECK_S, deadline - loop.time())
        if left <= 0:
            break
        written, finished = await live.progress(beyond, left)
        if not (finished or written > beyond) and await request.is_disconnected():
            live.cancel("the client went away before the clip was ready")
            return False
    return True


def _gone(ctx: _Served) -> Response:
    """The answer to a client that left while its clip was being built: nobody reads it, but the
    audit says that nothing was handed over."""
    ctx.hub.archive.exports.submit(ctx.record, 0, hashlib.sha256().hexdigest(), False, None, None,
                                   "client went away before the clip was ready")
    return Response(status_code=499)


def _ended(live: LiveExport, slot: ClipSlot) -> None:
    """After a streamed clip's response, however it ended: its build stops if it still runs (nobody
    reads it any more) and its slot is given back."""
    live.cancel("the client went away")
    slot.release()


class _Served:
    """What a response is serving, so that its audit row can be written when it ends."""

    def __init__(
        self, hub: Hub, who: Principal, job_id: str, device_id: str, start: float, end: float, reason: str, case: str
    ) -> None:
        self.hub, self.who, self.job_id, self.device_id = hub, who, job_id, device_id
        self.start, self.end, self.reason, self.case = start, end, reason, case

    def record(
        self, sent: int, sha: str, complete: bool, byte_range: str | None, file_sha: str | None, error: str | None
    ) -> None:
        """Blocking (a store write): called through ``Exports.run`` or ``Exports.submit``, never on the loop."""
        self.hub.archive.record_served(
            self.who,
            self.job_id,
            self.device_id,
            self.start,
            self.end,
            self.reason,
            self.case,
            sent=sent,
            sha256=sha,
            complete=complete,
            byte_range=byte_range,
            file_sha256=file_sha,
            error=error,
        )


def _read(f: IO[bytes], h: Any, n: int = -1) -> bytes:
    """Read up to ``n`` bytes (all with -1) and hash them, in a clip thread."""
    chunk = f.read(n)
    h.update(chunk)
    return chunk


async def _follow(live: LiveExport, ctx: _Served, slot: ClipSlot) -> AsyncIterator[bytes]:
    """The clip file as the builder writes it; the audit row is written when the response ends, and a
    client that leaves early stops the build."""
    exports = ctx.hub.archive.exports
    h = hashlib.sha256()
    sent, complete, error = 0, False, None
    f: IO[bytes] | None = None
    try:
        f = await exports.run(live.open_reader)
        while True:
            chunk = await exports.run(_read, f, h, CHUNK)
            if chunk:
                sent += len(chunk)
                await exports.pace.turn(len(chunk))
                yield chunk
                continue
            written, finished = await live.progress(sent, 5.0)
            if finished and written <= sent:
                rest = await exports.run(_read, f, h)
                if rest:
                    sent += len(rest)
                    await exports.pace.turn(len(rest))
                    yield rest
                if live.error is not None:
                    error = str(live.error)
                    raise RuntimeError(f"clip {live.id} failed after {sent} bytes: {error}")
                complete = True
                break
    finally:
        # No await here: a response torn down by a disconnect is being cancelled.
        if f is not None:
            f.close()
        if not complete:
            live.cancel("the client went away")
        file_sha = live.result.sha256 if live.result else None
        exports.submit(ctx.record, sent, h.hexdigest(), complete, None, file_sha,
                       error or (None if complete else "client went away"))
        slot.release()


async def _serve_file(
    path: Any, range_header: str | None, ctx: _Served, file_sha: str | None, headers: dict[str, str], slot: ClipSlot
) -> Response:
    """The finished file, whole or one byte range (several ranges: the whole file, as RFC 9110 allows)."""
    exports = ctx.hub.archive.exports
    size = (await exports.run(path.stat)).st_size
    first, last, status = 0, size - 1, 200
    m = _RANGE.match(range_header.strip()) if range_header and "," not in range_header else None
    if range_header and "," not in range_header:
        if m is None or (not m.group(1) and not m.group(2)):
            raise HTTPException(416, f"malformed Range {range_header!r}", headers={"Content-Range": f"bytes */{size}"})
        if m.group(1):
            first = int(m.group(1))
            last = min(int(m.group(2)), size - 1) if m.group(2) else size - 1
        else:
            first = max(size - int(m.group(2)), 0)
        if first >= size or first > last:
            raise HTTPException(
                416, f"range outside the {size}-byte clip", headers={"Content-Range": f"bytes */{size}"}
            )
        status = 206
    out_headers = {**headers, "Content-Length": str(last - first + 1)}
    if status == 206:
        out_headers["Content-Range"] = f"bytes {first}-{last}/{size}"
    label = f"bytes={first}-{last}" if status == 206 else None

    def opened() -> IO[bytes]:
        f = open(path, "rb")  # noqa: SIM115 - closed by body()
        f.seek(first)
        return f

    async def body() -> AsyncIterator[bytes]:
        h = hashlib.sha256()
        sent = 0
        complete = False
        f: IO[bytes] | None = None
        try:
            f = await exports.run(opened)
            left = last - first + 1
            while left > 0:
                chunk = await exports.run(_read, f, h, min(CHUNK, left))
                if not chunk:
                    break
                left -= len(chunk)
                sent += len(chunk)
                if left == 0:
                    complete = True
                    await exports.run(ctx.record, sent, h.hexdigest(), True, label, file_sha, None)
                await exports.pace.turn(len(chunk))
                yield chunk
        finally:
            # No await here: a response torn down by a disconnect is being cancelled.
            if f is not None:
                f.close()
            if not complete:
                exports.submit(ctx.record, sent, h.hexdigest(), False, label, file_sha, "client went away")
            slot.release()

    return StreamingResponse(body(), status_code=status, media_type="video/mp4", headers=out_headers,
                             background=BackgroundTask(slot.release))


# -- exports -------------------------------------------------------------------------------------
class ExportIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    start: str = Field(max_length=40)
    end: str = Field(max_length=40)
    reason: str = Field("", max_length=500)
    case: str = Field("", max_length=100)


class ExportGap(Gap):
    """A gap of a built clip; ``skipped`` (only then) says why a damaged segment left it."""

    skipped: str | None = None


class ExportOut(BaseModel):
    id: str
    device_id: str
    start: str
    end: str
    requested_by: str
    reason: str
    case: str
    status: Literal["queued", "running", "done", "failed", "expired"]
    progress: float = Field(description="0 to 1")
    bytes: int | None
    sha256: str | None
    gaps: list[ExportGap]
    error: str | None
    created_at: str
    finished_at: str | None
    download: str | None = Field(description="The clip's URL once the export is done")
    manifest: str | None = Field(description="The manifest's URL once the export is done")


def export_view(r: ExportJob) -> ExportOut:
    return ExportOut.model_validate(
        {
            "id": r.id,
            "device_id": r.device_id,
            "start": iso(r.start_at),
            "end": iso(r.end_at),
            "requested_by": r.requested_by,
            "reason": r.reason,
            "case": r.case_number,
            "status": r.status,
            "progress": r.progress,
            "bytes": r.bytes,
            "sha256": r.sha256,
            "gaps": r.gaps,
            "error": r.error or None,
            "created_at": iso(r.created_at),
            "finished_at": iso(r.finished_at),
            "download": f"/api/v1/exports/{r.id}/clip.mp4" if r.status == "done" else None,
            "manifest": f"/api/v1/exports/{r.id}/manifest.json" if r.status == "done" else None,
        }
    )


@router.post(
    "/api/v1/exports",
    status_code=202,
    response_model=ExportOut,
    responses={
        404: {"description": "unknown device, or no recordings in the range"},
        422: {"description": "impossible or too long a range, or neither reason nor case"},
        429: {"description": "archive.max_queued_exports exports waiting or building: retry after Retry-After"},
        507: {"description": "not enough disk for the clip"},
    },
    response_model_exclude_unset=True,  # a gap has "skipped" only where a damaged segment made it
)
async def create_export(
    body: ExportIn, hub: Hub = Depends(get_hub), who: Principal = Depends(require(*LIAISON))
) -> ExportOut:
    """Build a clip of up to a day in the background; poll it, then download it (with Range)."""
    s, e = _times(body.start, body.end)
    _why(body.reason, body.case)
    run = hub.archive.exports.run
    plan = await run(hub.archive.plan, body.device_id, s, e, export=True)  # ClipError: its kind's status
    live = await run(hub.archive.start_clip, who, plan, body.reason, body.case, background=True)  # Busy: 429
    return export_view(await run(hub.archive.export_job, who, live.id))


@router.get("/api/v1/exports", response_model=list[ExportOut], response_model_exclude_unset=True)
def list_exports(
    device_id: str | None = Query(None, pattern=DEVICE_ID_PATTERN),
    limit: int = Query(100, ge=1, le=1000),
    hub: Hub = Depends(get_hub),
    who: Principal = Depends(require(*LIAISON)),
) -> list[ExportOut]:
    """The caller's own exports, newest first (an admin's: everyone's)."""
    return [export_view(r) for r in hub.archive.export_jobs(who, device_id, limit)]


@router.get(
    "/api/v1/exports/{export_id}",
    response_model=ExportOut,
    responses={404: {"description": "no such export (or another officer's)"}},
    response_model_exclude_unset=True,
)
def get_export(
    export_id: str = ExportIdPath, hub: Hub = Depends(get_hub), who: Principal = Depends(require(*LIAISON))
) -> ExportOut:
    return export_view(hub.archive.export_job(who, export_id))


def _done(hub: Hub, who: Principal, export_id: str) -> ExportJob:
    row = hub.archive.export_job(who, export_id)  # NotFound for another officer's
    if row.status == "expired":
        raise HTTPException(410, f"export {export_id} expired; its file was removed")
    if row.status == "failed":
        raise Conflict(f"export {export_id} failed: {row.error}")
    if row.status != "done":
        raise Conflict(f"export {export_id} is {row.status} ({row.progress:.0%} done)")
    return row


_DONE_ONLY: dict[int | str, dict[str, Any]] = {
    404: {"description": "no such export (or another officer's)"},
    409: {"description": "the export failed or is not done yet"},
    410: {"description": "the export expired: its file was removed"},
}


@router.get(
    "/api/v1/exports/{export_id}/clip.mp4",
    response_model=None,
    response_class=StreamingResponse,
    responses={
        200: {"content": _MP4, "description": "The finished clip"},
        206: {"content": _MP4, "description": "The byte range asked for"},
        **_DONE_ONLY,
        416: {"description": "Range outside the clip, or malformed"},
        429: {"description": "archive.max_clips downloads in progress, or max_clips_per_user of the caller's"},
    },
)
async def download_export(
    request: Request,
    export_id: str = ExportIdPath,
    hub: Hub = Depends(get_hub),
    who: Principal = Depends(require(*LIAISON)),
) -> Response:
    row = await hub.archive.exports.run(_done, hub, who, export_id)
    ctx = _Served(hub, who, row.id, row.device_id, row.start_at, row.end_at, row.reason, row.case_number)
    headers = {
        "Accept-Ranges": "bytes",
        "Link": f'</api/v1/exports/{row.id}/manifest.json>; rel="describedby"',
        "Content-Disposition": f'attachment; filename="{row.device_id}_{int(row.start_at)}_{int(row.end_at)}.mp4"',
    }
    slot = hub.archive.clip_slot(who)  # Busy: 429
    handed = False
    try:
        response = await _serve_file(
            hub.archive.exports.path_of(row.id), request.headers.get("range"), ctx, row.sha256, headers, slot
        )
        handed = True
        return response
    finally:
        if not handed:
            slot.release()


@router.get(
    "/api/v1/exports/{export_id}/manifest.json",
    response_model=None,
    response_class=FileResponse,
    responses={200: {"content": {"application/json": {}}, "description": "The clip's JSON sidecar"}, **_DONE_ONLY},
)
def export_manifest(
    export_id: str = ExportIdPath, hub: Hub = Depends(get_hub), who: Principal = Depends(require(*LIAISON))
) -> Response:
    """The JSON sidecar: origin time, first and last frame, gaps, skipped segments, SHA-256."""
    _done(hub, who, export_id)
    return FileResponse(hub.archive.exports.manifest_path(export_id), media_type="application/json")


# -- legal holds ---------------------------------------------------------------------------------
class HoldIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device_id: str = Field(pattern=DEVICE_ID_PATTERN)
    start: str = Field(max_length=40)
    end: str = Field(max_length=40)
    case_number: str = Field(min_length=1, max_length=100)
    reason: str = Field("", max_length=2000)


class HoldOut(BaseModel):
    id: int
    device_id: str
    start: str
    end: str
    case_number: str
    reason: str
    created_by: str
    created_at: str
    released_at: str | None
    released_by: str | None
    release_reason: str | None = Field(description="Why it was released")
    active: bool = Field(description="Not released yet: retention keeps the footage")


class ReleaseIn(BaseModel):
    """Why a hold is released (``comment`` is accepted for the same field)."""

    model_config = ConfigDict(extra="forbid")
    reason: str = Field(min_length=1, max_length=2000, validation_alias=AliasChoices("reason", "comment"))


def hold_view(h: LegalHold) -> HoldOut:
    return HoldOut.model_validate(
        {
            "id": h.id,
            "device_id": h.device_id,
            "start": iso(h.start_at),
            "end": iso(h.end_at),
            "case_number": h.case_number,
            "reason": h.reason,
            "created_by": h.created_by,
            "created_at": iso(h.created_at),
            "released_at": iso(h.released_at),
            "released_by": h.released_by,
            "release_reason": h.release_reason,
            "active": h.released_at is None,
        }
    )


@router.post(
    "/api/v1/holds", status_code=201, response_model=HoldOut, responses={
        404: {"description": "unknown device"},
        422: {"description": "impossible range, or longer than archive.max_hold_days"},
    }
)
def create_hold(
    body: HoldIn, hub: Hub = Depends(get_hub), who: Principal = Depends(require(*LIAISON))
) -> HoldOut:
    """Keep a device's footage in a range (at most ``archive.max_hold_days``) for a case; retention
    never deletes it until released."""
    s, e = _times(body.start, body.end)
    _require_device(hub, body.device_id)
    return hold_view(hub.archive.add_hold(who, body.device_id, s, e, body.case_number.strip(), body.reason))


@router.get("/api/v1/holds", response_model=list[HoldOut])
def list_holds(
    device_id: str | None = Query(None, pattern=DEVICE_ID_PATTERN),
    active: bool = Query(True, description="Only holds not yet released"),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*LIAISON)),
) -> list[HoldOut]:
    q = select(LegalHold).order_by(LegalHold.created_at)
    if device_id:
        q = q.where(LegalHold.device_id == device_id)
    if active:
        q = q.where(LegalHold.released_at.is_(None))
    with hub.sessions() as s:
        return [hold_view(h) for h in s.scalars(q)]


@router.post(
    "/api/v1/holds/{hold_id}/release",
    response_model=HoldOut,
    responses={
        403: {"description": "placed by another officer: only they or an admin release it"},
        404: {"description": "no such hold"},
        409: {"description": "released already"},
        422: {"description": "no reason given"},
    },
)
def release_hold(
    body: ReleaseIn,
    hold_id: int = Path(ge=1, le=2**62),
    hub: Hub = Depends(get_hub),
    who: Principal = Depends(require(*LIAISON)),
) -> HoldOut:
    """End a hold, saying why (audited); its footage ages out as usual from then on."""
    return hold_view(hub.archive.release_hold(who, hold_id, body.reason))


# -- search --------------------------------------------------------------------------------------
class SegmentOut(BaseModel):
    start: str
    end: str
    bytes: int
    motion: float | None = Field(description="Peak share of the picture in motion (None: not analysed)")


class QualityMark(BaseModel):
    at: str
    check: str
    state: str = Field(description="raised or cleared")
    value: float | None


class Recordings(BaseModel):
    device_id: str
    start: str
    end: str
    segments_total: int
    recorded_s: float
    segments: list[SegmentOut]
    truncated: bool = Field(description="More segments matched than ``limit``")
    gaps: list[Gap]
    quality_events: list[QualityMark]
    holds: list[HoldOut] = Field(description="Active legal holds overlapping the range")
    elsewhere: list[Gap] | None = Field(
        None, description="A lower platform's camera (a town's, seen at the district): what that platform recorded "
        "in the range (its RecordInfo), fetched into this archive when a clip of it is pulled; null for this "
        "center's own cameras, or when the platform did not answer within 5 s (see elsewhere_note)")
    elsewhere_note: str | None = Field(None, description="Which platform keeps the camera's footage, or why its "
                                       "recordings are not listed")


@router.get("/api/v1/devices/{device_id}/recordings", response_model=Recordings,
            responses={404: {"description": "unknown device"}})
def recordings(
    device_id: str = DeviceIdPath,
    start: str = Query(max_length=40),
    end: str = Query(max_length=40),
    min_motion: float | None = Query(None, ge=0, le=1, description="Only segments with at least this motion"),
    limit: int = Query(2000, ge=1, le=20000),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*LIAISON)),
) -> dict[str, Any]:
    """The device's segments in a range with motion and quality markers, and the gaps between them."""
    s, e = _times(start, end)
    if e - s > 400 * 86400:
        raise Invalid("range longer than 400 days")
    _require_device(hub, device_id)
    with hub.sessions() as ss:
        q = (
            select(Segment.start_at, Segment.end_at, Segment.bytes, Segment.motion_ratio)
            .where(
                Segment.device_id == device_id,
                Segment.deleting.is_(False),
                Segment.end_at > s,
                Segment.start_at < e,
            )
            .order_by(Segment.start_at)
        )
        rows = ss.execute(q).all()
        events = ss.scalars(
            select(QualityEvent)
            .where(QualityEvent.device_id == device_id, QualityEvent.at >= s, QualityEvent.at < e)
            .order_by(QualityEvent.at)
            .limit(limit)
        ).all()
        holds = ss.scalars(
            select(LegalHold).where(
                LegalHold.device_id == device_id,
                LegalHold.released_at.is_(None),
                LegalHold.end_at > s,
                LegalHold.start_at < e,
            )
        ).all()
    gaps = find_gaps([(a, b) for a, b, _, _ in rows], s, e)
    shown = [r for r in rows if min_motion is None or (r[3] is not None and r[3] >= min_motion)]
    remote = hub.gb28181.recorded_elsewhere(device_id, s, e) if hub.gb28181 is not None else None
    elsewhere, note = None, None
    if remote is not None:
        platform, spans = remote
        note = (f"kept at the lower platform {platform}; a clip fetches it" if spans is not None
                else f"kept at the lower platform {platform}, which did not answer for its recordings")
        elsewhere = None if spans is None else [{"start": iso(a), "end": iso(b), "seconds": round(b - a, 3)}
                                                for a, b in spans]
    return {
        "elsewhere": elsewhere,
        "elsewhere_note": note,
        "device_id": device_id,
        "start": iso(s),
        "end": iso(e),
        "segments_total": len(rows),
        "recorded_s": round(sum(min(b, e) - max(a, s) for a, b, _, _ in rows), 3),
        "segments": [{"start": iso(a), "end": iso(b), "bytes": n, "motion": m} for a, b, n, m in shown[:limit]],
        "truncated": len(shown) > limit,
        "gaps": gaps_json(gaps),
        "quality_events": [{"at": iso(q.at), "check": q.check, "state": q.state, "value": q.value} for q in events],
        "holds": [hold_view(h) for h in holds],
    }


# -- storage and compliance ----------------------------------------------------------------------
class DeviceBytes(BaseModel):
    device_id: str
    bytes: int
    hours: float
    oldest: str | None
    newest: str | None
    completeness: float | None = Field(description="Recorded / expected seconds over the window (0 to 1)")


class CenterBytes(BaseModel):
    center: str
    name: str
    bytes: int
    hours: float
    devices: list[DeviceBytes] = Field(description="Least complete first")


class PassOut(BaseModel):
    """A retention pass (``vms/archive/retention.py`` ``PassReport``, every field of it)."""

    model_config = ConfigDict(extra="forbid")
    at: float
    deleted_segments: int
    deleted_bytes: int
    by_reason: dict[str, int] = Field(description="Deleted per reason: age, device_quota, center_quota, emergency")
    held_skipped: int = Field(description="Segments kept because a legal hold covers them")
    emergency: bool = Field(description="Free space was under retention.emergency_free_bytes")
    free_bytes_before: int
    free_bytes_after: int
    seconds: float


class Storage(BaseModel):
    window_s: float = Field(description="retention.accounting_window_s")
    free_bytes: int
    last_pass: PassOut | None = Field(description="The last retention pass (None before the first)")
    centers: list[CenterBytes]


class DeviceCompliance(BaseModel):
    device_id: str
    keep_days: int
    policy_source: str = Field(description="device:ID, center:ID or default")
    footage_days: float
    recorded_hours: float
    oldest: str | None
    meets_retention: bool
    status: Literal["compliant", "policy_below_30_days", "no_footage", "short"]


class CenterCompliance(BaseModel):
    center: str
    name: str
    devices: int
    meeting_retention: int
    ratio: float | None = Field(description="meeting_retention / devices (None without devices)")
    device_rows: list[DeviceCompliance]


class Compliance(BaseModel):
    at: str
    regulation_days: int
    centers: list[CenterCompliance]


class Window(BaseModel):
    start: str
    end: str
    expected_s: float


class RetentionOut(RetentionPolicy):
    """The device's retention policy, and where it comes from."""

    model_config = ConfigDict(json_schema_serialization_defaults_required=True)  # always sent

    source: str = Field(description="device:ID, center:ID or default")


class DeviceStorage(BaseModel):
    device_id: str
    bytes: int
    segments: int
    hours: float
    oldest: str | None
    newest: str | None
    window: Window
    recorded_s: float
    completeness: float | None = Field(description="recorded_s / window.expected_s (None for an empty window)")
    gaps: list[Gap]
    retention: RetentionOut


@router.get("/api/v1/storage", response_model=Storage, responses={404: {"description": "unknown center"}})
def storage(
    center: str | None = Query(None, max_length=64),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> dict[str, Any]:
    """Bytes, hours, completeness (over ``retention.accounting_window_s``), oldest and newest per device."""
    return hub.archive.storage(center, hub.clock())  # UnknownCenter: 404


@router.get(
    "/api/v1/storage/compliance", response_model=Compliance, responses={404: {"description": "unknown center"}}
)
def compliance(
    center: str | None = Query(None, max_length=64),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> dict[str, Any]:
    """Per center: devices meeting their retention days (30 by regulation) and their actual footage."""
    return hub.archive.compliance(center, hub.clock())  # UnknownCenter: 404


@router.get(
    "/api/v1/devices/{device_id}/storage",
    response_model=DeviceStorage,
    responses={404: {"description": "unknown device"}},
)
def device_storage(
    device_id: str = DeviceIdPath,
    period: str | None = Query(None, max_length=16, description="1h, 24h, 7d, 30d or a month like 2026-11"),
    from_: str | None = Query(None, alias="from", max_length=40),
    to: str | None = Query(None, max_length=40),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> dict[str, Any]:
    """One device's storage and recording completeness for a window, with every gap listed."""
    try:
        s, e = window(period, from_, to, hub.clock(), hub.cfg.server.timezone)
    except BadTime as exc:
        raise Invalid(str(exc)) from None
    _require_device(hub, device_id)
    return hub.archive.device_storage(device_id, s, e)


@router.post("/api/v1/storage/retention/run", response_model=PassOut)
async def run_retention(hub: Hub = Depends(get_hub), _: Principal = Depends(require(Role.admin))) -> dict[str, Any]:
    """Run a retention pass now (it also runs every ``retention.interval_s``)."""
    return asdict(await asyncio.to_thread(hub.archive.run_pass))
