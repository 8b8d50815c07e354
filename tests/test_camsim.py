"""Camera simulator against real clients: PyAV over RTSP, onvif-zeep, WS-Discovery in namespaces.

No mocks: a real GStreamer RTSP server runs on loopback with short 640x360 clips, so the whole
file stays well under a minute and a half on two cores.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import cv2
import httpx
import numpy as np
import pytest

from camsim.clips import VARIANTS, ClipParams, ensure_clips
from camsim.net import free_port_block, free_ports, wait_until
from camsim.sim import PROJECT_ROOT, SYSTEM_PYTHON, Simulator, device_ids
from tests.conftest import stop_process

pytestmark = pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="system python3 with gi missing")

PARAMS = ClipParams(width=640, height=360, fps=25, gop_s=2.0, bitrate_kbps=1500, bframes=2, duration_s=4.0)
BASELINE = ClipParams(**{**PARAMS.__dict__, "bframes": 0})
SUB = ClipParams(width=320, height=180, fps=25, gop_s=2.0, bitrate_kbps=400, bframes=0, duration_s=4.0)
RTSP_OPTIONS = {"rtsp_transport": "tcp", "timeout": "5000000"}


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("camsim")


@pytest.fixture(scope="module")
def sim(clip_dir: Path) -> Iterator[Simulator]:
    rtsp_port, control_port = free_ports(2)
    ids = device_ids(3)
    simulator = Simulator(ids, clip_dir, rtsp_port=rtsp_port, control_port=control_port,
                          onvif_base_port=free_port_block(len(ids)), params=PARAMS, sub_params=SUB)
    with simulator:
        yield simulator


# --------------------------------------------------------------------------- helpers


def open_rtsp(url: str, attempts: int = 3) -> Any:
    """Open an RTSP URL, retrying: a server's very first connections occasionally fail."""
    for attempt in range(attempts):
        try:
            return av.open(url, options=RTSP_OPTIONS)
        except av.error.FFmpegError:
            if attempt == attempts - 1:
                raise
            time.sleep(0.5)
    raise AssertionError("unreachable")


def grab(url: str, count: int) -> tuple[list[np.ndarray], list[int | None]]:
    """Decode `count` frames: gray pictures and their PTS (90 kHz RTP clock)."""
    frames: list[np.ndarray] = []
    pts: list[int | None] = []
    with open_rtsp(url) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="gray"))
            pts.append(frame.pts)
            if len(frames) >= count:
                break
    return frames, pts


def sharpness(img: np.ndarray) -> float:
    return float(cv2.Laplacian(img, cv2.CV_64F).var())


def moving_fraction(a: np.ndarray, b: np.ndarray) -> float:
    """Share of pixels that changed a lot: moving objects, not noise."""
    return float((cv2.absdiff(a, b) > 30).mean())


# --------------------------------------------------------------------------- clips


@pytest.mark.parametrize("params", [PARAMS, BASELINE], ids=["high", "baseline"])
def test_clips_have_expected_properties(clip_dir: Path, params: ClipParams) -> None:
    clips = ensure_clips(params, clip_dir / "clips")  # same cache the simulator uses
    assert set(clips) == set(VARIANTS)
    for variant, path in clips.items():
        fps = 1 if variant == "lowfps" else params.fps
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            assert (stream.codec_context.width, stream.codec_context.height) == (640, 360)
            packets = [p for p in container.demux(stream) if p.size]
            keys = [i for i, p in enumerate(packets) if p.is_keyframe]
            assert len(packets) == round(params.duration_s * fps)
            assert keys == list(range(0, len(packets), round(params.gop_s * fps))), variant
            kbps = sum(p.size for p in packets) * 8 / params.duration_s / 1000
            assert kbps <= params.bitrate_kbps * 1.25, (variant, kbps)
            if variant in ("normal", "blur", "cover"):
                assert kbps >= params.bitrate_kbps * 0.6, (variant, kbps)
            # B-frames show up as PTS running ahead of DTS in decode order.
            reordered = any(p.pts != p.dts for p in packets)
            assert reordered == (params.bframes > 0), variant
            profile = stream.codec_context.profile or ""
            assert ("High" in profile) if params.bframes else ("Baseline" in profile), profile
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
            assert rate is not None and abs(float(rate) - fps) < 0.5, (variant, rate)


def test_clip_variants_look_like_their_fault(clip_dir: Path) -> None:
    clips = ensure_clips(PARAMS, clip_dir / "clips")

    def frames(variant: str, n: int = 12) -> list[np.ndarray]:
        with av.open(str(clips[variant])) as c:
            return [f.to_ndarray(format="gray") for _, f in zip(range(n), c.decode(video=0), strict=False)]

    normal = frames("normal")
    assert 60 < np.mean(normal[0]) < 180
    assert moving_fraction(normal[0], normal[10]) > 0.005  # objects move
    assert np.mean(frames("black")[5]) < 5
    frozen = frames("freeze")
    assert max(float(cv2.absdiff(a, b).mean()) for a, b in itertools.pairwise(frozen)) < 0.3
    assert sharpness(frames("blur")[5]) < 0.35 * sharpness(normal[5])
    assert np.mean(frames("cover")[5]) < 0.5 * np.mean(normal[5])


def test_clips_are_cached(clip_dir: Path) -> None:
    first = ensure_clips(PARAMS, clip_dir / "clips", ["normal"])["normal"]
    mtime = first.stat().st_mtime_ns
    assert ensure_clips(PARAMS, clip_dir / "clips", ["normal"])["normal"].stat().st_mtime_ns == mtime


# --------------------------------------------------------------------------- RTSP and faults


def test_stream_plays_across_the_loop_point(sim: Simulator) -> None:
    device = sim.cameras[0]  # High profile with B-frames
    frames, pts = grab(sim.rtsp_url(device), count=int(PARAMS.fps * (PARAMS.duration_s + 1.2)))
    stamps = [p for p in pts if p is not None]
    assert len(stamps) >= len(pts) - 2
    deltas = np.diff(stamps)
    assert (deltas > 0).all(), "timestamps must increase, also across the clip's loop point"
    assert deltas.max() <= 90000 * 0.2, "no gap at the loop point"
    assert (stamps[-1] - stamps[0]) / 90000 > PARAMS.duration_s + 0.5
    assert frames[0].shape == (360, 640)
    assert 60 < np.mean(frames[-1]) < 180


def test_sub_stream_follows_the_camera_faults(sim: Simulator) -> None:
    device = sim.cameras[2]
    frames, _ = grab(sim.rtsp_url(device, sub=True), 3)
    assert frames[-1].shape == (180, 320) and np.mean(frames[-1]) > 60
    try:
        sim.set_fault(device, "black")
        frames, _ = grab(sim.rtsp_url(device, sub=True), 3)
        assert np.mean(frames[-1]) < 10
    finally:
        sim.clear(device)


def test_control_api_lists_cameras(sim: Simulator) -> None:
    cams = httpx.get(f"{sim.control_url}/cameras").json()
    assert [c["device_id"] for c in cams] == sim.cameras
    for c in cams:
        assert c["rtsp_url"] == sim.rtsp_url(c["device_id"])
        assert c["fault"] == "none"
        assert c["online"] is True
    assert [c["profile"] for c in cams] == ["high", "baseline", "high"]


def test_control_api_errors(sim: Simulator) -> None:
    url = f"{sim.control_url}/cameras"
    r = httpx.post(f"{url}/00000000000000000000/fault", json={"kind": "black"})
    assert r.status_code == 404 and "unknown camera" in r.json()["error"]
    r = httpx.post(f"{url}/{sim.cameras[0]}/fault", json={"kind": "melt"})
    assert r.status_code == 400 and "melt" in r.json()["error"] and "black" in r.json()["kinds"]
    r = httpx.post(f"{url}/{sim.cameras[0]}/fault", content=b"not json")
    assert r.status_code == 400
    assert httpx.get(f"{sim.control_url}/nothing").status_code == 404


def test_picture_faults_change_what_a_client_sees(sim: Simulator) -> None:
    device = sim.cameras[1]  # Baseline profile
    url = sim.rtsp_url(device)
    normal, _ = grab(url, 12)
    base_sharpness, base_luma = sharpness(normal[-1]), float(np.mean(normal[-1]))
    assert moving_fraction(normal[0], normal[-1]) > 0.005
    try:
        assert sim.set_fault(device, "black")["fault"] == "black"
        black, _ = grab(url, 5)
        assert np.mean(black[-1]) < 10

        sim.set_fault(device, "freeze")
        frozen, _ = grab(url, 12)
        assert max(float(cv2.absdiff(a, b).mean()) for a, b in itertools.pairwise(frozen)) < 0.3

        sim.set_fault(device, "blur")
        blurred, _ = grab(url, 5)
        assert sharpness(blurred[-1]) < 0.35 * base_sharpness

        sim.set_fault(device, "cover")
        covered, _ = grab(url, 5)
        assert np.mean(covered[-1]) < 0.5 * base_luma

        sim.set_fault(device, "lowfps")
        _, pts = grab(url, 3)
        stamps = [p for p in pts if p is not None]
        assert np.median(np.diff(stamps)) == pytest.approx(90000, rel=0.2)  # one frame a second

        assert sim.clear(device)["fault"] == "none"
        cleared, _ = grab(url, 5)
        assert np.mean(cleared[-1]) == pytest.approx(base_luma, abs=15)
        assert sharpness(cleared[-1]) > 0.6 * base_sharpness
    finally:
        sim.clear(device)


def test_fault_switch_disconnects_existing_clients(sim: Simulator) -> None:
    device = sim.cameras[2]
    with open_rtsp(sim.rtsp_url(device)) as container:
        packets = container.demux(video=0)
        next(packets)
        sim.set_fault(device, "black")
        started = time.monotonic()
        with pytest.raises((StopIteration, av.error.FFmpegError)):
            while time.monotonic() - started < 10:
                next(packets)
        assert time.monotonic() - started < 3, "sessions on the old clip must be closed promptly"
    sim.clear(device)


def test_dark_camera_stops_sending_and_refuses(sim: Simulator) -> None:
    device = sim.cameras[2]
    url = sim.rtsp_url(device)
    try:
        with open_rtsp(url) as container:
            packets = container.demux(video=0)
            next(packets)
            info = sim.set_fault(device, "dark")
            assert info["fault"] == "dark" and info["online"] is False
            started = time.monotonic()
            got = 0
            with pytest.raises((StopIteration, av.error.FFmpegError)):
                while time.monotonic() - started < 10:
                    next(packets)
                    got += 1
            assert time.monotonic() - started < 6
        with pytest.raises(av.error.FFmpegError):
            av.open(url, options=RTSP_OPTIONS)
    finally:
        sim.clear(device)
    frames, _ = grab(url, 3)  # back after clear
    assert 60 < np.mean(frames[-1]) < 180


def test_restart_drops_then_comes_back(sim: Simulator) -> None:
    device = sim.cameras[0]
    url = sim.rtsp_url(device)
    started = time.monotonic()
    assert sim.set_fault(device, "restart")["online"] is False
    with pytest.raises(av.error.FFmpegError):
        av.open(url, options=RTSP_OPTIONS)

    def serving() -> bool:
        try:
            with av.open(url, options=RTSP_OPTIONS) as c:
                return next(c.decode(video=0)) is not None
        except av.error.FFmpegError:
            return False

    assert wait_until(serving, timeout=10, interval=0.3)
    assert time.monotonic() - started > 2.5
    cam = next(c for c in sim.list_cameras() if c["device_id"] == device)
    assert (cam["fault"], cam["online"]) == ("none", True)


# --------------------------------------------------------------------------- ONVIF


def test_onvif_zeep_client(sim: Simulator) -> None:
    from onvif import ONVIFCamera
    from onvif.exceptions import ONVIFError

    device = sim.cameras[1]
    cam = ONVIFCamera("127.0.0.1", sim.onvif_port(device), "admin", "secret")
    info = cam.devicemgmt.GetDeviceInformation()
    assert info.Manufacturer == "VMS-Sim"
    assert device in info.SerialNumber
    assert cam.devicemgmt.GetSystemDateAndTime().UTCDateTime.Date.Year >= 2024
    media = cam.create_media_service()
    profiles = media.GetProfiles()
    assert [p.token for p in profiles] == ["profile_main", "profile_sub"]
    assert profiles[0].VideoEncoderConfiguration.Resolution.Width == 640
    assert profiles[0].VideoEncoderConfiguration.Encoding == "H264"
    assert profiles[1].VideoEncoderConfiguration.Resolution.Width == 320
    uris = [media.GetStreamUri({"StreamSetup": {"Stream": "RTP-Unicast", "Transport": {"Protocol": "RTSP"}},
                                "ProfileToken": p.token}).Uri for p in profiles]
    assert uris == [sim.rtsp_url(device), sim.rtsp_url(device, sub=True)]

    wrong = ONVIFCamera("127.0.0.1", sim.onvif_port(device), "admin", "wrong")
    with pytest.raises(ONVIFError, match=r"(?i)not authorized"):
        wrong.devicemgmt.GetDeviceInformation()


# --------------------------------------------------------------------------- process hygiene


def test_server_exits_when_its_parent_dies(clip_dir: Path) -> None:
    rtsp_port, control_port = free_ports(2)
    script = textwrap.dedent(f"""
        import time
        from camsim.clips import ClipParams
        from camsim.sim import Simulator
        sim = Simulator(["32058501001320999999"], {str(clip_dir)!r}, rtsp_port={rtsp_port},
                        control_port={control_port}, onvif_base_port=None, mix_profiles=False,
                        params=ClipParams(**{PARAMS.__dict__!r}), log_path={str(clip_dir / "orphan.log")!r})
        sim.start()
        print(sim.proc.pid, flush=True)
        time.sleep(60)
    """)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        parent.send_signal(signal.SIGKILL)
        parent.wait()

        def gone() -> bool:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                return True
            # A zombie waiting for init to reap it is gone too.
            stat = Path(f"/proc/{child}/stat").read_text()
            return stat.rsplit(")", 1)[1].split()[0] == "Z"

        assert wait_until(gone, timeout=5), "the RTSP server outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()


# --------------------------------------------------------------------------- WS-Discovery in namespaces

DISCOVERY_CLIENT = textwrap.dedent("""
    import json, socket, struct, time, uuid
    import xml.etree.ElementTree as ET
    from wsdiscovery import QName
    from wsdiscovery.discovery import ThreadedWSDiscovery
    from onvif import ONVIFCamera

    wsd = ThreadedWSDiscovery()
    wsd.start()
    try:
        services = wsd.searchServices(
            types=[QName("http://www.onvif.org/ver10/network/wsdl", "NetworkVideoTransmitter")], timeout=3)
        xaddrs = sorted(x for s in services for x in s.getXAddrs())
    finally:
        wsd.stop()

    # A raw probe too, to check the reply correlates with our MessageID.
    message_id = uuid.uuid4().urn
    probe = ('<?xml version="1.0" encoding="UTF-8"?><s:Envelope xmlns:s="http://www.w3.org/2003/05/soap-envelope" '
             'xmlns:a="http://schemas.xmlsoap.org/ws/2004/08/addressing" '
             'xmlns:d="http://schemas.xmlsoap.org/ws/2005/04/discovery"><s:Header>'
             '<a:Action>http://schemas.xmlsoap.org/ws/2005/04/discovery/Probe</a:Action>'
             f'<a:MessageID>{message_id}</a:MessageID><a:To>urn:schemas-xmlsoap-org:ws:2005:04:discovery</a:To>'
             '</s:Header><s:Body><d:Probe/></s:Body></s:Envelope>')
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(LOCAL))
    sock.settimeout(2)
    sock.sendto(probe.encode(), ("239.255.255.250", 3702))
    relates = []
    try:
        while True:
            root = ET.fromstring(sock.recv(65535))
            relates.append(root.findtext(".//{http://schemas.xmlsoap.org/ws/2004/08/addressing}RelatesTo"))
    except socket.timeout:
        pass

    serials = []
    for xaddr in xaddrs:
        host, port = xaddr.split("/")[2].split(":")
        serials.append(ONVIFCamera(host, int(port), "admin", "secret").devicemgmt.GetDeviceInformation().SerialNumber)
    print(json.dumps({"xaddrs": xaddrs, "relates": relates, "message_id": message_id, "serials": serials}))
""")


def test_ws_discovery_across_network_namespaces(netns_pair: Any) -> None:
    net = netns_pair("camsim", 77)
    ns_cam, ns_agent, cam_ip, agent_ip = net.cam, net.agent, net.cam_ip, net.agent_ip
    ids = device_ids(2, prefix="32058501001320", first=501)
    responder: subprocess.Popen[str] | None = None
    try:
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        cmd = ["ip", "netns", "exec", ns_cam, SYSTEM_PYTHON, "-m", "camsim.onvif", "--bind", cam_ip,
               "--base-port", "18080", "--rtsp-base", f"rtsp://{cam_ip}:8554/cam", "--discovery",
               "--username", "admin", "--password", "secret"]
        for d in ids:
            cmd += ["--device-id", d]
        responder = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        assert responder.stdout is not None and responder.stdout.readline().strip() == "ready"
        client = subprocess.run(
            ["ip", "netns", "exec", ns_agent, sys.executable, "-c", f"LOCAL = {agent_ip!r}\n" + DISCOVERY_CLIENT],
            capture_output=True, text=True, timeout=30, env=env,
        )
        assert client.returncode == 0, client.stderr[-2000:]
        result = json.loads(client.stdout.strip().splitlines()[-1])
        assert result["xaddrs"] == [f"http://{cam_ip}:{18080 + i}/onvif/device_service" for i in range(2)]
        assert result["relates"] == [result["message_id"]] * len(ids)
        assert sorted(result["serials"]) == sorted(f"SIM{d}" for d in ids)
    finally:
        if responder is not None:
            stop_process(responder, timeout=5)
