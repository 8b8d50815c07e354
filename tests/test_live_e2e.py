"""Live view end to end on loopback: camsim (RTSP) -> edge agent -> hub -> HLS and WebRTC clients.

Everything is real: a GStreamer RTSP server, the agent as its own process, `vms serve`, PyAV
reading the HLS playlist, and an aiortc peer negotiating with the hub. Agent segments are 1 s
so the live window fills within seconds. ICE is pinned to 127.0.0.1 on both sides.

Camera 0 (High profile with B-frames) also has a sub stream (Baseline, smaller) that the agent
relays live-only; camera 1 (Baseline) has none.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioice.ice
import av
import httpx
import numpy as np
import pytest
import yaml
from aiortc import RTCConfiguration, RTCPeerConnection, RTCRtpReceiver, RTCSessionDescription

from camsim.clips import ClipParams
from camsim.net import free_ports
from camsim.sim import SYSTEM_PYTHON, Simulator, device_ids
from tests.conftest import HubProcess, free_port, hub_config, stop_process, write_config
from vms.kernel.timeutil import iso
from vms.live.window import probe

pytestmark = pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="system python3 with gi missing")

PARAMS = ClipParams(width=320, height=180, fps=25, gop_s=1.0, bitrate_kbps=300, bframes=2, duration_s=4.0)
SUB = ClipParams(width=160, height=90, fps=25, gop_s=1.0, bitrate_kbps=100, bframes=0, duration_s=4.0)
CAMS = device_ids(2)  # camera 0: High with B-frames; camera 1: Baseline (the simulator mixes profiles)
SILENT = "32058501001320000050"  # configured at the hub, never relayed
UNKNOWN = "32058501001320000077"
LIVE = "/api/v1/live"


class Setup:
    def __init__(self, hub: HubProcess, sim: Simulator) -> None:
        self.hub, self.sim = hub, sim

    def headers(self, role: str = "duty") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.hub.tokens[role]}"}

    def get(self, path: str, role: str | None = "duty", **kw: Any) -> httpx.Response:
        return httpx.get(self.hub.url + path, headers=self.headers(role) if role else {}, timeout=20, **kw)

    def media_token(self, cam: str, stream: str = "main") -> str:
        """A media token for the ``?token=`` of the camera's HLS URLs (a person's token is refused there)."""
        r = httpx.post(f"{self.hub.url}{LIVE}/{cam}/media-token", params={"stream": stream},
                       headers=self.headers(), timeout=10)
        assert r.status_code == 200, r.text
        token: str = r.json()["token"]
        return token


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    d = tmp_path_factory.mktemp("live")
    rtsp_port, control_port = free_ports(2)
    sim = Simulator(
        CAMS,
        d / "sim",
        rtsp_port=rtsp_port,
        control_port=control_port,
        onvif_base_port=None,
        params=PARAMS,
        sub_params=SUB,
        variants=("normal",),
    )
    cfg = hub_config(
        d / "hub",
        devices=[{"id": SILENT, "name": "silent"}],
        live={"ice_addresses": ["127.0.0.1"], "max_viewers_per_device": 1},
    )
    hub = HubProcess(write_config(d / "hub.yaml", cfg), free_port())
    for role in ("duty", "admin"):
        hub.token(role)
    agent_token = hub.token("agent", "32058501", name="agent")
    agent_cfg = d / "agent.yaml"
    agent_cfg.write_text(
        yaml.safe_dump(
            {
                "hub_url": hub.url,
                "token": agent_token,
                "data_dir": str(d / "agent"),
                "segment_seconds": 1,
                "heartbeat_interval_s": 1,
                "cameras": [
                    {"url": sim.rtsp_url(CAMS[0]), "sub_url": sim.rtsp_url(CAMS[0], sub=True), "device_id": CAMS[0]},
                    {"url": sim.rtsp_url(CAMS[1]), "device_id": CAMS[1]},
                ],
            }
        )
    )
    agent: subprocess.Popen[bytes] | None = None
    with sim:
        hub.start()
        try:
            log = (d / "agent.log").open("wb")
            agent = subprocess.Popen(
                [sys.executable, "-c", "from edge_agent.cli import main; main()", "run", "--config", str(agent_cfg)],
                stdout=log,
                stderr=log,
            )
            s = Setup(hub, sim)
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if all(s.get(f"{LIVE}/{c}").json().get("live") for c in CAMS) and s.get(
                    f"{LIVE}/{CAMS[0]}"
                ).json()["sub"]["live"]:
                    break
                time.sleep(0.5)
            else:
                raise AssertionError(f"no live media within 60 s; agent log:\n{(d / 'agent.log').read_text()[-3000:]}")
            yield s
        finally:
            if agent is not None:
                stop_process(agent, timeout=20)
            hub.stop()


def ts_clip(seconds: float = 1.0) -> bytes:
    """A tiny valid MPEG-TS H.264 segment."""
    buf = io.BytesIO()
    with av.open(buf, "w", format="mpegts") as out:
        st = out.add_stream("libx264", rate=25)
        st.width, st.height, st.pix_fmt = 64, 64, "yuv420p"
        for i in range(round(25 * seconds)):
            f = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 9 % 255, np.uint8), format="rgb24")
            f.pts = i
            out.mux(st.encode(f))
        out.mux(st.encode(None))
    return buf.getvalue()


def hls_frames(url: str, n: int = 40) -> list[np.ndarray]:
    """The first ``n`` pictures (gray) an HLS client decodes, starting two segments back."""
    frames: list[np.ndarray] = []
    with av.open(url, options={"live_start_index": "-2"}, timeout=20) as c:
        for f in c.decode(video=0):
            frames.append(f.to_ndarray(format="gray"))
            if len(frames) >= n:
                break
    return frames


def changing(frames: list[np.ndarray]) -> float:
    """Largest share of pixels that changed by more than 30 levels between two of the frames."""
    return max(float((np.abs(a.astype(int) - frames[0].astype(int)) > 30).mean()) for a in frames[1:])


def picture_key(gray: np.ndarray) -> bytes:
    return hashlib.blake2b(gray.tobytes(), digest_size=12).digest()


def segment_pictures(live: Setup, cam: str, stream: str = "main") -> set[bytes]:
    """Keys of every picture in the segments of the camera's live playlist, decoded one by one."""
    text = live.get(f"{LIVE}/{cam}/index.m3u8", params={"stream": stream}).text
    keys: set[bytes] = set()
    for uri in (ln for ln in text.splitlines() if ln and not ln.startswith("#")):
        with av.open(io.BytesIO(live.get(f"{LIVE}/{cam}/{uri}").content)) as c:
            keys.update(picture_key(f.to_ndarray(format="gray")) for f in c.decode(video=0))
    return keys


# --------------------------------------------------------------------------- access


def test_auth_and_unknown_devices(live: Setup) -> None:
    cam = CAMS[1]
    for path in (f"{LIVE}/{cam}/index.m3u8", f"{LIVE}/{cam}/segments/1.ts", f"{LIVE}/{cam}"):
        r = live.get(path, role=None)
        assert r.status_code == 401 and r.json()["detail"] == "missing bearer token", path
        r = live.get(path, role="agent")
        assert r.status_code == 403 and "'agent' may not" in r.json()["detail"], path
    r = live.get(f"{LIVE}/{cam}/index.m3u8", role=None, params={"token": live.hub.tokens["duty"]})
    assert r.status_code == 401 and r.json()["detail"].startswith("a bearer token is not accepted in the URL")
    r = live.get(f"{LIVE}/{cam}/index.m3u8", role=None, params={"token": live.media_token(CAMS[0])})
    assert r.status_code == 403 and r.json()["detail"] == f"this media token is for device {CAMS[0]}, not {cam}"
    offer = {"sdp": "v=0\r\n" * 3, "type": "offer"}
    r = httpx.post(f"{live.hub.url}{LIVE}/{cam}/webrtc", json=offer, timeout=10)
    assert r.status_code == 401
    r = httpx.post(f"{live.hub.url}{LIVE}/{cam}/webrtc", json=offer, headers=live.headers("agent"), timeout=10)
    assert r.status_code == 403
    r = httpx.post(
        f"{live.hub.url}{LIVE}/{cam}/webrtc", json=offer, timeout=10, params={"token": live.hub.tokens["duty"]}
    )  # the query token is for media routes only
    assert r.status_code == 401
    for path in (f"{LIVE}/{UNKNOWN}/index.m3u8", f"{LIVE}/{UNKNOWN}"):
        r = live.get(path)
        assert r.status_code == 404 and r.json()["detail"] == f"unknown device {UNKNOWN}"
    r = httpx.post(f"{live.hub.url}{LIVE}/{UNKNOWN}/webrtc", json=offer, headers=live.headers(), timeout=10)
    assert r.status_code == 404
    assert live.get(f"{LIVE}/123/index.m3u8").status_code == 422
    r = live.get(f"{LIVE}/{SILENT}/index.m3u8")
    assert r.status_code == 409 and r.json()["detail"].startswith(f"no live media for {SILENT}")


def test_old_media_is_not_live(live: Setup) -> None:
    """A segment from an hour ago (an agent's backlog) is archive, not live: 409, not a stale playlist."""
    dev = "32058501001320000060"
    data = ts_clip()
    r = httpx.put(
        f"{live.hub.url}/api/v1/agents/segments/{dev}",
        content=data,
        params={"start": time.time() - 3600, "duration": 1.0},
        headers={**live.headers("agent"), "X-VMS-SHA256": hashlib.sha256(data).hexdigest()},
        timeout=10,
    )
    assert r.status_code == 201, r.text
    r = live.get(f"{LIVE}/{dev}/index.m3u8")
    assert r.status_code == 409 and "no live media" in r.json()["detail"]
    assert live.get(f"{LIVE}/{dev}").json()["live"] is False


# --------------------------------------------------------------------------- HLS


def test_playlist_slides_and_serves_segments(live: Setup) -> None:
    cam, other = CAMS
    token = live.media_token(cam)
    r = live.get(f"{LIVE}/{cam}/index.m3u8", role=None, params={"token": token})
    assert r.status_code == 200 and r.headers["content-type"] == "application/vnd.apple.mpegurl"
    text = r.text
    seq = int(text.split("#EXT-X-MEDIA-SEQUENCE:")[1].split()[0])
    target = int(text.split("#EXT-X-TARGETDURATION:")[1].split()[0])
    durations = [float(x.split(",")[0]) for x in text.split("#EXTINF:")[1:]]
    uris = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert target >= max(round(d) for d in durations) and min(durations) > 0.5
    assert all(u.startswith("segments/") and u.endswith(f".ts?token={token}") for u in uris)
    # Blocking reload: ask for the segment after the newest; the answer comes when it exists.
    newest = seq + len(uris) - 1
    r2 = live.get(f"{LIVE}/{cam}/index.m3u8", params={"_HLS_msn": newest + 1})
    seq2 = int(r2.text.split("#EXT-X-MEDIA-SEQUENCE:")[1].split()[0])
    uris2 = [ln for ln in r2.text.splitlines() if ln and not ln.startswith("#")]
    assert seq2 + len(uris2) - 1 >= newest + 1 and seq2 >= seq
    assert "?token=" not in r2.text  # asked with a header: no token in the URIs
    assert uris2[-1] not in {u.split("?")[0] for u in uris}
    # A listed segment is served with the query token; it is MPEG-TS.
    seg_path = f"{LIVE}/{cam}/{uris[-1]}"
    r = httpx.get(live.hub.url + seg_path, timeout=10)
    assert r.status_code == 200 and r.headers["content-type"] == "video/mp2t"
    assert r.content[0] == 0x47 and len(r.content) % 188 == 0
    seg_id = uris[-1].split("/")[1].split(".")[0]
    r = live.get(f"{LIVE}/{other}/segments/{seg_id}.ts")
    assert r.status_code == 404 and "not in the live window" in r.json()["detail"]
    assert live.get(f"{LIVE}/{cam}/segments/{seg_id}.ts", params={"token": "x"}).status_code == 200  # header wins
    r = live.get(f"{LIVE}/{cam}/index.m3u8", params={"_HLS_msn": newest + 50})
    assert r.status_code == 400 and "too far ahead" in r.json()["detail"]


def test_hls_client_reads_changing_frames(live: Setup) -> None:
    url = f"{live.hub.url}{LIVE}/{CAMS[0]}/index.m3u8?token={live.media_token(CAMS[0])}"
    frames = hls_frames(url)
    assert frames[0].shape == (180, 320)
    assert changing(frames) > 0.01  # objects move: the picture is live, not a still


# --------------------------------------------------------------------------- WebRTC


async def webrtc_offer(pc: RTCPeerConnection, live: Setup, cam: str, stream: str = "main") -> httpx.Response:
    await pc.setLocalDescription(await pc.createOffer())
    async with httpx.AsyncClient(timeout=20) as client:
        return await client.post(
            f"{live.hub.url}{LIVE}/{cam}/webrtc",
            headers=live.headers(),
            params={"stream": stream},
            json={"sdp": pc.localDescription.sdp, "type": pc.localDescription.type},
        )


@pytest.fixture
def loopback_ice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


@pytest.mark.parametrize(
    ("cam", "stream", "shape"), [(CAMS[1], "main", (180, 320)), (CAMS[0], "sub", (90, 160))], ids=["baseline", "sub"]
)
async def test_webrtc_viewer_gets_camera_h264(
    live: Setup, cam: str, stream: str, shape: tuple[int, int], loopback_ice: None
) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    tracks: asyncio.Queue[Any] = asyncio.Queue()
    pc.on("track", tracks.put_nowait)
    try:
        r = await webrtc_offer(pc, live, cam, stream)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["type"] == "answer" and "H264/90000" in answer["sdp"] and "VP8" not in answer["sdp"]
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
        track = await asyncio.wait_for(tracks.get(), 10)
        frames: list[np.ndarray] = []
        while len(frames) < 40:
            frame = await asyncio.wait_for(track.recv(), 15)
            frames.append(frame.to_ndarray(format="gray"))
        assert frames[0].shape == shape
        assert changing(frames) > 0.01
        # Passed through, not transcoded: the very pictures the relayed segments decode to.
        stored = segment_pictures(live, cam, stream)
        same = sum(picture_key(f) in stored for f in frames)
        assert same >= 0.9 * len(frames), f"only {same} of {len(frames)} WebRTC frames match the segments"
        # The viewer is counted (status and metrics).
        status = live.get(f"{LIVE}/{cam}").json()
        assert status["webrtc_viewers"] == 1 and status["live"] is True
        assert "vms_live_webrtc_viewers 1.0" in live.get("/metrics").text
        # One viewer per camera in this hub's config: a second is refused, clearly.
        pc2 = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc2.addTransceiver("video", direction="recvonly")
        r2 = await webrtc_offer(pc2, live, cam, stream)
        await pc2.close()
        assert r2.status_code == 503 and "max_viewers_per_device" in r2.json()["detail"]
    finally:
        await pc.close()
    deadline = time.monotonic() + 20
    while live.get(f"{LIVE}/{cam}").json()["webrtc_viewers"] and time.monotonic() < deadline:
        await asyncio.sleep(0.2)
    assert live.get(f"{LIVE}/{cam}").json()["webrtc_viewers"] == 0  # the hub closed its side


async def test_webrtc_rejects_unusable_offers(live: Setup, loopback_ice: None) -> None:
    cam = CAMS[1]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    t = pc.addTransceiver("video", direction="recvonly")
    t.setCodecPreferences([c for c in RTCRtpReceiver.getCapabilities("video").codecs if c.mimeType == "video/VP8"])
    try:
        r = await webrtc_offer(pc, live, cam)
    finally:
        await pc.close()
    assert r.status_code == 400 and "does not accept H.264" in r.json()["detail"]
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("audio", direction="recvonly")
    try:
        r = await webrtc_offer(pc, live, cam)
    finally:
        await pc.close()
    assert r.status_code == 400 and "no video section" in r.json()["detail"]
    r = httpx.post(
        f"{live.hub.url}{LIVE}/{cam}/webrtc",
        json={"sdp": "not an sdp at all", "type": "offer"},
        headers=live.headers(),
        timeout=10,
    )
    assert r.status_code == 400, r.text
    r = httpx.post(
        f"{live.hub.url}{LIVE}/{cam}/webrtc",
        json={"sdp": "v=0 " * 5, "type": "answer"},
        headers=live.headers(),
        timeout=10,
    )
    assert r.status_code == 422
    r = httpx.post(
        f"{live.hub.url}{LIVE}/{SILENT}/webrtc",
        json={"sdp": "v=0 " * 5, "type": "offer"},
        headers=live.headers(),
        timeout=10,
    )
    assert r.status_code == 409 and "no live media" in r.json()["detail"]
    assert live.get(f"{LIVE}/{cam}").json()["webrtc_viewers"] == 0


async def test_webrtc_refuses_a_stream_with_bframes_and_names_the_reason(live: Setup, loopback_ice: None) -> None:
    """Browsers' WebRTC shows B-frame streams at keyframes only: the hub says so at once (the page
    then plays HLS, or the sub stream) instead of setting up a session that will stutter."""
    cam = CAMS[0]
    status = live.get(f"{LIVE}/{cam}").json()
    assert status["bframes"] is True and status["sub"]["bframes"] is False
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    try:
        t0 = time.monotonic()
        r = await webrtc_offer(pc, live, cam)
        took = time.monotonic() - t0
    finally:
        await pc.close()
    assert r.status_code == 409, r.text
    detail = r.json()["detail"]
    assert "has B-frames" in detail and "HLS" in detail and "stream=sub" in detail, detail
    assert took < 2, took
    assert live.get(f"{LIVE}/{cam}").json()["webrtc_viewers"] == 0
    # The same camera's main stream still plays over HLS.
    r = live.get(f"{LIVE}/{cam}/index.m3u8")
    assert r.status_code == 200 and "segments/" in r.text


# --------------------------------------------------------------------------- sub stream


def test_status_tells_streams_apart(live: Setup) -> None:
    high, base = (live.get(f"{LIVE}/{c}").json() for c in CAMS)
    assert (high["live"], high["width"], high["height"], high["bframes"]) == (True, 320, 180, True)
    assert high["sub"]["live"] is True and (high["sub"]["width"], high["sub"]["height"]) == (160, 90)
    assert high["sub"]["hls"] == f"{LIVE}/{CAMS[0]}/index.m3u8?stream=sub"
    assert (base["live"], base["bframes"]) == (True, False)
    assert base["sub"]["live"] is False and "no segment has been relayed" in base["sub"]["reason"]
    r = live.get(f"{LIVE}/{CAMS[1]}/index.m3u8", params={"stream": "sub"})
    assert r.status_code == 409 and r.json()["detail"].startswith(f"no live media for the sub stream of {CAMS[1]}")
    assert live.get(f"{LIVE}/{CAMS[0]}/index.m3u8", params={"stream": "third"}).status_code == 422


def test_sub_stream_plays_over_hls(live: Setup) -> None:
    cam = CAMS[0]
    token = live.media_token(cam, "sub")
    text = live.get(f"{LIVE}/{cam}/index.m3u8", params={"stream": "sub"}).text
    uris = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert uris and all(u.startswith("segments/") and u.endswith(".ts?stream=sub") for u in uris)
    # A sub segment is not in the main window, and the other way round.
    assert live.get(f"{LIVE}/{cam}/{uris[-1].split('?')[0]}").status_code == 404
    main_uri = next(ln for ln in live.get(f"{LIVE}/{cam}/index.m3u8").text.splitlines() if ln.startswith("segments/"))
    assert live.get(f"{LIVE}/{cam}/{main_uri}", params={"stream": "sub"}).status_code == 404
    url = f"{live.hub.url}{LIVE}/{cam}/index.m3u8?stream=sub&token={token}"
    frames = hls_frames(url)
    assert frames[0].shape == (90, 160)
    assert changing(frames) > 0.01


def test_sub_segments_are_live_only(live: Setup) -> None:
    """Sub segments never reach the index (so no retention, archive or analysis) and the ring stays small."""
    import sqlite3

    data = live.hub.config.parent / "hub"

    def main_rows() -> list[tuple[str]]:
        with sqlite3.connect(data / "vms.db") as db:
            return db.execute("SELECT path FROM segments WHERE device_id = ?", (CAMS[0],)).fetchall()

    rows = main_rows()
    assert len(rows) >= 5
    sizes = {(f.width, f.height) for f in (probe(data / "recordings" / r[0]) for r in rows[-20:]) if f}
    assert sizes == {(320, 180)}, sizes
    ring = list((data / "live-sub" / CAMS[0]).glob("*.ts"))
    window = 2 * 6  # the window's size and as many recently slid out (live.hls_window_segments = 6)
    assert 1 <= len(ring) <= window, len(ring)
    assert not (data / "live-sub" / CAMS[1]).exists()
    # The recordings API lists main footage only.
    now = time.time()
    rec = live.get(f"/api/v1/devices/{CAMS[0]}/recordings", role="admin",
                   params={"start": iso(now - 3600), "end": iso(now + 5), "limit": 20000})
    assert rec.status_code == 200, rec.text
    # The camera is still recording: a main segment may have been stored since the rows were read.
    assert len(rows) <= rec.json()["segments_total"] <= len(main_rows())


def test_sub_segment_upload_is_checked(live: Setup) -> None:
    """The hub verifies a sub segment like any other and keeps only what is newer than its live window."""
    dev = "32058501001320000061"
    data = ts_clip()
    sha = hashlib.sha256(data).hexdigest()

    def put(start: float, body: bytes = data, digest: str = sha) -> httpx.Response:
        return httpx.put(
            f"{live.hub.url}/api/v1/agents/segments/{dev}",
            content=body,
            params={"start": start, "duration": 1.0, "stream": "sub"},
            headers={**live.headers("agent"), "X-VMS-SHA256": digest},
            timeout=10,
        )

    t = time.time()
    r = put(t, body=data[:-188])
    assert r.status_code == 400 and "does not match" in r.json()["detail"]
    r = put(t)
    assert r.status_code == 201 and r.json()["stream"] == "sub" and r.json()["result"] == "stored", r.text
    assert put(t).status_code == 200  # the same again (an agent retrying)
    r = put(t - 5)
    assert r.status_code == 409 and "never kept for later" in r.json()["detail"]
    status = live.get(f"{LIVE}/{dev}").json()
    assert status["sub"]["live"] is True and status["live"] is False  # no main stream: nothing recorded
    r = httpx.put(
        f"{live.hub.url}/api/v1/agents/segments/{dev}", content=data, params={"start": t, "duration": 1, "stream": "x"},
        headers={**live.headers("agent"), "X-VMS-SHA256": sha}, timeout=10,
    )
    assert r.status_code == 422
