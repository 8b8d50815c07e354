"""End to end on loopback: a simulated camera goes black, freezes, blurs, is covered; the edge agent
relays it; the hub raises the right alert within 10 s and resolves it when the picture is back.
Run twice: analysed by the hub (the default), and analysed by the agent (its ``analysis`` config),
when the hub must take the agent's findings and decode nothing itself.

Agent segments are set to 1 s (the default is 4 s): with a keyframe every 2 s a segment then
closes at every keyframe, so the hub sees each keyframe about 2 s after it was shot.
"""

from __future__ import annotations

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
from camsim.net import free_ports
from camsim.sim import SYSTEM_PYTHON, Simulator, device_ids
from tests.conftest import stop_process, wait_until

pytestmark = pytest.mark.skipif(not Path(SYSTEM_PYTHON).exists(), reason="system python3 with gi missing")

PREFIX = "32058501001320"
FAULTS = {"black": "black_screen", "freeze": "frozen", "blur": "blur", "cover": "occlusion"}


@pytest.fixture
def sim(tmp_path: Path) -> Iterator[Simulator]:
    rtsp, control = free_ports(2)
    params = ClipParams(width=640, height=360, fps=25, gop_s=2.0, bitrate_kbps=1500, bframes=2, duration_s=10.0)
    with Simulator(
        device_ids(1),
        tmp_path / "sim",
        rtsp_port=rtsp,
        control_port=control,
        onvif_base_port=None,
        params=params,
        variants=("black", "freeze", "blur", "cover"),
    ) as s:
        yield s


@pytest.mark.parametrize("where", ["hub", "agent"])
def test_camera_faults_raise_the_right_alert_within_10_s_and_clear(
    sim: Simulator, make_hub_process: Any, tmp_path: Path, where: str
) -> None:
    hp = make_hub_process(analysis={"workers": 1}, alerts={"resolve_hold_s": 1})
    token = hp.token("agent", PREFIX, name="agent-1")
    duty = {"Authorization": f"Bearer {hp.token('duty')}"}
    police = {"Authorization": f"Bearer {hp.token('police')}"}
    hp.start()
    dev = sim.cameras[0]
    cfg = tmp_path / "agent.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "hub_url": hp.url,
                "token": token,
                "data_dir": str(tmp_path / "agent"),
                "segment_seconds": 1,
                "heartbeat_interval_s": 1,
                "cameras": [{"url": sim.rtsp_url(dev), "device_id": dev}],
                **({"analysis": {"enabled": True, "workers": 1}} if where == "agent" else {}),
            }
        )
    )
    log = (tmp_path / "agent.log").open("wb")
    agent = subprocess.Popen(
        [sys.executable, "-c", "from edge_agent.cli import main; main()", "run", "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with httpx.Client(base_url=hp.url, headers=duty, timeout=5) as c:

            def poll(cond: Any, timeout: float, what: str) -> Any:
                return wait_until(cond, timeout, what,
                                  context=lambda: f"quality: {c.get(f'/api/v1/devices/{dev}/quality').text}")

            def degraded(state: str) -> list[dict[str, Any]]:
                r = c.get("/api/v1/alerts", params={"state": state, "kind": "device_degraded"})
                return [a for a in r.json()["alerts"] if a["device_id"] == dev]

            def state() -> str | None:
                r = c.get(f"/api/v1/devices/{dev}")
                return r.json()["state"] if r.status_code == 200 else None

            poll(lambda: state() == "uploading", 40, "the camera relayed and uploading")
            time.sleep(6)  # a few keyframes: the analysis learns the normal view
            assert degraded("active") == []
            for fault, check in FAULTS.items():
                t0 = time.monotonic()
                sim.set_fault(dev, fault)
                alert = poll(lambda: degraded("active"), 10, f"alert for {fault}")[0]
                took = time.monotonic() - t0
                assert check in alert["title"], (fault, alert["title"])
                assert alert["detail"].get("snapshot_url"), alert
                print(f"{fault}: {check} alert after {took:.1f} s")
                sim.clear(dev)
                poll(lambda: not degraded("active"), 20, f"{fault} alert resolved")
                assert state() == "uploading"
                time.sleep(4)  # healthy for two keyframes before the next fault, as cameras are between faults
            hub_analysed = _metric(c.get("/metrics").text, "vms_analysis_segments_submitted_total")
            if where == "agent":
                assert hub_analysed == 0, "the hub decoded segments of a camera its agent analyses"
                now = time.time()
                r = c.get(
                    f"/api/v1/devices/{dev}/recordings",
                    params={"start": f"{now - 3600:.0f}", "end": f"{now + 60:.0f}"},
                    headers=police,
                )
                marks = [s["motion"] for s in r.json().get("segments", [])]
                assert any(m is not None for m in marks), f"no motion ratio arrived with the segments: {r.text[:300]}"
            else:
                assert hub_analysed > 0
    finally:
        stop_process(agent, timeout=20)


def _metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"metric {name} not exposed")
