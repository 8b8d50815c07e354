"""A device cannot take over an accepted camera (issue 16, item 3).

A serial number is only what a device says about itself. An accepted discovered camera that turns
up at another address goes back to pending for an admin, with both addresses shown, audited; the
agent stops relaying it at once and does not wait for the hub to say so. Stream URIs are relayed
only with rtsp/rtsps on the ONVIF device's own host, and the site's ONVIF credentials never go
into a URI for another host.

The agent test runs a real agent (in this process, with its real ONVIF client) against a real hub
process and camsim's ONVIF responders on two loopback hosts (127.0.0.1, the camera; 127.0.0.2, a
device claiming its serial); only the WS-Discovery probe is replaced by the list of XAddrs, since
multicast skips loopback (the namespace tests in test_agent_discovery.py cover the probe itself).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from camsim.onvif import OnvifDevice, OnvifServer
from edge_agent import discovery
from edge_agent.agent import Agent, with_credentials
from edge_agent.config import AgentConfig
from edge_agent.discovery import query_onvif, stream_problem
from edge_agent.registry import Registry
from tests.conftest import columns, downgrade, wait_until
from tests.rtsp_fixture import free_port
from tests.test_discovery_accept import AGENT_PREFIX, FOUND, audit_rows, call, cam, heartbeat, make, put_segment, report

USER, PASSWORD = "admin", "s3cret!pw"
PREFIX = "32058501001320"
SIM_ID = "32058501001320000777"  # the simulator's name for the camera; the agent allocates the device ID


# --------------------------------------------------------------------------- the hub's decision


def test_an_accepted_camera_at_a_new_address_waits_for_an_admin_again(
    make_hub_process: Any, database_url: str | None
) -> None:
    hub = make(make_hub_process, database_url, discovery={"auto_accept": True})
    assert report(hub, cam(FOUND, address="10.0.0.5:80"))[FOUND]["state"] == "accepted"
    assert put_segment(hub, FOUND).status_code == 201
    # Another port on the same host is the same camera.
    assert report(hub, cam(FOUND, address="10.0.0.5:8080"))[FOUND]["state"] == "accepted"

    got = report(hub, cam(FOUND, address="10.0.0.66:80", stream_uri="rtsp://10.0.0.66/live"))[FOUND]
    assert got["state"] == "pending", got  # auto_accept does not accept a camera that moved
    assert "accepted at 10.0.0.5:8080, now reported at 10.0.0.66:80" in got["reason"]
    assert "waiting for an admin" in heartbeat(hub, FOUND)[FOUND]
    assert put_segment(hub, FOUND).status_code == 403
    (row,) = call(hub, "GET", "/api/v1/discovered", state="pending").json()["cameras"]
    assert (row["device_id"], row["address"], row["moved_from"]) == (FOUND, "10.0.0.66:80", "10.0.0.5:8080")
    assert row["stream_uri"] == "rtsp://10.0.0.66/live" and row["decided_by"] == "hub"
    (moved,) = audit_rows(hub, "camera.moved")
    assert (moved["actor"], moved["target"]) == ("edge-1", FOUND)
    assert moved["detail"] == {"agent": "edge-1", "from": "10.0.0.5:8080", "to": "10.0.0.66:80",
                               "serial": f"SN{FOUND[-4:]}", "stream_uri": "rtsp://10.0.0.66/live",
                               "previous": "accepted"}
    # Reported again (or back at the old address), it still waits: only an admin decides.
    for address in ("10.0.0.66:80", "10.0.0.5:8080"):
        assert report(hub, cam(FOUND, address=address))[FOUND]["state"] == "pending"
    assert len(audit_rows(hub, "camera.moved")) == 1

    assert call(hub, "POST", f"/api/v1/discovered/{FOUND}/accept", body={"comment": "re-cabled"}).status_code == 200
    (accepted,) = audit_rows(hub, "camera.accept")
    assert accepted["detail"]["moved_from"] == "10.0.0.5:8080" and accepted["detail"]["previous"] == "pending"
    (row,) = call(hub, "GET", "/api/v1/discovered", state="accepted").json()["cameras"]
    assert row["moved_from"] is None
    assert report(hub, cam(FOUND, address="10.0.0.5:8080"))[FOUND]["state"] == "accepted"
    assert put_segment(hub, FOUND).status_code == 201


def test_a_config_camera_is_not_held_for_a_new_address(make_hub_process: Any) -> None:
    """The installer's config names it: its word stands, as before."""
    hub = make(make_hub_process)
    dev = "32058501001320000001"
    assert report(hub, cam(dev, "config", address="10.0.0.5:554"))[dev]["state"] == "accepted"
    assert report(hub, cam(dev, "config", address="10.0.0.9:554"))[dev]["state"] == "accepted"
    assert audit_rows(hub, "camera.moved") == []


def test_moved_from_migrates_up_and_down(tmp_path: Path, database_url: str | None) -> None:
    from vms.db import make_engine, migrate

    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'm.db'}")
    try:
        migrate(engine)
        assert "moved_from" in columns(engine, "discovered_cameras")
        downgrade(engine, "0003")
        old = columns(engine, "discovered_cameras")
        assert "moved_from" not in old and "address" in old
        migrate(engine)
        assert "moved_from" in columns(engine, "discovered_cameras")
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- stream URIs and credentials


def test_stream_uris_only_rtsp_on_the_onvif_host() -> None:
    assert stream_problem("rtsp://10.0.0.5:554/live", "10.0.0.5") is None
    assert stream_problem("RTSPS://CAM.local/live", "cam.local") is None
    assert stream_problem("rtsp://[fe80::1]:554/live", "[fe80::1]") is None
    assert "not the ONVIF device's own address" in (stream_problem("rtsp://10.0.0.6/live", "10.0.0.5") or "")
    assert "scheme 'http'" in (stream_problem("http://10.0.0.5/live", "10.0.0.5") or "")
    assert "scheme" in (stream_problem("file:///etc/passwd", "10.0.0.5") or "")
    # Credentials only ever go to the ONVIF device's own host.
    assert with_credentials("rtsp://10.0.0.5/live", USER, "pw", "10.0.0.5:80") == "rtsp://admin:pw@10.0.0.5/live"
    assert with_credentials("rtsp://10.0.0.6/live", USER, "pw", "10.0.0.5:80") == "rtsp://10.0.0.6/live"
    assert with_credentials("http://10.0.0.5/live", USER, "pw", "10.0.0.5") == "http://10.0.0.5/live"


def test_query_onvif_refuses_streams_elsewhere(caplog: pytest.LogCaptureFixture) -> None:
    base = free_port()
    good = OnvifDevice(device_id=SIM_ID, port=base, rtsp_main="rtsp://127.0.0.1:8554/x",
                       rtsp_sub="rtsp://203.0.113.9:8554/sub")
    server = OnvifServer([good], bind="127.0.0.1", username=USER, password=PASSWORD)
    server.start()
    try:
        caplog.set_level(logging.ERROR, "edge_agent.discovery")
        found = query_onvif(f"http://127.0.0.1:{base}/onvif/device_service", USER, PASSWORD, timeout_s=5)
    finally:
        server.stop()
    assert found.error is None
    main, sub = found.profiles
    assert main.stream_uri == "rtsp://127.0.0.1:8554/x" and main.refused_uri is None
    assert sub.stream_uri is None and "203.0.113.9" in (sub.refused_uri or "")
    assert found.main_stream() == "rtsp://127.0.0.1:8554/x" and found.sub_stream() is None
    assert any("refusing its stream URI rtsp://203.0.113.9:8554/sub" in r.getMessage() for r in caplog.records)


def test_the_registry_holds_a_discovered_camera_found_at_another_host(tmp_path: Path) -> None:
    """So an agent (re)started while the hub is down never relays the new address."""
    reg = Registry(tmp_path)
    dev = reg.assign(prefix=PREFIX, url="rtsp://10.0.0.5/live", serial="SN-1", source="onvif", address="10.0.0.5:80")
    reg.set_acceptance({dev: "accepted"})
    # Another path or ONVIF port on the same host: the same camera.
    assert reg.assign(prefix=PREFIX, url="rtsp://10.0.0.5/main", serial="SN-1", source="onvif",
                      address="10.0.0.5:8000") == dev
    assert reg.acceptance(dev) == "accepted"
    assert reg.assign(prefix=PREFIX, url="rtsp://10.0.0.66/live", serial="SN-1", source="onvif",
                      address="10.0.0.66:80") == dev
    assert Registry(tmp_path).acceptance(dev) == "pending"
    (e,) = Registry(tmp_path).entries()
    assert (e.url, e.address) == ("rtsp://10.0.0.66/live", "10.0.0.66:80")


# --------------------------------------------------------------------------- a real agent and hub


class AgentThread:
    """``Agent.run`` on its own event loop in a thread, stopped from the test."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)
        self.error: BaseException | None = None

    def _main(self) -> None:
        async def go() -> None:
            self.stop_event = asyncio.Event()
            await self.agent.run(self.stop_event)

        try:
            self.loop.run_until_complete(go())
        except BaseException as exc:  # reported by the test
            self.error = exc

    def start(self) -> AgentThread:
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)


@pytest.fixture
def two_hosts() -> Iterator[tuple[OnvifDevice, OnvifDevice]]:
    """The camera's ONVIF service on 127.0.0.1 and another device claiming its serial on 127.0.0.2."""
    port = free_port()
    camera = OnvifDevice(device_id=SIM_ID, port=port, rtsp_main=f"rtsp://127.0.0.1:{free_port()}/cam",
                         rtsp_sub=f"rtsp://127.0.0.1:{free_port()}/cam")
    other = OnvifDevice(device_id=SIM_ID, port=port, rtsp_main="rtsp://127.0.0.2:8554/cam",
                        rtsp_sub="rtsp://127.0.0.2:8554/cam")
    servers = [OnvifServer([camera], bind="127.0.0.1", username=USER, password=PASSWORD),
               OnvifServer([other], bind="127.0.0.2", username=USER, password=PASSWORD)]
    for s in servers:
        s.start()
    try:
        yield camera, other
    finally:
        for s in servers:
            s.stop()


def test_a_device_claiming_an_accepted_cameras_serial_elsewhere_does_not_take_it_over(
    tmp_path: Path, make_hub_process: Any, two_hosts: tuple[OnvifDevice, OnvifDevice],
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    camera, other = two_hosts
    real = f"http://127.0.0.1:{camera.port}/onvif/device_service"
    fake = f"http://127.0.0.2:{other.port}/onvif/device_service"
    answering: list[str] = [real]
    monkeypatch.setattr(discovery, "probe", lambda timeout_s=3.0, targets=(), multicast=True: list(answering))
    caplog.set_level(logging.INFO)

    hub = make_hub_process()
    hub.token("admin", name="admin")
    agent_token = hub.token("agent", AGENT_PREFIX, name="edge-1")
    hub.start()
    cfg = AgentConfig.model_validate({
        "hub_url": hub.url, "token": agent_token, "id_prefix": PREFIX, "data_dir": str(tmp_path / "agent"),
        "segment_seconds": 1, "discovery": {"enabled": True, "timeout_s": 2, "interval_s": 5},
        "onvif": {"username": USER, "password": PASSWORD},
    })
    agent = Agent(cfg)
    runner = AgentThread(agent).start()

    def rows(state: str) -> list[dict[str, Any]]:
        return list(call(hub, "GET", "/api/v1/discovered", state=state).json()["cameras"])

    def urls_relayed() -> list[str]:
        return [i._url for i in agent.ingests + agent.sub_ingests]

    def context() -> str:
        return "\n".join(r.getMessage() for r in caplog.records[-30:]) + f"\nagent error: {runner.error!r}"

    try:
        (row,) = wait_until(lambda: rows("pending"), 30, "the camera listed as pending", context=context)
        dev = row["device_id"]
        assert row["address"] == f"127.0.0.1:{camera.port}"
        assert call(hub, "POST", f"/api/v1/discovered/{dev}/accept", body={}).status_code == 200
        wait_until(lambda: dev in agent.relaying(), 20, "the accepted camera relayed", context=context)
        assert all(u.startswith(f"rtsp://{USER}:") and "@127.0.0.1:" in u for u in urls_relayed())

        # Another device answers too, claiming the same serial: the camera stays where it is.
        answering[:] = [fake, real]
        wait_until(lambda: any("2 devices claim serial" in r.getMessage() for r in caplog.records), 20,
                   "the two claims noticed", context=context)
        assert dev in agent.relaying() and all("127.0.0.2" not in u for u in urls_relayed())
        assert agent.registry.acceptance(dev) == "accepted"
        assert [r["device_id"] for r in rows("accepted")] == [dev]

        # The camera is gone and only the other device answers: held, not relayed from there.
        answering[:] = [fake]
        wait_until(lambda: rows("pending"), 20, "the camera back to pending at the hub", context=context)
        (row,) = rows("pending")
        assert (row["device_id"], row["address"], row["moved_from"]) == (
            dev, f"127.0.0.2:{other.port}", f"127.0.0.1:{camera.port}")
        assert dev not in agent.relaying() and urls_relayed() == []
        assert agent.registry.acceptance(dev) == "pending"
        (moved,) = audit_rows(hub, "camera.moved")
        assert moved["target"] == dev and moved["detail"]["to"] == f"127.0.0.2:{other.port}"
        assert any("answers at 127.0.0.2" in r.getMessage() and "not relaying it" in r.getMessage()
                   for r in caplog.records)

        # An admin accepts it at its new address: relayed from there, with the credentials for its own host.
        assert call(hub, "POST", f"/api/v1/discovered/{dev}/accept", body={}).status_code == 200
        wait_until(lambda: dev in agent.relaying(), 20, "relayed from the new address", context=context)
        assert urls_relayed() and all(u.startswith(f"rtsp://{USER}:") and "@127.0.0.2:8554/" in u
                                      for u in urls_relayed())
        assert runner.error is None
    finally:
        runner.stop()
    assert PASSWORD not in (tmp_path / "agent" / "registry.json").read_text()
