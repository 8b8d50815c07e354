"""Sites, coverage and camera placement through the HTTP API of a real hub process, and the config's checks.

Every bad input of the coverage issue is refused here with a precise reason: invalid GeoJSON, out-of-range
or swapped coordinates, a polygon that does not close, a site under an unknown center, a camera assigned
to an unknown site (in the config and through the API).
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import HubProcess, free_port, hub_config, vms_cli, write_config

CAM = "32058502111320000001"  # 沙溪镇, education
OTHER = "32058501001320000002"
SQUARE = [[121.05, 31.55], [121.06, 31.55], [121.06, 31.56], [121.05, 31.56], [121.05, 31.55]]
BOUNDARY = {"type": "Polygon", "coordinates": [[[121.0, 31.4], [121.2, 31.4], [121.2, 31.6], [121.0, 31.6],
                                               [121.0, 31.4]]]}
SITES = [{"id": "school-1", "name": "沙溪小学", "kind": "school", "center": "shaxi", "lon": 121.1, "lat": 31.5},
         {"id": "road-1", "name": "沙南路", "kind": "main_road", "center": "shaxi", "polygon": SQUARE}]


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    d = tmp_path_factory.mktemp("sites")
    cfg = hub_config(d / "data", sites=SITES, map={"boundary": BOUNDARY},
                     devices=[{"id": CAM, "lon": 121.1001, "lat": 31.5, "name": "school gate"},
                              {"id": OTHER, "sites": ["road-1"]}])
    hp = HubProcess(write_config(d / "hub.yaml", cfg), free_port())
    for role in ("admin", "duty"):
        hp.token(role)
    hp.start()
    yield hp
    hp.stop()


def call(hub: HubProcess, method: str, path: str, role: str = "admin", headers: dict[str, str] | None = None,
         **kw: Any) -> httpx.Response:
    return httpx.request(method, hub.url + path, timeout=10, **kw,
                         headers={"Authorization": f"Bearer {hub.tokens[role]}", **(headers or {})})


def test_sites_from_the_config_with_their_cameras_and_map(hub: HubProcess) -> None:
    r = call(hub, "GET", "/api/v1/sites", "duty")
    assert r.status_code == 200
    sites = {s["id"]: s for s in r.json()["sites"]}
    assert set(sites) == {"school-1", "road-1"}
    assert sites["school-1"]["cameras"] == [CAM] and sites["road-1"]["cameras"] == [OTHER]  # by distance / explicit
    assert sites["school-1"]["key"] and sites["school-1"]["target"] == 1.0 and sites["school-1"]["source"] == "config"
    assert sites["road-1"]["geometry"]["type"] == "Polygon"
    fc = call(hub, "GET", "/api/v1/sites.geojson", "duty").json()
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 2
    view = call(hub, "GET", "/api/v1/map", "duty").json()
    assert view["tile_url"] is None and view["bounds"] == [[31.4, 121.0], [31.6, 121.2]]
    cams = call(hub, "GET", "/api/v1/map/cameras", "duty").json()["cameras"]
    assert [(c["id"], c["source"], c["sites"]) for c in cams] == [(CAM, "config", ["school-1"])]
    assert call(hub, "GET", "/api/v1/sites/nowhere", "duty").status_code == 404


def test_reading_needs_a_reader_and_editing_an_admin(hub: HubProcess) -> None:
    for path in ("/api/v1/sites", "/api/v1/coverage", "/api/v1/coverage/blind-spots", "/api/v1/map",
                 "/api/v1/map/cameras", "/api/v1/sites.geojson"):
        assert httpx.get(hub.url + path, timeout=5).status_code == 401, path
    body = {"name": "x", "kind": "school", "center": "shaxi", "lon": 121.1, "lat": 31.5}
    assert call(hub, "PUT", "/api/v1/sites/x", "duty", json=body).status_code == 403
    assert call(hub, "POST", "/api/v1/sites/import", "duty", content="{}").status_code == 403
    assert call(hub, "PUT", f"/api/v1/devices/{CAM}/place", "duty", json={"lon": 121.1, "lat": 31.5}).status_code == 403


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"lon": 31.5, "lat": 121.1}, 422, "look swapped"),
    ({"lon": 121.1, "lat": 95}, 422, "out of range"),
    ({"lon": 121.9, "lat": 31.5}, 422, "outside the district"),
    ({"polygon": [*SQUARE[:-1], [121.05, 31.555]]}, 422, "does not close"),
    ({"lon": 121.1, "lat": 31.5, "center": "nowhere"}, 422, "center 'nowhere' is not a center"),
    ({"lon": 121.1, "lat": 31.5, "kind": "mall"}, 422, "kind 'mall' unknown"),
    ({"lon": 121.1}, 422, "give both lon and lat"),
    ({"lon": 121.1, "lat": 31.5, "polygon": SQUARE}, 422, "exactly one of"),
    ({"geometry": {"type": "Polygon", "coordinates": "x"}}, 422, "list of rings"),
])
def test_bad_sites_are_refused_with_the_reason(hub: HubProcess, body: dict[str, Any], status: int,
                                               message: str) -> None:
    full = {"name": "新学校", "kind": "school", "center": "shaxi", **body}
    r = call(hub, "PUT", "/api/v1/sites/new-school", json=full)
    assert r.status_code == status and message in r.text, r.text


def test_a_config_site_is_edited_in_the_config_only(hub: HubProcess) -> None:
    body = {"name": "x", "kind": "school", "center": "shaxi", "lon": 121.1, "lat": 31.5}
    r = call(hub, "PUT", "/api/v1/sites/school-1", json=body)
    assert r.status_code == 409 and "config file" in r.text
    assert call(hub, "DELETE", "/api/v1/sites/school-1").status_code == 409


def test_import_geojson_and_csv_all_or_nothing_audited(hub: HubProcess) -> None:
    good = {"type": "Feature", "properties": {"id": "imp-1", "name": "岳王村", "kind": "社区", "center": "shaxi"},
            "geometry": {"type": "Polygon", "coordinates": [SQUARE]}}
    bad = {"type": "Feature",
           "properties": {"id": "imp-2", "name": "养老院", "kind": "elderly_home", "center": "shaxi"},
           "geometry": {"type": "Point", "coordinates": [31.5, 121.1]}}
    r = call(hub, "POST", "/api/v1/sites/import", content=json.dumps({"type": "FeatureCollection",
                                                                     "features": [good, bad]}),
             headers={"Content-Type": "application/geo+json"})
    assert r.status_code == 422 and "feature 1 (site imp-2)" in r.text and "swapped" in r.text
    assert "imp-1" not in {s["id"] for s in call(hub, "GET", "/api/v1/sites").json()["sites"]}  # nothing stored
    r = call(hub, "POST", "/api/v1/sites/import", content="{\"type\": \"FeatureCollection\", \"features\": [",
             headers={"Content-Type": "application/geo+json"})
    assert r.status_code == 422 and "invalid GeoJSON: not valid JSON" in r.text
    r = call(hub, "POST", "/api/v1/sites/import", content=json.dumps({"type": "FeatureCollection", "features": [good]}))
    assert r.status_code == 200 and r.json() == {"imported": 1, "created": 1, "updated": 0}
    text = "id,name,kind,center,lon,lat\nimp-3,南园社区住户,household,shaxi,121.11,31.51\n"
    r = call(hub, "POST", "/api/v1/sites/import", params={"format": "csv"}, content=text.encode(),
             headers={"Content-Type": "text/csv"})
    assert r.status_code == 200 and r.json()["created"] == 1
    r = call(hub, "POST", "/api/v1/sites/import", params={"format": "csv"},
             content="id,name,kind,center,lon,lat\nimp-4,x,household,shaxi,121.11,310\n")
    assert r.status_code == 422 and "CSV line 2" in r.text and "out of range" in r.text
    # An export is taken back as it is.
    fc = call(hub, "GET", "/api/v1/sites.geojson").json()
    fc["features"] = [f for f in fc["features"] if f["id"].startswith("imp-")]
    r = call(hub, "POST", "/api/v1/sites/import", content=json.dumps(fc))
    assert r.status_code == 200 and r.json() == {"imported": 2, "created": 0, "updated": 2}
    actions = [(e["action"], e["target"]) for e in call(hub, "GET", "/api/v1/audit").json()["entries"]]
    assert actions.count(("site.import", "geojson")) == 2 and ("site.import", "csv") in actions
    assert call(hub, "DELETE", "/api/v1/sites/imp-3").json() == {"deleted": "imp-3"}
    entries = call(hub, "GET", "/api/v1/audit").json()["entries"]
    assert ("site.delete", "imp-3") in [(e["action"], e["target"]) for e in entries]


def test_placing_a_camera_by_hand_wins_and_unknown_sites_are_refused(hub: HubProcess) -> None:
    r = call(hub, "PUT", f"/api/v1/devices/{CAM}/place", json={"lon": 121.1, "lat": 31.5, "sites": ["nowhere"]})
    assert r.status_code == 422 and "unknown site(s) nowhere" in r.text
    r = call(hub, "PUT", f"/api/v1/devices/{CAM}/place", json={"lon": 31.5, "lat": 121.1})
    assert r.status_code == 422 and "swapped" in r.text
    r = call(hub, "PUT", "/api/v1/devices/32058502111320009999/place", json={"lon": 121.1, "lat": 31.5})
    assert r.status_code == 404
    r = call(hub, "PUT", f"/api/v1/devices/{CAM}/place", json={"lon": 121.055, "lat": 31.555})
    assert r.status_code == 200
    p = r.json()
    assert (p["source"], p["sources"]["config"]["lon"]) == ("admin", 121.1001)
    assert "road-1" in p["sites"] and "school-1" not in p["sites"]  # it stands in the road's polygon now
    assert call(hub, "GET", f"/api/v1/devices/{CAM}/place", "duty").json()["source"] == "admin"
    back = call(hub, "DELETE", f"/api/v1/devices/{CAM}/place").json()
    assert (back["source"], back["sites"]) == ("config", ["school-1"])
    actions = [(e["action"], e["target"]) for e in call(hub, "GET", "/api/v1/audit").json()["entries"]]
    assert ("device.place", CAM) in actions and ("device.unplace", CAM) in actions


def test_coverage_report_csv_blind_spots_and_metrics(hub: HubProcess) -> None:
    rep = call(hub, "GET", "/api/v1/coverage", "duty", params={"period": "30d"}).json()
    by = {(c["center"], k["kind"]): k for c in rep["centers"] for k in c["kinds"]}
    school = by[("shaxi", "school")]
    # No agent reports: both cameras are unknown, every site is a blind spot since it was created.
    assert (school["sites"], school["covered"], school["target"], school["meets_target"]) == (1, 0, 1.0, False)
    assert school["uncovered"][0]["id"] == "school-1" and by[("taicang", "school")]["sites"] == 1
    assert {s["id"] for s in rep["blind_spots"]} >= {"school-1", "road-1"}
    spots = call(hub, "GET", "/api/v1/coverage/blind-spots", "duty").json()
    assert [s["id"] for s in spots["sites"]] == [s["id"] for s in rep["blind_spots"]]
    assert call(hub, "GET", "/api/v1/coverage", "duty", params={"period": "5x"}).status_code == 422
    assert call(hub, "GET", "/api/v1/coverage", "duty", params={"center": "nowhere"}).status_code == 404
    r = call(hub, "GET", "/api/v1/coverage", "duty", params={"period": "24h", "format": "csv"})
    assert r.headers["content-type"].startswith("text/csv")
    tables = r.text.split("\n\n")
    rows = list(csv.DictReader(io.StringIO(tables[0])))
    assert {(x["center"], x["kind"]) for x in rows} == set(by) and rows[0]["target"]
    assert next(iter(csv.DictReader(io.StringIO(tables[1]))))["id"] in {"school-1", "road-1"}
    metrics = call(hub, "GET", "/metrics").text
    assert 'vms_coverage_sites{center="shaxi",kind="school"} 1.0' in metrics
    assert 'vms_coverage_covered_sites{center="shaxi",kind="school"} 0.0' in metrics
    assert 'vms_coverage_target_ratio{center="taicang",kind="main_road"} 1.0' in metrics
    assert 'vms_site_covered{center="shaxi",kind="school",site="school-1"} 0.0' in metrics


@pytest.mark.parametrize(("sites", "devices", "map_", "message"), [
    ([{**SITES[0], "center": "nowhere"}], [], {}, "site 'school-1' names unknown center 'nowhere'"),
    ([{**SITES[0], "lon": 31.5, "lat": 121.1}], [], {}, "look swapped"),
    ([{**SITES[0], "lat": -91}], [], {}, "latitude -91.0 is out of range"),
    ([{**SITES[1], "polygon": SQUARE[:-1]}], [], {}, "does not close"),
    ([SITES[0]], [{"id": CAM, "sites": ["nowhere"]}], {}, f"device {CAM} is assigned to unknown site 'nowhere'"),
    ([SITES[0]], [{"id": CAM, "lon": 121.1}], {}, "give both lon and lat"),
    ([{**SITES[0], "lon": 120.5}], [], {"boundary": BOUNDARY}, "outside the district"),
    ([], [], {"boundary": {"type": "Polygon", "coordinates": [SQUARE[:-1]]}}, "does not close"),
    ([], [], {"tile_url": "https://tile.example/tiles.png"}, "map.tile_url"),
])
def test_bad_config_is_refused_naming_the_field(tmp_path: Path, sites: list[Any], devices: list[Any],
                                                map_: dict[str, Any], message: str) -> None:
    cfg = write_config(tmp_path / "hub.yaml", hub_config(tmp_path / "data", sites=sites, devices=devices, map=map_))
    r = vms_cli("config", "check", str(cfg), check=False)
    assert r.returncode == 2 and message in r.stderr, r.stderr


def test_boundary_from_a_file_and_sites_checked_offline(tmp_path: Path) -> None:
    (tmp_path / "district.geojson").write_text(json.dumps({"type": "Feature", "properties": {}, "geometry": BOUNDARY}))
    cfg = write_config(tmp_path / "hub.yaml", hub_config(tmp_path / "data", sites=SITES,
                                                         map={"boundary_file": str(tmp_path / "district.geojson")}))
    assert vms_cli("config", "check", str(cfg)).stdout.strip().endswith("ok")
    (tmp_path / "sites.csv").write_text("id,name,kind,center,lon,lat\nx,学校,学校,shaxi,31.5,121.1\n", encoding="utf-8")
    r = vms_cli("sites", "check", str(tmp_path / "sites.csv"), "--config", str(cfg), check=False)
    assert r.returncode == 1 and "CSV line 2" in r.stderr and "swapped" in r.stderr
    (tmp_path / "sites.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": [
        {"type": "Feature", "properties": {"id": "y", "name": "医院", "kind": "hospital", "center": "shaxi"},
         "geometry": {"type": "Point", "coordinates": [121.1, 31.5]}}]}))
    r = vms_cli("sites", "check", str(tmp_path / "sites.geojson"), "--config", str(cfg))
    assert "1 site(s)" in r.stdout
