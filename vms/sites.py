"""Sites that must be covered, where cameras stand, and the coverage figures. Pure: no I/O.

The customer's documents assess a district by coverage: every main road, key location and crowded
place, every school, kindergarten, hospital, elderly and welfare home covered (100%), street shops
and households 80%, communities 70%. A *site* is such a place (a point with a radius, or a polygon)
with the minimum number of working cameras that cover it. A camera covers the sites it is assigned
to explicitly, or else those it stands in (polygon) or near (point, within ``radius_m``).

Everything here works on numpy columns, so 10,000 sites and 100,000 cameras take milliseconds:
geometry checks with precise errors (GeoJSON and CSV imports, swapped or out-of-range
coordinates, unclosed polygons), the camera-to-site assignment, and the sweep that turns the state
history into time-weighted coverage and since-when each blind spot has been blind.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
import numpy.typing as npt

from vms.errors import Invalid

F64 = npt.NDArray[np.float64]
I64 = npt.NDArray[np.int64]
Geometry = dict[str, Any]  # a GeoJSON geometry: Point, Polygon or MultiPolygon, [lon, lat] order


class SiteKind(StrEnum):
    """Kinds of places the documents set coverage targets for."""

    MAIN_ROAD = "main_road"
    KEY_LOCATION = "key_location"
    CROWDED_PLACE = "crowded_place"
    SCHOOL = "school"
    KINDERGARTEN = "kindergarten"
    HOSPITAL = "hospital"
    ELDERLY_HOME = "elderly_home"
    WELFARE_HOME = "welfare_home"
    SHOP_STREET = "shop_street"
    HOUSEHOLD = "household"
    COMMUNITY = "community"


#: Share of sites of each kind that must be covered (the customer's documents).
TARGETS: dict[SiteKind, float] = {
    SiteKind.MAIN_ROAD: 1.0, SiteKind.KEY_LOCATION: 1.0, SiteKind.CROWDED_PLACE: 1.0,
    SiteKind.SCHOOL: 1.0, SiteKind.KINDERGARTEN: 1.0, SiteKind.HOSPITAL: 1.0,
    SiteKind.ELDERLY_HOME: 1.0, SiteKind.WELFARE_HOME: 1.0,
    SiteKind.SHOP_STREET: 0.8, SiteKind.HOUSEHOLD: 0.8, SiteKind.COMMUNITY: 0.7,
}
#: Kinds whose every site must be covered: one left uncovered is an alert for maintenance.
KEY_KINDS = frozenset(k for k, t in TARGETS.items() if t >= 1.0)
#: Chinese names, as GIS departments label their layers; accepted on import for the kind.
KIND_NAMES_ZH: dict[SiteKind, str] = {
    SiteKind.MAIN_ROAD: "主干道", SiteKind.KEY_LOCATION: "重点部位", SiteKind.CROWDED_PLACE: "人员密集场所",
    SiteKind.SCHOOL: "学校", SiteKind.KINDERGARTEN: "幼儿园", SiteKind.HOSPITAL: "医院",
    SiteKind.ELDERLY_HOME: "养老院", SiteKind.WELFARE_HOME: "福利院", SiteKind.SHOP_STREET: "沿街商铺",
    SiteKind.HOUSEHOLD: "居民户", SiteKind.COMMUNITY: "社区",
}
_KIND_ALIASES = {v: k for k, v in KIND_NAMES_ZH.items()} | {
    "道路": SiteKind.MAIN_ROAD, "村": SiteKind.COMMUNITY, "村庄": SiteKind.COMMUNITY, "敬老院": SiteKind.ELDERLY_HOME}
SITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_RADIUS_M = 50.0
MAX_RADIUS_M = 5000.0
MAX_POLYGON_POINTS = 10_000
M_PER_DEG_LAT = 110_574.0
M_PER_DEG_LON = 111_320.0


class GeoError(Invalid):
    """Sites, coordinates or a boundary that cannot be used; the message says where and why."""


def kind_of(value: object, where: str) -> SiteKind:
    """A kind by its key (``school``) or its Chinese name (``学校``)."""
    v = str(value).strip()
    try:
        return SiteKind(v.lower())
    except ValueError:
        if v in _KIND_ALIASES:
            return _KIND_ALIASES[v]
    raise GeoError(f"{where}: kind {v!r} unknown; use one of {', '.join(k.value for k in SiteKind)} "
                   f"(or {', '.join(KIND_NAMES_ZH.values())})")


# -- coordinates ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Bounds:
    """A lon/lat box (the district's, with a margin) that every site and camera must fall in."""

    west: float
    south: float
    east: float
    north: float

    def contains(self, lon: float, lat: float) -> bool:
        return self.west <= lon <= self.east and self.south <= lat <= self.north

    def grown(self, deg: float) -> Bounds:
        return Bounds(self.west - deg, self.south - deg, self.east + deg, self.north + deg)

    def text(self) -> str:
        return f"lon {self.west:.4f}..{self.east:.4f}, lat {self.south:.4f}..{self.north:.4f}"


def _number(v: object, what: str, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float | str):
        raise GeoError(f"{where}: {what} {v!r} is not a number")
    try:
        x = float(v)
    except ValueError:
        raise GeoError(f"{where}: {what} {v!r} is not a number") from None
    if not math.isfinite(x):
        raise GeoError(f"{where}: {what} {v!r} is not a finite number")
    return x


def check_point(lon_v: object, lat_v: object, where: str, bounds: Bounds | None = None) -> tuple[float, float]:
    """``(lon, lat)`` checked: in range, not swapped, inside ``bounds`` when given (WGS 84 degrees).

    A swapped pair is named as such where it can be told: a latitude beyond ±90 that is a valid
    longitude, or a pair outside the district that falls inside it the other way round."""
    lon, lat = _number(lon_v, "longitude", where), _number(lat_v, "latitude", where)
    swapped_ok = abs(lat) <= 180 and abs(lon) <= 90
    if abs(lon) > 180 or abs(lat) > 90:
        if swapped_ok:
            raise GeoError(f"{where}: latitude {lat} is out of range -90..90 and longitude {lon} would be a "
                           f"latitude: lon and lat look swapped (GeoJSON and this hub use [lon, lat] order)")
        bad = (f"longitude {lon} is out of range -180..180" if abs(lon) > 180
               else f"latitude {lat} is out of range -90..90")
        raise GeoError(f"{where}: {bad}")
    if bounds is not None and not bounds.contains(lon, lat):
        if swapped_ok and bounds.contains(lat, lon):
            raise GeoError(f"{where}: [{lon}, {lat}] lies outside the district ({bounds.text()}) but [{lat}, {lon}] "
                           "lies inside it: lon and lat look swapped (use [lon, lat] order)")
        raise GeoError(f"{where}: [{lon}, {lat}] lies outside the district ({bounds.text()})")
    return lon, lat


def _position(p: object, where: str, bounds: Bounds | None) -> list[float]:
    if not isinstance(p, list | tuple) or len(p) not in (2, 3):
        raise GeoError(f"{where}: a position must be [lon, lat], got {json.dumps(p, default=str)[:60]}")
    return list(check_point(p[0], p[1], where, bounds))


def _ring(ring: object, where: str, bounds: Bounds | None) -> list[list[float]]:
    if not isinstance(ring, list | tuple):
        raise GeoError(f"{where}: a polygon ring must be a list of [lon, lat] positions")
    if len(ring) > MAX_POLYGON_POINTS:
        raise GeoError(f"{where}: more than {MAX_POLYGON_POINTS} positions")
    pts = [_position(p, f"{where} position {i}", bounds) for i, p in enumerate(ring)]
    if len(pts) < 4:
        raise GeoError(f"{where}: a polygon ring needs at least 4 positions (3 corners and the first again), "
                       f"got {len(pts)}")
    if pts[0] != pts[-1]:
        raise GeoError(f"{where}: the polygon does not close: its first position {pts[0]} differs from its last "
                       f"{pts[-1]} (repeat the first position at the end)")
    if abs(_ring_area(np.asarray(pts))) <= 0.0:
        raise GeoError(f"{where}: the polygon has no area (all its positions on one line)")
    return pts


def _ring_area(pts: npt.NDArray[np.float64]) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2.0


def check_geometry(geom: object, where: str, bounds: Bounds | None = None,
                   kinds: Sequence[str] = ("Point", "Polygon", "MultiPolygon")) -> Geometry:
    """A GeoJSON geometry checked and normalised (``[lon, lat]`` floats; rings closed)."""
    if not isinstance(geom, dict):
        raise GeoError(f"{where}: geometry must be a GeoJSON object, got {type(geom).__name__}")
    t = geom.get("type")
    if t not in kinds:
        raise GeoError(f"{where}: geometry type {t!r} is not supported here; use {' or '.join(kinds)}")
    coords = geom.get("coordinates")
    if coords is None:
        raise GeoError(f"{where}: {t} has no coordinates")
    if t == "Point":
        return {"type": "Point", "coordinates": _position(coords, where, bounds)}
    if t == "Polygon":
        if not isinstance(coords, list) or not coords:
            raise GeoError(f"{where}: a Polygon's coordinates must be a list of rings")
        return {"type": "Polygon", "coordinates": [_ring(r, f"{where} ring {i}", bounds) for i, r in enumerate(coords)]}
    if not isinstance(coords, list) or not coords:
        raise GeoError(f"{where}: a MultiPolygon's coordinates must be a list of polygons")
    polys = []
    for j, poly in enumerate(coords):
        if not isinstance(poly, list) or not poly:
            raise GeoError(f"{where} polygon {j}: must be a list of rings")
        polys.append([_ring(r, f"{where} polygon {j} ring {i}", bounds) for i, r in enumerate(poly)])
    return {"type": "MultiPolygon", "coordinates": polys}


def rings(geom: Geometry) -> list[npt.NDArray[np.float64]]:
    """Every ring of a polygon geometry (outer rings and holes; the even-odd rule tells inside)."""
    if geom["type"] == "Polygon":
        return [np.asarray(r, np.float64) for r in geom["coordinates"]]
    if geom["type"] == "MultiPolygon":
        return [np.asarray(r, np.float64) for poly in geom["coordinates"] for r in poly]
    return []


def geometry_bounds(geom: Geometry) -> Bounds:
    if geom["type"] == "Point":
        x, y = geom["coordinates"]
        return Bounds(x, y, x, y)
    pts = np.concatenate(rings(geom))
    return Bounds(float(pts[:, 0].min()), float(pts[:, 1].min()), float(pts[:, 0].max()), float(pts[:, 1].max()))


def representative(geom: Geometry) -> tuple[float, float]:
    """A point for lists and markers: the point itself, or the centroid of the largest outer ring."""
    if geom["type"] == "Point":
        return float(geom["coordinates"][0]), float(geom["coordinates"][1])
    outers = [np.asarray(geom["coordinates"][0], np.float64)] if geom["type"] == "Polygon" else [
        np.asarray(p[0], np.float64) for p in geom["coordinates"]]
    ring = max(outers, key=lambda r: abs(_ring_area(r)))
    x, y = ring[:, 0], ring[:, 1]
    cross = x[:-1] * y[1:] - x[1:] * y[:-1]
    a = cross.sum() / 2.0
    return float(((x[:-1] + x[1:]) * cross).sum() / (6 * a)), float(((y[:-1] + y[1:]) * cross).sum() / (6 * a))


def parse_boundary(obj: object, where: str = "boundary") -> Geometry:
    """The district's boundary from GeoJSON: a Polygon or MultiPolygon geometry, a Feature, or a
    FeatureCollection of polygon features (towns), joined into one MultiPolygon."""
    if isinstance(obj, str):
        try:
            obj = json.loads(obj)
        except json.JSONDecodeError as exc:
            raise GeoError(f"{where}: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(obj, dict):
        raise GeoError(f"{where}: must be a GeoJSON object")
    kinds = ("Polygon", "MultiPolygon")
    if obj.get("type") == "Feature":
        return check_geometry(obj.get("geometry"), where, None, kinds)
    if obj.get("type") == "FeatureCollection":
        feats = obj.get("features")
        if not isinstance(feats, list) or not feats:
            raise GeoError(f"{where}: a FeatureCollection needs a non-empty 'features' list")
        polys: list[Any] = []
        for i, f in enumerate(feats):
            g = check_geometry(f.get("geometry") if isinstance(f, dict) else None, f"{where} feature {i}", None, kinds)
            polys.extend([g["coordinates"]] if g["type"] == "Polygon" else g["coordinates"])
        return {"type": "MultiPolygon", "coordinates": polys}
    return check_geometry(obj, where, None, kinds)


# -- sites ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SiteRecord:
    """A site as configured, imported or edited: what the store keeps."""

    id: str
    name: str
    kind: SiteKind
    center: str
    geometry: Geometry
    min_cameras: int = 1
    radius_m: float = DEFAULT_RADIUS_M

    @property
    def key(self) -> bool:
        return self.kind in KEY_KINDS


def make_site(raw: Mapping[str, Any], where: str, centers: Iterable[str], bounds: Bounds | None) -> SiteRecord:
    """A site from loose fields (a GeoJSON feature's properties plus its geometry, a CSV row, an API
    body): ``id, name, kind, center, min_cameras, radius_m`` and ``geometry`` or ``lon``/``lat`` or ``polygon``."""
    sid = str(raw.get("id") or "").strip()
    if not SITE_ID.match(sid):
        raise GeoError(f"{where}: site id {sid!r} must be 1-64 letters, digits, '.', '_' or '-'")
    where = where if where == f"site {sid}" else f"{where} (site {sid})"
    name = str(raw.get("name") or "").strip()
    if not name or len(name) > 200:
        raise GeoError(f"{where}: name must be 1-200 characters")
    kind = kind_of(raw.get("kind", ""), where)
    center = str(raw.get("center") or "").strip()
    known = set(centers)
    if center not in known:
        raise GeoError(f"{where}: center {center!r} is not a center of this hub "
                       f"(known: {', '.join(sorted(known)) or 'none'})")
    mc = raw.get("min_cameras")
    min_cameras = 1 if mc in (None, "") else int(_number(mc, "min_cameras", where))
    if not 1 <= min_cameras <= 100:
        raise GeoError(f"{where}: min_cameras {min_cameras} must be 1-100")
    rr = raw.get("radius_m")
    radius = DEFAULT_RADIUS_M if rr in (None, "") else _number(rr, "radius_m", where)
    if not 0 <= radius <= MAX_RADIUS_M:
        raise GeoError(f"{where}: radius_m {radius} must be 0-{MAX_RADIUS_M:.0f}")
    geom = raw.get("geometry")
    poly = raw.get("polygon")
    has_point = raw.get("lon") not in (None, "") or raw.get("lat") not in (None, "")
    if has_point and (raw.get("lon") in (None, "") or raw.get("lat") in (None, "")):
        raise GeoError(f"{where}: give both lon and lat")
    given = sum(x for x in (geom is not None, poly not in (None, ""), has_point))
    if given != 1:
        raise GeoError(f"{where}: give exactly one of lon/lat (a point), polygon, or geometry")
    if geom is not None:
        g = check_geometry(geom, where, bounds)
    elif poly not in (None, ""):
        g = check_geometry({"type": "Polygon", "coordinates": [poly]}, where, bounds)
    else:
        g = {"type": "Point", "coordinates": list(check_point(raw.get("lon"), raw.get("lat"), where, bounds))}
    return SiteRecord(sid, name, kind, center, g, min_cameras, radius)


def _unique(sites: list[SiteRecord], what: str) -> list[SiteRecord]:
    seen: set[str] = set()
    for s in sites:
        if s.id in seen:
            raise GeoError(f"{what}: site id {s.id!r} appears twice")
        seen.add(s.id)
    return sites


def parse_geojson_sites(text: str, centers: Iterable[str], bounds: Bounds | None = None) -> list[SiteRecord]:
    """Sites from a GeoJSON FeatureCollection (or one Feature): geometry Point, Polygon or MultiPolygon;
    properties ``id, name, kind, center``, optional ``min_cameras``, ``radius_m``."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise GeoError(f"invalid GeoJSON: not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    if not isinstance(obj, dict) or obj.get("type") not in ("FeatureCollection", "Feature"):
        got = obj.get("type") if isinstance(obj, dict) else type(obj).__name__
        raise GeoError(f"invalid GeoJSON: the top level must be a FeatureCollection or a Feature, got {got!r}")
    feats = [obj] if obj["type"] == "Feature" else obj.get("features")
    if not isinstance(feats, list):
        raise GeoError("invalid GeoJSON: a FeatureCollection needs a 'features' list")
    centers = list(centers)
    out = []
    for i, f in enumerate(feats):
        where = f"feature {i}"
        if not isinstance(f, dict) or f.get("type") != "Feature":
            raise GeoError(f"invalid GeoJSON: {where} is not a Feature")
        props = f.get("properties")
        if not isinstance(props, dict):
            raise GeoError(f"invalid GeoJSON: {where} has no properties object (id, name, kind, center)")
        if f.get("geometry") is None:
            raise GeoError(f"invalid GeoJSON: {where} has no geometry")
        fields = {k: v for k, v in props.items() if k not in ("geometry", "lon", "lat", "polygon")}
        fields.setdefault("id", f.get("id"))
        out.append(make_site({**fields, "geometry": f["geometry"]}, where, centers, bounds))
    return _unique(out, "GeoJSON")


_WKT = re.compile(r"^\s*(POINT|POLYGON)\s*\((.*)\)\s*$", re.IGNORECASE | re.DOTALL)


def _wkt(text: str, where: str) -> Geometry:
    m = _WKT.match(text)
    if not m:
        raise GeoError(f"{where}: wkt {text[:40]!r} must be POINT (lon lat) or POLYGON ((lon lat, ...))")

    def pts(s: str) -> list[list[str]]:
        return [p.split() for p in s.split(",")]

    body = m.group(2).strip()
    if m.group(1).upper() == "POINT":
        p = pts(body)
        if len(p) != 1 or len(p[0]) != 2:
            raise GeoError(f"{where}: POINT needs one 'lon lat' pair")
        return {"type": "Point", "coordinates": p[0]}
    ring_texts = re.findall(r"\(([^()]*)\)", body)
    if not ring_texts:
        raise GeoError(f"{where}: POLYGON needs rings in parentheses")
    rings_ = [pts(r) for r in ring_texts]
    if any(len(p) != 2 for r in rings_ for p in r):
        raise GeoError(f"{where}: every POLYGON position must be 'lon lat'")
    return {"type": "Polygon", "coordinates": rings_}


def parse_csv_sites(text: str, centers: Iterable[str], bounds: Bounds | None = None) -> list[SiteRecord]:
    """Sites from CSV with a header: ``id,name,kind,center,lon,lat`` (a point), or a ``wkt`` column
    (``POINT (lon lat)`` / ``POLYGON ((lon lat, ...))``) instead of lon/lat; optional
    ``min_cameras,radius_m``. Errors name the line."""
    reader = csv.DictReader(io.StringIO(text.lstrip("\ufeff")))
    cols = {c.strip().lower() for c in (reader.fieldnames or [])}
    missing = {"id", "name", "kind", "center"} - cols
    if missing:
        raise GeoError(f"CSV line 1: missing column(s) {', '.join(sorted(missing))} "
                       "(header: id,name,kind,center,lon,lat[,min_cameras,radius_m] or wkt instead of lon,lat)")
    if not ({"lon", "lat"} <= cols or "wkt" in cols):
        raise GeoError("CSV line 1: needs lon and lat columns, or a wkt column")
    centers = list(centers)
    out = []
    for row in reader:
        where = f"CSV line {reader.line_num}"
        r = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
        if not any(r.values()):
            continue
        if r.get("wkt"):
            r["geometry"] = _wkt(r.pop("wkt"), where)
            r.pop("lon", None), r.pop("lat", None)
        out.append(make_site(r, where, centers, bounds))
    return _unique(out, "CSV")


# -- placement: which cameras cover which sites -----------------------------------------------------------
def project(lon: npt.ArrayLike, lat: npt.ArrayLike, lat0: float) -> tuple[F64, F64]:
    """Local metres (equirectangular around ``lat0``): exact enough within a district."""
    k = math.cos(math.radians(lat0))
    return np.asarray(lon, np.float64) * (M_PER_DEG_LON * k), np.asarray(lat, np.float64) * M_PER_DEG_LAT


def _inside(px: F64, py: F64, rs: list[F64]) -> npt.NDArray[np.bool_]:
    """Even-odd rule over every ring (holes and several polygons alike)."""
    inside = np.zeros(len(px), np.bool_)
    for r in rs:
        x0, y0, x1, y1 = r[:-1, 0], r[:-1, 1], r[1:, 0], r[1:, 1]
        cond = (y0[None, :] > py[:, None]) != (y1[None, :] > py[:, None])
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = x0[None, :] + (py[:, None] - y0[None, :]) * (x1 - x0)[None, :] / (y1 - y0)[None, :]
        inside ^= (np.count_nonzero(cond & (px[:, None] < xc), axis=1) % 2).astype(np.bool_)
    return inside


def _near_edges(px: F64, py: F64, rs: list[F64], r2: float) -> npt.NDArray[np.bool_]:
    near = np.zeros(len(px), np.bool_)
    for r in rs:
        ax, ay, bx, by = r[:-1, 0], r[:-1, 1], r[1:, 0], r[1:, 1]
        dx, dy = bx - ax, by - ay
        ll = np.where(dx * dx + dy * dy > 0, dx * dx + dy * dy, 1.0)
        t = np.clip(((px[:, None] - ax) * dx + (py[:, None] - ay) * dy) / ll, 0.0, 1.0)
        qx, qy = ax + t * dx - px[:, None], ay + t * dy - py[:, None]
        near |= ((qx * qx + qy * qy) <= r2).any(axis=1)
    return near


@dataclass(frozen=True)
class Pairs:
    """Which camera covers which site: parallel arrays, one entry per (site, camera), unique."""

    site: I64
    cam: I64

    @staticmethod
    def of(site: npt.ArrayLike, cam: npt.ArrayLike) -> Pairs:
        s, c = np.asarray(site, np.int64), np.asarray(cam, np.int64)
        if len(s):
            key = np.unique(s * (int(c.max()) + 1) + c)
            s, c = key // (int(c.max()) + 1), key % (int(c.max()) + 1)
        return Pairs(s, c)


def assign(sites: Sequence[SiteRecord], cam_lon: F64, cam_lat: F64,
           explicit: Mapping[int, Sequence[int]] | None = None) -> Pairs:
    """Cameras to sites: a camera with explicit sites covers exactly those; any other covers the
    point sites within their ``radius_m`` and the polygon sites it stands in (or within ``radius_m``
    of their outline). Cameras without coordinates (NaN) cover only their explicit sites."""
    explicit = explicit or {}
    n = len(cam_lon)
    free = np.isfinite(cam_lon) & np.isfinite(cam_lat)
    if explicit:
        free[np.fromiter((i for i in explicit if i < n), np.int64)] = False
    out_s: list[I64] = [np.fromiter((s for c, ss in explicit.items() for s in ss), np.int64)]
    out_c: list[I64] = [np.fromiter((c for c, ss in explicit.items() for _ in ss), np.int64)]
    cams = np.flatnonzero(free)
    if len(sites) and len(cams):
        lat0 = float(np.mean([representative(s.geometry)[1] for s in sites[:1000]]))
        cx, cy = project(cam_lon[cams], cam_lat[cams], lat0)
        pts = [i for i, s in enumerate(sites) if s.geometry["type"] == "Point"]
        if pts:
            ps, pc = _assign_points(sites, pts, cx, cy, lat0)
            out_s.append(ps)
            out_c.append(cams[pc])
        order = np.argsort(cx, kind="stable")
        sx = cx[order]
        for i, s in enumerate(sites):
            if s.geometry["type"] == "Point":
                continue
            b = geometry_bounds(s.geometry)
            (x0, x1), (y0, y1) = project([b.west, b.east], [b.south, b.north], lat0)
            r = s.radius_m
            lo, hi = np.searchsorted(sx, [x0 - r, x1 + r])
            cand = order[lo:hi]
            cand = cand[(cy[cand] >= y0 - r) & (cy[cand] <= y1 + r)]
            if not len(cand):
                continue
            rs = [np.column_stack(project(g[:, 0], g[:, 1], lat0)) for g in rings(s.geometry)]
            hit = _inside(cx[cand], cy[cand], rs)
            if r > 0:
                hit |= _near_edges(cx[cand], cy[cand], rs, r * r)
            out_s.append(np.full(int(hit.sum()), i, np.int64))
            out_c.append(cams[cand[hit]])
    return Pairs.of(np.concatenate(out_s), np.concatenate(out_c))


def _assign_points(sites: Sequence[SiteRecord], pts: list[int], cx: F64, cy: F64, lat0: float) -> tuple[I64, I64]:
    """Point sites against cameras on a grid of cells as wide as the largest radius, all at once."""
    sid = np.asarray(pts, np.int64)
    lon = np.fromiter((sites[i].geometry["coordinates"][0] for i in pts), np.float64, len(pts))
    lat = np.fromiter((sites[i].geometry["coordinates"][1] for i in pts), np.float64, len(pts))
    rad = np.fromiter((sites[i].radius_m for i in pts), np.float64, len(pts))
    sx, sy = project(lon, lat, lat0)
    cell = max(float(rad.max()), 1.0)
    ox, oy = min(float(cx.min()), float(sx.min())) - cell, min(float(cy.min()), float(sy.min())) - cell
    span = int((max(float(cy.max()), float(sy.max())) - oy) // cell) + 3
    ckey = ((cx - ox) // cell).astype(np.int64) * span + ((cy - oy) // cell).astype(np.int64)
    order = np.argsort(ckey, kind="stable")
    sorted_keys = ckey[order]
    ix, iy = ((sx - ox) // cell).astype(np.int64), ((sy - oy) // cell).astype(np.int64)
    nb = np.array([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)], np.int64)
    keys = (ix[:, None] + nb[None, :, 0]) * span + (iy[:, None] + nb[None, :, 1])  # sites x 9 cells
    lo = np.searchsorted(sorted_keys, keys, "left").ravel()
    hi = np.searchsorted(sorted_keys, keys, "right").ravel()
    cnt = hi - lo
    owner = np.repeat(np.repeat(np.arange(len(pts)), 9), cnt)
    start = np.repeat(lo, cnt)
    offs = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    cam = order[start + offs]
    d2 = (cx[cam] - sx[owner]) ** 2 + (cy[cam] - sy[owner]) ** 2
    ok = d2 <= rad[owner] ** 2
    return sid[owner[ok]], cam[ok]


# -- coverage from the state history ------------------------------------------------------------------
@dataclass(frozen=True)
class Sweep:
    """Per site, over ``[site_from, end)``: seconds covered and monitored, whether it was covered just
    before ``end``, and since when it has been uncovered (NaN when covered)."""

    covered_s: F64
    monitored_s: F64
    covered_at_end: npt.NDArray[np.bool_]
    uncovered_since: F64


@dataclass(frozen=True)
class Intervals:
    """Device state intervals (closed and open, the open ones ending at the window's end)."""

    dev: I64
    start: F64
    end: F64
    good: npt.NDArray[np.bool_]  # online and intact


def sweep(pairs: Pairs, min_cameras: I64, site_from: F64, iv: Intervals, end: float,
          only: npt.NDArray[np.bool_] | None = None) -> Sweep:
    """Time-weighted coverage: a site is covered while at least ``min_cameras`` of its cameras are
    online and intact. One sort of the (site, time) events of every good interval, then cumulative
    counts; ``only`` restricts the work to some sites (the others come back uncovered, since NaN)."""
    n_sites = len(min_cameras)
    monitored = np.maximum(end - site_from, 0.0)
    since = np.full(n_sites, np.nan)
    ps, pc = pairs.site, pairs.cam
    if only is not None:
        keep = only[ps]
        ps, pc = ps[keep], pc[keep]
    n_dev = int(max(int(iv.dev.max()) + 1 if len(iv.dev) else 0, int(pc.max()) + 1 if len(pc) else 0))
    order = np.argsort(pc, kind="stable")
    cam_sites = ps[order]
    deg = np.bincount(pc, minlength=n_dev).astype(np.int64)
    ptr = np.concatenate(([0], np.cumsum(deg)))
    m = iv.good & (deg[iv.dev] > 0) & (iv.end > iv.start)
    d, s, e = iv.dev[m], iv.start[m], iv.end[m]
    rep = deg[d]
    total = int(rep.sum())
    pos = np.repeat(ptr[d], rep) + (np.arange(total) - np.repeat(np.cumsum(rep) - rep, rep))
    site = cam_sites[pos]
    s = np.maximum(np.repeat(s, rep), site_from[site])
    e = np.minimum(np.repeat(e, rep), end)
    k = e > s
    site, s, e = site[k], s[k], e[k]
    covered = np.zeros(n_sites)
    at_end = np.zeros(n_sites, np.bool_)
    first = np.asarray(site_from, np.float64)
    if len(site):
        t0 = float(min(s.min(), first.min()))
        span = max(end - t0, 1.0) * 1.000001 + 1.0
        st = np.concatenate((site, site))
        t = np.concatenate((s, e))
        key = st * span + (t - t0)
        o = np.argsort(key)
        st, t, key = st[o], t[o], key[o]
        c = np.cumsum(np.concatenate((np.ones(len(s), np.int64), -np.ones(len(e), np.int64)))[o])
        ok = c >= min_cameras[st]  # each site's events balance out, so one running sum serves all
        same_next = np.empty(len(st), np.bool_)
        same_next[:-1] = st[1:] == st[:-1]
        same_next[-1] = False
        dur = np.zeros(len(st))
        dur[:-1] = np.where(same_next[:-1], t[1:] - t[:-1], 0.0)
        covered = np.bincount(st, weights=dur * ok, minlength=n_sites).astype(np.float64)
        # Group ends: the state after every event at one instant of one site.
        last = np.empty(len(st), np.bool_)
        last[:-1] = key[1:] != key[:-1]
        last[-1] = True
        g = np.flatnonzero(last & (t < end))
        gs, gt, gok = st[g], t[g], ok[g]
        prev = np.zeros(len(g), np.bool_)
        prev[1:] = gok[:-1] & (gs[1:] == gs[:-1])
        tail = np.ones(len(g), np.bool_)
        tail[:-1] = gs[1:] != gs[:-1]
        at_end[gs[tail]] = gok[tail]
        down = ~gok & prev
        ds, dt = gs[down], gt[down]
        rev_s, idx = np.unique(ds[::-1], return_index=True)
        since[rev_s] = dt[::-1][idx]
    unc = ~at_end & np.isnan(since)
    since[unc] = first[unc]
    if only is not None:
        since[~only] = np.nan
    since[at_end] = np.nan
    return Sweep(covered, monitored, at_end, since)


def working_counts(pairs: Pairs, n_sites: int, good_now: npt.NDArray[np.bool_]) -> I64:
    """Working cameras per site right now (``good_now`` per device)."""
    ok = good_now[pairs.cam] if len(pairs.cam) else np.zeros(0, np.bool_)
    return np.bincount(pairs.site, weights=ok, minlength=n_sites).astype(np.int64)


# -- alerts ----------------------------------------------------------------------------------------------
@dataclass
class SiteAlertBook:
    """When a key site's ``site_uncovered`` alert opens and resolves: open once it has been uncovered
    for ``after_s`` (a camera restart does not alert), resolve once covered again for ``hold_s``."""

    after_s: float
    hold_s: float
    open: set[str] = field(default_factory=set)
    covered_since: dict[str, float] = field(default_factory=dict)

    def plan(self, uncovered: Mapping[str, float], key: Mapping[str, bool], now: float) -> tuple[list[str], list[str]]:
        """``uncovered``: site -> uncovered since, for every site uncovered now. Returns (open, resolve)."""
        to_open = sorted(s for s, since in uncovered.items()
                         if key.get(s, False) and s not in self.open and now - since >= self.after_s)
        to_resolve = []
        for s in sorted(self.open):
            if s in uncovered and key.get(s, False):
                self.covered_since.pop(s, None)
                continue
            started = self.covered_since.setdefault(s, now)
            if now - started >= self.hold_s or s not in key or not key[s]:
                to_resolve.append(s)
        self.open.update(to_open)
        for s in to_resolve:
            self.open.discard(s)
            self.covered_since.pop(s, None)
        return to_open, to_resolve
