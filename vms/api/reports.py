"""Reports the center is assessed on: availability (online, upload, intact rates) per window."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import PlainTextResponse

from vms import reports
from vms.api.deps import get_hub, require
from vms.auth import READERS, Principal
from vms.centers import UnknownCenter
from vms.hub import Hub
from vms.kernel.timeutil import BadTime, window

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])


@router.get("/availability", response_model=None)
def availability(
    center: str | None = Query(None, max_length=64),
    period: str | None = Query(None, max_length=16, description="1h, 24h, 7d, 30d or a month like 2026-11"),
    from_: str | None = Query(None, alias="from", max_length=40, description="RFC 3339 with zone, or Unix s"),
    to: str | None = Query(None, max_length=40),
    format: Literal["json", "csv"] = Query("json"),
    limit: int | None = Query(None, ge=1, le=1_000_000, description="At most this many devices (worst first)"),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> dict[str, Any] | PlainTextResponse:
    try:
        start, end = window(period, from_, to, hub.clock(), hub.cfg.server.timezone)
        rep = reports.availability(hub.monitor, start, end, center, limit)
    except BadTime as exc:
        raise HTTPException(422, str(exc)) from None
    except UnknownCenter as exc:
        raise HTTPException(404, str(exc)) from None
    if format == "csv":
        return PlainTextResponse(
            reports.to_csv(rep),
            media_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="availability.csv"'},
        )
    return rep
