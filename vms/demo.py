"""`vms demo`: the whole system on one machine — simulator, edge agent and hub, as separate processes.

Eight cameras by default in two towns and one school-district (education) center, so a new user
sees the center tree fill up, cameras go online and upload, and can inject faults. Everything is
written under one data directory; ``demo.json`` there tells scripts and tests where things are.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from camsim.sim import SUB_PARAMS, Simulator
from vms import auth, demo_district
from vms.db import open_store

log = logging.getLogger(__name__)

CENTERS: list[dict[str, Any]] = [{
    "id": "taicang", "name": "太仓市公安局视频监控中心 (district)", "level": 1, "civil_code": "320585",
    "children": [
        {"id": "chengxiang", "name": "城厢镇视频监控中心 (town)", "level": 2, "civil_code": "32058501"},
        {"id": "shaxi", "name": "沙溪镇视频监控中心 (town)", "level": 2, "civil_code": "32058502"},
        {"id": "education", "name": "教育局视频监控中心 (schools)", "level": 3, "civil_code": "320585",
         "industries": ["11"], "targets": {"online": 0.95, "upload": 1.0, "intact": 0.95}},
    ],
}]
PLACES = ["东门路口", "人民路", "汽车站", "菜市场", "城厢中学 校门", "沙溪古镇 入口", "沙溪卫生院", "沙溪小学 操场"]


def demo_cameras(n: int) -> list[tuple[str, str]]:
    """(device_id, name): road cameras in the two towns, every fourth one at a school (industry 11)."""
    out = []
    for i in range(n):
        town = "01" if i % 2 == 0 else "02"
        industry = "11" if i % 4 == 3 else "00"
        out.append((f"320585{town}{industry}1320{i + 1:06d}", PLACES[i % len(PLACES)]))
    return out


@dataclass
class Demo:
    cameras: int
    port: int
    data_dir: Path
    rtsp_port: int = 8554
    control_port: int = 8555
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sim: Simulator | None = None

    def _paths(self) -> tuple[Path, Path, Path]:
        return self.data_dir / "hub.yaml", self.data_dir / "agent.yaml", self.data_dir / "demo.json"

    def prepare(self) -> dict[str, Any]:
        """Write configs and create tokens (once: a second run reuses them and the history)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        hub_yaml, agent_yaml, info_path = self._paths()
        cams = demo_cameras(self.cameras)
        hub_cfg = {
            "server": {"host": "127.0.0.1", "port": self.port},
            "storage": {"data_dir": str((self.data_dir / "hub").resolve())},
            "archive": {"min_free_bytes": 100_000_000},
            "centers": CENTERS,
            "devices": [{"id": d, "name": n} for d, n in cams],
        }
        demo_district.place(hub_cfg)  # the district map: boundary, sites, where the cameras stand
        hub_yaml.write_text(yaml.safe_dump(hub_cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
        tokens_file = self.data_dir / "tokens.json"
        if tokens_file.exists():
            tokens = json.loads(tokens_file.read_text())
        else:
            from vms.config import load

            engine, sessions = open_store(load(hub_yaml).storage.url())
            tokens = {role: auth.create(sessions, role, f"demo-{role}")[0]
                      for role in ("admin", "duty", "maintenance", "police")}
            tokens["agent"] = auth.create(sessions, "agent", "demo-agent", ["320585"])[0]
            engine.dispose()
            tokens_file.write_text(json.dumps(tokens, indent=1))
            tokens_file.chmod(0o600)
        rtsp = [f"rtsp://127.0.0.1:{self.rtsp_port}/cam/{d}" for d, _ in cams]
        agent_cfg = {
            "hub_url": f"http://127.0.0.1:{self.port}", "token": tokens["agent"],
            "data_dir": str((self.data_dir / "agent").resolve()), "segment_seconds": 2,
            "cameras": [{"url": u, "sub_url": f"{u}/sub", "device_id": d, "name": n}
                        for (d, n), u in zip(cams, rtsp, strict=True)],
        }
        agent_yaml.write_text(yaml.safe_dump(agent_cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
        agent_yaml.chmod(0o600)
        info = {
            "hub_url": f"http://127.0.0.1:{self.port}",
            "camsim_control_url": f"http://127.0.0.1:{self.control_port}",
            "tokens": {k: v for k, v in tokens.items() if k != "agent"},
            "cameras": [{"device_id": d, "name": n, "rtsp_url": u} for (d, n), u in zip(cams, rtsp, strict=True)],
        }
        info_path.write_text(json.dumps(info, indent=1, ensure_ascii=False))
        info_path.chmod(0o600)
        return info

    def _spawn(self, name: str, args: list[str]) -> None:
        logf = (self.data_dir / f"{name}.log").open("ab")
        self.procs.append(subprocess.Popen(args, stdout=logf, stderr=logf, start_new_session=True))
        log.info("started %s (pid %d), log %s", name, self.procs[-1].pid, self.data_dir / f"{name}.log")

    def start(self) -> dict[str, Any]:
        info = self.prepare()
        hub_yaml, agent_yaml, _ = self._paths()
        py = sys.executable
        cams = [c["device_id"] for c in info["cameras"]]
        # Cameras first (making their clips takes a while), so the agent can connect as soon as the
        # hub is up. The simulator's RTSP server runs in a process of its own (system Python, GStreamer).
        self.sim = Simulator(cams, self.data_dir / "camsim", rtsp_port=self.rtsp_port,
                             control_port=self.control_port, onvif_base_port=None, startup_timeout=120,
                             sub_params=SUB_PARAMS)
        self.sim.start()
        self._spawn("hub", [py, "-m", "vms.cli", "serve", "--config", str(hub_yaml)])
        self._wait(f"{info['hub_url']}/healthz", "hub")
        self._spawn("agent", [py, "-m", "edge_agent.cli", "run", "--config", str(agent_yaml)])
        return info

    def _wait(self, url: str, what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"a demo process exited with {p.returncode}; see logs in {self.data_dir}")
            try:
                if httpx.get(url, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.3)
        raise RuntimeError(f"{what} did not come up within {timeout:.0f} s; see logs in {self.data_dir}")

    def stop(self) -> None:
        for p in reversed(self.procs):
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in reversed(self.procs):
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.procs.clear()
        if self.sim is not None:
            self.sim.stop()
            self.sim = None
