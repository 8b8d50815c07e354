"""Video quality of a device: the defects raised now, their history, and each event's snapshot."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import FileResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select

from vms.api.deps import DeviceIdPath, get_hub, require
from vms.auth import READERS, Principal
from vms.db.models import QualityEvent
from vms.errors import Invalid, NotFound
from vms.hub import Hub
from vms.kernel.timeutil import BadTime, iso, window

router = APIRouter(prefix="/api/v1/devices", tags=["quality"])


class DefectOut(BaseModel):
    """A defect raised now."""

    check: str
    since: str
    value: float | None = Field(description="The check's metric when it was raised")
    normal: float | None = Field(None, description="The camera's learned normal of that metric; null when an "
                                 "absolute guard judged it (or the camera's agent reported the defect)")
    threshold: float | None = Field(None, description="The limit the metric crossed")
    snapshot_url: str | None


class QualityEventOut(BaseModel):
    """A defect raised or cleared; ``detail`` only when the event has one (the camera's ``normal`` and the
    ``threshold`` next to the metric ``value``, a ``reason``)."""

    id: int
    check: str
    state: str = Field(description="raised or cleared")
    at: str
    value: float | None
    snapshot_url: str | None
    detail: dict[str, Any] = Field(default_factory=dict)


class DeviceQuality(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    device_id: str
    analysis: bool = Field(description="Whether the hub's video-quality analysis is enabled")
    defects: list[DefectOut]
    from_: str | None = Field(alias="from")
    to: str | None
    events: list[QualityEventOut]


@router.get(
    "/{device_id}/quality",
    response_model=DeviceQuality,
    response_model_exclude_unset=True,  # an event without detail has no "detail" key
    responses={404: {"description": "unknown device"}},
)
def device_quality(
    device_id: str = DeviceIdPath,
    period: str | None = Query(None, max_length=16, description="24h, 7d, 30d or a month like 2026-11"),
    from_: str | None = Query(None, alias="from", max_length=40),
    to: str | None = Query(None, max_length=40),
    limit: int = Query(200, ge=1, le=5000),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> dict[str, Any]:
    """Quality defects raised now (metric, the camera's normal, threshold, snapshot) and raised/cleared
    events, newest first."""
    hub.snapshots.index(device_id)  # Invalid -> 422, UnknownDevice -> 404
    try:
        start, end = window(period or (None if from_ or to else "7d"), from_, to, hub.clock(), hub.cfg.server.timezone)
    except BadTime as exc:
        raise Invalid(str(exc)) from None
    with hub.sessions() as s:
        q = select(QualityEvent).where(QualityEvent.device_id == device_id, QualityEvent.at >= start)
        if to:  # open-ended otherwise: media time may run a little ahead of the hub's clock
            q = q.where(QualityEvent.at < end)
        rows = s.scalars(q.order_by(QualityEvent.at.desc(), QualityEvent.id.desc()).limit(limit)).all()
    book = hub.quality
    return {
        "device_id": device_id,
        "analysis": hub.cfg.analysis.enabled,
        "defects": [
            {
                "check": check,
                "since": iso(cur.since),
                "value": cur.value,
                "normal": cur.normal,
                "threshold": cur.threshold,
                "snapshot_url": book.snapshot_url(device_id, cur.event_id) if cur.snapshot and cur.event_id else None,
            }
            for check, cur in sorted(book.now(device_id).items())
        ],
        "from": iso(start),
        "to": iso(end),
        "events": [
            {
                "id": r.id,
                "check": r.check,
                "state": r.state,
                "at": iso(r.at),
                "value": r.value,
                "snapshot_url": book.snapshot_url(device_id, r.id) if r.snapshot else None,
                **({"detail": r.detail} if r.detail else {}),
            }
            for r in rows
        ],
    }


@router.get(
    "/{device_id}/quality/events/{event_id}/snapshot",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "The JPEG taken when the defect was raised"},
        404: {"description": "no such event, or it has no snapshot (any more)"},
    },
)
def event_snapshot(
    device_id: str = DeviceIdPath,
    event_id: int = Path(ge=1, le=2**62),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> FileResponse:
    """The JPEG taken when the defect was raised."""
    with hub.sessions() as s:
        row = s.get(QualityEvent, event_id)
    if row is None or row.device_id != device_id:
        raise NotFound(f"no quality event {event_id} for device {device_id}")
    if not row.snapshot:
        raise NotFound(f"quality event {event_id} has no snapshot")
    root = hub.cfg.storage.data_dir.resolve()
    path = (root / row.snapshot).resolve()
    if root not in path.parents or not path.is_file():
        raise NotFound(f"snapshot of quality event {event_id} is gone")
    return FileResponse(path, media_type="image/jpeg", filename=path.name)
