"""`vms demo`: the whole system on one machine — simulator, edge agent and hub, as separate processes.

Eight cameras by default in two towns and one school-district (education) center, so a new user
sees the center tree fill up, cameras go online and upload, and can inject faults. Everything is
written under one data directory; ``demo.json`` there tells scripts and tests where things are.

With ``levels=2`` (``vms demo --levels 2``) the district runs above two towns, each center a hub
of its own as in the field: each town's hub records its own cameras (its own agent, its GB/T 28181
devices registering with it) and registers with the district's hub by GB/T 28181 cascade; the
district sees both towns' cameras from their catalogs and changes, plays them live and pulls their
clips through the cascade. ``hub_url`` in ``demo.json`` is the district's; ``towns`` lists the others.

Every port is the one given, else the usual one (hub 8700, RTSP 8554, fault control 8555) if it is
free, else any free one, so a second demo beside a first one never talks to the first one's
parts. A part that does not start (hub, simulator, agent) stops the whole demo with a message
saying which and why, and the tail of its log.
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
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import yaml

from camsim.gb28181 import GbChannel, GbDeviceSpec, GbServer
from camsim.net import free_port, port_free
from camsim.sim import SUB_PARAMS, Simulator
from vms import auth, demo_district
from vms.db import open_store

log = logging.getLogger(__name__)

HOST = "127.0.0.1"
#: Lines of a part's log shown when it fails.
LOG_TAIL = 15


class DemoError(RuntimeError):
    """A part of the demo that cannot start or stopped; the message says which, why, and its log's tail."""


def log_tail(path: Path, lines: int = LOG_TAIL) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"

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


#: The towns of the two-level demo: center ID, its GB/T 28181 ID (type 200), its cameras' civil code.
TOWNS = (("chengxiang", "32058501002000000001", "32058501"), ("shaxi", "32058502002000000001", "32058502"))


@dataclass
class Center:
    """One hub of the demo: the district's (the only one with ``levels=1``) or a town's."""

    name: str  # "hub" for the top one, else the town's center ID
    port: int
    cameras: list[tuple[str, str]]  # its agent's RTSP cameras (none: no agent)
    config: dict[str, Any]

    @property
    def prefix(self) -> str:
        return "" if self.name == "hub" else f"{self.name}-"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


@dataclass
class Demo:
    """The demo's parts. A port left None is picked by :meth:`pick_ports`: the usual one if free, else any."""

    cameras: int
    port: int | None  # the hub's HTTP port
    data_dir: Path
    rtsp_port: int | None = None
    control_port: int | None = None  # the simulated cameras' fault API
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    sim: Simulator | None = None
    gb_port: int | None = None  # the hub's SIP port (UDP and TCP)
    gb_control_port: int | None = None  # the GB devices' fault API
    gb_devices: list[GbDeviceSpec] = field(default_factory=list)
    levels: int = 1  # 2: a district hub above two town hubs (cascade)
    town_ports: dict[str, tuple[int, int]] = field(default_factory=dict)  # town -> (HTTP, SIP) ports
    centers: list[Center] = field(default_factory=list)
    _picked: bool = False

    def _paths(self) -> tuple[Path, Path, Path]:
        return self.data_dir / "hub.yaml", self.data_dir / "agent.yaml", self.data_dir / "demo.json"

    def pick_ports(self) -> dict[str, int]:
        """Every port the demo listens on, all different; :class:`DemoError` for a given one in use."""
        if not self._picked:
            taken: set[int] = set()
            self.port = _pick("--port", "the hub", self.port, 8700, taken)
            self.rtsp_port = _pick("--rtsp-port", "the simulator's RTSP", self.rtsp_port, 8554, taken)
            self.control_port = _pick("--control-port", "the simulator's fault control", self.control_port, 8555,
                                      taken)
            self.gb_port = _pick("--gb-port", "the hub's GB/T 28181 SIP (UDP and TCP)", self.gb_port, None, taken,
                                 udp=True)
            self.gb_control_port = _pick("--gb-control-port", "the GB/T 28181 devices' fault control",
                                         self.gb_control_port, None, taken)
            if self.levels == 2:
                for town, _gb, _code in TOWNS:
                    self.town_ports[town] = (_pick("", f"the {town} hub", None, None, taken),
                                             _pick("", f"the {town} hub's SIP", None, None, taken, udp=True))
            self._picked = True
        assert self.port and self.rtsp_port and self.control_port and self.gb_port and self.gb_control_port
        ports = {"hub": self.port, "rtsp": self.rtsp_port, "control": self.control_port, "gb_sip": self.gb_port,
                 "gb_control": self.gb_control_port}
        for town, (http, sip) in self.town_ports.items():
            ports[f"{town}_hub"], ports[f"{town}_gb_sip"] = http, sip
        return ports

    def prepare(self) -> dict[str, Any]:
        """Pick the ports, write configs and create tokens (once: a second run reuses them and the history)."""
        ports = self.pick_ports()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cams = demo_cameras(self.cameras)
        self.centers = self._one_center(cams) if self.levels == 1 else self._district_and_towns(cams)
        tokens: dict[str, dict[str, str]] = {}
        for c in self.centers:
            hub_yaml = self.data_dir / f"{c.prefix}hub.yaml"
            hub_yaml.write_text(yaml.safe_dump(c.config, allow_unicode=True, sort_keys=False), encoding="utf-8")
            tokens[c.name] = self._tokens(c, hub_yaml)
            if c.cameras:
                self._agent_yaml(c, tokens[c.name]["agent"])
        rtsp = {d: f"rtsp://127.0.0.1:{self.rtsp_port}/cam/{d}" for d, _ in cams}
        home = {d: c.name for c in self.centers for d, _ in c.cameras}
        info: dict[str, Any] = {
            "hub_url": self.centers[0].url,
            "camsim_control_url": f"http://127.0.0.1:{self.control_port}",
            "ports": ports,
            "tokens": {k: v for k, v in tokens["hub"].items() if k != "agent"},
            "cameras": [{"device_id": d, "name": n, "protocol": "rtsp", "rtsp_url": rtsp[d]}
                        | ({"town": home[d]} if self.levels == 2 else {}) for d, n in cams]
            + [{"device_id": c.channel_id, "name": c.name, "protocol": "gb28181", "parent_id": g.device_id}
               for g in self.gb_devices for c in g.channels],
            "gb28181": _sip_server(self.centers[0].config["gb28181"]),
            "camsim_gb_control_url": f"http://127.0.0.1:{self.gb_control_port}",
        }
        if self.levels == 2:
            info["towns"] = [{"center": c.name, "hub_url": c.url, "gb28181": _sip_server(c.config["gb28181"]),
                              "tokens": {k: v for k, v in tokens[c.name].items() if k != "agent"}}
                             for c in self.centers[1:]]
        info_path = self.data_dir / "demo.json"
        info_path.write_text(json.dumps(info, indent=1, ensure_ascii=False))
        info_path.chmod(0o600)
        return info

    def _base(self, name: str, port: int) -> dict[str, Any]:
        data = self.data_dir / ("hub" if name == "hub" else f"{name}-hub")
        return {"server": {"host": HOST, "port": port}, "storage": {"data_dir": str(data.resolve())},
                "archive": {"min_free_bytes": 100_000_000}}

    def _one_center(self, cams: list[tuple[str, str]]) -> list[Center]:
        """The district's center tree in one hub: every camera relayed to it, the GB devices register with it."""
        assert self.port is not None and self.gb_port is not None
        cfg = self._base("hub", self.port) | {"centers": CENTERS, "devices": [{"id": d, "name": n} for d, n in cams]}
        password = secrets.token_urlsafe(9)
        server = GbServer(HOST, self.gb_port, GB_SERVER_ID, GB_DOMAIN)
        self.gb_devices = demo_gb_devices(server, password)
        cfg["gb28181"] = {"enabled": True, "host": HOST, "port": self.gb_port, "server_id": GB_SERVER_ID,
                          "domain": GB_DOMAIN, "password": password, "auto_accept": True, "keepalive_interval_s": 10}
        demo_district.place(cfg)  # the district map: boundary, sites, where the cameras stand
        return [Center("hub", self.port, cams, cfg)]

    def _district_and_towns(self, cams: list[tuple[str, str]]) -> list[Center]:
        """The district's hub (no cameras of its own: it sees the towns') and a hub per town, each with
        its own cameras and GB/T 28181 device, registered with the district (``superiors``)."""
        assert self.port is not None and self.gb_port is not None
        district = self._base("hub", self.port) | {"centers": CENTERS}
        passwords = {gb_id: secrets.token_urlsafe(9) for _t, gb_id, _c in TOWNS}
        district["gb28181"] = {"enabled": True, "host": HOST, "port": self.gb_port, "server_id": GB_SERVER_ID,
                               "domain": GB_DOMAIN, "passwords": passwords, "auto_accept": True,
                               "keepalive_interval_s": 10}
        demo_district.place(district)  # the boundary and sites; the cameras' positions come in the catalogs
        out = [Center("hub", self.port, [], district)]
        self.gb_devices = []
        where = demo_district.positions([d for d, _ in cams])
        for (town, gb_id, code), (d, name, chans) in zip(TOWNS, (GB_IPC, GB_NVR), strict=True):
            http, sip = self.town_ports[town]
            mine = [(c, n) for c, n in cams if c.startswith(code)]
            cfg = self._base(town, http) | {
                "centers": [next(c for c in CENTERS[0]["children"] if c["id"] == town)],
                "devices": [{"id": c, "name": n} | ({"lon": where[c][0], "lat": where[c][1]} if c in where else {})
                            for c, n in mine]}
            password = secrets.token_urlsafe(9)
            cfg["gb28181"] = {"enabled": True, "host": HOST, "port": sip, "server_id": gb_id, "password": password,
                              "auto_accept": True, "keepalive_interval_s": 10}
            cfg["superiors"] = [{"name": "district", "server_id": GB_SERVER_ID, "domain": GB_DOMAIN, "host": HOST,
                                 "port": self.gb_port, "password": passwords[gb_id], "share": [town],
                                 "keepalive_interval_s": 5}]
            server = GbServer(HOST, sip, gb_id, gb_id[:10])
            self.gb_devices.append(GbDeviceSpec(d, server, password, chans, name=name, keepalive_s=10.0))
            out.append(Center(town, http, mine, cfg))
        return out

    def _tokens(self, c: Center, hub_yaml: Path) -> dict[str, str]:
        """The center's tokens: people's roles and its agent's (made once, kept in ``tokens*.json``)."""
        path = self.data_dir / f"{c.prefix}tokens.json"
        if path.exists():
            return dict(json.loads(path.read_text()))
        from vms.config import load

        engine, sessions = open_store(load(hub_yaml).storage.url())
        tokens = {role: auth.create(sessions, role, f"demo-{role}")[0]
                  for role in ("admin", "duty", "maintenance", "police")}
        tokens["agent"] = auth.create(sessions, "agent", "demo-agent", ["320585"])[0]
        engine.dispose()
        path.write_text(json.dumps(tokens, indent=1))
        path.chmod(0o600)
        return tokens

    def _agent_yaml(self, c: Center, token: str) -> None:
        path = self.data_dir / f"{c.prefix}agent.yaml"
        rtsp = [(d, n, f"rtsp://127.0.0.1:{self.rtsp_port}/cam/{d}") for d, n in c.cameras]
        agent_cfg = {
            "hub_url": c.url, "token": token,
            "data_dir": str((self.data_dir / f"{c.prefix}agent").resolve()), "segment_seconds": 2,
            "cameras": [{"url": u, "sub_url": f"{u}/sub", "device_id": d, "name": n} for d, n, u in rtsp],
        }
        path.write_text(yaml.safe_dump(agent_cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
        path.chmod(0o600)

    def _spawn(self, name: str, args: list[str]) -> None:
        logf = (self.data_dir / f"{name}.log").open("ab")
        self.procs[name] = subprocess.Popen(args, stdout=logf, stderr=logf, start_new_session=True)
        log.info("started %s (pid %d), log %s", name, self.procs[name].pid, self.data_dir / f"{name}.log")

    def start(self) -> dict[str, Any]:
        """Start the hubs, the simulator and the agents, each once the one before it is up; :class:`DemoError`
        (with the parts started so far left for :meth:`stop`) if one does not come up."""
        info = self.prepare()
        ports = info["ports"]
        py = sys.executable
        cams = [c["device_id"] for c in info["cameras"] if c["protocol"] == "rtsp"]
        for c in self.centers:
            self._spawn(f"{c.prefix}hub", [py, "-m", "vms.cli", "serve", "--config",
                                           str(self.data_dir / f"{c.prefix}hub.yaml")])
        for c in self.centers:
            self._wait(f"{c.prefix}hub", partial(_healthy, c.url), 60)
        # The simulator's RTSP server runs in a process of its own (system Python, GStreamer); making
        # its clips takes a while on the first run.
        self.sim = Simulator(cams, self.data_dir / "camsim", rtsp_port=ports["rtsp"], control_port=ports["control"],
                             onvif_base_port=None, startup_timeout=120, sub_params=SUB_PARAMS,
                             gb_devices=self.gb_devices, gb_control_port=ports["gb_control"])
        try:
            self.sim.start()
        except (RuntimeError, OSError) as exc:
            raise DemoError(f"the camera simulator did not start: {exc}") from None
        for c in self.centers:
            if c.cameras:
                self._spawn(f"{c.prefix}agent", [py, "-m", "edge_agent.cli", "run", "--config",
                                                 str(self.data_dir / f"{c.prefix}agent.yaml")])
        for c in self.centers:
            if c.cameras:
                self._wait(f"{c.prefix}agent", partial(self._agent_online, c), 90)
        if self.levels == 2:
            self._wait("hub", self._towns_registered, 60)
        return info

    def _admin(self, c: Center) -> dict[str, str]:
        tokens = json.loads((self.data_dir / f"{c.prefix}tokens.json").read_text())
        return {"Authorization": f"Bearer {tokens['admin']}"}

    def _agent_online(self, c: Center) -> bool:
        r = httpx.get(f"{c.url}/api/v1/agents", headers=self._admin(c), timeout=2)
        return any(a["id"] == "demo-agent" and a["online"] for a in r.json()["agents"])

    def _towns_registered(self) -> bool:
        """Both towns registered with the district and their catalogs read (their cameras known there)."""
        district = self.centers[0]
        r = httpx.get(f"{district.url}/api/v1/gb28181/devices", headers=self._admin(district), timeout=2)
        towns = {d["device_id"]: d for d in r.json()["devices"]}
        return all(towns.get(gb_id, {}).get("channels") for _t, gb_id, _c in TOWNS)

    def _wait(self, what: str, up: Callable[[], bool], timeout: float) -> None:
        """Until ``up()``; :class:`DemoError` as soon as a part exits, or after ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (why := self.failure()) is not None:
                raise DemoError(why)
            try:
                if up():
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.3)
        raise DemoError(f"the {what} did not come up within {timeout:.0f} s; last lines of "
                        f"{self.data_dir / (what + '.log')}:\n{log_tail(self.data_dir / (what + '.log'))}")

    def failure(self) -> str | None:
        """Why the running demo is broken (a part exited), or None while every part runs."""
        for name, p in self.procs.items():
            if p.poll() is not None:
                path = self.data_dir / f"{name}.log"
                return f"the {name} exited with code {p.returncode}; last lines of {path}:\n{log_tail(path)}"
        if self.sim is not None and not self.sim.running:
            return f"the camera simulator stopped; last lines of its log:\n{self.sim.log_tail(LOG_TAIL)}"
        return None

    def stop(self) -> None:
        procs = list(reversed(self.procs.values()))
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(5)
        self.procs.clear()
        if self.sim is not None:
            self.sim.stop()
            self.sim = None


def _sip_server(gb: dict[str, Any]) -> dict[str, Any]:
    """A center's SIP server as devices are configured with it: address, IDs, and its one password."""
    out: dict[str, Any] = {k: gb[k] for k in ("host", "port", "server_id") if k in gb}
    out["domain"] = gb.get("domain") or gb["server_id"][:10]
    if "password" in gb:
        out["password"] = gb["password"]
    return out


def _healthy(url: str) -> bool:
    return httpx.get(f"{url}/healthz", timeout=1).status_code == 200


def _pick(option: str, what: str, given: int | None, usual: int | None, taken: set[int], udp: bool = False) -> int:
    """``given`` if it is free (else :class:`DemoError`), else ``usual`` if free, else a free port;
    never one in ``taken``, to which it is added."""

    def free(port: int) -> bool:
        return port not in taken and port_free(HOST, port) and (not udp or port_free(HOST, port, udp=True))

    if given is not None:
        if not free(given):
            raise DemoError(f"{what} cannot listen on {HOST}:{given} ({option} {given}): the port is in use, "
                            f"perhaps by another demo; choose another, or leave {option} out to get a free one")
        port = given
    elif usual is not None and free(usual):
        port = usual
    else:
        port = next(p for p in iter(free_port, None) if free(p))
    taken.add(port)
    return port
