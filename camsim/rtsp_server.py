"""RTSP server for simulated cameras, with a control API for fault injection.

Runs only under the system interpreter (`/usr/bin/python3 -m camsim.rtsp_server spec.json`), which
has GStreamer's Python bindings; it imports nothing outside the standard library, `gi` and
`camsim.onvif`. Each camera is a mount serving a pre-encoded clip in a loop, which costs ~0.3% of a
core instead of 7-16% for live encoding. A fault swaps the mount's factory and closes the sessions
on it, so clients reconnect and get the new picture, or get nothing while the camera is dark.

Spec file (JSON), written by `camsim.sim.Simulator`:
    {"host": "127.0.0.1", "rtsp_port": 8554, "control_port": 8555, "parent_pid": 123,
     "onvif": {"bind": "127.0.0.1", "advertise_host": "127.0.0.1", "username": "admin",
               "password": "secret", "discovery": false, "discovery_bind": "0.0.0.0"} | null,
     "cameras": [{"device_id": "...", "mount": "/cam/<id>", "onvif_port": 18000,
                  "width": 640, "height": 360, "fps": 25, "bitrate_kbps": 1500, "gov_length": 50,
                  "profile": "high", "clips": {"normal": "/path.ts", "black": ..., ...},
                  "sub_mount": "/cam/<id>/sub", "sub_width": 320, "sub_height": 180,
                  "sub_bitrate_kbps": 400, "sub_profile": "baseline", "sub_clips": {...}}]}
                  (sub_* optional; without a sub mount ONVIF's SubStream profile is the main stream)
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtspServer  # noqa: E402

from camsim import FAULT_KINDS  # noqa: E402
from camsim.net import send_json  # noqa: E402
from camsim.onvif import DiscoveryResponder, OnvifDevice, OnvifServer  # noqa: E402

log = logging.getLogger("camsim.rtsp")

#: How long a `restart` fault keeps the camera away before it serves again.
RESTART_S = 3.0
#: How long an HTTP request waits for the GLib loop to apply a fault.
APPLY_TIMEOUT_S = 5.0

#: The clips repeat SPS/PPS before every keyframe, so the payloader must not insert its own: with
#: config-interval=-1 it puts them before each slice of a multi-slice IDR, and FFmpeg's parser then
#: splits the keyframe into two frames with the same timestamp.
LAUNCH = (
    '( multifilesrc location="{path}" loop=true '
    'caps="video/mpegts,systemstream=true,packetsize=188" ! tsdemux ! h264parse ! '
    "rtph264pay name=pay0 pt=96 config-interval=0 )"
)


@dataclass
class Camera:
    """One simulated camera: its mounts, clips and current fault (touched under Simulator.lock)."""

    device_id: str
    mount: str
    clips: dict[str, str]
    sub_mount: str | None = None
    sub_clips: dict[str, str] | None = None
    onvif_port: int | None = None
    info: dict[str, Any] = field(default_factory=dict)
    fault: str = "none"
    online: bool = True
    generation: int = 0  # bumps on every fault, so a stale restart timer does nothing

    def mounts(self) -> list[tuple[str, dict[str, str]]]:
        out = [(self.mount, self.clips)]
        if self.sub_mount and self.sub_clips:
            out.append((self.sub_mount, self.sub_clips))
        return out


def make_factory(clip: str) -> GstRtspServer.RTSPMediaFactory:
    """A shared factory looping one clip: one pipeline per mount however many clients watch."""
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(LAUNCH.format(path=clip.replace('"', '\\"')))
    factory.set_shared(True)
    # Without this, PLAY with `Range: npt=0.000-` gets a 503 because the seek on the loop fails.
    factory.set_publish_clock_mode(GstRtspServer.RTSPPublishClockMode.CLOCK_AND_OFFSET)
    return factory


class CameraServer:
    """The RTSP server, its mounts and the fault state; GStreamer objects live on the GLib loop."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.host: str = spec.get("host", "127.0.0.1")
        self.rtsp_port = int(spec["rtsp_port"])
        self.lock = threading.Lock()
        self.cameras: dict[str, Camera] = {}
        for c in spec["cameras"]:
            info = {k: c[k] for k in ("width", "height", "fps", "bitrate_kbps", "gov_length", "profile") if k in c}
            self.cameras[c["device_id"]] = Camera(
                device_id=c["device_id"], mount=c["mount"], clips=c["clips"],
                sub_mount=c.get("sub_mount"), sub_clips=c.get("sub_clips"),
                onvif_port=c.get("onvif_port"), info=info,
            )
        self.server = GstRtspServer.RTSPServer()
        self.server.set_address(self.host)
        self.server.set_service(str(self.rtsp_port))
        self.mount_points = self.server.get_mount_points()

    def rtsp_url(self, path: str) -> str:
        return f"rtsp://{self.host}:{self.rtsp_port}{path}"

    def start(self) -> None:
        """Mount every camera on its normal clip and attach the server to the default main context."""
        for cam in self.cameras.values():
            self._mount(cam, "normal")
        if self.server.attach(None) == 0:
            raise OSError(f"cannot listen for RTSP on {self.host}:{self.rtsp_port}")

    # ---- GLib-loop side

    def _mount(self, cam: Camera, variant: str | None) -> None:
        """Swap every mount of `cam` to `variant` (None: unmount) and close the sessions on them."""
        for path, clips in cam.mounts():
            self.mount_points.remove_factory(path)
            if variant is not None:
                self.mount_points.add_factory(path, make_factory(clips.get(variant, clips["normal"])))
        self._drop_sessions([p for p, _ in cam.mounts()])

    def _drop_sessions(self, paths: list[str]) -> None:
        """Close the clients watching `paths`, then any session left on them (UDP clients)."""

        def watches(session: GstRtspServer.RTSPSession) -> bool:
            return any(session.get_media(p)[0] is not None for p in paths)

        def client_cb(_server: Any, client: GstRtspServer.RTSPClient, *_: Any) -> Any:
            if any(watches(s) for s in client.session_filter(None, None)):
                return GstRtspServer.RTSPFilterResult.REMOVE
            return GstRtspServer.RTSPFilterResult.KEEP

        def session_cb(_pool: Any, session: GstRtspServer.RTSPSession, *_: Any) -> Any:
            if watches(session):
                return GstRtspServer.RTSPFilterResult.REMOVE
            return GstRtspServer.RTSPFilterResult.KEEP

        self.server.client_filter(client_cb, None)
        self.server.get_session_pool().filter(session_cb, None)

    def _on_loop(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the GLib loop and wait for it: GStreamer objects are not touched elsewhere."""
        done = threading.Event()
        error: list[BaseException] = []

        def run() -> bool:
            try:
                fn()
            except BaseException as exc:  # handed back to the HTTP thread
                error.append(exc)
            finally:
                done.set()
            return GLib.SOURCE_REMOVE

        GLib.idle_add(run)
        if not done.wait(APPLY_TIMEOUT_S):
            raise TimeoutError("GLib loop did not apply the change in time")
        if error:
            raise error[0]

    # ---- control API side (HTTP threads)

    def apply_fault(self, device_id: str, kind: str) -> dict[str, Any]:
        """Apply a fault kind to one camera; raises KeyError (camera) or ValueError (kind)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {sorted(FAULT_KINDS)}")
        cam = self.cameras[device_id]
        with self.lock:
            cam.generation += 1
            generation = cam.generation
            cam.fault = "none" if kind == "clear" else kind
            cam.online = kind not in ("dark", "restart")
        variant = FAULT_KINDS[kind]
        self._on_loop(lambda: self._mount(cam, variant))
        if kind == "restart":
            GLib.timeout_add(int(RESTART_S * 1000), self._restart_done, cam, generation)
        log.info("camera %s fault -> %s", device_id, kind)
        return self.describe(cam)

    def _restart_done(self, cam: Camera, generation: int) -> bool:
        with self.lock:
            if cam.generation != generation:  # another fault arrived meanwhile: it wins
                return GLib.SOURCE_REMOVE
            cam.fault, cam.online = "none", True
        self._mount(cam, "normal")
        log.info("camera %s back after restart", cam.device_id)
        return GLib.SOURCE_REMOVE

    def is_online(self, device_id: str) -> bool:
        with self.lock:
            cam = self.cameras.get(device_id)
            return cam is not None and cam.online

    def describe(self, cam: Camera) -> dict[str, Any]:
        with self.lock:
            out: dict[str, Any] = {
                "device_id": cam.device_id,
                "rtsp_url": self.rtsp_url(cam.mount),
                "sub_rtsp_url": self.rtsp_url(cam.sub_mount) if cam.sub_mount else None,
                "fault": cam.fault,
                "online": cam.online,
                **cam.info,
            }
        if cam.onvif_port is not None:
            out["onvif_port"] = cam.onvif_port
        return out


class ControlHandler(BaseHTTPRequestHandler):
    """`GET /cameras`, `POST /cameras/{device_id}/fault` with `{"kind": ...}`; JSON in and out."""

    server_version = "camsim-control/1"
    cams: CameraServer  # set on the subclass made by serve_control

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("control %s", format % args)

    def _reply(self, status: int, body: Any) -> None:
        send_json(self, status, body)

    def do_GET(self) -> None:
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        if parts == ["cameras"]:
            self._reply(200, [self.cams.describe(c) for c in self.cams.cameras.values()])
        elif parts == ["health"]:
            self._reply(200, {"ok": True})
        elif len(parts) == 2 and parts[0] == "cameras":
            cam = self.cams.cameras.get(parts[1])
            if cam is None:
                self._reply(404, {"error": f"unknown camera {parts[1]!r}"})
            else:
                self._reply(200, self.cams.describe(cam))
        else:
            self._reply(404, {"error": f"no such resource {self.path!r}"})

    def do_POST(self) -> None:
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        if len(parts) != 3 or parts[0] != "cameras" or parts[2] != "fault":
            self._reply(404, {"error": f"no such resource {self.path!r}"})
            return
        if parts[1] not in self.cams.cameras:
            self._reply(404, {"error": f"unknown camera {parts[1]!r}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            kind = body["kind"]
        except (ValueError, KeyError, TypeError):
            self._reply(400, {"error": 'body must be JSON like {"kind": "black"}',
                              "kinds": sorted(FAULT_KINDS)})
            return
        try:
            self._reply(200, self.cams.apply_fault(parts[1], str(kind)))
        except ValueError as exc:
            self._reply(400, {"error": str(exc), "kinds": sorted(FAULT_KINDS)})
        except TimeoutError as exc:
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, {"error": str(exc)})


def serve_control(cams: CameraServer, host: str, port: int) -> ThreadingHTTPServer:
    """Start the control API on its own thread."""
    handler = type("BoundControlHandler", (ControlHandler,), {"cams": cams})
    httpd = ThreadingHTTPServer((host, port), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, name="camsim-control", daemon=True).start()
    return httpd


def onvif_devices(spec: dict[str, Any], cams: CameraServer) -> list[OnvifDevice]:
    devices = []
    for c in spec["cameras"]:
        if c.get("onvif_port") is None:
            continue
        sub = c.get("sub_mount") or c["mount"]
        devices.append(OnvifDevice(
            device_id=c["device_id"], port=int(c["onvif_port"]),
            rtsp_main=cams.rtsp_url(c["mount"]), rtsp_sub=cams.rtsp_url(sub),
            width=int(c.get("width", 640)), height=int(c.get("height", 360)),
            sub_width=int(c.get("sub_width", c.get("width", 640))),
            sub_height=int(c.get("sub_height", c.get("height", 360))),
            fps=int(c.get("fps", 25)), bitrate_kbps=int(c.get("bitrate_kbps", 1500)),
            sub_bitrate_kbps=int(c.get("sub_bitrate_kbps", c.get("bitrate_kbps", 1500))),
            gov_length=int(c.get("gov_length", 50)), profile=str(c.get("profile", "high")),
            sub_profile=str(c.get("sub_profile", c.get("profile", "high"))),
        ))
    return devices


def run(spec: dict[str, Any]) -> None:
    """Serve until SIGTERM/SIGINT, or until the parent process is gone (no orphans)."""
    Gst.init(None)
    loop = GLib.MainLoop()
    cams = CameraServer(spec)
    cams.start()
    control = serve_control(cams, cams.host, int(spec["control_port"]))
    onvif_server: OnvifServer | None = None
    discovery: DiscoveryResponder | None = None
    ocfg = spec.get("onvif")
    if ocfg:
        devices = onvif_devices(spec, cams)
        onvif_server = OnvifServer(
            devices, bind=ocfg.get("bind", cams.host), advertise_host=ocfg.get("advertise_host", cams.host),
            username=ocfg.get("username"), password=ocfg.get("password"), is_online=cams.is_online,
        )
        onvif_server.start()
        if ocfg.get("discovery"):
            discovery = DiscoveryResponder(onvif_server.xaddrs(), bind=ocfg.get("discovery_bind", "0.0.0.0"))
            discovery.start()

    parent = int(spec.get("parent_pid") or 0)

    def parent_gone() -> bool:
        if parent and os.getppid() != parent:
            log.warning("parent %d is gone, exiting", parent)
            loop.quit()
            return GLib.SOURCE_REMOVE
        return GLib.SOURCE_CONTINUE

    def on_signal() -> bool:
        loop.quit()
        return GLib.SOURCE_REMOVE

    GLib.timeout_add(500, parent_gone)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGTERM, on_signal)
    GLib.unix_signal_add(GLib.PRIORITY_HIGH, signal.SIGINT, on_signal)
    log.info("serving %d cameras on rtsp://%s:%d, control on %d", len(cams.cameras), cams.host,
             cams.rtsp_port, spec["control_port"])
    try:
        loop.run()
    finally:
        control.shutdown()
        if onvif_server:
            onvif_server.stop()
        if discovery:
            discovery.stop()
        for cam in cams.cameras.values():  # stop pipelines so the process exits promptly
            cams._mount(cam, None)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python3 -m camsim.rtsp_server SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=os.environ.get("CAMSIM_LOG", "INFO"),
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    with open(args[0], encoding="utf-8") as f:
        spec = json.load(f)
    started = time.monotonic()
    run(spec)
    log.info("stopped after %.1f s", time.monotonic() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
