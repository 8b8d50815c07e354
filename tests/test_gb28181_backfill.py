"""Footage lost on the network comes back from the device's own recording.

A simulated GB/T 28181 camera keeps recording while its video cannot reach the hub (``video_stop``);
when its live video is back, the hub asks what the camera recorded of the gap (RecordInfo), fetches
it (INVITE ``s=Download``) and stores it in the gap with its original times, read back by FFmpeg. A
camera without a memory card has nothing to give, and the gap stays.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest
from sqlalchemy import select

from camsim.clips import ClipParams, ensure_clip
from camsim.gb28181 import GbChannel, GbDevice, GbDeviceSpec, GbServer
from tests.conftest import free_port, hub_config, wait_until
from vms.config import HubConfig
from vms.db.models import Segment
from vms.hub import Hub

SERVER_ID = "32058500002000000001"
PASSWORD = "gb-secret"
IPC = "32058501001320000111"
CHANNEL = "32058501001310000111"
CLIP = ClipParams(width=320, height=180, fps=25, gop_s=1.0, bitrate_kbps=300, bframes=0, duration_s=4.0)


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return ensure_clip(CLIP, "normal", tmp_path_factory.mktemp("gbclip"))


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    section = {"enabled": True, "server_id": SERVER_ID, "port": free_port(), "password": PASSWORD,
               "auto_accept": True, "keepalive_interval_s": 60, "catalog_timeout_s": 5, "backfill_min_s": 5}
    h = Hub(HubConfig.model_validate(hub_config(tmp_path / "data", gb28181=section)))
    h.start()
    yield h
    h.stop()


def spans(hub: Hub) -> list[tuple[float, float]]:
    with hub.sessions() as s:
        return sorted((r.start_at, r.end_at) for r in s.scalars(select(Segment).where(Segment.device_id == CHANNEL)))


def covered(hub: Hub, start: float, end: float) -> float:
    """Seconds of ``[start, end)`` that stored segments of the channel cover."""
    total, last = 0.0, start
    for a, b in spans(hub):
        a, b = max(a, last), min(b, end)
        if b > a:
            total += b - a
            last = b
    return total


@pytest.mark.parametrize("records", [True, False])
def test_a_gap_in_live_video_is_fetched_from_the_cameras_recording(hub: Hub, clip: Path, records: bool) -> None:
    server = GbServer("127.0.0.1", hub.cfg.gb28181.port, SERVER_ID)
    spec = GbDeviceSpec(IPC, server, PASSWORD, (GbChannel(CHANNEL, "东门"),), keepalive_s=5.0, clip=CLIP,
                        records=records)
    assert hub.gb28181 is not None and hub.gb28181.player is not None
    player = hub.gb28181.player
    with GbDevice(spec, clip) as cam:
        wait_until(lambda: len(spans(hub)) >= 2, 20, "live segments stored", lambda: str(player.view()))
        cam.video_stop()
        stopped = time.time()
        wait_until(lambda: player.view()[CHANNEL]["state"] != "playing", 10, "the stream lost")
        time.sleep(8)  # the camera records on; nothing reaches the hub
        cam.clear()
        back = time.time()
        wait_until(lambda: player.view()[CHANNEL]["state"] == "playing" and player.view()[CHANNEL]["frames"] > 0,
                   20, "live video back", lambda: str(player.view()))
        gap = (stopped + 1.0, back - 1.0)  # inside the gap, whatever the exact edges
        if not records:
            wait_until(lambda: hub.gb28181 is not None and hub.gb28181.counters["gaps"] >= 1, 20, "the gap seen")
            time.sleep(2)
            assert covered(hub, *gap) < 1.0 and player.counters["downloads"] == 0
            return
        wait_until(lambda: covered(hub, *gap) >= 0.9 * (gap[1] - gap[0]), 30, "the gap filled from the recording",
                   lambda: f"{spans(hub)} gap {gap} {player.counters} {cam.counters} {cam.record_asks}")
        assert player.counters["downloads"] == 1 and cam.counters["record_queries"] >= 1
        # What filled the gap is real video with its original times, not a copy of the live segments.
        with hub.sessions() as s:
            rows = [r for r in s.scalars(select(Segment).where(Segment.device_id == CHANNEL))
                    if r.start_at < gap[1] and r.end_at > gap[0]]
        assert rows
        for r in rows:
            with av.open(str(hub.segments.root / r.path)) as c:
                v = c.streams.video[0]
                assert v.codec_context.name == "h264" and sum(1 for _ in c.decode(v)) >= 10
        # The live stream went on while the recording came in.
        ended = player.counters["streams_ended"]
        time.sleep(3)
        assert player.counters["streams_ended"] == ended, player.counters
        # Online by its video (a looped 4 s test clip may look frozen to the analysis: its verdict, not ours).
        assert hub.snapshots.device(CHANNEL).state != "offline", hub.snapshots.device(CHANNEL)


def test_record_info_answers_are_clipped_and_merged(hub: Hub, clip: Path) -> None:
    server = GbServer("127.0.0.1", hub.cfg.gb28181.port, SERVER_ID)
    spec = GbDeviceSpec(IPC, server, PASSWORD, (GbChannel(CHANNEL, "东门"),), keepalive_s=5.0, clip=CLIP)
    svc = hub.gb28181
    assert svc is not None and svc._loop is not None
    with GbDevice(spec, clip):
        wait_until(lambda: any(r.catalog_done for r in svc.registrations_now()), 10, "registered with its catalog")
        import asyncio

        now = time.time()
        start = now - 3.0
        fut = asyncio.run_coroutine_threadsafe(svc.record_info(IPC, CHANNEL, start - 100, now + 100), svc._loop)
        got: Any = fut.result(20)
        # Recorded since it started (3 s or so): one merged span, clipped to what it has.
        assert len(got) == 1 and got[0][0] >= start - 5 and got[0][1] <= now + 100
