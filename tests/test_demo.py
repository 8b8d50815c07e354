"""`vms demo` never half-starts (issue 16, item 13).

Its ports are the ones given (in use: it stops at once, saying which), else the usual ones if free,
else free ones, all written into demo.json; a part that does not start stops the whole command with
a message and the tail of that part's log. Real processes on loopback: the command as a user runs it.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from camsim.sim import SYSTEM_PYTHON
from tests.conftest import free_port, stop_process
from vms.demo import Demo

USUAL = {"hub": 8700, "rtsp": 8554, "control": 8555}


@contextlib.contextmanager
def occupied(*ports: int) -> Iterator[None]:
    """Listen on these loopback ports (one already taken by something else is just as taken)."""
    socks = []
    try:
        for port in ports:
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no obstacle
            try:
                s.bind(("127.0.0.1", port))
                s.listen(1)
            except OSError:
                s.close()
                continue
            socks.append(s)
        yield
    finally:
        for s in socks:
            s.close()


@contextlib.contextmanager
def healthy_server(port: int) -> Iterator[None]:
    """Something that answers GET /healthz with 200, as another demo's hub would."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *_a: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    import threading

    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def demo(data_dir: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "vms.cli", "demo", "--cameras", "1", "--data-dir", str(data_dir),
                           *args], capture_output=True, text=True, timeout=timeout)


def test_a_port_given_in_use_stops_the_demo_at_once_saying_which(tmp_path: Path) -> None:
    rtsp = free_port()
    with occupied(rtsp):
        r = demo(tmp_path / "a", "--rtsp-port", str(rtsp))
    assert r.returncode == 1
    assert (f"error: demo stopped: the simulator's RTSP cannot listen on 127.0.0.1:{rtsp} (--rtsp-port {rtsp}): "
            "the port is in use") in r.stderr
    assert not (tmp_path / "a" / "hub.log").exists()  # nothing was started
    hub = free_port()
    with healthy_server(hub):  # before: its /healthz was taken for the demo's own hub, and the demo ran
        r = demo(tmp_path / "b", "--port", str(hub), timeout=90)
    assert r.returncode == 1 and f"the hub cannot listen on 127.0.0.1:{hub} (--port {hub})" in r.stderr


def test_ports_not_given_are_the_usual_ones_if_free_else_free_ones_in_demo_json(tmp_path: Path) -> None:
    with occupied(*USUAL.values()):
        d = Demo(1, None, tmp_path)
        info = d.prepare()
    ports = info["ports"]
    assert set(ports) == {"hub", "rtsp", "control", "gb_sip", "gb_control"}
    assert len(set(ports.values())) == 5 and not set(ports.values()) & set(USUAL.values())
    assert json.loads((tmp_path / "demo.json").read_text())["ports"] == ports
    hub = yaml.safe_load((tmp_path / "hub.yaml").read_text())
    agent = yaml.safe_load((tmp_path / "agent.yaml").read_text())
    assert (hub["server"]["port"], hub["gb28181"]["port"]) == (ports["hub"], ports["gb_sip"])
    assert agent["hub_url"] == info["hub_url"] == f"http://127.0.0.1:{ports['hub']}"
    assert all(c["url"].startswith(f"rtsp://127.0.0.1:{ports['rtsp']}/cam/") for c in agent["cameras"])
    assert info["camsim_control_url"] == f"http://127.0.0.1:{ports['control']}"
    assert info["camsim_gb_control_url"] == f"http://127.0.0.1:{ports['gb_control']}"


def test_a_part_that_does_not_start_stops_the_demo_with_its_log(tmp_path: Path) -> None:
    data = tmp_path / "demo"
    (data / "hub").mkdir(parents=True)
    (data / "hub" / "vms.db").write_bytes(b"this is not a database, it is a mistake" * 100)
    (data / "tokens.json").write_text(json.dumps({r: f"vms_{r}_x" for r in
                                                  ("admin", "duty", "maintenance", "police", "agent")}))
    r = demo(data, "--port", str(free_port()))
    assert r.returncode == 1
    assert "error: demo stopped: the hub exited with code" in r.stderr, r.stderr[-2000:]
    assert f"last lines of {data / 'hub.log'}:" in r.stderr and "not a database" in r.stderr
    assert not (data / "camsim").exists()  # the simulator never started


@pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="system python3 with GStreamer bindings missing")
def test_a_second_demo_beside_a_first_one_records_its_own_cameras(tmp_path: Path) -> None:
    """The issue's case: the usual RTSP port is taken (by a first demo); the second demo picks another,
    and its agent records its own simulator's cameras."""
    rtsp, control = USUAL["rtsp"], USUAL["control"]
    with occupied(rtsp, control):
        proc = subprocess.Popen([sys.executable, "-m", "vms.cli", "demo", "--cameras", "1", "--data-dir",
                                 str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        try:
            assert proc.stdout is not None
            printed = [proc.stdout.readline() for _ in range(3)]  # printed once every part is up
            info = json.loads((tmp_path / "demo.json").read_text())
            ports = info["ports"]
            assert ports["rtsp"] != rtsp and ports["control"] != control
            assert printed[1].startswith(f"cameras:    rtsp://127.0.0.1:{ports['rtsp']}/cam/ID")
            cam = next(c for c in info["cameras"] if c["protocol"] == "rtsp")
            assert cam["rtsp_url"] == f"rtsp://127.0.0.1:{ports['rtsp']}/cam/{cam['device_id']}"
            duty = {"Authorization": f"Bearer {info['tokens']['duty']}"}
            deadline = time.monotonic() + 60
            while True:  # relayed from this demo's own simulator: the camera uploads to this demo's hub
                dev = httpx.get(f"{info['hub_url']}/api/v1/devices/{cam['device_id']}", headers=duty, timeout=5)
                if dev.status_code == 200 and dev.json()["state"] == "uploading":
                    break
                assert proc.poll() is None and time.monotonic() < deadline, dev.text
                time.sleep(1)
            r = httpx.get(f"http://127.0.0.1:{ports['control']}/cameras", timeout=5).json()
            assert [c["device_id"] for c in r] == [cam["device_id"]]
        finally:
            code = stop_process(proc, timeout=30)
    assert code == 0


def test_two_levels_the_district_sees_plays_and_counts_both_towns_cameras(tmp_path: Path) -> None:
    """`vms demo --levels 2`: a district hub above two town hubs, each town with its own camera, agent and
    GB/T 28181 device; the district knows every camera from the towns' catalogs (the GB channels come
    after the first catalog, as ADD), sees them upload, plays one live through the cascade, and the
    whole demo stops cleanly."""
    proc = subprocess.Popen([sys.executable, "-m", "vms.cli", "demo", "--levels", "2", "--cameras", "2",
                             "--data-dir", str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    try:
        assert proc.stdout is not None
        printed = [proc.stdout.readline() for _ in range(3)]  # printed once every part is up
        assert printed[0].startswith("hub:") and all(p.startswith("town hub:") for p in printed[1:]), printed
        info = json.loads((tmp_path / "demo.json").read_text())
        assert [t["center"] for t in info["towns"]] == ["chengxiang", "shaxi"]
        duty = {"Authorization": f"Bearer {info['tokens']['duty']}"}
        cams = {c["device_id"]: c for c in info["cameras"]}
        assert len(cams) == 6  # one RTSP camera per town, the IPC's channel and the NVR's three

        def states() -> dict[str, str]:
            r = httpx.get(f"{info['hub_url']}/api/v1/devices", headers=duty, timeout=5).json()
            return {d["id"]: d["state"] for d in r["devices"]}

        def counts() -> dict[str, int]:
            tree = httpx.get(f"{info['hub_url']}/api/v1/centers", headers=duty, timeout=5).json()["centers"][0]
            return dict(tree["counts"])

        # Every camera uploading, and only the cameras counted: not the IPC and NVR that carry channels.
        deadline = time.monotonic() + 90
        while not (all(states().get(d) == "uploading" for d in cams)
                   and counts() | {"unknown": 0} == {"devices": 6, "online": 6, "uploading": 6, "intact": 6,
                                                     "unknown": 0}):
            assert proc.poll() is None and time.monotonic() < deadline, (states(), counts())
            time.sleep(1)
        town_cam = next(d for d, c in cams.items() if c["protocol"] == "rtsp" and c["town"] == "shaxi")
        r = httpx.get(f"{info['hub_url']}/api/v1/live/{town_cam}/index.m3u8", headers=duty, timeout=30)
        assert r.status_code == 200 and "#EXTINF" in r.text, r.text
    finally:
        code = stop_process(proc, timeout=60)
    assert code == 0
