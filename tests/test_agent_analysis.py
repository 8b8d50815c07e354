"""Frame analysis on the agent: real segments through the agent's spool hook and worker pool, and the
hub taking an agent's findings from heartbeats instead of decoding the camera itself."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from edge_agent.analysis import AgentAnalysis
from edge_agent.spool import Segment, Spool
from tests.conftest import hub_config, spool_segment, wait_until
from vms.analysis.config import AnalysisConfig
from vms.auth import Principal, Role
from vms.config import HubConfig
from vms.db.models import QualityEvent
from vms.hub import Hub
from vms.kernel.protocol import CameraStats, Heartbeat

DEV = "32058501001320000001"
PREFIX = "32058501"


def enqueue(spool: Spool, data: bytes, start: float) -> Segment:
    seg: Segment = spool_segment(spool, DEV, start, 2.0, data)
    return seg


@pytest.fixture
def agent_side(tmp_path: Path) -> Iterator[tuple[Spool, AgentAnalysis]]:
    spool = Spool(tmp_path / "spool", 10**9)
    an = AgentAnalysis(AnalysisConfig(workers=1), tmp_path)
    spool.on_added = an.segment_added
    an.start()
    yield spool, an
    an.stop()


def test_the_agent_raises_and_clears_a_defect_and_knows_each_segments_motion(
    agent_side: tuple[Spool, AgentAnalysis], black_segments: list[bytes]
) -> None:
    spool, an = agent_side
    t0 = 1_700_000_000.0
    segs = []
    seen_black = False
    for k, data in enumerate(black_segments):
        segs.append(enqueue(spool, data, t0 + 2 * k))
        spool.ack(segs[-1])  # the uplink sent and deleted it at once: the staged copy must still be analysed
        ratio = asyncio.run(an.motion_for(segs[-1].sha256, wait_s=20))
        assert ratio is not None and 0.0 <= ratio <= 1.0, (k, ratio)
        seen_black |= "black_screen" in an.defects(DEV)
    assert seen_black, "the black part of the clip never raised black_screen"
    assert an.defects(DEV) == {}, "black_screen did not clear when the picture came back"
    assert an.pool.stats.analysed == len(black_segments) and an.pool.stats.failed == 0
    assert list(an.dir.iterdir()) == [], "staged copies were left behind"


def test_a_busy_agent_analysis_drops_counts_and_never_makes_the_upload_wait(
    tmp_path: Path, black_segments: list[bytes]
) -> None:
    spool = Spool(tmp_path / "spool", 10**9)
    an = AgentAnalysis(AnalysisConfig(workers=1, queue_per_worker=1), tmp_path)
    spool.on_added = an.segment_added
    an.start()
    try:
        t_add = time.perf_counter()
        segs = [enqueue(spool, data, 1_700_000_000.0 + 2 * k) for k, data in enumerate(black_segments)]
        add_s = time.perf_counter() - t_add
        wait_until(lambda: an.pool.stats.analysed + an.pool.stats.dropped == len(segs), 60, "every segment handled")
        assert an.pool.stats.dropped > 0, "a one-slot queue took 13 segments at once"
        t = time.perf_counter()
        ratios = [asyncio.run(an.motion_for(s.sha256, wait_s=5)) for s in segs]
        assert time.perf_counter() - t < 1.0, "the upload waited for segments the analysis had dropped"
        assert sum(r is None for r in ratios) == an.pool.stats.dropped
        assert add_s < 2.0, f"adding 13 segments took {add_s:.2f} s: the spool hook blocked"
        wait_until(lambda: list(an.dir.iterdir()) == [], 10, "staged copies removed")
    finally:
        an.stop()


def test_a_segment_the_analysis_never_saw_is_sent_without_waiting(agent_side: tuple[Spool, AgentAnalysis]) -> None:
    _, an = agent_side
    t = time.perf_counter()
    assert asyncio.run(an.motion_for("0" * 64, wait_s=5)) is None
    assert time.perf_counter() - t < 0.5


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    h = Hub(HubConfig.model_validate(hub_config(tmp_path / "data", analysis={"workers": 1})))
    h.registry.add_device(DEV)
    h.start()
    yield h
    h.stop()


def test_the_hub_takes_an_agents_findings_from_heartbeats(hub: Hub) -> None:
    who = Principal("t", "agent-1", Role.agent, (PREFIX,))

    def beat(defects: dict[str, float] | None) -> None:
        cam = CameraStats(device_id=DEV, connected=True, last_packet_age_s=0.1, fps=25, defects=defects)
        hub.heartbeats.heartbeat(who, Heartbeat(sent_at=time.time(), cameras=[cam]))

    beat({"black_screen": 3.0, "a_check_from_a_newer_agent": 1.0})
    wait_until(lambda: "black_screen" in hub.quality.now(DEV), 5, "black_screen recorded")
    assert set(hub.quality.now(DEV)) == {"black_screen"}, "an unknown check name must be ignored"
    assert DEV in hub.quality.agent_analysed
    since = hub.quality.now(DEV)["black_screen"].since
    assert abs(since - (time.time() - 3.0)) < 1.0, "the raise must be dated by the agent's age, not receipt"
    for _ in range(3):
        beat({"black_screen": 4.0})  # repeated reports change nothing
    time.sleep(0.3)
    with hub.sessions() as s:
        assert s.scalar(select(func.count()).select_from(QualityEvent).where(QualityEvent.device_id == DEV)) == 1
    beat({})
    wait_until(lambda: hub.quality.now(DEV) == {}, 5, "black_screen cleared")
    beat(None)  # the agent stopped analysing: the hub's own analysis takes the camera back
    assert DEV not in hub.quality.agent_analysed


def test_an_agent_restart_keeps_its_raised_defects(tmp_path: Path, black_segments: list[bytes]) -> None:
    """Black screen raised, agent restarted: the defect is reported again at once and the new
    analysers start from it (a further black segment keeps it, nothing clears and raises it
    again), and the picture coming back clears it."""
    spool = Spool(tmp_path / "spool", 10**9)
    t0 = 1_700_000_000.0

    def feed(an: AgentAnalysis, k: int) -> None:
        seg = enqueue(spool, black_segments[k], t0 + 2 * k)
        spool.ack(seg)
        assert asyncio.run(an.motion_for(seg.sha256, wait_s=20)) is not None, k

    an = AgentAnalysis(AnalysisConfig(workers=1), tmp_path)
    spool.on_added = an.segment_added
    an.start()
    try:
        for k in range(7):  # clean until 8 s, then black
            feed(an, k)
        assert "black_screen" in an.defects(DEV)
    finally:
        an.stop()
    again = AgentAnalysis(AnalysisConfig(workers=1), tmp_path)
    assert "black_screen" in again.defects(DEV)  # the first heartbeat already carries it
    spool.on_added = again.segment_added
    again.start()
    try:
        feed(again, 7)  # still black, seen by a new analyser
        assert "black_screen" in again.defects(DEV)
        for k in range(9, 13):  # picture back
            feed(again, k)
        assert again.defects(DEV) == {}
    finally:
        again.stop()
    assert AgentAnalysis(AnalysisConfig(workers=1), tmp_path).defects(DEV) == {}  # cleared is kept too
