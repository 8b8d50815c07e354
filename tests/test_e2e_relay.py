"""Simulator → edge agent → hub over loopback with real RTSP, as the demo runs them.

Checks what the mission promises a district: a camera gone dark is flagged within 10 s and
resolves on return; a hub outage loses no segment; an agent killed and restarted keeps IDs.
"""

from __future__ import annotations

import hashlib
import itertools
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from camsim.clips import ClipParams
from camsim.sim import Simulator
from tests.conftest import HubProcess, free_port

FIXED = "32058501001320000001"
PREFIX = "32058502001320"  # the second camera gets its ID allocated by the agent


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    s = Simulator([FIXED, PREFIX + "000099"], tmp_path / "camsim", rtsp_port=free_port(),
                  control_port=free_port(), onvif_base_port=None,
                  params=ClipParams(bitrate_kbps=1000))  # 10 s loops: shorter ones look frozen to the analysis
    s.start()
    yield s
    s.stop()


class AgentProcess:
    def __init__(self, cfg_path: Path) -> None:
        self.cfg_path = cfg_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.cfg_path.parent / "agent.log").open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "edge_agent.cli", "run", "--config", str(self.cfg_path)],
                                     stdout=log, stderr=log)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            self.proc.send_signal(sig)
            self.proc.wait(20)
            self.proc = None


def api(hub: HubProcess, path: str, **params: Any) -> Any:
    r = httpx.get(hub.url + path, params=params, headers={"Authorization": f"Bearer {hub.tokens['admin']}"},
                  timeout=10)
    r.raise_for_status()
    return r.json()


def wait(pred: Any, timeout: float, what: str) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if pred():
            return time.monotonic() - t0
        time.sleep(0.25)
    raise AssertionError(f"{what}: not within {timeout} s")


def states(hub: HubProcess) -> dict[str, str]:
    try:
        return {d["id"]: d["state"] for d in api(hub, "/api/v1/devices")["devices"]}
    except httpx.HTTPError:
        return {}


def stored_segments(hub: HubProcess) -> list[tuple[str, float, float, str, str]]:
    import sqlite3

    db = hub.config.parent / "data" / "vms.db"
    with sqlite3.connect(db) as c:
        return c.execute("SELECT device_id, start_at, end_at, sha256, path FROM segments ORDER BY device_id, start_at"
                         ).fetchall()


def test_relay_dark_camera_hub_outage_and_agent_restart(make_hub_process: Any, sim: Simulator,
                                                        tmp_path: Path) -> None:
    hub: HubProcess = make_hub_process()
    hub.token("admin")
    agent_token = hub.token("agent", "32058501", "32058502", name="edge-1")
    hub.start()
    cfg = {
        "hub_url": hub.url, "token": agent_token, "data_dir": str(tmp_path / "agent"), "segment_seconds": 2,
        "id_prefix": PREFIX,
        "cameras": [{"url": sim.rtsp_url(FIXED), "device_id": FIXED, "name": "gate"},
                    {"url": sim.rtsp_url(PREFIX + "000099"), "name": "market"}],
    }
    cfg_path = tmp_path / "agent.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    agent = AgentProcess(cfg_path)
    agent.start()
    try:
        wait(lambda: sorted(states(hub).values()) == ["uploading", "uploading"], 60, "both cameras uploading")
        allocated = next(d for d in states(hub) if d != FIXED)
        assert allocated.startswith(PREFIX)

        # A camera goes dark: offline at the hub within 10 s, one alert; back: resolved.
        sim.set_fault(FIXED, "dark")
        took = wait(lambda: states(hub).get(FIXED) == "offline", 10, "dark camera flagged offline")
        alerts = api(hub, "/api/v1/alerts", state="active")["alerts"]
        assert [(a["kind"], a["device_id"]) for a in alerts] == [("device_offline", FIXED)], alerts
        sim.clear(FIXED)
        wait(lambda: api(hub, "/api/v1/alerts", state="active")["alerts"] == [], 40, "alert resolved on recovery")
        assert took < 10

        # The hub stops for a minute; the agent spools and delivers the backlog after.
        hub.stop()
        down_from = time.time()
        time.sleep(60)
        spooled = {p.name.split("_")[3].removesuffix(".ts") for p in (tmp_path / "agent").rglob("*.ts")
                   if "rejected" not in p.parts}
        assert len(spooled) >= 40, f"only {len(spooled)} segments spooled during the outage"
        hub.start()
        wait(lambda: not any(p for p in (tmp_path / "agent").rglob("*.ts") if "rejected" not in p.parts
                             and p.name.split("_")[3].removesuffix(".ts") in spooled), 90, "backlog delivered")
        rows = stored_segments(hub)
        stored = {r[3] for r in rows}
        assert spooled <= stored, f"{len(spooled - stored)} spooled segments never reached the hub"
        for device in (FIXED, allocated):
            mine = [r for r in rows if r[0] == device and r[1] >= down_from - 10]
            holes = [(a[2], b[1]) for a, b in itertools.pairwise(mine) if b[1] - a[2] > 1.0]
            assert holes == [], f"{device}: gaps in the recording across the hub outage: {holes}"
        for r in rows[:: max(1, len(rows) // 25)]:  # files on disk match their index checksums
            data = (hub.config.parent / "data" / "recordings" / r[4]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == r[3]

        # The agent is killed mid-segment and restarted: same IDs, recording resumes.
        agent.stop(signal.SIGKILL)
        agent.start()
        n_before = len(stored_segments(hub))
        wait(lambda: len(stored_segments(hub)) > n_before + 4, 60, "recording resumed after agent restart")
        assert set(states(hub)) == {FIXED, allocated}
    finally:
        agent.stop()
