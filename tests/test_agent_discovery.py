"""Discovery against the simulator's ONVIF and WS-Discovery answers, with the real clients.

`query_onvif` talks onvif-zeep to camsim's ONVIF responder on loopback. `edge-agent discover` runs as
a subprocess inside a network namespace joined by a veth pair to a second namespace where camsim's
WS-Discovery responder runs, so its multicast reaches nothing outside the two namespaces. Answers
as cheap devices send them come from a UDP responder on loopback, probed by unicast.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from camsim.net import free_port_block
from camsim.onvif import MANUFACTURER, MODEL, DiscoveryResponder, OnvifDevice, OnvifServer
from camsim.sim import device_ids
from edge_agent.discovery import DiscoveredCamera, discover, probe, query_onvif
from tests.conftest import stop_process

ROOT = Path(__file__).resolve().parent.parent
USER, PASSWORD = "admin", "s3cret!pw"


@pytest.fixture(scope="module")
def onvif() -> Iterator[tuple[OnvifServer, list[OnvifDevice]]]:
    ids = device_ids(2, first=701)
    base = free_port_block(len(ids))
    devices = [
        OnvifDevice(device_id=d, port=base + i, rtsp_main=f"rtsp://127.0.0.1:8554/cam/{d}",
                    rtsp_sub=f"rtsp://127.0.0.1:8554/cam/{d}/sub", width=1920, height=1080,
                    sub_width=640, sub_height=360, bitrate_kbps=4000, sub_bitrate_kbps=512)
        for i, d in enumerate(ids)
    ]
    server = OnvifServer(devices, bind="127.0.0.1", username=USER, password=PASSWORD)
    server.start()
    try:
        yield server, devices
    finally:
        server.stop()


def xaddr(dev: OnvifDevice) -> str:
    return f"http://127.0.0.1:{dev.port}/onvif/device_service"


def test_query_onvif_reads_identity_profiles_and_stream_uris(onvif: tuple[OnvifServer, list[OnvifDevice]]) -> None:
    _, devices = onvif
    dev = devices[1]
    cam = query_onvif(xaddr(dev), USER, PASSWORD, timeout_s=5)
    assert cam.error is None
    assert cam.address == f"127.0.0.1:{dev.port}"
    assert (cam.manufacturer, cam.model, cam.serial) == (MANUFACTURER, MODEL, f"SIM{dev.device_id}")
    assert cam.firmware
    assert [p.token for p in cam.profiles] == ["profile_main", "profile_sub"]
    main, sub = cam.profiles
    assert (main.width, main.height, main.encoding) == (1920, 1080, "H264")
    assert (sub.width, sub.height) == (640, 360)
    assert cam.main_stream() == dev.rtsp_main
    assert cam.sub_stream() == dev.rtsp_sub
    assert PASSWORD not in cam.model_dump_json()


def test_each_device_answers_for_itself(onvif: tuple[OnvifServer, list[OnvifDevice]]) -> None:
    _, devices = onvif
    cams = [query_onvif(xaddr(d), USER, PASSWORD, timeout_s=5) for d in devices]
    assert [c.serial for c in cams] == [f"SIM{d.device_id}" for d in devices]
    assert len({c.main_stream() for c in cams}) == len(devices)


def test_wrong_password_is_a_clear_error(onvif: tuple[OnvifServer, list[OnvifDevice]]) -> None:
    _, devices = onvif
    cam = query_onvif(xaddr(devices[0]), USER, "wrong", timeout_s=5)
    assert cam.error is not None and "not authorized" in cam.error.lower()
    assert "username or password" in cam.error
    assert cam.profiles == [] and cam.serial is None
    assert "wrong" not in cam.error


def test_unreachable_device_is_reported_not_raised() -> None:
    port = free_port_block(1)
    cam = query_onvif(f"http://127.0.0.1:{port}/onvif/device_service", USER, PASSWORD, timeout_s=2)
    assert cam.error is not None and cam.profiles == []
    assert isinstance(cam, DiscoveredCamera)


# --------------------------------------------------------------------------- WS-Discovery answers on loopback
def cheap_probe_match(relates_to: str, xaddr: str) -> bytes:
    """A ProbeMatch as some cheap cameras send it: no ProbeMatches wrapper, no AppSequence header, its
    own namespace prefixes, the Action last."""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<SOAP-ENV:Envelope xmlns:SOAP-ENV="http://www.w3.org/2003/05/soap-envelope" '
        'xmlns:wsadis="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
        'xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery" xmlns:dn="http://www.onvif.org/ver10/network/wsdl">'
        f"<SOAP-ENV:Header><wsadis:MessageID>uuid:{uuid.uuid4()}</wsadis:MessageID>"
        f"<wsadis:RelatesTo>{relates_to}</wsadis:RelatesTo>"
        "<wsadis:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</wsadis:To>"
        "<wsadis:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/ProbeMatches</wsadis:Action>"
        "</SOAP-ENV:Header><SOAP-ENV:Body><d:ProbeMatch>"
        f"<wsadis:EndpointReference><wsadis:Address>urn:uuid:{uuid.uuid4()}</wsadis:Address></wsadis:EndpointReference>"
        "<d:Types>dn:NetworkVideoTransmitter</d:Types><d:Scopes>onvif://www.onvif.org/type/video_encoder</d:Scopes>"
        f"<d:XAddrs>{xaddr} http://169.254.1.1/onvif/device_service</d:XAddrs>"
        "<d:MetadataVersion>1</d:MetadataVersion></d:ProbeMatch></SOAP-ENV:Body></SOAP-ENV:Envelope>"
    ).encode()


class UdpResponder:
    """A device on loopback answering WS-Discovery probes with what ``answers(message_id)`` makes."""

    def __init__(self, answers: Callable[[str], list[bytes]]) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.answers = answers
        self.probes: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                data, addr = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            self.probes.append(data)
            m = re.search(rb"<a:MessageID>([^<]+)</a:MessageID>", data)
            if m and b"<d:Types>dn:NetworkVideoTransmitter</d:Types>" in data:
                for answer in self.answers(m.group(1).decode()):
                    self.sock.sendto(answer, addr)

    def __enter__(self) -> UdpResponder:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def test_a_cheap_devices_probe_match_is_taken_and_what_was_unusual_logged(
    onvif: tuple[OnvifServer, list[OnvifDevice]], caplog: pytest.LogCaptureFixture
) -> None:
    _, devices = onvif
    dev = devices[0]

    def answers(message_id: str) -> list[bytes]:
        return [
            b"not xml at all",
            cheap_probe_match("urn:uuid:" + str(uuid.uuid4()), "http://127.0.0.1:1/another-probe"),  # not ours
            b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;</x>',
            cheap_probe_match(message_id, xaddr(dev)),
        ]

    caplog.set_level(logging.WARNING, logger="edge_agent.wsd")
    with UdpResponder(answers) as device:
        cams = discover(USER, PASSWORD, timeout_s=1.5, targets=[("127.0.0.1", device.port)], multicast=False)
    assert len(device.probes) == 2  # the probe is sent twice (UDP)
    assert [c.serial for c in cams] == [f"SIM{dev.device_id}"]  # before: no camera, the answer was dropped
    assert cams[0].main_stream() == dev.rtsp_main
    (told,) = [r.getMessage() for r in caplog.records]  # once, though answered twice
    assert told.startswith(f"WS-Discovery answer from 127.0.0.1:{device.port} taken although unusual: ")
    assert "no AppSequence header" in told and "ProbeMatch without its ProbeMatches wrapper" in told


def test_a_standard_probe_match_is_taken_quietly(caplog: pytest.LogCaptureFixture) -> None:
    """camsim's answer: a ProbeMatches wrapper and the AppSequence header, as the standard has it."""
    port = free_port_block(1)
    xaddrs = {"32058501001320000901": "http://127.0.0.1:18901/onvif/device_service"}
    responder = DiscoveryResponder(xaddrs, bind="127.0.0.1", port=port)
    responder.start()
    caplog.set_level(logging.DEBUG, logger="edge_agent.wsd")
    try:
        found = probe(timeout_s=1.0, targets=[("127.0.0.1", port)], multicast=False)
    finally:
        responder.stop()
    assert found == list(xaddrs.values())
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


# --------------------------------------------------------------------------- WS-Discovery in namespaces


def test_discover_cli_in_a_network_namespace(tmp_path: Path, netns_pair: Any) -> None:
    net = netns_pair("agdisc", 78)
    ns_cam, ns_agent, cam_ip = net.cam, net.agent, net.cam_ip
    ids = device_ids(3, first=801)
    base_port = 18080
    responder: subprocess.Popen[str] | None = None
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    try:
        cmd = ["ip", "netns", "exec", ns_cam, sys.executable, "-m", "camsim.onvif", "--bind", cam_ip,
               "--base-port", str(base_port), "--rtsp-base", f"rtsp://{cam_ip}:8554/cam", "--discovery",
               "--username", USER, "--password", PASSWORD]
        for d in ids:
            cmd += ["--device-id", d]
        responder = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        assert responder.stdout is not None and responder.stdout.readline().strip() == "ready"
        agent = subprocess.run(
            ["ip", "netns", "exec", ns_agent, sys.executable, "-m", "edge_agent.cli", "discover",
             "--timeout", "3"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path,
            env={**env, "ONVIF_USERNAME": USER, "ONVIF_PASSWORD": PASSWORD},
        )
        assert agent.returncode == 0, agent.stderr[-3000:]
        found = json.loads(agent.stdout)
        assert PASSWORD not in agent.stdout + agent.stderr
        by_serial = {c["serial"]: c for c in found}
        assert sorted(by_serial) == sorted(f"SIM{d}" for d in ids), found
        for i, d in enumerate(ids):
            cam = by_serial[f"SIM{d}"]
            assert cam["address"] == f"{cam_ip}:{base_port + i}"
            assert cam["xaddr"] == f"http://{cam_ip}:{base_port + i}/onvif/device_service"
            assert (cam["manufacturer"], cam["model"]) == (MANUFACTURER, MODEL)
            assert cam["error"] is None
            assert [p["token"] for p in cam["profiles"]] == ["profile_main", "profile_sub"]
            assert all(p["stream_uri"] == f"rtsp://{cam_ip}:8554/cam/{d}" for p in cam["profiles"])

        # Without credentials every camera is still listed, with the reason it could not be read.
        anon = subprocess.run(
            ["ip", "netns", "exec", ns_agent, sys.executable, "-m", "edge_agent.cli", "discover",
             "--timeout", "2"],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=env,
        )
        assert anon.returncode == 0, anon.stderr[-3000:]
        listed = json.loads(anon.stdout)
        assert len(listed) == len(ids)
        assert all(c["profiles"] == [] and "not authorized" in (c["error"] or "").lower() for c in listed)
    finally:
        if responder is not None:
            stop_process(responder, timeout=5)
