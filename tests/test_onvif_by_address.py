"""ONVIF cameras named by address (issue 16, item 14).

WS-Discovery multicast stays on one network segment; cameras on other subnets or VLANs are named in
the agent's config (``discovery.onvif_hosts``) or given to ``edge-agent discover --host``. Their
ONVIF device service is queried directly, with their own credentials: the same identity (serial),
profiles, sub stream and acceptance as a discovered camera, with no WS-Discovery answer at all (no
probe is even sent here). Bad entries (nothing listening, a web server that is not ONVIF, a wrong
password) each get a message that says so, and the other devices are still queried.

Real peers on loopback: camsim's ONVIF responders and RTSP server, a plain HTTP server, a real hub
process, and the real agent (its ONVIF client included) on a thread.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from camsim.clips import ClipParams
from camsim.net import free_port_block
from camsim.onvif import MANUFACTURER, MODEL, OnvifDevice, OnvifServer
from camsim.sim import Simulator, device_ids
from edge_agent import wsd
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, OnvifHost
from edge_agent.discovery import discover
from tests.conftest import wait_until
from tests.rtsp_fixture import free_port
from tests.test_camera_moved import AgentThread
from tests.test_discovery_accept import AGENT_PREFIX, call

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "admin", "s3cret!pw"
PREFIX = "32058501001320"


class WebPage:
    """An HTTP server that is not an ONVIF device: every request gets a 404 page."""

    def __init__(self) -> None:
        class Handler(BaseHTTPRequestHandler):
            def _page(self) -> None:
                body = b"<html><body>Not Found</body></html>"
                self.send_response(404)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _page

            def log_message(self, *_a: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def peers() -> Iterator[tuple[list[OnvifDevice], WebPage]]:
    ids = device_ids(2, first=741)
    base = free_port_block(len(ids))
    devices = [OnvifDevice(device_id=d, port=base + i, rtsp_main=f"rtsp://127.0.0.1:8554/cam/{d}",
                           rtsp_sub=f"rtsp://127.0.0.1:8554/cam/{d}/sub", sub_width=640, sub_height=360)
               for i, d in enumerate(ids)]
    server = OnvifServer(devices, bind="127.0.0.1", username=USER, password=PASSWORD)
    server.start()
    page = WebPage()
    try:
        yield devices, page
    finally:
        page.stop()
        server.stop()


def no_multicast(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count WS-Discovery probes: a device named by address needs none."""
    sent: list[int] = []
    real = wsd.probe

    def counted(*a: Any, **kw: Any) -> list[str]:
        sent.append(1)
        return real(*a, **kw)

    monkeypatch.setattr("edge_agent.discovery.wsd_probe", counted)
    return sent


# --------------------------------------------------------------------------- the config


def test_config_names_onvif_devices_by_address() -> None:
    base = {"hub_url": "http://127.0.0.1:8700", "token": "t"}
    cfg = AgentConfig.model_validate({**base, "discovery": {"onvif_hosts": [
        {"host": "10.2.0.15"}, {"host": "CAM-7.site.local", "port": 8080, "username": "u", "password": "p"},
        {"host": "[fe80::1]", "port": 8000}]}})
    assert [h.address for h in cfg.discovery.onvif_hosts] == ["10.2.0.15:80", "cam-7.site.local:8080",
                                                              "[fe80::1]:8000"]
    assert cfg.discovery.enabled is False  # named devices need no multicast
    bad = [
        ({"host": "http://10.2.0.15"}, "onvif_hosts.0.host", "not a host name or IP address"),
        ({"host": "10.2.0.15:80"}, "onvif_hosts.0.host", "not a host name or IP address"),
        ({"host": "10.2.0.15", "port": 0}, "onvif_hosts.0.port", "greater than or equal to 1"),
        ({"host": "10.2.0.15", "port": 70000}, "onvif_hosts.0.port", "less than or equal to 65535"),
        ({"host": "10.2.0.15", "pasword": "x"}, "onvif_hosts.0.pasword", "Extra inputs are not permitted"),
    ]
    for entry, where, why in bad:
        with pytest.raises(ValidationError) as err:
            AgentConfig.model_validate({**base, "discovery": {"onvif_hosts": [entry]}})
        assert where in str(err.value) and why in str(err.value), err.value
    with pytest.raises(ValidationError, match=r"10\.2\.0\.15:80 is listed twice"):
        AgentConfig.model_validate({**base, "discovery": {"onvif_hosts": [{"host": "10.2.0.15"},
                                                                          {"host": "10.2.0.15", "port": 80}]}})
    assert OnvifHost.parse("[::1]:81").address == "[::1]:81"
    assert OnvifHost.parse("cam.local").address == "cam.local:80"
    for text, why in [("http://cam/x", "without a scheme or path"), ("cam:http", "is not a number"),
                      ("[::1", "lacks its ']'")]:
        with pytest.raises(ValueError, match=why):
            OnvifHost.parse(text)


# --------------------------------------------------------------------------- discover(hosts=...)


def test_named_devices_are_read_like_discovered_ones_and_bad_ones_told_apart(
    peers: tuple[list[OnvifDevice], WebPage], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    (good, wrong_pw), page = peers
    sent = no_multicast(monkeypatch)
    caplog.set_level(logging.WARNING, "edge_agent.discovery")
    refused = free_port()
    hosts = [OnvifHost(host="127.0.0.1", port=refused), OnvifHost(host="127.0.0.1", port=page.port),
             OnvifHost(host="127.0.0.1", port=wrong_pw.port, password="wrong-pw"),
             OnvifHost(host="127.0.0.1", port=good.port, username=USER, password=PASSWORD)]
    cams = discover("nobody", "nothing", timeout_s=3, multicast=False, hosts=hosts)
    assert sent == []  # no WS-Discovery at all
    assert [c.address for c in cams] == [h.address for h in hosts] and all(c.named for c in cams)
    gone, web, denied, ok = cams
    assert ok.error is None
    assert (ok.manufacturer, ok.model, ok.serial) == (MANUFACTURER, MODEL, f"SIM{good.device_id}")
    assert [p.token for p in ok.profiles] == ["profile_main", "profile_sub"]
    assert (ok.main_stream(), ok.sub_stream()) == (good.rtsp_main, good.rtsp_sub)
    assert gone.error and f"nothing answers at http://127.0.0.1:{refused}/onvif/device_service" in gone.error
    assert f"is {refused} its ONVIF port" in gone.error
    assert web.error and "not an ONVIF device service" in web.error and "HTTP 404" in web.error
    assert "text/html" in web.error
    assert denied.error and "not authorized" in denied.error and "username or password" in denied.error
    assert all(c.profiles == [] and c.serial is None for c in (gone, web, denied))
    told = caplog.text
    assert f"127.0.0.1:{refused}" in told and f"127.0.0.1:{page.port}" in told and "not authorized" in told
    assert PASSWORD not in told + "".join(c.model_dump_json() for c in cams) and "wrong-pw" not in told


def test_discover_cli_takes_hosts(peers: tuple[list[OnvifDevice], WebPage], tmp_path: Path) -> None:
    (good, _), page = peers
    refused = free_port()
    run = subprocess.run(
        [sys.executable, "-m", "edge_agent.cli", "discover", "--timeout", "3", "--host", f"127.0.0.1:{good.port}",
         "--host", f"127.0.0.1:{refused}", "--host", f"127.0.0.1:{page.port}"],
        capture_output=True, text=True, timeout=90, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "ONVIF_USERNAME": USER, "ONVIF_PASSWORD": PASSWORD},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    found = {c["address"]: c for c in json.loads(run.stdout)}
    assert sorted(found) == sorted(f"127.0.0.1:{p}" for p in (good.port, refused, page.port))
    ok = found[f"127.0.0.1:{good.port}"]
    assert ok["error"] is None and ok["serial"] == f"SIM{good.device_id}" and len(ok["profiles"]) == 2
    assert "nothing answers" in found[f"127.0.0.1:{refused}"]["error"]
    assert "not an ONVIF device service" in found[f"127.0.0.1:{page.port}"]["error"]
    # Each failure is told on stderr too, where an installer reads it.
    assert f"127.0.0.1:{refused}" in run.stderr and "not an ONVIF device service" in run.stderr
    assert PASSWORD not in run.stdout + run.stderr

    bad = subprocess.run([sys.executable, "-m", "edge_agent.cli", "discover", "--host", "http://cam/x"],
                         capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert bad.returncode == 2 and "without a scheme or path" in bad.stderr


# --------------------------------------------------------------------------- a real agent and hub


def test_an_onvif_camera_named_by_address_is_accepted_and_recorded_with_its_sub_stream(
    tmp_path: Path, make_hub_process: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    cam_id = "32058501001320000761"
    page = WebPage()
    sim = Simulator([cam_id], tmp_path / "camsim", rtsp_port=free_port(), control_port=free_port(),
                    onvif_base_port=free_port_block(1), params=ClipParams(bitrate_kbps=500),
                    sub_params=ClipParams(width=320, height=180, bitrate_kbps=200), variants=["normal"],
                    onvif_username=USER, onvif_password=PASSWORD).start()
    sent = no_multicast(monkeypatch)
    caplog.set_level(logging.INFO)
    hub = make_hub_process()
    hub.token("admin", name="admin")
    agent_token = hub.token("agent", AGENT_PREFIX, name="edge-1")
    hub.start()
    refused = free_port()
    cfg = AgentConfig.model_validate({
        "hub_url": hub.url, "token": agent_token, "id_prefix": PREFIX, "data_dir": str(tmp_path / "agent"),
        "segment_seconds": 1, "discovery": {"timeout_s": 3, "interval_s": 5, "onvif_hosts": [
            {"host": "127.0.0.1", "port": refused},
            {"host": "127.0.0.1", "port": page.port},
            {"host": "127.0.0.1", "port": sim.onvif_port(cam_id), "username": USER, "password": PASSWORD}]},
        "onvif": {"username": USER, "password": "the-site-password-is-not-this-cameras"},
    })
    agent = Agent(cfg)
    runner = AgentThread(agent).start()

    def rows(state: str) -> list[dict[str, Any]]:
        return list(call(hub, "GET", "/api/v1/discovered", state=state).json()["cameras"])

    def context() -> str:
        return "\n".join(r.getMessage() for r in caplog.records[-30:]) + f"\nagent error: {runner.error!r}"

    try:
        (row,) = wait_until(lambda: rows("pending"), 40, "the named camera waiting for an admin", context=context)
        dev = row["device_id"]
        assert dev.startswith(PREFIX) and dev not in agent.relaying()  # acceptance as for a discovered camera
        assert (row["source"], row["serial"], row["address"]) == ("onvif", f"SIM{cam_id}",
                                                                  f"127.0.0.1:{sim.onvif_port(cam_id)}")
        assert row["stream_uri"] == sim.rtsp_url(cam_id)
        assert call(hub, "POST", f"/api/v1/discovered/{dev}/accept", body={}).status_code == 200
        wait_until(lambda: dev in agent.relaying(), 20, "the accepted camera relayed", context=context)
        want = sorted(f"rtsp://{USER}:s3cret%21pw@127.0.0.1:{sim.rtsp_port}/cam/{cam_id}{s}" for s in ("", "/sub"))

        def urls() -> list[str]:
            return sorted(i._url for i in agent.ingests + agent.sub_ingests if i.device_id == dev)

        # Its own credentials, main and sub stream (the sub stream's ingest may start a moment after the main's).
        wait_until(lambda: urls() == want, 10, "main and sub stream relayed", context=lambda: f"{urls()}")

        def recorded() -> bool:
            devices = call(hub, "GET", "/api/v1/devices").json()["devices"]
            return any(d["id"] == dev and d["state"] == "uploading" for d in devices)

        wait_until(recorded, 40, "the camera's segments stored at the hub", context=context)
        assert sent == []  # WS-Discovery stayed off: nothing came in by multicast
        told = caplog.text
        assert f"nothing answers at http://127.0.0.1:{refused}/onvif/device_service" in told
        assert f"127.0.0.1:{page.port}" in told and "not an ONVIF device service" in told
        assert runner.error is None
    finally:
        runner.stop()
        page.stop()
        sim.stop()
    assert PASSWORD not in (tmp_path / "agent" / "registry.json").read_text()
