"""Launch the simulated cameras from the venv: make the clips, write the spec, run the server.

The RTSP server needs GStreamer, which only the system interpreter has, so it runs as a child
process (`/usr/bin/python3 -m camsim.rtsp_server spec.json`). The child watches our pid and exits if
we die, so a crashed test or benchmark leaves no camera behind. Simulated GB/T 28181 devices
(`camsim.gb28181`) run here, as threads: they register with a center by SIP and send their video
themselves when it INVITEs them.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from camsim.clips import VARIANTS, ClipParams, ensure_clip
from camsim.gb28181 import GbControl, GbDevice, GbDeviceSpec
from camsim.net import http_ok, port_free, port_open, wait_until

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SYSTEM_PYTHON = "/usr/bin/python3"
DEFAULT_PREFIX = "32058501001320"
#: A camera's sub stream (子码流) for multi-tile walls: small, Baseline, no B-frames, as real ones are.
SUB_PARAMS = ClipParams(width=320, height=180, bitrate_kbps=256, bframes=0)


def device_ids(count: int, prefix: str = DEFAULT_PREFIX, first: int = 1) -> list[str]:
    """GB/T 28181 IDs: a 14-digit allocation prefix plus a 6-digit serial from `first`."""
    if len(prefix) != 14 or not prefix.isdigit():
        raise ValueError(f"prefix must be 14 digits, got {prefix!r}")
    if first < 0 or first + count - 1 > 999999:
        raise ValueError("serial numbers must stay within 000000..999999")
    return [f"{prefix}{n:06d}" for n in range(first, first + count)]


class Simulator:
    """N simulated RTSP/ONVIF cameras on loopback; use as a context manager or start()/stop()."""

    def __init__(
        self,
        cameras: Sequence[str],
        data_dir: Path | str,
        rtsp_port: int = 8554,
        control_port: int = 8555,
        onvif_base_port: int | None = 18000,
        params: ClipParams | None = None,
        *,
        mix_profiles: bool = True,
        sub_params: ClipParams | None = None,
        variants: Sequence[str] = VARIANTS,
        host: str = "127.0.0.1",
        onvif_username: str | None = "admin",
        onvif_password: str | None = "secret",
        discovery: bool = False,
        discovery_bind: str = "0.0.0.0",
        python: str = SYSTEM_PYTHON,
        startup_timeout: float = 30.0,
        log_path: Path | str | None = None,
        gb_devices: Sequence[GbDeviceSpec] | None = None,
        gb_control_port: int | None = None,
    ) -> None:
        """`mix_profiles`: odd-numbered cameras get a Baseline clip without B-frames, the others
        `params` (High with B-frames by default), since real fleets mix both. `sub_params` adds a
        second mount per camera (`.../sub`) with its own, usually smaller, clips; a sub stream is
        always Baseline without B-frames (its `bframes` is set to 0), as real sub streams are.
        `gb_devices` adds simulated GB/T 28181 devices (threads of this process); `gb_control_port`
        serves their fault control over HTTP, shaped like the RTSP cameras' one. Without RTSP
        `cameras` no RTSP server is started."""
        if len(set(cameras)) != len(cameras):
            raise ValueError("camera ids must be unique")
        self.gb_specs = list(gb_devices or [])
        gb_ids = [i for g in self.gb_specs for i in dict.fromkeys([g.device_id, *g.stream_ids])]
        if len(set(gb_ids)) != len(gb_ids) or set(gb_ids) & set(cameras):
            raise ValueError("GB/T 28181 device and channel ids must be unique and differ from the RTSP cameras'")
        self.gb_control_port = gb_control_port
        self.gb: dict[str, GbDevice] = {}
        self.gb_control: GbControl | None = None
        self.cameras = list(cameras)
        self.data_dir = Path(data_dir)
        self.rtsp_port = rtsp_port
        self.control_port = control_port
        self.onvif_base_port = onvif_base_port
        self.params = params or ClipParams()
        self.mix_profiles = mix_profiles
        self.sub_params = replace(sub_params, bframes=0) if sub_params else None
        self.variants = list(dict.fromkeys(["normal", *variants]))
        self.host = host
        self.onvif_username = onvif_username
        self.onvif_password = onvif_password
        self.discovery = discovery
        self.discovery_bind = discovery_bind
        self.python = python
        self.startup_timeout = startup_timeout
        self.log_path = Path(log_path) if log_path else self.data_dir / "rtsp_server.log"
        self.spec_path = self.data_dir / "camsim_spec.json"
        self.proc: subprocess.Popen[bytes] | None = None

    # ---- URLs

    @property
    def control_url(self) -> str:
        return f"http://{self.host}:{self.control_port}"

    def rtsp_url(self, device_id: str, sub: bool = False) -> str:
        self._check(device_id)
        return f"rtsp://{self.host}:{self.rtsp_port}/cam/{device_id}{'/sub' if sub else ''}"

    def onvif_port(self, device_id: str) -> int:
        self._check(device_id)
        if self.onvif_base_port is None:
            raise RuntimeError("ONVIF is disabled (onvif_base_port=None)")
        return self.onvif_base_port + self.cameras.index(device_id)

    def _check(self, device_id: str) -> None:
        if device_id not in self.cameras:
            raise KeyError(f"unknown camera {device_id!r}")

    def params_for(self, device_id: str) -> ClipParams:
        """Clip parameters of one camera's main stream."""
        if self.mix_profiles and self.cameras.index(device_id) % 2 == 1:
            return replace(self.params, bframes=0)
        return self.params

    # ---- lifecycle

    def make_clips(self) -> dict[tuple[ClipParams, str], Path]:
        """Encode every clip the cameras need (shared by parameters), two at a time."""
        wanted = {(self.params_for(d), v) for d in self.cameras for v in self.variants}
        if self.sub_params:
            wanted |= {(self.sub_params, v) for v in self.variants}
        wanted |= {(g.clip, "normal") for g in self.gb_specs}
        jobs = sorted(wanted, key=lambda pv: (pv[1] != "normal", str(pv)))
        clip_dir = self.data_dir / "clips"
        with ThreadPoolExecutor(max_workers=min(2, os.cpu_count() or 1)) as pool:
            paths = list(pool.map(lambda pv: ensure_clip(pv[0], pv[1], clip_dir), jobs))
        return dict(zip(jobs, paths, strict=True))

    def build_spec(self, clips: dict[tuple[ClipParams, str], Path]) -> dict[str, Any]:
        cams = []
        for i, d in enumerate(self.cameras):
            p = self.params_for(d)
            cam: dict[str, Any] = {
                "device_id": d, "mount": f"/cam/{d}",
                "onvif_port": None if self.onvif_base_port is None else self.onvif_base_port + i,
                "width": p.width, "height": p.height, "fps": p.fps, "bitrate_kbps": p.bitrate_kbps,
                "gov_length": max(1, round(p.gop_s * p.fps)), "profile": p.profile,
                "clips": {v: str(clips[(p, v)]) for v in self.variants},
            }
            if self.sub_params:
                sp = self.sub_params
                cam.update(sub_mount=f"/cam/{d}/sub", sub_width=sp.width, sub_height=sp.height,
                           sub_bitrate_kbps=sp.bitrate_kbps, sub_profile=sp.profile,
                           sub_clips={v: str(clips[(sp, v)]) for v in self.variants})
            cams.append(cam)
        onvif = None
        if self.onvif_base_port is not None:
            onvif = {"bind": self.host, "advertise_host": self.host, "username": self.onvif_username,
                     "password": self.onvif_password, "discovery": self.discovery,
                     "discovery_bind": self.discovery_bind}
        return {"host": self.host, "rtsp_port": self.rtsp_port, "control_port": self.control_port,
                "parent_pid": os.getpid(), "onvif": onvif, "cameras": cams}

    def start(self) -> Simulator:
        """Make clips, start the server process and wait until RTSP and control ports answer; then
        start the GB/T 28181 devices (they register on their own)."""
        if self.proc is not None or self.gb:
            raise RuntimeError("simulator already started")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        ports = {"RTSP": self.rtsp_port, "fault control": self.control_port} if self.cameras else {}
        if self.gb_control_port:
            ports["GB/T 28181 fault control"] = self.gb_control_port
        for what, port in ports.items():  # before the clips are made: a clash is told at once
            if not port_free(self.host, port):
                raise OSError(f"cannot listen for {what} on {self.host}:{port}: the port is already in use")
        clips = self.make_clips()
        if self.cameras:
            self._start_rtsp(clips)
        try:
            for g in self.gb_specs:
                self.gb[g.device_id] = GbDevice(g, clips[(g.clip, "normal")]).start()
            if self.gb_control_port is not None:
                self.gb_control = GbControl(list(self.gb.values()), self.host, self.gb_control_port).start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_rtsp(self, clips: dict[tuple[ClipParams, str], Path]) -> None:
        spec = self.build_spec(clips)
        self.spec_path.write_text(json.dumps(spec, indent=1), encoding="utf-8")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
        env.pop("PYTHONHOME", None)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [self.python, "-m", "camsim.rtsp_server", str(self.spec_path)],
                env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )
        ready = wait_until(
            lambda: self.proc is not None and (
                self.proc.poll() is not None
                or (port_open(self.host, self.rtsp_port) and http_ok(self.control_url + "/health"))
            ),
            self.startup_timeout,
        )
        if not ready or self.proc.poll() is not None:
            self.stop()
            raise RuntimeError(f"camera simulator failed to start; log tail:\n{self.log_tail()}")

    def stop(self) -> None:
        """Stop the GB/T 28181 devices, terminate the server process (SIGTERM, then SIGKILL after 5 s)."""
        control, self.gb_control = self.gb_control, None
        if control is not None:
            control.stop()
        devices, self.gb = list(self.gb.values()), {}
        for dev in devices:
            dev.stop()
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    @property
    def running(self) -> bool:
        if not self.cameras:
            return bool(self.gb)
        return self.proc is not None and self.proc.poll() is None

    @property
    def gb_control_url(self) -> str | None:
        return self.gb_control.url if self.gb_control is not None else None

    def gb_device(self, device_or_channel: str) -> GbDevice:
        """The running GB/T 28181 device of an ID (its own or one of its channels'); KeyError."""
        for dev in self.gb.values():
            if device_or_channel == dev.device_id or device_or_channel in dev.spec.stream_ids:
                return dev
        raise KeyError(f"unknown GB/T 28181 device or channel {device_or_channel!r}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- control API

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.control_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            return json.loads(resp.read())

    def list_cameras(self) -> list[dict[str, Any]]:
        """GET /cameras: device_id, rtsp_url, fault, online, ... per camera; then one row per GB channel."""
        result: list[dict[str, Any]] = self._request("GET", "/cameras") if self.cameras else []
        return result + [row for dev in self.gb.values() for row in dev.describe()]

    def set_fault(self, device_id: str, kind: str) -> dict[str, Any]:
        """POST /cameras/{id}/fault; kinds: dark freeze black blur cover lowfps restart clear. For a GB/T
        28181 device or channel (applied here): video_stop network_cut garbage record_stop record_resume clear."""
        if any(device_id == d.device_id or device_id in d.spec.stream_ids for d in self.gb.values()):
            return {"device_id": device_id, "channels": self.gb_device(device_id).set_fault(device_id, kind)}
        result: dict[str, Any] = self._request("POST", f"/cameras/{device_id}/fault", {"kind": kind})
        return result

    def clear(self, device_id: str) -> dict[str, Any]:
        return self.set_fault(device_id, "clear")
