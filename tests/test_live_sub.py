"""Sub streams (子码流) are live only: the agent never spools them for later, the hub never records them.

The outage test runs the real pieces on loopback: the camera simulator's GStreamer RTSP server
(main and sub mount), `vms serve` as a child process, and the edge agent in this process (so its
spool counters can be read) relaying both streams. The hub is stopped for a while and started
again: the main stream's backlog arrives, the sub stream's stale segments never do.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from camsim.clips import ClipParams
from camsim.net import free_ports
from camsim.onvif import OnvifDevice, _profile_xml
from camsim.sim import SYSTEM_PYTHON, Simulator, device_ids
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, CameraConfig
from edge_agent.spool import Segment, Spool
from tests.conftest import HubProcess, free_port, hub_config, spool_segment, write_config
from vms.kernel.timeutil import iso

MAIN = ClipParams(width=320, height=180, fps=25, gop_s=1.0, bitrate_kbps=300, bframes=2, duration_s=4.0)
#: Asked with B-frames on purpose: the simulator serves every sub stream as Baseline regardless.
SUB = ClipParams(width=160, height=90, fps=25, gop_s=1.0, bitrate_kbps=100, bframes=2, duration_s=4.0)
CAM = device_ids(1)[0]
LIVE = "/api/v1/live"


def put_segment(spool: Spool, start: float, data: bytes) -> Segment:
    seg: Segment = spool_segment(spool, CAM, start, 1.0, data)
    return seg


def test_live_only_spool_sends_fresh_segments_and_drops_stale_ones(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "live", 10_000_000, live_window_s=0.5, live_only=True)
    segs = [put_segment(spool, 1000.0 + i, bytes([i]) * 1000) for i in range(3)]
    assert spool.next_batch(2) == segs[:2]  # oldest fresh first, so the hub's window gets them in order
    assert spool.next_batch(4, exclude={segs[0].name}) == segs[1:]
    spool.ack(segs[0])
    time.sleep(0.6)
    fresh = put_segment(spool, 1003.0, b"x" * 1000)
    assert spool.next_batch(4) == [fresh]  # the two unsent ones went stale: dropped, not backlog
    assert spool.live_dropped == 2 and not segs[1].path.exists() and not segs[2].path.exists()
    spool.drop(fresh)  # the hub refused it
    assert spool.live_dropped == 3 and not fresh.path.exists() and spool.stats().queued_segments == 0
    # Whatever a previous run left behind is stale by definition.
    left = put_segment(spool, 1004.0, b"y" * 1000)
    again = Spool(tmp_path / "live", 10_000_000, live_window_s=60, live_only=True)
    assert again.next_batch(4) == [] and again.live_dropped == 1 and not left.path.exists()
    # A store-and-forward spool keeps the same situation as backlog.
    backlog = Spool(tmp_path / "main", 10_000_000, live_window_s=0.01)
    old = put_segment(backlog, 1000.0, b"z" * 1000)
    time.sleep(0.05)
    assert backlog.next_batch(4) == [old]


def test_onvif_sub_profile_is_baseline() -> None:
    dev = OnvifDevice(device_id=CAM, port=1, rtsp_main="rtsp://x/main", rtsp_sub="rtsp://x/sub", profile="high")
    assert "<tt:H264Profile>High</tt:H264Profile>" in _profile_xml(dev, sub=False)
    assert "<tt:H264Profile>Baseline</tt:H264Profile>" in _profile_xml(dev, sub=True)


class AgentThread:
    """The real agent on its own event loop in a thread, stoppable from the test."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.loop = asyncio.new_event_loop()
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def main() -> None:
            self.stop_event = asyncio.Event()
            await self.agent.run(self.stop_event)

        self.loop.run_until_complete(main())

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        if self.stop_event is not None:
            self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)


def wait(pred: Callable[[], object], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{what}: not within {timeout} s")


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[HubProcess, AgentThread, Simulator]]:
    if not Path(SYSTEM_PYTHON).exists():
        pytest.skip("system python3 with gi missing")
    rtsp_port, control_port = free_ports(2)
    sim = Simulator([CAM], tmp_path / "sim", rtsp_port=rtsp_port, control_port=control_port, onvif_base_port=None,
                    params=MAIN, sub_params=SUB, variants=("normal",), mix_profiles=False)
    hub = HubProcess(write_config(tmp_path / "hub.yaml", hub_config(tmp_path / "hub")), free_port())
    hub.token("duty")
    hub.token("admin")
    token = hub.token("agent", "32058501", name="agent")
    cfg = AgentConfig(hub_url=hub.url, token=token, data_dir=tmp_path / "agent", segment_seconds=1,
                      heartbeat_interval_s=1,
                      cameras=[CameraConfig(url=sim.rtsp_url(CAM), sub_url=sim.rtsp_url(CAM, sub=True), device_id=CAM)])
    with sim:
        hub.start()
        agent = AgentThread(Agent(cfg))
        agent.start()
        try:
            yield hub, agent, sim
        finally:
            agent.stop()
            hub.stop()


def test_hub_outage_drops_sub_segments_and_keeps_the_main_backlog(
    rig: tuple[HubProcess, AgentThread, Simulator],
) -> None:
    hub, at, _sim = rig
    agent = at.agent
    duty = {"Authorization": f"Bearer {hub.tokens['duty']}"}

    def status() -> dict[str, Any]:
        r = httpx.get(f"{hub.url}{LIVE}/{CAM}", headers=duty, timeout=5)
        r.raise_for_status()
        out: dict[str, Any] = r.json()
        return out

    wait(lambda: status()["live"] and status()["sub"]["live"], 60, "main and sub live")
    st = status()
    assert st["bframes"] is True and st["sub"] == {**st["sub"], "bframes": False, "width": 160, "height": 90}
    # One device, counted once: the sub stream adds no camera to the heartbeat.
    assert [c.device_id for c in agent.camera_stats()] == [CAM]
    assert len(agent.sub_ingests) == 1
    sent_before = agent.uplink.stats.live_uploaded
    assert sent_before > 0

    ring_dir = hub.config.parent / "hub" / "live-sub" / CAM
    ring_before = {p.name for p in ring_dir.glob("*.ts")}
    assert ring_before
    hub.stop()
    down = time.time()
    most_live = 0
    while time.time() - down < 8:
        most_live = max(most_live, len(list(agent.live_spool.root.glob("*.ts"))))
        time.sleep(0.2)
    backlog = agent.spool.stats().queued_segments
    dropped = agent.live_spool.live_dropped
    hub.start()
    up = time.time()
    # Sub segments waited at most their live window (3 s of 1 s segments), then went; main ones queued.
    assert most_live <= 5, most_live
    assert dropped >= 4, dropped
    assert backlog >= 6, backlog

    wait(lambda: status()["sub"]["live"] and agent.spool.stats().queued_segments <= 2, 60, "backlog sent, sub live")
    assert agent.uplink.stats.live_uploaded > sent_before
    # The drops are not only counted on the agent: its heartbeats carry them to the hub's metrics.
    wait(lambda: live_dropped_metric(hub, duty) >= dropped, 10, "the agent's sub-stream drops in the hub's metrics")
    # The main stream's outage footage reached the archive ...
    admin = {"Authorization": f"Bearer {hub.tokens['admin']}"}
    r = httpx.get(f"{hub.url}/api/v1/devices/{CAM}/recordings", headers=admin,
                  params={"start": iso(down + 1), "end": iso(up - 1), "limit": 1000}, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["segments_total"] >= 5, r.json()
    # ... while the sub stream's live window holds nothing from the outage: stale segments never came.
    text = httpx.get(f"{hub.url}{LIVE}/{CAM}/index.m3u8", params={"stream": "sub"}, headers=duty, timeout=5).text
    starts = [_ts(ln.split(":", 1)[1]) for ln in text.splitlines() if ln.startswith("#EXT-X-PROGRAM-DATE-TIME")]
    assert starts and min(starts) > up - 5, (up, starts)
    # The hub's ring was emptied at its start and holds only the newest few files.
    ring = {p.name for p in ring_dir.glob("*.ts")}
    assert 1 <= len(ring) <= 12 and not ring & ring_before


def live_dropped_metric(hub: HubProcess, headers: dict[str, str]) -> float:
    text = httpx.get(f"{hub.url}/metrics", headers=headers, timeout=5).text
    return next((s.value for f in text_string_to_metric_families(text) for s in f.samples
                 if s.name == "vms_agent_live_dropped_segments_total" and s.labels == {"agent": "agent"}), -1.0)


def _ts(pdt: str) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(pdt.replace("Z", "+00:00")).timestamp()


def test_sub_url_is_checked_and_paired_on_the_command_line(tmp_path: Path) -> None:
    from pydantic import ValidationError
    from typer.testing import CliRunner

    from edge_agent.cli import app

    assert CameraConfig(url="rtsp://cam/main", sub_url="rtsp://cam/sub").sub_url == "rtsp://cam/sub"
    with pytest.raises(ValidationError, match="must be an rtsp:// URL"):
        CameraConfig(url="rtsp://cam/main", sub_url="http://cam/sub")
    with pytest.raises(ValidationError, match="is the main stream's URL"):
        CameraConfig(url="rtsp://u:p@cam/main", sub_url="rtsp://cam/main")
    r = CliRunner().invoke(app, ["run", "--hub", "http://127.0.0.1:9", "--token", "t", "--data-dir", str(tmp_path),
                                 "--camera", "rtsp://cam/a", "--sub", "rtsp://cam/a/sub", "--sub", "rtsp://cam/b/sub"])
    assert r.exit_code == 2 and "2 --sub for 1 --camera" in r.output, r.output
