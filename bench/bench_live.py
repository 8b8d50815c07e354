"""Glass-to-glass latency of the hub's live view: WebRTC (H.264 passed through) and HLS.

    .venv/bin/python bench/bench_live.py [--segment-seconds 4,1] [--seconds 25] [--size 640x360]
        [--stream sub --sub-size 320x180]

``--stream sub`` measures the camera's sub stream instead: the agent relays it live-only with
``live_segment_seconds`` set to each ``--segment-seconds`` value, and every client (the reference
included) watches the sub stream.

One simulated camera (camsim, a looped 30 s clip with a burned-in clock and frame counter) is
relayed by a real edge agent to a real hub on loopback. Three clients watch at once:

- the reference: PyAV reading the camera's RTSP stream directly (what the camera puts on the wire);
- WebRTC: an aiortc peer negotiating with the hub, frames timed as they are decoded;
- HLS: PyAV reading the hub's playlist, starting 3 segments from the end (FFmpeg's and most
  players' default) and 1 segment from the end (a player tuned for low latency). HLS clients
  download ahead, so their frames are timed as a player shows them: at the pace of their
  timestamps from the first frame, re-based when a frame is decoded later than its turn (a stall).

Each decoded picture is identified by a hash of its luma plane; since nothing is transcoded, the
hub's paths decode to exactly the pictures the reference decodes. Latency of a frame = time it
is shown by a client - time the reference decoded the same picture (the latest earlier showing of
that picture, the clip loops every 30 s). Capture and encoding inside a real camera add their own
constant delay (typically 100-300 ms) that a pre-encoded clip does not have.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import hashlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aioice.ice
import av
import httpx
import yaml
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from camsim.clips import ClipParams  # noqa: E402
from camsim.net import free_ports  # noqa: E402
from camsim.sim import Simulator, device_ids  # noqa: E402
from tests.conftest import HubProcess, free_port, hub_config, write_config  # noqa: E402

CAM = device_ids(1)[0]


class Reference:
    """Decode the camera directly; remember when each picture was seen."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.seen: dict[bytes, list[float]] = defaultdict(list)
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with av.open(self.url, options={"rtsp_transport": "tcp", "timeout": "5000000"}) as c:
            for f in c.decode(video=0):
                t = time.time()
                key = frame_key(f)
                with self.lock:
                    self.seen[key].append(t)
                if self.stop.is_set():
                    return

    def shown_at(self, key: bytes, before: float) -> float | None:
        with self.lock:
            times = [t for t in self.seen.get(key, ()) if t <= before]
        return max(times) if times else None


def frame_key(f: av.VideoFrame) -> bytes:
    return hashlib.blake2b(f.to_ndarray(format="gray").tobytes(), digest_size=12).digest()


class Player:
    """Times frames as a player shows them: at their timestamps' pace, re-based after a stall."""

    def __init__(self) -> None:
        self.base: float | None = None
        self.last_pts: float | None = None

    def show(self, decoded_at: float, pts_s: float | None) -> float:
        if pts_s is None or self.base is None or self.last_pts is None or not 0 <= pts_s - self.last_pts < 2:
            self.base = decoded_at - (pts_s or 0.0)
        elif self.base + pts_s < decoded_at:
            self.base = decoded_at - pts_s  # stall: the frame came later than its turn
        self.last_pts = pts_s
        return self.base + (pts_s or 0.0)


class Result:
    def __init__(self, name: str) -> None:
        self.name = name
        self.latency: list[float] = []
        self.unmatched = 0
        self.first_frame_s: float | None = None

    def add(self, ref: Reference, key: bytes, shown: float) -> None:
        t0 = ref.shown_at(key, shown)
        if t0 is None:
            self.unmatched += 1
        else:
            self.latency.append(shown - t0)

    def line(self, seg: float) -> str:
        if not self.latency:
            return f"{self.name:<24} seg {seg:>3g} s  no matched frames ({self.unmatched} unmatched)"
        q = statistics.quantiles(self.latency, n=10)
        return (
            f"{self.name:<24} seg {seg:>3g} s  frames {len(self.latency):>4} (+{self.unmatched:>3} unmatched)  "
            f"latency median {statistics.median(self.latency):5.2f} s  p10 {q[0]:5.2f}  p90 {q[-1]:5.2f}  "
            f"first frame after {self.first_frame_s or float('nan'):5.2f} s"
        )


def hls_client(url: str, start_index: int, ref: Reference, res: Result, until: float) -> None:
    t_req = time.time()
    player = Player()
    try:
        with av.open(url, options={"live_start_index": str(start_index)}, timeout=30) as c:
            for f in c.decode(video=0):
                now = time.time()
                if res.first_frame_s is None:
                    res.first_frame_s = now - t_req
                pts = float(f.pts * f.time_base) if f.pts is not None and f.time_base else None
                res.add(ref, frame_key(f), player.show(now, pts))
                if now > until:
                    return
    except av.FFmpegError as exc:
        print(f"  {res.name}: {exc}", file=sys.stderr)


async def webrtc_client(url: str, token: str, ref: Reference, res: Result, until: float) -> None:
    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    pc.addTransceiver("video", direction="recvonly")
    tracks: asyncio.Queue[Any] = asyncio.Queue()
    pc.on("track", tracks.put_nowait)
    t_req = time.time()
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with httpx.AsyncClient(timeout=30) as client:
            r = await client.post(
                url,
                headers={"Authorization": f"Bearer {token}"},
                json={"sdp": pc.localDescription.sdp, "type": "offer"},
            )
        r.raise_for_status()
        await pc.setRemoteDescription(RTCSessionDescription(**r.json()))
        track = await asyncio.wait_for(tracks.get(), 15)
        while time.time() < until:
            f = await asyncio.wait_for(track.recv(), 15)
            now = time.time()
            if res.first_frame_s is None:
                res.first_frame_s = now - t_req
            key = await asyncio.to_thread(frame_key, f)
            res.add(ref, key, now)
    finally:
        await pc.close()


def wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise SystemExit(f"timed out waiting for {what}")


def run_one(
    d: Path, hub: HubProcess, sim: Simulator, seg: float, seconds: float, stream: str, batch: float | None = None
) -> list[Result]:
    agent_token = hub.tokens["agent"]
    cfg = d / f"agent-{stream}-{seg:g}-{batch}.yaml"
    sub = stream == "sub"
    camera = {"url": sim.rtsp_url(CAM), "device_id": CAM, **({"sub_url": sim.rtsp_url(CAM, sub=True)} if sub else {})}
    cfg.write_text(
        yaml.safe_dump(
            {
                "hub_url": hub.url,
                "token": agent_token,
                "data_dir": str(d / f"agent-{stream}-{seg:g}-{batch}"),
                "segment_seconds": 2 if sub else seg,
                **({"live_segment_seconds": seg} if sub else {}),
                **({} if batch is None else {"read_batch_s": batch, "live_read_batch_s": batch}),
                "cameras": [camera],
            }
        )
    )
    log = (d / f"agent-{stream}-{seg:g}-{batch}.log").open("wb")
    agent = subprocess.Popen(
        [sys.executable, "-c", "from edge_agent.cli import main; main()", "run", "--config", str(cfg)],
        stdout=log,
        stderr=log,
    )
    token = hub.tokens["duty"]
    ref = Reference(sim.rtsp_url(CAM, sub=sub))
    query = "stream=sub&" if sub else ""
    try:
        ref.thread.start()
        # Wait for a fresh window of this run's segments (3 of them, or the 1 s segments' first 4 s).
        t_start = time.time()

        def fresh() -> bool:
            r = httpx.get(f"{hub.url}/api/v1/live/{CAM}/index.m3u8?{query}token={token}")
            if r.status_code != 200:
                return False
            pdt = [ln.split(":", 1)[1] for ln in r.text.splitlines() if ln.startswith("#EXT-X-PROGRAM-DATE-TIME")]
            starts = [dt.datetime.fromisoformat(p.replace("Z", "+00:00")).timestamp() for p in pdt]
            return sum(s >= t_start for s in starts) >= max(3, round(4 / seg))

        wait(fresh, 90, "live segments")
        until = time.time() + seconds
        results = [Result("WebRTC (aiortc)"), Result("HLS, 3 segments back"), Result("HLS, 1 segment back")]
        playlist = f"{hub.url}/api/v1/live/{CAM}/index.m3u8?{query}token={token}"
        threads = [
            threading.Thread(target=hls_client, args=(playlist, i, ref, r, until), daemon=True)
            for i, r in ((-3, results[1]), (-1, results[2]))
        ]
        for th in threads:
            th.start()
        asyncio.run(webrtc_client(f"{hub.url}/api/v1/live/{CAM}/webrtc?{query}", token, ref, results[0], until))
        for th in threads:
            th.join(seconds + 60)
        return results
    finally:
        ref.stop.set()
        agent.terminate()
        agent.wait(20)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segment-seconds", default="4,1", help="agent segment lengths to compare")
    ap.add_argument("--seconds", type=float, default=25, help="measuring time per segment length")
    ap.add_argument("--size", default="640x360")
    ap.add_argument("--stream", choices=("main", "sub"), default="main", help="which of the camera's streams to watch")
    ap.add_argument("--sub-size", default="320x180")
    ap.add_argument("--read-batch-s", default="", help="agent read batching to compare, e.g. 0,0.2 "
                    "(read_batch_s and live_read_batch_s; default: the agent's defaults)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    a = ap.parse_args()
    w, h = (int(x) for x in a.size.split("x"))
    params = ClipParams(width=w, height=h, fps=25, gop_s=1.0, bitrate_kbps=1500, bframes=0, duration_s=30.0)
    sw, sh = (int(x) for x in a.sub_size.split("x"))
    sub_params = ClipParams(width=sw, height=sh, fps=25, gop_s=1.0, bitrate_kbps=256, duration_s=30.0)
    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"]  # stay on loopback
    d = Path(tempfile.mkdtemp(prefix="bench_live_"))
    rtsp_port, control_port = free_ports(2)
    sim = Simulator(
        [CAM],
        d / "sim",
        rtsp_port=rtsp_port,
        control_port=control_port,
        onvif_base_port=None,
        params=params,
        sub_params=sub_params if a.stream == "sub" else None,
        variants=("normal",),
        mix_profiles=False,
    )
    hub = HubProcess(
        write_config(d / "hub.yaml", hub_config(d / "hub", live={"ice_addresses": ["127.0.0.1"]})), free_port()
    )
    hub.token("duty")
    hub.token("agent", "32058501", name="agent")
    what = f"sub stream {sw}x{sh} 256 kbit/s" if a.stream == "sub" else f"{w}x{h} 1.5 Mbps"
    print(f"camera {what}, 25 fps, GOP 1 s; measuring {a.seconds:g} s per segment length", flush=True)
    with sim:
        hub.start()
        try:
            batches = [float(x) for x in a.read_batch_s.split(",")] if a.read_batch_s else [None]
            for seg in (float(x) for x in a.segment_seconds.split(",")):
                for batch in batches:
                    if batch is not None:
                        print(f"read_batch_s {batch:g}:", flush=True)
                    for r in run_one(d, hub, sim, seg, a.seconds, a.stream, batch):
                        print(r.line(seg), flush=True)
        finally:
            hub.stop()
    if a.keep:
        print(f"data kept in {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
