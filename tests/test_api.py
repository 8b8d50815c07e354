"""The HTTP API of a real hub process on loopback: roles, agents, figures, reports, metrics, bad input."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import HubProcess
from vms.api import ROUTERS
from vms.api.system import PUBLIC_PATHS

CAM_A = "32058501001320000001"
CAM_SCHOOL = "32058502111320000001"


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HubProcess]:
    from tests.conftest import free_port, hub_config, write_config

    d = tmp_path_factory.mktemp("api")
    hp = HubProcess(write_config(d / "hub.yaml", hub_config(d / "data")), free_port())
    for role in ("admin", "duty", "maintenance", "police"):
        hp.token(role)
    hp.token("agent", "320585", name="agent-a")
    hp.token("agent", "32058502", name="agent-b")
    hp.start()
    yield hp
    hp.stop()


def get(hub: HubProcess, path: str, role: str = "duty", **kw: Any) -> httpx.Response:
    return httpx.get(hub.url + path, headers={"Authorization": f"Bearer {hub.tokens[role]}"}, timeout=10, **kw)


def post(hub: HubProcess, path: str, role: str, body: Any = None, **kw: Any) -> httpx.Response:
    return httpx.post(hub.url + path, headers={"Authorization": f"Bearer {hub.tokens[role]}"}, json=body,
                      timeout=10, **kw)


def heartbeat(hub: HubProcess, cams: list[str], role: str = "agent-a", **extra: Any) -> httpx.Response:
    body = {"protocol": 1, "sent_at": time.time(),
            "cameras": [{"device_id": c, "connected": True, "last_packet_age_s": 0.05, "fps": 25,
                         "bitrate_bps": 2e6, "name": f"cam {c[-2:]}"} for c in cams], **extra}
    return post(hub, "/api/v1/agents/heartbeat", role, body)


def test_every_route_requires_a_role() -> None:
    """Deny by default: each API route carries a role dependency; only liveness and docs are open."""
    for router in ROUTERS:
        for route in router.routes:
            path = getattr(route, "path", "")
            if path in PUBLIC_PATHS or path == "/metrics":
                continue
            deps = [d.call for d in route.dependant.dependencies]  # type: ignore[attr-defined]
            assert any(hasattr(c, "roles") for c in deps), f"{path} has no role check"


def test_no_token_bad_token_wrong_role(hub: HubProcess) -> None:
    for path in ("/api/v1/devices", "/api/v1/centers", "/api/v1/alerts", "/api/v1/reports/availability",
                 "/metrics", "/api/v1/tokens", "/api/v1/audit"):
        r = httpx.get(hub.url + path, timeout=5)
        assert r.status_code == 401, path
        r = httpx.get(hub.url + path, headers={"Authorization": "Bearer vms_nope_nope"}, timeout=5)
        assert r.status_code == 401, path
    assert get(hub, "/api/v1/devices", "agent-a").status_code == 403
    assert get(hub, "/api/v1/tokens", "duty").status_code == 403
    assert post(hub, "/api/v1/agents/heartbeat", "duty", {"sent_at": 1}).status_code == 403
    assert post(hub, "/api/v1/alerts/1/ack", "duty", {}).status_code == 403
    assert httpx.get(hub.url + "/healthz", timeout=5).json()["status"] == "ok"


def test_agent_flow_centers_devices_and_rates(hub: HubProcess) -> None:
    r = post(hub, "/api/v1/agents/register", "agent-a", {"protocol": 1, "version": "1.0", "hostname": "edge-1"})
    assert r.status_code == 200 and r.json()["prefixes"] == ["320585"]
    assert post(hub, "/api/v1/agents/register", "agent-a", {"protocol": 9}).status_code == 426
    deadline = time.monotonic() + 30
    while True:  # an agent heartbeats every 2 s; a new camera counts as online after 3 s of steady signal
        assert heartbeat(hub, [CAM_A, CAM_SCHOOL]).status_code == 200
        devices = get(hub, "/api/v1/devices").json()
        if {d["state"] for d in devices["devices"]} == {"online"} or time.monotonic() > deadline:
            break
        time.sleep(2)
    states = {d["id"]: d["state"] for d in devices["devices"]}
    assert states[CAM_A] == "online" and states[CAM_SCHOOL] == "online"
    school = next(d for d in devices["devices"] if d["id"] == CAM_SCHOOL)
    assert set(school["centers"]) == {"shaxi", "education"} and school["name"] == "cam 01"
    tree = get(hub, "/api/v1/centers").json()["centers"][0]
    assert tree["id"] == "taicang" and tree["counts"]["devices"] == 2 and tree["online_ratio"] == 1.0
    assert tree["upload_ratio"] == 0.0 and tree["meets_targets"] is False  # no media relayed yet
    kids = {c["id"]: c["counts"]["devices"] for c in tree["children"]}
    assert kids == {"chengxiang": 1, "shaxi": 1, "education": 1}
    one = get(hub, f"/api/v1/devices/{CAM_SCHOOL}").json()
    assert one["id_fields"]["industry"] == "11" and one["agent"] == "agent-a"
    assert get(hub, "/api/v1/devices", params={"center": "education"}).json()["total"] == 1
    assert get(hub, "/api/v1/devices", params={"center": "nowhere"}).status_code == 404
    assert get(hub, "/api/v1/devices/32058501001320009999").status_code == 404
    assert get(hub, "/api/v1/devices/3205850100132000000x").status_code == 422
    hist = get(hub, f"/api/v1/devices/{CAM_A}/history", params={"period": "1h"}).json()
    assert hist["intervals"][-1]["state"] == "online" and hist["intervals"][-1]["to"] is None
    agents = {a["id"]: a for a in get(hub, "/api/v1/agents").json()["agents"]}
    assert agents["agent-a"]["online"] and agents["agent-a"]["devices"] == 2


def test_heartbeat_bad_input(hub: HubProcess) -> None:
    r = heartbeat(hub, ["32058501001320000002", "11000000001320000001"], role="agent-b")
    assert r.status_code == 200
    assert [x["device_id"] for x in r.json()["rejected"]] == ["32058501001320000002", "11000000001320000001"]
    bad = post(hub, "/api/v1/agents/heartbeat", "agent-a", {"sent_at": time.time(), "cameras": [
        {"device_id": "123", "connected": True}]})
    assert bad.status_code == 422 and "device_id" in bad.text
    bad = post(hub, "/api/v1/agents/heartbeat", "agent-a", {"sent_at": time.time(), "camras": []})
    assert bad.status_code == 422 and "camras" in bad.text
    neg = post(hub, "/api/v1/agents/heartbeat", "agent-a", {"sent_at": time.time(), "cameras": [
        {"device_id": CAM_A, "connected": True, "fps": -1}]})
    assert neg.status_code == 422
    junk = httpx.post(hub.url + "/api/v1/agents/heartbeat", content=b"{not json",
                      headers={"Authorization": f"Bearer {hub.tokens['agent-a']}",
                               "content-type": "application/json"}, timeout=5)
    assert junk.status_code == 422
    huge = httpx.post(hub.url + "/api/v1/agents/heartbeat", content=b" " * 5_000_000,
                      headers={"Authorization": f"Bearer {hub.tokens['agent-a']}",
                               "content-type": "application/json"}, timeout=10)
    assert huge.status_code == 413
    too_many = {"sent_at": time.time(), "cameras": [{"device_id": CAM_A, "connected": True}] * 10_001}
    assert post(hub, "/api/v1/agents/heartbeat", "agent-a", too_many).status_code in (413, 422)
    skew = heartbeat(hub, [CAM_A], sent_at=time.time() - 7200)
    assert skew.status_code == 200 and "off by +7200" in skew.json()["warning"]


def test_reports_json_csv_and_windows(hub: HubProcess) -> None:
    heartbeat(hub, [CAM_A, CAM_SCHOOL])
    rep = get(hub, "/api/v1/reports/availability", params={"period": "1h"}).json()
    centers = {c["center"]: c for c in rep["centers"]}
    assert set(centers) == {"taicang", "chengxiang", "shaxi", "education"}
    assert rep["devices"][0]["device_id"] in (CAM_A, CAM_SCHOOL)
    edu = get(hub, "/api/v1/reports/availability", params={"center": "education", "period": "24h"}).json()
    assert [c["center"] for c in edu["centers"]] == ["education"] and edu["device_count"] == 1
    text = get(hub, "/api/v1/reports/availability", params={"period": "24h", "format": "csv"}).text
    rows = list(csv.reader(io.StringIO(text)))
    assert rows[0][:3] == ["center", "name", "level"] and rows[6][:1] == ["device_id"]
    month = get(hub, "/api/v1/reports/availability", params={"period": "2026-11"})
    assert month.status_code == 200 and month.json()["from"] == "2026-10-31T16:00:00Z"
    for params, words in (
        ({"period": "3x"}, "use e.g."), ({"from": "2026-11-01T00:00:00"}, "no time zone"),
        ({"from": "2026-11-02T00:00:00Z", "to": "2026-11-01T00:00:00Z"}, "after"),
        ({"from": "yesterday"}, "RFC 3339"), ({"period": "2026-13"}, "01-12"),
        ({"from": "2020-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}, "400 days"),
    ):
        r = get(hub, "/api/v1/reports/availability", params=params)
        assert r.status_code == 422 and words in r.text, (params, r.text)
    assert get(hub, "/api/v1/reports/availability", params={"center": "x"}).status_code == 404


def test_metrics_names_and_labels(hub: HubProcess) -> None:
    up = f'vms_device_up{{device_id="{CAM_A}"}} 1.0'
    deadline = time.monotonic() + 20
    while True:  # heartbeats until the camera counts as up again (it needs a few seconds of steady signal)
        heartbeat(hub, [CAM_A])
        text = get(hub, "/metrics").text
        if up in text or time.monotonic() > deadline:
            break
        time.sleep(1)
    for name in ("vms_device_up", "vms_device_uploading", "vms_device_last_seen_timestamp_seconds",
                 "vms_device_fps", "vms_device_bitrate_bps", "vms_device_reconnects_total",
                 "vms_center_devices", "vms_center_online_ratio", "vms_center_upload_ratio",
                 "vms_center_intact_ratio", "vms_alerts_open"):
        assert f"\n{name}" in text or text.startswith(name), name
    assert up in text
    assert 'vms_center_target_ratio{center="taicang",kind="upload"} 1.0' in text
    assert 'vms_center_devices{center="taicang"}' in text
    assert get(hub, "/metrics", "agent-a").status_code == 403


def test_agent_spool_report_reaches_list_and_metrics(hub: HubProcess) -> None:
    """What an agent's spool lost (quota drops: footage; live drops: live-view gaps) is reported,
    not only counted on the agent: the agents list and the metrics show its last report."""
    spool = {"queued_segments": 7, "queued_bytes": 7000, "dropped_segments": 3, "live_dropped_segments": 5}
    assert heartbeat(hub, [CAM_A], spool=spool).status_code == 200
    agents = {a["id"]: a for a in get(hub, "/api/v1/agents").json()["agents"]}
    assert agents["agent-a"]["spool"] == spool
    text = get(hub, "/metrics").text
    for line in ('vms_agent_spool_queued_segments{agent="agent-a"} 7.0',
                 'vms_agent_spool_queued_bytes{agent="agent-a"} 7000.0',
                 'vms_agent_spool_dropped_segments_total{agent="agent-a"} 3.0',
                 'vms_agent_live_dropped_segments_total{agent="agent-a"} 5.0'):
        assert line in text, line
    older = {k: v for k, v in spool.items() if k != "live_dropped_segments"}  # an agent before live drops
    assert heartbeat(hub, [CAM_A], spool=older).status_code == 200
    agents = {a["id"]: a for a in get(hub, "/api/v1/agents").json()["agents"]}
    assert agents["agent-a"]["spool"]["live_dropped_segments"] == 0
    assert heartbeat(hub, [CAM_A], spool={**spool, "dropped_segments": -1}).status_code == 422


def spool_alerts(hub: HubProcess) -> list[dict[str, Any]]:
    r = get(hub, "/api/v1/alerts", params={"kind": "spool_dropped", "state": "active"})
    return [a for a in r.json()["alerts"] if a["agent_id"] == "agent-a"]


def test_footage_an_agent_dropped_raises_one_alert_until_resolved(hub: HubProcess) -> None:
    """Recorded segments the agent's spool quota forced out are footage lost: the maintenance crew
    gets one alert per agent, updated while the count grows, and a new one after resolving it."""
    def beat(dropped: int) -> None:
        spool = {"queued_segments": 0, "queued_bytes": 0, "dropped_segments": dropped}
        assert heartbeat(hub, [CAM_A], spool=spool).status_code == 200

    beat(3)  # the previous test's report: the hub already knows of 3
    for a in spool_alerts(hub):  # resolve what the previous test raised
        assert post(hub, f"/api/v1/alerts/{a['id']}/resolve", "maintenance", {"comment": ""}).status_code == 200
    beat(3)
    assert spool_alerts(hub) == []  # nothing new lost
    beat(5)
    (alert,) = spool_alerts(hub)
    assert alert["severity"] == "critical" and alert["detail"]["lost_segments"] == 2
    assert "agent-a dropped 2 recorded segment(s)" in alert["title"], alert["title"]
    beat(9)
    (again,) = spool_alerts(hub)
    assert again["id"] == alert["id"] and again["detail"] == {"lost_segments": 6, "agent_total": 9}
    time.sleep(2)  # a few hub ticks: the outage book must not resolve it (no device is ok or not)
    assert [a["id"] for a in spool_alerts(hub)] == [alert["id"]]
    resolved = post(hub, f"/api/v1/alerts/{alert['id']}/resolve", "maintenance", {"comment": "disk replaced"})
    assert resolved.status_code == 200
    beat(9)
    assert spool_alerts(hub) == []
    beat(0)  # the agent's spool was reset: nothing lost
    beat(1)
    (fresh,) = spool_alerts(hub)
    assert fresh["id"] != alert["id"] and fresh["detail"]["lost_segments"] == 1


def test_tokens_and_audit_over_http(hub: HubProcess) -> None:
    r = post(hub, "/api/v1/tokens", "admin", {"role": "duty", "name": "wall-2"})
    assert r.status_code == 201
    new = r.json()["token"]
    assert httpx.get(hub.url + "/api/v1/centers", headers={"Authorization": f"Bearer {new}"}).status_code == 200
    assert post(hub, "/api/v1/tokens", "admin", {"role": "agent"}).status_code == 422
    assert post(hub, "/api/v1/tokens", "admin", {"role": "root"}).status_code == 422
    assert httpx.delete(hub.url + "/api/v1/tokens/wall-2",
                        headers={"Authorization": f"Bearer {hub.tokens['admin']}"}).status_code == 200
    assert httpx.get(hub.url + "/api/v1/centers", headers={"Authorization": f"Bearer {new}"}).status_code == 401
    audit = get(hub, "/api/v1/audit", "admin").json()
    assert audit["verified"] is True
    actions = [e["action"] for e in audit["entries"]]
    assert "token.create" in actions and "token.revoke" in actions and "agent.register" in actions


def test_footage_lost_while_the_hub_was_down_alerts_once_across_restarts(make_hub_process: Any) -> None:
    """The count last seen is stored: a restarted hub neither raises the alert twice nor lets the
    outage book resolve it, and drops made while the hub was down still raise it."""
    hub: HubProcess = make_hub_process()
    hub.token("duty")
    hub.token("agent", "320585", name="agent-a")
    hub.start()
    try:
        def beat(dropped: int) -> None:
            spool = {"queued_segments": 0, "queued_bytes": 0, "dropped_segments": dropped}
            assert heartbeat(hub, [CAM_A], spool=spool).status_code == 200

        beat(0)
        assert spool_alerts(hub) == []
        hub.stop()  # the hub is down long enough for the agent's spool to drop 4 segments
        hub.start()
        beat(4)
        (alert,) = spool_alerts(hub)
        assert alert["detail"]["lost_segments"] == 4
        hub.stop()
        hub.start()
        beat(4)
        time.sleep(2)
        assert spool_alerts(hub) == [alert]
    finally:
        hub.stop()
