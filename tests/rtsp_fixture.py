"""Real RTSP peers on loopback for the edge-agent tests.

A GStreamer RTSP server (run by ``/usr/bin/python3``, the only interpreter with ``gi``) serves
pre-encoded MPEG-TS clips in a loop, which costs almost no CPU; clips are made with PyAV at test
time. Also a "garbage" TCP peer that answers every connection with junk.
"""

from __future__ import annotations

import contextlib
import fractions
import os
import select
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

GST_PYTHON = "/usr/bin/python3"

_SERVER_SCRIPT = r"""
import sys, json
import gi
gi.require_version("Gst", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import Gst, GstRtspServer, GLib
Gst.init(None)
port, mounts = sys.argv[1], json.loads(sys.argv[2])
server = GstRtspServer.RTSPServer()
server.set_address("127.0.0.1")
server.set_service(port)
auth_user = mounts.pop("__auth__", None)
if auth_user:
    auth = GstRtspServer.RTSPAuth()
    token = GstRtspServer.RTSPToken()
    token.set_string("media.factory.role", "user")
    auth.add_basic(GstRtspServer.RTSPAuth.make_basic(auth_user[0], auth_user[1]), token)
    server.set_auth(auth)
for path, clip in mounts.items():
    f = GstRtspServer.RTSPMediaFactory()
    f.set_launch(
        '( multifilesrc location="%s" loop=true caps="video/mpegts,systemstream=true,packetsize=188" '
        '! tsdemux ! h264parse ! rtph264pay name=pay0 pt=96 config-interval=-1 )' % clip
    )
    f.set_shared(True)
    f.set_publish_clock_mode(GstRtspServer.RTSPPublishClockMode.CLOCK_AND_OFFSET)
    if auth_user:
        perm = GstRtspServer.RTSPPermissions()
        perm.add_permission_for_role("user", "media.factory.access", True)
        perm.add_permission_for_role("user", "media.factory.construct", True)
        f.set_permissions(perm)
    server.get_mount_points().add_factory(path, f)
if server.attach(None) == 0:
    print("ATTACH-FAILED", flush=True)
    sys.exit(2)
print("READY", flush=True)
GLib.MainLoop().run()
"""


def make_clip(
    path: Path,
    *,
    seconds: float = 4.0,
    fps: int = 25,
    gop: int = 25,
    width: int = 320,
    height: int = 240,
    bframes: int = 0,
    bitrate: int = 400_000,
) -> Path:
    """Encode a moving test pattern to H.264 in MPEG-TS (``bframes`` > 0 gives High profile)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mpegts") as out:
        st = out.add_stream("libx264", rate=fps)
        st.width, st.height, st.pix_fmt = width, height, "yuv420p"
        st.bit_rate = bitrate
        st.codec_context.gop_size = gop
        opts = {"g": str(gop), "keyint_min": str(gop), "sc_threshold": "0", "bf": str(bframes),
                "preset": "ultrafast" if bframes == 0 else "veryfast"}
        if bframes:
            opts["profile"] = "high"
        st.options = opts
        st.codec_context.time_base = fractions.Fraction(1, fps)
        yy, xx = np.mgrid[0:height, 0:width]
        for i in range(int(seconds * fps)):
            y = ((xx + yy + i * 4) % 256).astype(np.uint8)
            img = np.stack([y, np.roll(y, i, axis=1), 255 - y], axis=-1)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            for pkt in st.encode(frame):
                out.mux(pkt)
        for pkt in st.encode():
            out.mux(pkt)
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RtspServer:
    """One GStreamer RTSP server process; ``mounts`` maps '/path' to a clip file."""

    def __init__(
        self, mounts: dict[str, Path], port: int | None = None, auth: tuple[str, str] | None = None
    ) -> None:
        self.mounts = mounts
        self.port = port or free_port()
        self.auth = auth
        self.proc: subprocess.Popen[str] | None = None

    def url(self, mount: str, userinfo: str = "") -> str:
        return f"rtsp://{userinfo}127.0.0.1:{self.port}{mount}"

    def start(self, timeout: float = 15.0) -> RtspServer:
        import json

        spec: dict[str, object] = {k: str(v) for k, v in self.mounts.items()}
        if self.auth:
            spec["__auth__"] = list(self.auth)
        self.proc = subprocess.Popen(
            [GST_PYTHON, "-c", _SERVER_SCRIPT, str(self.port), json.dumps(spec)],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                line = self.proc.stdout.readline()
                if line.strip() == "READY":
                    return self
                if not line:
                    break
        self.stop()
        raise RuntimeError(f"RTSP server on port {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> RtspServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GarbagePeer:
    """A TCP server that writes junk to every client and closes: not an RTSP server."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = int(self.sock.getsockname()[1])
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.sock.settimeout(0.2)
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            with contextlib.suppress(OSError), conn:
                conn.sendall(os.urandom(512) + b"\r\n\r\nHTTP/9.9 garbage\r\n\r\n" + os.urandom(512))
                time.sleep(0.05)

    def __enter__(self) -> GarbagePeer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.sock.close()
        self._thread.join(timeout=2)


@contextlib.contextmanager
def rtsp_server(mounts: dict[str, Path], port: int | None = None) -> Iterator[RtspServer]:
    srv = RtspServer(mounts, port).start()
    try:
        yield srv
    finally:
        srv.stop()


# --- pytest fixtures and helpers shared by the agent tests ---------------------------------------

import pytest  # noqa: E402


@pytest.fixture(scope="session", name="clips")
def clips_fixture(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Short looped test clips: plain, with B-frames, and at another resolution."""
    d = tmp_path_factory.mktemp("clips")
    return {
        "plain": make_clip(d / "plain.ts"),
        "bframes": make_clip(d / "bframes.ts", bframes=2),
        "big": make_clip(d / "big.ts", width=480, height=272, seconds=2.0),
    }


def decode_count(path: Path) -> tuple[int, int, int]:
    """(decoded frames, video packets, keyframe packets) of a media file; raises on damage."""
    with av.open(str(path)) as c:
        packets = [p for p in c.demux(video=0) if p.size]
    with av.open(str(path)) as c:
        c.streams.video[0].codec_context.options = {"err_detect": "explode"}
        frames = sum(1 for _ in c.decode(video=0))
    return frames, len(packets), sum(1 for p in packets if p.is_keyframe)


def wait_for(cond: object, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(cond) and cond():
            return True
        time.sleep(step)
    return bool(callable(cond) and cond())
