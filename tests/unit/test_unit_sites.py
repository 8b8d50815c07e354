"""The pure coverage room (vms/sites.py): coordinates and imports with precise errors, the camera-to-site
assignment, the coverage sweep against a brute-force second-by-second count, and the site alerts."""

from __future__ import annotations

import itertools
import json
from collections.abc import Mapping

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vms import sites as geo

CENTERS = ["taicang", "shaxi", "chengxiang"]
DISTRICT = geo.Bounds(121.0, 31.4, 121.2, 31.6)  # lon 121.0..121.2, lat 31.4..31.6
SQUARE = [[121.10, 31.50], [121.11, 31.50], [121.11, 31.51], [121.10, 31.51], [121.10, 31.50]]


def feature(props: Mapping[str, object], geometry: Mapping[str, object] | None) -> dict[str, object]:
    return {"type": "Feature", "properties": props, "geometry": geometry}


def collection(*features: dict[str, object]) -> str:
    return json.dumps({"type": "FeatureCollection", "features": list(features)})


SCHOOL = {"id": "s1", "name": "沙溪小学", "kind": "school", "center": "shaxi"}


# -- coordinates -------------------------------------------------------------------------------------
def test_out_of_range_and_swapped_coordinates_are_named() -> None:
    with pytest.raises(geo.GeoError, match="look swapped"):
        geo.check_point(31.5, 121.1, "p")  # lat beyond 90, a valid longitude: swapped
    with pytest.raises(geo.GeoError, match=r"longitude 200.0 is out of range"):
        geo.check_point(200, 10, "p")
    with pytest.raises(geo.GeoError, match=r"latitude -95.0 is out of range"):
        geo.check_point(120, -95, "p")
    with pytest.raises(geo.GeoError, match="not a finite number"):
        geo.check_point("nan", 10, "p")
    with pytest.raises(geo.GeoError, match="not a number"):
        geo.check_point("东经121", 31, "p")
    assert geo.check_point("121.1", 31.5, "p", DISTRICT) == (121.1, 31.5)


def test_a_swap_inside_the_valid_range_is_caught_by_the_districts_box() -> None:
    # Near lon 45, lat 40 both orders are valid degrees: only the district tells the swap.
    box = geo.Bounds(44.5, 39.5, 45.5, 40.5)
    with pytest.raises(geo.GeoError, match="look swapped"):
        geo.check_point(40.0, 45.0, "p", box)
    with pytest.raises(geo.GeoError, match="outside the district"):
        geo.check_point(50.0, 45.0, "p", box)


def test_polygons_must_close_and_have_an_area() -> None:
    with pytest.raises(geo.GeoError, match="does not close"):
        geo.check_geometry({"type": "Polygon", "coordinates": [[*SQUARE[:-1], [121.10, 31.505]]]}, "g")
    with pytest.raises(geo.GeoError, match="at least 4 positions"):
        geo.check_geometry({"type": "Polygon", "coordinates": [SQUARE[:3]]}, "g")
    with pytest.raises(geo.GeoError, match="no area"):
        geo.check_geometry({"type": "Polygon", "coordinates": [[[121, 31], [121.1, 31], [121.2, 31], [121, 31]]]}, "g")
    with pytest.raises(geo.GeoError, match="LineString"):
        geo.check_geometry({"type": "LineString", "coordinates": SQUARE}, "g")


# -- imports ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("text", "message"), [
    ("{not json", "invalid GeoJSON: not valid JSON"),
    ("[1, 2]", "must be a FeatureCollection or a Feature"),
    (json.dumps({"type": "FeatureCollection"}), "needs a 'features' list"),
    (collection({"type": "Point"}), "feature 0 is not a Feature"),
    (collection(feature(SCHOOL, None)), "feature 0 has no geometry"),
    (collection(feature(SCHOOL, {"type": "Point", "coordinates": [31.5, 121.1]})), "look swapped"),
    (collection(feature(SCHOOL, {"type": "Point", "coordinates": [121.1, 91]})), "out of range"),
    (collection(feature(SCHOOL, {"type": "Polygon", "coordinates": [SQUARE[:-1]]})), "does not close"),
    (collection(feature({**SCHOOL, "center": "nowhere"}, {"type": "Point", "coordinates": [121.1, 31.5]})),
     "center 'nowhere' is not a center"),
    (collection(feature({**SCHOOL, "kind": "mall"}, {"type": "Point", "coordinates": [121.1, 31.5]})),
     "kind 'mall' unknown"),
    (collection(feature({**SCHOOL, "id": "a b"}, {"type": "Point", "coordinates": [121.1, 31.5]})), "site id"),
    (collection(*[feature(SCHOOL, {"type": "Point", "coordinates": [121.1, 31.5]})] * 2), "appears twice"),
    (collection(feature(SCHOOL, {"type": "Point", "coordinates": [121.5, 31.5]})), "outside the district"),
])
def test_invalid_geojson_is_refused_with_where_and_why(text: str, message: str) -> None:
    with pytest.raises(geo.GeoError, match=message):
        geo.parse_geojson_sites(text, CENTERS, DISTRICT)


def test_geojson_sites_point_polygon_and_chinese_kind() -> None:
    text = collection(
        feature({**SCHOOL, "min_cameras": 2, "lon": 0, "lat": 0}, {"type": "Polygon", "coordinates": [SQUARE]}),
        {**feature({"name": "医院", "kind": "医院", "center": "taicang"},
                   {"type": "Point", "coordinates": [121.1, 31.5]}), "id": "h1"})
    school, hospital = geo.parse_geojson_sites(text, CENTERS, DISTRICT)
    assert (school.kind, school.min_cameras, school.geometry["type"]) == (geo.SiteKind.SCHOOL, 2, "Polygon")
    assert (hospital.id, hospital.kind, hospital.key) == ("h1", geo.SiteKind.HOSPITAL, True)
    assert geo.representative(school.geometry) == pytest.approx((121.105, 31.505))


def test_csv_sites_with_points_and_wkt_and_errors_by_line() -> None:
    ok = ("id,name,kind,center,lon,lat,min_cameras,wkt\n"
          "s1,沙溪小学,school,shaxi,121.1,31.5,1,\n"
          "c1,社区,社区,shaxi,,,,\"POLYGON ((121.10 31.50, 121.11 31.50, 121.11 31.51, 121.10 31.50))\"\n")
    a, b = geo.parse_csv_sites(ok, CENTERS, DISTRICT)
    assert a.geometry == {"type": "Point", "coordinates": [121.1, 31.5]} and b.kind == geo.SiteKind.COMMUNITY
    assert b.geometry["type"] == "Polygon"
    with pytest.raises(geo.GeoError, match=r"CSV line 3.*look swapped"):
        geo.parse_csv_sites("id,name,kind,center,lon,lat\ns1,a,school,shaxi,121.1,31.5\ns2,b,school,shaxi,31.5,121.1\n",
                            CENTERS)
    with pytest.raises(geo.GeoError, match="missing column"):
        geo.parse_csv_sites("id,name,lon,lat\n", CENTERS)
    with pytest.raises(geo.GeoError, match=r"CSV line 2.*does not close"):
        geo.parse_csv_sites('id,name,kind,center,wkt\nc,x,community,shaxi,"POLYGON ((121.1 31.5, 121.2 31.5, '
                            '121.2 31.6, 121.1 31.6))"\n', CENTERS)
    with pytest.raises(geo.GeoError, match=r"unknown center|not a center"):
        geo.parse_csv_sites("id,name,kind,center,lon,lat\ns1,a,school,mars,121.1,31.5\n", CENTERS)


def test_boundary_from_a_feature_collection_of_towns() -> None:
    g = geo.parse_boundary({"type": "FeatureCollection", "features": [
        feature({}, {"type": "Polygon", "coordinates": [SQUARE]}),
        feature({}, {"type": "MultiPolygon", "coordinates": [[SQUARE]]})]})
    assert g["type"] == "MultiPolygon" and len(g["coordinates"]) == 2
    with pytest.raises(geo.GeoError, match="not supported"):
        geo.parse_boundary({"type": "Point", "coordinates": [121, 31]})


# -- assignment ------------------------------------------------------------------------------------------
def site(sid: str, geometry: dict[str, object], radius: float = 50.0) -> geo.SiteRecord:
    return geo.SiteRecord(sid, sid, geo.SiteKind.SCHOOL, "shaxi", geometry, 1, radius)


def test_cameras_cover_point_sites_by_distance_polygons_by_inside_and_explicit_wins() -> None:
    sites = [site("p", {"type": "Point", "coordinates": [121.1, 31.49]}, 50),
             site("poly", {"type": "Polygon", "coordinates": [SQUARE]}, 0)]
    m_lon = 1 / (geo.M_PER_DEG_LON * np.cos(np.radians(31.5)))  # one metre east, in degrees
    lon = np.array([121.1 + 40 * m_lon, 121.1 + 60 * m_lon, 121.105, 121.105, np.nan, 121.1])
    lat = np.array([31.49, 31.49, 31.505, 31.52, np.nan, 31.49])
    pairs = geo.assign(sites, lon, lat, {5: [1]})  # camera 5 stands at the point site but is assigned elsewhere
    assert sorted(zip(pairs.site.tolist(), pairs.cam.tolist(), strict=True)) == [(0, 0), (1, 2), (1, 5)]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(121.0, 121.02), st.floats(31.5, 31.52)), min_size=1, max_size=40),
       st.lists(st.tuples(st.floats(121.0, 121.02), st.floats(31.5, 31.52), st.floats(0, 400)), min_size=1,
                max_size=15))
def test_point_assignment_equals_checking_every_pair(cams: list[tuple[float, float]],
                                                    pts: list[tuple[float, float, float]]) -> None:
    sites = [site(f"s{i}", {"type": "Point", "coordinates": [x, y]}, r) for i, (x, y, r) in enumerate(pts)]
    lon, lat = np.array([c[0] for c in cams]), np.array([c[1] for c in cams])
    got = set(zip(*(a.tolist() for a in (lambda p: (p.site, p.cam))(geo.assign(sites, lon, lat))), strict=True))
    lat0 = float(np.mean([p[1] for p in pts]))
    cx, cy = geo.project(lon, lat, lat0)
    want = set()
    for i, (x, y, r) in enumerate(pts):
        sx, sy = geo.project([x], [y], lat0)
        d = np.hypot(cx - sx[0], cy - sy[0])
        want |= {(i, int(c)) for c in np.flatnonzero(d <= r + 1e-6) if abs(d[c] - r) > 1e-6 or d[c] <= r}
    assert got == want


# -- the sweep ---------------------------------------------------------------------------------------------
def brute(pairs: geo.Pairs, need: list[int], start: list[float], iv: geo.Intervals,
          end: int) -> tuple[list[float], list[bool]]:
    """Second by second: how long each site had its minimum of good cameras, and whether it had at the end."""
    covered, at_end = [], []
    for s, k in enumerate(need):
        cams = pairs.cam[pairs.site == s].tolist()
        secs = 0.0
        last = False
        for t in range(int(start[s]), end):
            n = sum(1 for c in cams if ((iv.dev == c) & iv.good & (iv.start <= t) & (iv.end > t)).any())
            last = n >= k
            secs += last
        covered.append(secs)
        at_end.append(last)
    return covered, at_end


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_sweep_equals_counting_second_by_second(data: st.DataObject) -> None:
    n_cam, n_site, end = data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4)), 60
    pairs = geo.Pairs.of(*zip(*data.draw(st.lists(st.tuples(st.integers(0, n_site - 1), st.integers(0, n_cam - 1)),
                                                  min_size=1, max_size=10)), strict=True))
    dev, s, e, good = [], [], [], []
    for c in range(n_cam):  # each camera: consecutive intervals with whole-second bounds, some good
        cuts = sorted({*data.draw(st.lists(st.integers(0, end), max_size=6)), 0, end})
        for a, b in itertools.pairwise(cuts):
            dev.append(c)
            s.append(float(a))
            e.append(float(b))
            good.append(data.draw(st.booleans()))
    iv = geo.Intervals(np.array(dev, np.int64), np.array(s), np.array(e), np.array(good, np.bool_))
    need = data.draw(st.lists(st.integers(1, 3), min_size=n_site, max_size=n_site))
    start = data.draw(st.lists(st.integers(0, 30), min_size=n_site, max_size=n_site))
    sw = geo.sweep(pairs, np.array(need, np.int64), np.array(start, np.float64), iv, float(end))
    covered, at_end = brute(pairs, need, [float(x) for x in start], iv, end)
    assert sw.covered_s.tolist() == covered
    assert sw.covered_at_end.tolist() == at_end
    assert sw.monitored_s.tolist() == [end - x for x in start]
    # Uncovered since: the end of the last covered second, or the site's start when never covered.
    for i in range(n_site):
        if at_end[i]:
            assert np.isnan(sw.uncovered_since[i])
            continue
        cams = pairs.cam[pairs.site == i].tolist()

        def ok(t: int, cams: list[int] = cams, k: int = need[i]) -> bool:
            return sum(((iv.dev == c) & iv.good & (iv.start <= t) & (iv.end > t)).any() for c in cams) >= k

        t = end - 1
        while t >= start[i] and not ok(t):
            t -= 1
        assert sw.uncovered_since[i] == (t + 1 if t >= start[i] else start[i])


def test_sweep_counts_two_cameras_only_when_both_work() -> None:
    pairs = geo.Pairs.of([0, 0], [0, 1])
    iv = geo.Intervals(np.array([0, 0, 1]), np.array([0.0, 50.0, 20.0]), np.array([50.0, 100.0, 80.0]),
                       np.array([True, False, True]))
    sw = geo.sweep(pairs, np.array([2]), np.array([0.0]), iv, 100.0)
    assert sw.covered_s.tolist() == [30.0] and sw.uncovered_since.tolist() == [50.0]


# -- alerts -------------------------------------------------------------------------------------------------
def test_site_alerts_open_after_the_delay_resolve_after_the_hold_and_only_for_key_sites() -> None:
    book = geo.SiteAlertBook(after_s=60, hold_s=5)
    key = {"school": True, "shops": False}
    assert book.plan({"school": 100.0, "shops": 100.0}, key, 150.0) == ([], [])
    assert book.plan({"school": 100.0, "shops": 100.0}, key, 160.0) == (["school"], [])
    assert book.plan({"school": 100.0}, key, 170.0) == ([], [])  # still uncovered: nothing new
    assert book.plan({}, key, 171.0) == ([], [])  # covered again: the hold starts
    assert book.plan({"school": 172.0}, key, 172.0) == ([], [])  # uncovered again within the hold: stays open
    assert book.plan({}, key, 173.0) == ([], [])
    assert book.plan({}, key, 178.0) == ([], ["school"])
    book.open.add("gone")
    assert book.plan({}, key, 179.0) == ([], ["gone"])  # a deleted site's alert resolves at once
