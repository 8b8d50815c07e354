"""Discovered cameras wait for an admin (or the hub's auto_accept), against a real hub process.

The API tests drive ``vms serve`` over HTTP as an agent and as people in each role. The end-to-end
test runs a real agent process in a network namespace: it finds a simulated ONVIF camera by
WS-Discovery (camsim's responder in a second namespace; WS-Discovery skips loopback) and relays a
configured camera at once, while the discovered one reaches the hub only after an admin accepts it.
The hub and the RTSP simulator listen on a veth address joining the agent's namespace to this one;
nothing else is contacted.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from camsim.clips import ClipParams
from camsim.sim import Simulator
from tests.conftest import ROOT, HubProcess, free_port, hub_config, stop_process, wait_until, write_config
from vms.kernel.timeutil import iso

AGENT_PREFIX = "320585"
CONFIGURED = "32058501001320000001"
FOUND = "32058501001320000002"
FOUND2 = "32058502001320000003"
OUTSIDER = "11010000001320000001"
OTHER = "32058502001320000009"
PEOPLE = ("admin", "duty", "maintenance", "police")


def call(hub: HubProcess, method: str, path: str, role: str = "admin", body: Any = None,
         **params: Any) -> httpx.Response:
    return httpx.request(method, hub.url + path, json=body, params=params, timeout=10,
                         headers={"Authorization": f"Bearer {hub.tokens[role]}"})


def cam(device_id: str, source: str = "onvif", **extra: Any) -> dict[str, Any]:
    return {"device_id": device_id, "source": source, "manufacturer": "Sim", "model": "IPC-1",
            "serial": f"SN{device_id[-4:]}", "address": "127.0.0.1:18000",
            "stream_uri": f"rtsp://127.0.0.1:8554/cam/{device_id}", **extra}


def report(hub: HubProcess, *cams: dict[str, Any]) -> dict[str, dict[str, str]]:
    r = call(hub, "POST", "/api/v1/agents/cameras", "edge-1", {"cameras": list(cams)})
    assert r.status_code == 200, r.text
    return {c["device_id"]: c for c in r.json()["cameras"]}


def heartbeat(hub: HubProcess, *devices: str) -> dict[str, str]:
    body = {"sent_at": time.time(), "cameras": [{"device_id": d, "connected": True, "last_packet_age_s": 0.1,
                                                 "fps": 25} for d in devices]}
    r = call(hub, "POST", "/api/v1/agents/heartbeat", "edge-1", body)
    assert r.status_code == 200, r.text
    return {x["device_id"]: x["reason"] for x in r.json()["rejected"]}


def put_segment(hub: HubProcess, device_id: str) -> httpx.Response:
    data = b"\x47" + os.urandom(187)
    return httpx.put(f"{hub.url}/api/v1/agents/segments/{device_id}", content=data, timeout=10,
                     params={"start": f"{time.time():.3f}", "duration": "2"},
                     headers={"Authorization": f"Bearer {hub.tokens['edge-1']}", "Content-Type": "video/mp2t",
                              "X-VMS-SHA256": hashlib.sha256(data).hexdigest()})


def devices(hub: HubProcess) -> set[str]:
    return {d["id"] for d in call(hub, "GET", "/api/v1/devices").json()["devices"]}


def audit_rows(hub: HubProcess, action: str) -> list[dict[str, Any]]:
    r = call(hub, "GET", "/api/v1/audit")
    assert r.status_code == 200 and r.json()["verified"], r.text
    return [e for e in r.json()["entries"] if e["action"] == action]


def make(make_hub_process: Any, database_url: str | None = None, **sections: Any) -> HubProcess:
    if database_url:
        sections["storage"] = {"database_url": database_url}
    hub: HubProcess = make_hub_process(**sections)
    for role in PEOPLE:
        hub.token(role, name=role)
    hub.token("agent", AGENT_PREFIX, name="edge-1")
    hub.start()
    r = call(hub, "POST", "/api/v1/agents/register", "edge-1", {"protocol": 1, "version": "t", "hostname": "h"})
    assert r.status_code == 200, r.text
    return hub


# --------------------------------------------------------------------------- API over a real hub


def test_discovered_camera_pending_until_an_admin_accepts(make_hub_process: Any, database_url: str | None) -> None:
    hub = make(make_hub_process, database_url)
    got = report(hub, cam(CONFIGURED, "config", name="North gate"), cam(FOUND), cam(OUTSIDER))
    assert got[CONFIGURED]["state"] == "accepted" and "config" in got[CONFIGURED]["reason"]
    assert got[FOUND]["state"] == "pending" and "waiting for an admin" in got[FOUND]["reason"]
    assert got[OUTSIDER]["state"] == "refused" and "prefixes" in got[OUTSIDER]["reason"]
    assert devices(hub) == {CONFIGURED}

    # The hub itself refuses a pending camera's stats and media, whatever the agent does.
    assert "waiting for an admin" in heartbeat(hub, CONFIGURED, FOUND)[FOUND]
    refused = put_segment(hub, FOUND)
    assert refused.status_code == 403 and "waiting for an admin" in refused.text
    assert devices(hub) == {CONFIGURED}

    listed = call(hub, "GET", "/api/v1/discovered", state="pending").json()
    assert listed["total"] == 1
    (row,) = listed["cameras"]
    assert (row["device_id"], row["agent"], row["source"], row["state"]) == (FOUND, "edge-1", "onvif", "pending")
    assert (row["manufacturer"], row["model"], row["name"]) == ("Sim", "IPC-1", "Sim IPC-1")
    assert row["stream_uri"] == f"rtsp://127.0.0.1:8554/cam/{FOUND}" and row["first_seen"] and not row["decided_by"]
    everything = call(hub, "GET", "/api/v1/discovered").json()
    assert {c["device_id"]: c["state"] for c in everything["cameras"]} == {CONFIGURED: "accepted", FOUND: "pending"}

    r = call(hub, "POST", f"/api/v1/discovered/{FOUND}/accept", body={"comment": "installed by crew 3"})
    assert r.status_code == 200, r.text
    decided = r.json()
    assert (decided["state"], decided["decided_by"], decided["comment"]) == ("accepted", "admin", "installed by crew 3")
    assert devices(hub) == {CONFIGURED, FOUND}  # registered like an auto-accepted camera
    assert heartbeat(hub, CONFIGURED, FOUND) == {}
    assert put_segment(hub, FOUND).status_code == 201
    assert report(hub, cam(FOUND))[FOUND]["state"] == "accepted"
    assert call(hub, "GET", "/api/v1/discovered", state="pending").json()["total"] == 0

    (accepted,) = audit_rows(hub, "camera.accept")
    assert (accepted["actor"], accepted["role"], accepted["target"]) == ("admin", "admin", FOUND)
    assert accepted["detail"] == {"agent": "edge-1", "source": "onvif", "previous": "pending",
                                  "comment": "installed by crew 3"}
    (auto,) = audit_rows(hub, "camera.auto_accept")
    assert auto["actor"] == "edge-1" and auto["detail"]["devices"] == [CONFIGURED]


def test_only_admins_decide(make_hub_process: Any) -> None:
    hub = make(make_hub_process, devices=[{"id": FOUND2, "name": "Known"}])
    got = report(hub, cam(FOUND), cam(FOUND2))
    assert got[FOUND]["state"] == "pending"
    # A device the hub knew before acceptance existed (here from its config) keeps being relayed.
    assert got[FOUND2]["state"] == "accepted" and "registered before" in got[FOUND2]["reason"]
    for role in ("duty", "maintenance", "police", "edge-1"):
        assert call(hub, "GET", "/api/v1/discovered", role).status_code == 403, role
        for action in ("accept", "reject"):
            r = call(hub, "POST", f"/api/v1/discovered/{FOUND}/{action}", role, {})
            assert r.status_code == 403 and "admin" in r.json()["detail"], (role, action)
    assert httpx.get(f"{hub.url}/api/v1/discovered", timeout=5).status_code == 401
    pending = call(hub, "GET", "/api/v1/discovered", state="pending").json()["cameras"]
    assert [c["device_id"] for c in pending] == [FOUND]
    assert audit_rows(hub, "camera.accept") == audit_rows(hub, "camera.reject") == []
    # Precise errors for bad input.
    assert call(hub, "POST", f"/api/v1/discovered/{OTHER}/accept", body={}).status_code == 404
    assert call(hub, "POST", "/api/v1/discovered/123/accept", body={}).status_code == 422
    assert call(hub, "GET", "/api/v1/discovered", state="maybe").status_code == 422
    assert call(hub, "POST", f"/api/v1/discovered/{FOUND}/accept", body={"why": "x"}).status_code == 422
    leaky = call(hub, "POST", "/api/v1/agents/cameras", "edge-1",
                 {"cameras": [cam(OTHER, stream_uri="rtsp://admin:pw@127.0.0.1/x")]})
    assert leaky.status_code == 422 and "must not carry credentials" in leaky.text
    bad_source = call(hub, "POST", "/api/v1/agents/cameras", "edge-1", {"cameras": [cam(OTHER, "upnp")]})
    assert bad_source.status_code == 422 and "source" in bad_source.text


def test_422_never_echoes_credentials(make_hub_process: Any) -> None:
    hub = make(make_hub_process)
    password = "pw-9f3kq7"
    r = call(hub, "POST", "/api/v1/agents/cameras", "edge-1",
             {"cameras": [cam(OTHER, stream_uri=f"rtsp://admin:{password}@127.0.0.1/x")]})
    assert r.status_code == 422, r.text
    assert password not in r.text
    (err,) = r.json()["detail"]
    assert err["loc"] == ["body", "cameras", 0, "stream_uri"] and "must not carry credentials" in err["msg"], err
    assert set(err) == {"type", "loc", "msg"}, err
    # Any other field's bad value is not sent back either: every validation error drops the input.
    r = call(hub, "POST", "/api/v1/agents/cameras", "edge-1", {"cameras": [cam(password)]})
    assert r.status_code == 422 and password not in r.text and "device_id" in r.text, r.text
    hub.stop()  # flush the log
    assert hub.log is not None and password not in hub.log.read_text(errors="replace")


def test_rejected_stays_rejected_across_reports_and_restarts(make_hub_process: Any, database_url: str | None) -> None:
    hub = make(make_hub_process, database_url)
    assert report(hub, cam(FOUND))[FOUND]["state"] == "pending"
    r = call(hub, "POST", f"/api/v1/discovered/{FOUND}/reject", body={"comment": "neighbour's camera"})
    assert r.status_code == 200 and r.json()["state"] == "rejected"
    for _ in range(2):
        got = report(hub, cam(FOUND), cam(FOUND, "config"))[FOUND]  # listed twice: the second is refused
        assert got["state"] == "refused"
        got = report(hub, cam(FOUND))[FOUND]
        assert got["state"] == "rejected" and "neighbour's camera" in got["reason"] and "admin" in got["reason"]
        # Typing it into the agent's config does not undo an admin's rejection.
        assert report(hub, cam(FOUND, "config"))[FOUND]["state"] == "rejected"
        assert "rejected by an admin" in heartbeat(hub, FOUND)[FOUND]
        assert put_segment(hub, FOUND).status_code == 403
        hub.stop()
        hub.start()
    assert FOUND not in devices(hub)
    (rejected,) = audit_rows(hub, "camera.reject")
    assert rejected["target"] == FOUND and rejected["detail"]["comment"] == "neighbour's camera"

    # An admin changes it: accepted, registered and relayed from now on.
    assert call(hub, "POST", f"/api/v1/discovered/{FOUND}/accept", body={}).status_code == 200
    assert report(hub, cam(FOUND))[FOUND]["state"] == "accepted" and FOUND in devices(hub)
    assert put_segment(hub, FOUND).status_code == 201
    assert [a["detail"]["previous"] for a in audit_rows(hub, "camera.accept")] == ["rejected"]


def test_rejecting_an_accepted_camera_takes_it_out_of_service(
    make_hub_process: Any, database_url: str | None
) -> None:
    """Rejected after it was accepted and recording: its open alert resolves, no new one opens, it
    leaves the centers' counts, across a hub restart; accepted again, it is back in service."""
    hub = make(make_hub_process, database_url, alerts={"resolve_hold_s": 0},
               health={"offline_after_s": 2, "recover_after_s": 0, "startup_grace_s": 0})

    def state() -> str:
        return str(call(hub, "GET", f"/api/v1/devices/{CONFIGURED}", "duty").json()["state"])

    def open_alerts() -> list[dict[str, Any]]:
        r = call(hub, "GET", "/api/v1/alerts", "duty", state="active")
        return [a for a in r.json()["alerts"] if CONFIGURED in (a["device_id"], *a.get("members", []))]

    def counted() -> int:
        return int(call(hub, "GET", "/api/v1/centers", "duty").json()["centers"][0]["counts"]["devices"])

    assert report(hub, cam(CONFIGURED, "config"))[CONFIGURED]["state"] == "accepted"
    wait_until(lambda: heartbeat(hub, CONFIGURED) == {} and state() == "online", 10, "online")
    recorded_at = time.time()
    assert put_segment(hub, CONFIGURED).status_code == 201
    before = counted()
    wait_until(lambda: open_alerts(), 15, "an offline alert once its heartbeats stop")
    assert call(hub, "POST", f"/api/v1/discovered/{CONFIGURED}/reject", body={"comment": "removed"}).status_code == 200
    wait_until(lambda: not open_alerts(), 10, "its alert resolved")
    assert state() == "retired" and counted() == before - 1
    assert call(hub, "GET", "/api/v1/devices", "duty", state="retired").json()["total"] == 1
    assert f'device_id="{CONFIGURED}"' not in call(hub, "GET", "/metrics", "duty").text
    hub.stop()
    hub.start()
    time.sleep(4)  # twice the offline delay: a device in service would alert again
    assert state() == "retired" and not open_alerts() and counted() == before - 1
    # Its recordings stay reachable (police pull clips by device ID).
    r = call(hub, "GET", f"/api/v1/devices/{CONFIGURED}/recordings", "police",
             start=iso(recorded_at - 5), end=iso(recorded_at + 5))
    assert r.status_code == 200 and len(r.json()["segments"]) == 1, r.text

    assert call(hub, "POST", f"/api/v1/discovered/{CONFIGURED}/accept", body={}).status_code == 200
    assert state() != "retired" and counted() == before
    wait_until(lambda: heartbeat(hub, CONFIGURED) == {} and state() == "online", 10, "online again")


def test_a_just_accepted_camera_gets_time_to_start_before_it_counts_as_offline(make_hub_process: Any) -> None:
    """Accepting a camera on a hub that has run for a while: its agent needs seconds to start it,
    so it is 'unknown' for the startup grace, not offline with an alert at the next tick; a camera
    that never starts is offline after that grace."""
    hub = make(make_hub_process, health={"offline_after_s": 2, "startup_grace_s": 4})
    time.sleep(5)  # the hub's own startup grace is over
    assert report(hub, cam(FOUND))[FOUND]["state"] == "pending"
    accepted = time.monotonic()
    assert call(hub, "POST", f"/api/v1/discovered/{FOUND}/accept", body={}).status_code == 200

    def state() -> str:
        return str(call(hub, "GET", f"/api/v1/devices/{FOUND}", "duty").json()["state"])

    def offline_alerts() -> list[Any]:  # its agent is silent here too: it joins the agent_offline alert
        r = call(hub, "GET", "/api/v1/alerts", "duty", state="active")
        return [a for a in r.json()["alerts"] if FOUND in (a["device_id"], *a["members"])]

    while time.monotonic() - accepted < 2.5:  # several ticks within the grace
        assert state() == "unknown" and offline_alerts() == []
        time.sleep(0.5)
    wait_until(lambda: state() == "offline" and offline_alerts(), 6, "offline once the grace is over",
               context=lambda: f"state {state()}, alerts {offline_alerts()}")
    assert time.monotonic() - accepted >= 3.5


def test_auto_accept_from_the_hub_config(make_hub_process: Any) -> None:
    hub = make(make_hub_process, discovery={"auto_accept": True})
    got = report(hub, cam(FOUND), cam(FOUND2))
    assert {d: c["state"] for d, c in got.items()} == {FOUND: "accepted", FOUND2: "accepted"}
    assert devices(hub) == {FOUND, FOUND2}
    (auto,) = audit_rows(hub, "camera.auto_accept")
    assert auto["detail"] == {"why": "discovery.auto_accept is on", "devices": [FOUND, FOUND2]}
    rows = call(hub, "GET", "/api/v1/discovered", state="accepted").json()["cameras"]
    assert [(c["device_id"], c["decided_by"]) for c in rows] == [(FOUND, "hub"), (FOUND2, "hub")]
    # auto_accept never overrides an admin's rejection.
    assert call(hub, "POST", f"/api/v1/discovered/{FOUND2}/reject", body={}).status_code == 200
    assert report(hub, cam(FOUND2))[FOUND2]["state"] == "rejected"
    assert heartbeat(hub, FOUND, FOUND2) == {FOUND2: "camera rejected by an admin"}
    assert len(audit_rows(hub, "camera.auto_accept")) == 1  # decisions are audited once, not per report


def test_the_discovered_cameras_table_migrates_up_and_down(tmp_path: Path, database_url: str | None) -> None:
    from alembic import command
    from alembic.autogenerate import compare_metadata
    from alembic.config import Config
    from alembic.migration import MigrationContext
    from sqlalchemy import inspect

    from vms.db import MIGRATIONS, make_engine, migrate
    from vms.db.models import Base

    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'm.db'}")
    try:
        migrate(engine)
        with engine.connect() as c:
            assert "discovered_cameras" in inspect(c).get_table_names()
            diff = compare_metadata(MigrationContext.configure(c), Base.metadata)
        assert [d for d in diff if "discovered" in repr(d)] == []
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as c:
            cfg.attributes["connection"] = c
            command.downgrade(cfg, "0002")
        with engine.connect() as c:
            assert "discovered_cameras" not in inspect(c).get_table_names()
        migrate(engine)
        with engine.connect() as c:
            assert "discovered_cameras" in inspect(c).get_table_names()
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- a real agent, end to end


@dataclass
class VethHub(HubProcess):
    """A hub listening on this namespace's end of a veth pair, so an agent in a namespace reaches it."""

    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def agent_link(netns_pair: Any) -> Iterator[tuple[Any, str, str]]:
    """The namespace pair plus a veth from here into the agent's namespace: (pair, our IP, agent's IP)."""
    net = netns_pair("dacc", 93)
    tag = f"{os.getpid() % 100000}"
    here, there, ours, theirs = f"dah{tag}", f"dat{tag}", "10.200.94.1", "10.200.94.2"
    ip("link", "add", here, "type", "veth", "peer", "name", there)
    try:
        ip("link", "set", there, "netns", net.agent)
        ip("addr", "add", f"{ours}/24", "dev", here)
        ip("link", "set", here, "up")
        ip("-n", net.agent, "addr", "add", f"{theirs}/24", "dev", there)
        ip("-n", net.agent, "link", "set", there, "up")
        yield net, ours, theirs
    finally:
        subprocess.run(["ip", "link", "del", here], capture_output=True)


def stored(hub: HubProcess, device_id: str, after: float = 0.0) -> int:
    db = hub.config.parent / "data" / "vms.db"
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as c:
        row = c.execute("SELECT count(*) FROM segments WHERE device_id = ? AND start_at >= ?", (device_id, after))
        return int(row.fetchone()[0])


def test_agent_relays_a_discovered_camera_only_once_accepted(tmp_path: Path, agent_link: Any) -> None:
    net, host, _ = agent_link
    user, password = "admin", "s3cret!pw"
    onvif_cam = "32058501001320000600"  # the simulator's name for it; the agent allocates the device ID
    d = tmp_path
    (d / "hub").mkdir()
    cfg = hub_config(d / "hub" / "data", server={"host": host})
    hub = VethHub(write_config(d / "hub" / "hub.yaml", cfg), free_port(), host=host)
    hub.token("admin", name="admin")
    agent_token = hub.token("agent", AGENT_PREFIX, name="edge-1")
    sim = Simulator([CONFIGURED, onvif_cam], d / "camsim", rtsp_port=free_port(), control_port=free_port(),
                    onvif_base_port=None, host=host, params=ClipParams(duration_s=4.0, bitrate_kbps=600))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    responder: subprocess.Popen[str] | None = None
    onvif_service: subprocess.Popen[str] | None = None
    agent: subprocess.Popen[bytes] | None = None
    agent_cfg = {"hub_url": f"http://{host}:{hub.port}", "token": agent_token, "data_dir": str(d / "agent"),
                 "id_prefix": "32058501001320", "segment_seconds": 2,
                 "discovery": {"enabled": True, "timeout_s": 3, "interval_s": 8},
                 "onvif": {"username": user, "password": password},
                 "cameras": [{"url": sim.rtsp_url(CONFIGURED), "device_id": CONFIGURED, "name": "North gate"}]}
    (d / "agent.yaml").write_text(yaml.safe_dump(agent_cfg))
    agent_log = d / "agent.log"

    def start_agent() -> subprocess.Popen[bytes]:
        with agent_log.open("ab") as log:
            return subprocess.Popen(["ip", "netns", "exec", net.agent, sys.executable, "-m", "edge_agent.cli",
                                     "run", "--config", str(d / "agent.yaml")], stdout=log, stderr=log, env=env)

    def log_tail() -> str:
        return "agent log:\n" + agent_log.read_text(errors="replace")[-4000:]

    try:
        sim.start()
        hub.start()
        # The agent starts before the camera answers probes: it must find it on a later probe.
        agent = start_agent()
        wait_until(lambda: stored(hub, CONFIGURED) >= 1, 60, "configured camera's first segment", context=log_tail)
        # The camera's ONVIF service answers on the simulator's host, where its RTSP stream is (the
        # agent relays a stream only from the ONVIF device's own host); its WS-Discovery answers
        # come from the second namespace, where the agent's multicast probe reaches.
        onvif_port = free_port()
        onvif_service = subprocess.Popen(
            [sys.executable, "-m", "camsim.onvif", "--bind", host, "--base-port", str(onvif_port),
             "--rtsp-base", f"rtsp://{host}:{sim.rtsp_port}/cam", "--username", user, "--password", password,
             "--device-id", onvif_cam],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        assert onvif_service.stdout is not None and onvif_service.stdout.readline().strip() == "ready"
        responder = subprocess.Popen(
            ["ip", "netns", "exec", net.cam, sys.executable, "-m", "camsim.onvif", "--bind", net.cam_ip,
             "--advertise-host", host, "--base-port", str(onvif_port), "--discovery",
             "--username", user, "--password", password, "--device-id", onvif_cam],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        assert responder.stdout is not None and responder.stdout.readline().strip() == "ready"

        def pending() -> list[dict[str, Any]]:
            return call(hub, "GET", "/api/v1/discovered", state="pending").json()["cameras"]

        wait_until(pending, 60, "the discovered camera listed as pending (found by a later probe)", context=log_tail)
        (row,) = pending()
        found = row["device_id"]
        assert row["source"] == "onvif" and row["serial"] == f"SIM{onvif_cam}" and password not in str(row)
        assert row["stream_uri"] == f"rtsp://{host}:{sim.rtsp_port}/cam/{onvif_cam}"
        # The configured camera relays at once; the discovered one sends nothing while it waits.
        wait_until(lambda: stored(hub, CONFIGURED) >= 3, 60, "configured camera's segments", context=log_tail)
        base = stored(hub, CONFIGURED)
        wait_until(lambda: stored(hub, CONFIGURED) >= base + 3, 30, "more configured segments")
        assert stored(hub, found) == 0 and found not in devices(hub)
        spool = d / "agent" / "spool"
        assert not list(spool.glob(f"{found}_*.ts")), "the agent recorded a camera nobody accepted"
        assert "waits for an admin to accept it" in agent_log.read_text()

        t0 = time.monotonic()
        assert call(hub, "POST", f"/api/v1/discovered/{found}/accept", body={"comment": "ok"}).status_code == 200
        t1 = time.monotonic()
        wait_until(lambda: stored(hub, found) > 0, 30, "the accepted camera's first segment at the hub",
                   context=log_tail)
        took = time.monotonic() - t1
        print(f"accepted -> first segment stored at the hub: {took:.1f} s")
        assert took < 15, f"first segment {took:.1f} s after acceptance"
        assert time.monotonic() - t0 < 15

        # Hub down and the camera not answering probes when the agent starts: it remembers the
        # acceptance and the camera's address, and keeps recording.
        stop_process(agent, timeout=20)
        stop_process(responder, timeout=5)
        hub.stop()
        restarted = time.time()
        agent = start_agent()

        def spooled_since_restart() -> int:
            return sum(1 for p in spool.glob(f"{found}_*.ts") if int(p.name.split("_")[1]) / 1e6 >= restarted)

        wait_until(lambda: spooled_since_restart() >= 2, 60, "the accepted camera spooled while the hub is down",
                   context=log_tail)
        hub.start()
        wait_until(lambda: stored(hub, found, after=restarted) >= 2, 90,
                   "outage segments delivered once the hub is back", context=log_tail)

        # A later rejection stops the camera at the agent.
        assert call(hub, "POST", f"/api/v1/discovered/{found}/reject", body={"comment": "moved"}).status_code == 200
        wait_until(lambda: "rejected at the hub; not relaying it" in agent_log.read_text(), 30,
                   "agent stops the camera", context=log_tail)
    finally:
        if agent is not None:
            stop_process(agent, timeout=20)
        if responder is not None:
            stop_process(responder, timeout=5)
        if onvif_service is not None:
            stop_process(onvif_service, timeout=5)
        hub.stop()
        sim.stop()


# --------------------------------------------------------------------------- the admin page


CHROMIUM = "/usr/bin/chromium"


def test_admin_page_lists_pending_cameras_and_accepts_one(make_hub_process: Any) -> None:
    pw = pytest.importorskip("playwright.sync_api")
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian chromium is not installed")
    hub = make(make_hub_process)
    report(hub, cam(FOUND), cam(FOUND2, name="Bridge"))
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu"])
        try:
            def login(role: str) -> Any:
                page = browser.new_context(locale="en-US").new_page()
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.errors = errors
                page.goto(hub.url + "/")
                page.fill("input[name=token]", hub.tokens[role])
                page.click("form.login button[type=submit]")
                page.wait_for_selector("button.logout")
                return page

            duty = login("duty")
            assert "discovered" not in [a.get_attribute("data-nav") for a in duty.query_selector_all("nav a")]
            duty.goto(f"{hub.url}/web/#/discovered")
            duty.wait_for_selector("[data-forbidden=discovered]")

            page = login("admin")
            page.click("nav a[data-nav=discovered]")
            page.wait_for_selector(f"tr[data-device='{FOUND2}']")
            rows = page.query_selector_all("tbody tr[data-device]")
            assert [r.get_attribute("data-device") for r in rows] == [FOUND, FOUND2]
            assert "Bridge" in page.inner_text(f"tr[data-device='{FOUND2}']")
            page.fill(f"tr[data-device='{FOUND}'] input.comment", "checked on site")
            page.click(f"tr[data-device='{FOUND}'] button.accept")
            page.wait_for_selector(f"tr[data-device='{FOUND}']", state="detached")  # gone from the pending list
            page.click(f"tr[data-device='{FOUND2}'] button.reject")
            page.wait_for_selector("tbody tr:not([data-device])")  # "No cameras waiting"
            page.select_option("select[name=state]", "")
            page.wait_for_selector(f"tr[data-device='{FOUND}'][data-state=accepted]")
            assert page.errors == [] and duty.errors == []
        finally:
            browser.close()
    listed = call(hub, "GET", "/api/v1/discovered").json()["cameras"]
    states = {c["device_id"]: (c["state"], c["comment"]) for c in listed}
    assert states == {FOUND: ("accepted", "checked on site"), FOUND2: ("rejected", "")}
    assert FOUND in devices(hub) and FOUND2 not in devices(hub)
