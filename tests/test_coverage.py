"""Coverage over a real store with a hand-moved clock: exact figures from the history, since-when, the
site_uncovered alert through the one alert writer (once across a restart), and where a camera's
position comes from (an admin, the config, the device's own GB/T 28181 catalog)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from tests.conftest import Clock, hub_config
from tests.test_hub import agent, beat, run
from vms import auth
from vms.config import HubConfig
from vms.db.models import Alert
from vms.hub import Hub

SCHOOL_CAM = "32058502111320000001"
ROAD_CAM = "32058501001320000002"
SPARE = "32058502001320000003"
SITES = [
    {"id": "school", "name": "沙溪小学", "kind": "school", "center": "education", "lon": 121.10, "lat": 31.55},
    {"id": "road", "name": "人民路", "kind": "main_road", "center": "chengxiang", "min_cameras": 2,
     "polygon": [[121.00, 31.40], [121.01, 31.40], [121.01, 31.41], [121.00, 31.41], [121.00, 31.40]]},
    {"id": "shops", "name": "东街商铺", "kind": "shop_street", "center": "chengxiang", "lon": 121.05, "lat": 31.45},
]
DEVICES = [{"id": SCHOOL_CAM, "lon": 121.1001, "lat": 31.5501}, {"id": ROAD_CAM, "lon": 121.005, "lat": 31.405},
           {"id": SPARE, "sites": ["road"]}]


def make(tmp_path: Path, clock: Clock, **extra: Any) -> Hub:
    cfg = hub_config(tmp_path / "data", sites=SITES, devices=DEVICES, coverage={"alert_after_s": 30}, **extra)
    return Hub(HubConfig.model_validate(cfg), clock=clock)


def site_alerts(hub: Hub) -> list[Alert]:
    with hub.sessions() as s:
        return list(s.scalars(select(Alert).where(Alert.kind == "site_uncovered").order_by(Alert.id)))


def step(hub: Hub, clock: Clock, seconds: int, who: Any = None, cams: list[str] | None = None) -> None:
    for _ in range(seconds):
        run(hub, clock, 1, who, cams)
        hub.coverage.tick()


def figures(hub: Hub, start: float, end: float) -> dict[tuple[str, str], dict[str, Any]]:
    rep = hub.coverage.report(start, end)
    return {(c["center"], k["kind"]): k for c in rep["centers"] for k in c["kinds"]}


def test_time_weighted_coverage_since_when_and_one_alert_per_uncovered_key_site(tmp_path: Path, clock: Clock) -> None:
    hub = make(tmp_path, clock)
    t0 = clock.t
    a = agent(hub, "agent-a", "320585")
    beat(hub, a, [SCHOOL_CAM, ROAD_CAM, SPARE])
    step(hub, clock, 100, a, [SCHOOL_CAM, ROAD_CAM, SPARE])  # all online from t0 (steady after 3 s, dated back)
    assert hub.coverage.blind_spots()["sites"][0]["id"] == "shops"  # no camera near the shops: blind from the start
    stop = clock.t
    step(hub, clock, 100, a, [ROAD_CAM, SPARE])  # the school camera goes dark at `stop`
    spots = {s["id"]: s for s in hub.coverage.blind_spots()["sites"]}
    assert list(spots) == ["shops", "school"]  # longest first
    assert spots["school"]["since"] == hub.coverage.report(t0, clock.t)["blind_spots"][1]["since"]
    assert abs(spots["school"]["for_s"] - 100) <= 1.0  # dark at its last signal, flagged 5-6 s later
    rows = site_alerts(hub)
    assert [(r.state, r.fingerprint, r.center_id, r.members) for r in rows] == [
        ("open", "site_uncovered:school", "education", [SCHOOL_CAM])]
    assert rows[0].since_at == pytest.approx(stop, abs=1.0) and "沙溪小学" in rows[0].title
    # The road needs two working cameras: one going dark leaves it uncovered.
    step(hub, clock, 50, a, [ROAD_CAM])
    assert "road" in {s["id"] for s in hub.coverage.blind_spots()["sites"]}
    f = figures(hub, t0, clock.t)
    total = clock.t - t0  # 250 s; the sites were created at t0
    assert f[("education", "school")]["rate"] == pytest.approx(100 / total, abs=2 / total)
    assert f[("chengxiang", "main_road")]["rate"] == pytest.approx(200 / total, abs=2 / total)
    assert f[("chengxiang", "shop_street")]["rate"] == 0 and f[("chengxiang", "shop_street")]["target"] == 0.8
    assert f[("taicang", "school")]["sites"] == 1 and f[("taicang", "main_road")]["covered"] == 0
    # Back: the alert resolves after the hold, and a restart neither re-opens nor forgets it.
    step(hub, clock, 30, a, [SCHOOL_CAM, ROAD_CAM, SPARE])
    assert [r.state for r in site_alerts(hub)] == ["resolved", "resolved"]  # the school's and the road's
    hub.stop()
    hub = make(tmp_path, clock)
    a = agent(hub, "agent-b", "320585")
    step(hub, clock, 60, a, [SCHOOL_CAM, ROAD_CAM, SPARE])
    assert len(site_alerts(hub)) == 2
    hub.stop()


def test_an_open_site_alert_is_adopted_after_a_restart(
    tmp_path: Path, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="vms.services")
    hub = make(tmp_path, clock)
    step(hub, clock, 60)  # no agent: every camera stays unknown, the key sites alert
    assert sorted(r.fingerprint for r in site_alerts(hub)) == ["site_uncovered:road", "site_uncovered:school"]
    # One warning for the tick that found both (a new district may have hundreds), no error: the hub is fine.
    told = [r for r in caplog.records if "uncovered" in r.getMessage()]
    assert [(r.levelno, r.getMessage().split(":")[0]) for r in told] == [
        (logging.WARNING, "2 key site(s) uncovered, an alert opened for each")]
    assert "人民路" in told[0].getMessage() and "沙溪小学" in told[0].getMessage()
    hub.stop()
    caplog.clear()
    hub = make(tmp_path, clock)
    step(hub, clock, 60)
    assert len(site_alerts(hub)) == 2  # the same two, still open
    assert not [r for r in caplog.records if "uncovered" in r.getMessage()]  # adopted, not opened again
    hub.stop()


def test_positions_admin_beats_config_beats_the_gb_catalog(tmp_path: Path, clock: Clock) -> None:
    hub = make(tmp_path, clock, map={"boundary": {"type": "Polygon", "coordinates": [[
        [120.9, 31.3], [121.2, 31.3], [121.2, 31.6], [120.9, 31.6], [120.9, 31.3]]]}})
    cov = hub.coverage
    assert cov.place_reported(SPARE, 121.1, 31.55) is True
    assert cov.placement(SPARE)["source"] == "gb28181"
    assert cov.placement(SPARE)["sites"] == ["road"]  # explicit sites from the config still win
    assert cov.place_reported(SCHOOL_CAM, 121.005, 31.405) is True
    assert cov.placement(SCHOOL_CAM)["source"] == "config"  # the config's position is stronger
    assert cov.place_reported(SPARE, 0, 0) is False  # what devices send when unset
    assert cov.place_reported(SPARE, 31.55, 121.1) is False  # swapped: refused and logged
    assert cov.place_reported("123", 121.1, 31.55) is False
    _, admin = auth.create(hub.sessions, "admin", "ops")
    cov.place(admin, SCHOOL_CAM, 121.005, 31.405, None)
    assert (cov.placement(SCHOOL_CAM)["source"], cov.placement(SCHOOL_CAM)["sites"]) == ("admin", ["road"])
    hub.stop()
    hub = make(tmp_path, clock)  # the device's own position is kept in the store
    assert hub.coverage.placement(SPARE)["sources"]["gb28181"]["lon"] == 121.1
    hub.stop()
