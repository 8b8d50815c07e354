"""Reports the center is assessed on: availability (online, upload, intact rates) per window.

The figures are ``vms/reports.py``'s; its refusals (``BadWindow`` 422, ``UnknownCenter`` 404) reach
the one handler.
"""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Query
from fastapi.responses import PlainTextResponse
from pydantic import BaseModel, ConfigDict, Field

from vms import reports
from vms.api.deps import get_hub, require
from vms.auth import READERS, Principal
from vms.hub import Hub

router = APIRouter(prefix="/api/v1/reports", tags=["reports"])

RATE = "Share of monitored time, 0-1; null when the window monitored nothing"


class CenterAvailability(BaseModel):
    center: str
    name: str
    level: int
    devices: int = Field(description="Devices in service")
    monitored_s: float
    unknown_s: float = Field(description="Monitored time with no record (hub down): counts against")
    online_s: float
    online_rate: float | None = Field(description=RATE)
    upload_rate: float | None = Field(description=RATE)
    intact_rate: float | None = Field(description=RATE)
    target_online: float
    target_upload: float
    target_intact: float


class DeviceAvailability(BaseModel):
    device_id: str
    name: str
    location: str
    centers: str = Field(description="Home centers, ';'-separated")
    state: str
    monitored_s: float
    unknown_s: float
    online_s: float
    online_rate: float | None = Field(description=RATE)
    upload_rate: float | None = Field(description=RATE)
    intact_rate: float | None = Field(description=RATE)


class AvailabilityReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    from_: str = Field(alias="from")
    to: str
    center: str | None
    centers: list[CenterAvailability] = Field(description="The center asked for (or all) and its sub-centers")
    devices: list[DeviceAvailability] = Field(description="Worst first (lowest online rate, then upload rate)")
    device_count: int = Field(description="Devices in scope, before the limit")


class CsvText(PlainTextResponse):
    media_type = "text/csv"


@router.get(
    "/availability",
    response_model=AvailabilityReport,
    responses={
        200: {
            "description": "The report: JSON, or with format=csv two tables (centers, a blank line, devices)",
            "content": {CsvText.media_type: {"schema": {"type": "string"}}},
        }
    },
)
def availability(
    center: str | None = Query(None, max_length=64),
    period: str | None = Query(None, max_length=16, description="1h, 24h, 7d, 30d or a month like 2026-11"),
    from_: str | None = Query(None, alias="from", max_length=40, description="RFC 3339 with zone, or Unix s"),
    to: str | None = Query(None, max_length=40),
    format: Literal["json", "csv"] = Query("json"),
    limit: int | None = Query(None, ge=1, le=1_000_000, description="At most this many devices (worst first)"),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> AvailabilityReport | CsvText:
    start, end = reports.report_window(period, from_, to, hub.clock(), hub.cfg.server.timezone)
    rep = reports.availability(hub.monitor, start, end, center, limit)
    if format == "csv":
        return CsvText(
            reports.to_csv(rep), headers={"Content-Disposition": 'attachment; filename="availability.csv"'}
        )
    return AvailabilityReport.model_validate(rep)
