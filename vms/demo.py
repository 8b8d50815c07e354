"""`vms demo`: the whole system on one machine — simulator, edge agent and hub, as separate processes.

Eight cameras by default in two towns and one school-district (education) center, so a new user
sees the center tree fill up, cameras go online and upload, and can inject faults. Everything is
written under one data directory; ``demo.json`` there tells scripts and tests where things are.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from camsim.gb28181 import GbChannel, GbDeviceSpec, GbServer
from camsim.net import free_port
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


#: The demo's GB/T 28181 side: the center's SIP ID and domain, and beside the RTSP cameras one IPC
#: (132, its video channel 131, as real IPCs report it) and one NVR (118) with three channels (131).
GB_SERVER_ID = "32058500002000000001"
GB_DOMAIN = GB_SERVER_ID[:10]
GB_IPC = ("32058501001320000101", "城厢 东门 球机", (
    GbChannel("32058501001310000101", "东门 球机", 121.1183, 31.4556),
))
GB_NVR = ("32058502001180000201", "沙溪古镇 NVR", (
    GbChannel("32058502001310000201", "古镇 入口", 121.0563, 31.5537),
    GbChannel("32058502001310000202", "古镇 石桥", 121.0571, 31.5546),
    GbChannel("32058502001310000203", "古镇 停车场", 121.0552, 31.5529),
))


def demo_gb_devices(server: GbServer, password: str) -> list[GbDeviceSpec]:
    """The simulated GB/T 28181 devices, keeping alive every 10 s (the hub's demo interval)."""
    return [GbDeviceSpec(d, server, password, chans, name=name, keepalive_s=10.0)
            for d, name, chans in (GB_IPC, GB_NVR)]


@dataclass
class Demo:
    cameras: int
    port: int
    data_dir: Path
    rtsp_port: int = 8554
    control_port: int = 8555
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    sim: Simulator | None = None
    gb_port: int | None = None  # the hub's SIP port (UDP and TCP); default: a free one
    gb_control_port: int | None = None  # the GB devices' fault API; default: a free one
    gb_devices: list[GbDeviceSpec] = field(default_factory=list)

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
        gb = self._gb_section()
        hub_cfg["gb28181"] = {"enabled": True, **gb, "auto_accept": True, "keepalive_interval_s": 10}
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
            "cameras": [{"device_id": d, "name": n, "protocol": "rtsp", "rtsp_url": u}
                        for (d, n), u in zip(cams, rtsp, strict=True)]
            + [{"device_id": c.channel_id, "name": c.name, "protocol": "gb28181", "parent_id": g.device_id}
               for g in self.gb_devices for c in g.channels],
            "gb28181": gb,
            "camsim_gb_control_url": f"http://127.0.0.1:{self.gb_control_port}",
        }
        info_path.write_text(json.dumps(info, indent=1, ensure_ascii=False))
        info_path.chmod(0o600)
        return info

    def _gb_section(self) -> dict[str, Any]:
        """The hub's SIP server as devices see it (a fresh password per run: devices get it here too)."""
        self.gb_port = self.gb_port or free_port()
        self.gb_control_port = self.gb_control_port or free_port()
        password = secrets.token_urlsafe(9)
        server = GbServer("127.0.0.1", self.gb_port, GB_SERVER_ID, GB_DOMAIN)
        self.gb_devices = demo_gb_devices(server, password)
        return {"host": server.host, "port": server.port, "server_id": GB_SERVER_ID, "domain": GB_DOMAIN,
                "password": password}

    def _spawn(self, name: str, args: list[str]) -> None:
        logf = (self.data_dir / f"{name}.log").open("ab")
        self.procs.append(subprocess.Popen(args, stdout=logf, stderr=logf, start_new_session=True))
        log.info("started %s (pid %d), log %s", name, self.procs[-1].pid, self.data_dir / f"{name}.log")

    def start(self) -> dict[str, Any]:
        info = self.prepare()
        hub_yaml, agent_yaml, _ = self._paths()
        py = sys.executable
        cams = [c["device_id"] for c in info["cameras"] if c["protocol"] == "rtsp"]
        # Cameras first (making their clips takes a while), so the agent can connect as soon as the
        # hub is up. The simulator's RTSP server runs in a process of its own (system Python, GStreamer).
        self.sim = Simulator(cams, self.data_dir / "camsim", rtsp_port=self.rtsp_port,
                             control_port=self.control_port, onvif_base_port=None, startup_timeout=120,
                             sub_params=SUB_PARAMS, gb_devices=self.gb_devices, gb_control_port=self.gb_control_port)
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
