"""Sites, coverage and the map: the places a center must cover, who covers them, and the blind spots.

The service is ``hub.coverage`` (``vms/services/coverage.py``), the math ``vms/sites.py``. Readers see
everything; only an admin edits sites, imports them (GeoJSON or CSV) and places cameras, each audited.
A refusal (bad coordinates or GeoJSON 422, a config site 409, an unknown site 404) reaches the one handler.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from vms import reports
from vms.api.deps import DeviceIdPath, get_hub, require
from vms.api.reports import CsvText
from vms.auth import READERS, Principal, Role
from vms.hub import Hub
from vms.sites import MAX_POLYGON_POINTS, MAX_RADIUS_M, SITE_ID, GeoError, SiteKind

router = APIRouter(prefix="/api/v1", tags=["sites"])

RATE = "Covered time / monitored time of its sites (time-weighted), 0-1; null when nothing was monitored"


class SiteIn(BaseModel):
    """A site: a point (lon, lat) or a polygon (closed: the last position repeats the first), or a
    GeoJSON geometry (Point, Polygon, MultiPolygon)."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    kind: str = Field(max_length=32, description="A kind (school, hospital, ...) or its Chinese name (学校, ...)")
    center: str = Field(max_length=64)
    lon: float | None = None
    lat: float | None = None
    polygon: list[list[float]] | None = Field(None, max_length=MAX_POLYGON_POINTS)
    geometry: dict[str, Any] | None = None
    min_cameras: int = Field(1, ge=1, le=100)
    radius_m: float = Field(50.0, ge=0, le=MAX_RADIUS_M)


class SiteOut(BaseModel):
    id: str
    name: str
    kind: SiteKind
    center: str
    lon: float = Field(description="The point, or the polygon's centroid")
    lat: float
    geometry: dict[str, Any] = Field(description="GeoJSON geometry, [lon, lat] order")
    min_cameras: int
    radius_m: float
    key: bool = Field(description="A kind with a 100% target: left uncovered it raises a site_uncovered alert")
    target: float
    source: Literal["config", "api"]
    created_at: str | None = Field(description="Coverage counts from here")
    working: int = Field(description="Cameras covering it that are online and intact now")
    covered: bool
    since: str | None = Field(description="Uncovered since (null when covered)")
    for_s: float | None
    cameras: list[str] = Field(description="Cameras that cover it (explicitly or by position)")


class SiteList(BaseModel):
    total: int
    sites: list[SiteOut]


class Feature(BaseModel):
    type: Literal["Feature"] = "Feature"
    id: str
    geometry: dict[str, Any]
    properties: dict[str, Any]


class FeatureCollection(BaseModel):
    type: Literal["FeatureCollection"] = "FeatureCollection"
    features: list[Feature]


class Imported(BaseModel):
    imported: int
    created: int
    updated: int


class Deleted(BaseModel):
    deleted: str


class BlindSpot(BaseModel):
    id: str
    name: str
    kind: SiteKind
    center: str
    since: str | None = Field(description="Uncovered since")
    for_s: float
    min_cameras: int
    working: int | None = Field(description="Working cameras now (null for a window that ended in the past)")
    key: bool


class BlindSpots(BaseModel):
    total: int
    sites: list[BlindSpot] = Field(description="Uncovered now, longest first")


class KindCoverage(BaseModel):
    kind: SiteKind
    sites: int
    covered: int = Field(description="Sites covered at the end of the window")
    rate: float | None = Field(description=RATE)
    target: float
    meets_target: bool | None
    covered_s: float
    monitored_s: float
    uncovered: list[BlindSpot] = Field(description="Uncovered at the end of the window, longest first")
    uncovered_total: int


class CenterCoverage(BaseModel):
    center: str
    name: str
    level: int
    sites: int = Field(description="Sites of the center and its sub-centers")
    covered: int
    rate: float | None = Field(description=RATE)
    kinds: list[KindCoverage]


class CoverageReport(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    from_: str | None = Field(alias="from")
    to: str | None
    center: str | None
    centers: list[CenterCoverage]
    blind_spots: list[BlindSpot] = Field(description="Uncovered at the end of the window, longest first")
    blind_spots_total: int


class Placement(BaseModel):
    model_config = ConfigDict(extra="forbid")
    lon: float | None = Field(None, description="WGS 84 degrees; with lat, or neither")
    lat: float | None = None
    sites: list[str] | None = Field(None, max_length=100, description="Sites it covers; null: by its position")


class PlacementOut(BaseModel):
    device_id: str
    lon: float | None
    lat: float | None
    source: str | None = Field(description="Which source's position applies: admin, config, gb28181 or onvif")
    explicit_sites: list[str] | None
    sites: list[str] = Field(description="Sites it covers now")
    sources: dict[str, dict[str, Any]]


class MapCamera(BaseModel):
    id: str
    name: str
    lon: float
    lat: float
    source: str
    state: str
    sites: list[str]


class MapCameras(BaseModel):
    cameras: list[MapCamera]


class MapView(BaseModel):
    tile_url: str | None = Field(description="The center's own tile server; null: vectors only")
    attribution: str
    min_zoom: int
    max_zoom: int
    boundary: dict[str, Any] | None = Field(description="The district's boundary, a GeoJSON Feature or "
                                            "FeatureCollection (towns) as configured")
    bounds: list[list[float]] | None = Field(description="[[south, west], [north, east]]")


@router.get("/sites", response_model=SiteList)
def list_sites(
    center: str | None = Query(None, max_length=64, description="Sites counted in this center (with sub-centers)"),
    kind: SiteKind | None = Query(None),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> SiteList:
    sites = hub.coverage.list_sites(center, kind)
    return SiteList(total=len(sites), sites=[SiteOut.model_validate(s) for s in sites])


@router.get("/sites.geojson", response_model=FeatureCollection)
def sites_geojson(
    center: str | None = Query(None, max_length=64),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> FeatureCollection:
    """The sites as GeoJSON (what the map draws; also what ``POST /sites/import`` takes back)."""
    return FeatureCollection(features=[
        Feature(id=s["id"], geometry=s["geometry"],
                properties={k: v for k, v in s.items() if k not in ("geometry", "lon", "lat")})
        for s in hub.coverage.list_sites(center)])


@router.post("/sites/import", response_model=Imported, openapi_extra={"requestBody": {"required": True, "content": {
    "application/geo+json": {"schema": {"type": "object"}}, "text/csv": {"schema": {"type": "string"}}}}})
async def import_sites(
    request: Request,
    format: Literal["geojson", "csv"] = Query("geojson"),
    hub: Hub = Depends(get_hub),
    who: Principal = Depends(require(Role.admin)),
) -> Imported:
    """Add or replace sites from what a GIS department exports: a GeoJSON FeatureCollection, or CSV
    with a header (UTF-8). All or none: the first bad feature or line is named and nothing is stored."""
    try:
        text = (await request.body()).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise GeoError(f"the file is not UTF-8 text (byte {exc.start})") from None
    return Imported.model_validate(await run_in_threadpool(hub.coverage.import_sites, who, text, format))


@router.get("/sites/{site_id}", response_model=SiteOut)
def get_site(site_id: str, hub: Hub = Depends(get_hub), _: Principal = Depends(require(*READERS))) -> SiteOut:
    return SiteOut.model_validate(hub.coverage.site(site_id))


@router.put("/sites/{site_id}", response_model=SiteOut)
def put_site(body: SiteIn, site_id: str = Path(pattern=SITE_ID.pattern, description="The site's ID"),
             hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.admin))) -> SiteOut:
    """Create or replace a site (sites of the config file are edited there)."""
    raw = body.model_dump(exclude_none=True)
    raw["id"] = site_id
    return SiteOut.model_validate(hub.coverage.put_site(who, raw))


@router.delete("/sites/{site_id}", response_model=Deleted)
def delete_site(site_id: str, hub: Hub = Depends(get_hub), who: Principal = Depends(require(Role.admin))) -> Deleted:
    hub.coverage.delete_site(who, site_id)
    return Deleted(deleted=site_id)


@router.get(
    "/coverage",
    response_model=CoverageReport,
    responses={200: {"description": "JSON, or with format=csv two tables (centers and kinds, a blank line, "
                                     "blind spots)", "content": {CsvText.media_type: {"schema": {"type": "string"}}}}},
)
def coverage(
    period: str | None = Query(None, max_length=16, description="1h, 24h, 7d, 30d or a month like 2026-11"),
    from_: str | None = Query(None, alias="from", max_length=40, description="RFC 3339 with zone, or Unix s"),
    to: str | None = Query(None, max_length=40),
    center: str | None = Query(None, max_length=64),
    listed: int = Query(100, ge=0, le=100_000, description="Uncovered sites listed per kind and in blind_spots"),
    format: Literal["json", "csv"] = Query("json"),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> CoverageReport | Response:
    """Per center and kind: the time-weighted share of sites covered by at least their minimum of
    working (online and intact) cameras, against the kind's target; the uncovered sites with since when."""
    start, end = reports.report_window(period, from_, to, hub.clock(), hub.cfg.server.timezone)
    rep = hub.coverage.report(start, end, center, listed)
    if format == "csv":
        return CsvText(reports.coverage_csv(rep),
                       headers={"Content-Disposition": 'attachment; filename="coverage.csv"'})
    return CoverageReport.model_validate(rep)


@router.get("/coverage/blind-spots", response_model=BlindSpots)
def blind_spots(
    center: str | None = Query(None, max_length=64),
    limit: int = Query(100, ge=1, le=100_000),
    hub: Hub = Depends(get_hub),
    _: Principal = Depends(require(*READERS)),
) -> BlindSpots:
    """Sites uncovered now, longest first."""
    return BlindSpots.model_validate(hub.coverage.blind_spots(limit, center))


@router.get("/map", response_model=MapView)
def map_view(hub: Hub = Depends(get_hub), _: Principal = Depends(require(*READERS))) -> MapView:
    """What the map page draws with: the boundary, its bounds, and the tile server if configured."""
    return MapView.model_validate(hub.coverage.map_view())


@router.get("/map/cameras", response_model=MapCameras)
def map_cameras(hub: Hub = Depends(get_hub), _: Principal = Depends(require(*READERS))) -> MapCameras:
    """Every camera with a position, its state and the sites it covers."""
    return MapCameras(cameras=[MapCamera.model_validate(c) for c in hub.coverage.cameras()])


@router.get("/devices/{device_id}/place", response_model=PlacementOut)
def get_place(device_id: str = DeviceIdPath, hub: Hub = Depends(get_hub),
              _: Principal = Depends(require(*READERS))) -> PlacementOut:
    """Where the camera stands, by which source, and the sites it covers."""
    hub.snapshots.index(device_id)  # 404 / 422 for an unknown or invalid ID
    return PlacementOut.model_validate(hub.coverage.placement(device_id))


@router.put("/devices/{device_id}/place", response_model=PlacementOut)
def place(body: Placement, device_id: str = DeviceIdPath, hub: Hub = Depends(get_hub),
          who: Principal = Depends(require(Role.admin))) -> PlacementOut:
    """Place a camera by hand (wins over the config's and the device's own position); audited."""
    return PlacementOut.model_validate(hub.coverage.place(who, device_id, body.lon, body.lat, body.sites))


@router.delete("/devices/{device_id}/place", response_model=PlacementOut)
def unplace(device_id: str = DeviceIdPath, hub: Hub = Depends(get_hub),
            who: Principal = Depends(require(Role.admin))) -> PlacementOut:
    """Withdraw the admin's placement; the config's or the device's own position applies again."""
    return PlacementOut.model_validate(hub.coverage.unplace(who, device_id))
