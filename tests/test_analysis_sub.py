"""End to end on loopback: a camera with a live sub stream is analysed from it, and its main stream is
not decoded for analysis. The simulated camera serves both mounts; a black screen put on it (both
streams, as a real camera's sensor fault would) still raises ``black_screen`` and clears; the main
segments keep a motion ratio, taken from the sub segments that cover them. Run twice: analysed by
the hub, and by the agent (its ``analysis`` config), which then reports its findings in heartbeats.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from camsim.clips import ClipParams
from camsim.net import free_ports
from camsim.sim import SYSTEM_PYTHON, Simulator, device_ids
from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, CameraConfig
from tests.conftest import hub_config, wait_until
from tests.test_live_sub import AgentThread
from vms.analysis.config import AnalysisConfig
from vms.analysis.substream import normal_key
from vms.archive.store import Result
from vms.config import HubConfig
from vms.db.models import Segment
from vms.hub import Hub

pytestmark = pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="system python3 with gi missing")

PREFIX = "32058501001320"
DEV = "32058501001320000001"
MAIN = ClipParams(width=640, height=360, fps=25, gop_s=2.0, bitrate_kbps=1500, bframes=2, duration_s=10.0)
SUB = ClipParams(width=320, height=180, fps=25, gop_s=2.0, bitrate_kbps=300, bframes=0, duration_s=10.0)


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    rtsp, control = free_ports(2)
    with Simulator(device_ids(1), tmp_path / "sim", rtsp_port=rtsp, control_port=control, onvif_base_port=None,
                   params=MAIN, sub_params=SUB, variants=("normal", "black"), mix_profiles=False) as s:
        yield s


@contextmanager
def hub_in_process(tmp_path: Path, sub_stale_s: float) -> Iterator[Hub]:
    """A hub in this process with one analysis worker, fed through the ingest as the upload routes do."""
    cfg = HubConfig.model_validate(hub_config(tmp_path / "data", analysis={"workers": 1, "sub_stale_s": sub_stale_s}))
    hub = Hub(cfg)
    hub.registry.add_device(DEV)
    hub.start()
    try:
        yield hub
    finally:
        hub.stop()


def motions(hub: Hub, ids: list[int]) -> list[float | None]:
    """The motion ratio kept with each of these main segments (None: none yet)."""
    with hub.sessions() as s:
        return list(s.scalars(select(Segment.motion_ratio).where(Segment.id.in_(ids)).order_by(Segment.id)))


def metrics(c: httpx.Client) -> dict[str, float]:
    out = {}
    for line in c.get("/metrics").text.splitlines():
        if line.startswith("vms_analysis_") and " " in line and "{" not in line:
            name, value = line.rsplit(" ", 1)
            out[name.removesuffix("_total")] = float(value)
    return out


@pytest.mark.parametrize("where", ["hub", "agent"])
def test_a_camera_with_a_sub_stream_is_analysed_from_it_and_a_black_screen_still_alerts(
    sim: Simulator, make_hub_process: Any, tmp_path: Path, where: str
) -> None:
    hp = make_hub_process(analysis={"workers": 1}, alerts={"resolve_hold_s": 1})
    token = hp.token("agent", PREFIX, name="agent-1")
    duty = {"Authorization": f"Bearer {hp.token('duty')}"}
    police = {"Authorization": f"Bearer {hp.token('police')}"}
    hp.start()
    dev = sim.cameras[0]
    cfg = AgentConfig(hub_url=hp.url, token=token, data_dir=tmp_path / "agent", segment_seconds=1,
                      heartbeat_interval_s=1,
                      cameras=[CameraConfig(url=sim.rtsp_url(dev), sub_url=sim.rtsp_url(dev, sub=True), device_id=dev)],
                      analysis=AnalysisConfig(enabled=where == "agent", workers=1))
    agent = AgentThread(Agent(cfg))
    agent.start()
    try:
        with httpx.Client(base_url=hp.url, headers=duty, timeout=5) as c:

            def poll(cond: Any, timeout: float, what: str) -> Any:
                return wait_until(cond, timeout, what,
                                  context=lambda: f"quality: {c.get(f'/api/v1/devices/{dev}/quality').text}\n"
                                                  f"metrics: {metrics(c)}")

            def degraded(state: str) -> list[dict[str, Any]]:
                r = c.get("/api/v1/alerts", params={"state": state, "kind": "device_degraded"})
                return [a for a in r.json()["alerts"] if a["device_id"] == dev]

            def live() -> bool:
                r = c.get(f"/api/v1/live/{dev}")
                return r.status_code == 200 and bool(r.json()["live"] and r.json()["sub"]["live"])

            poll(lambda: c.get(f"/api/v1/devices/{dev}").json().get("state") == "uploading", 40, "uploading")
            poll(live, 30, "main and sub stream live")
            time.sleep(8)  # a few keyframes: the sub stream's normal view is learned
            assert degraded("active") == []
            before = metrics(c)
            t0 = time.monotonic()
            sim.set_fault(dev, "black")
            alert = poll(lambda: degraded("active"), 15, "an alert for the black screen")[0]
            print(f"black_screen alert after {time.monotonic() - t0:.1f} s, analysed by the {where}")
            assert "black_screen" in alert["title"], alert["title"]
            sim.clear(dev)
            poll(lambda: not degraded("active"), 25, "the black-screen alert resolved")
            after = metrics(c)
            if where == "hub":
                main_before = before["vms_analysis_segments_submitted"] - before["vms_analysis_sub_segments"]
                main_after = after["vms_analysis_segments_submitted"] - after["vms_analysis_sub_segments"]
                assert after["vms_analysis_sub_segments"] > before["vms_analysis_sub_segments"] > 0
                assert after["vms_analysis_main_skipped"] >= before["vms_analysis_main_skipped"] + 5, (before, after)
                assert main_after == main_before, "the hub decoded main segments while the sub stream was live"
                assert alert["detail"].get("snapshot_url"), alert  # a snapshot of the sub stream's keyframe
            else:
                an = agent.agent.analysis
                assert an is not None and an.main_skipped >= 5, "the agent decoded the main stream"
                assert after["vms_analysis_segments_submitted"] == 0, "the hub decoded a camera its agent analyses"
            now = time.time()
            r = c.get(f"/api/v1/devices/{dev}/recordings", headers=police,
                      params={"start": f"{now - 600:.0f}", "end": f"{now + 60:.0f}"})
            marks = [s["motion"] for s in r.json()["segments"]]
            assert sum(m is not None for m in marks) >= 5, f"main segments got no motion from the sub stream: {marks}"
    finally:
        agent.stop()


def test_the_hub_reads_the_sub_stream_while_it_is_live_and_the_main_stream_again_when_it_stops(
    tmp_path: Path, black_segments: list[bytes]
) -> None:
    """In process, through the ingest as the upload routes call it: sub segments are analysed (their
    staged links removed), main segments are not decoded but get their motion from the sub segments
    covering them, and once the sub stream has been silent for ``sub_stale_s`` the main one is read."""
    with hub_in_process(tmp_path, sub_stale_s=2) as hub:
        q, pool = hub.quality, hub.quality.pool
        assert pool is not None
        base = time.time() - 40
        ids = []
        for k in range(6):
            data = black_segments[k]
            sha = hashlib.sha256(data).hexdigest()
            assert hub.ingest.store_sub(DEV, base + 2 * k, 2.0, data, sha, None).result is Result.STORED
            out = hub.ingest.store("agent-1", DEV, base + 2 * k, 2.0, data, sha, None)
            assert out.result is Result.STORED and out.segment_id is not None
            ids.append(out.segment_id)
        assert q.sub_submitted == 6 and q.main_skipped == 6 and pool.stats.submitted == 6
        wait_until(lambda: pool.stats.analysed == 6, 60, "the sub segments analysed")
        assert list((tmp_path / "data" / "analysis-sub").iterdir()) == [], "staged sub segments left behind"
        wait_until(lambda: all(m is not None for m in motions(hub, ids)), 20,
                   "main segments' motion from the sub stream")
        assert q.normals.keys() == {normal_key(DEV, "sub")}  # the sub stream learns a normal of its own
        time.sleep(2.5)  # the sub stream went silent
        for k in range(9, 13):  # the picture is back
            data = black_segments[k]
            out = hub.ingest.store("agent-1", DEV, base + 2 * k, 2.0, data, hashlib.sha256(data).hexdigest(), None)
            assert out.result is Result.STORED
        assert q.main_skipped == 6 and pool.stats.submitted == 10, "the main stream is not analysed again"
        wait_until(lambda: pool.stats.analysed == 10, 60, "the main segments analysed")
        wait_until(lambda: normal_key(DEV, "main") in q.normals, 10, "the main stream's normal")


def test_backlog_older_than_the_live_sub_stream_gets_its_motion_and_judges_nothing(
    tmp_path: Path, black_segments: list[bytes]
) -> None:
    """Main segments an agent uploads after an outage, from before the sub stream's live stretch, have
    no sub segment to take motion from (before: no motion, so a search by motion missed them). They
    are decoded for their motion alone. They show a black screen here: had they been judged, a
    ``black_screen`` alert on hour-old footage would be raised between the live stream's verdicts."""
    with hub_in_process(tmp_path, sub_stale_s=30) as hub:
        q, pool = hub.quality, hub.quality.pool
        assert pool is not None
        base = time.time() - 40
        for k in range(4):  # live: a normal street view on both streams
            data = black_segments[k]
            sha = hashlib.sha256(data).hexdigest()
            assert hub.ingest.store_sub(DEV, base + 2 * k, 2.0, data, sha, None).result is Result.STORED
            assert hub.ingest.store("agent-1", DEV, base + 2 * k, 2.0, data, sha, None).result is Result.STORED
        wait_until(lambda: pool.stats.analysed == 4, 60, "the live sub segments analysed")
        ids = []
        for k in range(4, 9):  # backlog from an hour before: the black part of the clip
            data = black_segments[k]
            out = hub.ingest.store("agent-1", DEV, base - 3600 + 2 * k, 2.0, data, hashlib.sha256(data).hexdigest(),
                                   None)
            assert out.result is Result.STORED and out.segment_id is not None
            ids.append(out.segment_id)
        assert q.main_skipped == 9 and q.backlog_submitted == 5 and pool.stats.submitted == 9
        wait_until(lambda: pool.stats.analysed == 9, 60, "the backlog decoded")
        wait_until(lambda: all(m is not None for m in motions(hub, ids)), 20, "the backlog's motion",
                   lambda: str(motions(hub, ids)))
        assert q.current.get(DEV, {}) == {}, q.current  # nothing raised from old footage
        assert q.raised_total.get("black_screen", 0) == 0
        assert q.normals.keys() == {normal_key(DEV, "sub")}, "the backlog taught the main stream's normal"
