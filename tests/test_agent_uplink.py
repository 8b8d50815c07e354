"""Uplink against the real hub (``vms serve``) on loopback: register, heartbeat, segments."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from edge_agent.agent import Agent
from edge_agent.config import AgentConfig, CameraConfig
from edge_agent.spool import Segment, Spool
from edge_agent.uplink import Outcome, Uplink
from tests.conftest import stop_process
from tests.rtsp_fixture import RtspServer, clips_fixture, free_port  # noqa: F401

pytest.importorskip("vms.api", reason="the hub (vms.api) is not there yet")

PREFIX = "32058501001320"
DEV = PREFIX + "000001"
VMS = [sys.executable, "-m", "vms.cli"]


class Hub:
    def __init__(self, url: str, token: str) -> None:
        self.url, self.token = url, token


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    d = tmp_path_factory.mktemp("hub")
    port = free_port()
    cfg = d / "hub.yaml"
    cfg.write_text(f"server:\n  host: 127.0.0.1\n  port: {port}\nstorage:\n  data_dir: {d / 'data'}\n")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    out = subprocess.run([*VMS, "token", "create", "--config", str(cfg), "--role", "agent",
                          "--prefix", PREFIX, "--name", "agent-test"], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        pytest.skip(f"hub cannot create an agent token yet: {out.stderr.strip()[-300:]}")
    token = out.stdout.strip().splitlines()[-1]
    proc = subprocess.Popen([*VMS, "serve", "--config", str(cfg)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                httpx.get(url + "/api/v1/agents", timeout=1)
                break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            pytest.skip("hub did not start")
        yield Hub(url, token)
    finally:
        stop_process(proc, timeout=10)


def segments_route_exists(hub: Hub) -> bool:
    r = httpx.put(f"{hub.url}/api/v1/agents/segments/{DEV}", params={"start": "1", "duration": "1"},
                  content=b"", headers={"Authorization": f"Bearer {hub.token}"})
    return r.status_code not in (404, 405)


def make_segment(spool: Spool, dev: str, start: float, data: bytes) -> Segment:
    sha = hashlib.sha256(data).hexdigest()
    path = spool.root / Segment.file_name(dev, start, 4.0, sha)
    path.write_bytes(data)
    seg = Segment.from_path(path)
    assert seg is not None
    spool.added(seg)
    return seg


async def test_register_heartbeat_and_camera_report(hub: Hub, tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10**9)
    up = Uplink(hub.url, hub.token, spool, lambda: [])
    try:
        reply = await up.register()
        assert PREFIX in reply.prefixes and reply.heartbeat_interval_s > 0
        hb = await up.heartbeat()
        assert hb.rejected == []
        ok = await up.report_cameras([{"device_id": DEV, "name": "x", "location": "", "manufacturer": None,
                                       "model": None, "serial": None, "address": "127.0.0.1:554",
                                       "stream_uri": "rtsp://127.0.0.1/x"}])
        assert ok or not up.cameras_supported
    finally:
        await up.aclose()


async def test_bad_token_is_refused(hub: Hub, tmp_path: Path) -> None:
    up = Uplink(hub.url, "wrong-token", Spool(tmp_path, 10**9), lambda: [])
    try:
        with pytest.raises(Exception, match=r"40[13]"):
            await up.register()
    finally:
        await up.aclose()


async def test_segment_upload_outcomes(hub: Hub, tmp_path: Path) -> None:
    if not segments_route_exists(hub):
        pytest.skip("hub has no PUT /api/v1/agents/segments/{device_id} route yet")
    spool = Spool(tmp_path, 10**9)
    up = Uplink(hub.url, hub.token, spool, lambda: [])
    try:
        await up.register()
        data = b"\x47" + os.urandom(187)
        seg = make_segment(spool, DEV, time.time(), data)
        assert await up.upload(seg) is Outcome.STORED and not seg.path.exists()
        again = make_segment(spool, DEV, seg.start, data)
        assert await up.upload(again) is Outcome.DUPLICATE and not again.path.exists()
        other = make_segment(spool, DEV, seg.start, b"\x47" + os.urandom(187))
        assert await up.upload(other) is Outcome.CONFLICT
        assert (spool.rejected_dir / other.name).exists()
        foreign = make_segment(spool, "11010000001320000001", time.time(), data)
        assert await up.upload(foreign) is Outcome.FORBIDDEN and foreign.path.exists()
        assert foreign not in spool.next_batch(10, skip_devices=up.blocked_devices())
    finally:
        await up.aclose()


async def test_agent_end_to_end(hub: Hub, tmp_path: Path, clips: dict[str, Path]) -> None:
    with RtspServer({"/cam": clips["plain"]}) as srv:
        cfg = AgentConfig(hub_url=hub.url, token=hub.token, data_dir=tmp_path / "agent", segment_seconds=1,
                          heartbeat_interval_s=0.5, cameras=[CameraConfig(url=srv.url("/cam"), name="cam")])
        agent = Agent(cfg)  # no id_prefix: IDs come from the prefix the hub grants
        stop = asyncio.Event()
        task = asyncio.create_task(agent.run(stop))
        try:
            for _ in range(100):
                await asyncio.sleep(0.2)
                if agent.uplink.stats.heartbeats >= 3 and any(s.connected for s in agent.camera_stats()):
                    break
            stats = agent.camera_stats()
            assert stats and stats[0].device_id.startswith(PREFIX) and stats[0].connected
            assert agent.uplink.stats.heartbeats >= 3 and not agent.uplink.stats.rejected_devices
            if segments_route_exists(hub):
                for _ in range(50):
                    await asyncio.sleep(0.2)
                    if agent.uplink.stats.uploaded >= 2:
                        break
                assert agent.uplink.stats.uploaded >= 2
        finally:
            stop.set()
            await asyncio.wait_for(task, 20)
    # Clean shutdown: nothing half-written, the last segment closed into the queue or sent.
    assert list((tmp_path / "agent" / "spool" / ".tmp").iterdir()) == []


async def test_outage_backs_off_once_per_round_and_resumes_on_heartbeat(tmp_path: Path) -> None:
    spool = Spool(tmp_path, 10**9)
    up = Uplink(f"http://127.0.0.1:{free_port()}", "t", spool, lambda: [])  # nothing listens there
    try:
        segs = [make_segment(spool, DEV, 1000.0 + 4 * i, b"\x47" + os.urandom(187)) for i in range(4)]
        outcomes = await asyncio.gather(*(up.upload(s) for s in segs))
        assert outcomes == [Outcome.RETRY] * 4 and all(s.path.exists() for s in segs)
        assert up._failures == 1  # four uploads failing together are one failed round
        assert up._pause_until > time.monotonic()
        up._hub_reachable()  # what a successful heartbeat does
        assert up._pause_until == 0.0 and up._failures == 0
    finally:
        await up.aclose()
